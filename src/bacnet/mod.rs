//! BACnet/IP access for metersync: read meters' points and discover devices.
//!
//! # What it is
//! Our own small defensive codec (BVLC with foreign-device registration and
//! forwarding, NPDU with routing, APDU with segmentation, ReadProperty,
//! ReadPropertyMultiple, Who-Is/I-Am, Who-Is-Router-To-Network) with a tokio
//! client and a loopback simulator (devices, a router, a BBMD). Its decode
//! path is fuzzed (`fuzz/`) and a unit test decodes 200,000 random and
//! mutated datagrams on every `cargo test`. Why not an existing crate: see
//! the README, "Where the code differs from the design card".
//!
//! # Map
//! - [`types`]: object/property identifiers, values, per-property results.
//! - `tags`, `frame`, `services`: the codec (private; [`fuzz_decode`] exposes it to the fuzzer).
//! - [`client`]: [`UdpClient`], the tokio implementation of [`BacnetClient`]
//!   (requests, segmentation, routing); `receive` dispatches what arrives
//!   (replies, segments, I-Am, strays from unexpected addresses); `discovery`
//!   sends Who-Is and Who-Is-Router-To-Network; `socket` opens the sized
//!   socket and holds [`ClientStats`]; `bbmd` registers as a foreign device;
//!   `drops` reads the kernel's drop counters.
//! - [`read`]: [`read_meter`] and [`discover_devices`], what the collector and the MCP tools call.
//! - [`describe`]: a device's objects, paged, and a drafted `points` JSON (`describe_device`).
//! - [`meta`]: [`MeterCache`], identity, units and scales learned once per meter definition.
//! - [`address`]: a meter's `address` (`ip[:port]` or `network:mac@ip[:port]`).
//! - [`points`]: the `points` JSON of a meter.
//! - [`units`]: engineering units as readable symbols.
//! - [`sim`]: simulated meters over real UDP, for tests, the benchmark and `metersync demo`.
//! - `fake` (unit tests only): an in-memory [`BacnetClient`] whose devices
//!   answer from a table, for the collector's unit tests.
//!
//! # Guarantees
//! Nothing received from the network can panic this module: every decoder
//! returns a `Result`, every read is bounds-checked, and a datagram that does
//! not decode or match a pending request is counted and dropped. Values are
//! returned only from a device verified to be the configured instance.

pub mod address;
mod bbmd;
pub mod client;
pub mod describe;
mod discovery;
mod drops;
#[cfg(test)]
pub(crate) mod fake;
mod frame;
pub mod meta;
pub mod points;
pub mod read;
mod receive;
#[cfg(test)]
mod robustness;
mod services;
pub mod sim;
mod socket;
mod tags;
pub mod types;
pub mod units;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

pub use address::{parse_address, AddressError, DeviceAddress, Mac, Route, DEFAULT_PORT};
pub use bbmd::BbmdStatus;
pub use client::{ClientStats, RouterInfo, UdpClient};
pub use meta::MeterCache;
pub use points::{parse_points, PointSpec, PointsError};
pub use read::{
    discover, discover_devices, read_meter, DiscoverError, DiscoveredDevice, Discovery,
    PointReading, DISCOVER_CAP,
};
pub use tags::CodecError;
pub use types::{
    readable_object_types, ErrorCode, ObjectId, ObjectType, PropertyId, PropertyRef,
    PropertyResult, Value, MAX_INSTANCE,
};

/// A boxed, sendable future: keeps [`BacnetClient`] object-safe without `async-trait`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One BACnet device: where it is and its device instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// The device's BACnet/IP address, or its router's and its network and MAC behind it.
    pub addr: DeviceAddress,
    /// The device object's instance number (for messages and discovery; not routed on).
    pub instance: u32,
}

/// An I-Am answer to a Who-Is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IAm {
    /// Device instance.
    pub instance: u32,
    /// Where the device answered from (the originator for a BBMD-forwarded answer;
    /// the router's address with the device's network and MAC for a routed one).
    pub addr: DeviceAddress,
    /// BACnet vendor identifier.
    pub vendor_id: u32,
    /// Largest APDU the device accepts.
    pub max_apdu: u32,
}

