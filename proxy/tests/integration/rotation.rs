//! Rotation readiness: which CAs this host and each peer depend on, as
//! `/metrics` and `/status` report it, through a CA rotation's states:
//! peers on the old CA, on the new one, re-issued (a reconnect with a new
//! leaf), cross-signed, and a bundle change that re-judges stored chains
//! without any new handshake.

use mtlsd::reloading::{ReloadResult, Trigger};
use mtlsd_devca::{CertificateAuthority, IssuedCert, LeafSpec};
use mtlsd_expiry::Fingerprint;
use rustls_pki_types::CertificateDer;

use crate::support::*;

const INVENTORY: &str = r#"
cluster = "rot"

[hosts.server]
sans = ["DNS:server.test"]
roles = ["database"]

[hosts.api1]
sans = ["DNS:api1.test"]
roles = ["api"]

[hosts.api2]
sans = ["DNS:api2.test"]
roles = ["api"]
"#;

fn hex(ca: &CertificateAuthority) -> String {
    Fingerprint::of(ca.cert_der()).to_hex()
}

/// A peer connects to `addr` presenting `leaf` and `extra` certificates
/// and gets its bytes echoed. The server's leaf is from `server_ca`.
async fn connect_as(
    addr: std::net::SocketAddr,
    server_ca: &CertificateAuthority,
    leaf: &IssuedCert,
    extra: &[CertificateDer<'static>],
) {
    let mut chain = vec![leaf.cert_der.clone()];
    chain.extend_from_slice(extra);
    let config = client_config_chain(server_ca.cert_der(), chain, leaf.key_der());
    let mut stream = tls_connect(addr, config).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"hi").await.unwrap(), b"hi");
}

/// The value of `name` for CA `ca` in the "mesh" domain (`None`: no series).
fn per_ca(text: &str, name: &str, ca: &str) -> Option<f64> {
    metric(text, name, &[("trust_domain", "mesh"), ("ca_sha256", ca)])
}

/// `/status` as JSON.
async fn status_of(admin: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_get(admin, "/status").await.1).unwrap()
}

/// What `/status` says of `host`'s latest chain in trust domain `domain`.
fn chain_of<'a>(status: &'a serde_json::Value, host: &str, domain: &str) -> &'a serde_json::Value {
    let peer = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host"] == host)
        .unwrap_or_else(|| panic!("{host} not in {status}"));
    peer["trust"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trust_domain"] == domain)
        .unwrap_or_else(|| panic!("{host}: no {domain} chain in {peer}"))
}

