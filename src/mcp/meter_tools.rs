//! Tools over the local meter list: `list_meters`.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::MeterSyncServer;
use crate::meters::{
    MeterFilter, MeterPage, DEFAULT_LIMIT, MAX_IDS, MAX_LIMIT, MAX_NAME_FILTER, MAX_PAGE_BYTES,
};

/// Arguments of `list_meters`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMetersArgs {
    /// List only meters that are collected (default true).
    pub active_only: Option<bool>,
    /// Meters per page.
    #[schemars(description = format!("Meters per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}); a page also stops before {MAX_PAGE_BYTES} bytes of meters (use compact for more per page)."))]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page; omit for the first page.
    pub cursor: Option<String>,
    /// Only this tenant's meters.
    pub tenant_id: Option<i64>,
    /// Only meters whose name contains this text (case-insensitive).
    #[schemars(description = format!("Only meters whose name contains this text (case-insensitive, at most {MAX_NAME_FILTER} characters)."))]
    pub name_contains: Option<String>,
    /// Only these meter ids.
    #[schemars(description = format!("Only these meter ids (at most {MAX_IDS})."))]
    pub ids: Option<Vec<i64>>,
    /// Only meters in this health: failing, ok or never (collected).
    pub health: Option<String>,
    /// Leave out each meter's points (point_count stays), so a page holds more meters (default false).
    pub compact: Option<bool>,
}

#[tool_router(router = meter_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Pages through the local meters with their points and health.
    #[tool(
        description = "List the site's meters from the local database (as last downloaded): id, name, tenant, BACnet device instance and address, configured points, and collection health. Filters (combined with AND): tenant_id, name_contains, ids, health (failing, ok, never); compact leaves the points out. Paged: pass next_cursor back as cursor with the same filters; `remaining` counts the matching meters after this page; every page stays under 40 KB. Writes nothing.",
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_meters(
        &self,
        Parameters(a): Parameters<ListMetersArgs>,
    ) -> Result<Json<MeterPage>, String> {
        let filter = MeterFilter {
            active_only: a.active_only.unwrap_or(true),
            tenant_id: a.tenant_id,
            name_contains: a.name_contains,
            ids: a.ids.unwrap_or_default(),
            health: a.health,
            compact: a.compact.unwrap_or(false),
        };
        crate::meters::list_meters(&self.app.db, &filter, a.limit, a.cursor.as_deref())
            .await
            .map(Json)
            .map_err(|e| e.to_string())
    }
}
