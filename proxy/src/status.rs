//! Builds what `/status` reports and `mtlsd status` shows from the
//! daemon's state: the material in force per trust domain, the last
//! reload, the listeners with their counters, and the peers seen. The
//! report's types are in [`crate::status_report`], which the CLI reads
//! back.

use std::time::SystemTime;

use mtlsd_expiry::{CertFacts, ExpiryState, ExpiryWindows};

use crate::reject::RejectReason;
use crate::state::DaemonState;
use crate::status_report::{
    Cert, Crl, IdentityToken, Inventory, LastReload, Listener, Peer, PeerTrust, Status, TrustDomain,
};

/// RFC 3339, to the second: how every report shows a time.
pub(crate) fn time(t: SystemTime) -> String {
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
        state: ExpiryState::of(facts, now, windows).as_str().to_owned(),
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
        version: env!("CARGO_PKG_VERSION").to_owned(),
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
                    protocol: config.protocol().as_str().to_owned(),
                    addr: addr.to_string(),
                    upstream: config.upstream().to_string(),
                    trust_domain: config.trust_domain.clone(),
                    handshakes_attempted: stats.handshakes_attempted(),
                    handshakes_completed: stats.handshakes(),
                    refused: RejectReason::ALL
                        .iter()
                        .map(|r| (r.as_str().to_owned(), stats.refusals(*r)))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                    connections_total,
                    connections_active,
                    bytes_received,
                    bytes_sent,
                }
            })
            .collect(),
        peers: {
            let peers = state
                .peers
                .current(now, state.reporting().peers.forget_after);
            let mut trust: std::collections::HashMap<String, Vec<PeerTrust>> =
                std::collections::HashMap::new();
            for t in state.peers.trust(&generation, now) {
                let dependence = t.dependence.unwrap_or(mtlsd_reload::CaDependence {
                    verifies: false,
                    depends_on: Vec::new(),
                });
                trust.entry(t.host).or_default().push(PeerTrust {
                    trust_domain: t.trust_domain,
                    leaf_issuer: t.leaf_issuer,
                    verifies: dependence.verifies,
                    depends_on_ca: dependence.depends_on.iter().map(|f| f.to_hex()).collect(),
                });
            }
            peers
                .into_iter()
                .map(|peer| Peer {
                    trust: trust.remove(&peer.host).unwrap_or_default(),
                    state: ExpiryState::of(&peer.latest, now, windows)
                        .as_str()
                        .to_owned(),
                    host: peer.host,
                    roles: peer.roles,
                    last_handshake: time(peer.last_handshake),
                    cert_not_after: time(peer.earliest.not_after),
                    cert_serial: peer.latest.serial_hex,
                })
                .collect()
        },
        identity_token: identity.token_key().map(|token| IdentityToken {
            key: token.key,
            module: token.module.display().to_string(),
            sessions: token.sessions,
            sessions_open: token.sessions_open,
        }),
        identity_depends_on_ca: generation
            .identity_dependence()
            .depends_on
            .iter()
            .map(|f| f.to_hex())
            .collect(),
    }
}
