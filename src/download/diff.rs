//! The pure part of a download: remote rows and local rows in, the plan of
//! what to write, the skipped rows and the report of what changed out. No
//! I/O.
//!
//! Two steps. [`triage`] merges the remote rows with every local row's id,
//! `active` and digest (both sorted by id): a row whose digest matches is
//! unchanged and is never decoded; new rows are checked and planned as
//! inserts; rows gone remotely are planned as deactivations; the rest are
//! pending. [`settle`] compares the pending rows with their full local
//! copies, column by column, to name the fields that changed.

use std::collections::HashMap;

use super::table::{Cell, Fetched, Kind, Record, Table};
use super::validate::{self, Instances};
use super::{Change, ChangeAction};

/// A fingerprint of a remote row's values (see [`Fetched::digest`]).
pub(crate) type Digest = [u8; 16];

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
    fn site_and_instance(&self, table: Table) -> (Option<&[u8]>, Option<i64>);
    /// The decoded row; the error names the column that cannot be read.
    fn record(&self, table: Table) -> Result<Record, String>;
    /// The fingerprint of the row's values.
    fn digest(&self, table: Table) -> Digest;
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

    fn site_and_instance(&self, table: Table) -> (Option<&[u8]>, Option<i64>) {
        let instance = self
            .raw(table.index("device_instance"))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_be_bytes);
        (self.raw(table.index("site_id")), instance)
    }

    fn record(&self, table: Table) -> Result<Record, String> {
        let cells = table
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Cell::decode(&self.row, i, c.kind).map_err(|e| {
                    // A timestamp PostgreSQL stores as +-infinity has no
                    // chrono value: say so instead of "too large".
                    let raw = self.raw(i);
                    if c.kind == Kind::Timestamptz && raw == Some(&i64::MAX.to_be_bytes()[..]) {
                        format!("{} is 'infinity'; set a real timestamp", c.name)
                    } else if c.kind == Kind::Timestamptz
                        && raw == Some(&i64::MIN.to_be_bytes()[..])
                    {
                        format!("{} is '-infinity'; set a real timestamp", c.name)
                    } else {
                        let why = std::error::Error::source(&e)
                            .map_or_else(|| e.to_string(), |s| s.to_string());
                        format!("{} cannot be read ({why})", c.name)
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Record { id: self.id, cells })
    }

    fn digest(&self, table: Table) -> Digest {
        Fetched::digest(self, table.columns().len())
    }
}

/// A local row as the first local read sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub id: i64,
    pub active: bool,
    /// The digest of the remote row it was last written from, if any.
    pub digest: Option<Digest>,
}

impl Known {
    /// From a row of [`Table::local_digests`].
    pub(crate) fn from_row(f: &Fetched) -> Known {
        Known {
            id: f.id,
            active: f.raw(1) == Some(&[1u8][..]),
            digest: f.raw(2).and_then(|b| Digest::try_from(b).ok()),
        }
    }
}

/// A remote row whose local copy must be compared in full.
pub(crate) struct Pending<R> {
    remote: R,
    /// Already decoded (when it was checked).
    record: Option<Record>,
}

impl<R: Source> Pending<R> {
    /// The id whose full local row is needed.
    pub(crate) fn id(&self) -> i64 {
        self.remote.id()
    }
}

