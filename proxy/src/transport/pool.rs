//! Pooled, multiplexed upstream clients for the L7 modes.
//!
//! One pool per listener, rebuilt when what it connects to changes: the
//! upstream address (config reload) or, for pools that originate mTLS, the
//! session epoch of the material (`Generation::session_epoch`: the trust
//! and this host's certificate) — so a trust change never reuses a
//! connection verified under the old bundle for a new request, and a new
//! certificate reaches the peer at once (its pool is made before the old
//! one is left: no call waits for that handshake), while a reload that
//! changes neither keeps the warm connections. grpc pools are
//! [`H2Upstream`]s; http listeners' HTTP/1.1 pools are hyper's. An old
//! pool lives on only
//! as long as requests still use it. Every pooled mTLS connection is
//! registered like any other: a server that no longer qualifies after a
//! trust change has its pooled connections closed after the grace period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mtlsd_expiry::Fingerprint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::coalesce::Coalescing;
use super::h2_upstream::{Dial, H2Upstream};
use super::handshake::{self, Handshaker, PeerIo};
use crate::config::{HostPort, ListenerConfig, Outbound, Timeouts};
use crate::connections::Registration;

/// HTTP/1.1 to the upstream on loopback (http listeners).
pub type PlainClient = Client<PlainConnector, Incoming>;

/// What a pool was built for; a request whose listener, target or
/// material differ from it gets a new pool.
#[derive(Debug)]
struct PoolKey {
    upstream: http::uri::Authority,
    /// The session epoch for mTLS pools; `None` for plaintext ones.
    epoch: Option<Fingerprint>,
    /// The trust part of the epoch (`Generation::trust_fingerprint`), for
    /// mTLS pools.
    trust: Option<Fingerprint>,
    timeouts: Timeouts,
    /// The remote and how it is verified, for mTLS pools.
    outbound: Option<Outbound>,
}

impl PoolKey {
    fn plain(target: &UpstreamTarget, timeouts: Timeouts) -> Self {
        Self {
            upstream: target.authority().clone(),
            epoch: None,
            trust: None,
            timeouts,
            outbound: None,
        }
    }

    /// The same pool but for this host's own certificate: what the key
    /// says, other than the epoch, is unchanged, and so is the trust.
    fn differs_only_in_own_certificate(&self, other: &PoolKey) -> bool {
        self.trust.is_some()
            && self.trust == other.trust
            && self.timeouts == other.timeouts
            && self.upstream == other.upstream
            && self.outbound == other.outbound
    }

    /// Compared field by field against the request's own values, so the
    /// per-request check allocates nothing.
    fn is_for(
        &self,
        upstream: &http::uri::Authority,
        epoch: Option<Fingerprint>,
        timeouts: Timeouts,
        outbound: Option<&Outbound>,
    ) -> bool {
        self.epoch == epoch
            && self.timeouts == timeouts
            && self.upstream == *upstream
            && self.outbound.as_ref() == outbound
    }
}

/// The current pools of one listener (only one kind is ever used).
#[derive(Debug, Default)]
pub struct PoolSlot {
    http1: Slot<PlainClient>,
    h2: Slot<H2Upstream>,
    /// The next mTLS pool while it connects (make-before-break after a
    /// renewal of this host's certificate; see [`PoolSlot::remote`]).
    warming: Mutex<Option<(PoolKey, H2Upstream)>>,
}

#[derive(Debug)]
struct Slot<C>(Mutex<Option<(PoolKey, C)>>);

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<C: Clone> Slot<C> {
    fn get(
        &self,
        current: impl FnOnce(&PoolKey) -> bool,
        build: impl FnOnce() -> (PoolKey, C),
    ) -> C {
        // The lock is held only to compare and clone; clients are cheap Arcs.
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((key, client)) if current(key) => client.clone(),
            _ => {
                let (key, client) = build();
                install(&mut slot, key, client)
            }
        }
    }
}

/// Puts a new pool in `slot` (the lock held), replacing what was there.
fn install<C: Clone>(slot: &mut Option<(PoolKey, C)>, key: PoolKey, client: C) -> C {
    tracing::debug!(
        upstream = %key.upstream,
        replaces = slot.is_some(),
        "starting a new upstream pool: none yet, or what the old one was made for changed"
    );
    *slot = Some((key, client.clone()));
    client
}

