//! The download engines against real clusters: a first run inserts
//! everything, a second writes nothing (same xmin, ctid and synced_at on
//! every row), remote edits come back as exactly those counts and fields,
//! dry runs write nothing, SITE_ID scopes, bad rows are skipped and
//! reported, a failing apply leaves the local copy as it was, and the tools
//! work over MCP through PgBouncer in transaction mode.

mod common;

use std::collections::HashMap;

use anyhow::{bail, Result};
use common::*;
use serde_json::{json, Value};

const POINTS: &str = r#"[{"name": "energy_kwh", "object": "analog-input:1"}, {"name": "power_kw", "object": "analog-value:2", "property": "present-value"}]"#;

/// Remote tenants `ids` and meters `ids` (device instance = id) on `site`.
async fn seed(
    c: &tokio_postgres::Client,
    site: &str,
    tenants: (i64, i64),
    meters: (i64, i64),
) -> Result<()> {
    c.batch_execute(&format!(
        "INSERT INTO tenants (id, site_id, name, unit, email)
           SELECT g, '{site}', 'tenant ' || g, 'U' || g, 't' || g || '@example.com'
           FROM generate_series({t0}, {t1}) g;
         INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
           SELECT g, '{site}', {t0} + g % ({t1} - {t0} + 1), 'meter ' || g, g,
                  '10.0.' || (g / 250) || '.' || (g % 250) || ':47808', '{POINTS}'
           FROM generate_series({m0}, {m1}) g;",
        t0 = tenants.0,
        t1 = tenants.1,
        m0 = meters.0,
        m1 = meters.1,
    ))
    .await?;
    Ok(())
}

/// Runs `metersync <command> [--dry-run]` and returns its JSON report.
async fn cli(env: &HashMap<String, String>, command: &str, dry_run: bool) -> Result<Value> {
    let mut args = vec![command];
    if dry_run {
        args.push("--dry-run");
    }
    let out = run_cli(env, &args, command).await?;
    if !out.ok {
        bail!("{command} failed: {}", out.stderr);
    }
    Ok(serde_json::from_str(&out.stdout)?)
}

