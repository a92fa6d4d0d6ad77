//! The collector: reads every active meter's points over BACnet/IP and
//! stores them as readings in the local `meter_readings`, ready for upload.
//! It reads through the app's BACnet client ([`App::bacnet`]), so its unit
//! tests run it against a real local PostgreSQL and an in-memory network
//! (`App::with_bacnet`).
//!
//! Guarantees:
//! - meters are read in parallel, up to `COLLECT_CONCURRENCY` at once, one
//!   request in flight per device; a dead meter costs its own timeout x
//!   tries, not the run's, and is reported in `failures` while the others
//!   are collected;
//! - every point of one meter read in one run shares one `recorded_at`
//!   (UTC, microsecond precision, as PostgreSQL stores it);
//! - readings are written in one statement per run, idempotent on
//!   `(meter_id, point, recorded_at)`;
//! - a point whose status flags say fault or out-of-service, or whose
//!   reliability is not no-fault-detected, is reported and not stored;
//! - each meter's health (last success, last error, consecutive failures)
//!   is updated in the same transaction as the readings;
//! - one meter's bad data fails that meter only: its stored definition is
//!   checked against the one meter definition ([`MeterDefinition`]: point
//!   names short enough for the readings index, readable object types...)
//!   before it is read, and should the database still refuse its readings,
//!   they are retried meter by meter under savepoints so the others' are
//!   stored (see `store`);
//! - per point and run, a reading shares its name and unit (`Arc<str>`)
//!   with the meter definition and the meter cache instead of copying them
//!   (`examples/bench_collect_alloc.rs` counts the allocations).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::bacnet::{self, BacnetClient};
use crate::capped;
use crate::config::Side;
use crate::db::{self, DbError, Patience};
use crate::meter_def::MeterDefinition;
use crate::progress::Progress;
use crate::runs;

/// How many failures (and point errors) a report lists before it only counts.
pub const LIST_CAP: usize = 50;

/// What to collect.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// Only these meters (they must exist and be active); all active meters
    /// when `None`. An empty list is an error ([`CollectError::NoMeterIds`]),
    /// for every front end: it is a selection of nothing, not of everything.
    pub meter_ids: Option<Vec<i64>>,
    /// Read the meters but store nothing.
    pub dry_run: bool,
}

/// A meter that could not be read.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MeterFailure {
    /// The meter's id.
    pub meter_id: i64,
    /// What went wrong, for a person.
    pub error: String,
}

/// A point that answered but was not stored.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PointProblem {
    /// The meter's id.
    pub meter_id: i64,
    /// The point's name.
    pub point: String,
    /// Why it was not stored (fault, out of service, unreliable, unknown object...).
    pub error: String,
}

/// The result of one collection.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct CollectReport {
    /// Meters that answered.
    pub meters_read: u64,
    /// Meters that could not be read (timeout, error, bad configuration).
    pub meters_failed: u64,
    /// Readings newly stored (0 on a dry run).
    pub readings_written: u64,
    /// Good readings read (stored unless dry run).
    pub readings_read: u64,
    /// Failed meters (at most [`LIST_CAP`]).
    #[schemars(description = format!("Failed meters, at most {LIST_CAP} (the count is meters_failed)."))]
    pub failures: Vec<MeterFailure>,
    /// Failed meters left out of `failures`.
    pub failures_omitted: u64,
    /// Points not stored (at most [`LIST_CAP`]).
    #[schemars(description = format!("Points not stored, at most {LIST_CAP}."))]
    pub point_errors: Vec<PointProblem>,
    /// Point problems left out of `point_errors`.
    pub point_errors_omitted: u64,
    /// Whether nothing was stored.
    pub dry_run: bool,
    /// Whether the run stopped early on request.
    pub cancelled: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// Readings held in memory while the local database is down, and
    /// readings dropped because that buffer was full (at most 100,000 held).
    pub held: crate::collect_buffer::HeldStats,
}

impl runs::RunReport for CollectReport {
    fn cancelled(&self) -> bool {
        self.cancelled
    }
}

/// Why a collection could not run.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// `meter_ids` was given but empty.
    #[error("meter_ids must not be empty: omit it to collect every active meter")]
    NoMeterIds,
    /// Asked for meters that do not exist or are inactive.
    #[error("no active meter with id {0}; list_meters shows the configured meters (download_meters refreshes them)")]
    UnknownMeters(String),
    /// The local database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The BACnet socket could not be opened.
    #[error(transparent)]
    Bacnet(#[from] bacnet::BacnetError),
}

