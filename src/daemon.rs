//! The daemon (`metersync run`): collect, upload and download on their own
//! intervals until SIGTERM or SIGINT.
//!
//! Guarantees:
//! - it starts at once whatever is down ([`crate::app::Work::Daemon`]): the
//!   three loops are independent; the remote being down stalls uploads and
//!   downloads, never collection (readings accumulate locally and drain,
//!   oldest first, when the remote returns); the local database being down
//!   stalls nothing either: the collector reads the last meter list it
//!   loaded and holds readings in memory ([`crate::collect_buffer`]);
//! - checkouts are [`crate::db::Patience::Background`]: a side known down
//!   costs one attempt per tick, not a retry round;
//! - each tick runs in its own task, so even a bug that panicked would cost
//!   one tick, not the loop; the schedule, logging and shutdown rules are
//!   those of [`crate::ticks`]: SIGTERM ends the daemon within
//!   [`crate::ticks::DRAIN_GRACE`] plus moments, in every state.

use std::sync::Arc;

use crate::app::App;
use crate::progress::LogProgress;
use crate::ticks::{every, Failure, Tick};

fn failed(message: String, transient: bool) -> Tick {
    Tick::Failed(Failure { message, transient })
}

/// Runs the three loops until `app.shutdown()` is cancelled, then waits for
/// the work in flight to stop (at most [`crate::ticks::DRAIN_GRACE`]).
pub async fn run(app: Arc<App>) {
    let shutdown = app.shutdown();
    let cfg = &app.config;
    tracing::info!(
        collect_s = cfg.collect_interval.as_secs(),
        upload_s = cfg.upload_interval.as_secs(),
        download_s = cfg.download_interval.as_secs(),
        "daemon started"
    );
    let a = app.clone();
    let collect = every(
        "collect",
        cfg.collect_interval,
        shutdown.clone(),
        move |cancel| {
            let app = a.clone();
            async move {
                let r = crate::collect::collect(
                    &app,
                    crate::collect::CollectOptions::default(),
                    &LogProgress("collect"),
                    &cancel,
                )
                .await;
                match r {
                    Err(crate::collect::CollectError::Db(e)) => {
                        let transient = e.is_transient();
                        failed(e.to_string(), transient)
                    }
                    Err(e) => failed(e.to_string(), false),
                    Ok(r) => {
                        let mut line = format!(
                            "{} meters read, {} failed, {} readings stored",
                            r.meters_read, r.meters_failed, r.readings_written
                        );
                        if r.held.held > 0 || r.held.dropped > 0 {
                            line.push_str(&format!(
                                ", {} held in memory (local database down), {} dropped",
                                r.held.held, r.held.dropped
                            ));
                        }
                        if r.meters_read + r.meters_failed == 0 {
                            Tick::Idle(line)
                        } else {
                            Tick::Busy(line)
                        }
                    }
                }
            }
        },
    );
    let a = app.clone();
    let upload = every(
        "upload",
        cfg.upload_interval,
        shutdown.clone(),
        move |cancel| {
            let app = a.clone();
            async move {
                match crate::upload::upload(
                    &app,
                    crate::upload::UploadOptions::default(),
                    &LogProgress("upload"),
                    &cancel,
                )
                .await
                {
                    Err(e) => {
                        let transient = e.is_transient();
                        failed(e.to_string(), transient)
                    }
                    Ok(r) => {
                        let line = format!(
                            "{} uploaded, {} already present, {} remaining",
                            r.uploaded, r.already_present, r.remaining
                        );
                        if r.uploaded + r.already_present == 0 {
                            Tick::Idle(line)
                        } else {
                            Tick::Busy(line)
                        }
                    }
                }
            }
        },
    );
    let a = app.clone();
    let download = every(
        "download",
        cfg.download_interval,
        shutdown.clone(),
        move |cancel| {
            let app = a.clone();
            async move {
                let downloads =
                    crate::download::download_all(&app, false, &LogProgress("download"), &cancel)
                        .await;
                let reports = match downloads.into_result() {
                    Err(e) => {
                        let transient = e.is_transient();
                        return failed(e.to_string(), transient);
                    }
                    Ok(r) => r,
                };
                let mut changes = 0;
                let mut line = Vec::new();
                for r in reports {
                    changes += r.inserted + r.updated + r.deactivated;
                    line.push(format!(
                        "{} +{} ~{} -{}",
                        r.table, r.inserted, r.updated, r.deactivated
                    ));
                }
                if changes == 0 {
                    Tick::Idle(line.join(", "))
                } else {
                    Tick::Busy(line.join(", "))
                }
            }
        },
    );
    let fleet = crate::health::spawn_background(&app, &shutdown).await;
    tokio::join!(collect, upload, download);
    crate::health::join_background(fleet).await;
    app.db.close();
    tracing::info!("daemon stopped");
}
