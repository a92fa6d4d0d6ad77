//! What the collector and the MCP tools call: [`read_meter`] reads all points
//! of one meter, [`discover_devices`] finds devices answering Who-Is.
//!
//! Guarantees: a reading carries a value only if the device returned a finite
//! number for it and neither its status-flags (fault, out-of-service) nor its
//! reliability (anything but no-fault-detected) say it is untrustworthy;
//! otherwise it carries the reason in `error` and no value, so nothing
//! doubtful is billed.

use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::points::PointSpec;
use super::types::{ObjectId, ObjectType, PropertyId, PropertyRef, PropertyResult, Value};
use super::units::unit_symbol;
use super::{BacnetClient, BacnetError, Device};

/// How many discovered devices are asked for their names at once.
const DISCOVERY_CONCURRENCY: usize = 32;

/// The outcome of reading one point.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PointReading {
    /// The point's configured name.
    pub name: String,
    /// The value (accumulators already multiplied by their scale); `None` when `error` is set.
    pub value: Option<f64>,
    /// Readable unit (kWh, kW, V, A, Hz, ...), when the object has units.
    pub unit: Option<String>,
    /// Why there is no value: e.g. `unknown-object`, `status-flags: fault`, `reliability: over-range`.
    pub error: Option<String>,
}

/// A device that answered Who-Is.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DiscoveredDevice {
    /// Device instance.
    pub instance: u32,
    /// BACnet/IP address, `host:port`.
    pub address: String,
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
/// Asks for each point's property and its units, status-flags and reliability
/// (and scale, for an accumulator's present-value) in as few ReadPropertyMultiple
/// requests as fit unsegmented; the client splits further or falls back to
/// ReadProperty as the device requires. Fails only when the device as a whole
/// cannot be read (see [`BacnetClient::read_properties`]); a point the device
/// refuses gets an `error` instead.
pub async fn read_meter(
    client: &dyn BacnetClient,
    device: Device,
    points: &[PointSpec],
) -> Result<Vec<PointReading>, BacnetError> {
    let mut props = Vec::with_capacity(points.len() * 5);
    let mut plans = Vec::with_capacity(points.len());
    for point in points {
        let start = props.len();
        let mut push = |property| {
            props.push(PropertyRef {
                object: point.object,
                property,
            })
        };
        push(point.property);
        push(PropertyId::UNITS);
        push(PropertyId::STATUS_FLAGS);
        push(PropertyId::RELIABILITY);
        let scaled = is_scaled(point.object, point.property);
        if scaled {
            push(PropertyId::SCALE);
        }
        plans.push((start, scaled));
    }
    let results = client.read_properties(device, &props).await?;
    Ok(points
        .iter()
        .zip(plans)
        .map(|(point, (start, scaled))| {
            let get = |i: usize| results.get(start + i);
            interpret(
                point,
                get(0),
                get(1),
                get(2),
                get(3),
                if scaled { get(4) } else { None },
            )
        })
        .collect())
}

fn is_scaled(object: ObjectId, property: PropertyId) -> bool {
    object.object_type() == ObjectType::ACCUMULATOR && property == PropertyId::PRESENT_VALUE
}

