//! The daemon's schedule: one loop per job ([`every`]) and what it logs per
//! tick ([`JobLog`]).
//!
//! Guarantees:
//! - shutdown is checked first (`select! { biased; }`): a tick that is ready
//!   when the signal arrives never starts a job;
//! - ticks missed while a job ran long (a stall, an outage) are skipped, not
//!   bunched: the next run starts at the next slot of the schedule, never
//!   immediately (tokio's `MissedTickBehavior::Skip` still fires the overdue
//!   tick at once, which put two collections 500 ms apart in our test, so
//!   the slot is computed here: [`next_slot`]);
//! - on shutdown a job in flight gets [`DRAIN_GRACE`] to stop by itself (it
//!   was told through its token), then it is abandoned, which is the same as
//!   the process being killed at that point: every engine is safe against
//!   that (the upload re-finds, by key, a batch whose commit it did not see);
//! - at the default level each job writes one line per tick when something
//!   happened, one line per hour when nothing did; a failure is logged in
//!   full once (a transient one at WARN saying it will retry, an operator
//!   error at ERROR with what to change), then a one-line reminder per tick
//!   while it repeats, and one line when it recovers.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a job in flight may take to stop after the signal.
pub const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// How often a job with nothing to do says so.
pub const QUIET_SUMMARY_EVERY: Duration = Duration::from_secs(3600);

/// A failed tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened and what to do (the engine's message).
    pub message: String,
    /// Whether the next tick may succeed as things are (else an operator
    /// has to change something).
    pub transient: bool,
}

/// What one run of a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// It did something worth a line.
    Busy(String),
    /// It ran and found nothing to do.
    Idle(String),
    /// It failed.
    Failed(Failure),
}

/// How loud a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// INFO.
    Info,
    /// WARN.
    Warn,
    /// ERROR.
    Error,
}

/// A log line, decided by [`JobLog::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub text: String,
}

