//! The one shutdown mechanism, as tokio-rs/mini-redis does it: a signal
//! listener cancels a [`CancellationToken`] that every loop, retry sleep and
//! connection attempt watches.
//!
//! Guarantees:
//! - every command that listens ([`listen`]) treats SIGINT (Ctrl-C) and
//!   SIGTERM the same way: the token is cancelled once, the first signal is
//!   logged, the work in flight is told to stop;
//! - the token is the [`crate::app::App`]'s, so the database checkouts and
//!   their retry sleeps stop with it (see [`crate::db`]): nothing waits out a
//!   62 s connect round after a signal.

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C) and says which.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops metersync");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT, from a background task.
/// Returns `token` for convenience. Must be called inside a tokio runtime.
pub fn listen(token: CancellationToken) -> CancellationToken {
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            which = signal() => {
                tracing::info!("{which} received: stopping the work in flight");
                t.cancel();
            }
            _ = t.cancelled() => {}
        }
    });
    token
}