impl PoolSlot {
    /// An HTTP/1.1 client for an http listener's upstream.
    pub fn http1(&self, listener: &ListenerConfig, target: &UpstreamTarget) -> PlainClient {
        let timeouts = listener.timeouts;
        self.http1.get(
            |key| key.is_for(target.authority(), None, timeouts, None),
            || {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(timeouts.connect));
                connector.set_nodelay(true);
                let mut builder = Client::builder(TokioExecutor::new());
                keep_alive(&mut builder, timeouts);
                let client = builder.build(PlainConnector { inner: connector });
                (PoolKey::plain(target, timeouts), client)
            },
        )
    }

    /// An h2c pool to a grpc listener's local daemon.
    pub fn h2c(&self, listener: &ListenerConfig, target: &UpstreamTarget) -> H2Upstream {
        let timeouts = listener.timeouts;
        self.h2.get(
            |key| key.is_for(target.authority(), None, timeouts, None),
            || {
                let dial = Dial::Plain {
                    authority: target.authority().clone(),
                };
                (
                    PoolKey::plain(target, timeouts),
                    H2Upstream::new(dial, timeouts),
                )
            },
        )
    }

    /// An mTLS h2 pool to an outbound listener's remote host, for the
    /// material's session `epoch` (whose trust part is `trust`).
    ///
    /// When only this host's own certificate changed (a renewal: same
    /// trust, same remote), the new pool is made before the old one is
    /// broken: its connection is dialed in the background — that handshake
    /// already shows the peer the new certificate — while calls keep going
    /// over the old pool, which they leave once the new one has connected
    /// (or failed to: then the next call dials and answers for it). Any
    /// other change, above all a change of trust, replaces the pool at
    /// once: a connection judged under the old trust takes no new call.
    #[allow(clippy::too_many_arguments)]
    pub fn remote(
        &self,
        handshaker: &Handshaker,
        listener: &Arc<ListenerConfig>,
        outbound: &Outbound,
        target: &UpstreamTarget,
        epoch: Fingerprint,
        trust: Fingerprint,
        client_addr: SocketAddr,
    ) -> H2Upstream {
        let timeouts = listener.timeouts;
        let key = || PoolKey {
            upstream: target.authority().clone(),
            epoch: Some(epoch),
            trust: Some(trust),
            timeouts,
            outbound: Some(outbound.clone()),
        };
        let build = || {
            let dial = Dial::Remote {
                handshaker: handshaker.clone(),
                listener: listener.clone(),
                outbound: outbound.clone(),
                client_addr,
            };
            H2Upstream::new(dial, timeouts)
        };
        let mut slot = self.h2.0.lock().unwrap_or_else(|p| p.into_inner());
        let is_current =
            |k: &PoolKey| k.is_for(target.authority(), Some(epoch), timeouts, Some(outbound));
        if let Some((current, pool)) = &*slot {
            if is_current(current) {
                return pool.clone();
            }
            let next = key();
            if current.differs_only_in_own_certificate(&next) {
                let mut warming = self.warming.lock().unwrap_or_else(|p| p.into_inner());
                match &*warming {
                    Some((k, new)) if is_current(k) => {
                        if !new.warmed() {
                            return pool.clone();
                        }
                        tracing::debug!(upstream = %k.upstream,
                            "the new upstream pool (this host's renewed certificate) is warm; calls move to it");
                        let (k, new) = warming.take().expect("matched above");
                        *slot = Some((k, new.clone()));
                        return new;
                    }
                    _ => {
                        let new = build();
                        new.warm();
                        tracing::debug!(upstream = %next.upstream,
                            "this host's certificate changed: warming a new upstream pool while calls use the old one");
                        *warming = Some((next, new));
                        return pool.clone();
                    }
                }
            }
        }
        self.warming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        install(&mut slot, key(), build())
    }
}

/// Pooled connections close after `idle_timeout` unused.
fn keep_alive(builder: &mut hyper_util::client::legacy::Builder, timeouts: Timeouts) {
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(timeouts.idle);
}

