//! Upload benchmark between two throwaway local PostgreSQL clusters.
//!
//! `cargo run --release --example bench_upload [-- ROWS]` (default 1,000,000):
//! - metersync's upload (including the local delete) against a raw binary
//!   `COPY … TO STDOUT | COPY … FROM STDIN` pipe of the same rows between
//!   the same clusters, in the same run, as a ratio;
//! - the same upload through PgBouncer in `pool_mode = transaction`;
//! - remote round trips per batch, counted by the library's link proxy
//!   (`metersync::demo::link`, no delay; a round trip is the client speaking
//!   again after the server answered), at two batch sizes;
//! - peak RSS (VmHWM) of an upload process for a 100,000- and a
//!   1,000,000-row backlog (this program re-runs itself as that process).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use metersync::app::App;
use metersync::config::Config;
use metersync::demo::anchor::{raw_copy_pipe, seed_backlog};
use metersync::demo::cluster::{Cluster, Pooler};
use metersync::demo::link::Link;
use metersync::progress::NoProgress;
use metersync::upload::{upload, UploadOptions, UploadReport};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "bench-pw-8812";

/// Bigger buffers and WAL than the test clusters: 1M-row runs.
const BENCH_CONF: &str = "max_connections = 100\nshared_buffers = 128MB\nmax_wal_size = 2GB\n";

/// A throwaway cluster (the library's), stopped when dropped.
struct BenchCluster(Cluster);

impl BenchCluster {
    fn start() -> Result<Self> {
        Ok(BenchCluster(Cluster::start_with(PASSWORD, BENCH_CONF)?))
    }

    fn port(&self) -> u16 {
        self.0.port
    }

    async fn client(&self) -> Result<tokio_postgres::Client> {
        Ok(self.0.connect(PASSWORD).await?)
    }
}

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

/// One upload; `batch: 0` means the default options (the product's claim).
async fn run_upload(env: &HashMap<String, String>, batch: usize) -> Result<UploadReport> {
    let app = App::new(Config::from_vars(env)?)?;
    app.db.initialize().await?;
    let r = upload(
        &app,
        UploadOptions {
            batch_size: (batch > 0).then_some(batch),
            max_rows: None,
        },
        &NoProgress,
        &CancellationToken::new(),
    )
    .await?;
    app.db.close();
    Ok(r)
}

async fn raw_pipe(l: &tokio_postgres::Client, r: &tokio_postgres::Client) -> Result<u64> {
    Ok(raw_copy_pipe(
        l,
        r,
        "COPY (SELECT meter_id, point, recorded_at, value, unit FROM meter_readings) \
         TO STDOUT (FORMAT binary)",
        "COPY raw_readings (meter_id, point, recorded_at, value, unit) FROM STDIN (FORMAT binary)",
    )
    .await?)
}

/// One synthetic batch of rows, `k`-th of its run.
type Row = (
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
    f64,
    Option<String>,
);

fn synthetic(k: usize, n: usize) -> Vec<Row> {
    let base =
        chrono::DateTime::<chrono::Utc>::from_timestamp(1_767_225_600, 0).unwrap_or_default();
    (0..n)
        .map(|i| {
            let g = (k * n + i) as i64;
            (
                g % 200 + 1,
                "energy_kwh".to_string(),
                base + chrono::Duration::seconds(g),
                g as f64 / 4.0,
                Some("kWh".to_string()),
            )
        })
        .collect()
}

const COLS: &str = "meter_id, point, recorded_at, value, unit";
const TYPES: [tokio_postgres::types::Type; 5] = [
    tokio_postgres::types::Type::INT8,
    tokio_postgres::types::Type::TEXT,
    tokio_postgres::types::Type::TIMESTAMPTZ,
    tokio_postgres::types::Type::FLOAT8,
    tokio_postgres::types::Type::TEXT,
];

async fn copy_rows(tx: &tokio_postgres::Transaction<'_>, sql: &str, rows: &[Row]) -> Result<()> {
    let sink = tx.copy_in(sql).await?;
    let mut w = std::pin::pin!(tokio_postgres::binary_copy::BinaryCopyInWriter::new(
        sink, &TYPES
    ));
    for r in rows {
        w.as_mut().write(&[&r.0, &r.1, &r.2, &r.3, &r.4]).await?;
    }
    w.finish().await?;
    Ok(())
}

