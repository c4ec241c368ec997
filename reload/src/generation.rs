//! A generation: one complete, validated set of TLS material and the
//! configs built from it.
//!
//! Everything in a generation was loaded and checked together, so cert,
//! key and bundles can never come from different rotations. A generation is
//! immutable; change means building a new one and publishing it through
//! [`MaterialStore`](crate::MaterialStore).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::{ClientConfig, ServerConfig};

use std::path::PathBuf;

use mtlsd_expiry::Fingerprint;

use crate::ca_dependence::CaDependence;
use crate::error::{MaterialError, MaterialErrors};
use crate::identity::{Identity, IdentitySpec, RequiredUsage};
use crate::inventory::RoleInventory;
use crate::policy::UsePolicy;
use crate::tls::{self, ServerVerification, TlsSettings, TlsSide, TlsUse};
use crate::trust::{AuthUsage, TrustBundle, TrustDomainSpec};

/// Everything needed to load a generation: paths and intended uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialSpec {
    pub identity: IdentitySpec,
    pub trust_domains: Vec<TrustDomainSpec>,
    /// The role inventory; without it peers are checked by chain only.
    pub inventory: Option<PathBuf>,
    pub settings: TlsSettings,
    pub uses: Vec<TlsUse>,
}

/// This host's certificate must carry every SAN the inventory lists for
/// it, or peers would refuse it as `san_not_in_inventory`.
fn self_check(identity: &Identity, inventory: &RoleInventory, host: &str) -> Vec<MaterialError> {
    let Some(entry) = inventory.host(host) else {
        return vec![MaterialError::HostNotInInventory {
            host: host.to_owned(),
            inventory: inventory.path().to_owned(),
        }];
    };
    let mine: Vec<String> = identity
        .leaf()
        .sans
        .iter()
        .map(|san| san.to_string().to_ascii_lowercase())
        .collect();
    let missing: Vec<String> = entry
        .sans
        .iter()
        .map(ToString::to_string)
        .filter(|san| !mine.contains(&san.to_ascii_lowercase()))
        .collect();
    if missing.is_empty() {
        Vec::new()
    } else {
        vec![MaterialError::OwnSansMissing {
            cert: identity.spec().cert.clone(),
            host: host.to_owned(),
            missing,
        }]
    }
}

fn own_revocation(
    identity: &Identity,
    bundle: Option<&Arc<TrustBundle>>,
    inventory: Option<&RoleInventory>,
    now: SystemTime,
) -> Option<String> {
    let bundle = bundle?;
    let serial = &identity.leaf().serial_hex;
    let provider = tls::provider();
    let verified = bundle
        .verify_chain_at(identity.chain(), AuthUsage::Server, &provider, now)
        .or_else(|_| bundle.verify_chain_at(identity.chain(), AuthUsage::Client, &provider, now));
    let issuer = match verified {
        Ok(verified) => verified.issuer_spki_sha256,
        Err(crate::ChainError::Invalid(webpki::Error::CertRevoked)) => {
            return Some(format!(
                "this host's certificate (serial {serial}) is revoked by a CRL of trust domain '{}'",
                bundle.name()
            ));
        }
        // A usage this host does not need: revocation is decided by the
        // inventory alone below.
        Err(_) => {
            return inventory
                .filter(|inv| inv.is_revoked(serial, None))
                .map(|inv| own_listed(serial, inv));
        }
    };
    inventory
        .filter(|inv| inv.is_revoked(serial, Some(&issuer)))
        .map(|inv| own_listed(serial, inv))
}

/// The identity is used both ways; a leaf without the server usage is
/// checked for the client one (the bundle is the same either way).
fn identity_dependence(
    identity: &Identity,
    bundles: &BTreeMap<String, Arc<TrustBundle>>,
    provider: &rustls::crypto::CryptoProvider,
    now: SystemTime,
) -> CaDependence {
    let Some(bundle) = bundles.get(&identity.spec().trust_domain) else {
        return CaDependence {
            verifies: false,
            depends_on: Vec::new(),
        };
    };
    let usage = if identity.leaf().server_auth == Some(false) {
        AuthUsage::Client
    } else {
        AuthUsage::Server
    };
    bundle.dependence(identity.chain(), usage, provider, now)
}

