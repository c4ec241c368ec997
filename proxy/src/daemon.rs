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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use mtlsd_reload::{Generation, MaterialErrors, MaterialStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::bootstrap::{Bootstrap, BootstrapMetrics};
use crate::config::Config;
use crate::connections::ConnectionRegistry;
use crate::control_socket::{ControlSocket, ControlSocketMetrics};
use crate::listener::{self, ListenerStats};
use crate::metrics::RequestMetrics;
use crate::reloading::{AuditLog, ReloadMetrics, ReloadOutcome, ReloadRequest, Reloader, Trigger};
use crate::scrape::StateCollector;
pub use crate::state::{BoundListener, DaemonState};

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
    #[error(transparent)]
    AdminSocket(#[from] crate::control_socket::SocketError),
    #[error("bootstrap endpoint: cannot listen on {addr}")]
    BootstrapBind {
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
    #[error("cannot start the thread that builds generations")]
    Builder(#[source] std::io::Error),
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

/// A started daemon: listeners bound and accepting.
#[derive(Debug)]
pub struct Running {
    state: Arc<DaemonState>,
    admin_addr: SocketAddr,
    admin_socket: Option<std::path::PathBuf>,
    bootstrap_addr: Option<SocketAddr>,
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
        let control_socket = match &config.admin_socket {
            Some(path) => Some(ControlSocket::bind(path)?),
            None => None,
        };
        let bootstrap_socket = match &config.bootstrap {
            Some(bootstrap) => Some(TcpListener::bind(bootstrap.listen).await.map_err(
                |source| StartError::BootstrapBind {
                    addr: bootstrap.listen,
                    source,
                },
            )?),
            None => None,
        };
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
        let connections = ConnectionRegistry::new(&metrics)?;
        let bootstrap_metrics = BootstrapMetrics::register(&metrics)?;
        let control_metrics = ControlSocketMetrics::register(&metrics)?;
        let state = Arc::new(DaemonState::new(
            store,
            connections,
            metrics,
            request_metrics,
            crate::state::Reporting::of(config),
        ));
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
        )
        .map_err(StartError::Builder)?;
        tasks.spawn(reloader.run(requests, stop_tasks.clone()));

        let admin_addr = admin_socket.local_addr().unwrap_or(config.admin_listen);
        tracing::info!(addr = %admin_addr, tls = config.admin_tls.is_some(), "admin endpoint listening");
        let admin_state = admin::AdminState {
            daemon: state.clone(),
            reloads: reloads.clone(),
            tls: config.admin_tls.is_some(),
        };
        let admin_socket_path = control_socket.as_ref().map(|s| s.path().to_owned());
        if let Some(socket) = control_socket {
            tracing::info!(path = %socket.path().display(), mode = "0660",
                "admin socket listening (root and mtlsd's own user)");
            tasks.spawn(crate::control_socket::serve(
                socket,
                admin_state.clone(),
                control_metrics,
                stop_tasks.clone(),
            ));
        }
        tasks.spawn(admin::serve(admin_socket, admin_state, stop_tasks.clone()));

        let mut bootstrap_addr = None;
        if let (Some(socket), Some(bootstrap)) = (bootstrap_socket, &config.bootstrap) {
            let addr = socket.local_addr().unwrap_or(bootstrap.listen);
            tracing::info!(%addr, requests_per_minute = bootstrap.requests_per_minute,
                "bootstrap endpoint listening (trust bundles over TLS, no client certificate)");
            bootstrap_addr = Some(addr);
            tasks.spawn(crate::bootstrap::serve(
                socket,
                Bootstrap::new(bootstrap.clone(), state.store.clone(), bootstrap_metrics),
                stop_tasks.clone(),
            ));
        }

        tasks.spawn(crate::expiry_watch::run(state.clone(), stop_tasks.clone()));
        state.ready.store(true, Ordering::SeqCst);

        Ok(Self {
            state,
            admin_addr,
            admin_socket: admin_socket_path,
            bootstrap_addr,
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

    /// The control socket's path, when `admin.socket` is on.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin_socket.as_deref()
    }

    /// Where the bootstrap endpoint listens, when `[bootstrap]` is on.
    pub fn bootstrap_addr(&self) -> Option<SocketAddr> {
        self.bootstrap_addr
    }

    /// A listener's counters.
    pub fn stats(&self, listener: &str) -> Option<Arc<ListenerStats>> {
        self.state
            .listeners()
            .get(listener)
            .map(|(_, ctx)| ctx.stats().clone())
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
        self.state.accept_loops_stopped().await;
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
