//! The download engine: the remote `tenants` and `meters` tables mirrored
//! into the local database, with change tracking. One engine serves both
//! tables ([`Table`]); they differ in columns, not in logic.
//!
//! Guarantees:
//! - **scope**: with `SITE_ID` set only that site's rows are read; the local
//!   table mirrors that scope, so a local row outside it (gone remotely,
//!   moved to another site, or inactive remotely) becomes inactive locally.
//!   Nothing is ever deleted locally: readings may still reference it;
//! - **change detection by value**: every column is compared (not only
//!   `updated_at`); a row whose values are equal is not rewritten, and a run
//!   with nothing changed writes no row of the table at all, only its
//!   `sync_runs` record. To keep that cheap, each local row stores a 128-bit
//!   digest of the remote row it was written from (`remote_digest`, local
//!   migration 0002): an unchanged row costs its id, `active` and digest on
//!   the local side and is never decoded; rows whose digest differs are read
//!   in full and compared column by column, which names the changed fields.
//!   The local tables are metersync's copy: a hand edit to a local row is
//!   only overwritten when the remote row changes;
//! - **atomic**: the changes to one table commit in one local transaction;
//!   a failure at any point leaves the local table exactly as it was. The
//!   table is locked against other writers (not readers) for the run, so two
//!   downloads cannot interleave;
//! - **constant round trips**: one remote round trip per run (an unnamed
//!   `SELECT`, pipelined with the `BEGIN READ ONLY; SET LOCAL
//!   statement_timeout` and `COMMIT` around it: safe behind a
//!   transaction-mode pooler), and a fixed number of local statements
//!   whatever the row count (two reads; changed rows go through one binary
//!   `COPY` into a temporary table and one `INSERT ... ON CONFLICT`; one
//!   `UPDATE` deactivates the gone rows);
//! - **deadline**: the remote read is cancelled by the server after
//!   [`REMOTE_READ_DEADLINE`] and abandoned by the client
//!   [`CLIENT_GRACE`] later (a frozen link), failing the download instead
//!   of hanging it;
//! - **row-level isolation**: a remote row (of either table, active or not)
//!   that cannot be decoded (an `infinity` timestamp), that the local copy
//!   could not hold (a NULL in a `NOT NULL` column, a text over
//!   [`validate::MAX_TEXT_LEN`]) or that is not a usable
//!   [`crate::meter_def::MeterDefinition`] is skipped, leaving its local
//!   copy as it was (but a row switched off remotely still deactivates an
//!   active local copy, so a bad row never keeps a meter collecting), and named with its id and reason in the result, the
//!   log, and the run's `sync_runs` counts (`skipped_rows`, shown by
//!   `sync_status`); the other rows apply. The remote columns are read
//!   through casts that cannot fail on a value (`device_instance::int8`,
//!   `points::text`), so no single value fails the read itself;
//! - **cancellable, never half-applied**: the caller's cancel token (a
//!   signal, an MCP client's cancellation) is checked before the remote
//!   read, while it is in flight, before the full local rows are read and
//!   before the apply; a cancelled run rolls its local transaction back, so
//!   the local table is exactly as it was, reports `cancelled: true` with no
//!   changes, and its `sync_runs` row says `cancelled`. Once the apply has
//!   started it runs to its commit (a few statements), never half-way;
//! - every run, dry or not, failed, cancelled or not, is recorded in
//!   `sync_runs` with kind `download_tenants` / `download_meters`, its counts
//!   and its error.
//!
//! Run tenants before meters: meters reference tenants.

mod diff;
mod table;
pub(crate) mod validate;

use std::time::Instant;

use futures::{pin_mut, TryStreamExt};
use serde::Serialize;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::capped;
use crate::config::Side;
use crate::db::DbError;
use crate::progress::Progress;
use crate::runs;

use table::Fetched;
pub use table::Table;

