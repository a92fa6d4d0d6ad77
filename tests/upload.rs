//! The upload engine against real clusters, with faults injected for real:
//! round trip, kill -9 at random instants, a cut connection and a restarted
//! remote mid-upload (ridden out by re-sending after the backoff), two uploaders at once, PgBouncer in transaction mode,
//! poison rows, a crash between the remote commit and the local delete, and
//! `upload_readings` over MCP with progress notifications.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::rows::{count, fingerprint, seed_mixed};
use common::*;
use rand::Rng;
use serde_json::{json, Value};

/// Runs `metersync upload ARGS` and returns its report.
async fn upload(env: &HashMap<String, String>, args: &[&str]) -> Result<Value> {
    let mut a = vec!["upload"];
    a.extend_from_slice(args);
    let out = run_cli(env, &a, "upload").await?;
    if !out.ok {
        bail!("upload failed: {}", out.stderr);
    }
    assert!(!out.stderr.contains(TEST_PASSWORD));
    serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())
}

#[tokio::test]
async fn round_trip_is_identical_and_a_second_call_uploads_nothing() -> Result<()> {
    let mut w = World::start().await?;
    w.env.insert("SITE_ID".into(), "site-7".into());
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_mixed(&lc, 5_000, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;

    let r = upload(&w.env, &["--batch-size", "1000"]).await?;
    assert_eq!(r["uploaded"], 5000, "{r}");
    assert_eq!(r["already_present"], 0);
    assert_eq!(r["deleted_local"], 5000);
    assert_eq!(r["batches"], 5);
    assert_eq!(r["remaining"], 0);
    assert_eq!(r["quarantined"], 0);
    assert!(r["duration_ms"].is_u64());
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    let untagged: i64 = rc
        .query_one(
            "SELECT count(*) FROM meter_readings WHERE site_id IS DISTINCT FROM 'site-7'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(untagged, 0);

    let r = upload(&w.env, &[]).await?;
    assert_eq!(r["uploaded"], 0, "{r}");
    assert_eq!(r["batches"], 0);
    let runs: i64 = lc
        .query_one(
            "SELECT count(*) FROM sync_runs WHERE kind = 'upload' AND status = 'ok'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(runs, 2);

    // max_rows stops early and says what is left.
    seed_mixed(&lc, 300, 10_000, 0.0).await?;
    let r = upload(&w.env, &["--batch-size", "100", "--max-rows", "250"]).await?;
    assert_eq!(r["uploaded"], 250, "{r}");
    assert_eq!(r["batches"], 3);
    assert_eq!(r["remaining"], 50);
    // Out-of-range flags are named.
    let out = run_cli(&w.env, &["upload", "--batch-size", "0"], "upload-bad").await?;
    assert!(
        !out.ok && out.stderr.contains("batch_size"),
        "{}",
        out.stderr
    );
    Ok(())
}

#[tokio::test]
async fn kill_dash_nine_at_random_instants_loses_and_doubles_nothing() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_mixed(&lc, 200_000, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;
    let mut rng = rand::thread_rng();
    let mut killed = 0;
    for i in 0..8 {
        let wd = workdir();
        let (log, _) = log_file("upload-kill")?;
        let mut child = metersync_cmd(&w.env, wd.path())
            .args(["upload", "--batch-size", "2000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        let wait = Duration::from_millis(rng.gen_range(150..900));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                child.start_kill()?;
                killed += 1;
            }
            st = child.wait() => {
                eprintln!("run {i} finished before the kill: {st:?}");
            }
        }
        let _ = child.wait().await;
    }
    assert!(killed >= 4, "only {killed} runs were killed mid-upload");
    let r = upload(&w.env, &["--batch-size", "2000"]).await?;
    eprintln!("final run: {r}");
    assert_eq!(r["remaining"], 0);
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    Ok(())
}

#[tokio::test]
async fn a_cut_connection_and_a_restarted_remote_lose_and_double_nothing() -> Result<()> {
    const N: i64 = 60_000;
    let w = World::start().await?;
    let proxy = proxy::Proxy::start(w.remote.port).await?;
    let env = w.env_with_remote_at(proxy.port);
    let lc = w.local.client().await?;
    // Every row ever seeded, to compare the remote with at the end.
    lc.batch_execute("CREATE TABLE expected (LIKE meter_readings)")
        .await?;

    for (i, fault) in ["cut", "restart"].into_iter().enumerate() {
        seed_mixed(&lc, N, i as i64 * 100_000, 0.0).await?;
        lc.batch_execute("INSERT INTO expected SELECT * FROM meter_readings")
            .await?;
        let wd = workdir();
        let child = metersync_cmd(&env, wd.path())
            .args(["upload", "--batch-size", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // The fault hits mid-upload: after the first batches, before the last.
        let t0 = std::time::Instant::now();
        while count(&lc, "meter_readings").await? >= N {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{fault}: the upload never started");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let at_fault = count(&lc, "meter_readings").await?;
        match fault {
            "cut" => proxy.cut(),
            _ => w.remote.restart()?,
        }
        assert!(
            0 < at_fault && at_fault < N,
            "{fault}: the fault must hit mid-upload ({at_fault} of {N} left)"
        );
        let out = child.wait_with_output().await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        std::io::Write::write_all(&mut log_file("upload-fault")?.0, &out.stderr)?;
        assert!(!stderr.contains(TEST_PASSWORD));
        // The batch in flight is sent again after the backoff, on a new
        // connection: the upload completes through the fault.
        assert!(out.status.success(), "{fault}: {stderr}");
        let r: Value = serde_json::from_slice(&out.stdout)?;
        assert!(
            r["resent_batches"].as_u64().unwrap_or(0) >= 1,
            "{fault}: {r}"
        );
        assert_eq!(r["remaining"], 0, "{fault}: {r}");
        eprintln!("{fault}: {at_fault} rows left at the fault; {r}");
        assert_eq!(count(&lc, "meter_readings").await?, 0, "{fault}");
    }
    let r = upload(&env, &["--batch-size", "500"]).await?;
    assert_eq!(r["uploaded"], 0, "{r}");
    let rc = w.remote.client().await?;
    assert_eq!(
        fingerprint(&rc, "meter_readings").await?,
        fingerprint(&lc, "expected").await?
    );
    Ok(())
}

#[tokio::test]
async fn two_concurrent_uploads_never_send_the_same_rows() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_mixed(&lc, 60_000, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;
    let (a, b) = tokio::join!(
        upload(&w.env, &["--batch-size", "1000"]),
        upload(&w.env, &["--batch-size", "1000"])
    );
    let (a, b) = (a?, b?);
    eprintln!("a: {a}\nb: {b}");
    assert_eq!(a["already_present"], 0);
    assert_eq!(b["already_present"], 0);
    let total = a["uploaded"].as_u64().unwrap_or(0) + b["uploaded"].as_u64().unwrap_or(0);
    assert_eq!(total, 60_000);
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    Ok(())
}

#[tokio::test]
async fn through_pgbouncer_in_transaction_mode() -> Result<()> {
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let bouncer = PgBouncer::start(&remote)?;
    let mut env = base_env();
    env.extend(local.env("SYNC"));
    env.extend(bouncer.env("CLIENT"));
    let out = run_cli(&env, &["migrate"], "migrate-pgbouncer").await?;
    assert!(out.ok, "{}", out.stderr);
    let (lc, rc) = (local.client().await?, remote.client().await?);
    seed_mixed(&lc, 20_000, 0, 0.0).await?;
    // One NaN the remote forbids, and some rows it already holds: both slow
    // paths (savepoints, UNNEST) go through the pooler too.
    lc.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value) VALUES (1, 'x', now(), 'NaN')",
        &[],
    )
    .await?;
    rc.batch_execute(
        "ALTER TABLE meter_readings ADD CONSTRAINT no_nan CHECK (value <> 'NaN'::float8)",
    )
    .await?;
    let before = fingerprint(&lc, "meter_readings WHERE value <> 'NaN'::float8").await?;
    rc.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT g % 50 + 1, CASE WHEN g % 3 = 0 THEN 'power_kw' ELSE 'energy_kwh' END,
                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                g / 4.0, CASE WHEN g % 7 = 0 THEN NULL ELSE 'kWh' END
         FROM generate_series(1, 20000) g WHERE g % 10 = 0",
        &[],
    )
    .await?;
    let (a, b) = tokio::join!(
        upload(&env, &["--batch-size", "3000"]),
        upload(&env, &["--batch-size", "3000"])
    );
    let (a, b) = (a?, b?);
    let sum = |k: &str| a[k].as_u64().unwrap_or(0) + b[k].as_u64().unwrap_or(0);
    assert_eq!(sum("uploaded"), 18_000, "{a}\n{b}");
    assert_eq!(sum("already_present"), 2_000);
    assert_eq!(sum("quarantined"), 1);
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    let r = upload(&env, &[]).await?;
    assert_eq!(r["uploaded"], 0);
    Ok(())
}

#[tokio::test]
async fn poison_rows_are_quarantined_and_the_rest_goes_through() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    rc.batch_execute(
        "INSERT INTO tenants (id, name) VALUES (1, 't');
         INSERT INTO meters (id, tenant_id, name, device_instance, address, points)
           SELECT g, 1, 'm' || g, g, '127.0.0.1:47808', '[]' FROM generate_series(1, 50) g;
         ALTER TABLE meter_readings ADD CONSTRAINT no_nan CHECK (value <> 'NaN'::float8);
         ALTER TABLE meter_readings ADD CONSTRAINT known_meter
           FOREIGN KEY (meter_id) REFERENCES meters(id);",
    )
    .await?;
    seed_mixed(&lc, 10_000, 0, 0.0).await?;
    let healthy = fingerprint(&lc, "meter_readings").await?;
    lc.batch_execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value) VALUES
           (3, 'nan', '2026-02-01', 'NaN'), (4, 'nan', '2026-02-02', 'NaN'),
           (5, 'nan', '2026-02-03', 'NaN'), (999, 'ghost', '2026-02-01', 1),
           (998, 'ghost', '2026-02-02', 2);",
    )
    .await?;
    let r = upload(&w.env, &["--batch-size", "2500"]).await?;
    assert_eq!(r["uploaded"], 10_000, "{r}");
    assert_eq!(r["quarantined"], 5);
    let rows = r["quarantined_rows"]
        .as_array()
        .context("quarantined_rows")?;
    assert_eq!(rows.len(), 5);
    let errors: Vec<&str> = rows.iter().filter_map(|q| q["error"].as_str()).collect();
    assert_eq!(
        errors.iter().filter(|e| e.contains("no_nan")).count(),
        3,
        "{errors:?}"
    );
    assert_eq!(
        errors.iter().filter(|e| e.contains("known_meter")).count(),
        2,
        "{errors:?}"
    );
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(count(&lc, "meter_readings_quarantine").await?, 5);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, healthy);

    // A remote that refuses everything is a mismatch, not bad data: the
    // upload fails and moves nothing.
    rc.batch_execute(
        "ALTER TABLE meter_readings ADD CONSTRAINT impossible CHECK (value < -1e12) NOT VALID",
    )
    .await?;
    seed_mixed(&lc, 2_000, 50_000, 0.0).await?;
    let out = run_cli(&w.env, &["upload"], "upload-mismatch").await?;
    assert!(!out.ok);
    assert!(out.stderr.contains("mismatch"), "{}", out.stderr);
    assert_eq!(count(&lc, "meter_readings").await?, 2_000);
    assert_eq!(count(&lc, "meter_readings_quarantine").await?, 5);
    Ok(())
}

