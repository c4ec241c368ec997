//! A minimal HTTP/1 client for the daemon's admin API: the local control
//! socket (`admin.socket`) first, then the admin endpoint (`admin.listen`),
//! over mTLS when the config says `[admin] tls = true`.
//!
//! The socket needs no client certificate and loads nothing from disk, so
//! it works where the TCP path cannot: `ExecReload=` without the service's
//! credentials (a token PIN), or material on disk the daemon refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{
    ADMIN_CLIENT_TLS_USE, Config, DEFAULT_ADMIN_LISTEN, DEFAULT_CONFIG_PATH, UNIT_ADMIN_SOCKET,
};

/// What was tried on the control socket before the TCP path, for errors
/// of the TCP path (empty when no socket was tried or there was none).
#[derive(Debug, Default)]
pub(super) struct SocketNote(Option<String>);

impl SocketNote {
    fn add(&mut self, more: String) {
        self.0 = Some(match self.0.take() {
            Some(before) => format!("{before}; {more}"),
            None => more,
        });
    }
}

impl std::fmt::Display for SocketNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(note) => write!(f, "{note}; then "),
            None => Ok(()),
        }
    }
}

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdminError {
    #[error(
        "{socket}no mtlsd answered at {addr} ({source}); is it running, and is admin.listen {addr}?"
    )]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
        socket: SocketNote,
    },
    #[error("{socket}admin endpoint {addr}: {reason}")]
    Protocol {
        addr: SocketAddr,
        reason: String,
        socket: SocketNote,
    },
    #[error(
        "{socket}cannot load this host's TLS material to reach the mTLS admin endpoint: {reason}"
    )]
    Material { reason: String, socket: SocketNote },
    #[error("control socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
}

/// Where the daemon's admin API is and how to talk to it.
#[derive(Debug)]
pub(super) struct AdminTarget {
    /// The control socket to try first.
    socket: Option<PathBuf>,
    addr: SocketAddr,
    /// Loaded only when the TCP path is taken.
    config: Option<Config>,
    /// Why `--config` could not be used (then the defaults are), said
    /// when no daemon answers: the likely reason it was not found.
    config_problem: Option<String>,
}

/// Which way an answer came.
#[derive(Debug, Clone)]
pub(super) enum Via {
    Socket(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(path) => write!(f, "{}", path.display()),
            Self::Tcp(addr) => addr.fmt(f),
        }
    }
}

/// An answer of the daemon.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
    pub(super) via: Via,
}

/// `--admin` if given: that TCP address, nothing else. Otherwise the
/// control socket from the config (`admin.socket`, default
/// `$RUNTIME_DIRECTORY/admin.sock`; for the unit's own config file,
/// `/run/mtlsd/admin.sock`), then the config's admin.listen (else the
/// default). Nothing but the config is read here.
pub(super) fn resolve(admin: Option<SocketAddr>, config_path: &Path) -> AdminTarget {
    let (config, config_problem) = match Config::load(config_path) {
        Ok(config) => (Some(config), None),
        Err(e) => (
            None,
            Some(format!(
                "cannot use {} ({}), so the default admin address is tried",
                config_path.display(),
                crate::error_chain::root_cause(&e)
            )),
        ),
    };
    let socket = match (admin, &config) {
        (Some(_), _) => None,
        (None, Some(config)) => config
            .admin_socket
            .clone()
            .or_else(|| unit_socket(config_path)),
        // Unreadable or invalid: where the daemon would have put it.
        (None, None) => std::env::var_os("RUNTIME_DIRECTORY")
            .map(|dir| Path::new(&dir).join(crate::config::ADMIN_SOCKET_NAME))
            .filter(|p| p.is_absolute())
            .or_else(|| unit_socket(config_path)),
    };
    let addr = admin
        .or_else(|| config.as_ref().map(|c| c.admin_listen))
        .or_else(|| DEFAULT_ADMIN_LISTEN.parse().ok())
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9650)));
    AdminTarget {
        socket,
        addr,
        config,
        config_problem,
    }
}

/// The packaged unit's socket, for the unit's config file: an operator's
/// shell has no `$RUNTIME_DIRECTORY`, but the daemon under the unit has.
fn unit_socket(config_path: &Path) -> Option<PathBuf> {
    (config_path == Path::new(DEFAULT_CONFIG_PATH)).then(|| PathBuf::from(UNIT_ADMIN_SOCKET))
}

