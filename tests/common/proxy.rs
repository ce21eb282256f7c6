//! A TCP proxy on a free loopback port that stands for one link: it
//! forwards to a target until told to cut the link (every connection
//! through it closed, new ones refused) or to stall it (bytes held, both
//! ways, connections kept). Runs on the test's tokio runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::redis::free_port;

pub struct Link {
    pub port: u16,
    /// Bumped by each cut: connections of an older generation close.
    generation: watch::Sender<u64>,
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Link {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy bind");
        let generation = watch::channel(0u64).0;
        let cut = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let accept = {
            let generation = generation.clone();
            let (cut, stalled) = (cut.clone(), stalled.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let mut gen = generation.subscribe();
                    let stalled = stalled.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        gen.borrow_and_update();
                        tokio::select! {
                            _ = pump(ri, wo, stalled.clone()) => {}
                            _ = pump(ro, wi, stalled) => {}
                            _ = gen.changed() => {}
                        }
                    });
                }
            })
        };
        Link {
            port,
            generation,
            cut,
            stalled,
            accept,
        }
    }

    /// Close every connection through the link and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Hold every byte (both ways) until [`Link::restore`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
