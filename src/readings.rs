//! Readings history (`query_readings`, `metersync readings`): what a meter
//! recorded over a time range, raw or aggregated by interval, read from the
//! remote (uploaded readings) and the local backlog (not yet uploaded).
//!
//! Guarantees:
//! - every statement uses bound parameters, runs in a `READ ONLY`
//!   transaction with `SET LOCAL statement_timeout` ([`STATEMENT_TIMEOUT_MS`])
//!   and only unnamed statements, so it works through a transaction pooler;
//! - a page holds at most [`MAX_LIMIT`] rows and about [`MAX_RESULT_BYTES`]
//!   bytes of JSON; the rest is reached with the opaque `next_cursor`;
//! - the remote being unconfigured or down does not fail the query: the
//!   local backlog is still returned and `sources.remote` says why the
//!   uploaded part is missing;
//! - every argument is checked here (range, bucket, limit, cursor), so the
//!   MCP tool and the CLI reject the same things with the same words.
//!
//! Counters and instantaneous values: a point is an energy *counter* (its
//! value only grows; consumption is the difference between readings) when
//! its unit is an accumulated quantity ([`COUNTER_UNITS`]: Wh, kWh, MWh,
//! varh, kvarh, VAh, J, m³, ...) or, for readings without a unit, when its
//! name ends in one of [`COUNTER_NAME_SUFFIXES`] (`_kwh`, `_wh`, ...).
//! Bucketed counters report `delta`: the sum of the steps between
//! consecutive readings whose later reading falls in the bucket (the first
//! step of the range is taken from the last reading before `from`). A
//! negative step is a counter reset or rollover: it adds nothing and is
//! counted in `resets`. Every other point reports `avg`, `min` and `max`.
//! Buckets are aligned to UTC (origin 2000-01-03T00:00:00Z, a Monday), so
//! `1h` buckets start on the hour and `1d` buckets at UTC midnight.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::Serialize;
use tokio_postgres::types::{ToSql, Type};

use crate::config::Side;
use crate::db::{Databases, DbError};

/// Most rows (raw readings or buckets) one page holds.
pub const MAX_LIMIT: i64 = 1000;
/// Rows per page when no limit is given.
pub const DEFAULT_LIMIT: i64 = 200;
/// A page stops before its rows' JSON passes this many bytes.
pub const MAX_RESULT_BYTES: usize = 32 * 1024;
/// Most meters one query may name.
pub const MAX_METERS: usize = 100;
/// Most points one query may name.
pub const MAX_POINTS: usize = 50;
/// Longest time range one query may cover, in days.
pub const MAX_RANGE_DAYS: i64 = 400;
/// Shortest bucket, in seconds.
pub const MIN_BUCKET_S: i64 = 60;
/// Longest bucket, in seconds (31 days).
pub const MAX_BUCKET_S: i64 = 31 * 86_400;
/// Most buckets the range may be cut into (per meter and point).
pub const MAX_BUCKETS: i64 = 20_000;
/// Statement timeout of every statement, on both sides, in ms.
pub const STATEMENT_TIMEOUT_MS: u64 = 10_000;
/// How long the remote may take in all (connection included) before the
/// query answers with the local side alone.
pub const REMOTE_DEADLINE_MS: u64 = 15_000;

/// Units of accumulated quantities: a point with one of them is a counter.
pub const COUNTER_UNITS: &[&str] = &[
    "Wh", "kWh", "MWh", "varh", "kvarh", "Mvarh", "VAh", "kVAh", "MVAh", "J", "kJ", "MJ", "BTU",
    "therm", "m³", "L", "ft³",
];
/// Point-name endings of counters, for readings stored without a unit.
pub const COUNTER_NAME_SUFFIXES: &[&str] = &[
    "_wh", "_kwh", "_mwh", "_varh", "_kvarh", "_vah", "_kvah", "_m3",
];

/// Bucket origin: 2000-01-03T00:00:00Z (a Monday), as seconds since the epoch.
const ORIGIN_EPOCH_S: i64 = 946_857_600;

