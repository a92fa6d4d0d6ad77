//! The batch loop: claims, sends and settles batches, two in flight.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::destination::Destination;
use super::{local, remote, UploadError, UploadReport, CANCEL_GRACE, QUARANTINE_LIST_CAP};
use crate::capped;
use crate::config::Side;
use crate::db::{Databases, DbError};
use crate::progress::Progress;

/// Adds one settled batch to the report and reports progress.
fn account(
    report: &mut UploadReport,
    sent: &remote::Sent,
    settled: local::Settled,
    progress: &dyn Progress,
    total: u64,
) {
    let n = (sent.inserted + sent.already_present) as u64;
    report.uploaded += sent.inserted as u64;
    report.already_present += sent.already_present as u64;
    report.deleted_local += n;
    report.quarantined += settled.quarantined.len() as u64;
    capped::fill(
        &mut report.quarantined_rows,
        QUARANTINE_LIST_CAP,
        settled.quarantined,
    );
    report.conflicts += settled.conflicts.len() as u64;
    capped::fill(
        &mut report.conflict_rows,
        QUARANTINE_LIST_CAP,
        settled.conflicts,
    );
    report.batches += 1;
    let done = moved(report);
    progress.update(
        done,
        Some(total),
        &format!("batch {}: {done} of {total} rows", report.batches),
    );
}

/// Rows that left the backlog so far (uploaded, present, set aside).
pub(super) fn moved(report: &UploadReport) -> u64 {
    report.deleted_local + report.quarantined + report.conflicts
}

/// Runs a send (a batch or a chunk) to its end, unless `cancel` fires and
/// it does not finish within [`CANCEL_GRACE`] after: then `None` (the send
/// is abandoned).
pub(super) async fn unless_abandoned<T>(
    send: impl std::future::Future<Output = T>,
    cancel: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        r = send => Some(r),
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(CANCEL_GRACE).await;
        } => None,
    }
}

/// Waits `delay` unless `cancel` fires first; returns whether it fired.
async fn backoff(delay: std::time::Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = cancel.cancelled() => true,
    }
}

/// Counts one re-send of a `what` (batch or chunk) after the transient
/// failure `cause`, logs it and waits the retry policy's backoff; returns
/// whether `cancel` fired meanwhile.
pub(super) async fn before_resend(
    report: &mut UploadReport,
    resends: &mut u32,
    what: &str,
    cause: &DbError,
    cancel: &CancellationToken,
) -> bool {
    let delay = crate::retry::backoff_delay(*resends);
    *resends += 1;
    report.resent_batches += 1;
    tracing::warn!(
        batch = report.batches + 1,
        attempt = *resends,
        next_delay_ms = delay.as_millis() as u64,
        "{what} failed, sending it again on a new connection after the backoff: {cause}"
    );
    backoff(delay, cancel).await
}

