//! What the other hosts presented to us: per inventory host, the
//! certificates seen lately and when the last handshake with it succeeded.
//!
//! This is what lets an operator learn from *this* host that *another*
//! host's certificate is about to expire, and which hosts have gone quiet.
//! Only inventory hosts are recorded, and a record is forgotten when its
//! host leaves the inventory or has not been seen for `peers.forget_after`,
//! so the book stays bounded by the inventory and by who actually talks to
//! this host.
//!
//! [`FleetSummary`] condenses the book into a handful of numbers — the
//! earliest peer expiry and who holds it, peers per expiry state, inventory
//! hosts by how recently they were seen — so that the metrics a host
//! exports do not grow with the fleet (per-peer series are opt-in).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mtlsd_expiry::{CertFacts, ExpiryState, ExpiryWindows, Fingerprint};
use mtlsd_reload::{AuthUsage, CaDependence, Generation};
use rustls_pki_types::CertificateDer;

/// Certificates not seen for this long no longer count towards a host's
/// earliest expiry (the host has rotated away from them).
const PEER_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct PeerSeen {
    pub host: String,
    pub roles: Vec<String>,
    pub last_handshake: SystemTime,
    /// The certificate with the earliest not-after among those seen in the
    /// window: the one that will break first if the host does not rotate.
    pub earliest: CertFacts,
    /// The certificate of the most recent handshake.
    pub latest: CertFacts,
}

#[derive(Debug, Default)]
pub struct PeerBook {
    hosts: Mutex<HashMap<String, HostRecord>>,
}

#[derive(Debug)]
struct HostRecord {
    /// The inventory's own (interned) set: no copy per handshake.
    roles: Arc<BTreeSet<String>>,
    last_handshake: SystemTime,
    /// Every certificate seen in the window, with when it was last seen.
    certs: HashMap<Fingerprint, (CertFacts, SystemTime)>,
    /// Always a key of `certs`: it was seen at `last_handshake`.
    latest: Fingerprint,
    /// Per trust domain, the chain of the latest handshake that showed
    /// one, for CA dependence (rotation readiness). A peer may meet this
    /// host in two domains (the mesh, and a database's own CA) with two
    /// different chains; one must not stand in for the other.
    chains: Vec<ChainRecord>,
}

/// A peer's latest chain in one trust domain and, once asked, which CAs of
/// that domain's bundle it depends on.
#[derive(Debug)]
struct ChainRecord {
    trust_domain: String,
    usage: AuthUsage,
    /// The last handshake in this domain.
    last_seen: SystemTime,
    leaf_issuer: String,
    chain: Arc<[CertificateDer<'static>]>,
    /// The answer and the fingerprint of the bundle it was computed
    /// against: a reload that changes the bundle makes it stale.
    dependence: Option<(Fingerprint, CaDependence)>,
}

/// A stored chain whose dependence must be computed (again).
struct ToJudge {
    host: String,
    /// Also tells, by pointer, whether it is still the stored chain once
    /// the answer is in.
    chain: Arc<[CertificateDer<'static>]>,
    trust_domain: String,
    usage: AuthUsage,
}

/// The chain a peer presented in one handshake, and how it was checked.
#[derive(Debug, Clone, Copy)]
pub struct PresentedChain<'a> {
    pub trust_domain: &'a str,
    /// What the peer's certificate was checked for: `Client` for peers
    /// that connected to us, `Server` for those we connected to.
    pub usage: AuthUsage,
    pub chain: &'a [CertificateDer<'static>],
}

/// Where a peer stands in a CA rotation, as [`PeerBook::trust`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTrust {
    pub host: String,
    /// The last handshake with it in this trust domain.
    pub last_handshake: SystemTime,
    pub trust_domain: String,
    /// The issuer name of the peer's latest leaf.
    pub leaf_issuer: String,
    /// Against the bundle in force; `None` when its trust domain is gone.
    pub dependence: Option<CaDependence>,
}

impl HostRecord {
    fn view(&self, host: &str) -> Option<PeerSeen> {
        let latest = self.certs.get(&self.latest)?.0.clone();
        let earliest = self
            .certs
            .values()
            .map(|(facts, _)| facts)
            .min_by_key(|facts| facts.not_after)
            .cloned()
            .unwrap_or_else(|| latest.clone());
        Some(PeerSeen {
            host: host.to_owned(),
            roles: self.roles.iter().cloned().collect(),
            last_handshake: self.last_handshake,
            earliest,
            latest,
        })
    }
}