fn own_listed(serial: &str, inventory: &RoleInventory) -> String {
    format!(
        "this host's certificate (serial {serial}) is listed as revoked in the inventory {}",
        inventory.path().display()
    )
}

/// One validated set of material with its TLS configs.
#[derive(Debug)]
pub struct Generation {
    number: u64,
    loaded_at: SystemTime,
    spec: MaterialSpec,
    identity: Arc<Identity>,
    bundles: BTreeMap<String, Arc<TrustBundle>>,
    inventory: Option<Arc<RoleInventory>>,
    policies: HashMap<String, Arc<UsePolicy>>,
    own_revocation: Option<String>,
    /// Which CAs of its own domain's bundle this host's chain needs.
    identity_dependence: CaDependence,
    servers: HashMap<String, Arc<ServerConfig>>,
    clients: HashMap<String, Arc<ClientConfig>>,
    /// See [`Self::trust_fingerprint`]; computed once, it is compared on
    /// every reload.
    trust_fingerprint: Fingerprint,
    /// See [`Self::session_epoch`]; read on every outbound call.
    session_epoch: Fingerprint,
}

impl Generation {
    /// Loads and checks everything `spec` names, as of `now`, and builds
    /// every TLS config. Returns every problem found, not just the first.
    pub fn load(spec: &MaterialSpec, now: SystemTime) -> Result<Self, MaterialErrors> {
        Self::load_after(spec, now, None)
    }

