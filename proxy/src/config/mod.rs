//! mtlsd's configuration: `/etc/mtlsd/mtlsd.toml` plus `MTLSD_…`
//! environment overrides, validated in full before anything starts.
//!
//! Loading has two stages. The `config` crate merges the file and the
//! environment into one tree, deserialised into [`raw`] types while
//! `serde_ignored` records every unknown key. [`validate`] then turns the
//! raw tree into the typed [`Config`], collecting every problem with its key,
//! so an operator fixes the file once, not once per error.
//!
//! Environment overrides use `__` to nest: `MTLSD_ADMIN__LISTEN` sets
//! `admin.listen`, `MTLSD_TRUST_DOMAINS__MESH__VERSION` sets
//! `trust_domains.mesh.version`.

mod raw;
mod validate;
pub(crate) use validate::is_domain_name;
pub use validate::parse_route_path;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mtlsd_expiry::Fingerprint;
pub use mtlsd_reload::ClientAuth;
pub use mtlsd_reload::CrlUnknownStatus;
pub use mtlsd_reload::ServerVerification;
use mtlsd_reload::{
    IdentitySpec, MaterialSpec, PeerPolicy, TlsSettings, TlsSide, TlsUse, TrustDomainSpec,
};
pub use mtlsd_reload::{KeySource, PinSource, Pkcs11Uri, TokenKeySpec};
pub use mtlsd_reload::{MethodPattern, RouteRule};
use rustls_pki_types::ServerName;

/// Where `mtlsd run` and `mtlsd check` look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mtlsd/mtlsd.toml";
/// Where the admin endpoint listens unless `admin.listen` says otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9650";
/// The control socket's name in `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=mtlsd`: `/run/mtlsd/admin.sock`), its default.
pub const ADMIN_SOCKET_NAME: &str = "admin.sock";
/// Where the packaged unit's control socket is: what the CLI tries for
/// the unit's own config file when neither `admin.socket` nor
/// `$RUNTIME_DIRECTORY` says (an operator's shell).
pub const UNIT_ADMIN_SOCKET: &str = "/run/mtlsd/admin.sock";
/// The longest path a unix socket address holds (`sun_path` is 108
/// bytes with its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Environment variables with this prefix override config keys.
pub const ENV_PREFIX: &str = "MTLSD_";
/// Environment variables the CLI itself reads; they are not config keys.
pub(crate) const CLI_ENV_VARS: &[&str] = &["MTLSD_CONFIG", "MTLSD_LOG", "MTLSD_LOG_FORMAT"];

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this came from; relative paths inside it were resolved
    /// against its directory.
    pub source: PathBuf,
    pub identity: IdentityConfig,
    pub trust_domains: BTreeMap<String, TrustDomainConfig>,
    pub inventory: Option<PathBuf>,
    pub admin_listen: SocketAddr,
    /// mTLS on the admin endpoint; `None` serves plain HTTP (loopback).
    pub admin_tls: Option<AdminTls>,
    /// `admin.socket`: the local control socket serving the admin API
    /// without TLS to uid 0 and the daemon's own uid (the CLI prefers it).
    /// Default `$RUNTIME_DIRECTORY/admin.sock` when that is set; else off.
    pub admin_socket: Option<PathBuf>,
    pub allow_tls12: bool,
    pub drain_timeout: Duration,
    /// `runtime.worker_threads`: threads that run connections. One by
    /// default, as for linkerd2-proxy: a sidecar shares its host with the
    /// daemons it serves, and on a small host a second worker mostly adds
    /// cross-thread wake-ups (bench: a third less CPU per gRPC call at
    /// 1,000 calls/s with one; the same maximum rate on two cores).
    pub worker_threads: usize,
    pub state_dir: PathBuf,
    pub reload: ReloadConfig,
    pub expiry: ExpiryConfig,
    pub metrics: MetricsConfig,
    pub peers: PeersConfig,
    /// Every `[[inbound]]`, then every `[[outbound]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[bootstrap]`: the endpoint that serves the trust bundles to hosts
    /// joining; off when absent.
    pub bootstrap: Option<BootstrapConfig>,
}

