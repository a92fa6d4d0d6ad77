//! Logging: `tracing` to stderr only (stdout belongs to the MCP protocol in
//! serve mode), ANSI off, level from `RUST_LOG` (default `info`) and
//! changeable at run time by the MCP `logging/setLevel` request, which also
//! starts forwarding events to the client ([`crate::mcp::log_forward`]).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the stderr subscriber. Calling it twice is harmless.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .with(crate::mcp::log_forward::layer())
        .try_init()
        .is_ok()
    {
        let _ = RELOAD.set(handle);
    }
}

/// Sets the stderr log level (`trace`, `debug`, `info`, `warn`, `error`).
/// Returns false when logging was not initialised by [`init`].
pub fn set_level(level: &str) -> bool {
    match RELOAD.get() {
        Some(h) => h.reload(EnvFilter::new(level)).is_ok(),
        None => false,
    }
}
