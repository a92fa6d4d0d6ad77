//! The site heartbeat: one row per site in the remote `site_status` table
//! (remote migration `0002_site_status`), upserted after every successful upload and at
//! least every [`HEARTBEAT_EVERY`] while the remote is reachable, so that an
//! operator sees the whole fleet with one query (README, "The fleet at a
//! glance").
//!
//! Guarantees:
//! - a heartbeat never blocks readings: it runs in its own task, reads the
//!   local database in one short statement and writes the remote in its own
//!   short transaction, the whole of it under [`HEARTBEAT_DEADLINE`]
//!   (`statement_timeout` inside the transaction as well);
//! - a failing heartbeat is logged (once, then quietly until it succeeds
//!   again), never turned into an upload or cycle failure;
//! - it works through a transaction-mode pooler: one explicit transaction,
//!   unnamed statements only (`execute_typed`), `SET LOCAL` only;
//! - a site without `SITE_ID` reports as [`DEFAULT_SITE_ID`] (a single-site
//!   installation needs no id; a fleet must set one per site, or sites
//!   overwrite each other's row — the README says so).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Side;
use crate::db::{Databases, DbError};
use crate::status::GrowthLimits;

/// The `site_id` of a site without `SITE_ID`.
pub const DEFAULT_SITE_ID: &str = "default";

/// The longest a site stays silent while the remote is reachable.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(120);

/// The whole heartbeat (local read, remote connect and upsert) must finish
/// within this, or it is abandoned and logged.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(10);

/// How often the background task looks for a finished upload.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// What the site looks like now, read from the local database only; the
/// heartbeat sends it, the metrics show it.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct SiteSnapshot {
    /// Readings waiting for upload.
    pub backlog_rows: i64,
    /// `recorded_at` of the oldest of them.
    pub oldest_reading_at: Option<DateTime<Utc>>,
    /// Its age in seconds.
    pub oldest_age_s: Option<f64>,
    /// Active meters.
    pub meters_active: i64,
    /// Active meters whose last collection succeeded.
    pub meters_read: i64,
    /// Active meters whose last collection failed.
    pub meters_failed: i64,
    /// Active meters never collected.
    pub meters_never_read: i64,
    /// Rows in `meter_readings_quarantine`.
    pub quarantine_rows: i64,
    /// Rows in `meter_readings_conflicts` (0 when the table does not exist).
    pub conflict_rows: i64,
    /// The last successful collection's end.
    pub last_collect_at: Option<DateTime<Utc>>,
    /// The last successful upload's end.
    pub last_upload_at: Option<DateTime<Utc>>,
    /// The error of the most recent operation whose last run failed (none
    /// when every operation's last run succeeded).
    pub last_error: Option<String>,
    /// When that run ended.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Backlog warnings ([`GrowthLimits`]).
    pub warnings: Vec<String>,
}

impl SiteSnapshot {
    /// Reads the snapshot from the local database.
    ///
    /// Fails when the local database is unreachable or not migrated.
    pub async fn read(db: &Databases, limits: &GrowthLimits) -> Result<Self, DbError> {
        let c = db.local().await?;
        let q = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM meter_readings),
                        (SELECT min(recorded_at) FROM meter_readings),
                        (SELECT count(*) FROM meters WHERE active),
                        (SELECT count(*) FROM meters m JOIN meter_health h ON h.meter_id = m.id
                          WHERE m.active AND h.consecutive_failures = 0),
                        (SELECT count(*) FROM meters m JOIN meter_health h ON h.meter_id = m.id
                          WHERE m.active AND h.consecutive_failures > 0),
                        (SELECT count(*) FROM meters m WHERE m.active AND NOT EXISTS
                          (SELECT 1 FROM meter_health h WHERE h.meter_id = m.id)),
                        (SELECT count(*) FROM meter_readings_quarantine),
                        (SELECT max(finished_at) FROM sync_runs WHERE kind = 'collect' AND status = 'ok'),
                        (SELECT max(finished_at) FROM sync_runs WHERE kind = 'upload' AND status = 'ok'),
                        to_regclass('meter_readings_conflicts') IS NOT NULL,
                        now()",
                &[],
            )
            .await
            .map_err(q)?;
        let get_err = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
        let oldest: Option<DateTime<Utc>> = row.try_get(1).map_err(get_err)?;
        let now: DateTime<Utc> = row.try_get(10).map_err(get_err)?;
        let oldest_age_s = oldest.map(|o| ((now - o).num_milliseconds() as f64 / 1000.0).max(0.0));
        let backlog_rows: i64 = row.try_get(0).map_err(get_err)?;
        let has_conflicts: bool = row.try_get(9).map_err(get_err)?;
        let conflict_rows = if has_conflicts {
            c.query_one("SELECT count(*) FROM meter_readings_conflicts", &[])
                .await
                .map_err(q)?
                .try_get(0)
                .map_err(get_err)?
        } else {
            0
        };
        let failing = c
            .query_opt(
                "SELECT error, finished_at FROM (
                    SELECT DISTINCT ON (kind) kind, status, error, finished_at
                    FROM sync_runs WHERE finished_at IS NOT NULL
                    ORDER BY kind, started_at DESC, id DESC) last
                 WHERE status = 'failed' ORDER BY finished_at DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(q)?;
        let (last_error, last_error_at) = match failing {
            Some(r) => (
                r.try_get::<_, Option<String>>(0).map_err(get_err)?,
                r.try_get::<_, Option<DateTime<Utc>>>(1).map_err(get_err)?,
            ),
            None => (None, None),
        };
        Ok(SiteSnapshot {
            warnings: limits.check(backlog_rows, oldest_age_s),
            backlog_rows,
            oldest_reading_at: oldest,
            oldest_age_s,
            meters_active: row.try_get(2).map_err(get_err)?,
            meters_read: row.try_get(3).map_err(get_err)?,
            meters_failed: row.try_get(4).map_err(get_err)?,
            meters_never_read: row.try_get(5).map_err(get_err)?,
            quarantine_rows: row.try_get(6).map_err(get_err)?,
            conflict_rows,
            last_collect_at: row.try_get(7).map_err(get_err)?,
            last_upload_at: row.try_get(8).map_err(get_err)?,
            last_error,
            last_error_at,
        })
    }
}

