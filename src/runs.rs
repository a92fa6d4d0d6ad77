//! The `sync_runs` journal: one row per operation (kind, started, finished,
//! status, counts, error), written on the local database.
//!
//! A run is opened before the work and closed after it; a run left
//! `running` by a killed process stays visible as such, which is the honest
//! record of what happened.

use crate::config::Side;
use crate::db::{Databases, DbError};
use tokio_postgres::types::Type;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Finished without error.
    Ok,
    /// Stopped by an error.
    Failed,
    /// Stopped on request between units of work.
    Cancelled,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// Opens a run of `kind` and returns its id.
///
/// Fails when the local database is unreachable.
pub async fn start(db: &Databases, kind: &str) -> Result<i64, DbError> {
    let c = db.local().await?;
    let row = c
        .query_one(
            "INSERT INTO sync_runs (kind) VALUES ($1) RETURNING id",
            &[&kind],
        )
        .await
        .map_err(|e| DbError::query(Side::Local, &e))?;
    row.try_get(0).map_err(|e| DbError::query(Side::Local, &e))
}

/// Closes run `id` with its outcome. Logs instead of failing: the journal
/// must never turn a finished operation into a failed one.
pub async fn finish(
    db: &Databases,
    id: i64,
    status: RunStatus,
    counts: &serde_json::Value,
    error: Option<&str>,
) {
    let result = async {
        let c = db.local().await?;
        c.execute_typed(
            "UPDATE sync_runs SET finished_at = now(), status = $2, counts = $3, error = $4 WHERE id = $1",
            &[
                (&id, Type::INT8),
                (&status.as_str(), Type::TEXT),
                (counts, Type::JSONB),
                (&error, Type::TEXT),
            ],
        )
        .await
        .map_err(|e| DbError::query(Side::Local, &e))
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(run = id, "could not record the end of the run: {e}");
    }
}

/// What an engine's report records in its run: one shape for every engine.
pub trait RunReport: serde::Serialize {
    /// Whether the run stopped on request (recorded as `cancelled`).
    fn cancelled(&self) -> bool {
        false
    }

    /// The run's `counts`: the report itself unless the engine says otherwise.
    fn counts(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// An open run of the journal: [`Run::start`] before the work,
/// [`Run::finish`] with its result after it. A finished run records `ok`
/// or `cancelled` with the report's counts, or `failed` with `{}` as counts
/// and the error's message: the same shape for collect, upload and download.
#[derive(Debug)]
#[must_use = "a run must be finished"]
pub struct Run {
    id: i64,
}

impl Run {
    /// Opens a run of `kind`.
    ///
    /// Fails when the local database is unreachable.
    pub async fn start(db: &Databases, kind: &str) -> Result<Run, DbError> {
        start(db, kind).await.map(|id| Run { id })
    }

    /// Closes the run with `result`'s outcome (logs instead of failing).
    pub async fn finish<R: RunReport, E: std::fmt::Display>(
        self,
        db: &Databases,
        result: &Result<R, E>,
    ) {
        match result {
            Ok(r) => {
                let status = if r.cancelled() {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Ok
                };
                finish(db, self.id, status, &r.counts(), None).await;
            }
            Err(e) => {
                let msg = e.to_string();
                let counts = serde_json::json!({});
                finish(db, self.id, RunStatus::Failed, &counts, Some(&msg)).await;
            }
        }
    }
}

/// The most recent `limit` runs, newest first, as JSON objects.
///
/// Fails when the local database is unreachable.
pub async fn recent(db: &Databases, limit: i64) -> Result<Vec<serde_json::Value>, DbError> {
    let c = db.local().await?;
    let rows = c
        .query(
            "SELECT id, kind, started_at, finished_at, status, counts, error
             FROM sync_runs ORDER BY started_at DESC, id DESC LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(|e| DbError::query(Side::Local, &e))?;
    let ts = crate::status::ts;
    rows.iter()
        .map(|r| {
            Ok(serde_json::json!({
                "id": r.try_get::<_, i64>(0)?,
                "kind": r.try_get::<_, String>(1)?,
                "started_at": ts(Some(r.try_get(2)?)),
                "finished_at": ts(r.try_get(3)?),
                "status": r.try_get::<_, String>(4)?,
                "counts": r.try_get::<_, Option<serde_json::Value>>(5)?,
                "error": r.try_get::<_, Option<String>>(6)?,
            }))
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| DbError::query(Side::Local, &e))
}
