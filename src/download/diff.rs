//! The pure part of a download: remote rows and local rows in, the plan of what to write, the skipped rows and the report of
//! what changed out. No I/O.
//!
//! Both lists are sorted by id, then one merge pass: no map of either side, and
//! rows that are equal on both sides are compared in place, never decoded.

use super::table::{Cell, Fetched, Record, Table};
use super::validate::{self, Instances};
use super::{Change, ChangeAction};

/// A row as the plan sees it: comparable column by column, decodable when
/// it has to be written or checked.
pub(crate) trait Source {
    /// The primary key.
    fn id(&self) -> i64;
    /// Whether column `i` holds the same value in both rows.
    fn same(&self, other: &Self, i: usize) -> bool;
    /// Whether the row is active (a NULL counts as inactive).
    fn active(&self, table: Table) -> bool;
    /// The meter's `site_id` bytes and `device_instance`.
    fn site_and_instance(&self, table: Table) -> (Option<&[u8]>, Option<i32>);
    /// The decoded row.
    fn record(&self, table: Table) -> Result<Record, tokio_postgres::Error>;
}

impl Source for Fetched {
    fn id(&self) -> i64 {
        self.id
    }

    fn same(&self, other: &Self, i: usize) -> bool {
        self.raw(i) == other.raw(i)
    }

    fn active(&self, table: Table) -> bool {
        self.raw(table.index("active")) == Some(&[1u8][..])
    }

    fn site_and_instance(&self, table: Table) -> (Option<&[u8]>, Option<i32>) {
        let instance = self
            .raw(table.index("device_instance"))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes);
        (self.raw(table.index("site_id")), instance)
    }

    fn record(&self, table: Table) -> Result<Record, tokio_postgres::Error> {
        let cells = table
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| Cell::decode(&self.row, i, c.kind))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Record { id: self.id, cells })
    }
}

impl Source for Record {
    fn id(&self) -> i64 {
        self.id
    }

    fn same(&self, other: &Self, i: usize) -> bool {
        self.cells.get(i) == other.cells.get(i)
    }

    fn active(&self, table: Table) -> bool {
        Record::active(self, table)
    }

    fn site_and_instance(&self, table: Table) -> (Option<&[u8]>, Option<i32>) {
        let instance = match self.get(table, "device_instance") {
            Cell::Int4(i) => Some(*i),
            _ => None,
        };
        (
            self.get(table, "site_id").as_text().map(str::as_bytes),
            instance,
        )
    }

    fn record(&self, _: Table) -> Result<Record, tokio_postgres::Error> {
        Ok(self.clone())
    }
}

/// What a run will write, and the counts it reports.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Rows to insert, or to update because a value differs (including the
    /// ones that turned inactive remotely).
    pub upserts: Vec<Record>,
    /// Local rows that are active and gone from the remote scope.
    pub deactivate: Vec<i64>,
    /// Every change, in id order.
    pub changes: Vec<Change>,
    /// Remote rows left out, with the reason, in id order.
    pub skipped: Vec<(i64, String)>,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deactivated: u64,
}

impl Plan {
    /// Whether the run writes nothing.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deactivate.is_empty()
    }

    /// A remote row `r`, with its local copy `l` if there is one.
    fn pair<R: Source>(
        &mut self,
        table: Table,
        instances: &mut Instances,
        r: &R,
        l: Option<&R>,
    ) -> Result<(), tokio_postgres::Error> {
        let fields: Vec<&'static str> = match l {
            None => Vec::new(),
            Some(l) => table
                .columns()
                .iter()
                .enumerate()
                .filter(|(i, _)| !r.same(l, *i))
                .map(|(_, c)| c.name)
                .collect(),
        };
        let unchanged = l.is_some() && fields.is_empty();
        let mut record = None;
        if table == Table::Meters && r.active(table) {
            // An unchanged row passed these checks when it was written.
            if !unchanged {
                let rec = r.record(table)?;
                if let Err(e) = validate::check_meter(table, &rec) {
                    self.skipped.push((r.id(), e));
                    return Ok(());
                }
                record = Some(rec);
            }
            let (site, instance) = r.site_and_instance(table);
            if let Err(e) = instances.claim(site, instance.unwrap_or(-1), r.id()) {
                self.skipped.push((r.id(), e));
                return Ok(());
            }
        }
        if unchanged {
            self.unchanged += 1;
            return Ok(());
        }
        let action = match l {
            None => ChangeAction::Insert,
            Some(l) if l.active(table) && !r.active(table) => ChangeAction::Deactivate,
            Some(_) => ChangeAction::Update,
        };
        match action {
            ChangeAction::Insert => self.inserted += 1,
            ChangeAction::Update => self.updated += 1,
            ChangeAction::Deactivate => self.deactivated += 1,
        }
        self.changes.push(Change {
            id: r.id(),
            action,
            fields: fields.into_iter().map(str::to_string).collect(),
        });
        self.upserts.push(match record {
            Some(rec) => rec,
            None => r.record(table)?,
        });
        Ok(())
    }

    /// A local row with no usable remote row of its id.
    fn local_only<R: Source>(&mut self, table: Table, l: &R) {
        if l.active(table) {
            self.deactivated += 1;
            self.deactivate.push(l.id());
            self.changes.push(Change {
                id: l.id(),
                action: ChangeAction::Deactivate,
                fields: vec!["active".into()],
            });
        } else {
            self.unchanged += 1;
        }
    }
}

