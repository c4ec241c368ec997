//! mtlsd: a per-host mTLS sidecar proxy.
//!
//! The binary (`main.rs`) is a thin shell over this library so that tests
//! can run the daemon in-process with ephemeral ports.

#![forbid(unsafe_code)]

pub mod config;
