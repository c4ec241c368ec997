//! Accept loops: one per configured listener.
//!
//! Back-pressure is explicit: a listener takes a connection slot *before*
//! calling accept, so at `max_connections` it simply stops accepting and new
//! clients wait in the kernel's backlog instead of being accepted and
//! dropped. Shutdown is designed in: on drain the loop stops, its socket is
//! closed, and the connections it spawned are tracked until they finish or
//! the drain deadline forces them closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mtlsd_reload::MaterialStore;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Direction, ListenerConfig, Protocol};
use crate::connections::{ConnectionRegistry, Registration};
pub use crate::counting::{ActiveConnection, ListenerStats};
use crate::metrics::RequestMetrics;
use crate::peers::PeerBook;
use crate::protocols::pool::PoolSlot;
use crate::protocols::{grpc, http, mariadb, tcp};

/// What every connection of a listener needs. The listener's settings can
/// be swapped by a reload; each connection takes one snapshot of them.
#[derive(Debug)]
pub struct ListenerContext {
    pub config: ArcSwap<ListenerConfig>,
    pub store: Arc<MaterialStore>,
    pub stats: Arc<ListenerStats>,
    pub connections: Arc<ConnectionRegistry>,
    pub peers: Arc<PeerBook>,
    pub metrics: Arc<RequestMetrics>,
    /// Pooled upstream clients of the L7 modes.
    pub pool: PoolSlot,
    /// Cancelled when the daemon starts draining (L7 modes send GOAWAY).
    pub draining: CancellationToken,
    /// One permit per connection that may be open at once.
    slots: Arc<Semaphore>,
}

impl ListenerContext {
    pub fn new(
        config: ListenerConfig,
        store: Arc<MaterialStore>,
        connections: Arc<ConnectionRegistry>,
        peers: Arc<PeerBook>,
        metrics: Arc<RequestMetrics>,
        draining: CancellationToken,
    ) -> Self {
        Self {
            peers,
            metrics,
            pool: PoolSlot::default(),
            draining,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config: ArcSwap::from_pointee(config),
            store,
            stats: Arc::default(),
            connections,
        }
    }

    pub fn name(&self) -> String {
        self.config.load().name.clone()
    }

    /// Registers an established connection's verified peer, so a trust
    /// change can re-judge it; dropping the registration unregisters.
    /// `judged_under` is the generation whose policy admitted the peer: if
    /// a reload published another since, the peer is judged again now (the
    /// re-judging of that reload ran before this connection registered).
    pub fn register(
        &self,
        listener: &ListenerConfig,
        peer: SocketAddr,
        chain: Arc<[CertificateDer<'static>]>,
        judged_under: u64,
    ) -> Registration {
        let registration = self.connections.register(&listener.name, peer, chain);
        let current = self.store.current();
        if current.number() != judged_under {
            self.connections.judge_late(&registration, &current);
        }
        registration
    }

    /// Applies new settings to connections accepted from now on. A lower
    /// `max_connections` takes effect as open connections close.
    pub fn update(&self, next: ListenerConfig) {
        let old = self.config.load().max_connections;
        let new = next.max_connections;
        if new > old {
            self.slots.add_permits(new - old);
        } else if new < old {
            let mut owed = old - new;
            owed -= self.slots.forget_permits(owed);
            if owed > 0 {
                // Take the rest back as connections finish.
                let slots = self.slots.clone();
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many(owed as u32).await {
                        permits.forget();
                    }
                });
            }
        }
        self.config.store(Arc::new(next));
    }
}

/// Signals shared by all listeners of one daemon.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Stop accepting.
    pub stop_accepting: CancellationToken,
    /// Close whatever is still open (drain deadline passed).
    pub force_close: CancellationToken,
    pub connections: TaskTracker,
}

/// Binds `config.listen`. Nothing is accepted until [`accept_loop`] runs.
pub async fn bind(config: &ListenerConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Accepts until `stop` (this listener removed) or the daemon stops.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    life: Lifecycle,
    stop: CancellationToken,
) {
    let name = ctx.name();
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            () = life.stop_accepting.cancelled() => break,
            slot = ctx.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            () = life.stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(listener = %name, %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let ctx = ctx.clone();
        let force_close = life.force_close.clone();
        let active = ctx.stats.connection_opened();
        life.connections.spawn(async move {
            let _active = active;
            let serve = serve(ctx, stream, peer);
            tokio::select! {
                () = serve => {}
                () = force_close.cancelled() => {}
            }
            drop(slot);
        });
    }
    tracing::debug!(listener = %name, "stopped accepting");
}

async fn serve(ctx: Arc<ListenerContext>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let config = ctx.config.load_full();
    match (config.protocol, config.direction) {
        (Protocol::Tcp, Direction::Inbound) => {
            tcp::serve_inbound(&ctx, &config, stream, peer).await
        }
        (Protocol::Tcp, Direction::Outbound) => {
            tcp::serve_outbound(&ctx, &config, stream, peer).await
        }
        (Protocol::Grpc, Direction::Inbound) => {
            grpc::serve_inbound(ctx, config, stream, peer).await
        }
        (Protocol::Grpc, Direction::Outbound) => {
            grpc::serve_outbound(ctx, config, stream, peer).await
        }
        (Protocol::Http, Direction::Inbound) => {
            http::serve_inbound(ctx, config, stream, peer).await
        }
        (Protocol::Mariadb, Direction::Inbound) => {
            mariadb::serve_inbound(&ctx, &config, stream, peer).await
        }
        (Protocol::Mariadb, Direction::Outbound) => {
            mariadb::serve_outbound(&ctx, &config, stream, peer).await
        }
        (other, _) => {
            // Validation refuses protocols that are not served yet.
            tracing::error!(listener = %config.name, protocol = other.as_str(), "protocol not served");
        }
    }
}
