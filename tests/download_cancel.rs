//! A cancelled download changes nothing and says so: cancelled before it
//! starts, while its remote read waits on a lock, or after it planned its
//! changes but before it wrote them, the local table is exactly as it was
//! and the run's `sync_runs` row says `cancelled`. The same through the
//! front ends: SIGTERM during `metersync download-tenants`, and an MCP
//! client's `notifications/cancelled` for a `download_tenants` call.
//!
//! Every step waits on a condition (the remote backend waiting on the lock,
//! the progress step reached), never on a sleep.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use common::daemon::{sigterm, spawn_logged};
use common::*;
use metersync::app::App;
use metersync::config::Config;
use metersync::download::{download, Table};
use metersync::progress::{NoProgress, Progress};
use tokio_util::sync::CancellationToken;

/// An [`App`] (library, not process) for `env`.
fn app_for(env: &HashMap<String, String>) -> Result<Arc<App>> {
    Ok(App::new(Config::from_vars(env)?)?)
}

/// Remote tenants `from..=to` named `name N`.
async fn seed_tenants(c: &tokio_postgres::Client, from: i64, to: i64, name: &str) -> Result<()> {
    c.batch_execute(&format!(
        "INSERT INTO tenants (id, site_id, name) SELECT g, 's1', '{name} ' || g
         FROM generate_series({from}, {to}) g
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, updated_at = now()"
    ))
    .await?;
    Ok(())
}

/// Every local tenant's physical identity and values: any write changes it.
async fn local_tenants(c: &tokio_postgres::Client) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT id::text || ' ' || xmin::text || ' ' || ctid::text || ' ' || name
               || ' ' || active::text FROM tenants ORDER BY id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<_, String>(0)?))
        .collect()
}

/// The status of the newest `download_tenants` run.
async fn last_status(c: &tokio_postgres::Client) -> Result<String> {
    let row = c
        .query_one(
            "SELECT status FROM sync_runs WHERE kind = 'download_tenants' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.try_get::<_, Option<String>>(0)?.unwrap_or_default())
}

/// Whether a metersync backend on `c`'s server is waiting on a lock.
async fn metersync_waits_on_lock(c: &tokio_postgres::Client) -> Result<bool> {
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'metersync' AND wait_event_type = 'Lock'",
            &[],
        )
        .await?
        .try_get(0)?;
    Ok(n > 0)
}

/// Progress that cancels `token` when step `at` is reported.
struct CancelAt {
    at: u64,
    token: CancellationToken,
}

