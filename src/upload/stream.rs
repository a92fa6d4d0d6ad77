//! The streaming path of the upload: one remote transaction fed straight
//! from the local backlog, without holding a batch in memory and without a
//! round trip per batch.
//!
//! One *chunk* (one remote transaction) is:
//! 1. the local `BEGIN` and the first claim (below); when its first row
//!    arrives (never for a claim that finds nothing), the remote `BEGIN; SET
//!    LOCAL …` and the prepare of `COPY meter_readings (…) FROM STDIN
//!    (FORMAT binary)`, pipelined (one round trip; on a new connection the
//!    check of the table's key leaves with them), then the COPY's start
//!    (one round trip);
//! 2. one or more *claims*, each a local
//!    `COPY (DELETE … WHERE ctid = ANY(ARRAY(SELECT … ORDER BY id LIMIT n FOR
//!    UPDATE SKIP LOCKED)) RETURNING …) TO STDOUT (FORMAT binary)` in the same
//!    local transaction, re-framed on the fly ([`super::frame`]) into the
//!    remote COPY: nothing waits for an answer while rows flow;
//! 3. CopyDone and `COMMIT` pipelined (one round trip): the chunk counts
//!    only when both succeed (a COPY that failed makes the server answer
//!    that `COMMIT` with a rollback);
//! 4. the local `COMMIT`, which makes the claims' deletes durable.
//!
//! A chunk ends after `rows` rows (the batch size), after
//! [`MAX_CHUNK_DURATION`] of streaming (so a slow link does not hold a
//! pooler's transaction for minutes, and a lost link loses little work), when
//! a claim finds fewer rows than it asked for (the backlog is drained), or
//! on cancellation (then it commits what it sent).
//!
//! Guarantees (the same as the batch path's, see [`super`]):
//! - the local delete commits only after the remote commit: a failure or a
//!   kill at any instant rolls the local transaction back and the rows stay;
//! - the remote's primary key refuses a row it already holds, which fails
//!   the whole chunk (nothing of it commits); the caller then sends those
//!   rows through the idempotent batch path;
//! - every remote wait has a deadline: a step that makes no progress within
//!   [`STALL`] (plus [`CLIENT_GRACE`]) fails the chunk, and the server ends
//!   the transaction by itself after [`chunk_timeout`];
//! - memory is bounded by a few buffers of [`OUT_CHUNK`] bytes, whatever the
//!   chunk's size: the local stream is read only as fast as the remote
//!   takes it.

use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::frame::{FrameError, Reframer};
use super::remote::{check_table, deadline, CLIENT_GRACE, DEADLINE_BASE};
use super::UploadError;
use crate::config::Side;
use crate::db::DbError;

/// Rows per claim (one local statement) at most: a claim is the unit of
/// cancellation and of the duration check.
pub(super) const CLAIM_ROWS: usize = 10_000;

/// A chunk stops taking claims after this much streaming.
pub const MAX_CHUNK_DURATION: Duration = Duration::from_secs(10);

/// How long one remote step (the start, a write, the commit) may make no
/// progress before the chunk fails as a frozen link.
pub(super) const STALL: Duration = DEADLINE_BASE;

/// Re-framed bytes are handed to the remote COPY in pieces of this size.
pub(super) const OUT_CHUNK: usize = 64 * 1024;

/// The remote COPY of a chunk.
const COPY_IN: &str = "COPY meter_readings (meter_id, point, recorded_at, value, unit, site_id) \
                       FROM STDIN (FORMAT binary)";

/// The server-side timeout of a chunk's statements and idle time: the
/// longest a healthy chunk streams, plus one claim's batch deadline.
pub(super) fn chunk_timeout(claim: usize) -> Duration {
    MAX_CHUNK_DURATION + deadline(claim)
}

/// The bounds of one chunk.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkLimits {
    /// Rows at most (the batch size, or what `max_rows` leaves).
    pub rows: u64,
    /// Rows per claim.
    pub claim: usize,
    /// Claims stop after this much streaming.
    pub duration: Duration,
}

