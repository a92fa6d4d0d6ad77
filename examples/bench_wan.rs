//! WAN upload benchmark (issue 15): metersync's upload against a raw binary
//! COPY pipe of the same rows, through the same simulated WAN link, in the
//! same run.
//!
//! `cargo run --release --example bench_wan [-- --rows N] [--rounds K]`
//! (default 200,000 rows, 1 round; with K rounds each figure is the median).
//!
//! Two throwaway clusters (local and remote) and PgBouncer 1.18 in
//! `pool_mode = transaction` in front of the remote. For each RTT in 0, 25,
//! 50 and 100 ms, and each path (direct to the remote, or through the
//! pooler), a [`Link`] with a one-way delay of RTT/2 per chunk sits between
//! the client and the remote side (the "WAN"):
//! - **anchor**: connect both sides (the remote through the link), then
//!   `COPY (SELECT …) TO STDOUT (FORMAT binary)` on the local side piped into
//!   `COPY meter_readings (…) FROM STDIN (FORMAT binary)` in one remote
//!   transaction; the connection setup is in its time;
//! - **metersync**: this program re-run as a child process (so its peak RSS,
//!   VmHWM, is the upload's alone) builds a fresh `App` from
//!   `Config::from_vars` with the remote at the link, calls
//!   `app.start_for(Work::Transfer)` as the CLI does, then `upload` with the
//!   default options; its time runs from the configuration to the report.
//!   Round trips are those the link counted for that whole process.
//!
//! The local backlog is seeded afresh for each point (the anchor only reads
//! it) and the remote table emptied before each measurement; after each
//! upload the remote must hold every row and the local backlog none.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metersync::app::{App, Work};
use metersync::config::Config;
use metersync::demo::anchor::{raw_copy_pipe, seed_backlog};
use metersync::demo::cluster::{connect_to, Cluster, Pooler};
use metersync::demo::link::Link;
use metersync::progress::NoProgress;
use metersync::upload::{upload, UploadOptions};

const PASSWORD: &str = "bench-pw-8812";

/// Bigger buffers and WAL than the test clusters (as bench_upload).
const BENCH_CONF: &str = "max_connections = 100\nshared_buffers = 128MB\nmax_wal_size = 2GB\n";

const RTTS_MS: [u64; 4] = [0, 25, 50, 100];

fn env_for(local: u16, remote: u16) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (side, port) in [("SYNC", local), ("CLIENT", remote)] {
        env.insert(format!("POSTGRES_{side}_HOST"), "127.0.0.1".into());
        env.insert(format!("POSTGRES_{side}_PORT"), port.to_string());
        env.insert(format!("POSTGRES_{side}_USER"), "postgres".into());
        env.insert(format!("POSTGRES_{side}_DB"), "postgres".into());
        env.insert(format!("POSTGRES_{side}_PASSWORD"), PASSWORD.into());
    }
    env
}

async fn count(c: &tokio_postgres::Client) -> Result<i64> {
    Ok(c.query_one("SELECT count(*) FROM meter_readings", &[])
        .await?
        .try_get(0)?)
}

/// The anchor: connect, then pipe the local rows into the remote through
/// `remote_port` in one transaction. Returns the rows copied.
async fn raw_pipe(local_port: u16, remote_port: u16) -> Result<u64> {
    let l = connect_to(local_port, PASSWORD).await?;
    let r = connect_to(remote_port, PASSWORD).await?;
    Ok(raw_copy_pipe(
        &l,
        &r,
        "COPY (SELECT meter_id, point, recorded_at, value, unit FROM meter_readings) \
         TO STDOUT (FORMAT binary)",
        "COPY meter_readings (meter_id, point, recorded_at, value, unit) \
         FROM STDIN (FORMAT binary)",
    )
    .await?)
}

/// Child mode: one upload as the CLI runs it, then one line on stdout:
/// rows moved, seconds, VmHWM in kB.
async fn child() -> Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let t = Instant::now();
    let app = App::new(Config::from_vars(&env)?)?;
    app.start_for(Work::Transfer).await?;
    let cancel = app.shutdown();
    let r = upload(&app, UploadOptions::default(), &NoProgress, &cancel)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = t.elapsed().as_secs_f64();
    app.db.close();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    println!("{} {secs} {hwm}", r.uploaded + r.already_present);
    Ok(())
}

/// One metersync upload in a child process: (rows moved, seconds, kB).
async fn metersync_upload(env: &HashMap<String, String>) -> Result<(u64, f64, u64)> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--child")
        .env_clear()
        .envs(env)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "upload child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace();
    let moved = it.next().and_then(|x| x.parse().ok());
    let secs = it.next().and_then(|x| x.parse().ok());
    let kb = it.next().and_then(|x| x.parse().ok());
    match (moved, secs, kb) {
        (Some(m), Some(s), Some(k)) => Ok((m, s, k)),
        _ => bail!("upload child printed {s:?}"),
    }
}

