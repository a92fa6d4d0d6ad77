//! The metersync binary as a real process: [`metersync_cmd`] (a clean
//! environment in an empty working directory), [`run_cli`] for one-shot
//! commands, and [`log_file`], where every process's stderr goes
//! (`$CARGO_TARGET_TMPDIR/test-logs/`, grepped by `.ci/run` for the test
//! password).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

static SEQ: AtomicU32 = AtomicU32::new(0);

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