/// A committed chunk.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streamed {
    /// Rows inserted remotely and deleted locally.
    pub rows: u64,
    /// The highest local id claimed (the next chunk's keyset start).
    pub max_id: Option<i64>,
    /// A claim found fewer rows than it asked for: nothing more to take now.
    pub drained: bool,
}

/// Why a chunk did not commit.
#[derive(Debug)]
pub(super) enum StreamError {
    /// The local side failed (before or after the remote commit; in the
    /// second case the rows are remote and still local, which a re-send
    /// resolves as `already_present`).
    Local(DbError),
    /// The remote failed, refused the rows or did not answer in time; the
    /// remote transaction did not commit (or, for a failed `COMMIT`, its
    /// outcome is unknown). The chunk's rows stay local.
    Remote {
        /// The cause.
        error: DbError,
        /// Rows sent before the failure (at least what must be re-sent).
        rows: u64,
    },
    /// The remote table cannot take the upload (its key is missing, see
    /// [`check_table`]): the call ends with this error.
    Fatal(UploadError),
    /// The destination cannot stream.
    Unsupported,
}

fn local_err(e: tokio_postgres::Error) -> StreamError {
    StreamError::Local(DbError::query(Side::Local, &e))
}

fn frame_err(e: FrameError) -> StreamError {
    StreamError::Local(DbError::Query {
        side: Side::Local,
        cause: format!("{e} (a bug in metersync)"),
        transient: false,
    })
}

fn remote_err(e: &tokio_postgres::Error, rows: u64) -> StreamError {
    StreamError::Remote {
        error: DbError::query(Side::Remote, e),
        rows,
    }
}

fn stalled(what: &str, rows: u64) -> StreamError {
    StreamError::Remote {
        error: DbError::Query {
            side: Side::Remote,
            cause: format!(
                "no progress from the remote within the deadline of {:.0} s while {what} (the link may be frozen or the server overloaded)",
                (STALL + CLIENT_GRACE).as_secs_f64()
            ),
            transient: true,
        },
        rows,
    }
}

