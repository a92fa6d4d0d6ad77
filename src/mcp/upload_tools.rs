//! Tools that move readings: `upload_readings`.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::progress::McpProgress;
use super::MeterSyncServer;
use crate::upload::{UploadOptions, UploadReport};

/// Arguments of `upload_readings`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadArgs {
    /// Rows per remote transaction at most, 1 to 1000000. Default:
    /// UPLOAD_BATCH_SIZE (1000000). Rows are streamed; a transaction also
    /// ends after 10 s of streaming. Smaller transactions cost more round
    /// trips over a WAN.
    pub batch_size: Option<i64>,
    /// Stop after this many rows (at least 1). Default: the whole backlog.
    pub max_rows: Option<i64>,
}

#[tool_router(router = upload_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Uploads the local backlog to the remote, exactly once.
    #[tool(
        description = "Upload the readings waiting in the local database to the central database, in batches, exactly once: each batch is deleted locally only after the remote committed it, rows the remote already holds are counted in already_present (never doubled), and rows the remote rejects as bad data (a CHECK on the value, an unknown meter) are moved to the local quarantine and listed in quarantined_rows, and rows the remote holds with another value are kept locally as conflicts (both values, listed in conflict_rows; the remote row is never overwritten); see list_quarantine and requeue_readings. If the remote table itself refuses the rows (no partition for their month, a missing column, no INSERT privilege) nothing is moved and the error says what to change. A transient failure is re-sent after a backoff; every batch has a deadline. Safe to re-run at any time; stops between batches when cancelled. Sends progress notifications when given a progress token.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn upload_readings(
        &self,
        Parameters(args): Parameters<UploadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<UploadReport>, String> {
        let opts = UploadOptions::from_signed(args.batch_size, args.max_rows)
            .map_err(|e| e.to_string())?;
        let cancel = ctx.ct.clone();
        let progress = McpProgress::new(&ctx);
        let result = crate::upload::upload(&self.app, opts, &progress, &cancel).await;
        progress.finish().await;
        result.map(Json).map_err(|e| e.to_string())
    }
}
