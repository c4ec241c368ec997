//! `mtlsd status`: what a running daemon serves, for humans or as JSON.
//! The human view renders the typed report ([`crate::status_report`]) the
//! daemon serialises.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::admin_client::{self, AdminError};
use super::out::{self, Level, out, outln};
use crate::status_report::Status;

/// Exit code when no daemon answered.
const NOT_RUNNING: u8 = 3;

pub(super) async fn status(
    admin: Option<SocketAddr>,
    config: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let target = admin_client::resolve(admin, config);
    let (code, body, addr) = match admin_client::call(&target, Method::GET, "/status").await {
        Ok(reply) => (reply.status, reply.body, reply.via),
        Err(e @ AdminError::Unreachable { .. }) => {
            out::report(Level::Error, "status", &e.to_string(), &[]);
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    if code != StatusCode::OK {
        anyhow::bail!("{addr} answered {code}: {}", String::from_utf8_lossy(&body));
    }
    // Read as JSON first: `--json` prints what the daemon sent, fields this
    // version does not know included.
    let answer: Value = serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("unexpected answer from {addr}: {e}"))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let status = Status::deserialize(&answer).map_err(|e| {
        anyhow::anyhow!(
            "unexpected status from {addr}: {e}; `mtlsd status --json` shows it as sent"
        )
    })?;
    out!("{}", render(&status));
    Ok(ExitCode::SUCCESS)
}

/// The human view: a header, material, listeners and peers as tables.
pub fn render(st: &Status) -> String {
    let mut out = String::new();
    let ready = if st.ready { "ready" } else { "NOT READY" };
    let _ = writeln!(
        out,
        "mtlsd {}: {ready}, generation {} (loaded {}, started {}), {} worker thread(s)",
        st.version, st.generation, st.loaded_at, st.started_at, st.worker_threads
    );
    if let Some(reload) = &st.last_reload {
        let _ = write!(
            out,
            "last reload: {} {} {}",
            reload.time,
            reload.outcome.trigger.as_str(),
            reload.outcome.result.as_str()
        );
        if let Some(reason) = &reload.outcome.reason {
            let _ = write!(out, ": {reason}");
        }
        out.push('\n');
    }
    let id = &st.identity;
    let _ = writeln!(out, "\nidentity  {}", id.subject);
    let _ = writeln!(
        out,
        "          serial {}  expires {} ({})  sha256 {}",
        id.serial, id.not_after, id.state, id.sha256
    );
    let _ = writeln!(out, "          SANs {}", id.sans.join(", "));
    if let Some(token) = &st.identity_token {
        let _ = writeln!(
            out,
            "          key in {} ({}), {} of {} session(s) open",
            token.key, token.module, token.sessions_open, token.sessions
        );
    }
    if !st.identity_depends_on_ca.is_empty() {
        let _ = writeln!(
            out,
            "          needs CA {}",
            st.identity_depends_on_ca.join(", ")
        );
    }
    for domain in &st.trust_domains {
        let _ = writeln!(
            out,
            "trust     {} version {}  sha256 {}",
            domain.name,
            domain.version.as_deref().unwrap_or("-"),
            domain.sha256
        );
        for ca in &domain.cas {
            let _ = writeln!(
                out,
                "            CA {}  serial {}  expires {} ({})  sha256 {}",
                ca.subject,
                ca.serial,
                ca.not_after,
                ca.state,
                hex_of(&ca.sha256)
            );
        }
    }
    if let Some(inv) = &st.inventory {
        let _ = writeln!(
            out,
            "inventory cluster {}, {} hosts, sha256 {}",
            inv.cluster, inv.hosts, inv.sha256
        );
    }

    let mut rows = vec![vec![
        "LISTENER".to_owned(),
        "DIR".to_owned(),
        "PROTO".to_owned(),
        "ADDR".to_owned(),
        "UPSTREAM".to_owned(),
        "HANDSHAKES (DONE/TRIED)".to_owned(),
        "REFUSED".to_owned(),
        "OPEN".to_owned(),
    ]];
    for l in &st.listeners {
        let refused: Vec<String> = l
            .refused
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        rows.push(vec![
            l.name.clone(),
            l.direction.clone(),
            l.protocol.clone(),
            l.addr.clone(),
            l.upstream.clone(),
            format!("{}/{}", l.handshakes_completed, l.handshakes_attempted),
            if refused.is_empty() {
                "-".to_owned()
            } else {
                refused.join(",")
            },
            l.connections_active.to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));

    let mut rows = vec![vec![
        "PEER".to_owned(),
        "ROLES".to_owned(),
        "LAST HANDSHAKE".to_owned(),
        "CERT EXPIRES".to_owned(),
        "STATE".to_owned(),
        "NEEDS CA".to_owned(),
    ]];
    for p in &st.peers {
        // One entry per trust domain it was met in; the domain is named
        // only when there are several.
        let needs: Vec<String> = p
            .trust
            .iter()
            .map(|t| {
                let cas = if !t.verifies {
                    "none verifies it".to_owned()
                } else if t.depends_on_ca.is_empty() {
                    "-".to_owned()
                } else {
                    t.depends_on_ca
                        .iter()
                        .map(|ca| ca.get(..SHORT_CA).unwrap_or(ca))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                if p.trust.len() > 1 {
                    format!("{}:{cas}", t.trust_domain)
                } else {
                    cas
                }
            })
            .collect();
        let needs = if needs.is_empty() {
            "?".to_owned()
        } else {
            needs.join(" ")
        };
        rows.push(vec![
            p.host.clone(),
            p.roles.join(","),
            p.last_handshake.clone(),
            p.cert_not_after.clone(),
            p.state.clone(),
            needs,
        ]);
    }
    out.push('\n');
    if rows.len() == 1 {
        out.push_str("no peers seen yet\n");
    } else {
        out.push_str(&table(&rows));
    }
    out
}

/// CA fingerprints in the peer table: enough to tell a bundle's CAs
/// apart (the CA lines above show them whole).
const SHORT_CA: usize = 12;

/// `AB:CD:…` (how certificate fingerprints are shown) as `abcd…`, the
/// form metrics and `mtlsd rotation` use for CAs.
pub(crate) fn hex_of(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
