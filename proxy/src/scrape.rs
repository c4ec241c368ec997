//! Everything that describes *state* — loaded certificates and their
//! expiry, trust bundles and CRLs, peers, and the per-listener counters the
//! data path keeps as plain atomics — rendered as metrics at scrape time
//! from the daemon's current state, so a series disappears the moment the
//! thing it describes does (a removed CA, a host dropped from the
//! inventory) and the data path never touches a metrics lock.
//!
//! Label sets are bounded by configuration: listener names, trust domains,
//! loaded certificates, reason classes; per-peer series (one per inventory
//! host seen) only with `[metrics] per_peer = true`, otherwise the fleet
//! summaries of [`FleetSummary`] in a fixed number of series.

use std::sync::Weak;
use std::time::{SystemTime, UNIX_EPOCH};

use mtlsd_expiry::{CertFacts, ExpiryState};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use crate::metrics::short_fingerprint;
use crate::peers::FleetSummary;
use crate::reject::RejectReason;
use crate::state::DaemonState;

/// Renders state as metrics at scrape time.
#[derive(Debug)]
pub struct StateCollector {
    state: Weak<DaemonState>,
    descs: Vec<Desc>,
}

impl StateCollector {
    pub fn new(state: Weak<DaemonState>) -> prometheus::Result<Self> {
        let template = StateMetrics::new()?;
        let descs = template
            .all()
            .iter()
            .flat_map(|c| c.desc())
            .cloned()
            .collect();
        Ok(Self { state, descs })
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(state) = self.state.upgrade() else {
            return Vec::new();
        };
        let Ok(metrics) = StateMetrics::new() else {
            return Vec::new();
        };
        metrics.fill(&state, SystemTime::now());
        metrics.all().iter().flat_map(|c| c.collect()).collect()
    }
}

struct StateMetrics {
    build_info: IntGaugeVec,
    not_after: GaugeVec,
    not_before: GaugeVec,
    expiry_state: IntGaugeVec,
    bundle_info: IntGaugeVec,
    trust_ca_info: IntGaugeVec,
    identity_depends_on_ca: IntGaugeVec,
    peers_depending_on_ca: IntGaugeVec,
    peer_not_after: GaugeVec,
    peer_last_handshake: GaugeVec,
    peer_earliest_not_after: GaugeVec,
    peer_earliest_info: IntGaugeVec,
    peers_by_state: IntGaugeVec,
    inventory_hosts: IntGaugeVec,
    handshakes_attempted: IntCounterVec,
    handshakes_completed: IntCounterVec,
    handshakes_resumed: IntCounterVec,
    failures: IntCounterVec,
    crl_next_update: GaugeVec,
    identity_revoked: IntGaugeVec,
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    received: IntCounterVec,
    sent: IntCounterVec,
}

