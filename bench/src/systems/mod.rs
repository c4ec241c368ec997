//! The systems under comparison, each as a pair of proxy processes:
//! a *client side* (plaintext in on loopback, mTLS out) and a *server
//! side* (mTLS in, plaintext to the upstream), as two hosts would run
//! them. Every pair carries the same listeners:
//!
//! | name          | mode | upstream | used for |
//! |---------------|------|----------|----------|
//! | `grpc`        | L7 (gRPC/h2)  | grpc | latency, max rate |
//! | `tcp-grpc`    | L4   | grpc     | latency, max rate (tunnelled h2c) |
//! | `echo`        | L4   | echo     | new connections (no resumption), memory per connection |
//! | `echo-resume` | L4   | echo     | new connections with the peer's default session resumption |
//! | `sink`        | L4   | sink     | bulk throughput |
//!
//! Two systems carry the `grpc` listener only (L7-only): `caddy` (no L4
//! proxying in the stock build) and `mtlsd-2w` (mtlsd with two worker
//! threads, measured on the gRPC path only).
//!
//! The same certificates (ECDSA P-256 from mtlsd-devca), TLS 1.3 only,
//! client certificates required and verified, server name checked.
//!
//! Each system has a file of its own with its config templates, its
//! start-up and the settings the report lists: `direct` (no proxy, the
//! baseline), `mtlsd` (also `mtlsd-2w`), `haproxy`, `nginx`, `caddy`,
//! `stunnel`. This file holds what they share: which systems there are
//! ([`Kind`]), the certificates ([`Material`]), ports, how processes are
//! launched ([`Launch`]: plain or under callgrind), starting a peer
//! process and waiting until it listens, stopping it, and where the load
//! generator connects ([`Endpoints`]). The system files use this one and
//! never each other.

mod caddy;
mod direct;
mod haproxy;
pub(crate) mod mtlsd;
mod nginx;
mod stunnel;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mtlsd_devca::{CertificateAuthority, IssuedCert};

use crate::support::{self, Daemon};
use crate::upstream::UpstreamAddrs;

/// The systems under comparison, in the report's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Direct,
    Mtlsd,
    /// mtlsd with `runtime.worker_threads = 2`, L7 only.
    Mtlsd2,
    Haproxy,
    Nginx,
    /// Caddy (Go, crypto/tls), L7 only.
    Caddy,
    Stunnel,
}

impl Kind {
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Direct,
        Kind::Mtlsd,
        Kind::Mtlsd2,
        Kind::Haproxy,
        Kind::Nginx,
        Kind::Caddy,
        Kind::Stunnel,
    ];
    /// The other proxies mtlsd is compared with (ratio columns).
    pub(crate) const PEERS: [Kind; 4] = [Kind::Haproxy, Kind::Nginx, Kind::Caddy, Kind::Stunnel];
    /// The peers with an L7 (gRPC) listener.
    pub(crate) const L7_PEERS: [Kind; 3] = [Kind::Haproxy, Kind::Nginx, Kind::Caddy];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Mtlsd => "mtlsd",
            Kind::Mtlsd2 => "mtlsd-2w",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
            Kind::Caddy => "caddy",
            Kind::Stunnel => "stunnel",
        }
    }

    pub(crate) fn has_l7(self) -> bool {
        self != Kind::Stunnel
    }

    /// Whether the system is measured on the L4 listeners (and so for
    /// bulk, new connections, handshakes and memory per connection).
    pub(crate) fn has_l4(self) -> bool {
        !matches!(self, Kind::Caddy | Kind::Mtlsd2)
    }

    pub(crate) fn is_proxy(self) -> bool {
        self != Kind::Direct
    }

    /// The settings that matter for the comparison, for the report.
    pub(crate) fn settings(self) -> &'static [&'static str] {
        match self {
            Kind::Direct => direct::SETTINGS,
            Kind::Mtlsd => mtlsd::SETTINGS,
            Kind::Mtlsd2 => mtlsd::SETTINGS_2W,
            Kind::Haproxy => haproxy::SETTINGS,
            Kind::Nginx => nginx::SETTINGS,
            Kind::Caddy => caddy::SETTINGS,
            Kind::Stunnel => stunnel::SETTINGS,
        }
    }
}

/// Certificates and keys shared by every system.
#[derive(Debug)]
pub(crate) struct Material {
    pub(crate) ca: CertificateAuthority,
    pub(crate) ca_pem: PathBuf,
    /// The server side's identity: crt, key, crt+key (HAProxy).
    pub(crate) server: [PathBuf; 3],
    /// The client side's identity.
    pub(crate) client: [PathBuf; 3],
    pub(crate) client_leaf: IssuedCert,
}