#[tokio::test]
async fn rows_committed_remotely_before_a_crash_count_as_already_present() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_mixed(&lc, 3_000, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;
    // The remote committed every third row, the local delete never happened.
    rc.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT g % 50 + 1, CASE WHEN g % 3 = 0 THEN 'power_kw' ELSE 'energy_kwh' END,
                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                g / 4.0, CASE WHEN g % 7 = 0 THEN NULL ELSE 'kWh' END
         FROM generate_series(1, 3000) g WHERE g % 3 = 0",
        &[],
    )
    .await?;
    let r = upload(&w.env, &["--batch-size", "500"]).await?;
    assert_eq!(r["uploaded"], 2_000, "{r}");
    assert_eq!(r["already_present"], 1_000);
    assert_eq!(r["deleted_local"], 3_000);
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    Ok(())
}

/// A client that keeps every progress notification.
#[derive(Clone, Default)]
struct ProgressClient(Arc<Mutex<Vec<rmcp::model::ProgressNotificationParam>>>);

impl rmcp::ClientHandler for ProgressClient {
    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        if let Ok(mut v) = self.0.lock() {
            v.push(params);
        }
    }
}

#[tokio::test]
async fn mcp_upload_readings_reports_progress_and_rejects_bad_arguments() -> Result<()> {
    use rmcp::ServiceExt;
    let w = World::start().await?;
    let lc = w.local.client().await?;
    seed_mixed(&lc, 5_000, 0, 0.0).await?;
    let wd = workdir();
    let (log, _) = log_file("mcp-upload")?;
    let (transport, _) =
        rmcp::transport::TokioChildProcess::builder(metersync_cmd(&w.env, wd.path()))
            .stderr(Stdio::from(log))
            .spawn()?;
    let handler = ProgressClient::default();
    let client = handler.clone().serve(transport).await?;

    let tools = client.list_all_tools().await?;
    let tool = tools
        .iter()
        .find(|t| t.name == "upload_readings")
        .context("upload_readings listed")?;
    let ann = tool.annotations.clone().context("annotations")?;
    assert_eq!(ann.read_only_hint, Some(false));
    assert_eq!(ann.destructive_hint, Some(false));
    assert_eq!(ann.idempotent_hint, Some(true));
    assert!(tool.output_schema.is_some());

    let call = |args: Value| {
        let mut p = rmcp::model::CallToolRequestParams::new("upload_readings");
        if let Value::Object(m) = args {
            p = p.with_arguments(m);
        }
        client.call_tool(p)
    };
    let r = call(json!({"batch_size": 1000})).await?;
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    let s = r.structured_content.clone().context("structured")?;
    assert_eq!(s["uploaded"], 5000, "{s}");
    assert_eq!(s["batches"], 5);
    let seen = handler.0.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.last().map(|p| p.progress), Some(5000.0));
    assert_eq!(seen.last().and_then(|p| p.total), Some(5000.0));

    for (args, name) in [
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"batch_size": 1_000_001}), "batch_size"),
        (json!({"batch_size": -5}), "batch_size"),
        (json!({"max_rows": 0}), "max_rows"),
        (json!({"bogus": 1}), "bogus"),
    ] {
        let r = call(args.clone()).await?;
        assert_eq!(r.is_error, Some(true), "{args}");
        assert!(text_of(&r).contains(name), "{args}: {}", text_of(&r));
    }
    let _ = client.cancel().await;
    Ok(())
}

