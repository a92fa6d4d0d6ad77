//! The upload engine: moves meter readings from the local backlog
//! (`meter_readings`) to the remote, exactly once.
//!
//! Two paths ([`flow`] chooses):
//! - **the stream** ([`stream`]), the common case: one remote transaction
//!   fed straight from local `COPY (DELETE … RETURNING …) TO STDOUT` claims,
//!   re-framed on the fly ([`frame`]), three round trips per transaction
//!   whatever its size, no batch held in memory;
//! - **the batch path** (below, [`batches`]) for what the remote refuses
//!   from a stream: re-sends after a crash, bad rows, conflicts, a table
//!   that does not fit.
//!
//! One batch of the batch path is:
//! 1. **claim** (local): in a local transaction, one statement locks the next
//!    `batch_size` rows by id (`FOR UPDATE SKIP LOCKED`) and deletes exactly
//!    those rows, returning them. The transaction stays open until step 3:
//!    the delete is invisible to everyone else and undone by a crash, and a
//!    second uploader on the same site skips the locked rows. Coordination
//!    happens on the local database, never on the remote.
//! 2. **send** (remote, one transaction): binary `COPY` straight into the
//!    remote `meter_readings`, then `COMMIT`: five round trips whatever the
//!    batch size (BEGIN, prepare, COPY start, data, COMMIT). If the remote
//!    already holds one of the rows (a batch re-sent after a crash between
//!    the remote commit and the local commit), its primary key refuses the
//!    COPY and the batch is sent again with the idempotent
//!    `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`; the rows it
//!    skips are counted in `already_present`. If the remote rejects rows as
//!    bad data (a CHECK, a foreign key, an out-of-range value), the batch is
//!    bisected under savepoints to isolate them.
//! 3. **settle** (local, same transaction as step 1): rejected rows go to
//!    `meter_readings_quarantine` with the remote's error; `COMMIT` makes the
//!    delete of step 1 durable.
//!
//! The remote side sits behind the small `Destination` trait of `destination.rs`
//! (open, send, reconnect, abandon) whose delivery semantics are documented
//! there: idempotent on the reading key; an error means "outcome unknown,
//! send again". The batch loop is unit-tested against an in-memory
//! destination with failures injected before the commit, after it (a lost
//! acknowledgement) and during the local settle.
//!
//! Two batches are in flight: while batch `k` is sent, batch `k-1` settles
//! and batch `k+1` is claimed, each in its own local transaction, so the
//! local and the remote work overlap.
//!
//! Why this remote path (measured by `examples/bench_upload.rs`, release,
//! 1M rows in 10k batches through PgBouncer, remote side only, three runs on
//! a shared 2-core machine): direct binary COPY 105,000-152,000 rows/s (as
//! fast as the raw COPY pipe's remote side); UNNEST + ON CONFLICT
//! 58,000-85,000; binary COPY into an `ON COMMIT DROP` staging table +
//! INSERT … ON CONFLICT 38,000-65,000 (a temp table created and dropped per
//! batch). COPY needs no ON CONFLICT in the common case because the primary
//! key itself detects a re-send (the COPY then fails whole and nothing
//! half-done commits); the UNNEST statement is the idempotent fallback.
//!
//! Guarantees:
//! - a row leaves `meter_readings` (its delete commits) only after the remote
//!   transaction holding it has committed; a crash, a kill or a dropped connection at any instant
//!   loses nothing (the local transaction rolls back and the rows stay);
//! - a retry never duplicates a row remotely: the remote's primary key
//!   `(meter_id, point, recorded_at)` is checked before the first batch, and
//!   every re-send goes through `ON CONFLICT DO NOTHING`;
//! - only rows whose own data the remote refuses are quarantined; a refusal
//!   of the table's shape (no partition for the row, a missing column or
//!   table, permission denied) moves nothing: the batch stays local and the
//!   upload fails with what to change ([`reject`] decides, on SQLSTATE and
//!   the error's fields, never on message text);
//! - a row the remote already holds with another value is never dropped
//!   silently: it is counted in `conflicts` and kept with both values in
//!   `meter_readings_conflicts` (the remote row is never overwritten);
//! - rows that arrive locally during an upload are deleted only if uploaded;
//! - two uploaders never send the same rows (row locks, `SKIP LOCKED`);
//! - memory does not grow with the backlog: the stream holds a few 64 KiB
//!   buffers, the batch path at most [`flow::MAX_HELD_ROWS`] rows a batch;
//! - every remote transaction has a deadline derived from its size
//!   (`SET LOCAL statement_timeout` and a client-side I/O deadline, see
//!   [`deadline`]): a frozen link fails the batch, which stays local;
//! - cancellation is honoured between claims and batches: every committed
//!   chunk or batch is
//!   uploaded and deleted, nothing is half-done; a send that does not finish
//!   within [`CANCEL_GRACE`] of the cancellation is abandoned (its rows stay
//!   local; a later re-send finds whatever the remote committed);
//! - the remote sees only unnamed statements, or statements inside one
//!   transaction, so it works through a transaction-mode pooler;
//! - a batch that fails on a transient remote error (a dropped connection, a
//!   restart, PgBouncer's `server login has been failing`) is sent again on
//!   a new connection after the retry policy's backoff ([`crate::retry`]:
//!   2 s, 4 s, 8 s, ... for `MAX_CONNECTION_RETRIES` re-sends in a row, so
//!   at most 62 s of waiting with the default 5), cancellable; when they are
//!   used up the call ends with an error that says the backlog is intact.

