//! Why TLS material was refused.
//!
//! Every variant names the file (or trust domain) and the fact that made it
//! unusable, because the reader is an operator at a terminal who must fix the
//! file, not a developer reading a backtrace. Loading reports *all* problems
//! it finds ([`MaterialErrors`]) so one `mtlsd check` run lists everything.
//!
//! Where a library gave a typed cause (an I/O, PEM, webpki or rustls error)
//! the variant keeps it as its `source`, and its message also says it in
//! words: [`MaterialErrors`] lists problems by their messages, one line
//! each, and has no source of its own, so nothing is printed twice.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use mtlsd_expiry::Fingerprint;

/// One problem with one piece of TLS material.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed PEM: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: the file is larger than {max} bytes, far more than TLS material takes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error(
        "{path}: this looks like DER (binary), but mtlsd reads PEM; convert it with \
         `{}`", holds.convert_command(path)
    )]
    Der { path: PathBuf, holds: DerKind },
    #[error(
        "{path}: the private key is encrypted; mtlsd needs an \
         unencrypted key: decrypt it with `openssl pkey -in {path} -out DECRYPTED.key` \
         and keep it mode 0600"
    )]
    EncryptedKey { path: PathBuf },
    #[error(
        "{path}: the RSA key has {bits} bits, too small; mtlsd needs at least {} bits",
        MIN_RSA_BITS
    )]
    RsaKeyTooSmall { path: PathBuf, bits: usize },
    #[error("{path}: no CERTIFICATE block found{found}")]
    NoCertificate { path: PathBuf, found: FoundInstead },
    #[error("{path}: certificate #{index} is not valid X.509: {reason}")]
    CertificateParse {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{path}: no private key found{found}")]
    NoPrivateKey { path: PathBuf, found: FoundInstead },
    #[error("{path}: holds {count} private keys; exactly one is expected")]
    SeveralPrivateKeys { path: PathBuf, count: usize },
    #[error("{path}: private key is not usable: {source}")]
    UnusableKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "{path}: private key is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` or set identity.insecure_key_permissions = true"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{key}: private key does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// A key in a PKCS#11 token: its message names the token, the object
    /// and the reason.
    #[error("identity.key: {0}")]
    Token(#[source] crate::token::TokenError),
    #[error("{path}: certificate {subject} expired at {}", rfc3339(*not_after))]
    Expired {
        path: PathBuf,
        subject: String,
        not_after: SystemTime,
    },
    #[error("{path}: certificate {subject} is not valid before {}", rfc3339(*not_before))]
    NotYetValid {
        path: PathBuf,
        subject: String,
        not_before: SystemTime,
    },
    #[error(
        "{path}: certificate {subject} is a CA certificate, not a host certificate; \
         identity.cert must be this host's own certificate, issued by the CA"
    )]
    CaAsHostCertificate { path: PathBuf, subject: String },
    #[error(
        "{path}: certificate does not chain to trust domain '{domain}': {}",
        describe(source)
    )]
    NotChained {
        path: PathBuf,
        domain: String,
        #[source]
        source: webpki::Error,
    },
    #[error(
        "{path}: certificate cannot be used for {usage} authentication \
         (its extended key usage does not allow it), but a listener needs it"
    )]
    WrongUsage { path: PathBuf, usage: &'static str },
    #[error(
        "trust domain '{domain}': bundle is empty (no CA certificate in {})",
        paths_list(paths)
    )]
    EmptyBundle { domain: String, paths: Vec<PathBuf> },
    #[error("{path}: certificate {subject} in trust domain '{domain}' is not a CA certificate")]
    NotCa {
        path: PathBuf,
        domain: String,
        subject: String,
    },
    #[error(
        "{path}: CA certificate {subject} cannot be used as a trust anchor: {}",
        describe(source)
    )]
    BadTrustAnchor {
        path: PathBuf,
        subject: String,
        #[source]
        source: webpki::Error,
    },
    #[error(
        "{path}: CA {subject} (sha256 {}) is not pinned for trust domain '{domain}': \
         trust_domains.{domain}.sha256 accepts only {}; if this CA is expected (a CA \
         rotation), add its SHA-256 to that list, otherwise this is not the bundle you pinned",
        sha256.to_hex(), fingerprints_list(pinned)
    )]
    UnpinnedCa {
        path: PathBuf,
        domain: String,
        subject: String,
        sha256: Fingerprint,
        /// Boxed slice: keeps every `Result<_, MaterialError>` small.
        pinned: Box<[Fingerprint]>,
    },
    #[error("{path}: {field}: {reason}")]
    Inventory {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error(
        "{cert}: certificate does not carry the SANs the inventory gives host '{host}': \
         missing {}", missing.join(", ")
    )]
    OwnSansMissing {
        cert: PathBuf,
        host: String,
        missing: Vec<String>,
    },
    #[error("identity.host '{host}' is not a host in the inventory {inventory}")]
    HostNotInInventory { host: String, inventory: PathBuf },
    #[error("{path}: CRL of trust domain '{domain}': {source}")]
    Crl {
        path: PathBuf,
        domain: String,
        #[source]
        source: CrlProblem,
    },
    #[error("trust domain '{domain}' is not defined")]
    UnknownTrustDomain { domain: String },
    #[error("cannot build TLS configuration for '{listener}': {source}")]
    TlsConfig {
        listener: String,
        #[source]
        source: rustls::Error,
    },
}

