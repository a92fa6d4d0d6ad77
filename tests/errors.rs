//! The error classification against real servers (issue 10): a wrong
//! password or database, directly and through PgBouncer 1.18 (which turns
//! both into SQLSTATE 08P01), is an operator error: no retry, a hint naming
//! the variable to change, answered in under 2 s although the retry policy
//! allows 5 retries (62 s). An unreachable port is still transient and
//! retried on the policy's schedule. Statement errors: a missing table is an
//! operator error pointing at `migrate`, a value that does not decode is a
//! bug, never transient.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use metersync::config::{Config, Side};
use metersync::db::{Databases, DbError};
use metersync::fault::ErrorClass;

/// Both sides pointing at `remote_port` for the remote (with `overrides`),
/// the default 5 retries.
fn config(local: &PgCluster, remote_port: u16, overrides: &[(&str, &str)]) -> Config {
    let mut v: HashMap<String, String> = local.env("SYNC").into_iter().collect();
    v.extend(env_for("CLIENT", remote_port));
    v.insert("MAX_CONNECTION_RETRIES".into(), "5".into());
    v.insert("DB_CONNECTION_TIMEOUT_MS".into(), "3000".into());
    for (k, val) in overrides {
        v.insert(k.to_string(), val.to_string());
    }
    Config::from_vars(&v).unwrap_or_else(|e| panic!("config: {e}"))
}

/// Connects the remote side; returns the error and how long it took.
async fn refused(cfg: &Config) -> (DbError, Duration, u64) {
    let db = Databases::new(cfg).unwrap_or_else(|e| panic!("pools: {e}"));
    let t = Instant::now();
    let e = match db.initialize_side(Side::Remote).await {
        Ok(()) => panic!("the remote accepted the login"),
        Err(e) => e,
    };
    let took = t.elapsed();
    let retries = db.status().await.remote.retries;
    (e, took, retries)
}

#[track_caller]
fn assert_operator(e: &DbError, took: Duration, retries: u64, var: &str) {
    let text = e.to_string();
    eprintln!("refused in {} ms: {text}", took.as_millis());
    assert_eq!(e.class(), ErrorClass::Operator, "{text}");
    assert!(!e.is_transient(), "{text}");
    assert!(matches!(e, DbError::Refused { .. }), "{e:?}");
    assert!(e.hint().unwrap_or("").contains(var), "{text}");
    assert!(!text.contains(TEST_PASSWORD), "{text}");
    assert!(!text.contains("_HOST, "), "not a network hint: {text}");
    assert_eq!(retries, 0, "{text}");
    assert!(took < Duration::from_secs(2), "took {took:?}: {text}");
}

#[tokio::test]
async fn wrong_password_and_database_directly_are_operator_errors_at_once() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let cfg = config(
        &local,
        remote.port,
        &[("POSTGRES_CLIENT_PASSWORD", "not-the-password")],
    );
    let (e, took, retries) = refused(&cfg).await;
    assert_operator(&e, took, retries, "POSTGRES_CLIENT_PASSWORD");
    assert!(e.to_string().contains("28P01"), "{e}");

    let cfg = config(&local, remote.port, &[("POSTGRES_CLIENT_DB", "no_such_db")]);
    let (e, took, retries) = refused(&cfg).await;
    assert_operator(&e, took, retries, "POSTGRES_CLIENT_DB");
    assert!(e.to_string().contains("3D000"), "{e}");
    Ok(())
}

