//! The remote side of a batch of the batch path (what a stream hands over:
//! re-sends, bad rows, conflicts): one transaction that inserts the rows,
//! fast when it can be, idempotent when it must be, always within a deadline.
//!
//! - Fast path: `BEGIN; SET LOCAL statement_timeout` (one simple query),
//!   binary `COPY` straight into `meter_readings`, `COMMIT`: five round trips
//!   (BEGIN and SET, prepare, COPY start, data, COMMIT)
//!   (the COPY's statement is prepared and closed inside the transaction,
//!   which a transaction-mode pooler allows).
//! - If the remote already holds a row of the batch (unique violation), or
//!   rejects one as bad data, the COPY rolls back whole and the batch goes
//!   again as one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`
//!   (an unnamed statement) under a savepoint, which also returns the rows
//!   the remote already held with a different value (conflicts); a rejected
//!   range is halved until each bad row stands alone. What a rejection means
//!   (bad row, missing partition, wrong table, transient) is decided by
//!   [`super::reject::classify`].
//! - Deadlines: every statement runs under `SET LOCAL statement_timeout`
//!   (and `idle_in_transaction_session_timeout`) derived from the batch
//!   size ([`deadline`]), and the client gives up on
//!   the whole send after that plus [`CLIENT_GRACE`] (the fast path) or three
//!   times that (the bisecting path), so a frozen link fails the batch, which
//!   stays local, instead of hanging.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::local::Reading;
use super::reject::{self, Rejection};
use super::{UploadError, MAX_REJECTED_PER_BATCH};
use crate::config::Side;
use crate::db::DbError;

/// The fixed part of a batch's deadline: connection latency, commit.
pub const DEADLINE_BASE: Duration = Duration::from_secs(10);
/// The per-row part of a batch's deadline: 1 ms a row is a link of about
/// 0.5 Mbit/s for the ~70 bytes a row takes in binary COPY.
pub const DEADLINE_PER_ROW: Duration = Duration::from_millis(1);
/// How much longer than the server's statement timeout the client waits
/// before it declares the link dead (so a slow server answers with its own
/// timeout error first).
pub const CLIENT_GRACE: Duration = Duration::from_secs(2);

/// The statement timeout of a batch of `rows` rows:
/// `DEADLINE_BASE + rows x DEADLINE_PER_ROW` (10.5 s for 500 rows, 20 s for
/// 10,000, 110 s for 100,000).
pub fn deadline(rows: usize) -> Duration {
    DEADLINE_BASE + DEADLINE_PER_ROW * u32::try_from(rows).unwrap_or(u32::MAX)
}

/// What the remote did with one batch.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// Rows inserted.
    pub inserted: usize,
    /// Rows the remote already held with the same value.
    pub already_present: usize,
    /// Rows refused as bad data: index into the batch, the remote's error.
    pub rejected: Vec<(usize, String)>,
    /// Rows the remote already held with another value: index into the
    /// batch, the remote's value.
    pub conflicts: Vec<(usize, Option<f64>)>,
}

/// Why a batch was not sent.
#[derive(Debug)]
pub(super) enum SendError {
    /// The remote failed for a reason other than the rows (connection,
    /// restart, deadline...). The remote transaction did not commit, or
    /// its outcome is unknown; either way a re-send is safe.
    Db(DbError),
    /// The remote table (or the role) does not fit the rows: a missing
    /// partition, column or privilege. Nothing committed; the operator must
    /// change the remote.
    Operator {
        /// The remote's error.
        cause: String,
        /// What to change.
        hint: String,
    },
    /// Too many rows rejected to be bad readings (the remote's first error).
    TooManyRejected(String),
}

/// A remote error, classified by [`crate::fault`] (a statement timeout, the
/// batch's deadline, is transient).
fn q(e: &tokio_postgres::Error) -> DbError {
    DbError::query(Side::Remote, e)
}

/// The error of a send that outlived its client-side deadline.
fn late(limit: Duration) -> SendError {
    SendError::Db(DbError::Query {
        side: Side::Remote,
        cause: format!(
            "no answer from the remote within the batch's deadline of {:.1} s (the link may be frozen or the server overloaded)",
            limit.as_secs_f64()
        ),
        transient: true,
    })
}

/// Runs `f` with a client-side deadline.
async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| Err(late(limit)))
}

/// The remote's message for a data error, with its detail (which names the
/// offending key or value), and the SQLSTATE.
fn data_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d}) (SQLSTATE {})", db.message(), db.code().code()),
            None => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        },
        None => crate::db::describe(e),
    }
}

/// The operator error for a table-shape rejection.
fn operator(e: &tokio_postgres::Error, row: Option<&Reading>) -> SendError {
    SendError::Operator {
        cause: data_message(e),
        hint: reject::operator_hint(e, row.map(|r| r.recorded_at)),
    }
}

