//! Connecting to where a listener forwards: `host:port` or a unix socket.

use std::io;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::config::Upstream;

/// A connected plaintext upstream.
#[derive(Debug)]
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to `upstream` within `timeout`. Every address a host name
/// resolves to is tried in order.
pub async fn connect(upstream: &Upstream, timeout: Duration) -> io::Result<UpstreamStream> {
    let attempt = async {
        match upstream {
            Upstream::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Ok(UpstreamStream::Tcp(stream))
            }
            Upstream::Unix(path) => Ok(UpstreamStream::Unix(UnixStream::connect(path).await?)),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ))
        })
}