impl StateMetrics {
    fn new() -> prometheus::Result<Self> {
        let cert = &["trust_domain", "kind", "fingerprint"];
        Ok(Self {
            build_info: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_build_info",
                    "Always 1; the labels name the running build.",
                ),
                &["version", "rustls_version"],
            )?,
            not_after: GaugeVec::new(
                Opts::new(
                    "mtlsd_cert_not_after_timestamp_seconds",
                    "Unix time after which a loaded certificate (identity or CA of a trust bundle) is no longer valid.",
                ),
                cert,
            )?,
            not_before: GaugeVec::new(
                Opts::new(
                    "mtlsd_cert_not_before_timestamp_seconds",
                    "Unix time before which a loaded certificate is not yet valid.",
                ),
                cert,
            )?,
            expiry_state: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_cert_expiry_state",
                    "1 for the expiry state each loaded certificate is in (ok, warning, critical, expired, not_yet_valid), 0 for the others.",
                ),
                &["trust_domain", "kind", "fingerprint", "state"],
            )?,
            bundle_info: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_trust_bundle_info",
                    "Always 1; one series per loaded trust bundle with its fingerprint and operator-supplied version.",
                ),
                &["trust_domain", "fingerprint", "version"],
            )?,
            trust_ca_info: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_trust_ca_info",
                    "Always 1; one series per CA of each loaded trust bundle: ca_sha256 is the SHA-256 of the CA's DER in lowercase hex.",
                ),
                &["trust_domain", "ca_sha256", "subject"],
            )?,
            identity_depends_on_ca: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_identity_depends_on_ca",
                    "1 for each CA of its trust domain's bundle that this host's own chain would no longer verify without; summed over hosts: how many hosts removing that CA would cut off.",
                ),
                &["trust_domain", "ca_sha256"],
            )?,
            peers_depending_on_ca: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_peers_depending_on_ca",
                    "Inventory peers seen within peers.stale_after whose latest chain would no longer verify without this CA of the bundle (0 for a CA no such peer needs).",
                ),
                &["trust_domain", "ca_sha256"],
            )?,
            peer_not_after: GaugeVec::new(
                Opts::new(
                    "mtlsd_peer_cert_not_after_timestamp_seconds",
                    "Earliest not-after of the certificates an inventory host presented to us in the last day (only with [metrics] per_peer = true).",
                ),
                &["host"],
            )?,
            peer_last_handshake: GaugeVec::new(
                Opts::new(
                    "mtlsd_peer_last_handshake_timestamp_seconds",
                    "Unix time of the last successful handshake with an inventory host, in either direction (only with [metrics] per_peer = true).",
                ),
                &["host"],
            )?,
            peer_earliest_not_after: GaugeVec::new(
                Opts::new(
                    "mtlsd_peer_cert_earliest_not_after_timestamp_seconds",
                    "Earliest not-after among the certificates every recorded inventory peer presented to us in the last day; mtlsd_peer_cert_earliest_not_after_info names the host.",
                ),
                &[],
            )?,
            peer_earliest_info: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_peer_cert_earliest_not_after_info",
                    "Always 1; one series naming the inventory host and certificate serial behind mtlsd_peer_cert_earliest_not_after_timestamp_seconds.",
                ),
                &["host", "serial"],
            )?,
            peers_by_state: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_peers_by_expiry_state",
                    "Recorded inventory peers by the expiry state of the earliest certificate each presented to us in the last day.",
                ),
                &["state"],
            )?,
            inventory_hosts: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_inventory_hosts",
                    "Inventory hosts other than this one by their last successful handshake with us: recent (within peers.stale_after), stale (longer ago), never (none since start-up, or forgotten after peers.forget_after).",
                ),
                &["seen"],
            )?,
            handshakes_attempted: IntCounterVec::new(
                Opts::new(
                    "mtlsd_handshakes_attempted_total",
                    "TLS handshakes started, by listener: completed, refused, failed, or still running.",
                ),
                &["listener"],
            )?,
            handshakes_completed: IntCounterVec::new(
                Opts::new(
                    "mtlsd_handshakes_completed_total",
                    "TLS handshakes that completed with an admitted peer, by listener (a peer that resets the connection right after completing counts here).",
                ),
                &["listener"],
            )?,
            handshakes_resumed: IntCounterVec::new(
                Opts::new(
                    "mtlsd_handshakes_resumed_total",
                    "Of the completed handshakes, those that resumed a TLS session (no certificates exchanged; the peer is judged on the chain its session was made with), by listener.",
                ),
                &["listener"],
            )?,
            identity_revoked: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_identity_revoked",
                    "1 when this host's own certificate is revoked (in the inventory or by a CRL): peers refuse it until a new one is installed.",
                ),
                &["trust_domain"],
            )?,
            crl_next_update: GaugeVec::new(
                Opts::new(
                    "mtlsd_crl_next_update_timestamp_seconds",
                    "Unix time of each loaded CRL's nextUpdate: a CRL past it is still enforced, but its publisher is late.",
                ),
                &["trust_domain", "issuer", "fingerprint"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "mtlsd_handshake_failures_total",
                    "TLS handshakes that failed or were refused, by listener and reason class.",
                ),
                &["listener", "reason"],
            )?,
            connections_active: IntGaugeVec::new(
                Opts::new(
                    "mtlsd_connections_active",
                    "Connections open now, by listener.",
                ),
                &["listener"],
            )?,
            connections_total: IntCounterVec::new(
                Opts::new(
                    "mtlsd_connections_total",
                    "Connections accepted, by listener.",
                ),
                &["listener"],
            )?,
            received: IntCounterVec::new(
                Opts::new(
                    "mtlsd_received_bytes_total",
                    "Bytes received from the remote side, by listener.",
                ),
                &["listener"],
            )?,
            sent: IntCounterVec::new(
                Opts::new(
                    "mtlsd_sent_bytes_total",
                    "Bytes sent to the remote side, by listener.",
                ),
                &["listener"],
            )?,
        })
    }

    fn all(&self) -> [&dyn Collector; 24] {
        [
            &self.build_info,
            &self.not_after,
            &self.not_before,
            &self.expiry_state,
            &self.bundle_info,
            &self.trust_ca_info,
            &self.identity_depends_on_ca,
            &self.peers_depending_on_ca,
            &self.peer_not_after,
            &self.peer_last_handshake,
            &self.peer_earliest_not_after,
            &self.peer_earliest_info,
            &self.peers_by_state,
            &self.inventory_hosts,
            &self.handshakes_attempted,
            &self.handshakes_completed,
            &self.handshakes_resumed,
            &self.failures,
            &self.crl_next_update,
            &self.identity_revoked,
            &self.connections_active,
            &self.connections_total,
            &self.received,
            &self.sent,
        ]
    }

    fn fill(&self, state: &DaemonState, now: SystemTime) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), RUSTLS_VERSION])
            .set(1);
        let reporting = state.reporting();
        let windows = reporting.expiry.windows;
        let generation = state.store.current();
        let identity = generation.identity();
        let cert = |domain: &str, kind: &str, facts: &CertFacts| {
            let fp = short_fingerprint(facts.fingerprint);
            let labels = [domain, kind, fp.as_str()];
            self.not_after
                .with_label_values(&labels)
                .set(facts.not_after_unix() as f64);
            self.not_before
                .with_label_values(&labels)
                .set(facts.not_before_unix() as f64);
            let current = ExpiryState::of(facts, now, windows);
            for s in ExpiryState::ALL {
                self.expiry_state
                    .with_label_values(&[domain, kind, fp.as_str(), s.as_str()])
                    .set(i64::from(s == current));
            }
        };
        cert(&identity.spec().trust_domain, "identity", identity.leaf());
        self.identity_revoked
            .with_label_values(&[identity.spec().trust_domain.as_str()])
            .set(i64::from(generation.own_revocation().is_some()));
        for (domain, bundle) in generation.bundles() {
            self.bundle_info
                .with_label_values(&[
                    domain.as_str(),
                    short_fingerprint(bundle.fingerprint()).as_str(),
                    bundle.version().unwrap_or(""),
                ])
                .set(1);
            for ca in bundle.cas() {
                cert(domain, "ca", &ca.facts);
                let ca_sha256 = ca.facts.fingerprint.to_hex();
                self.trust_ca_info
                    .with_label_values(&[domain.as_str(), &ca_sha256, &ca.facts.subject])
                    .set(1);
                self.peers_depending_on_ca
                    .with_label_values(&[domain.as_str(), &ca_sha256])
                    .set(0);
            }
            for crl in bundle.crls() {
                if let Some(next_update) = crl.next_update() {
                    self.crl_next_update
                        .with_label_values(&[
                            domain.as_str(),
                            crl.issuer(),
                            short_fingerprint(crl.fingerprint()).as_str(),
                        ])
                        .set(unix(next_update));
                }
            }
        }
        // The book only holds inventory hosts: a host leaving the
        // inventory is forgotten when the reload that removes it applies.
        let peers = state.peers.current(now, reporting.peers.forget_after);
        let inventory = generation.inventory();
        let summary = FleetSummary::of(
            &peers,
            inventory.map(|inv| inv.hosts().map(|h| h.name.as_str())),
            identity.spec().host.as_deref(),
            now,
            windows,
            reporting.peers.stale_after,
        );
        if let Some((host, facts)) = &summary.earliest {
            self.peer_earliest_not_after
                .with_label_values(&[] as &[&str])
                .set(unix(facts.not_after));
            self.peer_earliest_info
                .with_label_values(&[host.as_str(), facts.serial_hex.as_str()])
                .set(1);
        }
        for (state, count) in ExpiryState::ALL.iter().zip(summary.by_state) {
            self.peers_by_state
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        if let Some(seen) = summary.seen {
            for (label, count) in [
                ("recent", seen.recent),
                ("stale", seen.stale),
                ("never", seen.never),
            ] {
                self.inventory_hosts
                    .with_label_values(&[label])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
        for ca in &generation.identity_dependence().depends_on {
            self.identity_depends_on_ca
                .with_label_values(&[identity.spec().trust_domain.as_str(), &ca.to_hex()])
                .set(1);
        }
        // A peer counts once per CA it needs; one quiet for longer than
        // stale_after is left to mtlsd_inventory_hosts{seen="stale"}.
        let trust = state.peers.peer_trust(&generation, now);
        for peer in trust.iter().filter(|p| {
            now.duration_since(p.last_handshake).unwrap_or_default() <= reporting.peers.stale_after
        }) {
            for ca in peer.dependence.iter().flat_map(|d| &d.depends_on) {
                self.peers_depending_on_ca
                    .with_label_values(&[peer.trust_domain.as_str(), &ca.to_hex()])
                    .inc();
            }
        }
        if reporting.metrics.per_peer {
            for peer in &peers {
                self.peer_not_after
                    .with_label_values(&[peer.host.as_str()])
                    .set(unix(peer.earliest.not_after));
                self.peer_last_handshake
                    .with_label_values(&[peer.host.as_str()])
                    .set(unix(peer.last_handshake));
            }
        }
        for (name, stats) in state.listener_stats() {
            self.handshakes_attempted
                .with_label_values(&[name.as_str()])
                .inc_by(stats.handshakes_attempted());
            self.handshakes_completed
                .with_label_values(&[name.as_str()])
                .inc_by(stats.handshakes());
            self.handshakes_resumed
                .with_label_values(&[name.as_str()])
                .inc_by(stats.handshakes_resumed());
            for reason in RejectReason::ALL {
                let count = stats.refusals(reason);
                if count > 0 {
                    self.failures
                        .with_label_values(&[name.as_str(), reason.as_str()])
                        .inc_by(count);
                }
            }
            let (total, active) = stats.connections();
            self.connections_total
                .with_label_values(&[name.as_str()])
                .inc_by(total);
            self.connections_active
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(active).unwrap_or(i64::MAX));
            let (received, sent) = stats.bytes();
            self.received
                .with_label_values(&[name.as_str()])
                .inc_by(received);
            self.sent.with_label_values(&[name.as_str()]).inc_by(sent);
        }
    }
}

/// The rustls version this binary was built with (from Cargo.lock, pinned).
const RUSTLS_VERSION: &str = "0.23";

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}