/// A bad `query_readings` argument, or both sides failing.
#[derive(Debug, thiserror::Error)]
pub enum ReadingsError {
    /// An argument is out of range or malformed; the message names it.
    #[error("invalid {field}: {problem}")]
    Argument {
        /// The argument at fault.
        field: &'static str,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The local database failed (the remote part alone is not returned:
    /// without the backlog the answer would look complete and not be).
    #[error(transparent)]
    Local(DbError),
}

fn arg(field: &'static str, problem: impl Into<String>) -> ReadingsError {
    ReadingsError::Argument {
        field,
        problem: problem.into(),
    }
}

/// What to read, as the front ends receive it (strings are parsed here).
#[derive(Debug, Clone, Default)]
pub struct ReadingsQuery {
    /// Meters to read (1 to [`MAX_METERS`]).
    pub meter_ids: Vec<i64>,
    /// Points to read; empty for all points of those meters.
    pub points: Vec<String>,
    /// Start of the range, inclusive: RFC 3339 or `YYYY-MM-DD` (UTC midnight).
    pub from: String,
    /// End of the range, exclusive: RFC 3339 or `YYYY-MM-DD`.
    pub to: String,
    /// Aggregate by this interval (`15m`, `1h`, `1d`, ...); raw readings when `None`.
    pub bucket: Option<String>,
    /// Rows per page (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One reading.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, PartialEq)]
pub struct RawReading {
    /// The meter.
    pub meter_id: i64,
    /// The point.
    pub point: String,
    /// When it was read (RFC 3339, UTC, ms).
    pub recorded_at: String,
    /// The value.
    pub value: f64,
    /// Its unit, if known.
    pub unit: Option<String>,
    /// true: held by the remote; false: still in the local backlog.
    pub uploaded: bool,
}

/// One interval of one point, from one side.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, PartialEq)]
pub struct Bucket {
    /// The meter.
    pub meter_id: i64,
    /// The point.
    pub point: String,
    /// Start of the interval (RFC 3339, UTC); it ends `bucket_s` later.
    pub bucket_start: String,
    /// The unit, if known.
    pub unit: Option<String>,
    /// `counter` (delta is the consumption) or `instantaneous` (avg/min/max).
    pub kind: String,
    /// true: from the remote; false: from the local backlog. A bucket with
    /// readings on both sides appears twice; add the two deltas.
    pub uploaded: bool,
    /// Readings in the interval.
    pub readings: i64,
    /// Counters: the sum of the non-negative steps ending in the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Counters: negative steps (resets) skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets: Option<i64>,
    /// Counters: the last value in the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
    /// Instantaneous values: the mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg: Option<f64>,
    /// Instantaneous values: the minimum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Instantaneous values: the maximum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Whether each side answered.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Sources {
    /// `ok`, `not configured`, or why the remote part is missing.
    pub remote: String,
    /// `ok` (the local side must answer, or the query fails).
    pub local: String,
}

/// One page of `query_readings`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ReadingsPage {
    /// `raw` or `bucketed`.
    pub mode: String,
    /// The range asked for (RFC 3339).
    pub from: String,
    /// End of the range, exclusive.
    pub to: String,
    /// Bucket length in seconds (bucketed mode).
    pub bucket_s: Option<i64>,
    /// Raw readings, by meter, point (byte order), time; remote before local.
    pub readings: Vec<RawReading>,
    /// Buckets, by meter, point (byte order), start; remote before local.
    pub buckets: Vec<Bucket>,
    /// Pass as `cursor` (with the same other arguments) for the next page;
    /// `null` when this page is the last.
    pub next_cursor: Option<String>,
    /// Why the page stopped early: `limit` or `bytes`; `null` on the last page.
    pub truncated_by: Option<String>,
    /// Which sides answered.
    pub sources: Sources,
}

/// Whether a point is an energy counter (see the module docs).
pub fn is_counter(point: &str, unit: Option<&str>) -> bool {
    match unit {
        Some(u) => COUNTER_UNITS.contains(&u),
        None => {
            let p = point.to_ascii_lowercase();
            COUNTER_NAME_SUFFIXES.iter().any(|s| p.ends_with(s))
        }
    }
}

/// Parses `RFC 3339` or `YYYY-MM-DD` (UTC midnight).
fn parse_time(field: &'static str, s: &str) -> Result<DateTime<Utc>, ReadingsError> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    Err(arg(
        field,
        format!(
            "{:?} is not a time: use RFC 3339 (2026-11-28T13:00:00Z) or a date (2026-11-28, UTC midnight)",
            s.chars().take(40).collect::<String>()
        ),
    ))
}

