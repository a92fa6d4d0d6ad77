//! A simulated WAN link on loopback, for benchmarks and tests: a TCP proxy
//! from 127.0.0.1:[`Link::port`] to a target port that delays every chunk
//! by a fixed one-way delay in each direction and counts what crosses it.
//!
//! What it guarantees:
//! - **Delay without a throughput cap**: each direction is a timestamped
//!   queue. A chunk read at `t` is written at `t + delay`, in order, while
//!   later chunks keep being read, so a stream that waits for no answer
//!   flows at nearly loopback speed and only waits for answers pay the
//!   round-trip time (`2 × delay`). The queue holds at most
//!   [`QUEUE_CHUNKS`] chunks per direction (64 KiB each at most), which
//!   then slows the sender, as a full TCP window does.
//! - **Round trips counted**: per connection, a round trip is the client
//!   speaking again after the server has spoken to it (the first client
//!   message counts one, and so does a closing Terminate). The server "has
//!   spoken" from the moment its delayed bytes are handed to the client, so
//!   pipelined client bytes sent while an answer is still in flight on the
//!   link are not counted. Bytes each way and connections are counted too;
//!   the counters are per [`Link`], summed over its connections, atomic, and
//!   readable and resettable at any time. [`Link::wait_closed`] waits until
//!   no connection is open, so a count read after it includes a client's
//!   last bytes.
//! - Nothing panics on network input: a failed read or write closes that
//!   connection only. Dropping the [`Link`] closes every connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunks waiting on the link per direction and connection before the
/// sender is slowed down.
pub const QUEUE_CHUNKS: usize = 1024;

/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;

/// What crossed a [`Link`] since it started or was last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Times a client spoke after the server had spoken (the first client
    /// message of a connection counts one).
    pub round_trips: u64,
    /// Bytes from the clients to the server.
    pub bytes_up: u64,
    /// Bytes from the server to the clients.
    pub bytes_down: u64,
    /// Connections accepted.
    pub connections: u64,
}

#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
}

/// Keeps [`Counters::open`] true to the connections running, however a
/// connection's task ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The proxy; dropped, it stops accepting and closes its connections.
pub struct Link {
    /// The loopback port clients connect to.
    pub port: u16,
    delay: Duration,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl Link {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`, delaying each
    /// chunk by `one_way_delay` in each direction (a round-trip time of
    /// twice that). Must be called inside a tokio runtime.
    ///
    /// Fails when no loopback port can be bound.
    pub async fn start(target: u16, one_way_delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let (c, s) = (counters.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(e) => {
                            tracing::debug!("link: accept failed: {e}");
                            continue;
                        }
                    },
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                c.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(c.clone());
                let (c, s) = (c.clone(), s.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = connection(inbound, target, one_way_delay, c) => {}
                    }
                });
            }
        });
        Ok(Link {
            port,
            delay: one_way_delay,
            counters,
            stop,
        })
    }

    /// The one-way delay per chunk.
    pub fn one_way_delay(&self) -> Duration {
        self.delay
    }

    /// The counts so far.
    pub fn counts(&self) -> LinkCounts {
        let c = &self.counters;
        LinkCounts {
            round_trips: c.round_trips.load(Ordering::SeqCst),
            bytes_up: c.bytes_up.load(Ordering::SeqCst),
            bytes_down: c.bytes_down.load(Ordering::SeqCst),
            connections: c.connections.load(Ordering::SeqCst),
        }
    }

    /// Connections open through the link now.
    pub fn open_connections(&self) -> u64 {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open through the link (every client's
    /// last bytes counted), for at most `within`. Returns whether that
    /// happened.
    pub async fn wait_closed(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.open_connections() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Sets every count back to zero and returns the counts before.
    pub fn reset(&self) -> LinkCounts {
        let c = &self.counters;
        LinkCounts {
            round_trips: c.round_trips.swap(0, Ordering::SeqCst),
            bytes_up: c.bytes_up.swap(0, Ordering::SeqCst),
            bytes_down: c.bytes_down.swap(0, Ordering::SeqCst),
            connections: c.connections.swap(0, Ordering::SeqCst),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Which way a chunk travels.
#[derive(Clone, Copy)]
enum Way {
    Up,
    Down,
}

/// One client connection: connects to the target and runs both directions
/// until both are done (or one fails).
async fn connection(inbound: TcpStream, target: u16, delay: Duration, c: Arc<Counters>) {
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    // The server has spoken (and was delivered) since the client last spoke;
    // true at first so the first client message counts one round trip.
    let server_spoke = Arc::new(AtomicBool::new(true));
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let up = direction(ir, ow, delay, Way::Up, server_spoke.clone(), c.clone());
    let down = direction(or, iw, delay, Way::Down, server_spoke, c);
    tokio::join!(up, down);
}

/// Reads `from` into a timestamped queue and writes each chunk to `to` at
/// its due time, in order. An end of stream is forwarded (after the chunks
/// before it) as a write shutdown.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    way: Way,
    server_spoke: Arc<AtomicBool>,
    c: Arc<Counters>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let spoke = server_spoke.clone();
    let counters = c.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = Instant::now() + delay;
            match way {
                Way::Up => {
                    counters.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                    if spoke.swap(false, Ordering::SeqCst) {
                        counters.round_trips.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Way::Down => {
                    counters.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            let chunk = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
            if tx.send((due, chunk)).await.is_err() {
                return;
            }
        }
        // Dropping `tx` ends the writer after the queued chunks.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            // Set before the bytes reach the client: once they have, the
            // client may answer (and be read) before this task runs again.
            if let Way::Down = way {
                server_spoke.store(true, Ordering::SeqCst);
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
