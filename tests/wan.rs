//! Round trips of one `metersync upload` call over the remote link (issue 15),
//! counted on the wire by the library's link proxy
//! (`metersync::demo::link::Link`, no delay) between the real binary and the
//! remote, directly and through PgBouncer 1.18 in transaction mode. The whole
//! call counts: connect, authentication, every query and every batch.
//!
//! Bounds for a 30,000-row backlog: at most 6 round trips with the default
//! options (authentication 3 with SCRAM directly, 2 through the pooler;
//! `BEGIN` with the key check and the COPY's prepare; the COPY's start; the
//! rows with CopyDone and `COMMIT`; Terminate), and at most 6 + 2 × 3 = 12
//! with `--batch-size 10000` (three remote transactions, three round trips
//! each). The engine before the stream counted 21 (20 through PgBouncer)
//! in every case. Each case also checks that every row arrived
//! exactly once and the local backlog is empty.

mod common;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::rows::{count, seed_readings};
use common::*;
use metersync::demo::link::Link;
use serde_json::Value;

const ROWS: i64 = 30_000;

/// Round trips allowed per call whatever the backlog (connect and auth included).
const PER_CALL: u64 = 6;
/// Round trips allowed per extra remote transaction.
const PER_EXTRA_TRANSACTION: u64 = 3;

/// Seeds the backlog, runs `metersync upload ARGS` with the remote through a
/// counting link to `target`, checks exactly-once delivery, and returns the
/// round trips counted and the report.
async fn counted_upload(w: &World, target: u16, args: &[&str]) -> Result<(u64, Value)> {
    let (lc, rc) = (w.local.client().await?, w.remote.client().await?);
    seed_readings(&lc, ROWS).await?;
    let link = Link::start(target, Duration::ZERO).await?;
    let env = w.env_with_remote_at(link.port);
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
async fn default_upload_costs_at_most_6_round_trips_direct() -> Result<()> {
    let w = World::start().await?;
    let (n, _) = counted_upload(&w, w.remote.port, &[]).await?;
    check("default options, direct", n, PER_CALL);
    Ok(())
}

#[tokio::test]
async fn three_transactions_cost_at_most_12_round_trips_direct() -> Result<()> {
    let w = World::start().await?;
    let (n, r) = counted_upload(&w, w.remote.port, &["--batch-size", "10000"]).await?;
    assert_eq!(r["batches"], 3, "{r}");
    check(
        "--batch-size 10000 (3 transactions), direct",
        n,
        PER_CALL + PER_EXTRA_TRANSACTION * 2,
    );
    Ok(())
}

#[tokio::test]
async fn default_upload_costs_at_most_6_round_trips_through_pgbouncer() -> Result<()> {
    let w = World::start().await?;
    let pgb = PgBouncer::start(&w.remote)?;
    let (n, _) = counted_upload(&w, pgb.port, &[]).await?;
    check("default options, through PgBouncer", n, PER_CALL);
    Ok(())
}

#[tokio::test]
async fn three_transactions_cost_at_most_12_round_trips_through_pgbouncer() -> Result<()> {
    let w = World::start().await?;
    let pgb = PgBouncer::start(&w.remote)?;
    let (n, r) = counted_upload(&w, pgb.port, &["--batch-size", "10000"]).await?;
    assert_eq!(r["batches"], 3, "{r}");
    check(
        "--batch-size 10000 (3 transactions), through PgBouncer",
        n,
        PER_CALL + PER_EXTRA_TRANSACTION * 2,
    );
    Ok(())
}

/// The link itself: each answer waits twice the one-way delay, and each
/// query after the connection is one round trip, counted once.
#[tokio::test]
async fn link_delays_each_answer_and_counts_one_round_trip_per_query() -> Result<()> {
    let pg = PgCluster::start()?;
    let one_way = Duration::from_millis(20);
    let link = Link::start(pg.port, one_way).await?;
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(link.port)
        .user("postgres")
        .password(TEST_PASSWORD)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    let conn = tokio::spawn(conn);
    let at_connect = link.reset();
    assert!(at_connect.round_trips >= 2, "{at_connect:?}");
    assert_eq!(at_connect.connections, 1);
    for _ in 0..5 {
        let t = std::time::Instant::now();
        c.simple_query("SELECT 1").await?;
        assert!(
            t.elapsed() >= one_way * 2,
            "an answer came back in {:?}, under the round-trip time {:?}",
            t.elapsed(),
            one_way * 2
        );
    }
    let n = link.counts();
    assert_eq!(n.round_trips, 5, "{n:?}");
    assert!(n.bytes_up > 0 && n.bytes_down > 0, "{n:?}");
    assert_eq!(n.connections, 0, "{n:?}");
    drop(c);
    let _ = conn.await;
    assert!(link.wait_closed(Duration::from_secs(30)).await);
    // The closing Terminate is the client speaking again.
    assert_eq!(link.counts().round_trips, 6);
    Ok(())
}

/// The delay is a queue, not a pace: 16 MiB echoed through a link with a
/// 100 ms one-way delay arrive intact and in order, far sooner than one
/// chunk (64 KiB at most) per delay would allow (256 chunks × 100 ms =
/// 25.6 s each way; 2.4 s measured in a debug build on a loaded machine).
#[tokio::test]
async fn link_streams_in_order_without_one_chunk_per_delay() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 16 << 20;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo_port = echo.local_addr()?.port();
    tokio::spawn(async move {
        if let Ok((s, _)) = echo.accept().await {
            let (mut r, mut w) = s.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let link = Link::start(echo_port, Duration::from_millis(100)).await?;
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let s = tokio::net::TcpStream::connect(("127.0.0.1", link.port)).await?;
    let (mut r, mut w) = s.into_split();
    let t = std::time::Instant::now();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await
    });
    let mut back = Vec::with_capacity(SIZE);
    r.read_to_end(&mut back).await?;
    writer.await??;
    let took = t.elapsed();
    assert!(back == data, "echo differs: {} bytes back", back.len());
    assert!(
        took < Duration::from_secs(12),
        "16 MiB took {took:?} through a 100 ms link"
    );
    let n = link.counts();
    assert_eq!((n.bytes_up, n.bytes_down), (SIZE as u64, SIZE as u64));
    Ok(())
}
