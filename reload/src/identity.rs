//! This host's identity: its certificate chain and private key.
//!
//! Loading proves, before anything serves with it, that the pair is usable:
//! the key file is private, the key matches the leaf, the leaf is inside
//! its validity window, chains to the identity's trust domain, and carries
//! the extended key usages the listeners need. A half-rotated pair (new cert,
//! old key) fails here instead of failing every handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use mtlsd_expiry::{CertFacts, Validity};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use crate::error::MaterialError;
use crate::pem::{MIN_RSA_BITS, read_certs, read_key, rsa_key_bits};
use crate::token::{self, KeySource};
use crate::trust::{AuthUsage, ChainError, TrustBundle};

/// Where this host's certificate and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySpec {
    /// PEM: the leaf first, then any intermediates.
    pub cert: PathBuf,
    /// A PEM key file, or a key in a PKCS#11 token.
    pub key: KeySource,
    /// The trust domain whose bundle the leaf must chain to.
    pub trust_domain: String,
    /// This host's name in the role inventory.
    pub host: Option<String>,
    /// Accept a key file readable by group or others. Off by default.
    pub insecure_key_permissions: bool,
}

/// Which authentications the identity must be usable for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequiredUsage {
    pub(crate) server: bool,
    pub(crate) client: bool,
}

/// A validated certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    spec: IdentitySpec,
    certified: Arc<CertifiedKey>,
    leaf: CertFacts,
    /// The token key behind `certified`, when the key is in a token.
    token: Option<Arc<token::TokenSigningKey>>,
}

