//! The one definition of a meter: what a `meters` row's `device_instance`,
//! `address` and `points` must be for the collector to read it.
//!
//! Download validation, the collector, `read_meter` and `list_meters` all
//! call [`MeterDefinition::parse`] (or [`MeterDefinition::parse_text`]), so
//! a meter the download accepts is, by construction, one the collector can
//! read, and a meter it refuses is refused everywhere with the same words.
//!
//! The rules, each defined once:
//! - `device_instance`: 0 to [`MAX_CONFIGURED_INSTANCE`] (4194302; 4194303
//!   is the BACnet wildcard and names no device);
//! - `address`: whatever [`bacnet::parse_address`] accepts (IPv4 literals,
//!   port default [`bacnet::DEFAULT_PORT`]; host names and IPv6 are refused:
//!   see the README's meter definition reference);
//! - `points`: a JSON array of 1 to [`MAX_POINTS`] objects
//!   `{"name", "object", "property"?}` and no other key, with distinct names
//!   of 1 to [`MAX_POINT_NAME_LEN`] characters from [`POINT_NAME_CHARS`]
//!   (starting with a letter or a digit), objects of a type in
//!   [`READABLE_OBJECT_TYPES`] with an instance up to
//!   [`MAX_CONFIGURED_INSTANCE`], and a known property (default
//!   present-value). JSON nested deeper than serde_json's limit (128) is
//!   refused as invalid, never a panic.
//!
//! Guarantees: parsing never panics; every error says which field is wrong
//! and what is accepted, quoting at most 40 characters of a bad name.

use crate::bacnet::{
    self,
    types::{MAX_CONFIGURED_INSTANCE, READABLE_OBJECT_TYPES},
    PointSpec,
};

/// The most points one meter may have: far above a real meter's
/// (a few dozen), low enough that one meter's reads stay a few requests.
pub const MAX_POINTS: usize = 256;

/// The longest point name, in characters. Readings are keyed and indexed
/// by `(meter_id, point, recorded_at)` locally and remotely; a bounded name
/// keeps every index entry far below PostgreSQL's 8 kB limit.
pub const MAX_POINT_NAME_LEN: usize = 64;

/// The characters a point name may use besides ASCII letters and digits.
/// Names are column-like identifiers that analytics and billing queries
/// use; no spaces, quotes or control characters to escape.
pub const POINT_NAME_CHARS: &str = "_-.";

/// Where a configured device listens, as the BACnet layer's address parser
/// returns it. (One alias, so a richer address type changes only this line
/// and [`MeterDefinition::device`].)
pub type MeterAddress = crate::bacnet::DeviceAddress;

/// A meter the collector can read: its device and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterDefinition {
    /// The device's BACnet instance.
    pub instance: u32,
    /// Where the device listens.
    pub address: MeterAddress,
    /// The points to read, in configured order.
    pub points: Vec<PointSpec>,
}