mod batches;
mod destination;
mod flow;
mod frame;
mod local;
pub mod reject;
mod remote;
mod stream;

pub use remote::{deadline, CLIENT_GRACE, DEADLINE_BASE, DEADLINE_PER_ROW};

use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::db::DbError;
use crate::progress::Progress;
use crate::runs;

/// The largest batch accepted: the most rows one remote transaction
/// carries (rows are streamed, so this does not set the memory).
pub const MAX_BATCH_SIZE: usize = 1_000_000;

/// How many quarantined rows a report lists (the count is always exact).
pub const QUARANTINE_LIST_CAP: usize = 100;

/// More rejected rows than this in one batch is not bad readings but a
/// schema or constraint mismatch: the batch is left in place and the upload
/// fails, rather than quarantining the whole backlog.
pub const MAX_REJECTED_PER_BATCH: usize = 1_000;

/// What to upload.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Rows per remote transaction (1..=[`MAX_BATCH_SIZE`]); default
    /// `UPLOAD_BATCH_SIZE`.
    pub batch_size: Option<usize>,
    /// Stop after this many rows (at least 1); default: the whole backlog.
    pub max_rows: Option<u64>,
}

impl UploadOptions {
    /// Options from signed numbers, as a JSON tool argument arrives: a
    /// negative value is named like any other out-of-range one (the bounds
    /// themselves are checked when the upload starts).
    ///
    /// Fails naming the argument when a value is below 1.
    pub fn from_signed(
        batch_size: Option<i64>,
        max_rows: Option<i64>,
    ) -> Result<Self, UploadError> {
        let batch_size = match batch_size {
            Some(b) if b < 1 => {
                return Err(UploadError::InvalidArgument {
                    name: "batch_size",
                    reason: format!("must be between 1 and {MAX_BATCH_SIZE}, got {b}"),
                })
            }
            Some(b) => Some(usize::try_from(b).unwrap_or(usize::MAX)),
            None => None,
        };
        let max_rows = match max_rows {
            Some(m) if m < 1 => {
                return Err(UploadError::InvalidArgument {
                    name: "max_rows",
                    reason: format!(
                        "must be at least 1 (leave it out to upload the whole backlog), got {m}"
                    ),
                })
            }
            Some(m) => Some(m.unsigned_abs()),
            None => None,
        };
        Ok(UploadOptions {
            batch_size,
            max_rows,
        })
    }

