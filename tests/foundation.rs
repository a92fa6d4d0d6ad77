//! The foundation against real clusters: both pools connect, migrations are
//! idempotent, a dead remote is retried on the 2 s schedule and reported
//! without the password, a restarted remote is reconnected transparently,
//! and `connection_status` works through a real MCP client, also through
//! PgBouncer in transaction mode.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn status_reports_both_databases_and_migrate_twice_is_a_no_op() -> anyhow::Result<()> {
    let w = World::start().await?;
    let out = run_cli(&w.env, &["status"], "status").await?;
    assert!(out.ok, "{}", out.stderr);
    let s: Value = serde_json::from_str(&out.stdout)?;
    for side in ["local", "remote"] {
        assert_eq!(s[side]["connected"], true, "{side}: {s}");
        assert!(s[side]["server_version"]
            .as_str()
            .unwrap_or("")
            .starts_with(char::is_numeric));
        assert!(s[side]["latency_ms"].as_f64().is_some());
        assert_eq!(s[side]["pool"]["max"], 10);
        assert_eq!(s[side]["last_error"], Value::Null);
    }

    let again = run_cli(&w.env, &["migrate"], "migrate-again").await?;
    assert!(again.ok, "{}", again.stderr);
    let r: Value = serde_json::from_str(&again.stdout)?;
    assert_eq!(r["local"]["applied"], json!([]));
    assert_eq!(r["remote"]["applied"], json!([]));
    let local_versions: Vec<&str> = metersync::migrate::LOCAL
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(r["local"]["already_applied"], json!(local_versions));
    let n: i64 = w
        .local
        .client()
        .await?
        .query_one("SELECT count(*) FROM metersync_migrations", &[])
        .await?
        .get(0);
    assert_eq!(n as usize, metersync::migrate::LOCAL.len());
    Ok(())
}

#[tokio::test]
async fn migrate_accepts_a_remote_that_already_has_the_tables() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let rc = remote.client().await?;
    rc.batch_execute(
        "CREATE TABLE tenants (id bigint primary key, site_id text, name text not null, unit text,
            email text, active boolean not null default true, updated_at timestamptz not null default now());
         CREATE TABLE meters (id bigint primary key, site_id text, tenant_id bigint references tenants(id),
            name text not null, device_instance integer not null, address text not null, points jsonb not null,
            active boolean not null default true, updated_at timestamptz not null default now());
         CREATE TABLE meter_readings (meter_id bigint not null, point text not null, recorded_at timestamptz not null,
            value double precision not null, unit text, site_id text, uploaded_at timestamptz not null default now(),
            primary key (meter_id, point, recorded_at));
         INSERT INTO tenants (id, name) VALUES (1, 'kept');",
    )
    .await?;
    let mut env = base_env();
    env.extend(local.env("SYNC"));
    env.extend(remote.env("CLIENT"));
    let out = run_cli(&env, &["migrate"], "migrate-existing").await?;
    assert!(out.ok, "{}", out.stderr);
    let n: i64 = rc
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);
    assert_eq!(n, 1, "existing data untouched");
    Ok(())
}