/// Opens `dest`, retrying a refused first statement.
///
/// Behind a transaction pooler the first statement is what logs a server
/// connection in, so right after a remote restart the pooler refuses it for
/// a while (PgBouncer's `server_login_retry`, 08P01): a transient refusal of
/// that statement is retried with the same backoff as a batch, at most
/// `max_resends` times.
///
/// Fails as [`Destination::open`] does, or with the refusal when the retries
/// are used up or `cancel` fires.
pub(super) async fn open<D: Destination>(
    dest: &mut D,
    max_resends: u32,
    cancel: &CancellationToken,
) -> Result<(), UploadError> {
    let mut opens = 0u32;
    loop {
        match dest.open().await {
            Ok(()) => return Ok(()),
            // Only a refused statement: a connection that cannot be made
            // follows the checkout's own policy (a side known down answers
            // at once, see `db::Patience`).
            Err(UploadError::Start { source })
                if matches!(source, crate::db::DbError::Query { .. })
                    && source.is_transient()
                    && opens < max_resends
                    && !cancel.is_cancelled() =>
            {
                let delay = crate::retry::backoff_delay(opens);
                opens += 1;
                tracing::warn!(
                    attempt = opens,
                    next_delay_ms = delay.as_millis() as u64,
                    "the remote refused the upload's first statement, trying again after the backoff: {source}"
                );
                if backoff(delay, cancel).await {
                    return Err(UploadError::Start { source });
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The batch loop, two batches deep: while batch `k` is sent to the remote,
/// batch `k-1` is settled and batch `k+1` claimed on the local database, each
/// in its own local transaction. Every batch still settles only after its
/// own remote commit.
///
/// `dest` receives the batches (see [`Destination`] for what it must
/// guarantee); a transient send failure is re-sent after the retry policy's
/// backoff, at most `max_resends` times in a row.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_batches<D: Destination + Send>(
    db: &Databases,
    dest: &mut D,
    max_resends: u32,
    batch_size: usize,
    max_rows: Option<u64>,
    progress: &dyn Progress,
    cancel: &CancellationToken,
    t0: Instant,
) -> Result<UploadReport, UploadError> {
    let start = |source: DbError| UploadError::Start { source };
    let backlog = local::backlog(db).await.map_err(start)?;
    let total = max_rows.map_or(backlog, |m| m.min(backlog));
    let mut report = UploadReport::default();
    if backlog == 0 {
        report.duration_ms = t0.elapsed().as_millis() as u64;
        return Ok(report);
    }
    open(dest, max_resends, cancel).await?;
    // How many rows the next claim may take.
    let want = |claimed: u64| match max_rows {
        _ if cancel.is_cancelled() => 0,
        Some(m) => m.saturating_sub(claimed).min(batch_size as u64) as usize,
        None => batch_size,
    };
    let mut claimed = 0u64;
    // The keyset start of the current batch, to claim it again after a retry.
    let mut cur_after = 0i64;
    let mut spare = Some(db.local().await.map_err(start)?);
    let first = db.local().await.map_err(start)?;
    let mut current = Some(
        local::Claim::begin(first, cur_after, want(claimed))
            .await
            .map_err(start)?,
    );
    let mut prev: Option<(local::Claim, remote::Sent)> = None;
    // Re-sends in a row of the current batch after transient failures.
    let mut resends = 0u32;
    loop {
        let batch_no = report.batches + 1 + u64::from(prev.is_some());
        let done = moved(&report);
        let interrupted = |source: DbError| UploadError::Interrupted {
            batch: batch_no,
            done,
            source,
        };
        let cur = match current.take() {
            Some(c) if c.last_id().is_some() => c,
            other => {
                if let Some(empty) = other {
                    // Locked nothing: end its transaction, keep the connection.
                    let _ = empty.release().await;
                }
                if let Some((p, sent)) = prev.take() {
                    let (q, _) = p
                        .settle(&sent.rejected, &sent.conflicts)
                        .await
                        .map_err(interrupted)?;
                    account(&mut report, &sent, q, progress, total);
                }
                break;
            }
        };
        claimed += cur.rows().len() as u64;
        let next_after = cur.last_id().unwrap_or(cur_after);
        let next_want = want(claimed);
        let t = Instant::now();
        let prev_taken = prev.take();
        let spare_taken = if prev_taken.is_none() {
            spare.take()
        } else {
            None
        };
        let (sent, local_side) = tokio::join!(
            async {
                let r = unless_abandoned(dest.send(cur.rows()), cancel).await;
                (r, t.elapsed())
            },
            async {
                let (settled, conn) = match prev_taken {
                    Some((p, sent)) => {
                        let (q, conn) = p.settle(&sent.rejected, &sent.conflicts).await?;
                        (Some((sent, q)), Some(conn))
                    }
                    None => (None, spare_taken),
                };
                let next = match conn {
                    Some(conn) if next_want > 0 => {
                        Some(local::Claim::begin(conn, next_after, next_want).await?)
                    }
                    _ => None,
                };
                Ok::<_, DbError>((settled, next, t.elapsed()))
            }
        );
        let (sent, send_time) = sent;
        let (settled, next, local_time) = local_side.map_err(interrupted)?;
        if let Some((psent, q)) = settled {
            account(&mut report, &psent, q, progress, total);
        }
        let sent = match sent {
            Some(Ok(sent)) => sent,
            None => {
                // Cancelled and the send did not finish within the grace:
                // abandon it. This batch and the next roll back locally; a
                // later re-send finds whatever the remote committed.
                tracing::warn!(
                    batch = report.batches + 1,
                    "cancelled while the remote was not answering; the batch in flight stays local"
                );
                drop((cur, next));
                dest.abandon();
                break;
            }
            Some(Err(remote::SendError::Db(source))) => {
                db.note_error(Side::Remote, &source.to_string());
                // This batch and the next roll back locally and stay; the
                // remote outcome of this one may be unknown, which a re-send
                // resolves (ON CONFLICT).
                drop((cur, next));
                if !source.is_transient() || resends >= max_resends {
                    // The previous batch settled meanwhile: count it.
                    return Err(UploadError::Interrupted {
                        batch: report.batches + 1,
                        done: moved(&report),
                        source,
                    });
                }
                if before_resend(&mut report, &mut resends, "batch", &source, cancel).await {
                    break;
                }
                claimed = moved(&report);
                // Counts the previous batch, which settled meanwhile.
                let interrupted = |source: DbError| UploadError::Interrupted {
                    batch: report.batches + 1,
                    done: claimed,
                    source,
                };
                dest.reconnect().await.map_err(interrupted)?;
                spare = Some(db.local().await.map_err(interrupted)?);
                let conn = db.local().await.map_err(interrupted)?;
                current = Some(
                    local::Claim::begin(conn, cur_after, want(claimed))
                        .await
                        .map_err(interrupted)?,
                );
                continue;
            }
            Some(Err(remote::SendError::Operator { cause, hint })) => {
                db.note_error(Side::Remote, &cause);
                return Err(UploadError::RemoteTable {
                    batch: report.batches + 1,
                    done: moved(&report),
                    cause,
                    hint,
                });
            }
            Some(Err(remote::SendError::TooManyRejected(first))) => {
                return Err(UploadError::TooManyRejected {
                    batch: report.batches + 1,
                    first,
                })
            }
        };
        resends = 0;
        tracing::debug!(
            batch = report.batches + 1,
            rows = cur.rows().len(),
            send_ms = send_time.as_secs_f64() * 1e3,
            local_ms = local_time.as_secs_f64() * 1e3,
            "batch sent (meanwhile the previous one settled and the next one was claimed)"
        );
        prev = Some((cur, sent));
        cur_after = next_after;
        current = next;
    }
    report.cancelled = cancel.is_cancelled();
    report.remaining = local::backlog(db).await.unwrap_or(0);
    report.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! The batch loop against a real local PostgreSQL and an in-memory
    //! destination that fails on demand: before its commit, after its commit
    //! (the acknowledgement lost), or while the local side settles.

    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::demo::cluster::Cluster;
    use crate::progress::NoProgress;
    use crate::test_site;

    const PW: &str = "unit-test-pw";

    /// The reading key, as the destination deduplicates on it.
    type Key = (i64, String, i64);

    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// Fails before anything is held (a dropped connection).
        Refuse,
        /// Holds the rows, then fails (the commit's reply was lost).
        LoseAck,
        /// Holds the rows and answers, but meanwhile every local metersync
        /// connection dies (the claim and the settle in flight fail).
        KillLocal,
    }

    /// An idempotent in-memory destination: rows with a negative value are
    /// rejected as bad data; a held key with another value is a conflict.
    struct Fake {
        held: HashMap<Key, f64>,
        sends: usize,
        reconnects: usize,
        faults: HashMap<usize, Fault>,
        admin: tokio_postgres::Client,
    }

    fn transient() -> remote::SendError {
        remote::SendError::Db(DbError::Query {
            side: Side::Remote,
            cause: "injected: connection reset".into(),
            transient: true,
        })
    }

    impl Destination for Fake {
        async fn open(&mut self) -> Result<(), UploadError> {
            Ok(())
        }

        async fn send(
            &mut self,
            rows: &[local::Reading],
        ) -> Result<remote::Sent, remote::SendError> {
            self.sends += 1;
            let fault = self.faults.get(&self.sends).copied();
            if let Some(Fault::Refuse) = fault {
                return Err(transient());
            }
            let mut sent = remote::Sent::default();
            for (i, r) in rows.iter().enumerate() {
                if r.value < 0.0 {
                    sent.rejected.push((i, "injected: negative value".into()));
                    continue;
                }
                let key = (
                    r.meter_id,
                    r.point.clone(),
                    r.recorded_at.timestamp_micros(),
                );
                match self.held.get(&key) {
                    None => {
                        self.held.insert(key, r.value);
                        sent.inserted += 1;
                    }
                    Some(v) if *v == r.value => sent.already_present += 1,
                    Some(v) => sent.conflicts.push((i, Some(*v))),
                }
            }
            match fault {
                Some(Fault::LoseAck) => Err(transient()),
                Some(Fault::KillLocal) => {
                    let _ = self
                        .admin
                        .batch_execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = 'metersync'",
                        )
                        .await;
                    Ok(sent)
                }
                _ => Ok(sent),
            }
        }

        async fn reconnect(&mut self) -> Result<(), DbError> {
            self.reconnects += 1;
            Ok(())
        }

        fn abandon(&mut self) {}
    }

    struct Site {
        _cluster: Cluster,
        db: Databases,
        admin: tokio_postgres::Client,
    }

    /// A migrated local cluster holding `n` readings (values 1..=n, ids in
    /// order) and `extra` SQL run after the seed.
    async fn site(n: i64, extra: &str) -> Site {
        let cluster = test_site::cluster(PW).await;
        let config = test_site::local_config(cluster.port, PW);
        let db = Databases::new(&config).unwrap_or_else(|e| panic!("pools: {e}"));
        test_site::migrate_local(&db).await;
        let admin = test_site::admin(&cluster, PW).await;
        admin
            .execute(
                "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
                 SELECT g % 7, 'energy_kwh', timestamptz '2026-01-01 00:00+00' + g * interval '1 s',
                        g, 'kWh' FROM generate_series(1, $1::bigint) g",
                &[&n],
            )
            .await
            .unwrap_or_else(|e| panic!("seed: {e}"));
        admin
            .batch_execute(extra)
            .await
            .unwrap_or_else(|e| panic!("extra: {e}"));
        Site {
            _cluster: cluster,
            db,
            admin,
        }
    }

    impl Site {
        fn fake(&self, faults: &[(usize, Fault)], admin: tokio_postgres::Client) -> Fake {
            Fake {
                held: HashMap::new(),
                sends: 0,
                reconnects: 0,
                faults: faults.iter().copied().collect(),
                admin,
            }
        }

        async fn count(&self, table: &str) -> i64 {
            self.admin
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .and_then(|r| r.try_get(0))
                .unwrap_or_else(|e| panic!("count {table}: {e}"))
        }

        async fn run(&self, dest: &mut Fake, resends: u32) -> Result<UploadReport, UploadError> {
            let cancel = CancellationToken::new();
            run_batches(
                &self.db,
                dest,
                resends,
                100,
                None,
                &NoProgress,
                &cancel,
                Instant::now(),
            )
            .await
        }

        /// The local backlog's keys.
        async fn local_keys(&self) -> HashSet<Key> {
            let rows = self
                .admin
                .query(
                    "SELECT meter_id, point, (extract(epoch FROM recorded_at) * 1e6)::bigint \
                     FROM meter_readings",
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("keys: {e}"));
            rows.iter()
                .map(|r| {
                    (
                        r.try_get(0).unwrap_or_default(),
                        r.try_get(1).unwrap_or_default(),
                        r.try_get(2).unwrap_or_default(),
                    )
                })
                .collect()
        }
    }

    async fn admin_for(site: &Site) -> tokio_postgres::Client {
        site._cluster
            .connect(PW)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    #[tokio::test]
    async fn a_refused_send_and_a_lost_ack_are_resent_and_nothing_is_lost_or_doubled() {
        let s = site(1_000, "").await;
        let mut dest = s.fake(
            &[(3, Fault::Refuse), (6, Fault::LoseAck)],
            admin_for(&s).await,
        );
        let r = s.run(&mut dest, 2).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.resent_batches, 2, "{r:?}");
        assert_eq!(dest.reconnects, 2);
        // The batch whose acknowledgement was lost was held; its re-send
        // finds it there.
        assert_eq!(r.uploaded, 900, "{r:?}");
        assert_eq!(r.already_present, 100, "{r:?}");
        assert_eq!(r.deleted_local, 1_000);
        assert_eq!(dest.held.len(), 1_000);
        assert_eq!(s.count("meter_readings").await, 0);
        assert_eq!(r.remaining, 0);
    }

    #[tokio::test]
    async fn a_send_failing_past_its_resends_leaves_the_batch_local() {
        let s = site(1_000, "").await;
        let mut dest = s.fake(
            &[(2, Fault::Refuse), (3, Fault::Refuse)],
            admin_for(&s).await,
        );
        let e = match s.run(&mut dest, 1).await {
            Ok(r) => panic!("must fail: {r:?}"),
            Err(e) => e,
        };
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("still local"), "{e}");
        // Batch 1 is held and settled (its settle ran during send 2); the
        // rest is local, and nothing is both.
        assert_eq!(dest.held.len(), 100);
        assert_eq!(s.count("meter_readings").await, 900);
        let local = s.local_keys().await;
        assert!(dest.held.keys().all(|k| !local.contains(k)));
    }

    #[tokio::test]
    async fn local_connections_dying_after_the_remote_commit_resolve_on_the_next_run() {
        let s = site(1_000, "").await;
        let mut dest = s.fake(&[(3, Fault::KillLocal)], admin_for(&s).await);
        let e = s.run(&mut dest, 2).await;
        assert!(e.is_err(), "the local side must fail: {e:?}");
        // Every reading is held, local, or both (held but its delete never
        // committed); none is lost.
        let local = s.local_keys().await;
        let both = dest.held.keys().filter(|k| local.contains(*k)).count();
        assert_eq!(dest.held.len() + local.len() - both, 1_000);
        assert!(both > 0, "the fault must hit after a remote commit");
        // The next run resolves the overlap through idempotence.
        dest.faults.clear();
        let r = s.run(&mut dest, 2).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.already_present as usize, both, "{r:?}");
        assert_eq!((r.uploaded + r.already_present) as usize, local.len());
        assert_eq!(dest.held.len(), 1_000);
        assert_eq!(s.count("meter_readings").await, 0);
    }

    #[tokio::test]
    async fn rejected_rows_and_conflicts_settle_into_their_tables() {
        let s = site(
            500,
            "UPDATE meter_readings SET value = -1 WHERE id IN (10, 20, 30, 40, 450)",
        )
        .await;
        let mut dest = s.fake(&[], admin_for(&s).await);
        // The destination already holds four keys: two with the same value,
        // two with another.
        for (g, v) in [(101i64, 101.0), (102, 102.0), (201, 9.0), (302, 9.0)] {
            let t = chrono::DateTime::from_timestamp(1_767_225_600 + g, 0)
                .unwrap_or_default()
                .timestamp_micros();
            dest.held.insert((g % 7, "energy_kwh".into(), t), v);
        }
        let r = s.run(&mut dest, 0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.quarantined, 5, "{r:?}");
        assert_eq!(r.already_present, 2, "{r:?}");
        assert_eq!(r.conflicts, 2, "{r:?}");
        assert_eq!(r.uploaded, 491, "{r:?}");
        assert_eq!(s.count("meter_readings").await, 0);
        assert_eq!(s.count("meter_readings_quarantine").await, 5);
        assert_eq!(
            s.count(
                "meter_readings_conflicts WHERE remote_value = 9 AND local_value IN (201, 302)"
            )
            .await,
            2
        );
    }
}
