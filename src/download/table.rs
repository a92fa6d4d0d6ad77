//! What the download engine knows about each table: its columns and their
//! types, the SQL that reads and writes them, and a typed cell that can be
//! compared, decoded from a row and written by binary `COPY`.
//!
//! The two tables differ only here; the engine in [`super`] is the same for
//! both.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

/// A configuration table downloaded from the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `tenants`: who occupies a unit and gets billed.
    Tenants,
    /// `meters`: BACnet/IP devices and the points to read on each.
    Meters,
}

/// A column's type, as the engine reads, compares and writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int8,
    Text,
    Bool,
    Timestamptz,
    /// Read as jsonb's canonical text, so equal documents compare equal as
    /// strings; written back as jsonb.
    Jsonb,
}

impl Kind {
    fn sql_type(self) -> &'static str {
        match self {
            Kind::Int8 => "int8",
            Kind::Text => "text",
            Kind::Bool => "boolean",
            Kind::Timestamptz => "timestamptz",
            Kind::Jsonb => "jsonb",
        }
    }

    /// The type of the value sent by binary `COPY`.
    pub(crate) fn pg_type(self) -> Type {
        match self {
            Kind::Int8 => Type::INT8,
            Kind::Text => Type::TEXT,
            Kind::Bool => Type::BOOL,
            Kind::Timestamptz => Type::TIMESTAMPTZ,
            Kind::Jsonb => Type::JSONB,
        }
    }
}

/// One column of a downloaded table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// Whether the local column is `NOT NULL` (a remote NULL there is a bad row).
    pub required: bool,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        required: false,
    }
}

/// A column the local table declares `NOT NULL`.
const fn req(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        required: true,
    }
}

/// The contract's `tenants` columns; `id` first, as everywhere.
const TENANTS: &[Column] = &[
    col("id", Kind::Int8),
    col("site_id", Kind::Text),
    req("name", Kind::Text),
    col("unit", Kind::Text),
    col("email", Kind::Text),
    req("active", Kind::Bool),
    req("updated_at", Kind::Timestamptz),
];

/// The contract's `meters` columns; `id` first, as everywhere.
const METERS: &[Column] = &[
    col("id", Kind::Int8),
    col("site_id", Kind::Text),
    col("tenant_id", Kind::Int8),
    req("name", Kind::Text),
    // Read as int8 whatever the remote's type (a customer's bigint column
    // may hold 3e9): the value is then checked, not the cast, so one bad
    // row is skipped instead of failing the read. Locally it is int4.
    req("device_instance", Kind::Int8),
    req("address", Kind::Text),
    req("points", Kind::Jsonb),
    req("active", Kind::Bool),
    req("updated_at", Kind::Timestamptz),
];

/// The name of the temporary table a run stages its changed rows in.
const STAGE: &str = "metersync_download_stage";

