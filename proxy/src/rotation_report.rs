//! What `GET /rotation` answers and `mtlsd rotation check` reads: whether
//! one phase of a CA rotation is done on this host, and if not, what
//! blocks it. A shared leaf, like [`crate::status_report`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// The three phases of a CA rotation, each safe only once the one before
/// has finished on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The new CA is in this host's bundle (`--ca` names the new CA).
    AddCa,
    /// This host's own certificate no longer needs the old CA (`--ca`
    /// names the old CA).
    Reissue,
    /// Nothing this host talks to needs the old CA any more: neither its
    /// own certificate nor any peer's (`--ca` names the old CA).
    RemoveCa,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddCa => "add-ca",
            Self::Reissue => "reissue",
            Self::RemoveCa => "remove-ca",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::AddCa, Self::Reissue, Self::RemoveCa]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's answer for one phase and CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationCheck {
    pub phase: Phase,
    pub trust_domain: String,
    /// The CA, SHA-256 of its DER in lowercase hex (as the metrics label it).
    pub ca_sha256: String,
    /// Its subject, when this host's bundle holds it.
    #[serde(default)]
    pub ca_subject: Option<String>,
    /// This host's name in the inventory.
    #[serde(default)]
    pub host: Option<String>,
    /// Nothing blocks the phase here, and every host this host should
    /// talk to was seen recently.
    pub done: bool,
    /// What keeps the phase from being done here.
    #[serde(default)]
    pub blockers: Vec<Blocker>,
    /// Inventory hosts this host should talk to but has no recent chain
    /// of: whether they need the CA is unknown (remove-ca only).
    #[serde(default)]
    pub unknown: Vec<UnknownHost>,
    /// A remark that does not block, e.g. the CA is not in the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    /// The inventory host concerned; `None`: this host itself.
    pub host: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownHost {
    pub host: String,
    /// `never` (no handshake since start-up, or forgotten), `stale` (no
    /// handshake in this trust domain within `peers.stale_after`), or
    /// `no_chain` (handshakes, but none that kept a chain of this domain).
    pub seen: String,
    #[serde(default)]
    pub last_handshake: Option<String>,
}
