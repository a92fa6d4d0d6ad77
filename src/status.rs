//! `sync_status`: the backlog waiting for upload, the last run of each
//! operation and the meters' health, read from the local database only (it
//! answers when the remote is down, which is when it matters most).

use serde::Serialize;

use crate::config::Side;
use crate::db::{Databases, DbError};

/// How many failing meters a status lists when no limit is given.
pub const FAILING_LIST_CAP: usize = 20;
/// The most failing meters one status page lists.
pub const FAILING_MAX_LIMIT: i64 = 500;

/// A bad `sync_status` argument, or the database failing.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// An argument is out of range or malformed.
    #[error("invalid {0}")]
    Argument(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Which failing meters a status lists: `limit` of them after `cursor`.
#[derive(Debug, Clone, Default)]
pub struct FailingPage {
    /// How many (1 to [`FAILING_MAX_LIMIT`], default [`FAILING_LIST_CAP`]).
    pub limit: Option<i64>,
    /// The `failing_next_cursor` of the previous status.
    pub cursor: Option<String>,
}

/// Readings waiting for upload.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Backlog {
    /// Readings in the local table.
    pub count: i64,
    /// `recorded_at` of the oldest one (RFC 3339), if any.
    pub oldest_recorded_at: Option<String>,
    /// Its age in seconds.
    pub oldest_age_s: Option<f64>,
}

/// The most recent run of one operation.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LastRun {
    /// `collect`, `upload`, `download_meters`, `download_tenants`, ...
    pub kind: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished, if it did.
    pub finished_at: Option<String>,
    /// `running`, `ok`, `failed` or `cancelled`.
    pub status: String,
    /// Its counts, as the operation reported them.
    pub counts: Option<serde_json::Value>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// One meter that failed its last collection.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FailingMeter {
    /// The meter's id.
    pub meter_id: i64,
    /// Failed collections in a row.
    pub consecutive_failures: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// The last successful read (RFC 3339), if any.
    pub last_success_at: Option<String>,
}

/// Meter health in short.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Health {
    /// Active meters.
    pub active_meters: i64,
    /// Active meters whose last collection succeeded.
    pub healthy: i64,
    /// Active meters whose last collection failed.
    pub failing: i64,
    /// Active meters never collected.
    pub never_collected: i64,
    /// The failing meters, worst first (most consecutive failures, then id), one page.
    pub failing_meters: Vec<FailingMeter>,
    /// Failing meters after this page.
    pub failing_meters_omitted: i64,
    /// Pass as `failing_cursor` for the next page of failing meters; `null` on the last.
    pub failing_next_cursor: Option<String>,
}

/// A remote row the last download of its table skipped, and why.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SkippedRow {
    /// `tenants` or `meters`.
    pub table: String,
    /// The row's id.
    pub id: i64,
    /// Why it was skipped and what to fix on the remote (names the row).
    pub error: String,
}

/// The `sync_status` result.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SyncStatus {
    /// Readings waiting for upload.
    pub backlog: Backlog,
    /// The last run of each operation.
    pub last_runs: Vec<LastRun>,
    /// The remote rows the last download of each table skipped (bad data
    /// left out; the rest applied), as that run's journal recorded them.
    pub skipped_rows: Vec<SkippedRow>,
    /// Meter health.
    pub health: Health,
    /// Backlog over `BACKLOG_WARN_ROWS` or older than `BACKLOG_WARN_AGE_S`
    /// (nothing is ever dropped; this says the remote is not keeping up).
    pub warnings: Vec<String>,
}

/// The backlog thresholds (`BACKLOG_WARN_ROWS`, `BACKLOG_WARN_AGE_S`): past
/// either, status, metrics, logs and the heartbeat carry a warning. They
/// never drop a reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrowthLimits {
    /// Rows waiting for upload before a warning.
    pub rows: u64,
    /// Age of the oldest waiting reading before a warning.
    pub age: std::time::Duration,
}

impl Default for GrowthLimits {
    fn default() -> Self {
        GrowthLimits {
            rows: 1_000_000,
            age: std::time::Duration::from_secs(86_400),
        }
    }
}

