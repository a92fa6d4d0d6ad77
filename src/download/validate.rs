//! Checks on downloaded rows, so a remote row the local copy could not hold
//! or the collector could not use is reported (with its id and why) and
//! skipped, instead of failing the whole download or reaching the collector.
//!
//! Every new or changed row of either table is checked, active or not (an
//! inactive meter is still mirrored, listed by `list_meters` and read by
//! `read_meter`):
//! - every column the local table declares `NOT NULL` holds a value;
//! - a text column holds at most [`MAX_TEXT_LEN`] characters;
//! - a meter's `device_instance`, `address` and `points` form a
//!   [`MeterDefinition`] (the one parser the collector uses too);
//! - no earlier active meter (by id) of the same site uses the same device
//!   instance ([`Instances`]).
//!
//! A value that cannot even be decoded (a timestamp of `infinity`) is caught
//! earlier, when the row is decoded, and reported the same way.

use std::collections::HashMap;

use super::table::{Cell, Record, Table};
use crate::meter_def::MeterDefinition;

/// The longest text value (a name, a unit, an e-mail, an address, a site
/// id) a downloaded row may hold, in characters: far above any real value,
/// low enough that one row cannot bloat every report and listing.
pub const MAX_TEXT_LEN: usize = 1_000;

/// The device instances claimed so far in a run, per site.
#[derive(Default)]
pub(crate) struct Instances {
    /// Each distinct `site_id` seen, numbered (a site has many meters).
    sites: HashMap<Vec<u8>, u32>,
    /// `(site number, instance)` to the first meter (by id) that uses it.
    seen: HashMap<(Option<u32>, i64), i64>,
}

