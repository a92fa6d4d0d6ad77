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
    Ok(())
}

#[tokio::test]
async fn describe_device_pages_400_objects_and_its_draft_collects() -> anyhow::Result<()> {
    let (w, _pgb, sim, env) = site(1, 392).await?;
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
        "extra_391_kw",
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
