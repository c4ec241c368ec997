//! Established connections and the peer each one verified.
//!
//! A reload that can narrow admission — a bundle, a CRL, the inventory, a
//! listener's roles or routes — must not leave connections open whose peer
//! would be refused now: a revoked or de-roled host keeps nothing it had.
//! Each connection (inbound, outbound, pooled h2 to a remote host, an HTTP
//! upgrade tunnel) registers its peer's chain here after the handshake;
//! after such a reload the reloader re-judges every registered chain with
//! the new generation's policy for its listener ([`UsePolicy::admit`],
//! the same one the handshake used). A connection that no longer
//! qualifies is told at once (L7 modes send GOAWAY, so no new call starts
//! on it) and closed once `reload.drain_grace` has passed; one that still
//! qualifies is untouched.
//!
//! [`UsePolicy::admit`]: mtlsd_reload::UsePolicy::admit

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mtlsd_reload::{Generation, Stage};
use prometheus::{IntCounterVec, Opts, Registry};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio_util::sync::CancellationToken;

/// What the registry knows about one live connection.
#[derive(Debug)]
struct LiveConnection {
    listener: String,
    peer: SocketAddr,
    chain: Arc<[CertificateDer<'static>]>,
    signals: Signals,
    /// Already scheduled for closing by an earlier re-judging.
    doomed: bool,
}

#[derive(Debug, Clone, Default)]
struct Signals {
    /// Stop starting new work (L7: GOAWAY).
    leave: CancellationToken,
    /// Close now.
    close: CancellationToken,
}

#[derive(Debug)]
pub struct ConnectionRegistry {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, LiveConnection>>,
    closed: IntCounterVec,
}

/// Keeps a connection registered; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ConnectionRegistry>,
    id: u64,
    signals: Signals,
}

impl Registration {
    /// Resolves when the peer no longer qualifies: stop accepting new
    /// requests on this connection (L7 modes send GOAWAY).
    pub async fn must_leave(&self) {
        self.signals.leave.cancelled().await;
    }

    /// Resolves when the connection must be closed (its peer no longer
    /// qualifies and the grace period is over).
    pub async fn closed_by_policy(&self) {
        self.signals.close.cancelled().await;
    }

    /// A token cancelled at the same moment as [`Self::closed_by_policy`],
    /// for code that cannot hold the registration (an I/O wrapper).
    pub fn close_token(&self) -> CancellationToken {
        self.signals.close.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl ConnectionRegistry {
    pub fn new(registry: &Registry) -> prometheus::Result<Arc<Self>> {
        let closed = IntCounterVec::new(
            Opts::new(
                "mtlsd_connections_closed_total",
                "Established connections closed by mtlsd because their peer no longer qualified after a trust change, by listener and refusal class.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(closed.clone()))?;
        Ok(Arc::new(Self {
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            closed,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConnection>> {
        // The map stays consistent even if a holder panicked: every
        // operation on it is a single insert, remove or field update.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection of `listener` whose peer at `peer` verified
    /// with `chain` (leaf first).
    pub fn register(
        self: &Arc<Self>,
        listener: &str,
        peer: SocketAddr,
        chain: Arc<[CertificateDer<'static>]>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signals = Signals::default();
        self.lock().insert(
            id,
            LiveConnection {
                listener: listener.to_owned(),
                peer,
                chain,
                signals: signals.clone(),
                doomed: false,
            },
        );
        Registration {
            registry: self.clone(),
            id,
            signals,
        }
    }

    /// Judges one connection that registered after `generation` was
    /// published: its handshake ran under an older policy, and the
    /// re-judging of that reload may have missed it. One that does not
    /// qualify is closed at once (it never qualified under this policy).
    pub fn judge_late(&self, registration: &Registration, generation: &Generation) {
        let now = unix_now();
        let mut live = self.lock();
        let Some(conn) = live.get_mut(&registration.id).filter(|c| !c.doomed) else {
            return;
        };
        if let Some(refused) = judge(conn, generation, now) {
            self.doom(conn, &refused, None);
            conn.signals.close.cancel();
        }
    }

    /// Marks `conn` as no longer qualifying: logged, counted, told to
    /// leave. `grace`: how long it may still finish its work (`None`: it
    /// registered after the change and is closed at once).
    fn doom(&self, conn: &mut LiveConnection, refused: &Refused, grace: Option<Duration>) {
        conn.doomed = true;
        let host = refused.host.as_deref().unwrap_or("-");
        match grace {
            Some(grace) => tracing::warn!(
                listener = %conn.listener, peer = %conn.peer, host, reason = refused.reason,
                detail = %refused.detail, grace = ?grace,
                "peer no longer qualifies after a trust change; closing its connection after the grace period"
            ),
            None => tracing::warn!(
                listener = %conn.listener, peer = %conn.peer, host, reason = refused.reason,
                detail = %refused.detail,
                "peer completed its handshake under the previous trust policy and no longer qualifies; closing"
            ),
        }
        self.closed
            .with_label_values(&[conn.listener.as_str(), refused.reason])
            .inc();
        conn.signals.leave.cancel();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-judges every live connection with `generation`'s policy for its
    /// listener. The ones that no longer qualify are told to leave at once
    /// and closed after `grace`; each is logged and counted. A connection
    /// of a listener the generation no longer has is judged gone. Returns
    /// how many were scheduled for closing.
    pub fn rejudge(&self, generation: &Generation, grace: Duration) -> usize {
        let now = unix_now();
        let mut doomed = Vec::new();
        for conn in self.lock().values_mut().filter(|c| !c.doomed) {
            let Some(refused) = judge(conn, generation, now) else {
                continue;
            };
            self.doom(conn, &refused, Some(grace));
            doomed.push(conn.signals.close.clone());
        }
        let count = doomed.len();
        if !doomed.is_empty() {
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                for close in doomed {
                    close.cancel();
                }
            });
        }
        count
    }
}

/// Why a live connection no longer qualifies.
struct Refused {
    reason: &'static str,
    host: Option<String>,
    detail: String,
}

/// `generation`'s verdict on `conn`: `None` while it qualifies. A
/// connection of a listener the generation no longer has is judged gone.
fn judge(conn: &LiveConnection, generation: &Generation, now: UnixTime) -> Option<Refused> {
    let Some(policy) = generation.policy(&conn.listener) else {
        return Some(Refused {
            reason: "listener_removed",
            host: None,
            detail: "its listener was removed".to_owned(),
        });
    };
    policy
        .admit(&conn.chain, None, now, Stage::Connection)
        .err()
        .map(|verdict| Refused {
            reason: verdict.refusal.as_str(),
            host: verdict.host,
            detail: verdict.detail,
        })
}

fn unix_now() -> UnixTime {
    UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}
