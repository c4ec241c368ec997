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
//! The same certificates (ECDSA P-256 from mtlsd-devca), TLS 1.3 only,
//! client certificates required and verified, server name checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mtlsd_devca::{CertificateAuthority, IssuedCert};

use crate::support::{self, Daemon};
use crate::upstream::UpstreamAddrs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Direct,
    Mtlsd,
    Haproxy,
    Nginx,
    Stunnel,
}

impl Kind {
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Direct,
        Kind::Mtlsd,
        Kind::Haproxy,
        Kind::Nginx,
        Kind::Stunnel,
    ];
    pub(crate) const PEERS: [Kind; 3] = [Kind::Haproxy, Kind::Nginx, Kind::Stunnel];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Mtlsd => "mtlsd",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
            Kind::Stunnel => "stunnel",
        }
    }

    pub(crate) fn has_l7(self) -> bool {
        matches!(
            self,
            Kind::Direct | Kind::Mtlsd | Kind::Haproxy | Kind::Nginx
        )
    }

    pub(crate) fn is_proxy(self) -> bool {
        self != Kind::Direct
    }

    /// The settings that matter for the comparison, for the report.
    pub(crate) fn settings(self) -> &'static [&'static str] {
        match self {
            Kind::Direct => &["load generator straight to the upstream, no TLS"],
            Kind::Mtlsd => &[
                "release build; tokio runtime with 1 worker thread (mtlsd's default, runtime.worker_threads; a second worker used a third more CPU per call here at the same maximum rate)",
                "rustls 0.23 with aws-lc-rs, defaults: TLS 1.3 only, session resumption on (rustls default, no setting to turn it off)",
                "grpc mode: h2c in, pooled h2 over mTLS between the pair, pooled h2c to the upstream",
                "tcp mode for L4; max_connections = 8192 per listener; no inventory (chain + name checks only, as the peers do)",
                "file watching on (default) except in the reload test (SIGHUP only)",
            ],
            Kind::Haproxy => &[
                "nbthread 2 (one per core, as the docs advise), maxconn 8192 (the FD hard limit here is 20000), logging off",
                "ssl-default-bind/server-options ssl-min-ver TLSv1.3; tune.ssl.cachesize 0",
                "L7: mode http, client side `bind … proto h2` (h2c), `server … ssl alpn h2`, server side `bind … ssl alpn h2`, `server … proto h2` to the upstream; http-reuse safe (default)",
                "L4: mode tcp",
                "full handshakes: `no-tls-tickets` on binds, `no-ssl-reuse` on servers; echo-resume keeps tickets and reuse (defaults)",
            ],
            Kind::Nginx => &[
                "worker_processes 2 (auto = cores), worker_connections 16384, worker_rlimit_nofile 65536, access_log off",
                "ssl_protocols TLSv1.3; ssl_session_cache off, ssl_session_tickets off, *_ssl_session_reuse off (echo-resume: tickets and reuse on)",
                "L7: `listen … http2` (h2c) → `grpc_pass grpcs://` with upstream keepalive 64 → `listen … ssl http2` → `grpc_pass grpc://` with keepalive 64; keepalive_requests 1000000",
                "L4: stream module, proxy_ssl on the client side, `listen … ssl` on the server side, proxy_half_close on (so a half-close reaches the far end, as the other systems do)",
            ],
            Kind::Stunnel => &[
                "stunnel 5.68, one thread per connection (its only model; no worker setting)",
                "sslVersionMin TLSv1.3, verifyChain + requireCert (server), verifyChain + checkHost (client)",
                "TCP_NODELAY on both sockets, debug = 3 (errors only)",
                "full handshakes: sessionResume = no on the client side (the server side, with options = NO_TICKET, still resumes from its session cache when offered one); echo-resume keeps the defaults",
                "L4 only",
            ],
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
    pub(crate) grpc_l4: SocketAddr,
    pub(crate) echo: SocketAddr,
    pub(crate) echo_resume: SocketAddr,
    pub(crate) sink: SocketAddr,
    /// The server side's mTLS `echo` listener (not for direct).
    pub(crate) server_echo: Option<SocketAddr>,
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
        v.insert(
            "openssl".into(),
            first_line(Path::new("openssl"), &["version"]),
        );
        v
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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

    fn all(&self, l7: bool) -> Vec<u16> {
        let mut v = vec![self.tcp_grpc, self.echo, self.echo_resume, self.sink];
        if l7 {
            v.push(self.grpc);
        }
        v
    }
}

fn spawn_peer(name: &str, mut cmd: Command, log: &Path, ports: &[u16]) -> anyhow::Result<Peer> {
    let log_file = std::fs::File::create(log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
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
                bail!("{name} did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(Peer {
        child,
        name: name.to_owned(),
    })
}

/// Starts `kind` in front of `upstream`. `watch` is mtlsd's file
/// watching (off for the reload test, where only SIGHUP reloads).
pub(crate) fn start(
    kind: Kind,
    bins: &Binaries,
    m: &Material,
    up: &UpstreamAddrs,
    watch: bool,
) -> anyhow::Result<Pair> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("mtlsd-bench-{}-", kind.name()))
        .tempdir()?;
    let d = dir.path().to_owned();
    let (client, server, endpoints) = match kind {
        Kind::Direct => (
            None,
            None,
            Endpoints {
                grpc_l7: Some(up.grpc),
                grpc_l4: up.grpc,
                echo: up.echo,
                echo_resume: up.echo,
                sink: up.sink,
                server_echo: None,
            },
        ),
        Kind::Mtlsd => {
            let server = start_mtlsd(bins, &d, "server", m, &m.server, up, None, watch)?;
            let client = start_mtlsd(bins, &d, "client", m, &m.client, up, Some(&server), watch)?;
            let ep = Endpoints {
                grpc_l7: Some(client.addr("grpc")?),
                grpc_l4: client.addr("tcp-grpc")?,
                echo: client.addr("echo")?,
                echo_resume: client.addr("echo")?,
                sink: client.addr("sink")?,
                server_echo: Some(server.addr("echo")?),
            };
            (
                Some(Instance::Mtlsd(client)),
                Some(Instance::Mtlsd(server)),
                ep,
            )
        }
        Kind::Haproxy | Kind::Nginx | Kind::Stunnel => {
            let sp = Ports::pick()?;
            let cp = Ports::pick()?;
            let l7 = kind.has_l7();
            let (server, client) = match kind {
                Kind::Haproxy => (
                    haproxy(bins, &d, "server", &haproxy_server(m, &sp, up), &sp)?,
                    haproxy(bins, &d, "client", &haproxy_client(m, &cp, &sp), &cp)?,
                ),
                Kind::Nginx => (
                    nginx(bins, &d, "server", &nginx_server(m, &d, &sp, up), &sp)?,
                    nginx(bins, &d, "client", &nginx_client(m, &d, &cp, &sp), &cp)?,
                ),
                _ => (
                    stunnel(bins, &d, "server", &stunnel_server(m, &d, &sp, up), &sp)?,
                    stunnel(bins, &d, "client", &stunnel_client(m, &d, &cp, &sp), &cp)?,
                ),
            };
            let ep = Endpoints {
                grpc_l7: l7.then_some(lo(cp.grpc)),
                grpc_l4: lo(cp.tcp_grpc),
                echo: lo(cp.echo),
                echo_resume: lo(cp.echo_resume),
                sink: lo(cp.sink),
                server_echo: Some(lo(sp.echo)),
            };
            (
                Some(Instance::Peer(client)),
                Some(Instance::Peer(server)),
                ep,
            )
        }
    };
    Ok(Pair {
        client,
        server,
        endpoints,
        _dir: dir,
    })
}