#[tokio::test]
async fn a_dead_remote_is_retried_then_named_without_the_password() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let dead_port = free_port();
    let mut env = base_env();
    env.extend(local.env("SYNC"));
    env.extend(env_for("CLIENT", dead_port));
    env.insert("MAX_CONNECTION_RETRIES".into(), "1".into());
    let t = Instant::now();
    // `migrate` gives the remote one attempt (it must not hold the local
    // migrations back: tests/migrate_sides.rs); a remote operation retries.
    let out = run_cli(&env, &["download-tenants"], "dead-remote").await?;
    let took = t.elapsed();
    assert!(
        !out.ok,
        "a remote operation must fail against a dead remote"
    );
    // one retry after 2 s (the first step of the 2 s, 4 s, 8 s... schedule)
    assert!(took >= Duration::from_millis(2000), "took {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let endpoint = format!("127.0.0.1:{dead_port}");
    assert!(out.stderr.contains("next_delay_ms=2000"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("port={dead_port}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("attempt=1"), "{}", out.stderr);
    assert!(out.stderr.contains(&endpoint), "{}", out.stderr);
    assert!(out.stderr.contains("after 1 retries"), "{}", out.stderr);
    assert!(
        out.stderr.contains("POSTGRES_CLIENT_HOST"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(TEST_PASSWORD));
    assert!(!out.stdout.contains(TEST_PASSWORD));
    Ok(())
}

#[tokio::test]
async fn wrong_password_is_not_retried_and_not_printed() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let mut env = base_env();
    env.extend(local.env("SYNC"));
    env.insert("POSTGRES_SYNC_PASSWORD".into(), "wrong-Secret-123".into());
    env.insert("MAX_CONNECTION_RETRIES".into(), "3".into());
    let t = Instant::now();
    let out = run_cli(&env, &["migrate"], "wrong-password").await?;
    assert!(!out.ok);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "authentication failures are not retried"
    );
    assert!(
        out.stderr.contains("POSTGRES_SYNC_PASSWORD"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("wrong-Secret-123"));
    Ok(())
}

#[tokio::test]
async fn a_malformed_variable_is_named_at_startup() -> anyhow::Result<()> {
    let mut env = base_env();
    env.insert("DB_POOL_MAX".into(), "lots".into());
    let out = run_cli(&env, &["status"], "bad-config").await?;
    assert!(!out.ok);
    assert!(out.stderr.contains("DB_POOL_MAX"), "{}", out.stderr);
    Ok(())
}

#[tokio::test]
async fn mcp_connection_status_survives_a_remote_restart() -> anyhow::Result<()> {
    let w = World::start().await?;
    let mcp = Mcp::start(&w.env, &["serve"], "mcp-restart").await?;
    let info = mcp
        .client
        .peer_info()
        .expect("server info after the handshake");
    let imp = info
        .server_info
        .clone()
        .expect("server implementation info");
    assert_eq!(imp.name, "metersync");
    assert_eq!(imp.version, env!("CARGO_PKG_VERSION"));
    assert!(info
        .instructions
        .clone()
        .unwrap_or_default()
        .contains("download_tenants"));

    let s = mcp.call_ok("connection_status", json!({})).await?;
    assert_eq!(s["local"]["connected"], true, "{s}");
    assert_eq!(s["remote"]["connected"], true, "{s}");
    assert!(s["remote"]["pool"]["size"].as_u64().unwrap_or(0) >= 1);

    w.remote.restart()?;
    // The pooled connection is now dead; the next call replaces it.
    let s = mcp.call_ok("connection_status", json!({})).await?;
    assert_eq!(s["remote"]["connected"], true, "{s}");
    let st = mcp.call_ok("sync_status", json!({})).await?;
    assert_eq!(st["backlog"]["count"], 0);

    // Stopped: reported, not fatal; the server keeps serving.
    w.remote.stop()?;
    let s = mcp.call_ok("connection_status", json!({})).await?;
    assert_eq!(s["remote"]["connected"], false);
    assert!(s["remote"]["last_error"]
        .as_str()
        .is_some_and(|e| !e.contains(TEST_PASSWORD)));
    w.remote.start_again()?;
    let s = mcp.call_ok("connection_status", json!({})).await?;
    assert_eq!(s["remote"]["connected"], true, "{s}");
    mcp.close().await?;
    Ok(())
}

#[tokio::test]
async fn mcp_works_through_pgbouncer_in_transaction_mode() -> anyhow::Result<()> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let bouncer = PgBouncer::start(&remote)?;
    let mut env = base_env();
    env.extend(local.env("SYNC"));
    env.extend(bouncer.env("CLIENT"));
    let out = run_cli(&env, &["migrate"], "migrate-pgbouncer").await?;
    assert!(out.ok, "{}", out.stderr);
    let again = run_cli(&env, &["migrate"], "migrate-pgbouncer-2").await?;
    assert!(again.ok, "{}", again.stderr);

    let mcp = Mcp::start(&env, &[], "mcp-pgbouncer").await?;
    for _ in 0..5 {
        let s = mcp.call_ok("connection_status", json!({})).await?;
        assert_eq!(s["remote"]["connected"], true, "{s}");
        assert_eq!(
            s["remote"]["endpoint"],
            format!("127.0.0.1:{}", bouncer.port)
        );
    }
    mcp.close().await?;
    Ok(())
}

#[tokio::test]
async fn bad_arguments_are_tool_errors_and_set_level_is_answered() -> anyhow::Result<()> {
    let w = World::start().await?;
    let mcp = Mcp::start(&w.env, &["serve"], "mcp-args").await?;
    let r = mcp.call("sync_status", json!({"bogus": 1})).await?;
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("bogus"), "{}", text_of(&r));
    #[allow(deprecated)]
    mcp.client
        .set_level(rmcp::model::SetLevelRequestParams::new(
            rmcp::model::LoggingLevel::Debug,
        ))
        .await?;
    let s = mcp.call_ok("sync_status", json!({})).await?;
    assert!(s["backlog"]["count"].is_number());
    mcp.close().await?;
    Ok(())
}
