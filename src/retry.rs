//! The one retry policy: exponential backoff `2^n x 2000 ms`, capped at
//! 32 000 ms, for at most `MAX_CONNECTION_RETRIES` retries after the first
//! attempt.
//!
//! Every database connection attempt goes through [`retry`], so the schedule
//! is defined in one place and tested with paused time.

use std::future::Future;
use std::time::Duration;

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
}
