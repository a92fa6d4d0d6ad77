//! Foreign-device registration with a BBMD (Annex J.5.2): how this agent
//! reaches devices on other IP subnets. Registration happens at bind, then
//! again every half TTL, so it never lapses while the client runs; broadcasts
//! (Who-Is) then go to the BBMD as Distribute-Broadcast-To-Network, which
//! passes them to every subnet, and devices' answers come back directly or
//! as Forwarded-NPDUs.
//!
//! Guarantees: a failed registration (a NAK, or no answer) never fails the
//! client; it is counted, its reason kept for `connection_status`, logged,
//! and retried after [`RETRY_AFTER_FAILURE`] (or half the TTL if shorter).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::client::{lock, Shared};
use super::frame;

/// How soon a failed registration is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// The registration's state, for health and `connection_status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct BbmdStatus {
    /// The BBMD, `host:port`.
    pub bbmd: String,
    /// The TTL asked for, seconds.
    pub ttl_s: u64,
    /// Whether the last registration attempt succeeded.
    pub registered: bool,
    /// Registrations accepted so far.
    pub registrations: u64,
    /// Attempts that failed so far.
    pub failures: u64,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// Register, then re-register every half TTL, until cancelled.
pub(super) async fn register_loop(
    shared: Arc<Shared>,
    bbmd: SocketAddr,
    cancel: CancellationToken,
) {
    let ttl_s = u16::try_from(shared.config.bbmd_ttl.as_secs()).unwrap_or(u16::MAX);
    let again = Duration::from_secs(u64::from(ttl_s / 2).max(1));
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = register_once(&shared, bbmd, ttl_s) => r,
        };
        let c = &shared.counters;
        let wait = match outcome {
            Ok(()) => {
                c.bbmd_registrations.fetch_add(1, Ordering::Relaxed);
                c.bbmd_registered.store(true, Ordering::Relaxed);
                *lock(&shared.bbmd_error) = None;
                shared.registered.send_replace(true);
                debug!(%bbmd, ttl_s, "registered as a foreign device");
                again
            }
            Err(e) => {
                c.bbmd_failures.fetch_add(1, Ordering::Relaxed);
                c.bbmd_registered.store(false, Ordering::Relaxed);
                warn!(%bbmd, error = %e, "BACnet foreign-device registration failed");
                *lock(&shared.bbmd_error) = Some(e);
                RETRY_AFTER_FAILURE.min(again)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn register_once(shared: &Shared, bbmd: SocketAddr, ttl_s: u16) -> Result<(), String> {
    let datagram = frame::encode_bvlc(
        frame::BVLC_REGISTER_FOREIGN_DEVICE,
        None,
        &ttl_s.to_be_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let tries = shared.config.retries.saturating_add(1);
    for _ in 0..tries {
        let (tx, rx) = oneshot::channel();
        *lock(&shared.bbmd_results) = Some(tx);
        shared
            .socket
            .send_to(&datagram, bbmd)
            .await
            .map_err(|e| format!("cannot send the registration to BACNET_BBMD {bbmd}: {e}"))?;
        match tokio::time::timeout(shared.config.timeout, rx).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(code)) => {
                return Err(format!(
                    "the BBMD at {bbmd} refused the registration (BVLC result 0x{code:04x}; is foreign-device registration enabled on it?)"
                ))
            }
            Ok(Err(_)) | Err(_) => {}
        }
    }
    Err(format!(
        "no answer from the BBMD at {bbmd} after {tries} tries: check BACNET_BBMD"
    ))
}
