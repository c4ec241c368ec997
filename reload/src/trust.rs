//! Trust bundles: the CAs one named trust domain accepts.
//!
//! Domains are never merged — a host certificate signed by the database CA
//! must not be accepted by a mesh listener — so each bundle carries its own
//! root store. A bundle may hold several CAs (that is how a CA rotation
//! overlaps), and is identified by one fingerprint over all of them, so an
//! operator can compare what every host trusts with one string.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use mtlsd_expiry::{CertFacts, Fingerprint, Validity};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::error::MaterialError;
use crate::pem::read_certs;

/// Where a trust domain's CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainSpec {
    pub name: String,
    /// One or more PEM files; their CAs are concatenated in order.
    pub bundle: Vec<PathBuf>,
    /// The operator's label for this bundle version, reported as-is.
    pub version: Option<String>,
}

/// One CA of a bundle and where it came from.
#[derive(Debug, Clone)]
pub struct BundleCa {
    pub path: PathBuf,
    pub der: CertificateDer<'static>,
    pub facts: CertFacts,
}

/// A validated trust bundle.
#[derive(Debug)]
pub struct TrustBundle {
    spec: TrustDomainSpec,
    cas: Vec<BundleCa>,
    roots: Arc<RootCertStore>,
    fingerprint: Fingerprint,
}

impl TrustBundle {
    /// Reads and checks every file of `spec`, reporting every problem.
    pub fn load(spec: &TrustDomainSpec, now: SystemTime) -> Result<Self, Vec<MaterialError>> {
        let mut problems = Vec::new();
        let mut cas = Vec::new();
        for path in &spec.bundle {
            let ders = match read_certs(path) {
                Ok(ders) => ders,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            for (index, der) in ders.into_iter().enumerate() {
                match CertFacts::from_der(&der) {
                    Ok(facts) => cas.push(BundleCa {
                        path: path.clone(),
                        der,
                        facts,
                    }),
                    Err(e) => problems.push(MaterialError::CertificateParse {
                        path: path.clone(),
                        index: index + 1,
                        reason: e.to_string(),
                    }),
                }
            }
        }

        let mut roots = RootCertStore::empty();
        for ca in &cas {
            if !ca.facts.is_ca {
                problems.push(MaterialError::NotCa {
                    path: ca.path.clone(),
                    domain: spec.name.clone(),
                    subject: ca.facts.subject.clone(),
                });
                continue;
            }
            if ca.facts.validity_at(now) != Validity::Valid {
                // An expired CA next to a valid one is normal late in a CA
                // rotation; it simply anchors nothing. Say so, don't refuse.
                tracing::warn!(
                    domain = %spec.name,
                    path = %ca.path.display(),
                    subject = %ca.facts.subject,
                    not_after = %humantime::format_rfc3339_seconds(ca.facts.not_after),
                    "CA certificate in trust bundle is outside its validity window"
                );
            }
            if let Err(e) = roots.add(ca.der.clone()) {
                problems.push(MaterialError::BadTrustAnchor {
                    path: ca.path.clone(),
                    subject: ca.facts.subject.clone(),
                    reason: e.to_string(),
                });
            }
        }
        if cas.is_empty() && problems.is_empty() {
            problems.push(MaterialError::EmptyBundle {
                domain: spec.name.clone(),
                paths: spec.bundle.clone(),
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let fingerprint = Fingerprint::of_all(cas.iter().map(|ca| ca.der.as_ref()));
        Ok(Self {
            spec: spec.clone(),
            cas,
            roots: Arc::new(roots),
            fingerprint,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn version(&self) -> Option<&str> {
        self.spec.version.as_deref()
    }

    pub fn spec(&self) -> &TrustDomainSpec {
        &self.spec
    }

    pub fn cas(&self) -> &[BundleCa] {
        &self.cas
    }

    /// SHA-256 over the bundle's CAs in order.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

/// Which end of a TLS handshake a certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthUsage {
    Server,
    Client,
}

impl AuthUsage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// Why a certificate chain does not verify against a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("not usable for {} authentication (its extended key usage does not allow it)", .0.as_str())]
    WrongUsage(AuthUsage),
    #[error("{0}")]
    NotChained(String),
}

impl TrustBundle {
    /// Verifies `chain` (leaf first, then intermediates) against this
    /// bundle for `usage` at `now`, exactly as a handshake would, minus the
    /// name check.
    pub fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        usage: AuthUsage,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<(), ChainError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(ChainError::NotChained("no certificate".to_owned()));
        };
        let end_entity = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| ChainError::NotChained(format!("unusable certificate: {e}")))?;
        let time = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let key_usage = match usage {
            AuthUsage::Server => webpki::KeyUsage::server_auth(),
            AuthUsage::Client => webpki::KeyUsage::client_auth(),
        };
        match end_entity.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            time,
            key_usage,
            None,
            None,
        ) {
            Ok(_) => Ok(()),
            Err(webpki::Error::RequiredEkuNotFoundContext(_)) => Err(ChainError::WrongUsage(usage)),
            Err(webpki::Error::UnknownIssuer) => Err(ChainError::NotChained(
                "its issuer is not in the bundle (signed by a different CA?)".to_owned(),
            )),
            Err(webpki::Error::InvalidSignatureForPublicKey) => Err(ChainError::NotChained(
                "signature does not verify against the bundle's CA".to_owned(),
            )),
            Err(other) => Err(ChainError::NotChained(format!("{other:?}"))),
        }
    }
}
