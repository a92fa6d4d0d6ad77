//! The database layer's one error type, [`DbError`], and the words used in
//! it: [`describe`] turns a driver error into one line (the server's message
//! and SQLSTATE, never query text), [`pool_error_cause`] does the same for a
//! failed checkout and says whether retrying may help.
//!
//! The classification (transient, operator, bug) is not made here: it comes
//! from [`crate::fault`], the one place that decides it.

use deadpool_postgres::PoolError;

use crate::config::{ConfigError, Side};
use crate::fault::{self, ErrorClass};

/// A database problem, phrased for the person who has to fix it. Its
/// [`DbError::class`] comes from [`crate::fault`], the one classification.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The side is not configured.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The TLS connector could not be built.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// No connection could be made: transient failures outlasted the retry policy.
    #[error("could not connect to the {side} database at {endpoint} after {retries} retries: {cause}; {hint}")]
    Connect {
        /// Which database.
        side: Side,
        /// `host:port`.
        endpoint: String,
        /// Retries made after the first attempt.
        retries: u32,
        /// The last failure, as the driver or server put it.
        cause: String,
        /// What to check.
        hint: String,
    },
    /// The connection was refused for a reason retrying cannot fix (a
    /// password, a database name, a certificate): not retried.
    #[error("the {side} database at {endpoint} refused the connection: {cause}; {hint}")]
    Refused {
        /// Which database.
        side: Side,
        /// `host:port`.
        endpoint: String,
        /// The failure, as the driver or server put it.
        cause: String,
        /// Exactly what to change.
        hint: String,
        /// Operator, or bug.
        class: ErrorClass,
    },
    /// A statement failed.
    #[error("the {side} database reported an error: {cause}")]
    Query {
        /// Which database.
        side: Side,
        /// The server's message (never the query text).
        cause: String,
        /// Whether retrying later may help.
        transient: bool,
    },
    /// A statement failed for a reason a person must fix (a grant, a
    /// missing table or column): not retried.
    #[error("the {side} database reported an error: {cause}; {hint}")]
    Rejected {
        /// Which database.
        side: Side,
        /// The server's message (never the query text).
        cause: String,
        /// Exactly what to change.
        hint: String,
    },
}

impl DbError {
    /// Builds the error for a failed statement, classified by [`crate::fault`].
    pub fn query(side: Side, e: &tokio_postgres::Error) -> Self {
        let f = fault::postgres(side, fault::Phase::Statement, e);
        match f.class {
            ErrorClass::Operator => DbError::Rejected {
                side,
                cause: describe(e),
                hint: f.hint,
            },
            class => DbError::Query {
                side,
                cause: describe(e),
                transient: class == ErrorClass::Transient,
            },
        }
    }

    /// Transient, operator or bug (see [`crate::fault`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            DbError::Config(_) | DbError::Tls(_) | DbError::Rejected { .. } => ErrorClass::Operator,
            DbError::Connect { .. } => ErrorClass::Transient,
            DbError::Refused { class, .. } => *class,
            DbError::Query {
                transient: true, ..
            } => ErrorClass::Transient,
            DbError::Query { .. } => ErrorClass::Bug,
        }
    }

    /// Whether the same operation may succeed later without a change of
    /// configuration or data (a dropped connection, a restart, a timeout).
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// What to change, when a person must change something.
    pub fn hint(&self) -> Option<&str> {
        match self {
            DbError::Connect { hint, .. }
            | DbError::Refused { hint, .. }
            | DbError::Rejected { hint, .. } => Some(hint),
            _ => None,
        }
    }
}

/// One line describing a driver error: the server's severity, message and
/// SQLSTATE, or the I/O cause. Never contains query text.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// The cause of a checkout failure, and whether retrying may help.
pub(super) fn pool_error_cause(side: Side, e: &PoolError) -> (String, bool) {
    let f = fault::pool(side, e);
    let retry = f.class == ErrorClass::Transient && !matches!(e, PoolError::Closed);
    let cause = match e {
        PoolError::Backend(pg) => describe(pg),
        PoolError::Timeout(kind) => format!("timed out ({kind:?})"),
        PoolError::Closed => "the pool is closed (metersync is shutting down)".into(),
        other => other.to_string(),
    };
    (cause, retry)
}
