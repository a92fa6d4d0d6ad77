//! `metersync migrate [--local|--remote] [--print]` and `metersync check`
//! (issue 10): each side is applied on its own and both are reported; a
//! least-privilege remote role (SELECT on tenants and meters, INSERT on
//! meter_readings) fails `migrate --remote` with an operator error (42501)
//! while `--local` works and `check` passes; a remote that is down does not
//! hold the local result back; `--print` writes the SQL without connecting,
//! and once a DBA has run it the locked-down role's `migrate` is a no-op.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ROLE: &str = "metersync_app";

/// The local cluster, and a remote where `postgres` made the contract's
/// tables (by running the printed SQL) and a least-privilege role.
struct LockedDown {
    local: PgCluster,
    remote: PgCluster,
    /// metersync as the least-privilege role.
    env: HashMap<String, String>,
}

async fn locked_down(dba_runs_the_script: bool) -> anyhow::Result<LockedDown> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let admin = remote.client().await?;
    if dba_runs_the_script {
        let out = run_cli(&base_env(), &["migrate", "--print", "--remote"], "print").await?;
        assert!(out.ok, "{}", out.stderr);
        admin.batch_execute(&out.stdout).await?;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD '{TEST_PASSWORD}';
                 GRANT SELECT ON metersync_migrations TO {ROLE};"
            ))
            .await?;
    } else {
        // The customer's own tables, made without metersync.
        for m in metersync::migrate::REMOTE {
            admin.batch_execute(m.sql).await?;
        }
        admin
            .batch_execute(&format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD '{TEST_PASSWORD}'"
            ))
            .await?;
    }
    admin
        .batch_execute(&format!(
            "GRANT SELECT ON tenants, meters TO {ROLE};
             GRANT SELECT, INSERT ON meter_readings TO {ROLE};
             GRANT SELECT, INSERT, UPDATE ON site_status TO {ROLE};"
        ))
        .await?;
    let mut env = base_env();
    env.insert("MAX_CONNECTION_RETRIES".into(), "5".into());
    env.extend(local.env("SYNC"));
    env.extend(remote.env("CLIENT"));
    env.insert("POSTGRES_CLIENT_USER".into(), ROLE.into());
    Ok(LockedDown { local, remote, env })
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", out.stdout, out.stderr))
}

#[tokio::test]
async fn a_least_privilege_remote_fails_migrate_remote_but_local_and_check_work(
) -> anyhow::Result<()> {
    let w = locked_down(false).await?;

    let out = run_cli(&w.env, &["migrate", "--remote"], "migrate-remote").await?;
    assert!(!out.ok, "{}", out.stdout);
    let r = json(&out);
    assert_eq!(r["ok"], false);
    assert_eq!(r["local"], Value::Null, "not asked for: {r}");
    assert_eq!(r["remote"]["status"], "failed", "{r}");
    assert_eq!(r["remote"]["class"], "operator", "{r}");
    let err = r["remote"]["error"].as_str().unwrap_or("");
    assert!(err.contains("42501"), "{r}");
    assert!(
        r["remote"]["hint"]
            .as_str()
            .unwrap_or("")
            .contains("migrate --remote --print"),
        "{r}"
    );
    assert!(!out.stdout.contains(TEST_PASSWORD) && !out.stderr.contains(TEST_PASSWORD));

    let out = run_cli(&w.env, &["migrate", "--local"], "migrate-local").await?;
    assert!(out.ok, "{}", out.stderr);
    let r = json(&out);
    assert_eq!(r["ok"], true);
    assert_eq!(r["remote"], Value::Null);
    assert_eq!(
        r["local"]["applied"].as_array().map(Vec::len),
        Some(metersync::migrate::LOCAL.len())
    );

    let out = run_cli(&w.env, &["check"], "check").await?;
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    let r = json(&out);
    assert_eq!(r["ok"], true, "{r}");
    let checks: Vec<&str> = r["checks"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["check"].as_str()).collect())
        .unwrap_or_default();
    for want in [
        "table tenants exists",
        "SELECT on tenants",
        "SELECT on meters",
        "SELECT on meter_readings",
        "INSERT on meter_readings",
        "meter_readings is keyed on (meter_id, point, recorded_at)",
    ] {
        assert!(checks.contains(&want), "{want} not in {checks:?}");
    }

    // Both sides: the local one is applied (already), the remote one fails,
    // the exit code says not everything was applied.
    let out = run_cli(&w.env, &["migrate"], "migrate-both").await?;
    assert!(!out.ok);
    let r = json(&out);
    assert_eq!(r["local"]["status"], "applied", "{r}");
    assert_eq!(r["remote"]["status"], "failed", "{r}");

    // A missing grant is a failed check naming it.
    w.remote
        .client()
        .await?
        .batch_execute(&format!("REVOKE INSERT ON meter_readings FROM {ROLE}"))
        .await?;
    let out = run_cli(&w.env, &["check"], "check-revoked").await?;
    assert!(!out.ok);
    let r = json(&out);
    let failed: Vec<&Value> = r["checks"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["ok"] == false).collect())
        .unwrap_or_default();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["check"], "INSERT on meter_readings");
    assert!(failed[0]["detail"]
        .as_str()
        .unwrap_or("")
        .contains("GRANT INSERT ON meter_readings"));
    drop(w.local);
    Ok(())
}

