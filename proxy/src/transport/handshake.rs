//! TLS handshakes, shared by every protocol.
//!
//! Each handshake takes one snapshot of the material generation, runs
//! under the listener's handshake timeout, and on failure is classified
//! (using the policy verifier's verdict when there is one), logged with the
//! peer address and counted. A successful inbound handshake also yields the
//! peer's identity — its certificate facts and inventory host — which the
//! L7 modes pass on as headers.
//!
//! gRPC listeners run their handshakes on the handshake thread
//! ([`super::handshake_thread`]): their few connections each carry many
//! calls, which a handshake on the data path would hold up (a renewal's
//! make-before-break connection above all). The finished stream comes back
//! to the caller's runtime. The other modes make a connection per session
//! and keep their handshakes inline, where the hop would cost more.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mtlsd_reload::{
    AuthUsage, Generation, HandshakeReport, MaterialStore, PeerIdentity, Stage, Verdict, observe,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::handshake_thread::HandshakeThread;
use super::socket::MovableTcp;
use crate::config::{ListenerConfig, Outbound, Side};
use crate::connections::{ConnectionRegistry, Registration};
use crate::counting::{CountingIo, ListenerStats};
use crate::peers::{PeerBook, PresentedChain};
use crate::reject::RejectReason;

/// What a listener's TLS handshakes need, and nothing else: the material
/// in force, the listener's counters, the peer book and the registry of
/// live connections. The protocols and the upstream pool hold this, not
/// the whole listener context, so this layer never imports the one above.
#[derive(Debug, Clone)]
pub struct Handshaker {
    pub store: Arc<MaterialStore>,
    pub stats: Arc<ListenerStats>,
    pub peers: Arc<PeerBook>,
    pub connections: Arc<ConnectionRegistry>,
}