    /// [`Self::load`] for a reload: what has not changed since `previous`
    /// is taken from it instead of parsed again (today the inventory,
    /// whose size grows with the fleet).
    pub fn load_after(
        spec: &MaterialSpec,
        now: SystemTime,
        previous: Option<&Generation>,
    ) -> Result<Self, MaterialErrors> {
        let provider = tls::provider();
        let mut problems = Vec::new();

        let mut bundles = BTreeMap::new();
        for domain in &spec.trust_domains {
            match TrustBundle::load(domain, now) {
                Ok(bundle) => {
                    bundles.insert(domain.name.clone(), Arc::new(bundle));
                }
                Err(errors) => problems.extend(errors),
            }
        }

        let mut usage = RequiredUsage::default();
        for u in &spec.uses {
            if !spec.trust_domains.iter().any(|d| d.name == u.trust_domain) {
                problems.push(MaterialError::UnknownTrustDomain {
                    domain: u.trust_domain.clone(),
                });
            }
            match u.side {
                TlsSide::Server { .. } => usage.server = true,
                TlsSide::Client { .. } => usage.client = true,
            }
        }
        let identity_domain = &spec.identity.trust_domain;
        if !spec
            .trust_domains
            .iter()
            .any(|d| &d.name == identity_domain)
        {
            problems.push(MaterialError::UnknownTrustDomain {
                domain: identity_domain.clone(),
            });
        }

        let identity = match Identity::load(
            &spec.identity,
            bundles.get(identity_domain).map(Arc::as_ref),
            usage,
            &provider,
            now,
        ) {
            Ok(identity) => Some(Arc::new(identity)),
            Err(errors) => {
                problems.extend(errors);
                None
            }
        };

        let inventory = match &spec.inventory {
            None => None,
            Some(path) => match RoleInventory::load_unless_unchanged(
                path,
                previous.and_then(|p| p.inventory.as_ref()),
            ) {
                Ok(inventory) => Some(inventory),
                Err(errors) => {
                    problems.extend(errors);
                    None
                }
            },
        };

        let Some(identity) = identity.filter(|_| problems.is_empty()) else {
            return Err(MaterialErrors(problems));
        };
        if let (Some(inventory), Some(host)) = (&inventory, &spec.identity.host) {
            problems.extend(self_check(&identity, inventory, host));
        }
        for bundle in bundles.values() {
            let own_intermediates = (bundle.name() == identity_domain.as_str())
                .then(|| identity.chain().get(1..).unwrap_or_default());
            problems.extend(bundle.check_crl_issuers(own_intermediates, now));
        }
        if !problems.is_empty() {
            return Err(MaterialErrors(problems));
        }

        let own_revocation = own_revocation(
            &identity,
            bundles.get(identity_domain),
            inventory.as_deref(),
            now,
        );
        let identity_dependence = identity_dependence(&identity, &bundles, &provider, now);
        let mut policies = HashMap::new();
        let mut servers = HashMap::new();
        let mut clients = HashMap::new();
        for u in &spec.uses {
            let Some(bundle) = bundles.get(&u.trust_domain) else {
                continue; // reported above
            };
            let (usage, verify) = match &u.side {
                TlsSide::Server { .. } => (AuthUsage::Client, ServerVerification::Full),
                TlsSide::Client { verify, .. } => (AuthUsage::Server, *verify),
            };
            let policy = Arc::new(UsePolicy {
                name: u.name.clone(),
                usage,
                bundle: bundle.clone(),
                inventory: inventory.clone(),
                rule: u.policy.clone(),
                verify,
            });
            policies.insert(u.name.clone(), policy.clone());
            let built = match &u.side {
                TlsSide::Server { client_auth, alpn } => {
                    tls::server_config(&identity, policy, *client_auth, alpn, spec.settings).map(
                        |config| {
                            servers.insert(u.name.clone(), config);
                        },
                    )
                }
                TlsSide::Client {
                    alpn,
                    present_certificate,
                    ..
                } => {
                    tls::client_config(&identity, policy, alpn, spec.settings, *present_certificate)
                        .map(|config| {
                            clients.insert(u.name.clone(), config);
                        })
                }
            };
            if let Err(source) = built {
                problems.push(MaterialError::TlsConfig {
                    listener: u.name.clone(),
                    source,
                });
            }
        }
        if !problems.is_empty() {
            return Err(MaterialErrors(problems));
        }

        let mut generation = Self {
            number: 0,
            loaded_at: now,
            spec: spec.clone(),
            identity,
            bundles,
            inventory,
            policies,
            own_revocation,
            identity_dependence,
            servers,
            clients,
            trust_fingerprint: Fingerprint::of(&[]),
            session_epoch: Fingerprint::of(&[]),
        };
        generation.trust_fingerprint = generation.compute_trust_fingerprint();
        generation.session_epoch = generation.compute_session_epoch();
        if let Some(previous) = previous {
            generation.keep_sessions_from(previous);
        }
        Ok(generation)
    }

    /// Carries TLS session state over from `previous` when the session
    /// epoch is equal (see [`Self::session_epoch`]): a reload that changes
    /// neither trust nor this host's certificate does not turn every
    /// following handshake into a full one. Both directions need the whole
    /// epoch: equal trust, because a resumed session skips the certificate
    /// verifier; the same own certificate, because a resumed session shows
    /// the peer the certificate it was made with.
    fn keep_sessions_from(&mut self, previous: &Generation) {
        if previous.session_epoch != self.session_epoch {
            return;
        }
        for (name, config) in &mut self.servers {
            if let (Some(old), Some(new)) = (previous.servers.get(name), Arc::get_mut(config)) {
                new.session_storage = old.session_storage.clone();
                new.ticketer = old.ticketer.clone();
            }
        }
        for (name, config) in &mut self.clients {
            if let (Some(old), Some(new)) = (previous.clients.get(name), Arc::get_mut(config)) {
                new.resumption = old.resumption.clone();
            }
        }
    }

    /// Which CAs of its trust domain's bundle this host's own chain cannot
    /// do without: summed over the fleet, how many hosts removing a CA
    /// would cut off.
    pub fn identity_dependence(&self) -> &CaDependence {
        &self.identity_dependence
    }