/// What a run will write, and the counts it reports.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Rows to insert, or to update because a value (or only the stored
    /// digest) differs, with the digest to store.
    pub upserts: Vec<(Record, Digest)>,
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

    /// Records remote row `id` of `table` as skipped; the reason names the
    /// table and the row, so it reads alone in a log or the journal.
    fn skip(&mut self, table: Table, id: i64, why: String) {
        let why = format!("{} row {id}: {why}", table.name());
        tracing::warn!(table = table.name(), id, "remote row skipped: {why}");
        self.skipped.push((id, why));
    }

    /// Decodes and checks a row that is new or may have changed (any row,
    /// active or not: see [`validate`]), and claims an active meter's
    /// device instance; `None` when it was skipped. An unchanged row passed
    /// the checks when it was written and is not decoded again.
    fn check<R: Source>(
        &mut self,
        table: Table,
        instances: &mut Instances,
        r: &R,
        changed: bool,
    ) -> Option<Option<Record>> {
        let mut record = None;
        if changed {
            let checked = r
                .record(table)
                .and_then(|rec| validate::check_row(table, &rec).map(|()| rec));
            match checked {
                Ok(rec) => record = Some(rec),
                Err(e) => {
                    self.skip(table, r.id(), e);
                    return None;
                }
            }
        }
        if table == Table::Meters && r.active(table) {
            let (site, instance) = r.site_and_instance(table);
            if let Err(e) = instances.claim(site, instance.unwrap_or(-1), r.id()) {
                self.skip(table, r.id(), e);
                return None;
            }
        }
        Some(record)
    }

    fn change(&mut self, id: i64, action: ChangeAction, fields: Vec<&'static str>) {
        match action {
            ChangeAction::Insert => self.inserted += 1,
            ChangeAction::Update => self.updated += 1,
            ChangeAction::Deactivate => self.deactivated += 1,
        }
        self.changes.push(Change { id, action, fields });
    }

    /// A local row with no usable remote row of its id.
    fn local_only(&mut self, l: &Known) {
        if l.active {
            self.deactivate.push(l.id);
            self.change(l.id, ChangeAction::Deactivate, vec!["active"]);
        } else {
            self.unchanged += 1;
        }
    }
}

/// Step one: merges the remote rows with what the local table knows of
/// each row (both sorted by id here). Returns the plan so far and the rows
/// to compare in full with [`settle`]. A remote row that is skipped (bad
/// data) leaves its local copy as it is.
///
/// Never fails: a row that cannot be decoded or checked is skipped.
pub(crate) fn triage<R: Source>(
    table: Table,
    mut remote: Vec<R>,
    mut local: Vec<Known>,
) -> (Plan, Vec<Pending<R>>) {
    remote.sort_unstable_by_key(|r| r.id());
    local.sort_unstable_by_key(|l| l.id);
    let mut p = Plan::default();
    let mut pending = Vec::new();
    let mut instances = Instances::default();
    let mut local = local.into_iter().peekable();
    for r in remote {
        while let Some(l) = local.next_if(|l| l.id < r.id()) {
            p.local_only(&l);
        }
        let known = local.next_if(|l| l.id == r.id());
        let digest = r.digest(table);
        let unchanged = known.as_ref().is_some_and(|l| l.digest == Some(digest));
        let Some(record) = p.check(table, &mut instances, &r, !unchanged) else {
            // Skipped, but switched off remotely: a bad row must not keep
            // an active local copy collecting, so it is still deactivated.
            if let Some(l) = known.as_ref().filter(|l| l.active && !r.active(table)) {
                p.deactivate.push(l.id);
                p.change(l.id, ChangeAction::Deactivate, vec!["active"]);
            }
            continue;
        };
        match known {
            _ if unchanged => p.unchanged += 1,
            None => {
                let rec = match record.map_or_else(|| r.record(table), Ok) {
                    Ok(rec) => rec,
                    Err(e) => {
                        p.skip(table, r.id(), e);
                        continue;
                    }
                };
                p.change(r.id(), ChangeAction::Insert, Vec::new());
                p.upserts.push((rec, digest));
            }
            Some(_) => pending.push(Pending { remote: r, record }),
        }
    }
    for l in local {
        p.local_only(&l);
    }
    (p, pending)
}

