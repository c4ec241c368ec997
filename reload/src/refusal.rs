//! Why a peer was refused, as a small closed set shared by the chain
//! checks, the inventory and the policy: the same value is the log's
//! `reason`, the metrics label and what tests assert on.

use std::fmt;

/// Why a peer was refused, as a small closed set: the same value is the
/// log's `reason`, the metrics label and what tests assert on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The chain does not lead to a CA of the trust domain.
    UnknownCa,
    Expired,
    NotYetValid,
    /// Revoked by a CRL or by the inventory's `[[revoked]]` list.
    Revoked,
    /// The server's certificate is not valid for the name we dialled.
    NameMismatch,
    /// Some other defect in the presented certificate.
    BadCertificate,
    /// None of the certificate's SANs belongs to an inventory host.
    SanNotInInventory,
    /// The SANs point at more than one host.
    AmbiguousHost,
    /// The host holds none of the roles this listener (or route) allows.
    RoleNotAllowed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
            Self::NameMismatch => "name_mismatch",
            Self::BadCertificate => "bad_certificate",
            Self::SanNotInInventory => "san_not_in_inventory",
            Self::AmbiguousHost => "ambiguous_host",
            Self::RoleNotAllowed => "role_not_allowed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
