//! `run_sync_cycle`: the whole cycle in one call.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};

use super::progress::McpProgress;
use super::{MeterSyncServer, NoArgs};
use crate::cycle::CycleReport;

#[tool_router(router = cycle_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Download, collect and upload, in that order.
    #[tool(
        description = "Run one full sync cycle: download_tenants, download_meters, collect_meters, upload_readings, in that order, and return each step's result. A failing step does not hide the others (a remote outage fails the downloads and the upload, yet readings are still collected locally). Sends progress per step when the client gives a progress token.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn run_sync_cycle(
        &self,
        Parameters(_): Parameters<NoArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CycleReport>, String> {
        let progress = McpProgress::new(&ctx);
        let r = crate::cycle::run_cycle(&self.app, &progress, &ctx.ct).await;
        progress.finish().await;
        Ok(Json(r))
    }
}
