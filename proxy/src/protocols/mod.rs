//! One module per protocol, each readable top-down from accept to close.
//! Shared pieces (TLS handshakes, upstream connects, the relay, identity
//! headers, rejection classes) are called from here, never copied.

pub mod activity;
pub mod coalesce;
pub mod grpc;
pub mod grpc_status;
pub mod grpc_wire;
pub mod handshake;
pub mod http;
pub mod identity_headers;
pub mod l7;
pub mod mariadb;
pub mod pool;
pub mod tcp;