impl Material {
    pub(crate) fn new(dir: &Path) -> anyhow::Result<Self> {
        let ca = CertificateAuthority::new("bench CA")?;
        let ca_pem = dir.join("ca.pem");
        support::replace(&ca_pem, ca.cert_pem(), 0o644)?;
        let server_leaf = support::leaf(&ca, "bench server host")?;
        let client_leaf = support::leaf(&ca, "bench client host")?;
        let write = |name: &str, leaf: &IssuedCert| -> anyhow::Result<[PathBuf; 3]> {
            let crt = dir.join(format!("{name}.crt"));
            let key = dir.join(format!("{name}.key"));
            let pem = dir.join(format!("{name}.pem"));
            support::replace(&crt, &leaf.cert_pem, 0o644)?;
            support::replace(&key, &leaf.key_pem, 0o600)?;
            support::replace(&pem, &format!("{}{}", leaf.cert_pem, leaf.key_pem), 0o600)?;
            Ok([crt, key, pem])
        };
        Ok(Self {
            server: write("server", &server_leaf)?,
            client: write("client", &client_leaf)?,
            ca,
            ca_pem,
            client_leaf,
        })
    }

    /// A rustls client with the client identity (for probes and for
    /// handshakes straight to a server side); `resume` keeps rustls'
    /// default session cache, otherwise every handshake is full.
    pub(crate) fn rustls_client(&self, resume: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let base = support::client_config(&self.ca, &self.client_leaf)?;
        let mut config = (*base).clone();
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(Arc::new(config))
    }
}

/// Where the load generator connects for each figure.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) grpc_l7: Option<SocketAddr>,
    /// The L4 listeners (none for an L7-only system).
    pub(crate) l4: Option<L4Endpoints>,
    /// The server side's mTLS `echo` listener (not for direct, nor for
    /// an L7-only system).
    pub(crate) server_echo: Option<SocketAddr>,
}

/// The client side's L4 listeners.
#[derive(Debug, Clone)]
pub(crate) struct L4Endpoints {
    pub(crate) grpc: SocketAddr,
    pub(crate) echo: SocketAddr,
    pub(crate) echo_resume: SocketAddr,
    pub(crate) sink: SocketAddr,
}

/// One proxy process (and its children).
#[derive(Debug)]
pub(crate) enum Instance {
    Mtlsd(Daemon),
    Peer(Peer),
}

impl Instance {
    pub(crate) fn pid(&self) -> i32 {
        match self {
            Instance::Mtlsd(d) => d.pid().as_raw(),
            Instance::Peer(p) => p.child.id() as i32,
        }
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        crate::procfs::tree(self.pid())
    }
}

/// A peer proxy started by us; SIGTERM and wait on drop.
#[derive(Debug)]
pub(crate) struct Peer {
    child: Child,
    name: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running system: its two proxies (none for direct) and endpoints.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) client: Option<Instance>,
    pub(crate) server: Option<Instance>,
    pub(crate) endpoints: Endpoints,
    _dir: tempfile::TempDir,
}

/// Paths of the peer binaries.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) mtlsd: PathBuf,
    pub(crate) haproxy: PathBuf,
    pub(crate) nginx: PathBuf,
    pub(crate) stunnel: PathBuf,
    pub(crate) caddy: PathBuf,
}

impl Binaries {
    /// Versions of the peers, as their binaries print them.
    pub(crate) fn versions(&self) -> BTreeMap<String, String> {
        let first_line = |cmd: &Path, args: &[&str]| -> String {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map(|o| {
                    let mut t = String::from_utf8_lossy(&o.stdout).to_string();
                    t.push_str(&String::from_utf8_lossy(&o.stderr));
                    t.lines()
                        .filter(|l| !l.trim().is_empty())
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
                .unwrap_or_else(|e| format!("unavailable: {e}"))
        };
        let mut v = BTreeMap::new();
        v.insert("mtlsd".into(), first_line(&self.mtlsd, &["--version"]));
        v.insert("haproxy".into(), first_line(&self.haproxy, &["-v"]));
        v.insert("nginx".into(), first_line(&self.nginx, &["-V"]));
        v.insert("stunnel".into(), first_line(&self.stunnel, &["-version"]));
        v.insert("caddy".into(), first_line(&self.caddy, &["version"]));
        v.insert(
            "valgrind".into(),
            first_line(Path::new("valgrind"), &["--version"]),
        );
        let strace = first_line(Path::new("strace"), &["-V"]);
        let strace = strace.split(" | ").next().unwrap_or_default().to_owned();
        v.insert("strace".into(), strace);
        v.insert(
            "openssl".into(),
            first_line(Path::new("openssl"), &["version"]),
        );
        v
    }
}

/// A port nothing listens on now (the kernel's pick, released at once).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `127.0.0.1:port`.
fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Ports of one side's listeners, in the order of the table above.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: u16,
    tcp_grpc: u16,
    echo: u16,
    echo_resume: u16,
    sink: u16,
}

impl Ports {
    fn pick() -> anyhow::Result<Self> {
        Ok(Self {
            grpc: free_port()?,
            tcp_grpc: free_port()?,
            echo: free_port()?,
            echo_resume: free_port()?,
            sink: free_port()?,
        })
    }