/// The cert and key paths an mtlsd side uses (for rotation in the reload
/// test): `<dir>/<side>/host.crt`, `host.key`.
pub(crate) fn mtlsd_identity_paths(pair_dir: &Path, side: &str) -> (PathBuf, PathBuf) {
    let d = pair_dir.join(side);
    (d.join("host.crt"), d.join("host.key"))
}

impl Pair {
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// One mtlsd listener: name, protocol, and where it forwards (the
/// upstream on the server side, the server side's listener of the same
/// name on the client side).
type MtlsdListener = (&'static str, &'static str, SocketAddr);

#[allow(clippy::too_many_arguments)]
fn start_mtlsd(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    m: &Material,
    identity: &[PathBuf; 3],
    up: &UpstreamAddrs,
    server: Option<&Daemon>,
    watch: bool,
) -> anyhow::Result<Daemon> {
    let d = dir.join(side);
    std::fs::create_dir_all(&d)?;
    // Own copies, so the reload test can rotate one side's files.
    let (crt, key) = mtlsd_identity_paths(dir, side);
    std::fs::copy(&identity[0], &crt)?;
    support::replace(&key, &std::fs::read_to_string(&identity[1])?, 0o600)?;
    let inbound: [MtlsdListener; 4] = [
        ("grpc", "grpc", up.grpc),
        ("tcp-grpc", "tcp", up.grpc),
        ("echo", "tcp", up.echo),
        ("sink", "tcp", up.sink),
    ];
    let listeners = match server {
        None => inbound.to_vec(),
        Some(server) => inbound
            .iter()
            .map(|&(name, protocol, _)| Ok((name, protocol, server.addr(name)?)))
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let text = mtlsd_config(dir, side, &m.ca_pem, watch, server.is_some(), &listeners);
    let config = d.join("mtlsd.toml");
    std::fs::write(&config, text)?;
    Daemon::start(&bins.mtlsd, &config)
}

/// The config of one mtlsd side: `outbound` for the client side.
fn mtlsd_config(
    dir: &Path,
    side: &str,
    ca: &Path,
    watch: bool,
    outbound: bool,
    listeners: &[MtlsdListener],
) -> String {
    let d = dir.join(side);
    let (crt, key) = mtlsd_identity_paths(dir, side);
    let mut text = format!(
        "state_dir = {state:?}\n\
         [identity]\ncert = {crt:?}\nkey = {key:?}\n\
         [trust_domains.mesh]\nbundle = {ca:?}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [reload]\nwatch = {watch}\n\
         [shutdown]\ndrain_timeout = \"1s\"\n",
        state = d.join("state"),
    );
    for &(name, protocol, upstream) in listeners {
        if outbound {
            text.push_str(&format!(
                "[[outbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
                 server_name = \"localhost\"\nprotocol = \"{protocol}\"\nmax_connections = 8192\n"
            ));
        } else {
            text.push_str(&format!(
                "[[inbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
                 protocol = \"{protocol}\"\nmax_connections = 8192\n"
            ));
        }
    }
    text
}

// ---------------------------------------------------------------- HAProxy

const HAPROXY_GLOBAL: &str = "global
    nbthread 2
    maxconn 8192
    tune.ssl.cachesize 0
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
    ssl-server-verify required

defaults
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    timeout tunnel 5m
";

fn haproxy_server(m: &Material, p: &Ports, up: &UpstreamAddrs) -> String {
    let crt = m.server[2].display();
    let ca = m.ca_pem.display();
    let ssl = format!("ssl crt {crt} ca-file {ca} verify required");
    let mut c = String::from(HAPROXY_GLOBAL);
    c.push_str(&format!(
        "
frontend grpc
    mode http
    bind 127.0.0.1:{grpc} {ssl} alpn h2 no-tls-tickets
    default_backend grpc
backend grpc
    mode http
    server up {upg} proto h2
",
        grpc = p.grpc,
        upg = up.grpc,
    ));
    for (name, port, upstream, tickets) in [
        ("tcp-grpc", p.tcp_grpc, up.grpc, false),
        ("echo", p.echo, up.echo, false),
        ("echo-resume", p.echo_resume, up.echo, true),
        ("sink", p.sink, up.sink, false),
    ] {
        let t = if tickets { "" } else { " no-tls-tickets" };
        c.push_str(&format!(
            "
frontend {name}
    mode tcp
    bind 127.0.0.1:{port} {ssl}{t}
    default_backend {name}
backend {name}
    mode tcp
    server up {upstream}
"
        ));
    }
    c
}

fn haproxy_client(m: &Material, p: &Ports, s: &Ports) -> String {
    let crt = m.client[2].display();
    let ca = m.ca_pem.display();
    let ssl = format!(
        "ssl crt {crt} ca-file {ca} verify required verifyhost localhost sni str(localhost)"
    );
    let mut c = String::from(HAPROXY_GLOBAL);
    c.push_str(&format!(
        "
frontend grpc
    mode http
    bind 127.0.0.1:{grpc} proto h2
    default_backend grpc
backend grpc
    mode http
    server s 127.0.0.1:{sgrpc} {ssl} alpn h2 no-ssl-reuse
",
        grpc = p.grpc,
        sgrpc = s.grpc,
    ));
    for (name, port, server, reuse) in [
        ("tcp-grpc", p.tcp_grpc, s.tcp_grpc, false),
        ("echo", p.echo, s.echo, false),
        ("echo-resume", p.echo_resume, s.echo_resume, true),
        ("sink", p.sink, s.sink, false),
    ] {
        let r = if reuse { "" } else { " no-ssl-reuse" };
        c.push_str(&format!(
            "
frontend {name}
    mode tcp
    bind 127.0.0.1:{port}
    default_backend {name}
backend {name}
    mode tcp
    server s 127.0.0.1:{server} {ssl}{r}
"
        ));
    }
    c
}

fn haproxy(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    config: &str,
    p: &Ports,
) -> anyhow::Result<Peer> {
    let path = dir.join(format!("haproxy-{side}.cfg"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(&bins.haproxy);
    cmd.arg("-db").arg("-f").arg(&path);
    spawn_peer(
        &format!("haproxy ({side})"),
        cmd,
        &dir.join(format!("haproxy-{side}.log")),
        &p.all(true),
    )
}

// ------------------------------------------------------------------ nginx

fn nginx_main(dir: &Path, side: &str) -> String {
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    format!(
        "load_module {module};
worker_processes 2;
worker_rlimit_nofile 65536;
pid {dir}/nginx-{side}.pid;
error_log {dir}/nginx-{side}.error.log error;
events {{ worker_connections 16384; }}
",
        dir = dir.display()
    )
}

fn nginx_http_common(dir: &Path, side: &str) -> String {
    let t = dir.join(format!("nginx-{side}-tmp"));
    let t = t.display();
    format!(
        "    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    ssl_protocols TLSv1.3;
"
    )
}

fn nginx_server(m: &Material, dir: &Path, p: &Ports, up: &UpstreamAddrs) -> String {
    let (crt, key, ca) = (
        m.server[0].display(),
        m.server[1].display(),
        m.ca_pem.display(),
    );
    let tls = format!(
        "ssl_certificate {crt}; ssl_certificate_key {key};
        ssl_client_certificate {ca}; ssl_verify_client on;"
    );
    let mut c = nginx_main(dir, "server");
    c.push_str(&format!(
        "http {{
{common}
    upstream grpc_up {{ server {upg}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}
    server {{
        listen 127.0.0.1:{grpc} ssl http2;
        {tls}
        ssl_session_cache off; ssl_session_tickets off;
        location / {{ grpc_pass grpc://grpc_up; }}
    }}
}}
stream {{
    ssl_protocols TLSv1.3;
",
        common = nginx_http_common(dir, "server"),
        upg = up.grpc,
        grpc = p.grpc,
    ));
    for (port, upstream, resume) in [
        (p.tcp_grpc, up.grpc, false),
        (p.echo, up.echo, false),
        (p.echo_resume, up.echo, true),
        (p.sink, up.sink, false),
    ] {
        let r = if resume {
            ""
        } else {
            "ssl_session_cache off; ssl_session_tickets off;"
        };
        c.push_str(&format!(
            "    server {{
        listen 127.0.0.1:{port} ssl;
        {tls}
        {r}
        proxy_half_close on;
        proxy_pass {upstream};
    }}
"
        ));
    }
    c.push_str("}\n");
    c
}

fn nginx_client(m: &Material, dir: &Path, p: &Ports, s: &Ports) -> String {
    let (crt, key, ca) = (
        m.client[0].display(),
        m.client[1].display(),
        m.ca_pem.display(),
    );
    let mut c = nginx_main(dir, "client");
    c.push_str(&format!(
        "http {{
{common}
    upstream grpc_s {{ server 127.0.0.1:{sgrpc}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}
    server {{
        listen 127.0.0.1:{grpc} http2;
        location / {{
            grpc_pass grpcs://grpc_s;
            grpc_ssl_certificate {crt}; grpc_ssl_certificate_key {key};
            grpc_ssl_trusted_certificate {ca}; grpc_ssl_verify on;
            grpc_ssl_name localhost; grpc_ssl_server_name on;
            grpc_ssl_protocols TLSv1.3; grpc_ssl_session_reuse off;
        }}
    }}
}}
stream {{
",
        common = nginx_http_common(dir, "client"),
        sgrpc = s.grpc,
        grpc = p.grpc,
    ));
    for (port, server, resume) in [
        (p.tcp_grpc, s.tcp_grpc, false),
        (p.echo, s.echo, false),
        (p.echo_resume, s.echo_resume, true),
        (p.sink, s.sink, false),
    ] {
        let r = if resume { "on" } else { "off" };
        c.push_str(&format!(
            "    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{server};
        proxy_half_close on;
        proxy_ssl on;
        proxy_ssl_certificate {crt}; proxy_ssl_certificate_key {key};
        proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on;
        proxy_ssl_name localhost; proxy_ssl_server_name on;
        proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse {r};
    }}
"
        ));
    }
    c.push_str("}\n");
    c
}

fn nginx(bins: &Binaries, dir: &Path, side: &str, config: &str, p: &Ports) -> anyhow::Result<Peer> {
    let path = dir.join(format!("nginx-{side}.conf"));
    std::fs::create_dir_all(dir.join(format!("nginx-{side}-tmp")))?;
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(&bins.nginx);
    cmd.arg("-e")
        .arg(dir.join(format!("nginx-{side}.error.log")))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"]);
    spawn_peer(
        &format!("nginx ({side})"),
        cmd,
        &dir.join(format!("nginx-{side}.log")),
        &p.all(true),
    )
}

// ---------------------------------------------------------------- stunnel

fn stunnel_global(dir: &Path, side: &str) -> String {
    format!(
        "foreground = yes
pid =
debug = 3
output = {dir}/stunnel-{side}.out
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
",
        dir = dir.display()
    )
}

fn stunnel_server(m: &Material, dir: &Path, p: &Ports, up: &UpstreamAddrs) -> String {
    let mut c = stunnel_global(dir, "server");
    for (name, port, upstream, resume) in [
        ("tcp-grpc", p.tcp_grpc, up.grpc, false),
        ("echo", p.echo, up.echo, false),
        ("echo-resume", p.echo_resume, up.echo, true),
        ("sink", p.sink, up.sink, false),
    ] {
        let r = if resume { "" } else { "options = NO_TICKET\n" };
        c.push_str(&format!(
            "[{name}]
accept = 127.0.0.1:{port}
connect = {upstream}
cert = {crt}
key = {key}
CAfile = {ca}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
{r}",
            crt = m.server[0].display(),
            key = m.server[1].display(),
            ca = m.ca_pem.display(),
        ));
    }
    c
}

fn stunnel_client(m: &Material, dir: &Path, p: &Ports, s: &Ports) -> String {
    let mut c = stunnel_global(dir, "client");
    for (name, port, server, resume) in [
        ("tcp-grpc", p.tcp_grpc, s.tcp_grpc, false),
        ("echo", p.echo, s.echo, false),
        ("echo-resume", p.echo_resume, s.echo_resume, true),
        ("sink", p.sink, s.sink, false),
    ] {
        let r = if resume { "yes" } else { "no" };
        c.push_str(&format!(
            "[{name}]
client = yes
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{server}
cert = {crt}
key = {key}
CAfile = {ca}
verifyChain = yes
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.3
sessionResume = {r}
",
            crt = m.client[0].display(),
            key = m.client[1].display(),
            ca = m.ca_pem.display(),
        ));
    }
    c
}

fn stunnel(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    config: &str,
    p: &Ports,
) -> anyhow::Result<Peer> {
    let path = dir.join(format!("stunnel-{side}.conf"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(&bins.stunnel);
    cmd.arg(&path);
    spawn_peer(
        &format!("stunnel ({side})"),
        cmd,
        &dir.join(format!("stunnel-{side}.log")),
        &p.all(false),
    )
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
mod tests {
    //! Every system's generated configs, rendered for fixed ports and
    //! paths, must equal the pinned files in `systems/testdata/` byte for
    //! byte: a change to a peer's setup is then a visible diff there.
    //! `BENCH_BLESS=1 cargo test -p mtlsd-bench` rewrites them.

    use super::*;

    const DIR: &str = "/run/mtlsd-bench/pair";

    fn material() -> Material {
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

    fn ports(base: u16) -> Ports {
        Ports {
            grpc: base + 1,
            tcp_grpc: base + 2,
            echo: base + 3,
            echo_resume: base + 4,
            sink: base + 5,
        }
    }

    fn upstream() -> UpstreamAddrs {
        UpstreamAddrs {
            grpc: lo(23001),
            echo: lo(23002),
            sink: lo(23003),
        }
    }

    fn assert_pinned(name: &str, rendered: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/systems/testdata")
            .join(name);
        if std::env::var_os("BENCH_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("testdata has a parent"))
                .expect("create testdata");
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

    #[test]
    fn configs_match_the_pinned_renders() {
        let m = material();
        let dir = Path::new(DIR);
        let (server, client) = (ports(21000), ports(22000));
        let up = upstream();
        let server_side = [
            ("grpc", "grpc", up.grpc),
            ("tcp-grpc", "tcp", up.grpc),
            ("echo", "tcp", up.echo),
            ("sink", "tcp", up.sink),
        ];
        let client_side = [
            ("grpc", "grpc", lo(24001)),
            ("tcp-grpc", "tcp", lo(24002)),
            ("echo", "tcp", lo(24003)),
            ("sink", "tcp", lo(24004)),
        ];
        assert_pinned(
            "mtlsd-server.toml",
            &mtlsd_config(dir, "server", &m.ca_pem, true, false, &server_side),
        );
        assert_pinned(
            "mtlsd-client.toml",
            &mtlsd_config(dir, "client", &m.ca_pem, false, true, &client_side),
        );
        assert_pinned("haproxy-server.cfg", &haproxy_server(&m, &server, &up));
        assert_pinned("haproxy-client.cfg", &haproxy_client(&m, &client, &server));
        assert_pinned("nginx-server.conf", &nginx_server(&m, dir, &server, &up));
        assert_pinned(
            "nginx-client.conf",
            &nginx_client(&m, dir, &client, &server),
        );
        assert_pinned(
            "stunnel-server.conf",
            &stunnel_server(&m, dir, &server, &up),
        );
        assert_pinned(
            "stunnel-client.conf",
            &stunnel_client(&m, dir, &client, &server),
        );
    }
}