/// A meter row from the local table, as stored: checked against the one
/// meter definition ([`MeterDefinition`]) when it is read, so a bad row
/// fails its own meter only.
#[derive(Debug, Clone)]
pub(crate) struct MeterRow {
    /// Id.
    pub id: i64,
    /// BACnet device instance.
    pub device_instance: i32,
    /// `host:port`.
    pub address: String,
    /// The points JSON, as text (a document too deep for a JSON parser
    /// must fail its meter, not the load of every meter).
    pub points: String,
}

/// One meter's outcome.
pub(crate) struct MeterOutcome {
    /// The meter.
    pub meter_id: i64,
    /// The shared timestamp of its readings.
    pub recorded_at: DateTime<Utc>,
    /// Its good readings: (point, value, unit); the names and units are
    /// shared with the meter definition and the meter cache, not copied per
    /// reading.
    pub readings: Vec<(Arc<str>, f64, Option<Arc<str>>)>,
    /// Points read but not stored: (point, why).
    pub problems: Vec<(Arc<str>, String)>,
    /// Why the meter failed, if it did.
    pub error: Option<String>,
}

/// Loads the active meters (all, or those in `ids`), meters that failed
/// last time first: their timeouts then overlap the healthy meters' reads
/// instead of trailing them.
///
/// Fails when an id in `ids` is not an active meter, or on a database error.
pub(crate) async fn load_meters(
    app: &App,
    ids: Option<&[i64]>,
) -> Result<Vec<MeterRow>, CollectError> {
    let c = app.db.local().await?;
    let rows = c
        .query(
            "SELECT m.id, m.device_instance, m.address, m.points::text
             FROM meters m LEFT JOIN meter_health h ON h.meter_id = m.id
             WHERE m.active AND ($1::bigint[] IS NULL OR m.id = ANY($1))
             ORDER BY coalesce(h.consecutive_failures, 0) > 0 DESC, m.id",
            &[&ids],
        )
        .await
        .map_err(|e| DbError::query(Side::Local, &e))?;
    let meters: Vec<MeterRow> = rows
        .iter()
        .map(|r| {
            Ok(MeterRow {
                id: r.try_get(0)?,
                device_instance: r.try_get(1)?,
                address: r.try_get(2)?,
                points: r.try_get(3)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| DbError::query(Side::Local, &e))?;
    if let Some(ids) = ids {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !meters.iter().any(|m| m.id == **id))
            .map(|id| id.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(CollectError::UnknownMeters(missing.join(", ")));
        }
    }
    Ok(meters)
}

/// Reads one meter: validates its configuration, then all its points.
/// Never fails: every problem lands in the outcome.
pub(crate) async fn read_one(client: &dyn BacnetClient, m: &MeterRow) -> MeterOutcome {
    let recorded_at = Utc::now().trunc_subsecs(6);
    let mut out = MeterOutcome {
        meter_id: m.id,
        recorded_at,
        readings: Vec::new(),
        problems: Vec::new(),
        error: None,
    };
    let def = match MeterDefinition::parse_text(m.device_instance.into(), &m.address, &m.points) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(format!("misconfigured: {e}"));
            return out;
        }
    };
    match bacnet::read_meter(client, def.device(), &def.points).await {
        Err(e) => out.error = Some(e.to_string()),
        Ok(points) => {
            for p in points {
                match (p.value, p.error) {
                    (Some(v), None) if v.is_finite() => out.readings.push((p.name, v, p.unit)),
                    (Some(v), None) => out.problems.push((p.name, format!("non-finite value {v}"))),
                    (_, Some(e)) => out.problems.push((p.name, e)),
                    (None, None) => out.problems.push((p.name, "no value".into())),
                }
            }
        }
    }
    out
}

