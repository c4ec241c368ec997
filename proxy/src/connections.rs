//! Established connections and the peer each one verified.
//!
//! A reload that changes trust must not leave connections open whose peer
//! would be refused now: a CA removed from the bundle should end the
//! sessions it vouched for. Each connection registers its peer's chain
//! here after the handshake; after a trust change the reloader re-verifies
//! every registered chain against the new generation and closes the ones
//! that fail once the grace period has passed. Everything else is
//! untouched by a swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use mtlsd_reload::{AuthUsage, Generation};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

/// What the registry knows about one live connection.
#[derive(Debug)]
struct LiveConnection {
    listener: String,
    trust_domain: String,
    peer: SocketAddr,
    /// How the peer authenticated: a client certificate (inbound) or a
    /// server certificate (outbound).
    usage: AuthUsage,
    chain: Vec<CertificateDer<'static>>,
    close: CancellationToken,
}

#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, LiveConnection>>,
}

/// Keeps a connection registered; dropping it unregisters.
#[derive(Debug)]
pub struct Registration<'a> {
    registry: &'a ConnectionRegistry,
    id: u64,
    close: CancellationToken,
}

impl Registration<'_> {
    /// Resolves when the connection must be closed (its peer no longer
    /// verifies and the grace period is over).
    pub async fn closed_by_policy(&self) {
        self.close.cancelled().await;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl ConnectionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConnection>> {
        // The map stays consistent even if a holder panicked: every
        // operation on it is a single insert, remove or read.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(
        &self,
        listener: &str,
        trust_domain: &str,
        peer: SocketAddr,
        usage: AuthUsage,
        chain: Vec<CertificateDer<'static>>,
    ) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        self.lock().insert(
            id,
            LiveConnection {
                listener: listener.to_owned(),
                trust_domain: trust_domain.to_owned(),
                peer,
                usage,
                chain,
                close: close.clone(),
            },
        );
        Registration {
            registry: self,
            id,
            close,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-verifies every live peer against `generation`; the ones that no
    /// longer verify are closed after `grace`. Returns how many were
    /// scheduled for closing.
    pub fn revalidate(&self, generation: &Generation, grace: Duration) -> usize {
        let provider = mtlsd_reload::provider();
        let now = SystemTime::now();
        let mut doomed = Vec::new();
        for conn in self.lock().values() {
            let verdict = match generation.bundle(&conn.trust_domain) {
                None => Err(format!("trust domain '{}' is gone", conn.trust_domain)),
                Some(bundle) => bundle
                    .verify_chain(&conn.chain, conn.usage, &provider, now)
                    .map_err(|e| e.to_string()),
            };
            if let Err(reason) = verdict {
                tracing::warn!(
                    listener = %conn.listener,
                    peer = %conn.peer,
                    %reason,
                    grace = ?grace,
                    "peer no longer verifies under the new trust bundle; closing after the grace period"
                );
                doomed.push(conn.close.clone());
            }
        }
        let count = doomed.len();
        if count > 0 {
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
