//! An in-memory BACnet network for unit tests: devices answer from a table,
//! a device can be silent (every read fails as a timeout would), and the
//! network counts the reads it served. It implements [`BacnetClient`], so
//! the collector and [`super::read_meter`] run against it without a socket
//! (`App::with_bacnet`).
//!
//! Each device answers the wildcard device object's object-identifier with
//! its own instance (so identity checks pass) unless its table says
//! otherwise; a property the table lacks answers `unknown-property`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::types::WILDCARD_INSTANCE;
use super::types::{ErrorCode, ObjectId, PropertyId, PropertyRef, PropertyResult, Value};
use super::{BacnetClient, BacnetError, BoxFuture, Device, DeviceAddress, IAm};

/// One simulated device.
pub(crate) struct FakeDevice {
    addr: DeviceAddress,
    instance: u32,
    table: Vec<(PropertyRef, PropertyResult)>,
    silent: bool,
}

impl FakeDevice {
    /// A device `instance` at `addr` (`host:port`) with an empty table.
    pub(crate) fn new(addr: &str, instance: u32) -> Self {
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("fake device address {addr}: {e}"));
        Self {
            addr: DeviceAddress::direct(addr),
            instance,
            table: Vec::new(),
            silent: false,
        }
    }

    /// Answers `result` for `property` of `object` (`"analog-input:1"`).
    pub(crate) fn answer(
        mut self,
        object: &str,
        property: PropertyId,
        result: PropertyResult,
    ) -> Self {
        let object =
            ObjectId::parse(object).unwrap_or_else(|e| panic!("fake object {object}: {e:?}"));
        self.table.push((PropertyRef { object, property }, result));
        self
    }

    /// Answers `value` for the present-value of `object`.
    pub(crate) fn value(self, object: &str, value: Value) -> Self {
        self.answer(object, PropertyId::PRESENT_VALUE, Ok(value))
    }

    /// Answers nothing: every read of it fails as a timeout.
    pub(crate) fn silent(mut self) -> Self {
        self.silent = true;
        self
    }

    fn read(&self, p: &PropertyRef) -> PropertyResult {
        if let Some((_, r)) = self.table.iter().find(|(q, _)| q == p) {
            return r.clone();
        }
        if p.property == PropertyId::OBJECT_IDENTIFIER
            && ObjectId::device(WILDCARD_INSTANCE) == Some(p.object)
        {
            if let Some(me) = ObjectId::device(self.instance) {
                return Ok(Value::ObjectId(me));
            }
        }
        Err(ErrorCode {
            class: ErrorCode::CLASS_PROPERTY,
            code: ErrorCode::UNKNOWN_PROPERTY,
        })
    }
}

/// The devices of one test, reachable through [`BacnetClient`].
#[derive(Default)]
pub(crate) struct FakeNetwork {
    devices: Vec<FakeDevice>,
    reads: AtomicUsize,
}

impl FakeNetwork {
    /// A network of `devices`.
    pub(crate) fn new(devices: Vec<FakeDevice>) -> Self {
        Self {
            devices,
            reads: AtomicUsize::new(0),
        }
    }

    /// How many read requests the devices were sent (answered or not).
    pub(crate) fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    fn at(&self, device: Device) -> Result<&FakeDevice, BacnetError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.devices
            .iter()
            .find(|d| d.addr == device.addr && !d.silent)
            .ok_or(BacnetError::Timeout {
                addr: device.addr,
                device: device.instance,
                tries: 1,
                timeout_ms: 0,
            })
    }
}

impl BacnetClient for FakeNetwork {
    fn read_properties<'a>(
        &'a self,
        device: Device,
        props: &'a [PropertyRef],
    ) -> BoxFuture<'a, Result<Vec<PropertyResult>, BacnetError>> {
        let out = self
            .at(device)
            .map(|d| props.iter().map(|p| d.read(p)).collect());
        Box::pin(async move { out })
    }

    fn who_is(
        &self,
        _target: DeviceAddress,
        _range: Option<(u32, u32)>,
        _wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<IAm>, BacnetError>> {
        let found = self
            .devices
            .iter()
            .filter(|d| !d.silent)
            .map(|d| IAm {
                instance: d.instance,
                addr: d.addr,
                vendor_id: 0,
                max_apdu: 1476,
            })
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn read_array_element(
        &self,
        device: Device,
        p: PropertyRef,
        _index: u32,
    ) -> BoxFuture<'_, Result<PropertyResult, BacnetError>> {
        let out = self.at(device).map(|d| d.read(&p));
        Box::pin(async move { out })
    }
}
