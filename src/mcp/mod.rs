//! The MCP server (rmcp, stdio): a thin layer that maps tool arguments to
//! the engine functions and their results to structured content.
//!
//! Guarantees:
//! - every tool has a described input schema (unknown fields rejected), an
//!   output schema and structured content;
//! - a failing tool, and a call with invalid arguments, returns `isError`
//!   with a message a person can act on; the server keeps serving;
//! - in read-only mode only the tools that write nothing are listed and
//!   callable;
//! - nothing but protocol reaches stdout (see [`stdio`]);
//! - descriptions whose numbers depend on the configuration (the BACnet
//!   timeout and tries) are written at start from the running values;
//! - the prompts `diagnose_site` and `onboard_meter` (`prompts.rs`) name only
//!   tools that exist;
//! - the long tools run as MCP tasks for clients that declare the tasks
//!   extension ([`tasks`]), and as plain calls for the others;
//! - after `logging/setLevel`, log events at or above the level reach the
//!   client as notifications ([`log_forward`]).

mod collect_tools;
mod cycle_tools;
mod device_tools;
mod download_tools;
pub mod log_forward;
mod meter_tools;
pub mod progress;
mod prompts;
mod quarantine_tools;
mod readings_tools;
mod status_tools;
pub mod stdio;
pub mod tasks;
mod upload_tools;

use std::sync::Arc;

use rmcp::handler::server::tool::{ToolCallContext, ToolRouter};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    ErrorCode, GetPromptRequestParams, GetPromptResponse, GetTaskParams, GetTaskResult,
    Implementation, ListPromptsResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ServerCapabilities, ServerConfig, Tool, UpdateTaskParams,
};
#[allow(deprecated)]
use rmcp::model::{LoggingLevel, SetLevelRequestParams};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::app::App;

/// The tools that write nothing, served in read-only mode.
pub const READ_ONLY_TOOLS: &[&str] = &[
    "connection_status",
    "sync_status",
    "list_meters",
    "read_meter",
    "discover_devices",
    "list_quarantine",
    "query_readings",
    "describe_device",
];

/// What the server tells an assistant about itself and the order of work.
pub const INSTRUCTIONS: &str =
    "metersync moves energy-meter readings from a site's BACnet/IP meters \
into a local PostgreSQL and uploads them to the customer's central PostgreSQL. \
Start with connection_status (are both databases reachable?) and sync_status (backlog, last runs, \
failing meters). The normal order of work is: download_tenants, download_meters (configuration \
from the central database), collect_meters (read the meters), upload_readings (send the backlog); \
run_sync_cycle does all four in that order. Use dry_run to preview downloads and collections. \
read_meter and discover_devices talk to meters live and store nothing. Readings are billing data: \
uploads are exactly-once, so re-running an upload is always safe. query_readings answers what a meter \
recorded or used over a time range (raw or per interval); describe_device lists a device's objects and drafts \
its points JSON; list_meters filters by tenant, name, ids and health. The prompts diagnose_site and \
onboard_meter give the order of calls for those two jobs. Clients with the tasks extension get \
upload_readings, collect_meters and run_sync_cycle as tasks.";

/// The resource holding the configuration (passwords redacted).
pub const CONFIG_URI: &str = "metersync://config";
/// The resource holding the recent `sync_runs`.
pub const RUNS_URI: &str = "metersync://sync_runs";

/// Arguments of a tool that takes none.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// The metersync MCP server.
#[derive(Clone)]
pub struct MeterSyncServer {
    app: Arc<App>,
    read_only: bool,
    tool_router: ToolRouter<Self>,
    /// Tasks of the clients that opt in (see [`tasks`]).
    tasks: rmcp::task_manager::TaskManager,
}

impl MeterSyncServer {
    /// Every tool, before the read-only filter. Each group of tools lives in
    /// its own file with its own router.
    fn routers() -> ToolRouter<Self> {
        Self::status_router()
            + Self::meter_router()
            + Self::download_router()
            + Self::upload_router()
            + Self::collect_router()
            + Self::cycle_router()
            + Self::quarantine_router()
            + Self::readings_router()
            + Self::device_router()
    }

