//! Reading certificates and keys from PEM files.
//!
//! Files are read whole, once, and every section is classified, so that the
//! error for a wrong file can say what the file holds instead ("found: 1
//! PRIVATE KEY" when the cert and key paths were swapped). Parsing uses
//! `rustls-pki-types`' PEM reader; text outside PEM sections is ignored, as
//! OpenSSL ignores it.

use std::path::Path;

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use mtlsd_expiry::CertFacts;

pub use crate::error::MIN_RSA_BITS;
use crate::error::{DerKind, FoundInstead, MaterialError};

/// Upper bound on what we read from one material file: a bundle of a few
/// hundred CAs fits many times over; anything bigger is not TLS material.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The classified contents of one PEM file.
#[derive(Debug, Default)]
pub struct PemContents {
    pub certs: Vec<CertificateDer<'static>>,
    pub keys: Vec<PrivateKeyDer<'static>>,
    /// Encrypted private keys (`ENCRYPTED PRIVATE KEY`, or an OpenSSL
    /// `Proc-Type: 4,ENCRYPTED` key): mtlsd cannot use them, and says so.
    pub encrypted_keys: usize,
    /// Labels of sections that are neither certificates nor usable private
    /// keys, as the file writes them (`PUBLIC KEY`, `X509 CRL`, …).
    pub other: Vec<String>,
}

impl PemContents {
    fn found(&self) -> FoundInstead {
        let mut found = Vec::new();
        if !self.certs.is_empty() {
            found.push(format!("{} CERTIFICATE", self.certs.len()));
        }
        if !self.keys.is_empty() {
            found.push(format!("{} PRIVATE KEY", self.keys.len()));
        }
        if self.encrypted_keys > 0 {
            found.push(format!("{} {ENCRYPTED_KEY_LABEL}", self.encrypted_keys));
        }
        found.extend(self.other.iter().cloned());
        FoundInstead(found)
    }
}

/// The PEM label of an encrypted PKCS#8 key.
const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// The header OpenSSL's legacy ("traditional") key encryption writes.
const LEGACY_ENCRYPTION_HEADER: &[u8] = b"Proc-Type: 4,ENCRYPTED";

/// Reads `path` and sorts its PEM sections.
pub fn read_pem(path: &Path) -> Result<PemContents, MaterialError> {
    let bytes = read_bounded(path, MAX_FILE_BYTES)?;
    parse_pem(path, &bytes)
}

