//! Issue 9, row-level isolation: a corpus of hostile remote tenant and meter
//! rows and hostile stored meter definitions, driven through download ->
//! collect -> upload against real clusters and simulated meters on loopback
//! UDP. Every good row and meter still flows (readings arrive remotely),
//! every bad one is named with its id and reason (in the result, the
//! `sync_runs` journal and `sync_status`), nothing panics, nothing is lost.
//! The MCP surface (`list_meters`, `read_meter`) is driven through a real
//! MCP client over stdio.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::rows::count;
use common::*;
use metersync::bacnet::sim::{SimDeviceConfig, Simulator};
use serde_json::{json, Value};

const SITE: &str = "s1";

/// Runs `metersync ARGS` and returns its JSON report, failing on rc != 0.
async fn cli(env: &HashMap<String, String>, args: &[&str]) -> Result<Value> {
    let out = run_cli(env, args, &format!("isolation-{}", args[0])).await?;
    if !out.ok {
        bail!("{args:?} failed: {}", out.stderr);
    }
    serde_json::from_str(&out.stdout).with_context(|| format!("{args:?} printed {}", out.stdout))
}

/// `n` simulated meters (instances 7000..) on loopback with frozen values,
/// and the environment for metersync on `w`.
async fn devices(w: &World, n: u32) -> Result<(Simulator, HashMap<String, String>)> {
    let sim = Simulator::start(
        (0..n)
            .map(|i| SimDeviceConfig::new(7000 + i, ([127, 0, 0, 1], 0).into()))
            .collect(),
    )
    .await?;
    for d in sim.devices() {
        d.freeze(true);
    }
    let mut env = w.env.clone();
    env.insert("SITE_ID".into(), SITE.into());
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    env.insert("BACNET_TIMEOUT_MS".into(), "500".into());
    env.insert("BACNET_RETRIES".into(), "1".into());
    Ok((sim, env))
}

/// `points` JSON of `(name, object)` pairs.
fn points(list: &[(&str, &str)]) -> String {
    Value::Array(
        list.iter()
            .map(|(n, o)| json!({"name": n, "object": o}))
            .collect(),
    )
    .to_string()
}

/// The skipped ids of a download report, and a check that every reason
/// names its row.
fn skipped(report: &Value, table: &str) -> Vec<i64> {
    let errors = report["errors"].as_array().cloned().unwrap_or_default();
    let mut ids = Vec::new();
    for e in &errors {
        let id = e["id"].as_i64().unwrap_or(-1);
        let why = e["error"].as_str().unwrap_or("");
        assert!(
            why.starts_with(&format!("{table} row {id}: ")),
            "the reason must name the row: {e}"
        );
        assert!(why.len() < 600, "a reason stays short: {} bytes", why.len());
        ids.push(id);
    }
    ids.sort();
    ids
}

