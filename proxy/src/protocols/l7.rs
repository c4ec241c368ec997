//! What the HTTP/2 and HTTP/1 modes share: driving a served connection to
//! its end, with GOAWAY on drain, on a peer that no longer qualifies, on
//! an idle connection and on a stream-reset flood, and a hard close for a
//! peer that never sends anything.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use crate::connections::Registration;
use crate::metrics::RequestMetrics;
use crate::transport::wake_gate::WakeGate;

/// The body type of every response the L7 modes send (defined with the
/// stream tracking that wraps it).
pub use super::activity::BoxBody as Body;

/// How long a connection told to go away (idle, flood) may take to close
/// on its own before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// The limits one connection is held to.
#[derive(Debug)]
pub struct Limits<'a> {
    pub listener: &'a str,
    pub activity: &'a Activity,
    /// The peer must send its first bytes (the h2 preface, a request line)
    /// within this (the listener's handshake timeout).
    pub first_bytes: Duration,
    /// A connection with no open stream for this long is sent away
    /// (`idle_timeout`).
    pub idle: Duration,
    pub metrics: &'a RequestMetrics,
}

/// Runs `connection` until it ends. `shutdown` (hyper's graceful shutdown:
/// GOAWAY for h2, close-when-idle for HTTP/1) is called once when the
/// daemon drains, when the peer no longer qualifies after a trust change
/// (`registration`), when the connection has been idle for
/// `limits.idle`, or when the peer resets streams too fast; in-flight
/// requests may then finish — for a peer that no longer qualifies within
/// `reload.drain_grace`, for an idle or flooding one within a second —
/// after which the connection is dropped and `None` returned. (A drain is
/// bounded by the daemon's drain deadline instead.) A peer that sends
/// nothing at all within `limits.first_bytes` is dropped at once.
pub async fn drive<F, T>(
    mut connection: Pin<&mut F>,
    shutdown: impl Fn(Pin<&mut F>),
    draining: &CancellationToken,
    registration: Option<&Registration>,
    limits: Limits<'_>,
) -> Option<T>
where
    F: Future<Output = T>,
{
    let leave = async {
        match registration {
            Some(registration) => registration.must_leave().await,
            None => std::future::pending().await,
        }
    };
    let closed = async {
        match registration {
            Some(registration) => registration.closed_by_policy().await,
            None => std::future::pending().await,
        }
    };
    // The connection wakes this task for every frame and every stream's
    // progress; the waits below fire a handful of times in its life. They
    // are made once, outside the loop (no timer or waiter registered per
    // wake-up), and polled only after one of them fired (`WakeGate`).
    let drained = draining.cancelled();
    let flood = limits.activity.flooding();
    let tick_every = (limits.first_bytes.min(limits.idle) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let tick = tokio::time::sleep(tick_every);
    tokio::pin!(leave, closed, drained, flood, tick);
    let gate = WakeGate::new();
    let mut told_to_go = false;
    let mut leaving = false;
    let mut flood_seen = false;
    let mut drop_at: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            let Some(mut waits) = gate.opened(cx) else {
                return Poll::Pending;
            };
            let waits = &mut waits;
            // Each wait that fired is handled, then the connection polled
            // again (a GOAWAY to send) and every wait too (to register).
            if !told_to_go && drained.as_mut().poll(waits).is_ready() {
                shutdown(connection.as_mut());
                told_to_go = true;
                gate.rearm();
                continue;
            }
            if !leaving && leave.as_mut().poll(waits).is_ready() {
                leaving = true;
                if !told_to_go {
                    shutdown(connection.as_mut());
                    told_to_go = true;
                }
                gate.rearm();
                continue;
            }
            if closed.as_mut().poll(waits).is_ready() {
                return Poll::Ready(None);
            }
            if !flood_seen && flood.as_mut().poll(waits).is_ready() {
                flood_seen = true;
                limits
                    .metrics
                    .connection_ended(limits.listener, "reset_flood");
                tracing::warn!(
                    listener = limits.listener,
                    "peer resets streams faster than allowed; sending GOAWAY"
                );
                if !told_to_go {
                    shutdown(connection.as_mut());
                    told_to_go = true;
                }
                drop_at = Some(Instant::now() + GOAWAY_GRACE);
                gate.rearm();
                continue;
            }
            if tick.as_mut().poll(waits).is_ready() {
                tick.as_mut().reset(Instant::now() + tick_every);
                let activity = limits.activity;
                if !activity.heard_from_peer() && activity.age() >= limits.first_bytes {
                    limits
                        .metrics
                        .connection_ended(limits.listener, "no_first_bytes");
                    tracing::info!(listener = limits.listener, timeout = ?limits.first_bytes,
                        "peer sent nothing after the TLS handshake; closing");
                    return Poll::Ready(None);
                }
                if !told_to_go && activity.idle_for() >= limits.idle {
                    limits.metrics.connection_ended(limits.listener, "idle");
                    tracing::debug!(listener = limits.listener, idle = ?limits.idle,
                        "no open stream for idle_timeout; sending GOAWAY");
                    shutdown(connection.as_mut());
                    told_to_go = true;
                    drop_at = Some(Instant::now() + GOAWAY_GRACE);
                }
                if drop_at.is_some_and(|at| Instant::now() >= at) {
                    return Poll::Ready(None);
                }
                gate.rearm();
                continue;
            }
            // Nothing fired: every wait is registered with the gate.
            return Poll::Pending;
        }
    })
    .await
}
