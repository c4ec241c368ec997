//! The role inventory: which hosts make up the cluster, the SANs each
//! host's certificate carries, and the roles each host holds.
//!
//! A chain that verifies only proves "signed by our CA". The inventory
//! turns that into "this is db1, and db1 holds `database`": a verified
//! certificate must map, through any of its SANs, to exactly one host.
//! Revoked serials are listed here too, so revocation reloads with the
//! rest of the material and needs no CRL distribution.
//!
//! ```toml
//! cluster = "prod"
//!
//! [hosts.db1]
//! sans = ["DNS:db1.prod.example", "IP:10.0.0.11"]
//! roles = ["database"]
//!
//! [[revoked]]
//! serial = "5f3a9c0e21"
//! note = "hv3 key lost"
//!
//! [[revoked]]                  # only the certificate with this serial
//! serial = "01"                # from the CA whose public key (SPKI)
//! issuer = "9f86d081…"         # has this SHA-256
//! ```
//!
//! YAML with the same shape is accepted for files ending in `.yaml`/`.yml`.
//!
//! Every host reads the whole inventory, at start and on every reload, so
//! a 50,000-host fleet must not pay for a general parser: the shape above
//! (and its YAML twin) is read by [`canonical`], a line reader that knows
//! only these keys and gives up on anything else; then the general
//! parser (`config` with `serde_ignored`) reads the file and reports
//! whatever is unusual or wrong. Both produce the same raw tree, checked
//! by the same validation below.

mod canonical;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mtlsd_expiry::{CertFacts, Fingerprint, SubjectAltName};
use serde::Deserialize;

use crate::error::MaterialError;
use crate::refusal::Refusal;

/// One host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryHost {
    pub name: String,
    pub sans: Vec<SubjectAltName>,
    /// Shared by every host with the same roles: a fleet has a handful of
    /// role sets and tens of thousands of hosts.
    pub roles: Arc<BTreeSet<String>>,
}

/// A validated inventory.
///
/// Laid out for 50,000 hosts read on every host: the hosts in one vector
/// sorted by name (looked up by binary search, compared with an old
/// inventory in one merge pass), SANs mapped to a host's index rather than
/// a copy of its name, role sets interned.
#[derive(Debug)]
pub struct RoleInventory {
    path: PathBuf,
    cluster: String,
    /// Sorted by name, names unique.
    hosts: Vec<InventoryHost>,
    by_san: HashMap<SubjectAltName, u32, foldhash::fast::RandomState>,
    /// Every role some host holds.
    roles_held: BTreeSet<String>,
    revoked: BTreeMap<String, RevokedSerial>,
    fingerprint: Fingerprint,
    read_by: InventoryReader,
}

/// Which reader read the file: the line reader for the canonical shape, or
/// the general parser (valid, but several times slower and hungrier on a
/// big file). `mtlsd check` says which, so an operator with a large
/// hand-shaped inventory learns why it loads slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryReader {
    Canonical,
    General,
}

/// A role set as stored, and those of its roles that are not valid names.
type InternedRoles = (Arc<BTreeSet<String>>, Vec<String>);

/// How one revoked serial is listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RevokedSerial {
    /// Listed without an issuer: revoked whoever issued it.
    any_issuer: bool,
    /// SHA-256 of the SPKI of each issuing CA it is listed for.
    issuers: BTreeSet<[u8; 32]>,
}

/// What changed between two inventories, for the audit log (and what
/// `mtlsd status` reads back from `/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InventoryDelta {
    pub hosts_added: usize,
    pub hosts_removed: usize,
    /// Hosts whose SANs or roles changed.
    pub hosts_changed: usize,
    pub serials_revoked: usize,
    pub serials_unrevoked: usize,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
struct RawInventory {
    cluster: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    revoked: Vec<RawRevoked>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
struct RawHost {
    sans: Option<Vec<String>>,
    roles: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
struct RawRevoked {
    serial: Option<String>,
    issuer: Option<String>,
    #[allow(dead_code)] // documentation for the operator; accepted, not used
    note: Option<String>,
}

impl RoleInventory {
    /// Reads and validates `path`, reporting every problem with its host
    /// and field.
    pub fn load(path: &Path) -> Result<Self, Vec<MaterialError>> {
        let bytes = std::fs::read(path).map_err(|source| {
            vec![MaterialError::Read {
                path: path.to_owned(),
                source,
            }]
        })?;
        Self::parse(path, &bytes)
    }

