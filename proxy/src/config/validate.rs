//! From the raw tree to a typed [`Config`], collecting every problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::ServerName;

use super::raw::{OneOrMany, RawConfig, RawListener};
use mtlsd_expiry::Fingerprint;

use super::{
    AdminTls, BootstrapConfig, CLI_ENV_VARS, ClientAuth, Config, ConfigError, ConfigProblem,
    CrlUnknownStatus, Direction, ENV_PREFIX, ExpiryConfig, HostPort, IdentityConfig, Inbound,
    InboundMode, KeySource, ListenerConfig, MethodPattern, MetricsConfig, Outbound,
    OutboundProtocol, PeersConfig, PinSource, Pkcs11Uri, Protocol, ReloadConfig, RouteRule,
    ServerVerification, Side, Timeouts, TokenKeySpec, TrustDomainConfig, Upstream,
};

use super::{ADMIN_SOCKET_NAME, DEFAULT_ADMIN_LISTEN, MAX_SOCKET_PATH};
const DEFAULT_STATE_DIR: &str = "/var/lib/mtlsd";
const DEFAULT_TRUST_DOMAIN: &str = "mesh";
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// See `Config::worker_threads` for why one.
const DEFAULT_WORKER_THREADS: usize = 1;
const MAX_WORKER_THREADS: u64 = 64;
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
const DEFAULT_RELOAD_SETTLE: Duration = Duration::from_millis(250);
const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);
/// A join fetches one bundle (and perhaps the index): 30 a minute leaves
/// room for retries and a few hosts behind one address.
const DEFAULT_BOOTSTRAP_REQUESTS_PER_MINUTE: u32 = 30;
const MAX_BOOTSTRAP_REQUESTS_PER_MINUTE: u64 = 60_000;
const DEFAULT_BOOTSTRAP_MAX_CONNECTIONS: usize = 64;
const MAX_BOOTSTRAP_CONNECTIONS: u64 = 10_000;

pub(super) fn parse(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let runtime_dir = runtime_directory(&env);
    let overrides: config::Map<String, String> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !CLI_ENV_VARS.contains(&name.as_str()))
        .collect();
    let parse_error = |source: config::ConfigError| ConfigError::Parse {
        path: path.to_owned(),
        source,
    };
    let merged = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides.clone())),
        )
        .build()
        .map_err(parse_error)?;

    let mut v = Validator {
        problems: Vec::new(),
        base_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
        env_keys: overrides
            .keys()
            .map(|var| (env_key(var), var.clone()))
            .collect(),
        runtime_dir,
    };
    let mut unknown = Vec::new();
    let raw: RawConfig =
        match serde_ignored::deserialize(merged, |key| unknown.push(key.to_string())) {
            Ok(raw) => raw,
            // A value of the wrong type stops deserialising; report it as
            // a problem with its key, like every other.
            Err(e) => match keyed_type_error(&e) {
                Some((key, message)) => {
                    v.problem(&key, message);
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        problems: v.problems,
                    });
                }
                None => return Err(parse_error(e)),
            },
        };

    // `pkcs11.pin` is read only to be refused by name, in validation.
    for key in unknown
        .iter()
        .map(|k| dotted(k))
        .filter(|k| k != "pkcs11.pin")
    {
        v.problem(&key, "unknown key".to_owned());
    }
    let config = v.config(path, raw);
    match config {
        Some(config) if v.problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems: v.problems,
        }),
    }
}

