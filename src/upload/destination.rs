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

use super::local::Reading;
use super::remote::{self, SendError, Sent};
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
}

/// The remote PostgreSQL (directly or through a transaction-mode pooler).
pub(super) struct PgDestination<'a> {
    db: &'a Databases,
    site_id: Option<&'a str>,
    /// Held for the whole call: a checkout per batch would cost the pool's
    /// recycle check, one more remote round trip per batch.
    client: Option<Object>,
}

impl<'a> PgDestination<'a> {
    /// A destination on `db`'s remote, tagging rows with `site_id`; connects
    /// on [`Destination::open`].
    pub fn new(db: &'a Databases, site_id: Option<&'a str>) -> Self {
        PgDestination {
            db,
            site_id,
            client: None,
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
}