#[tokio::test]
async fn an_interrupt_stops_between_batches_with_nothing_half_done() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_mixed(&lc, 200_000, 0, 0.0).await?;
    let wd = workdir();
    let child = metersync_cmd(&w.env, wd.path())
        .args(["upload", "--batch-size", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Interrupt once the first batches are in, so the stop hits mid-upload.
    let t0 = std::time::Instant::now();
    while count(&lc, "meter_readings").await? >= 200_000 {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the upload never started");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().context("child pid")? as i32;
    // SAFETY: kill has no memory preconditions; pid is our live child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = child.wait_with_output().await?;
    std::io::Write::write_all(&mut log_file("upload-sigint")?.0, &out.stderr)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["cancelled"], true, "{r}");
    let uploaded = r["uploaded"].as_i64().unwrap_or(-1);
    assert!(uploaded > 0 && uploaded < 200_000, "{r}");
    assert_eq!(uploaded % 1000, 0, "whole batches only: {r}");
    assert_eq!(count(&rc, "meter_readings").await?, uploaded);
    assert_eq!(count(&lc, "meter_readings").await?, 200_000 - uploaded);
    assert_eq!(r["remaining"], 200_000 - uploaded);
    let status: String = lc
        .query_one(
            "SELECT status FROM sync_runs WHERE kind = 'upload' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(status, "cancelled");
    Ok(())
}

/// The table's key check now leaves with the first streamed chunk: a remote
/// `meter_readings` without the reading key must still refuse the upload
/// before any row commits, with the backlog untouched.
#[tokio::test]
async fn a_remote_table_without_the_reading_key_is_refused_and_nothing_moves() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    rc.batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT meter_readings_pkey")
        .await?;
    seed_mixed(&lc, 5_000, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;
    let out = run_cli(&w.env, &["upload"], "upload-no-key").await?;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("has no unique key on (meter_id, point, recorded_at)"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&rc, "meter_readings").await?, 0);
    assert_eq!(fingerprint(&lc, "meter_readings").await?, before);
    Ok(())
}
