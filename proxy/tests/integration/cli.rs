//! The real `mtlsd` binary: start-up refusals, `check`, `inspect`, `dev`,
//! signals, drain and systemd readiness.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mtlsd_devca::{CertificateAuthority, LeafSpec};
use nix::sys::signal::Signal;
use tokio::net::TcpStream;

use crate::support::process::{MtlsdProcess, run_to_end};
use crate::support::*;

/// A good single-inbound setup; tests break one thing at a time.
struct Setup {
    pki: Pki,
    host: HostFiles,
    ca: std::path::PathBuf,
}

impl Setup {
    fn new() -> Self {
        let pki = Pki::new();
        let host = pki.host("host", &localhost_leaf("host"));
        let ca = pki.ca_file();
        Self { pki, host, ca }
    }

    fn config(&self, upstream: &str, extra: &str) -> std::path::PathBuf {
        let text = format!(
            "{}{extra}\n[[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n",
            material_toml(&self.host, &self.ca)
        );
        self.pki.write("mtlsd.toml", &text, 0o600)
    }
}

fn run_args(config: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// `mtlsd run --config config`, after one round trip through listener "in"
/// (so it is serving), with that connection still open.
async fn run_serving(
    setup: &Setup,
    config: &Path,
) -> (
    MtlsdProcess,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let args = run_args(config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut mtlsd = MtlsdProcess::spawn(&args, &[]);
    let addr = mtlsd.listener_addr("in").await;
    let client = setup.pki.ca.issue(&localhost_leaf("client")).unwrap();
    let mut stream = tls_connect(addr, client_config(setup.pki.ca.cert_der(), Some(&client)))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut stream, b"x").await.unwrap(), b"x");
    (mtlsd, stream)
}

#[test]
fn startup_refuses_each_bad_input_and_names_it() {
    type Breaker = fn(&Setup) -> (std::path::PathBuf, String);
    let cases: Vec<(&str, Breaker)> = vec![
        ("missing certificate file", |s| {
            std::fs::remove_file(&s.host.cert).unwrap();
            (
                s.config("127.0.0.1:9", ""),
                s.host.cert.display().to_string(),
            )
        }),
        ("garbage PEM", |s| {
            std::fs::write(&s.host.cert, "-----BEGIN CERTIFICATE-----\n!!!\n").unwrap();
            (
                s.config("127.0.0.1:9", ""),
                s.host.cert.display().to_string(),
            )
        }),
        ("key of another certificate", |s| {
            let other = s.pki.ca.issue(&localhost_leaf("other")).unwrap();
            std::fs::write(&s.host.key, other.key_pem).unwrap();
            (s.config("127.0.0.1:9", ""), "does not match".to_owned())
        }),
        ("expired leaf", |s| {
            let old = s.pki.host("host", &localhost_leaf("host").expired());
            assert_eq!(old.cert, s.host.cert);
            (s.config("127.0.0.1:9", ""), "expired at".to_owned())
        }),
        ("leaf that does not chain", |s| {
            let stranger = CertificateAuthority::new("stranger").unwrap();
            s.pki.host_from(&stranger, "host", &localhost_leaf("host"));
            (
                s.config("127.0.0.1:9", ""),
                "does not chain to trust domain 'mesh'".to_owned(),
            )
        }),
        ("world-readable key", |s| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&s.host.key, std::fs::Permissions::from_mode(0o644)).unwrap();
            (
                s.config("127.0.0.1:9", ""),
                "readable by group or others".to_owned(),
            )
        }),
        ("unknown config key", |s| {
            (
                s.config("127.0.0.1:9", "[tls]\nmin_versoin = \"1.3\"\n"),
                "tls.min_versoin: unknown key".to_owned(),
            )
        }),
        ("bad listen address", |s| {
            let text = format!(
                "{}[[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:99999\"\nupstream = \"127.0.0.1:9\"\n",
                material_toml(&s.host, &s.ca)
            );
            (
                s.pki.write("mtlsd.toml", &text, 0o600),
                "inbound[0].listen".to_owned(),
            )
        }),
    ];
    for (what, breaker) in cases {
        let setup = Setup::new();
        let (config, expected) = breaker(&setup);
        let args = run_args(&config);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, stderr) = run_to_end(&args, Duration::from_secs(20));
        assert_eq!(
            status.code(),
            Some(1),
            "{what}: exit status; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(&expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );
        assert!(
            !stderr.contains("\"listening\""),
            "{what}: a listener was bound before refusing:\n{stderr}"
        );
    }
}

