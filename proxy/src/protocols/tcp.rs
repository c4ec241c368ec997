//! `protocol = "tcp"`: an mTLS tunnel for any byte stream.
//!
//! Inbound: accept TLS, require and verify a client certificate against the
//! listener's trust domain (and, with an inventory, its host and roles),
//! connect the plaintext upstream, relay.
//! Outbound: accept plaintext from a local daemon, connect the remote host,
//! originate TLS with this host's certificate and verify the server's chain,
//! name and roles, relay.
//!
//! Each connection takes one snapshot of the material generation before its
//! handshake and uses it throughout, so a reload mid-handshake cannot mix
//! old and new material; connections already established are untouched by
//! a swap unless their peer stops verifying.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::config::{ListenerConfig, Outbound, Upstream};
use crate::reject::RejectReason;
use crate::relay::{RelayError, Transferred, relay};
use crate::transport::handshake::{self, Handshaker};
use crate::upstream::{self, UpstreamStream};

/// Serves one connection accepted by an inbound tcp listener.
pub async fn serve_inbound(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    upstream: &Upstream,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let Some(accepted) = handshake::accept(ctx, listener, tcp, peer).await else {
        return;
    };
    let registration = ctx.register(listener, peer, accepted.chain, accepted.generation);

    let upstream = match upstream::connect(upstream, listener.timeouts.connect).await {
        Ok(connected) => connected,
        Err(e) => {
            tracing::warn!(
                listener = %listener.name, %peer, %upstream,
                error = %e, "cannot reach upstream; closing the peer's connection"
            );
            return;
        }
    };
    let idle = listener.timeouts.idle;
    let tls = accepted.tls;
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
    finished(ctx, listener, peer, result);
}

/// Serves one connection accepted by an outbound tcp listener.
pub async fn serve_outbound(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    outbound: &Outbound,
    plain: TcpStream,
    client: SocketAddr,
) {
    let judged_under = ctx.store.current().number();
    let Ok(tls) = handshake::connect(ctx, listener, outbound, client).await else {
        return;
    };
    let remote = tls.get_ref().0.get_ref().peer_addr().unwrap_or(client);
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .into();
    let registration = ctx.register(listener, remote, chain, judged_under);
    let result = tokio::select! {
        result = relay(plain, tls, ("client", "remote"), listener.timeouts.idle) => result,
        () = registration.closed_by_policy() => Err(RelayError::NoLongerTrusted),
    };
    finished(ctx, listener, client, result);
}

fn finished(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    peer: SocketAddr,
    result: Result<Transferred, RelayError>,
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
            // where the client's handshake completes before the server has
            // checked the client certificate.
            if let RelayError::Io { source, .. } = &e
                && RejectReason::classify(source) == RejectReason::PeerRefused
            {
                return handshake::refused(
                    ctx,
                    listener,
                    peer,
                    RejectReason::PeerRefused,
                    source,
                    None,
                );
            }
            tracing::info!(listener = %listener.name, %peer, error = %e, "connection ended with an error")
        }
    }
}
