//! The daemon's lifecycle: load, bind, serve, reload, drain.
//!
//! Start-up is all-or-nothing. Material is validated before any socket is
//! bound, and every socket (listeners and admin) is bound before any
//! accepts, so a bad file or a taken port means the process exits with
//! nothing half-started. After that, the [`Reloader`] task owns changes.
//! Shutdown stops every accept loop first (closing the ports), then waits
//! for open connections up to the drain deadline, then closes what remains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mtlsd_reload::{Generation, MaterialErrors, MaterialStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, ExpiryConfig, ListenerConfig};
use crate::connections::ConnectionRegistry;
use crate::listener::{self, Lifecycle, ListenerContext, ListenerStats};
use crate::metrics::{RequestMetrics, StateCollector};
use crate::peers::PeerBook;
use crate::reloading::{AuditLog, ReloadMetrics, ReloadOutcome, ReloadRequest, Reloader, Trigger};

/// Why start-up stopped. The OS error is each variant's source, not part
/// of its message: `{:#}` prints the chain, so it appears once.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Material(#[from] MaterialErrors),
    #[error("listener '{name}': cannot listen on {addr}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin endpoint: cannot listen on {addr}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the audit log {path}")]
    Audit {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("{cert}: {reason}; install a new certificate before starting mtlsd")]
    OwnCertificateRevoked {
        cert: std::path::PathBuf,
        reason: String,
    },
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections still open at the deadline, closed by force.
    pub forced: usize,
}

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
    expiry: Mutex<ExpiryConfig>,
    last_reload: Mutex<Option<(SystemTime, ReloadOutcome)>>,
    pub life: Lifecycle,
    accept_loops: TaskTracker,
    listeners: Mutex<BTreeMap<String, (SocketAddr, Arc<ListenerContext>)>>,
}

/// A listener's accept loop, as the reloader holds it.
#[derive(Debug)]
pub struct BoundListener {
    pub ctx: Arc<ListenerContext>,
    /// Stops this listener only (removal or re-address).
    pub stop: CancellationToken,
}

