//! The anchor the upload benchmarks measure against (`examples/bench_upload.rs`,
//! `bench_wan.rs`, `bench_fleet.rs`): a raw binary COPY pipe from one database
//! to another, in one transaction of the receiving side, doing nothing else
//! (no delete, no journal, no checks). One copy, so every benchmark compares
//! with the same thing.

use futures::SinkExt;
use tokio_postgres::Client;

/// Streams `copy_out` (a `COPY (…) TO STDOUT (FORMAT binary)`) run on `from`
/// into `copy_in` (a `COPY … FROM STDIN (FORMAT binary)`) run on `to`, inside
/// one transaction of `to` (through a transaction-mode pooler the COPY's
/// prepared statement must stay on one server connection).
///
/// Returns the rows the receiving COPY took; fails as either side does.
pub async fn raw_copy_pipe(
    from: &Client,
    to: &Client,
    copy_out: &str,
    copy_in: &str,
) -> Result<u64, tokio_postgres::Error> {
    to.batch_execute("BEGIN").await?;
    let out = from.copy_out(copy_out).await?;
    let sink = to.copy_in(copy_in).await?;
    let mut sink = std::pin::pin!(sink);
    // send_all flushes per buffer, not per row.
    sink.send_all(&mut std::pin::pin!(out)).await?;
    let n = sink.as_mut().finish().await?;
    to.batch_execute("COMMIT").await?;
    Ok(n)
}
