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
    /// Print both databases' connection status as JSON (one attempt, no retries).
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
            let status = app.db.status().await;
            print_json(&status)?;
            app.db.close();
        }
        Command::DownloadTenants { dry_run } => {
            download(Table::Tenants, dry_run).await?;
        }
        Command::DownloadMeters { dry_run } => {
            download(Table::Meters, dry_run).await?;
    },
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
    }
    Ok(())
}
