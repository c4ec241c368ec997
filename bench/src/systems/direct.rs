//! The baseline: no proxy at all, the load generator straight to the
//! upstream, so every proxy's added latency and cost can be read against
//! it.

use super::{Endpoints, L4Endpoints};
use crate::upstream::UpstreamAddrs;

/// What the report says about the baseline.
pub(super) const SETTINGS: &[&str] = &["load generator straight to the upstream, no TLS"];

/// Every figure goes straight to the upstream; there is no server side
/// to handshake with.
pub(super) fn endpoints(up: &UpstreamAddrs) -> Endpoints {
    Endpoints {
        grpc_l7: Some(up.grpc),
        l4: Some(L4Endpoints {
            grpc: up.grpc,
            echo: up.echo,
            echo_resume: up.echo,
            sink: up.sink,
        }),
        server_echo: None,
    }
}