/// What is wrong with a CRL file.
#[derive(Debug, thiserror::Error)]
pub enum CrlProblem {
    #[error("malformed PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("no X509 CRL block found")]
    NoCrl,
    #[error("not a valid CRL: {0}")]
    Parse(#[source] x509_parser::error::X509Error),
    /// webpki refuses these with a bare "BadDer" or "MalformedExtensions";
    /// an `openssl ca` without `crlnumber` and `crl_extensions` makes them.
    #[error(
        "not a valid CRL: it has no extensions (RFC 5280 requires a CRL number and an \
         authority key identifier; `openssl ca` adds them with `crlnumber` and \
         `crl_extensions` in its configuration)"
    )]
    NoExtensions,
    #[error("not a valid CRL: {0}")]
    Refused(#[source] webpki::Error),
    #[error(
        "issued by '{issuer}', which is not a CA of trust domain '{domain}'{}",
        if *with_own_chain { " nor an intermediate of this host's certificate chain" } else { "" }
    )]
    UnknownIssuer {
        issuer: String,
        domain: String,
        /// Whether this host's own intermediates were candidates too.
        with_own_chain: bool,
    },
    #[error(
        "its signature does not verify against the CA '{issuer}' of trust domain '{domain}' \
         (signed by a different CA with the same name?)"
    )]
    BadSignature { issuer: String, domain: String },
}

/// The smallest RSA key mtlsd signs with (what the crypto provider accepts,
/// and what current guidance asks for).
pub const MIN_RSA_BITS: usize = 2048;

/// What a DER file seems to hold, for the conversion command to suggest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerKind {
    Certificate,
    Key,
}

impl DerKind {
    /// The OpenSSL command that writes `path` as PEM.
    fn convert_command(self, path: &std::path::Path) -> String {
        let tool = match self {
            Self::Certificate => "x509",
            Self::Key => "pkey",
        };
        format!(
            "openssl {tool} -inform DER -outform PEM -in {} -out {}.pem",
            path.display(),
            path.display()
        )
    }
}

/// What a file held when it did not hold what we wanted; rendered as a
/// suffix such as " (found: 1 PRIVATE KEY)" so a swapped cert/key path is
/// obvious at a glance.
#[derive(Debug, Default, Clone)]
pub struct FoundInstead(pub Vec<String>);

impl fmt::Display for FoundInstead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            write!(f, " (the file holds no PEM blocks)")
        } else {
            write!(f, " (found: {})", self.0.join(", "))
        }
    }
}

/// Every problem found in one load, in the order found.
#[derive(Debug)]
pub struct MaterialErrors(pub Vec<MaterialError>);

impl MaterialErrors {
    pub fn iter(&self) -> impl Iterator<Item = &MaterialError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for MaterialErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems with TLS material:", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for MaterialErrors {}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn fingerprints_list(fingerprints: &[Fingerprint]) -> String {
    fingerprints
        .iter()
        .map(Fingerprint::to_hex)
        .collect::<Vec<_>>()
        .join(", ")
}

