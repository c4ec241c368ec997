//! Why a peer was refused, as a small closed set.
//!
//! The same value is the `reason` field of the log line, the label on
//! failure metrics and what tests assert on, so the set stays bounded and
//! every refusal lands in exactly one class an operator can look up.

use std::fmt;
use std::io;

use mtlsd_reload::{Refusal, TokenSignError, Verdict};
use rustls::{CertificateError, Error as TlsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum RejectReason {
    /// The chain does not lead to a CA of the listener's trust domain.
    UnknownCa = 0,
    Expired,
    NotYetValid,
    /// An mTLS listener got a handshake without a client certificate.
    NoClientCert,
    /// The server's certificate is not valid for the name we dialled.
    NameMismatch,
    /// Some other defect in the presented certificate.
    BadCertificate,
    /// The other side refused *us* (sent a fatal alert).
    PeerRefused,
    /// The handshake did not finish within the listener's handshake timeout.
    Timeout,
    /// Not TLS, a TLS version or cipher we do not allow, garbage, or a
    /// connection dropped mid-handshake.
    Protocol,
    /// The chain verifies, but no SAN belongs to an inventory host.
    SanNotInInventory,
    /// The SANs point at more than one inventory host.
    AmbiguousHost,
    /// The peer's host holds no role this listener (or route) allows.
    RoleNotAllowed,
    /// The certificate is revoked: by a CRL or in the inventory.
    Revoked,
    /// Our own key could not sign: its PKCS#11 token did not answer within
    /// `pkcs11.timeout`, or refused (removed, session lost).
    LocalKey,
}

impl RejectReason {
    pub const ALL: [Self; 14] = [
        Self::UnknownCa,
        Self::Expired,
        Self::NotYetValid,
        Self::NoClientCert,
        Self::NameMismatch,
        Self::BadCertificate,
        Self::PeerRefused,
        Self::Timeout,
        Self::Protocol,
        Self::SanNotInInventory,
        Self::AmbiguousHost,
        Self::RoleNotAllowed,
        Self::Revoked,
        Self::LocalKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::NoClientCert => "no_client_cert",
            Self::NameMismatch => "name_mismatch",
            Self::BadCertificate => "bad_certificate",
            Self::PeerRefused => "peer_refused",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::SanNotInInventory => "san_not_in_inventory",
            Self::AmbiguousHost => "ambiguous_host",
            Self::RoleNotAllowed => "role_not_allowed",
            Self::Revoked => "revoked",
            Self::LocalKey => "local_key",
        }
    }

    /// The class of a handshake failure, preferring what the policy
    /// verifier recorded (the rustls error only says "access denied").
    pub fn of_handshake(err: &io::Error, verdict: Option<&Verdict>) -> Self {
        match verdict {
            Some(verdict) => Self::from(verdict.refusal),
            None => Self::classify(err),
        }
    }

    /// Classifies an error from a tokio-rustls accept or connect (rustls
    /// errors travel inside `io::Error`).
    pub fn classify(err: &io::Error) -> Self {
        match err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) {
            Some(tls) => Self::of_tls(tls),
            None if err.kind() == io::ErrorKind::TimedOut => Self::Timeout,
            None => Self::Protocol,
        }
    }

    fn of_tls(err: &TlsError) -> Self {
        match err {
            TlsError::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::NotYetValid
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Self::NameMismatch,
                CertificateError::Revoked => Self::Revoked,
                _ => Self::BadCertificate,
            },
            TlsError::NoCertificatesPresented => Self::NoClientCert,
            TlsError::AlertReceived(_) => Self::PeerRefused,
            TlsError::Other(other) if other.0.downcast_ref::<TokenSignError>().is_some() => {
                Self::LocalKey
            }
            _ => Self::Protocol,
        }
    }
}

impl From<Refusal> for RejectReason {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UnknownCa => Self::UnknownCa,
            Refusal::Expired => Self::Expired,
            Refusal::NotYetValid => Self::NotYetValid,
            Refusal::Revoked => Self::Revoked,
            Refusal::NameMismatch => Self::NameMismatch,
            Refusal::BadCertificate => Self::BadCertificate,
            Refusal::SanNotInInventory => Self::SanNotInInventory,
            Refusal::AmbiguousHost => Self::AmbiguousHost,
            Refusal::RoleNotAllowed => Self::RoleNotAllowed,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(err: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn rustls_errors_map_to_classes() {
        let cases = [
            (
                TlsError::InvalidCertificate(CertificateError::UnknownIssuer),
                RejectReason::UnknownCa,
            ),
            (
                TlsError::InvalidCertificate(CertificateError::Expired),
                RejectReason::Expired,
            ),
            (
                TlsError::InvalidCertificate(CertificateError::NotValidYet),
                RejectReason::NotYetValid,
            ),
            (
                TlsError::InvalidCertificate(CertificateError::NotValidForName),
                RejectReason::NameMismatch,
            ),
            (
                TlsError::InvalidCertificate(CertificateError::BadEncoding),
                RejectReason::BadCertificate,
            ),
            (
                TlsError::NoCertificatesPresented,
                RejectReason::NoClientCert,
            ),
            (
                TlsError::AlertReceived(rustls::AlertDescription::BadCertificate),
                RejectReason::PeerRefused,
            ),
            (TlsError::DecryptError, RejectReason::Protocol),
            (
                TlsError::Other(rustls::OtherError(std::sync::Arc::new(TokenSignError(
                    mtlsd_reload::TokenError::Timeout {
                        key: "token 'mesh' object 'host'".to_owned(),
                        after: std::time::Duration::from_secs(2),
                    },
                )))),
                RejectReason::LocalKey,
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(RejectReason::classify(&wrapped(err)), expected);
        }
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(RejectReason::classify(&eof), RejectReason::Protocol);
        let names: std::collections::HashSet<_> =
            RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), RejectReason::ALL.len());
    }
}
