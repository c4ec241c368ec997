//! One module per protocol, each readable top-down from accept to close,
//! and [`serve`], which picks the one a listener speaks. Shared pieces (TLS
//! handshakes and pools in `transport`, upstream connects, the relay,
//! identity headers, rejection classes) are called from here, never copied.

pub mod activity;
pub mod grpc;
pub mod grpc_status;
pub mod grpc_wire;
pub mod http;
pub mod identity_headers;
pub mod l7;
pub mod mariadb;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::{Direction, Protocol};
use crate::listener_context::ListenerContext;

/// Serves one accepted connection with the protocol its listener speaks,
/// under the settings in force when it was accepted.
pub async fn serve(ctx: Arc<ListenerContext>, stream: TcpStream, peer: SocketAddr) {
    let config = ctx.config.load_full();
    match (config.protocol, config.direction) {
        (Protocol::Tcp, Direction::Inbound) => {
            tcp::serve_inbound(&ctx.handshaker, &config, stream, peer).await
        }
        (Protocol::Tcp, Direction::Outbound) => {
            tcp::serve_outbound(&ctx.handshaker, &config, stream, peer).await
        }
        (Protocol::Grpc, Direction::Inbound) => {
            grpc::serve_inbound(ctx, config, stream, peer).await
        }
        (Protocol::Grpc, Direction::Outbound) => {
            grpc::serve_outbound(ctx, config, stream, peer).await
        }
        (Protocol::Http, Direction::Inbound) => {
            http::serve_inbound(ctx, config, stream, peer).await
        }
        (Protocol::Mariadb, Direction::Inbound) => {
            mariadb::serve_inbound(&ctx.handshaker, &config, stream, peer).await
        }
        (Protocol::Mariadb, Direction::Outbound) => {
            mariadb::serve_outbound(&ctx.handshaker, &config, stream, peer).await
        }
        (other, _) => {
            // Validation refuses protocols that are not served yet.
            tracing::error!(listener = %config.name, protocol = other.as_str(), "protocol not served");
        }
    }
}
