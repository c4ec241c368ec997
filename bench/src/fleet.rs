//! Fleet scale: what a big role inventory costs one host.
//!
//! For each inventory size (and each format, TOML and YAML), with 1,000
//! revoked serials: `mtlsd check` wall time, start-up (spawn → `ready`),
//! idle RSS, the time of one reload that changes the inventory (`POST
//! /reload` round trip, which answers after the new generation is
//! published), the time of a reload with nothing changed, RSS after the
//! first and after the last of `reloads` changing reloads, handshake CPU
//! per connection (full handshakes from one inventory host), and the
//! number of metric series the host exports once `peers` distinct
//! inventory hosts have connected, with per-peer series off (the default)
//! and on.
//!
//! Every figure is one process measured from the outside (procfs, wall
//! clock), as an operator would see it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mtlsd_devca::{CertificateAuthority, LeafSpec};
use rustls::ClientConfig;

use crate::procfs;
use crate::support::{self, Daemon};

/// Revoked serials in every generated inventory.
const REVOKED: usize = 1_000;

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) sizes: Vec<usize>,
    pub(crate) reloads: usize,
    pub(crate) handshakes: usize,
    pub(crate) peers: usize,
    pub(crate) formats: Vec<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Toml,
    Yaml,
}

impl Format {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "toml" => Ok(Self::Toml),
            "yaml" => Ok(Self::Yaml),
            other => bail!("unknown inventory format {other:?}; expected toml or yaml"),
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Toml => "toml",
            Self::Yaml => "yaml",
        }
    }
}

pub(crate) async fn run(mtlsd: &Path, params: &Params) -> anyhow::Result<serde_json::Value> {
    let mut rows = Vec::new();
    for &format in &params.formats {
        for &hosts in &params.sizes {
            eprintln!("fleet: {hosts} hosts, {}", format.extension());
            rows.push(measure(mtlsd, params, hosts, format).await?);
        }
    }
    Ok(serde_json::json!({
        "benchmark": "fleet",
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "mtlsd": mtlsd.display().to_string(),
        "revoked_serials": REVOKED,
        "reloads": params.reloads,
        "handshakes": params.handshakes,
        "peers_connected": params.peers,
        "rows": rows,
    }))
}

/// The material and files of one measured host.
struct Fleet {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
    inventory: PathBuf,
    hosts: usize,
    format: Format,
    upstream: SocketAddr,
}

impl Fleet {
    async fn new(hosts: usize, format: Format) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = CertificateAuthority::new("fleet CA")?;
        let host = support::leaf(&ca, "h0")?;
        support::replace(&dir.path().join("host.crt"), &host.cert_pem, 0o644)?;
        support::replace(&dir.path().join("host.key"), &host.key_pem, 0o600)?;
        support::replace(&dir.path().join("ca.pem"), ca.cert_pem(), 0o644)?;
        let inventory = dir.path().join(format!("inventory.{}", format.extension()));
        let fleet = Self {
            upstream: support::echo().await?,
            dir,
            ca,
            inventory,
            hosts,
            format,
        };
        fleet.write_inventory(0)?;
        Ok(fleet)
    }

    /// Writes the inventory with `extra` more revoked serials than the
    /// base 1,000, so each reload sees a real change.
    fn write_inventory(&self, extra: usize) -> anyhow::Result<()> {
        let text = inventory_text(self.hosts, REVOKED + extra, self.format);
        support::replace(&self.inventory, &text, 0o644)
    }

    fn config(&self, per_peer: bool) -> anyhow::Result<PathBuf> {
        let dir = self.dir.path();
        let path = dir.join(format!("mtlsd-{per_peer}.toml"));
        std::fs::write(
            &path,
            format!(
                "state_dir = {state:?}\n\
                 [identity]\nhost = \"h0\"\ncert = {cert:?}\nkey = {key:?}\n\
                 [trust_domains.mesh]\nbundle = {bundle:?}\n\
                 [inventory]\npath = {inventory:?}\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\
                 {metrics}\
                 [reload]\nwatch = false\n\
                 [[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
                 allow_roles = [\"api\"]\n",
                state = support::state_dir(dir),
                cert = dir.join("host.crt"),
                key = dir.join("host.key"),
                bundle = dir.join("ca.pem"),
                inventory = self.inventory,
                upstream = self.upstream,
                metrics = if per_peer {
                    "[metrics]\nper_peer = true\n"
                } else {
                    ""
                },
            ),
        )?;
        Ok(path)
    }

    /// A client certificate of inventory host `n` (`n` ≥ 1).
    fn peer(&self, n: usize) -> anyhow::Result<Arc<ClientConfig>> {
        let leaf = self
            .ca
            .issue(&LeafSpec::new(&host_name(n), &[&dns_name(n)]))?;
        support::client_config(&self.ca, &leaf)
    }
}

