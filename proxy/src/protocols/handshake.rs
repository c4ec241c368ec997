//! TLS handshakes, shared by every protocol.
//!
//! Each handshake takes one snapshot of the material generation, runs
//! under the listener's handshake timeout, and on failure is classified
//! (using the policy verifier's verdict when there is one), logged with the
//! peer address and counted. A successful inbound handshake also yields the
//! peer's identity — its certificate facts and inventory host — which the
//! L7 modes pass on as headers.

use std::io;
use std::net::SocketAddr;

use mtlsd_reload::{PeerIdentity, Verdict, observe};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::config::ListenerConfig;
use crate::counting::CountingIo;
use crate::listener::ListenerContext;
use crate::reject::RejectReason;

/// An accepted TLS connection and who is on the other end.
#[derive(Debug)]
pub struct Accepted {
    pub tls: server::TlsStream<CountingIo<TcpStream>>,
    /// `None` when the listener does not require a certificate and the peer
    /// sent none.
    pub identity: Option<PeerIdentity>,
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// Runs the server side of the handshake; `None` when the peer was
/// refused (already logged and counted).
pub async fn accept(
    ctx: &ListenerContext,
    listener: &ListenerConfig,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Accepted> {
    let generation = ctx.store.current();
    let Some(tls_config) = generation.server_config(&listener.name) else {
        // Config and material are loaded together; this is a bug, not input.
        tracing::error!(listener = %listener.name, "no TLS server config in the current generation");
        return None;
    };
    let tcp = CountingIo::new(tcp, ctx.stats.clone());
    let handshake = observe(TlsAcceptor::from(tls_config).accept(tcp));
    let tls = match tokio::time::timeout(listener.timeouts.handshake, handshake).await {
        Ok((Ok(tls), _)) => tls,
        Ok((Err(e), verdict)) => {
            let reason = RejectReason::of_handshake(&e, verdict.as_ref());
            refused(ctx, listener, peer, reason, &e, verdict.as_ref());
            return None;
        }
        Err(_) => {
            let e = io::Error::from(io::ErrorKind::TimedOut);
            refused(ctx, listener, peer, RejectReason::Timeout, &e, None);
            return None;
        }
    };
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec();
    let identity = if chain.is_empty() {
        None
    } else {
        // Resumed sessions skip the verifiers; identify every time.
        match generation.identify_peer(&chain) {
            Ok(identity) => Some(identity),
            Err(policy) => {
                let e = io::Error::other(format!("peer refused by policy: {policy}"));
                refused(ctx, listener, peer, RejectReason::from(policy), &e, None);
                return None;
            }
        }
    };
    ctx.stats.handshake_ok();
    record_peer(ctx, identity.as_ref());
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
    })
}

/// Connects to the listener's upstream and runs the client side of the
/// handshake. Refusals are logged and counted before the error returns.
pub async fn connect(
    ctx: &ListenerContext,
    listener: &ListenerConfig,
    client_addr: SocketAddr,
) -> io::Result<client::TlsStream<CountingIo<TcpStream>>> {
    let remote = match crate::upstream::connect(&listener.upstream, listener.timeouts.connect).await
    {
        Ok(crate::upstream::UpstreamStream::Tcp(tcp)) => tcp,
        Ok(crate::upstream::UpstreamStream::Unix(_)) => {
            return Err(io::Error::other("outbound listener with a unix upstream"));
        }
        Err(e) => {
            tracing::warn!(
                listener = %listener.name, client = %client_addr, upstream = %listener.upstream,
                error = %e, "cannot reach remote host"
            );
            return Err(e);
        }
    };
    handshake_over(ctx, listener, remote, client_addr).await
}

/// Runs the client side of the handshake on an already connected socket
/// (MariaDB upgrades a connection that spoke plaintext first).
pub async fn handshake_over(
    ctx: &ListenerContext,
    listener: &ListenerConfig,
    remote: TcpStream,
    client_addr: SocketAddr,
) -> io::Result<client::TlsStream<CountingIo<TcpStream>>> {
    let generation = ctx.store.current();
    let tls_config = generation
        .client_config(&listener.name)
        .ok_or_else(|| io::Error::other(format!("no TLS client config for '{}'", listener.name)))?;
    let server_name = listener
        .server_name
        .clone()
        .ok_or_else(|| io::Error::other("outbound listener without a server name"))?;
    drop(generation);

    let remote_addr = remote.peer_addr().unwrap_or(client_addr);
    let remote = CountingIo::new(remote, ctx.stats.clone());
    let handshake = observe(TlsConnector::from(tls_config).connect(server_name, remote));
    match tokio::time::timeout(listener.timeouts.handshake, handshake).await {
        Ok((Ok(tls), _)) => {
            ctx.stats.handshake_ok();
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
            if let Ok(identity) = ctx.store.current().identify_peer(chain) {
                record_peer(ctx, Some(&identity));
            }
            Ok(tls)
        }
        Ok((Err(e), verdict)) => {
            let reason = RejectReason::of_handshake(&e, verdict.as_ref());
            refused(ctx, listener, remote_addr, reason, &e, verdict.as_ref());
            Err(e)
        }
        Err(_) => {
            let e = io::Error::from(io::ErrorKind::TimedOut);
            refused(ctx, listener, remote_addr, RejectReason::Timeout, &e, None);
            Err(e)
        }
    }
}

/// Notes a verified inventory host in the peer book.
fn record_peer(ctx: &ListenerContext, identity: Option<&PeerIdentity>) {
    if let Some(identity) = identity
        && let Some(host) = &identity.host
    {
        let roles: Vec<String> = host.roles.iter().cloned().collect();
        ctx.peers.saw(
            &host.name,
            &roles,
            &identity.facts,
            std::time::SystemTime::now(),
        );
    }
}

/// Logs and counts one refused handshake. With a policy verdict, the
/// line carries the SANs the refused certificate claimed.
pub fn refused(
    ctx: &ListenerContext,
    listener: &ListenerConfig,
    peer: SocketAddr,
    reason: RejectReason,
    error: &io::Error,
    verdict: Option<&Verdict>,
) {
    ctx.stats.refused(reason);
    let sans = verdict.map(|v| v.sans.join(", ")).unwrap_or_default();
    tracing::warn!(
        listener = %listener.name,
        direction = %listener.direction,
        %peer,
        reason = reason.as_str(),
        sans = %sans,
        error = %error,
        "TLS handshake refused"
    );
}