/// Sends `method path`: on the control socket when it exists and takes
/// the connection, else on the admin endpoint.
pub(super) async fn call(
    target: &AdminTarget,
    method: Method,
    path: &str,
) -> Result<Reply, AdminError> {
    let mut note = SocketNote(target.config_problem.clone());
    if let Some(socket) = &target.socket {
        match call_socket(socket, method.clone(), path).await {
            Ok(reply) => return Ok(reply),
            Err(SocketFailure::Absent) => {
                note.add(format!("no control socket at {}", socket.display()));
            }
            Err(SocketFailure::Unusable(why)) => {
                tracing::debug!(socket = %socket.display(), %why, "control socket unusable; trying the admin endpoint");
                note.add(format!(
                    "cannot use the control socket {}: {why}",
                    socket.display()
                ));
            }
            Err(SocketFailure::Broken(reason)) => {
                return Err(AdminError::Socket {
                    path: socket.clone(),
                    reason,
                });
            }
        }
    }
    call_tcp(target, method, path, note).await
}

/// How the control socket failed.
enum SocketFailure {
    /// No socket file: the daemon does not serve one (or is not running).
    Absent,
    /// It exists but this process may not use it: try TCP, and say why
    /// if that fails too.
    Unusable(String),
    /// Connected, then the exchange failed: the daemon's problem, not a
    /// reason to try elsewhere.
    Broken(String),
}

async fn call_socket(socket: &Path, method: Method, path: &str) -> Result<Reply, SocketFailure> {
    let stream = match UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SocketFailure::Absent),
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied (run as root or the mtlsd user)".to_owned()
                }
                std::io::ErrorKind::ConnectionRefused => {
                    "nothing listens on it (left by a daemon that is gone?)".to_owned()
                }
                _ => e.to_string(),
            };
            return Err(SocketFailure::Unusable(format!("cannot connect: {why}")));
        }
    };
    let (status, body) = request(stream, "localhost", method, path)
        .await
        .map_err(SocketFailure::Broken)?;
    if status == StatusCode::FORBIDDEN {
        // The daemon's uid check: not root, not its user.
        let why = String::from_utf8_lossy(&body).trim_end().to_owned();
        return Err(SocketFailure::Unusable(why));
    }
    Ok(Reply {
        status,
        body,
        via: Via::Socket(socket.to_owned()),
    })
}

async fn call_tcp(
    target: &AdminTarget,
    method: Method,
    path: &str,
    socket: SocketNote,
) -> Result<Reply, AdminError> {
    let addr = target.addr;
    // Material first, as before the socket existed: a host that cannot
    // load it cannot reach an mTLS endpoint.
    let tls = match tls_client(target.config.as_ref()) {
        Ok(tls) => tls,
        Err(reason) => return Err(AdminError::Material { reason, socket }),
    };
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(source) => {
            return Err(AdminError::Unreachable {
                addr,
                source,
                socket,
            });
        }
    };
    let host = addr.to_string();
    let answer = match tls {
        None => request(stream, &host, method, path).await,
        Some((config, name)) => {
            match tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
            {
                Ok(tls) => request(tls, &host, method, path).await,
                Err(e) => Err(format!("TLS handshake failed: {e}")),
            }
        }
    };
    match answer {
        Ok((status, body)) => Ok(Reply {
            status,
            body,
            via: Via::Tcp(addr),
        }),
        Err(reason) => Err(AdminError::Protocol {
            addr,
            reason,
            socket,
        }),
    }
}

/// With `admin.tls`, this host's own certificate is the client
/// certificate and the server is expected to present it too.
fn tls_client(
    config: Option<&Config>,
) -> Result<Option<(Arc<ClientConfig>, ServerName<'static>)>, String> {
    let Some(spec) = config.and_then(Config::admin_client_spec) else {
        return Ok(None);
    };
    let generation =
        mtlsd_reload::Generation::load(&spec, SystemTime::now()).map_err(|e| e.to_string())?;
    let client = generation
        .client_config(ADMIN_CLIENT_TLS_USE)
        .ok_or_else(|| "no client configuration built".to_owned())?;
    // The daemon serves its own identity: any of our own SANs names it.
    let name = generation
        .identity()
        .leaf()
        .sans
        .iter()
        .find_map(|san| match san {
            mtlsd_expiry::SubjectAltName::Dns(dns) => ServerName::try_from(dns.clone()).ok(),
            mtlsd_expiry::SubjectAltName::Ip(ip) => Some(ServerName::from(*ip)),
            _ => None,
        })
        .ok_or_else(|| "this host's certificate has no DNS or IP SAN".to_owned())?;
    Ok(Some((client, name)))
}

async fn request<I>(
    io: I,
    host: &str,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