fn interpret(
    point: &PointSpec,
    value: Option<&PropertyResult>,
    units: Option<&PropertyResult>,
    flags: Option<&PropertyResult>,
    reliability: Option<&PropertyResult>,
    scale: Option<&PropertyResult>,
) -> PointReading {
    let unit = match units {
        Some(Ok(Value::Enumerated(u))) => unit_symbol(*u),
        _ => None,
    };
    let reading = |value: Option<f64>, error: Option<String>| PointReading {
        name: point.name.clone(),
        value,
        unit: unit.clone(),
        error,
    };
    let raw = match value {
        Some(Ok(v)) => v,
        Some(Err(e)) => return reading(None, Some(e.to_string())),
        None => return reading(None, Some("no result for the point".into())),
    };
    if let Some(Ok(f)) = flags {
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
    if let Some(Ok(r)) = reliability {
        match r {
            Value::Enumerated(0) => {}
            Value::Enumerated(n) => {
                return reading(None, Some(format!("reliability: {}", reliability_name(*n))))
            }
            _ => return reading(None, Some("reliability: not an enumeration".into())),
        }
    }
    let Some(mut number) = raw.as_f64() else {
        return reading(None, Some(format!("{} is not a number", point.property)));
    };
    if let Some(scale) = scale {
        match scale_factor(scale) {
            Ok(factor) => number *= factor,
            Err(e) => return reading(None, Some(e)),
        }
    }
    if !number.is_finite() {
        return reading(
            None,
            Some(format!("{} is not a finite number", point.property)),
        );
    }
    reading(Some(number), None)
}

/// An accumulator's scale: `float-scale [0] REAL` or `integer-scale [1] INTEGER` (x 10^n).
fn scale_factor(scale: &PropertyResult) -> Result<f64, String> {
    match scale {
        Ok(Value::Context { tag: 0, data }) => <[u8; 4]>::try_from(data.as_slice())
            .map(|b| f64::from(f32::from_be_bytes(b)))
            .map_err(|_| "scale: malformed float-scale".to_string()),
        Ok(Value::Context { tag: 1, data }) => super::tags::signed(data)
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| (-30..=30).contains(n))
            .map(|n| 10f64.powi(n))
            .ok_or_else(|| "scale: integer-scale out of range".to_string()),
        Ok(Value::Real(f)) => Ok(f64::from(*f)),
        Ok(_) => Err("scale: not a BACnetScale".into()),
        // A device without the (required) scale property: count as unscaled.
        Err(e) if e.is_unknown_property() => Ok(1.0),
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
    target: SocketAddr,
    range: Option<(u32, u32)>,
    wait: Duration,
) -> Result<Vec<DiscoveredDevice>, BacnetError> {
    let found = client.who_is(target, range, wait).await?;
    let devices = stream::iter(found)
        .map(|iam| async move {
            let mut out = DiscoveredDevice {
                instance: iam.instance,
                address: iam.addr.to_string(),
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

#[cfg(test)]
mod tests {
    use super::super::types::ErrorCode;
    use super::super::IAm;
    use super::*;

    /// An in-memory device: answers from a table, as a collector test would.
    struct Fake(Vec<(PropertyRef, PropertyResult)>);

    impl BacnetClient for Fake {
        fn read_properties<'a>(
            &'a self,
            _device: Device,
            props: &'a [PropertyRef],
        ) -> super::super::BoxFuture<'a, Result<Vec<PropertyResult>, BacnetError>> {
            let unknown = Err(ErrorCode {
                class: ErrorCode::CLASS_PROPERTY,
                code: ErrorCode::UNKNOWN_PROPERTY,
            });
            let out = props
                .iter()
                .map(|p| {
                    self.0
                        .iter()
                        .find(|(q, _)| q == p)
                        .map_or(unknown.clone(), |(_, r)| r.clone())
                })
                .collect();
            Box::pin(async move { Ok(out) })
        }

        fn who_is(
            &self,
            _target: SocketAddr,
            _range: Option<(u32, u32)>,
            _wait: Duration,
        ) -> super::super::BoxFuture<'_, Result<Vec<IAm>, BacnetError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn p(object: &str, property: PropertyId) -> PropertyRef {
        PropertyRef {
            object: ObjectId::parse(object).unwrap(),
            property,
        }
    }

    fn point(name: &str, object: &str) -> PointSpec {
        PointSpec {
            name: name.into(),
            object: ObjectId::parse(object).unwrap(),
            property: PropertyId::PRESENT_VALUE,
        }
    }

    #[tokio::test]
    async fn scales_flags_and_non_finite_values() {
        let fake = Fake(vec![
            (
                p("accumulator:1", PropertyId::PRESENT_VALUE),
                Ok(Value::Unsigned(1234)),
            ),
            (
                p("accumulator:1", PropertyId::UNITS),
                Ok(Value::Enumerated(19)),
            ),
            (
                p("accumulator:1", PropertyId::SCALE),
                Ok(Value::Context {
                    tag: 1,
                    data: vec![0xfe],
                }),
            ),
            (
                p("accumulator:2", PropertyId::PRESENT_VALUE),
                Ok(Value::Unsigned(10)),
            ),
            (
                p("accumulator:2", PropertyId::SCALE),
                Ok(Value::Context {
                    tag: 0,
                    data: 0.5f32.to_be_bytes().to_vec(),
                }),
            ),
            (
                p("analog-value:1", PropertyId::PRESENT_VALUE),
                Ok(Value::Real(f32::NAN)),
            ),
            (
                p("analog-value:2", PropertyId::PRESENT_VALUE),
                Ok(Value::Real(1.0)),
            ),
            (
                p("analog-value:2", PropertyId::STATUS_FLAGS),
                Ok(Value::BitString {
                    unused_bits: 4,
                    bytes: vec![0x50],
                }),
            ),
        ]);
        let device = Device {
            addr: "127.0.0.1:47808".parse().unwrap(),
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
        assert!((r[0].value.unwrap() - 12.34).abs() < 1e-9);
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
