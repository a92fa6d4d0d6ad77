//! The one classification of database errors: transient, operator or bug.
//!
//! - **Transient**: the same operation may succeed later without any change
//!   (a dropped connection, a restart, a timeout, a pooler that cannot reach
//!   its server yet). Retried with the policy of [`crate::retry`].
//! - **Operator**: a person must change something (a password, a database
//!   name, a certificate, a grant, a missing migration). Never retried; the
//!   [`Fault::hint`] says exactly what to change.
//! - **Bug**: metersync or its data is wrong (a value that does not decode,
//!   a statement the server rejects as malformed). Never retried.
//!
//! Guarantees: the decision is made here and nowhere else, from the
//! SQLSTATE, the error's source chain (an `io::Error`, a `rustls::Error`) and
//! the phase (connecting or running a statement), never from formatted
//! message text, with one documented exception: PgBouncer 1.18's SQLSTATE
//! 08P01 (see [`pooler_login_refusal`]).

use std::error::Error as StdError;

use deadpool_postgres::PoolError;
use serde::Serialize;

use crate::config::Side;

/// What a failure means for whoever tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Retrying later, unchanged, may succeed.
    Transient,
    /// A person must change the configuration, a grant or the schema.
    Operator,
    /// metersync or the data is wrong; report it.
    Bug,
}

/// A classified failure: its class and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Transient, operator or bug.
    pub class: ErrorClass,
    /// What to check or change, naming the variables.
    pub hint: String,
}

impl Fault {
    fn new(class: ErrorClass, hint: String) -> Self {
        Fault { class, hint }
    }
}

/// Where the error happened: the same SQLSTATE-less error means a
/// configuration problem while connecting and a bug while decoding a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening a connection (TCP, TLS, startup, authentication).
    Connect,
    /// Running a statement on an open connection.
    Statement,
}

/// Classifies a checkout failure (the pool's connect path).
pub fn pool(side: Side, e: &PoolError) -> Fault {
    match e {
        PoolError::Backend(pg) => postgres(side, Phase::Connect, pg),
        PoolError::Timeout(_) => Fault::new(ErrorClass::Transient, network_hint(side)),
        PoolError::Closed => Fault::new(
            ErrorClass::Transient,
            "metersync is shutting down; nothing to change".into(),
        ),
        _ => Fault::new(
            ErrorClass::Bug,
            "this is a bug in metersync's pool setup; please report it".into(),
        ),
    }
}

/// Classifies a driver error from `phase` on `side`.
pub fn postgres(side: Side, phase: Phase, e: &tokio_postgres::Error) -> Fault {
    let p = side.env_prefix();
    if let Some(db) = e.as_db_error() {
        return sqlstate(side, phase, db);
    }
    if e.is_closed() {
        return Fault::new(ErrorClass::Transient, network_hint(side));
    }
    if let Some(tls) = rustls_error(e) {
        return Fault::new(ErrorClass::Operator, tls_hint(p, tls));
    }
    if has_io_source(e) {
        return Fault::new(ErrorClass::Transient, network_hint(side));
    }
    match phase {
        // Without a server error or an I/O cause, a failed connect is the
        // client refusing its own settings: TLS the server does not offer,
        // a password missing, an authentication method not allowed.
        Phase::Connect => Fault::new(
            ErrorClass::Operator,
            format!(
                "check {p}_SSLMODE (the server may not offer TLS), {p}_SSLROOTCERT and {p}_PASSWORD"
            ),
        ),
        // A value that does not decode, a wrong column count: our bug.
        Phase::Statement => Fault::new(
            ErrorClass::Bug,
            "this is a bug in metersync (or a column whose type differs from the contract); please report it".into(),
        ),
    }
}

fn network_hint(side: Side) -> String {
    let p = side.env_prefix();
    format!("check {p}_HOST, {p}_PORT and the network")
}

fn tls_hint(p: &str, e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
            "the server's certificate does not name {p}_HOST: connect by a name the certificate holds, or set {p}_SSLMODE=verify-ca (chain only)"
        ),
        rustls::Error::InvalidCertificate(C::UnknownIssuer)
        | rustls::Error::InvalidCertificate(C::BadSignature) => format!(
            "the server's certificate is not signed by a CA in {p}_SSLROOTCERT: point {p}_SSLROOTCERT at the CA that signed it (or set {p}_SSLMODE=require without a root certificate to skip verification)"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the server's certificate was refused (expired or unusable): renew it, or check {p}_SSLROOTCERT and {p}_SSLMODE"
        ),
        _ => format!("the TLS handshake failed: check {p}_SSLMODE and {p}_SSLROOTCERT"),
    }
}

/// The `rustls::Error` in `e`'s source chain, looking inside `io::Error`s
/// (whose `source()` skips the error they wrap).
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

