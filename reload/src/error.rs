//! Why TLS material was refused.
//!
//! Every variant names the file (or trust domain) and the fact that made it
//! unusable, because the reader is an operator at a terminal who must fix the
//! file, not a developer reading a backtrace. Loading reports *all* problems
//! it finds ([`MaterialErrors`]) so one `mtlsd check` run lists everything.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

/// One problem with one piece of TLS material.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
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
    #[error("{path}: private key is not usable: {reason}")]
    UnusableKey { path: PathBuf, reason: String },
    #[error(
        "{path}: private key is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` or set identity.insecure_key_permissions = true"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{key}: private key does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
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
    #[error("{path}: certificate does not chain to trust domain '{domain}': {reason}")]
    NotChained {
        path: PathBuf,
        domain: String,
        reason: String,
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
    #[error("{path}: CA certificate {subject} cannot be used as a trust anchor: {reason}")]
    BadTrustAnchor {
        path: PathBuf,
        subject: String,
        reason: String,
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
    #[error("{path}: CRL of trust domain '{domain}': {reason}")]
    Crl {
        path: PathBuf,
        domain: String,
        reason: String,
    },
    #[error("trust domain '{domain}' is not defined")]
    UnknownTrustDomain { domain: String },
    #[error("cannot build TLS configuration for '{listener}': {reason}")]
    TlsConfig { listener: String, reason: String },
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

fn paths_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
