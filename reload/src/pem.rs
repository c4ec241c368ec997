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

use crate::error::{FoundInstead, MaterialError};

/// Upper bound on what we read from one material file: a bundle of a few
/// hundred CAs fits many times over; anything bigger is not TLS material.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The classified contents of one PEM file.
#[derive(Debug, Default)]
pub struct PemContents {
    pub certs: Vec<CertificateDer<'static>>,
    pub keys: Vec<PrivateKeyDer<'static>>,
    /// Labels of sections that are neither certificates nor private keys.
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
        found.extend(self.other.iter().cloned());
        FoundInstead(found)
    }
}

/// Reads `path` and sorts its PEM sections.
pub fn read_pem(path: &Path) -> Result<PemContents, MaterialError> {
    let bytes = read_bounded(path)?;
    let mut contents = PemContents::default();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        let (kind, der) = section.map_err(|e| MaterialError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
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
            other => contents.other.push(format!("{other:?}")),
        }
    }
    Ok(contents)
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

fn read_bounded(path: &Path) -> Result<Vec<u8>, MaterialError> {
    use std::io::Read;
    let read_err = |source| MaterialError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(MaterialError::Pem {
            path: path.to_owned(),
            reason: format!("file is larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(bytes)
}
