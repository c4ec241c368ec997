//! What `/status` reports and `mtlsd status` shows: the material in force
//! per trust domain, the last reload, the listeners with their counters,
//! and the peers seen.

use std::time::SystemTime;

use mtlsd_expiry::{CertFacts, ExpiryState, ExpiryWindows};
use serde::Serialize;

use crate::reject::RejectReason;
use crate::reload_report::ReloadOutcome;
use crate::state::DaemonState;

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub ready: bool,
    pub started_at: String,
    /// The runtime's worker threads (`runtime.worker_threads`).
    pub worker_threads: usize,
    pub generation: u64,
    pub loaded_at: String,
    pub last_reload: Option<LastReload>,
    pub identity: Cert,
    pub trust_domains: Vec<TrustDomain>,
    pub inventory: Option<Inventory>,
    pub listeners: Vec<Listener>,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Serialize)]
pub struct LastReload {
    pub time: String,
    #[serde(flatten)]
    pub outcome: ReloadOutcome,
}

#[derive(Debug, Serialize)]
pub struct Cert {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub serial: String,
    pub sha256: String,
    pub not_before: String,
    pub not_after: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TrustDomain {
    pub name: String,
    pub version: Option<String>,
    pub sha256: String,
    pub cas: Vec<Cert>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<Crl>,
}

#[derive(Debug, Serialize)]
pub struct Crl {
    pub file: String,
    pub issuer: String,
    pub this_update: String,
    pub next_update: Option<String>,
    /// Past its nextUpdate: still enforced, but the publisher is late.
    pub late: bool,
    pub entries: usize,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Inventory {
    pub cluster: String,
    pub hosts: usize,
    pub revoked: usize,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Listener {
    pub name: String,
    pub direction: String,
    pub protocol: &'static str,
    pub addr: String,
    pub upstream: String,
    pub trust_domain: String,
    /// Handshakes started: completed, refused, failed or running.
    pub handshakes_attempted: u64,
    /// Handshakes completed with an admitted peer.
    pub handshakes_completed: u64,
    pub refused: std::collections::BTreeMap<&'static str, u64>,
    pub connections_total: u64,
    pub connections_active: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub host: String,
    pub roles: Vec<String>,
    pub last_handshake: String,
    pub cert_not_after: String,
    pub cert_serial: String,
    pub state: &'static str,
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn cert(facts: &CertFacts, file: Option<String>, now: SystemTime, windows: ExpiryWindows) -> Cert {
    Cert {
        subject: facts.subject.clone(),
        issuer: facts.issuer.clone(),
        sans: facts.sans.iter().map(ToString::to_string).collect(),
        serial: facts.serial_hex.clone(),
        sha256: facts.fingerprint.to_string(),
        not_before: time(facts.not_before),
        not_after: time(facts.not_after),
        state: ExpiryState::of(facts, now, windows).as_str(),
        file,
    }
}

/// Whether the daemon should receive traffic: started, not draining, and
/// not serving an identity outside its validity window.
pub fn readiness(state: &DaemonState) -> Result<(), String> {
    if !state.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return Err("not started, or draining".to_owned());
    }
    let generation = state.store.current();
    if let Some(reason) = generation.own_revocation() {
        return Err(reason.to_owned());
    }
    let leaf = generation.identity().leaf();
    match ExpiryState::of(leaf, SystemTime::now(), state.expiry_windows()) {
        ExpiryState::Expired => Err(format!(
            "identity certificate {} expired at {}",
            leaf.serial_hex,
            time(leaf.not_after)
        )),
        ExpiryState::NotYetValid => Err(format!(
            "identity certificate {} is not valid before {}",
            leaf.serial_hex,
            time(leaf.not_before)
        )),
        _ => Ok(()),
    }
}

pub fn status(state: &DaemonState) -> Status {
    let now = SystemTime::now();
    let windows = state.expiry_windows();
    let generation = state.store.current();
    let identity = generation.identity();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        ready: readiness(state).is_ok(),
        started_at: time(state.started_at),
        worker_threads: tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(0),
        generation: generation.number(),
        loaded_at: time(generation.loaded_at()),
        last_reload: state.last_reload().map(|(at, outcome)| LastReload {
            time: time(at),
            outcome,
        }),
        identity: cert(
            identity.leaf(),
            Some(identity.spec().cert.display().to_string()),
            now,
            windows,
        ),
        trust_domains: generation
            .bundles()
            .iter()
            .map(|(name, bundle)| TrustDomain {
                name: name.clone(),
                version: bundle.version().map(str::to_owned),
                sha256: bundle.fingerprint().to_string(),
                cas: bundle
                    .cas()
                    .iter()
                    .map(|ca| cert(&ca.facts, Some(ca.path.display().to_string()), now, windows))
                    .collect(),
                crls: bundle
                    .crls()
                    .iter()
                    .map(|crl| Crl {
                        file: crl.path().display().to_string(),
                        issuer: crl.issuer().to_owned(),
                        this_update: time(crl.this_update()),
                        next_update: crl.next_update().map(time),
                        late: crl.next_update().is_some_and(|next| next <= now),
                        entries: crl.entries(),
                        sha256: crl.fingerprint().to_string(),
                    })
                    .collect(),
            })
            .collect(),
        inventory: generation.inventory().map(|inv| Inventory {
            cluster: inv.cluster().to_owned(),
            hosts: inv.hosts().count(),
            revoked: inv.revoked_count(),
            sha256: inv.fingerprint().to_string(),
        }),
        listeners: state
            .listener_views()
            .into_iter()
            .map(|(name, addr, ctx)| {
                let config = ctx.config.load();
                let stats = ctx.stats();
                let (connections_total, connections_active) = stats.connections();
                let (bytes_received, bytes_sent) = stats.bytes();
                Listener {
                    name,
                    direction: config.direction().to_string(),
                    protocol: config.protocol().as_str(),
                    addr: addr.to_string(),
                    upstream: config.upstream().to_string(),
                    trust_domain: config.trust_domain.clone(),
                    handshakes_attempted: stats.handshakes_attempted(),
                    handshakes_completed: stats.handshakes(),
                    refused: RejectReason::ALL
                        .iter()
                        .map(|r| (r.as_str(), stats.refusals(*r)))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                    connections_total,
                    connections_active,
                    bytes_received,
                    bytes_sent,
                }
            })
            .collect(),
        peers: state
            .peers
            .snapshot()
            .into_iter()
            .map(|peer| Peer {
                state: ExpiryState::of(&peer.latest, now, windows).as_str(),
                host: peer.host,
                roles: peer.roles,
                last_handshake: time(peer.last_handshake),
                cert_not_after: time(peer.earliest_not_after),
                cert_serial: peer.latest.serial_hex,
            })
            .collect(),
    }
}
