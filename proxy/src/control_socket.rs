//! The local control socket (`admin.socket`, default
//! `$RUNTIME_DIRECTORY/admin.sock`): the admin API ([`crate::admin`]) on a
//! unix socket, so that `mtlsd reload`, `status` and `rotation check`
//! reach the daemon without this host's client certificate. systemd's
//! `ExecReload=` does not get the service's credentials (a token PIN), and
//! material on disk may be refused by the daemon (a pinned bundle that no
//! longer matches); neither matters here.
//!
//! No TLS: the socket never leaves the host. The file is mode 0660, and
//! every connection is authorized by the kernel's word on its peer
//! (`SO_PEERCRED`): only uid 0 and the daemon's own uid are served; any
//! other gets a 403, a warning in the log and a count in
//! `mtlsd_admin_socket_connections_total{result="refused"}`.
//!
//! At start a socket file already at the path is removed only when nothing
//! answers on it (a daemon that died); when something does, start-up fails
//! naming the path. The file is removed when the daemon stops, if it is
//! still the one this daemon bound.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, Peer};

/// The socket file's mode: the daemon's user and group may connect (the
/// uid check then admits only root and the daemon's user).
pub const SOCKET_MODE: u32 = 0o660;

/// How long a refused client gets to send its request and read the 403.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the control socket could not be set up. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "admin.socket {path}: another mtlsd answers on it; two daemons cannot share one control \
         socket (stop the other one, or give this one its own admin.socket)"
    )]
    InUse { path: PathBuf },
    #[error("admin.socket {path}: exists and is not a socket; not removing it")]
    NotASocket { path: PathBuf },
    #[error("admin.socket {path}: cannot tell whether another mtlsd serves it")]
    Probe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin.socket {path}: cannot remove the stale socket of a daemon that is gone")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin.socket {path}: cannot listen on it")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin.socket {path}: cannot set its mode to 0660")]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The control socket's counters (registered with the daemon's metrics).
#[derive(Debug, Clone)]
pub struct ControlSocketMetrics {
    connections: IntCounterVec,
}

impl ControlSocketMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let connections = IntCounterVec::new(
            Opts::new(
                "mtlsd_admin_socket_connections_total",
                "Connections to the control socket (admin.socket) by result: accepted (uid 0 or \
                 mtlsd's own), refused (any other uid, or its credentials unreadable).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        Ok(Self { connections })
    }

    fn count(&self, result: &str) {
        self.connections.with_label_values(&[result]).inc();
    }
}

/// Whether something listens on the socket at `path`: `Ok` when it does,
/// `ConnectionRefused` when it is a dead daemon's. Non-blocking, so a
/// wedged daemon whose backlog is full counts as listening instead of
/// holding this start-up in `connect`.
fn probe(path: &Path) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == ErrorKind::WouldBlock
                || e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A bound control socket. Dropping it removes the file if it is still
/// the one bound here (a successor's socket at the same path stays).
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file bound here.
    file: (u64, u64),
    /// The daemon's own uid, admitted besides root.
    own_uid: u32,
}

impl ControlSocket {
    /// Binds `path` (mode 0660), replacing a stale socket of a dead daemon
    /// and refusing one that answers.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let at = || path.to_owned();
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketError::NotASocket { path: at() });
            }
            Ok(_) => match probe(path) {
                Ok(()) => return Err(SocketError::InUse { path: at() }),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(),
                        "admin socket: removing the stale socket of a daemon that is gone");
                    std::fs::remove_file(path)
                        .map_err(|source| SocketError::RemoveStale { path: at(), source })?;
                }
                Err(source) => return Err(SocketError::Probe { path: at(), source }),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(SocketError::Probe { path: at(), source }),
        }
        // bind() fails if the path was taken in the meantime: nobody
        // else's socket is ever replaced. The mode is set right after; until
        // then the uid check alone guards it.
        let listener =
            UnixListener::bind(path).map_err(|source| SocketError::Bind { path: at(), source })?;
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(source) => {
                let _ = std::fs::remove_file(path);
                return Err(SocketError::Mode { path: at(), source });
            }
        };
        // From here on, dropping `socket` removes the file.
        let socket = Self {
            listener,
            path: path.to_owned(),
            file: (meta.dev(), meta.ino()),
            own_uid: nix::unistd::geteuid().as_raw(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|source| SocketError::Mode { path: at(), source })?;
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.file)
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if self.still_ours()
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "admin socket: cannot remove it");
        }
    }
}

/// Accepts on the control socket until `stop`; the file goes when this
/// returns (or is dropped).
pub async fn serve(
    socket: ControlSocket,
    state: AdminState,
    metrics: ControlSocketMetrics,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = authorize(&stream, socket.own_uid);
        let state = state.clone();
        let stop = stop.clone();
        match peer {
            Ok(peer) => {
                metrics.count("accepted");
                tokio::spawn(async move {
                    tokio::select! {
                        () = admin::serve_http(state, stream, peer) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
            Err(refusal) => {
                metrics.count("refused");
                tracing::warn!(path = %socket.path.display(), uid = refusal.uid, pid = refusal.pid,
                    allowed_uids = %format!("0, {}", socket.own_uid),
                    "admin socket connection refused: only root and mtlsd's own user may use it");
                tokio::spawn(refuse(stream, refusal.answer(socket.own_uid)));
            }
        }
    }
    drop(socket);
}

/// A connection the uid check refused.
struct Refusal {
    uid: Option<u32>,
    pid: Option<i32>,
}

impl Refusal {
    fn answer(&self, own_uid: u32) -> String {
        match self.uid {
            Some(uid) => format!(
                "refused: uid {uid} may not use the control socket; run as root or as mtlsd's \
                 user (uid {own_uid})\n"
            ),
            None => "refused: the peer's credentials could not be read\n".to_owned(),
        }
    }
}

fn authorize(stream: &UnixStream, own_uid: u32) -> Result<Peer, Refusal> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == own_uid => Ok(Peer::Local { uid: cred.uid() }),
        Ok(cred) => Err(Refusal {
            uid: Some(cred.uid()),
            pid: cred.pid(),
        }),
        Err(e) => {
            tracing::debug!(error = %e, "admin socket: no peer credentials");
            Err(Refusal {
                uid: None,
                pid: None,
            })
        }
    }
}

/// Answers every request on a refused connection with 403 and `why`.
async fn refuse(stream: UnixStream, why: String) {
    let service = service_fn(move |_request| {
        let reply = admin::text(StatusCode::FORBIDDEN, &why);
        async move { Ok::<_, std::convert::Infallible>(reply) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, connection).await;
}
