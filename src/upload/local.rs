//! The local side of a batch: claim rows (lock and delete them in a local
//! transaction left open), then settle them (quarantine the rejected, commit)
//! after the remote commit.
//! A claim owns its connection, so two batches can be in flight at once (one
//! being sent while the next is claimed).

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::Object;
use tokio_postgres::types::Type;

use super::{ConflictRow, QuarantinedRow};
use crate::config::Side;
use crate::db::{Databases, DbError};

/// One local reading, as claimed.
#[derive(Debug, Clone)]
pub(super) struct Reading {
    pub id: i64,
    pub meter_id: i64,
    pub point: String,
    pub recorded_at: DateTime<Utc>,
    pub value: f64,
    pub unit: Option<String>,
}

fn q(e: tokio_postgres::Error) -> DbError {
    DbError::query(Side::Local, &e)
}

fn released() -> DbError {
    DbError::Query {
        side: Side::Local,
        cause: "the batch's connection was already released (a bug in metersync)".into(),
        transient: false,
    }
}

/// Rows waiting in the local backlog.
pub(super) async fn backlog(db: &Databases) -> Result<u64, DbError> {
    let c = db.local().await?;
    let row = c
        .query_typed_one("SELECT count(*) FROM meter_readings", &[])
        .await
        .map_err(q)?;
    let n: i64 = row.try_get(0).map_err(q)?;
    Ok(n.max(0) as u64)
}

/// Whether the local backlog holds any row (one index probe, cheaper than
/// [`backlog`]'s count).
pub(super) async fn any_waiting(db: &Databases) -> Result<bool, DbError> {
    let c = db.local().await?;
    let row = c
        .query_typed_one("SELECT EXISTS (SELECT 1 FROM meter_readings)", &[])
        .await
        .map_err(q)?;
    row.try_get(0).map_err(q)
}

/// A batch of rows locked in an open local transaction on a connection the
/// claim owns. Dropped without [`Claim::settle`], the connection is closed
/// (not returned to the pool), so the server rolls the transaction back and
/// the rows stay.
pub(super) struct Claim {
    client: Option<Object>,
    rows: Vec<Reading>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            drop(Object::take(c));
        }
    }
}

