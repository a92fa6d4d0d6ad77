//! The object model and request handling of one simulated device, as a pure
//! function from a request datagram to a reply datagram (no I/O here).
//!
//! Guarantees: [`DeviceState::handle`] never panics on any input; it answers
//! as a real device would: RP/RPM values or errors, Reject for services it
//! does not support (RPM when configured so), Abort segmentation-not-supported
//! when a reply exceeds its max APDU, I-Am for a Who-Is whose range matches.

use std::collections::BTreeMap;

use super::super::frame::{self, Apdu};
use super::super::services::{self, IAmBody};
use super::super::types::{
    ErrorCode, ObjectId, ObjectType, PropertyId, PropertyRef, PropertyResult, Value,
    WILDCARD_INSTANCE,
};
use super::SimDeviceConfig;

/// An accumulator's scale, as BACnetScale encodes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SimScale {
    /// float-scale: value = pulses x factor.
    Float(f32),
    /// integer-scale: value = pulses x 10^n.
    Integer(i8),
}

impl SimScale {
    fn factor(self) -> f64 {
        match self {
            SimScale::Float(f) => f64::from(f),
            SimScale::Integer(n) => 10f64.powi(i32::from(n)),
        }
    }
}

/// How an object's present-value goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// REAL (analog objects).
    Real,
    /// Enumerated inactive/active (binary objects).
    Binary,
    /// Unsigned (multi-state state numbers, positive-integer-value).
    Unsigned,
    /// INTEGER (integer-value).
    Signed,
    /// Double (large-analog-value).
    Double,
}

#[derive(Clone, Debug)]
pub(crate) struct SimObject {
    pub encoding: Encoding,
    pub name: String,
    /// Analog value, or the accumulator's pulse count.
    pub value: f64,
    pub units: u32,
    /// status-flags bits as sent: 0x80 in-alarm, 0x40 fault, 0x20 overridden, 0x10 out-of-service.
    pub status_flags: u8,
    pub reliability: u32,
    pub scale: Option<SimScale>,
    /// Added to the value on each read unless frozen (sign flips each read for non-energy points).
    pub drift: f64,
    pub monotonic: bool,
}

impl SimObject {
    /// What a client computes from this object's present-value (f32 rounding, scale applied).
    pub fn served_value(&self) -> f64 {
        if let Some(scale) = self.scale {
            return self.value.max(0.0).round() * scale.factor();
        }
        match self.encoding {
            Encoding::Real => f64::from(self.value as f32),
            Encoding::Binary => f64::from(u8::from(self.value != 0.0)),
            Encoding::Unsigned => self.value.max(0.0).round(),
            Encoding::Signed => self.value.round(),
            Encoding::Double => self.value,
        }
    }

    fn wire_value(&self) -> Value {
        if self.scale.is_some() {
            return Value::Unsigned(self.value.max(0.0).round() as u64);
        }
        match self.encoding {
            Encoding::Real => Value::Real(self.value as f32),
            Encoding::Binary => Value::Enumerated(u32::from(self.value != 0.0)),
            Encoding::Unsigned => Value::Unsigned(self.value.max(0.0).round() as u64),
            Encoding::Signed => Value::Signed(self.value.round() as i64),
            Encoding::Double => Value::Double(self.value),
        }
    }
}

pub(crate) struct DeviceState {
    pub config: SimDeviceConfig,
    pub objects: BTreeMap<ObjectId, SimObject>,
    pub frozen: bool,
    pub reads: u64,
    /// The segments of the last segmented reply (invoke id, APDUs), for the socket loop.
    pub outgoing: Option<(u8, Vec<Vec<u8>>)>,
    /// Properties asked for (each property of an RPM counts).
    pub properties: u64,
}

fn err(class: u32, code: u32) -> ErrorCode {
    ErrorCode { class, code }
}

