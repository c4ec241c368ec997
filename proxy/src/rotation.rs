//! Is one phase of a CA rotation done on this host? Answers `GET
//! /rotation` from what the daemon knows first-hand: the bundle in force,
//! which CAs its own chain needs, and the latest chain of every peer it
//! had a handshake with ([`crate::peers`]).
//!
//! A host can only speak for the peers it has seen. Hosts it should talk
//! to (by its listeners: the roles an inbound listener admits, the host an
//! outbound listener dials) but has no recent chain of are listed as
//! unknown, and unknown blocks `remove-ca` unless the operator accepts it:
//! a host that was off during the rotation may still hold an old leaf.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use mtlsd_expiry::SubjectAltName;
use mtlsd_reload::Generation;
use rustls_pki_types::ServerName;

use crate::config::Side;
use crate::rotation_report::{Blocker, Phase, RotationCheck, UnknownHost};
use crate::state::DaemonState;
use crate::status::time;

/// A question that cannot be answered as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    #[error("ca: '{0}' is not a SHA-256 (64 hex digits, colons allowed) nor a prefix of 8 or more")]
    MalformedCa(String),
    #[error("trust_domain: '{0}' is not a trust domain of this host")]
    UnknownTrustDomain(String),
    #[error("ca: prefix '{prefix}' matches several CAs: {}", matches.join(", "))]
    AmbiguousCa {
        prefix: String,
        matches: Vec<String>,
    },
    #[error(
        "ca: no CA of this host's bundles starts with '{0}'; give the whole SHA-256 for a CA the bundle does not hold"
    )]
    UnknownCaPrefix(String),
}

