//! The receiving side of [`super::UdpClient`]: one task reads every datagram
//! and hands each to what waits for it: a reply (put together from segments,
//! acknowledged as they come) to its request, an I-Am to discoveries, an
//! I-Am-Router-To-Network to router searches, a BVLC-Result to the BBMD
//! registration.
//!
//! Guarantees: a datagram that does not decode (garbage) or matches nothing
//! pending (unmatched) is counted and dropped and never disturbs a pending
//! request; a reply with a pending invoke id from another address is not
//! taken, but remembered on that request so its timeout can name it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::address::DeviceAddress;
use super::client::Shared;
use super::frame::{self, Apdu, Npci};
use super::services;
use super::types::ErrorCode;
use super::IAm;

/// Largest UDP payload we accept (BACnet/IP's is 1497); longer ones are truncated and fail to decode.
const RECV_BUFFER: usize = 2048;

/// A reply to a confirmed request, owned so it can cross to the waiting task.
#[derive(Debug)]
pub(super) enum Reply {
    Ack(Vec<u8>),
    Error(ErrorCode),
    Reject(u8),
    Abort(u8),
    /// A segmented reply longer than [`frame::MAX_SEGMENTS`]: treated as "too long".
    Segmented,
    /// A segmented complex ack, reassembled.
    SegmentedAck(Vec<u8>),
}

pub(super) struct Pending {
    pub(super) service: u8,
    pub(super) tx: Option<oneshot::Sender<Reply>>,
    /// A segmented reply being put together.
    pub(super) reassembly: Option<Reassembly>,
    /// Where the device's SegmentAcks go while a segmented request is sent.
    pub(super) acks: Option<mpsc::UnboundedSender<(u8, u8, bool)>>,
    /// Addresses a reply with this invoke id and service came from instead.
    pub(super) strays: Vec<SocketAddr>,
}

/// A segmented ComplexAck being received (clause 5.4.4).
pub(super) struct Reassembly {
    /// The sequence number expected next.
    next: u8,
    /// Segments received since the last SegmentAck.
    in_window: u8,
    /// Segments received in all.
    segments: usize,
    body: Vec<u8>,
}

/// The window this client accepts: SegmentAck after this many segments.
pub(super) const WINDOW: u8 = 16;

pub(super) type PendingKey = (DeviceAddress, u8);
/// An I-Am-Router-To-Network: the router and the networks it reaches.
pub(super) type RouterAnswer = (SocketAddr, Vec<u16>);

/// Lock a std mutex, recovering from poisoning (no code here panics while holding one).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) async fn receive_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            r = shared.socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, from)) => dispatch(&shared, buf.get(..n).unwrap_or(&[]), from),
            Err(e) => {
                // ICMP port-unreachable from an earlier send surfaces here; the socket is fine.
                debug!(error = %e, "BACnet receive error");
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    // Fail whatever is still waiting.
    lock(&shared.pending).clear();
    lock(&shared.listeners).clear();
}

