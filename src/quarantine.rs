//! The readings the upload set aside, and the way back: list the quarantine
//! (`meter_readings_quarantine`, rows the remote refused as bad data) and
//! the conflicts (`meter_readings_conflicts`, rows the remote already holds
//! with another value), and requeue chosen rows into the backlog
//! (`meter_readings`) so the next upload sends them again. The MCP tools
//! `list_quarantine` / `requeue_readings` and `metersync quarantine` call
//! these functions; every bound lives here.
//!
//! Guarantees:
//! - listing is paged by id (at most [`MAX_LIMIT`] rows a page) and writes
//!   nothing;
//! - a requeue moves each chosen row in one local transaction: it is
//!   inserted into `meter_readings` (same id, key and value) and deleted from
//!   its table, or neither; a row is never lost or doubled, and two requeues
//!   at once serialise on the row locks;
//! - a row whose key (meter, point, time) is already waiting in the backlog
//!   is left where it is and reported in `kept`, never doubled;
//! - requeueing a conflict never overwrites the remote: the next upload
//!   inserts the local value only if the remote no longer holds that key
//!   (the DBA deleted or fixed it); otherwise it comes back to the conflicts
//!   table, still with both values. "Accept the local value" therefore means:
//!   change the remote row first, then requeue (or discard, if the remote's
//!   value is the right one);
//! - discarding (conflicts only) deletes the chosen conflict records: the
//!   remote's value stands; it is the one explicit way a local value goes.
//! - at most [`MAX_REQUEUE`] rows per call; with `all`, the report says how
//!   many are left on the shelf so the caller can repeat.

use serde::Serialize;
use tokio_postgres::types::Type;

use crate::capped;
use crate::config::Side;
use crate::db::{Databases, DbError};

/// The largest page a listing returns.
pub const MAX_LIMIT: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;
/// The most rows one requeue or discard moves (one local transaction).
pub const MAX_REQUEUE: usize = 10_000;
/// How many ids each list of a report holds; the rest are counted in its
/// `_omitted` field (the counts are always exact).
pub const ID_LIST_CAP: usize = 100;

/// Which table of set-aside readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Shelf {
    /// `meter_readings_quarantine`: refused by the remote as bad data.
    Quarantine,
    /// `meter_readings_conflicts`: the remote holds another value.
    Conflicts,
}

impl Shelf {
    /// The shelf for a `conflicts` flag.
    pub fn from_conflicts(conflicts: bool) -> Self {
        if conflicts {
            Shelf::Conflicts
        } else {
            Shelf::Quarantine
        }
    }

    fn table(self) -> &'static str {
        match self {
            Shelf::Quarantine => "meter_readings_quarantine",
            Shelf::Conflicts => "meter_readings_conflicts",
        }
    }

    /// The column holding the local value.
    fn value(self) -> &'static str {
        match self {
            Shelf::Quarantine => "value",
            Shelf::Conflicts => "local_value",
        }
    }
}

/// What to do with the chosen rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Move them back into the backlog.
    Requeue,
    /// Delete the conflict records (conflicts only): the remote's value stands.
    Discard,
}

/// Which rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These ids (1 to [`MAX_REQUEUE`] of them).
    Ids(Vec<i64>),
    /// Every row, oldest id first, up to [`MAX_REQUEUE`].
    All,
}

impl Selection {
    /// The selection for "these ids" or "all", as a tool or a command gets
    /// them (an empty list of ids counts as none given).
    ///
    /// Fails when both or neither are given, naming the argument.
    pub fn from_args(ids: Option<Vec<i64>>, all: bool) -> Result<Self, QuarantineError> {
        let ids = ids.filter(|v| !v.is_empty());
        match (ids, all) {
            (Some(_), true) => Err(QuarantineError::InvalidArgument {
                name: "ids",
                reason: "give either ids or all, not both".into(),
            }),
            (Some(ids), false) => Ok(Selection::Ids(ids)),
            (None, true) => Ok(Selection::All),
            (None, false) => Err(QuarantineError::InvalidArgument {
                name: "ids",
                reason:
                    "give the ids to act on (see list_quarantine / metersync quarantine), or all"
                        .into(),
            }),
        }
    }
}

/// A bad argument, or a database failure.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// An argument is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The local database failed; nothing was changed.
    #[error("{0}; nothing was changed")]
    Db(#[from] DbError),
}

