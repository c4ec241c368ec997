//! A throw-away certificate authority for `mtlsd dev` and for tests.
//!
//! Production deployments bring their own PKI; nothing in the daemon's data
//! path depends on this crate. It exists so that the development mode and
//! every test mint their certificates the same way, at run time, with exact
//! validity windows — no checked-in key material that silently expires, and
//! no test that sleeps to make a certificate expire.
//!
//! Every certificate is X.509 v3 with ECDSA P-256 keys; leaves carry SANs
//! (DNS, IP or URI, decided from the string's shape) and the extended key
//! usages the caller asks for.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
pub use time::OffsetDateTime;

/// What can go wrong while minting.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot mint certificate for {subject}: {source}")]
    Mint {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    /// A SAN string is neither an IP address, a URI nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: {source}")]
    InvalidSan {
        san: String,
        #[source]
        source: rcgen::Error,
    },
    /// The PEM given to [`CertificateAuthority::from_pem`] is not a usable CA.
    #[error("cannot load CA from PEM: {0}")]
    LoadCa(#[source] rcgen::Error),
    /// A CA reloaded with [`CertificateAuthority::from_pem`] cannot be
    /// re-issued: the parameters it was minted with are not kept in PEM.
    #[error("cannot re-issue a CA loaded from PEM; mint it with this crate instead")]
    NotMinted,
}

/// Which TLS roles a leaf certificate may take (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUsage {
    /// serverAuth and clientAuth: what a mesh host certificate carries.
    ServerAndClient,
    /// serverAuth only.
    Server,
    /// clientAuth only.
    Client,
}

/// Everything that decides what a leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// DNS names, IP addresses or URIs (anything containing `://`).
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub usage: LeafUsage,
    /// Fixed serial; `None` picks a fresh unique one.
    pub serial: Option<u64>,
}

impl LeafSpec {
    /// A leaf valid from an hour ago for 90 days, usable as server and client.
    pub fn new(common_name: &str, sans: &[&str]) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.to_owned(),
            sans: sans.iter().map(|s| (*s).to_owned()).collect(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(90 * 86_400),
            usage: LeafUsage::ServerAndClient,
            serial: None,
        }
    }

    /// Valid from `not_before` to `not_after`, exactly.
    pub fn validity(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Expired a day ago (valid for the 30 days before that).
    pub fn expired(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(
            now - Duration::from_secs(31 * 86_400),
            now - Duration::from_secs(86_400),
        )
    }

    /// Becomes valid in a day.
    pub fn not_yet_valid(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(
            now + Duration::from_secs(86_400),
            now + Duration::from_secs(31 * 86_400),
        )
    }

    pub fn usage(mut self, usage: LeafUsage) -> Self {
        self.usage = usage;
        self
    }

    pub fn serial(mut self, serial: u64) -> Self {
        self.serial = Some(serial);
        self
    }
}

/// A minted certificate with its private key, in the forms callers need.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pkcs8: Vec<u8>,
    /// The serial as lowercase hex, no leading zeros.
    pub serial_hex: String,
}

impl IssuedCert {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }
}

