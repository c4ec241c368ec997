//! The configuration file as written, before validation.
//!
//! Every field is optional and loosely typed here so that a single pass of
//! validation ([`super::validate`]) can report *all* problems — a missing
//! key, a bad address and an unknown trust domain in one run of
//! `mtlsd check` — instead of stopping at the first serde error. Unknown
//! keys are collected by `serde_ignored` while deserialising.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConfig {
    pub(crate) identity: Option<RawIdentity>,
    #[serde(default)]
    pub(crate) trust_domains: BTreeMap<String, RawTrustDomain>,
    pub(crate) inventory: Option<RawInventory>,
    pub(crate) admin: Option<RawAdmin>,
    pub(crate) tls: Option<RawTls>,
    pub(crate) shutdown: Option<RawShutdown>,
    pub(crate) reload: Option<RawReload>,
    pub(crate) expiry: Option<RawExpiry>,
    pub(crate) metrics: Option<RawMetrics>,
    pub(crate) peers: Option<RawPeers>,
    pub(crate) runtime: Option<RawRuntime>,
    pub(crate) state_dir: Option<String>,
    pub(crate) bootstrap: Option<RawBootstrap>,
    pub(crate) pkcs11: Option<RawPkcs11>,
    #[serde(default)]
    pub(crate) inbound: Vec<RawListener>,
    #[serde(default)]
    pub(crate) outbound: Vec<RawListener>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawIdentity {
    pub(crate) host: Option<String>,
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) trust_domain: Option<String>,
    pub(crate) insecure_key_permissions: Option<bool>,
}

/// `[pkcs11]`: the module and PIN for a token-held `identity.key`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPkcs11 {
    pub(crate) module: Option<String>,
    pub(crate) pin_file: Option<String>,
    pub(crate) pin_credential: Option<String>,
    /// Never accepted: read only to refuse it by name, whatever its type.
    pub(crate) pin: Option<serde::de::IgnoredAny>,
    pub(crate) timeout: Option<String>,
    pub(crate) sessions: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTrustDomain {
    pub(crate) bundle: Option<OneOrMany>,
    pub(crate) version: Option<String>,
    pub(crate) crl: Option<OneOrMany>,
    pub(crate) crl_unknown_status: Option<String>,
    pub(crate) sha256: Option<Vec<String>>,
}

/// `bundle = "a.pem"` or `bundle = ["a.pem", "b.pem"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawInventory {
    pub(crate) path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<String>,
    pub(crate) socket: Option<String>,
    pub(crate) tls: Option<bool>,
    pub(crate) trust_domain: Option<String>,
    pub(crate) allow_roles: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawBootstrap {
    pub(crate) listen: Option<String>,
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) domains: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTls {
    pub(crate) min_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawReload {
    pub(crate) watch: Option<bool>,
    pub(crate) settle: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) drain_grace: Option<String>,
    pub(crate) audit_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawExpiry {
    pub(crate) warning: Option<String>,
    pub(crate) critical: Option<String>,
    pub(crate) check_interval: Option<String>,
    pub(crate) repeat: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawMetrics {
    pub(crate) per_peer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPeers {
    pub(crate) stale_after: Option<String>,
    pub(crate) forget_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRuntime {
    pub(crate) worker_threads: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawShutdown {
    pub(crate) drain_timeout: Option<String>,
}

/// One `[[inbound]]` or `[[outbound]]` table. Direction-specific keys are
/// checked in validation so the message can say which direction they
/// belong to.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawListener {
    pub(crate) name: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) trust_domain: Option<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) handshake_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) insecure_allow_remote_clients: Option<bool>,
    pub(crate) insecure_remote_upstream: Option<bool>,
    pub(crate) allow_roles: Option<Vec<String>>,
    pub(crate) expect_roles: Option<Vec<String>>,
    pub(crate) client_auth: Option<String>,
    pub(crate) routes: Option<Vec<RawRoute>>,
    pub(crate) server_verify: Option<String>,
    pub(crate) insecure_skip_verify: Option<bool>,
    pub(crate) present_certificate: Option<bool>,
}

/// `[[inbound.routes]]` of a grpc listener.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRoute {
    pub(crate) path: Option<String>,
    pub(crate) allow_roles: Option<Vec<String>>,
}
