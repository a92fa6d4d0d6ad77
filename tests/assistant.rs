//! What an assistant needs to run and understand a site (issue 13), through
//! a real MCP client over stdio against the built binary, real clusters (the
//! remote behind PgBouncer in transaction mode) and simulated meters.

mod common;

use std::collections::HashMap;

use common::*;
use metersync::bacnet::sim::{standard_points_json, SimDeviceConfig, Simulator};
use serde_json::{json, Value};

/// Two clusters, `n` simulated meters (ids 1..=n), the remote seeded with one
/// tenant and one meter per device; the env points the remote at PgBouncer.
async fn site(
    n: u32,
    extra_points: u32,
) -> anyhow::Result<(World, PgBouncer, Simulator, HashMap<String, String>)> {
    let w = World::start().await?;
    let pgb = PgBouncer::start(&w.remote)?;
    let sim = Simulator::start(
        (0..n)
            .map(|i| {
                let mut c = SimDeviceConfig::new(
                    6000 + i,
                    "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
                );
                c.extra_points = extra_points;
                c
            })
            .collect(),
    )
    .await?;
    let rc = w.remote.client().await?;
    rc.execute(
        "INSERT INTO tenants (id, site_id, name) VALUES (1, 's1', 'Tenant one')",
        &[],
    )
    .await?;
    for (i, d) in sim.devices().iter().enumerate() {
        rc.execute(
            "INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
             VALUES ($1, 's1', 1, $2, $3, $4, $5)",
            &[
                &(i as i64 + 1),
                &format!("meter {}", i + 1),
                &(d.instance() as i32),
                &d.addr().to_string(),
                &standard_points_json(),
            ],
        )
        .await?;
    }
    let mut env = w.env.clone();
    env.extend(pgb.env("CLIENT"));
    env.insert("SITE_ID".into(), "s1".into());
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    env.insert("BACNET_TIMEOUT_MS".into(), "500".into());
    env.insert("BACNET_RETRIES".into(), "1".into());
    Ok((w, pgb, sim, env))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

/// Every page of a `query_readings` call, following next_cursor.
async fn all_pages(mcp: &Mcp, args: Value, key: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut args = args;
    for _ in 0..1000 {
        let page = mcp.call_ok("query_readings", args.clone()).await?;
        out.extend(page[key].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => args["cursor"] = json!(c),
            None => return Ok(out),
        }
    }
    anyhow::bail!("more than 1000 pages")
}

#[tokio::test]
async fn query_readings_matches_sql_on_uploaded_and_backlog_readings() -> anyhow::Result<()> {
    let (w, _pgb, _sim, env) = site(2, 0).await?;
    let mcp = Mcp::start(&env, &[], "assist-readings").await?;
    let remote = w.remote.client().await?;
    let local = w.local.client().await?;
    mcp.call_ok("download_tenants", json!({})).await?;
    mcp.call_ok("download_meters", json!({})).await?;
    for _ in 0..3 {
        let c = mcp.call_ok("collect_meters", json!({})).await?;
        assert_eq!(c["meters_failed"], 0, "{c}");
    }
    let u = mcp.call_ok("upload_readings", json!({})).await?;
    assert_eq!(u["uploaded"], 48, "{u}");
    // A history for meter 1 on the remote: two days of readings every 20
    // minutes, an energy counter with a reset, and a varying power.
    remote
        .execute(
            "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
             SELECT 1, 'energy_kwh', t,
                    CASE WHEN t < '2026-03-02T05:00:00Z' THEN 100 + 3.5 * i ELSE 2 * i - 40 END, 'kWh'
             FROM generate_series(0, 143) i, LATERAL (SELECT '2026-03-01T00:00:00Z'::timestamptz + i * interval '20 min' AS t) x
             UNION ALL
             SELECT 1, 'power_kw', '2026-03-01T00:00:00Z'::timestamptz + i * interval '20 min',
                    10 + (i % 7) * 1.25, 'kW'
             FROM generate_series(0, 143) i",
            &[],
        )
        .await?;

    // Raw: every row of the range, in order, equal to the remote's rows.
    let args = json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-03", "limit": 50});
    let raw = all_pages(&mcp, args, "readings").await?;
    let want = remote
        .query(
            "SELECT point, value FROM meter_readings WHERE meter_id = 1
             AND recorded_at >= '2026-03-01' AND recorded_at < '2026-03-03'
             ORDER BY point COLLATE \"C\", recorded_at",
            &[],
        )
        .await?;
    assert_eq!(raw.len(), want.len());
    assert_eq!(raw.len(), 288);
    for (got, row) in raw.iter().zip(&want) {
        assert_eq!(got["point"], row.try_get::<_, String>(0)?);
        assert!(close(f(&got["value"]), row.try_get(1)?), "{got}");
        assert_eq!(got["uploaded"], true);
    }

    // Hourly buckets: deltas and avg/min/max equal SQL computed here.
    let args = json!({"meter_ids": [1], "from": "2026-03-01T00:00:00Z",
                      "to": "2026-03-03T00:00:00Z", "bucket": "1h", "limit": 30});
    let buckets = all_pages(&mcp, args, "buckets").await?;
    assert_eq!(buckets.len(), 96, "48 hours x 2 points");
    let deltas = remote
        .query(
            "SELECT date_trunc('hour', recorded_at) AS h,
                    coalesce(sum(step) FILTER (WHERE step >= 0), 0),
                    count(*) FILTER (WHERE step < 0)
             FROM (SELECT recorded_at, value - lag(value) OVER (ORDER BY recorded_at) AS step
                   FROM meter_readings WHERE meter_id = 1 AND point = 'energy_kwh'
                   AND recorded_at < '2026-03-03') s
             WHERE recorded_at >= '2026-03-01' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    let energy: Vec<&Value> = buckets
        .iter()
        .filter(|b| b["point"] == "energy_kwh")
        .collect();
    assert_eq!(energy.len(), deltas.len());
    let mut resets = 0;
    for (b, row) in energy.iter().zip(&deltas) {
        assert_eq!(b["kind"], "counter", "{b}");
        let h: chrono::DateTime<chrono::Utc> = row.try_get(0)?;
        assert_eq!(
            b["bucket_start"],
            h.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        assert!(close(f(&b["delta"]), row.try_get(1)?), "{b} vs {row:?}");
        assert_eq!(b["resets"], row.try_get::<_, i64>(2)?);
        resets += row.try_get::<_, i64>(2)?;
    }
    assert_eq!(resets, 1, "the history has one counter reset");
    let stats = remote
        .query(
            "SELECT avg(value), min(value), max(value), count(*) FROM meter_readings
             WHERE meter_id = 1 AND point = 'power_kw'
             AND recorded_at >= '2026-03-01' AND recorded_at < '2026-03-03'
             GROUP BY date_trunc('hour', recorded_at) ORDER BY date_trunc('hour', recorded_at)",
            &[],
        )
        .await?;
    let power: Vec<&Value> = buckets
        .iter()
        .filter(|b| b["point"] == "power_kw")
        .collect();
    assert_eq!(power.len(), stats.len());
    for (b, row) in power.iter().zip(&stats) {
        assert_eq!(b["kind"], "instantaneous");
        assert!(close(f(&b["avg"]), row.try_get(0)?), "{b}");
        assert!(close(f(&b["min"]), row.try_get(1)?), "{b}");
        assert!(close(f(&b["max"]), row.try_get(2)?), "{b}");
        assert_eq!(b["readings"], row.try_get::<_, i64>(3)?);
        assert!(b.get("delta").is_none(), "{b}");
    }

    // The backlog: collected, not uploaded, marked uploaded: false; the
    // bucketed deltas across both sides add up to the counter's growth.
    let c = mcp.call_ok("collect_meters", json!({})).await?;
    assert_eq!(c["readings_written"], 16, "{c}");
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::hours(1)).to_rfc3339();
    let to = (now + chrono::Duration::hours(1)).to_rfc3339();
    let raw = all_pages(
        &mcp,
        json!({"meter_ids": [1, 2], "points": ["energy_kwh"], "from": from, "to": to}),
        "readings",
    )
    .await?;
    let backlog: Vec<&Value> = raw.iter().filter(|r| r["uploaded"] == false).collect();
    assert_eq!(raw.len(), 8, "{raw:?}");
    assert_eq!(backlog.len(), 2, "one backlog reading per meter");
    let local_n: i64 = local
        .query_one(
            "SELECT count(*) FROM meter_readings WHERE point = 'energy_kwh'",
            &[],
        )
        .await?
        .try_get(0)?;
    assert_eq!(local_n, 2);
    let b = all_pages(
        &mcp,
        json!({"meter_ids": [2], "points": ["energy_kwh"], "from": from, "to": to, "bucket": "1d"}),
        "buckets",
    )
    .await?;
    let total: f64 = b.iter().map(|x| f(&x["delta"])).sum();
    let first = f(&raw
        .iter()
        .find(|r| r["meter_id"] == 2)
        .cloned()
        .unwrap_or_default()["value"]);
    let last = f(&raw
        .iter()
        .rev()
        .find(|r| r["meter_id"] == 2)
        .cloned()
        .unwrap_or_default()["value"]);
    assert!(
        close(total, last - first),
        "deltas {total} vs growth {} ({b:?})",
        last - first
    );
    assert!(b.iter().any(|x| x["uploaded"] == false), "{b:?}");

    // Bounds: the limit and the byte cap hold, paging loses and repeats nothing.
    let page = mcp
        .call_ok(
            "query_readings",
            json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-03", "limit": 1000}),
        )
        .await?;
    let bytes = serde_json::to_vec(&page["readings"])?.len();
    assert!(
        bytes <= metersync::readings::MAX_RESULT_BYTES,
        "{bytes} bytes"
    );
    assert_eq!(
        page["truncated_by"], "bytes",
        "288 rows do not fit: {bytes}"
    );
    let n = page["readings"].as_array().map(Vec::len).unwrap_or(0);
    assert!((100..288).contains(&n), "{n} rows");
    let all = all_pages(
        &mcp,
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-03", "limit": 1000}),
        "readings",
    )
    .await?;
    assert_eq!(all.len(), 288, "byte-capped pages lose and repeat nothing");
    let page = mcp
        .call_ok(
            "query_readings",
            json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-03", "limit": 7}),
        )
        .await?;
    assert_eq!(page["readings"].as_array().map(Vec::len), Some(7));
    assert_eq!(page["truncated_by"], "limit");

    // A hostile corpus: each is a clean tool error, and the server goes on.
    let hostile = [
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2036-03-01"}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "limit": -5}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "limit": 0}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "limit": 1e12}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "cursor": "b1.1.1.l.00"}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "cursor": "' OR 1=1 --"}),
        json!({"meter_ids": [1], "from": "2026-03-01'; DROP TABLE meter_readings; --", "to": "2026-03-02"}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "bucket": "1h; DROP TABLE meters"}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "bucket": "1s"}),
        json!({"meter_ids": [1], "from": "2025-03-01", "to": "2026-03-02", "bucket": "1m"}),
        json!({"meter_ids": [], "from": "2026-03-01", "to": "2026-03-02"}),
        json!({"meter_ids": (0..500).collect::<Vec<i64>>(), "from": "2026-03-01", "to": "2026-03-02"}),
        json!({"meter_ids": "1", "from": "2026-03-01", "to": "2026-03-02"}),
        json!({"meter_ids": [1], "from": "2026-03-02", "to": "2026-03-01"}),
        json!({"meter_ids": [1], "from": "2026-03-01", "to": "2026-03-02", "sql": "SELECT 1"}),
        json!({"meter_ids": [1], "from": "2026-03-01"}),
        json!({"meter_ids": [1], "points": [""], "from": "2026-03-01", "to": "2026-03-02"}),
        json!({"meter_ids": [1], "points": ["x".repeat(100_000)], "from": "2026-03-01", "to": "2026-03-02"}),
    ];
    for args in hostile {
        let r = mcp.call("query_readings", args.clone()).await?;
        let text = text_of(&r);
        assert_eq!(r.is_error, Some(true), "{args} -> {text}");
        assert!(text.starts_with("invalid"), "{args} -> {text}");
        assert!(!text.contains("SELECT"), "no SQL in errors: {text}");
    }
    // A SQL-ish point name is just a name that matches nothing.
    let odd = mcp
        .call_ok(
            "query_readings",
            json!({"meter_ids": [1], "points": ["x' OR '1'='1"], "from": "2026-03-01", "to": "2026-03-03"}),
        )
        .await?;
    assert_eq!(odd["readings"], json!([]));
    let n: i64 = remote
        .query_one("SELECT count(*) FROM meter_readings", &[])
        .await?
        .try_get(0)?;
    assert_eq!(n, 48 + 288);
    mcp.close().await?;

    // Without a remote: the backlog alone, and the result says so.
    let mut local_only = env.clone();
    local_only.retain(|k, _| !k.starts_with("POSTGRES_CLIENT_"));
    let mcp = Mcp::start(&local_only, &["--read-only"], "assist-readings-local").await?;
    let page = mcp
        .call_ok(
            "query_readings",
            json!({"meter_ids": [1, 2], "from": from, "to": to}),
        )
        .await?;
    assert!(
        page["sources"]["remote"]
            .as_str()
            .is_some_and(|s| s.starts_with("not configured")),
        "{page}"
    );
    let rows = page["readings"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 16, "the whole backlog: {page}");
    assert!(rows.iter().all(|r| r["uploaded"] == false));
    mcp.close().await?;

    // The CLI twin answers the same question the same way.
    let out = run_cli(
        &env,
        &[
            "readings",
            "--meter-id",
            "1",
            "--point",
            "energy_kwh",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-03",
            "--bucket",
            "1d",
        ],
        "assist-readings-cli",
    )
    .await?;
    assert!(out.ok, "{}", out.stderr);
    let cli: Value = serde_json::from_str(&out.stdout)?;
    let days = cli["buckets"].as_array().cloned().unwrap_or_default();
    assert_eq!(days.len(), 2, "{cli}");
    let day_sum: f64 = days.iter().map(|d| f(&d["delta"])).sum();
    let hour_sum: f64 = energy.iter().map(|b| f(&b["delta"])).sum();
    assert!(close(day_sum, hour_sum), "{day_sum} vs {hour_sum}");
    let out = run_cli(
        &env,
        &[
            "readings",
            "--meter-id",
            "1",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-03",
            "--limit",
            "0",
        ],
        "assist-readings-cli-bad",
    )
    .await?;
    assert!(
        !out.ok && out.stderr.contains("invalid limit"),
        "{}",
        out.stderr
    );

    // With the remote configured but down: the backlog, within the deadline.
    w.remote.stop()?;
    let mcp = Mcp::start(&env, &["--read-only"], "assist-readings-down").await?;
    let t = std::time::Instant::now();
    let page = mcp
        .call_ok(
            "query_readings",
            json!({"meter_ids": [1, 2], "from": from, "to": to}),
        )
        .await?;
    let waited = t.elapsed();
    let why = page["sources"]["remote"].as_str().unwrap_or("ok");
    assert!(
        why != "ok" && why.contains("only the local backlog"),
        "{page}"
    );
    assert_eq!(
        page["readings"].as_array().map(Vec::len),
        Some(16),
        "{page}"
    );
    assert!(
        waited.as_millis() < u128::from(metersync::readings::REMOTE_DEADLINE_MS) + 10_000,
        "answered in {waited:?}"
    );
    eprintln!("remote down: answered in {waited:?}: {why}");
    mcp.close().await?;
    Ok(())
}

