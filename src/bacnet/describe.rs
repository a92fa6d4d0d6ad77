//! `describe_device` / `metersync describe`: a device's objects (name,
//! units, present value, status flags), a page at a time, and a `points`
//! JSON draft that `download_meters` accepts.
//!
//! How it reads: the device's instance comes from a unicast Who-Is (unless
//! given); the Object_List's length is read by array index 0; a list that
//! fits the page is then asked for whole, and otherwise (or when the device
//! cannot send it unsegmented) read one element per object of the page, so
//! a device with hundreds of objects never needs a segmented reply; the objects' properties are read
//! with ReadPropertyMultiple through [`BacnetClient::read_properties`]
//! (split or replaced by ReadProperty as the device requires).
//!
//! Guarantees: a page lists at most [`MAX_PAGE`] objects; the draft holds
//! only meter-relevant object types ([`is_meter_object`]) with names that
//! follow the point-name rules (`[a-z0-9_]`, at most [`MAX_NAME_LEN`]
//! characters, unique within the page) and parses with
//! [`super::parse_points`]; an object that does not answer is listed with
//! its error, never dropped silently.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use super::types::{ObjectId, ObjectType, PropertyId, PropertyRef, PropertyResult, Value};
use super::units::unit_symbol;
use super::{BacnetClient, BacnetError, Device};

/// Objects per page when no limit is given.
pub const DEFAULT_PAGE: u32 = 50;
/// Most objects per page.
pub const MAX_PAGE: u32 = 200;
/// Longest drafted point name.
pub const MAX_NAME_LEN: usize = 63;
/// Object_List (76).
const OBJECT_LIST: PropertyId = PropertyId(76);

/// Object types a meter's points may use (the meter definition's list):
/// analog/binary/multi-state input and value, accumulator (23),
/// integer-value (45), positive-integer-value (48), large-analog-value (46).
pub fn is_meter_object(t: ObjectType) -> bool {
    matches!(t.raw(), 0 | 2 | 3 | 5 | 13 | 19 | 23 | 45 | 46 | 48)
}

/// What went wrong describing a device.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// A bad argument; the message names it.
    #[error("invalid {field}: {problem}")]
    Argument {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// No device answered Who-Is at the address.
    #[error("no device answered Who-Is at {addr} within {wait_ms} ms: check the address and that the device is powered, or give device_instance")]
    NotFound {
        /// Where the Who-Is went.
        addr: super::DeviceAddress,
        /// How long we waited.
        wait_ms: u64,
    },
    /// The device refused the Object_List.
    #[error("device {instance} at {addr} did not give its object list: {problem}")]
    ObjectList {
        /// Where.
        addr: super::DeviceAddress,
        /// Which device.
        instance: u32,
        /// The device's error.
        problem: String,
    },
    /// The device could not be talked to.
    #[error(transparent)]
    Bacnet(#[from] BacnetError),
}

fn bad(field: &'static str, problem: impl Into<String>) -> DescribeError {
    DescribeError::Argument {
        field,
        problem: problem.into(),
    }
}

/// status-flags, decoded.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, PartialEq)]
pub struct StatusFlags {
    /// In alarm.
    pub in_alarm: bool,
    /// Fault: the value is not to be trusted.
    pub fault: bool,
    /// Overridden locally.
    pub overridden: bool,
    /// Out of service.
    pub out_of_service: bool,
}

/// One object of the device.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ObjectInfo {
    /// `type:instance`, as a point's `object` is written.
    pub object: String,
    /// object-name.
    pub name: Option<String>,
    /// Units as a symbol (kWh, kW, V...).
    pub units: Option<String>,
    /// present-value as a number (an accumulator's is its raw pulse count).
    pub present_value: Option<f64>,
    /// status-flags.
    pub status_flags: Option<StatusFlags>,
    /// Whether its type can be a meter point (and is in the draft).
    pub meter_point: bool,
    /// The device's error for a property of this object, if any.
    pub error: Option<String>,
}

/// One page of a device's description.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DeviceDescription {
    /// `host:port` the device answered at.
    pub address: String,
    /// Its device instance (a meter's `device_instance`).
    pub device_instance: u32,
    /// The device object's object-name.
    pub device_name: Option<String>,
    /// vendor-name.
    pub vendor_name: Option<String>,
    /// Entries in its Object_List (the device object included).
    pub object_count: u32,
    /// Position of this page's first object in the Object_List (1-based).
    pub first_index: u32,
    /// This page's objects.
    pub objects: Vec<ObjectInfo>,
    /// A `points` JSON for the meter-relevant objects of this page: an
    /// array of {"name", "object"} that download_meters accepts.
    pub points_draft: serde_json::Value,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Turns an object name into a point name: lowercase `[a-z0-9_]`, no