/// Parses `90s`, `15m`, `1h`, `1d`, `1w` into seconds.
pub fn parse_bucket(s: &str) -> Result<i64, ReadingsError> {
    let t = s.trim();
    let bad = || {
        arg(
            "bucket",
            format!(
                "{:?} is not an interval: a whole number and a unit s, m, h, d or w (e.g. 15m, 1h, 1d), from {MIN_BUCKET_S} s to {MAX_BUCKET_S} s",
                t.chars().take(40).collect::<String>()
            ),
        )
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(mult).ok_or_else(bad)?;
    if !(MIN_BUCKET_S..=MAX_BUCKET_S).contains(&secs) {
        return Err(arg(
            "bucket",
            format!("must be from {MIN_BUCKET_S} s to {MAX_BUCKET_S} s (31 days), got {secs} s"),
        ));
    }
    Ok(secs)
}

/// The position after the last row of a page: (meter, point, time, side).
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    bucketed: bool,
    meter_id: i64,
    point: String,
    at: DateTime<Utc>,
    /// true when the last row came from the local side.
    local: bool,
}

impl Cursor {
    fn encode(&self) -> String {
        let hex: String = self.point.bytes().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}.{}.{}.{}.{}",
            if self.bucketed { "b1" } else { "r1" },
            self.meter_id,
            self.at.timestamp_micros(),
            if self.local { "l" } else { "r" },
            hex
        )
    }

    fn decode(s: &str, bucketed: bool) -> Result<Self, ReadingsError> {
        let bad = || {
            arg(
                "cursor",
                "not a cursor of this query: pass the next_cursor of the previous page with the same bucket (or none), or omit it",
            )
        };
        let mut parts = s.split('.');
        let tag = parts.next().ok_or_else(bad)?;
        if tag != if bucketed { "b1" } else { "r1" } {
            return Err(bad());
        }
        let meter_id: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let micros: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
        let local = match parts.next() {
            Some("l") => true,
            Some("r") => false,
            _ => return Err(bad()),
        };
        let hex = parts.next().ok_or_else(bad)?;
        if parts.next().is_some() || hex.len() % 2 != 0 || hex.len() > 1024 {
            return Err(bad());
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        let point = bytes
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        Ok(Cursor {
            bucketed,
            meter_id,
            point,
            at,
            local,
        })
    }
}

/// The validated query.
struct Plan {
    meter_ids: Vec<i64>,
    points: Vec<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket_s: Option<i64>,
    limit: i64,
    cursor: Option<Cursor>,
}

fn plan(q: &ReadingsQuery) -> Result<Plan, ReadingsError> {
    if q.meter_ids.is_empty() || q.meter_ids.len() > MAX_METERS {
        return Err(arg(
            "meter_ids",
            format!(
                "give 1 to {MAX_METERS} meter ids, got {}",
                q.meter_ids.len()
            ),
        ));
    }
    if q.points.len() > MAX_POINTS {
        return Err(arg(
            "points",
            format!("give at most {MAX_POINTS} points, got {}", q.points.len()),
        ));
    }
    if let Some(p) = q.points.iter().find(|p| p.is_empty() || p.len() > 200) {
        return Err(arg(
            "points",
            format!(
                "a point name must be 1 to 200 characters, got {} characters",
                p.len()
            ),
        ));
    }
    let from = parse_time("from", &q.from)?;
    let to = parse_time("to", &q.to)?;
    if to <= from {
        return Err(arg("to", "must be after from"));
    }
    let span_s = (to - from).num_seconds();
    if span_s > MAX_RANGE_DAYS * 86_400 {
        return Err(arg(
            "to",
            format!("the range may cover at most {MAX_RANGE_DAYS} days; query in several ranges"),
        ));
    }
    let bucket_s = q.bucket.as_deref().map(parse_bucket).transpose()?;
    if let Some(b) = bucket_s {
        if span_s / b > MAX_BUCKETS {
            return Err(arg(
                "bucket",
                format!(
                    "the range holds {} buckets of {b} s; at most {MAX_BUCKETS}: use a longer bucket or a shorter range",
                    span_s / b
                ),
            ));
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(arg(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}, got {limit}"),
        ));
    }
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| Cursor::decode(c, bucket_s.is_some()))
        .transpose()?;
    let mut meter_ids = q.meter_ids.clone();
    meter_ids.sort_unstable();
    meter_ids.dedup();
    Ok(Plan {
        meter_ids,
        points: q.points.clone(),
        from,
        to,
        bucket_s,
        limit,
        cursor,
    })
}