    /// Checks the bounds and fills in the default batch size
    /// (`UPLOAD_BATCH_SIZE`, which the configuration accepts up to 1,000,000,
    /// capped here at [`MAX_BATCH_SIZE`]).
    ///
    /// Fails naming the argument when a value is out of range.
    fn batch_size(&self, default: usize) -> Result<usize, UploadError> {
        if let Some(m) = self.max_rows {
            if m == 0 {
                return Err(UploadError::InvalidArgument {
                    name: "max_rows",
                    reason: "must be at least 1 (leave it out to upload the whole backlog)".into(),
                });
            }
        }
        let Some(b) = self.batch_size else {
            if default > MAX_BATCH_SIZE {
                tracing::warn!(
                    "UPLOAD_BATCH_SIZE={default} is above the upload's limit; using {MAX_BATCH_SIZE}"
                );
            }
            return Ok(default.clamp(1, MAX_BATCH_SIZE));
        };
        if !(1..=MAX_BATCH_SIZE).contains(&b) {
            return Err(UploadError::InvalidArgument {
                name: "batch_size",
                reason: format!("must be between 1 and {MAX_BATCH_SIZE}, got {b}"),
            });
        }
        Ok(b)
    }
}

/// A reading the remote refused, now in `meter_readings_quarantine`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct QuarantinedRow {
    /// Its local id (kept in the quarantine table).
    pub id: i64,
    /// The meter.
    pub meter_id: i64,
    /// The point name.
    pub point: String,
    /// When it was read (RFC 3339).
    pub recorded_at: String,
    /// The remote's error for this row.
    pub error: String,
}

/// How long a send may go on after a cancellation before it is abandoned:
/// a healthy batch finishes (so nothing is left half-known), a frozen link
/// does not hold up a shutdown.
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A reading the remote holds with the same key and another value, now in
/// `meter_readings_conflicts`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConflictRow {
    /// Its local id (kept in the conflicts table).
    pub id: i64,
    /// The meter.
    pub meter_id: i64,
    /// The point name.
    pub point: String,
    /// When it was read (RFC 3339).
    pub recorded_at: String,
    /// The value read locally.
    pub local_value: f64,
    /// The value the remote holds (`null` if its column allows NULL).
    pub remote_value: Option<f64>,
}

/// What one upload did.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct UploadReport {
    /// Rows inserted remotely by this call.
    pub uploaded: u64,
    /// Rows the remote already held with the same value (a batch re-sent
    /// after a crash); deleted locally, not inserted again.
    pub already_present: u64,
    /// Rows deleted from the local backlog because the remote holds them
    /// (`uploaded + already_present`).
    pub deleted_local: u64,
    /// Remote transactions committed.
    pub batches: u64,
    /// Rows left in the local backlog when the call ended (new arrivals,
    /// `max_rows`, rows another uploader holds, or a cancellation).
    pub remaining: u64,
    /// Rows the remote rejected as bad data, moved to
    /// `meter_readings_quarantine` with its error.
    pub quarantined: u64,
    /// The first quarantined rows (at most 100), with the remote's error.
    pub quarantined_rows: Vec<QuarantinedRow>,
    /// Rows the remote already held with another value, moved to
    /// `meter_readings_conflicts` with both values (`list_quarantine` with
    /// `conflicts: true` lists them).
    pub conflicts: u64,
    /// The first conflicts (at most 100), with both values.
    pub conflict_rows: Vec<ConflictRow>,
    /// Batches sent again after a transient remote failure.
    pub resent_batches: u64,
    /// Whether the call stopped early on request.
    pub cancelled: bool,
    /// Wall time of the call.
    pub duration_ms: u64,
}

impl runs::RunReport for UploadReport {
    fn cancelled(&self) -> bool {
        self.cancelled
    }
}