/// Collects the meters `opts` names into the local database.
///
/// Reads through the app's BACnet client ([`App::bacnet`], bound on first
/// use).
///
/// Fails only when the run cannot start (unknown meter ids, local database
/// unreachable, BACNET_BIND cannot be bound) or the final write fails; meter
/// failures are in the report.
pub async fn collect(
    app: &App,
    opts: CollectOptions,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<CollectReport, CollectError> {
    let started = Instant::now();
    if opts.meter_ids.as_ref().is_some_and(|ids| ids.is_empty()) {
        return Err(CollectError::NoMeterIds);
    }
    let client = app.bacnet().await?;
    let client: &dyn BacnetClient = client.as_ref();
    // The collector never waits for the local database (one attempt per
    // step): while it is down, the last meter list is read and the readings
    // are held in memory (crate::collect_buffer).
    let ids = opts.meter_ids.as_deref();
    let (meters, run) = match quick(load_meters(app, ids)).await {
        Ok(meters) => {
            if ids.is_none() {
                app.collect_buffer.remember_meters(&meters);
            }
            (
                meters,
                quick(runs::Run::start(&app.db, "collect")).await.ok(),
            )
        }
        Err(CollectError::Db(e)) if e.is_transient() => match app.collect_buffer.meters(ids) {
            Some(meters) => {
                tracing::debug!("local database down, reading the last meter list: {e}");
                (meters, None)
            }
            None => return Err(e.into()),
        },
        Err(e) => return Err(e),
    };
    let total = meters.len() as u64;
    let done = AtomicU64::new(0);
    let concurrency = app.config.collect_concurrency.max(1);
    let mut cancelled = false;
    let mut outcomes = Vec::with_capacity(meters.len());
    let progress: &dyn Progress = progress;
    {
        let done = &done;
        let mut stream = futures::stream::iter(meters)
            .map(move |m| async move {
                let o = read_one(client, &m).await;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                let what = match &o.error {
                    None => format!("meter {} read", o.meter_id),
                    Some(_) => format!("meter {} failed", o.meter_id),
                };
                progress.update(n, Some(total), &what);
                o
            })
            .buffer_unordered(concurrency);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !cancelled => { cancelled = true; break; }
                next = stream.next() => match next {
                    Some(o) => outcomes.push(o),
                    None => break,
                },
            }
        }
    }
    let mut report = CollectReport {
        dry_run: opts.dry_run,
        cancelled,
        ..Default::default()
    };
    for o in &outcomes {
        match &o.error {
            None => report.meters_read += 1,
            Some(e) => {
                report.meters_failed += 1;
                capped::push(
                    &mut report.failures,
                    &mut report.failures_omitted,
                    LIST_CAP,
                    || MeterFailure {
                        meter_id: o.meter_id,
                        error: e.clone(),
                    },
                );
            }
        }
        report.readings_read += o.readings.len() as u64;
        for (point, error) in &o.problems {
            capped::push(
                &mut report.point_errors,
                &mut report.point_errors_omitted,
                LIST_CAP,
                || PointProblem {
                    meter_id: o.meter_id,
                    point: point.to_string(),
                    error: error.clone(),
                },
            );
        }
    }
    report.failures.sort_by_key(|f| f.meter_id);
    let write = if opts.dry_run {
        Ok((0, Vec::new()))
    } else {
        quick(store_or_hold(app, outcomes)).await
    };
    let write = write.map(|(n, refused)| {
        report.readings_written = n;
        for (meter_id, error) in refused {
            report.meters_read = report.meters_read.saturating_sub(1);
            report.meters_failed += 1;
            capped::push(
                &mut report.failures,
                &mut report.failures_omitted,
                LIST_CAP,
                || MeterFailure { meter_id, error },
            );
        }
        report.failures.sort_by_key(|f| f.meter_id);
    });
    report.held = app.collect_buffer.stats();
    report.duration_ms = started.elapsed().as_millis() as u64;
    let result = write.map(|()| report).map_err(CollectError::from);
    if let Some(run) = run {
        quick(run.finish(&app.db, &result)).await;
    }
    if let Ok(report) = &result {
        tracing::info!(
            meters_read = report.meters_read,
            meters_failed = report.meters_failed,
            readings_written = report.readings_written,
            duration_ms = report.duration_ms,
            "collection finished"
        );
    }
    result
}

/// A live read of one meter, stored nowhere.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LiveRead {
    /// The meter's id.
    pub meter_id: i64,
    /// Its name.
    pub name: String,
    /// BACnet/IP `host:port`.
    pub address: String,
    /// BACnet device instance.
    pub device_instance: i32,
    /// When it was read (RFC 3339, UTC).
    pub read_at: String,
    /// Each configured point's value or error.
    pub points: Vec<bacnet::PointReading>,
    /// Wall time of the read.
    pub duration_ms: u64,
}

