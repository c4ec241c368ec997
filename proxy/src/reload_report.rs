//! What a reload attempt did, as the reloader reports it and the audit
//! log, `/status`, `mtlsd reload` and the metrics show it. A shared leaf:
//! the reloader writes these, the daemon's state holds the last one, and
//! the admin endpoint and status read it, without importing each other.

use std::fmt;
use std::str::FromStr;

use mtlsd_reload::InventoryDelta;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::Section;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Startup,
    Sighup,
    Inotify,
    Timer,
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Sighup => "sighup",
            Self::Inotify => "inotify",
            Self::Timer => "timer",
            Self::Admin => "admin",
        }
    }

    /// Explicit requests are always audited; automatic ones only when they
    /// change something or fail.
    pub(crate) fn explicit(self) -> bool {
        matches!(self, Self::Startup | Self::Sighup | Self::Admin)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Rejected,
    /// Something changed that only a restart applies; everything else
    /// that changed was applied.
    RestartRequired,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
            Self::RestartRequired => "restart_required",
        }
    }
}

/// What one reload attempt did. `/reload` answers with it, the audit log
/// writes it and `/status` carries the last one; `mtlsd status` reads it
/// back, so optional fields read as absent when left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub trigger: Trigger,
    pub result: ReloadResult,
    /// The generation in force after the attempt.
    pub generation: u64,
    /// Why a rejected attempt was rejected, in words: built from the
    /// typed error (and its causes) that stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub items: Vec<ItemChange>,
    /// Config changes that only a restart applies, kept at their running
    /// values; one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Established connections scheduled to close because their peer no
    /// longer qualifies.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub closing: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (generation {})",
            self.result.as_str(),
            self.generation
        )?;
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        for refused in &self.refused {
            write!(f, "\n  needs a restart: {refused}")?;
        }
        Ok(())
    }
}

/// One thing a reload can change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Item {
    /// This host's certificate chain (and the key that must match it).
    Identity,
    /// A trust domain's CA bundle.
    TrustBundle(String),
    /// A trust domain's CRLs.
    Crl(String),
    /// The role inventory's content: hosts, SANs, roles, revoked serials.
    Inventory,
    /// A section of the configuration file.
    Config(Section),
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity => f.write_str("identity"),
            Self::TrustBundle(domain) => write!(f, "trust_domain.{domain}"),
            Self::Crl(domain) => write!(f, "crl.{domain}"),
            Self::Inventory => f.write_str("inventory"),
            Self::Config(section) => write!(f, "config.{section}"),
        }
    }
}

impl FromStr for Item {
    type Err = UnknownItem;

    /// Reads what [`Display`](fmt::Display) writes.
    fn from_str(text: &str) -> Result<Self, UnknownItem> {
        let item = match text.split_once('.') {
            None if text == "identity" => Self::Identity,
            None if text == "inventory" => Self::Inventory,
            Some(("trust_domain", domain)) => Self::TrustBundle(domain.to_owned()),
            Some(("crl", domain)) => Self::Crl(domain.to_owned()),
            Some(("config", section)) => {
                Self::Config(section.parse().map_err(|_| UnknownItem(text.to_owned()))?)
            }
            _ => return Err(UnknownItem(text.to_owned())),
        };
        Ok(item)
    }
}

/// A reload item name this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reload item '{0}'")]
pub struct UnknownItem(pub String);

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applies {
    /// Applied by this reload.
    Live,
    /// Kept at its running value until mtlsd restarts.
    Restart,
}

/// One item's fingerprint before and after (absent = did not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemChange {
    pub item: Item,
    pub old: Option<String>,
    pub new: Option<String>,
    pub applies: Applies,
    /// For the inventory: what changed in it.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub inventory: Option<InventoryDelta>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_back_what_they_write() {
        let sections = [
            Section::Identity,
            Section::TrustDomain("mesh.a".to_owned()),
            Section::Inventory,
            Section::Admin,
            Section::Tls,
            Section::Shutdown,
            Section::Reload,
            Section::AuditLog,
            Section::Expiry,
            Section::Metrics,
            Section::Peers,
            Section::Runtime,
            Section::StateDir,
            Section::Bootstrap,
            Section::Listener("in".to_owned()),
        ];
        let items = [
            Item::Identity,
            Item::TrustBundle("mesh.a".to_owned()),
            Item::Crl("mesh".to_owned()),
            Item::Inventory,
        ]
        .into_iter()
        .chain(sections.into_iter().map(Item::Config));
        for item in items {
            assert_eq!(item.to_string().parse::<Item>(), Ok(item.clone()), "{item}");
        }
        for unknown in ["", "identity.x", "config.nope", "crls.mesh", "config"] {
            assert!(unknown.parse::<Item>().is_err(), "{unknown}");
        }
    }
}
