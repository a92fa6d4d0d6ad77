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
//! - nothing but protocol reaches stdout (see [`stdio`]).

pub mod progress;
mod status_tools;
pub mod stdio;
mod upload_tools;

use std::sync::Arc;

use rmcp::handler::server::tool::{ToolCallContext, ToolRouter};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    Tool,
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
uploads are exactly-once, so re-running an upload is always safe.";

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
}

impl MeterSyncServer {
    /// Every tool, before the read-only filter. Each group of tools lives in
    /// its own file with its own router.
    fn routers() -> ToolRouter<Self> {
        Self::status_router() + Self::upload_router()
    }

    /// A server over `app`; `read_only` hides every tool that writes.
    pub fn new(app: Arc<App>, read_only: bool) -> Self {
        let mut tool_router = Self::routers();
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
        let tcc = ToolCallContext::new(self, request, context);
        match self.tool_router.call(tcc).await {
            // Bad arguments are the caller's to fix: answer with a tool error
            // the assistant can read, not a protocol error it may hide.
            Err(e) if e.code == ErrorCode::INVALID_PARAMS => {
                Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "invalid arguments for {name}: {}",
                    e.message
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

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router.get(name).cloned()
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let level = match request.level {
            LoggingLevel::Debug => "debug",
            LoggingLevel::Info | LoggingLevel::Notice => "info",
            LoggingLevel::Warning => "warn",
            _ => "error",
        };
        crate::logging::set_level(level);
        tracing::info!(level, "log level changed by the MCP client");
        Ok(())
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
    tracing::info!(read_only, "serving MCP over stdio");
    let service = server
        .serve((tokio::io::stdin(), out))
        .await
        .map_err(|e| ServeError::Init(e.to_string()))?;
    let result = service.waiting().await;
    app.db.close();
    result
        .map(|_| ())
        .map_err(|e| ServeError::Session(e.to_string()))
}