/// `AB:CD:…` or `abcd…` as lowercase hex; `None` unless 8 to 64 hex digits.
pub fn normalize_ca(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() >= 8 && hex.len() <= 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

pub fn check(
    state: &DaemonState,
    phase: Phase,
    ca: &str,
    trust_domain: Option<&str>,
) -> Result<RotationCheck, RotationError> {
    let now = SystemTime::now();
    let generation = state.store.current();
    let (domain, ca_sha256, ca_subject) = resolve(&generation, ca, trust_domain)?;
    let identity = generation.identity();
    let own_domain = identity.spec().trust_domain == domain;
    let own_needs = own_domain
        && generation
            .identity_dependence()
            .depends_on
            .iter()
            .any(|fp| fp.to_hex() == ca_sha256);
    let mut blockers = Vec::new();
    let mut unknown = Vec::new();
    let mut note = None;
    let leaf = identity.leaf();

    match phase {
        Phase::AddCa => {
            if ca_subject.is_none() {
                blockers.push(Blocker {
                    host: None,
                    reason: format!(
                        "the bundle of trust domain '{domain}' does not hold this CA yet"
                    ),
                });
            }
        }
        Phase::Reissue | Phase::RemoveCa => {
            if ca_subject.is_none() {
                note = Some(format!(
                    "the bundle of trust domain '{domain}' does not hold this CA"
                ));
            }
            if own_needs {
                blockers.push(Blocker {
                    host: None,
                    reason: format!(
                        "this host's certificate (serial {}, issuer {}) needs this CA: re-issue it from the new CA",
                        leaf.serial_hex, leaf.issuer
                    ),
                });
            }
        }
    }

    if phase == Phase::RemoveCa && ca_subject.is_some() {
        let reporting = state.reporting();
        let stale_after = reporting.peers.stale_after;
        let last: BTreeMap<String, SystemTime> = state
            .peers
            .current(now, reporting.peers.forget_after)
            .into_iter()
            .map(|p| (p.host, p.last_handshake))
            .collect();
        let trust = state.peers.peer_trust(&generation, now);
        let mut judged = BTreeSet::new();
        for peer in trust.iter().filter(|p| p.trust_domain == domain) {
            let Some(dependence) = &peer.dependence else {
                continue;
            };
            let recent = now.duration_since(peer.last_handshake).unwrap_or_default() <= stale_after;
            if dependence
                .depends_on
                .iter()
                .any(|fp| fp.to_hex() == ca_sha256)
            {
                blockers.push(Blocker {
                    host: Some(peer.host.clone()),
                    reason: format!(
                        "its certificate (issuer {}) needs this CA; last handshake {}",
                        peer.leaf_issuer,
                        time(peer.last_handshake)
                    ),
                });
                judged.insert(peer.host.clone());
            } else if recent {
                judged.insert(peer.host.clone());
            }
        }
        let in_domain: BTreeMap<&str, SystemTime> = trust
            .iter()
            .filter(|p| p.trust_domain == domain)
            .map(|p| (p.host.as_str(), p.last_handshake))
            .collect();
        for host in expected_hosts(state, &generation, &domain) {
            if judged.contains(&host) {
                continue;
            }
            // Stale: its chain in this domain is older than stale_after.
            // No chain: seen, but never with a chain of this domain kept
            // (e.g. only in another domain since start-up).
            let (seen, at) = match (in_domain.get(host.as_str()), last.get(&host)) {
                (Some(at), _) => ("stale", Some(*at)),
                (None, Some(at)) => ("no_chain", Some(*at)),
                (None, None) => ("never", None),
            };
            unknown.push(UnknownHost {
                host,
                seen: seen.to_owned(),
                last_handshake: at.map(time),
            });
        }
    }

    Ok(RotationCheck {
        phase,
        trust_domain: domain,
        ca_sha256,
        ca_subject,
        host: identity.spec().host.clone(),
        done: blockers.is_empty() && unknown.is_empty(),
        blockers,
        unknown,
        note,
    })
}

/// The trust domain, the CA's whole SHA-256 and, when the bundle holds it,
/// its subject.
fn resolve(
    generation: &Generation,
    ca: &str,
    trust_domain: Option<&str>,
) -> Result<(String, String, Option<String>), RotationError> {
    let wanted = normalize_ca(ca).ok_or_else(|| RotationError::MalformedCa(ca.to_owned()))?;
    if let Some(domain) = trust_domain
        && generation.bundle(domain).is_none()
    {
        return Err(RotationError::UnknownTrustDomain(domain.to_owned()));
    }
    let mut matches: Vec<(String, String, String)> = Vec::new();
    for (domain, bundle) in generation.bundles() {
        if trust_domain.is_some_and(|d| d != domain) {
            continue;
        }
        for ca in bundle.cas() {
            let hex = ca.facts.fingerprint.to_hex();
            if hex.starts_with(&wanted) && !matches.iter().any(|(d, h, _)| d == domain && *h == hex)
            {
                matches.push((domain.clone(), hex, ca.facts.subject.clone()));
            }
        }
    }
    match matches.len() {
        1 => {
            let (domain, hex, subject) = matches.remove(0);
            Ok((domain, hex, Some(subject)))
        }
        0 if wanted.len() == 64 => Ok((
            trust_domain
                .map(str::to_owned)
                .unwrap_or_else(|| generation.identity().spec().trust_domain.clone()),
            wanted,
            None,
        )),
        0 => Err(RotationError::UnknownCaPrefix(wanted)),
        _ => Err(RotationError::AmbiguousCa {
            prefix: wanted,
            matches: matches
                .into_iter()
                .map(|(domain, hex, subject)| format!("{hex} ({subject}, trust domain {domain})"))
                .collect(),
        }),
    }
}

/// Inventory hosts this host should talk to in `domain`: those an inbound
/// listener admits (any inventory host when it names no role) and the
/// host each outbound listener dials (found by its server name). Not this
/// host itself.
fn expected_hosts(state: &DaemonState, generation: &Generation, domain: &str) -> BTreeSet<String> {
    let Some(inventory) = generation.inventory() else {
        return BTreeSet::new();
    };
    let mut hosts = BTreeSet::new();
    for (_, _, listener) in state.listener_views() {
        let config = listener.config.load();
        if config.trust_domain != domain {
            continue;
        }
        match &config.side {
            Side::Inbound(inbound) => {
                let mut roles: Option<BTreeSet<&str>> = inbound
                    .allow_roles
                    .as_ref()
                    .map(|r| r.iter().map(String::as_str).collect());
                if let Some(roles) = roles.as_mut() {
                    for route in config.routes() {
                        roles.extend(route.allow_roles.iter().map(String::as_str));
                    }
                }
                for host in inventory.hosts() {
                    if roles
                        .as_ref()
                        .is_none_or(|r| host.roles.iter().any(|h| r.contains(h.as_str())))
                    {
                        hosts.insert(host.name.clone());
                    }
                }
            }
            Side::Outbound(outbound) => {
                let san = match &outbound.server_name {
                    ServerName::DnsName(name) => SubjectAltName::Dns(name.as_ref().to_owned()),
                    ServerName::IpAddress(ip) => SubjectAltName::Ip(std::net::IpAddr::from(*ip)),
                    _ => continue,
                };
                if let Some(host) = inventory.host_with_san(&san) {
                    hosts.insert(host.name.clone());
                }
            }
        }
    }
    if let Some(me) = &generation.identity().spec().host {
        hosts.remove(me);
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_fingerprints_are_read_in_either_form() {
        let colons = "AB:CD:EF:01:23:45:67:89";
        assert_eq!(normalize_ca(colons).as_deref(), Some("abcdef0123456789"));
        assert_eq!(normalize_ca(&"Ab".repeat(32)), Some("ab".repeat(32)));
        for bad in ["abc", "xyz12345", &"a".repeat(65), ""] {
            assert_eq!(normalize_ca(bad), None, "{bad}");
        }
    }

    #[test]
    fn phases_round_trip_through_their_names() {
        for phase in [Phase::AddCa, Phase::Reissue, Phase::RemoveCa] {
            assert_eq!(Phase::parse(phase.as_str()), Some(phase));
        }
        assert_eq!(Phase::parse("remove"), None);
    }
}
