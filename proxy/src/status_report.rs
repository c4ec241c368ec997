//! The `/status` report as one typed structure: the daemon builds and
//! serialises it ([`crate::status`]), `mtlsd status` deserialises and
//! renders it. A shared leaf, so the CLI reads the very types the daemon
//! writes and the two cannot drift apart silently.
//!
//! The JSON is an interface operators, the monitoring examples and
//! cluster_ci parse: field names and nesting stay as they are.
//!
//! Reading is lenient where versions meet: fields a newer daemon adds are
//! ignored, and an optional section an older daemon leaves out reads as
//! absent or empty. Labels the CLI only shows (expiry states, protocols,
//! directions, refusal reasons) are kept as the daemon's words, so a label
//! a newer daemon adds still renders.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reload_report::ReloadOutcome;

/// Everything `/status` reports. Times are RFC 3339, to the second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub ready: bool,
    pub started_at: String,
    /// The runtime's worker threads (`runtime.worker_threads`).
    pub worker_threads: usize,
    pub generation: u64,
    pub loaded_at: String,
    #[serde(default)]
    pub last_reload: Option<LastReload>,
    pub identity: Cert,
    #[serde(default)]
    pub trust_domains: Vec<TrustDomain>,
    #[serde(default)]
    pub inventory: Option<Inventory>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// SHA-256 (lowercase hex) of each CA of its trust domain's bundle
    /// this host's own chain would no longer verify without.
    #[serde(default)]
    pub identity_depends_on_ca: Vec<String>,
    /// The identity's key when it lives in a PKCS#11 token (absent for a
    /// key file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<IdentityToken>,
}

/// A token-held identity key and its signing sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityToken {
    /// The key as its URI names it: `token 'mesh' object 'host' id 01`.
    pub key: String,
    pub module: String,
    /// `pkcs11.sessions`: the workers the key was loaded with.
    pub sessions: usize,
    /// Of those, the ones holding a logged-in session now.
    pub sessions_open: usize,
}

/// The last reload attempt: when, and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastReload {
    pub time: String,
    #[serde(flatten)]
    pub outcome: ReloadOutcome,
}

/// One certificate: this host's, or a CA of a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cert {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub serial: String,
    pub sha256: String,
    pub not_before: String,
    pub not_after: String,
    /// The expiry state (`ok`, `warning`, `critical`, `expired`,
    /// `not_yet_valid`).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustDomain {
    pub name: String,
    pub version: Option<String>,
    pub sha256: String,
    pub cas: Vec<Cert>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<Crl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub cluster: String,
    pub hosts: usize,
    pub revoked: usize,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `tcp`, `http`, `grpc` or `mariadb`.
    pub protocol: String,
    pub addr: String,
    pub upstream: String,
    pub trust_domain: String,
    /// Handshakes started: completed, refused, failed or running.
    pub handshakes_attempted: u64,
    /// Handshakes completed with an admitted peer.
    pub handshakes_completed: u64,
    /// Refusals by reason (the metrics' `reason` label); reasons not seen
    /// are left out.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    pub connections_total: u64,
    pub connections_active: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// A peer host seen in a completed handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub host: String,
    pub roles: Vec<String>,
    pub last_handshake: String,
    pub cert_not_after: String,
    pub cert_serial: String,
    /// The expiry state of its latest certificate.
    pub state: String,
    /// Per trust domain it was met in, where its latest chain there stands
    /// against that domain's bundle in force; empty when no handshake since
    /// start-up kept a chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<PeerTrust>,
}

/// A peer's latest chain against its trust domain's bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTrust {
    pub trust_domain: String,
    /// The issuer name of its latest leaf.
    pub leaf_issuer: String,
    /// The chain verifies against the bundle now in force.
    pub verifies: bool,
    /// SHA-256 (lowercase hex) of each CA of the bundle it would no
    /// longer verify without.
    pub depends_on_ca: Vec<String>,
}

#[cfg(test)]
mod tests {
    use mtlsd_reload::InventoryDelta;
    use serde_json::json;

    use super::*;
    use crate::config::Section;
    use crate::reload_report::{Applies, Item, ItemChange, ReloadResult, Trigger};

    fn cert(subject: &str, file: Option<&str>) -> Cert {
        Cert {
            subject: format!("CN={subject}"),
            issuer: "CN=mesh CA".to_owned(),
            sans: vec!["DNS:server.test".to_owned(), "IP:127.0.0.1".to_owned()],
            serial: "1a:2b".to_owned(),
            sha256: "ab".repeat(32),
            not_before: "2026-01-01T00:00:00Z".to_owned(),
            not_after: "2027-01-01T00:00:00Z".to_owned(),
            state: "ok".to_owned(),
            file: file.map(str::to_owned),
        }
    }