/// Checks, once per upload, that the remote `meter_readings` has a unique
/// index on exactly `(meter_id, point, recorded_at)`: exactly-once rests on it.
///
/// Fails when the table or the index is missing, or the remote is down or
/// does not answer within [`DEADLINE_BASE`].
pub(super) async fn check_table(c: &Client) -> Result<(), UploadError> {
    let start = |source: DbError| UploadError::Start { source };
    let query = c.query_typed_one(
        "SELECT to_regclass('meter_readings') IS NOT NULL, EXISTS ( \
           SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass('meter_readings') \
           AND i.indisunique AND i.indpred IS NULL AND ( \
             SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
             WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])) \
           = ARRAY['meter_id', 'point', 'recorded_at'])",
        &[],
    );
    let row = match tokio::time::timeout(DEADLINE_BASE, query).await {
        Ok(r) => r.map_err(|e| start(q(&e)))?,
        Err(_) => {
            return Err(match late(DEADLINE_BASE) {
                SendError::Db(e) => start(e),
                _ => UploadError::RemoteSchema {
                    problem: "could not be checked",
                },
            })
        }
    };
    let exists: bool = row.try_get(0).map_err(|e| start(q(&e)))?;
    let keyed: bool = row.try_get(1).map_err(|e| start(q(&e)))?;
    if !exists {
        return Err(UploadError::RemoteSchema {
            problem: "does not exist",
        });
    }
    if !keyed {
        return Err(UploadError::RemoteSchema {
            problem: "has no unique key on (meter_id, point, recorded_at), so a re-sent batch could double readings",
        });
    }
    Ok(())
}

/// Sends `rows` in one remote transaction and commits it, within the
/// batch's deadline.
///
/// Fails when the remote fails for a reason other than the rows, or does not
/// answer in time; the batch is then not (known to be) committed and stays
/// local.
pub(super) async fn send(
    c: &mut Client,
    rows: &[Reading],
    site_id: Option<&str>,
) -> Result<Sent, SendError> {
    let limit = deadline(rows.len());
    let fast = within(limit + CLIENT_GRACE, async {
        Ok(copy_batch(c, rows, site_id, limit).await)
    })
    .await?;
    match fast {
        Ok(()) => Ok(Sent {
            inserted: rows.len(),
            ..Sent::default()
        }),
        Err(e) => match reject::classify(&e) {
            Rejection::Row | Rejection::NoPartition => {
                if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
                    tracing::info!(
                        "the remote refused the batch ({}); looking for the rows at fault",
                        data_message(&e)
                    );
                }
                let slow = limit * 3 + CLIENT_GRACE;
                within(slow, idempotent_batch(c, rows, site_id, limit)).await
            }
            Rejection::TableShape => Err(operator(&e, None)),
            Rejection::Transient | Rejection::Other => Err(SendError::Db(q(&e))),
        },
    }
}

/// `SET LOCAL statement_timeout` for a transaction (milliseconds), and the
/// same idle-in-transaction timeout, so a server whose client went silent
/// (a frozen link) ends the transaction and frees its locks by itself.
fn set_timeout(limit: Duration) -> String {
    let ms = limit.as_millis();
    format!(
        "SET LOCAL statement_timeout = {ms}; SET LOCAL idle_in_transaction_session_timeout = {ms}"
    )
}

async fn copy_batch(
    c: &Client,
    rows: &[Reading],
    site_id: Option<&str>,
    limit: Duration,
) -> Result<(), tokio_postgres::Error> {
    // One round trip for both: the timeout lives and dies with the
    // transaction, so a pooler's server connection keeps no session state.
    c.batch_execute(&format!("BEGIN; {}", set_timeout(limit)))
        .await?;
    let result = async {
        let sink = c
            .copy_in(
                "COPY meter_readings (meter_id, point, recorded_at, value, unit, site_id) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut writer = pin!(BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::TEXT,
                Type::TIMESTAMPTZ,
                Type::FLOAT8,
                Type::TEXT,
                Type::TEXT,
            ],
        ));
        for r in rows {
            writer
                .as_mut()
                .write(&[
                    &r.meter_id,
                    &r.point,
                    &r.recorded_at,
                    &r.value,
                    &r.unit,
                    &site_id,
                ])
                .await?;
        }
        writer.finish().await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => c.batch_execute("COMMIT").await,
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Inserts the rows the remote lacks and, in the same statement, returns
/// the rows it already held with another value. The join sees the table as
/// it was before the insert (one snapshot for the whole statement), so it
/// finds exactly the rows that were already there. The last row carries the
/// number inserted.
const INSERT_UNNEST: &str = "WITH t AS ( \
      SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::float8[], $5::text[]) \
      WITH ORDINALITY AS t(m, p, r, v, u, i)), \
    ins AS ( \
      INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit, site_id) \
      SELECT m, p, r, v, u, $6 FROM t ON CONFLICT DO NOTHING RETURNING 1) \
    SELECT t.i, x.value::float8, 0::bigint FROM t JOIN meter_readings x \
      ON x.meter_id = t.m AND x.point = t.p AND x.recorded_at = t.r \
      WHERE x.value IS DISTINCT FROM t.v \
    UNION ALL SELECT NULL, NULL, (SELECT count(*) FROM ins)";

