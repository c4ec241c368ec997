//! `mtlsd reload`: a synchronous reload for systemd's ExecReload.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use http::{Method, StatusCode};

use super::admin_client::{self, AdminError};
use super::out::{self, Level, outln};

/// Exit code when no daemon answered.
const NOT_RUNNING: u8 = 3;
/// Exit code when the reload applied what it could but a changed setting
/// only takes effect after a restart.
const RESTART_REQUIRED: u8 = 4;

pub(super) async fn reload(admin: Option<SocketAddr>, config: &Path) -> anyhow::Result<ExitCode> {
    let target = admin_client::resolve(admin, config);
    let reply = match admin_client::call(&target, Method::POST, "/reload").await {
        Ok(reply) => reply,
        Err(e @ AdminError::Unreachable { .. }) => {
            out::report(Level::Error, "reload", &e.to_string(), &[]);
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    let (status, via) = (reply.status, &reply.via);
    let outcome: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|e| {
        anyhow::anyhow!(
            "unexpected answer from {via} ({status}): {e}: {}",
            String::from_utf8_lossy(&reply.body).trim_end()
        )
    })?;
    let result = outcome["result"].as_str().unwrap_or("unknown");
    let generation = outcome["generation"].as_u64().unwrap_or(0);
    match status {
        StatusCode::OK if result == "restart_required" => {
            outln!("reload {result}: generation {generation}");
            out::report(
                Level::Warn,
                "reload",
                "applied what it could; restart mtlsd to apply the rest:",
                &[],
            );
            print_refused(&outcome);
            Ok(ExitCode::from(RESTART_REQUIRED))
        }
        StatusCode::OK => {
            outln!("reload {result}: generation {generation}");
            print_refused(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let reason = outcome["reason"].as_str().unwrap_or("no reason given");
            out::report(
                Level::Error,
                "reload",
                &format!("rejected, still serving generation {generation}: {reason}"),
                &[],
            );
            print_refused(&outcome);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_refused(outcome: &serde_json::Value) {
    for refused in outcome["refused"].as_array().into_iter().flatten() {
        if let Some(text) = refused.as_str() {
            out::detail(Level::Warn, "reload", &format!("needs a restart: {text}"));
        }
    }
}
