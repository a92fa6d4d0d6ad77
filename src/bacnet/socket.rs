//! The client's UDP socket and what it counts: the socket is opened with its
//! receive buffer (SO_RCVBUF) sized for COLLECT_CONCURRENCY replies arriving
//! at once, and [`ClientStats`] reports what the client saw, the kernel's
//! drops included.
//!
//! Guarantees: sizing never fails the bind (a smaller buffer than wanted is
//! logged with the sysctl to raise); counters are lock-free.

use std::sync::atomic::AtomicU64;

use tracing::debug;

use super::BacnetConfig;

/// Bytes of receive buffer planned per concurrent device read: a reply of up
/// to 1497 bytes costs the kernel about 4 KiB of buffer (skb overhead), and a
/// few late or duplicate replies per device are normal.
const RCVBUF_PER_READ: usize = 16 * 1024;
/// The least receive buffer asked for, whatever the concurrency.
const RCVBUF_MIN: usize = 256 * 1024;
/// The most receive buffer asked for.
const RCVBUF_MAX: usize = 64 * 1024 * 1024;

/// Counters of what the client saw; cheap to read at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct ClientStats {
    /// Confirmed requests sent (each retry counts).
    pub requests_sent: u64,
    /// Datagrams that did not decode.
    pub garbage: u64,
    /// Datagrams that decoded but answered nothing pending (late, duplicate or spoofed).
    pub unmatched: u64,
    /// Replies that carried a pending request's invoke id from another address
    /// than the one asked (NAT, a gateway answering from its own socket).
    pub wrong_source: u64,
    /// Segmented replies received and reassembled.
    pub segmented_replies: u64,
    /// The socket's receive buffer as the kernel granted it (SO_RCVBUF, bytes).
    pub recv_buffer_bytes: u64,
    /// The receive buffer asked for (from COLLECT_CONCURRENCY); more than granted
    /// means net.core.rmem_max caps it.
    pub recv_buffer_wanted: u64,
    /// Datagrams the kernel dropped on this socket because its buffer was full
    /// (the `drops` column of /proc/net/udp; 0 where not available).
    pub socket_drops: u64,
    /// The host's UDP RcvbufErrors (/proc/net/snmp), all sockets, since boot.
    pub host_rcvbuf_errors: u64,
    /// Foreign-device registrations the BBMD accepted.
    pub bbmd_registrations: u64,
    /// Registrations that failed (NAK or no answer).
    pub bbmd_failures: u64,
    /// Whether the last registration attempt succeeded (false when no BBMD is configured).
    pub bbmd_registered: bool,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests_sent: AtomicU64,
    pub(super) garbage: AtomicU64,
    pub(super) unmatched: AtomicU64,
    pub(super) wrong_source: AtomicU64,
    pub(super) segmented_replies: AtomicU64,
    pub(super) bbmd_registrations: AtomicU64,
    pub(super) bbmd_failures: AtomicU64,
    pub(super) bbmd_registered: std::sync::atomic::AtomicBool,
}

/// Open the socket with socket2 so the receive buffer is sized before the
/// first datagram: returns it and (granted, wanted) buffer bytes.
pub(super) fn open_socket(
    config: &BacnetConfig,
) -> std::io::Result<(std::net::UdpSocket, (u64, u64))> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = Domain::for_address(config.bind);
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_broadcast(true)?;
    let wanted = config
        .concurrency
        .saturating_mul(RCVBUF_PER_READ)
        .clamp(RCVBUF_MIN, RCVBUF_MAX);
    if let Err(e) = socket.set_recv_buffer_size(wanted) {
        debug!(error = %e, wanted, "cannot size the BACnet receive buffer");
    }
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < wanted {
        tracing::warn!(
            granted,
            wanted,
            "the BACnet socket's receive buffer is smaller than COLLECT_CONCURRENCY needs; raise net.core.rmem_max (sysctl) to at least {wanted}"
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&config.bind.into())?;
    Ok((socket.into(), (granted as u64, wanted as u64)))
}