/// The remote write paths alone (no local side), `total` rows in batches of
/// `batch`, each into an empty table with the contract's primary key.
async fn remote_paths(port: u16, total: usize, batch: usize) -> Result<()> {
    use tokio_postgres::types::Type;
    let (mut c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(PASSWORD)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    for path in [
        "direct COPY",
        "COPY to ON COMMIT DROP staging + INSERT ON CONFLICT",
        "UNNEST + ON CONFLICT (execute_typed)",
    ] {
        c.batch_execute("TRUNCATE meter_readings").await?;
        let t = Instant::now();
        for k in 0..total / batch {
            let rows = synthetic(k, batch);
            let tx = c.transaction().await?;
            match path {
                "direct COPY" => {
                    copy_rows(
                        &tx,
                        &format!("COPY meter_readings ({COLS}) FROM STDIN (FORMAT binary)"),
                        &rows,
                    )
                    .await?
                }
                "UNNEST + ON CONFLICT (execute_typed)" => {
                    let m: Vec<i64> = rows.iter().map(|r| r.0).collect();
                    let p: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
                    let ts: Vec<_> = rows.iter().map(|r| r.2).collect();
                    let v: Vec<f64> = rows.iter().map(|r| r.3).collect();
                    let u: Vec<Option<&str>> = rows.iter().map(|r| r.4.as_deref()).collect();
                    tx.execute_typed(
                        &format!("INSERT INTO meter_readings ({COLS}) SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::float8[], $5::text[]) ON CONFLICT DO NOTHING"),
                        &[(&m, Type::INT8_ARRAY), (&p, Type::TEXT_ARRAY), (&ts, Type::TIMESTAMPTZ_ARRAY), (&v, Type::FLOAT8_ARRAY), (&u, Type::TEXT_ARRAY)],
                    )
                    .await?;
                }
                _ => {
                    tx.batch_execute(&format!("CREATE TEMP TABLE staging ON COMMIT DROP AS SELECT {COLS} FROM meter_readings WITH NO DATA")).await?;
                    copy_rows(
                        &tx,
                        &format!("COPY staging ({COLS}) FROM STDIN (FORMAT binary)"),
                        &rows,
                    )
                    .await?;
                    tx.batch_execute(&format!("INSERT INTO meter_readings ({COLS}) SELECT {COLS} FROM staging ON CONFLICT DO NOTHING")).await?;
                }
            }
            tx.commit().await?;
        }
        let rate = (total / batch * batch) as f64 / t.elapsed().as_secs_f64();
        println!("remote path only, via PgBouncer, {path}: {rate:>9.0} rows/s");
    }
    c.batch_execute("TRUNCATE meter_readings").await?;
    Ok(())
}

/// Child mode: one upload, then print the report and VmHWM (kB).
async fn child(batch: usize) -> Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let r = run_upload(&env, batch).await?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    println!("{} {hwm}", r.uploaded + r.already_present);
    Ok(())
}

async fn peak_rss(env: &HashMap<String, String>, batch: usize) -> Result<(u64, u64)> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--child", &batch.to_string()])
        .env_clear()
        .envs(env)
        .output()
        .await?;
    if !out.status.success() {
        bail!("child failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("metersync=debug")
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let batch = args.get(2).and_then(|b| b.parse().ok()).unwrap_or(0);
        return child(batch).await;
    }
    let rows: i64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // The default options: rows streamed, remote transactions of up to
    // UPLOAD_BATCH_SIZE (1,000,000) rows or 10 s.
    let batch = 0;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("bench_upload: {rows} rows, default options, {profile} build");
    let (local, remote) = (BenchCluster::start()?, BenchCluster::start()?);
    let bouncer = Pooler::start(remote.port(), PASSWORD, 5, 100)?;
    let env = env_for(local.port(), remote.port());
    let app = App::new(Config::from_vars(&env)?)?;
    metersync::migrate::migrate(&app.db).await?;
    app.db.close();
    let (lc, rc) = (local.client().await?, remote.client().await?);
    rc.batch_execute("CREATE TABLE raw_readings (LIKE meter_readings INCLUDING ALL)")
        .await?;

    // Alternating rounds: the machine is shared, so one round can be noise.
    let mut ratios = Vec::new();
    for round in 1..=3 {
        rc.batch_execute("TRUNCATE meter_readings, raw_readings")
            .await?;
        seed_backlog(&lc, rows).await?;
        let t = Instant::now();
        let n = raw_pipe(&lc, &rc).await?;
        let raw = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let r = run_upload(&env, batch).await?;
        let ours = r.uploaded as f64 / t.elapsed().as_secs_f64();
        println!(
            "round {round}: raw binary COPY pipe {raw:>7.0} rows/s, metersync upload {ours:>7.0} rows/s ({} rows, local delete included), ratio {:.2}",
            r.uploaded,
            ours / raw
        );
        ratios.push(ours / raw);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio metersync / raw COPY: {:.2} (target >= 0.80)",
        ratios[ratios.len() / 2]
    );

    if std::env::var_os("BENCH_RATIO_ONLY").is_some() {
        return Ok(());
    }
    rc.batch_execute("TRUNCATE meter_readings").await?;
    seed_backlog(&lc, rows).await?;
    let t = Instant::now();
    let r = run_upload(&env_for(local.port(), bouncer.port), batch).await?;
    let pgb = r.uploaded as f64 / t.elapsed().as_secs_f64();
    println!(
        "metersync upload (PgBouncer transaction mode): {} rows, {pgb:>9.0} rows/s",
        r.uploaded
    );

    remote_paths(bouncer.port, rows as usize, 10_000).await?;

    let counter = Link::start(remote.port(), Duration::ZERO).await?;
    let mut per = Vec::new();
    for b in [1_000usize, 10_000] {
        rc.batch_execute("TRUNCATE meter_readings").await?;
        seed_backlog(&lc, 100_000).await?;
        counter.reset();
        let r = run_upload(&env_for(local.port(), counter.port), b).await?;
        let turns = counter.counts().round_trips;
        println!(
            "round trips, batch {b:>6}: {turns} in total for {} batches",
            r.batches
        );
        per.push((r.batches as f64, turns as f64));
    }
    let (b1, t1) = per[0];
    let (b2, t2) = per[1];
    println!(
        "remote round trips per batch: {:.1} (fixed per call: {:.0})",
        (t1 - t2) / (b1 - b2),
        t2 - b2 * (t1 - t2) / (b1 - b2)
    );

    for n in [100_000i64, 1_000_000] {
        rc.batch_execute("TRUNCATE meter_readings").await?;
        seed_backlog(&lc, n).await?;
        let (moved, kb) = peak_rss(&env, batch).await?;
        println!(
            "peak RSS, {n:>9}-row backlog: {:.1} MB ({moved} rows moved)",
            kb as f64 / 1024.0
        );
    }
    Ok(())
}
