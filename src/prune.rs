//! Bounded growth of what metersync itself keeps: the `sync_runs` journal
//! is pruned by age (`SYNC_RUNS_KEEP_DAYS`) once a day, and idle database
//! connections are closed by a reaper, so a quiet daemon holds no remote
//! connection (no pooler client slot) between its jobs.
//!
//! Readings are never pruned: a backlog past `BACKLOG_WARN_ROWS` or
//! `BACKLOG_WARN_AGE_S` only raises warnings ([`crate::status::GrowthLimits`]).
//! Quarantined and conflicting readings are data an operator must look at,
//! not a journal, and are never pruned either.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Side;
use crate::db::{Databases, DbError};

/// How often the journal is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(86_400);

/// Rows deleted per statement, so pruning a long-neglected journal never
/// holds a long lock or a huge transaction.
const PRUNE_BATCH: i64 = 10_000;

/// What a prune removed.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PruneReport {
    /// `sync_runs` rows deleted.
    pub sync_runs_deleted: u64,
}

/// Deletes the `sync_runs` rows started more than `keep` ago, in batches.
///
/// Fails when the local database is unreachable (what was deleted before
/// stays deleted; the next prune goes on).
pub async fn prune_journal(db: &Databases, keep: Duration) -> Result<PruneReport, DbError> {
    let c = db.local().await?;
    let secs = keep.as_secs_f64();
    let mut deleted = 0u64;
    loop {
        let n = c
            .execute(
                "DELETE FROM sync_runs WHERE id IN (
                    SELECT id FROM sync_runs
                    WHERE started_at < now() - make_interval(secs => $1)
                    LIMIT $2)",
                &[&secs, &PRUNE_BATCH],
            )
            .await
            .map_err(|e| DbError::query(Side::Local, &e))?;
        deleted += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    Ok(PruneReport {
        sync_runs_deleted: deleted,
    })
}

/// How often the reaper looks for idle connections: half the idle timeout,
/// between 1 s and 60 s.
pub fn reap_every(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The daemon's housekeeping task until `shutdown`: prunes the journal now
/// and every [`PRUNE_EVERY`], and closes connections idle longer than
/// `DB_POOL_IDLE_TIMEOUT_MS` every [`reap_every`].
pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let idle = app.config.pool.idle_timeout;
    let mut reap = tokio::time::interval(reap_every(idle));
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = reap.tick() => {
                for st in app.db.reap_idle(idle) {
                    if st.closed > 0 {
                        tracing::debug!(side = %st.side, closed = st.closed, open = st.size, "idle connections closed");
                    }
                }
            }
            _ = prune.tick() => {
                match prune_journal(&app.db, app.config.sync_runs_keep).await {
                    Ok(r) if r.sync_runs_deleted > 0 => tracing::info!(
                        deleted = r.sync_runs_deleted,
                        keep_days = app.config.sync_runs_keep.as_secs() / 86_400,
                        "sync_runs pruned"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("pruning sync_runs failed, will try again tomorrow: {e}"),
                }
            }
        }
    }
    tracing::debug!("housekeeping stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reaper_runs_at_half_the_idle_timeout_within_bounds() {
        assert_eq!(reap_every(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(
            reap_every(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            reap_every(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }
}