/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`; the first one
/// when the unit names several, colon-separated), if set to an absolute
/// path.
fn runtime_directory(env: &[(String, String)]) -> Option<PathBuf> {
    let (_, value) = env.iter().find(|(name, _)| name == "RUNTIME_DIRECTORY")?;
    let first = value.split(':').next()?;
    let path = Path::new(first);
    path.is_absolute().then(|| path.to_owned())
}

/// The key and the complaint of a type error (`max_connections = "x"`),
/// with the key written as the file reads (`inbound[0].max_connections`;
/// the config crate joins an index and the next key without a dot).
fn keyed_type_error(error: &config::ConfigError) -> Option<(String, String)> {
    let (key, message) = match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => (
            key,
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => (key, error.to_string()),
        _ => return None,
    };
    let mut dotted = String::with_capacity(key.len() + 4);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '.' && c != '[' {
            dotted.push('.');
        }
        after_index = c == ']';
        dotted.push(c);
    }
    Some((dotted, message))
}

/// `MTLSD_TRUST_DOMAINS__MESH__VERSION` → `trust_domains.mesh.version`.
fn env_key(var: &str) -> String {
    var[ENV_PREFIX.len()..].to_lowercase().replace("__", ".")
}

/// serde_ignored writes sequence indices as plain segments (`inbound.0.x`)
/// and `Option` layers as `?`; show keys the way the file reads
/// (`inbound[0].x`, `admin.listen`).
fn dotted(path: &str) -> String {
    let mut out = String::new();
    for segment in path.split('.').filter(|s| *s != "?") {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Where a listener sits in the file: `inbound[2]`.
#[derive(Debug, Clone, Copy)]
struct ListenerKey {
    direction: Direction,
    index: usize,
}

impl ListenerKey {
    fn key(&self, field: &str) -> String {
        format!("{self}.{field}")
    }
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.direction, self.index)
    }
}

/// What a listener's validation needs from the rest of the file.
struct ListenerScope<'a> {
    trust_domains: &'a BTreeMap<String, TrustDomainConfig>,
    identity_domain: &'a str,
    has_inventory: bool,
}

struct Validator {
    problems: Vec<ConfigProblem>,
    base_dir: PathBuf,
    env_keys: HashMap<String, String>,
    /// `$RUNTIME_DIRECTORY`: where `admin.socket` defaults to.
    runtime_dir: Option<PathBuf>,
}

impl Validator {
    fn problem(&mut self, key: &str, message: String) {
        let from_env = self.env_keys.get(key).cloned();
        self.problems.push(ConfigProblem {
            key: key.to_owned(),
            message,
            from_env,
        });
    }

    fn required<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.problem(key, "is required".to_owned());
        }
        value
    }

    fn path(&mut self, key: &str, value: Option<String>) -> Option<PathBuf> {
        let value = self.required(key, value)?;
        if value.trim().is_empty() {
            self.problem(key, "must not be empty".to_owned());
            return None;
        }
        Some(self.base_dir.join(value))
    }

    fn duration(&mut self, key: &str, value: Option<String>, default: Duration) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match humantime::parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.problem(key, "must be greater than zero".to_owned());
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "{text:?} is not a duration ({e}); write e.g. \"10s\", \"500ms\", \"5m\""
                    ),
                );
                default
            }
        }
    }

    fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    key,
                    format!(
                        "{text:?} is not an IP:port address (e.g. 127.0.0.1:7443 or [::1]:7443; \
                         host names are not accepted here)"
                    ),
                );
                None
            }
        }
    }

    /// The whole file, section by section; every section is checked even
    /// when an earlier one failed, so all problems come out at once.
    fn config(&mut self, path: &Path, raw: RawConfig) -> Option<Config> {
        let trust_domains = self.trust_domains(raw.trust_domains);
        let identity = self.identity(raw.identity.unwrap_or_default(), raw.pkcs11, &trust_domains);
        let inventory = raw
            .inventory
            .and_then(|inv| self.path("inventory.path", inv.path));
        if inventory.is_some() && identity.as_ref().is_some_and(|i| i.host.is_none()) {
            self.problem(
                "identity.host",
                "is required with [inventory]: this host's name in the inventory".to_owned(),
            );
        }
        let identity_domain = identity
            .as_ref()
            .map(|i| i.trust_domain.clone())
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        let scope = ListenerScope {
            trust_domains: &trust_domains,
            identity_domain: &identity_domain,
            has_inventory: inventory.is_some(),
        };
        let mut raw_admin = raw.admin.unwrap_or_default();
        let admin_socket = self.admin_socket(raw_admin.socket.take());
        let (admin_listen, admin_tls) = self.admin(raw_admin, &scope);
        let allow_tls12 = self.allow_tls12(raw.tls.and_then(|t| t.min_version).as_deref());
        let drain_timeout = self.duration(
            "shutdown.drain_timeout",
            raw.shutdown.and_then(|s| s.drain_timeout),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let worker_threads = self.worker_threads(raw.runtime.and_then(|r| r.worker_threads));
        let state_dir = self
            .path(
                "state_dir",
                Some(
                    raw.state_dir
                        .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned()),
                ),
            )
            .unwrap_or_default();
        let reload = self.reload(raw.reload.unwrap_or_default(), &state_dir);
        let expiry = self.expiry(raw.expiry.unwrap_or_default());
        let metrics = MetricsConfig {
            per_peer: raw.metrics.and_then(|m| m.per_peer).unwrap_or(false),
        };
        let peers = self.peers(raw.peers.unwrap_or_default());
        let listeners = self.listeners(raw.inbound, raw.outbound, &scope);
        let bootstrap = self.bootstrap(raw.bootstrap, &scope);
        if let Some(bootstrap) = &bootstrap
            && bootstrap.listen.port() != 0
        {
            let taken = if admin_listen == Some(bootstrap.listen) {
                Some("admin.listen".to_owned())
            } else {
                listeners
                    .iter()
                    .find(|l| l.listen == bootstrap.listen)
                    .map(|l| format!("listener '{}'", l.name))
            };
            if let Some(taken) = taken {
                self.problem(
                    "bootstrap.listen",
                    format!(
                        "{} is already used by {taken}; the bootstrap endpoint needs its own port",
                        bootstrap.listen
                    ),
                );
            }
        }

        Some(Config {
            source: path.to_owned(),
            identity: identity?,
            trust_domains,
            inventory,
            admin_listen: admin_listen?,
            admin_tls,
            admin_socket,
            allow_tls12,
            drain_timeout,
            worker_threads,
            state_dir,
            reload,
            expiry,
            metrics,
            peers,
            listeners,
            bootstrap,
        })
    }

    /// `[trust_domains.NAME]`: at least one, each with a bundle.
    fn trust_domains(
        &mut self,
        raw: BTreeMap<String, super::raw::RawTrustDomain>,
    ) -> BTreeMap<String, TrustDomainConfig> {
        if raw.is_empty() {
            self.problem(
                "trust_domains",
                "at least one trust domain is required, e.g. [trust_domains.mesh] \
                 with bundle = \"/etc/mtlsd/tls/mesh-ca.pem\""
                    .to_owned(),
            );
        }
        raw.into_iter()
            .map(|(name, domain)| {
                let domain = self.trust_domain(&name, domain);
                (name, domain)
            })
            .collect()
    }

    fn trust_domain(
        &mut self,
        name: &str,
        domain: super::raw::RawTrustDomain,
    ) -> TrustDomainConfig {
        let key = format!("trust_domains.{name}");
        if !is_domain_name(name) {
            self.problem(
                &key,
                "trust domain names use lowercase letters, digits, '-' and '_'".to_owned(),
            );
        }
        let bundle = match domain.bundle {
            None => {
                self.problem(&format!("{key}.bundle"), "is required".to_owned());
                Vec::new()
            }
            Some(OneOrMany::One(one)) => vec![one],
            Some(OneOrMany::Many(many)) => many,
        };
        if bundle.is_empty() {
            self.problem(
                &format!("{key}.bundle"),
                "must name at least one PEM file".to_owned(),
            );
        }
        let bundle = bundle
            .into_iter()
            .filter_map(|p| self.path(&format!("{key}.bundle"), Some(p)))
            .collect();
        let crl = match domain.crl {
            None => Vec::new(),
            Some(OneOrMany::One(one)) => vec![one],
            Some(OneOrMany::Many(many)) => many,
        }
        .into_iter()
        .filter_map(|p| self.path(&format!("{key}.crl"), Some(p)))
        .collect();
        let crl_unknown_status = match domain.crl_unknown_status.as_deref() {
            None | Some("allow") => CrlUnknownStatus::Allow,
            Some("deny") => CrlUnknownStatus::Deny,
            Some(other) => {
                self.problem(
                    &format!("{key}.crl_unknown_status"),
                    format!("{other:?} is not one of \"allow\", \"deny\""),
                );
                CrlUnknownStatus::Allow
            }
        };
        let sha256 = domain
            .sha256
            .map(|list| self.pinned_cas(&format!("{key}.sha256"), list));
        TrustDomainConfig {
            bundle,
            version: domain.version,
            crl,
            crl_unknown_status,
            sha256,
        }
    }

    /// `trust_domains.NAME.sha256`: one SHA-256 per CA the bundle may
    /// hold, as `sha256sum` or `openssl x509 -fingerprint -sha256` write it.
    fn pinned_cas(&mut self, key: &str, list: Vec<String>) -> Vec<Fingerprint> {
        if list.is_empty() {
            self.problem(
                key,
                "an empty list would refuse every CA; list the SHA-256 of each CA the bundle \
                 may hold, or remove the key to not pin the bundle"
                    .to_owned(),
            );
        }
        let mut pinned = Vec::new();
        for (index, text) in list.iter().enumerate() {
            match Fingerprint::from_hex(text) {
                Some(fp) if pinned.contains(&fp) => self.problem(
                    &format!("{key}[{index}]"),
                    format!("{text:?} is listed twice"),
                ),
                Some(fp) => pinned.push(fp),
                None => self.problem(
                    &format!("{key}[{index}]"),
                    format!(
                        "{text:?} is not a SHA-256: 64 hex digits, colons allowed (what \
                         `openssl x509 -outform DER | sha256sum` and `mtlsd inspect` print)"
                    ),
                ),
            }
        }
        pinned
    }

    /// `[bootstrap]`: off unless present; then `listen` is required.
    fn bootstrap(
        &mut self,
        raw: Option<super::raw::RawBootstrap>,
        scope: &ListenerScope<'_>,
    ) -> Option<BootstrapConfig> {
        let raw = raw?;
        let listen = match raw.listen {
            Some(text) => self.socket_addr("bootstrap.listen", &text),
            None => {
                self.problem(
                    "bootstrap.listen",
                    "is required with [bootstrap] (remove the section to turn the endpoint \
                     off)"
                        .to_owned(),
                );
                None
            }
        };
        let requests_per_minute = match raw.requests_per_minute {
            None => DEFAULT_BOOTSTRAP_REQUESTS_PER_MINUTE,
            Some(n @ 1..=MAX_BOOTSTRAP_REQUESTS_PER_MINUTE) => {
                u32::try_from(n).unwrap_or(DEFAULT_BOOTSTRAP_REQUESTS_PER_MINUTE)
            }
            Some(n) => {
                self.problem(
                    "bootstrap.requests_per_minute",
                    format!("{n} is out of range (1 to {MAX_BOOTSTRAP_REQUESTS_PER_MINUTE})"),
                );
                DEFAULT_BOOTSTRAP_REQUESTS_PER_MINUTE
            }
        };
        let max_connections = match raw.max_connections {
            None => DEFAULT_BOOTSTRAP_MAX_CONNECTIONS,
            Some(n @ 1..=MAX_BOOTSTRAP_CONNECTIONS) => {
                usize::try_from(n).unwrap_or(DEFAULT_BOOTSTRAP_MAX_CONNECTIONS)
            }
            Some(n) => {
                self.problem(
                    "bootstrap.max_connections",
                    format!("{n} is out of range (1 to {MAX_BOOTSTRAP_CONNECTIONS})"),
                );
                DEFAULT_BOOTSTRAP_MAX_CONNECTIONS
            }
        };
        let domains = raw.domains.map(|list| {
            if list.is_empty() {
                self.problem(
                    "bootstrap.domains",
                    "an empty list serves nothing; name the trust domains to serve, or remove \
                     the key to serve every one"
                        .to_owned(),
                );
            }
            for (index, name) in list.iter().enumerate() {
                if !scope.trust_domains.is_empty() && !scope.trust_domains.contains_key(name) {
                    self.problem(
                        &format!("bootstrap.domains[{index}]"),
                        format!("trust domain '{name}' is not defined under [trust_domains]"),
                    );
                }
            }
            list.into_iter().collect()
        });
        Some(BootstrapConfig {
            listen: listen?,
            requests_per_minute,
            max_connections,
            domains,
        })
    }

    /// `admin.socket`: the control socket's path (relative to the config
    /// file's directory), default `$RUNTIME_DIRECTORY/admin.sock`, else off.
    fn admin_socket(&mut self, raw: Option<String>) -> Option<PathBuf> {
        const KEY: &str = "admin.socket";
        let path = match raw {
            None => self.runtime_dir.as_ref()?.join(ADMIN_SOCKET_NAME),
            Some(text) if text.trim().is_empty() => {
                self.problem(KEY, "must not be empty".to_owned());
                return None;
            }
            Some(text) => self.base_dir.join(text),
        };
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            self.problem(
                KEY,
                format!(
                    "{} is {len} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH}",
                    path.display()
                ),
            );
            return None;
        }
        if path.file_name().is_none() || path.as_os_str().to_string_lossy().ends_with('/') {
            self.problem(
                KEY,
                format!(
                    "{} names no file (the socket's own name is missing)",
                    path.display()
                ),
            );
            return None;
        }
        Some(path)
    }

    /// `[admin]`: where the endpoint listens and, with `tls = true`, who
    /// may read it.
    fn admin(
        &mut self,
        admin: super::raw::RawAdmin,
        scope: &ListenerScope<'_>,
    ) -> (Option<SocketAddr>, Option<AdminTls>) {
        let admin_listen = {
            let text = admin
                .listen
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
            self.socket_addr("admin.listen", &text)
        };
        let admin_domain = admin
            .trust_domain
            .unwrap_or_else(|| scope.identity_domain.to_owned());
        if !scope.trust_domains.is_empty() && !scope.trust_domains.contains_key(&admin_domain) {
            self.problem(
                "admin.trust_domain",
                format!("trust domain '{admin_domain}' is not defined under [trust_domains]"),
            );
        }
        let admin_tls = if admin.tls.unwrap_or(false) {
            let roles = match admin.allow_roles {
                Some(list) => Some(self.roles("admin.allow_roles", list, scope.has_inventory)),
                // Without an inventory there are no roles: any certificate
                // of the trust domain may read the admin endpoint.
                None if scope.has_inventory => Some(BTreeSet::from(["monitoring".to_owned()])),
                None => None,
            };
            Some(AdminTls {
                trust_domain: admin_domain,
                roles,
            })
        } else {
            if admin.allow_roles.is_some() {
                self.problem(
                    "admin.allow_roles",
                    "only applies with admin.tls = true".to_owned(),
                );
            }
            None
        };
        (admin_listen, admin_tls)
    }

    /// `tls.min_version`: TLS 1.3 unless the operator opts into 1.2.
    fn allow_tls12(&mut self, min_version: Option<&str>) -> bool {
        match min_version {
            None | Some("1.3") => false,
            Some("1.2") => true,
            Some(other) => {
                self.problem(
                    "tls.min_version",
                    format!("{other:?} is not supported; use \"1.3\" (default) or \"1.2\""),
                );
                false
            }
        }
    }

    fn worker_threads(&mut self, raw: Option<u64>) -> usize {
        match raw {
            None => DEFAULT_WORKER_THREADS,
            Some(n @ 1..=MAX_WORKER_THREADS) => usize::try_from(n).unwrap_or(1),
            Some(n) => {
                self.problem(
                    "runtime.worker_threads",
                    format!("{n} is out of range (1 to {MAX_WORKER_THREADS})"),
                );
                DEFAULT_WORKER_THREADS
            }
        }
    }

    /// Every `[[inbound]]`, then every `[[outbound]]`; names and listen
    /// addresses unique across both.
    fn listeners(
        &mut self,
        inbound: Vec<RawListener>,
        outbound: Vec<RawListener>,
        scope: &ListenerScope<'_>,
    ) -> Vec<ListenerConfig> {
        let mut listeners = Vec::new();
        for (direction, list) in [
            (Direction::Inbound, inbound),
            (Direction::Outbound, outbound),
        ] {
            for (index, raw) in list.into_iter().enumerate() {
                let at = ListenerKey { direction, index };
                if let Some(listener) = self.listener(at, raw, scope) {
                    listeners.push((at, listener));
                }
            }
        }
        self.check_unique(&listeners);
        listeners.into_iter().map(|(_, l)| l).collect()
    }

    fn reload(&mut self, raw: super::raw::RawReload, state_dir: &Path) -> ReloadConfig {
        let interval = raw
            .interval
            .map(|text| self.duration("reload.interval", Some(text), Duration::ZERO));
        ReloadConfig {
            watch: raw.watch.unwrap_or(true),
            settle: self.duration("reload.settle", raw.settle, DEFAULT_RELOAD_SETTLE),
            interval: interval.filter(|d| !d.is_zero()),
            drain_grace: self.duration("reload.drain_grace", raw.drain_grace, DEFAULT_DRAIN_GRACE),
            audit_log: self
                .path_or_default("reload.audit_log", raw.audit_log)
                .unwrap_or_else(|| state_dir.join("audit.jsonl")),
        }
    }

    fn expiry(&mut self, raw: super::raw::RawExpiry) -> ExpiryConfig {
        let defaults = mtlsd_expiry::ExpiryWindows::default();
        let windows = mtlsd_expiry::ExpiryWindows {
            warning: self.duration("expiry.warning", raw.warning, defaults.warning),
            critical: self.duration("expiry.critical", raw.critical, defaults.critical),
        };
        if windows.critical > windows.warning {
            self.problem(
                "expiry.critical",
                "must not be longer than expiry.warning".to_owned(),
            );
        }
        ExpiryConfig {
            windows,
            check_interval: self.duration(
                "expiry.check_interval",
                raw.check_interval,
                Duration::from_secs(60),
            ),
            repeat: self.duration("expiry.repeat", raw.repeat, Duration::from_secs(24 * 3600)),
        }
    }

    /// `[peers]`: `forget_after` must outlast `stale_after`, or a quiet
    /// host would vanish from the counts instead of showing as stale.
    fn peers(&mut self, raw: super::raw::RawPeers) -> PeersConfig {
        let defaults = PeersConfig::default();
        let stale_after = self.duration("peers.stale_after", raw.stale_after, defaults.stale_after);
        let forget_after = self.duration(
            "peers.forget_after",
            raw.forget_after,
            defaults.forget_after,
        );
        if stale_after.is_zero() {
            self.problem("peers.stale_after", "must be longer than zero".to_owned());
        }
        if forget_after <= stale_after {
            self.problem(
                "peers.forget_after",
                format!(
                    "must be longer than peers.stale_after ({}): a quiet host is counted \
                     as stale before its record is forgotten",
                    humantime::format_duration(stale_after)
                ),
            );
        }
        PeersConfig {
            stale_after,
            forget_after,
        }
    }

    fn path_or_default(&mut self, key: &str, value: Option<String>) -> Option<PathBuf> {
        value.and_then(|v| self.path(key, Some(v)))
    }

    fn identity(
        &mut self,
        raw: super::raw::RawIdentity,
        pkcs11: Option<super::raw::RawPkcs11>,
        trust_domains: &BTreeMap<String, TrustDomainConfig>,
    ) -> Option<IdentityConfig> {
        let cert = self.path("identity.cert", raw.cert);
        let key = match raw.key {
            Some(text) if Pkcs11Uri::is_uri(&text) => self.token_key(&text, pkcs11),
            file => {
                if pkcs11.is_some() {
                    self.problem(
                        "pkcs11",
                        "is set, but identity.key is a key file, not a pkcs11: URI; remove \
                         [pkcs11] or name the token key in identity.key"
                            .to_owned(),
                    );
                }
                self.path("identity.key", file).map(KeySource::File)
            }
        };
        let trust_domain = raw
            .trust_domain
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        if !trust_domains.is_empty() && !trust_domains.contains_key(&trust_domain) {
            self.problem(
                "identity.trust_domain",
                format!(
                    "trust domain '{trust_domain}' is not defined under [trust_domains] \
                     (defined: {})",
                    trust_domains.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        Some(IdentityConfig {
            host: raw.host,
            cert: cert?,
            key: key?,
            trust_domain,
            insecure_key_permissions: raw.insecure_key_permissions.unwrap_or(false),
        })
    }

    /// `identity.key = "pkcs11:…"` and its `[pkcs11]`: the module, and the
    /// PIN from a file or a systemd credential, never from this file.
    fn token_key(&mut self, text: &str, raw: Option<super::raw::RawPkcs11>) -> Option<KeySource> {
        let uri = match Pkcs11Uri::parse(text) {
            Ok(uri) => Some(uri),
            Err(e) => {
                self.problem("identity.key", e.to_string());
                None
            }
        };
        let Some(raw) = raw else {
            self.problem(
                "pkcs11",
                "is required when identity.key is a pkcs11: URI: set pkcs11.module and \
                 pkcs11.pin_file or pkcs11.pin_credential"
                    .to_owned(),
            );
            return None;
        };
        let module = self.path("pkcs11.module", raw.module);
        if raw.pin.is_some() {
            self.problem(
                "pkcs11.pin",
                "the PIN must not be in the configuration; put it in a file readable only by \
                 mtlsd (pkcs11.pin_file) or a systemd credential (pkcs11.pin_credential)"
                    .to_owned(),
            );
        }
        let pin = match (raw.pin_file, raw.pin_credential) {
            (Some(file), None) => self
                .path("pkcs11.pin_file", Some(file))
                .map(PinSource::File),
            (None, Some(name)) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    self.problem(
                        "pkcs11.pin_credential",
                        format!(
                            "{name:?} is not a credential name (the NAME of systemd's \
                             LoadCredential=NAME:PATH, without '/')"
                        ),
                    );
                    None
                } else {
                    Some(PinSource::Credential(name))
                }
            }
            (Some(_), Some(_)) => {
                self.problem(
                    "pkcs11.pin_file",
                    "and pkcs11.pin_credential are both set; give the PIN one way".to_owned(),
                );
                None
            }
            (None, None) => {
                if raw.pin.is_none() {
                    self.problem(
                        "pkcs11.pin_file",
                        "or pkcs11.pin_credential is required: where mtlsd reads the token's \
                         user PIN"
                            .to_owned(),
                    );
                }
                None
            }
        };
        let timeout = self.duration(
            "pkcs11.timeout",
            raw.timeout,
            mtlsd_reload::DEFAULT_TOKEN_TIMEOUT,
        );
        let sessions = match raw.sessions {
            None => mtlsd_reload::DEFAULT_TOKEN_SESSIONS,
            Some(n) if (1..=mtlsd_reload::MAX_TOKEN_SESSIONS as u64).contains(&n) => {
                usize::try_from(n).unwrap_or(mtlsd_reload::DEFAULT_TOKEN_SESSIONS)
            }
            Some(n) => {
                self.problem(
                    "pkcs11.sessions",
                    format!(
                        "{n} is out of range (1 to {}): the token sessions that sign in \
                         parallel, each logged in on a thread of its own",
                        mtlsd_reload::MAX_TOKEN_SESSIONS
                    ),
                );
                mtlsd_reload::DEFAULT_TOKEN_SESSIONS
            }
        };
        if raw.pin.is_some() {
            return None;
        }
        Some(KeySource::Token(TokenKeySpec {
            uri: uri?,
            module: module?,
            pin: pin?,
            timeout,
            sessions,
        }))
    }

    /// One `[[inbound]]` or `[[outbound]]` entry: what both sides share
    /// here, the rest in [`Self::inbound`] or [`Self::outbound`].
    fn listener(
        &mut self,
        at: ListenerKey,
        mut raw: RawListener,
        scope: &ListenerScope<'_>,
    ) -> Option<ListenerConfig> {
        let key = |field: &str| at.key(field);
        let name = self.required(&key("name"), raw.name.take());
        if let Some(name) = &name
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            self.problem(
                &key("name"),
                format!("{name:?}: names use letters, digits, '-', '_' and '.'"),
            );
        }
        let listen = self
            .required(&key("listen"), raw.listen.take())
            .and_then(|text| self.socket_addr(&key("listen"), &text));
        let trust_domain = raw
            .trust_domain
            .take()
            .unwrap_or_else(|| scope.identity_domain.to_owned());
        if !scope.trust_domains.is_empty() && !scope.trust_domains.contains_key(&trust_domain) {
            self.problem(
                &key("trust_domain"),
                format!("trust domain '{trust_domain}' is not defined under [trust_domains]"),
            );
        }
        let timeouts = self.timeouts(&at, &mut raw);
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 || max_connections > 1_000_000 {
            self.problem(
                &key("max_connections"),
                format!("{max_connections} is out of range (1 to 1000000)"),
            );
        }
        let side = match at.direction {
            Direction::Inbound => self
                .inbound(&at, raw, scope.has_inventory)
                .map(Side::Inbound),
            Direction::Outbound => self
                .outbound(&at, raw, listen, scope.has_inventory)
                .map(Side::Outbound),
        };
        Some(ListenerConfig {
            name: name?,
            listen: listen?,
            trust_domain,
            timeouts,
            max_connections: usize::try_from(max_connections).ok()?,
            side: side?,
        })
    }

    fn timeouts(&mut self, at: &ListenerKey, raw: &mut RawListener) -> Timeouts {
        Timeouts {
            handshake: self.duration(
                &at.key("handshake_timeout"),
                raw.handshake_timeout.take(),
                DEFAULT_HANDSHAKE_TIMEOUT,
            ),
            idle: self.duration(
                &at.key("idle_timeout"),
                raw.idle_timeout.take(),
                DEFAULT_IDLE_TIMEOUT,
            ),
            connect: self.duration(
                &at.key("connect_timeout"),
                raw.connect_timeout.take(),
                DEFAULT_CONNECT_TIMEOUT,
            ),
        }
    }

    /// Names each key of `raw` that only the other side reads.
    fn other_side_keys(&mut self, at: &ListenerKey, keys: &[(&str, bool, &str)]) {
        for (field, set, why) in keys {
            if *set {
                self.problem(&at.key(field), (*why).to_owned());
            }
        }
    }

    /// An inbound listener: its protocol and upstream, who may connect.
    fn inbound(
        &mut self,
        at: &ListenerKey,
        raw: RawListener,
        has_inventory: bool,
    ) -> Option<Inbound> {
        self.other_side_keys(
            at,
            &[
                (
                    "server_name",
                    raw.server_name.is_some(),
                    "only outbound listeners dial a server name",
                ),
                (
                    "insecure_allow_remote_clients",
                    raw.insecure_allow_remote_clients.is_some(),
                    "only applies to outbound listeners",
                ),
                (
                    "server_verify",
                    raw.server_verify.is_some() || raw.insecure_skip_verify.is_some(),
                    "server verification applies to outbound listeners",
                ),
                (
                    "expect_roles",
                    raw.expect_roles.is_some(),
                    "inbound listeners use allow_roles, not expect_roles",
                ),
                (
                    "present_certificate",
                    raw.present_certificate == Some(false),
                    "only an outbound mariadb listener can withhold the host certificate; \
                     mesh peers require it",
                ),
            ],
        );
        let upstream = self
            .required(&at.key("upstream"), raw.upstream)
            .and_then(|text| self.upstream(&at.key("upstream"), &text));
        if let Some(Upstream::Tcp(addr)) = &upstream
            && !is_loopback_host(&addr.host)
            && !raw.insecure_remote_upstream.unwrap_or(false)
        {
            self.problem(
                &at.key("upstream"),
                format!(
                    "{addr} is not on loopback; an inbound listener forwards plaintext, \
                     which must not cross the network (set insecure_remote_upstream = true \
                     to override)"
                ),
            );
        }
        let protocol = self.protocol(at, raw.protocol.as_deref());
        let client_auth = self.client_auth(at, raw.client_auth.as_deref(), protocol);
        let allow_roles = raw
            .allow_roles
            .map(|list| self.roles(&at.key("allow_roles"), list, has_inventory));
        if client_auth != ClientAuth::Required && allow_roles.is_some() {
            self.problem(
                &at.key("allow_roles"),
                "needs client_auth = \"required\" (anonymous peers hold no role)".to_owned(),
            );
        }
        let routes = match raw.routes {
            Some(routes) => {
                if protocol != Some(Protocol::Grpc) {
                    self.problem(
                        &at.key("routes"),
                        "only inbound grpc listeners have routes".to_owned(),
                    );
                }
                self.routes(at, routes, has_inventory)
            }
            None => Vec::new(),
        };
        let mode = self.inbound_mode(at, protocol?, upstream?, routes)?;
        Some(Inbound {
            mode,
            allow_roles,
            client_auth,
        })
    }

    /// The protocol with what it forwards to; grpc and http need host:port.
    fn inbound_mode(
        &mut self,
        at: &ListenerKey,
        protocol: Protocol,
        upstream: Upstream,
        routes: Vec<RouteRule>,
    ) -> Option<InboundMode> {
        let mut host_port = |upstream: Upstream| match upstream {
            Upstream::Tcp(addr) => Some(addr),
            Upstream::Unix(_) => {
                self.problem(
                    &at.key("upstream"),
                    "grpc and http listeners forward to host:port; unix sockets are served \
                     by tcp listeners"
                        .to_owned(),
                );
                None
            }
        };
        Some(match protocol {
            Protocol::Tcp => InboundMode::Tcp { upstream },
            Protocol::Mariadb => InboundMode::Mariadb { upstream },
            Protocol::Grpc => InboundMode::Grpc {
                upstream: host_port(upstream)?,
                routes,
            },
            Protocol::Http => InboundMode::Http {
                upstream: host_port(upstream)?,
            },
        })
    }

    /// An outbound listener: where it dials, how it checks the server.
    fn outbound(
        &mut self,
        at: &ListenerKey,
        raw: RawListener,
        listen: Option<SocketAddr>,
        has_inventory: bool,
    ) -> Option<Outbound> {
        self.other_side_keys(
            at,
            &[
                (
                    "insecure_remote_upstream",
                    raw.insecure_remote_upstream.is_some(),
                    "only applies to inbound listeners",
                ),
                (
                    "allow_roles",
                    raw.allow_roles.is_some(),
                    "outbound listeners use expect_roles, not allow_roles",
                ),
                (
                    "client_auth",
                    raw.client_auth
                        .as_deref()
                        .is_some_and(|mode| mode != "required"),
                    "only inbound http listeners may accept peers without a certificate",
                ),
                (
                    "routes",
                    raw.routes.is_some(),
                    "only inbound grpc listeners have routes",
                ),
            ],
        );
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && !raw.insecure_allow_remote_clients.unwrap_or(false)
        {
            self.problem(
                &at.key("listen"),
                format!(
                    "{addr} is not a loopback address; an outbound listener accepts \
                     plaintext and dials with this host's certificate, so it must only be \
                     reachable locally (set insecure_allow_remote_clients = true to override)"
                ),
            );
        }
        let (remote, server_name) = self.remote(at, raw.upstream, raw.server_name);
        let protocol = self.outbound_protocol(at, raw.protocol.as_deref());
        let server_verify = self.server_verify(
            at,
            raw.server_verify.as_deref(),
            raw.insecure_skip_verify.unwrap_or(false),
        );
        let expect_roles = raw
            .expect_roles
            .map(|list| self.roles(&at.key("expect_roles"), list, has_inventory));
        let present_certificate = raw.present_certificate.unwrap_or(true);
        if !present_certificate && protocol != Some(OutboundProtocol::Mariadb) {
            self.problem(
                &at.key("present_certificate"),
                "only an outbound mariadb listener can withhold the host certificate; \
                 mesh peers require it"
                    .to_owned(),
            );
        }
        Some(Outbound {
            protocol: protocol?,
            remote: remote?,
            server_name: server_name?,
            expect_roles,
            server_verify,
            present_certificate,
        })
    }

    /// Where an outbound listener dials, and the name the server's
    /// certificate must hold (the host unless `server_name` says otherwise).
    fn remote(
        &mut self,
        at: &ListenerKey,
        upstream: Option<String>,
        server_name: Option<String>,
    ) -> (Option<HostPort>, Option<ServerName<'static>>) {
        let remote = match self
            .required(&at.key("upstream"), upstream)
            .and_then(|text| self.upstream(&at.key("upstream"), &text))
        {
            Some(Upstream::Tcp(addr)) => addr,
            Some(Upstream::Unix(_)) => {
                self.problem(
                    &at.key("upstream"),
                    "an outbound listener dials a remote host; use host:port".to_owned(),
                );
                return (None, None);
            }
            None => return (None, None),
        };
        let text = server_name.unwrap_or_else(|| remote.host.clone());
        let server_name = ServerName::try_from(text.clone())
            .map_err(|_| {
                self.problem(
                    &at.key("server_name"),
                    format!("{text:?} is not a valid DNS name or IP address"),
                );
            })
            .ok();
        (Some(remote), server_name)
    }

    fn outbound_protocol(
        &mut self,
        at: &ListenerKey,
        text: Option<&str>,
    ) -> Option<OutboundProtocol> {
        match self.protocol(at, text)? {
            Protocol::Tcp => Some(OutboundProtocol::Tcp),
            Protocol::Grpc => Some(OutboundProtocol::Grpc),
            Protocol::Mariadb => Some(OutboundProtocol::Mariadb),
            Protocol::Http => {
                self.problem(
                    &at.key("protocol"),
                    "http mode is for inbound listeners (the API and exporters); carry \
                     outbound HTTP with protocol = \"tcp\""
                        .to_owned(),
                );
                None
            }
        }
    }

    /// `protocol`, either side; which side serves what is checked by the
    /// caller.
    fn protocol(&mut self, at: &ListenerKey, text: Option<&str>) -> Option<Protocol> {
        match text.unwrap_or("tcp") {
            "tcp" => Some(Protocol::Tcp),
            "grpc" => Some(Protocol::Grpc),
            "http" => Some(Protocol::Http),
            "mariadb" => Some(Protocol::Mariadb),
            other => {
                self.problem(
                    &at.key("protocol"),
                    format!("unknown protocol {other:?}; expected tcp, grpc, http or mariadb"),
                );
                None
            }
        }
    }

    fn client_auth(
        &mut self,
        at: &ListenerKey,
        text: Option<&str>,
        protocol: Option<Protocol>,
    ) -> ClientAuth {
        match (text, protocol) {
            (None | Some("required"), _) => ClientAuth::Required,
            (Some("optional"), Some(Protocol::Http)) => ClientAuth::Optional,
            (Some("none"), Some(Protocol::Http)) => ClientAuth::None,
            (Some("optional" | "none"), _) => {
                self.problem(
                    &at.key("client_auth"),
                    "only inbound http listeners may accept peers without a certificate".to_owned(),
                );
                ClientAuth::Required
            }
            (Some(other), _) => {
                self.problem(
                    &at.key("client_auth"),
                    format!("{other:?}: expected \"required\", \"optional\" or \"none\""),
                );
                ClientAuth::Required
            }
        }
    }

    fn server_verify(
        &mut self,
        at: &ListenerKey,
        text: Option<&str>,
        insecure_skip_verify: bool,
    ) -> ServerVerification {
        match (text, insecure_skip_verify) {
            (Some(_), true) => {
                self.problem(
                    &at.key("insecure_skip_verify"),
                    "contradicts server_verify; keep one".to_owned(),
                );
                ServerVerification::InsecureNone
            }
            (None, true) => ServerVerification::InsecureNone,
            (None | Some("verify_full"), false) => ServerVerification::Full,
            (Some("verify_ca"), false) => ServerVerification::CaOnly,
            (Some(other), false) => {
                self.problem(
                    &at.key("server_verify"),
                    format!("{other:?}: expected \"verify_full\" (default) or \"verify_ca\""),
                );
                ServerVerification::Full
            }
        }
    }

    /// `[[inbound.routes]]` of a grpc listener.
    fn routes(
        &mut self,
        at: &ListenerKey,
        raw: Vec<super::raw::RawRoute>,
        has_inventory: bool,
    ) -> Vec<RouteRule> {
        let mut routes = Vec::new();
        for (r, route) in raw.into_iter().enumerate() {
            let route_key = |f: &str| at.key(&format!("routes[{r}].{f}"));
            let path = self.required(&route_key("path"), route.path);
            let allow = self
                .required(&route_key("allow_roles"), route.allow_roles)
                .map(|list| self.roles(&route_key("allow_roles"), list, has_inventory));
            let parsed = path.as_deref().and_then(|p| {
                let parsed = parse_route_path(p);
                if parsed.is_none() {
                    self.problem(
                        &route_key("path"),
                        format!(
                            "{p:?}: write /package.Service/Method, \
                             /package.Service/Prefix* or /package.Service/*"
                        ),
                    );
                }
                parsed
            });
            if let (Some(path), Some((service, method)), Some(allow_roles)) = (path, parsed, allow)
            {
                routes.push(RouteRule {
                    path,
                    service,
                    method,
                    allow_roles,
                });
            }
        }
        routes
    }

    fn roles(&mut self, key: &str, list: Vec<String>, has_inventory: bool) -> BTreeSet<String> {
        if !has_inventory {
            self.problem(
                key,
                "roles come from the role inventory; set [inventory] path".to_owned(),
            );
        }
        if list.is_empty() {
            self.problem(key, "must name at least one role".to_owned());
        }
        list.into_iter().collect()
    }

    fn upstream(&mut self, key: &str, text: &str) -> Option<Upstream> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                self.problem(key, "unix: needs a socket path".to_owned());
                return None;
            }
            return Some(Upstream::Unix(self.base_dir.join(path)));
        }
        let bad = |v: &mut Self, why: &str| {
            v.problem(
                key,
                format!("{text:?} {why}; write host:port, [ipv6]:port or unix:/path"),
            );
            None
        };
        let Some((host, port)) = text.rsplit_once(':') else {
            return bad(self, "has no port");
        };
        let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => (inner, true),
            None => (host, false),
        };
        if host.is_empty() {
            return bad(self, "has no host");
        }
        if host.contains(':') && (!bracketed || host.parse::<IpAddr>().is_err()) {
            return bad(
                self,
                "has an IPv6 address that is invalid or not in brackets",
            );
        }
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return bad(self, "has an invalid port"),
            Ok(port) => port,
        };
        let addr = HostPort {
            host: host.to_owned(),
            port,
        };
        // The L7 modes put it in request URIs: it must be a URI authority.
        if addr.to_string().parse::<http::uri::Authority>().is_err() {
            return bad(self, "has a host that is not a host name or an address");
        }
        Some(Upstream::Tcp(addr))
    }

    fn check_unique(&mut self, listeners: &[(ListenerKey, ListenerConfig)]) {
        let mut names: HashMap<&str, String> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        for (at, listener) in listeners {
            let here = at.to_string();
            if let Some(first) = names.insert(&listener.name, here.clone()) {
                self.problem(
                    &format!("{here}.name"),
                    format!("{:?} is already used by {first}", listener.name),
                );
            }
            if listener.listen.port() != 0
                && let Some(first) = addrs.insert(listener.listen, here.clone())
            {
                self.problem(
                    &format!("{here}.listen"),
                    format!("{} is already used by {first}", listener.listen),
                );
            }
        }
    }
}

/// `/pkg.Service/Method`, `/pkg.Service/Prefix*` and `/pkg.Service/*`.
pub fn parse_route_path(path: &str) -> Option<(String, MethodPattern)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    let method_name = |m: &str| ident(m) && !m.contains('.');
    if !ident(service) {
        return None;
    }
    let pattern = match method {
        "*" => MethodPattern::Any,
        m => match m.strip_suffix('*') {
            Some(prefix) if method_name(prefix) => MethodPattern::Prefix(prefix.to_owned()),
            None if method_name(m) => MethodPattern::Exact(m.to_owned()),
            _ => return None,
        },
    };
    Some((service.to_owned(), pattern))
}

pub(crate) fn is_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [identity]
        host = "node1"
        cert = "tls/host.crt"
        key = "/etc/mtlsd/tls/host.key"

        [trust_domains.mesh]
        bundle = "tls/mesh-ca.pem"
        version = "2026-11"

        [trust_domains.mariadb]
        bundle = ["db-ca-old.pem", "db-ca-new.pem"]

        [[inbound]]
        name = "grpc-in"
        listen = "0.0.0.0:7443"
        upstream = "127.0.0.1:7000"
        idle_timeout = "1m"

        [[outbound]]
        name = "db-out"
        listen = "127.0.0.1:17000"
        upstream = "db1.cluster.example:7443"
        max_connections = 64
    "#;

    fn parse_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::parse(Path::new("/etc/mtlsd/mtlsd.toml"), text, env)
    }

    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<ConfigProblem> {
        match parse_str(text, env) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    /// GOOD with `identity.key` replaced and `extra` appended.
    fn with_key(key: &str, extra: &str) -> String {
        let text = GOOD.replace(
            r#"key = "/etc/mtlsd/tls/host.key""#,
            &format!("key = {key:?}"),
        );
        format!("{text}\n{extra}")
    }

    #[test]
    fn a_pkcs11_uri_key_is_read_with_its_module_pin_file_and_timeout() {
        let text = with_key(
            "pkcs11:token=mesh;object=host;id=%01;type=private",
            r#"
            [pkcs11]
            module = "/usr/lib/softhsm/libsofthsm2.so"
            pin_file = "tls/token.pin"
            timeout = "500ms"
            sessions = 4
            "#,
        );
        let config = parse_str(&text, &[]).unwrap();
        let KeySource::Token(token) = &config.identity.key else {
            panic!("{:?}", config.identity.key);
        };
        assert_eq!(token.uri.token, "mesh");
        assert_eq!(token.uri.object.as_deref(), Some("host"));
        assert_eq!(token.uri.id.as_deref(), Some(&[1u8][..]));
        assert_eq!(token.module, Path::new("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(
            token.pin,
            PinSource::File("/etc/mtlsd/tls/token.pin".into())
        );
        assert_eq!(token.timeout, Duration::from_millis(500));
        assert_eq!(token.sessions, 4);
        // The PIN file is watched in place of a key file.
        assert!(
            config
                .watched_files()
                .contains(&PathBuf::from("/etc/mtlsd/tls/token.pin"))
        );

        let text = with_key(
            "pkcs11:token=mesh;object=host",
            "[pkcs11]\nmodule = \"/m.so\"\npin_credential = \"mtlsd-pin\"\n",
        );
        let config = parse_str(&text, &[]).unwrap();
        let KeySource::Token(token) = &config.identity.key else {
            panic!("{:?}", config.identity.key);
        };
        assert_eq!(token.pin, PinSource::Credential("mtlsd-pin".to_owned()));
        assert_eq!(token.timeout, mtlsd_reload::DEFAULT_TOKEN_TIMEOUT);
        assert_eq!(token.sessions, 1);
    }

    #[test]
    fn token_sessions_are_bounded_and_named_when_wrong() {
        for good in ["1", "32"] {
            let text = with_key(
                "pkcs11:token=mesh;object=host",
                &format!("[pkcs11]\nmodule = \"/m.so\"\npin_file = \"p\"\nsessions = {good}\n"),
            );
            parse_str(&text, &[]).unwrap();
        }
        for bad in ["0", "33"] {
            let text = with_key(
                "pkcs11:token=mesh;object=host",
                &format!("[pkcs11]\nmodule = \"/m.so\"\npin_file = \"p\"\nsessions = {bad}\n"),
            );
            let found = problems(&text, &[]);
            assert_eq!(keys(&found), ["pkcs11.sessions"], "{bad}: {found:?}");
            assert!(
                found[0]
                    .message
                    .starts_with(&format!("{bad} is out of range (1 to 32)")),
                "{found:?}"
            );
        }
        // Not a number: the parser names the key too.
        let text = with_key(
            "pkcs11:token=mesh;object=host",
            "[pkcs11]\nmodule = \"/m.so\"\npin_file = \"p\"\nsessions = \"two\"\n",
        );
        let err = parse_str(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("sessions"), "{err}");
    }

    #[test]
    fn token_key_problems_name_their_field() {
        // A PIN in the file is refused by name, whatever its type.
        for pin in ["\"1234\"", "1234"] {
            let found = problems(
                &with_key(
                    "pkcs11:token=mesh;object=host",
                    &format!("[pkcs11]\nmodule = \"/m.so\"\npin = {pin}\n"),
                ),
                &[],
            );
            assert_eq!(keys(&found), ["pkcs11.pin"], "{found:?}");
            assert!(found[0].message.contains("pkcs11.pin_file"), "{found:?}");
        }
        // A bad URI, no module, and two PIN sources: all at once.
        let found = problems(
            &with_key(
                "pkcs11:token=mesh;objekt=host",
                "[pkcs11]\npin_file = \"p\"\npin_credential = \"c\"\ntimeout = \"soon\"\n",
            ),
            &[],
        );
        assert_eq!(
            keys(&found),
            [
                "identity.key",
                "pkcs11.module",
                "pkcs11.pin_file",
                "pkcs11.timeout"
            ],
            "{found:?}"
        );
        assert!(found[0].message.contains("'objekt'"), "{found:?}");
        // A URI without [pkcs11]; no PIN source; a credential name with a path.
        let found = problems(&with_key("pkcs11:token=mesh;object=host", ""), &[]);
        assert_eq!(keys(&found), ["pkcs11"], "{found:?}");
        let found = problems(
            &with_key(
                "pkcs11:token=mesh;object=host",
                "[pkcs11]\nmodule = \"/m.so\"\n",
            ),
            &[],
        );
        assert_eq!(keys(&found), ["pkcs11.pin_file"], "{found:?}");
        let found = problems(
            &with_key(
                "pkcs11:token=mesh;object=host",
                "[pkcs11]\nmodule = \"/m.so\"\npin_credential = \"../pin\"\n",
            ),
            &[],
        );
        assert_eq!(keys(&found), ["pkcs11.pin_credential"], "{found:?}");
        // [pkcs11] with a key file is a leftover, said so.
        let found = problems(&format!("{GOOD}\n[pkcs11]\nmodule = \"/m.so\"\n"), &[]);
        assert_eq!(keys(&found), ["pkcs11"], "{found:?}");
        assert!(found[0].message.contains("key file"), "{found:?}");
    }

    #[test]
    fn good_config_is_typed_with_defaults_and_resolved_paths() {
        let config = parse_str(GOOD, &[]).unwrap();
        assert_eq!(config.identity.cert, Path::new("/etc/mtlsd/tls/host.crt"));
        assert_eq!(
            config.identity.key,
            KeySource::File(PathBuf::from("/etc/mtlsd/tls/host.key"))
        );
        assert_eq!(config.identity.trust_domain, "mesh");
        assert_eq!(config.trust_domains["mariadb"].bundle.len(), 2);
        assert_eq!(
            config.trust_domains["mesh"].version.as_deref(),
            Some("2026-11")
        );
        assert_eq!(config.admin_listen, "127.0.0.1:9650".parse().unwrap());
        assert!(!config.allow_tls12);
        let inbound = &config.listeners[0];
        assert_eq!(inbound.direction(), Direction::Inbound);
        assert_eq!(inbound.timeouts.idle, Duration::from_secs(60));
        assert_eq!(inbound.timeouts.handshake, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(inbound.trust_domain, "mesh");
        let outbound = &config.listeners[1];
        assert_eq!(outbound.max_connections, 64);
        let Side::Outbound(side) = &outbound.side else {
            panic!("the second listener is outbound: {outbound:?}");
        };
        assert_eq!(
            side.server_name,
            ServerName::try_from("db1.cluster.example").unwrap()
        );
        let spec = config.material_spec();
        assert_eq!(spec.uses.len(), 2);
    }

    #[test]
    fn admin_socket_defaults_to_the_runtime_directory_else_off() {
        // Outside systemd's RuntimeDirectory=: no socket unless configured.
        assert_eq!(parse_str(GOOD, &[]).unwrap().admin_socket, None);
        let config = parse_str(GOOD, &[("RUNTIME_DIRECTORY", "/run/mtlsd")]).unwrap();
        assert_eq!(
            config.admin_socket.as_deref(),
            Some(Path::new("/run/mtlsd/admin.sock"))
        );
        // Several runtime directories: the first; a relative one is ignored.
        let config = parse_str(GOOD, &[("RUNTIME_DIRECTORY", "/run/a:/run/b")]).unwrap();
        assert_eq!(
            config.admin_socket.as_deref(),
            Some(Path::new("/run/a/admin.sock"))
        );
        assert_eq!(
            parse_str(GOOD, &[("RUNTIME_DIRECTORY", "run/x")])
                .unwrap()
                .admin_socket,
            None
        );
        // Configured: wins over the default; relative to the config file.
        let text = format!("{GOOD}\n[admin]\nsocket = \"/srv/m/ctl.sock\"\n");
        let config = parse_str(&text, &[("RUNTIME_DIRECTORY", "/run/mtlsd")]).unwrap();
        assert_eq!(
            config.admin_socket.as_deref(),
            Some(Path::new("/srv/m/ctl.sock"))
        );
        let text = format!("{GOOD}\n[admin]\nsocket = \"ctl.sock\"\n");
        assert_eq!(
            parse_str(&text, &[]).unwrap().admin_socket.as_deref(),
            Some(Path::new("/etc/mtlsd/ctl.sock"))
        );
        // And from the environment, like every key.
        let config = parse_str(GOOD, &[("MTLSD_ADMIN__SOCKET", "/run/x.sock")]).unwrap();
        assert_eq!(
            config.admin_socket.as_deref(),
            Some(Path::new("/run/x.sock"))
        );
    }

    #[test]
    fn a_bad_admin_socket_is_named() {
        for (value, says) in [
            ("\"\"", "must not be empty"),
            ("\"/run/mtlsd/\"", "names no file"),
            (&format!("\"/{}\"", "s".repeat(120)), "at most 107"),
            ("[\"/a\"]", "invalid type"),
        ] {
            let found = problems(&format!("{GOOD}\n[admin]\nsocket = {value}\n"), &[]);
            assert_eq!(keys(&found), ["admin.socket"], "{value}: {found:?}");
            assert!(found[0].message.contains(says), "{value}: {found:?}");
        }
        // A too long default (RUNTIME_DIRECTORY) is named by its key too.
        let long = format!("/{}", "r".repeat(110));
        let found = problems(GOOD, &[("RUNTIME_DIRECTORY", &long)]);
        assert_eq!(keys(&found), ["admin.socket"], "{found:?}");
        // Unknown keys next to it are still refused.
        let found = problems(&format!("{GOOD}\n[admin]\nsockett = \"/x\"\n"), &[]);
        assert_eq!(keys(&found), ["admin.sockett"], "{found:?}");
    }

    #[test]
    fn a_changed_admin_socket_needs_a_restart() {
        let old = parse_str(GOOD, &[]).unwrap();
        let text = format!("{GOOD}\n[admin]\nsocket = \"/run/m.sock\"\n");
        let next = parse_str(&text, &[]).unwrap();
        assert_ne!(old.sections(), next.sections());
        let (effective, refused) = old.apply_live(next);
        assert_eq!(effective.admin_socket, None, "kept what runs");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].1.contains("admin.socket"), "{refused:?}");
    }

    #[test]
    fn environment_overrides_nested_keys_and_is_named_in_problems() {
        let config = parse_str(
            GOOD,
            &[
                ("MTLSD_ADMIN__LISTEN", "127.0.0.1:9999"),
                ("MTLSD_TLS__MIN_VERSION", "1.2"),
                ("MTLSD_TRUST_DOMAINS__MESH__VERSION", "v7"),
                ("MTLSD_CONFIG", "/ignored/because/it/is/a/cli/flag"),
                ("OTHER_VAR", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.admin_listen, "127.0.0.1:9999".parse().unwrap());
        assert!(config.allow_tls12);
        assert_eq!(config.trust_domains["mesh"].version.as_deref(), Some("v7"));

        let found = problems(GOOD, &[("MTLSD_ADMIN__LISTEN", "nonsense")]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].from_env.as_deref(), Some("MTLSD_ADMIN__LISTEN"));
        assert!(found[0].to_string().contains("MTLSD_ADMIN__LISTEN"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            colour = "blue"
            [identity]
            cert = "a.crt"
            hots = "typo"
            trust_domain = "nope"
            [trust_domains.mesh]
            bundle = "ca.pem"
            [[inbound]]
            name = "in"
            listen = "localhost:7443"
            upstream = "10.0.0.9:7000"
            protocol = "gopher"
            idle_timeout = "soon"
            server_name = "x"
            lsiten = "typo"
            [[outbound]]
            name = "in"
            listen = "0.0.0.0:9000"
            upstream = "unix:/run/x.sock"
            max_connections = 0
        "#;
        let found = problems(text, &[]);
        let keys = keys(&found);
        for expected in [
            "colour",
            "identity.hots",
            "inbound[0].lsiten",
            "identity.key",
            "identity.trust_domain",
            "inbound[0].listen",
            "inbound[0].upstream",
            "inbound[0].protocol",
            "inbound[0].idle_timeout",
            "inbound[0].server_name",
            "outbound[0].listen",
            "outbound[0].upstream",
            "outbound[0].max_connections",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        let shown = ConfigError::Invalid {
            path: "/etc/mtlsd/mtlsd.toml".into(),
            problems: found,
        }
        .to_string();
        assert!(shown.starts_with("/etc/mtlsd/mtlsd.toml: "), "{shown}");
        assert!(shown.contains("colour: unknown key"), "{shown}");
    }

    #[test]
    fn duplicate_names_and_addresses_are_refused() {
        let text = r#"
            [identity]
            cert = "a.crt"
            key = "a.key"
            [trust_domains.mesh]
            bundle = "ca.pem"
            [[inbound]]
            name = "a"
            listen = "127.0.0.1:7443"
            upstream = "127.0.0.1:1"
            [[outbound]]
            name = "a"
            listen = "127.0.0.1:7443"
            upstream = "remote:1"
        "#;
        let found = problems(text, &[]);
        assert_eq!(keys(&found), ["outbound[0].name", "outbound[0].listen"]);
    }

    #[test]
    fn unknown_protocols_are_named() {
        let text = GOOD.replace("idle_timeout = \"1m\"", "protocol = \"smtp\"");
        let found = problems(&text, &[]);
        assert_eq!(keys(&found), ["inbound[0].protocol"]);
        assert!(
            found[0].message.contains("unknown protocol"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn only_an_outbound_mariadb_listener_can_withhold_the_certificate() {
        let mariadb = GOOD.replace(
            "max_connections = 64",
            "protocol = \"mariadb\"\ntrust_domain = \"mariadb\"\npresent_certificate = false",
        );
        let config = parse_str(&mariadb, &[]).unwrap();
        let Side::Outbound(side) = &config.listeners[1].side else {
            panic!("the second listener is outbound");
        };
        assert!(!side.present_certificate);

        let tcp = GOOD.replace("max_connections = 64", "present_certificate = false");
        let found = problems(&tcp, &[]);
        assert_eq!(keys(&found), ["outbound[0].present_certificate"]);
        assert!(found[0].message.contains("mesh peers require it"));

        let inbound = GOOD.replace("idle_timeout = \"1m\"", "present_certificate = false");
        assert_eq!(
            keys(&problems(&inbound, &[])),
            ["inbound[0].present_certificate"]
        );
    }

    #[test]
    fn insecure_settings_are_listed_by_listener() {
        assert!(parse_str(GOOD, &[]).unwrap().insecure_settings().is_empty());
        let text = GOOD
            .replace("max_connections = 64", "insecure_skip_verify = true")
            .replace(
                "upstream = \"127.0.0.1:7000\"",
                "upstream = \"10.0.0.5:7000\"\ninsecure_remote_upstream = true",
            );
        let found = parse_str(&text, &[]).unwrap().insecure_settings();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("listener 'grpc-in': insecure_remote_upstream"));
        assert!(found[1].starts_with("listener 'db-out': insecure_skip_verify"));
    }

    #[test]
    fn worker_threads_default_to_one_and_are_bounded() {
        assert_eq!(parse_str(GOOD, &[]).unwrap().worker_threads, 1);
        let four = format!("{GOOD}\n[runtime]\nworker_threads = 4\n");
        assert_eq!(parse_str(&four, &[]).unwrap().worker_threads, 4);
        for bad in ["0", "65"] {
            let text = format!("{GOOD}\n[runtime]\nworker_threads = {bad}\n");
            let found = problems(&text, &[]);
            assert_eq!(keys(&found), ["runtime.worker_threads"], "{bad}");
            assert!(found[0].message.contains("out of range"));
        }
        let old = parse_str(GOOD, &[]).unwrap();
        let (kept, refused) = old.apply_live(parse_str(&four, &[]).unwrap());
        assert_eq!(kept.worker_threads, 1);
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0]
                .1
                .starts_with("runtime.worker_threads: cannot change")
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = parse_str("[identity\ncert = 1", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert_eq!(err.to_string(), "/etc/mtlsd/mtlsd.toml: cannot parse");
        // The parser's own words are the cause, printed after it.
        let cause = std::error::Error::source(&err).unwrap();
        assert!(cause.is::<config::ConfigError>(), "{cause:?}");
        let shown = crate::error_chain::WithCauses(&err).to_string();
        assert_eq!(shown, format!("{err}: {cause}"));
        assert!(shown.contains("TOML parse error"), "{shown}");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("mtlsd.toml");
        let err = Config::load(&missing).unwrap_err();
        let cause =
            std::error::Error::source(&err).and_then(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(
            cause.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert!(
            crate::error_chain::WithCauses(&err)
                .to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn type_errors_name_the_key_as_the_file_writes_it() {
        for (text, key) in [
            (
                format!("{GOOD}\n[[inbound]]\nname = \"x\"\nmax_connections = \"x\"\n"),
                "inbound[1].max_connections",
            ),
            (
                GOOD.replace("max_connections = 64", "max_connections = \"many\""),
                "outbound[0].max_connections",
            ),
            (
                format!("{GOOD}\n[runtime]\nworker_threads = \"two\"\n"),
                "runtime.worker_threads",
            ),
        ] {
            let found = problems(&text, &[]);
            assert_eq!(keys(&found), [key], "{found:?}");
            assert!(found[0].message.contains("invalid type"), "{found:?}");
        }
        let found = problems(GOOD, &[("MTLSD_RUNTIME__WORKER_THREADS", "[1]")]);
        assert_eq!(
            found[0].from_env.as_deref(),
            Some("MTLSD_RUNTIME__WORKER_THREADS"),
            "{found:?}"
        );
    }

    #[test]
    fn route_patterns() {
        assert_eq!(
            parse_route_path("/a.B/Delete*"),
            Some(("a.B".into(), MethodPattern::Prefix("Delete".into())))
        );
        assert_eq!(
            parse_route_path("/a.B/*"),
            Some(("a.B".into(), MethodPattern::Any))
        );
        assert_eq!(
            parse_route_path("/a.B/Get"),
            Some(("a.B".into(), MethodPattern::Exact("Get".into())))
        );
        for bad in [
            "a.B/Get", "/a.B", "/a.B/", "/a.B/G*t", "/a B/Get", "/a.B/x.y", "/*/Get",
        ] {
            assert_eq!(parse_route_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn upstream_forms() {
        let mut v = Validator {
            problems: Vec::new(),
            base_dir: PathBuf::from("/etc/mtlsd"),
            env_keys: HashMap::new(),
            runtime_dir: None,
        };
        assert_eq!(
            v.upstream("k", "[::1]:80"),
            Some(Upstream::Tcp(HostPort {
                host: "::1".into(),
                port: 80
            }))
        );
        assert_eq!(v.upstream("k", "db host:80"), None);
        assert!(
            v.problems
                .last()
                .is_some_and(|p| p.message.contains("not a host name")),
            "{:?}",
            v.problems
        );
        assert_eq!(
            v.upstream("k", "unix:/run/db.sock"),
            Some(Upstream::Unix("/run/db.sock".into()))
        );
        assert_eq!(v.upstream("k", "::1:80"), None);
        assert_eq!(v.upstream("k", "host"), None);
        assert_eq!(v.upstream("k", "host:0"), None);
        assert_eq!(v.upstream("k", ":80"), None);
        assert_eq!(v.problems.len(), 5);
    }

    #[test]
    fn pinned_fingerprints_are_read_in_both_written_forms_and_checked() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let colons = "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD";
        let text = GOOD.replace(
            "version = \"2026-11\"",
            &format!("version = \"2026-11\"\nsha256 = [{hex:?}]"),
        );
        let config = parse_str(&text, &[]).unwrap();
        let pinned = config.trust_domains["mesh"].sha256.clone().unwrap();
        assert_eq!(pinned, [Fingerprint::from_hex(colons).unwrap()]);
        assert_eq!(config.material_spec().trust_domains[1].pinned, Some(pinned));
        assert_eq!(config.trust_domains["mariadb"].sha256, None);

        let text = GOOD.replace(
            "version = \"2026-11\"",
            &format!("sha256 = [{hex:?}, \"abc\", {colons:?}]"),
        );
        let found = problems(&text, &[]);
        assert_eq!(
            keys(&found),
            [
                "trust_domains.mesh.sha256[1]",
                "trust_domains.mesh.sha256[2]"
            ]
        );
        assert!(found[0].message.contains("not a SHA-256"), "{}", found[0]);
        assert!(found[1].message.contains("listed twice"), "{}", found[1]);
        let text = GOOD.replace("version = \"2026-11\"", "sha256 = []");
        assert_eq!(keys(&problems(&text, &[])), ["trust_domains.mesh.sha256"]);
    }

    #[test]
    fn bootstrap_is_off_by_default_and_checked_when_on() {
        assert_eq!(parse_str(GOOD, &[]).unwrap().bootstrap, None);
        let config = parse_str(
            &format!("{GOOD}\n[bootstrap]\nlisten = \"0.0.0.0:9443\"\n"),
            &[],
        )
        .unwrap();
        let bootstrap = config.bootstrap.clone().unwrap();
        assert_eq!(bootstrap.listen, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(bootstrap.requests_per_minute, 30);
        assert!(bootstrap.serves("mesh") && bootstrap.serves("mariadb"));
        // Its TLS use: this host's identity, no client certificate asked.
        let uses = config.material_spec().uses;
        let use_ = uses
            .iter()
            .find(|u| u.name == super::super::BOOTSTRAP_TLS_USE)
            .unwrap();
        assert_eq!(use_.trust_domain, "mesh");
        assert!(matches!(
            use_.side,
            mtlsd_reload::TlsSide::Server {
                client_auth: ClientAuth::None,
                ..
            }
        ));

        let text = format!(
            "{GOOD}\n[bootstrap]\nlisten = \"0.0.0.0:7443\"\nrequests_per_minute = 0\nmax_connections = 99999\ndomains = [\"mesh\", \"nope\"]\n"
        );
        let found = problems(&text, &[]);
        assert_eq!(
            keys(&found),
            [
                "bootstrap.requests_per_minute",
                "bootstrap.max_connections",
                "bootstrap.domains[1]",
                "bootstrap.listen"
            ]
        );
        assert!(
            found[3].message.contains("listener 'grpc-in'"),
            "{}",
            found[3]
        );
        let text = format!(
            "{GOOD}\n[admin]\nlisten = \"127.0.0.1:9443\"\n[bootstrap]\nlisten = \"127.0.0.1:9443\"\n"
        );
        let found = problems(&text, &[]);
        assert!(found[0].message.contains("admin.listen"), "{found:?}");
        let found = problems(&format!("{GOOD}\n[bootstrap]\ndomains = [\"mesh\"]\n"), &[]);
        assert_eq!(keys(&found), ["bootstrap.listen"]);
    }

    #[test]
    fn a_bootstrap_change_waits_for_a_restart() {
        let running = parse_str(
            &format!("{GOOD}\n[bootstrap]\nlisten = \"0.0.0.0:9443\"\n"),
            &[],
        )
        .unwrap();
        let next = parse_str(
            &format!("{GOOD}\n[bootstrap]\nlisten = \"0.0.0.0:9444\"\n"),
            &[],
        )
        .unwrap();
        let (effective, refused) = running.apply_live(next);
        assert_eq!(effective.bootstrap, running.bootstrap);
        assert!(
            matches!(refused.as_slice(), [(super::super::Section::Bootstrap, _)]),
            "{refused:?}"
        );
    }
}