fn host_name(n: usize) -> String {
    format!("h{n}")
}

fn dns_name(n: usize) -> String {
    format!("h{n}.fleet.test")
}

/// An inventory of `hosts` hosts (h0 is the measured host, with the SANs
/// of `support::leaf`) and `revoked` revoked serials.
fn inventory_text(hosts: usize, revoked: usize, format: Format) -> String {
    let mut out = String::with_capacity(hosts * 120 + revoked * 40);
    let ip = |n: usize| format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let roles = |n: usize| match n % 4 {
        0 => "\"api\"",
        1 => "\"database\", \"backup\"",
        2 => "\"eventlog\"",
        _ => "\"api\", \"monitoring\"",
    };
    match format {
        Format::Toml => {
            out.push_str("cluster = \"fleet\"\n\n[hosts.h0]\n");
            out.push_str("sans = [\"DNS:localhost\", \"IP:127.0.0.1\"]\nroles = [\"api\"]\n");
            for n in 1..hosts {
                let _ = write!(
                    out,
                    "\n[hosts.{}]\nsans = [\"DNS:{}\", \"IP:{}\"]\nroles = [{}]\n",
                    host_name(n),
                    dns_name(n),
                    ip(n),
                    roles(n)
                );
            }
            for r in 0..revoked {
                let _ = write!(
                    out,
                    "\n[[revoked]]\nserial = \"{:x}\"\nnote = \"lost\"\n",
                    0x7f00_0000_u64 + r as u64
                );
            }
        }
        Format::Yaml => {
            out.push_str("cluster: fleet\nhosts:\n  h0:\n");
            out.push_str("    sans: [\"DNS:localhost\", \"IP:127.0.0.1\"]\n    roles: [api]\n");
            for n in 1..hosts {
                let _ = write!(
                    out,
                    "  {}:\n    sans: [\"DNS:{}\", \"IP:{}\"]\n    roles: [{}]\n",
                    host_name(n),
                    dns_name(n),
                    ip(n),
                    roles(n)
                );
            }
            out.push_str("revoked:\n");
            for r in 0..revoked {
                let _ = write!(
                    out,
                    "  - serial: \"{:x}\"\n    note: lost\n",
                    0x7f00_0000_u64 + r as u64
                );
            }
        }
    }
    out
}