/// Step two: compares each pending remote row with its full local copy
/// (`full`, read by id) and plans the update, naming the changed fields. A
/// row equal by value whose stored digest was stale only gets its digest
/// refreshed and counts as unchanged.
///
/// Never fails: a row that cannot be decoded is skipped.
pub(crate) fn settle<R: Source>(
    table: Table,
    mut p: Plan,
    pending: Vec<Pending<R>>,
    full: Vec<R>,
) -> Plan {
    let mut full: HashMap<i64, R> = full.into_iter().map(|l| (l.id(), l)).collect();
    for Pending { remote: r, record } in pending {
        let digest = r.digest(table);
        let rec = match record.map_or_else(|| r.record(table), Ok) {
            Ok(rec) => rec,
            Err(e) => {
                p.skip(table, r.id(), e);
                continue;
            }
        };
        let Some(l) = full.remove(&r.id()) else {
            // Gone since the first read (the table lock makes this
            // impossible, but the insert is still right).
            p.change(r.id(), ChangeAction::Insert, Vec::new());
            p.upserts.push((rec, digest));
            continue;
        };
        // Compared as the servers sent the values (typed bytes, no
        // decoding); only the names of the columns that differ are kept.
        let fields: Vec<&'static str> = table
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| !r.same(&l, *i))
            .map(|(_, c)| c.name)
            .collect();
        if fields.is_empty() {
            p.unchanged += 1;
        } else if l.active(table) && !r.active(table) {
            p.change(r.id(), ChangeAction::Deactivate, fields);
        } else {
            p.change(r.id(), ChangeAction::Update, fields);
        }
        p.upserts.push((rec, digest));
    }
    p.changes.sort_by_key(|c| c.id);
    p.skipped.sort_by_key(|(id, _)| *id);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

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

        fn site_and_instance(&self, table: Table) -> (Option<&[u8]>, Option<i64>) {
            let instance = match self.get(table, "device_instance") {
                Cell::Int8(i) => Some(*i),
                _ => None,
            };
            (
                self.get(table, "site_id").as_text().map(str::as_bytes),
                instance,
            )
        }

        fn record(&self, _: Table) -> Result<Record, String> {
            Ok(self.clone())
        }

        fn digest(&self, _: Table) -> Digest {
            use std::hash::{DefaultHasher, Hash, Hasher};
            let mut h = DefaultHasher::new();
            format!("{:?}", self.cells).hash(&mut h);
            let x = h.finish().to_be_bytes();
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&x);
            d
        }
    }

    /// Both steps, with the local digests current (`fresh`) or unknown.
    fn plan(table: Table, remote: Vec<Record>, local: Vec<Record>) -> Result<Plan, String> {
        let mut last: Option<Plan> = None;
        for fresh in [false, true] {
            let known = local
                .iter()
                .map(|l| Known {
                    id: l.id,
                    active: l.active(table),
                    digest: fresh.then(|| l.digest(table)),
                })
                .collect();
            let (p, pending) = triage(table, remote.clone(), known);
            let ids: Vec<i64> = pending.iter().map(|p| p.id()).collect();
            let full = local
                .iter()
                .filter(|l| ids.contains(&l.id))
                .cloned()
                .collect();
            let p = settle(table, p, pending, full);
            if let Some(prev) = &last {
                let counts = |p: &Plan| {
                    (
                        p.inserted,
                        p.updated,
                        p.unchanged,
                        p.deactivated,
                        p.changes.clone(),
                    )
                };
                assert_eq!(
                    counts(prev),
                    counts(&p),
                    "same result with or without digests"
                );
            }
            last = Some(p);
        }
        Ok(last.unwrap_or_default())
    }

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
                updated(),
            ],
        }
    }

    /// A fixed `updated_at` (the column is required).
    fn updated() -> Cell {
        Cell::Timestamptz(chrono::DateTime::UNIX_EPOCH)
    }

    fn meter(id: i64, instance: i64, address: &str, active: bool) -> Record {
        Record {
            id,
            cells: vec![
                Cell::Int8(id),
                Cell::Text("s1".into()),
                Cell::Null,
                Cell::Text(format!("meter {id}")),
                Cell::Int8(instance),
                Cell::Text(address.into()),
                Cell::Jsonb(r#"[{"name": "e", "object": "analog-input:1"}]"#.into()),
                Cell::Bool(active),
                updated(),
            ],
        }
    }

    fn summary(p: &Plan) -> Vec<(i64, ChangeAction, Vec<&'static str>)> {
        p.changes
            .iter()
            .map(|c| (c.id, c.action, c.fields.clone()))
            .collect()
    }

    #[test]
    fn classifies_every_row_once() -> Result<(), String> {
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
        // (with current digests: unchanged rows are not rewritten)
        let mut ids: Vec<i64> = p.upserts.iter().map(|(r, _)| r.id).collect();
        ids.sort();
        assert_eq!(ids, vec![2, 3, 4]);
        assert_eq!(
            summary(&p),
            vec![
                (2, ChangeAction::Update, vec!["name"]),
                (3, ChangeAction::Insert, vec![]),
                (4, ChangeAction::Deactivate, vec!["active"]),
                (5, ChangeAction::Deactivate, vec!["active"]),
            ]
        );
        Ok(())
    }

    #[test]
    fn nothing_changed_plans_nothing() -> Result<(), String> {
        let rows = vec![tenant(2, "b", false), tenant(1, "a", true)];
        let p = plan(Table::Tenants, rows.clone(), rows.clone())?;
        assert_eq!(p.unchanged, 2);
        let known = rows
            .iter()
            .map(|l| Known {
                id: l.id,
                active: l.active(Table::Tenants),
                digest: Some(l.digest(Table::Tenants)),
            })
            .collect();
        let (p, pending) = triage(Table::Tenants, rows.clone(), known);
        assert!(pending.is_empty());
        assert!(p.is_empty(), "with current digests: nothing at all");
        Ok(())
    }

    #[test]
    fn bad_meters_are_skipped_and_keep_their_local_copy() -> Result<(), String> {
        let remote = vec![
            meter(1, 7, "10.0.0.1", true),
            meter(2, 8, "bad address", true),
            meter(3, 7, "10.0.0.3", true),
            meter(4, 9, "bad address", false),
            meter(5, 10, "10.0.0.5", true),
        ];
        // 2 was good before; 5 is unchanged, so not checked again.
        let local = vec![
            meter(2, 8, "10.0.0.2", true),
            meter(5, 10, "10.0.0.5", true),
        ];
        let p = plan(Table::Meters, remote, local)?;
        let skipped: Vec<i64> = p.skipped.iter().map(|(id, _)| *id).collect();
        // 4 is inactive, and still checked: it is mirrored and listed.
        assert_eq!(skipped, vec![2, 3, 4], "{:?}", p.skipped);
        assert!(p.skipped[1].1.contains("meter 1"));
        for (id, why) in &p.skipped {
            assert!(why.starts_with(&format!("meters row {id}: ")), "{why}");
        }
        assert_eq!((p.inserted, p.unchanged, p.deactivated), (1, 1, 0));
        assert!(p.deactivate.is_empty(), "a skipped row is not deactivated");
        Ok(())
    }

    #[test]
    fn a_bad_row_switched_off_remotely_is_still_deactivated() -> Result<(), String> {
        let remote = vec![meter(6, 6, "no address", false)];
        let local = vec![meter(6, 6, "10.0.0.6", true)];
        let p = plan(Table::Meters, remote, local)?;
        assert_eq!(p.skipped.len(), 1, "{:?}", p.skipped);
        assert_eq!(p.deactivate, vec![6]);
        assert_eq!(p.deactivated, 1);
        Ok(())
    }

    #[test]
    fn a_row_equal_to_its_fingerprint_is_not_checked_again() {
        let odd = meter(1, 7, "legacy address", true);
        let known = vec![Known {
            id: 1,
            active: true,
            digest: Some(odd.digest(Table::Meters)),
        }];
        let (p, pending) = triage(Table::Meters, vec![odd], known);
        assert!(pending.is_empty() && p.skipped.is_empty());
        assert_eq!(p.unchanged, 1);
    }
}
