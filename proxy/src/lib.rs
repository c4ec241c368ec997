//! mtlsd: a per-host mTLS sidecar proxy.
//!
//! The binary (`main.rs`) is a thin shell over this library so that tests
//! can run the daemon in-process with ephemeral ports.
//!
//! Where things live: [`config`] (the file and its validation), [`daemon`]
//! (lifecycle), [`listener`] (accept loops and back-pressure),
//! [`listener_context`] (what a listener's connections share),
//! [`protocols`] (one module per protocol, and the dispatch to them),
//! [`transport`] (TLS handshakes and pooled upstream clients), [`relay`]
//! (moving bytes), [`reject`] (why peers are refused), [`status_report`] (what
//! `/status` serves and `mtlsd status` reads back), [`commands`] (the CLI
//! verbs), [`logging`] (stderr or the journal), [`bootstrap`] (the trust
//! bundles, served to hosts that join).

#![forbid(unsafe_code)]

pub mod admin;
pub mod bootstrap;
pub mod commands;
pub mod config;
pub mod connections;
pub mod control_socket;
pub mod counting;
pub mod cpu_priority;
pub mod daemon;
pub mod error_chain;
pub mod expiry_watch;
pub mod listener;
pub mod listener_context;
pub mod logging;
pub mod metrics;
pub(crate) mod notify;
pub mod peers;
pub mod protocols;
pub mod reject;
pub mod relay;
pub mod reload_report;
pub mod reloading;
pub mod rotation;
pub mod rotation_report;
pub mod scrape;
pub mod state;
pub mod status;
pub mod status_report;
pub mod transport;
pub mod upstream;
