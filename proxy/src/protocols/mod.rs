//! One module per protocol, each readable top-down from accept to close,
//! and [`serve`], which picks the one a listener speaks. Shared pieces (TLS
//! handshakes and pools in `transport`, upstream connects, the relay,
//! identity headers, rejection classes) are called from here, never copied.

pub mod activity;
pub mod grpc;
pub mod grpc_status;
pub mod grpc_wire;
pub mod h2_serve;
pub mod http;
pub mod identity_headers;
pub mod l7;
pub mod mariadb;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use ::http::uri::Scheme;

use crate::config::{HostPort, InboundMode, ListenerConfig, OutboundProtocol, Side};
use crate::listener_context::ListenerContext;
use crate::transport::pool::UpstreamTarget;

/// Serves one accepted connection with the protocol its listener speaks,
/// under the settings in force when it was accepted. The match is
/// exhaustive: what a side cannot speak has no variant to dispatch.
pub async fn serve(ctx: Arc<ListenerContext>, stream: TcpStream, peer: SocketAddr) {
    let config = ctx.config.load_full();
    let tls = &ctx.handshaker;
    match &config.side {
        Side::Inbound(inbound) => match &inbound.mode {
            InboundMode::Tcp { upstream } => {
                tcp::serve_inbound(tls, &config, upstream, stream, peer).await
            }
            InboundMode::Mariadb { upstream } => {
                mariadb::serve_inbound(tls, &config, upstream, stream, peer).await
            }
            InboundMode::Grpc { upstream, .. } => {
                let Some(target) = l7_target(&config, Scheme::HTTP, upstream) else {
                    return;
                };
                grpc::serve_inbound(ctx.clone(), config.clone(), target, stream, peer).await
            }
            InboundMode::Http { upstream } => {
                let Some(target) = l7_target(&config, Scheme::HTTP, upstream) else {
                    return;
                };
                http::serve_inbound(ctx.clone(), config.clone(), target, stream, peer).await
            }
        },
        Side::Outbound(outbound) => match outbound.protocol {
            OutboundProtocol::Tcp => {
                tcp::serve_outbound(tls, &config, outbound, stream, peer).await
            }
            OutboundProtocol::Mariadb => {
                mariadb::serve_outbound(tls, &config, outbound, stream, peer).await
            }
            OutboundProtocol::Grpc => {
                let Some(target) = l7_target(&config, Scheme::HTTPS, &outbound.remote) else {
                    return;
                };
                grpc::serve_outbound(
                    ctx.clone(),
                    config.clone(),
                    outbound.clone(),
                    target,
                    stream,
                    peer,
                )
                .await
            }
        },
    }
}

/// The URI authority an L7 listener forwards to. Validation refuses a
/// host that is not one, so this only guards against a bug.
fn l7_target(
    config: &ListenerConfig,
    scheme: Scheme,
    upstream: &HostPort,
) -> Option<UpstreamTarget> {
    let target = UpstreamTarget::new(scheme, upstream);
    if target.is_none() {
        tracing::error!(listener = %config.name, %upstream, "upstream is not a URI authority");
    }
    target
}
