//! `mtlsd inspect`: what a PEM file holds and whether it chains.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use mtlsd_expiry::{CertFacts, Validity};
use mtlsd_reload::{
    AuthUsage, MIN_RSA_BITS, PemContents, TrustBundle, TrustDomainSpec, read_pem, rsa_key_bits,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::out::{self, Level, outln};

pub(super) fn inspect(files: &[PathBuf], bundles: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    let provider = mtlsd_reload::provider();
    let mut ok = true;

    let bundle = if bundles.is_empty() {
        None
    } else {
        let spec = TrustDomainSpec {
            name: "inspect".to_owned(),
            bundle: bundles.to_vec(),
            version: None,
            crl: Vec::new(),
            crl_unknown_status: Default::default(),
            pinned: None,
        };
        match TrustBundle::load(&spec, now) {
            Ok(bundle) => Some(bundle),
            Err(problems) => {
                for problem in problems {
                    out::report(Level::Error, "inspect", &problem.to_string(), &[]);
                }
                return Ok(ExitCode::FAILURE);
            }
        }
    };

    let mut read = Vec::new();
    for file in files {
        match read_pem(file) {
            Ok(contents) => read.push((file.as_path(), contents)),
            Err(e) => {
                out::report(Level::Error, "inspect", &e.to_string(), &[]);
                ok = false;
            }
        }
    }
    // Every leaf (first certificate of a file), so keys can be matched to it.
    let leaves: Vec<(&Path, &CertificateDer<'static>)> = read
        .iter()
        .filter_map(|(path, contents)| contents.certs.first().map(|c| (*path, c)))
        .collect();

    for (path, contents) in &read {
        ok &= show_file(path, contents, bundle.as_ref(), &leaves, &provider, now);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn show_file(
    path: &Path,
    contents: &PemContents,
    bundle: Option<&TrustBundle>,
    leaves: &[(&Path, &CertificateDer<'static>)],
    provider: &rustls::crypto::CryptoProvider,
    now: SystemTime,
) -> bool {
    let mut ok = true;
    if contents.certs.is_empty() && contents.keys.is_empty() && contents.encrypted_keys == 0 {
        outln!("{}: no certificates or private keys", path.display());
        return false;
    }
    let total = contents.certs.len();
    for (index, der) in contents.certs.iter().enumerate() {
        outln!("{}: certificate {} of {total}", path.display(), index + 1);
        let facts = match CertFacts::from_der(der) {
            Ok(facts) => facts,
            Err(e) => {
                outln!("  error:       {e}");
                ok = false;
                continue;
            }
        };
        print_facts(&facts, now);
        if index == 0
            && !facts.is_ca
            && let Some(bundle) = bundle
        {
            ok &= print_chain(&contents.certs, bundle, provider, now);
        }
    }
    for _ in 0..contents.encrypted_keys {
        outln!(
            "{}: private key, encrypted: mtlsd needs an unencrypted key",
            path.display()
        );
        ok = false;
    }
    for key in &contents.keys {
        let description = describe_key(key);
        match rsa_key_bits(key) {
            Some(bits) if bits < MIN_RSA_BITS => {
                outln!(
                    "{}: private key ({description}: too small, mtlsd needs at least {MIN_RSA_BITS} bits)",
                    path.display()
                );
                ok = false;
            }
            _ => outln!("{}: private key ({description})", path.display()),
        }
        let matching: Vec<String> = leaves
            .iter()
            .filter(|(_, cert)| key_matches(cert, key, provider))
            .map(|(p, _)| p.display().to_string())
            .collect();
        if matching.is_empty() {
            outln!("  matches:     no certificate given here");
        } else {
            outln!("  matches:     {}", matching.join(", "));
        }
    }
    for other in &contents.other {
        outln!("{}: {other} section (ignored)", path.display());
    }
    ok
}

fn print_facts(facts: &CertFacts, now: SystemTime) {
    outln!("  subject:     {}", facts.subject);
    outln!("  issuer:      {}", facts.issuer);
    outln!("  serial:      {}", facts.serial_hex);
    outln!("  sha256:      {}", facts.fingerprint);
    outln!(
        "  not before:  {}",
        humantime::format_rfc3339_seconds(facts.not_before)
    );
    let window = match facts.validity_at(now) {
        Validity::Valid => format!("valid, {} left", days(facts.not_after, now)),
        Validity::Expired => format!("EXPIRED {} ago", days(now, facts.not_after)),
        Validity::NotYetValid => {
            format!("NOT YET VALID, starts in {}", days(facts.not_before, now))
        }
    };
    outln!(
        "  not after:   {} ({window})",
        humantime::format_rfc3339_seconds(facts.not_after)
    );
    let sans: Vec<String> = facts.sans.iter().map(ToString::to_string).collect();
    outln!(
        "  SANs:        {}",
        if sans.is_empty() {
            "(none)".to_owned()
        } else {
            sans.join(", ")
        }
    );
    outln!("  CA:          {}", if facts.is_ca { "yes" } else { "no" });
    let usage = match (facts.server_auth, facts.client_auth) {
        (None, None) => "any (no extended key usage)".to_owned(),
        (server, client) => {
            let mut u = Vec::new();
            if server == Some(true) {
                u.push("server auth");
            }
            if client == Some(true) {
                u.push("client auth");
            }
            if u.is_empty() {
                "neither server nor client auth".to_owned()
            } else {
                u.join(", ")
            }
        }
    };
    outln!("  usage:       {usage}");
}

fn print_chain(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    provider: &rustls::crypto::CryptoProvider,
    now: SystemTime,
) -> bool {
    let mut any = false;
    for usage in [AuthUsage::Server, AuthUsage::Client] {
        match bundle.verify_chain_at(chain, usage, provider, now) {
            Ok(_) => {
                any = true;
                outln!("  chains:      yes, for {} auth", usage.as_str());
            }
            Err(e) => outln!("  chains:      no, for {} auth: {e}", usage.as_str()),
        }
    }
    any
}

fn key_matches(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    provider: &rustls::crypto::CryptoProvider,
) -> bool {
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map(|signing| {
            CertifiedKey::new(vec![cert.clone()], signing)
                .keys_match()
                .is_ok()
        })
        .unwrap_or(false)
}

/// "PKCS#8 RSA 2048 bits", "SEC1 EC", …
fn describe_key(key: &PrivateKeyDer<'_>) -> String {
    match (key, rsa_key_bits(key)) {
        (PrivateKeyDer::Pkcs8(_), Some(bits)) => format!("PKCS#8 RSA {bits} bits"),
        (_, Some(bits)) => format!("{} {bits} bits", key_kind(key)),
        (_, None) => key_kind(key).to_owned(),
    }
}

fn key_kind(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs8(_) => "PKCS#8",
        PrivateKeyDer::Pkcs1(_) => "PKCS#1 RSA",
        PrivateKeyDer::Sec1(_) => "SEC1 EC",
        _ => "unknown format",
    }
}

fn days(later: SystemTime, earlier: SystemTime) -> String {
    let secs = later
        .duration_since(earlier)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs / 86_400 {
        0 => format!("{} hours", secs / 3600),
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    }
}
