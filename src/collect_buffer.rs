//! What the collector keeps in memory so that collection survives an outage
//! of the local database: the last meter list it loaded, and the readings it
//! could not write yet.
//!
//! Guarantees:
//! - while the local database is down the collector reads the meters of the
//!   last list it loaded, on schedule, and holds each run's outcomes here;
//! - the held readings are bounded by [`MAX_HELD_READINGS`] (about 100 bytes
//!   each, so about 10 MB at most: 100 meters x 10 points collected every
//!   minute fill it in 100 minutes);
//! - when it is full the *oldest* held readings are kept and a new run's
//!   readings are dropped; every dropped reading is counted
//!   ([`HeldStats::dropped`]), the first drop of an outage is logged at
//!   WARN and each run's report carries the counts;
//! - held runs are written oldest first, each in its own transaction, as
//!   soon as the local database answers again (the next collection), before
//!   the new run's readings; a write that fails transiently puts the run
//!   back in front; one the database refuses for good (not transient) is
//!   dropped, counted in `dropped` and logged at ERROR, so it cannot block
//!   the others. Meter health for a held run is recorded when it is written.
//!
//! Nothing here survives a restart of the process: the bound is in time as
//! much as in memory, which is why the README calls it "for a bounded time".

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::collect::{MeterOutcome, MeterRow};

/// The most readings held in memory while the local database is down.
pub const MAX_HELD_READINGS: usize = 100_000;

/// The counts a collection report carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct HeldStats {
    /// Readings held in memory now, waiting for the local database.
    pub held: u64,
    /// Collection runs those readings come from.
    pub held_runs: u64,
    /// Readings dropped since the process started because the buffer was full.
    pub dropped: u64,
}

#[derive(Default)]
struct Inner {
    meters: Option<Vec<MeterRow>>,
    held: VecDeque<Vec<MeterOutcome>>,
    held_readings: usize,
    dropped: u64,
    dropping: bool,
}

/// The collector's memory (one per [`crate::app::App`]).
#[derive(Default)]
pub struct CollectBuffer {
    inner: Mutex<Inner>,
    cap: usize,
}

fn readings(batch: &[MeterOutcome]) -> usize {
    batch.iter().map(|o| o.readings.len()).sum()
}

impl CollectBuffer {
    /// An empty buffer bounded by [`MAX_HELD_READINGS`].
    pub fn new() -> Self {
        Self::with_capacity(MAX_HELD_READINGS)
    }

    /// An empty buffer holding at most `cap` readings (for tests).
    pub fn with_capacity(cap: usize) -> Self {
        CollectBuffer {
            inner: Mutex::new(Inner::default()),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Remembers the full active meter list just loaded.
    pub(crate) fn remember_meters(&self, meters: &[MeterRow]) {
        self.lock().meters = Some(meters.to_vec());
    }

    /// The last meter list loaded (only the meters in `ids` when given), or
    /// `None` when none was ever loaded.
    pub(crate) fn meters(&self, ids: Option<&[i64]>) -> Option<Vec<MeterRow>> {
        let g = self.lock();
        let all = g.meters.as_ref()?;
        Some(match ids {
            None => all.clone(),
            Some(ids) => all
                .iter()
                .filter(|m| ids.contains(&m.id))
                .cloned()
                .collect(),
        })
    }

    /// Holds one run's outcomes; when they do not fit, drops them (the
    /// oldest held are kept) and counts the readings lost. Returns the
    /// readings dropped by this call.
    pub(crate) fn hold(&self, batch: Vec<MeterOutcome>) -> u64 {
        let n = readings(&batch);
        let mut g = self.lock();
        if g.held_readings + n > self.cap {
            g.dropped += n as u64;
            if !g.dropping {
                g.dropping = true;
                tracing::warn!(
                    held = g.held_readings,
                    max = self.cap,
                    "the in-memory buffer of readings is full: new readings are dropped (counted) until the local database returns"
                );
            }
            return n as u64;
        }
        g.held_readings += n;
        g.held.push_back(batch);
        0
    }

    /// Takes the oldest held run, to write it.
    pub(crate) fn take_oldest(&self) -> Option<Vec<MeterOutcome>> {
        let mut g = self.lock();
        let batch = g.held.pop_front()?;
        g.held_readings -= readings(&batch);
        if g.held.is_empty() {
            g.dropping = false;
        }
        Some(batch)
    }

    /// Puts back a run taken with [`CollectBuffer::take_oldest`] whose write
    /// failed, in front (it is never dropped: it was already counted in).
    pub(crate) fn put_back(&self, batch: Vec<MeterOutcome>) {
        let mut g = self.lock();
        g.held_readings += readings(&batch);
        g.held.push_front(batch);
    }

    /// Counts a run taken with [`CollectBuffer::take_oldest`] that the
    /// database refused for good as dropped; returns its readings.
    pub(crate) fn discard(&self, batch: Vec<MeterOutcome>) -> u64 {
        let n = readings(&batch) as u64;
        self.lock().dropped += n;
        n
    }

    /// The counts now.
    pub fn stats(&self) -> HeldStats {
        let g = self.lock();
        HeldStats {
            held: g.held_readings as u64,
            held_runs: g.held.len() as u64,
            dropped: g.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn run(meter: i64, points: usize) -> Vec<MeterOutcome> {
        vec![MeterOutcome {
            meter_id: meter,
            recorded_at: Utc::now(),
            readings: (0..points)
                .map(|i| (format!("p{i}").into(), i as f64, None))
                .collect(),
            problems: Vec::new(),
            error: None,
        }]
    }

    #[test]
    fn holds_up_to_the_bound_then_keeps_the_oldest_and_counts_the_dropped() {
        let b = CollectBuffer::with_capacity(10);
        assert_eq!(b.hold(run(1, 4)), 0);
        assert_eq!(b.hold(run(2, 4)), 0);
        // 8 + 4 > 10: the new run is dropped, the two held stay.
        assert_eq!(b.hold(run(3, 4)), 4);
        assert_eq!(
            b.stats(),
            HeldStats {
                held: 8,
                held_runs: 2,
                dropped: 4
            }
        );
        // A run that still fits is held.
        assert_eq!(b.hold(run(4, 2)), 0);
        assert_eq!(b.stats().held, 10);
    }

    #[test]
    fn runs_come_back_oldest_first_and_a_failed_write_goes_back_in_front() {
        let b = CollectBuffer::with_capacity(100);
        b.hold(run(1, 1));
        b.hold(run(2, 1));
        let first = b.take_oldest().map(|r| r[0].meter_id);
        assert_eq!(first, Some(1));
        b.put_back(run(1, 1));
        let order: Vec<i64> =
            std::iter::from_fn(|| b.take_oldest().map(|r| r[0].meter_id)).collect();
        assert_eq!(order, [1, 2]);
        assert_eq!(b.stats().held, 0);
    }

    #[test]
    fn the_last_meter_list_is_remembered_and_filtered() {
        let b = CollectBuffer::new();
        assert!(b.meters(None).is_none());
        let m = |id| MeterRow {
            id,
            device_instance: id as i32,
            address: "127.0.0.1:47808".into(),
            points: "[]".into(),
        };
        b.remember_meters(&[m(1), m(2)]);
        assert_eq!(b.meters(None).map(|v| v.len()), Some(2));
        assert_eq!(
            b.meters(Some(&[2]))
                .map(|v| v.iter().map(|m| m.id).collect::<Vec<_>>()),
            Some(vec![2])
        );
    }
}
