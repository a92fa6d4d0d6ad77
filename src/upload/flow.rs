//! Which path the rows take: the stream ([`super::stream`]) for the common
//! case, the batch loop ([`super::batches`]) for the rows a stream could not
//! deliver.
//!
//! - Chunk after chunk is streamed, each one remote transaction of up to
//!   `batch_size` rows and [`super::stream::MAX_CHUNK_DURATION`], until the
//!   backlog (or `max_rows`) is done or the call is cancelled.
//! - When a chunk fails on a transient remote error (a cut link, a restart,
//!   a deadline), nothing of it committed (or its outcome is unknown): it is
//!   streamed again on a new connection after the retry policy's backoff,
//!   at most `MAX_CONNECTION_RETRIES` times in a row.
//! - When the remote refuses a chunk (it already holds a row, refuses a row
//!   as bad data, lacks a partition, or the table does not fit), nothing of
//!   it committed, and the rest of the call goes through the batch loop, which re-sends idempotently (`ON CONFLICT
//!   DO NOTHING`), isolates bad rows into the quarantine, keeps conflicts,
//!   retries transient failures with backoff and names what an operator
//!   must change. So a call wastes at most one chunk on a refusal; the next
//!   call streams again.
//! - A local failure ends the call (the chunk's local transaction rolls back).
//!
//! Round trips per call on a healthy link: connecting (made while the
//! backlog is counted), then three per chunk (BEGIN with the COPY's prepare,
//! and on a new connection the table's key check; the COPY's start; the
//! rows, CopyDone and COMMIT), whatever the chunk's size; `tests/wan.rs`
//! counts them through a proxy. An empty backlog never contacts the remote.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::batches::{self, moved, run_batches};
use super::destination::Destination;
use super::stream::{ChunkLimits, StreamError, CLAIM_ROWS, MAX_CHUNK_DURATION};
use super::{local, UploadError, UploadReport, QUARANTINE_LIST_CAP};
use crate::capped;
use crate::config::Side;
use crate::db::{Databases, DbError};
use crate::progress::Progress;

/// Rows a batch of the batch loop holds in memory at most, whatever the
/// batch size: the batch loop handles what a stream hands back (re-sends,
/// bad rows, conflicts), so its batches stay small.
pub(super) const MAX_HELD_ROWS: usize = 10_000;

/// The context of one upload call.
pub(super) struct Call<'a> {
    /// Both databases.
    pub db: &'a Databases,
    /// Re-sends in a row after transient failures.
    pub max_resends: u32,
    /// Rows per remote transaction.
    pub batch_size: usize,
    /// Stop after this many rows.
    pub max_rows: Option<u64>,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// Stops the call between claims and batches.
    pub cancel: &'a CancellationToken,
}

/// Progress of the batch loop, shifted by what the call did before it.
struct Shifted<'a> {
    inner: &'a dyn Progress,
    before: u64,
    total: u64,
}

impl Progress for Shifted<'_> {
    fn update(&self, done: u64, _total: Option<u64>, message: &str) {
        self.inner.update(
            self.before + done,
            Some(self.total),
            &format!("{message} (by batches, after a refused stream)"),
        );
    }
}

/// Adds what the batch loop did to the call's report.
fn merge(report: &mut UploadReport, part: UploadReport) {
    report.uploaded += part.uploaded;
    report.already_present += part.already_present;
    report.deleted_local += part.deleted_local;
    report.batches += part.batches;
    report.quarantined += part.quarantined;
    report.conflicts += part.conflicts;
    report.resent_batches += part.resent_batches;
    capped::fill(
        &mut report.quarantined_rows,
        QUARANTINE_LIST_CAP,
        part.quarantined_rows,
    );
    capped::fill(
        &mut report.conflict_rows,
        QUARANTINE_LIST_CAP,
        part.conflict_rows,
    );
}

