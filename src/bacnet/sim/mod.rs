//! Simulated BACnet/IP meters over real UDP, for tests, the benchmark and
//! `metersync demo`: one [`Simulator`] serves many devices, each on its own
//! socket (127.0.0.x addresses and/or ports).
//!
//! Each device has a device object (object-name, vendor-name,
//! vendor-identifier), analog-inputs 1-7 (energy kWh, power kW, voltage V,
//! current A, frequency Hz, power factor, reactive power kvar), accumulator 1
//! (kWh pulses with a scale) and optionally `extra_points` analog-inputs from
//! 100 up, plus one object of each other readable type (analog-value,
//! binary-input/value, multi-state-input/value, integer-value,
//! positive-integer-value, large-analog-value, instance 1). Values drift on
//! every read unless frozen. Per device: RPM support, max APDU, segmentation,
//! the wildcard device instance, a response delay, replying from another
//! port, and "dead" (never answers) are configurable; [`SimDevice`] sets
//! values, faults and scales and counts requests and properties.
//! [`Simulator::add_router`] adds a BACnet router with MS/TP-style networks
//! behind it, [`Simulator::add_bbmd`] a BBMD (see `network`).
//!
//! Guarantees: no input datagram can panic the simulator; dropping the
//! [`Simulator`] stops its tasks, [`Simulator::shutdown`] also waits for them.

mod device;
mod network;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use device::DeviceState;
pub use device::SimScale;
pub use network::{SimBbmd, SimRouted};

use super::address::{DeviceAddress, Route};
use super::frame;
use super::points::PointSpec;
use super::types::{ObjectId, ObjectType, PropertyId};

/// The objects every simulated device serves, by the point names the demo and tests use.
pub const STANDARD_POINTS: [(&str, &str); 8] = [
    ("energy_kwh", "analog-input:1"),
    ("power_kw", "analog-input:2"),
    ("voltage_v", "analog-input:3"),
    ("current_a", "analog-input:4"),
    ("frequency_hz", "analog-input:5"),
    ("power_factor", "analog-input:6"),
    ("reactive_power_kvar", "analog-input:7"),
    ("energy_pulses_kwh", "accumulator:1"),
];

/// The standard points as a meter's `points` JSON.
pub fn standard_points_json() -> serde_json::Value {
    serde_json::Value::Array(
        STANDARD_POINTS
            .iter()
            .map(|(name, object)| serde_json::json!({"name": name, "object": object}))
            .collect(),
    )
}

/// The standard points, parsed.
pub fn standard_points() -> Vec<PointSpec> {
    STANDARD_POINTS
        .iter()
        .filter_map(|(name, object)| {
            Some(PointSpec {
                name: Arc::from(*name),
                object: ObjectId::parse(object).ok()?,
                property: PropertyId::PRESENT_VALUE,
            })
        })
        .collect()
}

/// The extra analog-input `i` (0-based) of a device configured with `extra_points`.
pub fn extra_point(i: u32) -> Option<ObjectId> {
    ObjectId::new(ObjectType::ANALOG_INPUT, 100u32.checked_add(i)?)
}

/// How one simulated device behaves.
#[derive(Clone, Debug)]
pub struct SimDeviceConfig {
    /// Device instance.
    pub instance: u32,
    /// Where to listen (port 0 picks a free port).
    pub bind: SocketAddr,
    /// object-name of the device object.
    pub name: String,
    /// vendor-name.
    pub vendor_name: String,
    /// vendor-identifier.
    pub vendor_id: u32,
    /// Answer ReadPropertyMultiple (else Reject unrecognized-service).
    pub supports_rpm: bool,
    /// Largest reply APDU; a longer one is answered with Abort segmentation-not-supported.
    pub max_apdu: usize,
    /// Extra analog-inputs (100, 101, ...) beyond the standard ones.
    pub extra_points: u32,
    /// Never answer anything.
    pub dead: bool,
    /// Wait this long before each answer.
    pub delay: Duration,
    /// The accumulator's scale.
    pub scale: SimScale,
    /// Answer reads of the wildcard device `device:4194303` (devices before
    /// 135-2004 do not; the client then asks for the configured device object).
    pub answers_wildcard: bool,
    /// Segment replies longer than `max_apdu` when the request allows it
    /// (window 4), instead of aborting with segmentation-not-supported.
    pub segmentation: bool,
    /// Lose this segment of the first segmented reply once (never sent), to
    /// exercise the client's negative acknowledgement.
    pub lose_segment_once: Option<u8>,
    /// Send replies from another socket (another port on the same IP), as a
    /// NAT or a gateway answering from its own socket does.
    pub reply_from_other_port: bool,
}