#[tokio::test]
// The simulated device has 16 objects of its own (8 meter points and one
// of each readable type) besides the 384 extra ones: 400.
async fn describe_device_pages_400_objects_and_its_draft_collects() -> anyhow::Result<()> {
    let (w, _pgb, sim, env) = site(1, 384).await?;
    let dev = sim.devices()[0].clone();
    let mcp = Mcp::start(&env, &["--read-only"], "assist-describe").await?;
    let mut objects = Vec::new();
    let mut draft = Vec::new();
    let mut args = json!({"address": dev.addr().to_string(), "limit": 200});
    let mut pages = 0;
    loop {
        let page = mcp.call_ok("describe_device", args.clone()).await?;
        pages += 1;
        assert_eq!(page["device_instance"], dev.instance(), "{page}");
        assert_eq!(page["object_count"], 401, "400 objects and the device");
        objects.extend(page["objects"].as_array().cloned().unwrap_or_default());
        draft.extend(page["points_draft"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => args["cursor"] = json!(c),
            None => break,
        }
        assert!(pages < 10, "runaway paging");
    }
    assert_eq!(pages, 3);
    assert_eq!(objects.len(), 401);
    assert_eq!(draft.len(), 400);
    let power = objects
        .iter()
        .find(|o| o["object"] == "analog-input:2")
        .cloned()
        .unwrap_or_default();
    assert_eq!(power["name"], "power");
    assert_eq!(power["units"], "kW");
    assert!((f(&power["present_value"]) - 12.5).abs() < 1.0, "{power}");
    assert_eq!(power["status_flags"]["fault"], false, "{power}");
    let names: Vec<&str> = draft.iter().filter_map(|p| p["name"].as_str()).collect();
    for want in [
        "energy_kwh",
        "power_kw",
        "voltage_v",
        "energy_pulses_kwh",
        "extra_383_kw",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let unique: std::collections::HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "names are unique");
    // A bad cursor and a silent address are clean errors.
    let r = mcp
        .call(
            "describe_device",
            json!({"address": dev.addr().to_string(), "cursor": "o1.x"}),
        )
        .await?;
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("cursor"), "{}", text_of(&r));
    let addr = dev.addr().to_string();
    for bad in [
        json!({"address": addr, "limit": 0}),
        json!({"address": addr, "limit": 100_000}),
        json!({"address": addr, "limit": -1}),
        json!({"address": "not an address"}),
        json!({"address": addr, "device_instance": 4_194_304u32}),
        json!({"address": addr, "cursor": format!("o1.{}.0", dev.instance())}),
        json!({"address": addr, "cursor": "o1.77.5", "device_instance": dev.instance()}),
        json!({"address": addr, "objects": "all"}),
        json!({}),
    ] {
        let r = mcp.call("describe_device", bad.clone()).await?;
        assert_eq!(r.is_error, Some(true), "{bad}: {}", text_of(&r));
        assert!(text_of(&r).starts_with("invalid"), "{bad}: {}", text_of(&r));
    }
    // A small device's list is read whole: one page, every object.
    let small = Simulator::start(vec![SimDeviceConfig::new(
        7777,
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
    )])
    .await?;
    let small_dev = small.devices()[0].clone();
    let before = small_dev.requests();
    let page = mcp
        .call_ok(
            "describe_device",
            json!({"address": small_dev.addr().to_string(), "device_instance": 7777}),
        )
        .await?;
    // 16 point objects (one of each readable type among them) and the device.
    assert_eq!(page["object_count"], 17, "{page}");
    assert_eq!(page["objects"].as_array().map(Vec::len), Some(17));
    assert_eq!(page["points_draft"].as_array().map(Vec::len), Some(16));
    assert_eq!(page["next_cursor"], Value::Null);
    let requests = small_dev.requests() - before;
    assert!(
        requests <= 4,
        "length, whole list, one or two RPMs: {requests} requests"
    );

    mcp.close().await?;

    // The CLI twin prints the same page.
    let out = run_cli(
        &env,
        &["describe", &dev.addr().to_string(), "--limit", "5"],
        "assist-describe-cli",
    )
    .await?;
    assert!(out.ok, "{}", out.stderr);
    let cli: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(cli["objects"].as_array().map(Vec::len), Some(5));
    assert_eq!(cli["object_count"], 401);

    // The draft, as is, is a meter definition that downloads and collects.
    let remote = w.remote.client().await?;
    remote
        .execute(
            "UPDATE meters SET points = $1, updated_at = now() WHERE id = 1",
            &[&Value::Array(draft.clone())],
        )
        .await?;
    let mcp = Mcp::start(&env, &[], "assist-describe-collect").await?;
    mcp.call_ok("download_tenants", json!({})).await?;
    let d = mcp.call_ok("download_meters", json!({})).await?;
    assert_eq!(d["inserted"], 1, "{d}");
    let c = mcp.call_ok("collect_meters", json!({})).await?;
    assert_eq!(c["meters_failed"], 0, "{c}");
    assert_eq!(c["readings_written"], 400, "{c}");
    mcp.close().await?;
    Ok(())
}

