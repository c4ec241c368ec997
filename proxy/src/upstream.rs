//! Connecting to where a listener forwards: `host:port` or a unix socket.

use std::io;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::config::{HostPort, Upstream};

/// A connected plaintext upstream.
#[derive(Debug)]
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to `upstream` within `timeout`.
pub async fn connect(upstream: &Upstream, timeout: Duration) -> io::Result<UpstreamStream> {
    match upstream {
        Upstream::Tcp(addr) => connect_tcp(addr, timeout).await.map(UpstreamStream::Tcp),
        Upstream::Unix(path) => within(timeout, UnixStream::connect(path))
            .await
            .map(UpstreamStream::Unix),
    }
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY`. Every address
/// a host name resolves to is tried in order.
pub async fn connect_tcp(addr: &HostPort, timeout: Duration) -> io::Result<TcpStream> {
    within(timeout, async {
        let stream = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
    .await
}

async fn within<T>(
    timeout: Duration,
    attempt: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ))
        })
}
