//! The product surface end to end: a real rmcp client over stdio against the
//! built binary, real clusters, simulated meters on loopback UDP.

mod common;

use std::collections::HashMap;

use common::rows::count;
use common::*;
use metersync::bacnet::sim::{standard_points_json, SimDeviceConfig, Simulator};
use serde_json::{json, Value};

const ALL_TOOLS: [&str; 14] = [
    "collect_meters",
    "connection_status",
    "describe_device",
    "discover_devices",
    "download_meters",
    "download_tenants",
    "list_meters",
    "list_quarantine",
    "query_readings",
    "read_meter",
    "requeue_readings",
    "run_sync_cycle",
    "sync_status",
    "upload_readings",
];

/// Two clusters, `n` simulated meters, the remote seeded with one tenant and
/// one meter per device (ids 1..=n), and the env for metersync.
async fn site(n: u32) -> anyhow::Result<(World, Simulator, HashMap<String, String>)> {
    let w = World::start().await?;
    let sim = Simulator::start(
        (0..n)
            .map(|i| {
                SimDeviceConfig::new(
                    5000 + i,
                    "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect(),
    )
    .await?;
    for d in sim.devices() {
        d.freeze(true);
    }
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
    env.insert("SITE_ID".into(), "s1".into());
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    env.insert("BACNET_TIMEOUT_MS".into(), "300".into());
    env.insert("BACNET_RETRIES".into(), "1".into());
    Ok((w, sim, env))
}

#[tokio::test]
async fn every_tool_through_a_real_client() -> anyhow::Result<()> {
    let (w, sim, env) = site(3).await?;
    let mcp = Mcp::start(&env, &[], "mcp-e2e").await?;

    // The tool list: exact names, described inputs that reject unknown
    // fields, output schemas, annotations.
    let tools = mcp.client.list_all_tools().await?;
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ALL_TOOLS);
    for t in &tools {
        assert!(
            t.description.as_ref().is_some_and(|d| d.len() > 40),
            "{} needs a description",
            t.name
        );
        assert!(
            t.output_schema.is_some(),
            "{} needs an output schema",
            t.name
        );
        assert!(t.annotations.is_some(), "{} needs annotations", t.name);
        let schema = serde_json::to_value(&t.input_schema)?;
        assert_eq!(
            schema["additionalProperties"], false,
            "{} must reject unknown fields: {schema}",
            t.name
        );
        if let Some(props) = schema["properties"].as_object() {
            for (k, v) in props {
                assert!(
                    v["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{}.{k} needs a description",
                    t.name
                );
            }
        }
    }

    let local = w.local.client().await?;
    let remote = w.remote.client().await?;

    let t = mcp.call_ok("download_tenants", json!({})).await?;
    assert_eq!(t["inserted"], 1, "{t}");
    let m = mcp
        .call_ok("download_meters", json!({"dry_run": false}))
        .await?;
    assert_eq!(m["inserted"], 3, "{m}");
    assert_eq!(
        count(&local, "SELECT count(*) FROM meters WHERE active").await?,
        3
    );

    let page = mcp.call_ok("list_meters", json!({"limit": 2})).await?;
    assert_eq!(page["meters"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["remaining"], 1);
    let next = page["next_cursor"].as_str().unwrap_or_default().to_string();
    let page2 = mcp
        .call_ok("list_meters", json!({"limit": 2, "cursor": next}))
        .await?;
    assert_eq!(page2["meters"][0]["id"], 3);
    assert_eq!(page2["next_cursor"], Value::Null);

    // A live read returns what the simulator serves, and stores nothing.
    let d0 = &sim.devices()[0];
    let energy =
        metersync::bacnet::ObjectId::parse("analog-input:1").map_err(anyhow::Error::msg)?;
    let served = d0.served_value(energy).unwrap_or(f64::NAN);
    let live = mcp.call_ok("read_meter", json!({"meter_id": 1})).await?;
    let e = live["points"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "energy_kwh"))
        .cloned()
        .unwrap_or_default();
    assert!(
        (e["value"].as_f64().unwrap_or(f64::NAN) - served).abs() < 1e-3,
        "{e} vs {served}"
    );
    assert_eq!(e["unit"], "kWh");
    assert_eq!(
        count(&local, "SELECT count(*) FROM meter_readings").await?,
        0
    );

    let c = mcp.call_ok("collect_meters", json!({})).await?;
    assert_eq!(c["meters_read"], 3, "{c}");
    assert_eq!(c["meters_failed"], 0, "{c}");
    assert_eq!(c["readings_written"], 24, "{c}");
    assert_eq!(
        count(&local, "SELECT count(*) FROM meter_readings").await?,
        24
    );

    let s = mcp.call_ok("sync_status", json!({})).await?;
    assert_eq!(s["backlog"]["count"], 24, "{s}");
    assert_eq!(s["health"]["healthy"], 3, "{s}");

    let u = mcp.call_ok("upload_readings", json!({})).await?;
    assert_eq!(u["uploaded"], 24, "{u}");
    assert_eq!(u["remaining"], 0, "{u}");
    assert_eq!(
        count(&remote, "SELECT count(*) FROM meter_readings").await?,
        24
    );
    assert_eq!(
        count(&local, "SELECT count(*) FROM meter_readings").await?,
        0
    );

    let found = mcp
        .call_ok(
            "discover_devices",
            json!({"address": d0.addr().to_string(), "timeout_ms": 300}),
        )
        .await?;
    assert_eq!(found["devices"][0]["instance"], d0.instance(), "{found}");
    assert_eq!(
        found["devices"][0]["name"],
        format!("Meter {}", d0.instance())
    );

    let cycle = mcp.call_ok("run_sync_cycle", json!({})).await?;
    assert_eq!(cycle["ok"], true, "{cycle}");
    assert_eq!(
        cycle["download_meters"]["result"]["unchanged"], 3,
        "{cycle}"
    );
    assert_eq!(cycle["upload"]["result"]["uploaded"], 24, "{cycle}");
    assert_eq!(
        count(&remote, "SELECT count(*) FROM meter_readings").await?,
        48
    );

    let cs = mcp.call_ok("connection_status", json!({})).await?;
    assert_eq!(cs["local"]["connected"], true);

    // Resources: the configuration without passwords, the recent runs.
    let res = mcp.client.list_all_resources().await?;
    assert_eq!(res.len(), 2);
    let cfg = mcp
        .client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "metersync://config",
        ))
        .await?;
    let text = serde_json::to_string(&cfg)?;
    assert!(
        text.contains("***") && !text.contains(TEST_PASSWORD),
        "{text}"
    );
    let runs = mcp
        .client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "metersync://sync_runs",
        ))
        .await?;
    assert!(serde_json::to_string(&runs)?.contains("download_meters"));
    mcp.close().await?;
    Ok(())
}