fn has_io_source(e: &tokio_postgres::Error) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = cur {
        if err.is::<std::io::Error>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn sqlstate(side: Side, phase: Phase, db: &tokio_postgres::error::DbError) -> Fault {
    let p = side.env_prefix();
    let code = db.code().code();
    let op = |hint: String| Fault::new(ErrorClass::Operator, hint);
    match code {
        "28P01" => op(format!("the password was refused: check {p}_USER and {p}_PASSWORD")),
        "28000" => op(format!(
            "the server refused this login (pg_hba.conf): check {p}_USER and {p}_PASSWORD, and {p}_SSLMODE (the server may accept only TLS connections)"
        )),
        "3D000" => op(format!("the database does not exist: check {p}_DB")),
        "42501" => op(match side {
            Side::Remote => format!(
                "{p}_USER lacks a privilege: grant it SELECT on tenants and meters, SELECT and INSERT on meter_readings, SELECT, INSERT and UPDATE on site_status (`metersync check` lists what is missing); creating tables needs a DBA: `metersync migrate --remote --print`"
            ),
            Side::Local => format!("{p}_USER lacks a privilege on the local database: make it the owner of metersync's tables"),
        }),
        "42P01" | "42703" => op(match side {
            Side::Remote => "a table or column is missing on the remote: run `metersync migrate --remote` (or give `metersync migrate --remote --print` to the DBA), then `metersync check`".into(),
            Side::Local => "a table or column is missing on the local database: run `metersync migrate --local`".into(),
        }),
        "08P01" if phase == Phase::Connect => match pooler_login_refusal(db) {
            Some(f) => f(p),
            None => Fault::new(
                ErrorClass::Transient,
                format!("the pooler at {p}_HOST cannot reach its database server yet; try again shortly"),
            ),
        },
        "53300" => Fault::new(
            ErrorClass::Transient,
            "the server has too many connections; metersync retries, or lower DB_POOL_MAX".into(),
        ),
        "57014" => Fault::new(
            ErrorClass::Transient,
            "the statement was cancelled or timed out; it is retried".into(),
        ),
        "40001" | "40P01" | "55P03" => Fault::new(
            ErrorClass::Transient,
            "a concurrent transaction got in the way; it is retried".into(),
        ),
        c if c.starts_with("08")
            || c.starts_with("53")
            || c.starts_with("57P")
            || c.starts_with("58") =>
        {
            Fault::new(ErrorClass::Transient, network_hint(side))
        }
        _ => Fault::new(
            ErrorClass::Bug,
            format!("the {side} database rejected a statement metersync sent (SQLSTATE {code}); please report it"),
        ),
    }
}

/// PgBouncer 1.18 answers a wrong password, an unknown user and an unknown
/// database with the same fields as its own transient "server login has
/// been failing, try again later" and "client_login_timeout (server down)":
/// severity FATAL, SQLSTATE 08P01, no detail, no hint, all during the
/// startup phase (checked on this machine with 1.18.0). The message is the
/// only field that differs, so this one function, and only it, reads the
/// message: the two operator cases PgBouncer words itself (its own
/// `password authentication failed`, `no such database`, `no such user`) and
/// the server's `database "x" does not exist`, which PgBouncer relays under
/// 08P01. Anything else under 08P01 while connecting is transient.
fn pooler_login_refusal(db: &tokio_postgres::error::DbError) -> Option<fn(&str) -> Fault> {
    let m = db.message();
    if m.starts_with("password authentication failed") || m.starts_with("no such user") {
        return Some(|p| {
            Fault::new(
                ErrorClass::Operator,
                format!("the pooler refused the password: check {p}_USER and {p}_PASSWORD"),
            )
        });
    }
    if m.starts_with("no such database")
        || (m.starts_with("database \"") && m.ends_with("does not exist"))
    {
        return Some(|p| {
            Fault::new(
                ErrorClass::Operator,
                format!("the pooler knows no such database: check {p}_DB"),
            )
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_transient_and_closed_is_not_a_bug() {
        let f = pool(
            Side::Remote,
            &PoolError::Timeout(deadpool_postgres::TimeoutType::Create),
        );
        assert_eq!(f.class, ErrorClass::Transient);
        assert!(f.hint.contains("POSTGRES_CLIENT_HOST"));
        assert_eq!(
            pool(Side::Local, &PoolError::Closed).class,
            ErrorClass::Transient
        );
        assert_eq!(
            pool(Side::Local, &PoolError::NoRuntimeSpecified).class,
            ErrorClass::Bug
        );
    }

    #[test]
    fn tls_hints_name_the_variables() {
        let h = tls_hint(
            "POSTGRES_CLIENT",
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(h.contains("POSTGRES_CLIENT_SSLROOTCERT"), "{h}");
        let h = tls_hint(
            "POSTGRES_SYNC",
            &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        );
        assert!(h.contains("POSTGRES_SYNC_SSLMODE"), "{h}");
    }
}