impl DeviceState {
    pub fn new(config: SimDeviceConfig) -> Self {
        let mut objects = BTreeMap::new();
        let base = f64::from(config.instance % 1000);
        let standard: [(u32, &str, f64, u32, f64, bool); 7] = [
            (1, "energy", 1000.0 + base, 19, 0.01, true),
            (2, "power", 12.5, 48, 0.25, false),
            (3, "voltage", 230.0, 5, 0.5, false),
            (4, "current", 18.0, 3, 0.125, false),
            (5, "frequency", 50.0, 27, 0.0625, false),
            (6, "power-factor", 0.95, 15, 0.0078125, false),
            (7, "reactive-power", 3.5, 12, 0.125, false),
        ];
        let ai = |n| ObjectId::new(ObjectType::ANALOG_INPUT, n);
        for (n, name, value, units, drift, monotonic) in standard {
            if let Some(id) = ai(n) {
                objects.insert(id, analog(name, value, units, drift, monotonic));
            }
        }
        if let Some(id) = ObjectId::new(ObjectType::ACCUMULATOR, 1) {
            let mut acc = analog("energy-pulses", 50_000.0, 19, 1.0, true);
            acc.scale = Some(config.scale);
            objects.insert(id, acc);
        }
        // One object of every other readable type, for the object-type tests.
        let typed: [(u16, &str, f64, u32, Encoding); 8] = [
            (2, "setpoint", 21.5, 62, Encoding::Real),
            (3, "breaker", 1.0, 95, Encoding::Binary),
            (5, "relay", 0.0, 95, Encoding::Binary),
            (13, "tariff", 2.0, 95, Encoding::Unsigned),
            (19, "mode", 3.0, 95, Encoding::Unsigned),
            (45, "temperature-offset", -7.0, 62, Encoding::Signed),
            (46, "lifetime-energy", 123_456_789.125, 19, Encoding::Double),
            (48, "pulse-count", 4_000_000_000.0, 95, Encoding::Unsigned),
        ];
        for (ty, name, value, units, encoding) in typed {
            if let Some(id) = ObjectType::new(ty).and_then(|t| ObjectId::new(t, 1)) {
                let mut o = analog(name, value, units, 0.0, true);
                o.encoding = encoding;
                objects.insert(id, o);
            }
        }
        for i in 0..config.extra_points {
            if let Some(id) = ai(100 + i) {
                let value = f64::from(i) + 0.5;
                objects.insert(id, analog(&format!("extra-{i}"), value, 48, 0.25, false));
            }
        }
        Self {
            config,
            objects,
            frozen: false,
            reads: 0,
            outgoing: None,
            properties: 0,
        }
    }

    fn device_id(&self) -> Option<ObjectId> {
        ObjectId::device(self.config.instance)
    }

    /// Answer one datagram; `None` when there is nothing to answer.
    pub(crate) fn handle(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.handle_datagram(data).map(|(reply, _)| reply)
    }

    /// Answer one datagram: the reply and, for a BBMD-forwarded request, the
    /// originator it goes to (else the sender).
    pub(crate) fn handle_datagram(
        &mut self,
        data: &[u8],
    ) -> Option<(Vec<u8>, Option<std::net::SocketAddr>)> {
        let dg = frame::decode_datagram(data).ok()?;
        let reply = self.handle_apdu(dg.apdu?)?;
        Some((
            frame::encode_datagram(false, false, &reply).ok()?,
            dg.forwarded_from,
        ))
    }

