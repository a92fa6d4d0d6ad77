//! Progress reporting from the engines to whoever drives them: MCP progress
//! notifications, a log line in the CLI and daemon, nothing in tests.
//!
//! Engines call [`Progress::update`] between units of work (a batch, a
//! meter); it never blocks and never fails.

/// Receives progress from a long operation.
pub trait Progress: Send + Sync {
    /// `done` units of `total` (when known) are finished; `message` says what.
    fn update(&self, done: u64, total: Option<u64>, message: &str);
}

/// Discards progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _done: u64, _total: Option<u64>, _message: &str) {}
}

/// Logs progress at debug level (CLI and daemon).
pub struct LogProgress(pub &'static str);

impl Progress for LogProgress {
    fn update(&self, done: u64, total: Option<u64>, message: &str) {
        tracing::debug!(operation = self.0, done, total, "{message}");
    }
}
