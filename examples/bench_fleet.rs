//! Fleet benchmark: N sites uploading at once into one remote through
//! PgBouncer in `pool_mode = transaction`.
//!
//! `cargo run --example bench_fleet [-- N [ROWS_PER_SITE [POOL_SIZE]]]`
//! (defaults 20 sites, 20,000 rows each, 10 server connections):
//! - N local databases in one cluster (one per site, distinct meters), one
//!   remote cluster, one PgBouncer (the library's `demo::cluster`);
//! - anchor: N raw binary `COPY … TO STDOUT | COPY … FROM STDIN` streams of
//!   the same rows, at once, through the same pooler, in the same run;
//! - metersync: N `upload` engines at once (one `App` per site);
//! - aggregate rows/s of both, their ratio, the peak of server connections
//!   on the remote and of client connections on the pooler;
//! - a remote restart in the middle of N uploads: how many uploads ended
//!   with an error, and whether anything was lost or doubled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use metersync::app::App;
use metersync::config::Config;
use metersync::demo::anchor::raw_copy_pipe;
use metersync::demo::cluster::{Cluster, Pooler};
use metersync::progress::NoProgress;
use metersync::upload::{upload, UploadOptions};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "bench-fleet-pw-5521";

/// A connection as `postgres`; `application_name` is `bench_direct` (the
/// watcher leaves those out; PgBouncer passes a client's name on to the
/// server connection it lends, so pooled ones are named by their client).
async fn connect(port: u16, db: &str) -> Result<tokio_postgres::Client> {
    connect_as(port, db, "bench_direct").await
}

async fn connect_as(port: u16, db: &str, app: &str) -> Result<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(PASSWORD)
        .dbname(db)
        .application_name(app)
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> Result<i64> {
    Ok(c.query_one(sql, &[]).await?.try_get(0)?)
}

fn site_db(i: usize) -> String {
    format!("site_{i}")
}

/// An `App` for site `i`: its own local database, the remote through the pooler.
fn app_for(local: u16, pooler: u16, i: usize, batch: usize) -> Result<Arc<App>> {
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in [
        ("POSTGRES_SYNC_HOST", "127.0.0.1".to_string()),
        ("POSTGRES_SYNC_PORT", local.to_string()),
        ("POSTGRES_SYNC_DB", site_db(i)),
        ("POSTGRES_SYNC_USER", "postgres".into()),
        ("POSTGRES_SYNC_PASSWORD", PASSWORD.into()),
        ("POSTGRES_CLIENT_HOST", "127.0.0.1".into()),
        ("POSTGRES_CLIENT_PORT", pooler.to_string()),
        ("POSTGRES_CLIENT_DB", "postgres".into()),
        ("POSTGRES_CLIENT_USER", "postgres".into()),
        ("POSTGRES_CLIENT_PASSWORD", PASSWORD.into()),
        ("SITE_ID", format!("site-{i}")),
        ("UPLOAD_BATCH_SIZE", batch.to_string()),
    ] {
        env.insert(k.into(), v);
    }
    Ok(App::new(Config::from_vars(&env)?)?)
}

/// `rows` readings for site `i`, round `round` (distinct meters per site,
/// distinct times per round).
async fn seed(local: u16, i: usize, rows: i64, round: i64) -> Result<()> {
    let c = connect(local, &site_db(i)).await?;
    c.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT $1::bigint * 1000 + g % 50, 'energy_kwh',
                timestamptz '2026-01-01' + ($3::bigint * 1000000 + g / 50) * interval '1 minute',
                g * 0.25, 'kWh'
         FROM generate_series(0, $2::bigint - 1) g",
        &[&(i as i64), &rows, &round],
    )
    .await?;
    Ok(())
}

/// One raw stream: the site's backlog, binary COPY out of its local
/// database and into the remote's `raw_readings`, in one transaction
/// through the pooler.
async fn raw_stream(local: u16, pooler: u16, i: usize) -> Result<u64> {
    let l = connect(local, &site_db(i)).await?;
    let r = connect_as(pooler, "postgres", "bench_raw").await?;
    Ok(raw_copy_pipe(
        &l,
        &r,
        &format!(
            "COPY (SELECT meter_id, point, recorded_at, value, unit, 'site-{i}'::text \
             FROM meter_readings) TO STDOUT (FORMAT binary)"
        ),
        "COPY raw_readings (meter_id, point, recorded_at, value, unit, site_id) \
         FROM STDIN (FORMAT binary)",
    )
    .await?)
}

