//! The daemon (`metersync run`) as a real process: collection goes on while
//! the remote is down, the backlog drains when it returns, and SIGTERM in
//! the middle of an upload loses nothing and exits promptly.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{sigterm, spawn_daemon, wait_for};
use common::rows::count;
use common::*;

#[tokio::test]
async fn the_daemon_collects_through_an_outage_and_drains_after() -> anyhow::Result<()> {
    let w = World::start().await?;
    let remote = w.remote.client().await?;
    let _sim = meters::simulated_meters_on(&remote, &[7001, 7002], None).await?;
    drop(remote);
    let mut env = w.env.clone();
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    env.insert("BACNET_TIMEOUT_MS".into(), "300".into());
    env.insert("COLLECT_INTERVAL_S".into(), "1".into());
    env.insert("UPLOAD_INTERVAL_S".into(), "1".into());
    env.insert("DOWNLOAD_INTERVAL_S".into(), "1".into());
    env.insert("MAX_CONNECTION_RETRIES".into(), "0".into());
    env.insert("DB_CONNECTION_TIMEOUT_MS".into(), "1000".into());
    let out = run_cli(&env, &["download-meters"], "daemon-download").await?;
    assert!(out.ok, "{}", out.stderr);

    w.remote.stop()?;
    let (mut child, log_path, _wd) = spawn_daemon(&env, "daemon-outage")?;
    let local = w.local.client().await?;
    // Collection goes on with the remote down: readings pile up locally.
    let piled = wait_for(20, || async {
        Ok(count(&local, "SELECT count(*) FROM meter_readings").await? >= 48)
    })
    .await?;
    assert!(
        piled,
        "readings should accumulate locally while the remote is down"
    );
    assert!(
        child.try_wait()?.is_none(),
        "the daemon must survive the outage"
    );

    w.remote.start_again()?;
    let remote = w.remote.client().await?;
    let drained = wait_for(30, || async {
        Ok(count(&remote, "SELECT count(*) FROM meter_readings").await? >= 48)
    })
    .await?;
    assert!(drained, "the backlog should drain once the remote is back");

    sigterm(&child);
    let t = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "clean exit on SIGTERM");
    assert!(t.elapsed() < Duration::from_secs(10));
    // Everything collected is either still local or uploaded, never both, never lost.
    let local_n = count(&local, "SELECT count(*) FROM meter_readings").await?;
    let remote_n = count(&remote, "SELECT count(*) FROM meter_readings").await?;
    let collected: i64 = count(
        &local,
        "SELECT coalesce(sum((counts->>'readings_written')::bigint), 0)::bigint FROM sync_runs WHERE kind = 'collect'",
    )
    .await?;
    assert_eq!(
        local_n + remote_n,
        collected,
        "local {local_n} + remote {remote_n} != collected {collected}"
    );
    let log = std::fs::read_to_string(&log_path)?;
    assert!(!log.contains(TEST_PASSWORD));
    assert!(
        log.contains("will retry on the next tick"),
        "upload failures during the outage are logged"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_mid_upload_loses_nothing() -> anyhow::Result<()> {
    let w = World::start().await?;
    let local = w.local.client().await?;
    let n: i64 = 300_000;
    rows::seed_readings(&local, n).await?;
    let sum: f64 = local
        .query_one("SELECT sum(value) FROM meter_readings", &[])
        .await?
        .get(0);
    let mut env = w.env.clone();
    env.insert("UPLOAD_BATCH_SIZE".into(), "1000".into());
    env.insert("COLLECT_INTERVAL_S".into(), "3600".into());
    env.insert("DOWNLOAD_INTERVAL_S".into(), "3600".into());
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    let (mut child, _log, _wd) = spawn_daemon(&env, "daemon-sigterm")?;
    let remote = w.remote.client().await?;
    let started = wait_for(30, || async {
        Ok(count(&remote, "SELECT count(*) FROM meter_readings").await? > 0)
    })
    .await?;
    assert!(started, "the upload should start");
    sigterm(&child);
    let t = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exits within a few seconds: {:?}",
        t.elapsed()
    );
    let local_n = count(&local, "SELECT count(*) FROM meter_readings").await?;
    let remote_n = count(&remote, "SELECT count(*) FROM meter_readings").await?;
    assert!(
        local_n > 0,
        "SIGTERM should have stopped the upload part way (local {local_n})"
    );
    assert_eq!(local_n + remote_n, n, "nothing lost, nothing doubled");
    // Finish with a plain upload: exactly the seeded rows, by count and sum.
    let out = run_cli(&w.env, &["upload"], "daemon-after-sigterm").await?;
    assert!(out.ok, "{}", out.stderr);
    let remote_sum: f64 = remote
        .query_one("SELECT sum(value) FROM meter_readings", &[])
        .await?
        .get(0);
    assert_eq!(
        count(&remote, "SELECT count(*) FROM meter_readings").await?,
        n
    );
    assert!((remote_sum - sum).abs() < 1e-6);
    assert_eq!(
        count(&local, "SELECT count(*) FROM meter_readings").await?,
        0
    );
    Ok(())
}
