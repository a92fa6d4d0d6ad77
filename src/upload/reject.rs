//! What a remote rejection means for the rows of a batch: the one place the
//! upload decides whether the remote refused a *row* (quarantine it), refused
//! the *table's shape* (leave the batch local and tell the operator what to
//! change), or failed for a reason a re-send may fix.
//!
//! The decision reads only the error's structured fields (SQLSTATE, and
//! `constraint()` to tell a CHECK from a missing partition, which share
//! SQLSTATE 23514), never its message text.
//!
//! This is a refinement on top of the project-wide classification
//! ([`crate::fault`], which alone decides what is transient):
//! [`Rejection::Row`] is not an error of the upload (the row is set aside),
//! [`Rejection::NoPartition`] and [`Rejection::TableShape`] are operator
//! errors, [`Rejection::Transient`] is what `fault` calls transient, and
//! [`Rejection::Other`] is what it calls a bug.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use tokio_postgres::error::SqlState;

use crate::config::Side;
use crate::fault::{self, ErrorClass, Phase};

/// How the upload treats one remote error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The row's own data is refused (a CHECK on its value, an out-of-range
    /// number, a foreign key to a meter the remote does not know): the row is
    /// moved to the local quarantine with the remote's message.
    Row,
    /// The row needs something the table lacks: no partition of the
    /// (partitioned) remote table covers it. The row is fine; the batch stays
    /// local until the operator adds the partition.
    NoPartition,
    /// The remote table or the role does not fit the contract (a missing
    /// column or table, permission denied, a type mismatch): nothing of the
    /// batch is moved; the operator must change the remote.
    TableShape,
    /// The connection or the server failed for now (a restart, a dropped
    /// link, a timeout, PgBouncer's "server login has been failing"): the
    /// batch may be re-sent as it is.
    Transient,
    /// Anything else: the batch stays local and the upload fails.
    Other,
}

impl Rejection {
    /// Whether the batch is left local and the operator must change the
    /// remote before the upload can go on.
    pub fn is_operator(&self) -> bool {
        matches!(self, Rejection::NoPartition | Rejection::TableShape)
    }
}

/// Classifies a driver error raised while inserting rows into the remote
/// `meter_readings`.
///
/// Only the refinement specific to the upload is decided here (a row's data,
/// a missing partition, the table's shape); whether anything else is
/// transient, an operator error or a bug is [`crate::fault`]'s decision.
pub fn classify(e: &tokio_postgres::Error) -> Rejection {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        // A missing partition is SQLSTATE 23514 like a CHECK violation, but
        // the server attaches no constraint name to it (ExecFindPartition
        // reports only the table); a CHECK always names its constraint.
        if *code == SqlState::CHECK_VIOLATION && db.constraint().is_none() {
            return Rejection::NoPartition;
        }
        let c = code.code();
        if c.starts_with("22") || c.starts_with("23") {
            return Rejection::Row;
        }
        if c.starts_with("42") || *code == SqlState::WRONG_OBJECT_TYPE {
            // The insert's statement is fixed, so any 42xxx (42501
            // insufficient privilege, 42P01 undefined table, 42703 undefined
            // column, 42804 datatype mismatch...) is the remote table's shape.
            return Rejection::TableShape;
        }
    }
    match fault::postgres(Side::Remote, Phase::Statement, e).class {
        ErrorClass::Transient => Rejection::Transient,
        ErrorClass::Operator if e.as_db_error().is_some() => Rejection::TableShape,
        ErrorClass::Operator | ErrorClass::Bug => Rejection::Other,
    }
}

/// What the operator should change, for a table-shape rejection; `when`
/// is the time of the row that found no partition, when known (the hint
/// names its month, in UTC, and the partition bounds that cover it).
pub fn operator_hint(e: &tokio_postgres::Error, when: Option<DateTime<Utc>>) -> String {
    let Some(db) = e.as_db_error() else {
        return "check the remote table meter_readings".into();
    };
    let table = db.table().unwrap_or("meter_readings");
    match classify(e) {
        Rejection::NoPartition => match when.and_then(month_bounds) {
            Some((from, to)) => format!(
                "add a partition of {table} covering {m} (e.g. CREATE TABLE {table}_{y}_{mo} PARTITION OF {table} FOR VALUES FROM ('{from}+00') TO ('{to}+00')), then run the upload again",
                m = from.format("%Y-%m"),
                y = from.format("%Y"),
                mo = from.format("%m"),
            ),
            None => format!("add a partition of {table} covering the readings' months, then run the upload again"),
        },
        _ => match db.code() {
            c if *c == SqlState::INSUFFICIENT_PRIVILEGE => format!(
                "grant the upload's role INSERT and SELECT on {table} (GRANT INSERT, SELECT ON {table} TO <role>), then run the upload again"
            ),
            c if *c == SqlState::UNDEFINED_TABLE => {
                "the remote table is missing: run `metersync migrate` (or have the DBA create meter_readings), then run the upload again".into()
            }
            c if *c == SqlState::UNDEFINED_COLUMN => format!(
                "the remote table {table} lacks a column of the contract (meter_id, point, recorded_at, value, unit, site_id): add it, then run the upload again"
            ),
            _ => format!(
                "the remote table {table} does not match the contract (SQLSTATE {}): fix its definition, then run the upload again",
                db.code().code()
            ),
        },
    }
}

/// The first day of `t`'s month (UTC) and of the next month.
fn month_bounds(t: DateTime<Utc>) -> Option<(NaiveDate, NaiveDate)> {
    let from = NaiveDate::from_ymd_opt(t.year(), t.month(), 1)?;
    Some((from, from.checked_add_months(Months::new(1))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn month_bounds_cover_the_row_and_roll_over_the_year() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).single();
        let b = t
            .and_then(month_bounds)
            .map(|(a, b)| (a.to_string(), b.to_string()));
        assert_eq!(b, Some(("2026-12-01".into(), "2027-01-01".into())));
    }
}
