//! What the other hosts presented to us: per inventory host, the
//! certificates seen lately and when the last handshake with it succeeded.
//!
//! This is what lets an operator learn from *this* host that *another*
//! host's certificate is about to expire, and which hosts have gone quiet.
//! Only inventory hosts are recorded, so the metric labels stay bounded by
//! the inventory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use mtlsd_expiry::{CertFacts, Fingerprint};

/// Certificates not seen for this long no longer count towards a host's
/// earliest expiry (the host has rotated away from them).
const PEER_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct PeerSeen {
    pub host: String,
    pub roles: Vec<String>,
    pub last_handshake: SystemTime,
    /// The earliest not-after among the certificates seen in the window.
    pub earliest_not_after: SystemTime,
    /// The certificate of the most recent handshake.
    pub latest: CertFacts,
}

#[derive(Debug, Default)]
pub struct PeerBook {
    hosts: Mutex<HashMap<String, HostRecord>>,
}

#[derive(Debug)]
struct HostRecord {
    roles: Vec<String>,
    last_handshake: SystemTime,
    certs: HashMap<Fingerprint, (SystemTime, SystemTime)>,
    latest: CertFacts,
}

impl PeerBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostRecord>> {
        // Updates are single inserts; a panicked holder cannot leave a
        // half-written record behind.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a successful handshake with inventory host `host`.
    pub fn saw(&self, host: &str, roles: &[String], cert: &CertFacts, now: SystemTime) {
        let mut hosts = self.lock();
        let record = hosts.entry(host.to_owned()).or_insert_with(|| HostRecord {
            roles: roles.to_vec(),
            last_handshake: now,
            certs: HashMap::new(),
            latest: cert.clone(),
        });
        record.roles = roles.to_vec();
        record.last_handshake = now;
        record.latest = cert.clone();
        record.certs.insert(cert.fingerprint, (cert.not_after, now));
        record
            .certs
            .retain(|_, (_, seen)| now.duration_since(*seen).unwrap_or_default() <= PEER_WINDOW);
    }

    /// Every host seen, sorted by name.
    pub fn snapshot(&self) -> Vec<PeerSeen> {
        let hosts = self.lock();
        let mut seen: Vec<PeerSeen> = hosts
            .iter()
            .map(|(host, record)| PeerSeen {
                host: host.clone(),
                roles: record.roles.clone(),
                last_handshake: record.last_handshake,
                earliest_not_after: record
                    .certs
                    .values()
                    .map(|(not_after, _)| *not_after)
                    .min()
                    .unwrap_or(record.latest.not_after),
                latest: record.latest.clone(),
            })
            .collect();
        seen.sort_by(|a, b| a.host.cmp(&b.host));
        seen
    }

    /// Forgets hosts no longer in the inventory.
    pub fn retain_hosts(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|host, _| keep(host));
    }
}
