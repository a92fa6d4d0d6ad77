//! What the collector and the MCP tools call: [`read_meter`] reads all points
//! of one meter, [`discover_devices`] finds devices answering Who-Is.
//!
//! Guarantees: a reading carries a value only if the device returned a finite
//! number for it and neither its status-flags (fault, out-of-service) nor its
//! reliability (anything but no-fault-detected) say it is untrustworthy;
//! otherwise it carries the reason in `error` and no value, so nothing
//! doubtful is billed.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::address::DeviceAddress;
use super::meta::{PointMeta, Scale};
use super::points::PointSpec;
use super::types::{
    ErrorCode, ObjectId, ObjectType, PropertyId, PropertyRef, PropertyResult, Value,
    WILDCARD_INSTANCE,
};
use super::units::unit_symbol;
use super::{BacnetClient, BacnetError, Device};

/// How many discovered devices are asked for their names at once.
const DISCOVERY_CONCURRENCY: usize = 32;

/// The outcome of reading one point.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PointReading {
    /// The point's configured name (shared with the meter definition).
    #[schemars(with = "String")]
    pub name: Arc<str>,
    /// The value (accumulators already multiplied by their scale); `None` when `error` is set.
    pub value: Option<f64>,
    /// Readable unit (kWh, kW, V, A, Hz, ...), when the object has units
    /// (shared with the meter cache: learned once per meter definition).
    #[schemars(with = "Option<String>")]
    pub unit: Option<Arc<str>>,
    /// Why there is no value: e.g. `unknown-object`, `status-flags: fault`, `reliability: over-range`.
    pub error: Option<String>,
}

/// A device that answered Who-Is.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DiscoveredDevice {
    /// Device instance.
    pub instance: u32,
    /// Its address in the meter address grammar: `host:port`, or
    /// `network:mac@host:port` for a device behind a router (that router's address).
    pub address: String,
    /// The remote network it is on, for a routed device.
    pub network: Option<u16>,
    /// Its MAC on that network (decimal for one byte, else 0x-hex), for a routed device.
    pub mac: Option<String>,
    /// BACnet vendor identifier.
    pub vendor_id: u32,
    /// The device object's vendor-name, if it could be read.
    pub vendor_name: Option<String>,
    /// The device object's object-name, if it could be read.
    pub name: Option<String>,
    /// Why the names could not be read, if they could not.
    pub error: Option<String>,
}

/// Read every point of one meter.
///
/// On first contact with a meter definition (and when its address or points
/// change, or daily) one request also verifies that the device at the address
/// is the configured instance (the wildcard device's object-identifier) and
/// learns each point's units and each accumulator's scale; the client's
/// [`super::MeterCache`] keeps them. Every run otherwise asks for each point's
/// property and status-flags only, in as few ReadPropertyMultiple requests as
/// fit; a point whose status-flags say fault costs one more request, for its
/// reliability, so the reason is named. The client splits further or falls
/// back to ReadProperty as the device requires.
///
/// Fails when the device as a whole cannot be read (see
/// [`BacnetClient::read_properties`]) or is not the configured instance
/// ([`BacnetError::WrongDevice`]); a point the device refuses gets an `error` instead.
pub async fn read_meter(
    client: &dyn BacnetClient,
    device: Device,
    points: &[PointSpec],
) -> Result<Vec<PointReading>, BacnetError> {
    let cache = client.meter_cache();
    let known = cache.and_then(|c| c.get(device, points));
    let mut props = Vec::with_capacity(points.len() * 4 + 1);
    let mut scaled = Vec::new();
    if known.is_none() {
        props.push(PropertyRef {
            object: ObjectId::device(WILDCARD_INSTANCE).unwrap_or(ObjectId::from_raw(0)),
            property: PropertyId::OBJECT_IDENTIFIER,
        });
        for point in points {
            props.push(PropertyRef {
                object: point.object,
                property: PropertyId::UNITS,
            });
            if is_scaled(point.object, point.property) {
                scaled.push(Some(props.len()));
                props.push(PropertyRef {
                    object: point.object,
                    property: PropertyId::SCALE,
                });
            } else {
                scaled.push(None);
            }
        }
    }
    let values_at = props.len();
    for point in points {
        props.push(PropertyRef {
            object: point.object,
            property: point.property,
        });
        props.push(PropertyRef {
            object: point.object,
            property: PropertyId::STATUS_FLAGS,
        });
    }
    let results = client.read_properties(device, &props).await?;
    let meta = match known {
        Some(meta) => meta,
        None => {
            verify(client, device, results.first()).await?;
            let mut at = 1;
            let mut meta = Vec::with_capacity(points.len());
            for scale_at in &scaled {
                let unit = match results.get(at) {
                    Some(Ok(Value::Enumerated(u))) => unit_symbol(*u).map(Arc::from),
                    _ => None,
                };
                at += 1;
                let scale = match scale_at {
                    None => Ok(None),
                    Some(i) => {
                        at += 1;
                        scale_of(results.get(*i)).map(Some)
                    }
                };
                meta.push(PointMeta { unit, scale });
            }
            let meta: Arc<[PointMeta]> = meta.into();
            if let Some(cache) = cache {
                cache.put(device, points, meta.clone());
            }
            meta
        }
    };
    let value = |i: usize| results.get(values_at + 2 * i);
    let flags = |i: usize| results.get(values_at + 2 * i + 1);
    // Faulty points: ask why (one request for all of them).
    let faulty: Vec<usize> = (0..points.len())
        .filter(|i| matches!(flags(*i), Some(Ok(f)) if f.bit(1)))
        .collect();
    let mut reliability: Vec<Option<PropertyResult>> = vec![None; points.len()];
    if !faulty.is_empty() {
        let asks: Vec<PropertyRef> = faulty
            .iter()
            .filter_map(|i| points.get(*i))
            .map(|p| PropertyRef {
                object: p.object,
                property: PropertyId::RELIABILITY,
            })
            .collect();
        if let Ok(rs) = client.read_properties(device, &asks).await {
            for (i, r) in faulty.iter().zip(rs) {
                if let Some(slot) = reliability.get_mut(*i) {
                    *slot = Some(r);
                }
            }
        }
    }
    Ok(points
        .iter()
        .enumerate()
        .map(|(i, point)| {
            let none = PointMeta {
                unit: None,
                scale: Ok(None),
            };
            interpret(
                point,
                value(i),
                flags(i),
                reliability.get(i).and_then(Option::as_ref),
                meta.get(i).unwrap_or(&none),
            )
        })
        .collect())
}