/// Sends one chunk from `local` (a connection the caller closes on error,
/// so that the local transaction rolls back) to `remote`, tagging rows with
/// `site_id` and claiming ids above `after`; commits both sides. `sent`
/// hears the chunk's rows sent so far after each claim.
///
/// Fails as [`StreamError`] says; on any error both connections must be
/// discarded by the caller (their state is unknown).
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_chunk(
    local: &Client,
    remote: &Client,
    site_id: Option<&str>,
    after: i64,
    limits: ChunkLimits,
    check: bool,
    cancel: &CancellationToken,
    sent: &(dyn Fn(u64) + Sync),
) -> Result<Streamed, StreamError> {
    let wait = STALL + CLIENT_GRACE;
    let ms = chunk_timeout(limits.claim).as_millis();
    let begin = format!(
        "BEGIN; SET LOCAL statement_timeout = {ms}; SET LOCAL idle_in_transaction_session_timeout = {ms}"
    );
    // BEGIN and the COPY's prepare leave together.
    let remote_start = || async {
        let both = async {
            let (checked, b, sink) = tokio::join!(
                async {
                    match check {
                        true => check_table(remote).await,
                        false => Ok(()),
                    }
                },
                remote.batch_execute(&begin),
                remote.copy_in::<_, Bytes>(COPY_IN)
            );
            (checked, b.and(sink))
        };
        match tokio::time::timeout(wait, both).await {
            Ok((Err(UploadError::Start { source }), _)) if source.is_transient() => {
                Err(StreamError::Remote {
                    error: source,
                    rows: 0,
                })
            }
            Ok((Err(e), _)) => Err(StreamError::Fatal(e)),
            Ok((Ok(()), Ok(sink))) => Ok(sink),
            Ok((Ok(()), Err(e))) => Err(remote_err(&e, 0)),
            Err(_) => Err(stalled("starting the COPY", 0)),
        }
    };
    local.batch_execute("BEGIN").await.map_err(local_err)?;
    // The remote is started when the first row is claimed, so a claim that
    // finds nothing costs the remote nothing.
    let mut sink = None;
    let t0 = Instant::now();
    let mut frames = Reframer::new(site_id);
    let mut out = BytesMut::with_capacity(2 * OUT_CHUNK);
    Reframer::header(&mut out);
    let mut keyset = after;
    let mut drained = false;
    loop {
        let want = limits
            .rows
            .saturating_sub(frames.rows())
            .min(limits.claim as u64);
        if want == 0 {
            break;
        }
        // Integers only: COPY takes no parameters.
        let sql = format!(
            "COPY (DELETE FROM meter_readings WHERE ctid = ANY(ARRAY( \
               SELECT ctid FROM meter_readings WHERE id > {keyset} ORDER BY id LIMIT {want} \
               FOR UPDATE SKIP LOCKED)) \
             RETURNING id, meter_id, point, recorded_at, value, unit) TO STDOUT (FORMAT binary)"
        );
        let rows = local.copy_out(sql.as_str()).await.map_err(local_err)?;
        let mut rows = pin!(rows);
        frames.begin_stream().map_err(frame_err)?;
        while let Some(data) = rows.next().await {
            let data = data.map_err(local_err)?;
            frames.push(&data, &mut out).map_err(frame_err)?;
            if sink.is_none() && frames.rows() > 0 {
                sink = Some(Box::pin(remote_start().await?));
            }
            if let Some(sink) = sink.as_mut().filter(|_| out.len() >= OUT_CHUNK) {
                let n = frames.rows();
                match tokio::time::timeout(wait, sink.send(out.split().freeze())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(remote_err(&e, n)),
                    Err(_) => return Err(stalled("sending rows", n)),
                }
            }
        }
        let got = frames.end_stream().map_err(frame_err)?;
        keyset = frames.max_id().unwrap_or(keyset);
        if got < want {
            drained = true;
            break;
        }
        if t0.elapsed() >= limits.duration || cancel.is_cancelled() {
            break;
        }
        if frames.rows() < limits.rows {
            // More claims follow in this chunk.
            sent(frames.rows());
        }
    }
    let Some(mut sink) = sink else {
        // Nothing claimed: nothing deleted, the remote never contacted.
        local.batch_execute("COMMIT").await.map_err(local_err)?;
        return Ok(Streamed {
            rows: 0,
            max_id: None,
            drained: true,
        });
    };
    let rows = frames.rows();
    Reframer::trailer(&mut out);
    // CopyDone and COMMIT leave together: the chunk counts only if both
    // succeed.
    let finish = async {
        let last = sink.send(out.split().freeze()).await;
        let (copied, committed) = tokio::join!(
            async {
                last?;
                sink.as_mut().finish().await
            },
            remote.batch_execute("COMMIT")
        );
        copied.and_then(|n| committed.map(|()| n))
    };
    match tokio::time::timeout(wait, finish).await {
        Ok(Ok(copied)) if copied == rows => {}
        Ok(Ok(copied)) => {
            // Cannot happen with a well-behaved server; the remote
            // committed, so keep the local rows (a re-send settles them).
            return Err(StreamError::Local(DbError::Query {
                side: Side::Remote,
                cause: format!(
                    "the remote COPY took {copied} rows of {rows} sent (a bug in metersync); the rows stay local"
                ),
                transient: false,
            }));
        }
        Ok(Err(e)) => return Err(remote_err(&e, rows)),
        Err(_) => return Err(stalled("committing", rows)),
    }
    local.batch_execute("COMMIT").await.map_err(local_err)?;
    Ok(Streamed {
        rows,
        max_id: frames.max_id(),
        drained,
    })
}