impl Instances {
    /// Claims `instance` on `site` for meter `id`; fails when an earlier
    /// meter holds it.
    pub(crate) fn claim(
        &mut self,
        site: Option<&[u8]>,
        instance: i64,
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

/// Checks one decoded row (see the module docs). The error says what to fix
/// on the remote; the caller adds the table and the row id.
pub(crate) fn check_row(table: Table, r: &Record) -> Result<(), String> {
    for (c, cell) in table.columns().iter().zip(&r.cells) {
        match cell {
            Cell::Null if c.required => {
                return Err(format!(
                    "{} is NULL; the local copy requires a value",
                    c.name
                ))
            }
            Cell::Text(s) => {
                let n = s.chars().count();
                if n > MAX_TEXT_LEN {
                    return Err(format!(
                        "{} has {n} characters; at most {MAX_TEXT_LEN}",
                        c.name
                    ));
                }
            }
            _ => {}
        }
    }
    if table == Table::Meters {
        let instance = match r.get(table, "device_instance") {
            Cell::Int8(i) => *i,
            _ => return Err("device_instance is missing".into()),
        };
        let address = r
            .get(table, "address")
            .as_text()
            .ok_or("address is missing")?;
        let points = r
            .get(table, "points")
            .as_text()
            .ok_or("points is missing")?;
        MeterDefinition::parse_text(instance, address, points).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_per_site_and_first_come() {
        let mut i = Instances::default();
        assert!(i.claim(Some(b"s1"), 7, 1).is_ok());
        assert!(i.claim(Some(b"s2"), 7, 2).is_ok());
        assert!(i.claim(None, 7, 3).is_ok());
        let e = i.claim(Some(b"s1"), 7, 4);
        assert!(e.is_err_and(|e| e.contains("meter 1")));
    }

    fn meter(name: Cell, instance: Cell, address: &str, points: &str) -> Record {
        Record {
            id: 1,
            cells: vec![
                Cell::Int8(1),
                Cell::Text("s1".into()),
                Cell::Null,
                name,
                instance,
                Cell::Text(address.into()),
                Cell::Jsonb(points.into()),
                Cell::Bool(false),
                Cell::Null,
            ],
        }
    }

    /// Issue 9's property: download and collect judge a meter with one
    /// function, so over a corpus (a good meter varied one field at a time)
    /// every meter the download accepts reaches the device read in collect
    /// (never "misconfigured"), and every meter it refuses for its
    /// definition, collect refuses with the same reason.
    #[tokio::test]
    async fn download_and_collect_agree_on_every_meter() {
        use crate::bacnet::{BacnetConfig, UdpClient};
        use crate::collect::{read_one, MeterRow};
        let client = UdpClient::bind(BacnetConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            timeout: std::time::Duration::from_millis(5),
            retries: 0,
            ..Default::default()
        })
        .await
        .unwrap();
        let point = |name: &str, object: &str| serde_json::json!({"name": name, "object": object});
        let mut points: Vec<serde_json::Value> = vec![
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!([1]),
            serde_json::json!([{"name": "e"}]),
            serde_json::json!([{"object": "analog-input:1"}]),
            serde_json::json!([{"name": "e", "object": "analog-input:1", "unit": "kWh"}]),
            serde_json::json!([{"name": "e", "object": "analog-input:1", "property": "presnt-value"}]),
            serde_json::json!([{"name": "e", "object": "analog-input:1", "property": 85}]),
            serde_json::json!([{"name": "e", "object": "analog-input:1", "property": -1}]),
            serde_json::json!([{"name": "e", "object": "analog-input:1", "property": "status-flags"}]),
            serde_json::json!([point("e", "analog-input:1"), point("e", "analog-input:2")]),
        ];
        for name in [
            "e",
            &"n".repeat(64),
            &"n".repeat(65),
            "a.b-c_9",
            "it's",
            "q\"",
            "energy_⚡",
            "a\u{0}b",
            "a b",
            ".e",
            "-e",
            " e ",
            "",
            &"x".repeat(10_000),
        ] {
            points.push(serde_json::json!([point(name, "analog-input:1")]));
        }
        for object in [
            "analog-input:1",
            "analog-value:0",
            "binary-input:1",
            "binary-value:2",
            "multi-state-input:3",
            "multi-state-value:4",
            "accumulator:1",
            "integer-value:5",
            "positive-integer-value:6",
            "large-analog-value:7",
            "ANALOG-INPUT:1",
            "0:1",
            "3:1",
            "analog-output:1",
            "device:1",
            "pulse-converter:1",
            "nope:1",
            "analog-input",
            "analog-input:4194302",
            "analog-input:4194303",
            "analog-input:x",
        ] {
            points.push(serde_json::json!([point("p", object)]));
        }
        let good_points = serde_json::json!([point("e", "analog-input:1")]).to_string();
        let mut corpus: Vec<(i32, String, String)> = points
            .iter()
            .map(|p| (5, "127.0.0.1:9".to_string(), p.to_string()))
            .collect();
        corpus.push((
            5,
            "127.0.0.1:9".into(),
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
        ));
        for address in [
            "127.0.0.1",
            "127.0.0.1:9",
            " 127.0.0.1:9 ",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "meter-3.local:47809",
            "[::1]:5000",
            "::1",
            "",
            "127.0.0.1:x",
            "1.2.3:4",
        ] {
            corpus.push((5, address.into(), good_points.clone()));
        }
        for instance in [0, 4_194_302, 4_194_303, -1, i32::MAX] {
            corpus.push((instance, "127.0.0.1:9".into(), good_points.clone()));
        }
        let (mut accepted, mut refused) = (0, 0);
        for (instance, address, points) in corpus {
            let mut rec = meter(
                Cell::Text("m".into()),
                Cell::Int8(instance.into()),
                &address,
                &points,
            );
            rec.cells[8] = Cell::Timestamptz(chrono::Utc::now());
            let download = check_row(Table::Meters, &rec);
            let row = MeterRow {
                id: 1,
                device_instance: instance,
                address: address.clone(),
                points: points.clone(),
            };
            let collect = read_one(&client, &row).await.error.unwrap_or_default();
            match download {
                Ok(()) => {
                    accepted += 1;
                    assert!(
                        !collect.starts_with("misconfigured"),
                        "download accepted {address:?} {points}, collect said {collect}"
                    );
                }
                Err(e) => {
                    refused += 1;
                    assert_eq!(
                        collect,
                        format!("misconfigured: {e}"),
                        "{address:?} {points}"
                    );
                }
            }
        }
        assert!(
            accepted >= 20 && refused >= 30,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn rows_the_local_copy_cannot_hold_are_refused() {
        let p = r#"[{"name": "e", "object": "analog-input:1"}]"#;
        let ok = meter(Cell::Text("m".into()), Cell::Int8(5), "10.0.0.1", p);
        // updated_at is required, but NULL here: refused, by name.
        let e = check_row(Table::Meters, &ok).unwrap_err();
        assert!(e.contains("updated_at is NULL"), "{e}");
        let ts = Cell::Timestamptz(chrono::Utc::now());
        let with = |mut r: Record| {
            r.cells[8] = ts.clone();
            r
        };
        assert!(check_row(Table::Meters, &with(ok.clone())).is_ok());
        let e = check_row(
            Table::Meters,
            &with(meter(Cell::Null, Cell::Int8(5), "10.0.0.1", p)),
        )
        .unwrap_err();
        assert!(e.contains("name is NULL"), "{e}");
        let e = check_row(
            Table::Meters,
            &with(meter(
                Cell::Text("m".into()),
                Cell::Int8(3_000_000_000),
                "10.0.0.1",
                p,
            )),
        )
        .unwrap_err();
        assert!(e.contains("3000000000"), "{e}");
        let e = check_row(
            Table::Meters,
            &with(meter(
                Cell::Text("n".repeat(5000)),
                Cell::Int8(5),
                "10.0.0.1",
                p,
            )),
        )
        .unwrap_err();
        assert!(e.contains("name has 5000 characters"), "{e}");
    }
}