/// Sorts the PEM sections of `bytes`, the contents of `path` (named in
/// errors only). A DER file is refused with the command that converts it:
/// mtlsd reads PEM only, so that one file can hold a chain or a bundle and
/// say what each block is.
pub fn parse_pem(path: &Path, bytes: &[u8]) -> Result<PemContents, MaterialError> {
    if looks_like_der(bytes) {
        return Err(MaterialError::Der {
            path: path.to_owned(),
            holds: if CertFacts::from_der(bytes).is_ok() {
                DerKind::Certificate
            } else {
                DerKind::Key
            },
        });
    }
    let mut contents = PemContents::default();
    let labels = section_labels(bytes);
    let legacy_encrypted = contains(bytes, LEGACY_ENCRYPTION_HEADER);
    if legacy_encrypted {
        // Its base64 is preceded by headers the PEM reader cannot decode;
        // the useful fact is that it is encrypted, not that it is malformed.
        contents.encrypted_keys = 1;
        return Ok(contents);
    }
    for label in labels {
        match label.as_str() {
            "CERTIFICATE" | "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {}
            ENCRYPTED_KEY_LABEL => contents.encrypted_keys += 1,
            _ => contents.other.push(label),
        }
    }
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = section.map_err(|source| MaterialError::Pem {
            path: path.to_owned(),
            source,
        })?;
        match kind {
            SectionKind::Certificate => contents.certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => contents
                .keys
                .push(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            SectionKind::RsaPrivateKey => contents
                .keys
                .push(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            SectionKind::EcPrivateKey => contents
                .keys
                .push(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            // Already listed, by the label the file uses.
            _ => {}
        }
    }
    Ok(contents)
}

/// The labels of every `-----BEGIN LABEL-----` line, in order.
fn section_labels(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = line.trim_ascii();
            let label = line.strip_prefix(b"-----BEGIN ")?.strip_suffix(b"-----")?;
            Some(String::from_utf8_lossy(label).into_owned())
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Binary, starting like a DER SEQUENCE, and without any PEM marker.
fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
        && bytes.len() > 2
        && !contains(bytes, b"-----BEGIN ")
        && bytes.iter().any(|b| !b.is_ascii())
}

/// The size in bits of an RSA private key's modulus; `None` for other key
/// types, or when the DER cannot be read that far (loading then says why).
pub fn rsa_key_bits(key: &PrivateKeyDer<'_>) -> Option<usize> {
    match key {
        PrivateKeyDer::Pkcs1(key) => pkcs1_modulus_bits(key.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(key) => {
            // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier,
            //                               OCTET STRING privateKey, ... }
            let mut info =
                der::Reader::new(der::Reader::new(key.secret_pkcs8_der()).read(der::SEQUENCE)?);
            info.read(der::INTEGER)?;
            let mut algorithm = der::Reader::new(info.read(der::SEQUENCE)?);
            if algorithm.read(der::OID)? != RSA_ENCRYPTION_OID {
                return None;
            }
            pkcs1_modulus_bits(info.read(der::OCTET_STRING)?)
        }
        _ => None,
    }
}

/// 1.2.840.113549.1.1.1, rsaEncryption.
const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// RSAPrivateKey ::= SEQUENCE { version INTEGER, modulus INTEGER, ... }
fn pkcs1_modulus_bits(der: &[u8]) -> Option<usize> {
    let mut key = der::Reader::new(der::Reader::new(der).read(der::SEQUENCE)?);
    key.read(der::INTEGER)?;
    let modulus = key.read(der::INTEGER)?;
    let first = modulus.iter().position(|b| *b != 0)?;
    let significant = &modulus[first..];
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

/// Just enough DER to walk to an RSA modulus: definite lengths, one tag
/// at a time, every length checked against what is left.
mod der {
    pub(super) const INTEGER: u8 = 0x02;
    pub(super) const OCTET_STRING: u8 = 0x04;
    pub(super) const OID: u8 = 0x06;
    pub(super) const SEQUENCE: u8 = 0x30;

    pub(super) struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        pub(super) fn new(bytes: &'a [u8]) -> Self {
            Self(bytes)
        }

        /// The contents of the next element if its tag is `tag`.
        pub(super) fn read(&mut self, tag: u8) -> Option<&'a [u8]> {
            let (&found, rest) = self.0.split_first()?;
            if found != tag {
                return None;
            }
            let (&first, mut rest) = rest.split_first()?;
            let len = if first < 0x80 {
                usize::from(first)
            } else {
                let count = usize::from(first & 0x7f);
                if count == 0 || count > 4 || rest.len() < count {
                    return None;
                }
                let (len_bytes, after) = rest.split_at(count);
                rest = after;
                len_bytes
                    .iter()
                    .fold(0usize, |len, b| (len << 8) | usize::from(*b))
            };
            if rest.len() < len {
                return None;
            }
            let (contents, after) = rest.split_at(len);
            self.0 = after;
            Some(contents)
        }
    }
}

/// The certificates in `path`; at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let contents = read_pem(path)?;
    if contents.certs.is_empty() {
        return Err(MaterialError::NoCertificate {
            path: path.to_owned(),
            found: contents.found(),
        });
    }
    Ok(contents.certs)
}

/// The one private key in `path`.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, MaterialError> {
    let mut contents = read_pem(path)?;
    match contents.keys.len() {
        1 => Ok(contents.keys.remove(0)),
        0 if contents.encrypted_keys > 0 => Err(MaterialError::EncryptedKey {
            path: path.to_owned(),
        }),
        0 => Err(MaterialError::NoPrivateKey {
            path: path.to_owned(),
            found: contents.found(),
        }),
        count => Err(MaterialError::SeveralPrivateKeys {
            path: path.to_owned(),
            count,
        }),
    }
}

