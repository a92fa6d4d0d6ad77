//! Tools over the local meter list: `list_meters`.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::MeterSyncServer;
use crate::meters::MeterPage;

/// Arguments of `list_meters`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMetersArgs {
    /// List only meters that are collected (default true).
    pub active_only: Option<bool>,
    /// Meters per page, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page; omit for the first page.
    pub cursor: Option<String>,
}

#[tool_router(router = meter_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Pages through the local meters with their points and health.
    #[tool(
        description = "List the site's meters from the local database (as last downloaded): id, name, tenant, BACnet device instance and address, configured points, and collection health. Paged: pass next_cursor back as cursor; `remaining` counts the meters after this page. Writes nothing.",
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_meters(
        &self,
        Parameters(a): Parameters<ListMetersArgs>,
    ) -> Result<Json<MeterPage>, String> {
        crate::meters::list_meters(
            &self.app.db,
            a.active_only.unwrap_or(true),
            a.limit,
            a.cursor.as_deref(),
        )
        .await
        .map(Json)
        .map_err(|e| e.to_string())
    }
}
