//! Trust bundles: the CAs one named trust domain accepts, and the CRLs
//! that withdraw certificates those CAs issued.
//!
//! Domains are never merged — a host certificate signed by the database CA
//! must not be accepted by a mesh listener — so each bundle carries its own
//! root store. A bundle may hold several CAs (that is how a CA rotation
//! overlaps), and is identified by one fingerprint over all of them, so an
//! operator can compare what every host trusts with one string.
//!
//! Chain verification lives here, once: the TLS verifiers, the re-judging
//! of live connections after a reload, `mtlsd check` and `mtlsd inspect`
//! all call [`TrustBundle::verify_chain`], so "does this chain verify?" has
//! one answer everywhere, CRLs included.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use mtlsd_expiry::{CertFacts, Fingerprint, Validity};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::crl::{CrlUnknownStatus, LoadedCrl};
use crate::error::MaterialError;
pub use crate::error::describe;
use crate::pem::read_certs;
use crate::refusal::Refusal;

/// Where a trust domain's CAs (and CRLs) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainSpec {
    pub name: String,
    /// One or more PEM files; their CAs are concatenated in order.
    pub bundle: Vec<PathBuf>,
    /// The operator's label for this bundle version, reported as-is.
    pub version: Option<String>,
    /// CRL files (PEM or DER) of this domain's CAs or intermediates.
    pub crl: Vec<PathBuf>,
    /// Whether a certificate whose issuer has no CRL here is admitted.
    pub crl_unknown_status: CrlUnknownStatus,
    /// `trust_domains.NAME.sha256`: the SHA-256 (over the DER) of every CA
    /// the operator accepts in this bundle. A CA not listed refuses the
    /// whole bundle; a listed CA may be absent (pin old and new before a
    /// rotation pushes the new bundle). `None`: any CA that parses.
    pub pinned: Option<Vec<Fingerprint>>,
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
    crls: Vec<LoadedCrl>,
    /// Which CRLs to hand webpki together (indices into `crls`). One set,
    /// unless two CRLs name the same issuer: webpki uses the first CRL
    /// whose issuer *name* matches a certificate's issuer, so with two CAs
    /// of one name (a CA re-keyed under its name during a rotation) the
    /// other's CRL would fail its signature check and refuse every chain
    /// of that CA. Then there is one set per choice, and a chain is
    /// verified against each until one passes.
    crl_sets: Vec<Vec<usize>>,
}

