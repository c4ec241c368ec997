//! Pooled, multiplexed upstream clients for the L7 modes.
//!
//! One pool per listener, rebuilt when what it connects to changes: the
//! upstream address (config reload) or, for pools that originate mTLS, the
//! material generation — so a trust change never reuses a connection
//! verified under the old bundle for a new request. An old pool lives on
//! only as long as requests still use it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{ListenerConfig, Upstream};
use crate::counting::CountingIo;
use crate::listener::ListenerContext;
use crate::protocols::handshake;

/// Plaintext upstream on loopback (h2c for grpc, HTTP/1.1 for http).
pub type PlainClient = Client<HttpConnector, Incoming>;
/// mTLS to a remote host (grpc outbound).
pub type RemoteClient = Client<RemoteConnector, Incoming>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolKey {
    upstream: Upstream,
    generation: u64,
}

/// The current pools of one listener (only one kind is ever used).
#[derive(Debug, Default)]
pub struct PoolSlot {
    plain: Slot<PlainClient>,
    remote: Slot<RemoteClient>,
}

#[derive(Debug)]
struct Slot<C>(Mutex<Option<(PoolKey, C)>>);

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<C: Clone> Slot<C> {
    fn get(&self, key: PoolKey, build: impl FnOnce() -> C) -> C {
        // The lock is held only to compare and clone; clients are cheap Arcs.
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((current, client)) if *current == key => client.clone(),
            _ => {
                let client = build();
                *slot = Some((key, client.clone()));
                client
            }
        }
    }
}

impl PoolSlot {
    /// A plaintext client for `listener`'s upstream.
    pub fn plain(&self, listener: &ListenerConfig, http2: bool) -> PlainClient {
        let key = PoolKey {
            upstream: listener.upstream.clone(),
            generation: 0,
        };
        let connect_timeout = listener.timeouts.connect;
        self.plain.get(key, || {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(connect_timeout));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .http2_only(http2)
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .build(connector)
        })
    }

    /// An mTLS h2 client to `listener`'s remote upstream for `generation`.
    pub fn remote(
        &self,
        ctx: &Arc<ListenerContext>,
        listener: &Arc<ListenerConfig>,
        generation: u64,
        client_addr: SocketAddr,
    ) -> RemoteClient {
        let key = PoolKey {
            upstream: listener.upstream.clone(),
            generation,
        };
        self.remote.get(key, || {
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .build(RemoteConnector {
                    ctx: Arc::downgrade(ctx),
                    listener: listener.clone(),
                    client_addr,
                })
        })
    }
}

/// Dials the listener's remote upstream with mTLS (through the shared
/// handshake, so refusals are classified and counted).
#[derive(Debug, Clone)]
pub struct RemoteConnector {
    // Weak: the pool lives inside the listener context.
    ctx: Weak<ListenerContext>,
    listener: Arc<ListenerConfig>,
    client_addr: SocketAddr,
}

impl tower_service::Service<Uri> for RemoteConnector {
    type Response = TokioIo<TlsConnection>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let ctx = this
                .ctx
                .upgrade()
                .ok_or_else(|| io::Error::other("listener removed"))?;
            let tls = handshake::connect(&ctx, &this.listener, this.client_addr).await?;
            Ok(TokioIo::new(TlsConnection(tls)))
        })
    }
}

/// A TLS stream that tells hyper whether ALPN chose h2.
#[derive(Debug)]
pub struct TlsConnection(TlsStream<CountingIo<TcpStream>>);

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        match self.0.get_ref().1.alpn_protocol() {
            Some(b"h2") => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `http://host:port` + the request's path and query.
pub fn upstream_uri(
    scheme: &str,
    upstream: &Upstream,
    path: Option<&http::uri::PathAndQuery>,
) -> Option<Uri> {
    let Upstream::Tcp { host, port } = upstream else {
        return None;
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let path = path.map(|p| p.as_str()).unwrap_or("/");
    format!("{scheme}://{host}:{port}{path}").parse().ok()
}
