//! Round trips of one `metersync upload` call over the remote link (issue 15),
//! counted on the wire by the library's link proxy
//! (`metersync::demo::link::Link`, no delay) between the real binary and the
//! remote, directly and through PgBouncer 1.18 in transaction mode. The whole
//! call counts: connect, authentication, every query and every batch.
//!
//! Bounds for a 30,000-row backlog: at most 9 round trips with the default
//! options, and at most 9 + 2 × 3 = 15 with `--batch-size 10000` (three
//! remote transactions). Each case also checks that every row arrived
//! exactly once and the local backlog is empty.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::rows::{count, seed_readings};
use common::*;
use metersync::demo::link::Link;
use serde_json::Value;

const ROWS: i64 = 30_000;

/// Round trips allowed per call whatever the backlog (connect and auth included).
const PER_CALL: u64 = 9;
/// Round trips allowed per extra remote transaction.
const PER_EXTRA_TRANSACTION: u64 = 2;

/// Seeds the backlog, runs `metersync upload ARGS` with the remote through a
/// counting link to `target`, checks exactly-once delivery, and returns the
/// round trips counted and the report.
async fn counted_upload(w: &World, target: u16, args: &[&str]) -> Result<(u64, Value)> {
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_readings(&lc, ROWS).await?;
    let link = Link::start(target, Duration::ZERO).await?;
    let mut env: HashMap<String, String> = w.env.clone();
    env.insert("POSTGRES_CLIENT_PORT".into(), link.port.to_string());
    let mut a = vec!["upload"];
    a.extend_from_slice(args);
    let out = run_cli(&env, &a, "wan-upload").await?;
    // The process has exited; its last bytes (Terminate) are counted once
    // the link has closed its connections.
    assert!(
        link.wait_closed(Duration::from_secs(30)).await,
        "connections still open through the link 30 s after the upload exited"
    );
    let counts = link.counts();
    if !out.ok {
        bail!("upload failed: {}", out.stderr);
    }
    let report: Value = serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())?;
    assert_eq!(report["uploaded"], ROWS, "{report}");
    assert_eq!(count(&rc, "meter_readings").await?, ROWS, "remote rows");
    assert_eq!(count(&lc, "meter_readings").await?, 0, "local backlog");
    eprintln!("upload {args:?} through the link to {target}: {counts:?}, report {report}");
    Ok((counts.round_trips, report))
}

fn check(what: &str, counted: u64, bound: u64) {
    assert!(
        counted <= bound,
        "{what}: {counted} round trips counted on the remote link, bound {bound}"
    );
}

#[tokio::test]
async fn default_upload_costs_at_most_9_round_trips_direct() -> Result<()> {
    let w = World::start().await?;
    let (n, _) = counted_upload(&w, w.remote.port, &[]).await?;
    check("default options, direct", n, PER_CALL);
    Ok(())
}

#[tokio::test]
async fn three_transactions_cost_at_most_15_round_trips_direct() -> Result<()> {
    let w = World::start().await?;
    let (n, r) = counted_upload(&w, w.remote.port, &["--batch-size", "10000"]).await?;
    assert_eq!(r["batches"], 3, "{r}");
    check(
        "--batch-size 10000 (3 transactions), direct",
        n,
        PER_CALL + PER_EXTRA_TRANSACTION * 3,
    );
    Ok(())
}

#[tokio::test]
async fn default_upload_costs_at_most_9_round_trips_through_pgbouncer() -> Result<()> {
    let w = World::start().await?;
    let pgb = PgBouncer::start(&w.remote)?;
    let (n, _) = counted_upload(&w, pgb.port, &[]).await?;
    check("default options, through PgBouncer", n, PER_CALL);
    Ok(())
}

#[tokio::test]
async fn three_transactions_cost_at_most_15_round_trips_through_pgbouncer() -> Result<()> {
    let w = World::start().await?;
    let pgb = PgBouncer::start(&w.remote)?;
    let (n, r) = counted_upload(&w, pgb.port, &["--batch-size", "10000"]).await?;
    assert_eq!(r["batches"], 3, "{r}");
    check(
        "--batch-size 10000 (3 transactions), through PgBouncer",
        n,
        PER_CALL + PER_EXTRA_TRANSACTION * 3,
    );
    Ok(())
}
