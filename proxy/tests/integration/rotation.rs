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

/// host → the CAs `/status` says it needs (`None`: nothing verifies it).
fn needs(status: &serde_json::Value, host: &str) -> Option<Vec<String>> {
    let peer = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host"] == host)
        .unwrap_or_else(|| panic!("{host} not in {status}"));
    let trust = &peer["trust"];
    assert_eq!(trust["trust_domain"], "mesh");
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
    let toml = with_inventory(&pki, INVENTORY, "server", material_toml(&files, &bundle))
        + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let admin = server.admin_addr();
    let addr = server.local_addr("in").unwrap();

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

    // api1 still on the old CA, api2 already re-issued from the new one.
    let api1_old = old.issue(&LeafSpec::new("api1", &["api1.test"])).unwrap();
    let api2_new = new.issue(&LeafSpec::new("api2", &["api2.test"])).unwrap();
    connect_as(addr, old, &api1_old, &[]).await;
    connect_as(addr, old, &api2_new, &[]).await;
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        per_ca(&text, "mtlsd_peers_depending_on_ca", &old_hex),
        Some(1.0)
    );
    assert_eq!(
        per_ca(&text, "mtlsd_peers_depending_on_ca", &new_hex),
        Some(1.0)
    );
    let status: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status").await.1).unwrap();
    assert_eq!(needs(&status, "api1"), Some(vec![old_hex.clone()]));
    assert_eq!(needs(&status, "api2"), Some(vec![new_hex.clone()]));
    assert_eq!(
        status["identity_depends_on_ca"],
        serde_json::json!([old_hex])
    );
    let api1 = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host"] == "api1")
        .unwrap();
    assert_eq!(
        api1["trust"]["leaf_issuer"],
        "CN=test mesh CA, O=mtlsd dev CA"
    );

    // api1 is re-issued and reconnects: nobody needs the old CA now.
    let api1_new = new.issue(&LeafSpec::new("api1", &["api1.test"])).unwrap();
    connect_as(addr, old, &api1_new, &[]).await;
    let (_, text) = http_get(admin, "/metrics").await;
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
    let status: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status").await.1).unwrap();
    assert_eq!(needs(&status, "api2"), Some(vec![]));

    // The bundle loses the new CA (say, a rotation rolled back): with no
    // new handshake, api1 (plain new leaf) is cut off and api2 (cross-
    // signed) depends on the old CA alone.
    std::fs::write(&bundle, old.cert_pem()).unwrap();
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome:?}");
    let status: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status").await.1).unwrap();
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
