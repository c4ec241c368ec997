//! A TCP relay to put between two parties of a test: counts the
//! connections it carries, can freeze them (bytes stop moving both ways,
//! the sockets stay open: a host gone without a FIN) and can hold new
//! ones (accepted, but nothing forwarded until released: a handshake that
//! takes as long as the test wants).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub struct Relay {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    frozen: Arc<AtomicBool>,
    hold: watch::Sender<bool>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (hold, held) = watch::channel(false);
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            open: Arc::default(),
            frozen: Arc::default(),
            hold,
        };
        let (accepted, open, frozen) = (
            relay.accepted.clone(),
            relay.open.clone(),
            relay.frozen.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (inbound, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                // Connections made while frozen are not frozen.
                frozen.store(false, Ordering::SeqCst);
                let (open, frozen, mut held) = (open.clone(), frozen.clone(), held.clone());
                tokio::spawn(async move {
                    let _ = held.wait_for(|hold| !*hold).await;
                    carry(inbound, upstream, &frozen).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        relay
    }

    /// From the next bytes on, every open connection swallows what it
    /// gets until its client closes it.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// New connections wait (accepted, nothing forwarded) until
    /// [`Relay::release`].
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn carry(mut inbound: tokio::net::TcpStream, upstream: SocketAddr, frozen: &AtomicBool) {
    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (mut a, mut b) = (vec![0u8; 16384], vec![0u8; 16384]);
    loop {
        let (n, from_client) = tokio::select! {
            n = inbound.read(&mut a) => (n, true),
            n = outbound.read(&mut b) => (n, false),
        };
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Swallow everything and close nothing until the client does.
            while let Ok(1..) = inbound.read(&mut a).await {}
            return;
        }
        let written = if from_client {
            outbound.write_all(&a[..n]).await
        } else {
            inbound.write_all(&b[..n]).await
        };
        if written.is_err() {
            return;
        }
    }
}
