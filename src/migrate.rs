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
//!   tables already exist with the contract's columns is left as it is.

use serde::Serialize;

use crate::config::Side;
use crate::db::{Databases, DbError};

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
    let mut client = db.get(side).await?;
    let q = |e: tokio_postgres::Error| DbError::query(side, &e);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS metersync_migrations (
                version text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(q)?;
    let mut report = SideReport {
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
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
