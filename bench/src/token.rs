//! Token keys (issue 18): what signing through a PKCS#11 token costs a
//! handshake, against the same kind of key in a file.
//!
//! One release daemon per case, an inbound listener in front of an echo
//! upstream, its identity an ECDSA P-256 key:
//!
//! * `file`: the key in a PEM file (rustls signs in process);
//! * `token-1`: the key imported into a SoftHSM2 token, `pkcs11.sessions = 1`;
//! * `token-2`: the same, `pkcs11.sessions = 2`.
//!
//! Each case gets a fresh SoftHSM2 store (`softhsm2-util --init-token`, the
//! key imported and its file removed) and `SOFTHSM2_CONF` in the daemon's
//! environment. `concurrency` clients do full mTLS handshakes (no session
//! resumption, so every one signs) and one byte through the upstream, in a
//! loop, for `seconds`; the figures are handshakes per second and per
//! daemon CPU-second (utime + stime of every thread, from procfs). Cases
//! are interleaved across repetitions; medians and min–max.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mtlsd_devca::CertificateAuthority;
use rustls::ClientConfig;

use crate::procfs;
use crate::support::{self, Daemon};

const PIN: &str = "1234";

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) reps: usize,
    pub(crate) seconds: f64,
    pub(crate) concurrency: usize,
    pub(crate) module: Option<PathBuf>,
}

/// The cases, in the order they run within a repetition.
const CASES: [(&str, Option<usize>); 3] =
    [("file", None), ("token-1", Some(1)), ("token-2", Some(2))];

/// The SoftHSM2 module as Debian installs it.
fn find_module() -> anyhow::Result<PathBuf> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .context("libsofthsm2.so not found: install the Debian package softhsm2 (bench/run does)")
}

pub(crate) async fn run(mtlsd: &Path, params: &Params) -> anyhow::Result<serde_json::Value> {
    let module = match &params.module {
        Some(module) => module.clone(),
        None => find_module()?,
    };
    let bench = Bench::new(module).await?;
    let mut samples: Vec<(String, serde_json::Value)> = Vec::new();
    for rep in 0..params.reps {
        for (name, sessions) in CASES {
            eprintln!("token-keys: repetition {}, {name}", rep + 1);
            let sample = bench.measure(mtlsd, params, name, sessions).await?;
            samples.push((name.to_owned(), sample));
        }
    }
    let mut cases = serde_json::Map::new();
    for (name, _) in CASES {
        let of_case: Vec<&serde_json::Value> = samples
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| s)
            .collect();
        let stat = |key: &str| {
            let mut values: Vec<f64> = of_case.iter().filter_map(|s| s[key].as_f64()).collect();
            values.sort_by(f64::total_cmp);
            serde_json::json!({
                "median": round(median(&values)),
                "min": round(values.first().copied().unwrap_or(f64::NAN)),
                "max": round(values.last().copied().unwrap_or(f64::NAN)),
            })
        };
        cases.insert(
            name.to_owned(),
            serde_json::json!({
                "handshakes_per_second": stat("handshakes_per_second"),
                "handshakes_per_cpu_second": stat("handshakes_per_cpu_second"),
                "daemon_cpu_cores": stat("daemon_cpu_cores"),
                "samples": of_case,
            }),
        );
    }
    Ok(serde_json::json!({
        "benchmark": "token-keys",
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "mtlsd": mtlsd.display().to_string(),
        "module": bench.module.display().to_string(),
        "key": "ECDSA P-256",
        "tls": "TLS 1.3, client certificate required, full handshakes (resumption off)",
        "reps": params.reps,
        "seconds": params.seconds,
        "concurrency": params.concurrency,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cases": cases,
    }))
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// The material every case shares: one CA, the server's key and
/// certificate, a client certificate, the echo upstream.
struct Bench {
    dir: tempfile::TempDir,
    module: PathBuf,
    key_pem: String,
    client: Arc<ClientConfig>,
    upstream: SocketAddr,
}