/// One measured point.
#[derive(Clone, Copy, Default)]
struct Point {
    anchor: f64,
    anchor_trips: u64,
    ours: f64,
    trips: u64,
    rss_mb: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

struct Args {
    rows: i64,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        rows: 200_000,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rows" => a.rows = value.parse().context("--rows")?,
            "--rounds" => a.rounds = value.parse().context("--rounds")?,
            _ => bail!("usage: bench_wan [--rows N] [--rounds K]"),
        }
    }
    if a.rows < 1 || a.rounds < 1 {
        bail!("--rows and --rounds must be at least 1");
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("metersync=debug")
            .with_writer(std::io::stderr)
            .init();
    }
    if std::env::args().nth(1).as_deref() == Some("--child") {
        return child().await;
    }
    let args = parse_args()?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "bench_wan: {} rows, {} round(s), {profile} build, upload with default options",
        args.rows, args.rounds
    );
    let local = Cluster::start_with(PASSWORD, BENCH_CONF)?;
    let remote = Cluster::start_with(PASSWORD, BENCH_CONF)?;
    let bouncer = Pooler::start(remote.port, PASSWORD, 5, 100)?;
    let app = App::new(Config::from_vars(&env_for(local.port, remote.port))?)?;
    metersync::migrate::migrate(&app.db).await?;
    app.db.close();
    let (lc, rc) = (
        local.connect(PASSWORD).await?,
        remote.connect(PASSWORD).await?,
    );

    let paths = [("direct", remote.port), ("pgbouncer", bouncer.port)];
    let mut points: HashMap<(u64, &str), Vec<Point>> = HashMap::new();
    for round in 1..=args.rounds {
        for rtt in RTTS_MS {
            for (path, target) in paths {
                let link = Link::start(target, Duration::from_millis(rtt) / 2).await?;
                seed_backlog(&lc, args.rows).await?;
                rc.batch_execute("TRUNCATE meter_readings").await?;

                let t = Instant::now();
                let n = raw_pipe(local.port, link.port).await?;
                let anchor = n as f64 / t.elapsed().as_secs_f64();
                // Its closing Terminate is the anchor's, not the upload's.
                if !link.wait_closed(Duration::from_secs(30)).await {
                    bail!("the anchor's connection did not close");
                }
                let anchor_trips = link.reset().round_trips;
                if count(&lc).await? != args.rows {
                    bail!("the anchor changed the local backlog");
                }
                rc.batch_execute("TRUNCATE meter_readings").await?;

                let (moved, secs, kb) = metersync_upload(&env_for(local.port, link.port)).await?;
                if !link.wait_closed(Duration::from_secs(30)).await {
                    bail!("the upload's connections did not close");
                }
                let trips = link.counts().round_trips;
                let (remote_rows, local_rows) = (count(&rc).await?, count(&lc).await?);
                if moved != args.rows as u64 || remote_rows != args.rows || local_rows != 0 {
                    bail!(
                        "upload moved {moved}, remote holds {remote_rows}, local {local_rows}; expected {}",
                        args.rows
                    );
                }
                let p = Point {
                    anchor,
                    anchor_trips,
                    ours: moved as f64 / secs,
                    trips,
                    rss_mb: kb as f64 / 1024.0,
                };
                println!(
                    "round {round}, RTT {rtt:>3} ms, {path:<9}: anchor {:>7.0} rows/s ({anchor_trips} round trips), metersync {:>7.0} rows/s ({trips} round trips, peak RSS {:.1} MB), ratio {:.2}",
                    p.anchor, p.ours, p.rss_mb, p.ours / p.anchor
                );
                points.entry((rtt, path)).or_default().push(p);
            }
        }
    }

    let how = if args.rounds > 1 {
        format!("medians of {} rounds", args.rounds)
    } else {
        "1 round".into()
    };
    println!("\n{} rows, {how}:\n", args.rows);
    println!("| RTT | path | anchor rows/s | metersync rows/s | ratio | round trips (metersync) | round trips (anchor) | peak RSS (metersync) |");
    println!("|---|---|---|---|---|---|---|---|");
    for rtt in RTTS_MS {
        for (path, _) in paths {
            let v = points.get(&(rtt, path)).cloned().unwrap_or_default();
            let m = |f: fn(&Point) -> f64| median(v.iter().map(f).collect());
            println!(
                "| {rtt} ms | {path} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} MB |",
                m(|p| p.anchor),
                m(|p| p.ours),
                m(|p| p.ours / p.anchor),
                m(|p| p.trips as f64),
                m(|p| p.anchor_trips as f64),
                m(|p| p.rss_mb),
            );
        }
    }
    Ok(())
}
