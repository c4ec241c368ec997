//! [`CertFacts`]: what one certificate says, parsed once.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Fingerprint;

/// The certificate could not be parsed as X.509.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    #[error("certificate has trailing bytes after its DER encoding")]
    TrailingData,
    #[error("certificate extension {extension} is malformed: {reason}")]
    Extension {
        extension: &'static str,
        reason: String,
    },
}

/// One subject alternative name, as it appears in the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectAltName {
    Dns(String),
    Ip(IpAddr),
    Uri(String),
    Email(String),
    /// A SAN type mtlsd does not match on (directory name, other name, …),
    /// kept so `inspect` can still say it is there.
    Other(String),
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "DNS:{name}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
            Self::Uri(uri) => write!(f, "URI:{uri}"),
            Self::Email(email) => write!(f, "email:{email}"),
            Self::Other(what) => write!(f, "other:{what}"),
        }
    }
}

/// Where a point in time falls relative to a certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    Valid,
    Expired,
}

/// The facts about one certificate that mtlsd reports and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<SubjectAltName>,
    /// Lowercase hex, without leading zero bytes — as `openssl x509 -serial`
    /// prints it, modulo case.
    pub serial_hex: String,
    pub fingerprint: Fingerprint,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// `None` when the certificate has no extended key usage extension
    /// (then any usage is allowed).
    pub server_auth: Option<bool>,
    pub client_auth: Option<bool>,
}

impl CertFacts {
    /// Parses `der` as exactly one X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, FactsError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| FactsError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(FactsError::TrailingData);
        }

        let sans = match cert.subject_alternative_name() {
            Ok(Some(ext)) => ext.value.general_names.iter().map(san_of).collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                return Err(FactsError::Extension {
                    extension: "subjectAltName",
                    reason: e.to_string(),
                });
            }
        };
        let (server_auth, client_auth) = match cert.extended_key_usage() {
            Ok(Some(ext)) => (
                Some(ext.value.server_auth || ext.value.any),
                Some(ext.value.client_auth || ext.value.any),
            ),
            Ok(None) => (None, None),
            Err(e) => {
                return Err(FactsError::Extension {
                    extension: "extendedKeyUsage",
                    reason: e.to_string(),
                });
            }
        };

        let serial = cert.raw_serial();
        let first_nonzero = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
        let serial_hex = match hex::encode(&serial[first_nonzero..]) {
            s if s.is_empty() => "0".to_owned(),
            s => s.trim_start_matches('0').to_owned(),
        };

        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            serial_hex,
            fingerprint: Fingerprint::of(der),
            not_before: system_time(cert.validity().not_before.timestamp()),
            not_after: system_time(cert.validity().not_after.timestamp()),
            is_ca: cert.is_ca(),
            server_auth,
            client_auth,
        })
    }

    /// Where `now` falls in this certificate's validity window (inclusive at
    /// both ends, as RFC 5280 defines it).
    pub fn validity_at(&self, now: SystemTime) -> Validity {
        if now < self.not_before {
            Validity::NotYetValid
        } else if now > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// Seconds since the Unix epoch; negative before 1970.
    pub fn not_after_unix(&self) -> i64 {
        unix_seconds(self.not_after)
    }

    pub fn not_before_unix(&self) -> i64 {
        unix_seconds(self.not_before)
    }
}

fn san_of(name: &GeneralName<'_>) -> SubjectAltName {
    match name {
        GeneralName::DNSName(dns) => SubjectAltName::Dns((*dns).to_owned()),
        GeneralName::URI(uri) => SubjectAltName::Uri((*uri).to_owned()),
        GeneralName::RFC822Name(email) => SubjectAltName::Email((*email).to_owned()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let octets: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                SubjectAltName::Ip(IpAddr::from(octets))
            }
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                SubjectAltName::Ip(IpAddr::from(octets))
            }
            _ => SubjectAltName::Other(format!("IP address of {} bytes", bytes.len())),
        },
        other => SubjectAltName::Other(format!("{other:?}")),
    }
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtlsd_devca::{CertificateAuthority, LeafSpec, LeafUsage, OffsetDateTime};

    #[test]
    fn facts_match_what_was_minted() {
        let ca = CertificateAuthority::new("facts ca").unwrap();
        let not_before = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let not_after = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let leaf = ca
            .issue(
                &LeafSpec::new("db1", &["db1.example", "10.1.2.3", "spiffe://c/db1"])
                    .validity(not_before, not_after)
                    .usage(LeafUsage::Server)
                    .serial(0xabcdef),
            )
            .unwrap();

        let facts = CertFacts::from_der(&leaf.cert_der).unwrap();
        assert_eq!(facts.serial_hex, "abcdef");
        assert_eq!(facts.not_before_unix(), 1_700_000_000);
        assert_eq!(facts.not_after_unix(), 1_900_000_000);
        assert!(facts.subject.contains("CN=db1"), "{}", facts.subject);
        assert!(facts.issuer.contains("CN=facts ca"), "{}", facts.issuer);
        assert_eq!(
            facts.sans,
            vec![
                SubjectAltName::Dns("db1.example".into()),
                SubjectAltName::Ip("10.1.2.3".parse().unwrap()),
                SubjectAltName::Uri("spiffe://c/db1".into()),
            ]
        );
        assert!(!facts.is_ca);
        assert_eq!(facts.server_auth, Some(true));
        assert_eq!(facts.client_auth, Some(false));
        assert_eq!(facts.fingerprint, Fingerprint::of(&leaf.cert_der));

        let ca_facts = CertFacts::from_der(ca.cert_der()).unwrap();
        assert!(ca_facts.is_ca);
    }

    #[test]
    fn validity_window_is_inclusive() {
        let ca = CertificateAuthority::new("facts ca").unwrap();
        let leaf = ca.issue(&LeafSpec::new("x", &["x"]).expired()).unwrap();
        let facts = CertFacts::from_der(&leaf.cert_der).unwrap();
        assert_eq!(facts.validity_at(SystemTime::now()), Validity::Expired);
        assert_eq!(facts.validity_at(facts.not_after), Validity::Valid);
        assert_eq!(facts.validity_at(facts.not_before), Validity::Valid);
        assert_eq!(
            facts.validity_at(facts.not_before - Duration::from_secs(1)),
            Validity::NotYetValid
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(CertFacts::from_der(b"").is_err());
        assert!(CertFacts::from_der(b"\x30\x82\xff\xff garbage").is_err());
        let ca = CertificateAuthority::new("facts ca").unwrap();
        let der = ca.cert_der().as_ref();
        for cut in [1, der.len() / 2, der.len() - 1] {
            assert!(CertFacts::from_der(&der[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = der.to_vec();
        trailing.push(0);
        assert!(matches!(
            CertFacts::from_der(&trailing),
            Err(FactsError::TrailingData)
        ));
    }
}
