//! Accept loops: one per configured listener.
//!
//! Back-pressure is explicit: a listener takes a connection slot *before*
//! calling accept, so at `max_connections` it simply stops accepting and new
//! clients wait in the kernel's backlog instead of being accepted and
//! dropped. Shutdown is designed in: on drain the loop stops, its socket is
//! closed, and the connections it spawned are tracked until they finish or
//! the drain deadline forces them closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
pub use crate::counting::{ActiveConnection, ListenerStats};
use crate::listener_context::ListenerContext;
use crate::protocols;

/// Signals shared by all listeners of one daemon.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Stop accepting.
    pub stop_accepting: CancellationToken,
    /// Close whatever is still open (drain deadline passed).
    pub force_close: CancellationToken,
    pub connections: TaskTracker,
}

/// Binds `config.listen`. Nothing is accepted until [`accept_loop`] runs.
pub async fn bind(config: &ListenerConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Accepts until `stop` (this listener removed) or the daemon stops.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    life: Lifecycle,
    stop: CancellationToken,
) {
    let name = ctx.name();
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            () = life.stop_accepting.cancelled() => break,
            slot = ctx.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            () = life.stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(listener = %name, %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let ctx = ctx.clone();
        let force_close = life.force_close.clone();
        let active = ctx.stats().connection_opened();
        life.connections.spawn(async move {
            let _active = active;
            let serve = protocols::serve(ctx, stream, peer);
            tokio::select! {
                () = serve => {}
                () = force_close.cancelled() => {}
            }
            drop(slot);
        });
    }
    tracing::debug!(listener = %name, "stopped accepting");
}