impl Table {
    /// The table's name on both databases.
    pub fn name(self) -> &'static str {
        match self {
            Table::Tenants => "tenants",
            Table::Meters => "meters",
        }
    }

    /// The `sync_runs.kind` (and MCP tool name) of a download of this table.
    pub fn run_kind(self) -> &'static str {
        match self {
            Table::Tenants => "download_tenants",
            Table::Meters => "download_meters",
        }
    }

    pub(crate) fn columns(self) -> &'static [Column] {
        match self {
            Table::Tenants => TENANTS,
            Table::Meters => METERS,
        }
    }

    /// Position of column `name` (a name from the constants above).
    pub(crate) fn index(self, name: &str) -> usize {
        self.columns()
            .iter()
            .position(|c| c.name == name)
            .unwrap_or(0)
    }

    fn select_list(self) -> String {
        self.columns()
            .iter()
            .map(|c| match c.kind {
                // `::text`, not `::jsonb::text`: a customer's `text` or
                // `json` column with a bad document (invalid JSON, a NUL
                // escape jsonb refuses) must fail its row, not the read.
                // A jsonb column reads as its canonical text either way.
                Kind::Jsonb => format!("{}::text", c.name),
                k => format!("{}::{}", c.name, k.sql_type()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn column_list(self) -> String {
        self.columns()
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The one remote statement: every row in scope, cast to the contract's
    /// types (a customer's `device_instance bigint` still reads). `$1` is
    /// `SITE_ID` when `scoped`. Unordered: the client sorts by id, which is
    /// cheaper than asking the server to.
    pub(crate) fn remote_select(self, scoped: bool) -> String {
        let filter = if scoped { " WHERE site_id = $1" } else { "" };
        format!("SELECT {} FROM {}{filter}", self.select_list(), self.name())
    }

    /// Every local row's id, `active` and `remote_digest`: what a run
    /// needs to find the rows that may have changed.
    pub(crate) fn local_digests(self) -> String {
        format!("SELECT id, active, remote_digest FROM {}", self.name())
    }

    /// The local rows `$1` (an `int8[]`), in the same shape as
    /// [`Table::remote_select`].
    pub(crate) fn local_rows(self) -> String {
        format!(
            "SELECT {} FROM {} WHERE id = ANY($1)",
            self.select_list(),
            self.name()
        )
    }

    /// Blocks other writers of the local table (not its readers) until the
    /// run's transaction ends, so two downloads cannot interleave.
    pub(crate) fn local_lock(self) -> String {
        format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", self.name())
    }

    /// A temporary table with the downloaded columns, dropped at commit.
    pub(crate) fn create_stage(self) -> String {
        let cols = self
            .columns()
            .iter()
            .map(|c| format!("{} {}", c.name, c.kind.sql_type()))
            .collect::<Vec<_>>()
            .join(", ");
        format!("CREATE TEMP TABLE {STAGE} ({cols}, remote_digest bytea) ON COMMIT DROP")
    }

    pub(crate) fn copy_stage(self) -> String {
        format!(
            "COPY {STAGE} ({}, remote_digest) FROM STDIN (FORMAT binary)",
            self.column_list()
        )
    }

    /// Inserts the staged rows and updates the existing ones whose values
    /// differ; a row whose values are equal is not rewritten.
    pub(crate) fn upsert_from_stage(self) -> String {
        let cols = format!("{}, remote_digest", self.column_list());
        let rest: Vec<&str> = self.columns()[1..]
            .iter()
            .map(|c| c.name)
            .chain(["remote_digest"])
            .collect();
        // Compare as the plan does: jsonb by its canonical text, so `1.0`
        // replacing `1` is a change here too.
        let cmp = |prefix: &str| {
            self.columns()[1..]
                .iter()
                .map(|c| match c.kind {
                    Kind::Jsonb => format!("{prefix}.{}::text", c.name),
                    _ => format!("{prefix}.{}", c.name),
                })
                .chain([format!("{prefix}.remote_digest")])
                .collect::<Vec<_>>()
                .join(", ")
        };
        let set = rest
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (old, new) = (cmp("t"), cmp("EXCLUDED"));
        format!(
            "INSERT INTO {table} AS t ({cols}, synced_at) SELECT {cols}, now() FROM {STAGE} \
             ON CONFLICT (id) DO UPDATE SET {set}, synced_at = EXCLUDED.synced_at \
             WHERE ({old}) IS DISTINCT FROM ({new})",
            table = self.name()
        )
    }

    /// Marks the rows `$1` (an `int8[]`) inactive, if they are active.
    pub(crate) fn deactivate(self) -> String {
        format!(
            "UPDATE {} SET active = false, remote_digest = NULL, synced_at = now() WHERE id = ANY($1) AND active",
            self.name()
        )
    }
}

/// One value of one column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int8(i64),
    Text(String),
    Bool(bool),
    Timestamptz(DateTime<Utc>),
    /// jsonb's canonical text.
    Jsonb(String),
}

impl Cell {
    /// Decodes column `i` of `row` as `kind`.
    pub(crate) fn decode(
        row: &tokio_postgres::Row,
        i: usize,
        kind: Kind,
    ) -> Result<Cell, tokio_postgres::Error> {
        Ok(match kind {
            Kind::Int8 => row
                .try_get::<_, Option<i64>>(i)?
                .map_or(Cell::Null, Cell::Int8),
            Kind::Text => row
                .try_get::<_, Option<String>>(i)?
                .map_or(Cell::Null, Cell::Text),
            Kind::Bool => row
                .try_get::<_, Option<bool>>(i)?
                .map_or(Cell::Null, Cell::Bool),
            Kind::Timestamptz => row
                .try_get::<_, Option<DateTime<Utc>>>(i)?
                .map_or(Cell::Null, Cell::Timestamptz),
            Kind::Jsonb => row
                .try_get::<_, Option<String>>(i)?
                .map_or(Cell::Null, Cell::Jsonb),
        })
    }

    pub(crate) fn as_text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) | Cell::Jsonb(s) => Some(s),
            _ => None,
        }
    }
}

