//! An MCP client that drives metersync over stdio and prints each tool's
//! result: the quickest way to see every tool work.
//!
//! ```sh
//! cargo run --example mcp_client                      # against `metersync demo --serve`
//! cargo run --example mcp_client -- serve             # against your configured site
//! ```
//!
//! The server binary is the one cargo built next to this example
//! (`target/<profile>/metersync`), or `$METERSYNC_BIN`.

use std::process::Stdio;

use anyhow::Context;
use rmcp::model::CallToolRequestParams;
use rmcp::ServiceExt;
use serde_json::json;

fn server_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Ok(p) = std::env::var("METERSYNC_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("cannot locate the target directory")?;
    Ok(dir.join("metersync"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        args = vec!["demo".into(), "--serve".into()];
    }
    let bin = server_binary()?;
    eprintln!("starting {} {}", bin.display(), args.join(" "));
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(&args);
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {} (build it with `cargo build`)", bin.display()))?;
    let client = ().serve(transport).await.context("MCP handshake")?;
    if let Some(info) = client.peer_info() {
        if let Some(imp) = &info.server_info {
            println!("server: {} {}", imp.name, imp.version);
        }
    }
    let tools = client.list_all_tools().await?;
    println!(
        "tools: {}",
        tools
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let prompts = client.list_all_prompts().await?;
    println!(
        "prompts: {}",
        prompts
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let now = chrono::Utc::now().date_naive();
    let today = now.to_string();
    let tomorrow = (now + chrono::Days::new(1)).to_string();
    let calls = [
        ("connection_status", json!({})),
        ("sync_status", json!({})),
        ("download_tenants", json!({"dry_run": true})),
        ("download_tenants", json!({})),
        ("download_meters", json!({})),
        ("list_meters", json!({"limit": 2})),
        ("read_meter", json!({"meter_id": 101})),
        (
            "discover_devices",
            json!({"address": "127.0.0.1:47808", "timeout_ms": 500}),
        ),
        ("collect_meters", json!({})),
        ("upload_readings", json!({"batch_size": 5000})),
        ("run_sync_cycle", json!({})),
        ("sync_status", json!({"failing_limit": 5})),
        ("list_meters", json!({"health": "failing", "compact": true})),
        (
            "query_readings",
            json!({"meter_ids": [101], "points": ["energy_kwh", "power_kw"], "from": today, "to": tomorrow, "bucket": "1h"}),
        ),
        (
            "query_readings",
            json!({"meter_ids": [101], "points": ["energy_kwh"], "from": today, "to": tomorrow, "limit": 3}),
        ),
    ];
    for (tool, arguments) in calls {
        if !tools.iter().any(|t| t.name == tool) {
            println!("\n== {tool}: not served (read-only mode?)");
            continue;
        }
        let mut params = CallToolRequestParams::new(tool);
        if let serde_json::Value::Object(map) = &arguments {
            params = params.with_arguments(map.clone());
        }
        println!("\n== {tool} {arguments}");
        let result = client.call_tool(params).await?;
        if result.is_error == Some(true) {
            for c in &result.content {
                if let Some(t) = c.as_text() {
                    println!("error: {}", t.text);
                }
            }
        } else if let Some(s) = &result.structured_content {
            println!("{}", serde_json::to_string_pretty(s)?);
        }
    }
    // describe_device on meter 101's device (the demo's addresses are
    // picked at start).
    let m = client
        .call_tool(
            CallToolRequestParams::new("list_meters").with_arguments(
                json!({"ids": [101], "compact": true})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await?;
    let address = m
        .structured_content
        .as_ref()
        .and_then(|s| s["meters"][0]["address"].as_str().map(str::to_string))
        .unwrap_or_default();
    let arguments = json!({"address": address, "limit": 3});
    println!("\n== describe_device {arguments}");
    let d = client
        .call_tool(
            CallToolRequestParams::new("describe_device")
                .with_arguments(arguments.as_object().cloned().unwrap_or_default()),
        )
        .await?;
    match &d.structured_content {
        Some(s) => println!("{}", serde_json::to_string_pretty(s)?),
        None => println!("error: {:?}", d.content),
    }
    client.cancel().await?;
    Ok(())
}