    /// Why this host's own certificate is revoked, if it is: listed in the
    /// inventory or by a CRL of its domain. Start-up and `mtlsd check`
    /// refuse such a generation; a reload still applies it (the other
    /// revocations it carries must not be lost), and the daemon reports
    /// itself not ready.
    pub fn own_revocation(&self) -> Option<&str> {
        self.own_revocation.as_deref()
    }

    /// The role inventory, when one is configured.
    pub fn inventory(&self) -> Option<&Arc<RoleInventory>> {
        self.inventory.as_ref()
    }

    /// The admission policy of the use named `name`.
    pub fn policy(&self, name: &str) -> Option<&Arc<UsePolicy>> {
        self.policies.get(name)
    }

    /// SHA-256 over everything that decides who is admitted: every bundle
    /// and CRL, the inventory, the TLS settings and every use's policy.
    /// Equal fingerprints mean no peer's admission can differ.
    pub fn trust_fingerprint(&self) -> Fingerprint {
        self.trust_fingerprint
    }

    /// What pooled outbound connections and cached TLS sessions were made
    /// under: the trust fingerprint and this host's own certificate chain
    /// (with its trust domain and inventory host). Equal epochs mean a
    /// pooled connection or session from the older generation is one the
    /// newer would make too, showing peers the same certificate — so a
    /// reload that changes neither (a config-only change, the same files
    /// again) keeps them, while a trust change or any new certificate of
    /// this host starts fresh ones. A renewal must reach peers at their
    /// next call: their expiry metrics and rotation readiness read the
    /// certificate each handshake shows, and a kept pool or a resumed
    /// session would go on showing the old one (cluster_ci scenario 10
    /// caught that in a first version that kept them across renewals).
    pub fn session_epoch(&self) -> Fingerprint {
        self.session_epoch
    }

    fn compute_session_epoch(&self) -> Fingerprint {
        let spec = self.identity.spec();
        let mut parts: Vec<Vec<u8>> = vec![
            self.trust_fingerprint.as_bytes().to_vec(),
            spec.trust_domain.as_bytes().to_vec(),
            spec.host.as_deref().unwrap_or("").as_bytes().to_vec(),
        ];
        for cert in self.identity.chain() {
            parts.push(Fingerprint::of(cert.as_ref()).as_bytes().to_vec());
        }
        Fingerprint::of_all(parts.iter().map(Vec::as_slice))
    }

    fn compute_trust_fingerprint(&self) -> Fingerprint {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for bundle in self.bundles.values() {
            parts.push(bundle.name().as_bytes().to_vec());
            parts.push(bundle.fingerprint().as_bytes().to_vec());
            if let Some(crls) = bundle.crl_fingerprint() {
                parts.push(crls.as_bytes().to_vec());
            }
            parts.push(
                bundle
                    .spec()
                    .crl_unknown_status
                    .as_str()
                    .as_bytes()
                    .to_vec(),
            );
        }
        if let Some(inventory) = &self.inventory {
            parts.push(inventory.fingerprint().as_bytes().to_vec());
        }
        parts.push(format!("{:?}", self.spec.settings).into_bytes());
        let mut uses: Vec<&TlsUse> = self.spec.uses.iter().collect();
        uses.sort_by(|a, b| a.name.cmp(&b.name));
        for u in uses {
            parts.push(format!("{u:?}").into_bytes());
        }
        Fingerprint::of_all(parts.iter().map(Vec::as_slice))
    }

    /// 1 for the material loaded at start-up, +1 for each published swap.
    pub fn number(&self) -> u64 {
        self.number
    }

