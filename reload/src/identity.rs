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
use crate::pem::{read_certs, read_key};
use crate::trust::{AuthUsage, ChainError, TrustBundle};

/// Where this host's certificate and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySpec {
    /// PEM: the leaf first, then any intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
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
        let key = check_key_permissions(&spec.key, spec.insecure_key_permissions)
            .and_then(|()| read_key(&spec.key))
            .map_err(|e| problems.push(e))
            .ok();

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

        // Comparing keys against an unparsable leaf would only add a
        // misleading "mismatch" to the real problem.
        let certified = match (chain.filter(|_| leaf.is_some()), key) {
            (Some(chain), Some(key)) => certify(spec, chain, key, provider)
                .map_err(|e| problems.push(e))
                .ok(),
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

    pub fn leaf(&self) -> &CertFacts {
        &self.leaf
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

fn certify(
    spec: &IdentitySpec,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, MaterialError> {
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| MaterialError::UnusableKey {
                path: spec.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Fail closed: a key whose public half cannot be compared is treated
    // as a mismatch, never waved through.
    certified
        .keys_match()
        .map_err(|_| MaterialError::KeyMismatch {
            cert: spec.cert.clone(),
            key: spec.key.clone(),
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
            Err(e @ ChainError::Invalid(_)) => {
                problems.push(MaterialError::NotChained {
                    path: spec.cert.clone(),
                    domain: bundle.name().to_owned(),
                    reason: e.to_string(),
                });
                // The same chain failure would repeat for the other usage.
                break;
            }
        }
    }
    problems
}
