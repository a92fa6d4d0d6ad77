//! A TCP proxy that freezes a link the way a hung WAN path does: once the
//! client sends a chosen byte string, nothing more is forwarded either way,
//! yet no connection is closed or reset. Only a deadline gets a client out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; dropped, it stops accepting (frozen connections stay open
/// until the test ends).
pub struct FreezingProxy {
    /// The port clients connect to.
    pub port: u16,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target` until a client sends
    /// `trigger` (within one read), then freezes every connection.
    pub async fn start(target: u16, trigger: &'static [u8]) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut si, mut so) = outbound.into_split();
                    let f2 = f.clone();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match ci.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if buf[..n].windows(trigger.len()).any(|w| w == trigger) {
                                f2.store(true, Ordering::SeqCst);
                            }
                            if f2.load(Ordering::SeqCst) {
                                // Hold the socket open, forward nothing.
                                std::future::pending::<()>().await;
                            }
                            if so.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match si.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if f.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            if co.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(FreezingProxy { port, frozen, task })
    }

    /// Whether the trigger was seen (the fault hit).
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
