//! The one retry policy: exponential backoff `2^n x 2000 ms`, capped at
//! 32 000 ms, for at most `MAX_CONNECTION_RETRIES` retries after the first
//! attempt.
//!
//! Every database connection attempt goes through [`retry`] (or
//! [`retry_until`], which also stops on a shutdown token), so the schedule is
//! defined in one place and tested with paused time.
//!
//! Guarantee: [`retry_until`] returns within moments of its token being
//! cancelled, whether it is inside an attempt or a backoff sleep.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first retry waits this long; each later one doubles it.
pub const BASE_DELAY: Duration = Duration::from_millis(2_000);
/// No retry waits longer than this.
pub const MAX_DELAY: Duration = Duration::from_millis(32_000);

/// The wait before retry number `n` (0 for the first retry):
/// `min(2^n x 2000 ms, 32000 ms)`.
pub fn backoff_delay(n: u32) -> Duration {
    let factor = 1u64.checked_shl(n).unwrap_or(u64::MAX);
    let ms = (BASE_DELAY.as_millis() as u64).saturating_mul(factor);
    Duration::from_millis(ms).min(MAX_DELAY)
}

/// Runs `attempt` until it succeeds, it fails with an error `retryable`
/// rejects, or `max_retries` retries are used up; waits [`backoff_delay`]
/// between attempts and calls `on_failure(attempt_number, error, next_delay)`
/// before each wait (for logging and counting).
///
/// Returns the last error and the number of retries made when it gives up.
pub async fn retry<T, E, F, Fut>(
    max_retries: u32,
    mut attempt: F,
    retryable: impl Fn(&E) -> bool,
    mut on_failure: impl FnMut(u32, &E, Option<Duration>),
) -> Result<T, (E, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retries = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let give_up = retries >= max_retries || !retryable(&e);
                let delay = (!give_up).then(|| backoff_delay(retries));
                on_failure(retries + 1, &e, delay);
                match delay {
                    None => return Err((e, retries)),
                    Some(d) => {
                        tokio::time::sleep(d).await;
                        retries += 1;
                    }
                }
            }
        }
    }
}

/// Why [`retry_until`] stopped without a result.
#[derive(Debug)]
pub enum Stopped<E> {
    /// The last error, and the retries made, when the policy gave up.
    GaveUp(E, u32),
    /// The token was cancelled (after this many retries); the attempt in
    /// flight, if any, was dropped.
    Cancelled(u32),
}

/// [`retry`], stopping as soon as `cancel` is cancelled: the attempt in
/// flight and the backoff sleep are both raced against the token (shutdown
/// first), so a signal never waits out a connect round.
pub async fn retry_until<T, E, F, Fut>(
    max_retries: u32,
    cancel: &CancellationToken,
    mut attempt: F,
    retryable: impl Fn(&E) -> bool,
    mut on_failure: impl FnMut(u32, &E, Option<Duration>),
) -> Result<T, Stopped<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retries = 0u32;
    loop {
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Stopped::Cancelled(retries)),
            r = attempt() => r,
        };
        match outcome {
            Ok(v) => return Ok(v),
            Err(e) => {
                let give_up = retries >= max_retries || !retryable(&e);
                let delay = (!give_up).then(|| backoff_delay(retries));
                on_failure(retries + 1, &e, delay);
                match delay {
                    None => return Err(Stopped::GaveUp(e, retries)),
                    Some(d) => {
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => return Err(Stopped::Cancelled(retries)),
                            _ = tokio::time::sleep(d) => {}
                        }
                        retries += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    #[test]
    fn schedule_doubles_from_two_seconds_and_caps() {
        let ms: Vec<u64> = (0..8)
            .map(|n| backoff_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(ms, [2000, 4000, 8000, 16000, 32000, 32000, 32000, 32000]);
        assert_eq!(backoff_delay(200), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_schedule_then_give_up() {
        let start = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let r: Result<(), (String, u32)> = retry(
            5,
            move || {
                let s = s2.clone();
                async move {
                    s.lock().unwrap().push(start.elapsed().as_millis() as u64);
                    Err("refused".to_string())
                }
            },
            |_| true,
            |_, _, _| {},
        )
        .await;
        assert_eq!(r.unwrap_err().1, 5);
        // attempts at 0, 2, 6, 14, 30, 62 seconds
        assert_eq!(*seen.lock().unwrap(), [0, 2000, 6000, 14000, 30000, 62000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried_and_success_stops() {
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let r: Result<(), (&str, u32)> = retry(
            5,
            move || {
                *c.lock().unwrap() += 1;
                async { Err("bad password") }
            },
            |_| false,
            |_, _, _| {},
        )
        .await;
        assert_eq!(r.unwrap_err().1, 0);
        assert_eq!(*calls.lock().unwrap(), 1);

        let n = Arc::new(Mutex::new(0));
        let n2 = n.clone();
        let r: Result<u32, (&str, u32)> = retry(
            5,
            move || {
                let n = n2.clone();
                async move {
                    let mut g = n.lock().unwrap();
                    *g += 1;
                    if *g < 3 {
                        Err("down")
                    } else {
                        Ok(*g)
                    }
                }
            },
            |_| true,
            |_, _, _| {},
        )
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_stops_a_backoff_sleep_at_once() {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            c2.cancel();
        });
        // Attempts at 0 and 2 s fail; the 4 s sleep after the second is cut at 3 s.
        let r: Result<(), Stopped<&str>> =
            retry_until(5, &cancel, || async { Err("down") }, |_| true, |_, _, _| {}).await;
        assert!(matches!(r, Err(Stopped::Cancelled(1))), "{r:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(3_000));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_stops_an_attempt_in_flight() {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c2.cancel();
        });
        // An attempt that would hang for a minute (a frozen link).
        let r: Result<(), Stopped<&str>> = retry_until(
            5,
            &cancel,
            || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Err("timeout")
            },
            |_| true,
            |_, _, _| {},
        )
        .await;
        assert!(matches!(r, Err(Stopped::Cancelled(0))), "{r:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }
}