impl DaemonState {
    fn listeners(
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
            .map(|(name, (_, ctx))| (name.clone(), ctx.stats.clone()))
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
        *self.expiry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_expiry_config(&self, config: ExpiryConfig) {
        *self.expiry.lock().unwrap_or_else(|p| p.into_inner()) = config;
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
            direction = %config.direction,
            protocol = config.protocol.as_str(),
            addr = %addr,
            upstream = %config.upstream,
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

/// A started daemon: listeners bound and accepting.
#[derive(Debug)]
pub struct Running {
    state: Arc<DaemonState>,
    admin_addr: SocketAddr,
    reloads: mpsc::Sender<ReloadRequest>,
    stop_tasks: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    /// Validates the material `config` names, binds every socket, and
    /// starts accepting. Any failure returns before anything accepts.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        Self::start_with_env(config, std::env::vars().collect()).await
    }

    /// Like [`Running::start`]; `env` is what reloads apply as `MTLSD_`
    /// overrides when they re-read the config file.
    pub async fn start_with_env(
        config: &Config,
        env: Vec<(String, String)>,
    ) -> Result<Self, StartError> {
        let generation = Generation::load(&config.material_spec(), SystemTime::now())?;
        if let Some(reason) = generation.own_revocation() {
            return Err(StartError::OwnCertificateRevoked {
                cert: config.identity.cert.clone(),
                reason: reason.to_owned(),
            });
        }
        if let Some(inventory) = generation.inventory() {
            for warning in config.role_warnings(inventory) {
                tracing::warn!("{warning}");
            }
        }
        let store = Arc::new(MaterialStore::new(generation));

        let audit =
            AuditLog::open(&config.reload.audit_log).map_err(|source| StartError::Audit {
                path: config.reload.audit_log.clone(),
                source,
            })?;
        let admin_socket = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| StartError::AdminBind {
                addr: config.admin_listen,
                source,
            })?;
        let mut sockets = Vec::new();
        for listener_config in config.listeners() {
            let socket =
                listener::bind(listener_config)
                    .await
                    .map_err(|source| StartError::Bind {
                        name: listener_config.name.clone(),
                        addr: listener_config.listen,
                        source,
                    })?;
            sockets.push((listener_config.clone(), socket));
        }

        let metrics = prometheus::Registry::new();
        let reload_metrics = ReloadMetrics::register(&metrics)?;
        let request_metrics = Arc::new(RequestMetrics::register(&metrics)?);
        let state = Arc::new(DaemonState {
            store,
            connections: ConnectionRegistry::new(&metrics)?,
            peers: Arc::new(PeerBook::default()),
            metrics,
            request_metrics,
            ready: AtomicBool::new(false),
            started_at: SystemTime::now(),
            expiry: Mutex::new(config.expiry),
            last_reload: Mutex::new(None),
            life: Lifecycle {
                stop_accepting: CancellationToken::new(),
                force_close: CancellationToken::new(),
                connections: TaskTracker::new(),
            },
            accept_loops: TaskTracker::new(),
            listeners: Mutex::new(BTreeMap::new()),
        });
        state
            .metrics
            .register(Box::new(StateCollector::new(Arc::downgrade(&state))?))?;
        let mut bound = BTreeMap::new();
        for (listener_config, socket) in sockets {
            let ctx = state.new_context(listener_config.clone());
            bound.insert(
                listener_config.name.clone(),
                state.spawn_listener(socket, ctx, &listener_config),
            );
        }

        let stop_tasks = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (reloads, requests) = mpsc::channel(16);
        let reloader = Reloader::new(
            state.clone(),
            config.clone(),
            bound,
            audit,
            reload_metrics,
            env,
        );
        tasks.spawn(reloader.run(requests, stop_tasks.clone()));

        let admin_addr = admin_socket.local_addr().unwrap_or(config.admin_listen);
        tracing::info!(addr = %admin_addr, tls = config.admin_tls.is_some(), "admin endpoint listening");
        tasks.spawn(admin::serve(
            admin_socket,
            admin::AdminState {
                daemon: state.clone(),
                reloads: reloads.clone(),
                tls: config.admin_tls.is_some(),
            },
            stop_tasks.clone(),
        ));

        tasks.spawn(crate::expiry_watch::run(state.clone(), stop_tasks.clone()));
        state.ready.store(true, Ordering::SeqCst);

        Ok(Self {
            state,
            admin_addr,
            reloads,
            stop_tasks,
            tasks,
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.state.listeners().get(listener).map(|(addr, _)| *addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A listener's counters.
    pub fn stats(&self, listener: &str) -> Option<Arc<ListenerStats>> {
        self.state
            .listeners()
            .get(listener)
            .map(|(_, ctx)| ctx.stats.clone())
    }

    pub fn store(&self) -> &Arc<MaterialStore> {
        &self.state.store
    }

    pub fn state(&self) -> &Arc<DaemonState> {
        &self.state
    }

    /// Connections currently open across all listeners.
    pub fn open_connections(&self) -> usize {
        self.state.life.connections.len()
    }

    /// Runs one reload attempt and returns its outcome.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.reloads
            .send(ReloadRequest {
                trigger,
                reply: Some(reply),
            })
            .await
            .ok()?;
        outcome.await.ok()
    }

    /// Stops accepting, waits up to `deadline` for open connections, then
    /// closes the rest.
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        let life = self.state.life.clone();
        self.state.ready.store(false, Ordering::SeqCst);
        life.stop_accepting.cancel();
        self.stop_tasks.cancel();
        while self.tasks.join_next().await.is_some() {}
        // Once no accept loop runs, no connection can be added.
        self.state.accept_loops.close();
        self.state.accept_loops.wait().await;
        life.connections.close();
        let open = life.connections.len();
        if open > 0 {
            tracing::info!(open, ?deadline, "draining open connections");
        }
        let forced = match tokio::time::timeout(deadline, life.connections.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let forced = life.connections.len();
                tracing::warn!(
                    forced,
                    "drain deadline passed; closing remaining connections"
                );
                life.force_close.cancel();
                life.connections.wait().await;
                forced
            }
        };
        DrainOutcome { forced }
    }
}
