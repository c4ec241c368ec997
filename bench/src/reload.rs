//! Rotation latency.
//!
//! *SIGHUP*: new cert and key are in place, the clock starts at the
//! signal and stops at the first full handshake that presents the new
//! serial (file watching off, so only the signal can cause the swap).
//! *File write*: the clock starts when the certificate has been renamed
//! into place (the key went first) and stops at the first handshake with
//! the new serial; this includes the watcher's settle delay, which is the
//! configured `reload.settle` (default 250 ms) and dominates the figure.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use mtlsd_devca::CertificateAuthority;
use nix::sys::signal::{Signal, kill};

use crate::support::{self, Daemon};

pub(crate) async fn run(mtlsd: &Path, iterations: usize) -> anyhow::Result<serde_json::Value> {
    let sighup = measure(mtlsd, iterations, Trigger::Sighup).await?;
    let file = measure(mtlsd, iterations, Trigger::FileWrite).await?;
    Ok(serde_json::json!({
        "benchmark": "reload",
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "mtlsd": mtlsd.display().to_string(),
        "iterations": iterations,
        "sighup_to_first_new_handshake": sighup,
        "file_write_to_new_cert_served": file,
        "notes": "file-write latency includes reload.settle (250 ms default); poll interval 1 ms",
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Sighup,
    FileWrite,
}

async fn measure(
    mtlsd: &Path,
    iterations: usize,
    trigger: Trigger,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::new("bench CA")?;
    let host = support::leaf(&ca, "bench host")?;
    let cert = dir.path().join("host.crt");
    let key = dir.path().join("host.key");
    let bundle = dir.path().join("ca.pem");
    support::replace(&cert, &host.cert_pem, 0o644)?;
    support::replace(&key, &host.key_pem, 0o600)?;
    support::replace(&bundle, ca.cert_pem(), 0o644)?;
    let upstream = support::echo().await?;
    let watch = trigger == Trigger::FileWrite;
    let config = dir.path().join("mtlsd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\n[identity]\ncert = {cert:?}\nkey = {key:?}\n\
             [trust_domains.mesh]\nbundle = {bundle:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [reload]\nwatch = {watch}\n\
             [[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n",
            state = support::state_dir(dir.path()),
        ),
    )?;
    let daemon = Daemon::start(mtlsd, &config)?;
    let addr = daemon.addr("in")?;
    let client_leaf = support::leaf(&ca, "bench client")?;
    let client = support::client_config(&ca, &client_leaf)?;

    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let next = support::leaf(&ca, &format!("rotation {i}"))?;
        support::replace(&key, &next.key_pem, 0o600)?;
        support::replace(&cert, &next.cert_pem, 0o644)?;
        let start = Instant::now();
        if trigger == Trigger::Sighup {
            kill(daemon.pid(), Signal::SIGHUP)?;
        }
        loop {
            if support::served_serial(addr, &client).await? == next.serial_hex {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("rotation {i}: new certificate not served within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(start.elapsed());
        // Let the watcher's settle window close before the next rotation.
        tokio::time::sleep(Duration::from_millis(if watch { 400 } else { 20 })).await;
    }
    Ok(support::summary(&samples))
}