    /// The ports to wait for: the L4 listeners', and gRPC's when the
    /// system has an L7 listener.
    fn all(&self, l7: bool) -> Vec<u16> {
        let mut v = vec![self.tcp_grpc, self.echo, self.echo_resume, self.sink];
        if l7 {
            v.push(self.grpc);
        }
        v
    }
}

/// How a pair's processes are started.
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    /// mtlsd's file watching (off for the reload test, where only SIGHUP
    /// reloads).
    pub(crate) watch: bool,
    /// Run every proxy process under `valgrind --tool=callgrind`, its
    /// profiles and logs in this directory: `callgrind.<tag>.<pid>`, and
    /// `callgrind.<tag>.<pid>.<n>` for the n-th `callgrind_control -d`.
    pub(crate) callgrind: Option<PathBuf>,
}

impl Launch {
    /// The command that runs `program` for the side tagged `tag` (e.g.
    /// `haproxy-server`): `program` itself, or valgrind running it.
    /// Children forked without exec would be profiled too, each into a
    /// file of its own pid, but `callgrind_control` cannot reach them
    /// (nginx runs as one process under callgrind for that reason).
    pub(crate) fn command(&self, program: &Path, tag: &str) -> Command {
        match &self.callgrind {
            None => Command::new(program),
            Some(dir) => {
                let mut out = OsString::from("--callgrind-out-file=");
                out.push(dir.join(format!("callgrind.{tag}.%p")));
                let mut log = OsString::from("--log-file=");
                log.push(dir.join(format!("valgrind.{tag}.%p.log")));
                let mut cmd = Command::new("valgrind");
                cmd.arg("--tool=callgrind").arg(out).arg(log).arg(program);
                cmd
            }
        }
    }

    /// How long a peer may take to listen: valgrind starts slowly.
    fn startup(&self) -> Duration {
        if self.callgrind.is_some() {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(10)
        }
    }
}

