//! The pure part of a download: remote rows and local rows in, the plan of
//! what to write and the report of what changed out. No I/O.

use std::collections::{HashMap, HashSet};

use super::table::{Record, Table};
use super::{Change, ChangeAction};

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
}

/// The local rows by id.
pub(crate) fn by_id(local: Vec<Record>) -> HashMap<i64, Record> {
    local.into_iter().map(|r| (r.id, r)).collect()
}

/// Compares the usable remote rows with the local rows. Rows whose id is in
/// `skipped` (bad remote data) are left as they are locally.
pub(crate) fn plan(
    table: Table,
    remote: Vec<Record>,
    mut local: HashMap<i64, Record>,
    skipped: &HashSet<i64>,
) -> Plan {
    let mut p = Plan::default();
    let columns = table.columns();
    for r in remote {
        match local.remove(&r.id) {
            None => {
                p.inserted += 1;
                p.changes.push(Change {
                    id: r.id,
                    action: ChangeAction::Insert,
                    fields: Vec::new(),
                });
                p.upserts.push(r);
            }
            Some(l) => {
                let fields: Vec<String> = columns
                    .iter()
                    .zip(l.cells.iter().zip(&r.cells))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(c, _)| c.name.to_string())
                    .collect();
                if fields.is_empty() {
                    p.unchanged += 1;
                    continue;
                }
                let action = if l.active(table) && !r.active(table) {
                    p.deactivated += 1;
                    ChangeAction::Deactivate
                } else {
                    p.updated += 1;
                    ChangeAction::Update
                };
                p.changes.push(Change {
                    id: r.id,
                    action,
                    fields,
                });
                p.upserts.push(r);
            }
        }
    }
    for id in skipped {
        local.remove(id);
    }
    let mut gone: Vec<Record> = local.into_values().collect();
    gone.sort_by_key(|r| r.id);
    for l in gone {
        if l.active(table) {
            p.deactivated += 1;
            p.deactivate.push(l.id);
            p.changes.push(Change {
                id: l.id,
                action: ChangeAction::Deactivate,
                fields: vec!["active".into()],
            });
        } else {
            p.unchanged += 1;
        }
    }
    p.changes.sort_by_key(|c| c.id);
    p
}

#[cfg(test)]
mod tests {
    use super::super::table::Cell;
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

    #[test]
    fn classifies_every_row_once() {
        let remote = vec![
            tenant(1, "same", true),
            tenant(2, "renamed", true),
            tenant(3, "new", true),
            tenant(4, "turned off", false),
            // 9 had bad data: validation took it out and listed it as skipped
        ];
        let local = vec![
            tenant(1, "same", true),
            tenant(2, "old name", true),
            tenant(4, "turned off", true),
            tenant(5, "gone", true),
            tenant(6, "gone long ago", false),
            tenant(9, "kept as it was", true),
        ];
        let skipped: HashSet<i64> = [9].into();
        let p = plan(Table::Tenants, remote, by_id(local), &skipped);
        assert_eq!(
            (p.inserted, p.updated, p.unchanged, p.deactivated),
            (1, 1, 2, 2)
        );
        assert_eq!(p.deactivate, vec![5]);
        let ids: Vec<i64> = p.upserts.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 3, 4]);
        let summary: Vec<(i64, ChangeAction, Vec<String>)> = p
            .changes
            .into_iter()
            .map(|c| (c.id, c.action, c.fields))
            .collect();
        assert_eq!(
            summary,
            vec![
                (2, ChangeAction::Update, vec!["name".to_string()]),
                (3, ChangeAction::Insert, vec![]),
                (4, ChangeAction::Deactivate, vec!["active".to_string()]),
                (5, ChangeAction::Deactivate, vec!["active".to_string()]),
            ]
        );
    }

    #[test]
    fn nothing_changed_plans_nothing() {
        let rows = vec![tenant(1, "a", true), tenant(2, "b", false)];
        let p = plan(Table::Tenants, rows.clone(), by_id(rows), &HashSet::new());
        assert!(p.is_empty());
        assert_eq!(p.unchanged, 2);
    }
}
