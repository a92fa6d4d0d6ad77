//! Where batches go: the remote side of the upload behind a small trait, so
//! the batch loop ([`super::batches`]) can be tested with failures injected
//! at each step (supabase/etl's `Destination` is the model).
//!
//! Delivery semantics, which the batch loop relies on:
//! - `send` is **idempotent on the reading key** `(meter_id, point,
//!   recorded_at)`: sending rows the destination already holds never doubles
//!   them; they come back as `already_present` (same value) or `conflicts`
//!   (another value, the destination's copy untouched);
//! - `Ok(sent)` means every row of the batch is accounted for exactly once:
//!   durably held (inserted or already present), in conflict, or rejected as
//!   bad data (`sent.rejected`, not held);
//! - `Err` means the outcome is **unknown**: none or all of the batch may be
//!   held. The caller keeps the rows local and may send them again after
//!   [`Destination::reconnect`], which the first rule makes safe. This is
//!   at-least-once delivery made exactly-once by the key.

use std::future::Future;

use deadpool_postgres::Object;

use tokio_util::sync::CancellationToken;

use super::local::Reading;
use super::remote::{self, SendError, Sent};
use super::stream::{self, ChunkLimits, StreamError, Streamed};
use super::UploadError;
use crate::config::Side;
use crate::db::{Databases, DbError};

/// The remote side of the upload.
pub(super) trait Destination {
    /// Prepares the destination for one upload (connects, checks the
    /// table). Called once, before the first batch.
    fn open(&mut self) -> impl Future<Output = Result<(), UploadError>> + Send;
    /// Sends one batch and commits it (see the module's semantics).
    fn send(&mut self, rows: &[Reading]) -> impl Future<Output = Result<Sent, SendError>> + Send;
    /// Replaces the connection after a failed or abandoned send.
    fn reconnect(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Forgets the connection: a send was abandoned mid-way (cancellation),
    /// so its state is unknown and it must not be reused.
    fn abandon(&mut self);
    /// Whether [`Destination::stream`] is supported.
    fn streams(&self) -> bool {
        false
    }
    /// Prepares the destination for streaming: like [`Destination::open`],
    /// but a destination may leave its checks to the first streamed chunk,
    /// pipelined with it (no round trip of their own).
    fn connect(&mut self) -> impl Future<Output = Result<(), UploadError>> + Send {
        self.open()
    }
    /// Streams one chunk of the backlog from `local` (see
    /// [`super::stream`]) and commits it on both sides, calling `sent` with
    /// the chunk's rows sent so far after each claim. `local` is closed,
    /// not returned to the pool, when this fails, so its transaction rolls
    /// back. After an error the destination must be opened again.
    fn stream(
        &mut self,
        local: Object,
        after: i64,
        limits: ChunkLimits,
        cancel: &CancellationToken,
        sent: &(dyn Fn(u64) + Sync),
    ) -> impl Future<Output = Result<Streamed, StreamError>> + Send {
        let _ = (local, after, limits, cancel, sent);
        async { Err(StreamError::Unsupported) }
    }
}

/// The remote PostgreSQL (directly or through a transaction-mode pooler).
pub(super) struct PgDestination<'a> {
    db: &'a Databases,
    site_id: Option<&'a str>,
    /// Held for the whole call.
    client: Option<Object>,
    /// The table's key is still to be checked (by the next streamed chunk).
    unchecked: bool,
}

impl<'a> PgDestination<'a> {
    /// A destination on `db`'s remote, tagging rows with `site_id`; connects
    /// on [`Destination::open`].
    pub fn new(db: &'a Databases, site_id: Option<&'a str>) -> Self {
        PgDestination {
            db,
            site_id,
            client: None,
            unchecked: false,
        }
    }

    /// Closes the connection instead of returning it to the pool: its state
    /// (a transaction left open, bytes in flight) is unknown.
    fn discard(&mut self) {
        if let Some(c) = self.client.take() {
            drop(Object::take(c));
        }
    }
}

fn not_connected() -> DbError {
    DbError::Query {
        side: Side::Remote,
        cause: "no remote connection (a bug in metersync: send before open/reconnect)".into(),
        transient: false,
    }
}

impl Destination for PgDestination<'_> {
    async fn open(&mut self) -> Result<(), UploadError> {
        let c = self
            .db
            .remote()
            .await
            .map_err(|source| UploadError::Start { source })?;
        remote::check_table(&c).await?;
        self.client = Some(c);
        self.unchecked = false;
        Ok(())
    }

    async fn connect(&mut self) -> Result<(), UploadError> {
        self.discard();
        let c = self
            .db
            .remote()
            .await
            .map_err(|source| UploadError::Start { source })?;
        self.client = Some(c);
        self.unchecked = true;
        Ok(())
    }

    async fn send(&mut self, rows: &[Reading]) -> Result<Sent, SendError> {
        let Some(c) = self.client.as_mut() else {
            return Err(SendError::Db(not_connected()));
        };
        let r = remote::send(c, rows, self.site_id).await;
        if matches!(r, Err(SendError::Db(_))) {
            self.discard();
        }
        r
    }

    async fn reconnect(&mut self) -> Result<(), DbError> {
        self.discard();
        self.client = Some(self.db.remote().await?);
        Ok(())
    }

    fn abandon(&mut self) {
        self.discard();
    }

    fn streams(&self) -> bool {
        true
    }

    async fn stream(
        &mut self,
        local: Object,
        after: i64,
        limits: ChunkLimits,
        cancel: &CancellationToken,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<Streamed, StreamError> {
        let local = Closing(Some(local));
        let Some(remote) = self.client.as_ref() else {
            return Err(StreamError::Remote {
                error: not_connected(),
                rows: 0,
            });
        };
        let Some(l) = local.0.as_ref() else {
            return Err(StreamError::Unsupported);
        };
        let check = self.unchecked;
        let r =
            stream::send_chunk(l, remote, self.site_id, after, limits, check, cancel, sent).await;
        match r {
            Ok(done) => {
                // A chunk that claimed nothing never reached the remote.
                self.unchecked &= done.rows == 0;
                local.keep();
                Ok(done)
            }
            Err(e) => {
                // Both transactions' states are unknown: close both
                // connections (the local one when `local` drops).
                self.discard();
                Err(e)
            }
        }
    }
}

/// A local connection closed when dropped (so an open transaction rolls
/// back on the server) unless [`Closing::keep`] returns it to the pool.
struct Closing(Option<Object>);

impl Closing {
    /// Returns the connection to the pool (its transaction has ended).
    fn keep(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(Object::take(c));
        }
    }
}