impl Handshaker {
    /// Registers an established connection's verified peer, so a trust
    /// change can re-judge it; dropping the registration unregisters.
    /// `judged_under` is the generation whose policy admitted the peer: if
    /// a reload published another since, the peer is judged again now (the
    /// re-judging of that reload ran before this connection registered).
    pub fn register(
        &self,
        listener: &ListenerConfig,
        peer: SocketAddr,
        chain: Arc<[CertificateDer<'static>]>,
        judged_under: u64,
    ) -> Registration {
        let registration = self.connections.register(&listener.name, peer, chain);
        let current = self.store.current();
        if current.number() != judged_under {
            self.connections.judge_late(&registration, &current);
        }
        registration
    }
}

/// The socket under every peer connection's TLS: counted, and movable
/// from the handshake thread to the data path.
pub type PeerIo = CountingIo<MovableTcp>;

/// An accepted TLS connection and who is on the other end.
#[derive(Debug)]
pub struct Accepted {
    pub tls: server::TlsStream<PeerIo>,
    /// `None` when the listener does not require a certificate and the peer
    /// sent none.
    pub identity: Option<PeerIdentity>,
    pub chain: Arc<[CertificateDer<'static>]>,
    /// The generation whose policy admitted the peer.
    pub generation: u64,
}

/// Runs the server side of the handshake; `None` when the peer was
/// refused (already logged and counted) or left right after completing it.
pub async fn accept(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Accepted> {
    server_handshake(ctx, listener, MovableTcp::new(tcp), peer).await
}

/// [`accept`], with the handshake on the handshake thread: for listeners
/// whose connections are few, long-lived and carry many calls each (gRPC),
/// where a handshake on the data path holds up all of them.
pub async fn accept_off_path(
    ctx: &Handshaker,
    listener: &Arc<ListenerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Accepted> {
    let (ctx, listener) = (ctx.clone(), listener.clone());
    on_handshake_thread(
        tcp,
        peer,
        |_| None,
        move |tcp| async move { server_handshake(&ctx, &listener, tcp, peer).await },
    )
    .await
}

async fn server_handshake(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    tcp: MovableTcp,
    peer: SocketAddr,
) -> Option<Accepted> {
    ctx.stats.handshake_started();
    let generation = ctx.store.current();
    let Some(tls_config) = generation.server_config(&listener.name) else {
        // Config and material are loaded together; this is a bug, not input.
        tracing::error!(listener = %listener.name, "no TLS server config in the current generation");
        return None;
    };
    let tcp = CountingIo::new(tcp, ctx.stats.clone());
    let handshake = observe(TlsAcceptor::from(tls_config).accept(tcp));
    let (result, report) = match tokio::time::timeout(listener.timeouts.handshake, handshake).await
    {
        Ok(done) => done,
        Err(_) => {
            let e = io::Error::from(io::ErrorKind::TimedOut);
            refused(ctx, listener, peer, RejectReason::Timeout, &e, None);
            return None;
        }
    };
    let tls = match result {
        Ok(tls) => tls,
        Err(e) if report.completed => {
            // The client's Finished arrived; the session tickets sent after
            // it met a reset (health checkers, `openssl s_time`). That is a
            // completed handshake, not a failure.
            ctx.stats.handshake_ok(false);
            record_peer(ctx, listener, report.admitted.as_ref(), None);
            tracing::debug!(listener = %listener.name, %peer, error = %e,
                "handshake completed; the peer closed the connection right after");
            return None;
        }
        Err(e) => {
            let reason = RejectReason::of_handshake(&e, report.refused.as_ref());
            refused(ctx, listener, peer, reason, &e, report.refused.as_ref());
            return None;
        }
    };
    let chain: Arc<[CertificateDer<'static>]> = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .into();
    let identity = match admitted(&generation, listener, &chain, report) {
        Ok(identity) => identity,
        Err(verdict) => {
            let e = io::Error::other(format!("peer refused by policy: {}", verdict.detail));
            refused(
                ctx,
                listener,
                peer,
                RejectReason::from(verdict.refusal),
                &e,
                Some(&verdict),
            );
            return None;
        }
    };
    ctx.stats
        .handshake_ok(resumed(tls.get_ref().1.handshake_kind()));
    record_peer(ctx, listener, identity.as_ref(), Some(&chain));
    match &identity {
        Some(id) => tracing::debug!(
            listener = %listener.name, %peer,
            host = id.host.as_ref().map(|h| h.name.as_str()).unwrap_or("-"),
            subject = %id.facts.subject, serial = %id.facts.serial_hex,
            "peer verified"
        ),
        None => tracing::debug!(listener = %listener.name, %peer, "anonymous peer"),
    }
    Some(Accepted {
        tls,
        identity,
        chain,
        generation: generation.number(),
    })
}

/// Who the peer of a completed handshake is. A full handshake ran the
/// policy in the verifier; a resumed session skipped it, so the same
/// policy judges the session's chain here (a resumed session never
/// bypasses a check, e.g. a certificate that expired since).
fn admitted(
    generation: &Generation,
    listener: &ListenerConfig,
    chain: &[CertificateDer<'static>],
    report: HandshakeReport,
) -> Result<Option<PeerIdentity>, Verdict> {
    if let Some(identity) = report.admitted {
        return Ok(Some(identity));
    }
    if chain.is_empty() {
        return Ok(None);
    }
    let Some(policy) = generation.policy(&listener.name) else {
        return Ok(None);
    };
    policy.admit(chain, None, now(), Stage::Handshake).map(Some)
}

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Connects to the listener's upstream and runs the client side of the
/// handshake. Refusals are logged and counted before the error returns.
pub async fn connect(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    outbound: &Outbound,
    client_addr: SocketAddr,
) -> io::Result<client::TlsStream<PeerIo>> {
    let remote = connect_tcp(listener, outbound, client_addr).await?;
    handshake_over(ctx, listener, outbound, remote, client_addr).await
}

/// [`connect`], with the handshake on the handshake thread: for the
/// pooled connections of gRPC listeners, each carrying many calls (a
/// renewal's new connection is made while the old one still carries them).
pub async fn connect_off_path(
    ctx: &Handshaker,
    listener: &Arc<ListenerConfig>,
    outbound: &Outbound,
    client_addr: SocketAddr,
) -> io::Result<client::TlsStream<PeerIo>> {
    let remote = connect_tcp(listener, outbound, client_addr).await?;
    let (ctx, listener, outbound) = (ctx.clone(), listener.clone(), outbound.clone());
    on_handshake_thread(remote, client_addr, Err, move |remote| async move {
        client_handshake(&ctx, &listener, &outbound, remote, client_addr).await
    })
    .await
}

async fn connect_tcp(
    listener: &ListenerConfig,
    outbound: &Outbound,
    client_addr: SocketAddr,
) -> io::Result<TcpStream> {
    crate::upstream::connect_tcp(&outbound.remote, listener.timeouts.connect)
        .await
        .inspect_err(|e| {
            tracing::warn!(
                listener = %listener.name, client = %client_addr, upstream = %outbound.remote,
                error = %e, "cannot reach remote host"
            );
        })
}

/// Runs the client side of the handshake on an already connected socket
/// (MariaDB upgrades a connection that spoke plaintext first).
pub async fn handshake_over(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    outbound: &Outbound,
    remote: TcpStream,
    client_addr: SocketAddr,
) -> io::Result<client::TlsStream<PeerIo>> {
    client_handshake(
        ctx,
        listener,
        outbound,
        MovableTcp::new(remote),
        client_addr,
    )
    .await
}

async fn client_handshake(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    outbound: &Outbound,
    remote: MovableTcp,
    client_addr: SocketAddr,
) -> io::Result<client::TlsStream<PeerIo>> {
    ctx.stats.handshake_started();
    let generation = ctx.store.current();
    let tls_config = generation
        .client_config(&listener.name)
        .ok_or_else(|| io::Error::other(format!("no TLS client config for '{}'", listener.name)))?;
    let server_name = outbound.server_name.clone();

    let remote_addr = remote.peer_addr().unwrap_or(client_addr);
    let remote = CountingIo::new(remote, ctx.stats.clone());
    let handshake = observe(TlsConnector::from(tls_config).connect(server_name, remote));
    match tokio::time::timeout(listener.timeouts.handshake, handshake).await {
        Ok((Ok(tls), report)) => {
            let chain: Vec<CertificateDer<'static>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .to_vec();
            match admitted(&generation, listener, &chain, report) {
                Ok(identity) => {
                    ctx.stats
                        .handshake_ok(resumed(tls.get_ref().1.handshake_kind()));
                    record_peer(ctx, listener, identity.as_ref(), Some(&chain));
                    Ok(tls)
                }
                Err(verdict) => {
                    let e =
                        io::Error::other(format!("server refused by policy: {}", verdict.detail));
                    let reason = RejectReason::from(verdict.refusal);
                    refused(ctx, listener, remote_addr, reason, &e, Some(&verdict));
                    Err(e)
                }
            }
        }
        Ok((Err(e), report)) => {
            let reason = RejectReason::of_handshake(&e, report.refused.as_ref());
            refused(
                ctx,
                listener,
                remote_addr,
                reason,
                &e,
                report.refused.as_ref(),
            );
            Err(e)
        }
        Err(_) => {
            let e = io::Error::from(io::ErrorKind::TimedOut);
            refused(ctx, listener, remote_addr, RejectReason::Timeout, &e, None);
            Err(e)
        }
    }
}

/// What a handshake gives back: a stream whose socket moves to the
/// caller's runtime, or nothing (a refusal, already logged and counted).
trait Travels {
    fn socket(&mut self) -> Option<&mut MovableTcp>;
}

impl Travels for Option<Accepted> {
    fn socket(&mut self) -> Option<&mut MovableTcp> {
        self.as_mut().map(|a| a.tls.get_mut().0.get_mut())
    }
}

impl Travels for io::Result<client::TlsStream<PeerIo>> {
    fn socket(&mut self) -> Option<&mut MovableTcp> {
        self.as_mut().ok().map(|tls| tls.get_mut().0.get_mut())
    }
}

/// Runs `handshake` over `tcp` on the handshake thread and moves the
/// finished stream's socket to the caller's runtime. `lost` answers for
/// a socket that could not be moved (the connection is closed; logged).
/// Without a handshake thread the handshake runs here.
async fn on_handshake_thread<T, F, Fut>(
    tcp: TcpStream,
    peer: SocketAddr,
    lost: fn(io::Error) -> T,
    handshake: F,
) -> T
where
    T: Travels + Send + 'static,
    F: FnOnce(MovableTcp) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
{
    let mut tcp = MovableTcp::new(tcp);
    let Some(thread) = HandshakeThread::shared() else {
        return handshake(tcp).await;
    };
    let failed = |e: io::Error| {
        tracing::warn!(%peer, error = %e,
            "cannot move a connection between the TLS handshake thread and the data path; closing it");
        lost(e)
    };
    if let Err(e) = tcp.release() {
        return failed(e);
    }
    let job = async move {
        tcp.adopt()?;
        let mut done = handshake(tcp).await;
        if let Some(socket) = done.socket() {
            socket.release()?;
        }
        Ok::<_, io::Error>(done)
    };
    let mut done = match thread.run(job).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return failed(e),
        Err(gone) => return failed(io::Error::other(gone)),
    };
    if let Some(socket) = done.socket()
        && let Err(e) = socket.adopt()
    {
        return failed(e);
    }
    done
}

/// Notes a verified inventory host in the peer book, with the chain it
/// presented when the handshake's result still holds it.
fn record_peer(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    identity: Option<&PeerIdentity>,
    chain: Option<&[CertificateDer<'static>]>,
) {
    if let Some(identity) = identity
        && let Some(host) = &identity.host
    {
        let presented = chain.map(|chain| PresentedChain {
            trust_domain: &listener.trust_domain,
            usage: match listener.side {
                Side::Inbound(_) => AuthUsage::Client,
                Side::Outbound(_) => AuthUsage::Server,
            },
            chain,
        });
        ctx.peers.saw(
            &host.name,
            &host.roles,
            &identity.facts,
            presented,
            std::time::SystemTime::now(),
        );
    }
}

/// Logs and counts one refused handshake. With a policy verdict, the
/// line carries the SANs the refused certificate claimed.
pub fn refused(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    peer: SocketAddr,
    reason: RejectReason,
    error: &io::Error,
    verdict: Option<&Verdict>,
) {
    ctx.stats.refused(reason);
    let sans = verdict.map(|v| v.sans.join(", ")).unwrap_or_default();
    let host = verdict.and_then(|v| v.host.as_deref()).unwrap_or("-");
    let detail = verdict.map(|v| v.detail.as_str()).unwrap_or("");
    tracing::warn!(
        listener = %listener.name,
        direction = %listener.direction(),
        %peer,
        reason = reason.as_str(),
        sans = %sans,
        host,
        detail,
        error = %error,
        "TLS handshake refused"
    );
}

fn resumed(kind: Option<rustls::HandshakeKind>) -> bool {
    kind == Some(rustls::HandshakeKind::Resumed)
}
