//! Checks on downloaded meters, so a bad row on the remote is reported and
//! skipped instead of reaching the collector.
//!
//! A meter is usable when its `address` is `host:port` (port optional,
//! default 47808), its `device_instance` is a BACnet instance (0..=4194302),
//! its `points` are a JSON array of `{"name": string, "object":
//! "type:instance", "property"?: string}` with distinct names and a type the
//! collector reads (analog-input, analog-value, accumulator), and no earlier
//! meter (by id) of the same site uses the same device instance.
//!
//! Only active rows are checked: an inactive meter is never read, so it is
//! mirrored as it is. (The BACnet module has its own parser; the two are to
//! be reconciled into one.)

use std::collections::{HashMap, HashSet};

use super::table::{Cell, Record, Table};

/// The BACnet object types whose present value the collector reads.
pub const OBJECT_TYPES: &[&str] = &["analog-input", "analog-value", "accumulator"];

/// The default BACnet/IP UDP port (0xBAC0).
pub const DEFAULT_PORT: u16 = 47808;

/// The largest BACnet object instance; 4194303 is the "any instance"
/// wildcard and names no device.
const MAX_INSTANCE: u32 = 4_194_302;

/// The device instances claimed so far in a run, per site.
#[derive(Default)]
pub(crate) struct Instances {
    /// Each distinct `site_id` seen, numbered (a site has many meters).
    sites: HashMap<Vec<u8>, u32>,
    /// `(site number, instance)` to the first meter (by id) that uses it.
    seen: HashMap<(Option<u32>, i32), i64>,
}

impl Instances {
    /// Claims `instance` on `site` for meter `id`; fails when an earlier
    /// meter holds it.
    pub(crate) fn claim(
        &mut self,
        site: Option<&[u8]>,
        instance: i32,
        id: i64,
    ) -> Result<(), String> {
        let site = site.map(|s| match self.sites.get(s) {
            Some(n) => *n,
            None => {
                let n = self.sites.len() as u32;
                self.sites.insert(s.to_vec(), n);
                n
            }
        });
        match self.seen.get(&(site, instance)) {
            Some(first) => Err(format!(
                "device_instance {instance} is already used by meter {first} on the same site; give one of them another instance or deactivate it"
            )),
            None => {
                self.seen.insert((site, instance), id);
                Ok(())
            }
        }
    }
}

/// Checks one active meter's own values; returns its device instance.
pub(crate) fn check_meter(table: Table, r: &Record) -> Result<i32, String> {
    let instance = match r.get(table, "device_instance") {
        Cell::Int4(i) if (0..=MAX_INSTANCE as i64).contains(&(*i as i64)) => *i,
        Cell::Int4(i) => {
            return Err(format!(
                "device_instance {i} is not a BACnet device instance (0 to {MAX_INSTANCE})"
            ))
        }
        _ => return Err("device_instance is missing".into()),
    };
    let address = r
        .get(table, "address")
        .as_text()
        .ok_or("address is missing")?;
    check_address(address)?;
    let points = r
        .get(table, "points")
        .as_text()
        .ok_or("points is missing")?;
    check_points(points)?;
    Ok(instance)
}

/// Checks `host:port` (port optional): returns host and port.
pub fn check_address(address: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| {
        Err(format!(
            "address {address:?} is not host:port ({why}); expected e.g. 192.168.1.20:47808 or meter-3.local"
        ))
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        // [IPv6]:port or [IPv6]
        let Some((h, tail)) = rest.split_once(']') else {
            return bad("unclosed [");
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address inside [ ]");
        }
        match tail {
            "" => (h, None),
            t => match t.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return bad("unexpected text after ]"),
            },
        }
    } else {
        match address.split_once(':') {
            None => (address, None),
            Some((h, p)) => (h, Some(p)),
        }
    };
    if host.is_empty() {
        return bad("no host");
    }
    if !address.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return bad("the host has characters a host name cannot have");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return bad("the port must be a number from 1 to 65535"),
        },
    };
    Ok((host.to_string(), port))
}

/// Checks a meter's `points` document.
pub fn check_points(json: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("points is not valid JSON: {e}"))?;
    let Some(items) = value.as_array() else {
        return Err("points must be a JSON array of {\"name\", \"object\"} objects".into());
    };
    let mut names = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            return Err(format!("points[{i}] is not an object"));
        };
        let name = match obj.get("name") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s,
            _ => return Err(format!("points[{i}] has no \"name\" string")),
        };
        if !names.insert(name.as_str()) {
            return Err(format!("points[{i}]: the name {name:?} is used twice"));
        }
        let object = match obj.get("object") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(format!("points[{i}] ({name}) has no \"object\" string")),
        };
        check_object(object).map_err(|e| format!("points[{i}] ({name}): {e}"))?;
        match obj.get("property") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {}
            Some(_) => {
                return Err(format!(
                    "points[{i}] ({name}): \"property\" must be a non-empty string"
                ))
            }
        }
    }
    Ok(())
}

/// Checks `type:instance`, e.g. `analog-input:1`.
fn check_object(object: &str) -> Result<(), String> {
    let Some((ty, inst)) = object.split_once(':') else {
        return Err(format!(
            "object {object:?} is not type:instance (e.g. analog-input:1)"
        ));
    };
    if !OBJECT_TYPES.contains(&ty) {
        return Err(format!(
            "object type {ty:?} is not one of {}",
            OBJECT_TYPES.join(", ")
        ));
    }
    match inst.parse::<u32>() {
        Ok(n) if n <= MAX_INSTANCE => Ok(()),
        _ => Err(format!(
            "object instance {inst:?} is not a number from 0 to {MAX_INSTANCE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            check_address("10.0.0.5"),
            Ok(("10.0.0.5".into(), DEFAULT_PORT))
        );
        assert_eq!(
            check_address("meter-3.local:47809"),
            Ok(("meter-3.local".into(), 47809))
        );
        assert_eq!(check_address("[::1]:5000"), Ok(("::1".into(), 5000)));
        for bad in [
            "",
            ":47808",
            "host:",
            "host:0",
            "host:70000",
            "host:x",
            "a b:1",
            "[::1",
            "h:1:2",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn instances_are_per_site_and_first_come() {
        let mut i = Instances::default();
        assert!(i.claim(Some(b"s1"), 7, 1).is_ok());
        assert!(i.claim(Some(b"s2"), 7, 2).is_ok());
        assert!(i.claim(None, 7, 3).is_ok());
        let e = i.claim(Some(b"s1"), 7, 4);
        assert!(e.is_err_and(|e| e.contains("meter 1")));
    }

    #[test]
    fn points() {
        assert!(check_points(r#"[{"name":"energy_kwh","object":"analog-input:1"}]"#).is_ok());
        assert!(check_points(
            r#"[{"name":"e","object":"accumulator:0","property":"present-value","unit":"kWh"}]"#
        )
        .is_ok());
        assert!(check_points("[]").is_ok());
        for bad in [
            "{}",
            "not json",
            r#"[1]"#,
            r#"[{"object":"analog-input:1"}]"#,
            r#"[{"name":"e"}]"#,
            r#"[{"name":"e","object":"binary-input:1"}]"#,
            r#"[{"name":"e","object":"analog-input"}]"#,
            r#"[{"name":"e","object":"analog-input:-1"}]"#,
            r#"[{"name":"e","object":"analog-input:1","property":3}]"#,
            r#"[{"name":"e","object":"analog-input:1"},{"name":"e","object":"analog-input:2"}]"#,
        ] {
            assert!(check_points(bad).is_err(), "{bad} accepted");
        }
    }
}
