//! `mtlsd check`: everything start-up validates, without starting.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use mtlsd_reload::Generation;

use crate::config::{Config, ConfigError};

pub(super) fn check(config_path: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            report_config_error(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let generation = match Generation::load(&config.material_spec(), SystemTime::now()) {
        Ok(generation) => generation,
        Err(problems) => {
            eprintln!(
                "mtlsd check: {} problem(s) with TLS material:",
                problems.len()
            );
            for problem in problems.iter() {
                eprintln!("  - {problem}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };

    if let Some(revoked) = generation.own_revocation() {
        eprintln!("mtlsd check: 1 problem with TLS material:");
        eprintln!("  - {}: {revoked}", config.identity.cert.display());
        return Ok(ExitCode::FAILURE);
    }
    let warnings = generation
        .inventory()
        .map(|inventory| config.role_warnings(inventory))
        .unwrap_or_default();
    for warning in &warnings {
        eprintln!("mtlsd check: warning: {warning}");
    }
    if strict && !warnings.is_empty() {
        eprintln!(
            "mtlsd check: {} warning(s), and --strict makes them problems",
            warnings.len()
        );
        return Ok(ExitCode::FAILURE);
    }

    println!("{}: ok", config_path.display());
    let leaf = generation.identity().leaf();
    println!(
        "  identity   {} (serial {}, expires {})",
        leaf.subject,
        leaf.serial_hex,
        humantime::format_rfc3339_seconds(leaf.not_after)
    );
    for (name, bundle) in generation.bundles() {
        println!(
            "  trust      {name}: {} CA(s), version {}, sha256 {}",
            bundle.cas().len(),
            bundle.version().unwrap_or("-"),
            bundle.fingerprint()
        );
    }
    for listener in config.listeners() {
        println!(
            "  listener   {} {} {} {} -> {} (trust domain {})",
            listener.name,
            listener.direction,
            listener.protocol.as_str(),
            listener.listen,
            listener.upstream,
            listener.trust_domain
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn report_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid { path, problems } => {
            eprintln!(
                "mtlsd check: {} problem(s) in {}:",
                problems.len(),
                path.display()
            );
            for problem in problems {
                eprintln!("  - {problem}");
            }
        }
        other => eprintln!("mtlsd check: {other}"),
    }
}
