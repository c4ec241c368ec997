//! `mtlsd run`: the daemon.

use anyhow::Context;
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use std::process::ExitCode;

use crate::config::{Config, ConfigError};
use crate::daemon::Running;
use crate::notify::systemd as notify_systemd;
use crate::reloading::Trigger;

/// Runs the configuration `Cli::prepare` loaded.
pub(super) async fn run(loaded: Result<Config, ConfigError>) -> anyhow::Result<ExitCode> {
    let config = loaded.context("invalid configuration")?;
    serve(&config, || {}).await
}

/// Runs `config` until SIGTERM or SIGINT. `on_ready` is called once every
/// listener is bound (after READY=1 went to systemd).
pub(super) async fn serve(config: &Config, on_ready: impl FnOnce()) -> anyhow::Result<ExitCode> {
    warn_about_insecure_settings(config);
    // Register before binding so a signal during start-up is not fatal.
    let mut signals =
        Signals::new([SIGHUP, SIGTERM, SIGINT]).context("cannot install signal handlers")?;

    let running = Running::start_with_env(config, std::env::vars().collect())
        .await
        .context("cannot start")?;

    let identity = running.store().current().identity().leaf().clone();
    notify_systemd(&[
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
            // The reloader logs, audits and counts the outcome.
            SIGHUP => {
                let _ = running.reload(Trigger::Sighup).await;
            }
            _ => {
                tracing::info!(
                    signal,
                    "shutting down: no longer accepting, draining connections"
                );
                break;
            }
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let outcome = running.drain(config.drain_timeout).await;
    tracing::info!(forced_closed = outcome.forced, "stopped");
    Ok(ExitCode::SUCCESS)
}

fn warn_about_insecure_settings(config: &Config) {
    for setting in config.insecure_settings() {
        tracing::warn!("{setting}");
    }
}
