//! Expiry states: where a certificate stands against the warning and
//! critical windows at a given moment.
//!
//! The moment is always passed in, never read from the clock here, so the
//! same code answers "what is it now" in the daemon and "what will it be
//! in three days" in a test without sleeping.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::CertFacts;

/// How far ahead of not-after the states change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryWindows {
    pub warning: Duration,
    pub critical: Duration,
}

impl Default for ExpiryWindows {
    /// 21 days warning, 7 days critical.
    fn default() -> Self {
        Self {
            warning: Duration::from_secs(21 * 86_400),
            critical: Duration::from_secs(7 * 86_400),
        }
    }
}

/// A certificate's expiry state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExpiryState {
    Ok,
    Warning,
    Critical,
    Expired,
    NotYetValid,
}

impl ExpiryState {
    pub const ALL: [Self; 5] = [
        Self::Ok,
        Self::Warning,
        Self::Critical,
        Self::Expired,
        Self::NotYetValid,
    ];

    /// The state of `cert` at `now`.
    pub fn of(cert: &CertFacts, now: SystemTime, windows: ExpiryWindows) -> Self {
        if now < cert.not_before {
            return Self::NotYetValid;
        }
        match cert.not_after.duration_since(now) {
            Err(_) => Self::Expired,
            Ok(left) if left <= windows.critical => Self::Critical,
            Ok(left) if left <= windows.warning => Self::Warning,
            Ok(_) => Self::Ok,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
        }
    }

    /// Whether an operator should hear about it.
    pub fn needs_attention(self) -> bool {
        self != Self::Ok
    }
}

impl fmt::Display for ExpiryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtlsd_devca::{CertificateAuthority, LeafSpec, OffsetDateTime};

    #[test]
    fn states_follow_the_windows_at_the_given_time() {
        let ca = CertificateAuthority::new("state ca").unwrap();
        let not_before = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let not_after = OffsetDateTime::from_unix_timestamp(1_800_000_000 + 90 * 86_400).unwrap();
        let leaf = ca
            .issue(&LeafSpec::new("x", &["x"]).validity(not_before, not_after))
            .unwrap();
        let facts = CertFacts::from_der(&leaf.cert_der).unwrap();
        let w = ExpiryWindows::default();
        let at = |days_before_end: i64| {
            let secs = 1_800_000_000 + 90 * 86_400 - days_before_end * 86_400;
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        };
        assert_eq!(ExpiryState::of(&facts, at(30), w), ExpiryState::Ok);
        assert_eq!(ExpiryState::of(&facts, at(21), w), ExpiryState::Warning);
        assert_eq!(ExpiryState::of(&facts, at(3), w), ExpiryState::Critical);
        assert_eq!(ExpiryState::of(&facts, at(0), w), ExpiryState::Critical);
        assert_eq!(ExpiryState::of(&facts, at(-1), w), ExpiryState::Expired);
        assert_eq!(ExpiryState::of(&facts, at(91), w), ExpiryState::NotYetValid);
        let narrow = ExpiryWindows {
            warning: Duration::from_secs(2 * 86_400),
            critical: Duration::from_secs(86_400),
        };
        assert_eq!(ExpiryState::of(&facts, at(3), narrow), ExpiryState::Ok);
    }
}
