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