/// One set-aside reading.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ShelvedRow {
    /// Its local id (pass it to `requeue_readings`).
    pub id: i64,
    /// The meter.
    pub meter_id: i64,
    /// The point name.
    pub point: String,
    /// When it was read (RFC 3339).
    pub recorded_at: String,
    /// The value read locally.
    pub value: f64,
    /// Its unit.
    pub unit: Option<String>,
    /// Quarantine: the remote's error for this row.
    pub error: Option<String>,
    /// Conflicts: the value the remote holds for the same key.
    pub remote_value: Option<f64>,
    /// When it was set aside (RFC 3339).
    pub set_aside_at: Option<String>,
}

/// One page of set-aside readings.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ShelfPage {
    /// Which table.
    pub shelf: Shelf,
    /// Rows in the table in all.
    pub total: i64,
    /// This page, by id.
    pub rows: Vec<ShelvedRow>,
    /// Pass this as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// Rows after this page.
    pub remaining: i64,
}

/// What a requeue or discard did.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct RequeueReport {
    /// Rows moved back into the backlog (the next upload sends them).
    pub requeued: u64,
    /// Conflict records deleted (the remote's value stands).
    pub discarded: u64,
    /// The first ids moved or discarded (at most 100).
    pub ids: Vec<i64>,
    /// Moved or discarded ids left out of `ids`.
    pub ids_omitted: u64,
    /// Ids left where they are because a reading with the same key is
    /// already waiting in the backlog (at most 100 listed).
    pub kept: Vec<i64>,
    /// Kept ids left out of `kept`.
    pub kept_omitted: u64,
    /// Ids asked for that are not in the table (at most 100 listed).
    pub not_found: Vec<i64>,
    /// Missing ids left out of `not_found`.
    pub not_found_omitted: u64,
    /// Rows still in the table after this call.
    pub remaining: i64,
}

fn q(e: tokio_postgres::Error) -> QuarantineError {
    QuarantineError::Db(DbError::query(Side::Local, &e))
}

/// Lists one page of `shelf`, ids above the cursor's.
///
/// Fails on an out-of-range limit, a foreign cursor, or a database error.
pub async fn list(
    db: &Databases,
    shelf: Shelf,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<ShelfPage, QuarantineError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(QuarantineError::InvalidArgument {
            name: "limit",
            reason: format!("must be between 1 and {MAX_LIMIT}, got {limit}"),
        });
    }
    let after: i64 = match cursor {
        None => i64::MIN,
        Some(c) => c
            .strip_prefix("after:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| QuarantineError::InvalidArgument {
                name: "cursor",
                reason: format!(
                    "{c:?} is not a cursor this tool returned: pass the next_cursor of the previous page, or omit it"
                ),
            })?,
    };
    let (extra, at) = match shelf {
        Shelf::Quarantine => ("error, NULL::float8", "quarantined_at"),
        Shelf::Conflicts => ("NULL::text, remote_value", "seen_at"),
    };
    let c = db.local().await?;
    let rows = c
        .query_typed(
            &format!(
                "SELECT id, meter_id, point, recorded_at, {v}, unit, {extra}, {at} \
                 FROM {t} WHERE id > $1 ORDER BY id LIMIT $2",
                v = shelf.value(),
                t = shelf.table()
            ),
            &[(&after, Type::INT8), (&limit, Type::INT8)],
        )
        .await
        .map_err(q)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(ShelvedRow {
            id: r.try_get(0).map_err(q)?,
            meter_id: r.try_get(1).map_err(q)?,
            point: r.try_get(2).map_err(q)?,
            recorded_at: crate::status::ts(r.try_get(3).map_err(q)?).unwrap_or_default(),
            value: r.try_get(4).map_err(q)?,
            unit: r.try_get(5).map_err(q)?,
            error: r.try_get(6).map_err(q)?,
            remote_value: r.try_get(7).map_err(q)?,
            set_aside_at: crate::status::ts(r.try_get(8).map_err(q)?),
        });
    }
    let last = out.last().map(|r| r.id).unwrap_or(after);
    let counts = c
        .query_typed_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE id > $1) FROM {}",
                shelf.table()
            ),
            &[(&last, Type::INT8)],
        )
        .await
        .map_err(q)?;
    let total: i64 = counts.try_get(0).map_err(q)?;
    let remaining: i64 = counts.try_get(1).map_err(q)?;
    Ok(ShelfPage {
        shelf,
        total,
        rows: out,
        next_cursor: (remaining > 0).then(|| format!("after:{last}")),
        remaining,
    })
}

