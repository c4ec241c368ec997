//! The trust-change table (issue 13): every item that can change × every
//! way a change arrives, each row against its own real `mtlsd run`
//! process, with the subject's connections in every state — a new
//! handshake, a resumed session, and connections held open across the
//! change (a tcp relay and a gRPC channel with a bidi stream in flight).
//!
//! Every row first proves its starting point (the held connections work,
//! the narrowed method is allowed before the change), then makes exactly
//! one change, fires one trigger, and checks: the audit line (result and
//! the item named), the subject's new and resumed handshakes, its held
//! connections (closed within `drain_grace` + 1 s when it no longer
//! qualifies, untouched otherwise), a call to the narrowed method on the
//! held channel (PERMISSION_DENIED), and a bystander's held connection
//! (always untouched). A cell that cannot apply says why in the printed
//! table.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mtlsd_devca::{CertificateAuthority, IssuedCert, LeafSpec, OffsetDateTime};
use mtlsd_testsvc::EchoClient;
use mtlsd_testsvc::proto::{Msg, StreamRequest};
use nix::sys::signal::Signal;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::support::process::{MtlsdProcess, run_to_end};
use crate::support::*;

/// How long a connection that no longer qualifies may finish its work.
const GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Identity,
    Bundle,
    Crl,
    HostAdded,
    HostRemoved,
    RoleRemoved,
    RoleAdded,
    SanChanged,
    SerialRevoked,
    SerialUnrevoked,
    ListenerRoles,
    RouteRule,
    MinVersion,
    ReloadWatch,
    ReloadInterval,
    ReloadSettle,
    ReloadDrainGrace,
    RestartOnly,
}

const CHANGES: [Change; 18] = [
    Change::Identity,
    Change::Bundle,
    Change::Crl,
    Change::HostAdded,
    Change::HostRemoved,
    Change::RoleRemoved,
    Change::RoleAdded,
    Change::SanChanged,
    Change::SerialRevoked,
    Change::SerialUnrevoked,
    Change::ListenerRoles,
    Change::RouteRule,
    Change::MinVersion,
    Change::ReloadWatch,
    Change::ReloadInterval,
    Change::ReloadSettle,
    Change::ReloadDrainGrace,
    Change::RestartOnly,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Sighup,
    Watch,
    Admin,
    Interval,
}

const VIAS: [Via; 4] = [Via::Sighup, Via::Watch, Via::Admin, Via::Interval];

impl Via {
    fn trigger(self) -> &'static str {
        match self {
            Self::Sighup => "sighup",
            Self::Watch => "inotify",
            Self::Admin => "admin",
            Self::Interval => "timer",
        }
    }
}

/// Which client a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// In the inventory with `api` and `monitoring`, from CA A.
    Alpha,
    /// In the inventory with `api`, from CA B (the bundle row removes B).
    Bravo,
    /// Issued by CA A, revoked in the starting inventory.
    Beta,
    /// Issued by CA A, not in the starting inventory.
    Gamma,
}

/// What a row expects.
#[derive(Debug, Clone)]
struct Expect {
    result: &'static str,
    /// Audit items that must be named (prefix of `item`).
    items: &'static [&'static str],
    /// The subject's handshake (and a round trip) after the change:
    /// `None` = admitted, `Some(reason)` = refused, counted with `reason`.
    new: Option<&'static str>,
    /// Whether the subject has a session and connections from before the
    /// change (a refused host has none).
    had_sessions: bool,
    /// The subject's held tcp connection closes.
    raw_closes: bool,
    /// The subject's held gRPC channel closes.
    rpc_closes: bool,
    /// A method on the held channel and the code it gets after the change
    /// (it got OK, or the opposite, before).
    call: Option<(Method, Code)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Unary,
    Delete,
    Slow,
}

