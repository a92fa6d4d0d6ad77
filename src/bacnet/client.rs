//! [`UdpClient`]: the tokio implementation of [`BacnetClient`].
//!
//! One UDP socket serves every request; its receive buffer (SO_RCVBUF) is
//! sized for `COLLECT_CONCURRENCY` replies arriving at once, and the kernel's
//! drops on it are counted in [`ClientStats`]. A background task receives all
//! datagrams and hands each reply to the request waiting for it, matched by
//! (device address, invoke id) and service, where a routed device's address
//! includes the network and MAC its router names in SNET/SADR; so concurrent
//! reads of many devices never take each other's replies. A reply that carries
//! a pending request's invoke id but comes from another address is not taken,
//! but named in the timeout error (a NAT or gateway answering from its own
//! socket), instead of a bare "no reply". Each device has a lock held for the whole
//! of a read, so at most one request is in flight per device. Every try waits
//! `timeout`; a request is sent `1 + retries` times with the same invoke id.
//!
//! Guarantees: a datagram that does not decode (garbage) or matches no
//! pending request (unmatched) is counted, logged at debug and dropped; it
//! never disturbs a pending request. Dropping the client stops the receive
//! task; [`UdpClient::shutdown`] also waits for it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::address::DeviceAddress;
use super::frame::{self, Npci};
pub(super) use super::receive::lock;
use super::receive::{receive_loop, Pending, PendingKey, Reply, RouterAnswer, WINDOW};
use super::services;
pub use super::socket::ClientStats;
use super::socket::{open_socket, Counters};
use super::types::{ErrorCode, PropertyRef, PropertyResult};
use super::{BacnetClient, BacnetConfig, BacnetError, BoxFuture, Device, IAm};
use crate::bacnet::meta::MeterCache;

/// Properties per ReadPropertyMultiple until a device's aborts teach us a
/// smaller number: enough for a 400-point meter's values and status-flags in
/// one exchange with a device that segments. One that does not aborts, and
/// the chunk is halved until request and reply fit (learned once per device).
const DEFAULT_CHUNK: usize = 1024;
/// Error given to a single property whose reply the device cannot send unsegmented
/// (class communication, code abort-segmentation-not-supported).
const TOO_LONG: ErrorCode = ErrorCode { class: 7, code: 54 };

/// A global invoke-id sequence: consecutive requests to different devices get
/// different ids, so a reply arriving from an unexpected address can be tied
/// to the one request it answers.
static NEXT_INVOKE_ID: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// What we know about one device; its mutex is held for a whole read.
struct Peer {
    rpm_unsupported: bool,
    chunk: usize,
}

/// A router that answered Who-Is-Router-To-Network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct RouterInfo {
    /// The router's BACnet/IP address.
    pub address: String,
    /// The networks it reaches.
    pub networks: Vec<u16>,
}

pub(super) struct Shared {
    pub(super) socket: UdpSocket,
    pub(super) config: BacnetConfig,
    pub(super) pending: Mutex<HashMap<PendingKey, Pending>>,
    peers: Mutex<HashMap<DeviceAddress, Arc<tokio::sync::Mutex<Peer>>>>,
    pub(super) listeners: Mutex<Vec<mpsc::UnboundedSender<IAm>>>,
    pub(super) router_listeners: Mutex<Vec<mpsc::UnboundedSender<RouterAnswer>>>,
    /// Where the BVLC-Result of a registration in flight goes.
    pub(super) bbmd_results: Mutex<Option<oneshot::Sender<u16>>>,
    /// Why the last registration failed.
    pub(super) bbmd_error: Mutex<Option<String>>,
    /// Whether a registration has succeeded (broadcasts wait for it a little).
    pub(super) registered: tokio::sync::watch::Sender<bool>,
    pub(super) counters: Counters,
    recv_buffer: (u64, u64),
    cache: MeterCache,
}

