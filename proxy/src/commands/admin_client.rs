//! A minimal HTTP/1 client for the daemon's admin endpoint, over mTLS when
//! the config says `[admin] tls = true`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{ADMIN_CLIENT_TLS_USE, Config, DEFAULT_ADMIN_LISTEN};

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdminError {
    #[error("no mtlsd answered at {addr} ({source}); is it running, and is admin.listen {addr}?")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin endpoint {addr}: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    #[error("cannot load this host's TLS material to reach the mTLS admin endpoint: {0}")]
    Material(String),
}

/// Where the daemon's admin endpoint is and how to talk to it.
#[derive(Debug)]
pub(super) struct AdminTarget {
    pub(super) addr: SocketAddr,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// `--admin` if given, else the config's admin.listen, else the default.
/// With `admin.tls`, this host's own certificate is the client certificate
/// and the server is expected to present it too.
pub(super) fn resolve(
    admin: Option<SocketAddr>,
    config_path: &Path,
) -> Result<AdminTarget, AdminError> {
    let config = Config::load(config_path).ok();
    let addr = admin
        .or_else(|| config.as_ref().map(|c| c.admin_listen))
        .or_else(|| DEFAULT_ADMIN_LISTEN.parse().ok())
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9650)));
    let Some(spec) = config.as_ref().and_then(Config::admin_client_spec) else {
        return Ok(AdminTarget { addr, tls: None });
    };
    let generation = mtlsd_reload::Generation::load(&spec, SystemTime::now())
        .map_err(|e| AdminError::Material(e.to_string()))?;
    let client = generation
        .client_config(ADMIN_CLIENT_TLS_USE)
        .ok_or_else(|| AdminError::Material("no client configuration built".to_owned()))?;
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
        .ok_or_else(|| {
            AdminError::Material("this host's certificate has no DNS or IP SAN".to_owned())
        })?;
    Ok(AdminTarget {
        addr,
        tls: Some((client, name)),
    })
}

/// Sends `method path` and returns the status and body.
pub(super) async fn call(
    target: &AdminTarget,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), AdminError> {
    let addr = target.addr;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| AdminError::Unreachable { addr, source })?;
    match &target.tls {
        None => request(addr, stream, method, path).await,
        Some((config, name)) => {
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), stream)
                .await
                .map_err(|e| AdminError::Protocol {
                    addr,
                    reason: format!("TLS handshake failed: {e}"),
                })?;
            request(addr, tls, method, path).await
        }
    }
}

async fn request<I>(
    addr: SocketAddr,
    io: I,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), AdminError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |reason: String| AdminError::Protocol { addr, reason };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| protocol(e.to_string()))?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| protocol(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}