impl SimDeviceConfig {
    /// A healthy meter at `bind`: RPM, max APDU 1476, no delay, scale 10^-1.
    pub fn new(instance: u32, bind: SocketAddr) -> Self {
        Self {
            instance,
            bind,
            name: format!("Meter {instance}"),
            vendor_name: "metersync simulator".to_string(),
            vendor_id: 999,
            supports_rpm: true,
            max_apdu: 1476,
            extra_points: 0,
            dead: false,
            delay: Duration::ZERO,
            scale: SimScale::Integer(-1),
            answers_wildcard: true,
            segmentation: false,
            lose_segment_once: None,
            reply_from_other_port: false,
        }
    }
}

/// A handle on one running simulated device; clone freely.
#[derive(Clone)]
pub struct SimDevice {
    addr: SocketAddr,
    route: Option<Route>,
    instance: u32,
    state: Arc<Mutex<DeviceState>>,
}

pub(crate) fn lock(m: &Mutex<DeviceState>) -> MutexGuard<'_, DeviceState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimDevice {
    /// Where the device listens (its router's address for a routed device).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its address in the meter address grammar (with network and MAC when routed).
    pub fn address(&self) -> DeviceAddress {
        DeviceAddress {
            ip: self.addr,
            route: self.route,
        }
    }

    /// Its device instance.
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// Stop (or resume) drifting values.
    pub fn freeze(&self, frozen: bool) {
        lock(&self.state).frozen = frozen;
    }

    /// Set an object's value (an accumulator's pulse count); false if there is no such object.
    pub fn set_value(&self, object: ObjectId, value: f64) -> bool {
        lock(&self.state)
            .objects
            .get_mut(&object)
            .map(|o| o.value = value)
            .is_some()
    }

    /// What a client should read for `object` right now (f32-rounded, scaled), if frozen.
    pub fn served_value(&self, object: ObjectId) -> Option<f64> {
        lock(&self.state)
            .objects
            .get(&object)
            .map(|o| o.served_value())
    }

    /// Set an object's status-flags fault and out-of-service bits.
    pub fn set_status(&self, object: ObjectId, fault: bool, out_of_service: bool) -> bool {
        let flags = if fault { 0x40 } else { 0 } | if out_of_service { 0x10 } else { 0 };
        lock(&self.state)
            .objects
            .get_mut(&object)
            .map(|o| o.status_flags = flags)
            .is_some()
    }

    /// Set an object's reliability (0 = no-fault-detected, 2 = over-range, ...).
    pub fn set_reliability(&self, object: ObjectId, reliability: u32) -> bool {
        lock(&self.state)
            .objects
            .get_mut(&object)
            .map(|o| o.reliability = reliability)
            .is_some()
    }

    /// Stop (or resume) answering.
    pub fn set_dead(&self, dead: bool) {
        lock(&self.state).config.dead = dead;
    }

    /// Confirmed requests received so far (retries included).
    pub fn requests(&self) -> u64 {
        lock(&self.state).reads
    }

    /// Properties asked for so far (each property of a ReadPropertyMultiple counts).
    pub fn properties(&self) -> u64 {
        lock(&self.state).properties
    }

    /// Reset the request and property counters.
    pub fn reset_requests(&self) {
        let mut state = lock(&self.state);
        state.reads = 0;
        state.properties = 0;
    }

    /// Set the accumulator's scale.
    pub fn set_scale(&self, scale: SimScale) {
        let mut state = lock(&self.state);
        state.config.scale = scale;
        for o in state.objects.values_mut() {
            if o.scale.is_some() {
                o.scale = Some(scale);
            }
        }
    }
}