    /// A server over `app`; `read_only` hides every tool that writes.
    pub fn new(app: Arc<App>, read_only: bool) -> Self {
        let mut tool_router = Self::routers();
        configured_descriptions(&mut tool_router, &app.config);
        if read_only {
            let names: Vec<String> = tool_router
                .list_all()
                .into_iter()
                .map(|t| t.name.to_string())
                .filter(|n| !READ_ONLY_TOOLS.contains(&n.as_str()))
                .collect();
            for n in names {
                tool_router.remove_route(&n);
            }
        }
        MeterSyncServer {
            app,
            read_only,
            tool_router,
            tasks: rmcp::task_manager::TaskManager::new(),
        }
    }
}

// `logging` is deprecated by SEP-2577 but clients such as the MCP Inspector
// still send logging/setLevel, and fail when it is not answered.
#[allow(deprecated)]
impl ServerHandler for MeterSyncServer {
    fn get_info(&self) -> ServerConfig {
        let mut instructions = INSTRUCTIONS.to_string();
        if self.read_only {
            instructions.push_str(
                " This server runs read-only: only the tools that write nothing are available.",
            );
        }
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .enable_tasks()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("metersync", env!("CARGO_PKG_VERSION")))
        .with_instructions(instructions)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        if self.read_only
            && !READ_ONLY_TOOLS.contains(&name.as_str())
            && Self::routers().has_route(&name)
        {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "{name} writes data and this server runs read-only (--read-only or METERSYNC_READ_ONLY=1); restart it without read-only mode to use {name}"
            ))])
            .into());
        }
        let arguments = request.arguments.clone().unwrap_or_default();
        if tasks::wanted(&name, &context) {
            if let Some(detail) = explain_arguments(&name, &arguments) {
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "invalid arguments for {name}: {detail}"
                ))])
                .into());
            }
            return Ok(CallToolResponse::Task(tasks::spawn(self, request, context)));
        }
        let tcc = ToolCallContext::new(self, request, context);
        match self.tool_router.call(tcc).await {
            // Bad arguments are the caller's to fix: answer with a tool error
            // the assistant can read, not a protocol error it may hide.
            Err(e) if e.code == ErrorCode::INVALID_PARAMS => {
                let detail =
                    explain_arguments(&name, &arguments).unwrap_or_else(|| e.message.to_string());
                Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "invalid arguments for {name}: {detail}"
                ))])
                .into())
            }
            // rmcp already turns a failed deserialization into a tool error;
            // name the argument at fault in it.
            Ok(CallToolResponse::Complete(r))
                if r.is_error == Some(true)
                    && r.content.iter().any(|c| {
                        c.as_text()
                            .is_some_and(|t| t.text.starts_with("failed to deserialize parameters"))
                    }) =>
            {
                let detail = explain_arguments(&name, &arguments)
                    .unwrap_or_else(|| "the arguments do not match the tool's input schema".into());
                Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "invalid arguments for {name}: {detail}"
                ))])
                .into())
            }
            other => other,
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tool_router.list_all()))
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.tasks
            .get_task(&request.task_id)
            .map(GetTaskResult::new)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.cancel_task(&request.task_id)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(prompts::list()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        prompts::get(&request.name, &args, &self.app.config).map(GetPromptResponse::Complete)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router.get(name).cloned()
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(CONFIG_URI, "configuration")
                .with_description("The running configuration, passwords redacted")
                .with_mime_type("application/json"),
            Resource::new(RUNS_URI, "sync_runs")
                .with_description(
                    "The 50 most recent operations: kind, start, end, status, counts, error",
                )
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let body = match request.uri.as_str() {
            CONFIG_URI => self.app.config.redacted_json(),
            RUNS_URI => serde_json::Value::Array(
                crate::runs::recent(&self.app.db, 50)
                    .await
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?,
            ),
            other => {
                return Err(McpError::resource_not_found(
                    format!("no resource {other}; the resources are {CONFIG_URI} and {RUNS_URI}"),
                    None,
                ))
            }
        };
        let text = serde_json::to_string_pretty(&body)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri.clone())]).into())
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let level = match request.level {
            LoggingLevel::Debug => "debug",
            LoggingLevel::Info | LoggingLevel::Notice => "info",
            LoggingLevel::Warning => "warn",
            _ => "error",
        };
        crate::logging::set_level(level);
        log_forward::set_peer_level(context.peer.clone(), request.level);
        tracing::info!(level, "log level changed by the MCP client");
        Ok(())
    }
}

