//! What the upload sets aside and why, against real clusters: a missing
//! partition keeps rows local with the partition to add (not quarantined),
//! a CHECK quarantines only its rows, a same-key different-value row is a
//! counted and kept conflict, `list_quarantine` / `requeue_readings` over a
//! real MCP client and `metersync quarantine` move rows back exactly once,
//! a frozen link fails the batch within its deadline, and a remote restart
//! behind PgBouncer during several uploads is ridden out with backoff.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::rows::{count, fingerprint, seed_mixed};
use common::*;
use serde_json::{json, Value};

/// Polls `check` every 20 ms until it returns true, failing after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    while !check().await? {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs `metersync ARGS`, expecting success and JSON on stdout.
async fn cli_json(env: &HashMap<String, String>, args: &[&str], log: &str) -> Result<Value> {
    let out = run_cli(env, args, log).await?;
    if !out.ok {
        bail!("metersync {args:?} failed: {}", out.stderr);
    }
    assert!(!out.stderr.contains(TEST_PASSWORD));
    serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())
}

/// The contract's `meter_readings`, partitioned by month, with a CHECK on
/// the value and a partition for January 2026 only.
const PARTITIONED: &str = "
    DROP TABLE meter_readings;
    CREATE TABLE meter_readings (
        meter_id bigint NOT NULL, point text NOT NULL, recorded_at timestamptz NOT NULL,
        value double precision NOT NULL, unit text, site_id text,
        uploaded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (meter_id, point, recorded_at),
        CONSTRAINT sane_value CHECK (value < 1e9)
    ) PARTITION BY RANGE (recorded_at);
    CREATE TABLE meter_readings_2026_01 PARTITION OF meter_readings
        FOR VALUES FROM ('2026-01-01 00:00+00') TO ('2026-02-01 00:00+00');";

/// 31 days in seconds: seeds with this offset fall in February 2026.
const FEBRUARY: i64 = 31 * 86_400;