/// A device's request handler without sockets, for the no-panic test and the fuzzer.
pub(crate) fn device_state_for_tests(config: SimDeviceConfig) -> DeviceState {
    DeviceState::new(config)
}

/// Many simulated devices; stops when dropped.
pub struct Simulator {
    devices: Vec<SimDevice>,
    routers: Vec<SocketAddr>,
    bbmds: Vec<SimBbmd>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Bind every device's socket and start serving. Fails if a bind fails.
    pub async fn start(configs: Vec<SimDeviceConfig>) -> std::io::Result<Self> {
        let cancel = CancellationToken::new();
        let mut sim = Self {
            devices: Vec::with_capacity(configs.len()),
            routers: Vec::new(),
            bbmds: Vec::new(),
            cancel: cancel.clone(),
            tasks: Vec::with_capacity(configs.len()),
        };
        for config in configs {
            let socket = Arc::new(UdpSocket::bind(config.bind).await?);
            let addr = socket.local_addr()?;
            let reply_socket = if config.reply_from_other_port {
                Arc::new(UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).await?)
            } else {
                socket.clone()
            };
            let device = SimDevice {
                addr,
                route: None,
                instance: config.instance,
                state: Arc::new(Mutex::new(DeviceState::new(config))),
            };
            sim.tasks.push(tokio::spawn(serve(
                socket,
                reply_socket,
                device.clone(),
                cancel.clone(),
            )));
            sim.devices.push(device);
        }
        Ok(sim)
    }

    /// `n` healthy devices on 127.0.0.1 with free ports, instances `first_instance..`.
    pub async fn start_loopback(n: u32, first_instance: u32) -> std::io::Result<Self> {
        let configs = (0..n)
            .map(|i| {
                SimDeviceConfig::new(
                    first_instance.saturating_add(i),
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                )
            })
            .collect();
        Self::start(configs).await
    }

    /// The running devices, in the order configured.
    pub fn devices(&self) -> &[SimDevice] {
        &self.devices
    }

    /// The device with this instance.
    pub fn device(&self, instance: u32) -> Option<&SimDevice> {
        self.devices.iter().find(|d| d.instance == instance)
    }

    /// Confirmed requests received by all devices.
    pub fn total_requests(&self) -> u64 {
        self.devices.iter().map(SimDevice::requests).sum()
    }

    /// Stop serving and wait for every device task to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

/// A segmented request being received.
struct Incoming {
    service: u8,
    next: u8,
    in_window: u8,
    body: Vec<u8>,
}

/// What one datagram does to the segmented requests being received.
enum Step {
    /// Not a segment of a request: handle it as usual.
    NotASegment,
    /// Send this SegmentAck; with the whole request (a datagram) when it was the last segment.
    Ack(Vec<u8>, Option<Vec<u8>>),
    /// A segment out of order or unknown: nothing to do.
    Ignore,
}

/// The window the simulator accepts for a segmented request.
const REQUEST_WINDOW: u8 = 4;

fn take_request_segment(
    incoming: &mut HashMap<(SocketAddr, u8), Incoming>,
    data: &[u8],
    from: SocketAddr,
) -> Step {
    let Some(frame::Apdu::ConfirmedRequest {
        invoke_id,
        service,
        segment: Some(seg),
        body,
        ..
    }) = frame::decode_datagram(data).ok().and_then(|d| d.apdu)
    else {
        return Step::NotASegment;
    };
    let key = (from, invoke_id);
    if seg.sequence == 0 {
        incoming.insert(
            key,
            Incoming {
                service,
                next: 0,
                in_window: 0,
                body: Vec::new(),
            },
        );
    }
    let Some(inc) = incoming.get_mut(&key) else {
        return Step::Ignore;
    };
    let window = seg.window.clamp(1, REQUEST_WINDOW);
    if seg.sequence != inc.next || service != inc.service || inc.body.len() > 64 * 1476 {
        return Step::Ack(
            frame::server_segment_ack(invoke_id, inc.next.wrapping_sub(1), window),
            None,
        );
    }
    inc.body.extend_from_slice(body);
    inc.next = inc.next.wrapping_add(1);
    inc.in_window += 1;
    let ack = frame::server_segment_ack(invoke_id, seg.sequence, window);
    if !seg.more {
        let Some(inc) = incoming.remove(&key) else {
            return Step::Ignore;
        };
        let mut apdu = vec![0x02, 0x05, invoke_id, inc.service];
        apdu.extend_from_slice(&inc.body);
        return Step::Ack(ack, frame::encode_datagram(false, true, &apdu).ok());
    }
    if seg.sequence == 0 || inc.in_window >= window {
        inc.in_window = 0;
        return Step::Ack(ack, None);
    }
    Step::Ignore
}