fn paths_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An operator's sentence for a webpki error.
pub fn describe(error: &webpki::Error) -> String {
    use webpki::Error as E;
    match error {
        E::UnknownIssuer => {
            "its issuer is not in the bundle (signed by a different CA?)".to_owned()
        }
        E::InvalidSignatureForPublicKey => {
            "its signature does not verify against the bundle's CA".to_owned()
        }
        E::CertExpired { .. } => "a certificate in the chain has expired".to_owned(),
        E::CertNotValidYet { .. } => "a certificate in the chain is not valid yet".to_owned(),
        E::CertRevoked => "a certificate in the chain is revoked by a CRL".to_owned(),
        E::UnknownRevocationStatus => {
            "no CRL covers a certificate of the chain and crl_unknown_status = \"deny\"".to_owned()
        }
        E::CertNotValidForName(_) => {
            "the certificate is not valid for the name that was dialled".to_owned()
        }
        E::CaUsedAsEndEntity => {
            "this is a CA certificate; a host needs a leaf certificate issued by the CA".to_owned()
        }
        E::EndEntityUsedAsCa => "a leaf certificate appears where a CA should sign".to_owned(),
        E::BadDer | E::BadDerTime => "the certificate is not valid DER".to_owned(),
        E::MaximumPathDepthExceeded | E::MaximumPathBuildCallsExceeded => {
            "the chain is too long".to_owned()
        }
        E::InvalidCrlSignatureForPublicKey => {
            "a CRL's signature does not verify against its issuer".to_owned()
        }
        other => describe_rest(other),
    }
}

/// The variants an operator meets rarely, in words all the same: only a
/// webpki release newer than this list falls back to the variant's name.
fn describe_rest(error: &webpki::Error) -> String {
    use webpki::Error as E;
    #[allow(deprecated)]
    let text = match error {
        E::InvalidCertValidity => "its validity period is invalid (not-after is before not-before)",
        E::CertDistrusted => "its public key is explicitly distrusted",
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            "its extended key usage does not allow this use"
        }
        E::EmptyEkuExtension => "it has an extended key usage extension that allows nothing",
        E::PathLenConstraintViolated => {
            "the chain is longer than a CA's path length constraint allows"
        }
        E::NameConstraintViolation => "it violates a CA's name constraints",
        E::MaximumSignatureChecksExceeded | E::MaximumNameConstraintComparisonsExceeded => {
            "the chain is too complex to verify (too many candidate issuers or name constraints)"
        }
        E::UnsupportedCertVersion => "it is not an X.509 v3 certificate",
        E::UnsupportedCriticalExtension => {
            "it has a critical extension that mtlsd does not understand"
        }
        E::SignatureAlgorithmMismatch => {
            "its signature algorithm does not match the one its body names"
        }
        E::UnsupportedSignatureAlgorithm | E::UnsupportedSignatureAlgorithmContext(_) => {
            "it is signed with an algorithm mtlsd does not accept (use ECDSA P-256/P-384, \
             Ed25519, or RSA with SHA-256 or better)"
        }
        E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "its signature algorithm does not fit the issuer's key, or the key type is not \
             supported (DSA, for example)"
        }
        E::TrailingData(_) => "it has trailing bytes after the DER (a damaged file?)",
        E::ExtensionValueInvalid | E::MalformedExtensions => "it has a malformed extension",
        E::MalformedDnsIdentifier => "it has a malformed DNS name",
        E::MalformedNameConstraint | E::InvalidNetworkMaskConstraint => {
            "a CA has a malformed name constraint"
        }
        E::InvalidSerialNumber => "its serial number is invalid (negative or longer than 20 bytes)",
        E::UnsupportedNameType => "the name to check it against is of an unsupported type",
        E::CrlExpired { .. } => "a CRL is past its next update",
        E::InvalidCrlNumber
        | E::IssuerNotCrlSigner
        | E::UnsupportedCrlIssuingDistributionPoint
        | E::UnsupportedCrlVersion
        | E::UnsupportedDeltaCrl
        | E::UnsupportedIndirectCrl
        | E::UnsupportedRevocationReason
        | E::UnsupportedRevocationReasonsPartitioning
        | E::UnsupportedCrlSignatureAlgorithm
        | E::UnsupportedCrlSignatureAlgorithmContext(_)
        | E::UnsupportedCrlSignatureAlgorithmForPublicKey
        | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_) => {
            "a CRL of the bundle is of a kind mtlsd cannot use"
        }
        other => return format!("refused by the verifier ({other})"),
    };
    text.to_owned()
}