impl Bench {
    async fn new(module: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = CertificateAuthority::new("token bench CA")?;
        let host = support::leaf(&ca, "server")?;
        support::replace(&dir.path().join("host.crt"), &host.cert_pem, 0o644)?;
        support::replace(&dir.path().join("host.key"), &host.key_pem, 0o600)?;
        support::replace(&dir.path().join("ca.pem"), ca.cert_pem(), 0o644)?;
        let client_cert = support::leaf(&ca, "client")?;
        let mut client = (*support::client_config(&ca, &client_cert)?).clone();
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            upstream: support::echo().await?,
            dir,
            module,
            key_pem: host.key_pem,
            client: Arc::new(client),
        })
    }

    /// A fresh SoftHSM2 store under `case`, token `mesh` holding the
    /// server's key as `host` (id 01); returns its config file.
    fn token_store(&self, case: &Path) -> anyhow::Result<PathBuf> {
        let tokens = case.join("tokens");
        std::fs::create_dir_all(&tokens)?;
        let conf = case.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )?;
        let key = case.join("host.p8");
        support::replace(&key, &self.key_pem, 0o600)?;
        let key_arg = key.display().to_string();
        for args in [
            &[
                "--init-token",
                "--free",
                "--label",
                "mesh",
                "--pin",
                PIN,
                "--so-pin",
                "5678",
            ][..],
            &[
                "--import", &key_arg, "--token", "mesh", "--label", "host", "--id", "01", "--pin",
                PIN,
            ][..],
        ] {
            let out = Command::new("softhsm2-util")
                .args(args)
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .context("softhsm2-util (apt softhsm2)")?;
            if !out.status.success() {
                bail!(
                    "softhsm2-util {args:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        std::fs::remove_file(&key)?;
        support::replace(&case.join("pin"), &format!("{PIN}\n"), 0o600)?;
        Ok(conf)
    }

    fn config(&self, case: &Path, sessions: Option<usize>) -> anyhow::Result<PathBuf> {
        let dir = self.dir.path();
        let key = match sessions {
            None => format!("key = {:?}\n", dir.join("host.key")),
            Some(n) => format!(
                "key = \"pkcs11:token=mesh;object=host;id=%01;type=private\"\n\
                 [pkcs11]\nmodule = {:?}\npin_file = {:?}\nsessions = {n}\n",
                self.module,
                case.join("pin"),
            ),
        };
        let path = case.join("mtlsd.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = {state:?}\n\
                 [identity]\ncert = {cert:?}\n{key}\
                 [trust_domains.mesh]\nbundle = {bundle:?}\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\
                 [reload]\nwatch = false\n\
                 [[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n",
                state = support::state_dir(case),
                cert = dir.join("host.crt"),
                bundle = dir.join("ca.pem"),
                upstream = self.upstream,
            ),
        )?;
        Ok(path)
    }

    async fn measure(
        &self,
        mtlsd: &Path,
        params: &Params,
        name: &str,
        sessions: Option<usize>,
    ) -> anyhow::Result<serde_json::Value> {
        let case = tempfile::tempdir_in(self.dir.path())?;
        let mut command = Command::new(mtlsd);
        if sessions.is_some() {
            command.env("SOFTHSM2_CONF", self.token_store(case.path())?);
        }
        let config = self.config(case.path(), sessions)?;
        let daemon = Daemon::start_with(command, &config)?;
        let addr = daemon.addr("in")?;
        let pid = [daemon.pid().as_raw()];
        // Warm-up: connections, the token's first signatures.
        for _ in 0..params.concurrency {
            support::admitted_handshake(addr, &self.client).await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let cpu_before = procfs::cpu_seconds(&pid);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..params.concurrency {
            let (stop, done, client) = (stop.clone(), done.clone(), self.client.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    support::admitted_handshake(addr, &client).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(params.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await?
                .with_context(|| format!("{name}: a handshake failed"))?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = procfs::cpu_seconds(&pid) - cpu_before;
        let handshakes = done.load(Ordering::Relaxed) as f64;
        // Every handshake completed on the server, none failed on its key.
        if let Some(admin) = daemon.admin {
            let (_, metrics) = support::http(admin, "GET", "/metrics").await?;
            let failed = metrics
                .lines()
                .filter(|l| l.starts_with("mtlsd_handshake_failures_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            if failed > 0.0 {
                bail!("{name}: {failed} handshakes failed on the server");
            }
        }
        drop(daemon);
        Ok(serde_json::json!({
            "handshakes": handshakes,
            "seconds": round(elapsed * 10.0) / 10.0,
            "daemon_cpu_seconds": (cpu * 1000.0).round() / 1000.0,
            "handshakes_per_second": round(handshakes / elapsed),
            "handshakes_per_cpu_second": round(handshakes / cpu.max(1e-9)),
            "daemon_cpu_cores": (cpu / elapsed * 100.0).round() / 100.0,
        }))
    }
}

/// The report as Markdown, for the results file.
pub(crate) fn markdown(report: &serde_json::Value) -> String {
    let mut out = format!(
        "# mtlsd-bench token-keys, {}\n\n\
         Handshakes per daemon CPU-second with the identity key ({}) in a SoftHSM2 token \
         (`{}`) against the same kind of key in a file. One release daemon per case, an \
         inbound listener in front of an echo upstream; {} clients at once doing {}, one byte \
         through the upstream each; {} s per case, {} repetition(s) interleaved; medians \
         (min–max). CPU: utime + stime of every daemon thread (procfs). {} cores, shared by \
         the clients, the daemon and the upstream.\n\n",
        report["date"].as_str().unwrap_or("-"),
        report["key"].as_str().unwrap_or("-"),
        report["module"].as_str().unwrap_or("-"),
        report["concurrency"],
        report["tls"].as_str().unwrap_or("-"),
        report["seconds"],
        report["reps"],
        report["cores"],
    );
    out.push_str(
        "| case | handshakes / daemon CPU-second | handshakes / s | daemon CPU (cores) |\n\
         |---|---|---|---|\n",
    );
    let cell = |v: &serde_json::Value| {
        format!(
            "{:.0} ({:.0}–{:.0})",
            v["median"].as_f64().unwrap_or(f64::NAN),
            v["min"].as_f64().unwrap_or(f64::NAN),
            v["max"].as_f64().unwrap_or(f64::NAN)
        )
    };
    for (name, _) in CASES {
        let case = &report["cases"][name];
        let label = match name {
            "file" => "key file",
            "token-1" => "token, `pkcs11.sessions = 1`",
            _ => "token, `pkcs11.sessions = 2`",
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {:.2} |",
            cell(&case["handshakes_per_cpu_second"]),
            cell(&case["handshakes_per_second"]),
            case["daemon_cpu_cores"]["median"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    let per_cpu = |name: &str| {
        report["cases"][name]["handshakes_per_cpu_second"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(
        out,
        "\nToken / file, per daemon CPU-second: {:.2} (one session), {:.2} (two sessions); \
         two sessions / one: {:.2}.",
        per_cpu("token-1") / per_cpu("file"),
        per_cpu("token-2") / per_cpu("file"),
        per_cpu("token-2") / per_cpu("token-1"),
    );
    out
}