    /// Answer one APDU with a reply APDU (for the socket loop and the simulated router).
    pub(crate) fn handle_apdu(&mut self, apdu: Apdu<'_>) -> Option<Vec<u8>> {
        Some(match apdu {
            Apdu::ConfirmedRequest {
                invoke_id,
                service,
                max_apdu,
                segment,
                segmented_response_accepted,
                body,
            } => {
                self.reads = self.reads.saturating_add(1);
                // Segmented requests are put together by the socket loop first.
                if segment.is_some() {
                    abort(invoke_id, frame::ABORT_SEGMENTATION_NOT_SUPPORTED)
                } else {
                    let limit = max_apdu.min(self.config.max_apdu);
                    let apdu = self.confirmed(invoke_id, service, body);
                    if apdu.len() <= limit || apdu.first() != Some(&0x30) {
                        apdu
                    } else if segmented_response_accepted && self.config.segmentation {
                        self.segment(invoke_id, service, &apdu, limit)
                    } else {
                        abort(invoke_id, frame::ABORT_SEGMENTATION_NOT_SUPPORTED)
                    }
                }
            }
            Apdu::Unconfirmed {
                service: frame::SERVICE_WHO_IS,
                body,
            } => {
                let range = services::decode_who_is(body).ok()?;
                let me = self.config.instance;
                if range.is_some_and(|(lo, hi)| !(lo..=hi).contains(&me)) {
                    return None;
                }
                let mut apdu = vec![0x10, frame::SERVICE_I_AM];
                services::encode_i_am(
                    &mut apdu,
                    &IAmBody {
                        device: self.device_id()?,
                        max_apdu: self.config.max_apdu as u64,
                        segmentation: 3,
                        vendor_id: u64::from(self.config.vendor_id),
                    },
                );
                apdu
            }
            _ => return None,
        })
    }

    fn confirmed(&mut self, invoke_id: u8, service: u8, body: &[u8]) -> Vec<u8> {
        let mut apdu = vec![0x30, invoke_id, service];
        match service {
            frame::SERVICE_READ_PROPERTY => {
                let Ok((p, index)) = services::decode_read_property_indexed(body) else {
                    return reject(invoke_id, 0);
                };
                match self.read(p).and_then(|v| element(v, index)) {
                    Ok(v) => services::encode_read_property_ack(&mut apdu, p, &v),
                    Err(e) => {
                        let mut out = vec![0x50, invoke_id, service];
                        services::encode_error(&mut out, e);
                        return out;
                    }
                }
            }
            frame::SERVICE_READ_PROPERTY_MULTIPLE if self.config.supports_rpm => {
                let Ok(props) = services::decode_rpm(body) else {
                    return reject(invoke_id, 0);
                };
                let results: Vec<(PropertyRef, PropertyResult)> =
                    props.iter().map(|p| (*p, self.read(*p))).collect();
                services::encode_rpm_ack(&mut apdu, &results);
            }
            _ => return reject(invoke_id, frame::REJECT_UNRECOGNIZED_SERVICE),
        }
        apdu
    }

    /// Split a too-long ComplexAck into segments: keep them in `outgoing`
    /// and return the first (the rest go as the client acknowledges).
    fn segment(&mut self, invoke_id: u8, service: u8, apdu: &[u8], limit: usize) -> Vec<u8> {
        let body = apdu.get(3..).unwrap_or(&[]);
        let room = limit.saturating_sub(5).max(1);
        let count = body.len().div_ceil(room);
        if count > 64 {
            return abort(invoke_id, frame::ABORT_BUFFER_OVERFLOW);
        }
        let segments: Vec<Vec<u8>> = body
            .chunks(room)
            .enumerate()
            .map(|(i, chunk)| {
                let more = i + 1 < count;
                let mut s = vec![
                    0x38 | if more { 0x04 } else { 0 },
                    invoke_id,
                    i as u8,
                    SEGMENT_WINDOW,
                    service,
                ];
                s.extend_from_slice(chunk);
                s
            })
            .collect();
        let first = segments.first().cloned().unwrap_or_default();
        self.outgoing = Some((invoke_id, segments));
        first
    }