#[tokio::test]
async fn a_missing_partition_keeps_rows_local_and_a_check_quarantines_only_its_rows() -> Result<()>
{
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    rc.batch_execute(PARTITIONED).await?;
    // 1,000 good January rows, then 3 January rows the CHECK refuses, then
    // 500 good February rows no partition covers yet.
    seed_mixed(&lc, 1_000, 0, 0.0).await?;
    seed_mixed(&lc, 3, 5_000, 1e12).await?;
    seed_mixed(&lc, 500, FEBRUARY, 0.0).await?;
    let good = fingerprint(&lc, "meter_readings WHERE value < 1e9").await?;

    let out = run_cli(&w.env, &["upload", "--batch-size", "250"], "upload-nopart").await?;
    assert!(!out.ok, "the upload must fail: {}", out.stdout);
    assert!(
        out.stderr
            .contains("add a partition of meter_readings covering 2026-02"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("still local"), "{}", out.stderr);
    // Nothing quarantined: the February rows and the batch holding them are
    // still in the backlog; the January batches before went through.
    assert_eq!(count(&lc, "meter_readings_quarantine").await?, 0);
    assert_eq!(count(&rc, "meter_readings").await?, 1_000);
    assert_eq!(count(&lc, "meter_readings").await?, 503);
    let status: String = lc
        .query_one(
            "SELECT status FROM sync_runs WHERE kind = 'upload' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .try_get(0)?;
    assert_eq!(status, "failed");

    // The operator adds the partition: the rows upload, and only the rows
    // the CHECK refuses are quarantined.
    rc.batch_execute(
        "CREATE TABLE meter_readings_2026_02 PARTITION OF meter_readings
            FOR VALUES FROM ('2026-02-01 00:00+00') TO ('2026-03-01 00:00+00')",
    )
    .await?;
    let r = cli_json(&w.env, &["upload", "--batch-size", "250"], "upload-part").await?;
    assert_eq!(r["uploaded"], 500, "{r}");
    assert_eq!(r["quarantined"], 3, "{r}");
    let errors: Vec<&str> = r["quarantined_rows"]
        .as_array()
        .context("quarantined_rows")?
        .iter()
        .filter_map(|q| q["error"].as_str())
        .collect();
    assert_eq!(errors.len(), 3);
    assert!(
        errors.iter().all(|e| e.contains("sane_value")),
        "{errors:?}"
    );
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(count(&lc, "meter_readings_quarantine").await?, 3);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, good);

    // A role that may not insert: a table-shape error too, nothing moved.
    rc.batch_execute(&format!(
        "CREATE ROLE reader LOGIN PASSWORD '{TEST_PASSWORD}'; GRANT SELECT ON meter_readings TO reader"
    ))
    .await?;
    seed_mixed(&lc, 100, 2 * FEBRUARY, 0.0).await?;
    let mut env = w.env.clone();
    env.insert("POSTGRES_CLIENT_USER".into(), "reader".into());
    let out = run_cli(&env, &["upload"], "upload-denied").await?;
    assert!(!out.ok);
    assert!(out.stderr.contains("GRANT INSERT"), "{}", out.stderr);
    assert!(!out.stderr.contains(TEST_PASSWORD));
    assert_eq!(count(&lc, "meter_readings").await?, 100);
    assert_eq!(count(&lc, "meter_readings_quarantine").await?, 3);
    Ok(())
}

#[tokio::test]
async fn a_same_key_different_value_row_is_a_kept_conflict_not_a_silent_drop() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_mixed(&lc, 1_000, 0, 0.0).await?;
    // The remote already holds 15 of the keys, some with another value.
    rc.batch_execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT g % 50 + 1, CASE WHEN g % 3 = 0 THEN 'power_kw' ELSE 'energy_kwh' END,
                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                CASE WHEN g > 500 THEN g / 4.0 + 1000 ELSE g / 4.0 END,
                CASE WHEN g % 7 = 0 THEN NULL ELSE 'kWh' END
         FROM generate_series(1, 1000) g WHERE g % 100 = 0 OR g IN (101, 202, 303, 404, 505)",
    )
    .await?;
    // That is 9 same-value keys (g = 100..500 step 100, 101, 202, 303, 404)
    // and 6 different-value keys (g = 600..1000 step 100, and 505).
    let r = cli_json(
        &w.env,
        &["upload", "--batch-size", "300"],
        "upload-conflicts",
    )
    .await?;
    assert_eq!(r["conflicts"], 6, "{r}");
    assert_eq!(r["already_present"], 9, "{r}");
    assert_eq!(r["uploaded"], 985, "{r}");
    let rows = r["conflict_rows"].as_array().context("conflict_rows")?;
    assert_eq!(rows.len(), 6);
    for c in rows {
        let (l, rv) = (
            c["local_value"].as_f64().context("local")?,
            c["remote_value"].as_f64().context("remote")?,
        );
        assert_eq!(rv, l + 1000.0, "{c}");
    }
    // Kept locally with both values, gone from the backlog, remote untouched.
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    let kept: i64 = lc
        .query_one(
            "SELECT count(*) FROM meter_readings_conflicts WHERE remote_value = local_value + 1000",
            &[],
        )
        .await?
        .try_get(0)?;
    assert_eq!(kept, 6);
    assert_eq!(
        count(
            &rc,
            "meter_readings WHERE value > 1000 AND recorded_at < '2026-01-02'"
        )
        .await?,
        6
    );

    // Over MCP: list them, then requeue two whose remote row the DBA
    // removed (they upload), and one still in conflict (it comes back).
    let mcp = Mcp::start(&w.env, &[], "mcp-conflicts").await?;
    let page = mcp
        .call_ok("list_quarantine", json!({"conflicts": true, "limit": 4}))
        .await?;
    assert_eq!(page["shelf"], "conflicts", "{page}");
    assert_eq!(page["total"], 6);
    assert_eq!(page["remaining"], 2);
    let first: Vec<i64> = page["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(first.len(), 4);
    let cursor = page["next_cursor"].as_str().context("cursor")?.to_string();
    let rest = mcp
        .call_ok(
            "list_quarantine",
            json!({"conflicts": true, "cursor": cursor}),
        )
        .await?;
    assert_eq!(rest["rows"].as_array().map(Vec::len), Some(2), "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);

    let (a, b, c) = (first[0], first[1], first[2]);
    // The DBA removes the remote rows of the first two conflicts.
    for id in [a, b] {
        let k = lc
            .query_one(
                "SELECT meter_id, point, recorded_at FROM meter_readings_conflicts WHERE id = $1",
                &[&id],
            )
            .await?;
        let (m, p, t): (i64, String, chrono::DateTime<chrono::Utc>) =
            (k.try_get(0)?, k.try_get(1)?, k.try_get(2)?);
        let n = rc
            .execute(
                "DELETE FROM meter_readings WHERE meter_id = $1 AND point = $2 AND recorded_at = $3",
                &[&m, &p, &t],
            )
            .await?;
        assert_eq!(n, 1);
    }
    let r = mcp
        .call_ok(
            "requeue_readings",
            json!({"ids": [a, b, c], "conflicts": true}),
        )
        .await?;
    assert_eq!(r["requeued"], 3, "{r}");
    assert_eq!(r["remaining"], 3);
    mcp.close().await?;
    let r = cli_json(&w.env, &["upload"], "upload-requeued-conflicts").await?;
    assert_eq!(r["uploaded"], 2, "{r}");
    assert_eq!(r["conflicts"], 1, "{r}");
    assert_eq!(count(&lc, "meter_readings_conflicts").await?, 4);

    // The CLI twin discards the rest: the remote's value stands.
    let r = cli_json(
        &w.env,
        &["quarantine", "--conflicts", "--discard", "--all"],
        "discard",
    )
    .await?;
    assert_eq!(r["discarded"], 4, "{r}");
    assert_eq!(count(&lc, "meter_readings_conflicts").await?, 0);
    // Nothing doubled remotely: every key once; the two requeued conflicts
    // now hold the local value.
    assert_eq!(count(&rc, "meter_readings").await?, 1_000);
    assert_eq!(
        count(
            &rc,
            "meter_readings WHERE value > 1000 AND recorded_at < '2026-01-02'"
        )
        .await?,
        4
    );
    Ok(())
}

#[tokio::test]
async fn quarantined_rows_requeue_through_mcp_and_the_cli_and_upload_exactly_once() -> Result<()> {
    let w = World::start().await?;
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    rc.batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT small CHECK (value < 1000)")
        .await?;
    seed_mixed(&lc, 500, 0, 0.0).await?;
    seed_mixed(&lc, 20, 10_000, 5_000.0).await?;
    let all = fingerprint(&lc, "meter_readings").await?;
    let r = cli_json(&w.env, &["upload", "--batch-size", "100"], "upload-q").await?;
    assert_eq!(r["uploaded"], 500, "{r}");
    assert_eq!(r["quarantined"], 20);

    // Read-only mode serves the listing, not the requeue.
    let ro = Mcp::start(&w.env, &["--read-only"], "mcp-q-ro").await?;
    let names: Vec<String> = ro
        .client
        .list_all_tools()
        .await?
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.iter().any(|n| n == "list_quarantine"), "{names:?}");
    assert!(!names.iter().any(|n| n == "requeue_readings"), "{names:?}");
    let page = ro.call_ok("list_quarantine", json!({})).await?;
    assert_eq!(page["total"], 20, "{page}");
    let r = ro.call("requeue_readings", json!({"all": true})).await?;
    assert_eq!(r.is_error, Some(true));
    ro.close().await?;

    let mcp = Mcp::start(&w.env, &[], "mcp-q").await?;
    let tools = mcp.client.list_all_tools().await?;
    for name in ["list_quarantine", "requeue_readings"] {
        let t = tools
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{name} listed"))?;
        assert!(t.output_schema.is_some(), "{name}");
        assert!(t.description.as_deref().unwrap_or("").len() > 80, "{name}");
    }
    let page = mcp.call_ok("list_quarantine", json!({"limit": 10})).await?;
    assert_eq!(page["total"], 20);
    let rows = page["rows"].as_array().context("rows")?;
    assert_eq!(rows.len(), 10);
    assert!(rows
        .iter()
        .all(|r| r["error"].as_str().unwrap_or("").contains("small")));
    let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();

    // Bad arguments are named.
    for (tool, args, name) in [
        ("requeue_readings", json!({}), "ids"),
        ("requeue_readings", json!({"ids": [1], "all": true}), "ids"),
        (
            "requeue_readings",
            json!({"all": true, "discard": true}),
            "discard",
        ),
        ("requeue_readings", json!({"ids": "x"}), "ids"),
        ("list_quarantine", json!({"limit": 0}), "limit"),
        ("list_quarantine", json!({"cursor": "bogus"}), "cursor"),
    ] {
        let r = mcp.call(tool, args.clone()).await?;
        assert_eq!(r.is_error, Some(true), "{tool} {args}");
        assert!(text_of(&r).contains(name), "{tool} {args}: {}", text_of(&r));
    }
    assert_eq!(count(&lc, "meter_readings_quarantine").await?, 20);

    // The remote constraint is fixed; requeue five (and an unknown id).
    rc.batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT small")
        .await?;
    let r = mcp
        .call_ok(
            "requeue_readings",
            json!({"ids": [ids[0], ids[1], ids[2], ids[3], ids[4], 999_999]}),
        )
        .await?;
    assert_eq!(r["requeued"], 5, "{r}");
    assert_eq!(r["not_found"], json!([999_999]));
    assert_eq!(r["remaining"], 15);
    // Again: nothing moves twice.
    let r = mcp
        .call_ok("requeue_readings", json!({"ids": [ids[0], ids[1]]}))
        .await?;
    assert_eq!(r["requeued"], 0, "{r}");
    assert_eq!(r["not_found"], json!([ids[0], ids[1]]));
    mcp.close().await?;
    assert_eq!(count(&lc, "meter_readings").await?, 5);

    // The CLI twin: two by id, then a row whose key is already waiting in
    // the backlog again (re-collected) is kept, not doubled; then all.
    let r = cli_json(
        &w.env,
        &[
            "quarantine",
            "--requeue",
            &ids[5].to_string(),
            &ids[6].to_string(),
        ],
        "q-cli",
    )
    .await?;
    assert_eq!(r["requeued"], 2, "{r}");
    lc.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT meter_id, point, recorded_at, value, unit FROM meter_readings_quarantine
         WHERE id = $1",
        &[&ids[7]],
    )
    .await?;
    let r = cli_json(&w.env, &["quarantine", "--all"], "q-cli-all").await?;
    assert_eq!(r["requeued"], 12, "{r}");
    assert_eq!(r["kept"], json!([ids[7]]));
    assert_eq!(r["remaining"], 1);
    let listed = cli_json(&w.env, &["quarantine"], "q-cli-list").await?;
    assert_eq!(listed["total"], 1, "{listed}");

    let r = cli_json(&w.env, &["upload"], "upload-requeued").await?;
    assert_eq!(r["uploaded"], 20, "{r}");
    assert_eq!(r["already_present"], 0);
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    // Exactly once: the remote holds every reading once, as seeded.
    assert_eq!(fingerprint(&rc, "meter_readings").await?, all);
    Ok(())
}

