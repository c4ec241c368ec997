//! Shared test support: certificates minted at test time, real upstream
//! servers, in-process daemons, TLS clients and a driver for the real
//! `mtlsd` binary.

#![allow(dead_code)]

pub mod process;
pub mod relay;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mtlsd::config::Config;
use mtlsd::daemon::Running;
use mtlsd_devca::{CertificateAuthority, IssuedCert, LeafSpec};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Generous bound for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(10);

/// A CA and a directory to write material into.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

/// Paths of one written certificate + key, and what was minted.
pub struct HostFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub issued: IssuedCert,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: CertificateAuthority::new("test mesh CA").unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` with `mode`.
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// The CA bundle file.
    pub fn ca_file(&self) -> PathBuf {
        self.write("mesh-ca.pem", self.ca.cert_pem(), 0o644)
    }

    /// Mints a leaf from this CA and writes `<name>.crt` / `<name>.key`.
    pub fn host(&self, name: &str, spec: &LeafSpec) -> HostFiles {
        self.host_from(&self.ca, name, spec)
    }

    /// Like [`Pki::host`], with another CA.
    pub fn host_from(&self, ca: &CertificateAuthority, name: &str, spec: &LeafSpec) -> HostFiles {
        let issued = ca.issue(spec).unwrap();
        HostFiles {
            cert: self.write(&format!("{name}.crt"), &issued.cert_pem, 0o644),
            key: self.write(&format!("{name}.key"), &issued.key_pem, 0o600),
            issued,
        }
    }
}

/// A leaf for a test host: valid for localhost and 127.0.0.1.
pub fn localhost_leaf(cn: &str) -> LeafSpec {
    LeafSpec::new(cn, &["localhost", "127.0.0.1"])
}

/// The `[identity]` and `[trust_domains.mesh]` sections.
/// Also puts the state dir (audit log) next to the material and the admin
/// endpoint on an ephemeral port, so daemons in one test never collide.
pub fn material_toml(host: &HostFiles, ca_file: &Path) -> String {
    let state_dir = host.cert.parent().unwrap().join("state");
    format!(
        "state_dir = {state_dir:?}\n\n[identity]\ncert = {:?}\nkey = {:?}\n\n[trust_domains.mesh]\nbundle = {:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[shutdown]\ndrain_timeout = \"2s\"\n\n",
        host.cert, host.key, ca_file
    )
}

/// `material_toml` for inventory host `host`, with `inventory` (TOML text)
/// written next to the material and named in `[inventory]`.
pub fn inventory_material_toml(
    pki: &Pki,
    inventory: &str,
    host: &str,
    files: &HostFiles,
) -> String {
    with_inventory(pki, inventory, host, material_toml(files, &pki.ca_file()))
}

/// Adds `[inventory]` (written from `inventory`) and `identity.host` to a
/// config built by [`material_toml`].
pub fn with_inventory(pki: &Pki, inventory: &str, host: &str, toml: String) -> String {
    let path = pki.write("inventory.toml", inventory, 0o644);
    toml.replacen(
        "[identity]\n",
        &format!("[inventory]\npath = {path:?}\n\n[identity]\nhost = {host:?}\n"),
        1,
    )
}

/// One `[[inbound]]` table on an ephemeral port.
pub fn inbound_toml(name: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[[inbound]]\nname = {name:?}\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{extra}\n"
    )
}

/// One `[[outbound]]` table on an ephemeral port.
pub fn outbound_toml(name: &str, upstream: SocketAddr, server_name: &str, extra: &str) -> String {
    format!(
        "[[outbound]]\nname = {name:?}\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nserver_name = {server_name:?}\n{extra}\n"
    )
}

/// Writes `toml` next to the material and starts a daemon in-process.
pub async fn start_daemon(pki: &Pki, file: &str, toml: &str) -> (Running, Config) {
    let path = pki.write(file, toml, 0o600);
    let config = Config::load_with_env(&path, std::iter::empty()).unwrap();
    let running = Running::start(&config).await.unwrap();
    (running, config)
}

/// An upstream that echoes bytes back and counts the connections it got.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An upstream that reads until EOF, then answers with how many bytes it
/// got and closes: only works if half-close is carried end to end.
pub async fn start_count_then_answer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if stream.read_to_end(&mut got).await.is_ok() {
                    let answer = format!("got {} bytes", got.len());
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A TLS client trusting `ca`, presenting `cert` if given.
pub fn client_config(ca: &CertificateDer<'static>, cert: Option<&IssuedCert>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(mtlsd_reload::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        Some(cert) => builder
            .with_client_auth_cert(vec![cert.cert_der.clone()], cert.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// A TLS client trusting `ca` that presents `chain` (leaf first, then
/// intermediates) with `key`.
pub fn client_config_chain(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(mtlsd_reload::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Writes `msg` and reads back exactly as many bytes.
pub async fn round_trip<S>(stream: &mut S, msg: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(msg).await?;
    stream.flush().await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(SOON, stream.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(back)
}

/// Asserts that `stream` carries nothing: the write or the read fails or
/// hits EOF instead of an echo.
pub async fn assert_no_echo<S>(stream: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let attempt = async {
        stream.write_all(b"ping").await?;
        stream.flush().await?;
        let mut buf = [0u8; 4];
        stream.read(&mut buf).await
    };
    match tokio::time::timeout(SOON, attempt).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("expected refusal, got {n} bytes back"),
        Err(_) => panic!("expected refusal, the connection hung"),
    }
}

/// Polls `check` until it holds or [`SOON`] passes.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `fut` with a bound, failing the test with `what` if it hangs.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within("HTTP response", SOON, stream.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `name` whose labels include all of `labels`,
/// from a Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let present: Vec<(String, String)> = label_text
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k.to_owned(), v.trim_matches('"').to_owned()))
            })
            .collect();
        let all = labels
            .iter()
            .all(|(k, v)| present.iter().any(|(pk, pv)| pk == k && pv == v));
        if all {
            return value.parse().ok();
        }
    }
    None
}

/// Runs `promtool check metrics` on `text`. promtool comes from
/// scripts/install-promtool (the test command runs it first); a missing
/// promtool fails the test rather than skipping the check.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/install-promtool (scripts/test-all does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `(voluntary context switches, ns on the CPU)` of this process's
/// threads named `name`, summed (the daemons run in-process here).
pub fn thread_activity(name: &str) -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == name) {
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            total.0 += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            total.1 += schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}