/// Socket and timing settings (the config module fills them from BACNET_BIND,
/// BACNET_TIMEOUT_MS, BACNET_RETRIES, COLLECT_CONCURRENCY, BACNET_BBMD and
/// BACNET_BBMD_TTL_S).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacnetConfig {
    /// Local address of the one socket all requests share (default 0.0.0.0:47808).
    pub bind: SocketAddr,
    /// How long to wait for each try of a request (default 3000 ms).
    pub timeout: Duration,
    /// Retries after the first try (default 2, so 3 tries in all).
    pub retries: u32,
    /// Device reads in flight at once (COLLECT_CONCURRENCY): sizes the socket's
    /// receive buffer so their replies are not dropped by the kernel (default 32).
    pub concurrency: usize,
    /// The BBMD to register with as a foreign device, if any.
    pub bbmd: Option<SocketAddr>,
    /// The registration's time-to-live (re-registered at half of it).
    pub bbmd_ttl: Duration,
}

impl Default for BacnetConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            timeout: Duration::from_millis(3000),
            retries: 2,
            concurrency: 32,
            bbmd: None,
            bbmd_ttl: Duration::from_secs(300),
        }
    }
}

/// What the rest of metersync needs from a BACnet stack. Implemented by
/// [`UdpClient`], and in memory by the unit tests' fake network; the
/// [`crate::app::App`] holds one and every engine takes it from there.
pub trait BacnetClient: Send + Sync {
    /// Read `props` from `device`: one result per property, in order, where a
    /// property the device refuses (unknown object, ...) is an `Err(ErrorCode)`
    /// in its slot. Fails as a whole only when the device cannot be talked to
    /// (no reply after every try, a malformed reply, a reject or abort of the
    /// whole request), so the caller records one failure for the meter.
    fn read_properties<'a>(
        &'a self,
        device: Device,
        props: &'a [PropertyRef],
    ) -> BoxFuture<'a, Result<Vec<PropertyResult>, BacnetError>>;

    /// Send a Who-Is (optionally limited to an instance range) to `target`, a
    /// unicast or broadcast address, and gather the I-Am answers for `wait`.
    /// Fails only if the Who-Is cannot be sent.
    fn who_is(
        &self,
        target: DeviceAddress,
        range: Option<(u32, u32)>,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<IAm>, BacnetError>>;

    /// Read element `index` of the array property `p` (index 0 is the
    /// array's length): how [`describe::describe`] pages a device's
    /// Object_List. Fails like [`BacnetClient::read_properties`]: only when
    /// the device cannot be talked to; the device's error for the element is
    /// an `Err(ErrorCode)` in the result.
    fn read_array_element(
        &self,
        device: Device,
        p: PropertyRef,
        index: u32,
    ) -> BoxFuture<'_, Result<PropertyResult, BacnetError>>;

    /// Where [`read_meter`] keeps what it learns once per meter definition
    /// (identity verified, units, scales); `None` reads it all every time.
    fn meter_cache(&self) -> Option<&MeterCache> {
        None
    }

    /// The socket's state (address, counters, BBMD registration) for
    /// `connection_status` and `/metrics`; `None` for a client without a
    /// socket (an in-memory test client).
    fn socket_status(&self) -> Option<BacnetStatus> {
        None
    }
}

/// The BACnet client's state for `connection_status` and health.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct BacnetStatus {
    /// Whether the socket is open (it opens on the first read or discovery).
    pub bound: bool,
    /// The local address it is bound to.
    pub local_addr: Option<String>,
    /// What the client has seen (requests, garbage, kernel drops, ...).
    pub stats: Option<ClientStats>,
    /// The foreign-device registration, when BACNET_BBMD is set.
    pub bbmd: Option<BbmdStatus>,
}

/// The status of `client` (`None`: not bound yet), with the configured BBMD.
pub fn status(client: Option<&dyn BacnetClient>, bbmd: Option<SocketAddr>) -> BacnetStatus {
    match client {
        Some(c) => c.socket_status().unwrap_or(BacnetStatus {
            bound: true,
            local_addr: None,
            stats: None,
            bbmd: None,
        }),
        None => BacnetStatus {
            bound: false,
            local_addr: None,
            stats: None,
            bbmd: bbmd.map(|b| BbmdStatus {
                bbmd: b.to_string(),
                last_error: Some(
                    "not registered yet: the BACnet socket opens on the first read or discovery"
                        .into(),
                ),
                ..BbmdStatus::default()
            }),
        },
    }
}