/// Check that the device answering at `device.addr` is `device.instance`.
///
/// `wildcard` is its answer for device:4194303's object-identifier; a device
/// too old for the wildcard is asked for its configured device object instead.
async fn verify(
    client: &dyn BacnetClient,
    device: Device,
    wildcard: Option<&PropertyResult>,
) -> Result<(), BacnetError> {
    let wrong = |found: String| BacnetError::WrongDevice {
        addr: device.addr,
        configured: device.instance,
        found,
    };
    if let Some(Ok(Value::ObjectId(id))) = wildcard {
        if id.object_type() == ObjectType::DEVICE && id.instance() != WILDCARD_INSTANCE {
            return if id.instance() == device.instance {
                Ok(())
            } else {
                Err(wrong(format!("device {}", id.instance())))
            };
        }
    }
    let Some(object) = ObjectId::device(device.instance) else {
        return Err(wrong("not addressable".into()));
    };
    let ask = [PropertyRef {
        object,
        property: PropertyId::OBJECT_IDENTIFIER,
    }];
    let answer = client.read_properties(device, &ask).await?;
    match answer.first() {
        Some(Ok(Value::ObjectId(id))) if *id == object => Ok(()),
        Some(Err(e)) if e.code == ErrorCode::UNKNOWN_OBJECT => {
            // Name what is there, if it says.
            let iam = client
                .who_is(device.addr, None, Duration::from_millis(500))
                .await
                .unwrap_or_default();
            Err(wrong(match iam.first() {
                Some(i) => format!("device {}", i.instance),
                None => format!("a device without device object {}", device.instance),
            }))
        }
        Some(Ok(other)) => Err(wrong(format!(
            "a device answering {other:?} for its identifier"
        ))),
        Some(Err(e)) => Err(wrong(format!(
            "a device that cannot confirm its identity ({e})"
        ))),
        None => Err(wrong("a device that did not confirm its identity".into())),
    }
}

fn is_scaled(object: ObjectId, property: PropertyId) -> bool {
    object.object_type() == ObjectType::ACCUMULATOR && property == PropertyId::PRESENT_VALUE
}