impl GrowthLimits {
    /// The limits the configuration sets.
    pub fn from_config(c: &crate::config::Config) -> Self {
        GrowthLimits {
            rows: c.backlog_warn_rows,
            age: c.backlog_warn_age,
        }
    }

    /// The warnings a backlog of `rows` whose oldest reading is `oldest_age_s`
    /// old deserves (empty when within limits).
    pub fn check(&self, rows: i64, oldest_age_s: Option<f64>) -> Vec<String> {
        let mut w = Vec::new();
        if rows.max(0) as u64 > self.rows {
            w.push(format!(
                "backlog of {rows} readings is over BACKLOG_WARN_ROWS={}: the remote is not keeping up (nothing is dropped)",
                self.rows
            ));
        }
        if let Some(age) = oldest_age_s {
            if age > self.age.as_secs_f64() {
                w.push(format!(
                    "oldest reading waiting for upload is {:.0} s old, over BACKLOG_WARN_AGE_S={} (nothing is dropped)",
                    age,
                    self.age.as_secs()
                ));
            }
        }
        w
    }
}

/// The skipped rows recorded by the last `download_*` runs (their
/// `counts.skipped_rows`), tenants then meters.
fn skipped_rows(last_runs: &[LastRun]) -> Vec<SkippedRow> {
    let mut out = Vec::new();
    for run in last_runs {
        let Some(table) = run.kind.strip_prefix("download_") else {
            continue;
        };
        let rows = run
            .counts
            .as_ref()
            .and_then(|c| c.get("skipped_rows"))
            .and_then(|r| r.as_array());
        for r in rows.into_iter().flatten() {
            if let (Some(id), Some(error)) = (
                r.get("id").and_then(|v| v.as_i64()),
                r.get("error").and_then(|v| v.as_str()),
            ) {
                out.push(SkippedRow {
                    table: table.to_string(),
                    id,
                    error: error.to_string(),
                });
            }
        }
    }
    out
}

