//! Integration tests for mtlsd: one test binary (each binary links the
//! whole dependency tree, and CI has two cores).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod bootstrap;
mod cli;
mod control_socket;
mod crl;
mod grpc;
mod h2_limits;
mod http;
mod identity;
mod mariadb;
mod observability;
mod reload;
mod rotation;
mod sessions;
mod support;
mod token;
mod trust_changes;
mod tunnel;