/// What one heartbeat sent.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HeartbeatReport {
    /// The `site_id` the row was written under.
    pub site_id: String,
    /// What was sent.
    pub snapshot: SiteSnapshot,
    /// Wall time of the heartbeat.
    pub duration_ms: u64,
}

/// Why a heartbeat was not written.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// No remote database configured.
    #[error("no remote database configured: set POSTGRES_CLIENT_HOST (with _DB, _USER, _PASSWORD) to send heartbeats")]
    NoRemote,
    /// The local snapshot could not be read.
    #[error("heartbeat not sent, the local state could not be read: {0}")]
    Local(#[source] DbError),
    /// The remote upsert failed.
    #[error("heartbeat not sent: {0}; if the table is missing, run `metersync migrate` (remote migration 0002_site_status)")]
    Remote(#[source] DbError),
    /// It took longer than [`HEARTBEAT_DEADLINE`].
    #[error("heartbeat not sent within {0:?}; the remote is slow or unreachable")]
    Deadline(Duration),
}

/// The `site_id` this site reports under.
pub fn site_id(app: &App) -> &str {
    app.config.site_id.as_deref().unwrap_or(DEFAULT_SITE_ID)
}

const UPSERT: &str = "INSERT INTO site_status (site_id, version, started_at, backlog_rows,
        oldest_reading_at, oldest_age_s, meters_active, meters_read, meters_failed,
        meters_never_read, quarantine_rows, conflict_rows, last_collect_at, last_upload_at,
        last_error, last_error_at, warnings, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7::int8::int4, $8::int8::int4, $9::int8::int4,
        $10::int8::int4, $11, $12, $13, $14, $15, $16, $17, now())
    ON CONFLICT (site_id) DO UPDATE SET version = EXCLUDED.version,
        started_at = EXCLUDED.started_at, backlog_rows = EXCLUDED.backlog_rows,
        oldest_reading_at = EXCLUDED.oldest_reading_at, oldest_age_s = EXCLUDED.oldest_age_s,
        meters_active = EXCLUDED.meters_active, meters_read = EXCLUDED.meters_read,
        meters_failed = EXCLUDED.meters_failed, meters_never_read = EXCLUDED.meters_never_read,
        quarantine_rows = EXCLUDED.quarantine_rows, conflict_rows = EXCLUDED.conflict_rows,
        last_collect_at = EXCLUDED.last_collect_at, last_upload_at = EXCLUDED.last_upload_at,
        last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at,
        warnings = EXCLUDED.warnings, updated_at = now()";

