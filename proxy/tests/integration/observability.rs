//! Metrics, expiry events, readiness and `mtlsd status` against live
//! daemons.

use std::time::Duration;

use mtlsd::metrics::short_fingerprint;
use mtlsd::reject::RejectReason;
use mtlsd::reloading::{ReloadResult, Trigger};
use mtlsd_devca::{CertificateAuthority, LeafSpec, OffsetDateTime};
use mtlsd_expiry::CertFacts;

use tokio::io::AsyncWriteExt;

use crate::support::process::{MtlsdProcess, run_to_end};
use crate::support::*;

const INVENTORY: &str = r#"
cluster = "obs"

[hosts.server]
sans = ["DNS:server.test"]
roles = ["database"]

[hosts.api1]
sans = ["DNS:api1.test"]
roles = ["api"]
"#;

/// Inventory host api1 connects to `addr` and gets its bytes echoed.
async fn connect_as_api1(
    pki: &Pki,
    addr: std::net::SocketAddr,
) -> (
    mtlsd_devca::IssuedCert,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let api1 = pki
        .ca
        .issue(&LeafSpec::new("api1", &["api1.test"]))
        .unwrap();
    let mut stream = tls_connect(addr, client_config(pki.ca.cert_der(), Some(&api1)))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut stream, b"hi").await.unwrap(), b"hi");
    (api1, stream)
}