    /// Like [`Self::load`], but when the file holds the same bytes as
    /// `previous` (same path, same SHA-256), `previous` is the answer: an
    /// unchanged inventory costs a read and a hash, not a parse.
    pub fn load_unless_unchanged(
        path: &Path,
        previous: Option<&Arc<Self>>,
    ) -> Result<Arc<Self>, Vec<MaterialError>> {
        let bytes = std::fs::read(path).map_err(|source| {
            vec![MaterialError::Read {
                path: path.to_owned(),
                source,
            }]
        })?;
        let fingerprint = Fingerprint::of(&bytes);
        if let Some(previous) = previous
            && previous.path == path
            && previous.fingerprint == fingerprint
        {
            return Ok(previous.clone());
        }
        Self::parse_with(path, &bytes, fingerprint).map(Arc::new)
    }

    /// Validates `bytes`, the contents of `path` (which names the file in
    /// problems and picks TOML or YAML by its extension).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, Vec<MaterialError>> {
        Self::parse_with(path, bytes, Fingerprint::of(bytes))
    }

    fn parse_with(
        path: &Path,
        bytes: &[u8],
        fingerprint: Fingerprint,
    ) -> Result<Self, Vec<MaterialError>> {
        let problem = |field: &str, reason: String| MaterialError::Inventory {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| vec![problem("(file)", "is not UTF-8 text".to_owned())])?;
        let format = Format::of(path);
        let (raw, unknown, read_by) = match canonical::read(text, format) {
            Some(raw) => (raw, Vec::new(), InventoryReader::Canonical),
            None => {
                let (raw, unknown) =
                    general(text, format).map_err(|reason| vec![problem("(file)", reason)])?;
                (raw, unknown, InventoryReader::General)
            }
        };

        let mut problems: Vec<MaterialError> = unknown
            .iter()
            .map(|key| problem(&key.replace(".?", ""), "unknown key".to_owned()))
            .collect();
        let cluster = raw.cluster.unwrap_or_default();
        if cluster.trim().is_empty() {
            problems.push(problem(
                "cluster",
                "is required (the cluster's name)".to_owned(),
            ));
        }
        if raw.hosts.is_empty() {
            problems.push(problem("hosts", "lists no host".to_owned()));
        }

        // raw.hosts is a BTreeMap: hosts arrive sorted by name, so the
        // vector is sorted as built.
        let mut hosts: Vec<InventoryHost> = Vec::with_capacity(raw.hosts.len());
        let mut by_san: HashMap<SubjectAltName, u32, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(raw.hosts.len() * 2, Default::default());
        // Role sets seen so far (sorted, deduplicated) with the roles of
        // each that are not valid names.
        let mut role_sets: HashMap<Vec<String>, InternedRoles> = HashMap::new();
        for (name, host) in raw.hosts {
            let index = u32::try_from(hosts.len()).unwrap_or(u32::MAX);
            let field = |f: &str| format!("hosts.{name}.{f}");
            let mut sans = Vec::new();
            match host.sans {
                None => problems.push(problem(&field("sans"), "is required".to_owned())),
                Some(list) if list.is_empty() => problems.push(problem(
                    &field("sans"),
                    "must name at least one SAN".to_owned(),
                )),
                Some(list) => {
                    sans.reserve_exact(list.len());
                    for (i, text) in list.iter().enumerate() {
                        match parse_san(text) {
                            Ok(san) => {
                                match by_san.get(&san) {
                                    Some(&other) if other != index => {
                                        problems.push(problem(
                                            &format!("hosts.{name}.sans[{i}]"),
                                            format!(
                                                "{text:?} is also claimed by host '{}'",
                                                hosts[other as usize].name
                                            ),
                                        ));
                                    }
                                    Some(_) => {}
                                    None => {
                                        by_san.insert(san.clone(), index);
                                    }
                                }
                                sans.push(san);
                            }
                            Err(reason) => problems.push(problem(
                                &format!("hosts.{name}.sans[{i}]"),
                                format!("{text:?}: {reason}"),
                            )),
                        }
                    }
                }
            }
            let mut roles = host.roles.unwrap_or_default();
            roles.sort_unstable();
            roles.dedup();
            if roles.is_empty() {
                problems.push(problem(
                    &field("roles"),
                    "must name at least one role".to_owned(),
                ));
            }
            let (roles, bad) = match role_sets.get(roles.as_slice()) {
                Some(known) => known,
                None => {
                    let bad = roles.iter().filter(|r| !is_role_name(r)).cloned().collect();
                    let set = Arc::new(roles.iter().cloned().collect::<BTreeSet<_>>());
                    role_sets.entry(roles).or_insert((set, bad))
                }
            };
            for role in bad {
                problems.push(problem(
                    &field("roles"),
                    format!("{role:?}: roles use lowercase letters, digits, '-' and '_'"),
                ));
            }
            hosts.push(InventoryHost {
                name,
                sans,
                roles: roles.clone(),
            });
        }
        let roles_held = role_sets
            .values()
            .flat_map(|(set, _)| set.iter().cloned())
            .collect();

        let mut revoked: BTreeMap<String, RevokedSerial> = BTreeMap::new();
        for (i, entry) in raw.revoked.into_iter().enumerate() {
            let issuer = match entry.issuer.as_deref().map(parse_sha256) {
                None => None,
                Some(Ok(issuer)) => Some(issuer),
                Some(Err(reason)) => {
                    problems.push(problem(&format!("revoked[{i}].issuer"), reason));
                    continue;
                }
            };
            match entry.serial.map(|s| normalize_serial(&s)) {
                Some(Ok(serial)) => {
                    let listed = revoked.entry(serial).or_default();
                    match issuer {
                        None => listed.any_issuer = true,
                        Some(issuer) => {
                            listed.issuers.insert(issuer);
                        }
                    }
                }
                Some(Err(reason)) => {
                    problems.push(problem(&format!("revoked[{i}].serial"), reason))
                }
                None => problems.push(problem(
                    &format!("revoked[{i}].serial"),
                    "is required".to_owned(),
                )),
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            path: path.to_owned(),
            cluster,
            hosts,
            by_san,
            roles_held,
            revoked,
            fingerprint,
            read_by,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Every host, sorted by name.
    pub fn hosts(&self) -> impl ExactSizeIterator<Item = &InventoryHost> {
        self.hosts.iter()
    }

    pub fn host(&self, name: &str) -> Option<&InventoryHost> {
        self.hosts
            .binary_search_by(|h| h.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.hosts[i])
    }

    /// Every role at least one host holds.
    pub fn roles_held(&self) -> &BTreeSet<String> {
        &self.roles_held
    }

    /// SHA-256 of the file as read.
    /// The host that lists `san` (DNS names compared without case and
    /// trailing dot), if any.
    pub fn host_with_san(&self, san: &SubjectAltName) -> Option<&InventoryHost> {
        let index = *self.by_san.get(&normalize(san))?;
        self.hosts.get(index as usize)
    }

    pub fn read_by(&self) -> InventoryReader {
        self.read_by
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whether `serial_hex` is listed as revoked for the CA whose SPKI has
    /// SHA-256 `issuer`. An entry that names an issuer matches only that
    /// CA; when the issuer is unknown (the chain was not verified), any
    /// entry for the serial counts: fail closed.
    pub fn is_revoked(&self, serial_hex: &str, issuer: Option<&[u8; 32]>) -> bool {
        match self.revoked.get(serial_hex) {
            None => false,
            Some(listed) => {
                listed.any_issuer
                    || match issuer {
                        None => true,
                        Some(issuer) => listed.issuers.contains(issuer),
                    }
            }
        }
    }

    /// How many serials are listed as revoked.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// What changed from `old` to `self`.
    pub fn delta_from(&self, old: &RoleInventory) -> InventoryDelta {
        let mut delta = InventoryDelta::default();
        // Both host lists are sorted by name: one merge pass.
        let (mut new, mut old_hosts) = (self.hosts.iter().peekable(), old.hosts.iter().peekable());
        loop {
            match (new.peek(), old_hosts.peek()) {
                (None, None) => break,
                (Some(_), None) => {
                    delta.hosts_added += new.len();
                    break;
                }
                (None, Some(_)) => {
                    delta.hosts_removed += old_hosts.len();
                    break;
                }
                (Some(n), Some(o)) => match n.name.cmp(&o.name) {
                    std::cmp::Ordering::Less => {
                        delta.hosts_added += 1;
                        new.next();
                    }
                    std::cmp::Ordering::Greater => {
                        delta.hosts_removed += 1;
                        old_hosts.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if n != o {
                            delta.hosts_changed += 1;
                        }
                        new.next();
                        old_hosts.next();
                    }
                },
            }
        }
        for (serial, listed) in &self.revoked {
            if old.revoked.get(serial) != Some(listed) {
                delta.serials_revoked += 1;
            }
        }
        delta.serials_unrevoked = old
            .revoked
            .keys()
            .filter(|serial| !self.revoked.contains_key(*serial))
            .count();
        delta
    }

    /// Maps a verified certificate to its host: a revoked serial, no match,
    /// or SANs of more than one host are refusals. `issuer` is the SHA-256
    /// of the issuing CA's SPKI, from the verified path.
    pub fn identify(
        &self,
        cert: &CertFacts,
        issuer: Option<&[u8; 32]>,
    ) -> Result<&InventoryHost, Refusal> {
        if self.is_revoked(&cert.serial_hex, issuer) {
            return Err(Refusal::Revoked);
        }
        let matched: BTreeSet<u32> = cert
            .sans
            .iter()
            .filter_map(|san| self.by_san.get(&normalize(san)).copied())
            .collect();
        let mut matched = matched.into_iter();
        match (matched.next(), matched.next()) {
            (None, _) => Err(Refusal::SanNotInInventory),
            (Some(_), Some(_)) => Err(Refusal::AmbiguousHost),
            (Some(host), None) => self
                .hosts
                .get(host as usize)
                .ok_or(Refusal::SanNotInInventory),
        }
    }
}

/// How the file is written, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Yaml,
}

impl Format {
    fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::Yaml,
            _ => Self::Toml,
        }
    }
}

/// The general parser: any TOML or YAML, with every unknown key named.
fn general(text: &str, format: Format) -> Result<(RawInventory, Vec<String>), String> {
    let format = match format {
        Format::Toml => config::FileFormat::Toml,
        Format::Yaml => config::FileFormat::Yaml,
    };
    let merged = config::Config::builder()
        .add_source(config::File::from_str(text, format))
        .build()
        .map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    let raw = serde_ignored::deserialize(merged, |key| unknown.push(key.to_string()))
        .map_err(|e| e.to_string())?;
    Ok((raw, unknown))
}

/// `DNS:name`, `IP:addr`, `URI:uri`; without a prefix, an IP address or a
/// DNS name (or a URI when it contains `://`).
fn parse_san(text: &str) -> Result<SubjectAltName, String> {
    let (kind, value) = match text.split_once(':') {
        Some((kind @ ("DNS" | "IP" | "URI"), value)) => (kind, value),
        _ if text.contains("://") => ("URI", text),
        _ if text.parse::<IpAddr>().is_ok() => ("IP", text),
        _ => ("DNS", text),
    };
    let san = match kind {
        "IP" => SubjectAltName::Ip(value.parse().map_err(|_| "not an IP address".to_owned())?),
        "URI" => {
            if !value.contains(':') || value.chars().any(char::is_whitespace) {
                return Err("not a URI".to_owned());
            }
            SubjectAltName::Uri(value.to_owned())
        }
        _ => {
            let valid = !value.is_empty()
                && value.len() <= 253
                && value.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                });
            if !valid {
                return Err("not a valid DNS name (use DNS:, IP: or URI: prefixes)".to_owned());
            }
            SubjectAltName::Dns(value.to_owned())
        }
    };
    Ok(normalize(&san))
}

