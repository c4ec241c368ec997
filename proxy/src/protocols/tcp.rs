//! `protocol = "tcp"`: an mTLS tunnel for any byte stream.
//!
//! Inbound: accept TLS, require and verify a client certificate against the
//! listener's trust domain, connect the plaintext upstream, relay.
//! Outbound: accept plaintext from a local daemon, connect the remote host,
//! originate TLS with this host's certificate and verify the server's chain
//! and name, relay.
//!
//! Each connection takes one snapshot of the material generation before its
//! handshake and uses it throughout, so a reload mid-handshake cannot mix
//! old and new material; connections already established are untouched by
//! a swap.

use std::net::SocketAddr;

use mtlsd_reload::{AuthUsage, observe};

use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::ListenerConfig;
use crate::listener::ListenerContext;
use crate::reject::RejectReason;
use crate::relay::{RelayError, relay};
use crate::upstream::{self, UpstreamStream};

/// Serves one connection accepted by an inbound tcp listener.
pub async fn serve_inbound(
    ctx: &ListenerContext,
    listener: &ListenerConfig,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let generation = ctx.store.current();
    let Some(tls_config) = generation.server_config(&listener.name) else {
        // Config and material are loaded together; this is a bug, not input.
        tracing::error!(listener = %listener.name, "no TLS server config in the current generation");
        return;
    };
    drop(generation);

    let handshake = observe(TlsAcceptor::from(tls_config).accept(tcp));
    let tls = match tokio::time::timeout(listener.timeouts.handshake, handshake).await {
        Ok((Ok(tls), _)) => tls,
        Ok((Err(e), policy)) => {
            return ctx.refused(listener, peer, RejectReason::of_handshake(&e, policy), &e);
        }
        Err(_) => {
            let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
            return ctx.refused(listener, peer, RejectReason::Timeout, &e);
        }
    };
    ctx.stats.handshake_ok();
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec();
    let peer_cert = chain
        .first()
        .and_then(|der| mtlsd_expiry::CertFacts::from_der(der).ok());
    let registration = ctx.connections.register(
        &listener.name,
        &listener.trust_domain,
        peer,
        AuthUsage::Client,
        chain,
    );
    match &peer_cert {
        Some(facts) => tracing::debug!(
            listener = %listener.name, %peer, subject = %facts.subject,
            serial = %facts.serial_hex, "peer verified"
        ),
        None => tracing::debug!(listener = %listener.name, %peer, "peer verified"),
    }

    let upstream = match upstream::connect(&listener.upstream, listener.timeouts.connect).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::warn!(
                listener = %listener.name, %peer, upstream = %listener.upstream,
                error = %e, "cannot reach upstream; closing the peer's connection"
            );
            return;
        }
    };
    let idle = listener.timeouts.idle;
    let relayed = async {
        match upstream {
            UpstreamStream::Tcp(up) => relay(tls, up, ("peer", "upstream"), idle).await,
            UpstreamStream::Unix(up) => relay(tls, up, ("peer", "upstream"), idle).await,
        }
    };
    let result = tokio::select! {
        result = relayed => result,
        () = registration.closed_by_policy() => Err(RelayError::NoLongerTrusted),
    };
    ctx.finished(listener, peer, result);
}

/// Serves one connection accepted by an outbound tcp listener.
pub async fn serve_outbound(
    ctx: &ListenerContext,
    listener: &ListenerConfig,
    plain: TcpStream,
    client: SocketAddr,
) {
    let generation = ctx.store.current();
    let Some(tls_config) = generation.client_config(&listener.name) else {
        tracing::error!(listener = %listener.name, "no TLS client config in the current generation");
        return;
    };
    drop(generation);
    let Some(server_name) = listener.server_name.clone() else {
        tracing::error!(listener = %listener.name, "outbound listener without a server name");
        return;
    };

    let remote = match upstream::connect(&listener.upstream, listener.timeouts.connect).await {
        Ok(UpstreamStream::Tcp(tcp)) => tcp,
        Ok(UpstreamStream::Unix(_)) => {
            // Validation refuses unix upstreams for outbound listeners.
            tracing::error!(listener = %listener.name, "outbound listener with a unix upstream");
            return;
        }
        Err(e) => {
            tracing::warn!(
                listener = %listener.name, %client, upstream = %listener.upstream,
                error = %e, "cannot reach remote host; closing the local client's connection"
            );
            return;
        }
    };
    let remote_addr = remote.peer_addr().ok();

    let handshake = observe(TlsConnector::from(tls_config).connect(server_name, remote));
    let tls = match tokio::time::timeout(listener.timeouts.handshake, handshake).await {
        Ok((Ok(tls), _)) => tls,
        Ok((Err(e), policy)) => {
            let peer = remote_addr.unwrap_or(client);
            return ctx.refused(listener, peer, RejectReason::of_handshake(&e, policy), &e);
        }
        Err(_) => {
            let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
            let peer = remote_addr.unwrap_or(client);
            return ctx.refused(listener, peer, RejectReason::Timeout, &e);
        }
    };

    ctx.stats.handshake_ok();
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec();
    let registration = ctx.connections.register(
        &listener.name,
        &listener.trust_domain,
        remote_addr.unwrap_or(client),
        AuthUsage::Server,
        chain,
    );
    let result = tokio::select! {
        result = relay(plain, tls, ("client", "remote"), listener.timeouts.idle) => result,
        () = registration.closed_by_policy() => Err(RelayError::NoLongerTrusted),
    };
    ctx.finished(listener, client, result);
}

impl ListenerContext {
    fn refused(
        &self,
        listener: &ListenerConfig,
        peer: SocketAddr,
        reason: RejectReason,
        error: &std::io::Error,
    ) {
        self.stats.refused(reason);
        tracing::warn!(
            listener = %listener.name,
            direction = %listener.direction,
            %peer,
            reason = reason.as_str(),
            error = %error,
            "TLS handshake refused"
        );
    }

    fn finished(
        &self,
        listener: &ListenerConfig,
        peer: SocketAddr,
        result: Result<crate::relay::Transferred, RelayError>,
    ) {
        match result {
            Ok(moved) => tracing::debug!(
                listener = %listener.name, %peer,
                bytes_in = moved.a_to_b, bytes_out = moved.b_to_a, "connection closed"
            ),
            Err(e @ (RelayError::Idle(_) | RelayError::NoLongerTrusted)) => {
                tracing::info!(listener = %listener.name, %peer, reason = %e, "connection closed")
            }
            Err(e) => {
                // A TLS peer refusing our certificate shows up here in TLS 1.3,
                // where the client's handshake completes before the server
                // has checked the client certificate.
                if let RelayError::Io { source, .. } = &e
                    && RejectReason::classify(source) == RejectReason::PeerRefused
                {
                    return self.refused(listener, peer, RejectReason::PeerRefused, source);
                }
                tracing::info!(listener = %listener.name, %peer, error = %e, "connection ended with an error")
            }
        }
    }
}