fn with_server_inventory(pki: &Pki, toml: String) -> String {
    with_inventory(pki, INVENTORY, "server", toml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_real_expiry_of_every_ca_and_peer_and_pass_promtool() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    // A bundle of three CAs; the host and its peer use the first.
    let second = CertificateAuthority::new("second CA").unwrap();
    let third = CertificateAuthority::with_validity(
        "third CA",
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        OffsetDateTime::from_unix_timestamp(2_100_000_000).unwrap(),
    )
    .unwrap();
    let bundle = pki.write(
        "bundle.pem",
        &format!(
            "{}{}{}",
            pki.ca.cert_pem(),
            second.cert_pem(),
            third.cert_pem()
        ),
        0o644,
    );
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = with_server_inventory(&pki, material_toml(&files, &bundle))
        + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let admin = server.admin_addr();
    let addr = server.local_addr("in").unwrap();

    let (_, before) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(
            &before,
            "mtlsd_peer_cert_earliest_not_after_timestamp_seconds",
            &[]
        ),
        None
    );
    // api1 is the only other inventory host, and it has not talked to us.
    assert_eq!(
        metric(&before, "mtlsd_inventory_hosts", &[("seen", "never")]),
        Some(1.0)
    );

    // api1 connects; a stranger is refused.
    let (api1, _held_open) = connect_as_api1(&pki, addr).await;
    let stranger = CertificateAuthority::new("stranger")
        .unwrap()
        .issue(&localhost_leaf("x"))
        .unwrap();
    if let Ok(mut s) = tls_connect(addr, client_config(pki.ca.cert_der(), Some(&stranger))).await {
        assert_no_echo(&mut s).await;
    }
    let stats = server.stats("in").unwrap();
    eventually("refusal counted", || stats.total_refusals() == 1).await;

    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check_metrics(&text);

    for ca in [&pki.ca, &second, &third] {
        let facts = CertFacts::from_der(ca.cert_der()).unwrap();
        let labels = [
            ("trust_domain", "mesh"),
            ("kind", "ca"),
            ("fingerprint", &short_fingerprint(facts.fingerprint)),
        ];
        assert_eq!(
            metric(&text, "mtlsd_cert_not_after_timestamp_seconds", &labels),
            Some(facts.not_after_unix() as f64),
            "{}",
            facts.subject
        );
        assert_eq!(
            metric(&text, "mtlsd_cert_not_before_timestamp_seconds", &labels),
            Some(facts.not_before_unix() as f64)
        );
    }
    let third_facts = CertFacts::from_der(third.cert_der()).unwrap();
    assert_eq!(third_facts.not_after_unix(), 2_100_000_000);
    let identity = CertFacts::from_der(&files.issued.cert_der).unwrap();
    let id_labels = [
        ("kind", "identity"),
        ("fingerprint", &short_fingerprint(identity.fingerprint)),
    ];
    assert_eq!(
        metric(&text, "mtlsd_cert_not_after_timestamp_seconds", &id_labels),
        Some(identity.not_after_unix() as f64)
    );
    let ok_state = [id_labels[0], id_labels[1], ("state", "ok")];
    assert_eq!(
        metric(&text, "mtlsd_cert_expiry_state", &ok_state),
        Some(1.0)
    );
    // The fleet summaries name the peer; per-peer series are opt-in.
    let api1_facts = CertFacts::from_der(&api1.cert_der).unwrap();
    assert_eq!(
        metric(
            &text,
            "mtlsd_peer_cert_earliest_not_after_timestamp_seconds",
            &[]
        ),
        Some(api1_facts.not_after_unix() as f64)
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_peer_cert_earliest_not_after_info",
            &[("host", "api1"), ("serial", &api1_facts.serial_hex)]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "mtlsd_peers_by_expiry_state", &[("state", "ok")]),
        Some(1.0)
    );
    for (seen, count) in [("recent", 1.0), ("stale", 0.0), ("never", 0.0)] {
        assert_eq!(
            metric(&text, "mtlsd_inventory_hosts", &[("seen", seen)]),
            Some(count),
            "{seen}"
        );
    }
    assert!(!text.contains("mtlsd_peer_cert_not_after_timestamp_seconds{"));
    assert!(!text.contains("mtlsd_peer_last_handshake_timestamp_seconds{"));
    // One admitted peer and one from an unknown CA: two attempts, one
    // completed; /status counts the same way.
    assert_eq!(
        metric(
            &text,
            "mtlsd_handshakes_attempted_total",
            &[("listener", "in")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_handshakes_completed_total",
            &[("listener", "in")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_handshake_failures_total",
            &[("listener", "in"), ("reason", "unknown_ca")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "mtlsd_connections_total", &[("listener", "in")]),
        Some(2.0)
    );
    assert!(metric(&text, "mtlsd_received_bytes_total", &[("listener", "in")]).unwrap() > 0.0);
    assert!(metric(&text, "mtlsd_sent_bytes_total", &[("listener", "in")]).unwrap() > 0.0);
    assert_eq!(
        metric(
            &text,
            "mtlsd_trust_bundle_info",
            &[("trust_domain", "mesh")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "mtlsd_material_generation", &[]), Some(1.0));
}

/// `[metrics] per_peer` switches the per-peer series on at a reload; a
/// peer that stops talking counts as stale after `peers.stale_after` and is
/// forgotten (metrics and `/status`) after `peers.forget_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_series_are_opt_in_and_quiet_peers_turn_stale_then_are_forgotten() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let base = with_server_inventory(&pki, material_toml(&files, &pki.ca_file()))
        + &inbound_toml("in", echo.addr, "");
    let peers =
        "[reload]\nwatch = false\n\n[peers]\nstale_after = \"2s\"\nforget_after = \"4s\"\n\n";
    let (server, _) = start_daemon(&pki, "server.toml", &format!("{base}\n{peers}")).await;
    let admin = server.admin_addr();
    let addr = server.local_addr("in").unwrap();

    let (api1, stream) = connect_as_api1(&pki, addr).await;
    drop(stream);
    let per_peer = |text: &str| {
        metric(
            text,
            "mtlsd_peer_cert_not_after_timestamp_seconds",
            &[("host", "api1")],
        )
    };
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(per_peer(&text), None, "per-peer series are off by default");
    assert_eq!(
        metric(&text, "mtlsd_inventory_hosts", &[("seen", "recent")]),
        Some(1.0)
    );

    // Switched on by a reload, no restart.
    pki.write(
        "server.toml",
        &format!("{base}\n{peers}[metrics]\nper_peer = true\n"),
        0o600,
    );
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome:?}");
    let (_, text) = http_get(admin, "/metrics").await;
    let api1_facts = CertFacts::from_der(&api1.cert_der).unwrap();
    assert_eq!(per_peer(&text), Some(api1_facts.not_after_unix() as f64));
    assert!(
        metric(
            &text,
            "mtlsd_peer_last_handshake_timestamp_seconds",
            &[("host", "api1")]
        )
        .is_some_and(|t| t > 1.7e9)
    );
    promtool_check_metrics(&text);

    // Quiet for stale_after: stale, still listed.
    let seen = |text: &str, label: &str| {
        metric(text, "mtlsd_inventory_hosts", &[("seen", label)]).unwrap_or(-1.0)
    };
    // The last scrape within 6 s, as soon as one counts api1 as `label`.
    let scrape_until_seen = |label: &'static str| async move {
        let mut text = String::new();
        for _ in 0..60 {
            text = http_get(admin, "/metrics").await.1;
            if seen(&text, label) == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        text
    };
    let stale = scrape_until_seen("stale").await;
    assert_eq!(seen(&stale, "stale"), 1.0, "api1 never turned stale");
    assert_eq!(seen(&stale, "recent"), 0.0);
    assert!(per_peer(&stale).is_some());
    let (_, status) = http_get(admin, "/status").await;
    assert!(status.contains("\"api1\""), "{status}");

    // Quiet for forget_after: forgotten everywhere.
    let forgotten = scrape_until_seen("never").await;
    assert_eq!(seen(&forgotten, "never"), 1.0, "api1 never forgotten");
    assert_eq!(per_peer(&forgotten), None);
    assert_eq!(
        metric(
            &forgotten,
            "mtlsd_peer_cert_earliest_not_after_timestamp_seconds",
            &[]
        ),
        None
    );
    assert_eq!(
        metric(
            &forgotten,
            "mtlsd_peers_by_expiry_state",
            &[("state", "ok")]
        ),
        Some(0.0)
    );
    let (_, status) = http_get(admin, "/status").await;
    assert!(!status.contains("\"api1\""), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_three_days_from_expiry_is_a_warning_logged_once() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let now = OffsetDateTime::now_utc();
    let files = pki.host(
        "server",
        &localhost_leaf("server").validity(
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(3 * 86_400),
        ),
    );
    let toml = material_toml(&files, &pki.ca_file())
        + "[expiry]\nwarning = \"7days\"\ncritical = \"1day\"\ncheck_interval = \"100ms\"\nrepeat = \"1h\"\n"
        + &inbound_toml("in", echo.addr, "");
    let config = pki.write("server.toml", &toml, 0o600);
    let config = config.display().to_string();
    let mut daemon = MtlsdProcess::spawn(&["run", "--config", &config], &[]);
    let admin = daemon.wait_for_log("admin endpoint listening", SOON).await["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let event = daemon
        .wait_for_log("certificate needs attention", SOON)
        .await;
    assert_eq!(event["state"], "warning", "{event}");
    assert_eq!(event["level"], "WARN", "{event}");
    assert_eq!(event["kind"], "identity", "{event}");
    assert_eq!(event["serial"], files.issued.serial_hex.as_str(), "{event}");
    assert!(
        event["source"].as_str().unwrap().ends_with("server.crt"),
        "{event}"
    );
    // Many checks later, still one event (the repeat interval is an hour).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "mtlsd_cert_expiry_state",
            &[("kind", "identity"), ("state", "warning")]
        ),
        Some(1.0)
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(SOON).await;
    daemon.drain();
    let events = daemon
        .stderr_seen
        .iter()
        .filter(|l| l.contains("certificate needs attention"))
        .count();
    assert_eq!(events, 1, "{:#?}", daemon.stderr_seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_false_when_the_identity_expires_and_healthz_stays_true() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let now = OffsetDateTime::now_utc();
    let files = pki.host(
        "server",
        &localhost_leaf("server")
            .validity(now - Duration::from_secs(60), now + Duration::from_secs(3)),
    );
    let toml = material_toml(&files, &pki.ca_file()) + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let admin = server.admin_addr();
    assert_eq!(
        http_get(admin, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("expired"), "{body}");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_live_daemon_and_says_when_none_runs() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = with_server_inventory(&pki, material_toml(&files, &pki.ca_file())).replace(
        "[trust_domains.mesh]\n",
        "[trust_domains.mesh]\nversion = \"2026-11\"\n",
    ) + &inbound_toml("in", echo.addr, "");
    let config = pki.write("server.toml", &toml, 0o600);
    let config = config.display().to_string();
    let mut daemon = MtlsdProcess::spawn(&["run", "--config", &config], &[]);
    let addr = daemon.listener_addr("in").await;
    let admin = daemon.wait_for_log("admin endpoint listening", SOON).await["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _held_open) = connect_as_api1(&pki, addr).await;

    // The report as served, read into the type the CLI reads it into:
    // nothing is dropped or changed on the way. Nothing moves between this
    // read and the CLI's below (the api1 connection stays idle).
    let (code, served) = http_get(admin.parse().unwrap(), "/status").await;
    assert_eq!(code, 200, "{served}");
    let served: serde_json::Value = serde_json::from_str(&served).unwrap();
    let typed: mtlsd::status_report::Status = serde_json::from_value(served.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), served);

    let status = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_to_end(&args, Duration::from_secs(20))
        })
    };
    let (code, table, stderr) = status(vec!["status".into(), "--admin".into(), admin.clone()])
        .await
        .unwrap();
    assert_eq!(code.code(), Some(0), "{stderr}");
    // (run_to_end hands back stdout's lines, joined without the last
    // newline.)
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        mtlsd::commands::status::render(&typed)
            .lines()
            .collect::<Vec<_>>()
    );
    assert!(table.contains("ready, generation 1"), "{table}");
    assert!(
        table.contains(&format!("serial {}", files.issued.serial_hex)),
        "{table}"
    );
    assert!(table.contains("trust     mesh version 2026-11"), "{table}");
    assert!(table.contains("inventory cluster obs, 2 hosts"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("in ")
            && l.contains("inbound")
            && l.contains(&addr.to_string())),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api1") && l.contains("api") && l.contains(" ok")),
        "{table}"
    );

    let (code, json, _) = status(vec![
        "status".into(),
        "--admin".into(),
        admin.clone(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code.code(), Some(0));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json, served, "--json prints what the daemon serves");
    assert_eq!(json["identity"]["serial"], files.issued.serial_hex.as_str());
    assert_eq!(json["peers"][0]["host"], "api1");
    assert_eq!(json["listeners"][0]["handshakes_completed"], 1);
    assert_eq!(json["listeners"][0]["handshakes_attempted"], 1);
    assert_eq!(json["last_reload"]["trigger"], "startup");

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(SOON).await;
    let (code, _, stderr) = status(vec!["status".into(), "--admin".into(), admin])
        .await
        .unwrap();
    assert_eq!(code.code(), Some(3));
    assert!(stderr.contains("no mtlsd answered"), "{stderr}");

    // A config the CLI cannot use is named as the likely reason.
    let missing = pki.path("missing.toml").display().to_string();
    let (code, _, stderr) = status(vec!["status".into(), "--config".into(), missing.clone()])
        .await
        .unwrap();
    assert_eq!(code.code(), Some(3));
    assert!(
        stderr.contains(&format!("cannot use {missing} (No such file"))
            && stderr.contains("the default admin address is tried"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_over_mtls_admits_only_allowed_roles() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let echo = Echo::start().await;
    let inventory = "cluster = \"obs\"\n[hosts.server]\nsans = [\"DNS:server.test\"]\nroles = [\"database\"]\n\
                     [hosts.prom1]\nsans = [\"DNS:prom1.test\"]\nroles = [\"monitoring\"]\n\
                     [hosts.api1]\nsans = [\"DNS:api1.test\"]\nroles = [\"api\"]\n";
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = inventory_material_toml(&pki, inventory, "server", &files).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntls = true\n",
    ) + &inbound_toml("in", echo.addr, "");
    let (server, config) = start_daemon(&pki, "server.toml", &toml).await;
    let admin = server.admin_addr();

    let scrape = |host: &'static str| {
        let cert = pki
            .ca
            .issue(&LeafSpec::new(host, &[&format!("{host}.test")]))
            .unwrap();
        let client = client_config(pki.ca.cert_der(), Some(&cert));
        async move {
            let mut tls = tls_connect(admin, client).await?;
            tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut response = String::new();
            tls.read_to_string(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        }
    };
    let response = scrape("prom1").await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("mtlsd_build_info"));
    assert!(scrape("api1").await.is_err(), "api1 lacks the role");
    // Plain HTTP gets no answer from an mTLS endpoint.
    let (status, _) = within("plain request", SOON, async {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let _ = tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf).await;
        (String::from_utf8_lossy(&buf).into_owned(), ())
    })
    .await;
    assert!(!status.contains("200 OK"), "{status}");

    // mtlsd status authenticates with this host's own certificate, which
    // the admin endpoint admits although the host lacks the monitoring
    // role.
    let args = [
        "status".to_owned(),
        "--admin".to_owned(),
        admin.to_string(),
        "--config".to_owned(),
        config.source.display().to_string(),
    ];
    let (code, table, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_end(&args, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(table.contains("ready, generation 1"), "{table}");
}

/// Sets SO_LINGER 0, so that dropping the socket sends a TCP reset.
fn reset_on_drop(tcp: &tokio::net::TcpStream) {
    // Deprecated because a non-zero linger blocks the thread on drop; a
    // zero linger never blocks, and a reset is the point here.
    #[allow(deprecated)]
    tcp.set_linger(Some(Duration::ZERO)).unwrap();
}

/// Health checkers and `openssl s_time` complete the handshake and reset
/// the connection at once (the session tickets the server sends after the
/// client's Finished then meet the reset). That is a completed handshake,
/// not a failure; an abort before completion still is one, of class
/// `protocol`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_right_after_a_completed_handshake_is_no_failure_but_one_before_it_is() {
    const CLIENTS: u64 = 50;
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &pki.ca_file()) + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let admin = server.admin_addr();
    let stats = server.stats("in").unwrap();
    let client = client_config(
        pki.ca.cert_der(),
        Some(&pki.ca.issue(&localhost_leaf("checker")).unwrap()),
    );

    for _ in 0..CLIENTS {
        // Without TCP_NODELAY, Nagle may still hold the client's Finished
        // when the reset below discards the send queue: the server then
        // rightly never sees a completed handshake (1 in 3 runs under load).
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(client.clone())
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (tcp, session) = tls.get_ref();
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        reset_on_drop(tcp);
        drop(tls);
    }
    eventually("every handshake to end", || {
        stats.handshakes_attempted() == CLIENTS
            && stats.handshakes() + stats.total_refusals() == CLIENTS
    })
    .await;
    let by_reason: Vec<(RejectReason, u64)> = RejectReason::ALL
        .iter()
        .map(|r| (*r, stats.refusals(*r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(stats.total_refusals(), 0, "{by_reason:?}");
    assert_eq!(stats.handshakes(), CLIENTS);

    // Aborts before completion: a reset before any byte, and one in the
    // middle of a ClientHello.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    eventually("the silent connection accepted", || {
        stats.handshakes_attempted() == CLIENTS + 1
    })
    .await;
    reset_on_drop(&tcp);
    drop(tcp);
    let mut hello = Vec::new();
    rustls::ClientConnection::new(
        client.clone(),
        rustls_pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap()
    .write_tls(&mut hello)
    .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    eventually("the second connection accepted", || {
        stats.handshakes_attempted() == CLIENTS + 2
    })
    .await;
    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    reset_on_drop(&tcp);
    drop(tcp);
    eventually("both aborts counted", || {
        stats.refusals(RejectReason::Protocol) == 2
    })
    .await;

    let (_, text) = http_get(admin, "/metrics").await;
    let listener = [("listener", "in")];
    assert_eq!(
        metric(&text, "mtlsd_handshakes_attempted_total", &listener),
        Some((CLIENTS + 2) as f64)
    );
    assert_eq!(
        metric(&text, "mtlsd_handshakes_completed_total", &listener),
        Some(CLIENTS as f64)
    );
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("mtlsd_handshake_failures_total{") && l.contains("listener=\"in\"")
        })
        .collect();
    assert_eq!(
        failures,
        ["mtlsd_handshake_failures_total{listener=\"in\",reason=\"protocol\"} 2"],
        "{text}"
    );
    let (_, body) = http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listener = &status["listeners"][0];
    assert_eq!(listener["handshakes_attempted"], CLIENTS + 2, "{listener}");
    assert_eq!(listener["handshakes_completed"], CLIENTS, "{listener}");
    assert_eq!(
        listener["refused"],
        serde_json::json!({"protocol": 2}),
        "{listener}"
    );
}