/// A database timestamp as the tools show it: RFC 3339, UTC, milliseconds.
pub(crate) fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn failing_cursor(c: &str) -> Result<(i32, i64), StatusError> {
    let bad = || {
        StatusError::Argument(format!(
            "failing_cursor {:?}: pass the failing_next_cursor of a previous sync_status, or omit it",
            c.chars().take(40).collect::<String>()
        ))
    };
    let rest = c.strip_prefix("f1.").ok_or_else(bad)?;
    let (n, id) = rest.split_once('.').ok_or_else(bad)?;
    Ok((
        n.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// Reads the status from the local database, with the first page of
/// failing meters; `limits` decide its warnings.
///
/// Fails when the local database is unreachable or not migrated.
pub async fn sync_status_with(
    db: &Databases,
    limits: &GrowthLimits,
) -> Result<SyncStatus, StatusError> {
    sync_status(db, &FailingPage::default(), limits).await
}

/// Reads the status from the local database, with one page of failing
/// meters; `limits` decide its warnings.
///
/// Fails on a bad page argument, or when the local database is unreachable
/// or not migrated.
pub async fn sync_status(
    db: &Databases,
    page: &FailingPage,
    limits: &GrowthLimits,
) -> Result<SyncStatus, StatusError> {
    let limit = page.limit.unwrap_or(FAILING_LIST_CAP as i64);
    if !(1..=FAILING_MAX_LIMIT).contains(&limit) {
        return Err(StatusError::Argument(format!(
            "failing_limit: must be between 1 and {FAILING_MAX_LIMIT}, got {limit}"
        )));
    }
    let (after_failures, after_id) = match page.cursor.as_deref() {
        Some(c) => failing_cursor(c)?,
        None => (i32::MAX, i64::MIN),
    };
    let c = db.local().await?;
    let q = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
    let row = c
        .query_one(
            "SELECT count(*), min(recorded_at),
                    extract(epoch FROM now() - min(recorded_at))::float8
             FROM meter_readings",
            &[],
        )
        .await
        .map_err(q)?;
    let backlog = Backlog {
        count: row.try_get(0).map_err(q)?,
        oldest_recorded_at: ts(row.try_get(1).map_err(q)?),
        oldest_age_s: row.try_get(2).map_err(q)?,
    };
    let last_runs: Vec<LastRun> = c
        .query(
            "SELECT DISTINCT ON (kind) kind, started_at, finished_at, status, counts, error
             FROM sync_runs ORDER BY kind, started_at DESC, id DESC",
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| {
            Ok(LastRun {
                kind: r.try_get(0)?,
                started_at: ts(Some(r.try_get(1)?)).unwrap_or_default(),
                finished_at: ts(r.try_get(2)?),
                status: r.try_get(3)?,
                counts: r.try_get(4)?,
                error: r.try_get(5)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(q)?;
    let h = c
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE h.meter_id IS NOT NULL AND h.consecutive_failures = 0),
                    count(*) FILTER (WHERE h.consecutive_failures > 0),
                    count(*) FILTER (WHERE h.meter_id IS NULL)
             FROM meters m LEFT JOIN meter_health h ON h.meter_id = m.id
             WHERE m.active",
            &[],
        )
        .await
        .map_err(q)?;
    let failing: i64 = h.try_get(2).map_err(q)?;
    let failing_meters: Vec<FailingMeter> = c
        .query(
            "SELECT h.meter_id, h.consecutive_failures, h.last_error, h.last_success_at
             FROM meter_health h JOIN meters m ON m.id = h.meter_id
             WHERE m.active AND h.consecutive_failures > 0
               AND (h.consecutive_failures < $2
                    OR (h.consecutive_failures = $2 AND h.meter_id > $3))
             ORDER BY h.consecutive_failures DESC, h.meter_id
             LIMIT $1",
            &[&limit, &after_failures, &after_id],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| {
            Ok(FailingMeter {
                meter_id: r.try_get(0)?,
                consecutive_failures: r.try_get(1)?,
                last_error: r.try_get(2)?,
                last_success_at: ts(r.try_get(3)?),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(q)?;
    let skipped_rows = skipped_rows(&last_runs);
    let failing_after: i64 = c
        .query_one(
            "SELECT count(*) FROM meter_health h JOIN meters m ON m.id = h.meter_id
             WHERE m.active AND h.consecutive_failures > 0
               AND (h.consecutive_failures < $1
                    OR (h.consecutive_failures = $1 AND h.meter_id > $2))",
            &[
                &failing_meters
                    .last()
                    .map_or(after_failures, |f| f.consecutive_failures),
                &failing_meters.last().map_or(after_id, |f| f.meter_id),
            ],
        )
        .await
        .map_err(q)?
        .try_get(0)
        .map_err(q)?;
    let failing_next_cursor = (failing_after > 0)
        .then(|| failing_meters.last())
        .flatten()
        .map(|f| format!("f1.{}.{}", f.consecutive_failures, f.meter_id));
    let warnings = limits.check(backlog.count, backlog.oldest_age_s);
    Ok(SyncStatus {
        warnings,
        backlog,
        last_runs,
        skipped_rows,
        health: Health {
            active_meters: h.try_get(0).map_err(q)?,
            healthy: h.try_get(1).map_err(q)?,
            failing,
            never_collected: h.try_get(3).map_err(q)?,
            failing_meters_omitted: failing_after,
            failing_next_cursor,
            failing_meters,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_limits_warn_past_either_threshold_only() {
        let l = GrowthLimits {
            rows: 100,
            age: std::time::Duration::from_secs(60),
        };
        assert!(l.check(100, Some(60.0)).is_empty());
        assert!(l.check(0, None).is_empty());
        let w = l.check(101, Some(10.0));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("BACKLOG_WARN_ROWS=100"), "{w:?}");
        let w = l.check(5, Some(61.0));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("BACKLOG_WARN_AGE_S=60"), "{w:?}");
        assert_eq!(l.check(101, Some(61.0)).len(), 2);
    }
}