const FILTER: &str = "meter_id = ANY($1) AND (cardinality($2::text[]) = 0 OR point = ANY($2)) \
     AND recorded_at >= $3 AND recorded_at < $4";

fn raw_sql() -> String {
    format!(
        "SELECT meter_id, point, recorded_at, value, unit FROM meter_readings
         WHERE {FILTER}
           AND ((meter_id, point COLLATE \"C\", recorded_at) > ($5, $6 COLLATE \"C\", $7)
                OR ($8 AND (meter_id, point COLLATE \"C\", recorded_at) = ($5, $6 COLLATE \"C\", $7)))
         ORDER BY meter_id, point COLLATE \"C\", recorded_at
         LIMIT $9"
    )
}

fn bucket_sql() -> String {
    format!(
        "WITH k AS (SELECT DISTINCT meter_id, point FROM meter_readings WHERE {FILTER}),
         x AS (
           SELECT meter_id, point, recorded_at, value, unit FROM meter_readings WHERE {FILTER}
           UNION ALL
           SELECT p.meter_id, p.point, p.recorded_at, p.value, p.unit FROM k CROSS JOIN LATERAL (
             SELECT m.meter_id, m.point, m.recorded_at, m.value, m.unit FROM meter_readings m
             WHERE m.meter_id = k.meter_id AND m.point = k.point AND m.recorded_at < $3
             ORDER BY m.recorded_at DESC LIMIT 1) p),
         s AS (SELECT x.*, value - lag(value) OVER (PARTITION BY meter_id, point ORDER BY recorded_at) AS step FROM x),
         g AS (
           SELECT meter_id, point,
                  date_bin(make_interval(secs => $5), recorded_at, $6) AS bucket,
                  count(*) AS n, min(value) AS lo, max(value) AS hi, avg(value) AS mean,
                  coalesce(sum(step) FILTER (WHERE step >= 0), 0)::float8 AS delta,
                  count(*) FILTER (WHERE step < 0) AS resets,
                  bool_or(step IS NULL) AS unstepped,
                  min(recorded_at) AS first_at,
                  (array_agg(value ORDER BY recorded_at))[1] AS first_value,
                  (array_agg(value ORDER BY recorded_at DESC))[1] AS last_value,
                  max(unit) AS unit
           FROM s WHERE recorded_at >= $3
           GROUP BY 1, 2, 3)
         SELECT meter_id, point, bucket, n, lo, hi, mean, delta, resets, unstepped,
                first_at, first_value, last_value, unit
         FROM g
         WHERE ((meter_id, point COLLATE \"C\", bucket) > ($7, $8 COLLATE \"C\", $9)
                OR ($10 AND (meter_id, point COLLATE \"C\", bucket) = ($7, $8 COLLATE \"C\", $9)))
         ORDER BY meter_id, point COLLATE \"C\", bucket
         LIMIT $11"
    )
}

/// The value of the last remote reading of each (meter, point) before a time.
const PRIOR_SQL: &str = "SELECT k.i, (SELECT r.value FROM meter_readings r
        WHERE r.meter_id = k.m AND r.point = k.p AND r.recorded_at < k.t
        ORDER BY r.recorded_at DESC LIMIT 1)
     FROM unnest($1::int4[], $2::int8[], $3::text[], $4::timestamptz[]) AS k(i, m, p, t)";

/// One row from one side, before it becomes a [`RawReading`] or [`Bucket`].
#[derive(Debug, Clone)]
struct SideRow {
    meter_id: i64,
    point: String,
    at: DateTime<Utc>,
    local: bool,
    value: f64,
    unit: Option<String>,
    agg: Option<Agg>,
}

#[derive(Debug, Clone)]
struct Agg {
    n: i64,
    lo: f64,
    hi: f64,
    mean: f64,
    delta: f64,
    resets: i64,
    unstepped: bool,
    first_at: DateTime<Utc>,
    first_value: f64,
}

impl SideRow {
    fn key(&self) -> (i64, &[u8], DateTime<Utc>, bool) {
        (self.meter_id, self.point.as_bytes(), self.at, self.local)
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Opens a read-only transaction on `client` with [`STATEMENT_TIMEOUT_MS`]
/// set for it alone (`SET LOCAL`: pooler-safe).
async fn read_only_tx(
    client: &mut tokio_postgres::Client,
    side: Side,
) -> Result<tokio_postgres::Transaction<'_>, DbError> {
    let q = |e: tokio_postgres::Error| DbError::query(side, &e);
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(q)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
    ))
    .await
    .map_err(q)?;
    Ok(tx)
}

/// Reads this page's rows from one side, in a read-only transaction with
/// the statement timeout set (unnamed statements only: pooler-safe).
async fn in_read_only_tx(
    db: &Databases,
    side: Side,
    plan: &Plan,
    local: bool,
) -> Result<Vec<SideRow>, DbError> {
    let q = |e: tokio_postgres::Error| DbError::query(side, &e);
    let mut obj = db.get(side).await?;
    let client: &mut tokio_postgres::Client = &mut obj;
    let tx = read_only_tx(client, side).await?;
    // Where this side resumes: after the cursor, or at it when the cursor's
    // row came from the remote and this is the local side (remote rows sort
    // first at equal keys).
    let (c_meter, c_point, c_at, inclusive) = match &plan.cursor {
        Some(c) => (c.meter_id, c.point.clone(), c.at, local && !c.local),
        None => (i64::MIN, String::new(), plan.from, false),
    };
    let fetch = plan.limit + 1;
    let rows = match plan.bucket_s {
        None => {
            let params: [(&(dyn ToSql + Sync), Type); 9] = [
                (&plan.meter_ids, Type::INT8_ARRAY),
                (&plan.points, Type::TEXT_ARRAY),
                (&plan.from, Type::TIMESTAMPTZ),
                (&plan.to, Type::TIMESTAMPTZ),
                (&c_meter, Type::INT8),
                (&c_point, Type::TEXT),
                (&c_at, Type::TIMESTAMPTZ),
                (&inclusive, Type::BOOL),
                (&fetch, Type::INT8),
            ];
            tx.query_typed(&raw_sql(), &params).await.map_err(q)?
        }
        Some(b) => {
            let secs = b as f64;
            let origin = DateTime::<Utc>::from_timestamp(ORIGIN_EPOCH_S, 0).unwrap_or_default();
            let params: [(&(dyn ToSql + Sync), Type); 11] = [
                (&plan.meter_ids, Type::INT8_ARRAY),
                (&plan.points, Type::TEXT_ARRAY),
                (&plan.from, Type::TIMESTAMPTZ),
                (&plan.to, Type::TIMESTAMPTZ),
                (&secs, Type::FLOAT8),
                (&origin, Type::TIMESTAMPTZ),
                (&c_meter, Type::INT8),
                (&c_point, Type::TEXT),
                (&c_at, Type::TIMESTAMPTZ),
                (&inclusive, Type::BOOL),
                (&fetch, Type::INT8),
            ];
            tx.query_typed(&bucket_sql(), &params).await.map_err(q)?
        }
    };
    let _ = tx.rollback().await;
    let bad = |e: tokio_postgres::Error| DbError::query(side, &e);
    rows.iter()
        .map(|r| -> Result<SideRow, DbError> {
            Ok(if plan.bucket_s.is_none() {
                SideRow {
                    meter_id: r.try_get(0).map_err(bad)?,
                    point: r.try_get(1).map_err(bad)?,
                    at: r.try_get(2).map_err(bad)?,
                    local,
                    value: r.try_get(3).map_err(bad)?,
                    unit: r.try_get(4).map_err(bad)?,
                    agg: None,
                }
            } else {
                SideRow {
                    meter_id: r.try_get(0).map_err(bad)?,
                    point: r.try_get(1).map_err(bad)?,
                    at: r.try_get(2).map_err(bad)?,
                    local,
                    value: r.try_get(12).map_err(bad)?,
                    unit: r.try_get(13).map_err(bad)?,
                    agg: Some(Agg {
                        n: r.try_get(3).map_err(bad)?,
                        lo: r.try_get(4).map_err(bad)?,
                        hi: r.try_get(5).map_err(bad)?,
                        mean: r.try_get(6).map_err(bad)?,
                        delta: r.try_get(7).map_err(bad)?,
                        resets: r.try_get(8).map_err(bad)?,
                        unstepped: r.try_get(9).map_err(bad)?,
                        first_at: r.try_get(10).map_err(bad)?,
                        first_value: r.try_get(11).map_err(bad)?,
                    }),
                }
            })
        })
        .collect()
}

/// For local buckets holding a series' first backlog reading, the step from
/// the last uploaded reading: the remote's last value before it.
async fn seam_priors(db: &Databases, rows: &[SideRow]) -> Result<HashMap<usize, f64>, DbError> {
    let seams: Vec<(i32, &SideRow, DateTime<Utc>)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let a = r.agg.as_ref()?;
            (r.local && a.unstepped).then_some((i32::try_from(i).ok()?, r, a.first_at))
        })
        .collect();
    if seams.is_empty() {
        return Ok(HashMap::new());
    }
    let q = |e: tokio_postgres::Error| DbError::query(Side::Remote, &e);
    let mut obj = db.remote().await?;
    let client: &mut tokio_postgres::Client = &mut obj;
    let tx = read_only_tx(client, Side::Remote).await?;
    let idx: Vec<i32> = seams.iter().map(|s| s.0).collect();
    let meters: Vec<i64> = seams.iter().map(|s| s.1.meter_id).collect();
    let points: Vec<&str> = seams.iter().map(|s| s.1.point.as_str()).collect();
    let times: Vec<DateTime<Utc>> = seams.iter().map(|s| s.2).collect();
    let out = tx
        .query_typed(
            PRIOR_SQL,
            &[
                (&idx, Type::INT4_ARRAY),
                (&meters, Type::INT8_ARRAY),
                (&points, Type::TEXT_ARRAY),
                (&times, Type::TIMESTAMPTZ_ARRAY),
            ],
        )
        .await
        .map_err(q)?;
    let _ = tx.rollback().await;
    let mut m = HashMap::new();
    for r in out {
        let i: i32 = r.try_get(0).map_err(q)?;
        let v: Option<f64> = r.try_get(1).map_err(q)?;
        if let (Ok(i), Some(v)) = (usize::try_from(i), v) {
            m.insert(i, v);
        }
    }
    Ok(m)
}

/// Reads one page of readings.
///
/// Fails on a bad argument, or when the local database fails; a remote that
/// is not configured, down or slow leaves its part out and says so in
/// `sources.remote`.
pub async fn query_readings(
    db: &Databases,
    query: &ReadingsQuery,
) -> Result<ReadingsPage, ReadingsError> {
    let plan = plan(query)?;
    let deadline = Duration::from_millis(REMOTE_DEADLINE_MS);
    let remote_part = async {
        if !db.has_remote() {
            return Err(
                "not configured (POSTGRES_CLIENT_HOST unset): only the local backlog is shown"
                    .to_string(),
            );
        }
        match tokio::time::timeout(deadline, in_read_only_tx(db, Side::Remote, &plan, false)).await
        {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(format!("unavailable, only the local backlog is shown: {e}")),
            Err(_) => Err(format!(
                "no answer within {REMOTE_DEADLINE_MS} ms, only the local backlog is shown"
            )),
        }
    };
    let (remote, local) = tokio::join!(remote_part, in_read_only_tx(db, Side::Local, &plan, true));
    let local = local.map_err(ReadingsError::Local)?;
    let (remote_rows, remote_state) = match remote {
        Ok(rows) => (rows, "ok".to_string()),
        Err(why) => (Vec::new(), why),
    };
    let mut merged: Vec<SideRow> = remote_rows;
    merged.extend(local);
    merged.sort_by(|a, b| a.key().cmp(&b.key()));
    let more_than_limit = merged.len() as i64 > plan.limit;
    merged.truncate(usize::try_from(plan.limit).unwrap_or(usize::MAX));

    let priors = if plan.bucket_s.is_some() && remote_state == "ok" {
        match tokio::time::timeout(deadline, seam_priors(db, &merged)).await {
            Ok(Ok(p)) => p,
            _ => HashMap::new(),
        }
    } else {
        HashMap::new()
    };

    let mut page = ReadingsPage {
        mode: if plan.bucket_s.is_some() {
            "bucketed"
        } else {
            "raw"
        }
        .into(),
        from: ts(plan.from),
        to: ts(plan.to),
        bucket_s: plan.bucket_s,
        readings: Vec::new(),
        buckets: Vec::new(),
        next_cursor: None,
        truncated_by: None,
        sources: Sources {
            remote: remote_state,
            local: "ok".into(),
        },
    };
    let mut bytes = 0usize;
    let mut last: Option<&SideRow> = None;
    let mut stopped_by_bytes = false;
    for (i, r) in merged.iter().enumerate() {
        let size = match &r.agg {
            None => {
                let row = RawReading {
                    meter_id: r.meter_id,
                    point: r.point.clone(),
                    recorded_at: ts(r.at),
                    value: r.value,
                    unit: r.unit.clone(),
                    uploaded: !r.local,
                };
                let size = json_len(&row);
                if bytes + size > MAX_RESULT_BYTES && last.is_some() {
                    stopped_by_bytes = true;
                    break;
                }
                page.readings.push(row);
                size
            }
            Some(a) => {
                let b = bucket_of(r, a, priors.get(&i).copied());
                let size = json_len(&b);
                if bytes + size > MAX_RESULT_BYTES && last.is_some() {
                    stopped_by_bytes = true;
                    break;
                }
                page.buckets.push(b);
                size
            }
        };
        bytes += size;
        last = Some(r);
    }
    if stopped_by_bytes || more_than_limit {
        page.truncated_by = Some(if stopped_by_bytes { "bytes" } else { "limit" }.into());
        page.next_cursor = last.map(|r| {
            Cursor {
                bucketed: plan.bucket_s.is_some(),
                meter_id: r.meter_id,
                point: r.point.clone(),
                at: r.at,
                local: r.local,
            }
            .encode()
        });
    }
    Ok(page)
}

fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map(|v| v.len() + 1).unwrap_or(0)
}

fn bucket_of(r: &SideRow, a: &Agg, seam_prior: Option<f64>) -> Bucket {
    let counter = is_counter(&r.point, r.unit.as_deref());
    let (mut delta, mut resets) = (a.delta, a.resets);
    if let Some(prior) = seam_prior {
        let step = a.first_value - prior;
        if step >= 0.0 {
            delta += step;
        } else {
            resets += 1;
        }
    }
    Bucket {
        meter_id: r.meter_id,
        point: r.point.clone(),
        bucket_start: ts(r.at),
        unit: r.unit.clone(),
        kind: if counter { "counter" } else { "instantaneous" }.into(),
        uploaded: !r.local,
        readings: a.n,
        delta: counter.then_some(delta),
        resets: counter.then_some(resets),
        last: counter.then_some(r.value),
        avg: (!counter).then_some(a.mean),
        min: (!counter).then_some(a.lo),
        max: (!counter).then_some(a.hi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: &str, to: &str) -> ReadingsQuery {
        ReadingsQuery {
            meter_ids: vec![1],
            from: from.into(),
            to: to.into(),
            ..Default::default()
        }
    }

    #[test]
    fn buckets_parse_within_bounds() {
        assert_eq!(parse_bucket("15m").ok(), Some(900));
        assert_eq!(parse_bucket("1h").ok(), Some(3600));
        assert_eq!(parse_bucket("1d").ok(), Some(86_400));
        for bad in [
            "",
            "h",
            "1",
            "1y",
            "-1h",
            "30s",
            "99999999999999999999h",
            "1h;drop",
        ] {
            assert!(parse_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments_are_bounded() {
        assert!(plan(&q("2026-01-01", "2026-01-02")).is_ok());
        assert!(plan(&q("2026-01-02", "2026-01-01")).is_err());
        assert!(plan(&q("2020-01-01", "2026-01-01")).is_err());
        assert!(plan(&q("yesterday", "2026-01-01")).is_err());
        let mut x = q("2026-01-01", "2026-01-02");
        x.limit = Some(-1);
        assert!(plan(&x).is_err());
        x.limit = Some(MAX_LIMIT + 1);
        assert!(plan(&x).is_err());
        x.limit = None;
        x.meter_ids = (0..=MAX_METERS as i64).collect();
        assert!(plan(&x).is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_strangers() {
        let c = Cursor {
            bucketed: true,
            meter_id: 12,
            point: "energy_kwh'; --".into(),
            at: DateTime::<Utc>::from_timestamp(1_700_000_000, 5000).unwrap_or_default(),
            local: true,
        };
        assert_eq!(Cursor::decode(&c.encode(), true).ok(), Some(c.clone()));
        assert!(Cursor::decode(&c.encode(), false).is_err());
        for bad in [
            "",
            "b1",
            "b1.x.1.l.00",
            "b1.1.1.q.00",
            "b1.1.1.l.0",
            "b1.1.1.l.ff",
        ] {
            assert!(Cursor::decode(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn counters_by_unit_or_name() {
        assert!(is_counter("x", Some("kWh")));
        assert!(!is_counter("energy_kwh", Some("kW")));
        assert!(is_counter("energy_kwh", None));
        assert!(!is_counter("power_kw", None));
    }
}