/// leading, trailing or doubled `_`, the unit appended when the name does
/// not already end with it (`energy` in kWh -> `energy_kwh`), at most
/// [`MAX_NAME_LEN`] characters; `fallback` when nothing is left.
pub fn point_name(object_name: Option<&str>, unit: Option<&str>, fallback: &str) -> String {
    fn clean(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
        }
        out.trim_end_matches('_').to_string()
    }
    let mut name = clean(object_name.unwrap_or(""));
    if name.is_empty() {
        name = clean(fallback);
    }
    if let Some(u) = unit.map(clean).filter(|u| !u.is_empty()) {
        if !name.ends_with(&format!("_{u}")) && name != u {
            name = format!("{name}_{u}");
        }
    }
    name.truncate(MAX_NAME_LEN);
    name.trim_end_matches('_').to_string()
}

fn decode_cursor(s: &str) -> Result<(u32, u32), DescribeError> {
    let err = || {
        bad(
            "cursor",
            "not a cursor of describe_device: pass the next_cursor of the previous page for the same address, or omit it",
        )
    };
    let mut it = s.strip_prefix("o1.").ok_or_else(err)?.split('.');
    let instance = it.next().and_then(|x| x.parse().ok()).ok_or_else(err)?;
    let index: u32 = it.next().and_then(|x| x.parse().ok()).ok_or_else(err)?;
    if it.next().is_some() || index == 0 {
        return Err(err());
    }
    Ok((instance, index))
}

fn text(r: Option<&PropertyResult>) -> Option<String> {
    match r {
        Some(Ok(Value::CharacterString(s))) => Some(s.clone()),
        _ => None,
    }
}