/// The structured content of a call, and its size in bytes.
async fn page_of(mcp: &Mcp, tool: &str, args: Value) -> anyhow::Result<(Value, usize)> {
    let v = mcp.call_ok(tool, args).await?;
    let n = serde_json::to_vec(&v)?.len();
    Ok((v, n))
}

#[tokio::test]
async fn list_meters_filters_on_5000_meters_keep_every_page_under_40_kb() -> anyhow::Result<()> {
    const KB40: usize = 40 * 1024;
    let w = World::start().await?;
    let local = w.local.client().await?;
    // 5,000 meters of 10 tenants with long names and 8 points each; every
    // 7th failing (1 to 5 failures in a row), every 3rd never collected.
    local
        .execute(
            "INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
             SELECT i, 's1', 1 + i % 10, 'Building ' || (i % 37) || ' floor ' || (i % 9) || ' meter ' || i,
                    100000 + i, '10.0.' || (i / 250) || '.' || (i % 250) || ':47808', $1
             FROM generate_series(1, 5000) i",
            &[&standard_points_json()],
        )
        .await?;
    local
        .execute(
            "INSERT INTO meter_health (meter_id, last_success_at, last_error, last_error_at, consecutive_failures)
             SELECT i, now() - interval '1 hour',
                    CASE WHEN i % 7 = 0 THEN 'no reply from 10.0.0.1:47808 after 3 tries of 3000 ms: check the meter''s power, network and address' END,
                    CASE WHEN i % 7 = 0 THEN now() END,
                    CASE WHEN i % 7 = 0 THEN 1 + i % 5 ELSE 0 END
             FROM generate_series(1, 5000) i WHERE i % 3 <> 0",
            &[],
        )
        .await?;
    let count = |sql: &'static str| {
        let local = &local;
        async move { anyhow::Ok(local.query_one(sql, &[]).await?.try_get::<_, i64>(0)?) }
    };
    let mcp = Mcp::start(&w.env, &["--read-only"], "assist-filters").await?;

    // Every page of the whole list, full and compact, at every limit.
    let mut biggest = 0;
    for args in [
        json!({}),
        json!({"limit": 500}),
        json!({"limit": 500, "compact": true}),
    ] {
        let mut ids = Vec::new();
        let mut a = args.clone();
        loop {
            let (page, n) = page_of(&mcp, "list_meters", a.clone()).await?;
            assert!(n < KB40, "{args}: a page of {n} bytes");
            biggest = biggest.max(n);
            for m in page["meters"].as_array().cloned().unwrap_or_default() {
                ids.push(m["id"].as_i64().unwrap_or(-1));
                assert_eq!(m.get("points").is_none(), args["compact"] == true, "{m}");
                assert_eq!(m["point_count"], 8);
            }
            match page["next_cursor"].as_str() {
                Some(c) => a["cursor"] = json!(c),
                None => break,
            }
        }
        assert_eq!(ids, (1..=5000).collect::<Vec<i64>>(), "{args}");
    }
    eprintln!("largest list_meters page: {biggest} bytes");
    let (compact, _) = page_of(&mcp, "list_meters", json!({"limit": 500, "compact": true})).await?;
    let (full, _) = page_of(&mcp, "list_meters", json!({"limit": 500})).await?;
    let per_page = |p: &Value| p["meters"].as_array().map_or(0, Vec::len);
    assert!(
        per_page(&compact) > 2 * per_page(&full),
        "compact holds more: {} vs {}",
        per_page(&compact),
        per_page(&full)
    );

    // Filters, each against SQL.
    let all = |args: Value| {
        let mcp = &mcp;
        async move {
            let mut out = Vec::new();
            let mut a = args;
            a["compact"] = json!(true);
            a["limit"] = json!(500);
            loop {
                let (page, n) = page_of(mcp, "list_meters", a.clone()).await?;
                assert!(n < KB40);
                out.extend(page["meters"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => a["cursor"] = json!(c),
                    None => return anyhow::Ok(out),
                }
            }
        }
    };
    let t3 = all(json!({"tenant_id": 3})).await?;
    assert_eq!(
        t3.len() as i64,
        count("SELECT count(*) FROM meters WHERE tenant_id = 3").await?
    );
    assert!(t3.iter().all(|m| m["tenant_id"] == 3));
    let named = all(json!({"name_contains": "FLOOR 4 METER 1"})).await?;
    assert_eq!(
        named.len() as i64,
        count("SELECT count(*) FROM meters WHERE name ILIKE '%floor 4 meter 1%'").await?
    );
    assert!(!named.is_empty());
    let pct = all(json!({"name_contains": "%"})).await?;
    assert!(pct.is_empty(), "% is a character, not a wildcard");
    let some = all(json!({"ids": [4999, 1, 77, 123456]})).await?;
    let ids: Vec<i64> = some.iter().filter_map(|m| m["id"].as_i64()).collect();
    assert_eq!(ids, [1, 77, 4999]);
    let failing = all(json!({"health": "failing"})).await?;
    assert_eq!(
        failing.len() as i64,
        count("SELECT count(*) FROM meter_health WHERE consecutive_failures > 0").await?
    );
    let ok = all(json!({"health": "ok"})).await?;
    assert_eq!(
        ok.len() as i64,
        count("SELECT count(*) FROM meter_health WHERE consecutive_failures = 0").await?
    );
    let never = all(json!({"health": "never", "tenant_id": 2})).await?;
    assert_eq!(
        never.len() as i64,
        count("SELECT count(*) FROM meters m WHERE tenant_id = 2 AND NOT EXISTS (SELECT 1 FROM meter_health h WHERE h.meter_id = m.id)").await?
    );
    for bad in [
        json!({"health": "sick"}),
        json!({"limit": 0}),
        json!({"limit": -1}),
        json!({"cursor": "after:x"}),
        json!({"ids": (0..2000).collect::<Vec<i64>>()}),
        json!({"tenant": 1}),
    ] {
        let r = mcp.call("list_meters", bad.clone()).await?;
        assert_eq!(r.is_error, Some(true), "{bad}");
    }

    // sync_status pages the failing meters, worst first, none twice.
    let mut seen = Vec::new();
    let mut a = json!({"failing_limit": 100});
    loop {
        let (s, n) = page_of(&mcp, "sync_status", a.clone()).await?;
        assert!(n < KB40, "{n}");
        let page = s["health"]["failing_meters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        seen.extend(page.iter().map(|f| {
            (
                -f["consecutive_failures"].as_i64().unwrap_or(0),
                f["meter_id"].as_i64().unwrap_or(0),
            )
        }));
        match s["health"]["failing_next_cursor"].as_str() {
            Some(c) => a["failing_cursor"] = json!(c),
            None => {
                assert_eq!(s["health"]["failing_meters_omitted"], 0);
                break;
            }
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "worst first, none twice");
    assert_eq!(seen.len() as i64, failing.len() as i64);
    let first = mcp.call_ok("sync_status", json!({})).await?;
    assert_eq!(
        first["health"]["failing_meters"].as_array().map(Vec::len),
        Some(20)
    );
    assert_eq!(
        first["health"]["failing_meters_omitted"],
        failing.len() as i64 - 20
    );
    let r = mcp
        .call("sync_status", json!({"failing_cursor": "zzz"}))
        .await?;
    assert_eq!(r.is_error, Some(true));
    mcp.close().await?;
    Ok(())
}