/// Uploads through `dest`: streams when it can, else (and for what a
/// stream hands back) by batches.
///
/// Fails as [`super::upload`] says.
pub(super) async fn run<D: Destination + Send>(
    call: &Call<'_>,
    dest: &mut D,
    t0: Instant,
) -> Result<UploadReport, UploadError> {
    let held = call.batch_size.min(MAX_HELD_ROWS);
    if !dest.streams() {
        return run_batches(
            call.db,
            dest,
            call.max_resends,
            held,
            call.max_rows,
            call.progress,
            call.cancel,
            t0,
        )
        .await;
    }
    let start = |source: DbError| UploadError::Start { source };
    let mut report = UploadReport::default();
    // An empty backlog never contacts the remote.
    if !local::any_waiting(call.db).await.map_err(start)? {
        report.duration_ms = t0.elapsed().as_millis() as u64;
        return Ok(report);
    }
    // The remote connects while the backlog is counted (the table's check
    // then leaves with the first chunk).
    let (backlog, connected) = tokio::join!(local::backlog(call.db), dest.connect());
    let backlog = backlog.map_err(start)?;
    connected?;
    let total = call.max_rows.map_or(backlog, |m| m.min(backlog));
    let mut after = 0i64;
    // Chunks re-sent in a row after transient failures.
    let mut resends = 0u32;
    loop {
        let left = call
            .max_rows
            .map_or(u64::MAX, |m| m.saturating_sub(moved(&report)));
        if left == 0 || call.cancel.is_cancelled() {
            break;
        }
        let interrupted = |source: DbError| UploadError::Interrupted {
            batch: report.batches + 1,
            done: moved(&report),
            source,
        };
        let limits = ChunkLimits {
            rows: (call.batch_size as u64).min(left),
            claim: call.batch_size.min(CLAIM_ROWS),
            duration: MAX_CHUNK_DURATION,
        };
        let conn = call.db.local().await.map_err(interrupted)?;
        let t = Instant::now();
        let (before, batch) = (moved(&report), report.batches + 1);
        let sent = |n: u64| {
            call.progress.update(
                before + n,
                Some(total),
                &format!(
                    "batch {batch}: {} of {total} rows sent (committed when the batch ends)",
                    before + n
                ),
            )
        };
        let stream = dest.stream(conn, after, limits, call.cancel, &sent);
        let outcome = batches::unless_abandoned(stream, call.cancel).await;
        match outcome {
            None => {
                // Cancelled and the chunk did not finish within the grace:
                // abandoned (its local transaction rolls back with its
                // connection; a later re-send finds whatever the remote
                // committed).
                tracing::warn!(
                    batch = report.batches + 1,
                    "cancelled while the remote was not answering; the chunk in flight stays local"
                );
                dest.abandon();
                break;
            }
            Some(Ok(chunk)) => {
                resends = 0;
                report.uploaded += chunk.rows;
                report.deleted_local += chunk.rows;
                if chunk.rows > 0 {
                    report.batches += 1;
                }
                after = chunk.max_id.unwrap_or(after);
                let done = moved(&report);
                tracing::debug!(
                    batch = report.batches,
                    rows = chunk.rows,
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    "chunk streamed and committed"
                );
                if chunk.rows > 0 {
                    call.progress.update(
                        done,
                        Some(total),
                        &format!("batch {}: {done} of {total} rows", report.batches),
                    );
                }
                if chunk.drained {
                    break;
                }
            }
            Some(Err(StreamError::Local(source))) => return Err(interrupted(source)),
            Some(Err(StreamError::Fatal(e))) => return Err(e),
            Some(Err(StreamError::Unsupported)) => {
                return Err(interrupted(DbError::Query {
                    side: Side::Remote,
                    cause: "the destination cannot stream (a bug in metersync)".into(),
                    transient: false,
                }))
            }
            Some(Err(StreamError::Remote { error, .. }))
                if error.is_transient() && resends < call.max_resends =>
            {
                // Nothing of the chunk committed (or its outcome is unknown,
                // which only a refused re-send can show: then the batches
                // below take over): send it again on a new connection.
                call.db.note_error(Side::Remote, &error.to_string());
                let stop =
                    batches::before_resend(&mut report, &mut resends, "chunk", &error, call.cancel);
                if stop.await {
                    break;
                }
                dest.connect().await.map_err(|e| shift(e, &report))?;
            }
            Some(Err(StreamError::Remote { error, rows })) if !error.is_transient() => {
                call.db.note_error(Side::Remote, &error.to_string());
                tracing::info!(
                    batch = report.batches + 1,
                    rows_sent = rows,
                    "the remote did not take the streamed chunk ({error}); sending the rest of the backlog by batches"
                );
                // The rest of the call goes by batches: the batch loop
                // opens the destination again (with the retry policy) and
                // takes the rows from the lowest id, this chunk's first.
                let part = run_batches(
                    call.db,
                    dest,
                    call.max_resends,
                    held,
                    call.max_rows.map(|_| left),
                    &Shifted {
                        inner: call.progress,
                        before: moved(&report),
                        total,
                    },
                    call.cancel,
                    Instant::now(),
                )
                .await
                .map_err(|e| shift(e, &report))?;
                merge(&mut report, part);
                break;
            }
            Some(Err(StreamError::Remote { error, .. })) => {
                return Err(UploadError::Interrupted {
                    batch: report.batches + 1,
                    done: moved(&report),
                    source: error,
                })
            }
        }
    }
    report.cancelled = call.cancel.is_cancelled();
    report.remaining = local::backlog(call.db).await.unwrap_or(0);
    report.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

/// An error of the batch loop, counted from the start of the call.
fn shift(e: UploadError, before: &UploadReport) -> UploadError {
    let (b, d) = (before.batches, moved(before));
    match e {
        UploadError::Start { source } if d > 0 => UploadError::Interrupted {
            batch: b + 1,
            done: d,
            source,
        },
        UploadError::Interrupted {
            batch,
            done,
            source,
        } => UploadError::Interrupted {
            batch: b + batch,
            done: d + done,
            source,
        },
        UploadError::RemoteTable {
            batch,
            done,
            cause,
            hint,
        } => UploadError::RemoteTable {
            batch: b + batch,
            done: d + done,
            cause,
            hint,
        },
        UploadError::TooManyRejected { batch, first } => UploadError::TooManyRejected {
            batch: b + batch,
            first,
        },
        other => other,
    }
}