/// A self-signed (or intermediate) CA that can issue leaves.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// What the certificate was minted from (subject, validity, usages),
    /// for re-issuing it under another issuer; `None` after `from_pem`.
    params: Option<CertificateParams>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A root CA valid from an hour ago for ten years.
    pub fn new(common_name: &str) -> Result<Self, DevCaError> {
        let now = OffsetDateTime::now_utc();
        Self::with_validity(
            common_name,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(3650 * 86_400),
        )
    }

    /// A root CA with an exact validity window.
    pub fn with_validity(
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, DevCaError> {
        let params = ca_params(common_name, not_before, not_after);
        let key = generate_key(common_name)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| DevCaError::Mint {
                subject: common_name.to_owned(),
                source,
            })?;
        Ok(Self::assemble(params, key, cert))
    }

    /// An intermediate CA signed by this one, valid for ten years.
    pub fn intermediate(&self, common_name: &str) -> Result<Self, DevCaError> {
        let now = OffsetDateTime::now_utc();
        let params = ca_params(
            common_name,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(3650 * 86_400),
        );
        let key = generate_key(common_name)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| DevCaError::Mint {
                subject: common_name.to_owned(),
                source,
            })?;
        Ok(Self::assemble(params, key, cert))
    }

    /// Reloads a CA written earlier by [`Self::cert_pem`] and [`Self::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DevCaError> {
        let key = KeyPair::from_pem(key_pem).map_err(DevCaError::LoadCa)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(DevCaError::LoadCa)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| DevCaError::LoadCa(rcgen::Error::CouldNotParseCertificate))?;
        Ok(Self {
            issuer,
            params: None,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
        })
    }

    fn assemble(params: CertificateParams, key: KeyPair, cert: rcgen::Certificate) -> Self {
        let key_pem = key.serialize_pem();
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params: Some(params.clone()),
            issuer: Issuer::new(params, key),
            key_pem,
        }
    }

    /// The same CA — same subject, same key — in a certificate issued by
    /// `issuer` instead of itself: a cross-signed form. Leaves this CA
    /// issues chain through either form (to this CA as a root, or through
    /// the returned certificate to `issuer`); both forms share one
    /// SubjectPublicKeyInfo. The result issues leaves like `self`.
    pub fn cross_signed_by(&self, issuer: &CertificateAuthority) -> Result<Self, DevCaError> {
        let mut params = self.params.clone().ok_or(DevCaError::NotMinted)?;
        params.serial_number = Some(SerialNumber::from(next_serial()));
        let cert = params
            .signed_by(self.issuer.key(), &issuer.issuer)
            .map_err(|source| DevCaError::Mint {
                subject: common_name(&params.distinguished_name),
                source,
            })?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(DevCaError::LoadCa)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params.clone(), key),
            params: Some(params),
            key_pem: self.key_pem.clone(),
        })
    }

    /// The CA's SubjectPublicKeyInfo, DER: what `revoked[].issuer` in the
    /// inventory identifies a CA by (its SHA-256), and what cross-signed
    /// forms of one CA share.
    pub fn spki_der(&self) -> Vec<u8> {
        self.issuer.key().subject_public_key_info()
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A CRL signed by this CA revoking `serials` (as given to
    /// [`LeafSpec::serial`]), issued now and due again at `next_update`.
    pub fn crl(&self, serials: &[u64], next_update: OffsetDateTime) -> Result<String, DevCaError> {
        let now = OffsetDateTime::now_utc();
        let this_update = if next_update <= now {
            next_update - Duration::from_secs(86_400)
        } else {
            now - Duration::from_secs(60)
        };
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(next_serial()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: this_update,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|source| DevCaError::Mint {
                subject: "CRL".to_owned(),
                source,
            })?;
        crl.pem().map_err(|source| DevCaError::Mint {
            subject: "CRL".to_owned(),
            source,
        })
    }

    /// Issues a leaf certificate as `spec` describes, with a new P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, DevCaError> {
        let key = generate_key(&spec.common_name)?;
        self.issue_for(spec, key)
    }

    /// Issues a leaf for an existing key (PKCS#8 PEM: P-256, P-384,
    /// Ed25519 or RSA), as when a host renews a certificate for a key that
    /// lives in a token.
    pub fn issue_for_key(&self, spec: &LeafSpec, key_pem: &str) -> Result<IssuedCert, DevCaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| DevCaError::Mint {
            subject: spec.common_name.clone(),
            source,
        })?;
        self.issue_for(spec, key)
    }

    fn issue_for(&self, spec: &LeafSpec, key: KeyPair) -> Result<IssuedCert, DevCaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&spec.common_name);
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match spec.usage {
            LeafUsage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            LeafUsage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            LeafUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.subject_alt_names = spec
            .sans
            .iter()
            .map(|san| parse_san(san))
            .collect::<Result<_, _>>()?;
        let serial = spec.serial.unwrap_or_else(next_serial);
        params.serial_number = Some(SerialNumber::from(serial));

        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| DevCaError::Mint {
                subject: spec.common_name.clone(),
                source,
            })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            pkcs8: key.serialize_der(),
            serial_hex: format!("{serial:x}"),
        })
    }
}