/// Descriptions whose numbers come from the running configuration (the
/// BACnet timeout and tries), so what a model reads is what it will get.
fn configured_descriptions(
    router: &mut ToolRouter<MeterSyncServer>,
    config: &crate::config::Config,
) {
    let set = |router: &mut ToolRouter<MeterSyncServer>, name: &str, text: String| {
        if let Some(r) = router.map.get_mut(name) {
            r.attr.description = Some(text.into());
        }
    };
    set(
        router,
        "describe_device",
        device_tools::describe_description(config),
    );
    for (name, text) in collect_tools::configured(config) {
        set(router, name, text);
    }
}

/// Names the argument at fault: deserializes `arguments` as the tool's
/// argument type with the path of the failure (serde's own message does not
/// say which field).
fn explain_arguments(
    tool: &str,
    arguments: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Option<String> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(_) => None,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                Some(if path == "." {
                    inner
                } else {
                    format!("{path}: {inner}")
                })
            }
        }
    }
    let v = serde_json::Value::Object(arguments.clone());
    match tool {
        "upload_readings" => check::<upload_tools::UploadArgs>(v),
        "download_meters" | "download_tenants" => check::<download_tools::DownloadArgs>(v),
        "list_meters" => check::<meter_tools::ListMetersArgs>(v),
        "collect_meters" => check::<collect_tools::CollectArgs>(v),
        "read_meter" => check::<collect_tools::ReadMeterArgs>(v),
        "discover_devices" => check::<collect_tools::DiscoverArgs>(v),
        "list_quarantine" => check::<quarantine_tools::ListQuarantineArgs>(v),
        "requeue_readings" => check::<quarantine_tools::RequeueArgs>(v),
        "query_readings" => check::<readings_tools::QueryReadingsArgs>(v),
        "describe_device" => check::<device_tools::DescribeArgs>(v),
        "sync_status" => check::<status_tools::SyncStatusArgs>(v),
        _ => check::<NoArgs>(v),
    }
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// stdout could not be taken over for the protocol.
    #[error("cannot set up stdio for MCP: {0}")]
    Stdio(#[from] std::io::Error),
    /// The MCP session could not start.
    #[error("MCP session failed to start: {0}")]
    Init(String),
    /// The MCP session ended abnormally.
    #[error("MCP session ended with an error: {0}")]
    Session(String),
}

/// Serves MCP over stdin/stdout until the client disconnects.
///
/// Fails when stdio cannot be set up or the session breaks.
pub async fn serve_stdio(app: Arc<App>, read_only: bool) -> Result<(), ServeError> {
    use rmcp::ServiceExt;
    let out = stdio::protocol_stdout()?;
    let server = MeterSyncServer::new(app.clone(), read_only);
    let tasks = server.tasks.clone();
    tracing::info!(read_only, "serving MCP over stdio");
    let service = server
        .serve((tokio::io::stdin(), out))
        .await
        .map_err(|e| ServeError::Init(e.to_string()))?;
    let result = service.waiting().await;
    tasks.shutdown();
    app.db.close();
    result
        .map(|_| ())
        .map_err(|e| ServeError::Session(e.to_string()))
}
