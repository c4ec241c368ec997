//! `mtlsd status`: what a running daemon serves, for humans or as JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use http::{Method, StatusCode};
use serde_json::Value;

use super::admin_client::{self, AdminError};
use super::out::{self, Level, out, outln};

/// Exit code when no daemon answered.
const NOT_RUNNING: u8 = 3;

pub(super) async fn status(
    admin: Option<SocketAddr>,
    config: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let target = admin_client::resolve(admin, config)?;
    let addr = target.addr;
    let (code, body) = match admin_client::call(&target, Method::GET, "/status").await {
        Ok(reply) => reply,
        Err(e @ AdminError::Unreachable { .. }) => {
            out::report(Level::Error, "status", &e.to_string(), &[]);
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    if code != StatusCode::OK {
        anyhow::bail!("{addr} answered {code}: {}", String::from_utf8_lossy(&body));
    }
    let status: Value = serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("unexpected answer from {addr}: {e}"))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        out!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// The human view: a header, material, listeners and peers as tables.
fn render(st: &Value) -> String {
    let mut out = String::new();
    let ready = if st["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "NOT READY"
    };
    let _ = writeln!(
        out,
        "mtlsd {}: {ready}, generation {} (loaded {}, started {}), {} worker thread(s)",
        s(&st["version"]),
        st["generation"],
        s(&st["loaded_at"]),
        s(&st["started_at"]),
        st["worker_threads"]
    );
    if let Some(reload) = st["last_reload"].as_object() {
        let _ = write!(
            out,
            "last reload: {} {} {}",
            s(&reload["time"]),
            s(&reload["trigger"]),
            s(&reload["result"])
        );
        if let Some(reason) = reload.get("reason").and_then(Value::as_str) {
            let _ = write!(out, ": {reason}");
        }
        out.push('\n');
    }
    let id = &st["identity"];
    let _ = writeln!(out, "\nidentity  {}", s(&id["subject"]));
    let _ = writeln!(
        out,
        "          serial {}  expires {} ({})  sha256 {}",
        s(&id["serial"]),
        s(&id["not_after"]),
        s(&id["state"]),
        s(&id["sha256"])
    );
    let sans: Vec<&str> = id["sans"].as_array().into_iter().flatten().map(s).collect();
    let _ = writeln!(out, "          SANs {}", sans.join(", "));
    for domain in st["trust_domains"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "trust     {} version {}  sha256 {}",
            s(&domain["name"]),
            domain["version"].as_str().unwrap_or("-"),
            s(&domain["sha256"])
        );
        for ca in domain["cas"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "            CA {}  serial {}  expires {} ({})",
                s(&ca["subject"]),
                s(&ca["serial"]),
                s(&ca["not_after"]),
                s(&ca["state"])
            );
        }
    }
    if let Some(inv) = st["inventory"].as_object() {
        let _ = writeln!(
            out,
            "inventory cluster {}, {} hosts, sha256 {}",
            s(&inv["cluster"]),
            inv["hosts"],
            s(&inv["sha256"])
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
    for l in st["listeners"].as_array().into_iter().flatten() {
        let refused: Vec<String> = l["refused"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        rows.push(vec![
            s(&l["name"]).to_owned(),
            s(&l["direction"]).to_owned(),
            s(&l["protocol"]).to_owned(),
            s(&l["addr"]).to_owned(),
            s(&l["upstream"]).to_owned(),
            format!(
                "{}/{}",
                l["handshakes_completed"], l["handshakes_attempted"]
            ),
            if refused.is_empty() {
                "-".to_owned()
            } else {
                refused.join(",")
            },
            l["connections_active"].to_string(),
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
    ]];
    for p in st["peers"].as_array().into_iter().flatten() {
        let roles: Vec<&str> = p["roles"].as_array().into_iter().flatten().map(s).collect();
        rows.push(vec![
            s(&p["host"]).to_owned(),
            roles.join(","),
            s(&p["last_handshake"]).to_owned(),
            s(&p["cert_not_after"]).to_owned(),
            s(&p["state"]).to_owned(),
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
