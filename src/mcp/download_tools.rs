//! Tools that mirror the remote configuration locally: `download_tenants`,
//! `download_meters`.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::progress::McpProgress;
use super::MeterSyncServer;
use crate::download::{self, DownloadReport, Table};

/// Arguments of `download_tenants` and `download_meters`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadArgs {
    /// Compute and report the changes without writing them locally
    /// (default false). The run is still recorded in sync_runs.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

impl MeterSyncServer {
    async fn run_download(
        &self,
        table: Table,
        args: DownloadArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Json<DownloadReport>, String> {
        let progress = McpProgress::new(ctx);
        let dry_run = args.dry_run.unwrap_or(false);
        let result = download::download(&self.app, table, dry_run, &progress, &ctx.ct).await;
        progress.finish().await;
        result.map(Json).map_err(|e| e.to_string())
    }
}

#[tool_router(router = download_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Mirror the remote tenants (in SITE_ID's scope) into the local database.
    #[tool(
        description = "Download the tenants in scope (SITE_ID, or all) from the central database into the local copy, comparing every column: inserted, updated (with the fields that changed), unchanged, deactivated (gone or inactive remotely; never deleted locally), skipped rows with their errors, and the list of changes (capped at 50, with a count of the rest). One local transaction: on failure, or when the request is cancelled before the writes, nothing changes (recorded in sync_runs as failed or cancelled). Run before download_meters. dry_run reports without writing.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn download_tenants(
        &self,
        Parameters(args): Parameters<DownloadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DownloadReport>, String> {
        self.run_download(Table::Tenants, args, &ctx).await
    }

    /// Mirror the remote meters (in SITE_ID's scope) into the local database.
    #[tool(
        description = "Download the meters in scope (SITE_ID, or all) from the central database into the local copy, comparing every column: inserted, updated (with the fields that changed), unchanged, deactivated (gone or inactive remotely; never deleted locally), and the list of changes (capped at 50, with a count of the rest). Meters the collector could not use (points not a list of {name, object: \"analog-input:1\"}, address not host:port, a device instance used twice on one site) are skipped and listed in errors with the reason; the rest apply. One local transaction: on failure, or when the request is cancelled before the writes, nothing changes (recorded in sync_runs as failed or cancelled). dry_run reports without writing.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn download_meters(
        &self,
        Parameters(args): Parameters<DownloadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DownloadReport>, String> {
        self.run_download(Table::Meters, args, &ctx).await
    }
}
