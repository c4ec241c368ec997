//! Which CAs of a trust bundle a chain depends on.
//!
//! A CA rotation removes the old CA from every bundle as its last step;
//! that is safe only once no certificate in use needs it. "Needs" is not
//! "was issued by": with a cross-signed CA in the bundle, a leaf of the new
//! CA may verify through the old one as well, and one verification only
//! shows the path it happened to take. So dependence is decided the way
//! the removal would act: the chain depends on a CA exactly when it no
//! longer verifies against the bundle without that CA.
//!
//! Revocation and names are not looked at: they do not change when a CA
//! is removed, and a revoked peer is refused already.

use std::time::SystemTime;

use mtlsd_expiry::Fingerprint;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::trust::{AuthUsage, TrustBundle};

/// How one chain stands against one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaDependence {
    /// The chain verifies against the whole bundle (at the time asked).
    /// When it does not, it depends on nothing: it is cut off already.
    pub verifies: bool,
    /// SHA-256 of the DER of each CA of the bundle the chain cannot do
    /// without, in bundle order.
    pub depends_on: Vec<Fingerprint>,
}

impl TrustBundle {
    /// Re-verifies `chain` (leaf first, then intermediates) for `usage`
    /// against this bundle once per CA left out. A bundle of n CAs costs
    /// n + 1 signature-path checks; callers cache the answer per chain and
    /// bundle.
    pub fn dependence(
        &self,
        chain: &[CertificateDer<'_>],
        usage: AuthUsage,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> CaDependence {
        let cas: Vec<(Fingerprint, TrustAnchor<'_>)> = self
            .cas()
            .iter()
            .filter_map(|ca| {
                webpki::anchor_from_trusted_cert(&ca.der)
                    .ok()
                    .map(|anchor| (ca.facts.fingerprint, anchor))
            })
            .collect();
        let verifies_without = |left_out: Option<Fingerprint>| {
            let anchors: Vec<TrustAnchor<'_>> = cas
                .iter()
                .filter(|(fingerprint, _)| Some(*fingerprint) != left_out)
                .map(|(_, anchor)| anchor.clone())
                .collect();
            verifies(chain, &anchors, usage, provider, now)
        };
        if !verifies_without(None) {
            return CaDependence {
                verifies: false,
                depends_on: Vec::new(),
            };
        }
        let mut depends_on: Vec<Fingerprint> = Vec::new();
        for (fingerprint, _) in &cas {
            if !depends_on.contains(fingerprint) && !verifies_without(Some(*fingerprint)) {
                depends_on.push(*fingerprint);
            }
        }
        CaDependence {
            verifies: true,
            depends_on,
        }
    }
}

fn verifies(
    chain: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    usage: AuthUsage,
    provider: &CryptoProvider,
    now: SystemTime,
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let key_usage = match usage {
        AuthUsage::Server => webpki::KeyUsage::server_auth(),
        AuthUsage::Client => webpki::KeyUsage::client_auth(),
    };
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    end_entity
        .verify_for_usage(
            provider.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            key_usage,
            None,
            None,
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use mtlsd_devca::{CertificateAuthority, LeafSpec, LeafUsage};

    use super::*;
    use crate::crl::CrlUnknownStatus;
    use crate::trust::TrustDomainSpec;

    fn bundle(dir: &tempfile::TempDir, cas: &[&CertificateAuthority]) -> TrustBundle {
        let path = dir.path().join("bundle.pem");
        let pem: String = cas.iter().map(|ca| ca.cert_pem()).collect();
        std::fs::write(&path, pem).unwrap();
        let spec = TrustDomainSpec {
            name: "mesh".to_owned(),
            bundle: vec![path],
            version: None,
            crl: Vec::new(),
            crl_unknown_status: CrlUnknownStatus::Allow,
            pinned: None,
        };
        TrustBundle::load(&spec, SystemTime::now()).unwrap()
    }

    fn fp(ca: &CertificateAuthority) -> Fingerprint {
        Fingerprint::of(ca.cert_der())
    }

    fn of(bundle: &TrustBundle, chain: &[CertificateDer<'static>]) -> CaDependence {
        bundle.dependence(
            chain,
            AuthUsage::Client,
            &crate::provider(),
            SystemTime::now(),
        )
    }

    fn leaf_of(ca: &CertificateAuthority, name: &str) -> CertificateDer<'static> {
        ca.issue(&LeafSpec::new(name, &[&format!("{name}.test")]))
            .unwrap()
            .cert_der
    }

    #[test]
    fn a_leaf_depends_on_its_own_ca_only_while_both_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let old = CertificateAuthority::new("old").unwrap();
        let new = CertificateAuthority::new("new").unwrap();
        let both = bundle(&dir, &[&old, &new]);
        let old_leaf = [leaf_of(&old, "a")];
        let new_leaf = [leaf_of(&new, "a")];
        assert_eq!(
            of(&both, &old_leaf),
            CaDependence {
                verifies: true,
                depends_on: vec![fp(&old)]
            }
        );
        // The same host with a re-issued leaf (a reconnect after phase 2).
        assert_eq!(of(&both, &new_leaf).depends_on, vec![fp(&new)]);

        // Against the old bundle alone, the new leaf is already cut off.
        let dir = tempfile::tempdir().unwrap();
        let only_old = bundle(&dir, &[&old]);
        assert_eq!(
            of(&only_old, &new_leaf),
            CaDependence {
                verifies: false,
                depends_on: vec![]
            }
        );
    }

    #[test]
    fn through_an_intermediate_the_root_is_what_counts() {
        let dir = tempfile::tempdir().unwrap();
        let root = CertificateAuthority::new("root").unwrap();
        let other = CertificateAuthority::new("other").unwrap();
        let issuing = root.intermediate("issuing").unwrap();
        let chain = [leaf_of(&issuing, "a"), issuing.cert_der().clone()];
        let trusted = bundle(&dir, &[&other, &root]);
        assert_eq!(of(&trusted, &chain).depends_on, vec![fp(&root)]);
        // The leaf alone does not verify: no path to the root.
        assert!(!of(&trusted, &chain[..1]).verifies);
    }

    #[test]
    fn a_chain_that_verifies_through_either_ca_depends_on_neither() {
        // Rotation with a cross-signed new CA: the peer sends its leaf from
        // the new CA and the new CA's certificate signed by the old one.
        let dir = tempfile::tempdir().unwrap();
        let old = CertificateAuthority::new("old").unwrap();
        let new = CertificateAuthority::new("new").unwrap();
        let new_by_old = new.cross_signed_by(&old).unwrap();
        let chain = [leaf_of(&new, "a"), new_by_old.cert_der().clone()];
        let both = bundle(&dir, &[&old, &new]);
        assert_eq!(
            of(&both, &chain),
            CaDependence {
                verifies: true,
                depends_on: vec![]
            }
        );
        // With the old CA alone it verifies only through the cross-signature:
        // it depends on the old CA, though its leaf's issuer is the new one.
        let dir = tempfile::tempdir().unwrap();
        let only_old = bundle(&dir, &[&old]);
        assert_eq!(of(&only_old, &chain).depends_on, vec![fp(&old)]);
    }

    #[test]
    fn the_usage_the_peer_was_checked_for_counts() {
        // A server we dialled is judged as a server: a client-only leaf
        // would not verify for that use at all.
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new("ca").unwrap();
        let trusted = bundle(&dir, &[&ca]);
        let at = |spec: &LeafSpec, usage| {
            let leaf = ca.issue(spec).unwrap().cert_der;
            trusted.dependence(&[leaf], usage, &crate::provider(), SystemTime::now())
        };
        let both = LeafSpec::new("s", &["s.test"]);
        let client_only = LeafSpec::new("c", &["c.test"]).usage(LeafUsage::Client);
        assert_eq!(at(&both, AuthUsage::Server).depends_on, vec![fp(&ca)]);
        assert!(at(&client_only, AuthUsage::Client).verifies);
        assert!(!at(&client_only, AuthUsage::Server).verifies);
    }

    #[test]
    fn the_same_ca_listed_twice_is_one_dependence() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new("ca").unwrap();
        let twice = bundle(&dir, &[&ca, &ca]);
        assert_eq!(of(&twice, &[leaf_of(&ca, "a")]).depends_on, vec![fp(&ca)]);
    }
}
