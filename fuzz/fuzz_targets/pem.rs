//! Feeds arbitrary bytes to the TLS material reader: PEM sections, DER
//! detection, encrypted-key detection, the RSA key-size walk and the
//! certificate facts of every certificate found. Never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mtlsd_expiry::CertFacts;
use mtlsd_reload::{parse_pem, rsa_key_bits};

fuzz_target!(|data: &[u8]| {
    // The same bytes as a certificate (DER) and as a PKCS#1/PKCS#8 key.
    let _ = CertFacts::from_der(data);
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(data.to_vec());
    let _ = rsa_key_bits(&pkcs8.into());
    let pkcs1 = rustls_pki_types::PrivatePkcs1KeyDer::from(data.to_vec());
    let _ = rsa_key_bits(&pkcs1.into());

    match parse_pem(Path::new("/etc/mtlsd/tls/host.crt"), data) {
        Ok(contents) => {
            for cert in &contents.certs {
                let _ = CertFacts::from_der(cert);
            }
            for key in &contents.keys {
                if let Some(bits) = rsa_key_bits(key) {
                    assert!(bits <= data.len() * 8);
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
