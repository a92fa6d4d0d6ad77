//! The MCP client of the tests: [`Mcp`] drives a `metersync` child process
//! over stdio with rmcp's client; [`Recorder`] keeps the progress
//! notifications; [`text_of`] joins a tool result's text.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use super::process::{log_file, metersync_cmd, workdir};

/// The test's MCP client handler: records every progress notification.
#[derive(Clone, Default)]
pub struct Recorder {
    /// Progress notifications received, in order.
    pub progress: std::sync::Arc<std::sync::Mutex<Vec<rmcp::model::ProgressNotificationParam>>>,
}

impl rmcp::ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        if let Ok(mut g) = self.progress.lock() {
            g.push(params);
        }
    }
}

/// An MCP client connected over stdio to a `metersync` child process.
pub struct Mcp {
    /// The rmcp client.
    pub client: rmcp::service::RunningService<rmcp::RoleClient, Recorder>,
    /// What the client handler recorded.
    pub recorder: Recorder,
    _wd: tempfile::TempDir,
    /// Where the server's stderr goes.
    pub log: PathBuf,
}

impl Mcp {
    /// Spawns `metersync ARGS` with `env` and completes the MCP handshake.
    pub async fn start(
        env: &HashMap<String, String>,
        args: &[&str],
        log_name: &str,
    ) -> Result<Self> {
        Self::start_with(env, args, log_name, rmcp::ClientLifecycleMode::Initialize).await
    }

    /// Like [`Mcp::start`], with the handshake `lifecycle` (the classic
    /// `initialize`, or the newer `server/discover`).
    pub async fn start_with(
        env: &HashMap<String, String>,
        args: &[&str],
        log_name: &str,
        lifecycle: rmcp::ClientLifecycleMode,
    ) -> Result<Self> {
        use rmcp::ClientServiceExt;
        let wd = workdir();
        let mut cmd = metersync_cmd(env, wd.path());
        cmd.args(args);
        let (log, path) = log_file(log_name)?;
        let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
            .stderr(Stdio::from(log))
            .spawn()?;
        let recorder = Recorder::default();
        let client = recorder
            .clone()
            .serve_with_lifecycle(transport, lifecycle)
            .await
            .context("MCP handshake")?;
        Ok(Mcp {
            client,
            recorder,
            _wd: wd,
            log: path,
        })
    }

    /// Calls `tool` with `args` (a JSON object).
    pub async fn call(
        &self,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<rmcp::model::CallToolResult> {
        let mut params = rmcp::model::CallToolRequestParams::new(tool.to_string());
        if let serde_json::Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        Ok(self.client.call_tool(params).await?)
    }

    /// Calls `tool` and returns its structured content, failing on `isError`.
    pub async fn call_ok(&self, tool: &str, args: serde_json::Value) -> Result<serde_json::Value> {
        let r = self.call(tool, args).await?;
        if r.is_error == Some(true) {
            bail!("{tool} returned isError: {}", text_of(&r));
        }
        r.structured_content
            .clone()
            .with_context(|| format!("{tool} returned no structured content: {}", text_of(&r)))
    }

    /// Calls `tool` with a progress token; returns the result and the
    /// progress notifications that arrived for it.
    pub async fn call_with_progress(
        &self,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<(
        rmcp::model::CallToolResult,
        Vec<rmcp::model::ProgressNotificationParam>,
    )> {
        let mut params = rmcp::model::CallToolRequestParams::new(tool.to_string());
        if let serde_json::Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        let handle = self
            .client
            .send_cancellable_request(
                rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(params)),
                rmcp::service::PeerRequestOptions::no_options(),
            )
            .await?;
        let token = handle.progress_token.clone();
        let resp = handle.await_response().await?;
        let result = match resp {
            rmcp::model::ServerResult::CallToolResult(r) => r,
            other => bail!("unexpected response to tools/call: {other:?}"),
        };
        let progress = self
            .recorder
            .progress
            .lock()
            .map(|g| {
                g.iter()
                    .filter(|p| p.progress_token == token)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Ok((result, progress))
    }

    /// Closes the session.
    pub async fn close(self) -> Result<()> {
        let _ = self.client.cancel().await;
        Ok(())
    }
}

/// All text content of a tool result, joined.
pub fn text_of(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}
