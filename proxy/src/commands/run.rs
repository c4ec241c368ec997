//! `mtlsd run`: the daemon.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use futures_util::StreamExt;
use mtlsd_reload::{Generation, MaterialStore};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::config::Config;
use crate::daemon::Running;

pub(super) async fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path).context("invalid configuration")?;
    serve(&config, || {}).await
}

/// Runs `config` until SIGTERM or SIGINT. `on_ready` is called once every
/// listener is bound (after READY=1 went to systemd).
pub(super) async fn serve(config: &Config, on_ready: impl FnOnce()) -> anyhow::Result<ExitCode> {
    warn_about_insecure_settings(config);
    // Register before binding so a signal during start-up is not fatal.
    let mut signals =
        Signals::new([SIGHUP, SIGTERM, SIGINT]).context("cannot install signal handlers")?;

    let spec = config.material_spec();
    let generation = Generation::load(&spec, SystemTime::now())
        .context("cannot start: TLS material is not usable")?;
    let store = Arc::new(MaterialStore::new(generation));
    let running = Running::start_with_store(config, store.clone())
        .await
        .context("cannot start")?;

    let identity = store.current().identity().leaf().clone();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "serving {} listeners as {}",
            config.listeners().count(),
            identity.subject
        )),
    ]);
    tracing::info!(
        listeners = config.listeners().count(),
        identity = %identity.subject,
        serial = %identity.serial_hex,
        not_after = %humantime::format_rfc3339_seconds(identity.not_after),
        "ready"
    );
    on_ready();

    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP => reload_material(&store, &spec),
            _ => {
                tracing::info!(
                    signal,
                    "shutting down: no longer accepting, draining connections"
                );
                break;
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let outcome = running.drain(config.drain_timeout).await;
    tracing::info!(forced_closed = outcome.forced, "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Validate-then-swap of the TLS material; the previous generation stays
/// if anything is wrong.
fn reload_material(store: &MaterialStore, spec: &mtlsd_reload::MaterialSpec) {
    match Generation::load(spec, SystemTime::now()) {
        Ok(next) => {
            let serial = next.identity().leaf().serial_hex.clone();
            let number = store.publish(next);
            tracing::info!(trigger = "sighup", generation = number, serial = %serial, "TLS material reloaded");
        }
        Err(problems) => tracing::error!(
            trigger = "sighup",
            generation = store.current().number(),
            problems = %problems,
            "reload rejected; keeping the current TLS material"
        ),
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn warn_about_insecure_settings(config: &Config) {
    if config.identity.insecure_key_permissions {
        tracing::warn!(
            "identity.insecure_key_permissions is on: a group- or world-readable private key will be accepted"
        );
    }
}