impl PeerBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostRecord>> {
        // Updates are single inserts; a panicked holder cannot leave a
        // half-written record behind.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a successful handshake with inventory host `host`. Clones
    /// only what changed: the same peer certificate on every handshake
    /// costs a lookup, not an allocation.
    pub fn saw(
        &self,
        host: &str,
        roles: &Arc<BTreeSet<String>>,
        cert: &CertFacts,
        presented: Option<PresentedChain<'_>>,
        now: SystemTime,
    ) {
        let mut hosts = self.lock();
        let record = match hosts.get_mut(host) {
            Some(record) => record,
            None => hosts.entry(host.to_owned()).or_insert_with(|| HostRecord {
                roles: roles.clone(),
                last_handshake: now,
                certs: HashMap::new(),
                latest: cert.fingerprint,
                chains: Vec::new(),
            }),
        };
        if let Some(presented) = presented {
            let fresh = || ChainRecord {
                trust_domain: presented.trust_domain.to_owned(),
                usage: presented.usage,
                last_seen: now,
                leaf_issuer: cert.issuer.clone(),
                chain: presented.chain.into(),
                dependence: None,
            };
            match record
                .chains
                .iter_mut()
                .find(|c| c.trust_domain == presented.trust_domain)
            {
                // The same leaf may come with other intermediates (a
                // cross-signed CA added): compare the whole chain.
                Some(c) if *c.chain == *presented.chain && c.usage == presented.usage => {
                    c.last_seen = now;
                }
                Some(c) => *c = fresh(),
                None => record.chains.push(fresh()),
            }
        }
        if !Arc::ptr_eq(&record.roles, roles) {
            record.roles = roles.clone();
        }
        record.last_handshake = now;
        record.latest = cert.fingerprint;
        match record.certs.get_mut(&cert.fingerprint) {
            Some((_, seen)) => *seen = now,
            None => {
                record.certs.insert(cert.fingerprint, (cert.clone(), now));
            }
        }
        if record.certs.len() > 1 {
            record.certs.retain(|_, (_, seen)| {
                now.duration_since(*seen).unwrap_or_default() <= PEER_WINDOW
            });
        }
    }

    /// Every host seen within `forget_after` of `now`, sorted by name;
    /// records older than that are dropped here.
    pub fn current(&self, now: SystemTime, forget_after: Duration) -> Vec<PeerSeen> {
        let mut hosts = self.lock();
        hosts.retain(|_, record| {
            now.duration_since(record.last_handshake)
                .unwrap_or_default()
                <= forget_after
        });
        let mut seen: Vec<PeerSeen> = hosts
            .iter()
            .filter_map(|(host, record)| record.view(host))
            .collect();
        drop(hosts);
        seen.sort_by(|a, b| a.host.cmp(&b.host));
        seen
    }