    fn read(&mut self, p: PropertyRef) -> PropertyResult {
        self.properties = self.properties.saturating_add(1);
        let wildcard = ObjectId::device(WILDCARD_INSTANCE);
        if Some(p.object) == self.device_id()
            || (Some(p.object) == wildcard && self.config.answers_wildcard)
        {
            return self.read_device(p.property);
        }
        let frozen = self.frozen;
        let Some(o) = self.objects.get_mut(&p.object) else {
            return Err(err(ErrorCode::CLASS_OBJECT, ErrorCode::UNKNOWN_OBJECT));
        };
        Ok(match p.property.0 {
            75 => Value::ObjectId(p.object),
            77 => Value::CharacterString(o.name.clone()),
            79 => Value::Enumerated(u32::from(p.object.object_type().raw())),
            81 => Value::Boolean(o.status_flags & 0x10 != 0),
            85 => {
                if !frozen {
                    o.value += o.drift;
                    if !o.monotonic {
                        o.drift = -o.drift;
                    }
                }
                o.wire_value()
            }
            103 => Value::Enumerated(o.reliability),
            // Fault is set whenever reliability is not no-fault-detected (clause 12).
            111 => Value::BitString {
                unused_bits: 4,
                bytes: vec![(o.status_flags & 0xf0) | if o.reliability != 0 { 0x40 } else { 0 }],
            },
            117 if o.units == 95 => {
                return Err(err(ErrorCode::CLASS_PROPERTY, ErrorCode::UNKNOWN_PROPERTY))
            }
            117 => Value::Enumerated(o.units),
            187 => match o.scale {
                Some(SimScale::Float(f)) => Value::Context {
                    tag: 0,
                    data: f.to_be_bytes().to_vec(),
                },
                Some(SimScale::Integer(n)) => Value::Context {
                    tag: 1,
                    data: vec![n as u8],
                },
                None => return Err(err(ErrorCode::CLASS_PROPERTY, ErrorCode::UNKNOWN_PROPERTY)),
            },
            _ => return Err(err(ErrorCode::CLASS_PROPERTY, ErrorCode::UNKNOWN_PROPERTY)),
        })
    }

    fn read_device(&self, property: PropertyId) -> PropertyResult {
        let c = &self.config;
        Ok(match property.0 {
            75 => Value::ObjectId(self.device_id().unwrap_or(ObjectId::from_raw(0))),
            76 => Value::List(
                self.device_id()
                    .into_iter()
                    .chain(self.objects.keys().copied())
                    .map(Value::ObjectId)
                    .collect(),
            ),
            77 => Value::CharacterString(c.name.clone()),
            79 => Value::Enumerated(8),
            62 => Value::Unsigned(c.max_apdu as u64),
            107 => Value::Enumerated(3),
            120 => Value::Unsigned(u64::from(c.vendor_id)),
            121 => Value::CharacterString(c.vendor_name.clone()),
            _ => return Err(err(ErrorCode::CLASS_PROPERTY, ErrorCode::UNKNOWN_PROPERTY)),
        })
    }
}

fn analog(name: &str, value: f64, units: u32, drift: f64, monotonic: bool) -> SimObject {
    SimObject {
        encoding: Encoding::Real,
        name: name.to_string(),
        value,
        units,
        status_flags: 0,
        reliability: 0,
        scale: None,
        drift,
        monotonic,
    }
}

/// Element `index` of an array value (0: its length), or the whole value.
fn element(v: Value, index: Option<u32>) -> PropertyResult {
    let Some(i) = index else { return Ok(v) };
    let Value::List(items) = v else {
        // property-is-not-an-array (50)
        return Err(err(ErrorCode::CLASS_PROPERTY, 50));
    };
    if i == 0 {
        return Ok(Value::Unsigned(items.len() as u64));
    }
    let at = usize::try_from(i - 1).unwrap_or(usize::MAX);
    // invalid-array-index (42)
    items
        .into_iter()
        .nth(at)
        .ok_or(err(ErrorCode::CLASS_PROPERTY, 42))
}

/// The window the simulator proposes for a segmented reply.
const SEGMENT_WINDOW: u8 = 4;

fn reject(invoke_id: u8, reason: u8) -> Vec<u8> {
    vec![0x60, invoke_id, reason]
}

fn abort(invoke_id: u8, reason: u8) -> Vec<u8> {
    // 0x71: Abort sent by the server.
    vec![0x71, invoke_id, reason]
}
