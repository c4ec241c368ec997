//! Pieces every benchmark needs: material, an echo upstream, the daemon
//! process, TLS clients, statistics.

use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mtlsd_devca::{CertificateAuthority, IssuedCert, LeafSpec};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// Writes `contents` to `path` via a temp file and a rename.
pub(crate) fn replace(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("bench-tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub(crate) fn leaf(ca: &CertificateAuthority, cn: &str) -> anyhow::Result<IssuedCert> {
    Ok(ca.issue(&LeafSpec::new(cn, &["localhost", "127.0.0.1"]))?)
}

/// An upstream that echoes everything back.
pub(crate) async fn echo() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A running `mtlsd run`, killed on drop.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    pub(crate) listeners: Vec<(String, SocketAddr)>,
    /// Where the admin endpoint listens.
    pub(crate) admin: Option<SocketAddr>,
}

impl Daemon {
    /// Starts `mtlsd run --config config` and waits until it logged
    /// `ready`, collecting listener addresses on the way.
    pub(crate) fn start(mtlsd: &Path, config: &Path) -> anyhow::Result<Self> {
        Self::start_with(Command::new(mtlsd), config)
    }

    /// [`Daemon::start`] with `cmd` as the program: mtlsd itself, or a
    /// wrapper (valgrind) with mtlsd as its last argument so far.
    pub(crate) fn start_with(mut cmd: Command, config: &Path) -> anyhow::Result<Self> {
        let program = cmd.get_program().to_owned();
        let mut child = cmd
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env(
                "MTLSD_LOG",
                std::env::var("BENCH_MTLSD_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut listeners = Vec::new();
        let mut admin = None;
        let mut seen = Vec::new();
        loop {
            let Some(line) = lines.next() else {
                bail!("mtlsd exited before it was ready:\n{}", seen.join("\n"));
            };
            let line = line?;
            seen.push(line.clone());
            let line: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            match line["message"].as_str() {
                Some("listening") => {
                    let name = line["listener"].as_str().unwrap_or_default().to_owned();
                    let addr = line["addr"].as_str().unwrap_or_default().parse()?;
                    listeners.push((name, addr));
                }
                Some("admin endpoint listening") => {
                    admin = line["addr"].as_str().and_then(|a| a.parse().ok());
                }
                Some("ready") => break,
                _ => {}
            }
        }
        // Keep draining stderr so the daemon never blocks on a full pipe;
        // BENCH_LOG=1 passes the daemon's log lines through.
        let pass_through = std::env::var_os("BENCH_LOG").is_some();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if pass_through {
                    eprintln!("{line}");
                }
            }
        });
        Ok(Self {
            child,
            listeners,
            admin,
        })
    }

    pub(crate) fn addr(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .with_context(|| format!("no listener {name}"))
    }

    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

pub(crate) fn client_config(
    ca: &CertificateAuthority,
    cert: &IssuedCert,
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    Ok(Arc::new(
        ClientConfig::builder_with_provider(mtlsd_reload::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert.cert_der.clone()], cert.key_der())?,
    ))
}

/// The serial of the certificate a fresh full handshake to `addr` gets.
pub(crate) async fn served_serial(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?
        .clone();
    Ok(mtlsd_expiry::CertFacts::from_der(&der)?.serial_hex)
}

/// Median, 95th percentile, min and max of `samples`, in milliseconds.
pub(crate) fn summary(samples: &[Duration]) -> serde_json::Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        let i = ((ms.len() - 1) as f64 * q).round() as usize;
        (ms[i] * 1000.0).round() / 1000.0
    };
    serde_json::json!({
        "samples": ms.len(),
        "median_ms": at(0.5),
        "p95_ms": at(0.95),
        "min_ms": at(0.0),
        "max_ms": at(1.0),
    })
}

pub(crate) fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// A minimal HTTP/1.1 exchange with the admin endpoint (plain, loopback).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `mtlsd_handshakes_completed_total{listener}` from a daemon's admin
/// endpoint; `None` if it cannot be read.
pub(crate) async fn grpc_handshakes(admin: SocketAddr, listener: &str) -> Option<f64> {
    let (_, text) = http(admin, "GET", "/metrics").await.ok()?;
    let series = format!("mtlsd_handshakes_completed_total{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

/// One full mTLS handshake with `client` to `addr` (named `localhost`) and
/// a byte round trip through the echo upstream behind it: the peer was
/// admitted, not only shaken hands with.
pub(crate) async fn admitted_handshake(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await?;
    Ok(())
}
