//! What this process knows about each database's availability, and how
//! long a caller may wait for a connection because of it.
//!
//! Guarantees:
//! - a side is *down* from its first failed connection (transient cause)
//!   until a connection succeeds; the start and the end of an outage are
//!   logged once each, at WARN and INFO;
//! - the [`Patience`] rule ([`SideHealth::retries_for`]) is the one place
//!   that decides between the retry round and a single attempt: background
//!   work and a side last seen up get the round; a side known down (or, for
//!   interactive callers, never reached) gets one attempt, so a tool call
//!   answers within `DB_CONNECTION_TIMEOUT_MS`;
//! - outage messages say since when and where the data is ([`data_note`]).

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Side;

/// How long a caller may wait for a connection (see [`crate::db::Databases::get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Background work (the daemon's jobs): the retry round, except while
    /// the side is known down, when one attempt is made (the job's next
    /// tick is the retry).
    Background,
    /// Someone is waiting (an MCP tool, a one-shot command): the retry
    /// round only when the side was last seen up (a restart mid-work); one
    /// attempt when it is known down or was never reached.
    Interactive,
    /// Never wait: one attempt (the collector, which holds its readings in
    /// memory instead of waiting for the local database).
    Quick,
}

impl Patience {
    pub(crate) fn code(self) -> u8 {
        match self {
            Patience::Background => 0,
            Patience::Interactive => 1,
            Patience::Quick => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Self {
        match c {
            0 => Patience::Background,
            2 => Patience::Quick,
            _ => Patience::Interactive,
        }
    }
}

tokio::task_local! {
    /// The patience of the task running now, when it overrides the default.
    static PATIENCE: Patience;
}

/// Runs `f` with every checkout inside it (on this task) using `patience`
/// instead of the [`Databases`] default. The collector runs its database
/// steps with [`Patience::Quick`] this way, without the engines it calls
/// (the run journal) needing a parameter.
pub async fn with_patience<F: Future>(patience: Patience, f: F) -> F::Output {
    PATIENCE.scope(patience, f).await
}

/// The patience of the task running now: its [`with_patience`] override,
/// else `default`.
pub(crate) fn current(default: Patience) -> Patience {
    PATIENCE.try_with(|p| *p).unwrap_or(default)
}

/// What this process last saw of one side.
#[derive(Debug, Clone)]
enum Seen {
    /// Never tried.
    Unknown,
    /// The last checkout succeeded.
    Up,
    /// Connections fail since `since`; `cause` is the last failure.
    Down {
        since: DateTime<Utc>,
        started: Instant,
        cause: String,
    },
}

/// A known outage of one side, for messages and status.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Outage {
    /// When the first failed connection was seen (RFC 3339, UTC).
    pub since: String,
    /// How long ago that was, in seconds.
    pub for_s: u64,
    /// The last connection error.
    pub last_error: String,
}

/// Where the data is while `side` is down, for outage messages.
pub(crate) fn data_note(side: Side) -> String {
    match side {
        Side::Remote => "the backlog is safe in the local database and is uploaded when the remote returns".to_string(),
        Side::Local => format!(
            "readings already stored are safe on its disk; the daemon holds new readings in memory (up to {}) and writes them when it returns",
            crate::collect_buffer::MAX_HELD_READINGS
        ),
    }
}

/// One side's availability as this process saw it.
#[derive(Debug)]
pub(crate) struct SideHealth {
    side: Side,
    endpoint: String,
    seen: Mutex<Seen>,
}

impl SideHealth {
    /// A side never tried.
    pub(crate) fn new(side: Side, endpoint: String) -> Self {
        SideHealth {
            side,
            endpoint,
            seen: Mutex::new(Seen::Unknown),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().map(|g| g.clone()).unwrap_or(Seen::Unknown)
    }

    /// Whether the side is known down.
    pub(crate) fn is_down(&self) -> bool {
        matches!(self.seen(), Seen::Down { .. })
    }

    /// The outage this side is in, if it is known down.
    pub(crate) fn outage(&self) -> Option<Outage> {
        match self.seen() {
            Seen::Down {
                since,
                started,
                cause,
            } => Some(Outage {
                since: since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                for_s: started.elapsed().as_secs(),
                last_error: cause,
            }),
            _ => None,
        }
    }

    /// Records a successful connection: logs the end of an outage once.
    pub(crate) fn mark_up(&self) {
        if let Ok(mut g) = self.seen.lock() {
            if let Seen::Down { started, .. } = &*g {
                tracing::info!(
                    side = %self.side, endpoint = %self.endpoint,
                    outage_s = started.elapsed().as_secs(),
                    "{} database is back", self.side
                );
            }
            *g = Seen::Up;
        }
    }

    /// Records a failed connection: logs the start of an outage once.
    pub(crate) fn mark_down(&self, cause: &str) {
        if let Ok(mut g) = self.seen.lock() {
            match &mut *g {
                Seen::Down { cause: c, .. } => *c = cause.to_string(),
                _ => {
                    tracing::warn!(
                        side = %self.side, endpoint = %self.endpoint,
                        "{} database is down: {cause}; {}", self.side, data_note(self.side)
                    );
                    *g = Seen::Down {
                        since: Utc::now(),
                        started: Instant::now(),
                        cause: cause.to_string(),
                    };
                }
            }
        }
    }

    /// How many retries a checkout with `patience` gets now.
    pub(crate) fn retries_for(&self, patience: Patience, max_retries: u32) -> u32 {
        match (patience, self.seen()) {
            (Patience::Quick, _) => 0,
            (Patience::Background, Seen::Down { .. }) => 0,
            (Patience::Background, _) => max_retries,
            (Patience::Interactive, Seen::Up) => max_retries,
            (Patience::Interactive, _) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_round_is_for_background_work_and_sides_last_seen_up() {
        let h = SideHealth::new(Side::Remote, "db:5432".into());
        // Never reached: background work gets the round, a person does not.
        assert_eq!(h.retries_for(Patience::Background, 5), 5);
        assert_eq!(h.retries_for(Patience::Interactive, 5), 0);
        assert_eq!(h.retries_for(Patience::Quick, 5), 0);
        h.mark_up();
        assert_eq!(h.retries_for(Patience::Interactive, 5), 5);
        assert!(h.outage().is_none());
        h.mark_down("refused");
        h.mark_down("refused again");
        assert_eq!(h.retries_for(Patience::Background, 5), 0);
        assert_eq!(h.retries_for(Patience::Interactive, 5), 0);
        let o = h.outage().expect("known down");
        assert_eq!(o.last_error, "refused again");
        assert!(o.since.ends_with('Z'));
        h.mark_up();
        assert!(!h.is_down());
    }

    #[tokio::test]
    async fn a_task_can_override_the_default_patience() {
        assert_eq!(current(Patience::Background), Patience::Background);
        let inside = with_patience(Patience::Quick, async { current(Patience::Background) }).await;
        assert_eq!(inside, Patience::Quick);
    }
}
