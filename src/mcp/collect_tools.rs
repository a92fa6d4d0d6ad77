//! Tools that talk to meters: `collect_meters`, `read_meter`,
//! `discover_devices`.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::progress::McpProgress;
use super::MeterSyncServer;
use crate::collect::{CollectOptions, CollectReport, LiveRead};

use crate::bacnet::{Discovery, DISCOVER_CAP};

/// Arguments of `collect_meters`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectArgs {
    /// Collect only these meter ids (each must be an active meter); all active meters when omitted.
    pub meter_ids: Option<Vec<i64>>,
    /// Read the meters but store nothing (default false).
    pub dry_run: Option<bool>,
}

/// Arguments of `read_meter`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadMeterArgs {
    /// The meter's id (see list_meters).
    pub meter_id: i64,
}

/// Arguments of `discover_devices`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoverArgs {
    /// Where to send Who-Is: a unicast device `host:port` or a broadcast address such as 192.168.1.255:47808 (default 255.255.255.255:47808).
    pub address: Option<String>,
    /// How long to wait for I-Am answers, 100 to 60000 ms (default 3000).
    pub timeout_ms: Option<u64>,
}

/// `collect_meters`' description with the running BACnet timing: what a
/// silent meter costs is the timeout times the tries, not one timeout.
fn collect_description(timeout_ms: u128, tries: u32, concurrency: usize) -> String {
    format!(
        "Read the site's active meters over BACnet/IP and store the readings locally for upload. Optional meter_ids limits the run; \
dry_run reads without storing. A meter that does not answer costs BACNET_TIMEOUT_MS x (1 + BACNET_RETRIES) = {timeout_ms} ms x {tries} tries \
= {} ms before it is listed in failures; the others are still collected, {concurrency} meters at a time (COLLECT_CONCURRENCY). \
Sends progress per meter when the client gives a progress token.",
        timeout_ms.saturating_mul(u128::from(tries))
    )
}

/// `discover_devices`' description with the running BACnet timing.
fn discover_description(timeout_ms: u128) -> String {
    format!(
        "Find BACnet devices: send Who-Is to a unicast or broadcast address and list the devices that answer with I-Am \
(instance, address, vendor, name; at most {DISCOVER_CAP} listed). Waits timeout_ms for answers, then reads each device's \
names (a device that does not answer that read costs up to {timeout_ms} ms per try). Next: describe_device on an address \
to see its objects and draft its points. Stores nothing."
    )
}

/// `read_meter`'s description with the running BACnet timing.
fn read_meter_description(timeout_ms: u128, tries: u32) -> String {
    format!(
        "Read one meter live over BACnet/IP and return each configured point's value, unit or error. \
A meter that does not answer costs {timeout_ms} ms x {tries} tries = {} ms (BACNET_TIMEOUT_MS x (1 + BACNET_RETRIES)). Stores nothing.",
        timeout_ms.saturating_mul(u128::from(tries))
    )
}

/// The descriptions that depend on the configuration.
pub(super) fn configured(config: &crate::config::Config) -> [(&'static str, String); 3] {
    let timeout_ms = config.bacnet_timeout.as_millis();
    let tries = config.bacnet_retries.saturating_add(1);
    [
        ("read_meter", read_meter_description(timeout_ms, tries)),
        (
            "collect_meters",
            collect_description(timeout_ms, tries, config.collect_concurrency),
        ),
        ("discover_devices", discover_description(timeout_ms)),
    ]
}

#[tool_router(router = collect_router, vis = "pub(super)")]
impl MeterSyncServer {
    /// Reads meters into the local backlog.
    #[tool(
        description = collect_description(3000, 3, 4),
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn collect_meters(
        &self,
        Parameters(a): Parameters<CollectArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CollectReport>, String> {
        let progress = McpProgress::new(&ctx);
        let opts = CollectOptions {
            meter_ids: a.meter_ids,
            dry_run: a.dry_run.unwrap_or(false),
        };
        let r = crate::collect::collect(&self.app, opts, &progress, &ctx.ct).await;
        progress.finish().await;
        r.map(Json).map_err(|e| e.to_string())
    }

    /// A live read of one meter, stored nowhere.
    #[tool(
        description = read_meter_description(3000, 3),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn read_meter(
        &self,
        Parameters(a): Parameters<ReadMeterArgs>,
    ) -> Result<Json<LiveRead>, String> {
        crate::collect::read_live(&self.app, a.meter_id)
            .await
            .map(Json)
            .map_err(|e| e.to_string())
    }

    /// Who-Is on the network.
    #[tool(
        description = discover_description(3000),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn discover_devices(
        &self,
        Parameters(a): Parameters<DiscoverArgs>,
    ) -> Result<Json<Discovery>, String> {
        crate::devices::discover(&self.app, a.address.as_deref(), a.timeout_ms)
            .await
            .map(Json)
            .map_err(|e| e.to_string())
    }
}