/// Decodes one journald native-protocol datagram (both field forms).
fn journal_fields(mut data: &[u8]) -> std::collections::BTreeMap<String, String> {
    let mut fields = std::collections::BTreeMap::new();
    while let Some(end) = data.iter().position(|&b| b == b'\n') {
        let head = &data[..end];
        if let Some(eq) = head.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&head[..eq]).into_owned(),
                String::from_utf8_lossy(&head[eq + 1..]).into_owned(),
            );
            data = &data[end + 1..];
        } else {
            let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap());
            let start = end + 9;
            let stop = start + usize::try_from(len).unwrap();
            fields.insert(
                String::from_utf8_lossy(head).into_owned(),
                String::from_utf8_lossy(&data[start..stop]).into_owned(),
            );
            data = &data[stop + 1..];
        }
    }
    fields
}

/// `mtlsd run` as systemd starts it: stderr is a file whose device and
/// inode `JOURNAL_STREAM` names, in a private mount namespace whose
/// `/run/systemd/journal` is `journal_dir` (so the daemon's journal socket
/// is one this test binds). `None` when mount namespaces are not allowed
/// here (not root).
fn spawn_under_journal(
    config: &std::path::Path,
    journal_dir: &std::path::Path,
    stderr_file: &std::path::Path,
) -> Option<std::process::Child> {
    use std::os::unix::fs::MetadataExt;
    let probe = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .stderr(std::process::Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "skipped: needs `unshare -m` (root) to give mtlsd a journal socket of the test's"
        );
        return None;
    }
    let stderr = std::fs::File::create(stderr_file).unwrap();
    let meta = stderr.metadata().unwrap();
    let child = std::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
             mount --bind \"$1\" /run/systemd/journal && shift && exec \"$@\"",
            "sh",
        ])
        .arg(journal_dir)
        .arg(env!("CARGO_BIN_EXE_mtlsd"))
        .args(["run", "--config"])
        .arg(config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("MTLSD_LOG", "info")
        .env_remove("MTLSD_LOG_FORMAT")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Some(child)
}