fn expect(change: Change) -> Expect {
    let admitted = Expect {
        result: "applied",
        items: &[],
        new: None,
        had_sessions: true,
        raw_closes: false,
        rpc_closes: false,
        call: None,
    };
    let cut = |reason: &'static str, items: &'static [&'static str]| Expect {
        items,
        new: Some(reason),
        raw_closes: true,
        rpc_closes: true,
        ..admitted.clone()
    };
    match change {
        Change::Identity => Expect {
            items: &["identity"],
            ..admitted
        },
        Change::Bundle => cut("unknown_ca", &["trust_domain.mesh"]),
        Change::Crl => cut("revoked", &["crl.mesh"]),
        Change::HostAdded | Change::SerialUnrevoked => Expect {
            items: &["inventory"],
            had_sessions: false,
            ..admitted
        },
        Change::HostRemoved | Change::SanChanged => cut("san_not_in_inventory", &["inventory"]),
        Change::SerialRevoked => cut("revoked", &["inventory"]),
        Change::RoleRemoved => Expect {
            items: &["inventory"],
            call: Some((Method::Delete, Code::PermissionDenied)),
            ..admitted
        },
        Change::RoleAdded => Expect {
            items: &["inventory"],
            call: Some((Method::Slow, Code::Ok)),
            ..admitted
        },
        // The tcp listener now wants `database`; the grpc listener too, but
        // a route there still admits alpha's `monitoring`, so the channel
        // stays and only the default rule refuses.
        Change::ListenerRoles => Expect {
            items: &["config.listener.raw", "config.listener.rpc"],
            new: Some("role_not_allowed"),
            raw_closes: true,
            call: Some((Method::Unary, Code::PermissionDenied)),
            ..admitted
        },
        Change::RouteRule => Expect {
            items: &["config.listener.rpc"],
            call: Some((Method::Delete, Code::PermissionDenied)),
            ..admitted
        },
        Change::MinVersion => Expect {
            items: &["config.tls"],
            ..admitted
        },
        Change::ReloadWatch
        | Change::ReloadInterval
        | Change::ReloadSettle
        | Change::ReloadDrainGrace => Expect {
            items: &["config.reload"],
            ..admitted
        },
        Change::RestartOnly => Expect {
            result: "restart_required",
            items: &["config.runtime"],
            ..admitted
        },
    }
}

/// Everything one row's daemon is made of.
struct Scenario {
    pki: Pki,
    ca_b: CertificateAuthority,
    server: HostFiles,
    alpha: IssuedCert,
    bravo: IssuedCert,
    beta: IssuedCert,
    gamma: IssuedCert,
    delta: IssuedCert,
    echo: SocketAddr,
    grpc: SocketAddr,
    via: Via,
}

struct Knobs {
    watch: bool,
    interval: Option<&'static str>,
    settle: &'static str,
    drain_grace: &'static str,
    min_version: &'static str,
    worker_threads: u32,
    raw_roles: &'static str,
    rpc_roles: &'static str,
    delete_roles: &'static str,
}

impl Scenario {
    async fn new(via: Via, echo: SocketAddr, grpc: SocketAddr) -> Self {
        let pki = Pki::new();
        let ca_b = CertificateAuthority::new("test mesh CA B").unwrap();
        let server = pki.host(
            "server",
            &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
        );
        let leaf = |ca: &CertificateAuthority, name: &str| {
            ca.issue(&LeafSpec::new(name, &[&format!("{name}.test")]))
                .unwrap()
        };
        let scenario = Self {
            alpha: leaf(&pki.ca, "alpha"),
            bravo: leaf(&ca_b, "bravo"),
            beta: leaf(&pki.ca, "beta"),
            gamma: leaf(&pki.ca, "gamma"),
            delta: leaf(&pki.ca, "delta"),
            ca_b,
            server,
            pki,
            echo,
            grpc,
            via,
        };
        scenario.write_bundle(true);
        scenario.write_crl(&[]);
        scenario.write_inventory(&Inventory::default());
        scenario.write_config(&scenario.knobs());
        scenario
    }