#[tokio::test]
async fn bad_arguments_are_tool_errors_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let (_w, _sim, env) = site(1).await?;
    let mcp = Mcp::start(&env, &[], "mcp-bad-args").await?;
    mcp.call_ok("download_tenants", json!({})).await?;
    mcp.call_ok("download_meters", json!({})).await?;
    let cases = [
        (
            "upload_readings",
            json!({"batch_size": "many"}),
            "batch_size",
        ),
        ("upload_readings", json!({"batch_size": -5}), "batch_size"),
        ("upload_readings", json!({"batch_size": 0}), "batch_size"),
        ("upload_readings", json!({"max_rows": 0}), "max_rows"),
        ("list_meters", json!({"limit": 0}), "limit"),
        ("list_meters", json!({"cursor": "garbage"}), "cursor"),
        ("list_meters", json!({"colour": "red"}), "colour"),
        ("download_meters", json!({"dry_run": "yes"}), "dry_run"),
        ("read_meter", json!({"meter_id": 999999}), "999999"),
        ("read_meter", json!({}), "meter_id"),
        ("collect_meters", json!({"meter_ids": [999999]}), "999999"),
        ("collect_meters", json!({"meter_ids": []}), "meter_ids"),
        ("discover_devices", json!({"timeout_ms": 5}), "timeout_ms"),
        (
            "discover_devices",
            json!({"address": "not an address"}),
            "address",
        ),
    ];
    for (tool, args, needle) in cases {
        let r = mcp.call(tool, args.clone()).await?;
        let text = text_of(&r);
        assert_eq!(r.is_error, Some(true), "{tool} {args}: {text}");
        assert!(
            text.contains(needle),
            "{tool} {args}: message should name {needle}: {text}"
        );
        assert!(!text.contains(TEST_PASSWORD));
        assert!(
            !text.to_lowercase().contains("select "),
            "no SQL in errors: {text}"
        );
    }
    let s = mcp.call_ok("sync_status", json!({})).await?;
    assert_eq!(s["backlog"]["count"], 0);
    mcp.close().await?;
    Ok(())
}

#[tokio::test]
async fn read_only_mode_serves_only_the_readers() -> anyhow::Result<()> {
    let (_w, _sim, mut env) = site(1).await?;
    for (how, args) in [("flag", vec!["serve", "--read-only"]), ("env", vec![])] {
        if how == "env" {
            env.insert("METERSYNC_READ_ONLY".into(), "1".into());
        }
        let mcp = Mcp::start(&env, &args, "mcp-read-only").await?;
        let mut names: Vec<String> = mcp
            .client
            .list_all_tools()
            .await?
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "connection_status",
                "describe_device",
                "discover_devices",
                "list_meters",
                "list_quarantine",
                "query_readings",
                "read_meter",
                "sync_status"
            ],
            "{how}"
        );
        for t in mcp.client.list_all_tools().await? {
            assert_eq!(
                t.annotations.and_then(|a| a.read_only_hint),
                Some(true),
                "{}",
                t.name
            );
        }
        let r = mcp.call("upload_readings", json!({})).await?;
        assert_eq!(r.is_error, Some(true), "{how}");
        assert!(text_of(&r).contains("read-only"), "{}", text_of(&r));
        mcp.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn progress_arrives_for_a_long_upload_and_the_discover_handshake_works() -> anyhow::Result<()>
{
    let (w, _sim, env) = site(1).await?;
    let local = w.local.client().await?;
    local
        .batch_execute(
            "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
             SELECT 1, 'energy_kwh', timestamptz '2026-01-01' + g * interval '1 minute', g, 'kWh'
             FROM generate_series(1, 20000) g",
        )
        .await?;
    let mcp = Mcp::start_with(
        &env,
        &[],
        "mcp-progress",
        rmcp::ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        },
    )
    .await?;
    let (r, progress) = mcp
        .call_with_progress("upload_readings", json!({"batch_size": 1000}))
        .await?;
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    let out = r.structured_content.unwrap_or_default();
    assert_eq!(out["uploaded"], 20000, "{out}");
    assert!(
        progress.len() >= 10,
        "expected a notification per batch, got {}",
        progress.len()
    );
    let values: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "progress must not go backwards: {values:?}"
    );
    mcp.close().await?;
    Ok(())
}
