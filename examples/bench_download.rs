//! Benchmark of the download engines: 100,000 meters and 20,000 tenants on
//! a throwaway remote cluster, mirrored into a throwaway local cluster.
//!
//! For each table it times a plain `COPY (SELECT ...) TO STDOUT` of the
//! remote table (the floor: every run must read the scoped table once), the
//! first download, a download with nothing changed, and a download with 1%
//! of the rows changed, and prints each as a ratio to the COPY, with the
//! remote round trips per run.
//!
//! It also counts the heap allocations the process makes during each timed
//! download (a counting global allocator: exact, and unaffected by load on
//! the machine), printed per row read.
//!
//! `cargo run --release --example bench_download` (METERS=, TENANTS=,
//! REPEAT= override the sizes). Needs the PostgreSQL server binaries; runs
//! them as the `postgres` user when started as root. Loopback only.
//!
//! (The test harness in `tests/common` cannot be shared: it relies on
//! variables Cargo sets only for integration tests.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use metersync::app::App;
use metersync::config::Config;
use metersync::demo::cluster::Cluster;
use metersync::download::{download, DownloadReport, Table};
use metersync::progress::NoProgress;

const PASSWORD: &str = "bench-pw-4471";

/// The system allocator, counting allocations (and reallocations).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bigger buffers than the test clusters: 100k-meter tables.
const BENCH_CONF: &str = "shared_buffers = 128MB\n";

/// A throwaway cluster (the library's), stopped when dropped.
struct BenchCluster(Cluster);

impl BenchCluster {
    fn start() -> Result<Self> {
        Ok(BenchCluster(Cluster::start_with(PASSWORD, BENCH_CONF)?))
    }

    async fn client(&self) -> Result<tokio_postgres::Client> {
        Ok(self.0.connect(PASSWORD).await?)
    }

    fn env(&self, side: &str, vars: &mut HashMap<String, String>) {
        for (k, v) in [
            ("HOST", "127.0.0.1".to_string()),
            ("PORT", self.0.port.to_string()),
            ("DB", "postgres".into()),
            ("USER", "postgres".into()),
            ("PASSWORD", PASSWORD.into()),
        ] {
            vars.insert(format!("POSTGRES_{side}_{k}"), v);
        }
    }
}

fn env_num(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (not empty).
fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

/// A plain `COPY (SELECT <the table's columns>) TO STDOUT`, drained.
async fn plain_copy(c: &tokio_postgres::Client, table: Table) -> Result<Duration> {
    let cols = match table {
        Table::Tenants => "id, site_id, name, unit, email, active, updated_at",
        Table::Meters => {
            "id, site_id, tenant_id, name, device_instance, address, points, active, updated_at"
        }
    };
    let t = Instant::now();
    let stream = c
        .copy_out(&format!(
            "COPY (SELECT {cols} FROM {}) TO STDOUT",
            table.name()
        ))
        .await?;
    futures::pin_mut!(stream);
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len();
    }
    std::hint::black_box(bytes);
    Ok(t.elapsed())
}

/// The engine's remote statement alone (binary rows, drained undecoded).
async fn plain_select(c: &tokio_postgres::Client, table: Table, order: bool) -> Result<Duration> {
    let cols = match table {
        Table::Tenants => "id::int8, site_id::text, name::text, unit::text, email::text, active::boolean, updated_at::timestamptz",
        Table::Meters => {
            "id::int8, site_id::text, tenant_id::int8, name::text, device_instance::int4, address::text, points::jsonb::text, active::boolean, updated_at::timestamptz"
        }
    };
    let t = Instant::now();
    let sql = format!(
        "SELECT {cols} FROM {}{}",
        table.name(),
        if order { " ORDER BY id" } else { "" }
    );
    let stream = c
        .query_typed_raw(
            &sql,
            Vec::<(
                &(dyn tokio_postgres::types::ToSql + Sync),
                tokio_postgres::types::Type,
            )>::new(),
        )
        .await?;
    futures::pin_mut!(stream);
    let mut n = 0usize;
    while let Some(row) = stream.next().await {
        n += row?.len();
    }
    std::hint::black_box(n);
    Ok(t.elapsed())
}