/// `[bootstrap]`: serves the public trust bundles over TLS with this
/// host's certificate, without asking for a client certificate, so a new
/// host can fetch them with `mtlsd trust fetch` and pin them by their
/// SHA-256 (docs/operator_guide/joining.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    pub listen: SocketAddr,
    /// Requests (and new connections) one source address may make per
    /// minute; IPv6 sources count per /64.
    pub requests_per_minute: u32,
    /// Connections served at once; more wait in the kernel backlog.
    pub max_connections: usize,
    /// The trust domains it serves; `None`: every one.
    pub domains: Option<BTreeSet<String>>,
}

impl BootstrapConfig {
    /// Whether the bundle of `domain` is served.
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.as_ref().is_none_or(|d| d.contains(domain))
    }
}

/// `[admin] tls = true`: the admin endpoint requires a client certificate
/// of `trust_domain` whose inventory host holds one of `roles` (default
/// `monitoring`) or is this host itself (so `mtlsd status` and `reload`
/// work with the host's own certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    pub trust_domain: String,
    pub roles: Option<BTreeSet<String>>,
}

/// The name the admin endpoint's TLS config has in a generation; listener
/// names cannot contain parentheses, so it never collides.
pub const ADMIN_TLS_USE: &str = "(admin)";
/// The name of the client-side config `mtlsd status`/`reload` use.
pub const ADMIN_CLIENT_TLS_USE: &str = "(admin client)";
/// The name of the bootstrap endpoint's TLS config (no client
/// certificate asked for).
pub const BOOTSTRAP_TLS_USE: &str = "(bootstrap)";

/// `[expiry]`: when certificates need attention, and how often to say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryConfig {
    pub windows: mtlsd_expiry::ExpiryWindows,
    /// How often certificate states are re-evaluated.
    pub check_interval: Duration,
    /// While a certificate stays in a warning state, its event repeats this
    /// often (a change of state is reported at once).
    pub repeat: Duration,
}

/// `[metrics]`: what `/metrics` exports beyond the fixed families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Two series per peer host seen (`mtlsd_peer_cert_not_after_…`,
    /// `mtlsd_peer_last_handshake_…`). Off by default: in a full mesh of
    /// N hosts they add 2(N-1) series per host, N² across the fleet, and
    /// the fleet summaries answer the same questions in ten.
    pub per_peer: bool,
}

/// `[peers]`: how long what other hosts presented to us is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeersConfig {
    /// An inventory host with no handshake for this long counts as stale
    /// (`mtlsd_inventory_hosts{seen="stale"}`).
    pub stale_after: Duration,
    /// A peer's record is dropped after this long without a handshake;
    /// always longer than `stale_after`, so a host is stale before it is
    /// forgotten.
    pub forget_after: Duration,
}

