//! [`UdpClient`]: the tokio implementation of [`BacnetClient`].
//!
//! One UDP socket serves every request. A background task receives all
//! datagrams and hands each reply to the request waiting for it, matched by
//! (peer address, invoke id) and service, so concurrent reads of many devices
//! never take each other's replies. Each device has a lock held for the whole
//! of a read, so at most one request is in flight per device. Every try waits
//! `timeout`; a request is sent `1 + retries` times with the same invoke id.
//!
//! Guarantees: a datagram that does not decode (garbage) or matches no
//! pending request (unmatched) is counted, logged at debug and dropped; it
//! never disturbs a pending request. Dropping the client stops the receive
//! task; [`UdpClient::shutdown`] also waits for it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame::{self, Apdu};
use super::services;
use super::types::{ErrorCode, PropertyRef, PropertyResult};
use super::{BacnetClient, BacnetConfig, BacnetError, BoxFuture, Device, IAm};

/// Largest UDP payload we accept (BACnet/IP's is 1497); longer ones are truncated and fail to decode.
const RECV_BUFFER: usize = 2048;
/// Bytes one property is assumed to take in a ReadPropertyMultiple reply when planning chunks.
const REPLY_BYTES_PER_PROPERTY: usize = 12;
/// Reply size a chunk is planned to fit: 480 bytes, the max APDU of the smallest common devices.
const PLANNED_REPLY_BYTES: usize = 480;
/// Properties per ReadPropertyMultiple until a device's aborts teach us a smaller number.
const DEFAULT_CHUNK: usize = PLANNED_REPLY_BYTES / REPLY_BYTES_PER_PROPERTY;
/// Error given to a single property whose reply the device cannot send unsegmented
/// (class communication, code abort-segmentation-not-supported).
const TOO_LONG: ErrorCode = ErrorCode { class: 7, code: 54 };

/// Counters of what the client saw; cheap to read at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Confirmed requests sent (each retry counts).
    pub requests_sent: u64,
    /// Datagrams that did not decode.
    pub garbage: u64,
    /// Datagrams that decoded but answered nothing pending (late, duplicate or spoofed).
    pub unmatched: u64,
}

#[derive(Default)]
struct Counters {
    requests_sent: AtomicU64,
    garbage: AtomicU64,
    unmatched: AtomicU64,
}

/// A reply to a confirmed request, owned so it can cross to the waiting task.
#[derive(Debug)]
enum Reply {
    Ack(Vec<u8>),
    Error(ErrorCode),
    Reject(u8),
    Abort(u8),
    /// A segmented complex ack (we asked for none): treated as "too long".
    Segmented,
}

struct Pending {
    service: u8,
    tx: oneshot::Sender<Reply>,
}

/// What we know about one device; its mutex is held for a whole read.
struct Peer {
    next_invoke_id: u8,
    rpm_unsupported: bool,
    chunk: usize,
}

struct Shared {
    socket: UdpSocket,
    config: BacnetConfig,
    pending: Mutex<HashMap<(SocketAddr, u8), Pending>>,
    peers: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Peer>>>>,
    listeners: Mutex<Vec<mpsc::UnboundedSender<IAm>>>,
    counters: Counters,
}