fn interpret(
    point: &PointSpec,
    value: Option<&PropertyResult>,
    flags: Option<&PropertyResult>,
    reliability: Option<&PropertyResult>,
    meta: &PointMeta,
) -> PointReading {
    let reading = |value: Option<f64>, error: Option<String>| PointReading {
        name: point.name.clone(),
        value,
        unit: meta.unit.clone(),
        error,
    };
    let raw = match value {
        Some(Ok(v)) => v,
        Some(Err(e)) => return reading(None, Some(e.to_string())),
        None => return reading(None, Some("no result for the point".into())),
    };
    if let Some(Ok(f)) = flags {
        if f.bit(1) {
            if let Some(Ok(Value::Enumerated(n))) = reliability {
                if *n != 0 {
                    return reading(None, Some(format!("reliability: {}", reliability_name(*n))));
                }
            }
        }
        let mut bad = Vec::new();
        if f.bit(1) {
            bad.push("fault");
        }
        if f.bit(3) {
            bad.push("out-of-service");
        }
        if !bad.is_empty() {
            return reading(None, Some(format!("status-flags: {}", bad.join(", "))));
        }
    }
    let number = match &meta.scale {
        Err(e) => return reading(None, Some(e.clone())),
        Ok(Some(scale)) => scale.apply(raw),
        Ok(None) => raw.as_f64(),
    };
    let Some(number) = number else {
        return reading(None, Some(format!("{} is not a number", point.property)));
    };
    if !number.is_finite() {
        return reading(
            None,
            Some(format!("{} is not a finite number", point.property)),
        );
    }
    reading(Some(number), None)
}

/// An accumulator's scale: `float-scale [0] REAL` or `integer-scale [1] INTEGER` (x 10^n).
fn scale_of(scale: Option<&PropertyResult>) -> Result<Scale, String> {
    let Some(scale) = scale else {
        return Err("scale: no result".into());
    };
    match scale {
        Ok(Value::Context { tag: 0, data }) => <[u8; 4]>::try_from(data.as_slice())
            .ok()
            .and_then(|b| Scale::from_f32(f32::from_be_bytes(b)))
            .ok_or_else(|| "scale: malformed float-scale".to_string()),
        Ok(Value::Context { tag: 1, data }) => super::tags::signed(data)
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| (-30..=30).contains(n))
            .map(Scale::power_of_ten)
            .ok_or_else(|| "scale: integer-scale out of range".to_string()),
        Ok(Value::Real(f)) => Scale::from_f32(*f).ok_or_else(|| "scale: not finite".to_string()),
        Ok(_) => Err("scale: not a BACnetScale".into()),
        // A device without the (required) scale property: count as unscaled.
        Err(e) if e.is_unknown_property() => Ok(Scale::power_of_ten(0)),
        Err(e) => Err(format!("scale: {e}")),
    }
}

fn reliability_name(n: u32) -> String {
    let name = match n {
        1 => "no-sensor",
        2 => "over-range",
        3 => "under-range",
        4 => "open-loop",
        5 => "shorted-loop",
        6 => "no-output",
        7 => "unreliable-other",
        8 => "process-error",
        9 => "multi-state-fault",
        10 => "configuration-error",
        12 => "communication-failure",
        13 => "member-fault",
        14 => "monitored-object-fault",
        15 => "tripped",
        _ => return format!("reliability {n}"),
    };
    name.to_string()
}

/// Who-Is to `target` (unicast or broadcast), gather I-Am answers for `wait`,
/// then read each device's object-name and vendor-name (a device that answers
/// Who-Is but not the read is still listed, with `error` set).
/// Fails only if the Who-Is cannot be sent.
pub async fn discover_devices(
    client: &dyn BacnetClient,
    target: DeviceAddress,
    range: Option<(u32, u32)>,
    wait: Duration,
) -> Result<Vec<DiscoveredDevice>, BacnetError> {
    let found = client.who_is(target, range, wait).await?;
    let devices = stream::iter(found)
        .map(|iam| async move {
            let mut out = DiscoveredDevice {
                instance: iam.instance,
                address: iam.addr.to_string(),
                network: iam.addr.route.map(|r| r.network),
                mac: iam.addr.route.map(|r| r.mac.to_string()),
                vendor_id: iam.vendor_id,
                vendor_name: None,
                name: None,
                error: None,
            };
            let Some(object) = ObjectId::device(iam.instance) else {
                return out;
            };
            let props = [
                PropertyRef {
                    object,
                    property: PropertyId::OBJECT_NAME,
                },
                PropertyRef {
                    object,
                    property: PropertyId::VENDOR_NAME,
                },
            ];
            let device = Device {
                addr: iam.addr,
                instance: iam.instance,
            };
            match client.read_properties(device, &props).await {
                Ok(results) => {
                    let text = |r: Option<&PropertyResult>| match r {
                        Some(Ok(Value::CharacterString(s))) => Some(s.clone()),
                        _ => None,
                    };
                    out.name = text(results.first());
                    out.vendor_name = text(results.get(1));
                }
                Err(e) => out.error = Some(e.to_string()),
            }
            out
        })
        .buffered(DISCOVERY_CONCURRENCY)
        .collect()
        .await;
    Ok(devices)
}