/// Why a live read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No such meter locally.
    #[error("no meter with id {0}; list_meters shows the configured meters")]
    UnknownMeter(i64),
    /// The meter's configuration is unusable.
    #[error("meter {id} is misconfigured: {error}")]
    Config {
        /// The meter.
        id: i64,
        /// What is wrong.
        error: String,
    },
    /// The BACnet socket could not be opened (BACNET_BIND).
    #[error(transparent)]
    Socket(#[from] bacnet::BacnetError),
    /// The device could not be read.
    #[error("meter {id}: {source}")]
    Bacnet {
        /// The meter.
        id: i64,
        /// The BACnet failure.
        #[source]
        source: bacnet::BacnetError,
    },
    /// The local database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Reads meter `meter_id` (active or not) now through the app's BACnet
/// client and returns its points; stores nothing.
///
/// Fails when BACNET_BIND cannot be bound, or the meter does not exist, is
/// misconfigured, or does not answer.
pub async fn read_live(app: &App, meter_id: i64) -> Result<LiveRead, ReadError> {
    let started = Instant::now();
    let client = app.bacnet().await?;
    let c = app.db.local().await?;
    let q = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
    let row = c
        .query_opt(
            "SELECT name, device_instance, address, points::text FROM meters WHERE id = $1",
            &[&meter_id],
        )
        .await
        .map_err(q)?
        .ok_or(ReadError::UnknownMeter(meter_id))?;
    drop(c);
    let name: String = row.try_get(0).map_err(q)?;
    let device_instance: i32 = row.try_get(1).map_err(q)?;
    let address: String = row.try_get(2).map_err(q)?;
    let points: String = row.try_get(3).map_err(q)?;
    let def =
        MeterDefinition::parse_text(device_instance.into(), &address, &points).map_err(|e| {
            ReadError::Config {
                id: meter_id,
                error: e.to_string(),
            }
        })?;
    let read_at = Utc::now();
    let points = bacnet::read_meter(client.as_ref(), def.device(), &def.points)
        .await
        .map_err(|source| ReadError::Bacnet {
            id: meter_id,
            source,
        })?;
    Ok(LiveRead {
        meter_id,
        name,
        address,
        device_instance,
        read_at: read_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        points,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Runs `f` with one connection attempt per checkout (see [`db::Patience`]).
async fn quick<F: std::future::Future>(f: F) -> F::Output {
    db::with_patience(Patience::Quick, f).await
}

/// Writes the runs held in memory (oldest first), then `outcomes`; returns
/// the readings newly stored. When the local database is down (a transient
/// error) `outcomes` are held in memory instead and this returns `Ok`: the
/// report's `held` says so.
///
/// Fails on an error that is not transient (`outcomes` are then lost, as
/// before the buffer existed: holding them would block the buffer; a held
/// run refused that way is dropped and counted).
async fn store_or_hold(
    app: &App,
    outcomes: Vec<MeterOutcome>,
) -> Result<(u64, Vec<(i64, String)>), DbError> {
    let buffer = &app.collect_buffer;
    let mut written = 0;
    while let Some(held) = buffer.take_oldest() {
        match store(app, &held).await {
            Ok((n, refused)) => {
                written += n;
                for (meter_id, why) in refused {
                    tracing::warn!(meter_id, "held readings refused: {why}");
                }
            }
            Err(e) if e.is_transient() => {
                buffer.put_back(held);
                buffer.hold(outcomes);
                return Ok((written, Vec::new()));
            }
            // A held run the database refuses for good would block the
            // buffer: it is dropped, counted and logged, as a new run that
            // failed so would have been.
            Err(e) => {
                let lost = buffer.discard(held);
                tracing::error!(
                    readings = lost,
                    "held readings refused by the local database, dropped: {e}"
                );
            }
        }
    }
    if written > 0 {
        tracing::info!(
            readings = written,
            "readings held in memory during the local outage are written"
        );
    }
    match store(app, &outcomes).await {
        Ok((n, refused)) => Ok((written + n, refused)),
        Err(e) if e.is_transient() => {
            buffer.hold(outcomes);
            Ok((written, Vec::new()))
        }
        Err(e) => Err(e),
    }
}

/// Writes the readings and the health of every meter in one transaction;
/// returns the number of readings newly stored and the meters whose
/// readings the database refused, with why.
///
/// One statement stores every meter's readings. Should the database refuse
/// it for a data reason ([`is_data_error`]: a value, a constraint or a
/// trigger of one meter),
/// the statement is rolled back to a savepoint and each meter's readings
/// are stored under its own savepoint: a meter whose readings are refused
/// fails alone (its health says why) and every other meter's are stored.
async fn store(app: &App, outcomes: &[MeterOutcome]) -> Result<(u64, Vec<(i64, String)>), DbError> {
    let q = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
    let mut c = app.db.local().await?;
    let tx = c.transaction().await.map_err(q)?;
    let mut refused: Vec<(i64, String)> = Vec::new();
    let all: Vec<&MeterOutcome> = outcomes.iter().filter(|o| !o.readings.is_empty()).collect();
    tx.batch_execute("SAVEPOINT readings").await.map_err(q)?;
    let written = match insert_readings(&tx, &all).await {
        Ok(n) => n,
        Err(e) if !is_data_error(&e) => return Err(q(e)),
        Err(e) => {
            tracing::warn!(
                "storing the readings in one statement failed ({}); storing each meter's alone",
                crate::db::describe(&e)
            );
            tx.batch_execute("ROLLBACK TO SAVEPOINT readings")
                .await
                .map_err(q)?;
            let mut n = 0;
            for o in &all {
                match insert_readings(&tx, &[o]).await {
                    Ok(k) => {
                        n += k;
                        tx.batch_execute("RELEASE SAVEPOINT readings; SAVEPOINT readings")
                            .await
                            .map_err(q)?;
                    }
                    Err(e) if !is_data_error(&e) => return Err(q(e)),
                    Err(e) => {
                        let why = format!(
                            "the local database refused meter {}'s readings: {}",
                            o.meter_id,
                            crate::db::describe(&e)
                        );
                        tracing::warn!(meter_id = o.meter_id, "{why}");
                        refused.push((o.meter_id, why));
                        tx.batch_execute("ROLLBACK TO SAVEPOINT readings")
                            .await
                            .map_err(q)?;
                    }
                }
            }
            n
        }
    };
    tx.batch_execute("RELEASE SAVEPOINT readings")
        .await
        .map_err(q)?;
    let h_ids: Vec<i64> = outcomes.iter().map(|o| o.meter_id).collect();
    let h_errors: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| {
            refused
                .iter()
                .find(|(id, _)| *id == o.meter_id)
                .map(|(_, e)| e.as_str())
                .or(o.error.as_deref())
        })
        .collect();
    tx.execute_typed(
        "INSERT INTO meter_health AS h (meter_id, last_success_at, last_error, last_error_at, consecutive_failures)
         SELECT id, CASE WHEN err IS NULL THEN now() END, err, CASE WHEN err IS NOT NULL THEN now() END,
                CASE WHEN err IS NULL THEN 0 ELSE 1 END
         FROM unnest($1::bigint[], $2::text[]) AS u(id, err)
         ON CONFLICT (meter_id) DO UPDATE SET
            last_success_at = coalesce(EXCLUDED.last_success_at, h.last_success_at),
            last_error = EXCLUDED.last_error,
            last_error_at = coalesce(EXCLUDED.last_error_at, h.last_error_at),
            consecutive_failures = CASE WHEN EXCLUDED.last_error IS NULL THEN 0
                                        ELSE h.consecutive_failures + 1 END",
        &[(&h_ids, Type::INT8_ARRAY), (&h_errors, Type::TEXT_ARRAY)],
    )
    .await
    .map_err(q)?;
    tx.commit().await.map_err(q)?;
    Ok((written, refused))
}

/// Whether the database refused the statement for the data it carried
/// (SQLSTATE class 22 data exception, 23 constraint, 54 limit exceeded such
/// as an over-long index row, P0 a trigger's RAISE): what one meter's
/// readings can cause. Anything else (connection, resources, permissions,
/// a missing table) is the database's state, fails the whole write, and
/// loses nothing: the caller keeps the readings.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code().get(..2), Some("22" | "23" | "54" | "P0")))
}

/// Inserts the readings of `meters` in one statement, idempotently.
async fn insert_readings(
    tx: &tokio_postgres::Transaction<'_>,
    meters: &[&MeterOutcome],
) -> Result<u64, tokio_postgres::Error> {
    let mut ids = Vec::new();
    let mut points = Vec::new();
    let mut times = Vec::new();
    let mut values = Vec::new();
    let mut units: Vec<Option<&str>> = Vec::new();
    for o in meters {
        for (p, v, u) in &o.readings {
            ids.push(o.meter_id);
            points.push(&**p);
            times.push(o.recorded_at);
            values.push(*v);
            units.push(u.as_deref());
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    tx.execute_typed(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::float8[], $5::text[])
         ON CONFLICT (meter_id, point, recorded_at) DO NOTHING",
        &[
            (&ids, Type::INT8_ARRAY),
            (&points, Type::TEXT_ARRAY),
            (&times, Type::TIMESTAMPTZ_ARRAY),
            (&values, Type::FLOAT8_ARRAY),
            (&units, Type::TEXT_ARRAY),
        ],
    )
    .await
}

#[cfg(test)]
mod tests;
