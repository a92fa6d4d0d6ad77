//! Is this site healthy? Two answers from one place:
//! - [`daemon_health`]: for `/health` and the systemd watchdog — the local
//!   database answers and a collection succeeded within two collect
//!   intervals (or the daemon started less than two intervals ago);
//! - [`site_health`]: for `metersync status` — both databases' connections,
//!   the backlog, the last runs and the meters, and whether a configured
//!   side is down or collection is failing.
//!
//! And the HTTP server ([`serve`]) that answers `/health` and `/metrics` on
//! `METRICS_BIND` (hyper 1, HTTP/1.1). A request never connects to the
//! remote: `/health` asks the local database one question under a short
//! deadline, `/metrics` encodes what the sampler last read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Side;
use crate::db::{ConnectionStatus, DbError};
use crate::status::{GrowthLimits, SyncStatus};

/// How long `/health` waits for the local database.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(3);

/// The daemon's health, as `/health` reports it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DaemonHealth {
    /// Whether the daemon is doing its job (HTTP 200) or not (503).
    pub healthy: bool,
    /// Why not, in words (empty when healthy).
    pub problems: Vec<String>,
    /// Seconds since the last successful collection, if any.
    pub last_collect_age_s: Option<f64>,
    /// Backlog warnings (they do not make the site unhealthy).
    pub warnings: Vec<String>,
}

/// Checks the daemon's health: the local database answers within
/// [`HEALTH_DEADLINE`], and a collection succeeded within two
/// `COLLECT_INTERVAL_S` (a daemon younger than that gets the benefit of the
/// doubt).
pub async fn daemon_health(app: &App) -> DaemonHealth {
    let interval = app.config.collect_interval;
    let limit = 2.0 * interval.as_secs_f64();
    let q = async {
        let c = app.db.local().await?;
        let e = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
        let row = c
            .query_one(
                "SELECT extract(epoch FROM now() - max(finished_at))::float8,
                        (SELECT count(*) FROM meter_readings),
                        extract(epoch FROM now() - (SELECT min(recorded_at) FROM meter_readings))::float8
                 FROM sync_runs WHERE kind = 'collect' AND status = 'ok'",
                &[],
            )
            .await
            .map_err(e)?;
        let age: Option<f64> = row.try_get(0).map_err(e)?;
        let backlog: i64 = row.try_get(1).map_err(e)?;
        let oldest: Option<f64> = row.try_get(2).map_err(e)?;
        Ok::<_, DbError>((age, backlog, oldest))
    };
    let mut problems = Vec::new();
    let mut last_collect_age_s = None;
    let mut warnings = Vec::new();
    match tokio::time::timeout(HEALTH_DEADLINE, q).await {
        Err(_) => problems.push(format!(
            "the local database did not answer within {} s",
            HEALTH_DEADLINE.as_secs()
        )),
        Ok(Err(e)) => problems.push(format!("the local database is not usable: {e}")),
        Ok(Ok((age, backlog, oldest))) => {
            last_collect_age_s = age;
            warnings = GrowthLimits::from_config(&app.config).check(backlog, oldest);
            let uptime =
                (chrono::Utc::now() - app.metrics.started_at()).num_milliseconds() as f64 / 1000.0;
            let fresh = age.is_some_and(|a| a <= limit) || uptime <= limit;
            if !fresh {
                problems.push(match age {
                    Some(a) => format!(
                        "no successful collection for {a:.0} s (more than two COLLECT_INTERVAL_S={} s)",
                        interval.as_secs()
                    ),
                    None => "no successful collection yet".into(),
                });
            }
        }
    }
    DaemonHealth {
        healthy: problems.is_empty(),
        problems,
        last_collect_age_s,
        warnings,
    }
}

/// The site at a glance, for `metersync status`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SiteHealth {
    /// Whether both configured databases answer and collection works.
    pub healthy: bool,
    /// Why not, in words (empty when healthy).
    pub problems: Vec<String>,
    /// Both databases (one attempt each, no retries), as `local` and
    /// `remote` at the top level (the shape `metersync status` always had).
    #[serde(flatten)]
    pub connections: ConnectionStatus,
    /// Backlog, last runs, meter health and warnings; `None` when the local
    /// database cannot be read.
    pub sync: Option<SyncStatus>,
}

