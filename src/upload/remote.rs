//! The remote side of a batch: one transaction that inserts the rows, fast
//! when it can be, idempotent when it must be.
//!
//! - Fast path: `BEGIN`, binary `COPY` straight into `meter_readings`,
//!   `COMMIT`: four round trips (the COPY's statement is prepared and closed
//!   inside the transaction, which a transaction-mode pooler allows).
//! - If the remote already holds a row of the batch (unique violation), or
//!   rejects one as bad data, the COPY rolls back whole and the batch goes
//!   again as `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` (an
//!   unnamed statement) under a savepoint; a data error splits the rows in
//!   halves until each bad row stands alone, and those are reported back.

use std::pin::pin;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::local::Reading;
use super::{UploadError, MAX_REJECTED_PER_BATCH};
use crate::config::Side;
use crate::db::DbError;

/// What the remote did with one batch.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// Rows inserted.
    pub inserted: usize,
    /// Rows the remote already held.
    pub already_present: usize,
    /// Rows refused as bad data: index into the batch, the remote's error.
    pub rejected: Vec<(usize, String)>,
}

/// Why a batch was not sent.
#[derive(Debug)]
pub(super) enum SendError {
    /// The remote failed for a reason other than the rows (connection,
    /// restart, permissions...). The remote transaction did not commit, or
    /// its outcome is unknown; either way a re-send is safe.
    Db(DbError),
    /// Too many rows rejected to be bad readings (the remote's first error).
    TooManyRejected(String),
}

fn q(e: &tokio_postgres::Error) -> DbError {
    DbError::query(Side::Remote, e)
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

/// Whether the rows themselves are at fault: SQLSTATE classes 22 (data
/// exception) and 23 (integrity constraint violation).
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .map(|c| c.code().starts_with("22") || c.code().starts_with("23"))
        .unwrap_or(false)
}

/// Checks, once per upload, that the remote `meter_readings` has a unique
/// index on exactly `(meter_id, point, recorded_at)`: exactly-once rests on it.
///
/// Fails when the table or the index is missing, or the remote is down.
pub(super) async fn check_table(c: &Client) -> Result<(), UploadError> {
    let row = c
        .query_typed_one(
            "SELECT to_regclass('meter_readings') IS NOT NULL, EXISTS ( \
               SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass('meter_readings') \
               AND i.indisunique AND i.indpred IS NULL AND ( \
                 SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
                 WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])) \
               = ARRAY['meter_id', 'point', 'recorded_at'])",
            &[],
        )
        .await
        .map_err(|e| UploadError::Start {
            source: q(&e),
            hint: "",
        })?;
    let (exists, keyed): (bool, bool) = (row.get(0), row.get(1));
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

/// Sends `rows` in one remote transaction and commits it.
///
/// Fails when the remote fails for a reason other than the rows; the batch
/// is then not (known to be) committed and stays local.
pub(super) async fn send(
    c: &mut Client,
    rows: &[Reading],
    site_id: Option<&str>,
) -> Result<Sent, SendError> {
    match copy_batch(c, rows, site_id).await {
        Ok(()) => Ok(Sent {
            inserted: rows.len(),
            ..Sent::default()
        }),
        Err(e) if is_data_error(&e) => {
            if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
                tracing::info!(
                    "the remote refused the batch ({}); looking for the bad rows",
                    data_message(&e)
                );
            }
            idempotent_batch(c, rows, site_id).await
        }
        Err(e) => Err(SendError::Db(q(&e))),
    }
}

async fn copy_batch(
    c: &mut Client,
    rows: &[Reading],
    site_id: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let result = async {
        let sink = tx
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
        Ok(()) => tx.commit().await,
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

const INSERT_UNNEST: &str = "INSERT INTO meter_readings \
    (meter_id, point, recorded_at, value, unit, site_id) \
    SELECT m, p, r, v, u, $6 FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], \
    $4::float8[], $5::text[]) AS t(m, p, r, v, u) \
    ON CONFLICT DO NOTHING";

/// `INSERT … ON CONFLICT DO NOTHING` of `rows`; returns the rows inserted.
async fn insert_idempotent(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[Reading],
    site_id: Option<&str>,
) -> Result<u64, tokio_postgres::Error> {
    let meters: Vec<i64> = rows.iter().map(|r| r.meter_id).collect();
    let points: Vec<&str> = rows.iter().map(|r| r.point.as_str()).collect();
    let times: Vec<_> = rows.iter().map(|r| r.recorded_at).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
    let units: Vec<Option<&str>> = rows.iter().map(|r| r.unit.as_deref()).collect();
    tx.execute_typed(
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
    .await
}

/// The slow, idempotent path: one transaction; each range of rows is tried
/// under a savepoint; a range the remote refuses as bad data is halved until
/// single rows are left, which are rejected.
async fn idempotent_batch(
    c: &mut Client,
    rows: &[Reading],
    site_id: Option<&str>,
) -> Result<Sent, SendError> {
    let db = |e: tokio_postgres::Error| SendError::Db(q(&e));
    let mut tx = c.transaction().await.map_err(db)?;
    let mut sent = Sent::default();
    let mut todo = vec![(0usize, rows.len())];
    while let Some((lo, hi)) = todo.pop() {
        let sp = tx.savepoint("metersync_batch").await.map_err(db)?;
        match insert_idempotent(&sp, &rows[lo..hi], site_id).await {
            Ok(n) => {
                sp.commit().await.map_err(db)?;
                let n = n as usize;
                sent.inserted += n;
                sent.already_present += (hi - lo).saturating_sub(n);
            }
            Err(e) if is_data_error(&e) => {
                sp.rollback().await.map_err(db)?;
                if hi - lo == 1 {
                    sent.rejected.push((lo, data_message(&e)));
                    if sent.rejected.len() > MAX_REJECTED_PER_BATCH {
                        let first = sent
                            .rejected
                            .first()
                            .map(|(_, m)| m.clone())
                            .unwrap_or_default();
                        return Err(SendError::TooManyRejected(first));
                    }
                } else {
                    let mid = lo + (hi - lo) / 2;
                    // Pop the lower half first, so rejections come in order.
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                }
            }
            Err(e) => return Err(db(e)),
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(sent)
}