    /// Which CAs each recorded peer's latest chain in each trust domain
    /// depends on, against the bundles of `generation`, sorted by host and
    /// domain. Answers are cached per
    /// chain and bundle; after a bundle change they are computed again
    /// outside the lock, so handshakes are not held up meanwhile.
    pub fn trust(&self, generation: &Generation, now: SystemTime) -> Vec<PeerTrust> {
        let bundle_of = |domain: &str| generation.bundle(domain);
        let stale: Vec<ToJudge> = self
            .lock()
            .iter()
            .flat_map(|(host, record)| record.chains.iter().map(move |c| (host, c)))
            .filter_map(|(host, c)| {
                let bundle = bundle_of(&c.trust_domain)?;
                let fresh = c
                    .dependence
                    .as_ref()
                    .is_some_and(|(fp, _)| *fp == bundle.fingerprint());
                (!fresh).then(|| ToJudge {
                    host: host.clone(),
                    chain: c.chain.clone(),
                    trust_domain: c.trust_domain.clone(),
                    usage: c.usage,
                })
            })
            .collect();
        let provider = mtlsd_reload::provider();
        let computed: Vec<_> = stale
            .into_iter()
            .filter_map(|job| {
                let bundle = bundle_of(&job.trust_domain)?;
                let answer = bundle.dependence(&job.chain, job.usage, &provider, now);
                Some((job.host, job.chain, (bundle.fingerprint(), answer)))
            })
            .collect();

        let mut hosts = self.lock();
        for (host, chain, answer) in computed {
            // The peer may have shown another chain meanwhile.
            if let Some(c) = hosts
                .get_mut(&host)
                .and_then(|r| r.chains.iter_mut().find(|c| Arc::ptr_eq(&c.chain, &chain)))
            {
                c.dependence = Some(answer);
            }
        }
        let mut trust: Vec<PeerTrust> = hosts
            .iter()
            .flat_map(|(host, record)| record.chains.iter().map(move |c| (host, c)))
            .map(|(host, c)| {
                let dependence = bundle_of(&c.trust_domain).and_then(|bundle| {
                    c.dependence
                        .as_ref()
                        .filter(|(fp, _)| *fp == bundle.fingerprint())
                        .map(|(_, answer)| answer.clone())
                });
                PeerTrust {
                    host: host.clone(),
                    last_handshake: c.last_seen,
                    trust_domain: c.trust_domain.clone(),
                    leaf_issuer: c.leaf_issuer.clone(),
                    dependence,
                }
            })
            .collect();
        drop(hosts);
        trust.sort_by(|a, b| (&a.host, &a.trust_domain).cmp(&(&b.host, &b.trust_domain)));
        trust
    }

    /// [`Self::trust`] without this host's own record (a health check with
    /// its own certificate; `mtlsd dev`, whose one host is its own peer):
    /// what counts towards a rotation. The host's own chain is judged as
    /// the identity ([`Generation::identity_dependence`]); an old copy in
    /// the book would block a rotation with a certificate it no longer has.
    pub fn peer_trust(&self, generation: &Generation, now: SystemTime) -> Vec<PeerTrust> {
        let own = generation.identity().spec().host.as_deref();
        let mut trust = self.trust(generation, now);
        trust.retain(|p| Some(p.host.as_str()) != own);
        trust
    }

    /// Forgets hosts no longer in the inventory.
    pub fn retain_hosts(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|host, _| keep(host));
    }
}

/// How recently an inventory host was seen, as `mtlsd_inventory_hosts`
/// counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeenCounts {
    /// A handshake within `peers.stale_after`.
    pub recent: u64,
    /// A handshake longer ago, but within `peers.forget_after`.
    pub stale: u64,
    /// No handshake since start-up, or forgotten.
    pub never: u64,
}

/// What the fleet looks like from this host, in a fixed number of numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSummary {
    /// The peer whose certificate expires first: host and certificate.
    pub earliest: Option<(String, CertFacts)>,
    /// Peers by the expiry state of their earliest certificate, in
    /// [`ExpiryState::ALL`] order.
    pub by_state: [u64; ExpiryState::ALL.len()],
    /// Inventory hosts other than this one by how recently they were seen;
    /// `None` without an inventory.
    pub seen: Option<SeenCounts>,
}