/// A client's SegmentAck: (invoke id, the next segment to send, its window);
/// a NAK asks again from the segment after the one it names, as an ack does.
fn segment_ack(data: &[u8]) -> Option<(u8, usize, u8)> {
    match frame::decode_datagram(data).ok()?.apdu? {
        frame::Apdu::SegmentAck {
            server: false,
            invoke_id,
            sequence,
            window,
            ..
        } => Some((invoke_id, usize::from(sequence) + 1, window)),
        _ => None,
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve(
    socket: Arc<UdpSocket>,
    reply_socket: Arc<UdpSocket>,
    device: SimDevice,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 2048];
    // Segmented replies in progress: (client, invoke id) -> the segments.
    let mut outgoing: HashMap<(SocketAddr, u8), Vec<Vec<u8>>> = HashMap::new();
    // Segmented requests being received: (client, invoke id) -> what came so far.
    let mut incoming: HashMap<(SocketAddr, u8), Incoming> = HashMap::new();
    let mut whole: Vec<u8>;
    let mut lose = lock(&device.state).config.lose_segment_once;
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(addr = %device.addr, error = %e, "simulator receive error");
                    continue;
                }
            },
        };
        if let Some((invoke_id, next, window)) = segment_ack(buf.get(..n).unwrap_or(&[])) {
            let key = (from, invoke_id);
            let done = match outgoing.get(&key) {
                Some(segments) => {
                    let end = (next + usize::from(window.max(1))).min(segments.len());
                    for s in segments.get(next..end).unwrap_or(&[]) {
                        if lose.is_some() && s.get(2).copied() == lose {
                            lose = None;
                            continue;
                        }
                        if let Ok(dg) = frame::encode_datagram(false, false, s) {
                            let _ = reply_socket.send_to(&dg, from).await;
                        }
                    }
                    next >= segments.len()
                }
                None => false,
            };
            if done {
                outgoing.remove(&key);
            }
            continue;
        }
        let mut data = buf.get(..n).unwrap_or(&[]);
        if lock(&device.state).config.segmentation {
            match take_request_segment(&mut incoming, data, from) {
                Step::NotASegment => {}
                Step::Ack(ack, complete) => {
                    if let Ok(dg) = frame::encode_datagram(false, false, &ack) {
                        let _ = reply_socket.send_to(&dg, from).await;
                    }
                    match complete {
                        Some(request) => {
                            whole = request;
                            data = &whole;
                        }
                        None => continue,
                    }
                }
                Step::Ignore => continue,
            }
        }
        let (reply, delay) = {
            let mut state = lock(&device.state);
            if state.config.dead {
                state.reads = state.reads.saturating_add(1);
                continue;
            }
            (state.handle_datagram(data), state.config.delay)
        };
        let Some((reply, forwarded_from)) = reply else {
            continue;
        };
        if let Some((invoke_id, segments)) = lock(&device.state).outgoing.take() {
            outgoing.insert((from, invoke_id), segments);
        }
        // A BBMD-forwarded request is answered straight to its originator.
        let from = forwarded_from.unwrap_or(from);
        if delay.is_zero() {
            let _ = reply_socket.send_to(&reply, from).await;
        } else {
            let socket = reply_socket.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(delay) => { let _ = socket.send_to(&reply, from).await; }
                }
            });
        }
    }
}