/// The BACnet/IP client: cheap to share behind an `Arc`, safe to use from many tasks.
pub struct UdpClient {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl UdpClient {
    /// Bind the socket (broadcast enabled, for Who-Is) and start the receive task.
    /// Fails when the address cannot be bound.
    pub async fn bind(config: BacnetConfig) -> Result<Self, BacnetError> {
        let bind_err = |source| BacnetError::Bind {
            bind: config.bind,
            source,
        };
        let socket = UdpSocket::bind(config.bind).await.map_err(bind_err)?;
        socket.set_broadcast(true).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            socket,
            config,
            pending: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(receive_loop(shared.clone(), cancel.clone()));
        Ok(Self {
            shared,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// The bound local address (useful when binding port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// What the client has seen so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        ClientStats {
            requests_sent: c.requests_sent.load(Ordering::Relaxed),
            garbage: c.garbage.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
        }
    }

    /// Stop the receive task and wait for it; pending requests fail with [`BacnetError::Closed`].
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn peer(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<Peer>> {
        lock(&self.shared.peers)
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Peer {
                    next_invoke_id: 0,
                    rpm_unsupported: false,
                    chunk: DEFAULT_CHUNK,
                }))
            })
            .clone()
    }

    /// Send one confirmed request and wait for its reply, retrying on timeout.
    async fn transact(
        &self,
        peer: &mut Peer,
        device: Device,
        service: u8,
        body: &[u8],
    ) -> Result<Reply, BacnetError> {
        let invoke_id = peer.next_invoke_id;
        peer.next_invoke_id = peer.next_invoke_id.wrapping_add(1);
        let mut apdu = frame::confirmed_request_header(invoke_id, service);
        apdu.extend_from_slice(body);
        let datagram = frame::encode_datagram(false, true, &apdu).map_err(|source| {
            BacnetError::Malformed {
                addr: device.addr,
                device: device.instance,
                source,
            }
        })?;
        let (tx, mut rx) = oneshot::channel();
        let key = (device.addr, invoke_id);
        lock(&self.shared.pending).insert(key, Pending { service, tx });
        let _guard = PendingGuard {
            shared: &self.shared,
            key,
        };
        let tries = self.shared.config.retries.saturating_add(1);
        let mut send_error = None;
        for attempt in 1..=tries {
            self.shared
                .counters
                .requests_sent
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.shared.socket.send_to(&datagram, device.addr).await {
                debug!(addr = %device.addr, attempt, error = %e, "BACnet send failed");
                send_error = Some(e);
            }
            match tokio::time::timeout(self.shared.config.timeout, &mut rx).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(_)) => return Err(BacnetError::Closed),
                Err(_) => {
                    debug!(addr = %device.addr, device = device.instance, attempt, "BACnet request timed out")
                }
            }
        }
        Err(match send_error {
            Some(source) => BacnetError::Send {
                addr: device.addr,
                device: device.instance,
                source,
            },
            None => BacnetError::Timeout {
                addr: device.addr,
                device: device.instance,
                tries,
                timeout_ms: u64::try_from(self.shared.config.timeout.as_millis())
                    .unwrap_or(u64::MAX),
            },
        })
    }

    async fn read_all(
        &self,
        device: Device,
        props: &[PropertyRef],
    ) -> Result<Vec<PropertyResult>, BacnetError> {
        let peer = self.peer(device.addr);
        let mut peer = peer.lock().await;
        let mut results: Vec<Option<PropertyResult>> = vec![None; props.len()];
        let mut fallback: Vec<usize> = Vec::new();
        let chunk = peer.chunk.max(1);
        let mut queue: VecDeque<(usize, usize)> = (0..props.len())
            .step_by(chunk)
            .map(|start| (start, (start + chunk).min(props.len())))
            .collect();
        while let Some((start, end)) = queue.pop_front() {
            let part = props.get(start..end).unwrap_or(&[]);
            if peer.rpm_unsupported {
                fallback.extend(start..end);
                continue;
            }
            match self.rpm(&mut peer, device, part).await? {
                Rpm::Results(rs) => {
                    for (slot, r) in results.iter_mut().skip(start).zip(rs) {
                        *slot = Some(r);
                    }
                }
                Rpm::TooLong if end - start > 1 => {
                    let mid = start + (end - start) / 2;
                    peer.chunk = peer.chunk.min(mid - start).max(1);
                    debug!(addr = %device.addr, chunk = peer.chunk, "reply too long; splitting ReadPropertyMultiple");
                    queue.push_front((mid, end));
                    queue.push_front((start, mid));
                }
                Rpm::TooLong => results[start] = Some(Err(TOO_LONG)),
                Rpm::Unsupported => {
                    debug!(addr = %device.addr, "device does not support ReadPropertyMultiple; using ReadProperty");
                    peer.rpm_unsupported = true;
                    fallback.extend(start..end);
                }
                Rpm::PerProperty => fallback.extend(start..end),
            }
        }
        for i in fallback {
            if let Some(p) = props.get(i) {
                results[i] = Some(self.rp(&mut peer, device, *p).await?);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(TOO_LONG)))
            .collect())
    }

    async fn rpm(
        &self,
        peer: &mut Peer,
        device: Device,
        props: &[PropertyRef],
    ) -> Result<Rpm, BacnetError> {
        let mut body = Vec::new();
        services::encode_rpm(&mut body, props);
        let reply = self
            .transact(peer, device, frame::SERVICE_READ_PROPERTY_MULTIPLE, &body)
            .await?;
        Ok(match reply {
            Reply::Ack(body) => {
                Rpm::Results(services::decode_rpm_ack(&body, props).map_err(|source| {
                    BacnetError::Malformed {
                        addr: device.addr,
                        device: device.instance,
                        source,
                    }
                })?)
            }
            Reply::Segmented => Rpm::TooLong,
            Reply::Abort(r) if is_too_long(r) => Rpm::TooLong,
            // A request too long for the device's buffer: smaller ones may pass.
            Reply::Reject(1) => Rpm::TooLong,
            Reply::Reject(frame::REJECT_UNRECOGNIZED_SERVICE) => Rpm::Unsupported,
            Reply::Error(e) if e.class == ErrorCode::CLASS_SERVICES => Rpm::Unsupported,
            // A whole-request error (some devices answer so for one unknown object): ask one by one.
            Reply::Error(_) => Rpm::PerProperty,
            Reply::Reject(reason) => {
                return Err(BacnetError::Rejected {
                    addr: device.addr,
                    device: device.instance,
                    reason,
                })
            }
            Reply::Abort(reason) => {
                return Err(BacnetError::Aborted {
                    addr: device.addr,
                    device: device.instance,
                    reason,
                })
            }
        })
    }

    async fn rp(
        &self,
        peer: &mut Peer,
        device: Device,
        p: PropertyRef,
    ) -> Result<PropertyResult, BacnetError> {
        let mut body = Vec::new();
        services::encode_read_property(&mut body, p);
        let reply = self
            .transact(peer, device, frame::SERVICE_READ_PROPERTY, &body)
            .await?;
        match reply {
            Reply::Ack(body) => Ok(Ok(services::decode_read_property_ack(&body, p).map_err(
                |source| BacnetError::Malformed {
                    addr: device.addr,
                    device: device.instance,
                    source,
                },
            )?)),
            Reply::Error(e) => Ok(Err(e)),
            Reply::Segmented => Ok(Err(TOO_LONG)),
            Reply::Abort(r) if is_too_long(r) => Ok(Err(TOO_LONG)),
            Reply::Abort(reason) => Err(BacnetError::Aborted {
                addr: device.addr,
                device: device.instance,
                reason,
            }),
            Reply::Reject(reason) => Err(BacnetError::Rejected {
                addr: device.addr,
                device: device.instance,
                reason,
            }),
        }
    }

    /// Reads element `index` of the array property `p` with one ReadProperty
    /// (index 0 is the array's length): how a device's Object_List is paged
    /// when it is too long for one unsegmented reply.
    ///
    /// Fails like [`BacnetClient::read_properties`]: only when the device
    /// cannot be talked to; the device's error for the element is an
    /// `Err(ErrorCode)` in the result.
    pub async fn read_array_element(
        &self,
        device: Device,
        p: PropertyRef,
        index: u32,
    ) -> Result<PropertyResult, BacnetError> {
        let peer = self.peer(device.addr);
        let mut peer = peer.lock().await;
        let mut body = Vec::new();
        services::encode_read_property_indexed(&mut body, p, index);
        let reply = self
            .transact(&mut peer, device, frame::SERVICE_READ_PROPERTY, &body)
            .await?;
        match reply {
            Reply::Ack(body) => Ok(Ok(services::decode_read_property_ack(&body, p).map_err(
                |source| BacnetError::Malformed {
                    addr: device.addr,
                    device: device.instance,
                    source,
                },
            )?)),
            Reply::Error(e) => Ok(Err(e)),
            Reply::Segmented => Ok(Err(TOO_LONG)),
            Reply::Abort(r) if is_too_long(r) => Ok(Err(TOO_LONG)),
            Reply::Abort(reason) => Err(BacnetError::Aborted {
                addr: device.addr,
                device: device.instance,
                reason,
            }),
            Reply::Reject(reason) => Err(BacnetError::Rejected {
                addr: device.addr,
                device: device.instance,
                reason,
            }),
        }
    }

    async fn who_is_inner(
        &self,
        target: SocketAddr,
        range: Option<(u32, u32)>,
        wait: Duration,
    ) -> Result<Vec<IAm>, BacnetError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.shared.listeners).push(tx);
        let mut apdu = vec![0x10, frame::SERVICE_WHO_IS];
        services::encode_who_is(&mut apdu, range);
        let broadcast = match target.ip() {
            std::net::IpAddr::V4(ip) => ip.is_broadcast() || ip.octets()[3] == 255,
            std::net::IpAddr::V6(_) => false,
        };
        let datagram = frame::encode_datagram(broadcast, false, &apdu).map_err(|source| {
            BacnetError::Malformed {
                addr: target,
                device: 0,
                source,
            }
        })?;
        if let Err(source) = self.shared.socket.send_to(&datagram, target).await {
            rx.close();
            return Err(BacnetError::WhoIsSend { target, source });
        }
        let mut found: Vec<IAm> = Vec::new();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                msg = rx.recv() => match msg {
                    Some(iam) => {
                        let in_range = range.is_none_or(|(lo, hi)| (lo..=hi).contains(&iam.instance));
                        if in_range && !found.iter().any(|f| f.instance == iam.instance && f.addr == iam.addr) {
                            found.push(iam);
                        }
                    }
                    None => break,
                },
            }
        }
        rx.close();
        found.sort_by_key(|d| (d.instance, d.addr));
        Ok(found)
    }
}