#[tokio::test]
async fn wrong_password_and_database_through_pgbouncer_are_operator_errors_at_once(
) -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let pgb = PgBouncer::start(&remote)?;
    let cfg = config(
        &local,
        pgb.port,
        &[("POSTGRES_CLIENT_PASSWORD", "not-the-password")],
    );
    let (e, took, retries) = refused(&cfg).await;
    assert!(e.to_string().contains("08P01"), "PgBouncer's code: {e}");
    assert_operator(&e, took, retries, "POSTGRES_CLIENT_PASSWORD");

    let cfg = config(&local, pgb.port, &[("POSTGRES_CLIENT_DB", "no_such_db")]);
    let (e, took, retries) = refused(&cfg).await;
    assert!(e.to_string().contains("08P01"), "PgBouncer's code: {e}");
    assert_operator(&e, took, retries, "POSTGRES_CLIENT_DB");

    // The right credentials through the same pooler still work.
    let db = Databases::new(&config(&local, pgb.port, &[]))?;
    db.initialize_side(Side::Remote).await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_port_is_transient_and_retried_on_the_schedule() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let dead = free_port();
    let cfg = config(&local, dead, &[("MAX_CONNECTION_RETRIES", "1")]);
    let db = Databases::new(&cfg)?;
    let t = Instant::now();
    let e = match db.initialize_side(Side::Remote).await {
        Ok(()) => panic!("nothing listens on {dead}"),
        Err(e) => e,
    };
    let took = t.elapsed();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(
        matches!(e, DbError::Connect { retries: 1, .. }),
        "one retry: {e:?}"
    );
    assert!(
        e.hint().unwrap_or("").contains("POSTGRES_CLIENT_PORT"),
        "{e}"
    );
    // The policy waits 2 s before the first retry.
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    assert_eq!(db.status().await.remote.retries, 1);
    Ok(())
}

#[tokio::test]
async fn statement_errors_are_classified_by_sqlstate_and_kind() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let cfg = config(&local, free_port(), &[]);
    let db = Databases::new(&cfg)?;
    let c = db.local().await?;

    let e = c
        .query_typed("SELECT * FROM no_such_table", &[])
        .await
        .expect_err("no such table");
    let e = DbError::query(Side::Local, &e);
    assert_eq!(e.class(), ErrorClass::Operator, "{e}");
    assert!(e.to_string().contains("metersync migrate --local"), "{e}");

    let e = c
        .query_typed("SELECT no_such_column FROM pg_class", &[])
        .await
        .expect_err("no such column");
    assert_eq!(
        DbError::query(Side::Remote, &e).class(),
        ErrorClass::Operator
    );

    // A value that does not decode is a bug, never transient.
    let rows = c.query_typed("SELECT 'x'::text", &[]).await?;
    let e = rows[0].try_get::<_, i64>(0).expect_err("text is not i64");
    let e = DbError::query(Side::Local, &e);
    assert_eq!(e.class(), ErrorClass::Bug, "{e}");
    assert!(!e.is_transient());

    // A syntax error in our SQL is a bug.
    let e = c.simple_query("SELEC 1").await.expect_err("syntax error");
    assert_eq!(DbError::query(Side::Local, &e).class(), ErrorClass::Bug);

    // Missing privileges: an operator error naming the grant.
    let admin = local.client().await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE secret_t (x int); CREATE ROLE weak LOGIN PASSWORD '{TEST_PASSWORD}'"
        ))
        .await?;
    let mut v: HashMap<String, String> = local.env("SYNC").into_iter().collect();
    v.insert("POSTGRES_SYNC_USER".into(), "weak".into());
    let weak = Databases::new(&Config::from_vars(&v)?)?;
    let e = weak
        .local()
        .await?
        .query_typed("SELECT * FROM secret_t", &[])
        .await
        .expect_err("no grant");
    let e = DbError::query(Side::Local, &e);
    assert_eq!(e.class(), ErrorClass::Operator, "{e}");
    assert!(e.to_string().contains("42501"), "{e}");
    Ok(())
}

#[tokio::test]
async fn a_pooler_whose_server_is_down_is_transient_not_an_operator_error() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let pgb = PgBouncer::start(&remote)?;
    let cfg = config(&local, pgb.port, &[("MAX_CONNECTION_RETRIES", "0")]);
    let db = Databases::new(&cfg)?;
    db.initialize_side(Side::Remote).await?;
    remote.stop()?;
    // PgBouncer accepts the login (it caches the server's parameters) and
    // fails the statement with 08P01: transient, whatever its wording.
    let e = match db.get_once(Side::Remote).await {
        Ok(c) => match c.simple_query("SELECT 1").await {
            Ok(_) => panic!("the server is down"),
            Err(e) => DbError::query(Side::Remote, &e),
        },
        Err(e) => e,
    };
    eprintln!("with the server down: {e}");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    Ok(())
}
