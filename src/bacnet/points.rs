//! A meter's configuration as the BACnet layer reads it: the `points` JSON of
//! the `meters` table (the `address` column is [`super::address`]).
//!
//! Guarantees: parsing never panics; every error names the offending entry
//! (index and name) and says what would be accepted.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value as Json;

use super::types::{ObjectId, ObjectType, PropertyId, MAX_INSTANCE, READABLE_OBJECT_TYPES};

/// One configured point of a meter: a name, an object and the property to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointSpec {
    /// The name readings are stored under (e.g. `energy_kwh`); unique within a meter.
    ///
    /// Shared, not copied: each reading of the point holds the same string.
    pub name: Arc<str>,
    /// The BACnet object, e.g. `analog-input:1`.
    pub object: ObjectId,
    /// The property to read; present-value unless the entry names another.
    pub property: PropertyId,
}

/// Why a meter's `points` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointsError {
    /// The value is not a JSON array.
    #[error("points must be a JSON array of {{\"name\": ..., \"object\": \"analog-input:1\"}} entries, found {found}")]
    NotAnArray {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// The array is empty, so there is nothing to read.
    #[error("points is an empty array: configure at least one {{\"name\", \"object\"}} entry")]
    Empty,
    /// One entry is malformed.
    #[error("points[{index}]{label}: {problem}")]
    Entry {
        /// Position in the array.
        index: usize,
        /// ` ("name")` when the entry has a readable name, else empty.
        label: String,
        /// What is wrong and what is accepted.
        problem: String,
    },
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Parse a meter's `points` JSON: an array of `{"name", "object", "property"?}`.
///
/// Fails on a non-array, an empty array, or any entry without a non-empty unique
/// `name`, with an unparsable `object` or `property`, or with an unknown key
/// (a misspelt `"propery"` would otherwise silently read present-value).
pub fn parse_points(json: &Json) -> Result<Vec<PointSpec>, PointsError> {
    let entries = json.as_array().ok_or(PointsError::NotAnArray {
        found: json_type(json),
    })?;
    if entries.is_empty() {
        return Err(PointsError::Empty);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let name = entry.get("name").and_then(Json::as_str).map(str::trim);
        // Built only when the entry fails: parsing runs for every meter on
        // every collection.
        let fail = |problem: String| PointsError::Entry {
            index,
            label: name
                .filter(|n| !n.is_empty())
                .map(|n| format!(" ({})", short_name(n)))
                .unwrap_or_default(),
            problem,
        };
        let obj = entry
            .as_object()
            .ok_or_else(|| fail(format!("expected an object, found {}", json_type(entry))))?;
        if let Some(key) = obj
            .keys()
            .find(|k| !["name", "object", "property"].contains(&k.as_str()))
        {
            return Err(fail(format!(
                "unknown key `{key}` (allowed: name, object, property)"
            )));
        }
        let name = match name {
            Some(n) if !n.is_empty() => n,
            _ => return Err(fail("`name` must be a non-empty string".into())),
        };
        if !seen.insert(name) {
            return Err(fail(format!("duplicate point name {}", short_name(name))));
        }
        let object = match obj.get("object") {
            Some(Json::String(s)) => parse_object(s).map_err(fail)?,
            Some(other) => {
                return Err(fail(format!(
                    "`object` must be a string like \"analog-input:1\", found {}",
                    json_type(other)
                )))
            }
            None => return Err(fail("missing `object`, e.g. \"analog-input:1\"".into())),
        };
        let property = match obj.get("property") {
            None | Some(Json::Null) => PropertyId::PRESENT_VALUE,
            Some(Json::String(s)) => PropertyId::parse(s).map_err(fail)?,
            Some(Json::Number(n)) => n
                .as_u64()
                .and_then(|n| PropertyId::parse(&n.to_string()).ok())
                .ok_or_else(|| {
                    fail(format!(
                        "property number {n} is not a BACnet property identifier"
                    ))
                })?,
            Some(other) => {
                return Err(fail(format!(
                    "`property` must be a name like \"present-value\" or a number, found {}",
                    json_type(other)
                )))
            }
        };
        out.push(PointSpec {
            name: Arc::from(name),
            object,
            property,
        });
    }
    Ok(out)
}

/// A point name as error messages quote it: JSON-quoted (so quotes and
/// control characters show as escapes) and cut to 40 characters, so a
/// 10,000-character name cannot flood a report.
pub fn short_name(name: &str) -> String {
    const SHOWN: usize = 40;
    let mut cut: String = name.chars().take(SHOWN).collect();
    if cut.len() < name.len() {
        cut.push_str("...");
    }
    serde_json::Value::String(cut).to_string()
}

/// Parse `type:instance`, knowing the names of every type a meter point may
/// name ([`READABLE_OBJECT_TYPES`]) besides those [`ObjectId::parse`] knows.
fn parse_object(s: &str) -> Result<ObjectId, String> {
    if let Some((ty, inst)) = s.split_once(':') {
        let known = READABLE_OBJECT_TYPES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(ty.trim()))
            .and_then(|(n, _)| ObjectType::new(*n));
        if let Some(object_type) = known {
            let instance: u32 = inst
                .trim()
                .parse()
                .map_err(|_| format!("object instance `{}` is not a number", inst.trim()))?;
            return ObjectId::new(object_type, instance).ok_or_else(|| {
                format!("object instance {instance} is above the BACnet limit {MAX_INSTANCE}")
            });
        }
    }
    ObjectId::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn points_parse() {
        let p = parse_points(&json!([
            {"name": "energy_kwh", "object": "analog-input:1"},
            {"name": "pulses", "object": "accumulator:1", "property": "present-value"},
            {"name": "n", "object": "analog-value:2", "property": 77},
        ]))
        .unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].property, PropertyId::PRESENT_VALUE);
        assert_eq!(p[2].property, PropertyId::OBJECT_NAME);
    }

    #[test]
    fn points_errors_name_the_entry() {
        let e = parse_points(
            &json!([{"name": "a", "object": "analog-input:1"}, {"name": "b", "object": "nope:1"}]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("points[1] (\"b\"): unknown object type `nope`"),
            "{e}"
        );
        let e = parse_points(&json!([{"name": "a", "object": "analog-input:1", "propery": "x"}]))
            .unwrap_err();
        assert!(e.to_string().contains("unknown key `propery`"));
        assert!(parse_points(&json!({}))
            .unwrap_err()
            .to_string()
            .contains("found an object"));
        assert_eq!(parse_points(&json!([])).unwrap_err(), PointsError::Empty);
        assert!(parse_points(&json!([{"object": "analog-input:1"}])).is_err());
        let dup = json!([{"name": "a", "object": "analog-input:1"}, {"name": "a", "object": "analog-input:2"}]);
        assert!(parse_points(&dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
    }
}
