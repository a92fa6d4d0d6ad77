//! Running `metersync` as a long-lived process: spawn with a log file,
//! signal it, wait on conditions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // `common::daemon::wait_for` as before the split
pub use super::wait::wait_for;
use super::{log_file, metersync_cmd, workdir};

/// Starts `metersync ARGS` with `env`, stderr to a fresh test log; keep the
/// returned working directory alive as long as the child.
pub fn spawn_logged(
    env: &HashMap<String, String>,
    args: &[&str],
    log_name: &str,
) -> anyhow::Result<(tokio::process::Child, PathBuf, tempfile::TempDir)> {
    let wd = workdir();
    let (log, log_path) = log_file(log_name)?;
    let child = metersync_cmd(env, wd.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?;
    Ok((child, log_path, wd))
}

/// Starts `metersync run` (see [`spawn_logged`]).
pub fn spawn_daemon(
    env: &HashMap<String, String>,
    log_name: &str,
) -> anyhow::Result<(tokio::process::Child, PathBuf, tempfile::TempDir)> {
    spawn_logged(env, &["run"], log_name)
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

/// Whether the log at `path` contains `needle` now.
pub fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|s| s.contains(needle))
        .unwrap_or(false)
}

/// Sends SIGTERM and returns how long the child took to exit and whether it
/// exited successfully (fails after 30 s).
pub async fn sigterm_and_time(
    child: &mut tokio::process::Child,
) -> anyhow::Result<(Duration, bool)> {
    sigterm(child);
    let t = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    Ok((t.elapsed(), status.success()))
}