impl Default for PeersConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(24 * 3600),
            forget_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[reload]`: how changes are picked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Watch the directories of every material file and of the config.
    pub watch: bool,
    /// Quiet time after the last file event before reloading; also the
    /// delay before retrying a rejected file-triggered reload.
    pub settle: Duration,
    /// Also check periodically (off when absent).
    pub interval: Option<Duration>,
    /// How long a connection whose peer no longer verifies may continue
    /// after a trust change.
    pub drain_grace: Duration,
    /// JSON lines, one per reload attempt; appended, never truncated.
    pub audit_log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// This host's name in the role inventory.
    pub host: Option<String>,
    pub cert: PathBuf,
    /// A key file, or a `pkcs11:` URI with `[pkcs11]`.
    pub key: KeySource,
    pub trust_domain: String,
    pub insecure_key_permissions: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainConfig {
    pub bundle: Vec<PathBuf>,
    pub version: Option<String>,
    /// CRL files (PEM or DER) enforced for this domain's peers.
    pub crl: Vec<PathBuf>,
    pub crl_unknown_status: CrlUnknownStatus,
    /// `sha256 = ["HEX", …]`: the CAs the bundle may hold, by the SHA-256
    /// of their DER; `None`: any CA that parses.
    pub sha256: Option<Vec<Fingerprint>>,
}

/// Which way a listener carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Accepts mTLS from other hosts, forwards plaintext to a local daemon.
    Inbound,
    /// Accepts plaintext from local daemons, originates mTLS to a remote host.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        })
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Grpc,
    Http,
    Mariadb,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Grpc => "grpc",
            Self::Http => "http",
            Self::Mariadb => "mariadb",
        }
    }
}

/// A remote or loopback `host:port`; the host is resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where an inbound tcp or mariadb listener forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Upstream {
    Tcp(HostPort),
    /// `unix:/path/to.sock`
    Unix(PathBuf),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept (or connect) to a finished TLS handshake.
    pub handshake: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle: Duration,
    /// Connecting to the upstream.
    pub connect: Duration,
}

/// One `[[inbound]]` or `[[outbound]]` entry. What only one side has lives
/// in [`Side`], so the data path never asks at run time for something
/// validation already ruled out (an outbound listener without a server
/// name, a grpc listener forwarding to a unix socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub trust_domain: String,
    pub timeouts: Timeouts,
    /// Accepting pauses (the kernel backlog holds new clients) while this
    /// many connections are open.
    pub max_connections: usize,
    pub side: Side,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Inbound(Inbound),
    Outbound(Outbound),
}

/// Accepts mTLS from other hosts, forwards plaintext to a local daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub mode: InboundMode,
    /// The roles a peer's inventory host must hold one of; `None`: any
    /// inventory host.
    pub allow_roles: Option<BTreeSet<String>>,
    /// Whether peers must present a certificate. Only http listeners may
    /// make it optional or turn it off.
    pub client_auth: ClientAuth,
}

/// An inbound listener's protocol and what it forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundMode {
    /// Bytes, to a port or a unix socket.
    Tcp { upstream: Upstream },
    /// HTTP/2 gRPC calls, to an h2c port, checked per call against
    /// `routes` (first match wins; calls no rule matches fall back to
    /// `allow_roles`).
    Grpc {
        upstream: HostPort,
        routes: Vec<RouteRule>,
    },
    /// HTTP/1.1 and HTTP/2 requests, to an HTTP/1.1 port.
    Http { upstream: HostPort },
    /// MariaDB clients that start TLS in the protocol, to a plaintext server.
    Mariadb { upstream: Upstream },
}

/// Accepts plaintext from local daemons, originates mTLS to a remote host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub protocol: OutboundProtocol,
    pub remote: HostPort,
    /// The name the remote server's certificate must be valid for.
    pub server_name: ServerName<'static>,
    /// The roles the server we dial must hold one of; `None`: any
    /// inventory host.
    pub expect_roles: Option<BTreeSet<String>>,
    /// How the server's certificate is checked.
    pub server_verify: ServerVerification,
    /// Offer the host certificate when the server asks for one. Only an
    /// outbound mariadb listener may turn it off (a stock server whose CA
    /// list does not include the mesh CA); mesh peers require it.
    pub present_certificate: bool,
}

/// What an outbound listener speaks (http is inbound only: outbound HTTP
/// rides in a tcp tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundProtocol {
    Tcp,
    Grpc,
    Mariadb,
}

impl From<OutboundProtocol> for Protocol {
    fn from(protocol: OutboundProtocol) -> Self {
        match protocol {
            OutboundProtocol::Tcp => Self::Tcp,
            OutboundProtocol::Grpc => Self::Grpc,
            OutboundProtocol::Mariadb => Self::Mariadb,
        }
    }
}

impl InboundMode {
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Tcp { .. } => Protocol::Tcp,
            Self::Grpc { .. } => Protocol::Grpc,
            Self::Http { .. } => Protocol::Http,
            Self::Mariadb { .. } => Protocol::Mariadb,
        }
    }

    /// Where the plaintext goes.
    pub fn upstream(&self) -> Upstream {
        match self {
            Self::Tcp { upstream } | Self::Mariadb { upstream } => upstream.clone(),
            Self::Grpc { upstream, .. } | Self::Http { upstream } => {
                Upstream::Tcp(upstream.clone())
            }
        }
    }

    /// ALPN protocols offered to peers.
    fn alpn(&self) -> Vec<Vec<u8>> {
        match self {
            Self::Grpc { .. } => vec![b"h2".to_vec()],
            Self::Http { .. } => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Self::Tcp { .. } | Self::Mariadb { .. } => Vec::new(),
        }
    }
}

impl ListenerConfig {
    pub fn direction(&self) -> Direction {
        match self.side {
            Side::Inbound(_) => Direction::Inbound,
            Side::Outbound(_) => Direction::Outbound,
        }
    }

    pub fn protocol(&self) -> Protocol {
        match &self.side {
            Side::Inbound(inbound) => inbound.mode.protocol(),
            Side::Outbound(outbound) => outbound.protocol.into(),
        }
    }

    /// Where the listener forwards: the local daemon (inbound) or the
    /// remote host (outbound). For logs, status and pool keys.
    pub fn upstream(&self) -> Upstream {
        match &self.side {
            Side::Inbound(inbound) => inbound.mode.upstream(),
            Side::Outbound(outbound) => Upstream::Tcp(outbound.remote.clone()),
        }
    }

    /// `allow_roles` (inbound) or `expect_roles` (outbound), with the key
    /// that set it.
    pub fn roles(&self) -> (&'static str, Option<&BTreeSet<String>>) {
        match &self.side {
            Side::Inbound(inbound) => ("allow_roles", inbound.allow_roles.as_ref()),
            Side::Outbound(outbound) => ("expect_roles", outbound.expect_roles.as_ref()),
        }
    }

    /// The per-method rules of an inbound grpc listener; none elsewhere.
    pub fn routes(&self) -> &[RouteRule] {
        match &self.side {
            Side::Inbound(Inbound {
                mode: InboundMode::Grpc { routes, .. },
                ..
            }) => routes,
            _ => &[],
        }
    }
}

/// One section of the configuration, as reloads report and classify it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    Identity,
    TrustDomain(String),
    Inventory,
    /// `admin.*`: restart only.
    Admin,
    Tls,
    Shutdown,
    /// `reload.*` but `audit_log`.
    Reload,
    /// `reload.audit_log`: restart only.
    AuditLog,
    Expiry,
    Metrics,
    Peers,
    /// `runtime.*`: restart only.
    Runtime,
    /// `state_dir`: restart only.
    StateDir,
    /// `bootstrap.*`: restart only.
    Bootstrap,
    /// One `[[inbound]]` or `[[outbound]]` by name; its direction and
    /// protocol are restart only, the rest applies live.
    Listener(String),
}

impl Section {
    /// Whether every change to this section needs a restart.
    pub fn restart_only(&self) -> bool {
        matches!(
            self,
            Self::Admin | Self::AuditLog | Self::Runtime | Self::StateDir | Self::Bootstrap
        )
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity => f.write_str("identity"),
            Self::TrustDomain(name) => write!(f, "trust_domains.{name}"),
            Self::Inventory => f.write_str("inventory"),
            Self::Admin => f.write_str("admin"),
            Self::Tls => f.write_str("tls"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::Reload => f.write_str("reload"),
            Self::AuditLog => f.write_str("reload.audit_log"),
            Self::Expiry => f.write_str("expiry"),
            Self::Metrics => f.write_str("metrics"),
            Self::Peers => f.write_str("peers"),
            Self::Runtime => f.write_str("runtime"),
            Self::StateDir => f.write_str("state_dir"),
            Self::Bootstrap => f.write_str("bootstrap"),
            Self::Listener(name) => write!(f, "listener.{name}"),
        }
    }
}

impl std::str::FromStr for Section {
    type Err = UnknownSection;

    /// Reads what [`Display`](fmt::Display) writes.
    fn from_str(text: &str) -> Result<Self, UnknownSection> {
        let section = match text {
            "identity" => Self::Identity,
            "inventory" => Self::Inventory,
            "admin" => Self::Admin,
            "tls" => Self::Tls,
            "shutdown" => Self::Shutdown,
            "reload" => Self::Reload,
            "reload.audit_log" => Self::AuditLog,
            "expiry" => Self::Expiry,
            "metrics" => Self::Metrics,
            "peers" => Self::Peers,
            "runtime" => Self::Runtime,
            "state_dir" => Self::StateDir,
            "bootstrap" => Self::Bootstrap,
            _ => match text.split_once('.') {
                Some(("trust_domains", name)) => Self::TrustDomain(name.to_owned()),
                Some(("listener", name)) => Self::Listener(name.to_owned()),
                _ => return Err(UnknownSection(text.to_owned())),
            },
        };
        Ok(section)
    }
}

/// A configuration section name this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown configuration section '{0}'")]
pub struct UnknownSection(pub String);

/// Why a configuration could not be used. The library's error is each
/// variant's source, not part of its message: `{:#}` (and
/// [`WithCauses`](crate::error_chain::WithCauses)) print the chain, so it
/// appears once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a value the environment overrides cannot hold.
    #[error("{path}: cannot parse")]
    Parse {
        path: PathBuf,
        #[source]
        source: config::ConfigError,
    },
    #[error("{}", DisplayProblems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key's dotted path, e.g. `inbound[1].listen`.
    pub key: String,
    pub message: String,
    /// The environment variable that set this key, if one did.
    pub from_env: Option<String>,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(var) = &self.from_env {
            write!(f, " (set by environment variable {var})")?;
        }
        Ok(())
    }
}