impl TrustBundle {
    /// Reads and checks every file of `spec`, reporting every problem.
    /// CRLs are parsed here; whether their issuer belongs to the domain is
    /// checked by [`TrustBundle::check_crl_issuers`] once the identity's
    /// intermediates are known.
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
            // What `RootCertStore::add` does, keeping webpki's reason to
            // put into words.
            match webpki::anchor_from_trusted_cert(&ca.der) {
                Ok(anchor) => roots.roots.push(anchor.to_owned()),
                Err(source) => problems.push(MaterialError::BadTrustAnchor {
                    path: ca.path.clone(),
                    subject: ca.facts.subject.clone(),
                    source,
                }),
            }
        }
        if let Some(pinned) = &spec.pinned {
            for ca in cas
                .iter()
                .filter(|ca| !pinned.contains(&ca.facts.fingerprint))
            {
                problems.push(MaterialError::UnpinnedCa {
                    path: ca.path.clone(),
                    domain: spec.name.clone(),
                    subject: ca.facts.subject.clone(),
                    sha256: ca.facts.fingerprint,
                    pinned: pinned.clone().into_boxed_slice(),
                });
            }
        }
        if cas.is_empty() && problems.is_empty() {
            problems.push(MaterialError::EmptyBundle {
                domain: spec.name.clone(),
                paths: spec.bundle.clone(),
            });
        }

        let mut crls = Vec::new();
        for path in &spec.crl {
            match LoadedCrl::read(path, &spec.name) {
                Ok(found) => crls.extend(found),
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let fingerprint = Fingerprint::of_all(cas.iter().map(|ca| ca.der.as_ref()));
        let crl_sets = crl_sets(&crls, spec.crl_unknown_status);
        Ok(Self {
            spec: spec.clone(),
            cas,
            roots: Arc::new(roots),
            fingerprint,
            crls,
            crl_sets,
        })
    }

    /// Every CRL must be signed by a CA of this bundle or by one of
    /// `intermediates` (this host's own chain, for its own domain): a CRL
    /// nobody in the domain could have issued is a misconfiguration that
    /// would silently leave revocation unenforced.
    pub(crate) fn check_crl_issuers(
        &self,
        own_chain: Option<&[CertificateDer<'static>]>,
        now: SystemTime,
    ) -> Vec<MaterialError> {
        let candidates: Vec<&[u8]> = self
            .cas
            .iter()
            .map(|ca| ca.der.as_ref())
            .chain(own_chain.unwrap_or_default().iter().map(AsRef::as_ref))
            .collect();
        let mut problems = Vec::new();
        for crl in &self.crls {
            if let Err(e) = crl.check_issuer(&candidates, &self.spec.name, own_chain.is_some()) {
                problems.push(e);
            }
            crl.warn_if_late(now);
        }
        problems
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

    pub fn crls(&self) -> &[LoadedCrl] {
        &self.crls
    }

    /// SHA-256 over the bundle's CAs in order.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// SHA-256 over the CRLs' DER in order, when there are any.
    pub fn crl_fingerprint(&self) -> Option<Fingerprint> {
        (!self.crls.is_empty())
            .then(|| Fingerprint::of_all(self.crls.iter().map(|crl| crl.der().as_ref())))
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
    #[error("{}", describe(.0))]
    Invalid(#[source] webpki::Error),
}

impl ChainError {
    /// The refusal class an operator sees in logs and metrics.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::WrongUsage(_) => Refusal::BadCertificate,
            Self::Invalid(e) => refusal_of(e),
        }
    }
}

/// A chain that verified, with what the policy needs from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedChain {
    /// SHA-256 of the issuing CA's SubjectPublicKeyInfo (DER): the first
    /// intermediate of the path, or the trust anchor. Cross-signed forms of
    /// one CA share it.
    pub issuer_spki_sha256: [u8; 32],
}

/// What of a server certificate's name to check.
#[derive(Debug, Clone, Copy)]
pub enum NameCheck<'a> {
    /// Client certificates, and servers checked by CA only.
    None,
    Server(&'a ServerName<'a>),
}

