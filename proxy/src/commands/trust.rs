//! `mtlsd trust fetch`: take a trust bundle from a running host's
//! bootstrap endpoint and keep it only if its CAs are the ones the
//! operator pinned (docs/operator_guide/joining.md).
//!
//! A joining host has nothing to verify the endpoint with, so the TLS
//! handshake checks no chain (it does check that the server holds the key
//! of the certificate it shows). What makes the bundle trustworthy is the
//! set of SHA-256 fingerprints the operator got out of band: the bundle is
//! written only if the set of its CAs' fingerprints is exactly that set.
//! When the bundle is the server's own identity domain, the server's
//! certificate must also chain to it: a member of the mesh serves the
//! mesh's bundle. The file is written whole (a temporary file, fsync,
//! rename), mode 0644, after mtlsd has loaded it as a reload would.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use mtlsd_expiry::{CertFacts, Fingerprint};
use mtlsd_reload::{AuthUsage, NameCheck, TrustBundle, TrustDomainSpec, parse_pem};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use super::out::{self, Level, outln};
use crate::bootstrap::{BUNDLE_SHA256_HEADER, IDENTITY_DOMAIN_HEADER, TRUST_PATH};

/// Exit code when nothing was written because no `--sha256` was given.
const NOTHING_PINNED: u8 = 2;
/// The most a bundle may weigh: the same bound mtlsd puts on a file.
const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;

/// What `mtlsd trust fetch` was asked.
#[derive(Debug)]
pub(super) struct Fetch {
    pub from: String,
    pub domain: String,
    pub sha256: Vec<String>,
    pub out: Option<PathBuf>,
    pub timeout: Duration,
}