enum Rpm {
    Results(Vec<PropertyResult>),
    TooLong,
    Unsupported,
    PerProperty,
}

fn is_too_long(reason: u8) -> bool {
    matches!(
        reason,
        frame::ABORT_BUFFER_OVERFLOW
            | frame::ABORT_SEGMENTATION_NOT_SUPPORTED
            | frame::ABORT_APDU_TOO_LONG
    )
}

impl BacnetClient for UdpClient {
    fn read_properties<'a>(
        &'a self,
        device: Device,
        props: &'a [PropertyRef],
    ) -> BoxFuture<'a, Result<Vec<PropertyResult>, BacnetError>> {
        Box::pin(self.read_all(device, props))
    }

    fn who_is(
        &self,
        target: SocketAddr,
        range: Option<(u32, u32)>,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<IAm>, BacnetError>> {
        Box::pin(self.who_is_inner(target, range, wait))
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Removes a pending entry when its request ends, however it ends (reply, timeout, cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    key: (SocketAddr, u8),
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.key);
    }
}

/// Lock a std mutex, recovering from poisoning (no code here panics while holding one).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn receive_loop(shared: Arc<Shared>, cancel: CancellationToken) {
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
    let Some(apdu) = datagram.apdu else {
        return unmatched();
    };
    if let Apdu::Unconfirmed {
        service: frame::SERVICE_I_AM,
        body,
    } = apdu
    {
        match services::decode_i_am(body) {
            Ok(iam) if !datagram.routed => {
                let iam = IAm {
                    instance: iam.device.instance(),
                    addr: datagram.forwarded_from.unwrap_or(from),
                    vendor_id: u32::try_from(iam.vendor_id).unwrap_or(u32::MAX),
                    max_apdu: u32::try_from(iam.max_apdu).unwrap_or(u32::MAX),
                };
                lock(&shared.listeners).retain(|l| l.send(iam).is_ok());
            }
            Ok(_) => unmatched(),
            Err(e) => {
                shared.counters.garbage.fetch_add(1, Ordering::Relaxed);
                debug!(%from, error = %e, "dropping malformed I-Am");
            }
        }
        return;
    }
    let Some(invoke_id) = apdu.reply_invoke_id() else {
        return unmatched();
    };
    let (reply, service) = match apdu {
        Apdu::ComplexAck {
            segmented: true,
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
    let key = (from, invoke_id);
    let matches = pending
        .get(&key)
        .is_some_and(|p| service.is_none_or(|s| s == p.service));
    if !matches || datagram.routed || datagram.forwarded_from.is_some() {
        drop(pending);
        return unmatched();
    }
    if let Some(p) = pending.remove(&key) {
        let _ = p.tx.send(reply);
    }
}