impl TrustBundle {
    /// Verifies `chain` (leaf first, then intermediates) against this
    /// bundle and its CRLs for `usage` at `now`, and the name when asked.
    pub fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        usage: AuthUsage,
        name: NameCheck<'_>,
        provider: &CryptoProvider,
        now: UnixTime,
    ) -> Result<VerifiedChain, ChainError> {
        self.verify(chain, usage, name, provider, now, true)
    }

    fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        usage: AuthUsage,
        name: NameCheck<'_>,
        provider: &CryptoProvider,
        now: UnixTime,
        check_revocation: bool,
    ) -> Result<VerifiedChain, ChainError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(ChainError::Invalid(webpki::Error::BadDer));
        };
        let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(ChainError::Invalid)?;
        if !check_revocation || self.crls.is_empty() {
            let all: Vec<usize> = if check_revocation {
                (0..self.crls.len()).collect()
            } else {
                Vec::new()
            };
            return self.verify_with(&end_entity, intermediates, usage, name, provider, now, &all);
        }
        // A set whose CRL belongs to another same-named CA fails with a
        // signature error (webpki may report the anchor's rather than the
        // CRL's); the right set passes, or finds the serial revoked.
        let mut first = None;
        let mut meaningful = None;
        for set in &self.crl_sets {
            match self.verify_with(&end_entity, intermediates, usage, name, provider, now, set) {
                Ok(verified) => return Ok(verified),
                Err(ChainError::Invalid(webpki::Error::CertRevoked)) => {
                    return Err(ChainError::Invalid(webpki::Error::CertRevoked));
                }
                Err(e) => {
                    let signature = matches!(&e, ChainError::Invalid(inner)
                        if is_crl_signature_error(inner)
                            || *inner == webpki::Error::InvalidSignatureForPublicKey);
                    if !signature && meaningful.is_none() {
                        meaningful = Some(e.clone());
                    }
                    first.get_or_insert(e);
                }
            }
        }
        Err(meaningful
            .or(first)
            .unwrap_or(ChainError::Invalid(webpki::Error::UnknownIssuer)))
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_with(
        &self,
        end_entity: &webpki::EndEntityCert<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: AuthUsage,
        name: NameCheck<'_>,
        provider: &CryptoProvider,
        now: UnixTime,
        crl_set: &[usize],
    ) -> Result<VerifiedChain, ChainError> {
        let key_usage = match usage {
            AuthUsage::Server => webpki::KeyUsage::server_auth(),
            AuthUsage::Client => webpki::KeyUsage::client_auth(),
        };
        let crls: Vec<&webpki::CertRevocationList<'_>> = crl_set
            .iter()
            .filter_map(|i| self.crls.get(*i))
            .map(LoadedCrl::webpki)
            .collect();
        let revocation = match webpki::RevocationOptionsBuilder::new(&crls) {
            Ok(builder) => Some(
                builder
                    .with_depth(webpki::RevocationCheckDepth::Chain)
                    .with_status_policy(match self.spec.crl_unknown_status {
                        CrlUnknownStatus::Allow => webpki::UnknownStatusPolicy::Allow,
                        CrlUnknownStatus::Deny => webpki::UnknownStatusPolicy::Deny,
                    })
                    // A late CRL is still the best list we have: warned and
                    // exported (`mtlsd_crl_next_update_timestamp_seconds`),
                    // never a reason to refuse the whole mesh.
                    .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                    .build(),
            ),
            Err(_) => None, // no CRLs configured
        };
        let path = end_entity
            .verify_for_usage(
                provider.signature_verification_algorithms.all,
                &self.roots.roots,
                intermediates,
                now,
                key_usage,
                revocation,
                None,
            )
            .map_err(|e| match e {
                webpki::Error::RequiredEkuNotFoundContext(_) => ChainError::WrongUsage(usage),
                #[allow(deprecated)]
                webpki::Error::RequiredEkuNotFound => ChainError::WrongUsage(usage),
                other => ChainError::Invalid(other),
            })?;
        let issuer_spki_sha256 = *Fingerprint::of(path.issuer_spki().as_ref()).as_bytes();
        if let NameCheck::Server(name) = name {
            end_entity
                .verify_is_valid_for_subject_name(name)
                .map_err(ChainError::Invalid)?;
        }
        Ok(VerifiedChain { issuer_spki_sha256 })
    }

    /// [`TrustBundle::verify_chain`] at a wall-clock time.
    pub fn verify_chain_at(
        &self,
        chain: &[CertificateDer<'_>],
        usage: AuthUsage,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<VerifiedChain, ChainError> {
        self.verify_chain(chain, usage, NameCheck::None, provider, unix_time(now))
    }

    /// The chain without its CRLs: this host's own certificate is checked
    /// this way, so a CRL revoking it does not reject the whole reload (and
    /// with it every other revocation the CRL carries); the revocation is
    /// reported on its own ([`crate::Generation::own_revocation`]).
    pub(crate) fn verify_chain_ignoring_revocation(
        &self,
        chain: &[CertificateDer<'_>],
        usage: AuthUsage,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<VerifiedChain, ChainError> {
        self.verify(
            chain,
            usage,
            NameCheck::None,
            provider,
            unix_time(now),
            false,
        )
    }
}

/// The sets of CRLs to verify with (see `TrustBundle::crl_sets`). For
/// each issuer name, each of its CRLs, or (with `crl_unknown_status =
/// "allow"`) none of them (last: a CA of that name may have no CRL here,
/// e.g. the other of two same-named CAs); sets
/// with fewer "none" choices come first, so a chain is only judged without
/// a CRL of its issuer once every CRL of that name proved to be another
/// CA's. Capped so a pathological list cannot multiply handshake work.
fn crl_sets(crls: &[LoadedCrl], unknown: CrlUnknownStatus) -> Vec<Vec<usize>> {
    const MAX_SETS: usize = 32;
    if crls.is_empty() {
        return vec![Vec::new()];
    }
    let mut by_issuer: Vec<(&[u8], Vec<usize>)> = Vec::new();
    for (i, crl) in crls.iter().enumerate() {
        let issuer = crl.webpki().issuer();
        match by_issuer.iter_mut().find(|(name, _)| *name == issuer) {
            Some((_, indices)) => indices.push(i),
            None => by_issuer.push((issuer, vec![i])),
        }
    }
    // (chosen CRLs, how many names chose none)
    let mut sets: Vec<(Vec<usize>, usize)> = vec![(Vec::new(), 0)];
    for (_, indices) in by_issuer {
        let mut next = Vec::new();
        for (set, nones) in &sets {
            for i in &indices {
                let mut extended = set.clone();
                extended.push(*i);
                next.push((extended, *nones));
            }
            // Under "deny" a CA without a CRL is refused anyway; leaving
            // its name's CRLs out would instead check nothing.
            if unknown == CrlUnknownStatus::Allow {
                next.push((set.clone(), nones + 1));
            }
        }
        next.sort_by_key(|(_, nones)| *nones);
        next.truncate(MAX_SETS);
        sets = next;
    }
    sets.into_iter().map(|(set, _)| set).collect()
}

fn is_crl_signature_error(error: &webpki::Error) -> bool {
    matches!(
        error,
        webpki::Error::InvalidCrlSignatureForPublicKey
            | webpki::Error::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_)
            | webpki::Error::UnsupportedCrlSignatureAlgorithmContext(_)
            | webpki::Error::IssuerNotCrlSigner
    )
}

pub(crate) fn unix_time(now: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// The refusal class of a webpki verification error.
pub(crate) fn refusal_of(error: &webpki::Error) -> Refusal {
    use webpki::Error as E;
    match error {
        E::UnknownIssuer | E::InvalidSignatureForPublicKey => Refusal::UnknownCa,
        E::CertExpired { .. } => Refusal::Expired,
        E::CertNotValidYet { .. } => Refusal::NotYetValid,
        E::CertRevoked | E::UnknownRevocationStatus => Refusal::Revoked,
        E::CertNotValidForName(_) => Refusal::NameMismatch,
        _ => Refusal::BadCertificate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtlsd_devca::{CertificateAuthority, LeafSpec, OffsetDateTime};

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Two CAs of one name (a CA re-keyed under its name), each with its
    /// own CRL, in any order and with only one of the CRLs: the leaves of
    /// both verify, and a serial one CRL revokes is refused.
    #[test]
    fn same_named_cas_with_their_own_crls_verify_both_and_revoke_what_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let old = CertificateAuthority::new("mesh CA").unwrap();
        let new = CertificateAuthority::new("mesh CA").unwrap();
        let bundle = write(
            &dir,
            "bundle.pem",
            &format!("{}{}", old.cert_pem(), new.cert_pem()),
        );
        let next = OffsetDateTime::now_utc() + std::time::Duration::from_secs(86_400);
        let revoked_old = old
            .issue(&LeafSpec::new("r", &["r.test"]).serial(777))
            .unwrap();
        let old_crl = write(&dir, "old.crl", &old.crl(&[777], next).unwrap());
        let new_crl = write(&dir, "new.crl", &new.crl(&[], next).unwrap());
        let old_leaf = old.issue(&LeafSpec::new("a", &["a.test"])).unwrap();
        let new_leaf = new.issue(&LeafSpec::new("b", &["b.test"])).unwrap();
        let provider = crate::provider::provider();
        for crl in [
            vec![new_crl.clone()],
            vec![old_crl.clone()],
            vec![old_crl.clone(), new_crl.clone()],
            vec![new_crl.clone(), old_crl.clone()],
        ] {
            let spec = TrustDomainSpec {
                name: "mesh".into(),
                bundle: vec![bundle.clone()],
                version: None,
                crl: crl.clone(),
                crl_unknown_status: CrlUnknownStatus::Allow,
                pinned: None,
            };
            let trust = TrustBundle::load(&spec, SystemTime::now()).unwrap();
            for leaf in [&old_leaf, &new_leaf] {
                let verified = trust.verify_chain_at(
                    std::slice::from_ref(&leaf.cert_der),
                    AuthUsage::Client,
                    &provider,
                    SystemTime::now(),
                );
                assert!(verified.is_ok(), "{crl:?}: {verified:?}");
            }
            let revoked = trust.verify_chain_at(
                std::slice::from_ref(&revoked_old.cert_der),
                AuthUsage::Client,
                &provider,
                SystemTime::now(),
            );
            if crl.contains(&old_crl) {
                assert_eq!(
                    revoked,
                    Err(ChainError::Invalid(webpki::Error::CertRevoked)),
                    "{crl:?}"
                );
            }
        }
    }

    /// A pinned bundle loads when every CA is pinned (a pinned CA may be
    /// missing: the next one of a rotation), and is refused, naming the
    /// file, the CA and the pinned set, when it holds a CA not pinned.
    #[test]
    fn a_pinned_bundle_holds_only_pinned_cas() {
        let dir = tempfile::tempdir().unwrap();
        let old = CertificateAuthority::new("mesh CA 1").unwrap();
        let new = CertificateAuthority::new("mesh CA 2").unwrap();
        let rogue = CertificateAuthority::new("mesh CA 1").unwrap();
        let fp = |ca: &CertificateAuthority| Fingerprint::of(ca.cert_der());
        let spec = |file: PathBuf, pinned: Vec<Fingerprint>| TrustDomainSpec {
            name: "mesh".into(),
            bundle: vec![file],
            version: None,
            crl: Vec::new(),
            crl_unknown_status: CrlUnknownStatus::Allow,
            pinned: Some(pinned),
        };
        let only_old = write(&dir, "old.pem", old.cert_pem());
        let both = write(
            &dir,
            "both.pem",
            &format!("{}{}", new.cert_pem(), old.cert_pem()),
        );
        let now = SystemTime::now();
        TrustBundle::load(&spec(only_old.clone(), vec![fp(&old)]), now).unwrap();
        TrustBundle::load(&spec(only_old, vec![fp(&new), fp(&old)]), now).unwrap();
        TrustBundle::load(&spec(both.clone(), vec![fp(&old), fp(&new)]), now).unwrap();

        let Err(problems) = TrustBundle::load(&spec(both.clone(), vec![fp(&old)]), now) else {
            panic!("a CA that is not pinned was loaded");
        };
        let [problem] = problems.as_slice() else {
            panic!("{problems:?}");
        };
        let shown = problem.to_string();
        for needle in [
            both.display().to_string(),
            fp(&new).to_hex(),
            fp(&old).to_hex(),
            "mesh CA 2".to_owned(),
            "trust_domains.mesh.sha256".to_owned(),
        ] {
            assert!(shown.contains(&needle), "{needle} missing: {shown}");
        }

        // Same subject, other key: the fingerprint, not the name, decides.
        let swapped = write(&dir, "swapped.pem", rogue.cert_pem());
        let refused = TrustBundle::load(&spec(swapped, vec![fp(&old)]), now);
        assert!(
            matches!(
                refused.as_ref().map_err(Vec::as_slice),
                Err([MaterialError::UnpinnedCa { .. }])
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn a_ca_checked_as_a_leaf_is_refused_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new("mesh ca").unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert_pem()).unwrap();
        let spec = TrustDomainSpec {
            name: "mesh".into(),
            bundle: vec![path],
            version: None,
            crl: Vec::new(),
            crl_unknown_status: CrlUnknownStatus::Allow,
            pinned: None,
        };
        let bundle = TrustBundle::load(&spec, SystemTime::now()).unwrap();
        let verdict = bundle.verify_chain_at(
            std::slice::from_ref(ca.cert_der()),
            AuthUsage::Server,
            &crate::provider(),
            SystemTime::now(),
        );
        let Err(error) = verdict else {
            panic!("{verdict:?}");
        };
        let shown = error.to_string();
        assert!(shown.contains("CA certificate"), "{shown}");
        assert!(!shown.contains("CaUsedAsEndEntity"), "{shown}");
    }

    #[test]
    #[allow(deprecated)]
    fn webpki_errors_are_sentences_not_variant_names() {
        for (error, name) in [
            (webpki::Error::CaUsedAsEndEntity, "CaUsedAsEndEntity"),
            (webpki::Error::EndEntityUsedAsCa, "EndEntityUsedAsCa"),
            (webpki::Error::BadDer, "BadDer"),
            (webpki::Error::UnknownIssuer, "UnknownIssuer"),
            (
                webpki::Error::PathLenConstraintViolated,
                "PathLenConstraintViolated",
            ),
            (
                webpki::Error::UnsupportedCriticalExtension,
                "UnsupportedCriticalExtension",
            ),
            (
                webpki::Error::UnsupportedCertVersion,
                "UnsupportedCertVersion",
            ),
            (
                webpki::Error::TrailingData(webpki::DerTypeId::Certificate),
                "TrailingData",
            ),
            (webpki::Error::MalformedExtensions, "MalformedExtensions"),
            (webpki::Error::InvalidSerialNumber, "InvalidSerialNumber"),
            (webpki::Error::RequiredEkuNotFound, "RequiredEkuNotFound"),
        ] {
            let words = describe(&error);
            assert!(!words.contains(name), "{words}");
            assert!(words.contains(' '), "{words}");
        }
    }
}
