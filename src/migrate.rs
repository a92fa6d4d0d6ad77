//! Schema migrations for both databases, embedded in the binary from
//! `migrations/local` and `migrations/remote`.
//!
//! Guarantees:
//! - each migration and the row recording it in `metersync_migrations` commit
//!   in one transaction, so a migration is applied entirely or not at all;
//! - running `migrate` again is a no-op (it reports nothing applied);
//! - two `migrate` runs at once serialise on a table lock held for the
//!   transaction only (no advisory or session locks: the remote may sit
//!   behind a transaction-mode pooler);
//! - the remote migrations use `CREATE ... IF NOT EXISTS`, so a remote whose
//!   tables already exist with the contract's columns is left as it is;
//! - [`migrate_sides`] applies each side on its own: a remote that is down or
//!   lacks DDL rights never stops the local migrations, and both outcomes are
//!   reported; a side whose migrations are all recorded needs no DDL right;
//! - [`script`] is the SQL for one side, for a DBA, built without connecting;
//! - [`check`] verifies the remote's tables, key columns and grants with
//!   queries only (no DDL), one reported check at a time.

use serde::Serialize;
use tokio_postgres::types::{ToSql, Type};

use crate::config::Side;
use crate::db::{Databases, DbError};
use crate::fault::ErrorClass;

/// One migration: a version (sorts in order of application) and its SQL.
pub struct Migration {
    /// The file name without `.sql`, e.g. `0001_init`.
    pub version: &'static str,
    /// The statements, run as one simple-query batch.
    pub sql: &'static str,
}

/// The local database's migrations, in order.
pub const LOCAL: &[Migration] = &[
    Migration {
        version: "0001_init",
        sql: include_str!("../migrations/local/0001_init.sql"),
    },
    Migration {
        version: "0002_download",
        sql: include_str!("../migrations/local/0002_download.sql"),
    },
    Migration {
        version: "0003_upload",
        sql: include_str!("../migrations/local/0003_upload.sql"),
    },
    Migration {
        version: "0005_conflicts",
        sql: include_str!("../migrations/local/0005_conflicts.sql"),
    },
];

/// The remote database's migrations, in order.
pub const REMOTE: &[Migration] = &[
    Migration {
        version: "0001_init",
        sql: include_str!("../migrations/remote/0001_init.sql"),
    },
    Migration {
        version: "0002_site_status",
        sql: include_str!("../migrations/remote/0002_site_status.sql"),
    },
];

/// What `migrate` did on one side.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SideReport {
    /// Versions applied by this run.
    pub applied: Vec<String>,
    /// Versions that were already applied.
    pub already_applied: Vec<String>,
}

/// What `migrate` did on both sides.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MigrateReport {
    /// The local database.
    pub local: SideReport,
    /// The remote database, when configured.
    pub remote: Option<SideReport>,
}

/// Applies the pending migrations on the local database and, when it is
/// configured, on the remote.
///
/// Fails when a database is unreachable after the retry policy or a
/// migration's SQL fails (that migration is then rolled back whole).
pub async fn migrate(db: &Databases) -> Result<MigrateReport, DbError> {
    let local = apply(db, Side::Local, LOCAL).await?;
    let remote = if db.has_remote() {
        Some(apply(db, Side::Remote, REMOTE).await?)
    } else {
        None
    };
    Ok(MigrateReport { local, remote })
}

/// Applies `migrations` on `side`.
///
/// Fails as [`migrate`] does.
pub async fn apply(
    db: &Databases,
    side: Side,
    migrations: &[Migration],
) -> Result<SideReport, DbError> {
    let client = db.get(side).await?;
    apply_on(client, side, migrations).await
}

/// The table recording applied migrations.
const JOURNAL_DDL: &str = "CREATE TABLE IF NOT EXISTS metersync_migrations (
    version text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// The boolean a one-row question answers (its first column), `false`