/// Dials the local HTTP/1.1 upstream; writes go straight through
/// (HTTP/1.1 already writes a message at a time).
#[derive(Debug, Clone)]
pub struct PlainConnector {
    inner: HttpConnector,
}

impl tower_service::Service<Uri> for PlainConnector {
    type Response = TokioIo<Coalescing<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(TokioIo::new(Coalescing::passthrough(tcp)))
        })
    }
}

/// hyper's pool asks the connection itself whether h2 was negotiated.
impl<T: Connection> Connection for Coalescing<T> {
    fn connected(&self) -> Connected {
        self.get_ref().connected()
    }
}

/// A pooled TLS stream that fails every read and write once the policy
/// closes it (the HTTP/2 connection on it then ends and leaves its pool).
pub struct TlsConnection {
    io: Coalescing<TlsStream<PeerIo>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    _registration: Registration,
}

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnection").finish_non_exhaustive()
    }
}

impl TlsConnection {
    /// Dials `outbound`'s remote with mTLS (through the shared handshake,
    /// so refusals are classified and counted) and registers the
    /// connection, judged under the generation in force when dialing began.
    /// The handshake runs on the handshake thread: a pooled connection
    /// carries many calls, and a renewal's new one is made while the old
    /// one still carries them.
    pub async fn dial(
        handshaker: &Handshaker,
        listener: &Arc<ListenerConfig>,
        outbound: &Outbound,
        client_addr: SocketAddr,
    ) -> io::Result<Self> {
        let judged_under = handshaker.store.current().number();
        let tls = handshake::connect_off_path(handshaker, listener, outbound, client_addr).await?;
        let (tcp, session) = tls.get_ref();
        let remote = tcp.get_ref().peer_addr().unwrap_or(client_addr);
        let chain = session.peer_certificates().unwrap_or_default().into();
        let registration = handshaker.register(listener, remote, chain, judged_under);
        Ok(Self {
            closed: Box::pin(registration.close_token().cancelled_owned()),
            _registration: registration,
            io: Coalescing::new(tls),
        })
    }

    /// Whether ALPN chose h2.
    pub fn negotiated_h2(&self) -> bool {
        self.io.get_ref().get_ref().1.alpn_protocol() == Some(b"h2")
    }

    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the remote host no longer qualifies after a trust change",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where a connection's requests go: the upstream's scheme and authority,
/// parsed once per connection (formatting and parsing them per request
/// was a measurable part of the L7 path, issue 7). Each request only
/// brings its path and query.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl UpstreamTarget {
    /// `None` when `upstream` is not a URI authority (validation refuses
    /// such hosts, so the caller only logs it).
    pub fn new(scheme: http::uri::Scheme, upstream: &HostPort) -> Option<Self> {
        Some(Self {
            scheme,
            authority: upstream.to_string().parse().ok()?,
        })
    }

    /// The upstream URI for a request with `path` (`/` when it has none).
    pub fn uri(&self, path: Option<&http::uri::PathAndQuery>) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path.cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).ok()
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::{PathAndQuery, Scheme};

    #[test]
    fn a_target_keeps_the_request_path_and_brackets_ipv6() {
        let tcp = |host: &str| HostPort {
            host: host.to_owned(),
            port: 7000,
        };
        let target = UpstreamTarget::new(Scheme::HTTP, &tcp("127.0.0.1")).unwrap();
        let path = PathAndQuery::from_static("/pkg.Svc/Call?x=1");
        assert_eq!(
            target.uri(Some(&path)).unwrap().to_string(),
            "http://127.0.0.1:7000/pkg.Svc/Call?x=1"
        );
        assert_eq!(
            target.uri(None).unwrap().to_string(),
            "http://127.0.0.1:7000/"
        );
        let v6 = UpstreamTarget::new(Scheme::HTTPS, &tcp("::1")).unwrap();
        assert_eq!(v6.authority().as_str(), "[::1]:7000");
        assert_eq!(
            v6.uri(Some(&path)).unwrap().to_string(),
            "https://[::1]:7000/pkg.Svc/Call?x=1"
        );
        assert!(UpstreamTarget::new(Scheme::HTTP, &tcp("not a host")).is_none());
    }
}
