//! The shared test harness: throwaway PostgreSQL clusters started from the
//! installed server binaries, PgBouncer in `pool_mode = transaction` in front
//! of one, a TCP proxy that can cut connections, and the metersync binary
//! driven as a real process (CLI or MCP over stdio with rmcp's client).
//!
//! Every cluster listens on its own free loopback port with a password
//! (`TEST_PASSWORD`), runs as the `postgres` user when the tests run as root,
//! and is stopped and deleted when dropped. Every metersync process writes
//! its stderr to `$CARGO_TARGET_TMPDIR/test-logs/`, which `.ci/run` greps
//! for the test password afterwards.

#![allow(dead_code)]

pub mod daemon;
pub mod meters;
pub mod proxy;
pub mod rows;
pub mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// The password of every test cluster. `.ci/run` checks that no log holds it.
pub const TEST_PASSWORD: &str = "Tst-pw-9f3k2ZQx";

static SEQ: AtomicU32 = AtomicU32::new(0);

#[allow(unused_imports)] // not every test file needs a free port
pub use metersync::demo::cluster::free_port;
use metersync::demo::cluster::Cluster;

fn run_ok(cmd: std::process::Command, what: &str) -> Result<()> {
    Ok(metersync::demo::cluster::run_ok(cmd, what)?)
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 with [`TEST_PASSWORD`]: the
/// library's demo cluster (`metersync::demo::cluster`), plus test helpers.
pub struct PgCluster {
    inner: Cluster,
    /// Its TCP port.
    pub port: u16,
}

impl PgCluster {
    /// initdb + pg_ctl start on a free port.
    pub fn start() -> Result<Self> {
        let inner = Cluster::start(TEST_PASSWORD)?;
        Ok(PgCluster {
            port: inner.port,
            inner,
        })
    }

    /// Two clusters (local, remote), started side by side.
    pub async fn start_pair() -> Result<(Self, Self)> {
        tokio::task::spawn_blocking(|| -> Result<_> {
            let l = std::thread::spawn(PgCluster::start);
            let r = PgCluster::start()?;
            let l = l
                .join()
                .map_err(|_| anyhow::anyhow!("cluster thread panicked"))??;
            Ok((l, r))
        })
        .await?
    }

    /// Stops the server at once (`-m immediate`): like a crash.
    pub fn stop(&self) -> Result<()> {
        Ok(self.inner.stop()?)
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> Result<()> {
        Ok(self.inner.restart()?)
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) -> Result<()> {
        Ok(self.inner.start_again()?)
    }

    /// A direct connection for setting up and checking, as `postgres`.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        self.inner
            .connect(TEST_PASSWORD)
            .await
            .with_context(|| format!("connecting to test cluster on {}", self.port))
    }

    /// The environment that points metersync's `side` ("SYNC" or "CLIENT") here.
    pub fn env(&self, side: &str) -> Vec<(String, String)> {
        env_for(side, self.port)
    }
}

/// `POSTGRES_{side}_*` for a server on 127.0.0.1:`port` with the test password.
pub fn env_for(side: &str, port: u16) -> Vec<(String, String)> {
    vec![
        (format!("POSTGRES_{side}_HOST"), "127.0.0.1".into()),
        (format!("POSTGRES_{side}_PORT"), port.to_string()),
        (format!("POSTGRES_{side}_DB"), "postgres".into()),
        (format!("POSTGRES_{side}_USER"), "postgres".into()),
        (format!("POSTGRES_{side}_PASSWORD"), TEST_PASSWORD.into()),
    ]
}

/// PgBouncer in `pool_mode = transaction` in front of a cluster: the
/// library's [`metersync::demo::cluster::Pooler`] (one copy of its setup)
/// with the tests' password, 5 server connections and 500 clients.
pub struct PgBouncer {
    _pooler: metersync::demo::cluster::Pooler,
    /// Its TCP port.
    pub port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer (installed by `.ci/run`) on a free port.
    pub fn start(cluster: &PgCluster) -> Result<Self> {
        let pooler = metersync::demo::cluster::Pooler::start(cluster.port, TEST_PASSWORD, 5, 500)?;
        Ok(PgBouncer {
            port: pooler.port,
            _pooler: pooler,
        })
    }

    /// The environment that points metersync's `side` through the pooler.
    pub fn env(&self, side: &str) -> Vec<(String, String)> {
        env_for(side, self.port)
    }
}

/// A fresh log file for one metersync process under
/// `$CARGO_TARGET_TMPDIR/test-logs/`.
pub fn log_file(name: &str) -> Result<(std::fs::File, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "{name}-{}-{}.log",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    Ok((std::fs::File::create(&path)?, path))
}

/// An empty working directory (so no stray `.env` is picked up).
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("metersync-wd-")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// The environment every test process starts from: fast retries, no
/// inherited configuration.
pub fn base_env() -> HashMap<String, String> {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("MAX_CONNECTION_RETRIES".into(), "1".into());
    env.insert("DB_CONNECTION_TIMEOUT_MS".into(), "3000".into());
    env.insert("RUST_LOG".into(), "info".into());
    env
}

/// A `metersync` command with exactly `env` (plus PATH/HOME), working in `wd`.
pub fn metersync_cmd(env: &HashMap<String, String>, wd: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_metersync"));
    cmd.env_clear();
    for keep in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(env).current_dir(wd).kill_on_drop(true);
    cmd
}

/// Output of a finished metersync command.
pub struct Output {
    /// Exit status success.
    pub ok: bool,
    /// stdout.
    pub stdout: String,
    /// stderr (also written to the log file).
    pub stderr: String,
}

/// Runs `metersync ARGS` to completion, logging its stderr.
pub async fn run_cli(
    env: &HashMap<String, String>,
    args: &[&str],
    log_name: &str,
) -> Result<Output> {
    let wd = workdir();
    let out = metersync_cmd(env, wd.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let (mut f, _) = log_file(log_name)?;
    std::io::Write::write_all(&mut f, &out.stderr)?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    })
}

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

/// Local and remote clusters, migrated, with the env pointing at both.
pub struct World {
    /// The local ("sync") cluster.
    pub local: PgCluster,
    /// The remote ("client") cluster.
    pub remote: PgCluster,
    /// The environment for metersync.
    pub env: HashMap<String, String>,
}

impl World {
    /// Starts both clusters and runs `metersync migrate`.
    pub async fn start() -> Result<Self> {
        let (local, remote) = PgCluster::start_pair().await?;
        let mut env = base_env();
        env.extend(local.env("SYNC"));
        env.extend(remote.env("CLIENT"));
        let out = run_cli(&env, &["migrate"], "migrate").await?;
        if !out.ok {
            bail!("migrate failed: {}", out.stderr);
        }
        Ok(World { local, remote, env })
    }
}