fn signal_child(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// Under systemd, each event is one journal entry: a real priority, the
/// tracing fields as journal fields, no colour, no timestamp of mtlsd's
/// own; nothing goes to stderr.
#[tokio::test]
async fn under_systemd_events_go_to_the_journal_ranked_with_their_fields() {
    let pki = Pki::new();
    let host = pki.host("host", &localhost_leaf("host"));
    // No file watching: the reload below is the SIGHUP's alone.
    let toml = format!(
        "{}[reload]\nwatch = false\n\n{}",
        material_toml(&host, &pki.ca_file()),
        inbound_toml("web", "127.0.0.1:9".parse().unwrap(), "")
    );
    let config = pki.write("mtlsd.toml", &toml, 0o600);
    let journal_dir = pki.path("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let journald = std::os::unix::net::UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    journald
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let stderr_file = pki.path("stderr");
    let Some(mut child) = spawn_under_journal(&config, &journal_dir, &stderr_file) else {
        return;
    };
    let mut entries: Vec<std::collections::BTreeMap<String, String>> = Vec::new();
    let next_until =
        |entries: &mut Vec<_>,
         what: &str,
         found: &dyn Fn(&std::collections::BTreeMap<String, String>) -> bool| {
            let mut buf = vec![0u8; 65_536];
            loop {
                if let Some(entry) = entries.iter().find(|e| found(e)) {
                    return std::collections::BTreeMap::clone(entry);
                }
                let n = journald
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("no journal entry {what}: {e}; got {entries:#?}"));
                if n > 0 {
                    entries.push(journal_fields(&buf[..n]));
                }
            }
        };

    let listening = next_until(&mut entries, "listening", &|e| {
        e.get("MESSAGE").is_some_and(|m| m.starts_with("listening"))
    });
    assert_eq!(listening["PRIORITY"], "6", "{listening:?}");
    assert_eq!(listening["LISTENER"], "web", "{listening:?}");
    assert_eq!(listening["SYSLOG_IDENTIFIER"], "mtlsd");
    assert!(
        listening["MESSAGE"].contains("listener=web"),
        "{listening:?}"
    );
    let addr: std::net::SocketAddr = listening["ADDR"].parse().unwrap();

    // A client of another CA: refused, a warning with listener and reason.
    let stranger = CertificateAuthority::new("stranger").unwrap();
    let client = stranger.issue(&localhost_leaf("client")).unwrap();
    if let Ok(mut stream) = tls_connect(addr, client_config(pki.ca.cert_der(), Some(&client))).await
    {
        let _ = round_trip(&mut stream, b"x").await;
    }
    let refused = next_until(&mut entries, "handshake refused", &|e| {
        e.get("MESSAGE")
            .is_some_and(|m| m.starts_with("TLS handshake refused"))
    });
    assert_eq!(refused["PRIORITY"], "4", "{refused:?}");
    assert_eq!(refused["LISTENER"], "web", "{refused:?}");
    assert_eq!(refused["REASON"], "unknown_ca", "{refused:?}");
    assert!(refused.contains_key("PEER"), "{refused:?}");

    // A rejected reload: an error.
    std::fs::write(&host.cert, "not a certificate").unwrap();
    signal_child(&child, nix::sys::signal::Signal::SIGHUP);
    let rejected = next_until(&mut entries, "reload rejected", &|e| {
        e.get("MESSAGE")
            .is_some_and(|m| m.starts_with("reload rejected"))
    });
    assert_eq!(rejected["PRIORITY"], "3", "{rejected:?}");
    assert_eq!(rejected["TRIGGER"], "sighup", "{rejected:?}");

    signal_child(&child, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for entry in &entries {
        assert!(
            entry.values().all(|v| !v.contains('\u{1b}')),
            "an escape code went to the journal: {entry:?}"
        );
        let message = &entry["MESSAGE"];
        assert!(
            !message.starts_with(|c: char| c.is_ascii_digit()) && !message.contains(" INFO "),
            "time or level in the message: {message:?}"
        );
    }
    let stderr = std::fs::read_to_string(&stderr_file).unwrap();
    assert!(stderr.is_empty(), "stderr carried logs too:\n{stderr}");
}

/// Under systemd with no journal socket: stderr, ranked with `<N>`
/// prefixes, said once, no colour, no timestamp. Elsewhere (stderr is
/// not the stream `JOURNAL_STREAM` names, nor a terminal): plain text.
#[test]
fn without_the_journal_socket_lines_are_ranked_on_stderr() {
    let pki = Pki::new();
    let host = pki.host("host", &localhost_leaf("host"));
    let toml = format!(
        "{}{}",
        material_toml(&host, &pki.ca_file()),
        inbound_toml("web", "127.0.0.1:9".parse().unwrap(), "")
    );
    let config = pki.write("mtlsd.toml", &toml, 0o600);
    let wait_for = |path: &std::path::Path, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Not the journal stream: JOURNAL_STREAM names another file.
    let stderr_file = pki.path("plain-stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mtlsd"))
        .args(["run", "--config"])
        .arg(&config)
        .env("JOURNAL_STREAM", "1:1")
        .env("MTLSD_LOG", "info")
        .env_remove("MTLSD_LOG_FORMAT")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .unwrap();
    let text = wait_for(&stderr_file, "ready");
    signal_child(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
    assert!(!text.contains('\u{1b}'), "escape codes in a file:\n{text}");
    assert!(
        !text.contains("<6>"),
        "priority prefixes off the journal:\n{text}"
    );
    assert!(text.contains(" INFO "), "{text}");

    // The journal stream, but nothing listens on the journal socket.
    let journal_dir = pki.path("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let stderr_file = pki.path("journal-stderr");
    let Some(mut child) = spawn_under_journal(&config, &journal_dir, &stderr_file) else {
        return;
    };
    let text = wait_for(&stderr_file, "ready");
    signal_child(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        text.matches("cannot write to the journal socket").count(),
        1,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("cannot write to the journal socket")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("listening")),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l.starts_with('<')),
        "an unranked line:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "escape codes:\n{text}");
    assert!(
        text.lines()
            .all(|l| !l[3..].starts_with(|c: char| c.is_ascii_digit())),
        "a timestamp:\n{text}"
    );
}