/// Checks both databases once and reads the local state. Unhealthy when a
/// configured side does not answer, the last collection failed, or every
/// active meter that was read is failing.
pub async fn site_health(app: &App) -> SiteHealth {
    let connections = app.db.status().await;
    let mut problems = Vec::new();
    for s in [&connections.local, &connections.remote] {
        if s.configured && !s.connected {
            problems.push(format!(
                "the {} database is not connected: {}",
                s.side,
                s.last_error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    let limits = GrowthLimits::from_config(&app.config);
    let sync = if connections.local.connected {
        match crate::status::sync_status_with(&app.db, &limits).await {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(format!("the local state cannot be read: {e}"));
                None
            }
        }
    } else {
        None
    };
    if let Some(s) = &sync {
        if let Some(c) = s.last_runs.iter().find(|r| r.kind == "collect") {
            if c.status == "failed" {
                problems.push(format!(
                    "the last collection failed: {}",
                    c.error.as_deref().unwrap_or("no error recorded")
                ));
            }
        }
        let h = &s.health;
        if h.failing > 0 && h.healthy == 0 {
            problems.push(format!(
                "collection is failing: all {} meters read so far fail",
                h.failing
            ));
        }
    }
    SiteHealth {
        healthy: problems.is_empty(),
        problems,
        connections,
        sync,
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(app: Arc<App>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/health" => {
            let h = daemon_health(&app).await;
            let status = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string_pretty(&h).unwrap_or_default() + "\n";
            reply(status, "application/json", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            app.metrics.encode(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /health or /metrics\n".into(),
        ),
    }
}

/// Binds `addr`.
///
/// Fails when the address cannot be bound (in use, not local); the error
/// names METRICS_BIND.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("METRICS_BIND={addr} cannot be bound: {e}"),
        )
    })
}

/// Serves `/health` and `/metrics` on `listener` until `shutdown`; each
/// connection in its own task (ended with the server).
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "serving /health and /metrics");
    }
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(app, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = stop.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!("metrics connection: {e}");
                },
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
    tracing::debug!("metrics server stopped");
}

/// Under systemd with `WatchdogSec=`, tells systemd the daemon is alive
/// every half watchdog period while [`daemon_health`] says healthy (so a
/// daemon that stops collecting is restarted); does nothing otherwise.
pub async fn watchdog(app: Arc<App>, shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog on");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period / 2) => {}
        }
        let h = daemon_health(&app).await;
        if h.healthy {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!("systemd watchdog notification failed: {e}");
            }
        } else {
            tracing::warn!(
                "unhealthy, not notifying the systemd watchdog: {}",
                h.problems.join("; ")
            );
        }
    }
}

/// Starts the daemon's background tasks: the metrics sampler, the
/// heartbeat, housekeeping (journal prune, idle-connection reaper), the
/// systemd watchdog and, with `METRICS_BIND`, the HTTP server. Each stops
/// on `shutdown`; join them with [`join_background`].
pub async fn spawn_background(
    app: &Arc<App>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(crate::metrics::run(app.clone(), shutdown.clone()));
    set.spawn(crate::heartbeat::run(app.clone(), shutdown.clone()));
    set.spawn(crate::prune::run(app.clone(), shutdown.clone()));
    set.spawn(watchdog(app.clone(), shutdown.clone()));
    if let Some(addr) = app.config.metrics_bind {
        match bind(addr).await {
            Ok(l) => {
                set.spawn(serve(app.clone(), l, shutdown.clone()));
            }
            Err(e) => tracing::error!("{e}; /health and /metrics are not served"),
        }
    }
    set
}

/// Waits for the tasks of [`spawn_background`] (after `shutdown`).
pub async fn join_background(mut set: tokio::task::JoinSet<()>) {
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            tracing::error!("a background task crashed: {e}");
        }
    }
}
