//! One module per protocol, each readable top-down from accept to close.
//! Shared pieces (TLS handshakes, upstream connects, the relay, rejection
//! classes) are called from here, never copied.

pub mod tcp;