    /// Every section filled in, every kind of reload item.
    fn full() -> Status {
        let change = |item: Item, applies: Applies| ItemChange {
            item,
            old: Some("00".repeat(32)),
            new: None,
            applies,
            inventory: None,
        };
        Status {
            version: "1.2.3".to_owned(),
            ready: true,
            started_at: "2026-11-20T10:00:00Z".to_owned(),
            worker_threads: 2,
            generation: 7,
            loaded_at: "2026-11-20T11:00:00Z".to_owned(),
            last_reload: Some(LastReload {
                time: "2026-11-20T11:00:00Z".to_owned(),
                outcome: ReloadOutcome {
                    trigger: Trigger::Sighup,
                    result: ReloadResult::RestartRequired,
                    generation: 7,
                    reason: Some("why".to_owned()),
                    items: vec![
                        change(Item::Identity, Applies::Live),
                        change(Item::TrustBundle("mesh.a".to_owned()), Applies::Live),
                        change(Item::Crl("mesh".to_owned()), Applies::Live),
                        ItemChange {
                            inventory: Some(InventoryDelta {
                                hosts_added: 1,
                                hosts_removed: 2,
                                hosts_changed: 3,
                                serials_revoked: 4,
                                serials_unrevoked: 5,
                            }),
                            ..change(Item::Inventory, Applies::Live)
                        },
                        change(Item::Config(Section::AuditLog), Applies::Restart),
                        change(
                            Item::Config(Section::Listener("in".to_owned())),
                            Applies::Live,
                        ),
                        change(
                            Item::Config(Section::TrustDomain("mesh".to_owned())),
                            Applies::Live,
                        ),
                    ],
                    refused: vec!["admin.listen: needs a restart".to_owned()],
                    closing: 3,
                },
            }),
            identity: cert("server", Some("/etc/mtlsd/server.pem")),
            trust_domains: vec![TrustDomain {
                name: "mesh".to_owned(),
                version: Some("2026-11".to_owned()),
                sha256: "cd".repeat(32),
                cas: vec![cert("mesh CA", Some("/etc/mtlsd/ca.pem"))],
                crls: vec![Crl {
                    file: "/etc/mtlsd/ca.crl".to_owned(),
                    issuer: "CN=mesh CA".to_owned(),
                    this_update: "2026-11-01T00:00:00Z".to_owned(),
                    next_update: None,
                    late: false,
                    entries: 2,
                    sha256: "ef".repeat(32),
                }],
            }],
            inventory: Some(Inventory {
                cluster: "obs".to_owned(),
                hosts: 2,
                revoked: 1,
                sha256: "12".repeat(32),
            }),
            listeners: vec![Listener {
                name: "in".to_owned(),
                direction: "inbound".to_owned(),
                protocol: "tcp".to_owned(),
                addr: "127.0.0.1:8443".to_owned(),
                upstream: "127.0.0.1:8080".to_owned(),
                trust_domain: "mesh".to_owned(),
                handshakes_attempted: 5,
                handshakes_completed: 3,
                refused: BTreeMap::from([("expired".to_owned(), 1), ("unknown_ca".to_owned(), 1)]),
                connections_total: 3,
                connections_active: 1,
                bytes_received: 10,
                bytes_sent: 20,
            }],
            peers: vec![Peer {
                host: "api1".to_owned(),
                roles: vec!["api".to_owned()],
                last_handshake: "2026-11-20T11:30:00Z".to_owned(),
                cert_not_after: "2027-01-01T00:00:00Z".to_owned(),
                cert_serial: "3c".to_owned(),
                state: "warning".to_owned(),
                trust: vec![PeerTrust {
                    trust_domain: "mesh".to_owned(),
                    leaf_issuer: "CN=mesh CA".to_owned(),
                    verifies: true,
                    depends_on_ca: vec!["cd".repeat(32)],
                }],
            }],
            identity_depends_on_ca: vec!["cd".repeat(32)],
            identity_token: Some(IdentityToken {
                key: "token 'mesh' object 'host' id 01".to_owned(),
                module: "/usr/lib/softhsm/libsofthsm2.so".to_owned(),
                sessions: 2,
                sessions_open: 2,
            }),
        }
    }