/// Why a meter definition is not usable. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// `device_instance` out of range.
    #[error("device_instance {0} is not a BACnet device instance (0 to {MAX_CONFIGURED_INSTANCE}; 4194303 is the wildcard)")]
    Instance(i64),
    /// `address` refused by the address grammar.
    #[error("bad address (host:port, the host an IPv4 address): {0}")]
    Address(#[from] bacnet::AddressError),
    /// `points` is not JSON at all (or nested too deep to read).
    #[error("bad points: not valid JSON ({0})")]
    PointsJson(String),
    /// `points` is JSON but not a usable list of points.
    #[error("bad points: {0}")]
    Points(#[from] bacnet::PointsError),
}

impl MeterDefinition {
    /// Checks a meter's three defining columns.
    ///
    /// Fails, naming the first bad field, on an instance out of range, an
    /// address outside the grammar, or points breaking any rule above.
    pub fn parse(
        instance: i64,
        address: &str,
        points: &serde_json::Value,
    ) -> Result<Self, DefinitionError> {
        let instance = u32::try_from(instance)
            .ok()
            .filter(|i| *i <= MAX_CONFIGURED_INSTANCE)
            .ok_or(DefinitionError::Instance(instance))?;
        let address = bacnet::parse_address(address)?;
        let points = parse_points(points)?;
        Ok(MeterDefinition {
            instance,
            address,
            points,
        })
    }

    /// [`MeterDefinition::parse`] with `points` as JSON text (as a `jsonb`
    /// or `text` column reads).
    ///
    /// Fails also when the text is not JSON.
    pub fn parse_text(instance: i64, address: &str, points: &str) -> Result<Self, DefinitionError> {
        let json =
            serde_json::from_str(points).map_err(|e| DefinitionError::PointsJson(e.to_string()))?;
        Self::parse(instance, address, &json)
    }

    /// The device to talk to.
    pub fn device(&self) -> bacnet::Device {
        bacnet::Device {
            addr: self.address,
            instance: self.instance,
        }
    }
}

/// The `points` rules: the BACnet layer's structural parse, then the limits.
fn parse_points(json: &serde_json::Value) -> Result<Vec<PointSpec>, bacnet::PointsError> {
    if let Some(a) = json.as_array() {
        if a.len() > MAX_POINTS {
            return Err(bacnet::PointsError::Entry {
                index: MAX_POINTS,
                label: String::new(),
                problem: format!(
                    "a meter has at most {MAX_POINTS} points, this one has {}",
                    a.len()
                ),
            });
        }
    }
    let points = bacnet::parse_points(json)?;
    for (index, p) in points.iter().enumerate() {
        let fail = |problem: String| bacnet::PointsError::Entry {
            index,
            label: format!(" ({})", bacnet::points::short_name(&p.name)),
            problem,
        };
        check_name(&p.name).map_err(fail)?;
        let ty = p.object.object_type().raw();
        if !READABLE_OBJECT_TYPES.iter().any(|(n, _)| *n == ty) {
            return Err(fail(format!(
                "object type {} is not one the collector reads (readable: {})",
                p.object.object_type(),
                READABLE_OBJECT_TYPES
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if p.object.instance() > MAX_CONFIGURED_INSTANCE {
            return Err(fail(format!(
                "object instance {} is the wildcard; use 0 to {MAX_CONFIGURED_INSTANCE}",
                p.object.instance()
            )));
        }
    }
    Ok(points)
}

/// A point name's own rules (length and characters).
fn check_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len > MAX_POINT_NAME_LEN {
        return Err(format!(
            "the name has {len} characters; at most {MAX_POINT_NAME_LEN}"
        ));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || POINT_NAME_CHARS.contains(c);
    if let Some(c) = name.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "the name has the character {:?}; use ASCII letters, digits and {POINT_NAME_CHARS:?}",
            c
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("the name must start with a letter or a digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GOOD: &str = r#"[{"name": "energy_kwh", "object": "analog-input:1"}]"#;

    fn points(name: &str, object: &str) -> String {
        json!([{ "name": name, "object": object }]).to_string()
    }

    #[test]
    fn a_good_meter_parses() {
        let m = MeterDefinition::parse_text(5001, "10.0.0.5", GOOD).unwrap();
        assert_eq!(m.instance, 5001);
        assert_eq!(
            m.address.ip,
            "10.0.0.5:47808".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(m.points.len(), 1);
        assert_eq!(m.device().instance, 5001);
    }

    /// Each finding of issue 9's "Two validators disagree", one case each.
    #[test]
    fn the_two_old_validators_findings() {
        let err = |i: i64, a: &str, p: &str| MeterDefinition::parse_text(i, a, p).unwrap_err();
        // Host names and IPv6 were accepted by download, refused by collect.
        assert!(matches!(
            err(1, "meter-3.local:47809", GOOD),
            DefinitionError::Address(_)
        ));
        assert!(matches!(
            err(1, "[::1]:5000", GOOD),
            DefinitionError::Address(_)
        ));
        // A misspelt property, an extra key, an empty list.
        let e = err(
            1,
            "10.0.0.1",
            r#"[{"name":"e","object":"analog-input:1","property":"presnt-value"}]"#,
        );
        assert!(e.to_string().contains("presnt-value"), "{e}");
        let e = err(
            1,
            "10.0.0.1",
            r#"[{"name":"e","object":"analog-input:1","unit":"kWh"}]"#,
        );
        assert!(e.to_string().contains("unknown key `unit`"), "{e}");
        assert!(err(1, "10.0.0.1", "[]").to_string().contains("empty"));
        // binary-input: the collector reads it, download used to refuse it.
        assert!(
            MeterDefinition::parse_text(1, "10.0.0.1", &points("door", "binary-input:1")).is_ok()
        );
        // One instance range: 4194302 is the last device, 4194303 the wildcard.
        assert!(MeterDefinition::parse_text(4_194_302, "10.0.0.1", GOOD).is_ok());
        assert_eq!(
            err(4_194_303, "10.0.0.1", GOOD),
            DefinitionError::Instance(4_194_303)
        );
        assert!(matches!(
            err(1, "10.0.0.1", &points("e", "analog-input:4194303")),
            DefinitionError::Points(_)
        ));
        // One default port.
        assert_eq!(
            MeterDefinition::parse_text(1, "10.0.0.1", GOOD)
                .unwrap()
                .address
                .ip
                .port(),
            bacnet::DEFAULT_PORT
        );
    }

    #[test]
    fn every_design_object_type_is_accepted() {
        for ty in [
            "analog-input",
            "analog-value",
            "binary-input",
            "binary-value",
            "multi-state-input",
            "multi-state-value",
            "accumulator",
            "integer-value",
            "positive-integer-value",
            "large-analog-value",
        ] {
            let p = points("p", &format!("{ty}:3"));
            let m = MeterDefinition::parse_text(1, "10.0.0.1", &p);
            assert!(m.is_ok(), "{ty}: {m:?}");
        }
        for ty in [
            "analog-output",
            "device",
            "binary-output",
            "pulse-converter",
        ] {
            let p = points("p", &format!("{ty}:3"));
            assert!(
                MeterDefinition::parse_text(1, "10.0.0.1", &p).is_err(),
                "{ty} accepted"
            );
        }
    }

    #[test]
    fn hostile_points_are_refused_with_a_short_message() {
        let long = "x".repeat(10_000);
        let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let many: Vec<_> = (0..=MAX_POINTS)
            .map(|i| json!({"name": format!("p{i}"), "object": format!("analog-input:{i}")}))
            .collect();
        for (what, p) in [
            ("long name", points(&long, "analog-input:1")),
            ("quote", points("a\"b", "analog-input:1")),
            ("emoji", points("energy_⚡", "analog-input:1")),
            ("nul", points("a\u{0}b", "analog-input:1")),
            ("space", points("energy kwh", "analog-input:1")),
            ("leading dot", points(".e", "analog-input:1")),
            ("nested", nested),
            ("not json", "{oops".to_string()),
            ("too many", serde_json::Value::Array(many).to_string()),
        ] {
            let e = MeterDefinition::parse_text(1, "10.0.0.1", &p)
                .expect_err(what)
                .to_string();
            assert!(e.len() < 400, "{what}: message of {} bytes", e.len());
        }
        assert!(MeterDefinition::parse_text(
            1,
            "10.0.0.1",
            &points(&"x".repeat(64), "analog-input:1")
        )
        .is_ok());
    }

    #[test]
    fn instances_outside_u32_are_refused() {
        for i in [-1, 3_000_000_000, i64::MAX, i64::MIN] {
            assert_eq!(
                MeterDefinition::parse_text(i, "10.0.0.1", GOOD),
                Err(DefinitionError::Instance(i))
            );
        }
    }
}
