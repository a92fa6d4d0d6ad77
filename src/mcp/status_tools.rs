//! Tools that report state: `connection_status`, `sync_status`.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};

use super::{MeterSyncServer, NoArgs};
use crate::db::ConnectionStatus;
use crate::status::SyncStatus;

/// Arguments of `sync_status`.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncStatusArgs {
    /// Failing meters per page.
    #[schemars(description = format!("Failing meters to list, 1 to {} (default {}).", crate::status::FAILING_MAX_LIMIT, crate::status::FAILING_LIST_CAP))]
    pub failing_limit: Option<i64>,
    /// The failing_next_cursor of the previous sync_status; omit for the worst meters first.
    pub failing_cursor: Option<String>,
}

fn sync_status_description() -> String {
    format!(
        "Local sync state: readings waiting for upload (count, oldest age), the last run of each operation, and meter health \
with one page of failing meters, worst first (failing_limit, default {}, at most {}; pass failing_next_cursor back as \
failing_cursor for the rest). Reads the local database only. Writes nothing.",
        crate::status::FAILING_LIST_CAP,
        crate::status::FAILING_MAX_LIMIT
    )
}

/// `connection_status`: both databases, and the BACnet client.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ConnectionReport {
    /// The databases (local, remote).
    #[serde(flatten)]
    pub db: ConnectionStatus,
    /// The BACnet/IP client: socket, counters, BBMD registration.
    pub bacnet: crate::bacnet::BacnetStatus,
}

#[tool_router(router = status_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Per database: connected, latency, server version, pool occupancy,
    /// retries so far and the last error.
    #[tool(
        description = "Check both databases now (one attempt each, no retries): connected, latency_ms, server_version, pool size/available/max, connection retries so far, last error; and the BACnet client (socket buffer, dropped datagrams, BBMD registration). Writes nothing.",
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn connection_status(
        &self,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<Json<ConnectionReport>, String> {
        let db = self.app.db.status().await;
        let bacnet = crate::bacnet::status(
            self.app.bacnet_if_bound().as_deref(),
            self.app.config.bacnet_bbmd,
        );
        Ok(Json(ConnectionReport { db, bacnet }))
    }

    /// Backlog, last runs and meter health from the local database.
    #[tool(
        description = sync_status_description(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn sync_status(
        &self,
        Parameters(a): Parameters<SyncStatusArgs>,
    ) -> Result<Json<SyncStatus>, String> {
        let page = crate::status::FailingPage {
            limit: a.failing_limit,
            cursor: a.failing_cursor,
        };
        let limits = crate::status::GrowthLimits::from_config(&self.app.config);
        crate::status::sync_status(&self.app.db, &page, &limits)
            .await
            .map(Json)
            .map_err(|e| e.to_string())
    }
}