/// Peak connections while it runs: server connections on the remote
/// (`pg_stat_activity`, read directly, the benchmark's own direct
/// connections excluded) and clients on the pooler (`SHOW
/// POOLS`). Survives a remote restart by reconnecting.
struct Peaks {
    server: AtomicI64,
    clients: AtomicI64,
    stop: AtomicBool,
}

async fn watch(peaks: Arc<Peaks>, remote: u16, pooler: u16) {
    let mut r: Option<tokio_postgres::Client> = None;
    let mut admin: Option<tokio_postgres::Client> = None;
    while !peaks.stop.load(Ordering::Relaxed) {
        if r.is_none() {
            r = connect(remote, "postgres").await.ok();
        }
        if admin.is_none() {
            admin = connect(pooler, "pgbouncer").await.ok();
        }
        if let Some(c) = &r {
            match count(
                c,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND application_name <> 'bench_direct'",
            )
            .await
            {
                Ok(n) => {
                    peaks.server.fetch_max(n, Ordering::Relaxed);
                }
                Err(_) => r = None,
            }
        }
        if let Some(a) = &admin {
            match a.simple_query("SHOW POOLS").await {
                Ok(msgs) => {
                    let mut n = 0i64;
                    for m in msgs {
                        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                            if row.try_get("database").ok().flatten() == Some("postgres") {
                                for col in ["cl_active", "cl_waiting"] {
                                    n += row
                                        .try_get(col)
                                        .ok()
                                        .flatten()
                                        .and_then(|v: &str| v.parse::<i64>().ok())
                                        .unwrap_or(0);
                                }
                            }
                        }
                    }
                    peaks.clients.fetch_max(n, Ordering::Relaxed);
                }
                Err(_) => admin = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_watch(remote: u16, pooler: u16) -> (Arc<Peaks>, tokio::task::JoinHandle<()>) {
    let p = Arc::new(Peaks {
        server: AtomicI64::new(0),
        clients: AtomicI64::new(0),
        stop: AtomicBool::new(false),
    });
    let h = tokio::spawn(watch(p.clone(), remote, pooler));
    (p, h)
}

async fn stop_watch(p: &Peaks, h: tokio::task::JoinHandle<()>) -> (i64, i64) {
    p.stop.store(true, Ordering::Relaxed);
    let _ = h.await;
    (
        p.server.load(Ordering::Relaxed),
        p.clients.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "error");
    }
    metersync::logging::init();
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let rows: i64 = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let pool: u32 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let batch = 5_000;
    eprintln!(
        "bench_fleet: {n} sites x {rows} rows, batches of {batch}, PgBouncer transaction mode, {pool} server connections"
    );

    let local_conf = format!("max_connections = {}\n", 40 + n * 4);
    let (local, remote) = tokio::task::spawn_blocking(move || -> Result<_> {
        let l = Cluster::start_with(PASSWORD, &local_conf)?;
        let r = Cluster::start_with(PASSWORD, "max_connections = 100\nmax_wal_size = 2GB\n")?;
        Ok((l, Arc::new(r)))
    })
    .await??;
    let pooler = Pooler::start(remote.port, PASSWORD, pool, (n as u32) * 4 + 50)?;
    let lc = connect(local.port, "postgres").await?;
    for i in 0..n {
        lc.batch_execute(&format!("CREATE DATABASE {}", site_db(i)))
            .await?;
    }
    let apps: Vec<Arc<App>> = (0..n)
        .map(|i| app_for(local.port, pooler.port, i, batch))
        .collect::<Result<_>>()?;
    for a in &apps {
        metersync::migrate::migrate(&a.db).await?;
        // Close the connections migrate left idle (the daemon's reaper would).
        a.db.reap_idle(Duration::ZERO);
    }
    let rc = connect(remote.port, "postgres").await?;
    rc.batch_execute("CREATE TABLE raw_readings (LIKE meter_readings INCLUDING ALL)")
        .await?;
    futures::future::try_join_all((0..n).map(|i| seed(local.port, i, rows, 0))).await?;
    let total = n as i64 * rows;

    // Anchor: N raw COPY streams at once.
    let (peaks, h) = start_watch(remote.port, pooler.port);
    let t = Instant::now();
    let copied: u64 =
        futures::future::try_join_all((0..n).map(|i| raw_stream(local.port, pooler.port, i)))
            .await?
            .into_iter()
            .sum();
    let raw_s = t.elapsed().as_secs_f64();
    let (raw_server, raw_clients) = stop_watch(&peaks, h).await;
    if copied as i64 != total {
        bail!("raw COPY moved {copied} rows, expected {total}");
    }

    // metersync: N uploads at once.
    let (peaks, h) = start_watch(remote.port, pooler.port);
    let cancel = CancellationToken::new();
    let t = Instant::now();
    let results = futures::future::join_all(
        apps.iter()
            .map(|a| upload(a, UploadOptions::default(), &NoProgress, &cancel)),
    )
    .await;
    let ms_s = t.elapsed().as_secs_f64();
    let (ms_server, ms_clients) = stop_watch(&peaks, h).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let remote_rows = count(&rc, "SELECT count(*) FROM meter_readings").await?;
    if failed > 0 || remote_rows != total {
        bail!("{failed} uploads failed, remote holds {remote_rows} of {total}");
    }

    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    println!("bench_fleet: {n} sites x {rows} rows ({total} rows), one remote behind PgBouncer 1.18 (transaction mode, {pool} server connections), {build}");
    println!(
        "  raw COPY, {n} streams:  {:>9.0} rows/s  ({raw_s:.2} s)  peak remote server connections {raw_server}, pooler clients {raw_clients}",
        total as f64 / raw_s
    );
    println!(
        "  metersync, {n} uploads: {:>9.0} rows/s  ({ms_s:.2} s)  peak remote server connections {ms_server}, pooler clients {ms_clients}",
        total as f64 / ms_s
    );
    println!("  ratio metersync / raw COPY: {:.2}", raw_s / ms_s);

    // A remote restart in the middle of N uploads.
    futures::future::try_join_all((0..n).map(|i| seed(local.port, i, rows, 1))).await?;
    let cancel = CancellationToken::new();
    let uploads = futures::future::join_all(
        apps.iter()
            .map(|a| upload(a, UploadOptions::default(), &NoProgress, &cancel)),
    );
    let r2 = remote.clone();
    let restart = async move {
        let rc = connect(r2.port, "postgres").await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let now = count(&rc, "SELECT count(*) FROM meter_readings").await?;
            if now >= total + total / 4 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the uploads never reached a quarter of the second round");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        tokio::task::spawn_blocking(move || r2.restart()).await??;
        Ok::<_, anyhow::Error>(t.elapsed())
    };
    let (results, restarted) = tokio::join!(uploads, restart);
    let restart_took = restarted?;
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.is_err().then_some(i))
        .collect();
    let first_error = results
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
    let rc = connect(remote.port, "postgres").await?;
    let mut local_left = 0;
    for i in 0..n {
        let c = connect(local.port, &site_db(i)).await?;
        local_left += count(&c, "SELECT count(*) FROM meter_readings").await?;
    }
    let remote_rows = count(&rc, "SELECT count(*) FROM meter_readings").await?;
    let distinct = count(
        &rc,
        "SELECT count(*) FROM (SELECT DISTINCT meter_id, point, recorded_at FROM meter_readings) d",
    )
    .await?;
    let lost = 2 * total - remote_rows - local_left;
    println!(
        "  remote restart (immediate stop + start, {:.1} s) after a quarter of {n} uploads: {} of {n} uploads ended with an error; remote {} rows, still local {}, lost {}, doubled {}",
        restart_took.as_secs_f64(),
        failed.len(),
        remote_rows - total,
        local_left,
        lost,
        remote_rows - distinct
    );
    if let Some(e) = first_error {
        println!("    first error: {e}");
    }
    if !failed.is_empty() {
        // A rerun of the failed ones finishes the job.
        let t = Instant::now();
        let rerun = futures::future::join_all(
            failed
                .iter()
                .map(|&i| upload(&apps[i], UploadOptions::default(), &NoProgress, &cancel)),
        )
        .await;
        let still = rerun.iter().filter(|r| r.is_err()).count();
        let remote_rows = count(&rc, "SELECT count(*) FROM meter_readings").await?;
        println!(
            "    rerun of the {} failed uploads: {} failed again; remote now {} of {} rows ({:.1} s)",
            failed.len(),
            still,
            remote_rows,
            2 * total,
            t.elapsed().as_secs_f64()
        );
    }
    for a in &apps {
        a.db.close();
    }
    drop(pooler);
    Ok(())
}
