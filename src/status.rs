//! `sync_status`: the backlog waiting for upload, the last run of each
//! operation and the meters' health, read from the local database only (it
//! answers when the remote is down, which is when it matters most).

use serde::Serialize;

use crate::config::Side;
use crate::db::{Databases, DbError};

/// How many failing meters a status lists before it only counts.
pub const FAILING_LIST_CAP: usize = 20;

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
    /// The failing meters, worst first (at most [`FAILING_LIST_CAP`]).
    pub failing_meters: Vec<FailingMeter>,
    /// Failing meters left out of the list.
    pub failing_meters_omitted: i64,
}

/// The `sync_status` result.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SyncStatus {
    /// Readings waiting for upload.
    pub backlog: Backlog,
    /// The last run of each operation.
    pub last_runs: Vec<LastRun>,
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

/// A database timestamp as the tools show it: RFC 3339, UTC, milliseconds.
pub(crate) fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Reads the status from the local database, with the default
/// [`GrowthLimits`].
///
/// Fails when the local database is unreachable or not migrated.
pub async fn sync_status(db: &Databases) -> Result<SyncStatus, DbError> {
    sync_status_with(db, &GrowthLimits::default()).await
}

/// Reads the status from the local database; `limits` decide its warnings.
///
/// Fails when the local database is unreachable or not migrated.
pub async fn sync_status_with(
    db: &Databases,
    limits: &GrowthLimits,
) -> Result<SyncStatus, DbError> {
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
        count: row.get(0),
        oldest_recorded_at: ts(row.get(1)),
        oldest_age_s: row.get(2),
    };
    let last_runs = c
        .query(
            "SELECT DISTINCT ON (kind) kind, started_at, finished_at, status, counts, error
             FROM sync_runs ORDER BY kind, started_at DESC, id DESC",
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| LastRun {
            kind: r.get(0),
            started_at: ts(Some(r.get(1))).unwrap_or_default(),
            finished_at: ts(r.get(2)),
            status: r.get(3),
            counts: r.get(4),
            error: r.get(5),
        })
        .collect();
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
    let failing: i64 = h.get(2);
    let failing_meters: Vec<FailingMeter> = c
        .query(
            "SELECT h.meter_id, h.consecutive_failures, h.last_error, h.last_success_at
             FROM meter_health h JOIN meters m ON m.id = h.meter_id
             WHERE m.active AND h.consecutive_failures > 0
             ORDER BY h.consecutive_failures DESC, h.meter_id
             LIMIT $1",
            &[&(FAILING_LIST_CAP as i64)],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| FailingMeter {
            meter_id: r.get(0),
            consecutive_failures: r.get(1),
            last_error: r.get(2),
            last_success_at: ts(r.get(3)),
        })
        .collect();
    let warnings = limits.check(backlog.count, backlog.oldest_age_s);
    Ok(SyncStatus {
        warnings,
        backlog,
        last_runs,
        health: Health {
            active_meters: h.get(0),
            healthy: h.get(1),
            failing,
            never_collected: h.get(3),
            failing_meters_omitted: (failing - failing_meters.len() as i64).max(0),
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
