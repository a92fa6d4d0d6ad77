//! Logging: `tracing` to stderr only (stdout belongs to the MCP protocol in
//! serve mode), ANSI off, level from `RUST_LOG` (default `info`) and
//! changeable at run time by the MCP `logging/setLevel` request, which also
//! starts forwarding events to the client ([`crate::mcp::log_forward`]).
//!
//! Guarantee: a `RUST_LOG` that is not a valid filter is a startup error
//! naming `RUST_LOG` ([`try_init`]), never a silent "logging off". A bare word
//! must be a level (`verbose` is not: `tracing` would read it as a target
//! name and log nothing of metersync).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The level names a bare `RUST_LOG` word may be.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// `RUST_LOG` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("RUST_LOG={value:?} is not valid: {reason}; use a level (trace, debug, info, warn, error, off) or target=level pairs such as `info,metersync=debug`")]
pub struct FilterError {
    /// The value (a log filter, never a secret).
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// Parses a `RUST_LOG` value strictly.
///
/// Fails when a directive is not `level`, `target=level` or
/// `target[span]=level`, or `tracing-subscriber` refuses it.
pub fn parse_filter(value: &str) -> Result<EnvFilter, FilterError> {
    let err = |reason: String| FilterError {
        value: value.to_string(),
        reason,
    };
    for d in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            return Err(err(format!("`{d}` is not a level")));
        }
        if let Some((_, level)) = d.rsplit_once('=') {
            let l = level.trim().to_ascii_lowercase();
            if !LEVELS.contains(&l.as_str()) && l.parse::<u8>().is_err() {
                return Err(err(format!("`{level}` in `{d}` is not a level")));
            }
        }
    }
    EnvFilter::builder()
        .parse(value)
        .map_err(|e| err(e.to_string()))
}

/// Installs the stderr subscriber with `RUST_LOG` (default `info`).
/// Calling it twice is harmless.
///
/// Fails when `RUST_LOG` is set but not a valid filter (nothing is installed).
pub fn try_init() -> Result<(), FilterError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => parse_filter(&v)?,
        _ => EnvFilter::new("info"),
    };
    install(filter);
    Ok(())
}

/// Installs the stderr subscriber; an invalid `RUST_LOG` falls back to
/// `info` with a warning (for examples; the binary uses [`try_init`]).
pub fn init() {
    if let Err(e) = try_init() {
        install(EnvFilter::new("info"));
        tracing::warn!("{e}; logging at info");
    }
}

fn install(filter: EnvFilter) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_pairs_pass_bare_words_do_not() {
        for ok in [
            "info",
            "DEBUG",
            "warn,metersync=debug",
            "metersync::upload=trace",
            "tokio_postgres=off,info",
            "metersync[collect]=debug",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "info,loud", "metersync=loud", "metersync="] {
            let e = parse_filter(bad).unwrap_err();
            assert!(e.to_string().starts_with("RUST_LOG="), "{e}");
        }
    }
}
