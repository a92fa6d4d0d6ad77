//! The daemon (`metersync run`): collect, upload and download on their own
//! intervals until SIGTERM or SIGINT.
//!
//! Guarantees:
//! - the three loops are independent: the remote being down stalls uploads
//!   and downloads, never collection (readings accumulate locally and drain,
//!   oldest first, when the remote returns);
//! - an error is logged and the job runs again on its next tick; each tick
//!   runs in its own task, so even a bug that panicked would cost one tick,
//!   not the loop;
//! - on shutdown the jobs in flight are told to stop between batches (an
//!   upload finishes the batch it is sending), and the daemon waits for them
//!   before it returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::progress::LogProgress;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, finishing the work in flight"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, finishing the work in flight"),
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the daemon");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `job` now and then every `every` until `shutdown`; each run in its
/// own task so that nothing in a run can end the loop.
async fn every<F, Fut>(name: &'static str, every: Duration, shutdown: CancellationToken, job: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match tokio::spawn(job(shutdown.clone())).await {
            Ok(Ok(summary)) => tracing::info!(job = name, "{summary}"),
            Ok(Err(e)) => tracing::warn!(job = name, "failed, will retry on the next tick: {e}"),
            Err(e) => tracing::error!(job = name, "crashed, will retry on the next tick: {e}"),
        }
    }
    tracing::info!(job = name, "stopped");
}

/// Runs the three loops until `shutdown` is cancelled, then waits for the
/// work in flight to finish.
pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
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
                let client = app.bacnet().await.map_err(|e| e.to_string())?;
                let r = crate::collect::collect(
                    &app,
                    client.as_ref(),
                    crate::collect::CollectOptions::default(),
                    &LogProgress("collect"),
                    &cancel,
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok(format!(
                    "{} meters read, {} failed, {} readings stored",
                    r.meters_read, r.meters_failed, r.readings_written
                ))
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
                let r = crate::upload::upload(
                    &app,
                    crate::upload::UploadOptions::default(),
                    &LogProgress("upload"),
                    &cancel,
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok(format!(
                    "{} uploaded, {} already present, {} remaining",
                    r.uploaded, r.already_present, r.remaining
                ))
            }
        },
    );
    let a = app.clone();
    let download = every(
        "download",
        cfg.download_interval,
        shutdown.clone(),
        move |_cancel| {
            let app = a.clone();
            async move {
                let t = crate::download::download(
                    &app,
                    crate::download::Table::Tenants,
                    false,
                    &LogProgress("download"),
                )
                .await
                .map_err(|e| format!("tenants: {e}"))?;
                let m = crate::download::download(
                    &app,
                    crate::download::Table::Meters,
                    false,
                    &LogProgress("download"),
                )
                .await
                .map_err(|e| format!("meters: {e}"))?;
                Ok(format!(
                    "tenants +{} ~{} -{}, meters +{} ~{} -{}",
                    t.inserted, t.updated, t.deactivated, m.inserted, m.updated, m.deactivated
                ))
            }
        },
    );
    let fleet = crate::health::spawn_background(&app, &shutdown).await;
    tokio::join!(collect, upload, download);
    crate::health::join_background(fleet).await;
    app.db.close();
    tracing::info!("daemon stopped");
}