impl FleetSummary {
    /// Summarises `peers` (as [`PeerBook::current`] returns them) against
    /// the inventory's host names, leaving out this host itself.
    pub fn of<'a>(
        peers: &[PeerSeen],
        inventory_hosts: Option<impl Iterator<Item = &'a str>>,
        this_host: Option<&str>,
        now: SystemTime,
        windows: ExpiryWindows,
        stale_after: Duration,
    ) -> Self {
        let mut by_state = [0; ExpiryState::ALL.len()];
        let mut earliest: Option<&PeerSeen> = None;
        for peer in peers {
            let state = ExpiryState::of(&peer.earliest, now, windows);
            if let Some(i) = ExpiryState::ALL.iter().position(|s| *s == state) {
                by_state[i] += 1;
            }
            if earliest.is_none_or(|e| peer.earliest.not_after < e.earliest.not_after) {
                earliest = Some(peer);
            }
        }
        let seen = inventory_hosts.map(|hosts| {
            let last: HashMap<&str, SystemTime> = peers
                .iter()
                .map(|p| (p.host.as_str(), p.last_handshake))
                .collect();
            let mut counts = SeenCounts::default();
            for host in hosts.filter(|h| Some(*h) != this_host) {
                match last.get(host) {
                    None => counts.never += 1,
                    Some(at) if now.duration_since(*at).unwrap_or_default() <= stale_after => {
                        counts.recent += 1
                    }
                    Some(_) => counts.stale += 1,
                }
            }
            counts
        });
        Self {
            earliest: earliest.map(|p| (p.host.clone(), p.earliest.clone())),
            by_state,
            seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn cert(id: u8, not_after_days: u64) -> CertFacts {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        CertFacts {
            subject: format!("CN=c{id}"),
            issuer: "CN=ca".to_owned(),
            sans: Vec::new(),
            serial_hex: format!("{id:02x}"),
            fingerprint: Fingerprint::of(&[id]),
            not_before: epoch - DAY,
            not_after: epoch + DAY * u32::try_from(not_after_days).unwrap(),
            is_ca: false,
            server_auth: None,
            client_auth: None,
        }
    }

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + DAY * days as u32
    }

    fn no_roles() -> Arc<BTreeSet<String>> {
        Arc::default()
    }

    fn windows() -> ExpiryWindows {
        ExpiryWindows {
            warning: DAY * 21,
            critical: DAY * 7,
        }
    }

    #[test]
    fn forgets_quiet_hosts_and_keeps_recent_ones() {
        let book = PeerBook::default();
        book.saw("a", &no_roles(), &cert(1, 90), None, at(0));
        book.saw("b", &no_roles(), &cert(2, 90), None, at(5));
        let forget = DAY * 7;
        assert_eq!(book.current(at(6), forget).len(), 2);
        // a: 8 days quiet → forgotten; b: 3 days → kept.
        let left = book.current(at(8) + Duration::from_secs(1), forget);
        assert_eq!(
            left.iter().map(|p| p.host.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        // Forgotten for good, not only hidden.
        assert_eq!(book.current(at(6), forget).len(), 1);
    }

    #[test]
    fn earliest_certificate_in_the_window_counts_until_it_leaves_it() {
        let book = PeerBook::default();
        book.saw("a", &no_roles(), &cert(1, 10), None, at(0));
        book.saw(
            "a",
            &no_roles(),
            &cert(2, 90),
            None,
            at(0) + Duration::from_secs(60),
        );
        let peer = &book.current(at(0), DAY * 7)[0];
        assert_eq!(peer.earliest.serial_hex, "01");
        assert_eq!(peer.latest.serial_hex, "02");
        // Two days later the old certificate has not been seen for a day.
        book.saw("a", &no_roles(), &cert(2, 90), None, at(2));
        assert_eq!(book.current(at(2), DAY * 7)[0].earliest.serial_hex, "02");
    }

    #[test]
    fn summary_counts_states_hosts_and_names_the_earliest() {
        let book = PeerBook::default();
        book.saw("a", &no_roles(), &cert(1, 90), None, at(0)); // ok
        book.saw("b", &no_roles(), &cert(2, 10), None, at(0)); // warning at day 0
        book.saw("c", &no_roles(), &cert(3, 3), None, at(0)); // critical, earliest
        book.saw("d", &no_roles(), &cert(4, 90), None, at(2)); // ok, seen later
        let now = at(2);
        let peers = book.current(now, DAY * 7);
        let inventory = ["a", "b", "c", "d", "e", "me"];
        let summary = FleetSummary::of(
            &peers,
            Some(inventory.iter().copied()),
            Some("me"),
            now,
            windows(),
            DAY,
        );
        let (host, facts) = summary.earliest.clone().unwrap();
        assert_eq!((host.as_str(), facts.serial_hex.as_str()), ("c", "03"));
        // ok, warning, critical, expired, not_yet_valid
        assert_eq!(summary.by_state, [2, 1, 1, 0, 0]);
        // d recent; a, b, c two days quiet (stale after one day); e never;
        // "me" is this host and not counted.
        assert_eq!(
            summary.seen,
            Some(SeenCounts {
                recent: 1,
                stale: 3,
                never: 1
            })
        );
        let none = FleetSummary::of(
            &[],
            None::<std::iter::Empty<&str>>,
            None,
            now,
            windows(),
            DAY,
        );
        assert_eq!(none.earliest, None);
        assert_eq!(none.by_state, [0; 5]);
        assert_eq!(none.seen, None);
    }
}
