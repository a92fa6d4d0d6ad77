//! The prompts for the two common jobs: `diagnose_site` (the order of calls
//! and what to look at) and `onboard_meter` (discover -> describe -> draft
//! points -> where the row goes). Their text names the real tools and
//! arguments, and the running site's SITE_ID and BACnet timing.

use rmcp::model::{GetPromptResult, Prompt, PromptArgument, PromptMessage, Role};
use rmcp::ErrorData as McpError;

use crate::config::Config;

/// The prompts, as `prompts/list` shows them.
pub fn list() -> Vec<Prompt> {
    vec![
        Prompt::new(
            "diagnose_site",
            Some("Check this site step by step: databases, backlog, last runs, failing meters, and what each finding means"),
            Some(vec![PromptArgument::new("meter_id")
                .with_description("Focus on this meter (optional)")
                .with_required(false)]),
        ),
        Prompt::new(
            "onboard_meter",
            Some("Add a BACnet meter to this site: discover it, describe its objects, draft its points, and where its row goes"),
            Some(vec![
                PromptArgument::new("address")
                    .with_description("The meter's BACnet/IP address, host[:port], or a broadcast address to search")
                    .with_required(true),
                PromptArgument::new("tenant_id")
                    .with_description("The tenant billed for it (optional)")
                    .with_required(false),
            ]),
        ),
    ]
}

fn arg(args: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<String> {
    match args.get(name)? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The prompt `name` with `args`.
///
/// Fails on an unknown prompt or a missing required argument.
pub fn get(
    name: &str,
    args: &serde_json::Map<String, serde_json::Value>,
    config: &Config,
) -> Result<GetPromptResult, McpError> {
    let site = config
        .site_id
        .clone()
        .unwrap_or_else(|| "(SITE_ID not set: all sites)".into());
    let timeout_ms = config.bacnet_timeout.as_millis();
    let tries = config.bacnet_retries.saturating_add(1);
    let text = match name {
        "diagnose_site" => {
            let focus = match arg(args, "meter_id") {
                Some(id) => format!(" Focus on meter {id}, but check the site first: a site-wide fault explains a meter's."),
                None => String::new(),
            };
            format!(
"Diagnose metering site {site}.{focus} Call the tools in this order and stop to explain when one finding explains the rest.
1. connection_status: both databases connected? A remote that is down or slow only delays uploads (readings wait locally); a local database that is down stops collection.
2. sync_status: backlog.count and backlog.oldest_age_s (a backlog older than a few upload intervals means uploads fail: read last_runs for kind upload, its status and error); every last_runs entry whose status is failed; health.failing and failing_meters (page with failing_limit and failing_cursor when there are many).
3. list_meters {{\"health\": \"failing\", \"compact\": true}}: the failing meters, their address and last_error. Group them: many meters on one subnet or tenant failing together is a network fault, not a meter fault.
4. For one failing meter: read_meter {{\"meter_id\": ID}}. \"no reply\" means power, network or address (each silent meter costs {timeout_ms} ms x {tries} tries); discover_devices {{\"address\": \"ITS_ADDRESS\"}} shows whether anything answers there and with which device instance (a different instance means the address now points at another device). A per-point error (unknown-object) means its points JSON names objects the device lacks: describe_device {{\"address\": \"ITS_ADDRESS\"}} lists what it has.
5. query_readings {{\"meter_ids\": [ID], \"from\": \"(24 hours ago, RFC 3339)\", \"to\": \"(now)\", \"bucket\": \"1h\"}}: when its readings stopped, and whether an energy counter's delta is plausible (a negative step shows as resets).
Finish with: what is wrong, since when, what it costs (readings not collected or not uploaded), and the next action for a person on site. Change nothing unless asked: run_sync_cycle, collect_meters and upload_readings write."
            )
        }
        "onboard_meter" => {
            let address = arg(args, "address").ok_or_else(|| {
                McpError::invalid_params(
                    "onboard_meter needs the argument address (host[:port])",
                    None,
                )
            })?;
            let tenant = arg(args, "tenant_id").unwrap_or_else(|| "TENANT_ID".into());
            format!(
"Onboard the BACnet meter at {address} on site {site}.
1. discover_devices {{\"address\": \"{address}\"}}: the device instance and address that answer (none: check power, cabling, the address and port; each try waits {timeout_ms} ms).
2. describe_device {{\"address\": \"ADDRESS_FROM_STEP_1\", \"device_instance\": INSTANCE}}: its objects with names, units, present values and status flags. Follow next_cursor until it is null; a page's points_draft holds its meter-relevant objects.
3. Draft the points: join the pages' points_draft arrays and keep what the tenant is billed on (an energy counter in kWh first, e.g. {{\"name\": \"energy_kwh\", \"object\": \"analog-input:1\"}}), plus power, voltage or current if wanted. Names must be unique; an object whose status_flags show fault or out_of_service should be questioned first.
4. Where the row goes: metersync never writes configuration; a person adds one row to the central database's meters table: id (a new unique bigint), site_id '{site}', tenant_id {tenant}, name, device_instance INSTANCE, address 'ADDRESS_FROM_STEP_1', points (the JSON array from step 3), active true. Show them the INSERT statement to run.
5. After it is added: download_meters {{\"dry_run\": true}} should list the meter as inserted; then download_meters, collect_meters {{\"meter_ids\": [ID], \"dry_run\": true}} (every point read, none in point_errors), and read_meter {{\"meter_id\": ID}} to compare values with the meter's display."
            )
        }
        other => {
            return Err(McpError::invalid_params(
                format!("no prompt {other:?}; the prompts are diagnose_site and onboard_meter"),
                None,
            ))
        }
    };
    Ok(
        GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).with_description(
            match name {
                "diagnose_site" => "Diagnose this site",
                _ => "Onboard a meter",
            },
        ),
    )
}
