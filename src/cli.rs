//! The command line: `serve` (default), `migrate`, `status`, and one command
//! per engine operation. Each command builds the same [`App`] and calls the
//! same engine function as its MCP tool twin, then prints the result as
//! JSON on stdout.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metersync::app::App;
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
    /// Apply the database migrations (local, and remote when configured).
    Migrate,
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
    /// report as JSON. Ctrl-C stops between batches.
    Upload {
        /// Rows per remote transaction, 1 to 100000 (default UPLOAD_BATCH_SIZE).
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
        /// Unicast device or broadcast address, host:port.
        #[arg(long, default_value = "255.255.255.255:47808")]
        address: String,
        /// How long to wait for answers, in ms.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Download tenants and meters, collect, upload: one cycle; prints each step's result as JSON.
    Cycle,
    /// The daemon: collect, upload and download on their intervals until SIGTERM/SIGINT.
    Run,
    /// The embedded demo: throwaway clusters and simulated meters on loopback, one full cycle.
    Demo {
        /// Keep the demo world up and serve MCP over stdio against it.
        #[arg(long)]
        serve: bool,
    },
}

/// Cancels the returned token on Ctrl-C or SIGTERM (the engines then stop
/// between batches).
fn cancel_on_signal() -> tokio_util::sync::CancellationToken {
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        metersync::daemon::shutdown_signal().await;
        c.cancel();
    });
    cancel
}

fn load() -> anyhow::Result<Arc<App>> {
    let config = Config::load().context("configuration")?;
    App::new(config).context("setting up the database pools")
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn download(table: Table, dry_run: bool) -> anyhow::Result<()> {
    let app = load()?;
    app.db.initialize().await?;
    let progress = LogProgress(table.run_kind());
    let report = metersync::download::download(&app, table, dry_run, &progress).await;
    app.db.close();
    print_json(&report?)
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = load()?;
            let read_only = cli.read_only || app.config.read_only;
            metersync::mcp::serve_stdio(app, read_only).await?;
        }
        Command::Migrate => {
            let app = load()?;
            app.db.initialize().await?;
            let report = metersync::migrate::migrate(&app.db).await?;
            print_json(&report)?;
            app.db.close();
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
            let app = load()?;
            app.db.initialize().await?;
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::info!("interrupted: stopping after the batch in flight");
                    on_signal.cancel();
                }
            });
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
            let app = load()?;
            app.db.initialize().await?;
            let client = app.bacnet().await?;
            let opts = metersync::collect::CollectOptions {
                meter_ids: (!meter_ids.is_empty()).then_some(meter_ids),
                dry_run,
            };
            let cancel = cancel_on_signal();
            let r = metersync::collect::collect(
                &app,
                client.as_ref(),
                opts,
                &LogProgress("collect"),
                &cancel,
            )
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
            let target = metersync::bacnet::parse_address(&address)
                .map_err(|e| anyhow::anyhow!("--address: {e}"))?;
            let client = app.bacnet().await?;
            let devices = metersync::bacnet::discover_devices(
                client.as_ref(),
                target,
                None,
                std::time::Duration::from_millis(timeout_ms),
            )
            .await?;
            print_json(&devices)?;
        }
        Command::Cycle => {
            let app = load()?;
            app.db.initialize().await?;
            let cancel = cancel_on_signal();
            let r = metersync::cycle::run_cycle(&app, &LogProgress("cycle"), &cancel).await;
            print_json(&r)?;
            app.db.close();
            if !r.ok {
                anyhow::bail!("the cycle had failing steps (see their errors above)");
            }
        }
        Command::Run => {
            let app = load()?;
            // Collection needs only the local database: a remote that is down
            // now is retried by the upload and download loops, not fatal.
            app.db
                .initialize_side(metersync::config::Side::Local)
                .await?;
            if app.db.has_remote() {
                if let Err(e) = app
                    .db
                    .initialize_side(metersync::config::Side::Remote)
                    .await
                {
                    tracing::warn!("starting without the remote database: {e}");
                }
            }
            metersync::daemon::run(app, cancel_on_signal()).await;
        }
        Command::Demo { serve } => demo(serve, cli.read_only).await?,
    }
    Ok(())
}

async fn demo(serve: bool, read_only: bool) -> anyhow::Result<()> {
    eprintln!("metersync demo: starting two throwaway PostgreSQL clusters and simulated meters on 127.0.0.1...");
    let world = metersync::demo::DemoWorld::start().await?;
    if serve {
        let app = world.app.clone();
        let cancel = tokio_util::sync::CancellationToken::new();
        for table in [Table::Tenants, Table::Meters] {
            metersync::download::download(&app, table, false, &LogProgress("download")).await?;
        }
        let client = app.bacnet().await?;
        let c = metersync::collect::collect(
            &app,
            client.as_ref(),
            metersync::collect::CollectOptions::default(),
            &LogProgress("collect"),
            &cancel,
        )
        .await?;
        eprintln!(
            "metersync demo: {} tenants and {} meters downloaded, {} readings collected and waiting for upload; serving MCP on stdio",
            world.tenants, world.meters, c.readings_written
        );
        let result = metersync::mcp::serve_stdio(app, read_only).await;
        world.shutdown().await;
        result?;
        return Ok(());
    }
    let cancel = cancel_on_signal();
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