struct DisplayProblems<'a>(&'a Path, &'a [ConfigProblem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DisplayProblems(path, problems) = self;
        match problems {
            [one] => write!(f, "{}: {one}", path.display()),
            many => {
                write!(f, "{}: {} problems:", path.display(), many.len())?;
                for problem in *many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl Config {
    /// Loads `path`, applying overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Loads `path` with overrides taken from `env` (for tests and for
    /// callers that filter the environment).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, env)
    }

    /// Parses `text` as if it were the contents of `path`.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        validate::parse(path, text, env)
    }

    /// Every file whose change should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.source.clone(), self.identity.cert.clone()];
        files.extend(self.identity.key.watched_file().map(Path::to_owned));
        files.extend(
            self.trust_domains
                .values()
                .flat_map(|d| d.bundle.iter().chain(d.crl.iter()).cloned()),
        );
        files.extend(self.inventory.iter().cloned());
        files
    }

    /// Takes what `next` may change while running and keeps the rest of
    /// `self`. Returns the configuration to run with and, for each change
    /// that only a restart can apply, its section and what to tell the
    /// operator.
    pub fn apply_live(&self, next: Config) -> (Config, Vec<(Section, String)>) {
        let mut effective = next;
        let mut refused = Vec::new();
        let restart = "cannot change while running; restart mtlsd to apply it";
        if effective.admin_listen != self.admin_listen
            || effective.admin_tls != self.admin_tls
            || effective.admin_socket != self.admin_socket
        {
            refused.push((
                Section::Admin,
                format!(
                    "admin.listen, admin.socket, admin.tls, admin.trust_domain, \
                     admin.allow_roles: {restart}"
                ),
            ));
            effective.admin_listen = self.admin_listen;
            effective.admin_tls = self.admin_tls.clone();
            effective.admin_socket = self.admin_socket.clone();
        }
        if effective.worker_threads != self.worker_threads {
            refused.push((
                Section::Runtime,
                format!("runtime.worker_threads: {restart}"),
            ));
            effective.worker_threads = self.worker_threads;
        }
        if effective.state_dir != self.state_dir {
            refused.push((Section::StateDir, format!("state_dir: {restart}")));
            effective.state_dir = self.state_dir.clone();
        }
        if effective.bootstrap != self.bootstrap {
            refused.push((
                Section::Bootstrap,
                format!(
                    "bootstrap.listen, bootstrap.requests_per_minute, bootstrap.max_connections, \
                     bootstrap.domains: {restart}"
                ),
            ));
            effective.bootstrap = self.bootstrap.clone();
        }
        if effective.reload.audit_log != self.reload.audit_log {
            refused.push((Section::AuditLog, format!("reload.audit_log: {restart}")));
            effective.reload.audit_log = self.reload.audit_log.clone();
        }
        for listener in &mut effective.listeners {
            let Some(old) = self.listeners().find(|l| l.name == listener.name) else {
                continue;
            };
            if old.direction() != listener.direction() || old.protocol() != listener.protocol() {
                refused.push((
                    Section::Listener(listener.name.clone()),
                    format!(
                        "listener '{}': direction and protocol cannot change while running \
                         (kept {} {}); restart mtlsd, or give the new listener a new name to \
                         replace it",
                        listener.name,
                        old.direction(),
                        old.protocol().as_str()
                    ),
                ));
                *listener = old.clone();
            }
        }
        (effective, refused)
    }

    /// Every section of the configuration with a fingerprint of its
    /// validated value: two configs differ in a section exactly when its
    /// fingerprints differ (comments and formatting do not count).
    pub fn sections(&self) -> BTreeMap<Section, Fingerprint> {
        let fp = |value: &dyn fmt::Debug| Fingerprint::of(format!("{value:?}").as_bytes());
        let mut sections = BTreeMap::new();
        sections.insert(Section::Identity, fp(&self.identity));
        for (name, domain) in &self.trust_domains {
            sections.insert(Section::TrustDomain(name.clone()), fp(domain));
        }
        sections.insert(Section::Inventory, fp(&self.inventory));
        sections.insert(
            Section::Admin,
            fp(&(self.admin_listen, &self.admin_tls, &self.admin_socket)),
        );
        sections.insert(Section::Tls, fp(&self.allow_tls12));
        sections.insert(Section::Shutdown, fp(&self.drain_timeout));
        let mut reload = self.reload.clone();
        reload.audit_log = PathBuf::new();
        sections.insert(Section::Reload, fp(&reload));
        sections.insert(Section::AuditLog, fp(&self.reload.audit_log));
        sections.insert(Section::Expiry, fp(&self.expiry));
        sections.insert(Section::Metrics, fp(&self.metrics));
        sections.insert(Section::Peers, fp(&self.peers));
        sections.insert(Section::Runtime, fp(&self.worker_threads));
        sections.insert(Section::StateDir, fp(&self.state_dir));
        sections.insert(Section::Bootstrap, fp(&self.bootstrap));
        for listener in self.listeners() {
            sections.insert(Section::Listener(listener.name.clone()), fp(listener));
        }
        sections
    }

    /// Every listener, inbound first.
    pub fn listeners(&self) -> impl Iterator<Item = &ListenerConfig> {
        self.listeners.iter()
    }

    /// Roles named by a listener (`allow_roles`, `expect_roles`, a route)
    /// or the admin endpoint that no host of `inventory` holds: almost
    /// always a typo that locks every peer out of that rule. One sentence
    /// each, naming the listener, the rule and the role.
    pub fn role_warnings(&self, inventory: &mtlsd_reload::RoleInventory) -> Vec<String> {
        let held = inventory.roles_held();
        let mut warnings = Vec::new();
        let mut check = |place: String, rule: &str, roles: &BTreeSet<String>| {
            for role in roles.iter().filter(|r| !held.contains(r.as_str())) {
                warnings.push(format!(
                    "{place}: {rule} names role '{role}', which no host of the inventory {} holds",
                    inventory.path().display()
                ));
            }
        };
        for listener in self
            .listeners()
            .filter(|l| l.trust_domain == self.identity.trust_domain)
        {
            let place = format!("listener '{}'", listener.name);
            if let (rule, Some(roles)) = listener.roles() {
                check(place.clone(), rule, roles);
            }
            for route in listener.routes() {
                check(
                    place.clone(),
                    &format!("route {}", route.path),
                    &route.allow_roles,
                );
            }
        }
        if let Some(admin) = &self.admin_tls
            && admin.trust_domain == self.identity.trust_domain
            && let Some(roles) = &admin.roles
        {
            check("admin".to_owned(), "allow_roles", roles);
        }
        warnings
    }

    /// What the `reload` crate must load for this configuration.
    pub fn material_spec(&self) -> MaterialSpec {
        MaterialSpec {
            identity: IdentitySpec {
                cert: self.identity.cert.clone(),
                key: self.identity.key.clone(),
                trust_domain: self.identity.trust_domain.clone(),
                host: self.identity.host.clone(),
                insecure_key_permissions: self.identity.insecure_key_permissions,
            },
            inventory: self.inventory.clone(),
            trust_domains: self
                .trust_domains
                .iter()
                .map(|(name, domain)| TrustDomainSpec {
                    name: name.clone(),
                    bundle: domain.bundle.clone(),
                    version: domain.version.clone(),
                    crl: domain.crl.clone(),
                    crl_unknown_status: domain.crl_unknown_status,
                    pinned: domain.sha256.clone(),
                })
                .collect(),
            settings: TlsSettings {
                allow_tls12: self.allow_tls12,
            },
            uses: self
                .listeners()
                .map(|listener| TlsUse {
                    name: listener.name.clone(),
                    trust_domain: listener.trust_domain.clone(),
                    side: match &listener.side {
                        Side::Inbound(inbound) => TlsSide::Server {
                            client_auth: inbound.client_auth,
                            alpn: inbound.mode.alpn(),
                        },
                        Side::Outbound(outbound) => TlsSide::Client {
                            alpn: match outbound.protocol {
                                OutboundProtocol::Grpc => vec![b"h2".to_vec()],
                                OutboundProtocol::Tcp | OutboundProtocol::Mariadb => Vec::new(),
                            },
                            verify: outbound.server_verify,
                            present_certificate: outbound.present_certificate,
                        },
                    },
                    policy: PeerPolicy {
                        identify: listener.trust_domain == self.identity.trust_domain,
                        roles: listener.roles().1.cloned(),
                        routes: listener.routes().to_vec(),
                        // L7 inbound listeners answer a role refusal with a
                        // protocol-level error (gRPC status, HTTP 403), so
                        // their handshake only identifies the peer.
                        roles_per_request: matches!(
                            &listener.side,
                            Side::Inbound(Inbound {
                                mode: InboundMode::Grpc { .. } | InboundMode::Http { .. },
                                ..
                            })
                        ),
                        also_host: None,
                    },
                })
                .chain(self.admin_tls.as_ref().map(|admin| TlsUse {
                    name: ADMIN_TLS_USE.to_owned(),
                    trust_domain: admin.trust_domain.clone(),
                    side: TlsSide::Server {
                        client_auth: ClientAuth::Required,
                        alpn: vec![b"http/1.1".to_vec()],
                    },
                    policy: PeerPolicy {
                        identify: admin.trust_domain == self.identity.trust_domain,
                        roles: admin.roles.clone(),
                        routes: Vec::new(),
                        roles_per_request: false,
                        also_host: self.identity.host.clone(),
                    },
                }))
                .chain(self.bootstrap.as_ref().map(|_| TlsUse {
                    name: BOOTSTRAP_TLS_USE.to_owned(),
                    trust_domain: self.identity.trust_domain.clone(),
                    side: TlsSide::Server {
                        // Whoever fetches cannot have a certificate yet;
                        // what is served is public.
                        client_auth: ClientAuth::None,
                        alpn: vec![b"http/1.1".to_vec()],
                    },
                    policy: PeerPolicy::default(),
                }))
                .collect(),
        }
    }

    /// Settings in force that weaken one of mtlsd's guarantees, one line
    /// each: warned at start-up and after every reload that applies, so
    /// they never go unnoticed in the log.
    pub fn insecure_settings(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.identity.insecure_key_permissions {
            found.push(
                "identity.insecure_key_permissions is on: a group- or world-readable private key \
                 is accepted"
                    .to_owned(),
            );
        }
        for listener in self.listeners() {
            let name = &listener.name;
            match &listener.side {
                Side::Outbound(outbound) => {
                    if !listener.listen.ip().is_loopback() {
                        found.push(format!(
                            "listener '{name}': insecure_allow_remote_clients is on: it accepts \
                             plaintext from the network and dials out with this host's identity"
                        ));
                    }
                    if outbound.server_verify == ServerVerification::InsecureNone {
                        found.push(format!(
                            "listener '{name}': insecure_skip_verify is on: the server's \
                             certificate is not checked at all"
                        ));
                    }
                }
                Side::Inbound(inbound) => {
                    if let Upstream::Tcp(addr) = inbound.mode.upstream()
                        && !validate::is_loopback_host(&addr.host)
                    {
                        found.push(format!(
                            "listener '{name}': insecure_remote_upstream is on: plaintext to \
                             {addr} crosses the network"
                        ));
                    }
                }
            }
        }
        found
    }

    /// What `mtlsd status`/`reload` load to talk to an mTLS admin endpoint:
    /// this host's identity, as a client of the admin trust domain.
    pub fn admin_client_spec(&self) -> Option<MaterialSpec> {
        let admin = self.admin_tls.as_ref()?;
        let mut spec = self.material_spec();
        spec.uses = vec![TlsUse {
            name: ADMIN_CLIENT_TLS_USE.to_owned(),
            trust_domain: admin.trust_domain.clone(),
            side: TlsSide::Client {
                alpn: vec![b"http/1.1".to_vec()],
                verify: ServerVerification::Full,
                present_certificate: true,
            },
            policy: PeerPolicy::default(),
        }];
        Some(spec)
    }
}