/// Everything that can go wrong talking BACnet; [`BacnetError::is_retryable`]
/// says whether trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum BacnetError {
    /// The local socket could not be opened.
    #[error("cannot open the BACnet/IP socket on {bind}: {source} (is another BACnet program using it? set BACNET_BIND to another address or port)")]
    Bind {
        /// The address asked for.
        bind: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Sending failed on every try.
    #[error("cannot send to {addr} (device {device}): {source}")]
    Send {
        /// Device address.
        addr: DeviceAddress,
        /// Device instance.
        device: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A Who-Is (or another unconfirmed request) could not be sent (no device is addressed yet).
    #[error("cannot send Who-Is to {target}: {source}")]
    WhoIsSend {
        /// Where the Who-Is went.
        target: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No answer within the timeout, on every try.
    #[error("no reply from {addr} (device {device}) after {tries} tries of {timeout_ms} ms: check the meter's power, network and address")]
    Timeout {
        /// Device address.
        addr: DeviceAddress,
        /// Device instance.
        device: u32,
        /// Tries made.
        tries: u32,
        /// Timeout of each try.
        timeout_ms: u64,
    },
    /// The device rejected the request.
    #[error("device {device} at {addr} rejected the request (reject reason {reason})")]
    Rejected {
        /// Device address.
        addr: DeviceAddress,
        /// Device instance.
        device: u32,
        /// BACnet reject reason.
        reason: u8,
    },
    /// The device aborted the request.
    #[error("device {device} at {addr} aborted the request (abort reason {reason})")]
    Aborted {
        /// Device address.
        addr: DeviceAddress,
        /// Device instance.
        device: u32,
        /// BACnet abort reason.
        reason: u8,
    },
    /// The reply could not be decoded or did not answer the request.
    #[error("malformed reply from {addr} (device {device}): {source}")]
    Malformed {
        /// Device address.
        addr: DeviceAddress,
        /// Device instance.
        device: u32,
        /// What was wrong.
        #[source]
        source: CodecError,
    },
    /// Replies to the request came, but from another address than the one asked.
    #[error("device {device} at {addr} answered from {from} instead (a NAT or gateway answering from its own socket?): configure the address the device answers from, or make the gateway answer from {addr}")]
    WrongSource {
        /// Device address asked.
        addr: DeviceAddress,
        /// Device instance.
        device: u32,
        /// Where the replies came from.
        from: SocketAddr,
    },
    /// The device at the address is not the configured instance.
    #[error("the device at {addr} is {found}, not the configured device {configured}: check the meter's address and device_instance (its values are not stored)")]
    WrongDevice {
        /// Device address.
        addr: DeviceAddress,
        /// The configured instance.
        configured: u32,
        /// What the device says it is (e.g. `device 5001`).
        found: String,
    },
    /// The client was shut down while the request was pending.
    #[error("the BACnet client has shut down")]
    Closed,
}

impl BacnetError {
    /// Whether the same request may succeed later (a device that did not answer
    /// or a send that failed); a reject, abort or malformed reply will repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BacnetError::Timeout { .. } | BacnetError::Send { .. } | BacnetError::WhoIsSend { .. }
        )
    }
}

/// Run the whole decode path (datagram, then every service decoder that could
/// apply) over `data`. For the fuzzer and the no-panic tests; returns whether
/// the datagram decoded.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) -> bool {
    let Ok(dg) = frame::decode_datagram(data) else {
        return false;
    };
    if let Some(apdu) = dg.apdu {
        let body = match apdu {
            frame::Apdu::ConfirmedRequest { body, .. }
            | frame::Apdu::Unconfirmed { body, .. }
            | frame::Apdu::ComplexAck { body, .. }
            | frame::Apdu::Error { body, .. } => body,
            _ => &[],
        };
        let some = PropertyRef {
            object: ObjectId::from_raw(0),
            property: PropertyId::PRESENT_VALUE,
        };
        let _ = services::decode_read_property(body);
        let _ = services::decode_read_property_ack(body, some);
        if let Ok(req) = services::decode_rpm(body) {
            let _ = services::decode_rpm_ack(body, &req);
        }
        let _ = services::decode_rpm_ack(body, &[some]);
        let _ = services::decode_who_is(body);
        let _ = services::decode_i_am(body);
        let _ = services::decode_error(body);
    }
    true
}

/// Feed `data` to a simulated device's request handler, as the fuzzer's second
/// target: the simulator also faces the network in `metersync demo`.
#[doc(hidden)]
pub fn fuzz_simulator(data: &[u8]) -> bool {
    let config = sim::SimDeviceConfig::new(7, SocketAddr::from(([127, 0, 0, 1], 0)));
    sim::device_state_for_tests(config).handle(data).is_some()
}