/// How many devices [`discover`] lists before it only counts.
pub const DISCOVER_CAP: usize = 100;
/// Where [`discover`] sends Who-Is when no address is given.
pub const DISCOVER_DEFAULT_TARGET: &str = "255.255.255.255:47808";
/// How long [`discover`] waits for I-Am answers when not told (ms).
pub const DISCOVER_DEFAULT_WAIT_MS: u64 = 3000;
/// The bounds of the wait for I-Am answers (ms).
pub const DISCOVER_WAIT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// Devices that answered Who-Is: what `discover_devices` (MCP) and
/// `metersync discover` return.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Discovery {
    /// Where the Who-Is went.
    pub target: String,
    /// Devices found, by instance.
    #[schemars(description = format!("Devices found, by instance, at most {DISCOVER_CAP}."))]
    pub devices: Vec<DiscoveredDevice>,
    /// Devices left out of the list.
    pub devices_omitted: usize,
}

/// Why [`discover`] did not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The wait is outside [`DISCOVER_WAIT_MS`].
    #[error("timeout_ms must be between 100 and 60000, got {0}")]
    Wait(u64),
    /// The address does not parse.
    #[error("address: {0}")]
    Address(#[from] super::AddressError),
    /// The Who-Is could not be sent.
    #[error(transparent)]
    Bacnet(#[from] BacnetError),
}

/// Who-Is to `address` (default [`DISCOVER_DEFAULT_TARGET`]), waiting
/// `timeout_ms` (default [`DISCOVER_DEFAULT_WAIT_MS`], within
/// [`DISCOVER_WAIT_MS`]) for answers: the devices sorted by instance, at
/// most [`DISCOVER_CAP`] listed and the rest counted. The one set of
/// discovery rules every front end uses.
pub async fn discover(
    client: &dyn BacnetClient,
    address: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<Discovery, DiscoverError> {
    let wait = timeout_ms.unwrap_or(DISCOVER_DEFAULT_WAIT_MS);
    if !DISCOVER_WAIT_MS.contains(&wait) {
        return Err(DiscoverError::Wait(wait));
    }
    let target = super::parse_address(address.unwrap_or(DISCOVER_DEFAULT_TARGET))?;
    let mut devices = discover_devices(client, target, None, Duration::from_millis(wait)).await?;
    devices.sort_by_key(|d| d.instance);
    let devices_omitted = devices.len().saturating_sub(DISCOVER_CAP);
    devices.truncate(DISCOVER_CAP);
    Ok(Discovery {
        target: target.to_string(),
        devices,
        devices_omitted,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeDevice, FakeNetwork};
    use super::*;

    fn point(name: &str, object: &str) -> PointSpec {
        PointSpec {
            name: name.into(),
            object: ObjectId::parse(object).unwrap(),
            property: PropertyId::PRESENT_VALUE,
        }
    }

    #[tokio::test]
    async fn scales_flags_and_non_finite_values() {
        let fake = FakeNetwork::new(vec![FakeDevice::new("127.0.0.1:47808", 1)
            .value("accumulator:1", Value::Unsigned(1234))
            .answer(
                "accumulator:1",
                PropertyId::UNITS,
                Ok(Value::Enumerated(19)),
            )
            .answer(
                "accumulator:1",
                PropertyId::SCALE,
                Ok(Value::Context {
                    tag: 1,
                    data: vec![0xfe],
                }),
            )
            .value("accumulator:2", Value::Unsigned(10))
            .answer(
                "accumulator:2",
                PropertyId::SCALE,
                Ok(Value::Context {
                    tag: 0,
                    data: 0.5f32.to_be_bytes().to_vec(),
                }),
            )
            .value("analog-value:1", Value::Real(f32::NAN))
            .value("analog-value:2", Value::Real(1.0))
            .answer(
                "analog-value:2",
                PropertyId::STATUS_FLAGS,
                Ok(Value::BitString {
                    unused_bits: 4,
                    bytes: vec![0x50],
                }),
            )]);
        let device = Device {
            addr: DeviceAddress::direct("127.0.0.1:47808".parse().unwrap()),
            instance: 1,
        };
        let points = [
            point("a", "accumulator:1"),
            point("b", "accumulator:2"),
            point("c", "analog-value:1"),
            point("d", "analog-value:2"),
            point("e", "analog-value:3"),
        ];
        let r = read_meter(&fake, device, &points).await.unwrap();
        assert_eq!(r[0].value, Some(12.34));
        assert_eq!(r[0].unit.as_deref(), Some("kWh"));
        assert_eq!(r[1].value, Some(5.0));
        assert_eq!(
            r[2].error.as_deref(),
            Some("present-value is not a finite number")
        );
        assert_eq!(
            r[3].error.as_deref(),
            Some("status-flags: fault, out-of-service")
        );
        assert_eq!(r[4].error.as_deref(), Some("unknown-property"));
        assert!(r[2..].iter().all(|r| r.value.is_none()));
    }
}