/// Why no bundle could be fetched at all (a refused bundle is reported
/// with both fingerprint sets instead).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("--from {0:?}: expected HOST:PORT (e.g. db1.example:9443 or [2001:db8::1]:9443)")]
    BadAddress(String),
    #[error("--from {from}: cannot resolve or connect")]
    Connect {
        from: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{from}: TLS handshake failed (is this the bootstrap endpoint, [bootstrap] listen?)")]
    Handshake {
        from: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{from}: {reason}")]
    Protocol { from: String, reason: String },
    #[error("{from}: no answer within {}", humantime::format_duration(*timeout))]
    Timeout { from: String, timeout: Duration },
}

pub(super) async fn fetch(request: &Fetch) -> anyhow::Result<ExitCode> {
    let expected = expected_fingerprints(&request.sha256)?;
    if !crate::config::is_domain_name(&request.domain) {
        anyhow::bail!(
            "--domain {:?}: trust domain names use lowercase letters, digits, '-' and '_'",
            request.domain
        );
    }
    let fetched = tokio::time::timeout(request.timeout, download(request))
        .await
        .map_err(|_| FetchError::Timeout {
            from: request.from.clone(),
            timeout: request.timeout,
        })??;
    let source = format!("{}{TRUST_PATH}/{}", request.from, request.domain);
    let cas = parse_bundle(&source, &fetched.body)?;

    let Some(expected) = expected else {
        show_unpinned(request, &cas);
        return Ok(ExitCode::from(NOTHING_PINNED));
    };
    let received: BTreeSet<Fingerprint> = cas.iter().map(|ca| ca.fingerprint).collect();
    if received != expected {
        report_mismatch(request, &expected, &cas);
        return Ok(ExitCode::FAILURE);
    }
    let Some(out_path) = &request.out else {
        anyhow::bail!("--out is required with --sha256"); // clap enforces it
    };
    write_checked(request, out_path, &fetched, &expected)?;
    outln!(
        "{}: trust domain '{}' from {}: {} CA(s), every SHA-256 as pinned; written",
        out_path.display(),
        request.domain,
        request.from,
        cas.len()
    );
    for ca in &cas {
        outln!("  sha256 {}  {}", ca.fingerprint.to_hex(), ca.subject);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--sha256` values as a set; `None` when none was given.
fn expected_fingerprints(texts: &[String]) -> anyhow::Result<Option<BTreeSet<Fingerprint>>> {
    if texts.is_empty() {
        return Ok(None);
    }
    let mut set = BTreeSet::new();
    for text in texts {
        let fp = Fingerprint::from_hex(text).with_context(|| {
            format!(
                "--sha256 {text:?}: not a SHA-256 (64 hex digits, colons allowed, as \
                 `openssl x509 -outform DER | sha256sum` prints it)"
            )
        })?;
        set.insert(fp);
    }
    Ok(Some(set))
}

/// What the endpoint answered.
struct Fetched {
    body: Bytes,
    /// `x-mtlsd-identity-domain`: the server's own trust domain.
    identity_domain: String,
    /// The chain the server presented in the handshake.
    server_chain: Vec<CertificateDer<'static>>,
}

async fn download(request: &Fetch) -> Result<Fetched, FetchError> {
    let from = request.from.clone();
    let protocol = |reason: String| FetchError::Protocol {
        from: from.clone(),
        reason,
    };
    let server_name = server_name(&request.from)?;
    let stream = TcpStream::connect(request.from.as_str())
        .await
        .map_err(|source| FetchError::Connect {
            from: from.clone(),
            source,
        })?;
    let verifier = Arc::new(RecordingVerifier::new());
    let config = client_config(verifier.clone()).map_err(|e| protocol(format!("TLS: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, stream)
        .await
        .map_err(|source| FetchError::Handshake {
            from: from.clone(),
            source,
        })?;
    let server_chain = verifier.chain();

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| protocol(format!("HTTP: {e}")))?;
    tokio::spawn(connection);
    let path = format!("{TRUST_PATH}/{}", request.domain);
    let http_request = Request::get(path.as_str())
        .header(header::HOST, request.from.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| protocol(format!("HTTP: {e}")))?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| protocol(format!("HTTP: {e}")))?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Err(protocol(format!(
            "GET {path}: 404: this endpoint does not serve trust domain '{}' (a typo in \
             --domain, or not in that host's bootstrap.domains)",
            request.domain
        )));
    }
    if status != StatusCode::OK {
        return Err(protocol(format!("GET {path}: HTTP {status}")));
    }
    let header_text = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let no_header = |name: &str| {
        protocol(format!(
            "GET {path}: no {name} header: this is not an mtlsd bootstrap endpoint"
        ))
    };
    let announced =
        header_text(BUNDLE_SHA256_HEADER).ok_or_else(|| no_header(BUNDLE_SHA256_HEADER))?;
    let identity_domain =
        header_text(IDENTITY_DOMAIN_HEADER).ok_or_else(|| no_header(IDENTITY_DOMAIN_HEADER))?;
    let body = Limited::new(response.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            protocol(format!(
                "GET {path}: reading the bundle failed (more than {MAX_BUNDLE_BYTES} bytes, or \
                 cut short): {e}"
            ))
        })?
        .to_bytes();
    if Fingerprint::from_hex(&announced) != Some(Fingerprint::of(&body)) {
        return Err(protocol(format!(
            "GET {path}: the body's SHA-256 is {} but {BUNDLE_SHA256_HEADER} says {announced:?}: \
             damaged or cut short on the way",
            Fingerprint::of(&body).to_hex()
        )));
    }
    Ok(Fetched {
        body,
        identity_domain,
        server_chain,
    })
}

/// The TLS name to send: the host of `HOST:PORT`.
fn server_name(from: &str) -> Result<ServerName<'static>, FetchError> {
    let bad = || FetchError::BadAddress(from.to_owned());
    let (host, port) = from.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| bad())
}

fn client_config(verifier: Arc<RecordingVerifier>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = mtlsd_reload::provider();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        // Deliberately no chain check: a joining host has nothing to check
        // it against. The pinned fingerprints decide (see the module doc).
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server chain and keeps it; still checks the handshake
/// signature, so the server holds the key of the certificate it showed.
#[derive(Debug)]
struct RecordingVerifier {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl RecordingVerifier {
    fn new() -> Self {
        Self {
            chain: Mutex::new(Vec::new()),
            algorithms: mtlsd_reload::provider().signature_verification_algorithms,
        }
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One CA of the fetched bundle.
struct FetchedCa {
    fingerprint: Fingerprint,
    subject: String,
    not_after: SystemTime,
}

/// The bundle's certificates: PEM holding certificates only, each a CA.
fn parse_bundle(source: &str, body: &[u8]) -> anyhow::Result<Vec<FetchedCa>> {
    let contents = parse_pem(Path::new(source), body)?;
    if !contents.keys.is_empty() || contents.encrypted_keys > 0 || !contents.other.is_empty() {
        anyhow::bail!("{source}: the bundle holds more than certificates; refused");
    }
    if contents.certs.is_empty() {
        anyhow::bail!("{source}: the bundle holds no certificate");
    }
    let mut cas = Vec::new();
    for (index, der) in contents.certs.iter().enumerate() {
        let facts = CertFacts::from_der(der)
            .with_context(|| format!("{source}: certificate #{} is not valid X.509", index + 1))?;
        if !facts.is_ca {
            anyhow::bail!(
                "{source}: certificate #{} ({}) is not a CA certificate; a trust bundle holds CAs",
                index + 1,
                facts.subject
            );
        }
        cas.push(FetchedCa {
            fingerprint: facts.fingerprint,
            subject: facts.subject,
            not_after: facts.not_after,
        });
    }
    Ok(cas)
}

/// No `--sha256`: what the operator must verify, and nothing written.
fn show_unpinned(request: &Fetch, cas: &[FetchedCa]) {
    outln!(
        "trust domain '{}' from {} holds {} CA(s):",
        request.domain,
        request.from,
        cas.len()
    );
    for ca in cas {
        outln!(
            "  sha256 {}  {}  (expires {})",
            ca.fingerprint.to_hex(),
            ca.subject,
            humantime::format_rfc3339_seconds(ca.not_after)
        );
    }
    let mut again = format!(
        "mtlsd trust fetch --from {} --domain {}",
        request.from, request.domain
    );
    for ca in cas {
        let _ = write!(again, " --sha256 {}", ca.fingerprint.to_hex());
    }
    let out_path = request
        .out
        .as_deref()
        .map_or_else(|| "PATH".to_owned(), |p| p.display().to_string());
    let _ = write!(again, " --out {out_path}");
    out::report(
        Level::Warn,
        "trust fetch",
        "nothing written: these fingerprints came over a connection that could not be \
         verified. Compare each with the fingerprint the mesh's operator gives you out of band \
         (on a host that runs: `openssl x509 -in BUNDLE -outform DER | sha256sum` per CA, or \
         `mtlsd inspect BUNDLE`); only if every one matches, run:",
        &[again],
    );
}

/// The bundle's CAs are not the pinned set: both sets, side by side.
fn report_mismatch(request: &Fetch, expected: &BTreeSet<Fingerprint>, cas: &[FetchedCa]) {
    let mut items: Vec<String> = expected
        .iter()
        .map(|fp| {
            let state = if cas.iter().any(|ca| ca.fingerprint == *fp) {
                "received"
            } else {
                "NOT received"
            };
            format!("expected {} ({state})", fp.to_hex())
        })
        .collect();
    items.extend(cas.iter().map(|ca| {
        let state = if expected.contains(&ca.fingerprint) {
            "expected"
        } else {
            "NOT expected"
        };
        format!(
            "received {} {} ({state})",
            ca.fingerprint.to_hex(),
            ca.subject
        )
    }));
    out::report(
        Level::Error,
        "trust fetch",
        &format!(
            "refused the bundle of trust domain '{}' from {}: its CAs' SHA-256 fingerprints are \
             not the ones given with --sha256; nothing written. If the expected ones came from \
             the mesh's operator, this endpoint does not serve the mesh's bundle (a wrong \
             address, or someone in the middle): do not use it",
            request.domain, request.from
        ),
        &items,
    );
}

/// Writes the bundle beside `out_path`, loads it as mtlsd would (pinned
/// to `expected`), checks the server's chain when the bundle is its own
/// domain's, and only then renames it into place.
fn write_checked(
    request: &Fetch,
    out_path: &Path,
    fetched: &Fetched,
    expected: &BTreeSet<Fingerprint>,
) -> anyhow::Result<()> {
    let dir = match out_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = out_path
        .file_name()
        .with_context(|| format!("--out {}: not a file name", out_path.display()))?;
    let temp = dir.join(format!(
        ".{}.fetch-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_temp(&temp, &fetched.body)
        .and_then(|()| check_written(request, &temp, fetched, expected))
        .and_then(|()| {
            std::fs::rename(&temp, out_path).with_context(|| {
                format!("cannot move {} to {}", temp.display(), out_path.display())
            })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
        return written;
    }
    // The rename is durable once the directory is.
    if let Ok(dir) = std::fs::File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_temp(temp: &Path, body: &[u8]) -> anyhow::Result<()> {
    let context = || format!("cannot write {}", temp.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(temp)
        .with_context(context)?;
    // The umask may have taken bits away: a bundle is public, 0644.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(context)?;
    file.write_all(body).with_context(context)?;
    file.sync_all().with_context(context)?;
    Ok(())
}

fn check_written(
    request: &Fetch,
    temp: &Path,
    fetched: &Fetched,
    expected: &BTreeSet<Fingerprint>,
) -> anyhow::Result<()> {
    let spec = TrustDomainSpec {
        name: request.domain.clone(),
        bundle: vec![temp.to_owned()],
        version: None,
        crl: Vec::new(),
        crl_unknown_status: Default::default(),
        pinned: Some(expected.iter().copied().collect()),
    };
    let now = SystemTime::now();
    let bundle = TrustBundle::load(&spec, now).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "the fetched bundle does not load as mtlsd would load it:\n  - {}",
            lines.join("\n  - ")
        )
    })?;
    if fetched.identity_domain != request.domain {
        tracing::debug!(
            server_domain = %fetched.identity_domain,
            "the bundle is not the server's own domain: the pin alone decides"
        );
        return Ok(());
    }
    let subject = fetched
        .server_chain
        .first()
        .and_then(|leaf| CertFacts::from_der(leaf).ok())
        .map_or_else(|| "(none)".to_owned(), |facts| facts.subject);
    bundle
        .verify_chain(
            &fetched.server_chain,
            AuthUsage::Server,
            NameCheck::None,
            &mtlsd_reload::provider(),
            UnixTime::now(),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: the server's certificate ({subject}) does not chain to the bundle it serves \
                 for its own trust domain '{}': {e}. Every member of the mesh holds a \
                 certificate of that bundle; this server is not one (or its certificate is not \
                 valid now); nothing written",
                request.from,
                request.domain
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_is_host_colon_port() {
        assert!(matches!(
            server_name("db1.example:9443"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("10.0.0.1:9443"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[2001:db8::1]:9443"),
            Ok(ServerName::IpAddress(_))
        ));
        for bad in [
            "db1.example",
            "db1.example:",
            "db1.example:99999",
            ":9443",
            "a b:1",
        ] {
            assert!(
                matches!(server_name(bad), Err(FetchError::BadAddress(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pins_are_a_set_and_must_all_parse() {
        let fp = Fingerprint::of(b"ca");
        let set = expected_fingerprints(&[fp.to_hex(), fp.to_string()]).unwrap();
        assert_eq!(set, Some(BTreeSet::from([fp])));
        assert_eq!(expected_fingerprints(&[]).unwrap(), None);
        let error = expected_fingerprints(&[fp.to_hex(), "abcd".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("--sha256 \"abcd\""), "{error}");
    }
}
