//! Peer identity from the role inventory, and role policy in tcp mode.

use mtlsd::reject::RejectReason;
use mtlsd_devca::LeafSpec;
use tokio::net::TcpStream;

use crate::support::*;

/// server (the daemon under test), api1 (role api), db1 (role database).
/// Serial 0xdead is revoked.
const INVENTORY: &str = r#"
cluster = "test"

[hosts.server]
sans = ["DNS:server.test"]
roles = ["database"]

[hosts.api1]
sans = ["DNS:api1.test", "IP:10.9.0.21"]
roles = ["api"]

[hosts.db1]
sans = ["DNS:db1.test"]
roles = ["database"]

[[revoked]]
serial = "dead"
note = "key lost"
"#;

fn identity_toml(pki: &Pki, host: &str, files: &HostFiles) -> String {
    inventory_material_toml(pki, INVENTORY, host, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_each_policy_class_and_admits_the_allowed_role() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let server_files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = identity_toml(&pki, "server", &server_files)
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let ca = pki.ca.cert_der().clone();
    let stats = server.stats("in").unwrap();

    let cases = [
        (
            "SAN in no inventory host",
            LeafSpec::new("x", &["nobody.test"]),
            RejectReason::SanNotInInventory,
        ),
        (
            "SANs of two hosts",
            LeafSpec::new("x", &["api1.test", "db1.test"]),
            RejectReason::AmbiguousHost,
        ),
        (
            "revoked serial",
            LeafSpec::new("x", &["api1.test"]).serial(0xdead),
            RejectReason::Revoked,
        ),
        (
            "host without the role",
            LeafSpec::new("x", &["db1.test"]),
            RejectReason::RoleNotAllowed,
        ),
    ];
    for (what, spec, reason) in cases {
        let cert = pki.ca.issue(&spec).unwrap();
        if let Ok(mut stream) = tls_connect(addr, client_config(&ca, Some(&cert))).await {
            assert_no_echo(&mut stream).await;
        }
        eventually(&format!("{what} counted as {reason}"), || {
            stats.refusals(reason) == 1
        })
        .await;
    }
    assert_eq!(echo.accepted(), 0);

    // api1 by its IP SAN alone: identified, allowed.
    let api1 = pki
        .ca
        .issue(&LeafSpec::new("api1", &["10.9.0.21"]))
        .unwrap();
    let mut stream = tls_connect(addr, client_config(&ca, Some(&api1)))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut stream, b"hi").await.unwrap(), b"hi");
    assert_eq!(stats.handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refusal_is_an_access_denied_alert() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let server_files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = identity_toml(&pki, "server", &server_files)
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let db1 = pki.ca.issue(&LeafSpec::new("db1", &["db1.test"])).unwrap();
    let mut stream = tls_connect(
        server.local_addr("in").unwrap(),
        client_config(pki.ca.cert_der(), Some(&db1)),
    )
    .await
    .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(b"x").await;
    let mut buf = [0u8; 1];
    let err = stream.read(&mut buf).await.unwrap_err();
    let tls = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {err}"));
    assert_eq!(
        tls,
        &rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_without_the_expected_role() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    // The remote host is api1 (role api); the client host expects database.
    let api_files = pki.host(
        "api1",
        &LeafSpec::new(
            "api1",
            &["api1.test", "10.9.0.21", "localhost", "127.0.0.1"],
        ),
    );
    let (remote, _) = start_daemon(
        &pki,
        "remote.toml",
        &(identity_toml(&pki, "api1", &api_files) + &inbound_toml("in", echo.addr, "")),
    )
    .await;
    let client_files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost"]),
    );
    let remote_addr = remote.local_addr("in").unwrap();
    let (client, _) = start_daemon(
        &pki,
        "client.toml",
        &(identity_toml(&pki, "server", &client_files)
            + &outbound_toml(
                "to-db",
                remote_addr,
                "localhost",
                "expect_roles = [\"database\"]",
            )
            + &outbound_toml(
                "to-api",
                remote_addr,
                "localhost",
                "expect_roles = [\"api\"]",
            )),
    )
    .await;

    let mut plain = TcpStream::connect(client.local_addr("to-db").unwrap())
        .await
        .unwrap();
    assert_no_echo(&mut plain).await;
    let stats = client.stats("to-db").unwrap();
    eventually("role_not_allowed on the outbound", || {
        stats.refusals(RejectReason::RoleNotAllowed) == 1
    })
    .await;
    assert_eq!(echo.accepted(), 0);

    let mut plain = TcpStream::connect(client.local_addr("to-api").unwrap())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut plain, b"api").await.unwrap(), b"api");
}

