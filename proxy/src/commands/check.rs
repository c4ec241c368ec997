//! `mtlsd check`: everything start-up validates, without starting.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use mtlsd_reload::Generation;

use super::out::{self, Level, outln};
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
            out::report(
                Level::Error,
                "check",
                &format!("{} problem(s) with TLS material:", problems.len()),
                &problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            );
            return Ok(ExitCode::FAILURE);
        }
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
    if strict && !warnings.is_empty() {
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
    for (name, bundle) in generation.bundles() {
        outln!(
            "  trust      {name}: {} CA(s), version {}, sha256 {}",
            bundle.cas().len(),
            bundle.version().unwrap_or("-"),
            bundle.fingerprint()
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
    Ok(ExitCode::SUCCESS)
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
        other => out::report(Level::Error, "check", &other.to_string(), &[]),
    }
}