/// One download: its wall time, report and the allocations made meanwhile.
async fn timed(app: &App, table: Table) -> Result<(Duration, DownloadReport, u64)> {
    let a = ALLOCATIONS.load(Ordering::Relaxed);
    let t = Instant::now();
    let r = download(app, table, false, &NoProgress, &Default::default()).await?;
    let elapsed = t.elapsed();
    Ok((elapsed, r, ALLOCATIONS.load(Ordering::Relaxed) - a))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        metersync::logging::init();
    }
    let meters = env_num("METERS", 100_000);
    let tenants = env_num("TENANTS", 20_000);
    let repeat = env_num("REPEAT", 5).max(1) as usize;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!("starting two clusters ({profile} build)...");
    let (local, remote) = (BenchCluster::start()?, BenchCluster::start()?);
    let mut vars = HashMap::new();
    local.env("SYNC", &mut vars);
    remote.env("CLIENT", &mut vars);
    let app = App::new(Config::from_vars(&vars)?)?;
    app.db.initialize().await?;
    metersync::migrate::migrate(&app.db).await?;

    let rc = remote.client().await?;
    eprintln!("seeding {tenants} tenants and {meters} meters...");
    rc.batch_execute(&format!(
        "INSERT INTO tenants (id, site_id, name, unit, email)
           SELECT g, 'site-' || (g % 4), 'tenant ' || g, 'U' || g, 't' || g || '@example.com'
           FROM generate_series(1, {tenants}) g;
         INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
           SELECT g, 'site-' || (g % 4), 1 + g % {tenants}, 'meter ' || g, g,
                  '10.' || (g / 65536) || '.' || (g / 256 % 256) || '.' || (g % 256) || ':47808',
                  jsonb_build_array(
                    jsonb_build_object('name', 'energy_kwh', 'object', 'analog-input:1'),
                    jsonb_build_object('name', 'power_kw', 'object', 'analog-value:2'),
                    jsonb_build_object('name', 'volume', 'object', 'accumulator:3', 'property', 'present-value'))
           FROM generate_series(1, {meters}) g;"
    ))
    .await?;
    rc.batch_execute("VACUUM ANALYZE tenants").await?;
    rc.batch_execute("VACUUM ANALYZE meters").await?;

    println!("download benchmark, {profile} build, {tenants} tenants / {meters} meters, median of {repeat}");
    println!(
        "{:<8} {:>10} {:>16} {:>16} {:>16} {:>12}",
        "table", "COPY ms", "first ms (x)", "no-change ms (x)", "1% changed (x)", "remote RTs"
    );
    let mut allocs = Vec::new();
    for table in [Table::Tenants, Table::Meters] {
        let rows = if table == Table::Meters {
            meters
        } else {
            tenants
        };
        let mut copies = Vec::new();
        for _ in 0..repeat {
            copies.push(plain_copy(&rc, table).await?);
        }
        let copy = median(copies);
        let (first, r, first_allocs) = timed(&app, table).await?;
        assert_eq!(r.inserted as i64, rows, "first download inserts everything");
        let mut trips = vec![r.remote_round_trips];
        if std::env::var_os("SELECT_TOO").is_some() {
            let lc = local.client().await?;
            for _ in 0..3 {
                let c = plain_copy(&rc, table).await?;
                let r = plain_select(&rc, table, false).await?;
                let l = plain_select(&lc, table, false).await?;
                let (a, b) = tokio::join!(
                    plain_select(&rc, table, false),
                    plain_select(&lc, table, false)
                );
                println!("{}: COPY {:.0} remote SELECT {:.0} local SELECT {:.0} both at once {:.0}/{:.0} ms", table.name(), ms(c), ms(r), ms(l), ms(a?), ms(b?));
            }
        }

        // Each download is timed right after a COPY and compared with it,
        // so load from elsewhere on the machine skews both alike.
        let (mut same, mut changed) = (Vec::new(), Vec::new());
        let (mut same_allocs, mut changed_allocs) = (Vec::new(), Vec::new());
        for i in 0..repeat as i64 {
            let c = plain_copy(&rc, table).await?;
            let (d, r, n) = timed(&app, table).await?;
            same_allocs.push(n);
            assert_eq!(r.unchanged as i64, rows, "nothing changed");
            trips.push(r.remote_round_trips);
            same.push((d, ms(d) / ms(c)));

            // A different 1% each time: every 100th row, offset by i.
            rc.execute(
                &format!(
                    "UPDATE {} SET name = name || ' *' WHERE id % 100 = $1",
                    table.name()
                ),
                &[&i],
            )
            .await?;
            let c = plain_copy(&rc, table).await?;
            let (d, r, n) = timed(&app, table).await?;
            changed_allocs.push(n);
            assert_eq!(r.updated as i64, rows / 100, "1% updated");
            trips.push(r.remote_round_trips);
            changed.push((d, ms(d) / ms(c)));
        }
        trips.dedup();
        let mid = |mut v: Vec<(Duration, f64)>| {
            v.sort_by(|a, b| a.1.total_cmp(&b.1));
            v[v.len() / 2]
        };
        let (same, changed) = (mid(same), mid(changed));
        println!(
            "{:<8} {:>10.1} {:>9.1} ({:>4.2}) {:>9.1} ({:>4.2}) {:>9.1} ({:>4.2}) {:>12}",
            table.name(),
            ms(copy),
            ms(first),
            ms(first) / ms(copy),
            ms(same.0),
            same.1,
            ms(changed.0),
            changed.1,
            format!("{trips:?}")
        );
        allocs.push((
            table,
            rows,
            first_allocs,
            median(same_allocs),
            median(changed_allocs),
        ));
    }
    println!("heap allocations per row read (whole process, during the download)");
    println!(
        "{:<8} {:>14} {:>14} {:>14}",
        "table", "first", "no-change", "1% changed"
    );
    for (table, rows, first, same, changed) in allocs {
        let per = |n: u64| n as f64 / rows as f64;
        println!(
            "{:<8} {:>14.2} {:>14.2} {:>14.2}",
            table.name(),
            per(first),
            per(same),
            per(changed)
        );
    }
    app.db.close();
    Ok(())
}
