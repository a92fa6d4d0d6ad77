//! The command line: `serve` (default), `migrate`, `status`, and one command
//! per engine operation. Each command builds the same [`App`] and calls the
//! same engine function as its MCP tool twin, then prints the result as
//! JSON on stdout.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metersync::app::{App, Work};
use metersync::config::Config;
use metersync::download::Table;
use metersync::progress::LogProgress;

/// metersync: BACnet/IP meters -> local PostgreSQL -> central PostgreSQL,
/// driven over MCP.
#[derive(Debug, Parser)]
#[command(name = "metersync", version, about)]
pub struct Cli {
    /// Serve only the MCP tools that write nothing (also METERSYNC_READ_ONLY=1).
    #[arg(long, global = true)]
    read_only: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve MCP over stdio (the default).
    Serve,
    /// Apply the database migrations, each side on its own (local, and
    /// remote when configured); prints both outcomes as JSON, exits non-zero
    /// unless everything asked for is applied.
    Migrate {
        /// Only the local database.
        #[arg(long, conflicts_with = "remote")]
        local: bool,
        /// Only the remote database.
        #[arg(long)]
        remote: bool,
        /// Print the SQL (for a DBA) instead of connecting: the remote's
        /// unless --local is given.
        #[arg(long)]
        print: bool,
    },
    /// Verify the remote's tables, key columns and grants (no DDL); prints
    /// each check as JSON, exits non-zero if one fails.
    Check,
    /// Print the site's health as JSON: both databases (one attempt, no
    /// retries), backlog, last runs, meter health and warnings. Exits non-zero
    /// when a configured database is not connected or collection is failing.
    Status,
    /// Download the tenants in scope (SITE_ID) into the local copy; print the report as JSON.
    DownloadTenants {
        /// Report the changes without writing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Download the meters in scope (SITE_ID) into the local copy; print the report as JSON.
    DownloadMeters {
        /// Report the changes without writing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Upload the local backlog to the remote, exactly once; prints the
    /// report as JSON. Ctrl-C or SIGTERM stops between batches.
    Upload {
        /// Rows per remote transaction at most, 1 to 1000000 (default UPLOAD_BATCH_SIZE); a streamed transaction also ends after 10 s.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Stop after this many rows, at least 1 (default: the whole backlog).
        #[arg(long)]
        max_rows: Option<u64>,
    },
    /// Read the active meters over BACnet/IP into the local backlog; prints the report as JSON.
    Collect {
        /// Only this meter (repeat for several); default: every active meter.
        #[arg(long = "meter-id")]
        meter_ids: Vec<i64>,
        /// Read without storing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send Who-Is and list the BACnet devices that answer, as JSON.
    Discover {
        /// Unicast device or broadcast address, host:port (default 255.255.255.255:47808).
        #[arg(long)]
        address: Option<String>,
        /// How long to wait for answers, 100 to 60000 ms (default 3000).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Download tenants and meters, collect, upload: one cycle; prints each step's result as JSON.
    Cycle,
    /// Describe a BACnet device: its objects (paged) and a drafted `points` JSON, as JSON.
    Describe {
        /// The device's address, host[:port].
        address: String,
        /// Its device instance, if known (skips the Who-Is).
        #[arg(long)]
        device_instance: Option<u32>,
        /// Objects per page.
        #[arg(long)]
        limit: Option<u32>,
        /// The next_cursor of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Readings history of meters from the remote and the local backlog, raw or bucketed; one page as JSON.
    Readings {
        /// A meter to read (repeat for several).
        #[arg(long = "meter-id", required = true)]
        meter_ids: Vec<i64>,
        /// A point to read (repeat for several); default: every point.
        #[arg(long = "point")]
        points: Vec<String>,
        /// Start of the range, inclusive: RFC 3339 or YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// End of the range, exclusive.
        #[arg(long)]
        to: String,
        /// Aggregate by this interval (15m, 1h, 1d); raw readings when omitted.
        #[arg(long)]
        bucket: Option<String>,
        /// Rows per page.
        #[arg(long)]
        limit: Option<i64>,
        /// The next_cursor of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// The daemon: collect, upload and download on their intervals until SIGTERM/SIGINT.
    Run,
    /// List the readings the upload set aside (the quarantine, or with
    /// --conflicts the conflicts) as JSON, or requeue chosen ones into the
    /// backlog (--requeue ID... or --all); with --conflicts --discard, delete
    /// the chosen conflict records instead (the remote's value stands).
    Quarantine {
        /// Requeue these ids (repeat or list several).
        #[arg(long, num_args = 1.., value_name = "ID")]
        requeue: Vec<i64>,
        /// Act on every row (10000 per call; the report says what is left).
        #[arg(long)]
        all: bool,
        /// The conflicts table instead of the quarantine.
        #[arg(long)]
        conflicts: bool,
        /// With --conflicts: discard the chosen conflicts instead of requeueing them.
        #[arg(long, requires = "conflicts")]
        discard: bool,
        /// Listing: rows per page, 1 to 500 (default 50).
        #[arg(long)]
        limit: Option<i64>,
        /// Listing: the next_cursor of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// The embedded demo: throwaway clusters and simulated meters on loopback, one full cycle.
    Demo {
        /// Keep the demo world up and serve MCP over stdio against it.
        #[arg(long)]
        serve: bool,
    },
}

/// Loads the configuration and builds the [`App`]; SIGTERM and SIGINT
/// cancel its shutdown token from now on (every command the same way: the
/// engines stop between batches, checkouts and retry sleeps at once).
fn load() -> anyhow::Result<Arc<App>> {
    let config = Config::load().context("configuration")?;
    let app = App::new(config).context("setting up the database pools")?;
    metersync::shutdown::listen(app.shutdown());
    Ok(app)
}

/// [`load`], then connect what `work` needs ([`Work::needs`]).
async fn start(work: Work) -> anyhow::Result<Arc<App>> {
    let app = load()?;
    app.start_for(work).await?;
    Ok(app)
}

/// Prints `value` as JSON on stdout. A closed stdout (`metersync collect |
/// head`) ends the process quietly with status 0, as other Unix tools do,
/// instead of panicking as `println!` would.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    print_text(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

fn print_text(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
    }
}

async fn download(table: Table, dry_run: bool) -> anyhow::Result<()> {
    let app = start(Work::Transfer).await?;
    let progress = LogProgress(table.run_kind());
    let cancel = app.shutdown();
    let report = metersync::download::download(&app, table, dry_run, &progress, &cancel).await;
    app.db.close();
    print_json(&report?)
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = start(Work::Serve).await?;
            let read_only = cli.read_only || app.config.read_only;
            let shutdown = app.shutdown();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                r = metersync::mcp::serve_stdio(app.clone(), read_only) => r?,
            }
            app.db.close();
        }
        Command::Migrate {
            local,
            remote,
            print,
        } => {
            use metersync::migrate::Sides;
            if print {
                let side = if local {
                    metersync::config::Side::Local
                } else {
                    metersync::config::Side::Remote
                };
                return print_text(&metersync::migrate::script(side));
            }
            let app = load()?;
            let sides = match (local, remote) {
                (true, _) => Sides::Local,
                (_, true) => Sides::Remote,
                _ => Sides::Both,
            };
            let outcome = metersync::migrate::migrate_sides(&app.db, sides).await;
            app.db.close();
            print_json(&outcome)?;
            if !outcome.ok {
                let failed: Vec<String> = [("local", &outcome.local), ("remote", &outcome.remote)]
                    .into_iter()
                    .filter_map(|(side, o)| {
                        let e = o.as_ref()?.error.as_ref()?;
                        Some(format!("the {side} database was not migrated: {e}"))
                    })
                    .collect();
                anyhow::bail!("{}", failed.join("; "));
            }
        }
        Command::Check => {
            let app = load()?;
            let report = metersync::migrate::check(&app.db).await;
            app.db.close();
            let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
            print_json(&report)?;
            if !report.ok {
                anyhow::bail!(
                    "the remote is missing something metersync needs (see the failed checks above)"
                );
            }
        }
        Command::Status => {
            let app = load()?;
            let health = metersync::health::site_health(&app).await;
            print_json(&health)?;
            app.db.close();
            if !health.healthy {
                anyhow::bail!("unhealthy: {}", health.problems.join("; "));
            }
        }
        Command::DownloadTenants { dry_run } => {
            download(Table::Tenants, dry_run).await?;
        }
        Command::DownloadMeters { dry_run } => {
            download(Table::Meters, dry_run).await?;
        }
        Command::Upload {
            batch_size,
            max_rows,
        } => {
            let app = start(Work::Transfer).await?;
            let cancel = app.shutdown();
            let opts = metersync::upload::UploadOptions {
                batch_size,
                max_rows,
            };
            let progress = metersync::progress::LogProgress("upload");
            // The engine's message already names its cause: print it once,
            // not followed by the cause again as anyhow's chain would.
            let report = metersync::upload::upload(&app, opts, &progress, &cancel)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_json(&report)?;
            app.db.close();
        }
        Command::Collect { meter_ids, dry_run } => {
            let app = start(Work::Collect).await?;
            let opts = metersync::collect::CollectOptions {
                meter_ids: (!meter_ids.is_empty()).then_some(meter_ids),
                dry_run,
            };
            let cancel = app.shutdown();
            let r = metersync::collect::collect(&app, opts, &LogProgress("collect"), &cancel)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_json(&r)?;
            app.db.close();
        }
        Command::Discover {
            address,
            timeout_ms,
        } => {
            let app = load()?;
            let shutdown = app.shutdown();
            let found = tokio::select! {
                biased;
                _ = shutdown.cancelled() => anyhow::bail!("discovery interrupted by a signal"),
                r = metersync::devices::discover(&app, address.as_deref(), timeout_ms) => r?,
            };
            print_json(&found)?;
        }
        Command::Cycle => {
            let app = start(Work::Cycle).await?;
            let cancel = app.shutdown();
            let r = metersync::cycle::run_cycle(&app, &LogProgress("cycle"), &cancel).await;
            print_json(&r)?;
            app.db.close();
            if !r.ok {
                anyhow::bail!("the cycle had failing steps (see their errors above)");
            }
        }
        Command::Describe {
            address,
            device_instance,
            limit,
            cursor,
        } => {
            let app = load()?;
            let d = metersync::devices::describe(
                &app,
                &address,
                device_instance,
                limit,
                cursor.as_deref(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_json(&d)?;
        }
        Command::Readings {
            meter_ids,
            points,
            from,
            to,
            bucket,
            limit,
            cursor,
        } => {
            let app = load()?;
            let q = metersync::readings::ReadingsQuery {
                meter_ids,
                points,
                from,
                to,
                bucket,
                limit,
                cursor,
            };
            let page = metersync::readings::query_readings(&app.db, &q)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_json(&page)?;
            app.db.close();
        }
        Command::Run => {
            let app = start(Work::Daemon).await?;
            metersync::daemon::run(app).await;
        }
        Command::Quarantine {
            requeue,
            all,
            conflicts,
            discard,
            limit,
            cursor,
        } => {
            use metersync::quarantine::{self, Action, Selection, Shelf};
            let app = load()?;
            app.db
                .initialize_side(metersync::config::Side::Local)
                .await?;
            let shelf = Shelf::from_conflicts(conflicts);
            let acting = all || discard || !requeue.is_empty();
            // The engine's message names the argument or the cause: print it once.
            let fail = |e: quarantine::QuarantineError| anyhow::anyhow!("{e}");
            if acting {
                let selection = Selection::from_args(Some(requeue), all).map_err(fail)?;
                let action = if discard {
                    Action::Discard
                } else {
                    Action::Requeue
                };
                let r = quarantine::requeue(&app.db, shelf, selection, action)
                    .await
                    .map_err(fail)?;
                print_json(&r)?;
            } else {
                let page = quarantine::list(&app.db, shelf, limit, cursor.as_deref())
                    .await
                    .map_err(fail)?;
                print_json(&page)?;
            }
            app.db.close();
        }
        Command::Demo { serve } => demo(serve, cli.read_only).await?,
    }
    Ok(())
}

async fn demo(serve: bool, read_only: bool) -> anyhow::Result<()> {
    eprintln!("metersync demo: starting two throwaway PostgreSQL clusters and simulated meters on 127.0.0.1...");
    let world = metersync::demo::DemoWorld::start().await?;
    if serve {
        let readings = world.prime().await?;
        let app = world.app.clone();
        eprintln!(
            "metersync demo: {} tenants and {} meters downloaded, {} readings collected and waiting for upload; serving MCP on stdio",
            world.tenants, world.meters, readings
        );
        let result = metersync::mcp::serve_stdio(app, read_only).await;
        world.shutdown().await;
        result?;
        return Ok(());
    }
    let cancel = metersync::shutdown::listen(world.app.shutdown());
    let report = metersync::cycle::run_cycle(&world.app, &LogProgress("cycle"), &cancel).await;
    let remote = world.remote_readings().await.unwrap_or(-1);
    print!("{}", metersync::demo::summary(&world, &report, remote));
    println!("Cleaning up: the clusters and simulated meters are removed.");
    world.shutdown().await;
    if !report.ok && report.upload.result.is_none() {
        anyhow::bail!("the demo cycle failed");
    }
    Ok(())
}