/// Why an upload failed. Every batch committed before the failure stays
/// uploaded and deleted; the batch in flight stays local.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A tool argument or flag is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Nothing was uploaded: a database could not be used.
    #[error("{source}; nothing was uploaded, the backlog is untouched")]
    Start {
        /// The cause (with what to do next, when a person must act).
        #[source]
        source: DbError,
    },
    /// The remote `meter_readings` cannot guarantee exactly-once.
    #[error("the remote table meter_readings {problem}; nothing was uploaded. Run `metersync migrate`, or give the table the contract's primary key (meter_id, point, recorded_at)")]
    RemoteSchema {
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The upload stopped in the middle.
    #[error("the upload stopped at batch {batch} after {done} rows were uploaded: {source}; the rows of that batch are still local, nothing is lost or doubled; run the upload again (it is safe)")]
    Interrupted {
        /// The batch that failed (1-based).
        batch: u64,
        /// Rows uploaded (or found present) and deleted before it.
        done: u64,
        /// The cause (with what to do next, when a person must act).
        #[source]
        source: DbError,
    },
    /// The remote refused the batch for a reason the operator must fix on
    /// the remote (no partition for the rows, a missing column, permission).
    #[error("the upload stopped at batch {batch} after {done} rows were uploaded: the remote table refused the rows: {cause}; the rows of that batch are still local (none was quarantined): {hint}")]
    RemoteTable {
        /// The batch that failed (1-based).
        batch: u64,
        /// Rows uploaded (or found present) and deleted before it.
        done: u64,
        /// The remote's error.
        cause: String,
        /// What to change on the remote.
        hint: String,
    },
    /// The remote rejects too much of one batch to be bad readings.
    #[error("the remote rejected more than {MAX_REJECTED_PER_BATCH} rows of batch {batch} (first error: {first}); this looks like a mismatch between the remote table and the contract, not bad readings, so nothing of that batch was moved; check the remote's constraints on meter_readings, then run the upload again")]
    TooManyRejected {
        /// The batch (1-based).
        batch: u64,
        /// The remote's first error.
        first: String,
    },
}

impl UploadError {
    /// Whether running the upload again later, unchanged, may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            UploadError::Start { source, .. } | UploadError::Interrupted { source, .. } => {
                source.is_transient()
            }
            _ => false,
        }
    }
}

/// Uploads the local backlog (or `max_rows` of it) to the remote.
///
/// Records the run in `sync_runs`, reports progress after every batch and
/// stops between batches when `cancel` fires.
///
/// Fails on invalid options, when a database stays unreachable after the
/// retry policy, when the remote table lacks its primary key, or when a batch
/// fails for a reason other than bad rows (see [`UploadError`]).
pub async fn upload(
    app: &App,
    opts: UploadOptions,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<UploadReport, UploadError> {
    let batch_size = opts.batch_size(app.config.upload_batch_size)?;
    let start = |source: DbError| UploadError::Start { source };
    let run = runs::Run::start(&app.db, "upload").await.map_err(start)?;
    let mut dest = destination::PgDestination::new(&app.db, app.config.site_id.as_deref());
    let call = flow::Call {
        db: &app.db,
        max_resends: app.config.pool.max_retries,
        batch_size,
        max_rows: opts.max_rows,
        progress,
        cancel,
    };
    let result = flow::run(&call, &mut dest, Instant::now()).await;
    run.finish(&app.db, &result).await;
    match &result {
        Ok(r) => tracing::info!(
            uploaded = r.uploaded,
            already_present = r.already_present,
            quarantined = r.quarantined,
            batches = r.batches,
            remaining = r.remaining,
            duration_ms = r.duration_ms,
            "upload finished"
        ),
        Err(e) => tracing::error!("upload failed: {e}"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(batch_size: Option<usize>, max_rows: Option<u64>) -> UploadOptions {
        UploadOptions {
            batch_size,
            max_rows,
        }
    }

    #[test]
    fn batch_size_bounds_name_the_argument() {
        assert_eq!(opts(None, None).batch_size(10_000).ok(), Some(10_000));
        assert_eq!(
            opts(None, None).batch_size(2_000_000).ok(),
            Some(MAX_BATCH_SIZE)
        );
        assert_eq!(opts(Some(1), Some(1)).batch_size(10).ok(), Some(1));
        for (o, name) in [
            (opts(Some(0), None), "batch_size"),
            (opts(Some(MAX_BATCH_SIZE + 1), None), "batch_size"),
            (opts(None, Some(0)), "max_rows"),
        ] {
            let e = o.batch_size(10_000).err().map(|e| e.to_string());
            assert!(e.as_deref().unwrap_or("").contains(name), "{e:?}");
        }
        for (b, m, name) in [(Some(-5), None, "batch_size"), (None, Some(0), "max_rows")] {
            let e = UploadOptions::from_signed(b, m)
                .err()
                .map(|e| e.to_string());
            assert!(e.as_deref().unwrap_or("").contains(name), "{e:?}");
        }
        let o = UploadOptions::from_signed(Some(500), Some(7)).ok();
        assert_eq!(
            o.map(|o| (o.batch_size, o.max_rows)),
            Some((Some(500), Some(7)))
        );
    }
}