/// Starts a peer process with its output in `log`, then waits (10 s at
/// most, 120 s under valgrind) until each of `ports` accepts a
/// connection; fails with the log if the process exits first.
fn spawn_peer(
    name: &str,
    mut cmd: Command,
    log: &Path,
    ports: &[u16],
    launch: &Launch,
) -> anyhow::Result<Peer> {
    let log_file = std::fs::File::create(log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let deadline = Instant::now() + launch.startup();
    for &port in ports {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{name} exited ({status}) before listening:\n{text}");
            }
            if std::net::TcpStream::connect(lo(port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "{name} did not listen on 127.0.0.1:{port} within {:?}",
                    launch.startup()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(Peer {
        child,
        name: name.to_owned(),
    })
}

/// Starts `kind` in front of the upstream at `up`, as `launch` says.
pub(crate) fn start(
    kind: Kind,
    bins: &Binaries,
    m: &Material,
    up: &UpstreamAddrs,
    launch: &Launch,
) -> anyhow::Result<Pair> {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("mtlsd-bench-{}-", kind.name()))
        .tempdir()?;
    // BENCH_KEEP=1 keeps each pair's directory (configs, logs) for a look.
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("    keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    let d = dir.path().to_owned();
    let (client, server, endpoints) = match kind {
        Kind::Direct => (None, None, direct::endpoints(up)),
        Kind::Mtlsd | Kind::Mtlsd2 => {
            let workers = (kind == Kind::Mtlsd2).then_some(2);
            let (client, server) = mtlsd::start(bins, &d, m, up, launch, workers)?;
            let mut endpoints = mtlsd::endpoints(&client, &server)?;
            if !kind.has_l4() {
                endpoints.l4 = None;
                endpoints.server_echo = None;
            }
            (
                Some(Instance::Mtlsd(client)),
                Some(Instance::Mtlsd(server)),
                endpoints,
            )
        }
        Kind::Haproxy => start_peers(kind, |s, c| haproxy::start(bins, &d, m, up, s, c, launch))?,
        Kind::Nginx => start_peers(kind, |s, c| nginx::start(bins, &d, m, up, s, c, launch))?,
        Kind::Caddy => start_peers(kind, |s, c| caddy::start(bins, &d, m, up, s, c, launch))?,
        Kind::Stunnel => start_peers(kind, |s, c| stunnel::start(bins, &d, m, up, s, c, launch))?,
    };
    Ok(Pair {
        client,
        server,
        endpoints,
        _dir: dir,
    })
}

/// A peer proxy's two sides on fresh ports: `start` gets the server
/// side's ports and the client side's, and returns (client, server).
fn start_peers(
    kind: Kind,
    start: impl FnOnce(&Ports, &Ports) -> anyhow::Result<(Peer, Peer)>,
) -> anyhow::Result<(Option<Instance>, Option<Instance>, Endpoints)> {
    let sp = Ports::pick()?;
    let cp = Ports::pick()?;
    let (client, server) = start(&sp, &cp)?;
    let endpoints = Endpoints {
        grpc_l7: kind.has_l7().then_some(lo(cp.grpc)),
        l4: kind.has_l4().then(|| L4Endpoints {
            grpc: lo(cp.tcp_grpc),
            echo: lo(cp.echo),
            echo_resume: lo(cp.echo_resume),
            sink: lo(cp.sink),
        }),
        server_echo: kind.has_l4().then_some(lo(sp.echo)),
    };
    Ok((
        Some(Instance::Peer(client)),
        Some(Instance::Peer(server)),
        endpoints,
    ))
}

impl Pair {
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// What a fresh handshake with the server side negotiates, and whether
/// it resumes a second one (rustls client with a session cache).
pub(crate) async fn probe(addr: SocketAddr, m: &Material) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = m.rustls_client(true)?;
    let mut out = serde_json::Map::new();
    for attempt in ["first", "second"] {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
        tls.write_all(b"p").await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        let c = tls.get_ref().1;
        out.insert(
            attempt.to_owned(),
            serde_json::json!({
                "handshake": c.handshake_kind().map(|k| format!("{k:?}")),
                "cipher_suite": c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
                "key_exchange": c.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
                "version": c.protocol_version().map(|v| format!("{v:?}")),
            }),
        );
        tls.shutdown().await?;
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        // Let the server issue its tickets before the next attempt.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(serde_json::Value::Object(out))
}

#[cfg(test)]
mod testing {
    //! What the systems' tests share: fixed material paths, ports and
    //! upstream addresses to render every config with, and the pinned
    //! renders in `systems/testdata/` they must equal byte for byte, so
    //! a change to a system's setup is a visible diff there.
    //! `BENCH_BLESS=1 cargo test -p mtlsd-bench` rewrites them.

    use std::path::Path;

    use mtlsd_devca::CertificateAuthority;

    use super::{Material, Ports, lo};
    use crate::support;
    use crate::upstream::UpstreamAddrs;

    /// The pair's directory the renders see.
    pub(super) const DIR: &str = "/run/mtlsd-bench/pair";

    pub(super) fn material() -> Material {
        let ca = CertificateAuthority::new("bench CA").expect("test CA");
        let client_leaf = support::leaf(&ca, "bench client host").expect("test leaf");
        let certs = Path::new("/run/mtlsd-bench/certs");
        let identity =
            |name: &str| ["crt", "key", "pem"].map(|ext| certs.join(format!("{name}.{ext}")));
        Material {
            ca,
            ca_pem: certs.join("ca.pem"),
            server: identity("server"),
            client: identity("client"),
            client_leaf,
        }
    }

    /// A side's ports: base + 1 … base + 5 (21000 server, 22000 client).
    pub(super) fn ports(base: u16) -> Ports {
        Ports {
            grpc: base + 1,
            tcp_grpc: base + 2,
            echo: base + 3,
            echo_resume: base + 4,
            sink: base + 5,
        }
    }

    pub(super) fn upstream() -> UpstreamAddrs {
        UpstreamAddrs {
            grpc: lo(23001),
            echo: lo(23002),
            sink: lo(23003),
        }
    }

    #[track_caller]
    pub(super) fn assert_pinned(name: &str, rendered: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/systems/testdata")
            .join(name);
        if std::env::var_os("BENCH_BLESS").is_some() {
            std::fs::write(&path, rendered).expect("write fixture");
        }
        let pinned =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            pinned == rendered,
            "{name} differs from {}:\n{rendered}",
            path.display()
        );
    }
}
