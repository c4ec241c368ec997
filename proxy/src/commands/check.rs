//! `mtlsd check`: everything start-up validates, without starting; with
//! `--bind`, what only binding would show; with `--compare`, what a reload
//! from the running configuration would change, classified by the
//! reloader's own code ([`ConfigChange`]).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use mtlsd_reload::{Generation, InventoryReader};

use super::out::{self, Level, outln};
use crate::config::{Config, ConfigError};
use crate::error_chain::WithCauses;
use crate::reloading::diff::ConfigChange;
use crate::reloading::{Applies, ItemChange};

/// Exit code when the new configuration is valid but at least one
/// difference from the running one needs a restart (as `mtlsd reload`).
const RESTART_REQUIRED: u8 = 4;

/// From this many hosts on, an inventory read by the general parser gets
/// a hint: below it, the difference is a few milliseconds.
const LARGE_INVENTORY: usize = 10_000;

/// What `mtlsd check` checks beyond the configuration and its material.
#[derive(Debug)]
pub(super) struct Options {
    pub strict: bool,
    pub compare: Option<PathBuf>,
    pub bind: bool,
}

pub(super) fn check(config_path: &Path, options: &Options) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            report_config_error(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let bind_problems = if options.bind {
        bind_problems(&config)
    } else {
        Vec::new()
    };
    let loaded = Generation::load(&config.material_spec(), SystemTime::now());
    if let Err(problems) = &loaded {
        out::report(
            Level::Error,
            "check",
            &format!("{} problem(s) with TLS material:", problems.len()),
            &problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        );
    }
    if !bind_problems.is_empty() {
        out::report(
            Level::Error,
            "check",
            &format!(
                "{} problem(s) binding listen addresses:",
                bind_problems.len()
            ),
            &bind_problems,
        );
    }
    let generation = match loaded {
        Ok(generation) if bind_problems.is_empty() => generation,
        _ => return Ok(ExitCode::FAILURE),
    };

    if let Some(revoked) = generation.own_revocation() {
        out::report(
            Level::Error,
            "check",
            "1 problem with TLS material:",
            &[format!("{}: {revoked}", config.identity.cert.display())],
        );
        return Ok(ExitCode::FAILURE);
    }
    let warnings = generation
        .inventory()
        .map(|inventory| config.role_warnings(inventory))
        .unwrap_or_default();
    for warning in &warnings {
        out::report(Level::Warn, "check", &format!("warning: {warning}"), &[]);
    }
    if options.strict && !warnings.is_empty() {
        out::report(
            Level::Error,
            "check",
            &format!(
                "{} warning(s), and --strict makes them problems",
                warnings.len()
            ),
            &[],
        );
        return Ok(ExitCode::FAILURE);
    }

    outln!("{}: ok", config_path.display());
    let leaf = generation.identity().leaf();
    outln!(
        "  identity   {} (serial {}, expires {})",
        leaf.subject,
        leaf.serial_hex,
        humantime::format_rfc3339_seconds(leaf.not_after)
    );
    if let Some(token) = generation.identity().token_key() {
        outln!(
            "  key        {} in {}, {} session(s) logged in",
            token.key,
            token.module.display(),
            token.sessions_open
        );
    }
    for (name, bundle) in generation.bundles() {
        outln!(
            "  trust      {name}: {} CA(s), version {}, sha256 {}{}",
            bundle.cas().len(),
            bundle.version().unwrap_or("-"),
            bundle.fingerprint(),
            match &bundle.spec().pinned {
                Some(pinned) => format!(", pinned to {} CA SHA-256(s)", pinned.len()),
                None => String::new(),
            }
        );
    }
    if let Some(inventory) = generation.inventory() {
        outln!(
            "  inventory  {}: {} host(s), {} revoked serial(s){}",
            inventory.path().display(),
            inventory.hosts().len(),
            inventory.revoked_count(),
            match inventory.read_by() {
                InventoryReader::Canonical => "",
                // Valid, but a 50,000-host file in this shape takes about
                // 0.6 s and 235 MB to read instead of 0.1 s and 45 MB.
                InventoryReader::General if inventory.hosts().len() >= LARGE_INVENTORY =>
                    " (not in the shape the docs show, so read by the general parser: \
                     several times slower and hungrier at this size; see \
                     \"Large inventories\" in the configuration guide)",
                InventoryReader::General => "",
            }
        );
    }
    if let Some(bootstrap) = &config.bootstrap {
        outln!(
            "  bootstrap  {}: trust bundles ({}) over TLS, no client certificate, {} requests/min per source",
            bootstrap.listen,
            bootstrap.domains.as_ref().map_or_else(
                || "every domain".to_owned(),
                |d| d.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            bootstrap.requests_per_minute
        );
    }
    for listener in config.listeners() {
        outln!(
            "  listener   {} {} {} {} -> {} (trust domain {})",
            listener.name,
            listener.direction(),
            listener.protocol().as_str(),
            listener.listen,
            listener.upstream(),
            listener.trust_domain
        );
    }
    match &options.compare {
        Some(running) => Ok(compare(running, config, &generation)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Prints what a reload from `running_path` to `config` would change, one
/// line per item: `live: ITEM` or `restart: ITEM: WHY`. Exit 0 when
/// everything applies on reload, 4 when anything needs a restart.
fn compare(running_path: &Path, config: Config, generation: &Generation) -> ExitCode {
    let running = match Config::load(running_path) {
        Ok(running) => running,
        Err(e) => {
            // Nothing says what the daemon runs with: only a restart
            // makes it run this configuration.
            outln!(
                "restart: config: the running configuration does not load, so only a restart \
                 applies this one: {}",
                one_line(&e.to_string())
            );
            return ExitCode::from(RESTART_REQUIRED);
        }
    };
    let running_generation = match Generation::load(&running.material_spec(), SystemTime::now()) {
        Ok(generation) => Some(generation),
        Err(problems) => {
            out::report(
                Level::Warn,
                "check",
                &format!(
                    "the running configuration's TLS material does not load ({} problem(s)); \
                     every material item is compared as new (material changes apply live):",
                    problems.len()
                ),
                &problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            );
            None
        }
    };
    let change = ConfigChange::new(&running, config);
    let items = change.items(running_generation.as_ref(), generation);
    outln!("compared with {}:", running_path.display());
    if items.is_empty() {
        outln!("  no differences");
    }
    let mut restart = false;
    for item in &items {
        match item.applies {
            Applies::Live => outln!("live: {}", describe(item)),
            Applies::Restart => {
                restart = true;
                let why = change
                    .refused
                    .iter()
                    .filter(|(section, _)| {
                        item.item == crate::reloading::Item::Config(section.clone())
                    })
                    .map(|(_, why)| why.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                outln!("restart: {}: {why}", item.item);
            }
        }
    }
    if restart {
        ExitCode::from(RESTART_REQUIRED)
    } else {
        ExitCode::SUCCESS
    }
}

/// An item that applies live, with what changed in the inventory.
fn describe(item: &ItemChange) -> String {
    let what = match (&item.old, &item.new) {
        (None, Some(_)) => " (added)",
        (Some(_), None) => " (removed)",
        _ => "",
    };
    match &item.inventory {
        Some(delta) => format!(
            "{}{what}: {}",
            item.item,
            serde_json::to_string(delta).unwrap_or_default()
        ),
        None => format!("{}{what}", item.item),
    }
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

/// What only binding shows, one sentence each: a listen address whose IP
/// is not on this host. Binds `IP:0` (never the configured port, which the
/// running daemon may hold) and closes it at once.
fn bind_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let mut try_ip = |place: String, addr: SocketAddr| {
        if let Err(e) = TcpListener::bind(SocketAddr::new(addr.ip(), 0)) {
            problems.push(format!("{place}: listen {addr}: {}", bind_error(&e)));
        }
    };
    for listener in config.listeners() {
        try_ip(format!("listener '{}'", listener.name), listener.listen);
    }
    try_ip("admin".to_owned(), config.admin_listen);
    if let Some(bootstrap) = &config.bootstrap {
        try_ip("bootstrap".to_owned(), bootstrap.listen);
    }
    problems
}

fn bind_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrNotAvailable => "address not on this host (EADDRNOTAVAIL)".to_owned(),
        _ => format!("cannot bind: {e}"),
    }
}

fn report_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid { path, problems } => {
            out::report(
                Level::Error,
                "check",
                &format!("{} problem(s) in {}:", problems.len(), path.display()),
                &problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            );
        }
        other => out::report(Level::Error, "check", &WithCauses(other).to_string(), &[]),
    }
}
