//! The daemon's lifecycle: load, bind, serve, drain.
//!
//! Start-up is all-or-nothing. Material is validated before any socket is
//! bound, and every listener is bound before any accepts, so a bad file or
//! a taken port means the process exits with nothing half-started. Shutdown
//! stops every accept loop first (closing the ports), then waits for open
//! connections up to the drain deadline, then closes what remains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mtlsd_reload::{Generation, MaterialErrors, MaterialStore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::listener::{self, Lifecycle, ListenerContext, ListenerStats};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Material(#[from] MaterialErrors),
    #[error("listener '{name}': cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections still open at the deadline, closed by force.
    pub forced: usize,
}

/// A started daemon: listeners bound and accepting.
#[derive(Debug)]
pub struct Running {
    store: Arc<MaterialStore>,
    addrs: BTreeMap<String, SocketAddr>,
    contexts: BTreeMap<String, Arc<ListenerContext>>,
    life: Lifecycle,
    accept_loops: JoinSet<()>,
}

impl Running {
    /// Validates the material `config` names, binds every listener, and
    /// starts accepting. Any failure returns before anything accepts.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let generation = Generation::load(&config.material_spec(), SystemTime::now())?;
        let store = Arc::new(MaterialStore::new(generation));
        Self::start_with_store(config, store).await
    }

    /// Like [`Running::start`], with material already loaded.
    pub async fn start_with_store(
        config: &Config,
        store: Arc<MaterialStore>,
    ) -> Result<Self, StartError> {
        let mut bound = Vec::new();
        for listener_config in config.listeners() {
            let socket =
                listener::bind(listener_config)
                    .await
                    .map_err(|source| StartError::Bind {
                        name: listener_config.name.clone(),
                        addr: listener_config.listen,
                        source,
                    })?;
            bound.push((listener_config.clone(), socket));
        }

        let life = Lifecycle {
            stop_accepting: CancellationToken::new(),
            force_close: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        let mut addrs = BTreeMap::new();
        let mut contexts = BTreeMap::new();
        let mut accept_loops = JoinSet::new();
        for (listener_config, socket) in bound {
            let addr = socket.local_addr().unwrap_or(listener_config.listen);
            tracing::info!(
                listener = %listener_config.name,
                direction = %listener_config.direction,
                protocol = listener_config.protocol.as_str(),
                addr = %addr,
                upstream = %listener_config.upstream,
                trust_domain = %listener_config.trust_domain,
                "listening"
            );
            addrs.insert(listener_config.name.clone(), addr);
            let ctx = Arc::new(ListenerContext {
                config: listener_config,
                store: store.clone(),
                stats: Default::default(),
            });
            contexts.insert(ctx.config.name.clone(), ctx.clone());
            accept_loops.spawn(listener::accept_loop(socket, ctx, life.clone()));
        }
        Ok(Self {
            store,
            addrs,
            contexts,
            life,
            accept_loops,
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.addrs.get(listener).copied()
    }

    /// A listener's counters.
    pub fn stats(&self, listener: &str) -> Option<&ListenerStats> {
        self.contexts.get(listener).map(|ctx| &ctx.stats)
    }

    pub fn store(&self) -> &Arc<MaterialStore> {
        &self.store
    }

    /// Connections currently open across all listeners.
    pub fn open_connections(&self) -> usize {
        self.life.connections.len()
    }

    /// Stops accepting, waits up to `deadline` for open connections, then
    /// closes the rest.
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        self.life.stop_accepting.cancel();
        while self.accept_loops.join_next().await.is_some() {}
        self.life.connections.close();
        let open = self.life.connections.len();
        if open > 0 {
            tracing::info!(open, ?deadline, "draining open connections");
        }
        let forced = match tokio::time::timeout(deadline, self.life.connections.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let forced = self.life.connections.len();
                tracing::warn!(
                    forced,
                    "drain deadline passed; closing remaining connections"
                );
                self.life.force_close.cancel();
                self.life.connections.wait().await;
                forced
            }
        };
        DrainOutcome { forced }
    }
}