/// Reads the local state and upserts this site's `site_status` row, all
/// within [`HEARTBEAT_DEADLINE`].
///
/// Fails when no remote is configured, a database cannot be used, or the
/// deadline passes; nothing else depends on it succeeding.
pub async fn beat(app: &App) -> Result<HeartbeatReport, HeartbeatError> {
    if !app.db.has_remote() {
        return Err(HeartbeatError::NoRemote);
    }
    let started = Instant::now();
    let work = async {
        let limits = GrowthLimits::from_config(&app.config);
        let snap = SiteSnapshot::read(&app.db, &limits)
            .await
            .map_err(HeartbeatError::Local)?;
        let site = site_id(app).to_string();
        let version = env!("CARGO_PKG_VERSION");
        let process_started = app.metrics.started_at();
        let q = |e: tokio_postgres::Error| HeartbeatError::Remote(DbError::query(Side::Remote, &e));
        let mut c = app.db.remote().await.map_err(HeartbeatError::Remote)?;
        let tx = c.transaction().await.map_err(q)?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            HEARTBEAT_DEADLINE.as_millis()
        ))
        .await
        .map_err(q)?;
        tx.execute_typed(
            UPSERT,
            &[
                (&site, Type::TEXT),
                (&version, Type::TEXT),
                (&process_started, Type::TIMESTAMPTZ),
                (&snap.backlog_rows, Type::INT8),
                (&snap.oldest_reading_at, Type::TIMESTAMPTZ),
                (&snap.oldest_age_s, Type::FLOAT8),
                (&snap.meters_active, Type::INT8),
                (&snap.meters_read, Type::INT8),
                (&snap.meters_failed, Type::INT8),
                (&snap.meters_never_read, Type::INT8),
                (&snap.quarantine_rows, Type::INT8),
                (&snap.conflict_rows, Type::INT8),
                (&snap.last_collect_at, Type::TIMESTAMPTZ),
                (&snap.last_upload_at, Type::TIMESTAMPTZ),
                (&snap.last_error, Type::TEXT),
                (&snap.last_error_at, Type::TIMESTAMPTZ),
                (&snap.warnings, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(q)?;
        tx.commit().await.map_err(q)?;
        Ok(HeartbeatReport {
            site_id: site,
            snapshot: snap,
            duration_ms: 0,
        })
    };
    let result = match tokio::time::timeout(HEARTBEAT_DEADLINE, work).await {
        Ok(r) => r,
        Err(_) => Err(HeartbeatError::Deadline(HEARTBEAT_DEADLINE)),
    };
    app.metrics.heartbeat_result(result.is_ok());
    result.map(|mut r| {
        r.duration_ms = started.elapsed().as_millis() as u64;
        r
    })
}

/// Sends a heartbeat and logs the outcome; for callers (a cycle, an upload
/// command) whose own result must not depend on it.
pub async fn beat_and_log(app: &App) {
    match beat(app).await {
        Ok(r) => tracing::debug!(site_id = %r.site_id, ms = r.duration_ms, "heartbeat sent"),
        Err(HeartbeatError::NoRemote) => {}
        Err(e) => tracing::warn!("{e}"),
    }
}

/// The largest `sync_runs.id` of a successful upload, or 0 (a failed one
/// changed nothing remotely, and while the remote is down a heartbeat per
/// failed tick would only add connection errors to the logs).
async fn last_upload_id(db: &Databases) -> Result<i64, DbError> {
    let c = db.local().await?;
    let row = c
        .query_one(
            "SELECT coalesce(max(id), 0) FROM sync_runs
             WHERE kind = 'upload' AND status = 'ok'",
            &[],
        )
        .await
        .map_err(|e| DbError::query(Side::Local, &e))?;
    row.try_get(0).map_err(|e| DbError::query(Side::Local, &e))
}

/// The daemon's heartbeat task: a heartbeat now, after every successful
/// upload (any front end's, seen in the `sync_runs` journal), and at
/// least every [`HEARTBEAT_EVERY`], until `shutdown`. A failure is logged
/// once at WARN, then at DEBUG until a heartbeat succeeds again.
pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    if !app.db.has_remote() {
        tracing::info!("no remote database configured: no heartbeat");
        return;
    }
    if app.config.site_id.is_none() {
        tracing::warn!("SITE_ID is not set: the heartbeat reports this site as '{DEFAULT_SITE_ID}'; set SITE_ID on every site of a fleet");
    }
    let mut seen_upload: Option<i64> = None;
    let mut last_beat: Option<Instant> = None;
    let mut failing = false;
    loop {
        let latest = last_upload_id(&app.db).await.ok();
        let upload_finished = latest.is_some() && latest != seen_upload;
        let due = last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY);
        if upload_finished || due {
            last_beat = Some(Instant::now());
            if latest.is_some() {
                seen_upload = latest;
            }
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = beat(&app) => r,
            };
            match outcome {
                Ok(r) => {
                    if failing {
                        tracing::info!(site_id = %r.site_id, "heartbeat sent again");
                    }
                    failing = false;
                }
                Err(e) if failing => tracing::debug!("{e}"),
                Err(e) => {
                    failing = true;
                    tracing::warn!("{e} (logged once until it succeeds again)");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
    tracing::debug!("heartbeat stopped");
}