#[tokio::test]
async fn a_frozen_link_fails_the_batch_within_its_deadline_and_loses_nothing() -> Result<()> {
    const N: i64 = 100_000;
    let w = World::start().await?;
    let proxy = proxy::Proxy::start(w.remote.port).await?;
    let env = w.env_with_remote_at(proxy.port);
    let lc = w.local.client().await?;
    seed_mixed(&lc, N, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;

    let wd = workdir();
    let mut child = metersync_cmd(&env, wd.path())
        .args(["upload", "--batch-size", "500"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_until(
        "the first batches to upload",
        Duration::from_secs(60),
        || async { Ok(count(&lc, "meter_readings").await? < N) },
    )
    .await?;
    proxy.set_frozen(true);
    let frozen_at = Instant::now();
    let at_fault = count(&lc, "meter_readings").await?;
    assert!(
        0 < at_fault && at_fault < N,
        "the freeze must hit mid-upload: {at_fault}"
    );

    // The deadline of a 500-row batch is 10.5 s (+2 s on the client), then
    // one re-send (MAX_CONNECTION_RETRIES=1) after 2 s, whose connection
    // times out: well under a minute, instead of hanging.
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait()).await;
    let elapsed = frozen_at.elapsed();
    let status = status.context("the upload hung on the frozen link")??;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut e, &mut stderr).await?;
    }
    std::io::Write::write_all(&mut log_file("upload-frozen")?.0, stderr.as_bytes())?;
    assert!(!status.success(), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(45),
        "took {elapsed:?} after the freeze"
    );
    assert!(stderr.contains("deadline"), "{stderr}");
    assert!(stderr.contains("still local"), "{stderr}");
    assert!(!stderr.contains(TEST_PASSWORD));
    let left = count(&lc, "meter_readings").await?;
    assert!(
        left > 0 && left <= at_fault,
        "{left} left, {at_fault} at the fault"
    );
    eprintln!("frozen link: failed {elapsed:?} after the freeze, {left} rows still local");

    // The link comes back: the rest uploads, nothing lost or doubled.
    proxy.set_frozen(false);
    let r = cli_json(&env, &["upload", "--batch-size", "5000"], "upload-thawed").await?;
    assert_eq!(r["remaining"], 0, "{r}");
    let rc = w.remote.client().await?;
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    Ok(())
}