fn reason(report: &Value, id: i64) -> String {
    report["errors"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == id))
        .and_then(|e| e["error"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The hostile corpus on a customer-shaped remote (bigint instance, text
/// points, nullable name and address), with good rows among them: the
/// download applies every good row and names every bad one; collect reads
/// every meter download accepted (no "misconfigured" failure: the same
/// definition judged both); upload delivers every reading.
#[tokio::test]
async fn hostile_remote_rows_are_named_and_every_good_row_flows() -> Result<()> {
    let w = World::start().await?;
    let (sim, env) = devices(&w, 6).await?;
    let rc = w.remote.client().await?;
    rc.batch_execute(
        "ALTER TABLE meters ALTER COLUMN device_instance TYPE bigint,
                           ALTER COLUMN points TYPE text USING points::text,
                           ALTER COLUMN name DROP NOT NULL,
                           ALTER COLUMN address DROP NOT NULL;
         ALTER TABLE tenants ALTER COLUMN name DROP NOT NULL;",
    )
    .await?;

    // Tenants: two good (one with quotes and emoji, which a name may have),
    // three bad.
    rc.batch_execute(&format!(
        "INSERT INTO tenants (id, site_id, name, email, active, updated_at) VALUES
           (1, '{SITE}', 'Good tenant', 'a@example.com', true, now()),
           (2, '{SITE}', 'O''Brien \"Bistro\" ⚡🍕', NULL, true, now()),
           (201, '{SITE}', 'infinite', NULL, true, 'infinity'),
           (202, '{SITE}', NULL, NULL, false, now()),
           (203, '{SITE}', 'huge email', repeat('e', 100000), true, now());"
    ))
    .await?;

    // Good meters, one per device, each an edge the definition accepts.
    let dev = sim.devices();
    let good: Vec<(i64, String, String)> = vec![
        (
            1,
            dev[0].addr().to_string(),
            points(&[
                ("energy_kwh", "analog-input:1"),
                ("power_kw", "analog-input:2"),
            ]),
        ),
        (
            2,
            dev[1].addr().to_string(),
            points(&[
                (&"n".repeat(64), "analog-input:3"),
                ("a.b-c_9", "accumulator:1"),
            ]),
        ),
        (
            3,
            dev[2].addr().to_string(),
            json!([{"name": "v", "object": "ANALOG-INPUT:3", "property": 85}]).to_string(),
        ),
        (
            4,
            dev[3].addr().to_string(),
            json!([{"name": "f", "object": "analog-input:5", "property": "present-value"}])
                .to_string(),
        ),
    ];
    for (id, addr, pts) in &good {
        rc.execute(
            "INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
             VALUES ($1, $2, 1, $3, $4, $5, $6)",
            &[
                id,
                &SITE,
                &format!("good {id}"),
                &(7000 + id - 1),
                addr,
                pts,
            ],
        )
        .await?;
    }

    // The hostile corpus: (id, name, instance, address, points, active,
    // updated_at, a word the reason must contain). Instances from 8000, so
    // only the field under test is wrong.
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let ok_points = points(&[("e", "analog-input:1")]);
    let addr = dev[4].addr().to_string();
    let long_name = "x".repeat(10_000);
    type Case<'a> = (
        i64,
        Option<String>,
        i64,
        Option<String>,
        String,
        bool,
        &'a str,
        &'a str,
    );
    let corpus: Vec<Case> = vec![
        (
            101,
            Some("m".into()),
            8101,
            Some(addr.clone()),
            ok_points.clone(),
            true,
            "infinity",
            "infinity",
        ),
        (
            102,
            Some("m".into()),
            3_000_000_000,
            Some(addr.clone()),
            ok_points.clone(),
            true,
            "now",
            "3000000000",
        ),
        (
            103,
            None,
            8103,
            Some(addr.clone()),
            ok_points.clone(),
            false,
            "now",
            "name is NULL",
        ),
        (
            104,
            Some("m".into()),
            8104,
            None,
            ok_points.clone(),
            false,
            "now",
            "address is NULL",
        ),
        (
            105,
            Some("m".into()),
            8105,
            Some(addr.clone()),
            "not json {".into(),
            true,
            "now",
            "not valid JSON",
        ),
        (
            106,
            Some("m".into()),
            8106,
            Some(addr.clone()),
            r#"[{"name":"a\u0000b","object":"analog-input:1"}]"#.into(),
            true,
            "now",
            "character",
        ),
        (
            107,
            Some("m".into()),
            8107,
            Some(addr.clone()),
            nested,
            false,
            "now",
            "recursion",
        ),
        (
            108,
            Some("m".into()),
            8108,
            Some(addr.clone()),
            points(&[(&long_name, "analog-input:1")]),
            true,
            "now",
            "10000 characters",
        ),
        (
            109,
            Some("m".into()),
            8109,
            Some(addr.clone()),
            points(&[("it's \"quoted\"", "analog-input:1")]),
            true,
            "now",
            "character",
        ),
        (
            110,
            Some("m".into()),
            8110,
            Some(addr.clone()),
            points(&[("energy_⚡", "analog-input:1")]),
            true,
            "now",
            "character",
        ),
        (
            111,
            Some("n".repeat(1_000_000)),
            8111,
            Some(addr.clone()),
            ok_points.clone(),
            true,
            "now",
            "name has 1000000 characters",
        ),
        (
            112,
            Some("m".into()),
            8112,
            Some("meter-3.local:47809".into()),
            ok_points.clone(),
            true,
            "now",
            "address",
        ),
        (
            113,
            Some("m".into()),
            8113,
            Some("[::1]:5000".into()),
            ok_points.clone(),
            true,
            "now",
            "IPv6",
        ),
        (
            114,
            Some("m".into()),
            8114,
            Some(addr.clone()),
            json!([{"name": "e", "object": "analog-input:1", "property": "presnt-value"}])
                .to_string(),
            true,
            "now",
            "presnt-value",
        ),
        (
            115,
            Some("m".into()),
            8115,
            Some(addr.clone()),
            "[]".into(),
            true,
            "now",
            "empty",
        ),
        (
            116,
            Some("m".into()),
            8116,
            Some(addr.clone()),
            json!([{"name": "e", "object": "analog-input:1", "unit": "kWh"}]).to_string(),
            true,
            "now",
            "unknown key",
        ),
        (
            117,
            Some("m".into()),
            4_194_303,
            Some(addr.clone()),
            ok_points.clone(),
            true,
            "now",
            "wildcard",
        ),
        (
            118,
            Some("m".into()),
            8118,
            Some(addr.clone()),
            points(&[("e", "analog-output:1")]),
            true,
            "now",
            "not one the collector reads",
        ),
    ];
    for (id, name, instance, address, pts, active, updated, _) in &corpus {
        rc.execute(
            "INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points, active, updated_at)
             VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8::text::timestamptz)",
            &[id, &SITE, name, instance, address, pts, active, updated],
        )
        .await?;
    }

    // Download: both succeed; the good rows apply; each bad row is named.
    let t = cli(&env, &["download-tenants"]).await?;
    assert_eq!(t["inserted"], 2, "{t}");
    assert_eq!(skipped(&t, "tenants"), vec![201, 202, 203], "{t}");
    assert!(reason(&t, 201).contains("infinity"), "{t}");
    assert!(reason(&t, 202).contains("name is NULL"), "{t}");
    assert!(
        reason(&t, 203).contains("email has 100000 characters"),
        "{t}"
    );

    let m = cli(&env, &["download-meters"]).await?;
    assert_eq!(m["inserted"], good.len(), "{m}");
    let mut bad_ids: Vec<i64> = corpus.iter().map(|c| c.0).collect();
    bad_ids.sort();
    assert_eq!(skipped(&m, "meters"), bad_ids, "{m}");
    assert_eq!(m["skipped"], corpus.len());
    for (id, .., word) in &corpus {
        let why = reason(&m, *id);
        assert!(why.contains(word), "meter {id}: {word:?} not in {why:?}");
    }

    let local = w.local.client().await?;
    assert_eq!(
        count(&local, "SELECT count(*) FROM meters").await?,
        good.len() as i64
    );
    assert_eq!(count(&local, "SELECT count(*) FROM tenants").await?, 2);
    let name: String = local
        .query_one("SELECT name FROM tenants WHERE id = 2", &[])
        .await?
        .try_get(0)?;
    assert_eq!(name, "O'Brien \"Bistro\" ⚡🍕");

    // The journal and sync_status name them too.
    let counts: Value = local
        .query_one(
            "SELECT counts FROM sync_runs WHERE kind = 'download_meters' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .try_get(0)?;
    let journal: Vec<i64> = counts["skipped_rows"]
        .as_array()
        .context("skipped_rows in the journal")?
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(journal, bad_ids, "{counts}");
    let mcp = Mcp::start(&env, &[], "isolation-status").await?;
    let status = mcp.call_ok("sync_status", json!({})).await?;
    mcp.close().await?;
    let rows = status["skipped_rows"].as_array().context("skipped_rows")?;
    for (table, id) in bad_ids
        .iter()
        .map(|id| ("meters", *id))
        .chain([201, 202, 203].map(|id| ("tenants", id)))
    {
        assert!(
            rows.iter().any(|r| r["table"] == table
                && r["id"] == id
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&format!("{table} row {id}")))),
            "sync_status misses {table} {id}: {status}"
        );
    }

    // A second run: the same rows skipped, nothing rewritten.
    let again = cli(&env, &["download-meters"]).await?;
    assert_eq!(
        (again["inserted"].as_u64(), again["updated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(skipped(&again, "meters"), bad_ids);

    // Collect: every meter download accepted is read, with every point.
    let c = cli(&env, &["collect"]).await?;
    assert_eq!(c["meters_failed"], 0, "{c}");
    assert_eq!(c["meters_read"], good.len(), "{c}");
    assert_eq!(c["point_errors"], json!([]), "{c}");
    assert_eq!(c["readings_written"], 6, "{c}");

    // Upload: every reading arrives remotely.
    let u = cli(&env, &["upload"]).await?;
    assert_eq!(u["uploaded"], 6, "{u}");
    let remote = w.remote.client().await?;
    assert_eq!(
        count(&remote, "SELECT count(*) FROM meter_readings").await?,
        6
    );
    assert_eq!(
        count(&local, "SELECT count(*) FROM meter_readings").await?,
        0
    );

    // A good meter switched off remotely with a bad edit at the same time:
    // skipped and named, and still switched off locally.
    rc.batch_execute("UPDATE meters SET active = false, address = NULL WHERE id = 4")
        .await?;
    let m = cli(&env, &["download-meters"]).await?;
    assert!(reason(&m, 4).contains("address is NULL"), "{m}");
    assert_eq!(m["deactivated"], 1, "{m}");
    assert_eq!(
        count(&local, "SELECT count(*) FROM meters WHERE active").await?,
        good.len() as i64 - 1
    );
    sim.shutdown().await;
    Ok(())
}

/// Inserts a meter straight into the local table (a hand edit, or a row an
/// older version mirrored without checking it).
async fn local_meter(
    c: &tokio_postgres::Client,
    id: i64,
    instance: i32,
    address: &str,
    points: &str,
    active: bool,
) -> Result<()> {
    c.execute(
        "INSERT INTO meters (id, site_id, name, device_instance, address, points, active)
         VALUES ($1, 's1', $6, $2, $3, $4::text::jsonb, $5)",
        &[
            &id,
            &instance,
            &address,
            &points,
            &active,
            &format!("local {id}"),
        ],
    )
    .await?;
    Ok(())
}

/// Collect: a stored meter whose point name is too long for the readings
/// index (it used to fail the whole run with SQLSTATE 54000, storing
/// nothing for anyone), one nested 200 deep, and one whose readings the
/// database refuses (a constraint) each fail alone; every other meter's
/// readings are stored and uploaded.
#[tokio::test]
async fn one_meters_bad_data_never_stops_the_others() -> Result<()> {
    let w = World::start().await?;
    let (sim, env) = devices(&w, 4).await?;
    let local = w.local.client().await?;
    let dev = sim.devices();
    let good = points(&[
        ("energy_kwh", "analog-input:1"),
        ("power_kw", "analog-input:2"),
    ]);
    local_meter(&local, 1, 7000, &dev[0].addr().to_string(), &good, true).await?;
    local_meter(&local, 2, 7001, &dev[1].addr().to_string(), &good, true).await?;
    let long = points(&[(&"y".repeat(10_000), "analog-input:1")]);
    local_meter(&local, 3, 7002, &dev[2].addr().to_string(), &long, true).await?;
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    local_meter(&local, 4, 7003, &dev[3].addr().to_string(), &nested, true).await?;
    // The database refuses meter 2's readings (a hostile local rule).
    local
        .batch_execute(
            "ALTER TABLE meter_readings ADD CONSTRAINT not_meter_2 CHECK (meter_id <> 2)",
        )
        .await?;

    let c = cli(&env, &["collect"]).await?;
    assert_eq!(c["meters_read"], 1, "{c}");
    assert_eq!(c["meters_failed"], 3, "{c}");
    assert_eq!(c["readings_written"], 2, "{c}");
    let failures = c["failures"].as_array().context("failures")?;
    let why = |id: i64| {
        failures
            .iter()
            .find(|f| f["meter_id"] == id)
            .and_then(|f| f["error"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(why(2).contains("refused meter 2's readings"), "{c}");
    assert!(why(2).contains("not_meter_2"), "{c}");
    assert!(why(3).contains("10000 characters"), "{c}");
    assert!(why(3).len() < 600, "{}", why(3).len());
    assert!(why(4).contains("recursion"), "{c}");
    assert_eq!(
        count(
            &local,
            "SELECT count(*) FROM meter_readings WHERE meter_id = 1"
        )
        .await?,
        2
    );
    // Each failing meter's health says why.
    let health: String = local
        .query_one(
            "SELECT last_error FROM meter_health WHERE meter_id = 2",
            &[],
        )
        .await?
        .try_get(0)?;
    assert!(health.contains("refused"), "{health}");

    // Without the rule, meter 2 is stored again; the two bad definitions
    // still fail alone; everything stored goes up.
    local
        .batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT not_meter_2")
        .await?;
    let c = cli(&env, &["collect"]).await?;
    assert_eq!(
        (c["meters_read"].as_u64(), c["meters_failed"].as_u64()),
        (Some(2), Some(2)),
        "{c}"
    );
    let u = cli(&env, &["upload"]).await?;
    assert_eq!(u["uploaded"], 6, "{u}");
    assert_eq!(
        count(
            &w.remote.client().await?,
            "SELECT count(*) FROM meter_readings"
        )
        .await?,
        6
    );
    sim.shutdown().await;
    Ok(())
}

/// `list_meters {"active_only": false}` and `read_meter` on hostile stored
/// rows answer (they used to panic on `Row::get` and never answer): the
/// list flags each bad definition with the collector's own words, and
/// `read_meter` is a clear tool error naming the meter.
#[tokio::test]
async fn list_and_read_meter_answer_on_hostile_stored_rows() -> Result<()> {
    let w = World::start().await?;
    let (sim, env) = devices(&w, 1).await?;
    let local = w.local.client().await?;
    let addr = sim.devices()[0].addr().to_string();
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    local_meter(
        &local,
        1,
        7000,
        &addr,
        &points(&[("energy_kwh", "analog-input:1")]),
        true,
    )
    .await?;
    local_meter(&local, 50, 7050, &addr, &nested, false).await?;
    local_meter(
        &local,
        51,
        7051,
        &addr,
        &points(&[(&"z".repeat(10_000), "analog-input:1")]),
        true,
    )
    .await?;
    local_meter(
        &local,
        52,
        7052,
        "meter-3.local:47809",
        &points(&[("e", "analog-input:1")]),
        false,
    )
    .await?;

    let mcp = Mcp::start(&env, &[], "isolation-mcp").await?;
    let answer = |tool: &'static str, args: Value| {
        let mcp = &mcp;
        async move {
            tokio::time::timeout(Duration::from_secs(60), mcp.call(tool, args))
                .await
                .with_context(|| format!("{tool} never answered"))?
        }
    };
    let r = answer("list_meters", json!({"active_only": false})).await?;
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    let page = r.structured_content.clone().context("structured")?;
    let meters = page["meters"].as_array().context("meters")?;
    let entry = |id: i64| {
        meters
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(meters.len(), 4, "{page}");
    assert_eq!(entry(1)["config_error"], Value::Null, "{page}");
    assert_eq!(entry(50)["points"], Value::Null);
    assert!(
        entry(50)["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("recursion")),
        "{page}"
    );
    assert!(entry(51)["config_error"]
        .as_str()
        .is_some_and(|e| e.contains("10000 characters")));
    assert!(entry(52)["config_error"]
        .as_str()
        .is_some_and(|e| e.contains("address")));

    for (id, word) in [(50, "recursion"), (51, "10000 characters"), (52, "IPv4")] {
        let r = answer("read_meter", json!({"meter_id": id})).await?;
        assert_eq!(r.is_error, Some(true), "meter {id}: {}", text_of(&r));
        let text = text_of(&r);
        assert!(
            text.contains(&format!("meter {id}")) && text.contains(word),
            "{text}"
        );
    }
    let r = answer("read_meter", json!({"meter_id": 1})).await?;
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    // The server is still alive and answering.
    let s = answer("sync_status", json!({})).await?;
    assert_ne!(s.is_error, Some(true), "{}", text_of(&s));
    mcp.close().await?;
    sim.shutdown().await;
    Ok(())
}

/// Issue 10 (download part): a remote read that cannot finish (the table is
/// locked by another session) fails the download within its deadline
/// (`SET LOCAL statement_timeout`) instead of hanging, and the next run,
/// once the lock is gone, succeeds.
#[tokio::test]
async fn a_stuck_remote_read_fails_the_download_within_its_deadline() -> Result<()> {
    let w = World::start().await?;
    let (sim, env) = devices(&w, 1).await?;
    let rc = w.remote.client().await?;
    rc.execute(
        "INSERT INTO tenants (id, site_id, name) VALUES (1, 's1', 't')",
        &[],
    )
    .await?;
    let mut locker = w.remote.client().await?;
    let tx = locker.transaction().await?;
    tx.batch_execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        .await?;
    let started = std::time::Instant::now();
    let deadline = metersync::download::REMOTE_READ_DEADLINE + metersync::download::CLIENT_GRACE;
    let out = tokio::time::timeout(
        deadline + Duration::from_secs(60),
        run_cli(&env, &["download-tenants"], "isolation-deadline"),
    )
    .await
    .context("download-tenants hung past its deadline")??;
    let took = started.elapsed();
    assert!(!out.ok, "a locked remote cannot be read: {}", out.stdout);
    assert!(
        out.stderr.contains("57014") || out.stderr.contains("no answer within"),
        "{}",
        out.stderr
    );
    assert!(
        took >= metersync::download::REMOTE_READ_DEADLINE,
        "failed for another reason after {took:?}: {}",
        out.stderr
    );
    tx.rollback().await?;
    let t = cli(&env, &["download-tenants"]).await?;
    assert_eq!(t["inserted"], 1, "{t}");
    sim.shutdown().await;
    Ok(())
}

/// Issue 10 (download part): a link that freezes mid-read (no reset, no
/// answer: a hung WAN path, here a proxy that stops forwarding once the
/// download's transaction starts) fails the download by the client-side
/// deadline instead of hanging it.
#[tokio::test]
async fn a_frozen_link_fails_the_download_by_the_client_deadline() -> Result<()> {
    let w = World::start().await?;
    let rc = w.remote.client().await?;
    rc.execute(
        "INSERT INTO tenants (id, site_id, name) VALUES (1, 's1', 't')",
        &[],
    )
    .await?;
    let proxy = proxy::Proxy::start_freezing_on(w.remote.port, b"statement_timeout").await?;
    let env = w.env_with_remote_at(proxy.port);
    let started = std::time::Instant::now();
    let deadline = metersync::download::REMOTE_READ_DEADLINE + metersync::download::CLIENT_GRACE;
    let out = tokio::time::timeout(
        deadline + Duration::from_secs(60),
        run_cli(&env, &["download-tenants"], "isolation-frozen"),
    )
    .await
    .context("download-tenants hung on a frozen link")??;
    let took = started.elapsed();
    assert!(proxy.is_frozen(), "the link froze mid-download");
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("no answer within"), "{}", out.stderr);
    assert!(took >= deadline, "failed early ({took:?}): {}", out.stderr);
    let local = w.local.client().await?;
    assert_eq!(count(&local, "SELECT count(*) FROM tenants").await?, 0);
    Ok(())
}
