//! `query_readings`: readings history, raw or bucketed, over MCP. The rules
//! (bounds, defaults, counters) live in [`crate::readings`]; every number in
//! the description and schema below is formatted from its constant.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::MeterSyncServer;
use crate::readings::{
    ReadingsPage, ReadingsQuery, COUNTER_NAME_SUFFIXES, COUNTER_UNITS, DEFAULT_LIMIT, MAX_BUCKETS,
    MAX_BUCKET_S, MAX_LIMIT, MAX_METERS, MAX_POINTS, MAX_RANGE_DAYS, MAX_RESULT_BYTES,
    MIN_BUCKET_S, REMOTE_DEADLINE_MS, STATEMENT_TIMEOUT_MS,
};

/// Arguments of `query_readings`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryReadingsArgs {
    /// Meter ids to read (see list_meters).
    #[schemars(description = format!("Meter ids to read, 1 to {MAX_METERS} (see list_meters)."))]
    pub meter_ids: Vec<i64>,
    /// Point names to read; all points when omitted.
    #[schemars(description = format!("Point names to read, at most {MAX_POINTS} (e.g. [\"energy_kwh\"]); every point of the meters when omitted."))]
    pub points: Option<Vec<String>>,
    /// Start of the range, inclusive: RFC 3339 (2026-11-28T00:00:00Z) or a date (2026-11-28, UTC midnight).
    pub from: String,
    /// End of the range, exclusive.
    #[schemars(description = format!("End of the range, exclusive, at most {MAX_RANGE_DAYS} days after from; RFC 3339 or a date like from."))]
    pub to: String,
    /// Aggregate by this interval; raw readings when omitted.
    #[schemars(description = format!("Aggregate by this interval: a whole number and s, m, h, d or w (15m, 1h, 1d), {MIN_BUCKET_S} s to {MAX_BUCKET_S} s, at most {MAX_BUCKETS} buckets in the range. Omit for raw readings."))]
    pub bucket: Option<String>,
    /// Rows per page.
    #[schemars(description = format!("Rows (readings or buckets) per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}). A page also stops before {MAX_RESULT_BYTES} bytes of rows."))]
    pub limit: Option<i64>,
    /// The next_cursor of the previous page (with the same other arguments); omit for the first page.
    pub cursor: Option<String>,
}

/// The tool's description, with the engine's real bounds.
fn description() -> String {
    format!(
        "Readings of one or more meters over a time range: what a meter recorded (e.g. what meter 12 used yesterday). \
Reads the central database (uploaded readings, uploaded: true) and the local backlog not yet uploaded (uploaded: false). \
Raw readings, or with bucket (e.g. \"1h\", \"1d\") one row per meter, point, interval and side: energy counters \
(units {units}; or unitless points whose name ends in {suffixes}) give delta, the consumption in the interval \
(sum of the non-negative steps between readings; resets counts the negative steps skipped) and last; other points give avg, min, max. \
A bucket with readings on both sides appears twice (uploaded true and false): add the deltas. Buckets are aligned to UTC. \
At most {MAX_LIMIT} rows and about {MAX_RESULT_BYTES} bytes per page; pass next_cursor back as cursor. \
Each statement runs read-only with a {STATEMENT_TIMEOUT_MS} ms timeout; when the central database is not configured, down, \
or silent for {REMOTE_DEADLINE_MS} ms, the local backlog is still returned and sources.remote says why. Writes nothing.",
        units = COUNTER_UNITS.join(", "),
        suffixes = COUNTER_NAME_SUFFIXES.join(", "),
    )
}

#[tool_router(router = readings_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Readings history from the remote and the local backlog.
    #[tool(
        description = description(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn query_readings(
        &self,
        Parameters(a): Parameters<QueryReadingsArgs>,
    ) -> Result<Json<ReadingsPage>, String> {
        let q = ReadingsQuery {
            meter_ids: a.meter_ids,
            points: a.points.unwrap_or_default(),
            from: a.from,
            to: a.to,
            bucket: a.bucket,
            limit: a.limit,
            cursor: a.cursor,
        };
        crate::readings::query_readings(&self.app.db, &q)
            .await
            .map(Json)
            .map_err(|e| e.to_string())
    }
}