#[tokio::test]
async fn after_the_dba_runs_the_printed_sql_migrate_is_a_no_op_for_the_locked_down_role(
) -> anyhow::Result<()> {
    let w = locked_down(true).await?;
    let out = run_cli(&w.env, &["migrate"], "migrate-after-dba").await?;
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    let r = json(&out);
    assert_eq!(r["remote"]["applied"], serde_json::json!([]), "{r}");
    assert_eq!(
        r["remote"]["already_applied"].as_array().map(Vec::len),
        Some(metersync::migrate::REMOTE.len())
    );
    let out = run_cli(&w.env, &["check"], "check-after-dba").await?;
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    Ok(())
}

#[tokio::test]
async fn a_remote_that_is_down_does_not_hold_the_local_migrations_back() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let mut env = base_env();
    // The full policy would take 62 s.
    env.insert("MAX_CONNECTION_RETRIES".into(), "5".into());
    env.extend(local.env("SYNC"));
    env.extend(env_for("CLIENT", free_port()));
    let t = Instant::now();
    let out = run_cli(&env, &["migrate"], "migrate-remote-down").await?;
    let took = t.elapsed();
    assert!(!out.ok, "the remote was not migrated");
    let r = json(&out);
    assert_eq!(r["local"]["status"], "applied", "{r}");
    assert_eq!(
        r["local"]["applied"].as_array().map(Vec::len),
        Some(metersync::migrate::LOCAL.len())
    );
    assert_eq!(r["remote"]["status"], "failed", "{r}");
    assert_eq!(r["remote"]["class"], "transient", "{r}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // The local migrations really are there.
    let n: i64 = local
        .client()
        .await?
        .query_one("SELECT count(*) FROM metersync_migrations", &[])
        .await?
        .try_get(0)?;
    assert_eq!(n as usize, metersync::migrate::LOCAL.len());

    // `--print` connects to nothing.
    let out = run_cli(&env, &["migrate", "--print", "--remote"], "print-down").await?;
    assert!(out.ok, "{}", out.stderr);
    assert!(out
        .stdout
        .contains("CREATE TABLE IF NOT EXISTS meter_readings"));
    Ok(())
}

#[tokio::test]
async fn migrate_and_check_work_through_pgbouncer_in_transaction_mode() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let pgb = PgBouncer::start(&remote)?;
    let mut env = base_env();
    env.extend(local.env("SYNC"));
    env.extend(pgb.env("CLIENT"));
    for round in ["first", "again"] {
        let out = run_cli(&env, &["migrate"], "migrate-pgb").await?;
        assert!(out.ok, "{round}: {} {}", out.stdout, out.stderr);
        assert_eq!(json(&out)["remote"]["status"], "applied");
    }
    let out = run_cli(&env, &["check"], "check-pgb").await?;
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert_eq!(json(&out)["ok"], true);
    Ok(())
}