/// At most this many changes and this many skipped rows are listed in a
/// report (the counts stay exact), so a result never floods an assistant's
/// context.
pub const LIST_CAP: usize = 50;

/// What a change did to a local row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    /// A row new to the local copy.
    Insert,
    /// A row whose values changed remotely.
    Update,
    /// A row gone or inactive remotely, now inactive locally.
    Deactivate,
}

/// One changed row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Change {
    /// The row's id.
    pub id: i64,
    /// What happened to it.
    pub action: ChangeAction,
    /// The columns whose values changed (empty for an insert): the names
    /// from the table's column list, never allocated per row.
    pub fields: Vec<&'static str>,
}

/// A remote row that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RowError {
    /// The row's id.
    pub id: i64,
    /// What is wrong with it and what to fix on the remote.
    pub error: String,
}

/// The result of one download. Every skipped row is named in `errors`
/// (and in the run's `sync_runs.counts.skipped_rows`) with its id and why.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DownloadReport {
    /// `tenants` or `meters`.
    pub table: String,
    /// The `SITE_ID` the download was scoped to (`null`: every site).
    pub site_id: Option<String>,
    /// True when the changes were computed and reported but not written.
    pub dry_run: bool,
    /// Rows read from the remote.
    pub remote_rows: u64,
    /// Rows new to the local copy.
    pub inserted: u64,
    /// Rows whose values changed.
    pub updated: u64,
    /// Rows already equal to the remote (including rows inactive on both sides).
    pub unchanged: u64,
    /// Rows gone or inactive remotely that became inactive locally.
    pub deactivated: u64,
    /// Remote rows with data the collector cannot use, left as they were locally.
    pub skipped: u64,
    /// The changes, in id order, at most [`LIST_CAP`].
    #[schemars(description = format!("The changes, in id order, at most {LIST_CAP}."))]
    pub changes: Vec<Change>,
    /// Changes left out of `changes`.
    pub changes_omitted: u64,
    /// The skipped rows and why, at most [`LIST_CAP`].
    #[schemars(description = format!("The skipped rows and why, at most {LIST_CAP}."))]
    pub errors: Vec<RowError>,
    /// Skipped rows left out of `errors`.
    pub errors_omitted: u64,
    /// Round trips to the remote by this run (one, whatever the row count:
    /// the transaction that sets the read's deadline is pipelined with it;
    /// none when it was cancelled before the read).
    pub remote_round_trips: u32,
    /// Whether the run stopped on request before writing anything: the
    /// local table is exactly as it was and the counts are zero.
    pub cancelled: bool,
    /// Wall time of the run.
    pub duration_ms: u64,
}

impl DownloadReport {
    /// The report of a run stopped on request: nothing was written.
    fn cancelled(
        table: Table,
        site_id: Option<String>,
        dry_run: bool,
        remote_rows: u64,
        remote_round_trips: u32,
        started: Instant,
    ) -> Self {
        DownloadReport {
            table: table.name().to_string(),
            site_id,
            dry_run,
            remote_rows,
            inserted: 0,
            updated: 0,
            unchanged: 0,
            deactivated: 0,
            skipped: 0,
            changes: Vec::new(),
            changes_omitted: 0,
            errors: Vec::new(),
            errors_omitted: 0,
            remote_round_trips,
            cancelled: true,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

impl runs::RunReport for DownloadReport {
    fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// The counts recorded in `sync_runs`.
    fn counts(&self) -> serde_json::Value {
        serde_json::json!({
            "site_id": self.site_id,
            "dry_run": self.dry_run,
            "remote_rows": self.remote_rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deactivated": self.deactivated,
            "skipped": self.skipped,
            "skipped_ids": self.errors.iter().map(|e| e.id).collect::<Vec<_>>(),
            // The reasons too (each names its row), so the journal and
            // sync_status say what to fix without a rerun.
            "skipped_rows": self.errors,
            "skipped_rows_omitted": self.errors_omitted,
            "cancelled": self.cancelled,
        })
    }
}

/// Why a download failed. The local copy is then exactly as it was before.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The remote table could not be read.
    #[error("{kind} could not read the remote {table} table; nothing was changed locally: {source}{hint}")]
    Remote {
        /// `download_tenants` or `download_meters`.
        kind: &'static str,
        /// `tenants` or `meters`.
        table: &'static str,
        /// The database error (never query text or a password).
        #[source]
        source: DbError,
        /// What to check, when the error says more than the message.
        hint: String,
    },
    /// The local copy could not be read or written; it was rolled back.
    #[error(
        "{kind} could not update the local {table} table; it was left exactly as it was: {source}"
    )]
    Local {
        /// `download_tenants` or `download_meters`.
        kind: &'static str,
        /// `tenants` or `meters`.
        table: &'static str,
        /// The database error (never query text or a password).
        #[source]
        source: DbError,
    },
    /// The local writes did not match the plan (a trigger or rule on the
    /// local table?); they were rolled back.
    #[error("{kind}: the local {table} table did not take the changes as planned ({detail}); they were rolled back. Check for triggers or rules on the local {table} table")]
    Inconsistent {
        /// `download_tenants` or `download_meters`.
        kind: &'static str,
        /// `tenants` or `meters`.
        table: &'static str,
        /// Expected and actual row counts.
        detail: String,
    },
}