async fn measure(
    mtlsd: &Path,
    params: &Params,
    hosts: usize,
    format: Format,
) -> anyhow::Result<serde_json::Value> {
    let fleet = Fleet::new(hosts, format).await?;
    let inventory_bytes = std::fs::metadata(&fleet.inventory)?.len();
    let config = fleet.config(false)?;

    // Whole processes on a shared 2-core machine: enough runs for a
    // median that one slow start does not move.
    let mut checks = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let out = std::process::Command::new(mtlsd)
            .args(["check", "--config"])
            .arg(&config)
            .output()?;
        checks.push(started.elapsed());
        if !out.status.success() {
            bail!(
                "mtlsd check failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let mut startups = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let daemon = Daemon::start(mtlsd, &config)?;
        startups.push(started.elapsed());
        drop(daemon);
    }

    let daemon = Daemon::start(mtlsd, &config)?;
    let pid = [daemon.pid().as_raw()];
    let admin = daemon.admin.context("the daemon logged no admin address")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = procfs::rss_kib(&pid);

    let mut unchanged = Vec::new();
    for _ in 0..5 {
        unchanged.push(post_reload(admin).await?);
    }
    let mut changed = Vec::new();
    let mut rss_after_first = 0;
    for i in 0..params.reloads {
        fleet.write_inventory(i + 1)?;
        changed.push(post_reload(admin).await?);
        if i == 0 {
            rss_after_first = procfs::rss_kib(&pid);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after_all = procfs::rss_kib(&pid);

    let addr = daemon.addr("in")?;
    let client = fleet.peer(3)?; // h3 holds "api"
    let cpu_before = procfs::cpu_seconds(&pid);
    for _ in 0..params.handshakes {
        support::admitted_handshake(addr, &client).await?;
    }
    let cpu_per_handshake_us =
        (procfs::cpu_seconds(&pid) - cpu_before) / params.handshakes.max(1) as f64 * 1e6;

    drop(daemon);
    // Series on fresh daemons, one per setting, so the two counts differ
    // only by the setting (a daemon that has reloaded also exports its
    // reload counters). Peers are hosts 3, 7, 11, … of the inventory.
    let peers = params.peers.min(hosts.saturating_sub(3).div_ceil(4));
    let mut series = [0; 2];
    for (slot, per_peer) in series.iter_mut().zip([false, true]) {
        let config = fleet.config(per_peer)?;
        let daemon = Daemon::start(mtlsd, &config)?;
        *slot = series_after_peers(
            &fleet,
            daemon.admin.context("no admin address")?,
            daemon.addr("in")?,
            peers,
        )
        .await?;
    }
    let [series_default, series_per_peer] = series;

    Ok(serde_json::json!({
        "hosts": hosts,
        "format": format.extension(),
        "inventory_bytes": inventory_bytes,
        "check": support::summary(&checks),
        "startup": support::summary(&startups),
        "rss_idle_kib": rss_idle,
        "reload_unchanged": support::summary(&unchanged),
        "reload_changed": support::summary(&changed),
        "rss_after_first_reload_kib": rss_after_first,
        "rss_after_last_reload_kib": rss_after_all,
        "rss_growth_over_reloads": rss_after_all as f64 / rss_after_first.max(1) as f64,
        "handshake_cpu_us": (cpu_per_handshake_us * 10.0).round() / 10.0,
        "series_peers": peers,
        "series_per_peer_off": series_default,
        "series_per_peer_on": series_per_peer,
    }))
}

/// `POST /reload` and wait for its answer (sent once the attempt is over).
async fn post_reload(admin: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (status, body) = support::http(admin, "POST", "/reload").await?;
    if status != 200 {
        bail!("reload answered {status}: {body}");
    }
    Ok(started.elapsed())
}

/// Series exported after `peers` distinct inventory hosts connected once.
async fn series_after_peers(
    fleet: &Fleet,
    admin: SocketAddr,
    addr: SocketAddr,
    peers: usize,
) -> anyhow::Result<usize> {
    for n in 0..peers {
        // Hosts 3, 7, 11, … hold "api", which the listener allows.
        support::admitted_handshake(addr, &fleet.peer(3 + 4 * n)?).await?;
    }
    let (status, body) = support::http(admin, "GET", "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count())
}

/// The table of `report` as Markdown, for the results file.
pub(crate) fn markdown(report: &serde_json::Value) -> String {
    let mut out = format!(
        "# mtlsd-bench fleet, {}\n\n\
         {} revoked serials in every inventory; medians; RSS from procfs; one reload = \
         `POST /reload` after the inventory file changed (\"unchanged\": nothing changed). \
         Series: every sample `/metrics` exports after K distinct inventory hosts connected, \
         fresh daemons with `[metrics] per_peer` off and on.\n\n",
        report["date"].as_str().unwrap_or("-"),
        report["revoked_serials"],
    );
    out.push_str(&goals(report));
    out.push_str(
        "| hosts | format | check | start-up | idle RSS | reload (changed) | reload (unchanged) | RSS after 1st / last reload | handshake CPU | series after K peers (K: per_peer off / on) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in report["rows"].as_array().into_iter().flatten() {
        let ms = |v: &serde_json::Value| {
            format!("{:.0} ms", v["median_ms"].as_f64().unwrap_or(f64::NAN))
        };
        let mb =
            |v: &serde_json::Value| format!("{:.0} MB", v.as_f64().unwrap_or(f64::NAN) / 1024.0);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} µs | {}: {} / {} |",
            row["hosts"],
            row["format"].as_str().unwrap_or("-"),
            ms(&row["check"]),
            ms(&row["startup"]),
            mb(&row["rss_idle_kib"]),
            ms(&row["reload_changed"]),
            ms(&row["reload_unchanged"]),
            mb(&row["rss_after_first_reload_kib"]),
            mb(&row["rss_after_last_reload_kib"]),
            row["handshake_cpu_us"],
            row["series_peers"],
            row["series_per_peer_off"],
            row["series_per_peer_on"],
        );
    }
    out
}

/// Issue 16's goals against the largest inventory of each format: check,
/// start-up and a changing reload within 200 ms; at most 1 KB of idle RSS
/// per host beyond the smallest inventory's; RSS after the last reload at
/// most 1.2 times RSS after the first.
fn goals(report: &serde_json::Value) -> String {
    let rows: Vec<&serde_json::Value> = report["rows"].as_array().into_iter().flatten().collect();
    let mut out =
        String::from("| goal (largest inventory) | format | measured | met |\n|---|---|---|---|\n");
    for format in ["toml", "yaml"] {
        let of_format: Vec<&&serde_json::Value> =
            rows.iter().filter(|r| r["format"] == format).collect();
        let hosts = |r: &serde_json::Value| r["hosts"].as_f64().unwrap_or(0.0);
        let (Some(big), Some(small)) = (
            of_format
                .iter()
                .max_by(|a, b| hosts(a).total_cmp(&hosts(b))),
            of_format
                .iter()
                .min_by(|a, b| hosts(a).total_cmp(&hosts(b))),
        ) else {
            continue;
        };
        let median = |key: &str| big[key]["median_ms"].as_f64().unwrap_or(f64::NAN);
        let mut line = |goal: String, measured: String, met: bool| {
            let _ = writeln!(
                out,
                "| {goal} | {format} | {measured} | {} |",
                if met { "yes" } else { "**no**" }
            );
        };
        for (key, what) in [
            ("check", "check"),
            ("startup", "start-up"),
            ("reload_changed", "reload (changed)"),
        ] {
            let ms = median(key);
            line(
                format!("{what} of {} hosts ≤ 200 ms", hosts(big)),
                format!("{ms:.0} ms"),
                ms <= 200.0,
            );
        }
        let kib = |r: &serde_json::Value, key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        let per_host = (kib(big, "rss_idle_kib") - kib(small, "rss_idle_kib"))
            / (hosts(big) - hosts(small)).max(1.0);
        line(
            format!(
                "idle RSS per host beyond the {}-host base ≤ 1 KB",
                hosts(small)
            ),
            format!("{per_host:.2} KB"),
            per_host <= 1.0,
        );
        let growth = big["rss_growth_over_reloads"].as_f64().unwrap_or(f64::NAN);
        line(
            "RSS after the last reload ≤ 1.2 × after the first".to_owned(),
            format!("{growth:.2} ×"),
            growth <= 1.2,
        );
    }
    out.push('\n');
    out
}
