//! Certificate revocation lists: the CA's own word that a certificate it
//! issued must no longer be accepted.
//!
//! The inventory's `[[revoked]]` serials are the operator's list; a CRL is
//! what step-ca, Vault PKI or an OpenSSL CA publish. Both reload with the
//! rest of the material and are enforced by the one policy. A CRL is
//! checked when loaded: it must parse (PEM `X509 CRL` or DER), and be
//! signed by a CA of its trust domain or by an intermediate of this host's
//! own chain — a CRL nobody in the domain issued would leave revocation
//! silently unenforced. A CRL past its `nextUpdate` is only a warning (and
//! a metric): a late publisher must never take the mesh down, and the
//! late list still revokes what it lists.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use mtlsd_expiry::Fingerprint;
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;

use crate::error::{CrlProblem, MaterialError};

/// Upper bound on one CRL file; a CRL of a large CA with 100,000 entries
/// is a few MB.
const MAX_CRL_BYTES: u64 = 32 * 1024 * 1024;

/// `crl_unknown_status`: whether a certificate whose issuer has no CRL in
/// the domain is admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CrlUnknownStatus {
    /// Admitted (the default: CRLs are often published for some CAs only).
    #[default]
    Allow,
    /// Refused as `revoked`: every CA and intermediate must have a CRL.
    Deny,
}

impl CrlUnknownStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// One parsed CRL.
#[derive(Debug)]
pub struct LoadedCrl {
    path: PathBuf,
    der: CertificateRevocationListDer<'static>,
    crl: webpki::CertRevocationList<'static>,
    issuer: String,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
    entries: usize,
}

impl LoadedCrl {
    /// Every CRL in `path`: PEM (`-----BEGIN X509 CRL-----`, one or more)
    /// or a single DER CRL.
    pub(crate) fn read(path: &Path, domain: &str) -> Result<Vec<Self>, MaterialError> {
        let bytes = crate::pem::read_bounded(path, MAX_CRL_BYTES)?;
        let ders: Vec<CertificateRevocationListDer<'static>> =
            if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                CertificateRevocationListDer::pem_slice_iter(&bytes)
                    .collect::<Result<_, _>>()
                    .map_err(|e| MaterialError::Crl {
                        path: path.to_owned(),
                        domain: domain.to_owned(),
                        source: CrlProblem::Pem(e),
                    })?
            } else {
                vec![CertificateRevocationListDer::from(bytes)]
            };
        if ders.is_empty() {
            return Err(MaterialError::Crl {
                path: path.to_owned(),
                domain: domain.to_owned(),
                source: CrlProblem::NoCrl,
            });
        }
        ders.into_iter()
            .map(|der| Self::parse(path, domain, der))
            .collect()
    }

    fn parse(
        path: &Path,
        domain: &str,
        der: CertificateRevocationListDer<'static>,
    ) -> Result<Self, MaterialError> {
        let bad = |source: CrlProblem| MaterialError::Crl {
            path: path.to_owned(),
            domain: domain.to_owned(),
            source,
        };
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
                .map_err(|e| bad(CrlProblem::Parse(e.into())))?;
        if parsed.extensions().is_empty() {
            return Err(bad(CrlProblem::NoExtensions));
        }
        let crl = webpki::OwnedCertRevocationList::from_der(der.as_ref())
            .map_err(|e| bad(CrlProblem::Refused(e)))?;
        let to_system = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(Self {
            path: path.to_owned(),
            issuer: parsed.issuer().to_string(),
            this_update: to_system(parsed.last_update()),
            next_update: parsed.next_update().map(to_system),
            entries: parsed.iter_revoked_certificates().count(),
            crl: crl.into(),
            der,
        })
    }

    /// Checks the signature against the first of `candidates` (CA
    /// certificates, DER) whose subject is the CRL's issuer.
    pub(crate) fn check_issuer(
        &self,
        candidates: &[&[u8]],
        domain: &str,
        with_own_chain: bool,
    ) -> Result<(), MaterialError> {
        let bad = |source: CrlProblem| MaterialError::Crl {
            path: self.path.clone(),
            domain: domain.to_owned(),
            source,
        };
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(self.der.as_ref())
                .map_err(|e| bad(CrlProblem::Parse(e.into())))?;
        let mut named = 0;
        for der in candidates {
            let Ok((_, ca)) = x509_parser::certificate::X509Certificate::from_der(der) else {
                continue;
            };
            if ca.subject().as_raw() != crl.issuer().as_raw() {
                continue;
            }
            named += 1;
            if crl.verify_signature(ca.public_key()).is_ok() {
                return Ok(());
            }
        }
        Err(bad(if named == 0 {
            CrlProblem::UnknownIssuer {
                issuer: self.issuer.clone(),
                domain: domain.to_owned(),
                with_own_chain,
            }
        } else {
            CrlProblem::BadSignature {
                issuer: self.issuer.clone(),
                domain: domain.to_owned(),
            }
        }))
    }

    pub(crate) fn warn_if_late(&self, now: SystemTime) {
        if let Some(next_update) = self.next_update
            && next_update <= now
        {
            tracing::warn!(
                path = %self.path.display(),
                issuer = %self.issuer,
                next_update = %humantime::format_rfc3339_seconds(next_update),
                "CRL is past its nextUpdate; still enforcing it until a newer one is loaded"
            );
        }
    }

    pub(crate) fn webpki(&self) -> &webpki::CertRevocationList<'static> {
        &self.crl
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }

    /// The issuer's distinguished name, as text.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    /// When the issuer promises the next CRL; `None` when the CRL says not.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.next_update
    }

    /// How many certificates this CRL revokes.
    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.der.as_ref())
    }
}
