//! The batch loop: claims, sends and settles batches, two in flight.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{hint, local, remote, UploadError, UploadReport, CANCEL_GRACE, QUARANTINE_LIST_CAP};
use crate::app::App;
use crate::config::Side;
use crate::db::DbError;
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
    let room = QUARANTINE_LIST_CAP.saturating_sub(report.quarantined_rows.len());
    report
        .quarantined_rows
        .extend(settled.quarantined.into_iter().take(room));
    report.conflicts += settled.conflicts.len() as u64;
    let room = QUARANTINE_LIST_CAP.saturating_sub(report.conflict_rows.len());
    report
        .conflict_rows
        .extend(settled.conflicts.into_iter().take(room));
    report.batches += 1;
    let done = moved(report);
    progress.update(
        done,
        Some(total),
        &format!("batch {}: {done} of {total} rows", report.batches),
    );
}

/// Rows that left the backlog so far (uploaded, present, set aside).
fn moved(report: &UploadReport) -> u64 {
    report.deleted_local + report.quarantined + report.conflicts
}

/// Sends one batch; gives up `CANCEL_GRACE` after `cancel` fires.
async fn send_cancellable(
    rc: &mut tokio_postgres::Client,
    rows: &[local::Reading],
    site_id: Option<&str>,
    cancel: &CancellationToken,
) -> Option<Result<remote::Sent, remote::SendError>> {
    tokio::select! {
        r = remote::send(rc, rows, site_id) => Some(r),
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

/// The batch loop, two batches deep: while batch `k` is sent to the remote,
/// batch `k-1` is settled and batch `k+1` claimed on the local database, each
/// in its own local transaction. Every batch still settles only after its
/// own remote commit.
pub(super) async fn run_batches(
    app: &App,
    batch_size: usize,
    max_rows: Option<u64>,
    progress: &dyn Progress,
    cancel: &CancellationToken,
    t0: Instant,
) -> Result<UploadReport, UploadError> {
    let start = |source: DbError| UploadError::Start {
        hint: hint(&source),
        source,
    };
    let db = &app.db;
    let backlog = local::backlog(db).await.map_err(start)?;
    let total = max_rows.map_or(backlog, |m| m.min(backlog));
    let mut report = UploadReport::default();
    if backlog == 0 {
        report.duration_ms = t0.elapsed().as_millis() as u64;
        return Ok(report);
    }
    // Held for the whole call: a checkout per batch would cost the pool's
    // recycle check, one more remote round trip per batch.
    let mut rc = db.remote().await.map_err(start)?;
    remote::check_table(&rc).await?;
    let site_id = app.config.site_id.as_deref();
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
            hint: hint(&source),
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
                let r = send_cancellable(&mut rc, cur.rows(), site_id, cancel).await;
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
                drop(deadpool_postgres::Object::take(rc));
                break;
            }
            Some(Err(remote::SendError::Db(source))) => {
                db.note_error(Side::Remote, &source.to_string());
                // This batch and the next roll back locally and stay; the
                // remote outcome of this one may be unknown, which a re-send
                // resolves (ON CONFLICT).
                drop((cur, next));
                drop(deadpool_postgres::Object::take(rc));
                if !source.is_transient() || resends >= app.config.pool.max_retries {
                    // The previous batch settled meanwhile: count it.
                    return Err(UploadError::Interrupted {
                        batch: report.batches + 1,
                        done: moved(&report),
                        hint: hint(&source),
                        source,
                    });
                }
                let delay = crate::retry::backoff_delay(resends);
                resends += 1;
                report.resent_batches += 1;
                tracing::warn!(
                    batch = report.batches + 1,
                    attempt = resends,
                    next_delay_ms = delay.as_millis() as u64,
                    "batch failed, sending it again on a new connection after the backoff: {source}"
                );
                if backoff(delay, cancel).await {
                    break;
                }
                rc = db.remote().await.map_err(interrupted)?;
                spare = Some(db.local().await.map_err(interrupted)?);
                let conn = db.local().await.map_err(interrupted)?;
                claimed = moved(&report);
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