/// Compares the remote rows with the local rows (sorted by id here). A remote row that is skipped (bad data) leaves
/// its local copy as it is.
///
/// Fails only when a row that must be written cannot be decoded.
pub(crate) fn plan<R: Source>(
    table: Table,
    mut remote: Vec<R>,
    mut local: Vec<R>,
) -> Result<Plan, tokio_postgres::Error> {
    remote.sort_unstable_by_key(|r| r.id());
    local.sort_unstable_by_key(|r| r.id());
    let mut p = Plan::default();
    let mut instances = Instances::default();
    let (mut i, mut j) = (0, 0);
    loop {
        match (remote.get(i), local.get(j)) {
            (None, None) => break,
            (Some(r), Some(l)) if r.id() == l.id() => {
                p.pair(table, &mut instances, r, Some(l))?;
                i += 1;
                j += 1;
            }
            (Some(r), Some(l)) if r.id() > l.id() => {
                p.local_only(table, l);
                j += 1;
            }
            (None, Some(l)) => {
                p.local_only(table, l);
                j += 1;
            }
            (Some(r), _) => {
                p.pair(table, &mut instances, r, None)?;
                i += 1;
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: i64, name: &str, active: bool) -> Record {
        Record {
            id,
            cells: vec![
                Cell::Int8(id),
                Cell::Text("s1".into()),
                Cell::Text(name.into()),
                Cell::Null,
                Cell::Null,
                Cell::Bool(active),
                Cell::Null,
            ],
        }
    }

    fn meter(id: i64, instance: i32, address: &str, active: bool) -> Record {
        Record {
            id,
            cells: vec![
                Cell::Int8(id),
                Cell::Text("s1".into()),
                Cell::Null,
                Cell::Text(format!("meter {id}")),
                Cell::Int4(instance),
                Cell::Text(address.into()),
                Cell::Jsonb(r#"[{"name": "e", "object": "analog-input:1"}]"#.into()),
                Cell::Bool(active),
                Cell::Null,
            ],
        }
    }

    fn summary(p: &Plan) -> Vec<(i64, ChangeAction, Vec<String>)> {
        p.changes
            .iter()
            .map(|c| (c.id, c.action, c.fields.clone()))
            .collect()
    }

    #[test]
    fn classifies_every_row_once() -> Result<(), tokio_postgres::Error> {
        let remote = vec![
            tenant(1, "same", true),
            tenant(2, "renamed", true),
            tenant(3, "new", true),
            tenant(4, "turned off", false),
        ];
        let local = vec![
            tenant(1, "same", true),
            tenant(2, "old name", true),
            tenant(4, "turned off", true),
            tenant(5, "gone", true),
            tenant(6, "gone long ago", false),
        ];
        let p = plan(Table::Tenants, remote, local)?;
        assert_eq!(
            (p.inserted, p.updated, p.unchanged, p.deactivated),
            (1, 1, 2, 2)
        );
        assert_eq!(p.deactivate, vec![5]);
        let ids: Vec<i64> = p.upserts.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 3, 4]);
        assert_eq!(
            summary(&p),
            vec![
                (2, ChangeAction::Update, vec!["name".to_string()]),
                (3, ChangeAction::Insert, vec![]),
                (4, ChangeAction::Deactivate, vec!["active".to_string()]),
                (5, ChangeAction::Deactivate, vec!["active".to_string()]),
            ]
        );
        Ok(())
    }

    #[test]
    fn nothing_changed_plans_nothing() -> Result<(), tokio_postgres::Error> {
        let rows = vec![tenant(2, "b", false), tenant(1, "a", true)];
        let p = plan(Table::Tenants, rows.clone(), rows)?;
        assert!(p.is_empty());
        assert_eq!(p.unchanged, 2);
        Ok(())
    }

    #[test]
    fn bad_meters_are_skipped_and_keep_their_local_copy() -> Result<(), tokio_postgres::Error> {
        let remote = vec![
            meter(1, 7, "10.0.0.1", true),
            meter(2, 8, "bad address", true),
            meter(3, 7, "10.0.0.3", true),
            meter(4, 9, "bad address", false),
            meter(5, 10, "legacy address", true),
        ];
        // 2 was good before; 5 is unchanged, so not checked again.
        let local = vec![
            meter(2, 8, "10.0.0.2", true),
            meter(5, 10, "legacy address", true),
        ];
        let p = plan(Table::Meters, remote, local)?;
        let skipped: Vec<i64> = p.skipped.iter().map(|(id, _)| *id).collect();
        assert_eq!(skipped, vec![2, 3], "{:?}", p.skipped);
        assert!(p.skipped[1].1.contains("meter 1"));
        assert_eq!((p.inserted, p.unchanged, p.deactivated), (2, 1, 0));
        assert!(p.deactivate.is_empty(), "a skipped row is not deactivated");
        Ok(())
    }
}
