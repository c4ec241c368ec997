//! A minimal HTTP/1 client for the daemon's admin endpoint.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
}

/// Sends `method path` and returns the status and body.
pub(super) async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), AdminError> {
    let protocol = |reason: String| AdminError::Protocol { addr, reason };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| AdminError::Unreachable { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
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

/// The admin address: `--admin` if given, else the config's admin.listen,
/// else the default.
pub(super) fn resolve(admin: Option<SocketAddr>, config: &std::path::Path) -> SocketAddr {
    admin
        .or_else(|| {
            crate::config::Config::load(config)
                .ok()
                .map(|c| c.admin_listen)
        })
        .unwrap_or_else(|| {
            crate::config::DEFAULT_ADMIN_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9650)))
        })
}