    pub(crate) fn set_number(&mut self, number: u64) {
        self.number = number;
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    pub fn spec(&self) -> &MaterialSpec {
        &self.spec
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    pub fn bundles(&self) -> &BTreeMap<String, Arc<TrustBundle>> {
        &self.bundles
    }

    pub fn bundle(&self, domain: &str) -> Option<&Arc<TrustBundle>> {
        self.bundles.get(domain)
    }

    /// The server config for the use named `name`, if that use accepts TLS.
    pub fn server_config(&self, name: &str) -> Option<Arc<ServerConfig>> {
        self.servers.get(name).cloned()
    }

    /// The client config for the use named `name`, if that use originates TLS.
    pub fn client_config(&self, name: &str) -> Option<Arc<ClientConfig>> {
        self.clients.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use mtlsd_devca::{CertificateAuthority, LeafSpec, LeafUsage};

    use super::*;
    use crate::tls::ClientAuth;
    use crate::token::KeySource;

    struct Fixture {
        dir: tempfile::TempDir,
        ca: CertificateAuthority,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                ca: CertificateAuthority::new("mesh ca").unwrap(),
            }
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        }

        /// A spec with a good leaf, key and bundle, and one inbound and one
        /// outbound use.
        fn spec(&self, leaf: &LeafSpec) -> MaterialSpec {
            let issued = self.ca.issue(leaf).unwrap();
            MaterialSpec {
                identity: IdentitySpec {
                    cert: self.write("host.crt", &issued.cert_pem),
                    key: KeySource::File(self.write("host.key", &issued.key_pem)),
                    trust_domain: "mesh".into(),
                    host: None,
                    insecure_key_permissions: false,
                },
                trust_domains: vec![TrustDomainSpec {
                    name: "mesh".into(),
                    bundle: vec![self.write("mesh-ca.pem", self.ca.cert_pem())],
                    version: Some("v1".into()),
                    crl: Vec::new(),
                    crl_unknown_status: Default::default(),
                    pinned: None,
                }],
                inventory: None,
                settings: TlsSettings::default(),
                uses: vec![
                    TlsUse {
                        name: "in".into(),
                        trust_domain: "mesh".into(),
                        side: TlsSide::Server {
                            client_auth: ClientAuth::Required,
                            alpn: vec![],
                        },
                        policy: Default::default(),
                    },
                    TlsUse {
                        name: "out".into(),
                        trust_domain: "mesh".into(),
                        side: TlsSide::Client {
                            alpn: vec![],
                            verify: Default::default(),
                            present_certificate: true,
                        },
                        policy: Default::default(),
                    },
                ],
            }
        }
    }

    fn host_leaf() -> LeafSpec {
        LeafSpec::new("node1", &["node1.example", "127.0.0.1"])
    }

    fn problems(spec: &MaterialSpec) -> Vec<MaterialError> {
        match Generation::load(spec, SystemTime::now()) {
            Ok(_) => panic!("load unexpectedly succeeded"),
            Err(errors) => errors.0,
        }
    }

    fn mentions(problems: &[MaterialError], path: &Path) -> bool {
        let shown = path.display().to_string();
        problems.iter().any(|p| p.to_string().contains(&shown))
    }

    #[test]
    fn good_material_loads_with_configs_for_every_use() {
        let fx = Fixture::new();
        let spec = fx.spec(&host_leaf());
        let generation = Generation::load(&spec, SystemTime::now()).unwrap();
        assert!(generation.server_config("in").is_some());
        assert!(generation.client_config("out").is_some());
        assert!(generation.server_config("out").is_none());
        let bundle = generation.bundle("mesh").unwrap();
        assert_eq!(bundle.version(), Some("v1"));
        assert_eq!(bundle.cas().len(), 1);
        assert!(generation.identity().leaf().subject.contains("node1"));
    }

    #[test]
    fn key_of_another_certificate_is_a_mismatch() {
        let fx = Fixture::new();
        let mut spec = fx.spec(&host_leaf());
        let other = fx.ca.issue(&host_leaf()).unwrap();
        spec.identity.key = KeySource::File(fx.write("other.key", &other.key_pem));
        let found = problems(&spec);
        assert!(
            matches!(found.as_slice(), [MaterialError::KeyMismatch { .. }]),
            "{found:?}"
        );
        assert!(mentions(&found, Path::new(&spec.identity.key.to_string())));
    }

    #[test]
    fn expired_and_not_yet_valid_leaves_are_refused() {
        let fx = Fixture::new();
        let spec = fx.spec(&host_leaf().expired());
        assert!(matches!(
            problems(&spec).as_slice(),
            [MaterialError::Expired { .. }]
        ));
        let spec = fx.spec(&host_leaf().not_yet_valid());
        assert!(matches!(
            problems(&spec).as_slice(),
            [MaterialError::NotYetValid { .. }]
        ));
    }

    #[test]
    fn leaf_from_another_ca_does_not_chain() {
        let fx = Fixture::new();
        let mut spec = fx.spec(&host_leaf());
        let stranger = CertificateAuthority::new("other ca").unwrap();
        spec.trust_domains[0].bundle = vec![fx.write("other-ca.pem", stranger.cert_pem())];
        let found = problems(&spec);
        assert!(
            matches!(found.as_slice(), [MaterialError::NotChained { domain, .. }] if domain == "mesh"),
            "{found:?}"
        );
        // webpki's error is kept as the cause; the message puts it in words.
        let cause = std::error::Error::source(&found[0]).and_then(|e| e.downcast_ref());
        assert_eq!(cause, Some(&webpki::Error::UnknownIssuer));
        assert!(
            found[0]
                .to_string()
                .ends_with("does not chain to trust domain 'mesh': its issuer is not in the bundle (signed by a different CA?)"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn leaf_chains_through_an_intermediate_in_the_cert_file() {
        let fx = Fixture::new();
        let intermediate = fx.ca.intermediate("mesh issuing ca").unwrap();
        let mut spec = fx.spec(&host_leaf());
        let leaf = intermediate.issue(&host_leaf()).unwrap();
        spec.identity.cert = fx.write(
            "chain.crt",
            &format!("{}{}", leaf.cert_pem, intermediate.cert_pem()),
        );
        spec.identity.key = KeySource::File(fx.write("chain.key", &leaf.key_pem));
        Generation::load(&spec, SystemTime::now()).unwrap();
    }

    #[test]
    fn missing_usage_is_refused_per_side() {
        let fx = Fixture::new();
        let spec = fx.spec(&host_leaf().usage(LeafUsage::Server));
        let found = problems(&spec);
        assert!(
            matches!(
                found.as_slice(),
                [MaterialError::WrongUsage {
                    usage: "client",
                    ..
                }]
            ),
            "{found:?}"
        );
        // With only a server-side use, a server-only leaf is fine.
        let mut spec = fx.spec(&host_leaf().usage(LeafUsage::Server));
        spec.uses
            .retain(|u| matches!(u.side, TlsSide::Server { .. }));
        Generation::load(&spec, SystemTime::now()).unwrap();
    }

    #[test]
    fn readable_key_is_refused_unless_explicitly_allowed() {
        let fx = Fixture::new();
        let mut spec = fx.spec(&host_leaf());
        std::fs::set_permissions(
            spec.identity.key.to_string(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let found = problems(&spec);
        assert!(
            matches!(
                found.as_slice(),
                [MaterialError::KeyPermissions { mode: 0o644, .. }]
            ),
            "{found:?}"
        );
        spec.identity.insecure_key_permissions = true;
        Generation::load(&spec, SystemTime::now()).unwrap();
    }

    #[test]
    fn garbage_truncated_and_swapped_files_say_what_they_hold() {
        let fx = Fixture::new();
        let good = fx.spec(&host_leaf());
        let cert_pem = std::fs::read_to_string(&good.identity.cert).unwrap();

        let mut spec = good.clone();
        spec.identity.cert = fx.write("garbage.crt", "this is not PEM at all\n");
        let found = problems(&spec);
        assert!(
            matches!(found.as_slice(), [MaterialError::NoCertificate { .. }]),
            "{found:?}"
        );
        assert!(
            found[0].to_string().contains("no PEM blocks"),
            "{}",
            found[0]
        );

        let mut spec = good.clone();
        spec.identity.cert = fx.write("truncated.crt", &cert_pem[..cert_pem.len() / 2]);
        let found = problems(&spec);
        assert!(
            matches!(found.as_slice(), [MaterialError::Pem { .. }]),
            "{found:?}"
        );

        let mut spec = good.clone();
        spec.identity.cert = PathBuf::from(good.identity.key.to_string());
        spec.identity.key = KeySource::File(fx.write("swapped.key", &cert_pem));
        let found = problems(&spec);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].to_string().contains("found: 1 PRIVATE KEY"),
            "{}",
            found[0]
        );
        assert!(
            found[1].to_string().contains("found: 1 CERTIFICATE"),
            "{}",
            found[1]
        );

        // Valid base64 whose DER is corrupt.
        let mut spec = good.clone();
        let corrupt = "-----BEGIN CERTIFICATE-----\nMIIBAAAAAAAA\n-----END CERTIFICATE-----\n";
        spec.identity.cert = fx.write("corrupt.crt", corrupt);
        let found = problems(&spec);
        assert!(
            matches!(found.as_slice(), [MaterialError::CertificateParse { .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let fx = Fixture::new();
        let mut spec = fx.spec(&host_leaf());
        spec.identity.cert = fx.dir.path().join("missing.crt");
        spec.trust_domains.push(TrustDomainSpec {
            name: "db".into(),
            bundle: vec![fx.dir.path().join("missing-db-ca.pem")],
            version: None,
            crl: Vec::new(),
            crl_unknown_status: Default::default(),
            pinned: None,
        });
        let leaf = fx.ca.issue(&host_leaf()).unwrap();
        spec.trust_domains.push(TrustDomainSpec {
            name: "api".into(),
            bundle: vec![fx.write("leaf-as-ca.pem", &leaf.cert_pem)],
            version: None,
            crl: Vec::new(),
            crl_unknown_status: Default::default(),
            pinned: None,
        });
        let found = problems(&spec);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(mentions(&found, &spec.identity.cert));
        assert!(mentions(&found, &spec.trust_domains[1].bundle[0]));
        assert!(
            found
                .iter()
                .any(|p| matches!(p, MaterialError::NotCa { domain, .. } if domain == "api"))
        );
    }

    #[test]
    fn store_publishes_whole_generations_in_order() {
        let fx = Fixture::new();
        let spec = fx.spec(&host_leaf());
        let store = crate::MaterialStore::new(Generation::load(&spec, SystemTime::now()).unwrap());
        let before = store.current();
        assert_eq!(before.number(), 1);
        let spec2 = fx.spec(&host_leaf());
        let number = store.publish(Generation::load(&spec2, SystemTime::now()).unwrap());
        assert_eq!(number, 2);
        let after = store.current();
        assert_eq!(after.number(), 2);
        // The old snapshot stays intact for whoever still holds it.
        assert_ne!(
            before.identity().leaf().fingerprint,
            after.identity().leaf().fingerprint
        );
    }

    #[test]
    fn own_certificate_must_cover_its_inventory_sans() {
        let fx = Fixture::new();
        let inventory = fx.write(
            "inventory.toml",
            "cluster = \"t\"\n[hosts.node1]\nsans = [\"DNS:node1.example\", \"IP:127.0.0.1\"]\nroles = [\"db\"]\n[hosts.node2]\nsans = [\"DNS:node2.example\"]\nroles = [\"db\"]\n",
        );
        let mut spec = fx.spec(&host_leaf());
        spec.inventory = Some(inventory);
        spec.identity.host = Some("node1".into());
        let generation = Generation::load(&spec, SystemTime::now()).unwrap();
        assert_eq!(generation.inventory().unwrap().cluster(), "t");

        spec.identity.host = Some("node2".into());
        let found = problems(&spec);
        assert!(
            matches!(found.as_slice(), [MaterialError::OwnSansMissing { missing, .. }] if missing == &["DNS:node2.example"]),
            "{found:?}"
        );
        spec.identity.host = Some("node9".into());
        let found = problems(&spec);
        assert!(
            matches!(found.as_slice(), [MaterialError::HostNotInInventory { .. }]),
            "{found:?}"
        );
    }
}
