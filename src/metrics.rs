//! The daemon's Prometheus metrics: one registry on [`App`] (the
//! `prometheus-client` crate encodes it in the Prometheus text format) and
//! the sampler that keeps it current.
//!
//! The engines stay unaware of metrics. The sampler ([`run`]) reads what
//! they already record: finished runs from the `sync_runs` journal (counters
//! of readings collected, uploaded, quarantined and in conflict; run
//! durations), the site snapshot (backlog, meters), each meter's health,
//! the pools (connections, retries, last error) and the BACnet client's
//! counters. So a run made by any front end of this process counts, and a
//! metric can never disagree with `sync_status`.
//!
//! Guarantees: counters only grow (a run is counted once, by journal id);
//! nothing here connects to the remote (a scrape never pins a pooler slot);
//! a failed sample sets `metersync_local_up` to 0 and keeps the last values.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Side;
use crate::db::DbError;
use crate::heartbeat::SiteSnapshot;
use crate::status::GrowthLimits;

/// How often the sampler refreshes the registry.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How long one sample may wait for the local database before
/// `metersync_local_up` says 0.
pub const SAMPLE_DEADLINE: Duration = Duration::from_secs(5);

/// `{kind="upload"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// `{kind="upload",status="ok"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    kind: String,
    status: String,
}

/// `{meter_id="7"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeterLabel {
    meter_id: String,
}

/// `{side="remote"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: String,
}

/// `{result="ok"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// `{state="failed"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    // 10 ms .. ~5.5 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// What the sampler remembers between samples.
#[derive(Default)]
struct Cursor {
    /// Newest `finished_at` seen in the journal.
    watermark: Option<DateTime<Utc>>,
    /// Runs already counted, by id, with their `finished_at`.
    seen: HashMap<i64, DateTime<Utc>>,
    /// Last seen cumulative values of counters kept elsewhere.
    retries: HashMap<Side, u64>,
    bacnet: crate::bacnet::ClientStats,
    /// Meters with a series now.
    meters: HashSet<String>,
    /// Whether the backlog warnings have been logged (logged once when they
    /// appear, once when they clear).
    warned: bool,
}

