//! SHA-256 fingerprints, shown the way `openssl x509 -fingerprint -sha256`
//! shows them so operators can compare the two by eye.

use std::fmt;

use sha2::{Digest, Sha256};

/// A SHA-256 digest of DER bytes (one certificate, or a whole bundle).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of one DER blob.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The fingerprint of several DER blobs in order: a bundle's identity.
    /// Each blob is length-prefixed so that two different splits of the
    /// same bytes cannot collide.
    pub fn of_all<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = Sha256::new();
        for der in ders {
            hasher.update((der.len() as u64).to_be_bytes());
            hasher.update(der);
        }
        Self(hasher.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex without separators, for JSON and headers.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A SHA-256 as an operator writes it: 64 hex digits in either case,
    /// bare (`sha256sum`) or colon separated (`openssl x509 -fingerprint
    /// -sha256`). `None` for anything else, a prefix included.
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&digits, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

/// Uppercase, colon separated: `AB:CD:…`.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_openssl_style() {
        let fp = Fingerprint::of(b"abc");
        let shown = fp.to_string();
        assert!(shown.starts_with("BA:78:16:BF:"), "{shown}");
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(fp.to_hex().len(), 64);
    }

    #[test]
    fn hex_reads_both_written_forms_and_nothing_else() {
        let fp = Fingerprint::of(b"abc");
        assert_eq!(Fingerprint::from_hex(&fp.to_hex()), Some(fp));
        assert_eq!(Fingerprint::from_hex(&fp.to_string()), Some(fp));
        assert_eq!(Fingerprint::from_hex(&fp.to_hex().to_uppercase()), Some(fp));
        assert_eq!(Fingerprint::from_hex(&fp.to_hex()[..63]), None);
        assert_eq!(Fingerprint::from_hex(&format!("{}0", fp.to_hex())), None);
        assert_eq!(Fingerprint::from_hex(&"g".repeat(64)), None);
        assert_eq!(Fingerprint::from_hex(""), None);
    }

    #[test]
    fn bundle_fingerprint_depends_on_split() {
        let joined = Fingerprint::of_all([b"abcd".as_slice()]);
        let split = Fingerprint::of_all([b"ab".as_slice(), b"cd".as_slice()]);
        assert_ne!(joined, split);
    }
}