/// host → the mesh CAs `/status` says it needs (`None`: nothing verifies it).
fn needs(status: &serde_json::Value, host: &str) -> Option<Vec<String>> {
    let trust = chain_of(status, host, "mesh");
    trust["verifies"].as_bool().unwrap().then(|| {
        trust["depends_on_ca"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependence_on_each_ca_follows_peers_and_bundle_through_a_rotation() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let old = &pki.ca;
    let new = CertificateAuthority::new("new mesh CA").unwrap();
    let new_by_old = new.cross_signed_by(old).unwrap();
    let (old_hex, new_hex) = (hex(old), hex(&new));

    // Phase 1 done: both CAs trusted; this host still has its old leaf.
    let bundle = pki.write(
        "bundle.pem",
        &format!("{}{}", old.cert_pem(), new.cert_pem()),
        0o644,
    );
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    // A second trust domain (a database's own CA), where api1 also
    // connects: its chain there must not stand in for its mesh chain.
    let db_ca = CertificateAuthority::new("db CA").unwrap();
    let db_bundle = pki.write("db-ca.pem", db_ca.cert_pem(), 0o644);
    // Reloads here are driven by hand: a watcher reload racing them would
    // leave the admin reload nothing to apply.
    let toml = with_inventory(&pki, INVENTORY, "server", material_toml(&files, &bundle))
        + "[reload]\nwatch = false\n\n"
        + &format!("[trust_domains.db]\nbundle = {:?}\n\n", db_bundle)
        + &inbound_toml("in", echo.addr, "")
        + &inbound_toml(
            "db",
            echo.addr,
            "trust_domain = \"db\"\nallow_roles = [\"api\"]",
        );
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let admin = server.admin_addr();
    let addr = server.local_addr("in").unwrap();
    let db_addr = server.local_addr("db").unwrap();
    let api1_db = db_ca.issue(&LeafSpec::new("api1", &["api1.test"])).unwrap();

    let (_, text) = http_get(admin, "/metrics").await;
    for (ca, subject) in [
        (&old_hex, "CN=test mesh CA, O=mtlsd dev CA"),
        (&new_hex, "CN=new mesh CA, O=mtlsd dev CA"),
    ] {
        let info = metric(
            &text,
            "mtlsd_trust_ca_info",
            &[
                ("trust_domain", "mesh"),
                ("ca_sha256", ca),
                ("subject", subject),
            ],
        );
        assert_eq!(info, Some(1.0), "{ca} ({subject}) in:\n{text}");
        let peers = per_ca(&text, "mtlsd_peers_depending_on_ca", ca);
        assert_eq!(peers, Some(0.0), "no peer yet");
    }
    assert_eq!(
        per_ca(&text, "mtlsd_identity_depends_on_ca", &old_hex),
        Some(1.0)
    );
    assert_eq!(
        per_ca(&text, "mtlsd_identity_depends_on_ca", &new_hex),
        None
    );

    // api1 still on the old CA, api2 already re-issued from the new one;
    // and a health check with this host's own certificate, which does not
    // count as a peer needing a CA (its own chain is judged as the
    // identity; a stale copy would block a rotation forever).
    let api1_old = old.issue(&LeafSpec::new("api1", &["api1.test"])).unwrap();
    let api2_new = new.issue(&LeafSpec::new("api2", &["api2.test"])).unwrap();
    connect_as(addr, old, &api1_old, &[]).await;
    connect_as(addr, old, &api2_new, &[]).await;
    connect_as(addr, old, &files.issued, &[]).await;
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        per_ca(&text, "mtlsd_peers_depending_on_ca", &old_hex),
        Some(1.0)
    );
    assert_eq!(
        per_ca(&text, "mtlsd_peers_depending_on_ca", &new_hex),
        Some(1.0)
    );
    let status = status_of(admin).await;
    assert_eq!(needs(&status, "api1"), Some(vec![old_hex.clone()]));
    assert_eq!(needs(&status, "api2"), Some(vec![new_hex.clone()]));

    // A resumed session carries the chain of the full handshake it came
    // from: recording it again changes no answer.
    let config = client_config_chain(
        old.cert_der(),
        vec![api1_old.cert_der.clone()],
        api1_old.key_der(),
    );
    for kind in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
        let mut stream = tls_connect(addr, config.clone()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hi").await.unwrap(), b"hi");
        assert_eq!(stream.get_ref().1.handshake_kind(), Some(kind));
    }
    let resumed = status_of(admin).await;
    assert_eq!(needs(&resumed, "api1"), Some(vec![old_hex.clone()]));

    assert_eq!(
        status["identity_depends_on_ca"],
        serde_json::json!([old_hex])
    );
    assert_eq!(
        chain_of(&status, "api1", "mesh")["leaf_issuer"],
        "CN=test mesh CA, O=mtlsd dev CA"
    );

    // api1 is re-issued and reconnects: nobody needs the old CA now, and
    // api1's later handshake in the db domain changes nothing for the mesh.
    let api1_new = new.issue(&LeafSpec::new("api1", &["api1.test"])).unwrap();
    connect_as(addr, old, &api1_new, &[]).await;
    connect_as(db_addr, old, &api1_db, &[]).await;
    let status = status_of(admin).await;
    assert_eq!(needs(&status, "api1"), Some(vec![new_hex.clone()]));
    assert_eq!(
        chain_of(&status, "api1", "db")["depends_on_ca"],
        serde_json::json!([hex(&db_ca)])
    );
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "mtlsd_peers_depending_on_ca",
            &[("trust_domain", "db"), ("ca_sha256", &hex(&db_ca))]
        ),
        Some(1.0)
    );
    assert_eq!(
        per_ca(&text, "mtlsd_peers_depending_on_ca", &old_hex),
        Some(0.0)
    );
    assert_eq!(
        per_ca(&text, "mtlsd_peers_depending_on_ca", &new_hex),
        Some(2.0)
    );

    // api2 now sends the cross-signed new CA along: its chain verifies
    // through either CA, so it depends on neither.
    connect_as(addr, old, &api2_new, &[new_by_old.cert_der().clone()]).await;
    let status = status_of(admin).await;
    assert_eq!(needs(&status, "api2"), Some(vec![]));

    // The bundle loses the new CA (say, a rotation rolled back): with no
    // new handshake, api1 (plain new leaf) is cut off and api2 (cross-
    // signed) depends on the old CA alone.
    std::fs::write(&bundle, old.cert_pem()).unwrap();
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome:?}");
    let status = status_of(admin).await;
    assert_eq!(needs(&status, "api1"), None);
    assert_eq!(needs(&status, "api2"), Some(vec![old_hex.clone()]));
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        per_ca(&text, "mtlsd_peers_depending_on_ca", &old_hex),
        Some(1.0)
    );
    assert_eq!(per_ca(&text, "mtlsd_trust_ca_info", &new_hex), None);
    promtool_check_metrics(&text);
}