/// Every row's physical identity and sync time: any write changes one.
async fn snapshot(c: &tokio_postgres::Client, table: &str) -> Result<Vec<String>> {
    Ok(c.query(
        &format!(
            "SELECT id::text || ' ' || xmin::text || ' ' || ctid::text || ' ' || synced_at::text || ' ' || active::text
             FROM {table} ORDER BY id"
        ),
        &[],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Rows inserted, updated and deleted in `table` since the cluster started,
/// per `pg_stat_user_tables`, once every metersync backend has exited (a
/// backend flushes its statistics when it exits).
async fn settled_writes(c: &tokio_postgres::Client, table: &str) -> Result<i64> {
    for _ in 0..100 {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'metersync'",
                &[],
            )
            .await?
            .get(0);
        if n == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(c.query_one(
        "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = $1",
        &[&table],
    )
    .await?
    .get(0))
}

/// The contract's columns of the active rows, as one string.
async fn contents(c: &tokio_postgres::Client, table: &str, filter: &str) -> Result<String> {
    let cols = if table == "meters" {
        "id, site_id, tenant_id, name, device_instance, address, points, active, updated_at"
    } else {
        "id, site_id, name, unit, email, active, updated_at"
    };
    Ok(c.query_one(
        &format!(
            "SELECT coalesce(string_agg(row({cols})::text, '|' ORDER BY id), '') FROM {table} WHERE active {filter}"
        ),
        &[],
    )
    .await?
    .get(0))
}

fn counts(r: &Value) -> [u64; 5] {
    ["inserted", "updated", "unchanged", "deactivated", "skipped"]
        .map(|k| r[k].as_u64().unwrap_or(u64::MAX))
}

/// The report without what differs between two runs of the same plan.
fn comparable(r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("duration_ms");
        o.remove("dry_run");
    }
    r
}

#[tokio::test]
async fn downloads_insert_then_write_nothing_then_report_exact_edits() -> Result<()> {
    let w = World::start().await?;
    let rc = w.remote.client().await?;
    let lc = w.local.client().await?;
    seed(&rc, "s1", (1, 40), (1, 100)).await?;

    let t = cli(&w.env, "download-tenants", false).await?;
    assert_eq!(counts(&t), [40, 0, 0, 0, 0], "{t}");
    let m = cli(&w.env, "download-meters", false).await?;
    assert_eq!(counts(&m), [100, 0, 0, 0, 0], "{m}");
    assert_eq!(m["changes"].as_array().map(Vec::len), Some(50), "capped");
    assert_eq!(m["changes_omitted"], 50);
    assert_eq!(
        m["changes"][0],
        json!({"id": 1, "action": "insert", "fields": []})
    );
    assert_eq!(m["remote_round_trips"], 1);
    for table in ["tenants", "meters"] {
        assert_eq!(
            contents(&lc, table, "").await?,
            contents(&rc, table, "").await?
        );
    }

    // Nothing changed remotely: nothing is written locally.
    let before_t = snapshot(&lc, "tenants").await?;
    let before_m = snapshot(&lc, "meters").await?;
    assert_eq!(settled_writes(&lc, "meters").await?, 100);
    let t = cli(&w.env, "download-tenants", false).await?;
    let m = cli(&w.env, "download-meters", false).await?;
    assert_eq!(counts(&t), [0, 0, 40, 0, 0], "{t}");
    assert_eq!(counts(&m), [0, 0, 100, 0, 0], "{m}");
    assert_eq!(m["changes"], json!([]));
    assert_eq!(snapshot(&lc, "tenants").await?, before_t);
    assert_eq!(snapshot(&lc, "meters").await?, before_m);
    assert_eq!(settled_writes(&lc, "meters").await?, 100, "no row written");
    assert_eq!(settled_writes(&lc, "tenants").await?, 40, "no row written");

    // 10 updated (5 names, 5 names and points, updated_at not bumped),
    // 3 inserted, 5 deleted, 2 set inactive.
    rc.batch_execute(&format!(
        "UPDATE meters SET name = name || ' (moved)' WHERE id BETWEEN 1 AND 5;
         UPDATE meters SET name = name || ' (rewired)',
                points = '[{{\"name\": \"energy_kwh\", \"object\": \"accumulator:7\"}}]'
           WHERE id BETWEEN 6 AND 10;
         INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
           SELECT g, 's1', 1, 'meter ' || g, g, '10.1.0.' || g, '{POINTS}' FROM generate_series(101, 103) g;
         DELETE FROM meters WHERE id BETWEEN 96 AND 100;
         UPDATE meters SET active = false WHERE id IN (91, 92);"
    ))
    .await?;
    let dry = cli(&w.env, "download-meters", true).await?;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(counts(&dry), [3, 10, 83, 7, 0], "{dry}");
    assert_eq!(
        snapshot(&lc, "meters").await?,
        before_m,
        "a dry run writes nothing"
    );

    let real = cli(&w.env, "download-meters", false).await?;
    assert_eq!(comparable(&real), comparable(&dry));
    let changes: Vec<(i64, String, Vec<String>)> = real["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["id"].as_i64().unwrap_or(-1),
                c["action"].as_str().unwrap_or("").to_string(),
                c["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| f.as_str().unwrap_or("").to_string())
                    .collect(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for id in 1..=5 {
        expected.push((id, "update".to_string(), vec!["name".to_string()]));
    }
    for id in 6..=10 {
        expected.push((id, "update".into(), vec!["name".into(), "points".into()]));
    }
    for id in [91, 92, 96, 97, 98, 99, 100] {
        expected.push((id, "deactivate".into(), vec!["active".into()]));
    }
    for id in 101..=103 {
        expected.push((id, "insert".into(), vec![]));
    }
    assert_eq!(changes, expected);
    assert_eq!(
        contents(&lc, "meters", "").await?,
        contents(&rc, "meters", "").await?
    );
    let kept: i64 = lc
        .query_one(
            "SELECT count(*) FROM meters WHERE id BETWEEN 91 AND 100 AND NOT active",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(kept, 7, "gone and inactive meters stay, inactive");

    // Only the changed rows were written.
    let after_m = snapshot(&lc, "meters").await?;
    let rewritten = before_m.iter().filter(|r| !after_m.contains(r)).count();
    assert_eq!(
        rewritten, 17,
        "10 updated + 7 deactivated rows rewritten, no other"
    );

    // And again: everything unchanged, the inactive rows included.
    let again = cli(&w.env, "download-meters", false).await?;
    assert_eq!(counts(&again), [0, 0, 103, 0, 0], "{again}");
    assert_eq!(snapshot(&lc, "meters").await?, after_m);

    // Every run is in the journal, the dry run marked as such.
    let runs = lc
        .query(
            "SELECT kind, status, counts FROM sync_runs WHERE kind LIKE 'download_%' ORDER BY id",
            &[],
        )
        .await?;
    assert_eq!(runs.len(), 7);
    assert!(runs.iter().all(|r| r.get::<_, String>(1) == "ok"));
    let dry_counts: Value = runs[4].get(2);
    assert_eq!(runs[4].get::<_, String>(0), "download_meters");
    assert_eq!(dry_counts["dry_run"], true);
    assert_eq!(dry_counts["deactivated"], 7);
    Ok(())
}

#[tokio::test]
async fn site_scope_and_bad_rows_are_skipped_and_reported() -> Result<()> {
    let w = World::start().await?;
    let rc = w.remote.client().await?;
    let lc = w.local.client().await?;
    seed(&rc, "s1", (1, 10), (1, 30)).await?;
    seed(&rc, "s2", (11, 20), (31, 50)).await?;
    rc.batch_execute(
        "UPDATE meters SET points = '{\"name\": \"energy_kwh\"}' WHERE id = 3;
         UPDATE meters SET address = 'not an address' WHERE id = 5;
         UPDATE meters SET device_instance = 7 WHERE id = 9;
         UPDATE meters SET device_instance = 7 WHERE id = 40;  -- s2: not in scope
         UPDATE meters SET points = '[{\"name\": \"e\", \"object\": \"binary-input:1\"}]', active = false WHERE id = 11;",
    )
    .await?;
    let mut env = w.env.clone();
    env.insert("SITE_ID".into(), "s1".into());

    let t = cli(&env, "download-tenants", false).await?;
    assert_eq!(counts(&t), [10, 0, 0, 0, 0], "{t}");
    assert_eq!(t["site_id"], "s1");
    let m = cli(&env, "download-meters", false).await?;
    // 30 in scope, 3 bad; the inactive meter 11 is mirrored as it is.
    assert_eq!(counts(&m), [27, 0, 0, 0, 3], "{m}");
    let errors = m["errors"].as_array().cloned().unwrap_or_default();
    let ids: Vec<i64> = errors.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids, vec![3, 5, 9]);
    let text = |i: usize| errors[i]["error"].as_str().unwrap_or("").to_string();
    assert!(text(0).contains("points"), "{}", text(0));
    assert!(text(1).contains("host:port"), "{}", text(1));
    assert!(text(2).contains("meter 7"), "{}", text(2));
    assert_eq!(
        contents(&lc, "meters", "").await?,
        contents(&rc, "meters", "AND site_id = 's1' AND id NOT IN (3, 5, 9)").await?
    );
    assert_eq!(
        contents(&lc, "tenants", "").await?,
        contents(&rc, "tenants", "AND site_id = 's1'").await?
    );
    let runs: Value = lc
        .query_one(
            "SELECT counts FROM sync_runs WHERE kind = 'download_meters' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(runs["skipped_ids"], json!([3, 5, 9]));

    // A meter that goes bad after it was downloaded keeps its last good copy.
    rc.batch_execute(
        "UPDATE meters SET address = 'x:y' WHERE id = 12;
         UPDATE meters SET address = '10.9.9.9' WHERE id = 5;",
    )
    .await?;
    let before = snapshot(&lc, "meters").await?;
    let m = cli(&env, "download-meters", false).await?;
    assert_eq!(counts(&m), [1, 0, 26, 0, 3], "{m}");
    let row12 = before.iter().find(|r| r.starts_with("12 ")).cloned();
    let after = snapshot(&lc, "meters").await?;
    assert!(
        row12.is_some_and(|r| after.contains(&r)),
        "meter 12 untouched"
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_download_leaves_the_local_copy_as_it_was() -> Result<()> {
    let w = World::start().await?;
    let rc = w.remote.client().await?;
    let lc = w.local.client().await?;
    seed(&rc, "s1", (1, 5), (1, 20)).await?;
    cli(&w.env, "download-meters", false).await?;

    // Inserts, deactivations and updates planned; one update fails locally
    // after the inserts went in.
    lc.batch_execute(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.name = 'poison' THEN RAISE EXCEPTION 'refusing meter %', NEW.id; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE UPDATE ON meters FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .await?;
    rc.batch_execute(&format!(
        "INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
           SELECT g, 's1', 1, 'meter ' || g, g, '10.1.0.' || g, '{POINTS}' FROM generate_series(21, 25) g;
         UPDATE meters SET name = 'renamed' WHERE id = 1;
         UPDATE meters SET name = 'poison' WHERE id = 2;
         DELETE FROM meters WHERE id = 20;"
    ))
    .await?;
    let before = snapshot(&lc, "meters").await?;
    let out = run_cli(&w.env, &["download-meters"], "download-poison").await?;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("left exactly as it was"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("refusing meter 2"), "{}", out.stderr);
    assert!(!out.stderr.contains("INSERT INTO"), "no SQL in errors");
    assert_eq!(snapshot(&lc, "meters").await?, before);
    let (status, error): (String, Option<String>) = {
        let r = lc
            .query_one(
                "SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "failed");
    assert!(error.unwrap_or_default().contains("refusing meter 2"));

    // A remote that is down: an error naming it, nothing changed. (The test
    // clusters run with synchronous_commit off and stop like a crash: a
    // checkpoint first keeps the edits above.)
    rc.batch_execute("CHECKPOINT").await?;
    w.remote.stop()?;
    let out = run_cli(&w.env, &["download-meters"], "download-remote-down").await?;
    assert!(!out.ok);
    assert!(out.stderr.contains("POSTGRES_CLIENT"), "{}", out.stderr);
    assert!(!out.stderr.contains(TEST_PASSWORD));
    assert_eq!(snapshot(&lc, "meters").await?, before);
    w.remote.start_again()?;

    lc.batch_execute("DROP TRIGGER refuse_poison ON meters")
        .await?;
    let m = cli(&w.env, "download-meters", false).await?;
    assert_eq!(counts(&m), [5, 2, 17, 1, 0], "{m}");
    Ok(())
}

#[tokio::test]
async fn mcp_downloads_through_pgbouncer_in_transaction_mode() -> Result<()> {
    let w = World::start().await?;
    let rc = w.remote.client().await?;
    seed(&rc, "s1", (1, 8), (1, 30)).await?;
    let bouncer = PgBouncer::start(&w.remote)?;
    let mut env = w.env.clone();
    env.extend(bouncer.env("CLIENT"));
    env.insert("SITE_ID".into(), "s1".into());

    let mcp = Mcp::start(&env, &["serve"], "mcp-download").await?;
    let tools = mcp.client.list_all_tools().await?;
    for name in ["download_tenants", "download_meters"] {
        let tool = tools.iter().find(|t| t.name == name);
        let ann = tool.and_then(|t| t.annotations.clone());
        let ann = ann.ok_or_else(|| anyhow::anyhow!("{name} has no annotations"))?;
        assert_eq!(ann.read_only_hint, Some(false));
        assert_eq!(ann.destructive_hint, Some(false));
        assert_eq!(ann.idempotent_hint, Some(true));
        assert!(tool.is_some_and(|t| t.output_schema.is_some()));
    }

    let t = mcp.call_ok("download_tenants", json!({})).await?;
    assert_eq!(counts(&t), [8, 0, 0, 0, 0], "{t}");
    let dry = mcp
        .call_ok("download_meters", json!({"dry_run": true}))
        .await?;
    assert_eq!(counts(&dry), [30, 0, 0, 0, 0], "{dry}");
    assert_eq!(dry["dry_run"], true);
    let m = mcp.call_ok("download_meters", json!({})).await?;
    assert_eq!(counts(&m), [30, 0, 0, 0, 0], "{m}");
    // Many runs through the pooler's shared server connections.
    for _ in 0..3 {
        let m = mcp
            .call_ok("download_meters", json!({"dry_run": false}))
            .await?;
        assert_eq!(counts(&m), [0, 0, 30, 0, 0], "{m}");
    }
    let bad = mcp.call("download_meters", json!({"dryrun": true})).await?;
    assert_eq!(bad.is_error, Some(true));
    assert!(text_of(&bad).contains("dryrun"), "{}", text_of(&bad));
    mcp.close().await?;

    // The CLI through the pooler as well.
    let t = cli(&env, "download-tenants", false).await?;
    assert_eq!(counts(&t), [0, 0, 8, 0, 0], "{t}");
    Ok(())
}