impl Claim {
    /// Takes up to `limit` rows with ids above `after` on `client`, skipping
    /// rows another uploader holds: one statement locks them (`FOR UPDATE
    /// SKIP LOCKED`) and deletes exactly those rows (by their physical row
    /// id, which the lock keeps stable) in a transaction left open. The
    /// delete becomes visible only at [`Claim::settle`]'s commit, after the
    /// remote commit; until then other uploaders skip the rows, and a crash
    /// rolls it back.
    pub async fn begin(client: Object, after: i64, limit: usize) -> Result<Self, DbError> {
        let mut claim = Claim {
            client: Some(client),
            rows: Vec::new(),
        };
        let c = claim.client()?;
        c.batch_execute("BEGIN").await.map_err(q)?;
        let rows = c
            .query_typed(
                "DELETE FROM meter_readings WHERE ctid = ANY(ARRAY( \
                   SELECT ctid FROM meter_readings WHERE id > $1 ORDER BY id LIMIT $2 \
                   FOR UPDATE SKIP LOCKED)) \
                 RETURNING id, meter_id, point, recorded_at, value, unit",
                &[(&after, Type::INT8), (&(limit as i64), Type::INT8)],
            )
            .await
            .map_err(q)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(Reading {
                id: r.try_get(0).map_err(q)?,
                meter_id: r.try_get(1).map_err(q)?,
                point: r.try_get(2).map_err(q)?,
                recorded_at: r.try_get(3).map_err(q)?,
                value: r.try_get(4).map_err(q)?,
                unit: r.try_get(5).map_err(q)?,
            });
        }
        out.sort_unstable_by_key(|r| r.id);
        claim.rows = out;
        Ok(claim)
    }

    fn client(&self) -> Result<&Object, DbError> {
        self.client.as_ref().ok_or_else(released)
    }

    /// Ends a claim that locked nothing and gives its connection back.
    pub async fn release(mut self) -> Result<Object, DbError> {
        self.client()?.batch_execute("ROLLBACK").await.map_err(q)?;
        self.client.take().ok_or_else(released)
    }

    /// The claimed rows, in id order.
    pub fn rows(&self) -> &[Reading] {
        &self.rows
    }

    /// The highest id claimed, or `None` when nothing was left to claim.
    pub fn last_id(&self) -> Option<i64> {
        self.rows.last().map(|r| r.id)
    }

    /// After the remote commit: moves `rejected` (index into the rows, the
    /// remote's error) to the quarantine table and `conflicts` (index, the
    /// remote's value) to the conflicts table, and commits the claim's
    /// delete, all in the claim's transaction. Returns what was set aside
    /// and the connection.
    pub async fn settle(
        mut self,
        rejected: &[(usize, String)],
        conflicts: &[(usize, Option<f64>)],
    ) -> Result<(Settled, Object), DbError> {
        let conflict_rows = self.keep_conflicts(conflicts).await?;
        let c = self.client()?;
        let mut quarantined = Vec::with_capacity(rejected.len());
        if !rejected.is_empty() {
            let mut ids = Vec::new();
            let mut meters = Vec::new();
            let mut points = Vec::new();
            let mut times = Vec::new();
            let mut values = Vec::new();
            let mut units = Vec::new();
            let mut errors = Vec::new();
            for (i, err) in rejected {
                let Some(r) = self.rows.get(*i) else { continue };
                ids.push(r.id);
                meters.push(r.meter_id);
                points.push(r.point.clone());
                times.push(r.recorded_at);
                values.push(r.value);
                units.push(r.unit.clone());
                errors.push(err.clone());
                quarantined.push(QuarantinedRow {
                    id: r.id,
                    meter_id: r.meter_id,
                    point: r.point.clone(),
                    recorded_at: r.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                    error: err.clone(),
                });
            }
            c.execute_typed(
                "INSERT INTO meter_readings_quarantine \
                     (id, meter_id, point, recorded_at, value, unit, error) \
                     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], \
                     $4::timestamptz[], $5::float8[], $6::text[], $7::text[]) \
                     ON CONFLICT (id) DO NOTHING",
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&meters, Type::INT8_ARRAY),
                    (&points, Type::TEXT_ARRAY),
                    (&times, Type::TIMESTAMPTZ_ARRAY),
                    (&values, Type::FLOAT8_ARRAY),
                    (&units, Type::TEXT_ARRAY),
                    (&errors, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(q)?;
            for r in &quarantined {
                tracing::warn!(
                    id = r.id,
                    meter_id = r.meter_id,
                    point = %r.point,
                    recorded_at = %r.recorded_at,
                    "reading quarantined: the remote rejected it: {}",
                    r.error
                );
            }
        }
        c.batch_execute("COMMIT").await.map_err(q)?;
        let c = self.client.take().ok_or_else(released)?;
        Ok((
            Settled {
                quarantined,
                conflicts: conflict_rows,
            },
            c,
        ))
    }

    /// Writes `conflicts` to `meter_readings_conflicts` in the claim's
    /// transaction (a row seen in conflict again gets the new remote value).
    async fn keep_conflicts(
        &self,
        conflicts: &[(usize, Option<f64>)],
    ) -> Result<Vec<ConflictRow>, DbError> {
        if conflicts.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client()?;
        let mut ids = Vec::new();
        let mut meters = Vec::new();
        let mut points = Vec::new();
        let mut times = Vec::new();
        let mut values = Vec::new();
        let mut units = Vec::new();
        let mut remote = Vec::new();
        let mut out = Vec::with_capacity(conflicts.len());
        for (i, rv) in conflicts {
            let Some(r) = self.rows.get(*i) else { continue };
            ids.push(r.id);
            meters.push(r.meter_id);
            points.push(r.point.as_str());
            times.push(r.recorded_at);
            values.push(r.value);
            units.push(r.unit.as_deref());
            remote.push(*rv);
            out.push(ConflictRow {
                id: r.id,
                meter_id: r.meter_id,
                point: r.point.clone(),
                recorded_at: r.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                local_value: r.value,
                remote_value: *rv,
            });
        }
        c.execute_typed(
            "INSERT INTO meter_readings_conflicts \
                 (id, meter_id, point, recorded_at, local_value, unit, remote_value) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], \
                 $4::timestamptz[], $5::float8[], $6::text[], $7::float8[]) \
                 ON CONFLICT (id) DO UPDATE SET remote_value = EXCLUDED.remote_value, \
                 seen_at = now()",
            &[
                (&ids, Type::INT8_ARRAY),
                (&meters, Type::INT8_ARRAY),
                (&points, Type::TEXT_ARRAY),
                (&times, Type::TIMESTAMPTZ_ARRAY),
                (&values, Type::FLOAT8_ARRAY),
                (&units, Type::TEXT_ARRAY),
                (&remote, Type::FLOAT8_ARRAY),
            ],
        )
        .await
        .map_err(q)?;
        for r in &out {
            tracing::warn!(
                id = r.id,
                meter_id = r.meter_id,
                point = %r.point,
                recorded_at = %r.recorded_at,
                local_value = r.local_value,
                remote_value = ?r.remote_value,
                "conflict: the remote holds this reading with another value; the local value is kept in meter_readings_conflicts"
            );
        }
        Ok(out)
    }
}

/// What a settled batch set aside.
#[derive(Debug, Default)]
pub(super) struct Settled {
    /// Rows moved to `meter_readings_quarantine`.
    pub quarantined: Vec<QuarantinedRow>,
    /// Rows moved to `meter_readings_conflicts`.
    pub conflicts: Vec<ConflictRow>,
}
