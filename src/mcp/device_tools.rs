//! `describe_device`: a BACnet device's objects and a drafted `points` JSON.
//! The reading and drafting live in [`crate::bacnet::describe`].

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::MeterSyncServer;
use crate::bacnet::describe::{DeviceDescription, DEFAULT_PAGE, MAX_PAGE};

/// Arguments of `describe_device`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeArgs {
    /// The device's BACnet/IP address, host[:port] (default port 47808), as discover_devices lists it.
    pub address: String,
    /// The device instance, if known (skips the Who-Is that finds it).
    pub device_instance: Option<u32>,
    /// Objects per page.
    #[schemars(description = format!("Objects per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE})."))]
    pub limit: Option<u32>,
    /// The next_cursor of the previous page for the same address; omit for the first page.
    pub cursor: Option<String>,
}

fn description(timeout_ms: u128, tries: u32) -> String {
    format!(
        "Read a BACnet device's object list: each object's type:instance, name, units, present value and status flags, \
a page of up to {MAX_PAGE} objects at a time (default {DEFAULT_PAGE}; pass next_cursor back as cursor), and points_draft: \
a ready-to-use `points` JSON for the meter-relevant objects of the page (analog/binary/multi-state input and value, \
accumulator, integer, positive-integer and large-analog values), named from the object names and units (energy in kWh -> energy_kwh). \
Put the drafts of all pages, trimmed to the points you want, in the meter's `points` column of the central meters table, \
with this device_instance and address; download_meters then brings the meter to the site. \
A page costs one Who-Is (unless device_instance is given) and about one ReadProperty per object plus a few ReadPropertyMultiple; \
a silent device costs {timeout_ms} ms x {tries} tries per request (BACNET_TIMEOUT_MS x (1 + BACNET_RETRIES)). Stores nothing."
    )
}

#[tool_router(router = device_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// A device's objects and a drafted points JSON.
    #[tool(
        description = description(0, 0),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn describe_device(
        &self,
        Parameters(a): Parameters<DescribeArgs>,
    ) -> Result<Json<DeviceDescription>, String> {
        crate::devices::describe(
            &self.app,
            &a.address,
            a.device_instance,
            a.limit,
            a.cursor.as_deref(),
        )
        .await
        .map(Json)
        .map_err(|e| e.to_string())
    }
}

/// The description with the running configuration's timeout and tries.
pub(super) fn describe_description(config: &crate::config::Config) -> String {
    description(
        config.bacnet_timeout.as_millis(),
        config.bacnet_retries.saturating_add(1),
    )
}