#[test]
fn a_port_in_use_is_named_once_with_its_listener() {
    let setup = Setup::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "{}[[inbound]]\nname = \"in\"\nlisten = \"{}\"\nupstream = \"127.0.0.1:9\"\n",
        material_toml(&setup.host, &setup.ca),
        taken.local_addr().unwrap()
    );
    let config = setup.pki.write("mtlsd.toml", &text, 0o600);
    let args = run_args(&config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, _, stderr) = run_to_end(&args, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "listener 'in': cannot listen on {}: Address already in use",
            taken.local_addr().unwrap()
        )),
        "{stderr}"
    );
}

#[test]
fn check_exit_codes_and_every_problem_listed() {
    let setup = Setup::new();
    let config = setup.config("127.0.0.1:9", "");
    let config_arg = config.display().to_string();
    let (status, stdout, stderr) =
        run_to_end(&["check", "--config", &config_arg], Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stdout.contains("listener   in inbound tcp"), "{stdout}");

    // Two independent material problems: both are listed in one run.
    setup.pki.host("host", &localhost_leaf("host").expired());
    std::fs::write(&setup.ca, "not a bundle").unwrap();
    let (status, _, stderr) =
        run_to_end(&["check", "--config", &config_arg], Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("expired at"), "{stderr}");
    assert!(
        stderr.contains("mesh-ca.pem: no CERTIFICATE block found"),
        "{stderr}"
    );

    // Config problems are listed with their keys.
    let bad = setup.pki.write(
        "bad.toml",
        "[identity]\ncert = \"a\"\n[trust_domains.mesh]\n[[outbound]]\nname = \"o\"\nlisten = \"0.0.0.0:1\"\nupstream = \"x:1\"\n\
         [peers]\nstale_after = \"2days\"\nforget_after = \"1day\"\n",
        0o600,
    );
    let (status, _, stderr) = run_to_end(
        &["check", "--config", &bad.display().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    for key in [
        "identity.key",
        "trust_domains.mesh.bundle",
        "outbound[0].listen",
        "peers.forget_after: must be longer than peers.stale_after (2days)",
    ] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }

    let (status, _, stderr) = run_to_end(
        &["check", "--config", "/nonexistent/mtlsd.toml"],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/mtlsd.toml"), "{stderr}");
}

/// `check` names the inventory and, for a large one that is not in the
/// canonical shape, says why it reads slowly; a small one gets no hint.
#[test]
fn check_says_when_a_large_inventory_is_read_by_the_general_parser() {
    let setup = Setup::new();
    let inventory = |hosts: usize, inline: bool| {
        let mut text = String::from("cluster = \"big\"\n");
        let host = |name: &str, sans: &str| {
            if inline {
                format!("{name} = {{ sans = [{sans}], roles = [\"api\"] }}\n")
            } else {
                format!("\n[hosts.{name}]\nsans = [{sans}]\nroles = [\"api\"]\n")
            }
        };
        if inline {
            text.push_str("[hosts]\n");
        }
        text.push_str(&host("host", "\"DNS:localhost\", \"IP:127.0.0.1\""));
        for i in 1..hosts {
            text.push_str(&host(&format!("h{i}"), &format!("\"DNS:h{i}.big.test\"")));
        }
        text
    };
    let check = |inventory: String| {
        let text = with_inventory(
            &setup.pki,
            &inventory,
            "host",
            format!(
                "{}[[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\nallow_roles = [\"api\"]\n",
                material_toml(&setup.host, &setup.ca)
            ),
        );
        let config = setup.pki.write("mtlsd.toml", &text, 0o600);
        let (status, stdout, stderr) = run_to_end(
            &["check", "--config", &config.display().to_string()],
            Duration::from_secs(60),
        );
        assert_eq!(status.code(), Some(0), "{stderr}");
        stdout
            .lines()
            .find(|line| line.starts_with("  inventory  "))
            .unwrap_or_else(|| panic!("no inventory line in:\n{stdout}"))
            .to_owned()
    };
    let hint = "read by the general parser";

    let line = check(inventory(10_000, false));
    assert!(
        line.contains("inventory.toml: 10000 host(s), 0 revoked"),
        "{line}"
    );
    assert!(!line.contains(hint), "{line}");

    let line = check(inventory(10_000, true));
    assert!(line.contains("10000 host(s)"), "{line}");
    assert!(line.contains(hint), "{line}");
    assert!(line.contains("Large inventories"), "{line}");

    let line = check(inventory(10, true));
    assert!(
        line.contains("10 host(s)") && !line.contains(hint),
        "{line}"
    );
}

#[test]
fn inspect_reports_facts_and_chain_status() {
    let setup = Setup::new();
    let cert = setup.host.cert.display().to_string();
    let key = setup.host.key.display().to_string();
    let ca = setup.ca.display().to_string();
    let (status, stdout, stderr) = run_to_end(
        &["inspect", &cert, &key, "--bundle", &ca],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("serial:      {}", setup.host.issued.serial_hex)),
        "{stdout}"
    );
    assert!(stdout.contains("DNS:localhost, IP:127.0.0.1"), "{stdout}");
    assert!(
        stdout.contains("chains:      yes, for server auth"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("matches:     {cert}")), "{stdout}");

    let stranger = CertificateAuthority::new("stranger").unwrap();
    let other_ca = setup.pki.write("other-ca.pem", stranger.cert_pem(), 0o644);
    let (status, stdout, _) = run_to_end(
        &[
            "inspect",
            &cert,
            "--bundle",
            &other_ca.display().to_string(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1));
    assert!(stdout.contains("chains:      no"), "{stdout}");

    let garbage = setup.pki.write("garbage.pem", "hello", 0o644);
    let (status, stdout, _) = run_to_end(
        &["inspect", &garbage.display().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.contains("no certificates or private keys"),
        "{stdout}"
    );
}

/// The real binary with exactly these arguments (no `--log-format` added),
/// stdin closed, stderr captured.
fn mtlsd_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mtlsd"));
    command
        .args(args)
        .env_remove("MTLSD_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("MTLSD_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn assert_no_panic(what: &str, output: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(101), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{what}: {stderr}");
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let setup = Setup::new();
    let config = setup.config("127.0.0.1:9", "");
    let cert = setup.host.cert.display().to_string();
    let ca = setup.ca.display().to_string();
    let config = config.display().to_string();
    // Enough files that the output is many times a pipe buffer (64 KiB).
    let mut inspect = vec!["inspect", "--bundle", ca.as_str()];
    inspect.extend(std::iter::repeat_n(cert.as_str(), 300));
    let commands: Vec<Vec<&str>> = vec![
        inspect.clone(),
        vec!["check", "--config", &config],
        vec!["--help"],
    ];

    // The reader is gone before the first write.
    for args in &commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = mtlsd_command(args)
            .stdout(Stdio::from(writer))
            .output()
            .unwrap();
        assert_no_panic(args[0], &output);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
    }

    // The reader takes the first line, then goes, as `| head -1` does.
    let mut child = mtlsd_command(&inspect)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.ends_with(": certificate 1 of 1\n"), "{first}");
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    assert_no_panic("inspect | head -1", &output);
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn a_log_written_to_a_file_has_no_colour_codes() {
    let setup = Setup::new();
    // A bundle with an expired CA next to a valid one logs a warning.
    let now = mtlsd_devca::OffsetDateTime::now_utc();
    let old = CertificateAuthority::with_validity(
        "old ca",
        now - Duration::from_secs(100 * 86_400),
        now - Duration::from_secs(86_400),
    )
    .unwrap();
    let bundle = setup.pki.write(
        "rotation.pem",
        &format!("{}{}", old.cert_pem(), setup.pki.ca.cert_pem()),
        0o644,
    );
    let log = setup.pki.path("mtlsd.log");
    let output = mtlsd_command(&[
        "--log-format",
        "text",
        "inspect",
        &setup.host.cert.display().to_string(),
        "--bundle",
        &bundle.display().to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .status()
    .unwrap();
    assert_eq!(output.code(), Some(0));
    let written = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&written);
    assert!(
        text.contains("CA certificate in trust bundle is outside its validity window"),
        "{text}"
    );
    assert!(
        !written.contains(&0x1b),
        "escape codes in the log:\n{text:?}"
    );
}

#[test]
fn with_json_logs_command_errors_are_json_lines() {
    let setup = Setup::new();
    let der = setup.pki.path("host.der");
    std::fs::write(&der, setup.host.issued.cert_der.as_ref()).unwrap();
    let der = der.display().to_string();
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["run", "--config", "/nonexistent/mtlsd.toml"],
            "/nonexistent/mtlsd.toml",
            "",
        ),
        (&["inspect", &der], "this looks like DER", "inspect"),
        (
            &["check", "--config", "/nonexistent/mtlsd.toml"],
            "/nonexistent/mtlsd.toml",
            "check",
        ),
    ];
    for (args, expected, command) in cases {
        let output = mtlsd_command(&[&["--log-format", "json"], args].concat())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        let line: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stderr}"));
        assert_eq!(line["level"], "ERROR", "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(
            line["message"].as_str().unwrap().contains(expected),
            "{line}"
        );
        if !command.is_empty() {
            assert_eq!(line["command"], command, "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_open_connection_then_exits_zero() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let config = setup.config(&echo.addr.to_string(), "");
    let notify_path = setup.pki.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(SOON)).unwrap();

    let args = run_args(&config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut mtlsd = MtlsdProcess::spawn(&args, &[("NOTIFY_SOCKET", &notify_path)]);
    let addr = mtlsd.listener_addr("in").await;
    let ready = receive(&notify);
    assert!(ready.contains("READY=1"), "{ready}");

    let client = setup.pki.ca.issue(&localhost_leaf("client")).unwrap();
    let config = client_config(setup.pki.ca.cert_der(), Some(&client));
    let mut stream = tls_connect(addr, config).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"before").await.unwrap(), b"before");

    mtlsd.signal(Signal::SIGTERM);
    let stopping = receive(&notify);
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    // No new connections...
    eventually("listener closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    // ...but the open one still works while draining.
    assert_eq!(round_trip(&mut stream, b"during").await.unwrap(), b"during");
    assert!(mtlsd.is_running());
    drop(stream);
    let status = mtlsd.exited(SOON).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_what_is_left_and_still_exits_zero() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let config = setup.config(&echo.addr.to_string(), "");
    // material_toml sets a 2 s drain deadline.
    let (mut mtlsd, mut stream) = run_serving(&setup, &config).await;

    let started = std::time::Instant::now();
    mtlsd.signal(Signal::SIGTERM);
    let status = mtlsd.exited(SOON).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "exited before the deadline"
    );
    mtlsd
        .wait_for_log("drain deadline passed; closing remaining connections", SOON)
        .await;
    assert_no_echo(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_in_good_material_and_keeps_the_old_on_bad() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    // File watching off: this is about the signal path alone.
    let config = setup.config(&echo.addr.to_string(), "[reload]\nwatch = false\n");
    let args = run_args(&config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut mtlsd = MtlsdProcess::spawn(&args, &[]);
    let addr = mtlsd.listener_addr("in").await;
    let client = setup.pki.ca.issue(&localhost_leaf("client")).unwrap();
    let client = client_config(setup.pki.ca.cert_der(), Some(&client));
    let served_serial = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
        let der = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        mtlsd_expiry::CertFacts::from_der(&der).unwrap().serial_hex
    };
    let first = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(served_serial(&first), setup.host.issued.serial_hex);

    let rotated = setup
        .pki
        .host("host", &LeafSpec::new("host", &["localhost"]));
    mtlsd.signal(Signal::SIGHUP);
    mtlsd
        .wait_for_log_where("TLS material reloaded", |l| l["trigger"] == "sighup", SOON)
        .await;
    let second = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(served_serial(&second), rotated.issued.serial_hex);

    // Half a rotation: a new certificate with the old key is refused.
    let next = setup.pki.ca.issue(&localhost_leaf("host")).unwrap();
    std::fs::write(&setup.host.cert, &next.cert_pem).unwrap();
    mtlsd.signal(Signal::SIGHUP);
    let rejected = mtlsd
        .wait_for_log("reload rejected; keeping the current TLS material", SOON)
        .await;
    assert!(
        rejected["problems"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{rejected}"
    );
    let third = tls_connect(addr, client).await.unwrap();
    assert_eq!(served_serial(&third), rotated.issued.serial_hex);
    mtlsd.signal(Signal::SIGTERM);
    assert_eq!(mtlsd.exited(SOON).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_runs_a_working_pair() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("dev");
    // A port block whose four ports (echo, outbound, admin, inbound) are
    // free right now.
    let base = (0..200u16)
        .map(|i| 20000 + ((std::process::id() as u16 % 200) + i) % 200 * 100)
        .find(|base| {
            [0u16, 80, 90, 443]
                .iter()
                .all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok())
        })
        .expect("a free port block");
    let base_arg = base.to_string();
    let dir_arg = dir.display().to_string();
    let mut mtlsd = MtlsdProcess::spawn(
        &["dev", "--state-dir", &dir_arg, "--port-base", &base_arg],
        &[],
    );
    mtlsd
        .wait_for_stdout("Ctrl-C drains and stops.", SOON)
        .await;
    assert!(
        mtlsd
            .stdout_seen
            .iter()
            .any(|l| l.contains("openssl s_client"))
    );

    let mut plain = TcpStream::connect(("127.0.0.1", base + 80)).await.unwrap();
    assert_eq!(
        round_trip(&mut plain, b"dev hello").await.unwrap(),
        b"dev hello"
    );
    drop(plain);

    let check = run_to_end(
        &[
            "check",
            "--config",
            &dir.join("mtlsd.toml").display().to_string(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(check.0.code(), Some(0), "{}", check.2);

    // The hints name this binary by its path and work as printed, with no
    // mtlsd on PATH: the round trip, inspect, check, status and metrics.
    let hints: Vec<String> = mtlsd
        .stdout_seen
        .iter()
        .map(|line| line.trim().to_owned())
        .filter(|line| {
            line.starts_with(&format!("{} ", env!("CARGO_BIN_EXE_mtlsd")))
                || line.starts_with("curl ")
                || line.starts_with("exec 3<>")
        })
        .collect();
    for verb in [
        " inspect ",
        " check ",
        " status --config ",
        "/metrics",
        "/dev/tcp/",
    ] {
        assert!(
            hints.iter().any(|h| h.contains(verb)),
            "no {verb:?} hint in {hints:?}"
        );
    }
    for hint in &hints {
        let output = tokio::task::spawn_blocking({
            let hint = hint.clone();
            move || {
                std::process::Command::new("bash")
                    .args(["-c", &hint])
                    .env("PATH", "/usr/bin:/bin")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{hint}: {:?}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        // After the round trips above, status shows the dev host as a peer
        // with its inventory roles.
        if hint.contains(" status --config ") {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with("dev-host") && l.contains("echo-client,echo-server")),
                "{stdout}"
            );
        }
        if hint.contains("/dev/tcp/") {
            assert_eq!(stdout.trim(), "hello", "{hint}");
        }
    }

    mtlsd.signal(Signal::SIGINT);
    assert_eq!(mtlsd.exited(SOON).await.code(), Some(0));
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).expect("a notification from mtlsd");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_has_the_configured_worker_threads() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    for (extra, expected) in [("", 1), ("[runtime]\nworker_threads = 3\n", 3)] {
        let config = setup.config(&echo.addr.to_string(), extra);
        let (mut mtlsd, stream) = run_serving(&setup, &config).await;
        // The runtime's own count, as /status reports it.
        let admin = mtlsd.wait_for_log("admin endpoint listening", SOON).await;
        let admin: std::net::SocketAddr = admin["addr"].as_str().unwrap().parse().unwrap();
        let (code, body) = http_get(admin, "/status").await;
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["worker_threads"], expected, "with {extra:?}");
        mtlsd.signal(Signal::SIGTERM);
        drop(stream);
        assert_eq!(mtlsd.exited(SOON).await.code(), Some(0));
    }
}

/// `mtlsd check --compare`: every kind of section and key, each with the
/// exit code and the lines a reload's own classification gives it.
#[test]
fn check_compare_says_what_applies_live_and_what_needs_a_restart() {
    let setup = Setup::new();
    let running_text = format!(
        "{}[reload]\nsettle = \"250ms\"\n\n[expiry]\nwarning = \"21days\"\n\n[tls]\nmin_version = \"1.3\"\n\n\
         [runtime]\nworker_threads = 1\n\n\
         [[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:18443\"\nupstream = \"127.0.0.1:9\"\nprotocol = \"tcp\"\nmax_connections = 100\n\n\
         [[outbound]]\nname = \"out\"\nlisten = \"127.0.0.1:18080\"\nupstream = \"127.0.0.1:9443\"\nserver_name = \"localhost\"\n",
        material_toml(&setup.host, &setup.ca)
    );
    let running = setup.pki.write("running.toml", &running_text, 0o600);
    let running_arg = running.display().to_string();
    let other_ca = CertificateAuthority::new("next mesh CA").unwrap();
    let both_cas = setup.pki.write(
        "both-cas.pem",
        &format!("{}{}", setup.pki.ca.cert_pem(), other_ca.cert_pem()),
        0o644,
    );
    let reissued = setup.pki.host("reissued", &localhost_leaf("host"));

    struct Case {
        what: &'static str,
        edits: Vec<(String, String)>,
        code: i32,
        lines: Vec<&'static str>,
    }
    let edit = |from: &str, to: &str| vec![(from.to_owned(), to.to_owned())];
    let ca = setup.ca.display().to_string();
    let cert = setup.host.cert.display().to_string();
    let key = setup.host.key.display().to_string();
    let cases = vec![
        Case {
            what: "identical",
            edits: vec![],
            code: 0,
            lines: vec!["  no differences"],
        },
        Case {
            what: "a comment",
            edits: edit("[tls]\n", "# rotated\n[tls]\n"),
            code: 0,
            lines: vec!["  no differences"],
        },
        Case {
            what: "tls.min_version",
            edits: edit("min_version = \"1.3\"", "min_version = \"1.2\""),
            code: 0,
            lines: vec!["live: config.tls"],
        },
        Case {
            what: "shutdown.drain_timeout",
            edits: edit("drain_timeout = \"2s\"", "drain_timeout = \"9s\""),
            code: 0,
            lines: vec!["live: config.shutdown"],
        },
        Case {
            what: "reload.settle",
            edits: edit("settle = \"250ms\"", "settle = \"1s\""),
            code: 0,
            lines: vec!["live: config.reload"],
        },
        Case {
            what: "expiry.warning",
            edits: edit("warning = \"21days\"", "warning = \"30days\""),
            code: 0,
            lines: vec!["live: config.expiry"],
        },
        Case {
            what: "metrics.per_peer",
            edits: edit("[tls]\n", "[metrics]\nper_peer = true\n\n[tls]\n"),
            code: 0,
            lines: vec!["live: config.metrics"],
        },
        Case {
            what: "peers.stale_after",
            edits: edit("[tls]\n", "[peers]\nstale_after = \"1h\"\n\n[tls]\n"),
            code: 0,
            lines: vec!["live: config.peers"],
        },
        Case {
            what: "peers.forget_after not longer than stale_after",
            edits: edit(
                "[tls]\n",
                "[peers]\nstale_after = \"2days\"\nforget_after = \"1day\"\n\n[tls]\n",
            ),
            code: 1,
            lines: vec![],
        },
        Case {
            what: "trust_domains.mesh.version",
            edits: edit(
                "[trust_domains.mesh]\n",
                "[trust_domains.mesh]\nversion = \"2\"\n",
            ),
            code: 0,
            lines: vec!["live: config.trust_domains.mesh"],
        },
        Case {
            what: "a CA bundle's content",
            edits: vec![(ca.clone(), both_cas.display().to_string())],
            code: 0,
            lines: vec!["live: trust_domain.mesh", "live: config.trust_domains.mesh"],
        },
        Case {
            what: "a reissued certificate",
            edits: vec![
                (cert.clone(), reissued.cert.display().to_string()),
                (key.clone(), reissued.key.display().to_string()),
            ],
            code: 0,
            lines: vec!["live: identity", "live: config.identity"],
        },
        Case {
            what: "a listener's limit",
            edits: edit("max_connections = 100", "max_connections = 5"),
            code: 0,
            lines: vec!["live: config.listener.in"],
        },
        Case {
            what: "a listener's address",
            edits: edit("127.0.0.1:18443", "127.0.0.1:18444"),
            code: 0,
            lines: vec!["live: config.listener.in"],
        },
        Case {
            what: "a listener's upstream",
            edits: edit("upstream = \"127.0.0.1:9\"", "upstream = \"127.0.0.1:10\""),
            code: 0,
            lines: vec!["live: config.listener.in"],
        },
        Case {
            what: "a new listener",
            edits: edit(
                "[[outbound]]\n",
                "[[inbound]]\nname = \"in2\"\nlisten = \"127.0.0.1:18445\"\nupstream = \"127.0.0.1:9\"\n\n[[outbound]]\n",
            ),
            code: 0,
            lines: vec!["live: config.listener.in2 (added)"],
        },
        Case {
            what: "a listener's protocol",
            edits: edit("protocol = \"tcp\"", "protocol = \"http\""),
            code: 4,
            lines: vec![
                "restart: config.listener.in: listener 'in': direction and protocol cannot change while running (kept inbound tcp)",
            ],
        },
        Case {
            what: "admin.listen",
            edits: edit("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:19650\""),
            code: 4,
            lines: vec!["restart: config.admin: admin.listen"],
        },
        Case {
            what: "reload.audit_log",
            edits: edit(
                "settle = \"250ms\"",
                "settle = \"250ms\"\naudit_log = \"/tmp/elsewhere.jsonl\"",
            ),
            code: 4,
            lines: vec![
                "restart: config.reload.audit_log: reload.audit_log: cannot change while running",
            ],
        },
        Case {
            what: "runtime.worker_threads",
            edits: edit("worker_threads = 1", "worker_threads = 2"),
            code: 4,
            lines: vec![
                "restart: config.runtime: runtime.worker_threads: cannot change while running",
            ],
        },
        Case {
            what: "state_dir",
            edits: edit("state_dir = ", "state_dir = \"/tmp/other-state\"\n#"),
            code: 4,
            lines: vec![
                "restart: config.state_dir: state_dir: cannot change while running",
                // The default audit log lives in the state directory.
                "restart: config.reload.audit_log:",
            ],
        },
        Case {
            what: "live and restart together",
            edits: vec![
                ("max_connections = 100".into(), "max_connections = 5".into()),
                ("worker_threads = 1".into(), "worker_threads = 2".into()),
            ],
            code: 4,
            lines: vec!["live: config.listener.in", "restart: config.runtime:"],
        },
        Case {
            what: "an invalid new file",
            edits: edit("protocol = \"tcp\"", "protocol = \"telnet\""),
            code: 1,
            lines: vec![],
        },
    ];
    for case in cases {
        let mut text = running_text.clone();
        for (from, to) in &case.edits {
            assert!(
                text.contains(from.as_str()),
                "{}: {from:?} not in the base",
                case.what
            );
            text = text.replace(from.as_str(), to);
        }
        let new = setup.pki.write("new.toml", &text, 0o600);
        let (status, stdout, stderr) = run_to_end(
            &[
                "check",
                "--config",
                &new.display().to_string(),
                "--compare",
                &running_arg,
            ],
            Duration::from_secs(20),
        );
        assert_eq!(
            status.code(),
            Some(case.code),
            "{}: exit code; stdout:\n{stdout}\nstderr:\n{stderr}",
            case.what
        );
        for line in &case.lines {
            assert!(
                stdout.lines().any(|l| l.starts_with(line)),
                "{}: no line starting {line:?} in:\n{stdout}",
                case.what
            );
        }
        let restarts = stdout
            .lines()
            .filter(|l| l.starts_with("restart: "))
            .count();
        let expected = case
            .lines
            .iter()
            .filter(|l| l.starts_with("restart: "))
            .count();
        assert_eq!(
            restarts, expected,
            "{}: restart lines in:\n{stdout}",
            case.what
        );
        if case.code == 0 {
            let changes = stdout.lines().filter(|l| l.starts_with("live: ")).count();
            assert_eq!(
                changes,
                case.lines
                    .iter()
                    .filter(|l| l.starts_with("live: "))
                    .count(),
                "{}: live lines in:\n{stdout}",
                case.what
            );
        }
    }

    // A running file that does not load: only a restart applies the new one.
    let (status, stdout, _) = run_to_end(
        &[
            "check",
            "--config",
            &running_arg,
            "--compare",
            "/nonexistent/mtlsd.toml",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("restart: config: the running configuration does not load"),
        "{stdout}"
    );
}

#[test]
fn check_bind_names_a_listen_address_that_is_not_on_this_host() {
    let setup = Setup::new();
    let good = setup.config("127.0.0.1:9", "");
    let (status, _, stderr) = run_to_end(
        &["check", "--bind", "--config", &good.display().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(0), "{stderr}");

    let text = format!(
        "{}[[inbound]]\nname = \"web\"\nlisten = \"192.0.2.1:8443\"\nupstream = \"127.0.0.1:9\"\n",
        material_toml(&setup.host, &setup.ca)
            .replace("listen = \"127.0.0.1:0\"", "listen = \"192.0.2.1:9650\"")
    );
    let away = setup.pki.write("away.toml", &text, 0o600);
    let away_arg = away.display().to_string();
    // Without --bind the file is valid: only binding shows the problem.
    let (status, _, stderr) =
        run_to_end(&["check", "--config", &away_arg], Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (status, _, stderr) = run_to_end(
        &["check", "--bind", "--config", &away_arg],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    for expected in [
        "listener 'web': listen 192.0.2.1:8443: address not on this host (EADDRNOTAVAIL)",
        "admin: listen 192.0.2.1:9650: address not on this host (EADDRNOTAVAIL)",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
}