    fn knobs(&self) -> Knobs {
        Knobs {
            watch: self.via == Via::Watch,
            interval: (self.via == Via::Interval).then_some("1s"),
            settle: "100ms",
            drain_grace: "1s",
            min_version: "1.2",
            worker_threads: 1,
            raw_roles: "[\"api\"]",
            rpc_roles: "[\"api\"]",
            delete_roles: "[\"monitoring\"]",
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.pki.path(name)
    }

    fn config_path(&self) -> PathBuf {
        self.path("mtlsd.toml")
    }

    fn audit_path(&self) -> PathBuf {
        self.path("audit.jsonl")
    }

    fn write_bundle(&self, with_b: bool) {
        let mut pem = self.pki.ca.cert_pem().to_owned();
        if with_b {
            pem.push_str(self.ca_b.cert_pem());
        }
        replace(&self.path("bundle.pem"), &pem, 0o644);
    }

    fn write_crl(&self, revoked: &[&IssuedCert]) {
        let serials: Vec<u64> = revoked
            .iter()
            .map(|c| u64::from_str_radix(&c.serial_hex, 16).unwrap())
            .collect();
        let next_update = OffsetDateTime::now_utc() + Duration::from_secs(86_400);
        let crl = self.pki.ca.crl(&serials, next_update).unwrap();
        replace(&self.path("mesh.crl"), &crl, 0o644);
    }

    fn write_inventory(&self, inventory: &Inventory) {
        let mut text = String::from(
            "cluster = \"table\"\n\n[hosts.server]\nsans = [\"DNS:server.test\"]\nroles = [\"database\"]\n\n",
        );
        let alpha_sans = if inventory.alpha_renamed {
            "DNS:alpha-renamed.test"
        } else {
            "DNS:alpha.test"
        };
        if !inventory.alpha_removed {
            let _ = write!(
                text,
                "[hosts.alpha]\nsans = [\"{alpha_sans}\"]\nroles = {}\n\n",
                inventory.alpha_roles
            );
        }
        text.push_str("[hosts.bravo]\nsans = [\"DNS:bravo.test\"]\nroles = [\"api\"]\n\n");
        text.push_str("[hosts.beta]\nsans = [\"DNS:beta.test\"]\nroles = [\"api\"]\n\n");
        text.push_str(
            "[hosts.delta]\nsans = [\"DNS:delta.test\"]\nroles = [\"api\", \"monitoring\"]\n\n",
        );
        if inventory.gamma_added {
            text.push_str("[hosts.gamma]\nsans = [\"DNS:gamma.test\"]\nroles = [\"api\"]\n\n");
        }
        if inventory.late_host {
            text.push_str("[hosts.late]\nsans = [\"DNS:late.test\"]\nroles = [\"api\"]\n\n");
        }
        if !inventory.beta_unrevoked {
            let _ = write!(
                text,
                "[[revoked]]\nserial = \"{}\"\nnote = \"beta's key was lost\"\n\n",
                self.beta.serial_hex
            );
        }
        if inventory.alpha_revoked {
            let _ = write!(
                text,
                "[[revoked]]\nserial = \"{}\"\n\n",
                self.alpha.serial_hex
            );
        }
        replace(&self.path("inventory.toml"), &text, 0o644);
    }

    fn write_config(&self, knobs: &Knobs) {
        let mut text = format!(
            "state_dir = {state:?}\n\n[inventory]\npath = {inventory:?}\n\n\
             [identity]\nhost = \"server\"\ncert = {cert:?}\nkey = {key:?}\n\n\
             [trust_domains.mesh]\nbundle = {bundle:?}\ncrl = {crl:?}\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[shutdown]\ndrain_timeout = \"2s\"\n\n\
             [tls]\nmin_version = \"{min}\"\n\n[runtime]\nworker_threads = {workers}\n\n\
             [reload]\nwatch = {watch}\nsettle = \"{settle}\"\ndrain_grace = \"{grace}\"\naudit_log = {audit:?}\n",
            state = self.path("state"),
            inventory = self.path("inventory.toml"),
            cert = self.server.cert,
            key = self.server.key,
            bundle = self.path("bundle.pem"),
            crl = self.path("mesh.crl"),
            min = knobs.min_version,
            workers = knobs.worker_threads,
            watch = knobs.watch,
            settle = knobs.settle,
            grace = knobs.drain_grace,
            audit = self.audit_path(),
        );
        if let Some(interval) = knobs.interval {
            let _ = writeln!(text, "interval = \"{interval}\"");
        }
        let _ = write!(
            text,
            "\n[[inbound]]\nname = \"raw\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{echo}\"\n\
             allow_roles = {raw}\n\n\
             [[inbound]]\nname = \"rpc\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{grpc}\"\n\
             protocol = \"grpc\"\nallow_roles = {rpc}\n\
             [[inbound.routes]]\npath = \"/mtlsd.test.Echo/Delete*\"\nallow_roles = {delete}\n\
             [[inbound.routes]]\npath = \"/mtlsd.test.Echo/Slow\"\nallow_roles = [\"ops\"]\n",
            echo = self.echo,
            grpc = self.grpc,
            raw = knobs.raw_roles,
            rpc = knobs.rpc_roles,
            delete = knobs.delete_roles,
        );
        replace(&self.config_path(), &text, 0o600);
    }

    fn client(&self, who: Subject, alpn_h2: bool) -> Arc<ClientConfig> {
        let cert = match who {
            Subject::Alpha => &self.alpha,
            Subject::Bravo => &self.bravo,
            Subject::Beta => &self.beta,
            Subject::Gamma => &self.gamma,
        };
        client_with(&self.pki, cert, alpn_h2)
    }

    /// Makes `change`: only files, never a trigger.
    fn apply(&self, change: Change) {
        let mut knobs = self.knobs();
        let mut inventory = Inventory::default();
        match change {
            Change::Identity => {
                let next = self
                    .pki
                    .ca
                    .issue(&LeafSpec::new(
                        "server-2",
                        &["server.test", "localhost", "127.0.0.1"],
                    ))
                    .unwrap();
                replace(&self.server.key, &next.key_pem, 0o600);
                replace(&self.server.cert, &next.cert_pem, 0o644);
                return;
            }
            Change::Bundle => return self.write_bundle(false),
            Change::Crl => return self.write_crl(&[&self.alpha]),
            Change::HostAdded => inventory.gamma_added = true,
            Change::HostRemoved => inventory.alpha_removed = true,
            Change::RoleRemoved => inventory.alpha_roles = "[\"api\"]",
            Change::RoleAdded => inventory.alpha_roles = "[\"api\", \"monitoring\", \"ops\"]",
            Change::SanChanged => inventory.alpha_renamed = true,
            Change::SerialRevoked => inventory.alpha_revoked = true,
            Change::SerialUnrevoked => inventory.beta_unrevoked = true,
            Change::ListenerRoles => {
                knobs.raw_roles = "[\"database\"]";
                knobs.rpc_roles = "[\"database\"]";
            }
            Change::RouteRule => knobs.delete_roles = "[\"ops\"]",
            Change::MinVersion => knobs.min_version = "1.3",
            Change::ReloadWatch => knobs.watch = !knobs.watch,
            Change::ReloadInterval => {
                knobs.interval = match knobs.interval {
                    Some(_) => None,
                    None => Some("1s"),
                }
            }
            Change::ReloadSettle => knobs.settle = "150ms",
            Change::ReloadDrainGrace => knobs.drain_grace = "3s",
            Change::RestartOnly => knobs.worker_threads = 2,
        }
        match change {
            Change::HostAdded
            | Change::HostRemoved
            | Change::RoleRemoved
            | Change::RoleAdded
            | Change::SanChanged
            | Change::SerialRevoked
            | Change::SerialUnrevoked => self.write_inventory(&inventory),
            _ => self.write_config(&knobs),
        }
    }
}

/// The starting inventory, and what a row changes in it.
struct Inventory {
    alpha_roles: &'static str,
    alpha_removed: bool,
    alpha_renamed: bool,
    alpha_revoked: bool,
    beta_unrevoked: bool,
    gamma_added: bool,
    late_host: bool,
}

impl Default for Inventory {
    fn default() -> Self {
        Self {
            alpha_roles: "[\"api\", \"monitoring\"]",
            alpha_removed: false,
            alpha_renamed: false,
            alpha_revoked: false,
            beta_unrevoked: false,
            gamma_added: false,
            late_host: false,
        }
    }
}

/// Writes `path` the way careful tools do: a temp file, then a rename.
fn replace(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client trusting CA A (the server's), presenting `cert`, with its own
/// session cache (so a later connect with the same config resumes).
fn client_with(pki: &Pki, cert: &IssuedCert, alpn_h2: bool) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(mtlsd_reload::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert.cert_der.clone()], cert.key_der())
        .unwrap();
    if alpn_h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    Arc::new(config)
}

async fn tls(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A handshake and a round trip: TLS 1.3 clients finish their handshake
/// before the server has judged their certificate, so a refusal shows on
/// the first read. Returns whether the session was resumed.
async fn admitted(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<bool, String> {
    let mut stream = tls(addr, config).await.map_err(|e| e.to_string())?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    match round_trip(&mut stream, b"hello").await {
        Ok(back) if back == b"hello" => Ok(resumed),
        Ok(_) => Err("wrong echo".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// A connector that hands tonic one TLS connection, once: a held channel
/// never reconnects behind the test's back.
#[derive(Clone)]
struct OneConnection(Arc<Mutex<Option<TlsStream<TcpStream>>>>);

impl tower_service::Service<http::Uri> for OneConnection {
    type Response = hyper_util::rt::TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let stream = self.0.lock().unwrap().take();
        Box::pin(async move {
            stream
                .map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the held connection is gone"))
        })
    }
}

/// A gRPC channel over one mTLS connection to `addr`.
async fn held_channel(addr: SocketAddr, config: Arc<ClientConfig>) -> EchoClient<Channel> {
    let stream = tls(addr, config).await.unwrap();
    let channel = Endpoint::from_static("http://held.test")
        .connect_with_connector(OneConnection(Arc::new(Mutex::new(Some(stream)))))
        .await
        .unwrap();
    EchoClient::new(channel)
}

async fn call(client: &mut EchoClient<Channel>, method: Method) -> Code {
    let result = match method {
        Method::Unary => client
            .unary(Msg {
                payload: b"u".to_vec(),
            })
            .await
            .map(|_| ()),
        Method::Delete => client
            .delete_thing(Msg {
                payload: b"d".to_vec(),
            })
            .await
            .map(|_| ()),
        Method::Slow => client
            .slow(StreamRequest { count: 1, size: 0 })
            .await
            .map(|_| ()),
    };
    match tokio::time::timeout(SOON, async { result }).await {
        Ok(Ok(())) => Code::Ok,
        Ok(Err(status)) => status.code(),
        Err(_) => Code::DeadlineExceeded,
    }
}

/// A bidi call kept open: each `ping` sends one message and waits for its
/// echo.
struct Stream {
    tx: tokio::sync::mpsc::Sender<Msg>,
    rx: tonic::Streaming<Msg>,
}

impl Stream {
    async fn open(client: &mut EchoClient<Channel>) -> Self {
        let (tx, out) = tokio::sync::mpsc::channel(4);
        let out = tokio_stream::wrappers::ReceiverStream::new(out);
        let rx = client.bidi(out).await.unwrap().into_inner();
        let mut stream = Self { tx, rx };
        assert!(
            stream.ping().await,
            "the bidi stream works before the change"
        );
        stream
    }

    async fn ping(&mut self) -> bool {
        if self
            .tx
            .send(Msg {
                payload: b"p".to_vec(),
            })
            .await
            .is_err()
        {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(3), self.rx.message()).await,
            Ok(Ok(Some(_)))
        )
    }
}

/// One row's outcome, for the printed table; `Err` fails the row.
struct Row {
    change: Change,
    via: Via,
    cells: Vec<String>,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<17} {:<8}",
            format!("{:?}", self.change),
            self.via.trigger()
        )?;
        for cell in &self.cells {
            write!(f, " | {cell}")?;
        }
        Ok(())
    }
}

fn subject_of(change: Change) -> Subject {
    match change {
        Change::Bundle => Subject::Bravo,
        Change::HostAdded => Subject::Gamma,
        Change::SerialUnrevoked => Subject::Beta,
        _ => Subject::Alpha,
    }
}

/// The audit log's lines.
fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_for_audit(path: &Path, after: usize, limit: Duration) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // A timer tick between writing a new key and its certificate is a
        // rejected attempt (and audited); the next one applies.
        let half_written = |line: &serde_json::Value| {
            line["result"] == "rejected"
                && line["trigger"] != "sighup"
                && line["trigger"] != "admin"
        };
        if let Some(line) = audit_lines(path)
            .into_iter()
            .skip(after)
            .find(|line| !half_written(line))
        {
            return Some(line);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Fires `via` (a file change was made already for `Watch`; `Interval`
/// just waits for the timer). Returns `mtlsd reload`'s exit code.
async fn fire(via: Via, pid: nix::unistd::Pid, admin: SocketAddr) -> Option<i32> {
    match via {
        Via::Sighup => {
            nix::sys::signal::kill(pid, Signal::SIGHUP).expect("signal mtlsd");
            None
        }
        Via::Admin => {
            let admin = admin.to_string();
            let (status, _, _) = tokio::task::spawn_blocking(move || {
                run_to_end(&["reload", "--admin", &admin], SOON)
            })
            .await
            .unwrap();
            status.code()
        }
        Via::Watch | Via::Interval => None,
    }
}

async fn run_row(
    change: Change,
    via: Via,
    echo: SocketAddr,
    grpc: SocketAddr,
) -> Result<Row, String> {
    let scenario = Scenario::new(via, echo, grpc).await;
    let want = expect(change);
    let subject = subject_of(change);
    let mut cells = Vec::new();
    let config = scenario.config_path().display().to_string();
    let mut process = MtlsdProcess::spawn(&["run", "--config", &config], &[]);
    let raw = process.listener_addr("raw").await;
    let rpc = process.listener_addr("rpc").await;
    let admin: SocketAddr = process.wait_for_log("admin endpoint listening", SOON).await["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or("no admin address")?;

    // Before: the subject's sessions, held connections, the baseline call;
    // a bystander (delta) holding a connection no row touches.
    let raw_client = scenario.client(subject, false);
    let rpc_client = scenario.client(subject, true);
    let bystander = client_with(&scenario.pki, &scenario.delta, false);
    let mut bystander_held = tls(raw, bystander).await.map_err(|e| e.to_string())?;
    round_trip(&mut bystander_held, b"before")
        .await
        .map_err(|e| e.to_string())?;
    let mut held = None;
    if want.had_sessions {
        let mut held_raw = tls(raw, raw_client.clone())
            .await
            .map_err(|e| e.to_string())?;
        round_trip(&mut held_raw, b"before")
            .await
            .map_err(|e| format!("held tcp before the change: {e}"))?;
        let mut channel = held_channel(rpc, rpc_client.clone()).await;
        let stream = Stream::open(&mut channel).await;
        if let Some((method, after)) = want.call {
            let before = call(&mut channel, method).await;
            let expected_before = if after == Code::Ok {
                Code::PermissionDenied
            } else {
                Code::Ok
            };
            if before != expected_before {
                return Err(format!(
                    "{method:?} before the change: {before:?}, expected {expected_before:?}"
                ));
            }
        }
        held = Some((held_raw, channel, stream));
    } else if admitted(raw, raw_client.clone()).await.is_ok() {
        return Err("the subject was admitted before the change".to_owned());
    }

    let audit_before = audit_lines(&scenario.audit_path()).len();
    scenario.apply(change);
    let exit = fire(via, process.pid(), admin).await;
    let limit = if via == Via::Interval {
        Duration::from_secs(4)
    } else {
        SOON
    };
    let line = wait_for_audit(&scenario.audit_path(), audit_before, limit)
        .await
        .ok_or_else(|| format!("no audit line; stderr: {}", process.stderr_seen.join("\n")))?;
    let changed_at = tokio::time::Instant::now();

    // The audit line: trigger, result, items.
    if line["trigger"] != via.trigger() || line["result"] != want.result {
        return Err(format!("audit: {line}"));
    }
    let items: Vec<String> = line["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["item"].as_str().map(str::to_owned))
        .collect();
    for item in want.items {
        if !items.iter().any(|i| i == item) {
            return Err(format!("audit names {items:?}, not {item}: {line}"));
        }
    }
    if change == Change::RestartOnly {
        let restart = line["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["item"] == "config.runtime" && i["applies"] == "restart");
        if !restart {
            return Err(format!("config.runtime not marked restart: {line}"));
        }
    }
    cells.push(format!("{} {}", want.result, items.join(",")));
    if via == Via::Admin {
        let expected = if want.result == "restart_required" {
            4
        } else {
            0
        };
        if exit != Some(expected) {
            return Err(format!("mtlsd reload exited {exit:?}, expected {expected}"));
        }
    }

    // A new handshake.
    let fresh = scenario.client(subject, false);
    match (admitted(raw, fresh).await, want.new) {
        (Ok(_), None) => cells.push("new: admitted".to_owned()),
        (Err(_), Some(reason)) => cells.push(format!("new: refused ({reason})")),
        (got, want) => return Err(format!("new handshake: {got:?}, expected refusal {want:?}")),
    }
    if let Some(reason) = want.new {
        let metrics = http_get(admin, "/metrics").await.1;
        let refused = metric(
            &metrics,
            "mtlsd_handshake_failures_total",
            &[("listener", "raw"), ("reason", reason)],
        );
        if refused.unwrap_or(0.0) < 1.0 {
            return Err(format!("no {reason} refusal counted on raw"));
        }
    }

    // A resumed session (the cached session of the held connections).
    if want.had_sessions {
        match (admitted(raw, raw_client.clone()).await, want.new) {
            (Ok(resumed), None) => cells.push(format!(
                "resumed: admitted ({})",
                if resumed { "resumed" } else { "full handshake" }
            )),
            (Err(_), Some(_)) => cells.push("resumed: refused".to_owned()),
            (got, _) => return Err(format!("resumed session: {got:?}, expected {:?}", want.new)),
        }
    } else {
        cells.push("resumed: n/a (refused before the change, no session)".to_owned());
    }

    // The held connections.
    if let Some((mut held_raw, mut channel, mut stream)) = held {
        if want.rpc_closes {
            // GOAWAY at once: no new call starts on the held channel.
            let code = call(&mut channel, Method::Unary).await;
            if code == Code::Ok {
                return Err(
                    "a new call started on a channel whose peer no longer qualifies".into(),
                );
            }
        }
        if let Some((method, code)) = want.call {
            let got = call(&mut channel, method).await;
            if got != code {
                return Err(format!(
                    "{method:?} on the held channel: {got:?}, expected {code:?}"
                ));
            }
            cells.push(format!("held call {method:?}: {got:?}"));
        }
        // Closed within the grace period (+1 s), or untouched after it.
        tokio::time::sleep_until(changed_at + GRACE + Duration::from_millis(300)).await;
        let deadline = changed_at + GRACE + Duration::from_secs(1);
        let raw_open = loop {
            let open = round_trip(&mut held_raw, b"after").await.is_ok();
            if !open || !want.raw_closes || tokio::time::Instant::now() >= deadline {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if raw_open == want.raw_closes {
            return Err(format!(
                "held tcp open = {raw_open}, expected closing = {}",
                want.raw_closes
            ));
        }
        let rpc_open = loop {
            let open = stream.ping().await;
            if !open || !want.rpc_closes || tokio::time::Instant::now() >= deadline {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if rpc_open == want.rpc_closes {
            return Err(format!(
                "held gRPC stream open = {rpc_open}, expected closing = {}",
                want.rpc_closes
            ));
        }
        cells.push(format!(
            "held tcp: {}, held gRPC: {}",
            if raw_open { "untouched" } else { "closed" },
            if rpc_open { "untouched" } else { "closed" }
        ));
        if want.raw_closes || want.rpc_closes {
            let metrics = http_get(admin, "/metrics").await.1;
            let closed = metric(&metrics, "mtlsd_connections_closed_total", &[]).unwrap_or(0.0);
            if closed < 1.0 {
                return Err("no closed connection counted".to_owned());
            }
        }
    } else {
        cells.push("held: n/a (refused before the change, no connection)".to_owned());
    }

    // The bystander is untouched, except by a change that narrows the
    // listener for everyone.
    let bystander_open = round_trip(&mut bystander_held, b"after").await.is_ok();
    let bystander_closes = change == Change::ListenerRoles;
    if bystander_open == bystander_closes {
        return Err(format!(
            "bystander's held tcp connection open = {bystander_open}, expected closing = {bystander_closes}"
        ));
    }
    cells.push(format!(
        "bystander: {}",
        if bystander_open {
            "untouched"
        } else {
            "closed"
        }
    ));

    // The reload.* rows: the new setting took effect.
    follow_up(change, via, &scenario, &mut process, raw, admin).await?;
    if let Some(cell) = follow_up_cell(change, via) {
        cells.push(cell);
    }
    process.signal(Signal::SIGTERM);
    let _ = process.exited(SOON).await;
    Ok(Row { change, via, cells })
}

/// Reload attempts so far by `trigger`, whatever their result.
async fn attempts(admin: SocketAddr, trigger: &str) -> f64 {
    let text = http_get(admin, "/metrics").await.1;
    ["applied", "unchanged", "rejected", "restart_required"]
        .iter()
        .filter_map(|result| {
            metric(
                &text,
                "mtlsd_reload_attempts_total",
                &[("trigger", trigger), ("result", result)],
            )
        })
        .sum()
}

fn follow_up_cell(change: Change, via: Via) -> Option<String> {
    match change {
        Change::ReloadWatch if via == Via::Watch => Some("then: file changes ignored".into()),
        Change::ReloadWatch => Some("then: file changes picked up".into()),
        Change::ReloadInterval if via == Via::Interval => Some("then: timer stopped".into()),
        Change::ReloadInterval => Some("then: timer reloads".into()),
        Change::ReloadDrainGrace => Some("then: revoked peer kept ≥ 2.5 s".into()),
        _ => None,
    }
}

/// Proves a `reload.*` change took effect (the audit line alone shows it
/// was read, not that the watcher or timer changed).
async fn follow_up(
    change: Change,
    via: Via,
    scenario: &Scenario,
    process: &mut MtlsdProcess,
    raw: SocketAddr,
    admin: SocketAddr,
) -> Result<(), String> {
    let audit = scenario.audit_path();
    let late = Inventory {
        late_host: true,
        ..Inventory::default()
    };
    match change {
        Change::ReloadWatch | Change::ReloadInterval => {
            // Attempts are counted by trigger even when nothing changed.
            let trigger = if change == Change::ReloadWatch {
                "inotify"
            } else {
                "timer"
            };
            let stopped = via == Via::Watch && change == Change::ReloadWatch
                || via == Via::Interval && change == Change::ReloadInterval;
            let before = attempts(admin, trigger).await;
            scenario.write_inventory(&late);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
            let mut after = before;
            while tokio::time::Instant::now() < deadline && after == before {
                tokio::time::sleep(Duration::from_millis(100)).await;
                after = attempts(admin, trigger).await;
            }
            if stopped == (after > before) {
                return Err(format!(
                    "after {change:?} via {via:?}: {trigger} attempts {before} -> {after}"
                ));
            }
            Ok(())
        }
        Change::ReloadDrainGrace => {
            // The new grace (3 s) applies to the next narrowing.
            let mut held = tls(raw, scenario.client(Subject::Alpha, false))
                .await
                .map_err(|e| e.to_string())?;
            round_trip(&mut held, b"x")
                .await
                .map_err(|e| e.to_string())?;
            let before = audit_lines(&audit).len();
            scenario.write_inventory(&Inventory {
                alpha_revoked: true,
                ..Inventory::default()
            });
            process.signal(Signal::SIGHUP);
            wait_for_audit(&audit, before, SOON)
                .await
                .ok_or("no audit line for the revocation")?;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            round_trip(&mut held, b"y")
                .await
                .map_err(|e| format!("closed before the new 3 s grace: {e}"))?;
            Ok(())
        }
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trust_change_applies_on_every_trigger_to_new_resumed_and_held_connections() {
    let echo = Echo::start().await;
    let grpc = mtlsd_testsvc::serve().await;
    let rows: Vec<(Change, Via)> = CHANGES
        .iter()
        .flat_map(|c| VIAS.iter().map(move |v| (*c, *v)))
        .collect();
    // A few rows at a time: each is its own daemon process.
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for batch in rows.chunks(6) {
        let results = futures_join(
            batch
                .iter()
                .map(|(change, via)| run_row(*change, *via, echo.addr, grpc))
                .collect(),
        )
        .await;
        for ((change, via), result) in batch.iter().zip(results) {
            match result {
                Ok(row) => table.push(row.to_string()),
                Err(e) => failures.push(format!("{change:?} via {}: {e}", via.trigger())),
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert_eq!(table.len(), CHANGES.len() * VIAS.len());
}

/// Runs futures concurrently on the test runtime, keeping their order.
async fn futures_join<T: Send + 'static>(
    futures: Vec<impl Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("row task panicked"));
    }
    out
}

/// Lets the first write (the ClientHello) through and holds every later
/// one until opened: a client whose handshake straddles a reload.
struct Gated {
    inner: TcpStream,
    first_done: bool,
    open: Arc<tokio::sync::Notify>,
    opened: Arc<std::sync::atomic::AtomicBool>,
    waiting: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
}

impl tokio::io::AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.first_done && !self.opened.load(std::sync::atomic::Ordering::SeqCst) {
            let open = self.open.clone();
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(open.notified_owned()));
            if waiting.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.waiting = None;
        }
        self.first_done = true;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A gRPC connection whose handshake was admitted under the previous
/// generation (the client's last flight arrives after a reload that
/// removed one of its roles) tells the daemon the roles of the current
/// inventory, from its first request on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_follow_the_inventory_when_a_handshake_straddles_a_reload() {
    let echo = Echo::start().await;
    let grpc = mtlsd_testsvc::serve().await;
    let scenario = Scenario::new(Via::Admin, echo.addr, grpc).await;
    let config = scenario.config_path().display().to_string();
    let mut process = MtlsdProcess::spawn(&["run", "--config", &config], &[]);
    let rpc = process.listener_addr("rpc").await;
    let admin: SocketAddr = process.wait_for_log("admin endpoint listening", SOON).await["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let open = Arc::new(tokio::sync::Notify::new());
    let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gated = Gated {
        inner: TcpStream::connect(rpc).await.unwrap(),
        first_done: false,
        open: open.clone(),
        opened: opened.clone(),
        waiting: None,
    };
    let client = scenario.client(Subject::Alpha, true);
    let handshake = tokio::spawn(async move {
        TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), gated)
            .await
    });
    // The server has sent its flight by now; alpha loses `monitoring`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    scenario.write_inventory(&Inventory {
        alpha_roles: "[\"api\"]",
        ..Inventory::default()
    });
    let admin_arg = admin.to_string();
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || run_to_end(&["reload", "--admin", &admin_arg], SOON))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    opened.store(true, std::sync::atomic::Ordering::SeqCst);
    open.notify_waiters();
    let stream = handshake.await.unwrap().unwrap();
    let channel = Endpoint::from_static("http://held.test")
        .connect_with_connector(GatedConnection(Arc::new(Mutex::new(Some(stream)))))
        .await
        .unwrap();
    let mut client = EchoClient::new(channel);
    for _ in 0..2 {
        let reply = client
            .headers(Msg {
                payload: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let headers = String::from_utf8(reply.payload).unwrap();
        assert!(
            headers.contains("x-mtlsd-peer-roles=api\n"),
            "stale roles after the reload: {headers}"
        );
    }
    process.signal(Signal::SIGTERM);
    let _ = process.exited(SOON).await;
}

#[derive(Clone)]
struct GatedConnection(Arc<Mutex<Option<TlsStream<Gated>>>>);

impl tower_service::Service<http::Uri> for GatedConnection {
    type Response = hyper_util::rt::TokioIo<TlsStream<Gated>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let stream = self.0.lock().unwrap().take();
        Box::pin(async move {
            stream
                .map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the connection is gone"))
        })
    }
}