impl DownloadError {
    /// Whether running the download again later may succeed as it is.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Remote { source, .. } | DownloadError::Local { source, .. } => {
                source.is_transient()
            }
            DownloadError::Inconsistent { .. } => false,
        }
    }
}

/// Both tables' outcomes of [`download_all`].
#[derive(Debug)]
pub struct Downloads {
    /// The tenants' download.
    pub tenants: Result<DownloadReport, DownloadError>,
    /// The meters' download; `None` when it was not run (the tenants
    /// failed, or `cancel` fired after them).
    pub meters: Option<Result<DownloadReport, DownloadError>>,
}

impl Downloads {
    /// Both reports, or the first error (a meters download that did not run
    /// after a cancel is left out).
    // The same error as `download`'s (whose async fn clippy does not lint).
    #[allow(clippy::result_large_err)]
    pub fn into_result(self) -> Result<Vec<DownloadReport>, DownloadError> {
        let mut out = vec![self.tenants?];
        if let Some(m) = self.meters {
            out.push(m?);
        }
        Ok(out)
    }
}

/// Downloads tenants, then meters: the one order every front end (cycle,
/// daemon, demo) uses, since a meter names its tenant. The meters are not
/// downloaded when the tenants failed or `cancel` fired in between; each
/// download watches `cancel` itself (see [`download`]).
pub async fn download_all(
    app: &App,
    dry_run: bool,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Downloads {
    let tenants = download(app, Table::Tenants, dry_run, progress, cancel).await;
    let meters = if tenants.is_err() || cancel.is_cancelled() {
        None
    } else {
        Some(download(app, Table::Meters, dry_run, progress, cancel).await)
    };
    Downloads { tenants, meters }
}

/// Downloads `table` from the remote into the local copy (see the module
/// docs for the guarantees). With `dry_run`, computes and reports the same
/// changes but writes none. Records the run in `sync_runs`.
///
/// When `cancel` fires before the apply starts (before or during the remote
/// read, or before the changes are written), the local transaction is rolled
/// back and the report says `cancelled` (so does the journal): nothing was
/// written. A run cancelled before it starts still records its journal row
/// (after a shutdown signal, a checkout gets one short attempt for that).
///
/// Fails when either database is unreachable after the retry policy, the
/// remote table cannot be read as the contract's columns, or the local apply
/// fails; the local table is then unchanged.
pub async fn download(
    app: &App,
    table: Table,
    dry_run: bool,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<DownloadReport, DownloadError> {
    let kind = table.run_kind();
    let local_err = |source| DownloadError::Local {
        kind,
        table: table.name(),
        source,
    };
    let run = runs::Run::start(&app.db, kind).await.map_err(local_err)?;
    let result = run_download(app, table, dry_run, progress, cancel).await;
    run.finish(&app.db, &result).await;
    match &result {
        Ok(report) if report.cancelled => {
            tracing::info!(
                table = table.name(),
                dry_run,
                duration_ms = report.duration_ms,
                "download cancelled; nothing was changed locally"
            );
        }
        Ok(report) => {
            tracing::info!(
                table = table.name(),
                dry_run,
                inserted = report.inserted,
                updated = report.updated,
                unchanged = report.unchanged,
                deactivated = report.deactivated,
                skipped = report.skipped,
                duration_ms = report.duration_ms,
                "download finished"
            );
        }
        Err(e) => {
            tracing::error!(table = table.name(), dry_run, "download failed: {e}");
        }
    }
    result
}

async fn run_download(
    app: &App,
    table: Table,
    dry_run: bool,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let kind = table.run_kind();
    let name = table.name();
    let site = app.config.site_id.clone();
    let stopped = |remote_rows, round_trips| {
        DownloadReport::cancelled(
            table,
            app.config.site_id.clone(),
            dry_run,
            remote_rows,
            round_trips,
            started,
        )
    };
    // Checkpoint: before anything is read.
    if cancel.is_cancelled() {
        return Ok(stopped(0, 0));
    }
    let remote_err = |source: DbError, hint: &str| DownloadError::Remote {
        kind,
        table: name,
        source,
        hint: hint.to_string(),
    };
    let local_err = |e: &tokio_postgres::Error| DownloadError::Local {
        kind,
        table: name,
        source: DbError::query(Side::Local, e),
    };

    let remote = app.db.remote().await.map_err(|e| remote_err(e, ""))?;
    let mut local = app
        .db
        .local()
        .await
        .map_err(|source| DownloadError::Local {
            kind,
            table: name,
            source,
        })?;
    let tx = local.transaction().await.map_err(|e| local_err(&e))?;
    tx.batch_execute(&table.local_lock())
        .await
        .map_err(|e| local_err(&e))?;

    // The one remote statement and the local read, at the same time.
    let remote_sql = table.remote_select(site.is_some());
    let remote_params: Vec<(&(dyn ToSql + Sync), Type)> = match &site {
        Some(s) => vec![(s as &(dyn ToSql + Sync), Type::TEXT)],
        None => Vec::new(),
    };
    let local_sql = table.local_digests();
    // Rows are decoded as they arrive, overlapping the servers' work.
    // Checkpoint: while the reads are in flight (the remote read may wait up
    // to its deadline); a cancelled read is abandoned and its connection
    // closed below, like a failed one.
    let reads = async {
        tokio::join!(
            async {
                let deadline = REMOTE_READ_DEADLINE + CLIENT_GRACE;
                match tokio::time::timeout(deadline, read_remote(&remote, &remote_sql, remote_params))
                .await
            {
                Ok(read) => {
                    read.map_err(|e| remote_err(DbError::query(Side::Remote, &e), remote_hint(&e)))
                }
                Err(_) => Err(remote_err(
                    DbError::Query {
                        side: Side::Remote,
                        cause: format!(
                            "no answer within {} s (a frozen link?)",
                            deadline.as_secs()
                        ),
                        transient: true,
                    },
                    "; the connection was dropped and the download will be retried on the next run",
                )),
            }
            },
            async {
                let no_params: [(&(dyn ToSql + Sync), Type); 0] = [];
                let rows = tx
                    .query_typed_raw(&local_sql, no_params)
                    .await
                    .map_err(|e| local_err(&e))?;
                let rows = read_all(rows).await.map_err(|e| local_err(&e))?;
                Ok::<_, DownloadError>(rows.iter().map(diff::Known::from_row).collect::<Vec<_>>())
            },
        )
    };
    let read = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = reads => Some(r),
    };
    // Never give a connection back to the pool mid-transaction: after a
    // timeout or a cancellation its state is unknown, so it is closed
    // instead.
    let Some((remote_rows, local_rows)) = read else {
        drop(deadpool_postgres::Object::take(remote));
        // Dropping `tx` rolls the local transaction back.
        return Ok(stopped(0, 1));
    };
    if remote_rows.is_err() {
        drop(deadpool_postgres::Object::take(remote));
    } else {
        drop(remote);
    }
    let (remote_rows, local_rows) = (remote_rows?, local_rows?);
    let read_ms = started.elapsed().as_millis() as u64;
    let remote_count = remote_rows.len() as u64;
    progress.update(1, Some(3), &format!("read {remote_count} remote {name}"));

    // Checkpoint: before the full local rows are read.
    if cancel.is_cancelled() {
        tx.rollback().await.map_err(|e| local_err(&e))?;
        return Ok(stopped(remote_count, 1));
    }
    let (plan, pending) = diff::triage(table, remote_rows, local_rows);
    // The rows that may have changed, read in full: one statement.
    let mut full = Vec::new();
    if !pending.is_empty() {
        let ids: Vec<i64> = pending.iter().map(|p| p.id()).collect();
        let rows = tx
            .query_typed_raw(
                &table.local_rows(),
                [(&ids as &(dyn ToSql + Sync), Type::INT8_ARRAY)],
            )
            .await
            .map_err(|e| local_err(&e))?;
        full = read_all(rows).await.map_err(|e| local_err(&e))?;
    }
    let mut plan = diff::settle(table, plan, pending, full);
    let bad = std::mem::take(&mut plan.skipped);
    progress.update(2, Some(3), &format!("compared with the local {name}"));
    tracing::debug!(
        table = name,
        read_ms,
        compared_ms = started.elapsed().as_millis() as u64,
        "download planned"
    );

    // Checkpoint: before the apply, the last point where stopping is free;
    // once started, the apply runs to its commit.
    if cancel.is_cancelled() {
        tx.rollback().await.map_err(|e| local_err(&e))?;
        return Ok(stopped(remote_count, 1));
    }
    if !dry_run && !plan.is_empty() {
        apply(&tx, table, &plan).await?;
        tx.commit().await.map_err(|e| local_err(&e))?;
    } else {
        // Nothing to write (or a dry run): end the transaction, releasing the lock.
        tx.rollback().await.map_err(|e| local_err(&e))?;
    }
    progress.update(3, Some(3), "done");

    let (mut changes, mut changes_omitted) = (Vec::new(), 0);
    capped::extend(&mut changes, &mut changes_omitted, LIST_CAP, plan.changes);
    let skipped_total = bad.len();
    let (mut errors, mut errors_omitted) = (Vec::new(), 0);
    capped::extend(
        &mut errors,
        &mut errors_omitted,
        LIST_CAP,
        bad.into_iter().map(|(id, error)| RowError { id, error }),
    );
    Ok(DownloadReport {
        table: name.to_string(),
        site_id: site,
        dry_run,
        remote_rows: remote_count,
        inserted: plan.inserted,
        updated: plan.updated,
        unchanged: plan.unchanged,
        deactivated: plan.deactivated,
        skipped: skipped_total as u64,
        changes,
        changes_omitted,
        errors,
        errors_omitted,
        remote_round_trips: 1,
        cancelled: false,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// The server-side limit on the remote read (`SET LOCAL statement_timeout`,
/// which a transaction-mode pooler allows): a read that takes longer is
/// cancelled by the server and fails the download instead of holding it.
pub const REMOTE_READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// How much longer the client waits before giving up on its own: a frozen
/// link never delivers the server's cancellation, so only this deadline
/// gets the download out.
pub const CLIENT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The remote read in one round trip: `BEGIN; SET LOCAL statement_timeout`,
/// the unnamed `SELECT` and `COMMIT` are pipelined on the connection (sent
/// in that order before any answer), so the deadline costs no extra wait.
async fn read_remote(
    remote: &tokio_postgres::Client,
    sql: &str,
    params: Vec<(&(dyn ToSql + Sync), Type)>,
) -> Result<Vec<Fetched>, tokio_postgres::Error> {
    let begin = format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
        REMOTE_READ_DEADLINE.as_millis()
    );
    let (began, rows, committed) = tokio::join!(
        remote.batch_execute(&begin),
        async {
            let rows = remote.query_typed_raw(sql, params).await?;
            read_all(rows).await
        },
        remote.batch_execute("COMMIT"),
    );
    began?;
    let rows = rows?;
    committed?;
    Ok(rows)
}

/// Collects a result stream, undecoded, skipping rows without an id.
async fn read_all(rows: tokio_postgres::RowStream) -> Result<Vec<Fetched>, tokio_postgres::Error> {
    pin_mut!(rows);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await? {
        if let Some(r) = Fetched::new(row)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// What to check when the remote read fails for a reason the server named
/// and [`crate::fault`] gives no hint for (an operator error carries its own
/// hint in [`DbError::Rejected`]; this adds none next to it).
fn remote_hint(e: &tokio_postgres::Error) -> &'static str {
    match e.code().map(|c| c.code()) {
        Some("57014") => {
            "; the remote read took longer than its deadline (statement_timeout): check the remote's load and locks on the table"
        }
        Some("22P02") | Some("22003") | Some("42846") => {
            "; a column's values do not fit the contract's type (e.g. device_instance out of int4 range)"
        }
        _ => "",
    }
}

/// Writes `plan` inside `tx` with a fixed number of statements, and checks
/// that the table took exactly the planned rows.
async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    table: Table,
    plan: &diff::Plan,
) -> Result<(), DownloadError> {
    let kind = table.run_kind();
    let name = table.name();
    let local_err = |e: &tokio_postgres::Error| DownloadError::Local {
        kind,
        table: name,
        source: DbError::query(Side::Local, e),
    };
    let mut written = 0u64;
    if !plan.upserts.is_empty() {
        tx.batch_execute(&table.create_stage())
            .await
            .map_err(|e| local_err(&e))?;
        let sink = tx
            .copy_in(&table.copy_stage())
            .await
            .map_err(|e| local_err(&e))?;
        let mut types: Vec<Type> = table.columns().iter().map(|c| c.kind.pg_type()).collect();
        types.push(Type::BYTEA);
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let width = table.columns().len();
        for (r, digest) in &plan.upserts {
            let digest: &[u8] = digest;
            // The row's cells, then its digest, borrowed in place: no
            // per-row vector (`write_raw` wants an exact-size iterator).
            let row = (0..width + 1).map(|i| match r.cells.get(i) {
                Some(c) if i < width => c as &(dyn ToSql + Sync),
                _ => &digest as &(dyn ToSql + Sync),
            });
            writer
                .as_mut()
                .write_raw(row)
                .await
                .map_err(|e| local_err(&e))?;
        }
        writer.finish().await.map_err(|e| local_err(&e))?;
        written = tx
            .execute_typed(&table.upsert_from_stage(), &[])
            .await
            .map_err(|e| local_err(&e))?;
    }
    let mut deactivated = 0u64;
    if !plan.deactivate.is_empty() {
        deactivated = tx
            .execute_typed(&table.deactivate(), &[(&plan.deactivate, Type::INT8_ARRAY)])
            .await
            .map_err(|e| local_err(&e))?;
    }
    if written != plan.upserts.len() as u64 || deactivated != plan.deactivate.len() as u64 {
        return Err(DownloadError::Inconsistent {
            kind,
            table: name,
            detail: format!(
                "planned {} upserts and {} deactivations, the table took {written} and {deactivated}",
                plan.upserts.len(),
                plan.deactivate.len()
            ),
        });
    }
    Ok(())
}