/// DNS names compare case-insensitively and without a trailing dot.
fn normalize(san: &SubjectAltName) -> SubjectAltName {
    match san {
        SubjectAltName::Dns(name) => {
            SubjectAltName::Dns(name.trim_end_matches('.').to_ascii_lowercase())
        }
        other => other.clone(),
    }
}

fn normalize_serial(text: &str) -> Result<String, String> {
    let hex: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a hexadecimal serial (as `mtlsd inspect` prints it)"
        ));
    }
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// A SHA-256 in hex, colons allowed (`openssl … | sha256sum` or
/// `mtlsd inspect` output).
fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let bytes: Option<Vec<u8>> = (hex.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .flatten();
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "{text:?} is not a SHA-256 in hex: the issuing CA's public key, \
                 `openssl x509 -in CA.pem -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`"
            )
        })
}

fn is_role_name(role: &str) -> bool {
    !role.is_empty()
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtlsd_devca::{CertificateAuthority, LeafSpec};

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const GOOD: &str = r#"
        cluster = "test"
        [hosts.db1]
        sans = ["DNS:db1.test", "IP:10.0.0.11"]
        roles = ["database"]
        [hosts.api1]
        sans = ["api1.test", "10.0.0.21", "URI:spiffe://test/api1"]
        roles = ["api", "monitoring"]
        [[revoked]]
        serial = "0A:BC"
        note = "lost"
    "#;

    fn facts(sans: &[&str], serial: u64) -> CertFacts {
        let ca = CertificateAuthority::new("inv ca").unwrap();
        let leaf = ca
            .issue(&LeafSpec::new("peer", sans).serial(serial))
            .unwrap();
        CertFacts::from_der(&leaf.cert_der).unwrap()
    }

    #[test]
    fn says_which_reader_read_the_file_and_both_read_the_same() {
        let canonical = "cluster = \"test\"\n\n[hosts.db1]\nsans = [\"DNS:db1.test\"]\nroles = [\"database\"]\n";
        let inline = "cluster = \"test\"\n[hosts]\ndb1 = { sans = [\"DNS:db1.test\"], roles = [\"database\"] }\n";
        let fast = RoleInventory::parse(Path::new("inv.toml"), canonical.as_bytes()).unwrap();
        let slow = RoleInventory::parse(Path::new("inv.toml"), inline.as_bytes()).unwrap();
        assert_eq!(fast.read_by(), InventoryReader::Canonical);
        assert_eq!(slow.read_by(), InventoryReader::General);
        let host = |inv: &RoleInventory| {
            let h = inv.host("db1").unwrap();
            (h.sans.clone(), h.roles.clone())
        };
        assert_eq!(host(&fast), host(&slow));
    }

    #[test]
    fn an_unchanged_file_is_not_parsed_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "inv.toml", GOOD);
        let first = RoleInventory::load_unless_unchanged(&path, None).unwrap();
        let same = RoleInventory::load_unless_unchanged(&path, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first, &same), "unchanged bytes are reused");

        // The same content at another path is another file: parsed.
        let elsewhere = write(&dir, "copy.toml", GOOD);
        let copy = RoleInventory::load_unless_unchanged(&elsewhere, Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first, &copy));
        assert_eq!(copy.path(), elsewhere.as_path());

        // One byte more (a revocation): parsed, and the change is seen.
        std::fs::write(&path, format!("{GOOD}\n[[revoked]]\nserial = \"ff\"\n")).unwrap();
        let changed = RoleInventory::load_unless_unchanged(&path, Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(changed.is_revoked("ff", None));
        assert!(!first.is_revoked("ff", None));

        // A broken file is an error even when the previous one was good.
        std::fs::write(&path, "cluster = ").unwrap();
        assert!(RoleInventory::load_unless_unchanged(&path, Some(&changed)).is_err());
    }

    #[test]
    fn identifies_by_any_san_type_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let inv = RoleInventory::load(&write(&dir, "inv.toml", GOOD)).unwrap();
        assert_eq!(inv.cluster(), "test");
        let host = |sans: &[&str]| inv.identify(&facts(sans, 77), None).map(|h| h.name.clone());
        assert_eq!(host(&["DB1.test."]), Ok("db1".into()));
        assert_eq!(host(&["other.test", "10.0.0.11"]), Ok("db1".into()));
        assert_eq!(host(&["spiffe://test/api1"]), Ok("api1".into()));
        assert_eq!(host(&["nobody.test"]), Err(Refusal::SanNotInInventory));
        assert_eq!(
            host(&["db1.test", "api1.test"]),
            Err(Refusal::AmbiguousHost)
        );
        assert_eq!(
            inv.identify(&facts(&["db1.test"], 0xabc), None)
                .map(|h| h.name.clone()),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn yaml_is_accepted_too() {
        let dir = tempfile::tempdir().unwrap();
        let yaml =
            "cluster: y\nhosts:\n  db1:\n    sans: [\"DNS:db1.test\"]\n    roles: [database]\n";
        let inv = RoleInventory::load(&write(&dir, "inv.yaml", yaml)).unwrap();
        assert_eq!(inv.host("db1").unwrap().roles.len(), 1);
    }

    #[test]
    fn every_problem_names_host_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
            colour = "x"
            [hosts.a]
            sans = ["DNS:shared.test", "IP:999.1.1.1"]
            roles = []
            [hosts.b]
            sans = ["shared.test", "bad name"]
            roles = ["Web"]
            flavour = 1
            [[revoked]]
            serial = "xyz"
        "#;
        let problems = RoleInventory::load(&write(&dir, "inv.toml", text)).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for expected in [
            "colour: unknown key",
            "hosts.b.flavour: unknown key",
            "cluster: is required",
            "hosts.a.sans[1]",
            "hosts.a.roles: must name at least one role",
            "hosts.b.sans[0]: \"shared.test\" is also claimed by host 'a'",
            "hosts.b.sans[1]",
            "hosts.b.roles: \"Web\"",
            "revoked[0].serial",
        ] {
            assert!(
                shown.iter().any(|s| s.contains(expected)),
                "missing {expected:?} in {shown:#?}"
            );
        }
        assert!(shown.iter().all(|s| s.contains("inv.toml")), "{shown:#?}");
    }

    const A: [u8; 32] = [0xaa; 32];
    const B: [u8; 32] = [0xbb; 32];
    const C: [u8; 32] = [0xcc; 32];

    fn hex(key: [u8; 32]) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn with_revoked(dir: &tempfile::TempDir, revoked: &str) -> RoleInventory {
        let text = format!(
            "cluster = \"t\"\n[hosts.db1]\nsans = [\"DNS:db1.test\"]\nroles = [\"database\"]\n{revoked}"
        );
        RoleInventory::load(&write(dir, "inv.toml", &text)).unwrap()
    }

    #[test]
    fn issuer_parse_errors_name_the_entry_and_say_what_to_compute() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
            cluster = "t"
            [hosts.db1]
            sans = ["DNS:db1.test"]
            roles = ["database"]
            [[revoked]]
            serial = "01"
            issuer = "{}"
            [[revoked]]
            serial = "02"
            issuer = "not hex at all"
            [[revoked]]
            serial = "03"
            issuer = "abcd"
            [[revoked]]
            serial = "04"
            issuer = "{}zz"
        "#,
            hex(A),
            &hex(B)[..62]
        );
        let problems = RoleInventory::load(&write(&dir, "inv.toml", &text)).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:#?}");
        for (i, entry) in [1, 2, 3].iter().enumerate() {
            let problem = &shown[i];
            assert!(
                problem.contains(&format!("revoked[{entry}].issuer")),
                "{problem}"
            );
            assert!(problem.contains("is not a SHA-256 in hex"), "{problem}");
            assert!(
                problem.contains("openssl x509 -in CA.pem -pubkey"),
                "{problem}"
            );
        }
    }

    #[test]
    fn an_entry_with_an_issuer_revokes_the_serial_for_that_issuer_only() {
        let dir = tempfile::tempdir().unwrap();
        // Upper case with colons, as some tools print fingerprints.
        let colons = hex(A)
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let inv = with_revoked(
            &dir,
            &format!("[[revoked]]\nserial = \"0a:bc\"\nissuer = \"{colons}\"\n"),
        );
        assert!(inv.is_revoked("abc", Some(&A)));
        assert!(!inv.is_revoked("abc", Some(&B)));
        assert!(!inv.is_revoked("abd", Some(&A)));
        let cert = facts(&["db1.test"], 0xabc);
        assert_eq!(
            inv.identify(&cert, Some(&A)).map(|h| h.name.clone()),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            inv.identify(&cert, Some(&B)).map(|h| h.name.clone()),
            Ok("db1".to_owned())
        );
    }

    #[test]
    fn a_serial_listed_for_two_issuers_is_revoked_for_both_and_no_third() {
        let dir = tempfile::tempdir().unwrap();
        let inv = with_revoked(
            &dir,
            &format!(
                "[[revoked]]\nserial = \"77\"\nissuer = \"{}\"\n\
                 [[revoked]]\nserial = \"0x0077\"\nissuer = \"{}\"\n",
                hex(A),
                hex(B)
            ),
        );
        assert_eq!(inv.revoked_count(), 1, "one serial, two issuers");
        assert!(inv.is_revoked("77", Some(&A)));
        assert!(inv.is_revoked("77", Some(&B)));
        assert!(!inv.is_revoked("77", Some(&C)));

        // Listed once more without an issuer: revoked whoever issued it.
        let inv = with_revoked(
            &dir,
            &format!(
                "[[revoked]]\nserial = \"77\"\nissuer = \"{}\"\n[[revoked]]\nserial = \"77\"\n",
                hex(A)
            ),
        );
        assert!(inv.is_revoked("77", Some(&C)));
    }

    #[test]
    fn an_unknown_issuer_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let inv = with_revoked(
            &dir,
            &format!("[[revoked]]\nserial = \"5\"\nissuer = \"{}\"\n", hex(A)),
        );
        // The chain was not verified (an insecure_ option): the issuer is
        // unknown, so any entry for the serial counts.
        assert!(inv.is_revoked("5", None));
        assert_eq!(
            inv.identify(&facts(&["db1.test"], 5), None)
                .map(|h| h.name.clone()),
            Err(Refusal::Revoked)
        );
        assert!(!inv.is_revoked("6", None));
    }

    #[test]
    fn adding_an_issuer_to_a_listed_serial_counts_as_a_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let one = with_revoked(
            &dir,
            &format!("[[revoked]]\nserial = \"5\"\nissuer = \"{}\"\n", hex(A)),
        );
        let two = with_revoked(
            &dir,
            &format!(
                "[[revoked]]\nserial = \"5\"\nissuer = \"{}\"\n[[revoked]]\nserial = \"5\"\nissuer = \"{}\"\n",
                hex(A),
                hex(B)
            ),
        );
        let delta = two.delta_from(&one);
        assert_eq!((delta.serials_revoked, delta.serials_unrevoked), (1, 0));
        let none = with_revoked(&dir, "");
        let delta = none.delta_from(&two);
        assert_eq!((delta.serials_revoked, delta.serials_unrevoked), (0, 1));
    }

    /// Hosts as the reload diff and the policy see them: looked up by
    /// name, compared in one pass, role sets shared.
    #[test]
    fn hosts_are_found_compared_and_share_their_role_sets() {
        let dir = tempfile::tempdir().unwrap();
        let host = |name: &str, roles: &str| {
            format!("[hosts.{name}]\nsans = [\"DNS:{name}.test\"]\nroles = [{roles}]\n")
        };
        let one = RoleInventory::load(&write(
            &dir,
            "one.toml",
            &format!(
                "cluster = \"t\"\n{}{}{}{}",
                host("a", "\"api\""),
                host("b", "\"db\", \"api\""),
                host("c", "\"api\", \"db\", \"api\""),
                host("d", "\"api\""),
            ),
        ))
        .unwrap();
        // b and c hold the same set, written differently: one allocation.
        let (b, c) = (one.host("b").unwrap(), one.host("c").unwrap());
        assert!(Arc::ptr_eq(&b.roles, &c.roles));
        assert!(!Arc::ptr_eq(&b.roles, &one.host("a").unwrap().roles));
        assert_eq!(one.roles_held().iter().collect::<Vec<_>>(), ["api", "db"]);
        assert!(one.host("e").is_none() && one.host("").is_none());
        assert_eq!(
            one.hosts().map(|h| h.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            one.identify(&facts(&["c.test"], 9), None)
                .map(|h| h.name.clone()),
            Ok("c".to_owned())
        );
        let by_san = |san: SubjectAltName| one.host_with_san(&san).map(|h| h.name.as_str());
        assert_eq!(by_san(SubjectAltName::Dns("D.Test.".to_owned())), Some("d"));
        assert_eq!(by_san(SubjectAltName::Dns("x.test".to_owned())), None);

        // a removed, b's roles changed, c the same, d's SAN changed, e and
        // f added (one before and one after every old name).
        let two = RoleInventory::load(&write(
            &dir,
            "two.toml",
            &format!(
                "cluster = \"t\"\n{}{}{}{}{}",
                host("b", "\"db\""),
                host("c", "\"db\", \"api\""),
                "[hosts.d]\nsans = [\"DNS:d2.test\"]\nroles = [\"api\"]\n",
                host("e", "\"api\""),
                host("0a", "\"api\""),
            ),
        ))
        .unwrap();
        assert_eq!(
            two.delta_from(&one),
            InventoryDelta {
                hosts_added: 2,
                hosts_removed: 1,
                hosts_changed: 2,
                ..InventoryDelta::default()
            }
        );
        assert_eq!(one.delta_from(&one), InventoryDelta::default());
        let back = one.delta_from(&two);
        assert_eq!(
            (back.hosts_added, back.hosts_removed, back.hosts_changed),
            (1, 2, 2)
        );
    }
}