/// Two messages of the same failure differ only in numbers (durations,
/// counts, timestamps): compare them without digits.
fn failure_key(message: &str) -> String {
    message.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// The first clause of a message, for reminders.
fn short(message: &str) -> &str {
    let cut = message.find(": ").unwrap_or(message.len()).min(160);
    let mut end = cut;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// What one job has said, to decide what to say next.
#[derive(Debug)]
pub struct JobLog {
    failing: Option<(String, u64, Instant)>,
    quiet_ticks: u64,
    quiet_since: Instant,
}

impl JobLog {
    /// A job that has said nothing yet, at `now`.
    pub fn new(now: Instant) -> Self {
        JobLog {
            failing: None,
            quiet_ticks: 0,
            quiet_since: now,
        }
    }

    /// The line to log for `tick` at `now`, if any.
    pub fn record(&mut self, tick: Tick, now: Instant) -> Option<Line> {
        let info = |text: String| {
            Some(Line {
                level: Level::Info,
                text,
            })
        };
        match tick {
            Tick::Busy(summary) | Tick::Idle(summary) if self.failing.is_some() => {
                let n = self.failing.take().map(|f| f.1).unwrap_or(0);
                self.quiet_ticks = 0;
                self.quiet_since = now;
                info(format!("recovered after {n} failed ticks: {summary}"))
            }
            Tick::Busy(summary) => info(summary),
            Tick::Idle(summary) => {
                self.quiet_ticks += 1;
                if now.duration_since(self.quiet_since) < QUIET_SUMMARY_EVERY {
                    return None;
                }
                let n = std::mem::take(&mut self.quiet_ticks);
                self.quiet_since = now;
                info(format!(
                    "nothing to do in the last hour ({n} ticks): {summary}"
                ))
            }
            Tick::Failed(f) => {
                let key = failure_key(&f.message);
                match &mut self.failing {
                    Some((k, n, since)) if *k == key => {
                        *n += 1;
                        let mins = now.duration_since(*since).as_secs() / 60;
                        Some(Line {
                            level: Level::Warn,
                            text: if f.transient {
                                format!(
                                    "still failing ({n} ticks, {mins} min), will retry on the next tick: {}",
                                    short(&f.message)
                                )
                            } else {
                                format!(
                                    "still failing ({n} ticks, {mins} min), needs a change (see the first error): {}",
                                    short(&f.message)
                                )
                            },
                        })
                    }
                    _ => {
                        self.failing = Some((key, 1, now));
                        Some(if f.transient {
                            Line {
                                level: Level::Warn,
                                text: format!("failed, will retry on the next tick: {}", f.message),
                            }
                        } else {
                            Line {
                                level: Level::Error,
                                text: format!(
                                    "failed, and retrying will not help until this is changed: {}",
                                    f.message
                                ),
                            }
                        })
                    }
                }
            }
        }
    }
}

fn emit(job: &'static str, line: Line) {
    match line.level {
        Level::Info => tracing::info!(job, "{}", line.text),
        Level::Warn => tracing::warn!(job, "{}", line.text),
        Level::Error => tracing::error!(job, "{}", line.text),
    }
}

/// The index of the first slot (`start + k x period`) strictly after
/// `elapsed` since `start`.
pub fn next_slot(elapsed: Duration, period: Duration) -> u32 {
    let p = period.as_nanos().max(1);
    u32::try_from(elapsed.as_nanos() / p + 1).unwrap_or(u32::MAX)
}

/// Runs `job` now and then every `period` until `shutdown`, each run in its
/// own task so that nothing in a run can end the loop (see the module docs
/// for skipping, shutdown and logging).
pub async fn every<F, Fut>(
    name: &'static str,
    period: Duration,
    shutdown: CancellationToken,
    job: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = Tick> + Send + 'static,
{
    let start = Instant::now();
    let mut slot = 0u32;
    let mut log = JobLog::new(start);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(start + period.saturating_mul(slot)) => {}
        }
        let mut handle = tokio::spawn(job(shutdown.clone()));
        let joined = tokio::select! {
            biased;
            r = &mut handle => Some(r),
            _ = shutdown.cancelled() => match tokio::time::timeout(DRAIN_GRACE, &mut handle).await {
                Ok(r) => Some(r),
                Err(_) => {
                    handle.abort();
                    tracing::warn!(
                        job = name,
                        "did not stop within {} s of the signal: abandoned (as if killed; nothing is lost)",
                        DRAIN_GRACE.as_secs()
                    );
                    None
                }
            },
        };
        let tick = match joined {
            None => break,
            Some(Ok(t)) => t,
            Some(Err(e)) => Tick::Failed(Failure {
                message: format!("crashed: {e}"),
                transient: true,
            }),
        };
        match tick {
            // A job cut short by the signal is not a failure to report.
            Tick::Failed(f) if shutdown.is_cancelled() => {
                tracing::debug!(job = name, "stopped by the signal: {}", f.message)
            }
            tick => {
                if let Some(line) = log.record(tick, Instant::now()) {
                    emit(name, line);
                }
            }
        }
        slot = next_slot(start.elapsed(), period);
    }
    tracing::info!(job = name, "stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn failed(m: &str, transient: bool) -> Tick {
        Tick::Failed(Failure {
            message: m.into(),
            transient,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_operator_error_is_logged_once_in_full_then_reminded_in_one_line() {
        let t0 = Instant::now();
        let mut log = JobLog::new(t0);
        let full = "could not connect to the remote database at db:5432 after 0 retries: password authentication failed (SQLSTATE 28P01); check POSTGRES_CLIENT_USER and POSTGRES_CLIENT_PASSWORD";
        let first = log.record(failed(full, false), t0);
        assert_eq!(first.as_ref().map(|l| l.level), Some(Level::Error));
        assert!(first
            .map(|l| l.text)
            .unwrap_or_default()
            .contains("check POSTGRES_CLIENT_USER and POSTGRES_CLIENT_PASSWORD"));
        for i in 2..5u64 {
            let l = log.record(failed(full, false), t0 + Duration::from_secs(60 * i));
            let l = l.expect("a reminder per tick");
            assert_eq!(l.level, Level::Warn);
            assert!(
                l.text.starts_with(&format!("still failing ({i} ticks")),
                "{}",
                l.text
            );
            assert!(
                !l.text.contains("SQLSTATE"),
                "a reminder is short: {}",
                l.text
            );
        }
        let back = log.record(
            Tick::Busy("3 uploaded".into()),
            t0 + Duration::from_secs(600),
        );
        assert_eq!(
            back.map(|l| l.text),
            Some("recovered after 4 failed ticks: 3 uploaded".to_string())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_says_it_will_retry_and_numbers_do_not_make_it_new() {
        let t0 = Instant::now();
        let mut log = JobLog::new(t0);
        let l = log.record(
            failed("remote down since 02:00:00 (3 s): refused", true),
            t0,
        );
        assert_eq!(l.as_ref().map(|l| l.level), Some(Level::Warn));
        assert!(l
            .map(|l| l.text)
            .unwrap_or_default()
            .starts_with("failed, will retry on the next tick: remote down"));
        // Same failure, other numbers: a reminder, not the full message again.
        let l = log.record(
            failed("remote down since 02:00:00 (63 s): refused", true),
            t0,
        );
        assert!(l
            .map(|l| l.text)
            .unwrap_or_default()
            .starts_with("still failing (2 ticks"));
        // Another failure: logged in full.
        let l = log.record(failed("the remote table is missing", false), t0);
        assert_eq!(l.map(|l| l.level), Some(Level::Error));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_to_do_is_said_once_an_hour() {
        let t0 = Instant::now();
        let mut log = JobLog::new(t0);
        let mut lines = Vec::new();
        // A minute's ticks for two hours and a bit.
        for m in 1..=125u64 {
            if let Some(l) = log.record(
                Tick::Idle("0 uploaded".into()),
                t0 + Duration::from_secs(60 * m),
            ) {
                lines.push((m, l.text));
            }
        }
        assert_eq!(
            lines,
            [
                (
                    60,
                    "nothing to do in the last hour (60 ticks): 0 uploaded".to_string()
                ),
                (
                    120,
                    "nothing to do in the last hour (60 ticks): 0 uploaded".to_string()
                )
            ]
        );
        assert!(log.record(Tick::Busy("5 uploaded".into()), t0).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn missed_ticks_are_skipped_not_bunched() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let s2 = starts.clone();
        let shutdown = CancellationToken::new();
        let t0 = Instant::now();
        let loop_ = tokio::spawn(every(
            "test",
            Duration::from_secs(1),
            shutdown.clone(),
            move |_| {
                let s = s2.clone();
                async move {
                    let n = {
                        let mut g = s.lock().unwrap();
                        g.push(t0.elapsed().as_millis() as u64);
                        g.len()
                    };
                    // The second run stalls 3.5 s (an outage).
                    if n == 2 {
                        tokio::time::sleep(Duration::from_millis(3_500)).await;
                    }
                    Tick::Idle(String::new())
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(7_200)).await;
        shutdown.cancel();
        loop_.await.unwrap();
        // Runs at 0 and 1 s; the stall ends at 4.5 s; ticks at 2, 3 and 4 s
        // are skipped; the schedule resumes at 5 s (not a burst at 4.5 s).
        assert_eq!(*starts.lock().unwrap(), [0, 1000, 5000, 6000, 7000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_tick_never_starts_a_job_after_shutdown_and_a_stuck_job_is_abandoned() {
        let runs = Arc::new(Mutex::new(0u32));
        let r2 = runs.clone();
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        // The first tick is ready at once, yet shutdown wins.
        every("test", Duration::from_secs(1), shutdown, move |_| {
            let r = r2.clone();
            async move {
                *r.lock().unwrap() += 1;
                Tick::Idle(String::new())
            }
        })
        .await;
        assert_eq!(*runs.lock().unwrap(), 0);

        // A job that ignores its token (a frozen link) is abandoned after the grace.
        let shutdown = CancellationToken::new();
        let s2 = shutdown.clone();
        let t0 = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            s2.cancel();
        });
        every("test", Duration::from_secs(1), shutdown, |_| async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Tick::Idle(String::new())
        })
        .await;
        assert_eq!(t0.elapsed(), Duration::from_millis(500) + DRAIN_GRACE);
    }
}
