//! Long tools as MCP tasks (the `io.modelcontextprotocol/tasks` extension,
//! SEP-2663, through rmcp's [`rmcp::task_manager::TaskManager`]): when the client declares the
//! extension, `upload_readings`, `collect_meters` and `run_sync_cycle`
//! return a task at once; the work goes on in the server, `tasks/get` shows
//! its progress (the status message follows the engine's progress reports)
//! and, once done, its result; `tasks/cancel` stops it between batches.
//! Clients without the extension get the plain call, as before.
//!
//! Guarantees: the result outlives a client that gave up waiting (it stays
//! readable for [`TASK_TTL_MS`] after the task ends); a cancelled task ends
//! `cancelled` after the engine's batch in flight (what was uploaded stays
//! uploaded, exactly once); tasks end with the session.

use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{CallToolRequestParams, CallToolResponse, CreateTaskResult};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskContext, TaskExit, TaskOptions};
use rmcp::{ErrorData as McpError, RoleServer};
use tokio_util::sync::CancellationToken;

use super::MeterSyncServer;

/// The tools that run as tasks for clients that opt in.
pub const TASK_TOOLS: &[&str] = &["upload_readings", "collect_meters", "run_sync_cycle"];
/// How long a task and its result stay readable (1 hour; a long upload after
/// an outage fits in it).
pub const TASK_TTL_MS: u64 = 3_600_000;
/// The polling interval suggested to clients.
pub const POLL_INTERVAL_MS: u64 = 500;

/// Whether this call should run as a task: a task tool, and a client that
/// declared the tasks extension (for the session or this request).
pub(super) fn wanted(name: &str, ctx: &RequestContext<RoleServer>) -> bool {
    TASK_TOOLS.contains(&name)
        && ctx
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks())
}

/// Starts the call as a task and returns its handle.
pub(super) fn spawn(
    server: &MeterSyncServer,
    request: CallToolRequestParams,
    ctx: RequestContext<RoleServer>,
) -> CreateTaskResult {
    let server = server.clone();
    let name = request.name.to_string();
    let options = TaskOptions::new()
        .with_ttl_ms(TASK_TTL_MS)
        .with_poll_interval_ms(POLL_INTERVAL_MS)
        .with_status_message(format!("{name} started"));
    let task = server.tasks.clone().spawn(options, move |task: TaskContext| {
        Box::pin(async move {
            let mut ctx = ctx;
            // The call's own token ends with the call; the task's work
            // follows tasks/cancel instead.
            let ct = CancellationToken::new();
            ctx.ct = ct.clone();
            ctx.extensions.insert(task.clone());
            let watcher = {
                let (task, ct) = (task.clone(), ct.clone());
                tokio::spawn(async move {
                    task.cancelled().await;
                    ct.cancel();
                })
            };
            let response = server
                .tool_router
                .call(ToolCallContext::new(&server, request, ctx))
                .await;
            watcher.abort();
            if task.is_cancel_requested() {
                tracing::info!(tool = %name, task = task.task_id(), "task cancelled by the client");
                return Err(TaskExit::Cancelled);
            }
            match response {
                Ok(CallToolResponse::Complete(result)) => Ok(result),
                Ok(_) => Err(TaskExit::Error(McpError::internal_error(
                    format!("{name} asked for input, which a task of metersync never does"),
                    None,
                ))),
                Err(e) => Err(TaskExit::Error(e)),
            }
        })
    });
    CreateTaskResult::new(task)
}
