//! What the daemon's parts share: the material store, the connection
//! registry, the peer book, the metrics registry, readiness, the last
//! reload and the expiry settings, and the listeners that are bound.
//!
//! It only *holds* state (and spawns accept loops for the listeners it
//! records); the daemon module wires the parts together, the reloader
//! writes the last outcome here, and the admin endpoint, status, the
//! expiry watch and the scrape-time metrics read it — none of them
//! imports another to get at it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mtlsd_reload::MaterialStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ExpiryConfig, ListenerConfig, MetricsConfig, PeersConfig};
use crate::connections::ConnectionRegistry;
use crate::listener::{self, Lifecycle, ListenerStats};
use crate::listener_context::ListenerContext;
use crate::metrics::RequestMetrics;
use crate::peers::PeerBook;
use crate::reload_report::ReloadOutcome;

/// What the data path, the admin endpoint and the reloader share.
#[derive(Debug)]
pub struct DaemonState {
    pub store: Arc<MaterialStore>,
    pub connections: Arc<ConnectionRegistry>,
    pub peers: Arc<PeerBook>,
    pub metrics: prometheus::Registry,
    pub request_metrics: Arc<RequestMetrics>,
    /// Set once every listener accepts; cleared when draining starts.
    pub ready: AtomicBool,
    pub started_at: SystemTime,
    reporting: Mutex<Reporting>,
    last_reload: Mutex<Option<(SystemTime, ReloadOutcome)>>,
    pub life: Lifecycle,
    accept_loops: TaskTracker,
    listeners: Mutex<BTreeMap<String, (SocketAddr, Arc<ListenerContext>)>>,
}

/// The settings that say what is reported about certificates and peers;
/// all of them apply live, so the reloader replaces them as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reporting {
    pub expiry: ExpiryConfig,
    pub metrics: MetricsConfig,
    pub peers: PeersConfig,
}

impl Reporting {
    pub fn of(config: &Config) -> Self {
        Self {
            expiry: config.expiry,
            metrics: config.metrics,
            peers: config.peers,
        }
    }
}

/// A listener's accept loop, as the reloader holds it.
#[derive(Debug)]
pub struct BoundListener {
    pub ctx: Arc<ListenerContext>,
    /// Stops this listener only (removal or re-address).
    pub stop: CancellationToken,
}

impl DaemonState {
    /// A state holding `store` and the shared parts, with no listener yet.
    pub(crate) fn new(
        store: Arc<MaterialStore>,
        connections: Arc<ConnectionRegistry>,
        metrics: prometheus::Registry,
        request_metrics: Arc<RequestMetrics>,
        reporting: Reporting,
    ) -> Self {
        Self {
            store,
            connections,
            peers: Arc::new(PeerBook::default()),
            metrics,
            request_metrics,
            ready: AtomicBool::new(false),
            started_at: SystemTime::now(),
            reporting: Mutex::new(reporting),
            last_reload: Mutex::new(None),
            life: Lifecycle {
                stop_accepting: CancellationToken::new(),
                force_close: CancellationToken::new(),
                connections: TaskTracker::new(),
            },
            accept_loops: TaskTracker::new(),
            listeners: Mutex::new(BTreeMap::new()),
        }
    }

    /// Waits until every accept loop has stopped (after `stop_accepting`).
    pub(crate) async fn accept_loops_stopped(&self) {
        self.accept_loops.close();
        self.accept_loops.wait().await;
    }

    pub(crate) fn listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, (SocketAddr, Arc<ListenerContext>)>> {
        // Only inserts, removes and lookups happen under this lock.
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn new_context(&self, config: ListenerConfig) -> Arc<ListenerContext> {
        Arc::new(ListenerContext::new(
            config,
            self.store.clone(),
            self.connections.clone(),
            self.peers.clone(),
            self.request_metrics.clone(),
            self.life.stop_accepting.clone(),
        ))
    }

    /// Every listener's name and counters.
    pub fn listener_stats(&self) -> Vec<(String, Arc<ListenerStats>)> {
        self.listeners()
            .iter()
            .map(|(name, (_, ctx))| (name.clone(), ctx.stats().clone()))
            .collect()
    }

    /// Every listener: name, bound address, settings, counters.
    pub fn listener_views(&self) -> Vec<(String, SocketAddr, Arc<ListenerContext>)> {
        self.listeners()
            .iter()
            .map(|(name, (addr, ctx))| (name.clone(), *addr, ctx.clone()))
            .collect()
    }

    pub fn expiry_windows(&self) -> mtlsd_expiry::ExpiryWindows {
        self.expiry_config().windows
    }

    pub fn expiry_config(&self) -> ExpiryConfig {
        self.reporting().expiry
    }

    pub fn reporting(&self) -> Reporting {
        *self.reporting.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_reporting(&self, reporting: Reporting) {
        *self.reporting.lock().unwrap_or_else(|p| p.into_inner()) = reporting;
    }

    pub(crate) fn record_reload(&self, outcome: &ReloadOutcome) {
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((SystemTime::now(), outcome.clone()));
    }

    /// When the last reload attempt ran and what it did.
    pub fn last_reload(&self) -> Option<(SystemTime, ReloadOutcome)> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts accepting on `socket` for `ctx`.
    pub(crate) fn spawn_listener(
        &self,
        socket: TcpListener,
        ctx: Arc<ListenerContext>,
        config: &ListenerConfig,
    ) -> BoundListener {
        let addr = socket.local_addr().unwrap_or(config.listen);
        tracing::info!(
            listener = %config.name,
            direction = %config.direction(),
            protocol = config.protocol().as_str(),
            addr = %addr,
            upstream = %config.upstream(),
            trust_domain = %config.trust_domain,
            "listening"
        );
        self.listeners()
            .insert(config.name.clone(), (addr, ctx.clone()));
        let stop = self.life.stop_accepting.child_token();
        self.accept_loops.spawn(listener::accept_loop(
            socket,
            ctx.clone(),
            self.life.clone(),
            stop.clone(),
        ));
        BoundListener { ctx, stop }
    }

    pub(crate) fn forget_listener(&self, name: &str) {
        self.listeners().remove(name);
    }
}
