//! TLS to and from peers, below the protocols: the shared handshake (one
//! snapshot of the material, the policy's verdict, counted refusals; gRPC
//! listeners run it on a thread of its own and move the finished socket
//! to the data path) and the pooled h2/HTTP
//! clients of the L7 modes with their write coalescing.
//! Nothing here knows which protocol or listener loop called it: it takes a
//! [`handshake::Handshaker`] and the listener's settings.

pub mod coalesce;
pub mod h2_stream;
pub mod h2_upstream;
pub mod handshake;
pub mod handshake_thread;
pub mod pool;
pub mod socket;
pub mod wake_gate;
