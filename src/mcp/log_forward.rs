//! Log notifications to the MCP client: a `tracing` layer that forwards
//! metersync's own events to the connected peer as `notifications/message`
//! once the client has sent `logging/setLevel`, only at or above that level,
//! and at most [`MAX_PER_SECOND`] a second (the excess is dropped and
//! counted in the next message).
//!
//! Guarantees: nothing is forwarded before `logging/setLevel`; only events
//! whose target is `metersync` (never the transport's own, which would loop);
//! the layer never blocks the code that logs (a bounded queue, dropped when
//! full); fields are the same as the stderr log's, which never hold a
//! password.

#![allow(deprecated)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::Peer;
use rmcp::RoleServer;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Most notifications sent per second.
pub const MAX_PER_SECOND: u32 = 20;
/// Queued notifications before new ones are dropped.
const QUEUE: usize = 256;

struct Sink {
    tx: mpsc::Sender<LoggingMessageNotificationParam>,
    /// The least severe level forwarded.
    min: Level,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn sink() -> std::sync::MutexGuard<'static, Option<Sink>> {
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The layer [`crate::logging::init`] installs.
pub fn layer() -> ForwardLayer {
    ForwardLayer
}

/// Starts (or retargets) forwarding to `peer` at `level` and above; the
/// forwarding task ends when the peer goes away.
pub fn set_peer_level(peer: Peer<RoleServer>, level: LoggingLevel) {
    let min = match level {
        LoggingLevel::Debug => Level::DEBUG,
        LoggingLevel::Info | LoggingLevel::Notice => Level::INFO,
        LoggingLevel::Warning => Level::WARN,
        _ => Level::ERROR,
    };
    let (tx, mut rx) = mpsc::channel::<LoggingMessageNotificationParam>(QUEUE);
    tokio::spawn(async move {
        let mut limit = RateWindow::new(std::time::Instant::now());
        while let Some(mut msg) = rx.recv().await {
            if !limit.admit(std::time::Instant::now()) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let dropped = DROPPED.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                if let serde_json::Value::Object(m) = &mut msg.data {
                    m.insert("dropped_before".into(), dropped.into());
                }
            }
            if peer.notify_logging_message(msg).await.is_err() {
                break;
            }
        }
    });
    *sink() = Some(Sink { tx, min });
}

/// At most [`MAX_PER_SECOND`] admissions per one-second window.
struct RateWindow {
    start: std::time::Instant,
    sent: u32,
}

impl RateWindow {
    fn new(now: std::time::Instant) -> Self {
        RateWindow {
            start: now,
            sent: 0,
        }
    }

    /// Whether one more message may go out at `now`.
    fn admit(&mut self, now: std::time::Instant) -> bool {
        if now.saturating_duration_since(self.start) >= std::time::Duration::from_secs(1) {
            self.start = now;
            self.sent = 0;
        }
        if self.sent >= MAX_PER_SECOND {
            return false;
        }
        self.sent += 1;
        true
    }
}

/// Forwards events to the peer set by [`set_peer_level`].
pub struct ForwardLayer;

#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("metersync") {
            return;
        }
        let guard = sink();
        let Some(s) = guard.as_ref() else { return };
        // Level ordering: ERROR < WARN < ... < TRACE; forward what is at
        // least as severe as the minimum.
        if *meta.level() > s.min {
            return;
        }
        let level = match *meta.level() {
            Level::ERROR => LoggingLevel::Error,
            Level::WARN => LoggingLevel::Warning,
            Level::INFO => LoggingLevel::Info,
            _ => LoggingLevel::Debug,
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut msg =
            LoggingMessageNotificationParam::new(level, serde_json::Value::Object(fields.0));
        msg.logger = Some(meta.target().to_string());
        if s.tx.try_send(msg).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn at_most_the_rate_per_second() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(t0);
        let admitted = (0..100).filter(|_| w.admit(t0)).count();
        assert_eq!(admitted, MAX_PER_SECOND as usize);
        assert!(!w.admit(t0 + Duration::from_millis(999)));
        assert!(w.admit(t0 + Duration::from_secs(1)));
    }
}
