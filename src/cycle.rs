//! One sync cycle: download tenants, download meters, collect, upload, in
//! that order (meters reference tenants; the collection reads the meters
//! just downloaded; the upload sends what was just collected).
//!
//! A failing step does not hide the others: each step's result or error is
//! reported, and later steps still run (a remote that is down fails both
//! downloads and the upload, yet the collection still stores readings).

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::collect::{CollectOptions, CollectReport};
use crate::download::DownloadReport;
use crate::progress::{NoProgress, Progress};
use crate::upload::{UploadOptions, UploadReport};

/// One step's outcome.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Step<T> {
    /// Whether the step succeeded.
    pub ok: bool,
    /// Its result, when it ran to the end.
    pub result: Option<T>,
    /// Why it failed or did not run.
    pub error: Option<String>,
}

impl<T> Step<T> {
    fn from<E: std::fmt::Display>(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Step {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Step {
                ok: false,
                result: None,
                error: Some(e.to_string()),
            },
        }
    }

    fn skipped(why: &str) -> Self {
        Step {
            ok: false,
            result: None,
            error: Some(why.into()),
        }
    }
}

/// The `run_sync_cycle` result.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CycleReport {
    /// Step 1: tenants from the remote.
    pub download_tenants: Step<DownloadReport>,
    /// Step 2: meters from the remote.
    pub download_meters: Step<DownloadReport>,
    /// Step 3: read the meters.
    pub collect: Step<CollectReport>,
    /// Step 4: send the backlog.
    pub upload: Step<UploadReport>,
    /// Whether every step succeeded.
    pub ok: bool,
    /// Wall time of the cycle.
    pub duration_ms: u64,
}

/// Runs the four steps in order; `progress` counts steps (0..4).
/// Never fails as a whole: each step's error is in its slot.
pub async fn run_cycle(
    app: &App,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> CycleReport {
    let started = std::time::Instant::now();
    const CANCELLED: &str = "not run: the cycle was cancelled";
    progress.update(0, Some(4), "downloading tenants and meters");
    let downloads = crate::download::download_all(app, false, &NoProgress, cancel).await;
    let download_tenants = Step::from(downloads.tenants);
    let download_meters = match downloads.meters {
        Some(r) => Step::from(r),
        None if cancel.is_cancelled() => Step::skipped(CANCELLED),
        None => Step::skipped("not run: downloading tenants failed"),
    };
    progress.update(2, Some(4), "collecting meters");
    let collect = if cancel.is_cancelled() {
        Step::skipped(CANCELLED)
    } else {
        Step::from(
            crate::collect::collect(app, CollectOptions::default(), &NoProgress, cancel).await,
        )
    };
    progress.update(3, Some(4), "uploading readings");
    let upload = if cancel.is_cancelled() {
        Step::skipped(CANCELLED)
    } else {
        Step::from(crate::upload::upload(app, UploadOptions::default(), &NoProgress, cancel).await)
    };
    if upload.ok {
        // The site's row in the remote site_status; its failure is logged,
        // never the cycle's.
        crate::heartbeat::beat_and_log(app).await;
    }
    progress.update(4, Some(4), "cycle finished");
    let ok = download_tenants.ok && download_meters.ok && collect.ok && upload.ok;
    CycleReport {
        download_tenants,
        download_meters,
        collect,
        upload,
        ok,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}