/// What one idempotent insert did.
struct Inserted {
    inserted: usize,
    /// 0-based index into the slice, the remote's value.
    conflicts: Vec<(usize, Option<f64>)>,
}

/// `INSERT … ON CONFLICT DO NOTHING` of `rows`, reporting conflicts.
async fn insert_idempotent(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[Reading],
    site_id: Option<&str>,
) -> Result<Inserted, tokio_postgres::Error> {
    let meters: Vec<i64> = rows.iter().map(|r| r.meter_id).collect();
    let points: Vec<&str> = rows.iter().map(|r| r.point.as_str()).collect();
    let times: Vec<_> = rows.iter().map(|r| r.recorded_at).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
    let units: Vec<Option<&str>> = rows.iter().map(|r| r.unit.as_deref()).collect();
    let out = tx
        .query_typed(
            INSERT_UNNEST,
            &[
                (&meters, Type::INT8_ARRAY),
                (&points, Type::TEXT_ARRAY),
                (&times, Type::TIMESTAMPTZ_ARRAY),
                (&values, Type::FLOAT8_ARRAY),
                (&units, Type::TEXT_ARRAY),
                (&site_id, Type::TEXT),
            ],
        )
        .await?;
    let mut result = Inserted {
        inserted: 0,
        conflicts: Vec::new(),
    };
    for row in out {
        match row.try_get::<_, Option<i64>>(0)? {
            Some(i) => {
                let idx = usize::try_from(i - 1).unwrap_or(usize::MAX);
                if idx < rows.len() {
                    result.conflicts.push((idx, row.try_get(1)?));
                }
            }
            None => {
                let n: i64 = row.try_get(2)?;
                result.inserted = usize::try_from(n).unwrap_or(0);
            }
        }
    }
    Ok(result)
}

/// The slow, idempotent path: one transaction; each range of rows is tried
/// under a savepoint; a range the remote refuses as bad data (or for want of
/// a partition) is halved until single rows are left. A bad row is
/// rejected; a row no partition covers fails the batch with the hint naming
/// its month (nothing of the batch commits).
async fn idempotent_batch(
    c: &mut Client,
    rows: &[Reading],
    site_id: Option<&str>,
    limit: Duration,
) -> Result<Sent, SendError> {
    let db = |e: tokio_postgres::Error| SendError::Db(q(&e));
    let mut tx = c.transaction().await.map_err(db)?;
    tx.batch_execute(&set_timeout(limit)).await.map_err(db)?;
    let mut sent = Sent::default();
    let mut todo = vec![(0usize, rows.len())];
    while let Some((lo, hi)) = todo.pop() {
        let sp = tx.savepoint("metersync_batch").await.map_err(db)?;
        match insert_idempotent(&sp, &rows[lo..hi], site_id).await {
            Ok(done) => {
                sp.commit().await.map_err(db)?;
                let conflicts = done.conflicts.len();
                sent.inserted += done.inserted;
                sent.already_present += (hi - lo).saturating_sub(done.inserted + conflicts);
                sent.conflicts
                    .extend(done.conflicts.into_iter().map(|(i, v)| (lo + i, v)));
            }
            Err(e) => {
                let kind = reject::classify(&e);
                match kind {
                    Rejection::Row | Rejection::NoPartition => {
                        sp.rollback().await.map_err(db)?;
                    }
                    Rejection::TableShape => return Err(operator(&e, None)),
                    Rejection::Transient | Rejection::Other => return Err(db(e)),
                }
                if hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    // Pop the lower half first, so rejections come in order.
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                } else if kind == Rejection::NoPartition {
                    return Err(operator(&e, rows.get(lo)));
                } else {
                    sent.rejected.push((lo, data_message(&e)));
                    if sent.rejected.len() > MAX_REJECTED_PER_BATCH {
                        let first = sent
                            .rejected
                            .first()
                            .map(|(_, m)| m.clone())
                            .unwrap_or_default();
                        return Err(SendError::TooManyRejected(first));
                    }
                }
            }
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(sent)
}
