//! Tools over the readings the upload set aside: `list_quarantine`
//! (read-only) and `requeue_readings` (writes). Thin: the bounds and the
//! rules live in [`crate::quarantine`].

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::MeterSyncServer;
use crate::quarantine::{self, Action, RequeueReport, Selection, Shelf, ShelfPage};

/// Arguments of `list_quarantine`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuarantineArgs {
    /// List the conflicts (readings the remote already holds with another
    /// value, with both values) instead of the quarantine (readings the
    /// remote refused as bad data, with its error). Default false.
    pub conflicts: Option<bool>,
    /// Rows per page, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page; omit for the first page.
    pub cursor: Option<String>,
}

/// Arguments of `requeue_readings`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequeueArgs {
    /// The ids to act on (from list_quarantine), 1 to 10000 of them. Give
    /// either ids or all.
    pub ids: Option<Vec<i64>>,
    /// Act on every row of the table (oldest first, at most 10000 per call;
    /// `remaining` says what is left). Give either ids or all.
    pub all: Option<bool>,
    /// Act on the conflicts table instead of the quarantine. Default false.
    pub conflicts: Option<bool>,
    /// Conflicts only: delete the chosen conflict records instead of
    /// requeueing them, accepting the remote's value. Default false.
    pub discard: Option<bool>,
}

#[tool_router(router = quarantine_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Pages through the quarantined readings or the conflicts.
    #[tool(
        description = "List the readings the upload set aside in the local database: the quarantine (rows the central database refused as bad data, each with its error) or, with conflicts: true, the conflicts (rows the central database already holds with the same meter, point and time but another value, with both values). Paged by id: pass next_cursor back as cursor; total counts the whole table. Writes nothing. Use requeue_readings to send rows again.",
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_quarantine(
        &self,
        Parameters(a): Parameters<ListQuarantineArgs>,
    ) -> Result<Json<ShelfPage>, String> {
        quarantine::list(
            &self.app.db,
            Shelf::from_conflicts(a.conflicts.unwrap_or(false)),
            a.limit,
            a.cursor.as_deref(),
        )
        .await
        .map(Json)
        .map_err(|e| e.to_string())
    }

    /// Moves chosen set-aside readings back into the upload backlog.
    #[tool(
        description = "Move readings from the quarantine (or, with conflicts: true, from the conflicts) back into the local upload backlog, so the next upload_readings sends them again; each row moves exactly once, in one local transaction (a row whose meter, point and time is already waiting in the backlog stays where it is, listed in kept). Fix the cause first (the remote constraint or the data), or the row comes back. A requeued conflict never overwrites the central database: it uploads only if the central row was removed, otherwise it returns to the conflicts. With conflicts: true and discard: true the chosen conflict records are deleted instead, accepting the central value. Choose rows by ids (from list_quarantine) or all: true (10000 per call).",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn requeue_readings(
        &self,
        Parameters(a): Parameters<RequeueArgs>,
    ) -> Result<Json<RequeueReport>, String> {
        let selection =
            Selection::from_args(a.ids, a.all.unwrap_or(false)).map_err(|e| e.to_string())?;
        let action = if a.discard.unwrap_or(false) {
            Action::Discard
        } else {
            Action::Requeue
        };
        quarantine::requeue(
            &self.app.db,
            Shelf::from_conflicts(a.conflicts.unwrap_or(false)),
            selection,
            action,
        )
        .await
        .map(Json)
        .map_err(|e| e.to_string())
    }
}