/// Runs `mtlsd rotation check ARGS` against the daemon at `admin`.
async fn rotation_check(
    admin: std::net::SocketAddr,
    config: &std::path::Path,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut all: Vec<String> = [
        "rotation",
        "check",
        "--admin",
        &admin.to_string(),
        "--config",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.push(config.display().to_string());
    all.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let (status, stdout, stderr) =
            crate::support::process::run_to_end(&args, std::time::Duration::from_secs(20));
        (status.code(), stdout, stderr)
    })
    .await
    .unwrap()
}

/// `mtlsd rotation check` through the three phases, from the outside:
/// each phase is refused with its blockers until it is done here, hosts
/// this host should talk to but has not seen block remove-ca unless
/// accepted, and bad questions are answered with what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_check_walks_the_three_phases_and_names_what_blocks_each() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let old = &pki.ca;
    let new = CertificateAuthority::new("new mesh CA").unwrap();
    let (old_hex, new_hex) = (hex(old), hex(&new));
    let bundle = pki.write("bundle.pem", old.cert_pem(), 0o644);
    let server_leaf = LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]);
    let files = pki.host("server", &server_leaf);
    let toml = with_inventory(&pki, INVENTORY, "server", material_toml(&files, &bundle))
        + "[reload]\nwatch = false\n\n"
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]")
        + &inbound_toml("health", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let config = pki.path("server.toml");
    let admin = server.admin_addr();
    let addr = server.local_addr("in").unwrap();
    let health = server.local_addr("health").unwrap();
    let reload = || async {
        let outcome = server.reload(Trigger::Admin).await.unwrap();
        assert_eq!(outcome.result, ReloadResult::Applied, "{outcome:?}");
    };

    // Phase 1, add-ca: blocked until the bundle holds the new CA.
    let (code, out, err) =
        rotation_check(admin, &config, &["--phase", "add-ca", "--ca", &new_hex]).await;
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        out.contains("server: add-ca of CA") && out.contains("NOT done"),
        "{out}"
    );
    assert!(out.contains("does not hold this CA yet"), "{out}");
    std::fs::write(&bundle, format!("{}{}", old.cert_pem(), new.cert_pem())).unwrap();
    reload().await;
    // A prefix names a CA the bundle holds; colons and case do not matter.
    let (code, out, _) = rotation_check(
        admin,
        &config,
        &["--phase", "add-ca", "--ca", &new_hex[..12]],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{new_hex} (CN=new mesh CA")) && out.contains(": done"),
        "{out}"
    );

    // Phase 2, reissue: this host's own leaf is still from the old CA.
    let (code, out, _) =
        rotation_check(admin, &config, &["--phase", "reissue", "--ca", &old_hex]).await;
    assert_eq!(code, Some(4), "{out}");
    assert!(
        out.contains("blocker: server: this host's certificate"),
        "{out}"
    );

    // remove-ca now: this host, api1 (old leaf) and api2 (never seen). A
    // health check with this host's own (old) certificate is not a peer:
    // it must not show up as one, now or after the re-issue.
    let api1_old = old.issue(&LeafSpec::new("api1", &["api1.test"])).unwrap();
    connect_as(addr, old, &api1_old, &[]).await;
    connect_as(health, old, &files.issued, &[]).await;
    let (code, out, _) = rotation_check(
        admin,
        &config,
        &["--phase", "remove-ca", "--ca", &old_hex, "--json"],
    )
    .await;
    assert_eq!(code, Some(4), "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    let blocked: Vec<&str> = answer["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["host"].as_str().unwrap_or("(self)"))
        .collect();
    assert_eq!(blocked, ["(self)", "api1"], "{answer}");
    assert_eq!(answer["unknown"][0]["host"], "api2", "{answer}");
    assert_eq!(answer["unknown"][0]["seen"], "never", "{answer}");
    assert_eq!(answer["done"], false);

    // This host is re-issued from the new CA: reissue is done.
    let reissued = new.issue(&server_leaf).unwrap();
    std::fs::write(&files.cert, &reissued.cert_pem).unwrap();
    std::fs::write(&files.key, &reissued.key_pem).unwrap();
    reload().await;
    let (code, out, _) =
        rotation_check(admin, &config, &["--phase", "reissue", "--ca", &old_hex]).await;
    assert_eq!(code, Some(0), "{out}");

    // api1 is re-issued and reconnects: only the unseen api2 is left, which
    // the operator may accept.
    let api1_new = new.issue(&LeafSpec::new("api1", &["api1.test"])).unwrap();
    connect_as(addr, &new, &api1_new, &[]).await;
    let remove = ["--phase", "remove-ca", "--ca", &old_hex];
    let (code, out, _) = rotation_check(admin, &config, &remove).await;
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("unknown: api2: never"), "{out}");
    assert!(!out.contains("blocker"), "{out}");
    let (code, out, _) = rotation_check(
        admin,
        &config,
        &[&remove[..], &["--allow-unknown"]].concat(),
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("accepting 1 host(s) not seen recently"),
        "{out}"
    );

    // api2 shows up with a new leaf: done without any override.
    let api2_new = new.issue(&LeafSpec::new("api2", &["api2.test"])).unwrap();
    connect_as(addr, &new, &api2_new, &[]).await;
    let (code, out, _) = rotation_check(admin, &config, &remove).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.trim_end().ends_with(": done"), "{out}");

    // Bad questions: exit 1 with what is wrong; no daemon: exit 3.
    let (code, _, err) =
        rotation_check(admin, &config, &["--phase", "reissue", "--ca", "xyz"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("--ca 'xyz'"), "{err}");
    let (code, _, err) = rotation_check(
        admin,
        &config,
        &["--phase", "remove-ca", "--ca", "0123456789"],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no CA of this host's bundles starts with '0123456789'"),
        "{err}"
    );
    let (code, _, err) = rotation_check(
        admin,
        &config,
        &[
            "--phase",
            "reissue",
            "--ca",
            &old_hex,
            "--trust-domain",
            "nope",
        ],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("trust_domain: 'nope' is not a trust domain"),
        "{err}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, _) = rotation_check(closed, &config, &remove).await;
    assert_eq!(code, Some(3));
}

/// A host this host should talk to whose chain is older than
/// `peers.stale_after` is unknown for remove-ca (`stale`), even though its
/// last chain did not need the old CA: it may have rolled back since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_peer_is_stale_for_remove_ca() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let old = &pki.ca;
    let new = CertificateAuthority::new("new mesh CA").unwrap();
    let bundle = pki.write(
        "bundle.pem",
        &format!("{}{}", old.cert_pem(), new.cert_pem()),
        0o644,
    );
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = with_inventory(&pki, INVENTORY, "server", material_toml(&files, &bundle))
        + "[peers]\nstale_after = \"1s\"\nforget_after = \"1h\"\n\n"
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let config = pki.path("server.toml");
    let admin = server.admin_addr();
    let addr = server.local_addr("in").unwrap();
    for host in ["api1", "api2"] {
        let leaf = new
            .issue(&LeafSpec::new(host, &[&format!("{host}.test")]))
            .unwrap();
        connect_as(addr, old, &leaf, &[]).await;
    }
    let remove = ["--phase", "remove-ca", "--ca", &hex(old)];
    // This host's own leaf still needs the old CA; the peers do not.
    let (code, out, _) = rotation_check(admin, &config, &remove).await;
    assert_eq!(code, Some(4), "{out}");
    assert!(!out.contains("unknown:"), "{out}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (code, out, _) = rotation_check(admin, &config, &remove).await;
    assert_eq!(code, Some(4), "{out}");
    for host in ["api1", "api2"] {
        assert!(
            out.contains(&format!("unknown: {host}: stale, last handshake ")),
            "{out}"
        );
    }
}