#[tokio::test]
async fn a_remote_restart_behind_pgbouncer_during_several_uploads_is_ridden_out() -> Result<()> {
    const N: i64 = 150_000;
    let local = PgCluster::start()?;
    let remote = PgCluster::start()?;
    let bouncer = PgBouncer::start(&remote)?;
    let mut env = base_env();
    env.extend(local.env("SYNC"));
    env.extend(bouncer.env("CLIENT"));
    // The default policy: re-sends after 2, 4, 8, 16 s outlast PgBouncer's
    // 15 s server_login_retry window.
    env.insert("MAX_CONNECTION_RETRIES".into(), "5".into());
    let out = run_cli(&env, &["migrate"], "migrate-pgb-restart").await?;
    assert!(out.ok, "{}", out.stderr);
    let lc = local.client().await?;
    seed_mixed(&lc, N, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;

    let mut children = Vec::new();
    for _ in 0..3 {
        let wd = workdir();
        let child = metersync_cmd(&env, wd.path())
            .args(["upload", "--batch-size", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        children.push((child, wd));
    }
    wait_until("the uploads to start", Duration::from_secs(60), || async {
        Ok(count(&lc, "meter_readings").await? < N)
    })
    .await?;
    let at_fault = count(&lc, "meter_readings").await?;
    remote.restart()?;
    assert!(
        0 < at_fault && at_fault < N,
        "the restart must hit mid-upload: {at_fault}"
    );

    let mut uploaded = 0;
    let mut resent = 0;
    for (child, _wd) in children {
        let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .context("an upload hung")??;
        std::io::Write::write_all(&mut log_file("upload-pgb-restart")?.0, &out.stderr)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "an upload failed: {stderr}");
        let r: Value = serde_json::from_slice(&out.stdout)?;
        eprintln!("upload: {r}");
        uploaded +=
            r["uploaded"].as_i64().unwrap_or(0) + r["already_present"].as_i64().unwrap_or(0);
        resent += r["resent_batches"].as_i64().unwrap_or(0);
    }
    assert_eq!(uploaded, N);
    assert!(resent > 0, "no upload had to re-send: the fault missed");
    let rc = remote.client().await?;
    assert_eq!(count(&lc, "meter_readings").await?, 0);
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    Ok(())
}

#[tokio::test]
async fn sigterm_during_a_frozen_link_stops_the_upload_promptly_and_loses_nothing() -> Result<()> {
    const N: i64 = 100_000;
    let w = World::start().await?;
    let proxy = proxy::Proxy::start(w.remote.port).await?;
    let env = w.env_with_remote_at(proxy.port);
    let lc = w.local.client().await?;
    seed_mixed(&lc, N, 0, 0.0).await?;
    let before = fingerprint(&lc, "meter_readings").await?;
    let wd = workdir();
    let child = metersync_cmd(&env, wd.path())
        .args(["upload", "--batch-size", "500"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_until(
        "the first batches to upload",
        Duration::from_secs(60),
        || async { Ok(count(&lc, "meter_readings").await? < N) },
    )
    .await?;
    proxy.set_frozen(true);
    // Let the upload get stuck on the frozen link (a send outlives any
    // healthy batch by far), then stop it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_fault = count(&lc, "meter_readings").await?;
    assert!(0 < at_fault && at_fault < N, "{at_fault}");
    let pid = child.id().context("child pid")? as i32;
    let t0 = Instant::now();
    // SAFETY: kill has no memory preconditions; pid is our live child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("SIGTERM did not stop the upload")??;
    let took = t0.elapsed();
    std::io::Write::write_all(&mut log_file("upload-frozen-sigterm")?.0, &out.stderr)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["cancelled"], true, "{r}");
    let left = count(&lc, "meter_readings").await?;
    assert!(left > 0 && left <= at_fault, "{left}");
    eprintln!("SIGTERM on a frozen link: stopped in {took:?}, {left} rows still local");

    proxy.set_frozen(false);
    let r = cli_json(
        &env,
        &["upload", "--batch-size", "5000"],
        "upload-after-sigterm",
    )
    .await?;
    assert_eq!(r["remaining"], 0, "{r}");
    let rc = w.remote.client().await?;
    assert_eq!(fingerprint(&rc, "meter_readings").await?, before);
    Ok(())
}