/// The BACnet/IP client: cheap to share behind an `Arc`, safe to use from many tasks.
pub struct UdpClient {
    pub(super) shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl UdpClient {
    /// Bind the socket (broadcast enabled, for Who-Is) and start the receive task.
    /// Fails when the address cannot be bound.
    ///
    /// With a BBMD configured, also starts registering as a foreign device
    /// (at once, then every half TTL); a failed registration does not fail
    /// the bind, it shows in [`UdpClient::stats`] and is retried.
    pub async fn bind(config: BacnetConfig) -> Result<Self, BacnetError> {
        let bind_err = |source| BacnetError::Bind {
            bind: config.bind,
            source,
        };
        let (std_socket, recv_buffer) = open_socket(&config).map_err(bind_err)?;
        let socket = UdpSocket::from_std(std_socket).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            socket,
            config,
            pending: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            router_listeners: Mutex::new(Vec::new()),
            bbmd_results: Mutex::new(None),
            bbmd_error: Mutex::new(None),
            registered: tokio::sync::watch::Sender::new(false),
            counters: Counters::default(),
            recv_buffer,
            cache: MeterCache::default(),
        });
        let cancel = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(receive_loop(shared.clone(), cancel.clone()))];
        if let Some(bbmd) = config.bbmd {
            tasks.push(tokio::spawn(super::bbmd::register_loop(
                shared.clone(),
                bbmd,
                cancel.clone(),
            )));
        }
        Ok(Self {
            shared,
            cancel,
            tasks: Mutex::new(tasks),
        })
    }

    /// The bound local address (useful when binding port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// What the client has seen so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        let local = self.shared.socket.local_addr().ok();
        ClientStats {
            requests_sent: c.requests_sent.load(Ordering::Relaxed),
            garbage: c.garbage.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
            wrong_source: c.wrong_source.load(Ordering::Relaxed),
            segmented_replies: c.segmented_replies.load(Ordering::Relaxed),
            recv_buffer_bytes: self.shared.recv_buffer.0,
            recv_buffer_wanted: self.shared.recv_buffer.1,
            socket_drops: local.map_or(0, super::drops::socket_drops),
            host_rcvbuf_errors: super::drops::host_rcvbuf_errors(),
            bbmd_registrations: c.bbmd_registrations.load(Ordering::Relaxed),
            bbmd_failures: c.bbmd_failures.load(Ordering::Relaxed),
            bbmd_registered: c.bbmd_registered.load(Ordering::Relaxed),
        }
    }

    /// The foreign-device registration, when BACNET_BBMD is set.
    pub fn bbmd_status(&self) -> Option<super::bbmd::BbmdStatus> {
        let bbmd = self.shared.config.bbmd?;
        let c = &self.shared.counters;
        Some(super::bbmd::BbmdStatus {
            bbmd: bbmd.to_string(),
            ttl_s: self.shared.config.bbmd_ttl.as_secs(),
            registered: c.bbmd_registered.load(Ordering::Relaxed),
            registrations: c.bbmd_registrations.load(Ordering::Relaxed),
            failures: c.bbmd_failures.load(Ordering::Relaxed),
            last_error: lock(&self.shared.bbmd_error).clone(),
        })
    }

    /// Stop the background tasks and wait for them; pending requests fail with [`BacnetError::Closed`].
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn peer(&self, addr: DeviceAddress) -> Arc<tokio::sync::Mutex<Peer>> {
        lock(&self.shared.peers)
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Peer {
                    rpm_unsupported: false,
                    chunk: DEFAULT_CHUNK,
                }))
            })
            .clone()
    }

    /// Send one confirmed request and wait for its reply, retrying on timeout.
    async fn transact(
        &self,
        _peer: &mut Peer,
        device: Device,
        service: u8,
        body: &[u8],
    ) -> Result<Reply, BacnetError> {
        let invoke_id = NEXT_INVOKE_ID.fetch_add(1, Ordering::Relaxed);
        let mut apdu = frame::confirmed_request_header_segmented(invoke_id, service);
        apdu.extend_from_slice(body);
        let npci = Npci {
            dest: device.addr.route.map(|r| (r.network, Some(r.mac))),
            expecting_reply: true,
            ..Npci::default()
        };
        let malformed = |source| BacnetError::Malformed {
            addr: device.addr,
            device: device.instance,
            source,
        };
        let wrap = |apdu: &[u8]| {
            frame::encode_bvlc(
                frame::BVLC_ORIGINAL_UNICAST,
                None,
                &frame::encode_npdu(&npci, apdu),
            )
        };
        let datagram = wrap(&apdu).map_err(malformed)?;
        // A request longer than one APDU goes as segments (clause 5.4.4).
        let segments = if apdu.len() > MAX_APDU {
            let chunks: Vec<&[u8]> = body.chunks(MAX_APDU - 6).collect();
            if chunks.len() > frame::MAX_SEGMENTS {
                return Ok(Reply::Abort(frame::ABORT_APDU_TOO_LONG));
            }
            let last = chunks.len().saturating_sub(1);
            let segs = chunks
                .iter()
                .enumerate()
                .map(|(i, chunk)| {
                    wrap(&frame::request_segment(
                        invoke_id,
                        service,
                        i as u8,
                        WINDOW,
                        i < last,
                        chunk,
                    ))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed)?;
            Some(segs)
        } else {
            None
        };
        let (tx, mut rx) = oneshot::channel();
        let (acks_tx, mut acks) = mpsc::unbounded_channel();
        let key = (device.addr, invoke_id);
        lock(&self.shared.pending).insert(
            key,
            Pending {
                service,
                tx: Some(tx),
                acks: segments.as_ref().map(|_| acks_tx),
                reassembly: None,
                strays: Vec::new(),
            },
        );
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
            if let Some(segs) = &segments {
                match self
                    .send_segments(device.addr.ip, segs, &mut acks, &mut rx)
                    .await
                {
                    Segmented::Sent => {}
                    Segmented::Answered(reply) => return Ok(reply),
                    Segmented::Closed => return Err(BacnetError::Closed),
                    Segmented::TimedOut => {
                        debug!(addr = %device.addr, attempt, "segmented request not acknowledged");
                        continue;
                    }
                    Segmented::SendFailed(e) => {
                        debug!(addr = %device.addr, attempt, error = %e, "BACnet send failed");
                        send_error = Some(e);
                        continue;
                    }
                }
            } else if let Err(e) = self.shared.socket.send_to(&datagram, device.addr.ip).await {
                debug!(addr = %device.addr, attempt, error = %e, "BACnet send failed");
                send_error = Some(e);
            }
            match tokio::time::timeout(self.shared.config.timeout, &mut rx).await {
                Ok(Ok(reply)) => {
                    if matches!(reply, Reply::SegmentedAck(_)) {
                        self.shared
                            .counters
                            .segmented_replies
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(reply);
                }
                Ok(Err(_)) => return Err(BacnetError::Closed),
                Err(_) => {
                    debug!(addr = %device.addr, device = device.instance, attempt, "BACnet request timed out")
                }
            }
        }
        let stray = lock(&self.shared.pending)
            .get(&key)
            .and_then(|p| p.strays.first().copied());
        if let Some(from) = stray {
            return Err(BacnetError::WrongSource {
                addr: device.addr,
                device: device.instance,
                from,
            });
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

    /// Send a segmented request: the first segment alone, then windows of the
    /// size the device acknowledges, each waiting for its SegmentAck (a NAK
    /// resends from the segment after the one it names).
    async fn send_segments(
        &self,
        to: SocketAddr,
        segs: &[Vec<u8>],
        acks: &mut mpsc::UnboundedReceiver<(u8, u8, bool)>,
        rx: &mut oneshot::Receiver<Reply>,
    ) -> Segmented {
        let mut next = 0usize;
        let mut window = 1usize;
        while next < segs.len() {
            let end = (next + window).min(segs.len());
            for s in segs.get(next..end).unwrap_or(&[]) {
                if let Err(e) = self.shared.socket.send_to(s, to).await {
                    return Segmented::SendFailed(e);
                }
            }
            let ack = tokio::select! {
                biased;
                r = &mut *rx => return match r {
                    Ok(reply) => Segmented::Answered(reply),
                    Err(_) => Segmented::Closed,
                },
                a = acks.recv() => a,
                _ = tokio::time::sleep(self.shared.config.timeout) => return Segmented::TimedOut,
            };
            let Some((sequence, win, _nak)) = ack else {
                // The request ended (answered, and its acks channel dropped with it).
                return match (&mut *rx).await {
                    Ok(reply) => Segmented::Answered(reply),
                    Err(_) => Segmented::Closed,
                };
            };
            window = usize::from(win.max(1));
            // Segments never number past 63 here; 255 (0 - 1) NAKs the first one.
            next = if sequence == 255 {
                0
            } else {
                usize::from(sequence) + 1
            };
        }
        Segmented::Sent
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
        let mut queue = plan_chunks(props, peer.chunk.max(1));
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
                results[i] = Some(self.rp(&mut peer, device, *p, None).await?);
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
            Reply::Ack(body) | Reply::SegmentedAck(body) => {
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

    /// One ReadProperty of `p` (element `index` of an array property when
    /// given).
    async fn rp(
        &self,
        peer: &mut Peer,
        device: Device,
        p: PropertyRef,
        index: Option<u32>,
    ) -> Result<PropertyResult, BacnetError> {
        let mut body = Vec::new();
        match index {
            None => services::encode_read_property(&mut body, p),
            Some(i) => services::encode_read_property_indexed(&mut body, p, i),
        }
        let reply = self
            .transact(peer, device, frame::SERVICE_READ_PROPERTY, &body)
            .await?;
        match reply {
            Reply::Ack(body) | Reply::SegmentedAck(body) => {
                Ok(Ok(services::decode_read_property_ack(&body, p).map_err(
                    |source| BacnetError::Malformed {
                        addr: device.addr,
                        device: device.instance,
                        source,
                    },
                )?))
            }
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
}

/// Largest APDU on BACnet/IP: a longer request is sent in segments.
const MAX_APDU: usize = 1476;
/// Largest ReadPropertyMultiple request body planned: what 64 segments hold.
/// A device that does not take segmented requests aborts, and the request is
/// halved until it fits (learned once per device).
const MAX_REQUEST_BYTES: usize = 64 * (MAX_APDU - 6);

/// Split `props` into consecutive ranges of at most `max_count` properties
/// whose encoded request stays within [`MAX_REQUEST_BYTES`].
fn plan_chunks(props: &[PropertyRef], max_count: usize) -> VecDeque<(usize, usize)> {
    let mut out = VecDeque::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in props.iter().enumerate() {
        let new_object = i == start || props.get(i - 1).is_none_or(|q| q.object != p.object);
        // A property id: a context tag and 1 to 3 bytes; a new object adds its
        // identifier (5 bytes) and the opening and closing tags.
        let cost = if p.property.0 > 255 { 3 } else { 2 } + if new_object { 7 } else { 0 };
        if i > start && (i - start >= max_count || bytes + cost > MAX_REQUEST_BYTES) {
            out.push_back((start, i));
            start = i;
            bytes = if p.property.0 > 255 { 3 } else { 2 } + 7;
        } else {
            bytes += cost;
        }
    }
    if start < props.len() {
        out.push_back((start, props.len()));
    }
    out
}

/// How sending a segmented request ended.
enum Segmented {
    /// Every segment acknowledged: the reply follows.
    Sent,
    /// The device answered before the last segment (an abort or reject).
    Answered(Reply),
    /// No SegmentAck within the timeout.
    TimedOut,
    SendFailed(std::io::Error),
    Closed,
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
        target: DeviceAddress,
        range: Option<(u32, u32)>,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<IAm>, BacnetError>> {
        Box::pin(self.who_is_inner(target, range, wait))
    }

    /// One ReadProperty with an array index (see the trait).
    fn read_array_element(
        &self,
        device: Device,
        p: PropertyRef,
        index: u32,
    ) -> BoxFuture<'_, Result<PropertyResult, BacnetError>> {
        Box::pin(async move {
            let peer = self.peer(device.addr);
            let mut peer = peer.lock().await;
            self.rp(&mut peer, device, p, Some(index)).await
        })
    }

    fn meter_cache(&self) -> Option<&MeterCache> {
        Some(&self.shared.cache)
    }

    fn socket_status(&self) -> Option<super::BacnetStatus> {
        Some(super::BacnetStatus {
            bound: true,
            local_addr: self.local_addr().ok().map(|a| a.to_string()),
            stats: Some(self.stats()),
            bbmd: self.bbmd_status(),
        })
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
    key: PendingKey,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.key);
    }
}