/// when it returns no row.
async fn answer(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<bool, tokio_postgres::Error> {
    let rows = client.query_typed(sql, params).await?;
    match rows.first() {
        Some(r) => r.try_get::<_, bool>(0),
        None => Ok(false),
    }
}

async fn apply_on(
    mut client: deadpool_postgres::Object,
    side: Side,
    migrations: &[Migration],
) -> Result<SideReport, DbError> {
    let q = |e: tokio_postgres::Error| DbError::query(side, &e);
    let mut report = SideReport {
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    // A role without CREATE on the schema (a locked-down remote whose DBA
    // ran `migrate --print`) must not need it when nothing is pending:
    // CREATE ... IF NOT EXISTS checks the privilege before the existence.
    let exists = answer(
        &client,
        "SELECT to_regclass('metersync_migrations') IS NOT NULL",
        &[],
    )
    .await
    .map_err(q)?;
    if exists {
        let done = client
            .query_typed("SELECT version FROM metersync_migrations", &[])
            .await
            .map_err(q)?;
        let done: Vec<String> = done
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(q)?;
        if migrations
            .iter()
            .all(|m| done.iter().any(|d| d == m.version))
        {
            report.already_applied = migrations.iter().map(|m| m.version.into()).collect();
            return Ok(report);
        }
    } else {
        client.batch_execute(JOURNAL_DDL).await.map_err(q)?;
    }
    for m in migrations {
        let tx = client.transaction().await.map_err(q)?;
        tx.batch_execute("LOCK TABLE metersync_migrations IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(q)?;
        let done = tx
            .query_typed(
                "SELECT 1 FROM metersync_migrations WHERE version = $1",
                &[(&m.version, tokio_postgres::types::Type::TEXT)],
            )
            .await
            .map_err(q)?;
        if !done.is_empty() {
            report.already_applied.push(m.version.to_string());
            tx.rollback().await.map_err(q)?;
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(q)?;
        tx.execute_typed(
            "INSERT INTO metersync_migrations (version) VALUES ($1)",
            &[(&m.version, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .map_err(q)?;
        tx.commit().await.map_err(q)?;
        tracing::info!(%side, version = m.version, "migration applied");
        report.applied.push(m.version.to_string());
    }
    Ok(report)
}

/// Which databases a `migrate` run is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sides {
    /// The local database, and the remote when configured.
    Both,
    /// The local database only.
    Local,
    /// The remote database only (it must be configured).
    Remote,
}

/// One side's outcome in [`migrate_sides`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SideOutcome {
    /// `applied` (everything is now applied), `failed`, or `not_configured`
    /// (the remote, when not asked for explicitly).
    pub status: String,
    /// Versions applied by this run.
    pub applied: Vec<String>,
    /// Versions that were already applied.
    pub already_applied: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// `transient` (try again later), `operator` (change what `hint` says) or `bug`.
    pub class: Option<ErrorClass>,
    /// What to do.
    pub hint: Option<String>,
}

impl SideOutcome {
    fn from(r: Result<SideReport, DbError>) -> Self {
        match r {
            Ok(r) => SideOutcome {
                status: "applied".into(),
                applied: r.applied,
                already_applied: r.already_applied,
                error: None,
                class: None,
                hint: None,
            },
            Err(e) => SideOutcome {
                status: "failed".into(),
                applied: Vec::new(),
                already_applied: Vec::new(),
                class: Some(e.class()),
                hint: e.hint().map(str::to_string),
                error: Some(e.to_string()),
            },
        }
    }
}

/// What [`migrate_sides`] did on each side asked for.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MigrateOutcome {
    /// Whether everything asked for is applied.
    pub ok: bool,
    /// The local database, when asked for.
    pub local: Option<SideOutcome>,
    /// The remote database, when asked for.
    pub remote: Option<SideOutcome>,
}

/// Applies the pending migrations of each side in `sides`, independently and
/// at the same time: one side failing (down, refused, no DDL right) does not
/// stop the other. The remote gets one connection attempt, not the retry
/// policy, so a remote that is down is reported within
/// `DB_CONNECTION_TIMEOUT_MS` instead of holding the local result back.
pub async fn migrate_sides(db: &Databases, sides: Sides) -> MigrateOutcome {
    let local = async {
        match sides {
            Sides::Remote => None,
            _ => Some(SideOutcome::from(apply(db, Side::Local, LOCAL).await)),
        }
    };
    let remote = async {
        if sides == Sides::Local || (sides == Sides::Both && !db.has_remote()) {
            return None;
        }
        let r = match db.get_once(Side::Remote).await {
            Ok(c) => apply_on(c, Side::Remote, REMOTE).await,
            Err(e) => Err(e),
        };
        Some(SideOutcome::from(r))
    };
    let (local, remote) = tokio::join!(local, remote);
    let ok = [&local, &remote]
        .iter()
        .all(|o| o.as_ref().is_none_or(|o| o.status == "applied"));
    MigrateOutcome { ok, local, remote }
}

/// The SQL that applies every migration of `side` and records it in
/// `metersync_migrations`, for a DBA to run (`psql -f`). Built without
/// connecting. Each migration is one transaction.
pub fn script(side: Side) -> String {
    let list = match side {
        Side::Local => LOCAL,
        Side::Remote => REMOTE,
    };
    let mut out = format!(
        "-- metersync {} migrations for the {side} database.\n\
         -- Run as a role allowed to create tables, e.g. psql -v ON_ERROR_STOP=1 -f this.sql;\n\
         -- then grant metersync's role what `metersync check` lists.\n\n{JOURNAL_DDL};\n",
        env!("CARGO_PKG_VERSION")
    );
    for m in list {
        out.push_str(&format!(
            "\n-- {v}\nBEGIN;\n{sql}\nINSERT INTO metersync_migrations (version) VALUES ('{v}') ON CONFLICT DO NOTHING;\nCOMMIT;\n",
            v = m.version,
            sql = m.sql.trim_end()
        ));
    }
    out
}

/// One verified property of the remote.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Check {
    /// What was checked, e.g. `INSERT on meter_readings`.
    pub check: String,
    /// Whether it holds.
    pub ok: bool,
    /// What is missing and what to do, when it does not hold.
    pub detail: Option<String>,
}

/// The result of [`check`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CheckReport {
    /// Whether every check passed.
    pub ok: bool,
    /// Each check, in order.
    pub checks: Vec<Check>,
}

/// A table metersync needs on the remote: the columns it reads or writes,
/// its key, and the privileges its role needs.
struct Needed {
    table: &'static str,
    columns: &'static [&'static str],
    key: &'static [&'static str],
    privileges: &'static [&'static str],
}