/// Reads `path` whole, refusing files larger than `max` bytes (material
/// files are small; anything bigger is not what the config meant).
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, MaterialError> {
    use std::io::Read;
    let read_err = |source| MaterialError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(MaterialError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use mtlsd_devca::{CertificateAuthority, LeafSpec};
    use rustls_pki_types::PrivatePkcs1KeyDer;

    use super::*;

    const PATH: &str = "/etc/mtlsd/tls/host.key";

    fn key_error(text: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        std::fs::write(&path, text).unwrap();
        read_key(&path).unwrap_err().to_string()
    }

    #[test]
    fn an_encrypted_pkcs8_key_says_it_is_encrypted() {
        let text = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let message = key_error(text);
        assert!(
            message.contains("the private key is encrypted"),
            "{message}"
        );
        assert!(message.contains("needs an unencrypted key"), "{message}");
        assert!(!message.contains("no PEM blocks"), "{message}");

        // As a certificate file, it is named for what it is.
        let found = parse_pem(Path::new(PATH), text).unwrap().found();
        assert_eq!(found.to_string(), " (found: 1 ENCRYPTED PRIVATE KEY)");
    }

    #[test]
    fn a_legacy_encrypted_key_says_it_is_encrypted() {
        let text = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
            DEK-Info: AES-128-CBC,0011\n\nMIIBAAAA\n-----END RSA PRIVATE KEY-----\n";
        let message = key_error(text);
        assert!(
            message.contains("the private key is encrypted"),
            "{message}"
        );
    }

    #[test]
    fn der_files_are_refused_with_the_conversion_command() {
        let ca = CertificateAuthority::new("der ca").unwrap();
        let leaf = ca.issue(&LeafSpec::new("host", &["localhost"])).unwrap();
        let cert = parse_pem(Path::new("/x/host.crt"), ca.cert_der()).unwrap_err();
        assert!(
            cert.to_string().contains(
                "this looks like DER (binary), but mtlsd reads PEM; convert it with \
                 `openssl x509 -inform DER -outform PEM -in /x/host.crt -out /x/host.crt.pem`"
            ),
            "{cert}"
        );
        let key = parse_pem(Path::new("/x/host.key"), leaf.key_der().secret_der()).unwrap_err();
        assert!(
            key.to_string()
                .contains("`openssl pkey -inform DER -outform PEM -in /x/host.key"),
            "{key}"
        );
        // Text that happens to start with '0' is not DER.
        assert!(parse_pem(Path::new(PATH), b"0 certificates here").is_ok());
    }

    /// An RSAPrivateKey whose modulus has `bits` bits; only the shape
    /// matters here, not the arithmetic.
    pub(crate) fn pkcs1_with_modulus_bits(bits: usize) -> Vec<u8> {
        fn element(tag: u8, contents: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            match contents.len() {
                len @ 0..0x80 => out.push(len as u8),
                len @ 0x80..0x100 => out.extend([0x81, len as u8]),
                len => out.extend([0x82, (len >> 8) as u8, len as u8]),
            }
            out.extend_from_slice(contents);
            out
        }
        let mut modulus = vec![0u8; bits / 8 + 1];
        modulus[1] = 0x80;
        let mut body = element(der::INTEGER, &[0]);
        body.extend(element(der::INTEGER, &modulus));
        body.extend(element(der::INTEGER, &[1, 0, 1]));
        element(der::SEQUENCE, &body)
    }

    #[test]
    fn rsa_key_sizes_are_read_from_pkcs1_and_pkcs8() {
        for bits in [1024, 2048, 4096] {
            let pkcs1 = pkcs1_with_modulus_bits(bits);
            let key = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(pkcs1.clone()));
            assert_eq!(rsa_key_bits(&key), Some(bits));

            // PrivateKeyInfo { 0, { rsaEncryption, NULL }, OCTET STRING pkcs1 }
            let mut algorithm = vec![der::OID, RSA_ENCRYPTION_OID.len() as u8];
            algorithm.extend_from_slice(RSA_ENCRYPTION_OID);
            algorithm.extend([0x05, 0x00]);
            let mut info = vec![der::INTEGER, 1, 0, der::SEQUENCE, algorithm.len() as u8];
            info.extend(algorithm);
            info.extend([
                der::OCTET_STRING,
                0x82,
                (pkcs1.len() >> 8) as u8,
                pkcs1.len() as u8,
            ]);
            info.extend(pkcs1);
            let mut pkcs8 = vec![
                der::SEQUENCE,
                0x82,
                (info.len() >> 8) as u8,
                info.len() as u8,
            ];
            pkcs8.extend(info);
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
            assert_eq!(rsa_key_bits(&key), Some(bits));
        }
        // EC keys and garbage have no RSA size.
        let ca = CertificateAuthority::new("ec").unwrap();
        let leaf = ca.issue(&LeafSpec::new("host", &["localhost"])).unwrap();
        assert_eq!(rsa_key_bits(&leaf.key_der()), None);
        let garbage = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(vec![0x30, 0x84, 0xff]));
        assert_eq!(rsa_key_bits(&garbage), None);
    }
}