/// The registry and its metrics. Cheap to share (every metric is an `Arc`).
pub struct Metrics {
    registry: Registry,
    started_at: DateTime<Utc>,
    cursor: Mutex<Cursor>,
    collected: Counter,
    uploaded: Counter,
    already_present: Counter,
    quarantined: Counter,
    conflicts: Counter,
    runs: Family<RunLabels, Counter>,
    durations: Family<KindLabel, Histogram, fn() -> Histogram>,
    last_duration: Family<KindLabel, FloatGauge>,
    backlog_rows: Gauge,
    backlog_age: FloatGauge,
    backlog_warning: Gauge,
    quarantine_rows: Gauge,
    conflict_rows: Gauge,
    meters: Family<StateLabel, Gauge>,
    meter_up: Family<MeterLabel, Gauge>,
    meter_failures: Family<MeterLabel, Gauge>,
    last_collect: FloatGauge,
    local_up: Gauge,
    db_connected: Family<SideLabel, Gauge>,
    db_connections: Family<SideLabel, Gauge>,
    db_retries: Family<SideLabel, Counter>,
    db_reaped: Family<SideLabel, Counter>,
    bacnet_requests: Counter,
    bacnet_garbage: Counter,
    bacnet_unmatched: Counter,
    heartbeats: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with every metric registered.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("metersync");
        let m = Metrics {
            registry: Registry::default(),
            started_at: Utc::now(),
            cursor: Mutex::new(Cursor::default()),
            collected: Counter::default(),
            uploaded: Counter::default(),
            already_present: Counter::default(),
            quarantined: Counter::default(),
            conflicts: Counter::default(),
            runs: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            last_duration: Family::default(),
            backlog_rows: Gauge::default(),
            backlog_age: FloatGauge::default(),
            backlog_warning: Gauge::default(),
            quarantine_rows: Gauge::default(),
            conflict_rows: Gauge::default(),
            meters: Family::default(),
            meter_up: Family::default(),
            meter_failures: Family::default(),
            last_collect: FloatGauge::default(),
            local_up: Gauge::default(),
            db_connected: Family::default(),
            db_connections: Family::default(),
            db_retries: Family::default(),
            db_reaped: Family::default(),
            bacnet_requests: Counter::default(),
            bacnet_garbage: Counter::default(),
            bacnet_unmatched: Counter::default(),
            heartbeats: Family::default(),
        };
        r.register(
            "readings_collected",
            "Readings stored by collections",
            m.collected.clone(),
        );
        r.register(
            "readings_uploaded",
            "Readings inserted remotely by uploads",
            m.uploaded.clone(),
        );
        r.register(
            "readings_already_present",
            "Readings an upload found already on the remote (a re-send), deleted locally",
            m.already_present.clone(),
        );
        r.register(
            "readings_quarantined",
            "Readings the remote refused, moved to meter_readings_quarantine",
            m.quarantined.clone(),
        );
        r.register(
            "readings_conflicts",
            "Readings whose key the remote held with a different value",
            m.conflicts.clone(),
        );
        r.register("runs", "Finished runs by kind and status", m.runs.clone());
        r.register(
            "run_duration_seconds",
            "Wall time of finished runs (collect, upload, download_*)",
            m.durations.clone(),
        );
        r.register(
            "last_run_duration_seconds",
            "Wall time of the last finished run of each kind",
            m.last_duration.clone(),
        );
        r.register(
            "backlog_rows",
            "Readings waiting for upload",
            m.backlog_rows.clone(),
        );
        r.register(
            "backlog_oldest_age_seconds",
            "Age of the oldest reading waiting for upload (0 when none)",
            m.backlog_age.clone(),
        );
        r.register(
            "backlog_warning",
            "1 when the backlog is over BACKLOG_WARN_ROWS or BACKLOG_WARN_AGE_S",
            m.backlog_warning.clone(),
        );
        r.register(
            "quarantine_rows",
            "Rows in meter_readings_quarantine",
            m.quarantine_rows.clone(),
        );
        r.register(
            "conflict_rows",
            "Rows in meter_readings_conflicts",
            m.conflict_rows.clone(),
        );
        r.register(
            "meters",
            "Active meters by the state of their last collection (read, failed, never_read)",
            m.meters.clone(),
        );
        r.register(
            "meter_up",
            "1 when the meter's last collection succeeded, 0 when it failed",
            m.meter_up.clone(),
        );
        r.register(
            "meter_consecutive_failures",
            "Failed collections of the meter in a row",
            m.meter_failures.clone(),
        );
        r.register(
            "last_collect_timestamp_seconds",
            "Unix time of the last successful collection",
            m.last_collect.clone(),
        );
        r.register(
            "local_up",
            "1 when the last sample could read the local database",
            m.local_up.clone(),
        );
        r.register(
            "db_connected",
            "1 when the last use of the side's pool succeeded (the scrape itself never connects)",
            m.db_connected.clone(),
        );
        r.register(
            "db_connections",
            "Connections open in the side's pool",
            m.db_connections.clone(),
        );
        r.register(
            "db_connection_retries",
            "Connection retries made by the side's pool",
            m.db_retries.clone(),
        );
        r.register(
            "db_idle_connections_closed",
            "Idle connections closed by the reaper",
            m.db_reaped.clone(),
        );
        r.register(
            "bacnet_requests_sent",
            "BACnet confirmed requests sent (each retry counts)",
            m.bacnet_requests.clone(),
        );
        r.register(
            "bacnet_garbage_datagrams",
            "BACnet datagrams that did not decode",
            m.bacnet_garbage.clone(),
        );
        r.register(
            "bacnet_unmatched_replies",
            "BACnet replies that matched no pending request (late, duplicate or spoofed)",
            m.bacnet_unmatched.clone(),
        );
        r.register(
            "heartbeats",
            "Heartbeats to the remote site_status table by result",
            m.heartbeats.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// When this process (its [`App`]) started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// The registry in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("encoding the metrics failed (a bug): {e}");
        }
        out
    }

    /// Counts one heartbeat.
    pub fn heartbeat_result(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.heartbeats
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Sets the backlog, meter and quarantine gauges from a snapshot.
    pub fn record_snapshot(&self, s: &SiteSnapshot) {
        self.backlog_rows.set(s.backlog_rows);
        self.backlog_age.set(s.oldest_age_s.unwrap_or(0.0));
        self.backlog_warning.set(i64::from(!s.warnings.is_empty()));
        self.quarantine_rows.set(s.quarantine_rows);
        self.conflict_rows.set(s.conflict_rows);
        for (state, n) in [
            ("read", s.meters_read),
            ("failed", s.meters_failed),
            ("never_read", s.meters_never_read),
        ] {
            self.meters
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n);
        }
        if let Some(t) = s.last_collect_at {
            self.last_collect.set(t.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Counts one finished run from the journal.
    fn record_run(&self, kind: &str, status: &str, counts: &serde_json::Value, seconds: f64) {
        let n = |k: &str| counts.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        match kind {
            "collect" => {
                self.collected.inc_by(n("readings_written"));
            }
            "upload" => {
                self.uploaded.inc_by(n("uploaded"));
                self.already_present.inc_by(n("already_present"));
                self.quarantined.inc_by(n("quarantined"));
                self.conflicts.inc_by(n("conflicts"));
            }
            _ => {}
        }
        self.runs
            .get_or_create(&RunLabels {
                kind: kind.into(),
                status: status.into(),
            })
            .inc();
        let k = KindLabel { kind: kind.into() };
        self.durations.get_or_create(&k).observe(seconds);
        self.last_duration.get_or_create(&k).set(seconds);
    }

    /// Reads the pools (through the reaper, which never connects) and the
    /// BACnet counters.
    fn record_pools(&self, app: &App) {
        let states = app.db.reap_idle(app.config.pool.idle_timeout);
        let Ok(mut cur) = self.cursor.lock() else {
            return;
        };
        for st in states {
            let label = SideLabel {
                side: st.side.to_string(),
            };
            self.db_connected
                .get_or_create(&label)
                .set(i64::from(st.last_error.is_none()));
            self.db_connections
                .get_or_create(&label)
                .set(st.size as i64);
            let prev = cur.retries.insert(st.side, st.retries).unwrap_or(0);
            self.db_retries
                .get_or_create(&label)
                .inc_by(st.retries.saturating_sub(prev));
            self.db_reaped
                .get_or_create(&label)
                .inc_by(st.closed as u64);
        }
        if let Some(b) = app.bacnet_stats() {
            let p = cur.bacnet;
            self.bacnet_requests
                .inc_by(b.requests_sent.saturating_sub(p.requests_sent));
            self.bacnet_garbage
                .inc_by(b.garbage.saturating_sub(p.garbage));
            self.bacnet_unmatched
                .inc_by(b.unmatched.saturating_sub(p.unmatched));
            cur.bacnet = b;
        }
    }

    /// Counts the runs that finished since the last sample, each once.
    async fn follow_journal(&self, app: &App) -> Result<(), DbError> {
        let c = app.db.local().await?;
        let e = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
        let watermark = self.cursor.lock().ok().and_then(|c| c.watermark);
        let since = match watermark {
            Some(w) => w - chrono::Duration::seconds(60),
            // Count only the runs of this process's lifetime.
            None => self.started_at,
        };
        let rows = c
            .query(
                "SELECT id, kind, status, counts,
                        extract(epoch FROM finished_at - started_at)::float8, finished_at
                 FROM sync_runs WHERE finished_at >= $1 ORDER BY finished_at, id",
                &[&since],
            )
            .await
            .map_err(e)?;
        let mut fresh = Vec::new();
        if let Ok(mut cur) = self.cursor.lock() {
            for r in &rows {
                let id: i64 = r.try_get(0).map_err(e)?;
                let finished: DateTime<Utc> = r.try_get(5).map_err(e)?;
                if cur.seen.insert(id, finished).is_none() {
                    fresh.push(r);
                }
                if cur.watermark.is_none_or(|w| finished > w) {
                    cur.watermark = Some(finished);
                }
            }
            if let Some(w) = cur.watermark {
                let keep_after = w - chrono::Duration::seconds(120);
                cur.seen.retain(|_, f| *f >= keep_after);
            }
        }
        for r in fresh {
            let kind: String = r.try_get(1).map_err(e)?;
            let status: String = r.try_get(2).map_err(e)?;
            let counts: Option<serde_json::Value> = r.try_get(3).map_err(e)?;
            let secs: Option<f64> = r.try_get(4).map_err(e)?;
            self.record_run(
                &kind,
                &status,
                &counts.unwrap_or(serde_json::Value::Null),
                secs.unwrap_or(0.0),
            );
        }
        Ok(())
    }

    /// Sets each active meter's up/down and failure count.
    async fn record_meters(&self, app: &App) -> Result<(), DbError> {
        let c = app.db.local().await?;
        let e = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
        let rows = c
            .query(
                "SELECT m.id, h.consecutive_failures
                 FROM meters m JOIN meter_health h ON h.meter_id = m.id WHERE m.active",
                &[],
            )
            .await
            .map_err(e)?;
        let mut now = HashSet::new();
        for r in rows {
            let id: i64 = r.try_get(0).map_err(e)?;
            let failures: i32 = r.try_get(1).map_err(e)?;
            let label = MeterLabel {
                meter_id: id.to_string(),
            };
            self.meter_up
                .get_or_create(&label)
                .set(i64::from(failures == 0));
            self.meter_failures
                .get_or_create(&label)
                .set(i64::from(failures));
            now.insert(label.meter_id);
        }
        if let Ok(mut cur) = self.cursor.lock() {
            for gone in cur.meters.difference(&now) {
                let label = MeterLabel {
                    meter_id: gone.clone(),
                };
                self.meter_up.remove(&label);
                self.meter_failures.remove(&label);
            }
            cur.meters = now;
        }
        Ok(())
    }

    /// One sample: journal, snapshot, meters, pools.
    pub async fn sample(&self, app: &App) {
        let limits = GrowthLimits::from_config(&app.config);
        let local = async {
            self.follow_journal(app).await?;
            let snap = SiteSnapshot::read(&app.db, &limits).await?;
            self.record_snapshot(&snap);
            self.record_meters(app).await?;
            Ok::<_, DbError>(snap)
        };
        // The pool's retry policy could hold a sample for a minute while the
        // local database is down; the gauge must say so sooner.
        let local = match tokio::time::timeout(SAMPLE_DEADLINE, local).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} s", SAMPLE_DEADLINE.as_secs())),
        };
        match local {
            Ok(snap) => {
                self.local_up.set(1);
                if let Ok(mut cur) = self.cursor.lock() {
                    match (snap.warnings.is_empty(), cur.warned) {
                        (false, false) => {
                            for w in &snap.warnings {
                                tracing::warn!("{w}");
                            }
                        }
                        (true, true) => tracing::info!(
                            "backlog back within BACKLOG_WARN_ROWS and BACKLOG_WARN_AGE_S"
                        ),
                        _ => {}
                    }
                    cur.warned = !snap.warnings.is_empty();
                }
            }
            Err(e) => {
                self.local_up.set(0);
                tracing::debug!("metrics sample could not read the local database: {e}");
            }
        }
        self.record_pools(app);
    }
}

/// The daemon's metrics sampler: a sample every [`SAMPLE_EVERY`] until
/// `shutdown`.
pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = app.metrics.sample(&app) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
    tracing::debug!("metrics sampler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_by_their_reported_counts() {
        let m = Metrics::new();
        m.record_run(
            "collect",
            "ok",
            &serde_json::json!({"readings_written": 12}),
            0.5,
        );
        m.record_run(
            "upload",
            "ok",
            &serde_json::json!({"uploaded": 10, "quarantined": 2, "already_present": 1}),
            1.5,
        );
        let text = m.encode();
        assert!(
            text.contains("metersync_readings_collected_total 12"),
            "{text}"
        );
        assert!(
            text.contains("metersync_readings_uploaded_total 10"),
            "{text}"
        );
        assert!(
            text.contains("metersync_readings_quarantined_total 2"),
            "{text}"
        );
        assert!(
            text.contains("metersync_runs_total{kind=\"upload\",status=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("metersync_run_duration_seconds_count{kind=\"collect\"} 1"),
            "{text}"
        );
    }
}