const NEEDED: &[Needed] = &[
    Needed {
        table: "tenants",
        columns: &[
            "id",
            "site_id",
            "name",
            "unit",
            "email",
            "active",
            "updated_at",
        ],
        key: &["id"],
        privileges: &["SELECT"],
    },
    Needed {
        table: "meters",
        columns: &[
            "id",
            "site_id",
            "tenant_id",
            "name",
            "device_instance",
            "address",
            "points",
            "active",
            "updated_at",
        ],
        key: &["id"],
        privileges: &["SELECT"],
    },
    Needed {
        table: "meter_readings",
        columns: &[
            "meter_id",
            "point",
            "recorded_at",
            "value",
            "unit",
            "site_id",
        ],
        key: &["meter_id", "point", "recorded_at"],
        privileges: &["SELECT", "INSERT"],
    },
];

/// The site heartbeat table, checked when a remote migration creates it.
const SITE_STATUS: Needed = Needed {
    table: "site_status",
    columns: &["site_id"],
    key: &["site_id"],
    privileges: &["SELECT", "INSERT", "UPDATE"],
};

/// Verifies, without DDL, that the remote has the tables, key columns and
/// grants metersync needs (`site_status` too when a remote migration in
/// [`REMOTE`] creates it).
///
/// Fails only when the remote cannot be reached or queried at all; a
/// missing table or grant is a failed check in the report.
pub async fn check(db: &Databases) -> Result<CheckReport, DbError> {
    let client = db.get_once(Side::Remote).await?;
    let q = |e: tokio_postgres::Error| DbError::query(Side::Remote, &e);
    let with_status = REMOTE.iter().any(|m| m.sql.contains("site_status"));
    let tables = NEEDED.iter().chain(with_status.then_some(&SITE_STATUS));
    let mut checks = Vec::new();
    let text = tokio_postgres::types::Type::TEXT;
    for t in tables {
        let exists = answer(
            &client,
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&t.table, text.clone())],
        )
        .await
        .map_err(q)?;
        checks.push(Check {
            check: format!("table {} exists", t.table),
            ok: exists,
            detail: (!exists).then(|| format!("{} is missing: have a DBA run `metersync migrate --remote --print` and the SQL it prints", t.table)),
        });
        if !exists {
            continue;
        }
        let rows = client
            .query_typed(
                "SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[(&t.table, text.clone())],
            )
            .await
            .map_err(q)?;
        let have: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(q)?;
        let missing: Vec<&str> = t
            .columns
            .iter()
            .copied()
            .filter(|c| !have.iter().any(|h| h == c))
            .collect();
        checks.push(Check {
            check: format!("{} has columns {}", t.table, t.columns.join(", ")),
            ok: missing.is_empty(),
            detail: (!missing.is_empty()).then(|| {
                format!(
                    "missing: {}; compare the table with the README's definitions",
                    missing.join(", ")
                )
            }),
        });
        // A primary key or unique index on exactly the key columns.
        let keys = client
            .query_typed(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique GROUP BY i.indexrelid",
                &[(&t.table, text.clone())],
            )
            .await
            .map_err(q)?;
        let mut want: Vec<String> = t.key.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut has_key = false;
        for r in &keys {
            if r.try_get::<_, Vec<String>>(0).map_err(q)? == want {
                has_key = true;
            }
        }
        checks.push(Check {
            check: format!("{} is keyed on ({})", t.table, t.key.join(", ")),
            ok: has_key,
            detail: (!has_key).then(|| {
                format!(
                    "add PRIMARY KEY ({}): uploads rely on it to never duplicate a row",
                    t.key.join(", ")
                )
            }),
        });
        for p in t.privileges {
            let ok = answer(
                &client,
                "SELECT has_table_privilege(to_regclass($1), $2)",
                &[(&t.table, text.clone()), (p, text.clone())],
            )
            .await
            .map_err(q)?;
            checks.push(Check {
                check: format!("{p} on {}", t.table),
                ok,
                detail: (!ok).then(|| {
                    format!(
                        "GRANT {p} ON {} TO the role in POSTGRES_CLIENT_USER",
                        t.table
                    )
                }),
            });
        }
    }
    Ok(CheckReport {
        ok: checks.iter().all(|c| c.ok),
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_records_every_migration_in_its_own_transaction() {
        let s = script(Side::Remote);
        assert!(s.contains("CREATE TABLE IF NOT EXISTS metersync_migrations"));
        for m in REMOTE {
            assert!(s.contains(&format!("VALUES ('{}')", m.version)));
        }
        assert_eq!(s.matches("BEGIN;").count(), REMOTE.len());
        assert_eq!(script(Side::Local).matches("COMMIT;").count(), LOCAL.len());
    }
}