impl Identity {
    pub(crate) fn load(
        spec: &IdentitySpec,
        bundle: Option<&TrustBundle>,
        usage: RequiredUsage,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<Self, Vec<MaterialError>> {
        let mut problems = Vec::new();
        let chain = read_certs(&spec.cert).map_err(|e| problems.push(e)).ok();
        let key = match &spec.key {
            KeySource::File(path) => check_key_permissions(path, spec.insecure_key_permissions)
                .and_then(|()| read_key(path))
                .map_err(|e| problems.push(e))
                .ok(),
            // Loaded below, with the certificate it must match.
            KeySource::Token(_) => None,
        };

        let leaf = chain.as_ref().and_then(|chain| {
            CertFacts::from_der(&chain[0])
                .map_err(|e| {
                    problems.push(MaterialError::CertificateParse {
                        path: spec.cert.clone(),
                        index: 1,
                        reason: e.to_string(),
                    })
                })
                .ok()
        });

        if let Some(leaf) = &leaf {
            match leaf.validity_at(now) {
                Validity::Valid => {}
                Validity::Expired => problems.push(MaterialError::Expired {
                    path: spec.cert.clone(),
                    subject: leaf.subject.clone(),
                    not_after: leaf.not_after,
                }),
                Validity::NotYetValid => problems.push(MaterialError::NotYetValid {
                    path: spec.cert.clone(),
                    subject: leaf.subject.clone(),
                    not_before: leaf.not_before,
                }),
            }
        }

        if let Some(leaf) = leaf.as_ref().filter(|leaf| leaf.is_ca) {
            problems.push(MaterialError::CaAsHostCertificate {
                path: spec.cert.clone(),
                subject: leaf.subject.clone(),
            });
        }

        // Comparing keys against an unparsable leaf would only add a
        // misleading "mismatch" to the real problem.
        let mut token_key = None;
        let certified = match (chain.filter(|_| leaf.is_some()), key, &spec.key) {
            (Some(chain), Some(key), KeySource::File(path)) => {
                certify(spec, path, chain, key, provider)
                    .map_err(|e| problems.push(e))
                    .ok()
            }
            (Some(chain), _, KeySource::Token(token_spec)) => {
                token::load(token_spec, &spec.cert, &chain[0], provider)
                    .map(|key| {
                        token_key = Some(Arc::clone(&key));
                        CertifiedKey::new(chain, key)
                    })
                    .map_err(|e| problems.push(MaterialError::Token(e)))
                    .ok()
            }
            _ => None,
        };

        // Chain checks only make sense on a parsable, in-window leaf, else
        // they would repeat the expiry problem in webpki's words.
        if let (Some(certified), Some(bundle), true) = (&certified, bundle, problems.is_empty()) {
            problems.extend(check_chain(
                spec,
                &certified.cert,
                bundle,
                usage,
                provider,
                now,
            ));
        }

        match (certified, leaf) {
            (Some(certified), Some(leaf)) if problems.is_empty() => Ok(Self {
                spec: spec.clone(),
                certified: Arc::new(certified),
                leaf,
                token: token_key,
            }),
            _ => Err(problems),
        }
    }

    pub fn spec(&self) -> &IdentitySpec {
        &self.spec
    }

    /// The chain and signing key, shared by every TLS config built from it.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The token key and its sessions, when the key is in a token.
    pub fn token_key(&self) -> Option<token::TokenKeyInfo> {
        self.token.as_ref().map(|key| key.info())
    }

    pub fn leaf(&self) -> &CertFacts {
        &self.leaf
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

fn certify(
    spec: &IdentitySpec,
    key_path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, MaterialError> {
    // The provider refuses these too, in words that do not say why.
    if let Some(bits) = rsa_key_bits(&key).filter(|bits| *bits < MIN_RSA_BITS) {
        return Err(MaterialError::RsaKeyTooSmall {
            path: key_path.to_owned(),
            bits,
        });
    }
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| MaterialError::UnusableKey {
            path: key_path.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Fail closed: a key whose public half cannot be compared is treated
    // as a mismatch, never waved through.
    certified
        .keys_match()
        .map_err(|_| MaterialError::KeyMismatch {
            cert: spec.cert.clone(),
            key: key_path.to_owned(),
        })?;
    Ok(certified)
}

fn check_key_permissions(path: &Path, insecure_ok: bool) -> Result<(), MaterialError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| MaterialError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        if !insecure_ok {
            return Err(MaterialError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "private key is readable by group or others; accepted because \
             identity.insecure_key_permissions is set"
        );
    }
    Ok(())
}

fn check_chain(
    spec: &IdentitySpec,
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    usage: RequiredUsage,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Vec<MaterialError> {
    let mut usages = Vec::new();
    if usage.server {
        usages.push(AuthUsage::Server);
    }
    if usage.client {
        usages.push(AuthUsage::Client);
    }
    if usages.is_empty() {
        // No listener uses the identity yet; still prove it chains.
        usages.push(AuthUsage::Server);
    }
    let mut problems = Vec::new();
    for usage in usages {
        match bundle.verify_chain_ignoring_revocation(chain, usage, provider, now) {
            Ok(_) => {}
            Err(ChainError::WrongUsage(usage)) => problems.push(MaterialError::WrongUsage {
                path: spec.cert.clone(),
                usage: usage.as_str(),
            }),
            Err(ChainError::Invalid(source)) => {
                problems.push(MaterialError::NotChained {
                    path: spec.cert.clone(),
                    domain: bundle.name().to_owned(),
                    source,
                });
                // The same chain failure would repeat for the other usage.
                break;
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use mtlsd_devca::{CertificateAuthority, LeafSpec};
    use rustls_pki_types::PrivatePkcs1KeyDer;

    use super::*;
    use crate::pem::tests::pkcs1_with_modulus_bits;

    fn load(cert_pem: &str, key_pem: &str) -> Result<Identity, Vec<MaterialError>> {
        load_with_bundle(cert_pem, key_pem, None)
    }

    /// Loads the pair, checking its chain against `bundle_pem` when given.
    fn load_with_bundle(
        cert_pem: &str,
        key_pem: &str,
        bundle_pem: Option<&str>,
    ) -> Result<Identity, Vec<MaterialError>> {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        let spec = IdentitySpec {
            cert: write("host.crt", cert_pem),
            key: KeySource::File(write("host.key", key_pem)),
            trust_domain: "mesh".to_owned(),
            host: None,
            insecure_key_permissions: false,
        };
        let bundle = bundle_pem.map(|pem| {
            let spec = crate::TrustDomainSpec {
                name: "mesh".to_owned(),
                bundle: vec![write("ca.pem", pem)],
                version: None,
                crl: Vec::new(),
                crl_unknown_status: crate::CrlUnknownStatus::Allow,
                pinned: None,
            };
            TrustBundle::load(&spec, SystemTime::now()).unwrap()
        });
        Identity::load(
            &spec,
            bundle.as_ref(),
            RequiredUsage::default(),
            &crate::provider(),
            SystemTime::now(),
        )
    }

    #[test]
    fn a_small_rsa_key_is_refused_with_its_size() {
        let ca = CertificateAuthority::new("mesh ca").unwrap();
        let leaf = ca.issue(&LeafSpec::new("host", &["localhost"])).unwrap();
        let key = PrivatePkcs1KeyDer::from(pkcs1_with_modulus_bits(1024));
        let key_pem = pem_text("RSA PRIVATE KEY", key.secret_pkcs1_der());
        let problems = load(&leaf.cert_pem, &key_pem).unwrap_err();
        let [problem] = problems.as_slice() else {
            panic!("{problems:?}");
        };
        assert!(
            problem.to_string().ends_with(
                "host.key: the RSA key has 1024 bits, too small; mtlsd needs at least 2048 bits"
            ),
            "{problem}"
        );
        // And the check leaves a good key alone.
        assert!(load(&leaf.cert_pem, &leaf.key_pem).is_ok());
    }

    #[test]
    fn a_ca_certificate_as_the_host_certificate_says_so() {
        let ca = CertificateAuthority::new("mesh ca").unwrap();
        for bundle in [None, Some(ca.cert_pem())] {
            let problems = load_with_bundle(ca.cert_pem(), ca.key_pem(), bundle).unwrap_err();
            let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert_eq!(shown.len(), 1, "{shown:?}");
            assert!(
                shown[0].contains("is a CA certificate, not a host certificate"),
                "{shown:?}"
            );
            assert!(!shown[0].contains("CaUsedAsEndEntity"), "{shown:?}");
        }
    }

    fn pem_text(label: &str, der: &[u8]) -> String {
        let body = base64(der);
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
