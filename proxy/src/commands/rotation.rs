//! `mtlsd rotation check`: asks the running daemon whether one phase of a
//! CA rotation is done on this host, prints what blocks it, and says so in
//! its exit code, so a playbook can stop before the next phase.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use http::{Method, StatusCode};

use super::admin_client::{self, AdminError};
use super::out::{self, Level, outln};
use crate::rotation::normalize_ca;
use crate::rotation_report::{Phase, RotationCheck};

/// Exit code when no daemon answered (as `mtlsd status`).
const NOT_RUNNING: u8 = 3;
/// Something this host knows of needs the CA (or lacks it, for add-ca).
const BLOCKED: u8 = 4;
/// Nothing known blocks, but hosts this host should talk to were not
/// seen recently; `--allow-unknown` accepts that.
const UNKNOWN: u8 = 5;

pub(super) struct Question<'a> {
    pub(super) phase: Phase,
    pub(super) ca: &'a str,
    pub(super) trust_domain: Option<&'a str>,
    pub(super) allow_unknown: bool,
    pub(super) json: bool,
}

pub(super) async fn check(
    admin: Option<SocketAddr>,
    config: &Path,
    question: &Question<'_>,
) -> anyhow::Result<ExitCode> {
    let Some(ca) = normalize_ca(question.ca) else {
        anyhow::bail!(
            "--ca '{}': give the CA's SHA-256 (64 hex digits, colons allowed; `mtlsd status` \
             prints each CA's) or a prefix of 8 or more",
            question.ca
        );
    };
    let target = admin_client::resolve(admin, config);
    let mut path = format!("/rotation?phase={}&ca={ca}", question.phase);
    if let Some(domain) = question.trust_domain {
        path.push_str("&trust_domain=");
        path.push_str(domain);
    }
    let (code, body, addr) = match admin_client::call(&target, Method::GET, &path).await {
        Ok(reply) => (reply.status, reply.body, reply.via),
        Err(e @ AdminError::Unreachable { .. }) => {
            out::report(Level::Error, "rotation", &e.to_string(), &[]);
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    if code != StatusCode::OK {
        anyhow::bail!(
            "{addr} answered {code}: {}",
            String::from_utf8_lossy(&body).trim_end()
        );
    }
    let answer: RotationCheck = serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("unexpected answer from {addr}: {e}"))?;
    if question.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_answer(&answer, question.allow_unknown);
    }
    Ok(ExitCode::from(exit_code(&answer, question.allow_unknown)))
}

fn exit_code(answer: &RotationCheck, allow_unknown: bool) -> u8 {
    if !answer.blockers.is_empty() {
        BLOCKED
    } else if !answer.unknown.is_empty() && !allow_unknown {
        UNKNOWN
    } else {
        0
    }
}

fn print_answer(answer: &RotationCheck, allow_unknown: bool) {
    let host = answer.host.as_deref().unwrap_or("this host");
    let ca = match &answer.ca_subject {
        Some(subject) => format!("{} ({subject})", answer.ca_sha256),
        None => answer.ca_sha256.clone(),
    };
    let verdict = match exit_code(answer, allow_unknown) {
        0 if answer.unknown.is_empty() => "done".to_owned(),
        0 => format!(
            "done, accepting {} host(s) not seen recently (--allow-unknown)",
            answer.unknown.len()
        ),
        BLOCKED => format!("NOT done: {} blocker(s)", answer.blockers.len()),
        _ => format!(
            "NOT known: {} host(s) not seen recently (--allow-unknown accepts that)",
            answer.unknown.len()
        ),
    };
    outln!(
        "{host}: {} of CA {ca} in trust domain {}: {verdict}",
        answer.phase,
        answer.trust_domain
    );
    if let Some(note) = &answer.note {
        outln!("  note: {note}");
    }
    for blocker in &answer.blockers {
        outln!(
            "  blocker: {}: {}",
            blocker.host.as_deref().unwrap_or(host),
            blocker.reason
        );
    }
    for unknown in &answer.unknown {
        let last = unknown
            .last_handshake
            .as_deref()
            .map(|t| format!(", last handshake {t}"))
            .unwrap_or_default();
        outln!("  unknown: {}: {}{last}", unknown.host, unknown.seen);
    }
}