impl ToSql for Cell {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Int8(v) => v.to_sql_checked(ty, out),
            Cell::Text(v) => v.to_sql_checked(ty, out),
            Cell::Bool(v) => v.to_sql_checked(ty, out),
            Cell::Timestamptz(v) => v.to_sql_checked(ty, out),
            Cell::Jsonb(v) => {
                if *ty != Type::JSONB {
                    return Err(format!("a jsonb value cannot be sent as {ty}").into());
                }
                // jsonb's binary format: a version byte, then the text.
                out.put_u8(1);
                out.put_slice(v.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        // Each variant checks its own type in `to_sql`.
        true
    }

    to_sql_checked!();
}

/// A column's value exactly as the server sent it (binary format).
struct RawValue<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawValue(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A row as read, kept undecoded: comparing two rows compares the bytes
/// each server sent, column by column, which for these types (integers,
/// booleans, text, timestamps as microseconds, jsonb as its canonical text)
/// is exactly value equality, with no allocation. Only rows that are
/// written or checked are decoded into a [`Record`].
pub(crate) struct Fetched {
    pub id: i64,
    pub row: tokio_postgres::Row,
}

impl Fetched {
    /// Wraps a row read by [`Table::remote_select`] or
    /// [`Table::local_select`]; `Ok(None)` for a row without an id.
    pub(crate) fn new(row: tokio_postgres::Row) -> Result<Option<Self>, tokio_postgres::Error> {
        Ok(row
            .try_get::<_, Option<i64>>(0)?
            .map(|id| Fetched { id, row }))
    }

    /// A 128-bit fingerprint of the first `columns` columns' bytes (two
    /// SipHash-1-3 runs with different prefixes). Should a Rust release
    /// change the std hasher, stored digests stop matching and rows are
    /// compared by value once, then re-fingerprinted: slower, never wrong.
    pub(crate) fn digest(&self, columns: usize) -> [u8; 16] {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut out = [0u8; 16];
        for (half, seed) in [
            (0usize, 0x6d65_7465_7273_796eu64),
            (8, 0x6469_6765_7374_3132),
        ] {
            let mut h = DefaultHasher::new();
            seed.hash(&mut h);
            for i in 0..columns {
                self.raw(i).hash(&mut h);
            }
            out[half..half + 8].copy_from_slice(&h.finish().to_be_bytes());
        }
        out
    }

    /// Column `i`'s bytes; `None` for NULL (or a column that is not there).
    pub(crate) fn raw(&self, i: usize) -> Option<&[u8]> {
        self.row
            .try_get::<_, Option<RawValue>>(i)
            .ok()
            .flatten()
            .map(|r| r.0)
    }
}

/// One row: the cells in [`Table::columns`] order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub id: i64,
    pub cells: Vec<Cell>,
}

impl Record {
    /// Whether the row is active (a NULL `active` counts as inactive).
    #[cfg(test)]
    pub(crate) fn active(&self, table: Table) -> bool {
        matches!(
            self.cells.get(table.index("active")),
            Some(Cell::Bool(true))
        )
    }

    /// The cell of column `name`.
    pub(crate) fn get(&self, table: Table, name: &str) -> &Cell {
        self.cells.get(table.index(name)).unwrap_or(&Cell::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_rewrites_only_differing_rows() {
        let sql = Table::Tenants.upsert_from_stage();
        assert!(sql.contains("ON CONFLICT (id) DO UPDATE SET site_id = EXCLUDED.site_id"));
        assert!(sql.contains("WHERE (t.site_id, t.name, t.unit, t.email, t.active, t.updated_at, t.remote_digest) IS DISTINCT FROM (EXCLUDED.site_id"), "{sql}");
        let sql = Table::Meters.upsert_from_stage();
        assert!(sql.contains("t.points::text, t.active"), "{sql}");
    }

    #[test]
    fn remote_select_casts_and_scopes() {
        let sql = Table::Meters.remote_select(true);
        assert!(sql.starts_with("SELECT id::int8, site_id::text"));
        assert!(sql.contains("device_instance::int8"));
        assert!(sql.contains("points::text"));
        assert!(sql.ends_with("FROM meters WHERE site_id = $1"));
        assert!(!Table::Meters.remote_select(false).contains("$1"));
    }
}