#[test]
fn start_up_refuses_a_certificate_missing_its_inventory_sans() {
    let pki = Pki::new();
    // The inventory says server carries DNS:server.test; the cert does not.
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = identity_toml(&pki, "server", &files)
        + &inbound_toml("in", "127.0.0.1:9".parse().unwrap(), "");
    let config = pki.write("server.toml", &toml, 0o600);
    let (status, _, stderr) = crate::support::process::run_to_end(
        &["check", "--config", &config.display().to_string()],
        std::time::Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing DNS:server.test"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_log_line_names_class_peer_and_sans() {
    use crate::support::process::MtlsdProcess;
    let pki = Pki::new();
    let echo = Echo::start().await;
    let server_files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = identity_toml(&pki, "server", &server_files)
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]");
    let config = pki.write("server.toml", &toml, 0o600);
    let config = config.display().to_string();
    let mut daemon = MtlsdProcess::spawn(&["run", "--config", &config], &[]);
    let addr = daemon.listener_addr("in").await;
    let db1 = pki.ca.issue(&LeafSpec::new("db1", &["db1.test"])).unwrap();
    if let Ok(mut stream) = tls_connect(addr, client_config(pki.ca.cert_der(), Some(&db1))).await {
        assert_no_echo(&mut stream).await;
    }
    let line = daemon.wait_for_log("TLS handshake refused", SOON).await;
    assert_eq!(line["reason"], "role_not_allowed", "{line}");
    assert_eq!(line["sans"], "DNS:db1.test", "{line}");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(line["listener"], "in");

    // Chain refusals name the presented SANs too (issue 20): an unknown CA
    // and an expired certificate.
    let stranger = mtlsd_devca::CertificateAuthority::new("stranger CA").unwrap();
    let foreign = stranger
        .issue(&LeafSpec::new("x", &["foreign.test"]))
        .unwrap();
    let expired = pki
        .ca
        .issue(&LeafSpec::new("y", &["stale.test"]).expired())
        .unwrap();
    for (leaf, reason, sans) in [
        (&foreign, "unknown_ca", "DNS:foreign.test"),
        (&expired, "expired", "DNS:stale.test"),
    ] {
        if let Ok(mut stream) =
            tls_connect(addr, client_config(pki.ca.cert_der(), Some(leaf))).await
        {
            assert_no_echo(&mut stream).await;
        }
        let line = daemon
            .wait_for_log_where("TLS handshake refused", |l| l["reason"] == reason, SOON)
            .await;
        assert_eq!(line["sans"], sans, "{line}");
    }
}

/// A rule naming a role that no inventory host holds is almost always a
/// typo that locks everyone out of it: `check` warns (naming listener,
/// rule and role) and `check --strict` fails.
#[test]
fn check_warns_about_roles_no_host_holds_and_strict_fails() {
    use crate::support::process::run_to_end;
    use std::time::Duration;
    let pki = Pki::new();
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let toml = identity_toml(&pki, "server", &files)
        + &inbound_toml(
            "rpc",
            "127.0.0.1:7000".parse().unwrap(),
            "protocol = \"grpc\"\nallow_roles = [\"api\", \"apl\"]\n[[inbound.routes]]\npath = \"/a.B/Delete*\"\nallow_roles = [\"admni\"]\n",
        );
    let config = pki.write("server.toml", &toml, 0o600);
    let config = config.display().to_string();
    let (status, _, stderr) = run_to_end(&["check", "--config", &config], Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    for expected in [
        "listener 'rpc': allow_roles names role 'apl'",
        "listener 'rpc': route /a.B/Delete* names role 'admni'",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
    assert!(!stderr.contains("role 'api'"), "{stderr}");
    let (status, _, stderr) = run_to_end(
        &["check", "--strict", "--config", &config],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--strict"), "{stderr}");
}

/// This host's own serial listed as revoked: `check` fails and start-up
/// refuses, naming the serial; a reload still applies the inventory (its
/// other revocations must not be lost) and the daemon reports not ready,
/// with a metric an alert can use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_serial_revoked_refuses_start_and_makes_a_running_daemon_not_ready() {
    use crate::support::process::run_to_end;
    use mtlsd::reloading::{ReloadResult, Trigger};
    use std::time::Duration;
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    let own = files.issued.serial_hex.clone();
    let revoking_own = format!("{INVENTORY}\n[[revoked]]\nserial = \"{own}\"\n");
    let toml = inventory_material_toml(&pki, &revoking_own, "server", &files)
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]");
    let config = pki.write("server.toml", &toml, 0o600);

    let config_arg = config.display().to_string();
    let (status, _, stderr) =
        run_to_end(&["check", "--config", &config_arg], Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("serial {own}")), "{stderr}");
    let loaded = mtlsd::config::Config::load_with_env(&config, std::iter::empty()).unwrap();
    let refused = mtlsd::daemon::Running::start(&loaded).await.unwrap_err();
    assert!(
        refused.to_string().contains(&format!("serial {own}")),
        "{refused}"
    );

    // Started with a good inventory, then its own serial is revoked.
    let toml = identity_toml(&pki, "server", &files)
        + "[reload]\nwatch = false\n\n"
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let admin = server.admin_addr();
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let api1 = pki
        .ca
        .issue(&LeafSpec::new("api1", &["api1.test"]))
        .unwrap();
    let client = client_config(pki.ca.cert_der(), Some(&api1));
    let mut before = tls_connect(server.local_addr("in").unwrap(), client.clone())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut before, b"hi").await.unwrap(), b"hi");

    let both = format!(
        "{revoking_own}\n[[revoked]]\nserial = \"{}\"\n",
        api1.serial_hex
    );
    pki.write("inventory.toml", &both, 0o644);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome}");
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&format!("serial {own}")), "{body}");
    let metrics = http_get(admin, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "mtlsd_identity_revoked",
            &[("trust_domain", "mesh")]
        ),
        Some(1.0)
    );
    // The other revocation in the same inventory applies.
    let mut after = tls_connect(server.local_addr("in").unwrap(), client)
        .await
        .unwrap();
    assert_no_echo(&mut after).await;
}