    #[test]
    fn serialising_then_deserialising_is_identity() {
        let status = full();
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), status);

        let mut bare = full();
        bare.last_reload = None;
        bare.inventory = None;
        bare.trust_domains[0].crls.clear();
        bare.trust_domains[0].version = None;
        bare.identity.file = None;
        bare.listeners[0].refused.clear();
        bare.peers.clear();
        bare.identity_token = None;
        let text = serde_json::to_string(&bare).unwrap();
        assert!(!text.contains("identity_token"), "{text}");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), bare);
    }

    /// The field names and nesting operators and scripts parse.
    #[test]
    fn the_json_keeps_its_shape() {
        let value = serde_json::to_value(full()).unwrap();
        let last_reload = &value["last_reload"];
        assert_eq!(
            last_reload,
            &json!({
                "time": "2026-11-20T11:00:00Z",
                "trigger": "sighup",
                "result": "restart_required",
                "generation": 7,
                "reason": "why",
                "items": [
                    {"item": "identity", "old": "00".repeat(32), "new": null, "applies": "live"},
                    {"item": "trust_domain.mesh.a", "old": "00".repeat(32), "new": null, "applies": "live"},
                    {"item": "crl.mesh", "old": "00".repeat(32), "new": null, "applies": "live"},
                    {"item": "inventory", "old": "00".repeat(32), "new": null, "applies": "live",
                     "hosts_added": 1, "hosts_removed": 2, "hosts_changed": 3,
                     "serials_revoked": 4, "serials_unrevoked": 5},
                    {"item": "config.reload.audit_log", "old": "00".repeat(32), "new": null, "applies": "restart"},
                    {"item": "config.listener.in", "old": "00".repeat(32), "new": null, "applies": "live"},
                    {"item": "config.trust_domains.mesh", "old": "00".repeat(32), "new": null, "applies": "live"},
                ],
                "refused": ["admin.listen: needs a restart"],
                "closing": 3,
            })
        );
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&value),
            [
                "generation",
                "identity",
                "identity_depends_on_ca",
                "identity_token",
                "inventory",
                "last_reload",
                "listeners",
                "loaded_at",
                "peers",
                "ready",
                "started_at",
                "trust_domains",
                "version",
                "worker_threads"
            ]
        );
        assert_eq!(
            value["identity_token"],
            json!({
                "key": "token 'mesh' object 'host' id 01",
                "module": "/usr/lib/softhsm/libsofthsm2.so",
                "sessions": 2, "sessions_open": 2,
            })
        );
        assert_eq!(
            value["identity"],
            json!({
                "subject": "CN=server", "issuer": "CN=mesh CA",
                "sans": ["DNS:server.test", "IP:127.0.0.1"], "serial": "1a:2b",
                "sha256": "ab".repeat(32), "not_before": "2026-01-01T00:00:00Z",
                "not_after": "2027-01-01T00:00:00Z", "state": "ok",
                "file": "/etc/mtlsd/server.pem",
            })
        );
        assert_eq!(
            keys(&value["trust_domains"][0]),
            ["cas", "crls", "name", "sha256", "version"]
        );
        assert_eq!(
            keys(&value["trust_domains"][0]["crls"][0]),
            [
                "entries",
                "file",
                "issuer",
                "late",
                "next_update",
                "sha256",
                "this_update"
            ]
        );
        assert_eq!(
            value["inventory"],
            json!({"cluster": "obs", "hosts": 2, "revoked": 1, "sha256": "12".repeat(32)})
        );
        assert_eq!(
            value["listeners"][0],
            json!({
                "name": "in", "direction": "inbound", "protocol": "tcp",
                "addr": "127.0.0.1:8443", "upstream": "127.0.0.1:8080", "trust_domain": "mesh",
                "handshakes_attempted": 5, "handshakes_completed": 3,
                "refused": {"expired": 1, "unknown_ca": 1},
                "connections_total": 3, "connections_active": 1,
                "bytes_received": 10, "bytes_sent": 20,
            })
        );
        assert_eq!(
            value["peers"][0],
            json!({
                "host": "api1", "roles": ["api"], "last_handshake": "2026-11-20T11:30:00Z",
                "cert_not_after": "2027-01-01T00:00:00Z", "cert_serial": "3c", "state": "warning",
                "trust": [{
                    "trust_domain": "mesh", "leaf_issuer": "CN=mesh CA", "verifies": true,
                    "depends_on_ca": ["cd".repeat(32)],
                }],
            })
        );

        // Absent optional parts: null sections, left-out lists and fields.
        let mut bare = full();
        bare.last_reload = None;
        bare.inventory = None;
        bare.trust_domains[0].crls.clear();
        bare.identity.file = None;
        bare.peers[0].trust.clear();
        let value = serde_json::to_value(bare).unwrap();
        assert!(value["peers"][0].get("trust").is_none());
        assert_eq!(value["last_reload"], serde_json::Value::Null);
        assert_eq!(value["inventory"], serde_json::Value::Null);
        assert!(value["trust_domains"][0].get("crls").is_none());
        assert!(value["identity"].get("file").is_none());
    }

    /// A newer daemon's extra fields are ignored; an older daemon's missing
    /// optional sections read as absent.
    #[test]
    fn reading_is_lenient_across_versions() {
        let mut value = serde_json::to_value(full()).unwrap();
        value["uptime_seconds"] = json!(5);
        value["identity"]["key_type"] = json!("ecdsa");
        value["listeners"][0]["pool"] = json!({"idle": 1});
        value["last_reload"]["duration_ms"] = json!(12);
        assert_eq!(serde_json::from_value::<Status>(value).unwrap(), full());

        let mut value = serde_json::to_value(full()).unwrap();
        let object = value.as_object_mut().unwrap();
        for section in ["last_reload", "inventory", "peers"] {
            object.remove(section);
        }
        let status = serde_json::from_value::<Status>(value).unwrap();
        assert_eq!(status.last_reload, None);
        assert_eq!(status.inventory, None);
        assert!(status.peers.is_empty());
    }
}