/// An MCP client that records the log notifications it receives.
#[derive(Clone, Default)]
struct LogRecorder {
    #[allow(deprecated)]
    logs: std::sync::Arc<std::sync::Mutex<Vec<rmcp::model::LoggingMessageNotificationParam>>>,
}

#[allow(deprecated)]
impl rmcp::ClientHandler for LogRecorder {
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        if let Ok(mut g) = self.logs.lock() {
            g.push(params);
        }
    }
}

#[tokio::test]
#[allow(deprecated)]
async fn descriptions_prompts_and_log_notifications_tell_the_truth() -> anyhow::Result<()> {
    use rmcp::model::{GetPromptRequestParams, LoggingLevel, SetLevelRequestParams};
    use rmcp::ServiceExt;
    let w = World::start().await?;
    let mut env = w.env.clone();
    env.insert("SITE_ID".into(), "site-42".into());
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    env.insert("BACNET_TIMEOUT_MS".into(), "700".into());
    env.insert("BACNET_RETRIES".into(), "2".into());
    let wd = workdir();
    let cmd = metersync_cmd(&env, wd.path());
    let (log, _) = log_file("assist-truth")?;
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::from(log))
        .spawn()?;
    let rec = LogRecorder::default();
    let client = rec.clone().serve(transport).await?;

    // Descriptions and schemas: real numbers, no unresolved doc links, no garble.
    let tools = client.list_all_tools().await?;
    let text_of_tool = |name: &str| {
        tools
            .iter()
            .find(|t| t.name == name)
            .map(|t| serde_json::to_string(t).unwrap_or_default())
            .unwrap_or_default()
    };
    for t in &tools {
        let all = serde_json::to_string(t)?;
        assert!(
            !all.contains("[`"),
            "{}: an unresolved doc link: {all}",
            t.name
        );
        assert!(!all.contains("did not (timeout"), "{}: garbled", t.name);
    }
    let collect = text_of_tool("collect_meters");
    assert!(
        collect.contains("700 ms x 3 tries = 2100 ms"),
        "a dead meter's real cost: {collect}"
    );
    assert!(collect.contains("could not be read"), "{collect}");
    assert!(text_of_tool("download_meters").contains("at most 50"));
    assert!(text_of_tool("collect_meters").contains("at most 50"));
    assert!(text_of_tool("discover_devices").contains("at most 100"));
    assert!(text_of_tool("describe_device").contains("700 ms x 3 tries"));
    assert!(text_of_tool("read_meter").contains("700 ms x 3 tries = 2100 ms"));
    assert!(text_of_tool("sync_status").contains("at most 500"));
    assert!(text_of_tool("query_readings")
        .contains(&format!("{} bytes", metersync::readings::MAX_RESULT_BYTES)));

    // Prompts: the two jobs, naming only tools that exist.
    let prompts = client.list_all_prompts().await?;
    let mut names: Vec<String> = prompts.iter().map(|p| p.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["diagnose_site", "onboard_meter"]);
    let mut args = serde_json::Map::new();
    args.insert("address".into(), json!("127.0.0.9:47808"));
    let onboard = client
        .get_prompt(GetPromptRequestParams::new("onboard_meter").with_arguments(args))
        .await?;
    let diagnose = client
        .get_prompt(GetPromptRequestParams::new("diagnose_site"))
        .await?;
    let body = |r: &rmcp::model::GetPromptResult| {
        r.messages
            .iter()
            .filter_map(|m| m.content.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (onboard, diagnose) = (body(&onboard), body(&diagnose));
    assert!(
        onboard.contains("127.0.0.9:47808") && onboard.contains("site-42"),
        "{onboard}"
    );
    let order = |text: &str, steps: &[&str]| {
        let pos: Vec<usize> = steps
            .iter()
            .map(|s| text.find(s).unwrap_or(usize::MAX))
            .collect();
        assert!(
            pos.windows(2).all(|w| w[0] < w[1] && w[1] != usize::MAX),
            "{steps:?} in order: {text}"
        );
    };
    order(
        &onboard,
        &[
            "discover_devices",
            "describe_device",
            "points_draft",
            "meters table",
            "download_meters",
        ],
    );
    order(
        &diagnose,
        &[
            "connection_status",
            "sync_status",
            "list_meters",
            "read_meter",
            "query_readings",
        ],
    );
    let tool_names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    for text in [&onboard, &diagnose] {
        // Every call written as `tool {arguments}` names a real tool.
        let calls: Vec<&str> = text
            .split(" {")
            .filter_map(|before| before.rsplit(|c: char| c.is_whitespace()).next())
            .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        assert!(calls.len() >= 4, "{calls:?}");
        for c in calls {
            assert!(
                tool_names.iter().any(|t| t == c),
                "prompt calls a tool that does not exist: {c}"
            );
        }
    }
    assert!(
        client
            .get_prompt(GetPromptRequestParams::new("onboard_meter"))
            .await
            .is_err(),
        "address is required"
    );

    // Log notifications: after setLevel debug, a DEBUG line arrives.
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await?;
    let mut p = rmcp::model::CallToolRequestParams::new("download_meters");
    p = p.with_arguments(
        json!({"dry_run": true})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    client.call_tool(p).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = rec
            .logs
            .lock()
            .map(|g| {
                g.iter().any(|m| {
                    m.level == LoggingLevel::Debug
                        && m.logger
                            .as_deref()
                            .is_some_and(|l| l.starts_with("metersync"))
                })
            })
            .unwrap_or(false);
        if got {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no DEBUG notification after setLevel debug"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let all = rec.logs.lock().map(|g| g.clone()).unwrap_or_default();
    let text = serde_json::to_string(&all)?;
    assert!(
        !text.contains(TEST_PASSWORD),
        "no password in log notifications"
    );
    let _ = client.cancel().await;
    Ok(())
}

/// A client that declares the MCP tasks extension.
#[derive(Clone, Default)]
struct TaskClient;

impl rmcp::ClientHandler for TaskClient {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::new(
            rmcp::model::ClientCapabilities::builder()
                .enable_tasks()
                .build(),
            rmcp::model::Implementation::new("assistant-test", "0"),
        )
    }
}

/// Polls `tasks/get` until `done` accepts the state (60 s at most).
async fn poll_task(
    client: &rmcp::service::RunningService<rmcp::RoleClient, TaskClient>,
    id: &str,
    done: impl Fn(&rmcp::model::Task) -> bool,
) -> anyhow::Result<rmcp::model::GetTaskResult> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let t = client.get_task(rmcp::model::GetTaskParams::new(id)).await?;
        if done(&t.task.task) {
            return Ok(t);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "task {id} never reached the state: {:?}",
            t.task.task
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_task_upload_returns_at_once_reports_progress_cancels_and_keeps_its_result(
) -> anyhow::Result<()> {
    use rmcp::model::{CallToolRequestParams, CallToolResponse, TaskStatus};
    use rmcp::ServiceExt;
    const ROWS: i64 = 200_000;
    let w = World::start().await?;
    let pgb = PgBouncer::start(&w.remote)?;
    let mut env = w.env.clone();
    env.extend(pgb.env("CLIENT"));
    let local = w.local.client().await?;
    let remote = w.remote.client().await?;
    local
        .execute(
            "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
             SELECT 1 + i % 50, 'energy_kwh', '2026-01-01'::timestamptz + (i / 50) * interval '1 min', i, 'kWh'
             FROM generate_series(0, $1::bigint - 1) i",
            &[&ROWS],
        )
        .await?;
    let counts = || async {
        let l: i64 = local
            .query_one("SELECT count(*) FROM meter_readings", &[])
            .await?
            .try_get(0)?;
        let r: i64 = remote
            .query_one("SELECT count(*) FROM meter_readings", &[])
            .await?
            .try_get(0)?;
        anyhow::Ok((l, r))
    };

    let wd = workdir();
    let (log, _) = log_file("assist-tasks")?;
    let (transport, _) =
        rmcp::transport::TokioChildProcess::builder(metersync_cmd(&env, wd.path()))
            .stderr(std::process::Stdio::from(log))
            .spawn()?;
    let client = TaskClient.serve(transport).await?;
    let call = |batch: i64| {
        CallToolRequestParams::new("upload_readings").with_arguments(
            json!({"batch_size": batch})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
    };

    // The call returns a task at once, while the upload is still working.
    let task = match client.call_tool_once(call(500)).await? {
        CallToolResponse::Task(t) => t.task,
        other => anyhow::bail!("expected a task, got {other:?}"),
    };
    assert_eq!(task.status, TaskStatus::Working);
    // Progress shows in the status message; then cancel mid-work.
    let seen = poll_task(&client, &task.task_id, |t| {
        t.status_message
            .as_deref()
            .is_some_and(|m| m.contains('/') && !m.contains("(0/"))
    })
    .await?;
    assert_eq!(seen.task.task.status, TaskStatus::Working, "{seen:?}");
    client
        .cancel_task(rmcp::model::CancelTaskParams::new(task.task_id.clone()))
        .await?;
    let end = poll_task(&client, &task.task_id, |t| t.status != TaskStatus::Working).await?;
    assert_eq!(end.task.task.status, TaskStatus::Cancelled, "{end:?}");
    let (l, r) = counts().await?;
    assert!(
        r > 0 && r < ROWS,
        "cancelled mid-work: {r} of {ROWS} uploaded"
    );
    assert_eq!(l + r, ROWS, "nothing lost, nothing doubled");

    // A client that stops waiting still gets the result: start a task, do
    // not wait on the call, and read the result later by polling.
    let task = match client.call_tool_once(call(10_000)).await? {
        CallToolResponse::Task(t) => t.task,
        other => anyhow::bail!("expected a task, got {other:?}"),
    };
    let done = poll_task(&client, &task.task_id, |t| t.status != TaskStatus::Working).await?;
    assert_eq!(done.task.task.status, TaskStatus::Completed, "{done:?}");
    let rmcp::model::TaskPayload::Completed { result } = &done.task.payload else {
        anyhow::bail!("no result: {done:?}");
    };
    let report = &result["structuredContent"];
    assert_eq!(report["uploaded"], l, "{report}");
    assert_eq!(counts().await?, (0, ROWS));
    // The other long tools run as tasks too.
    for tool in ["run_sync_cycle", "collect_meters"] {
        let t = match client
            .call_tool_once(CallToolRequestParams::new(tool))
            .await?
        {
            CallToolResponse::Task(t) => t.task,
            other => anyhow::bail!("{tool}: expected a task, got {other:?}"),
        };
        let done = poll_task(&client, &t.task_id, |t| t.status != TaskStatus::Working).await?;
        assert_eq!(
            done.task.task.status,
            TaskStatus::Completed,
            "{tool}: {done:?}"
        );
    }
    // Unknown tasks are clean errors.
    assert!(client
        .get_task(rmcp::model::GetTaskParams::new("no-such-task"))
        .await
        .is_err());
    let _ = client.cancel().await;

    // A client without the extension gets the plain result, as before.
    let mcp = Mcp::start(&env, &[], "assist-no-tasks").await?;
    let plain = mcp.call_ok("upload_readings", json!({})).await?;
    assert_eq!(plain["uploaded"], 0, "{plain}");
    mcp.close().await?;
    Ok(())
}
