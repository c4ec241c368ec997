//! What every connection of one listener shares: its settings (swapped by
//! a reload; each connection takes one snapshot), the connection slots that
//! give back-pressure, the [`Handshaker`] the TLS layer needs, the request
//! metrics, the drain signal and the pooled upstream clients.
//!
//! A leaf of the data path: the accept loop (`listener`) builds it and the
//! protocols read it; it imports neither, so the two do not import each
//! other.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mtlsd_reload::MaterialStore;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ListenerConfig;
use crate::connections::ConnectionRegistry;
use crate::counting::ListenerStats;
use crate::metrics::RequestMetrics;
use crate::peers::PeerBook;
use crate::transport::handshake::Handshaker;
use crate::transport::pool::PoolSlot;

#[derive(Debug)]
pub struct ListenerContext {
    pub config: ArcSwap<ListenerConfig>,
    /// Material, counters, peer book and registry: what handshakes need.
    pub handshaker: Handshaker,
    pub metrics: Arc<RequestMetrics>,
    /// Pooled upstream clients of the L7 modes.
    pub pool: PoolSlot,
    /// Cancelled when the daemon starts draining (L7 modes send GOAWAY).
    pub draining: CancellationToken,
    /// One permit per connection that may be open at once.
    pub(crate) slots: Arc<Semaphore>,
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
            handshaker: Handshaker {
                store,
                stats: Arc::default(),
                peers,
                connections,
            },
            metrics,
            pool: PoolSlot::default(),
            draining,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config: ArcSwap::from_pointee(config),
        }
    }

    pub fn name(&self) -> String {
        self.config.load().name.clone()
    }

    /// The material in force.
    pub fn store(&self) -> &Arc<MaterialStore> {
        &self.handshaker.store
    }

    /// This listener's connection, handshake and byte counters.
    pub fn stats(&self) -> &Arc<ListenerStats> {
        &self.handshaker.stats
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