/// Describes one page of the objects of the device at `address`.
///
/// Fails on a bad argument, when no device answers at `address`, or when
/// the device cannot be talked to or refuses its Object_List.
pub async fn describe(
    client: &dyn BacnetClient,
    address: &str,
    device_instance: Option<u32>,
    limit: Option<u32>,
    cursor: Option<&str>,
    wait: Duration,
) -> Result<DeviceDescription, DescribeError> {
    let addr = super::parse_address(address).map_err(|e| bad("address", e.to_string()))?;
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad(
            "limit",
            format!("must be between 1 and {MAX_PAGE}, got {limit}"),
        ));
    }
    let (cursor_instance, start) = match cursor {
        Some(c) => {
            let (i, s) = decode_cursor(c)?;
            (Some(i), s)
        }
        None => (None, 1),
    };
    let instance = match (device_instance.or(cursor_instance), cursor_instance) {
        (Some(i), Some(c)) if i != c => {
            return Err(bad("cursor", format!("it belongs to device {c}, not {i}")))
        }
        (Some(i), _) => i,
        (None, _) => {
            let found = client.who_is(addr, None, wait).await?;
            found
                .iter()
                .find(|i| i.addr == addr)
                .or(found.first())
                .map(|i| i.instance)
                .ok_or(DescribeError::NotFound {
                    addr,
                    wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                })?
        }
    };
    let dev_obj = ObjectId::device(instance).ok_or_else(|| {
        bad(
            "device_instance",
            format!("{instance} is above the BACnet limit 4194303"),
        )
    })?;
    let device = Device { addr, instance };
    let list_ref = PropertyRef {
        object: dev_obj,
        property: OBJECT_LIST,
    };
    let list_error = |problem: String| DescribeError::ObjectList {
        addr,
        instance,
        problem,
    };
    let count = match client.read_array_element(device, list_ref, 0).await? {
        Ok(v) => v
            .as_f64()
            .filter(|n| *n >= 0.0 && *n <= f64::from(u32::MAX))
            .map(|n| n as u32)
            .ok_or_else(|| list_error(format!("its length is not a number: {v:?}")))?,
        Err(e) => return Err(list_error(e.to_string())),
    };
    let end = start.saturating_add(limit).min(count.saturating_add(1));
    // A list that fits the page is asked for whole first (one request; a
    // device whose reply would be too long answers with an error, and the
    // entries are then read one by one).
    let mut ids = Vec::new();
    if start == 1 && end > count {
        if let Some(Ok(v)) = client.read_properties(device, &[list_ref]).await?.pop() {
            let whole: Vec<ObjectId> = match v {
                Value::ObjectId(id) => vec![id],
                Value::List(items) => items
                    .into_iter()
                    .filter_map(|i| match i {
                        Value::ObjectId(id) => Some(id),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if whole.len() == count as usize {
                ids = whole;
            }
        }
    }
    for i in (start..end).skip(ids.len()) {
        match client.read_array_element(device, list_ref, i).await? {
            Ok(Value::ObjectId(id)) => ids.push(id),
            Ok(other) => return Err(list_error(format!("entry {i} is not an object: {other:?}"))),
            Err(e) => return Err(list_error(format!("entry {i}: {e}"))),
        }
    }
    let header = [
        PropertyRef {
            object: dev_obj,
            property: PropertyId::OBJECT_NAME,
        },
        PropertyRef {
            object: dev_obj,
            property: PropertyId::VENDOR_NAME,
        },
    ];
    let per_object = [
        PropertyId::OBJECT_NAME,
        PropertyId::UNITS,
        PropertyId::PRESENT_VALUE,
        PropertyId::STATUS_FLAGS,
    ];
    let mut props: Vec<PropertyRef> = header.to_vec();
    for id in ids
        .iter()
        .filter(|id| id.object_type() != ObjectType::DEVICE)
    {
        props.extend(per_object.iter().map(|p| PropertyRef {
            object: *id,
            property: *p,
        }));
    }
    let results = client.read_properties(device, &props).await?;
    let mut results = results.into_iter();
    let device_name = text(results.next().as_ref());
    let vendor_name = text(results.next().as_ref());
    let mut objects = Vec::new();
    let mut draft = Vec::new();
    let mut names = HashSet::new();
    for id in &ids {
        if id.object_type() == ObjectType::DEVICE {
            objects.push(ObjectInfo {
                object: id.to_string(),
                name: device_name.clone(),
                units: None,
                present_value: None,
                status_flags: None,
                meter_point: false,
                error: None,
            });
            continue;
        }
        let r: Vec<PropertyResult> = results.by_ref().take(per_object.len()).collect();
        let name = text(r.first());
        let units = match r.get(1) {
            Some(Ok(Value::Enumerated(u))) => unit_symbol(*u),
            _ => None,
        };
        let present_value = r
            .get(2)
            .and_then(|v| v.as_ref().ok())
            .and_then(Value::as_f64);
        let status_flags = match r.get(3) {
            Some(Ok(v @ Value::BitString { .. })) => Some(StatusFlags {
                in_alarm: v.bit(0),
                fault: v.bit(1),
                overridden: v.bit(2),
                out_of_service: v.bit(3),
            }),
            _ => None,
        };
        // units and status-flags are optional for some types (binary objects
        // have no units): only a missing name or value is an error.
        let error = [(0, "object-name"), (2, "present-value")]
            .iter()
            .find_map(|(i, what)| match r.get(*i) {
                Some(Err(e)) => Some(format!("{what}: {e}")),
                None => Some(format!("{what}: no answer")),
                _ => None,
            });
        let meter_point = is_meter_object(id.object_type());
        if meter_point {
            let fallback = format!("{}_{}", id.object_type(), id.instance());
            let mut pname = point_name(name.as_deref(), units.as_deref(), &fallback);
            if !names.insert(pname.clone()) {
                pname = point_name(Some(&format!("{pname}_{fallback}")), None, &fallback);
                names.insert(pname.clone());
            }
            draft.push(serde_json::json!({"name": pname, "object": id.to_string()}));
        }
        objects.push(ObjectInfo {
            object: id.to_string(),
            name,
            units,
            present_value,
            status_flags,
            meter_point,
            error,
        });
    }
    Ok(DeviceDescription {
        address: addr.to_string(),
        device_instance: instance,
        device_name,
        vendor_name,
        object_count: count,
        first_index: start,
        objects,
        points_draft: serde_json::Value::Array(draft),
        next_cursor: (end <= count).then(|| format!("o1.{instance}.{end}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_follow_the_rules() {
        assert_eq!(point_name(Some("energy"), Some("kWh"), "x"), "energy_kwh");
        assert_eq!(
            point_name(Some("Energy kWh"), Some("kWh"), "x"),
            "energy_kwh"
        );
        assert_eq!(
            point_name(Some("  Zähler #3 / Wirkleistung "), Some("kW"), "x"),
            "z_hler_3_wirkleistung_kw"
        );
        assert_eq!(
            point_name(Some("°°°"), None, "analog-input_7"),
            "analog_input_7"
        );
        assert_eq!(
            point_name(Some(&"a".repeat(200)), None, "x").len(),
            MAX_NAME_LEN
        );
        assert_eq!(
            point_name(Some("power-factor"), Some("PF"), "x"),
            "power_factor_pf"
        );
    }

    #[test]
    fn a_who_is_that_cannot_be_sent_names_no_device() {
        let e = BacnetError::WhoIsSend {
            target: std::net::SocketAddr::from(([192, 168, 1, 255], 47808)),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("cannot send Who-Is to 192.168.1.255:47808"),
            "{text}"
        );
        assert!(!text.contains("device"), "{text}");
    }

    #[test]
    fn cursors() {
        assert_eq!(decode_cursor("o1.7.51").ok(), Some((7, 51)));
        for c in ["", "o1.7", "o1.7.0", "o1.x.5", "o2.7.5", "o1.7.5.1"] {
            assert!(decode_cursor(c).is_err(), "{c}");
        }
    }
}