fn ca_params(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from(next_serial()));
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "mtlsd dev CA");
    dn
}

fn common_name(dn: &DistinguishedName) -> String {
    match dn.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(cn)) => cn.clone(),
        _ => String::new(),
    }
}

fn generate_key(subject: &str) -> Result<KeyPair, DevCaError> {
    KeyPair::generate().map_err(|source| DevCaError::Mint {
        subject: subject.to_owned(),
        source,
    })
}

fn parse_san(san: &str) -> Result<SanType, DevCaError> {
    if let Ok(ip) = san.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |source| DevCaError::InvalidSan {
        san: san.to_owned(),
        source,
    };
    if san.contains("://") {
        return Ok(SanType::URI(san.try_into().map_err(invalid)?));
    }
    Ok(SanType::DnsName(san.try_into().map_err(invalid)?))
}

/// Serials unique within this process and unlikely to collide across runs:
/// seconds since the epoch in the high bits, a counter in the low bits.
fn next_serial() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xF_FFFF;
    // Keep the top bit clear so the DER INTEGER needs no padding byte.
    ((secs & 0x7FF_FFFF_FFFF) << 20) | n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_carries_requested_sans_and_serial() {
        let ca = CertificateAuthority::new("test ca").unwrap();
        let leaf = ca
            .issue(
                &LeafSpec::new("db1", &["db1.example", "10.0.0.5", "spiffe://c/db1"])
                    .serial(0x1234),
            )
            .unwrap();
        assert_eq!(leaf.serial_hex, "1234");
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = CertificateAuthority::new("test ca").unwrap();
        let again = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        again.issue(&LeafSpec::new("x", &["x.example"])).unwrap();
    }

    #[test]
    fn cross_signed_form_keeps_subject_and_key_under_another_issuer() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let ca = CertificateAuthority::new("cross ca").unwrap();
        let other = CertificateAuthority::new("other root").unwrap();
        let cross = ca.cross_signed_by(&other).unwrap();
        fn parse(der: &[u8]) -> X509Certificate<'_> {
            X509Certificate::from_der(der).unwrap().1
        }
        let (original, crossed, root) = (
            parse(ca.cert_der()),
            parse(cross.cert_der()),
            parse(other.cert_der()),
        );
        assert_ne!(cross.cert_der(), ca.cert_der());
        assert_eq!(crossed.subject(), original.subject());
        assert_eq!(crossed.issuer(), root.subject());
        assert_eq!(cross.spki_der(), ca.spki_der());
        assert_eq!(crossed.public_key().raw, &ca.spki_der()[..]);
        assert!(crossed.is_ca());
        crossed.verify_signature(Some(root.public_key())).unwrap();
        // Leaves from either form name the same issuer and verify with the
        // one key.
        let leaf = cross.issue(&LeafSpec::new("x", &["x.example"])).unwrap();
        let leaf = parse(&leaf.cert_der);
        assert_eq!(leaf.issuer(), original.subject());
        leaf.verify_signature(Some(original.public_key())).unwrap();

        let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert!(matches!(
            reloaded.cross_signed_by(&other),
            Err(DevCaError::NotMinted)
        ));
    }

    #[test]
    fn bad_san_is_an_error() {
        let ca = CertificateAuthority::new("test ca").unwrap();
        let err = ca
            .issue(&LeafSpec::new("x", &["caf\u{e9}.example"]))
            .unwrap_err();
        assert!(matches!(err, DevCaError::InvalidSan { .. }), "{err}");
    }
}