/// Checks a selection and an action against the bounds.
fn check(shelf: Shelf, selection: &Selection, action: Action) -> Result<(), QuarantineError> {
    if action == Action::Discard && shelf != Shelf::Conflicts {
        return Err(QuarantineError::InvalidArgument {
            name: "discard",
            reason: "only conflicts can be discarded (the remote holds a value for them); a quarantined row can only be requeued".into(),
        });
    }
    if let Selection::Ids(ids) = selection {
        if ids.is_empty() {
            return Err(QuarantineError::InvalidArgument {
                name: "ids",
                reason: "give at least one id (from list_quarantine), or all".into(),
            });
        }
        if ids.len() > MAX_REQUEUE {
            return Err(QuarantineError::InvalidArgument {
                name: "ids",
                reason: format!("at most {MAX_REQUEUE} ids per call, got {}", ids.len()),
            });
        }
    }
    Ok(())
}

/// Requeues (or, for conflicts, discards) the selected rows of `shelf` in
/// one local transaction; see the module's guarantees.
///
/// Fails on an invalid selection (nothing changed) or a database error (the
/// transaction rolls back: nothing changed).
pub async fn requeue(
    db: &Databases,
    shelf: Shelf,
    selection: Selection,
    action: Action,
) -> Result<RequeueReport, QuarantineError> {
    check(shelf, &selection, action)?;
    let table = shelf.table();
    let mut c = db.local().await?;
    let tx = c.transaction().await.map_err(q)?;
    // Lock the chosen rows: a second requeue of the same rows waits, then
    // finds them gone.
    let locked = match &selection {
        Selection::Ids(ids) => {
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids.dedup();
            tx.query_typed(
                &format!("SELECT id FROM {table} WHERE id = ANY($1) ORDER BY id FOR UPDATE"),
                &[(&ids, Type::INT8_ARRAY)],
            )
            .await
        }
        Selection::All => {
            tx.query_typed(
                &format!("SELECT id FROM {table} ORDER BY id LIMIT $1 FOR UPDATE"),
                &[(&(MAX_REQUEUE as i64), Type::INT8)],
            )
            .await
        }
    }
    .map_err(q)?;
    let mut found = Vec::with_capacity(locked.len());
    for r in &locked {
        found.push(r.try_get::<_, i64>(0).map_err(q)?);
    }
    let mut report = RequeueReport::default();
    if let Selection::Ids(ids) = &selection {
        capped::extend(
            &mut report.not_found,
            &mut report.not_found_omitted,
            ID_LIST_CAP,
            ids.iter()
                .filter(|i| found.binary_search(i).is_err())
                .copied(),
        );
    }
    let moved: Vec<i64> = match action {
        Action::Requeue => {
            let rows = tx
                .query_typed(
                    &format!(
                        "INSERT INTO meter_readings (id, meter_id, point, recorded_at, value, unit) \
                         SELECT id, meter_id, point, recorded_at, {v}, unit FROM {table} \
                         WHERE id = ANY($1) ORDER BY id \
                         ON CONFLICT DO NOTHING RETURNING id",
                        v = shelf.value()
                    ),
                    &[(&found, Type::INT8_ARRAY)],
                )
                .await
                .map_err(q)?;
            let mut moved = Vec::with_capacity(rows.len());
            for r in &rows {
                moved.push(r.try_get::<_, i64>(0).map_err(q)?);
            }
            moved
        }
        Action::Discard => found.clone(),
    };
    let deleted = tx
        .execute_typed(
            &format!("DELETE FROM {table} WHERE id = ANY($1)"),
            &[(&moved, Type::INT8_ARRAY)],
        )
        .await
        .map_err(q)?;
    if deleted != moved.len() as u64 {
        // Cannot happen under the row locks; refuse rather than risk a double.
        return Err(QuarantineError::Db(DbError::Query {
            side: Side::Local,
            cause: format!(
                "moved {} rows but deleted {deleted} from {table} (a bug in metersync); rolled back",
                moved.len()
            ),
            transient: false,
        }));
    }
    let remaining: i64 = tx
        .query_typed_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(q)?
        .try_get(0)
        .map_err(q)?;
    tx.commit().await.map_err(q)?;
    let mut sorted = moved.clone();
    sorted.sort_unstable();
    capped::extend(
        &mut report.kept,
        &mut report.kept_omitted,
        ID_LIST_CAP,
        found
            .iter()
            .filter(|i| sorted.binary_search(i).is_err())
            .copied(),
    );
    match action {
        Action::Requeue => report.requeued = moved.len() as u64,
        Action::Discard => report.discarded = moved.len() as u64,
    }
    capped::extend(
        &mut report.ids,
        &mut report.ids_omitted,
        ID_LIST_CAP,
        sorted,
    );
    report.remaining = remaining;
    tracing::info!(
        shelf = table,
        requeued = report.requeued,
        discarded = report.discarded,
        kept = report.kept.len() as u64 + report.kept_omitted,
        not_found = report.not_found.len() as u64 + report.not_found_omitted,
        "set-aside readings handled"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_argument() {
        let e = |r: Result<(), QuarantineError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e(check(Shelf::Quarantine, &Selection::All, Action::Discard)).contains("discard"));
        assert!(e(check(
            Shelf::Conflicts,
            &Selection::Ids(vec![]),
            Action::Requeue
        ))
        .contains("ids"));
        let many = Selection::Ids((0..=MAX_REQUEUE as i64).collect());
        assert!(e(check(Shelf::Quarantine, &many, Action::Requeue)).contains("ids"));
        assert!(check(Shelf::Conflicts, &Selection::All, Action::Discard).is_ok());
        assert!(check(Shelf::Quarantine, &Selection::Ids(vec![1]), Action::Requeue).is_ok());
        assert!(e(Selection::from_args(Some(vec![1]), true).map(|_| ())).contains("ids"));
        assert!(e(Selection::from_args(Some(vec![]), false).map(|_| ())).contains("ids"));
        assert_eq!(Selection::from_args(None, true).ok(), Some(Selection::All));
    }

    /// Every list of a requeue report stops at [`ID_LIST_CAP`] and counts
    /// the rest, against a real local cluster.
    #[tokio::test]
    async fn each_list_of_a_requeue_report_is_capped_and_counts_the_rest() {
        const PW: &str = "unit-test-pw";
        use crate::test_site;
        let cluster = test_site::cluster(PW).await;
        let config = test_site::local_config(cluster.port, PW);
        let db = Databases::new(&config).unwrap_or_else(|e| panic!("pools: {e}"));
        test_site::migrate_local(&db).await;
        let admin = test_site::admin(&cluster, PW).await;
        // 250 quarantined rows; the keys of 131..=250 already wait in the
        // backlog (under other ids), so those are kept.
        admin
            .batch_execute(
                "INSERT INTO meter_readings_quarantine (id, meter_id, point, recorded_at, value, error)
                 SELECT g, 1, 'p', timestamptz '2026-01-01 00:00+00' + g * interval '1 s', g, 'bad'
                 FROM generate_series(1, 250) g;
                 INSERT INTO meter_readings (id, meter_id, point, recorded_at, value)
                 SELECT 10000 + g, 1, 'p', timestamptz '2026-01-01 00:00+00' + g * interval '1 s', g
                 FROM generate_series(131, 250) g;",
            )
            .await
            .unwrap_or_else(|e| panic!("seed: {e}"));
        let r = requeue(
            &db,
            Shelf::Quarantine,
            Selection::Ids((1..=400).collect()),
            Action::Requeue,
        )
        .await
        .unwrap_or_else(|e| panic!("requeue: {e}"));
        assert_eq!(r.requeued, 130);
        assert_eq!(r.ids, (1..=100).collect::<Vec<i64>>());
        assert_eq!(r.ids_omitted, 30);
        assert_eq!(r.kept, (131..=230).collect::<Vec<i64>>());
        assert_eq!(r.kept_omitted, 20);
        assert_eq!(r.not_found, (251..=350).collect::<Vec<i64>>());
        assert_eq!(r.not_found_omitted, 50);
        assert_eq!(r.remaining, 120);
        db.close();
    }
}