impl Progress for CancelAt {
    fn update(&self, done: u64, _total: Option<u64>, _message: &str) {
        if done == self.at {
            self.token.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cancelled_before_it_starts_records_cancelled_and_changes_nothing() -> Result<()>
{
    let world = World::start().await?;
    let (remote, local) = (world.remote.client().await?, world.local.client().await?);
    seed_tenants(&remote, 1, 20, "tenant").await?;
    let app = app_for(&world.env)?;

    let token = CancellationToken::new();
    token.cancel();
    let r = download(&app, Table::Tenants, false, &NoProgress, &token).await?;
    assert!(r.cancelled, "{r:?}");
    assert_eq!((r.inserted, r.remote_round_trips), (0, 0), "{r:?}");
    assert!(local_tenants(&local).await?.is_empty(), "nothing written");
    assert_eq!(last_status(&local).await?, "cancelled");

    // The same engine without the cancel: the rows were there to write.
    let r = download(
        &app,
        Table::Tenants,
        false,
        &NoProgress,
        &Default::default(),
    )
    .await?;
    assert_eq!((r.inserted, r.cancelled), (20, false), "{r:?}");
    assert_eq!(last_status(&local).await?, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cancelled_after_planning_writes_nothing_and_records_cancelled() -> Result<()> {
    let world = World::start().await?;
    let (remote, local) = (world.remote.client().await?, world.local.client().await?);
    seed_tenants(&remote, 1, 20, "tenant").await?;
    let app = app_for(&world.env)?;
    download(
        &app,
        Table::Tenants,
        false,
        &NoProgress,
        &Default::default(),
    )
    .await?;

    // Ten renamed, five new, one gone: a plan with every kind of write.
    seed_tenants(&remote, 11, 25, "renamed").await?;
    remote
        .batch_execute("DELETE FROM tenants WHERE id = 1")
        .await?;
    let before = local_tenants(&local).await?;

    // Step 2 is reported once the changes are planned, before the apply.
    let token = CancellationToken::new();
    let at_plan = CancelAt {
        at: 2,
        token: token.clone(),
    };
    let r = download(&app, Table::Tenants, false, &at_plan, &token).await?;
    assert!(token.is_cancelled(), "the fault hit mid-download");
    assert!(r.cancelled, "{r:?}");
    assert_eq!(r.remote_rows, 24, "the remote read happened: {r:?}");
    assert_eq!(
        (r.inserted, r.updated, r.deactivated, r.changes.len()),
        (0, 0, 0, 0),
        "a cancelled run reports no changes: {r:?}"
    );
    assert_eq!(local_tenants(&local).await?, before, "nothing written");
    assert_eq!(last_status(&local).await?, "cancelled");

    // Step 1 (after the read, before the full rows): the same.
    let token = CancellationToken::new();
    let at_read = CancelAt {
        at: 1,
        token: token.clone(),
    };
    let r = download(&app, Table::Tenants, false, &at_read, &token).await?;
    assert!(r.cancelled, "{r:?}");
    assert_eq!(local_tenants(&local).await?, before, "nothing written");
    assert_eq!(last_status(&local).await?, "cancelled");

    // Uncancelled, the same plan applies: the cancels really stopped writes.
    let r = download(
        &app,
        Table::Tenants,
        false,
        &NoProgress,
        &Default::default(),
    )
    .await?;
    assert_eq!((r.inserted, r.updated, r.deactivated), (5, 10, 1), "{r:?}");
    assert_eq!(last_status(&local).await?, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cancelled_while_its_remote_read_waits_stops_and_records_cancelled() -> Result<()>
{
    let world = World::start().await?;
    let (mut remote, local) = (world.remote.client().await?, world.local.client().await?);
    seed_tenants(&remote, 1, 20, "tenant").await?;
    let app = app_for(&world.env)?;

    // Hold the remote table so the download's read waits (for up to its
    // 30 s statement_timeout, after which it would fail, not cancel).
    let lock = remote.transaction().await?;
    lock.batch_execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        .await?;
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let (app, token) = (app.clone(), token.clone());
        async move { download(&app, Table::Tenants, false, &NoProgress, &token).await }
    });
    let waiting = wait_for(20, || async {
        let c = world.remote.client().await?;
        metersync_waits_on_lock(&c).await
    })
    .await?;
    assert!(
        waiting,
        "the download's remote read never waited on the lock"
    );
    token.cancel();
    let r = tokio::time::timeout(Duration::from_secs(20), task).await???;
    assert!(r.cancelled, "{r:?}");
    assert!(local_tenants(&local).await?.is_empty(), "nothing written");
    assert_eq!(last_status(&local).await?, "cancelled");
    // The abandoned read's connection was closed, not given back to the
    // pool mid-transaction: once the lock goes, its backend ends.
    lock.rollback().await?;
    let gone = wait_for(20, || async {
        let c = world.remote.client().await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'metersync'",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(n == 0)
    })
    .await?;
    assert!(gone, "the cancelled read's backend is still there");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_cli_download_records_cancelled_and_changes_nothing() -> Result<()> {
    let world = World::start().await?;
    let (mut remote, local) = (world.remote.client().await?, world.local.client().await?);
    seed_tenants(&remote, 1, 20, "tenant").await?;

    let lock = remote.transaction().await?;
    lock.batch_execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        .await?;
    let (mut child, log, _wd) = spawn_logged(&world.env, &["download-tenants"], "dl-cancel")?;
    let waiting = wait_for(30, || async {
        let c = world.remote.client().await?;
        metersync_waits_on_lock(&c).await
    })
    .await?;
    if !waiting {
        bail!(
            "the download never reached its remote read; log: {}",
            log.display()
        );
    }
    sigterm(&child);
    // Whatever the exit, the journal must say how the run ended.
    tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    // Released only now (before the fix the run waited out the read's 30 s
    // deadline and was journalled `failed`).
    lock.rollback().await?;
    assert_eq!(
        last_status(&local).await?,
        "cancelled",
        "log: {}",
        log.display()
    );
    assert!(local_tenants(&local).await?.is_empty(), "nothing written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_download_cancelled_by_the_client_records_cancelled_and_changes_nothing(
) -> Result<()> {
    let world = World::start().await?;
    let (mut remote, local) = (world.remote.client().await?, world.local.client().await?);
    seed_tenants(&remote, 1, 20, "tenant").await?;
    let mcp = Mcp::start(&world.env, &[], "dl-cancel-mcp").await?;

    let lock = remote.transaction().await?;
    lock.batch_execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        .await?;
    let params = rmcp::model::CallToolRequestParams::new("download_tenants");
    let handle = mcp
        .client
        .send_cancellable_request(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(params)),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await?;
    let waiting = wait_for(30, || async {
        let c = world.remote.client().await?;
        metersync_waits_on_lock(&c).await
    })
    .await?;
    assert!(
        waiting,
        "the download's remote read never waited on the lock"
    );
    // notifications/cancelled: the tool's request token fires.
    handle.cancel(Some("test".into())).await?;
    let recorded = wait_for(30, || async {
        Ok(last_status(&local).await? == "cancelled")
    })
    .await?;
    // Released only now (before the fix the run waited out the read's 30 s
    // deadline and was journalled `failed`).
    lock.rollback().await?;
    assert!(
        recorded,
        "journal says {:?}; log: {}",
        last_status(&local).await?,
        mcp.log.display()
    );
    assert!(local_tenants(&local).await?.is_empty(), "nothing written");
    mcp.close().await?;
    Ok(())
}