fn dispatch(shared: &Shared, data: &[u8], from: SocketAddr) {
    let datagram = match frame::decode_datagram(data) {
        Ok(d) => d,
        Err(e) => {
            shared.counters.garbage.fetch_add(1, Ordering::Relaxed);
            debug!(%from, len = data.len(), error = %e, "dropping undecodable BACnet datagram");
            return;
        }
    };
    let unmatched = || {
        shared.counters.unmatched.fetch_add(1, Ordering::Relaxed);
    };
    if let Some(code) = datagram.bvlc_result {
        // Only a registration is answered with a BVLC-Result here.
        match lock(&shared.bbmd_results).take() {
            Some(tx) if shared.config.bbmd == Some(from) => {
                let _ = tx.send(code);
            }
            _ => unmatched(),
        }
        return;
    }
    if let Some((kind, body)) = datagram.network_message {
        if kind == frame::NL_I_AM_ROUTER && body.len() % 2 == 0 && !body.is_empty() {
            let networks: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            lock(&shared.router_listeners).retain(|l| l.send((from, networks.clone())).is_ok());
        } else {
            unmatched();
        }
        return;
    }
    let Some(apdu) = datagram.apdu else {
        return unmatched();
    };
    if let Apdu::Unconfirmed {
        service: frame::SERVICE_I_AM,
        body,
    } = apdu
    {
        match services::decode_i_am(body) {
            Ok(iam) => {
                let iam = IAm {
                    instance: iam.device.instance(),
                    addr: DeviceAddress {
                        ip: datagram.forwarded_from.unwrap_or(from),
                        route: datagram.source,
                    },
                    vendor_id: u32::try_from(iam.vendor_id).unwrap_or(u32::MAX),
                    max_apdu: u32::try_from(iam.max_apdu).unwrap_or(u32::MAX),
                };
                lock(&shared.listeners).retain(|l| l.send(iam).is_ok());
            }
            Err(e) => {
                shared.counters.garbage.fetch_add(1, Ordering::Relaxed);
                debug!(%from, error = %e, "dropping malformed I-Am");
            }
        }
        return;
    }
    if let Apdu::SegmentAck {
        server: true,
        invoke_id,
        sequence,
        window,
        nak,
    } = apdu
    {
        let key = (
            DeviceAddress {
                ip: from,
                route: datagram.source,
            },
            invoke_id,
        );
        let sent = lock(&shared.pending)
            .get(&key)
            .and_then(|p| p.acks.as_ref())
            .is_some_and(|a| a.send((sequence, window, nak)).is_ok());
        if !sent {
            unmatched();
        }
        return;
    }
    let Some(invoke_id) = apdu.reply_invoke_id() else {
        return unmatched();
    };
    let key = (
        DeviceAddress {
            ip: from,
            route: datagram.source,
        },
        invoke_id,
    );
    if let Apdu::ComplexAck {
        service,
        segment: Some(seg),
        body,
        ..
    } = apdu
    {
        if datagram.forwarded_from.is_none() && segment(shared, key, service, seg, body) {
            return;
        }
    }
    let (reply, service) = match apdu {
        Apdu::ComplexAck {
            segment: Some(_),
            service,
            ..
        } => (Reply::Segmented, Some(service)),
        Apdu::ComplexAck { service, body, .. } => (Reply::Ack(body.to_vec()), Some(service)),
        Apdu::Error { service, body, .. } => match services::decode_error(body) {
            Ok(e) => (Reply::Error(e), Some(service)),
            Err(e) => {
                shared.counters.garbage.fetch_add(1, Ordering::Relaxed);
                debug!(%from, error = %e, "dropping malformed Error PDU");
                return;
            }
        },
        Apdu::Reject { reason, .. } => (Reply::Reject(reason), None),
        Apdu::Abort { reason, .. } => (Reply::Abort(reason), None),
        // A simple ack answers no read we make.
        _ => return unmatched(),
    };
    let mut pending = lock(&shared.pending);
    let service_fits = |p: &Pending| service.is_none_or(|s| s == p.service);
    let matches = pending.get(&key).is_some_and(service_fits);
    if !matches || datagram.forwarded_from.is_some() {
        // A reply to a pending request, but from another address: remember where
        // from, so the request's timeout can say so.
        let mut stray = false;
        for ((_, id), p) in pending.iter_mut() {
            if *id == invoke_id && service_fits(p) && p.strays.len() < 4 {
                p.strays.push(from);
                stray = true;
            }
        }
        drop(pending);
        if stray {
            shared.counters.wrong_source.fetch_add(1, Ordering::Relaxed);
            debug!(%from, invoke_id, "reply from an unexpected address");
        }
        return unmatched();
    }
    if let Some(tx) = pending.remove(&key).and_then(|p| p.tx) {
        let _ = tx.send(reply);
    }
}

/// Take one segment of a segmented reply to the request `key`: append it if
/// it is the next in order, acknowledge at the first segment, at each full
/// window and at the last, and NAK a gap or duplicate. Returns false when no
/// pending request takes it (the caller counts it as unmatched).
fn segment(
    shared: &Shared,
    key: PendingKey,
    service: u8,
    seg: frame::Segment,
    body: &[u8],
) -> bool {
    let mut pending = lock(&shared.pending);
    let Some(p) = pending.get_mut(&key).filter(|p| p.service == service) else {
        return false;
    };
    if p.reassembly.is_none() && seg.sequence != 0 {
        return false;
    }
    let r = p.reassembly.get_or_insert_with(|| Reassembly {
        next: 0,
        in_window: 0,
        segments: 0,
        body: Vec::new(),
    });
    let window = seg.window.clamp(1, WINDOW);
    let ack = |sequence: u8, nak: bool| {
        let apdu = frame::segment_ack(key.1, sequence, window, nak);
        let npci = Npci {
            dest: key.0.route.map(|r| (r.network, Some(r.mac))),
            ..Npci::default()
        };
        if let Ok(dg) = frame::encode_bvlc(
            frame::BVLC_ORIGINAL_UNICAST,
            None,
            &frame::encode_npdu(&npci, &apdu),
        ) {
            if let Err(e) = shared.socket.try_send_to(&dg, key.0.ip) {
                debug!(addr = %key.0, error = %e, "cannot send SegmentAck");
            }
        }
    };
    if seg.sequence != r.next {
        ack(r.next.wrapping_sub(1), true);
        r.in_window = 0;
        return true;
    }
    r.body.extend_from_slice(body);
    r.next = r.next.wrapping_add(1);
    r.in_window = r.in_window.saturating_add(1);
    r.segments += 1;
    if r.segments > frame::MAX_SEGMENTS {
        if let Some(tx) = pending.remove(&key).and_then(|p| p.tx) {
            let _ = tx.send(Reply::Segmented);
        }
        return true;
    }
    if !seg.more {
        ack(seg.sequence, false);
        if let Some(p) = pending.remove(&key) {
            let body = p.reassembly.map(|r| r.body).unwrap_or_default();
            if let Some(tx) = p.tx {
                let _ = tx.send(Reply::SegmentedAck(body));
            }
        }
    } else if seg.sequence == 0 || r.in_window >= window {
        ack(seg.sequence, false);
        r.in_window = 0;
    }
    true
}
