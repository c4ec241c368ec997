//! Revocation as an operator does it: CRLs published by a real OpenSSL CA
//! (`openssl ca -gencrl`), and `[[revoked]]` inventory entries that name
//! the issuing CA by the SHA-256 of its public key. What a reload refuses
//! from then on, which held connections it closes, what keeps serving when
//! a CRL is foreign or late, and what `mtlsd check`, the log and the
//! metrics say.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mtlsd::metrics::short_fingerprint;
use mtlsd::reject::RejectReason;
use mtlsd::reloading::{ReloadResult, Trigger};
use mtlsd_devca::{CertificateAuthority, IssuedCert, LeafSpec, OffsetDateTime};
use mtlsd_expiry::{CertFacts, Fingerprint};
use nix::sys::signal::Signal;
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;

use crate::support::process::{MtlsdProcess, run_to_end};
use crate::support::*;

/// An OpenSSL `ca` directory around a devca CA: its certificate and key,
/// the index of revoked serials and a CRL number, as `openssl ca` keeps
/// them; [`OpensslCa::publish`] runs `openssl ca -gencrl`.
struct OpensslCa {
    dir: PathBuf,
}

impl OpensslCa {
    fn new(root: &Path, name: &str, ca: &CertificateAuthority) -> Self {
        let dir = root.join(format!("openssl-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("ca.key"), ca.key_pem()).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        // A crlnumber (and a CRL extension) makes a v2 CRL, the version
        // RFC 5280 profiles and webpki accept.
        let config = format!(
            "[ca]\n\
             default_ca = mtlsd_test\n\
             [mtlsd_test]\n\
             dir = {dir}\n\
             database = $dir/index.txt\n\
             crlnumber = $dir/crlnumber\n\
             certificate = $dir/ca.crt\n\
             private_key = $dir/ca.key\n\
             default_md = sha256\n\
             default_crl_days = 7\n\
             crl_extensions = crl_ext\n\
             [crl_ext]\n\
             authorityKeyIdentifier = keyid:always\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("ca.cnf"), config).unwrap();
        Self { dir }
    }

    /// Configured like an `openssl ca` set up without `crlnumber` and
    /// `crl_extensions`: its CRLs carry no extensions at all.
    fn without_crl_extensions(self) -> Self {
        let path = self.dir.join("ca.cnf");
        let config: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with("crlnumber") && !line.starts_with("crl_extensions"))
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(&path, config).unwrap();
        self
    }

    /// Lists `serial_hex` as revoked (key compromise, an hour ago), as
    /// `openssl ca -revoke` would.
    fn revoke_serial(&self, serial_hex: &str) {
        let mut serial = serial_hex.to_ascii_uppercase();
        if serial.len() % 2 == 1 {
            serial.insert(0, '0');
        }
        let revoked_at = openssl_time(OffsetDateTime::now_utc() - Duration::from_secs(3600));
        let line =
            format!("R\t391231235959Z\t{revoked_at},keyCompromise\t{serial}\tunknown\t/CN=x\n");
        let index = self.dir.join("index.txt");
        let mut text = std::fs::read_to_string(&index).unwrap();
        text.push_str(&line);
        std::fs::write(&index, text).unwrap();
    }

    fn revoke(&self, cert: &IssuedCert) {
        self.revoke_serial(&cert.serial_hex);
    }

    /// Empties the index: the next CRL revokes nothing.
    fn unrevoke_all(&self) {
        std::fs::write(self.dir.join("index.txt"), "").unwrap();
    }

    /// Publishes a CRL of what the index lists to `out` (replaced
    /// atomically, as a CRL distribution job would), valid from now for
    /// a week, or for `window` (lastUpdate, nextUpdate) when given.
    fn publish(&self, out: &Path, window: Option<(OffsetDateTime, OffsetDateTime)>) -> PathBuf {
        let fresh = self.dir.join("fresh.crl");
        let mut command = Command::new("openssl");
        command
            .arg("ca")
            .arg("-config")
            .arg(self.dir.join("ca.cnf"))
            .arg("-gencrl")
            .arg("-out")
            .arg(&fresh);
        if let Some((last, next)) = window {
            command
                .arg("-crl_lastupdate")
                .arg(openssl_time(last))
                .arg("-crl_nextupdate")
                .arg(openssl_time(next));
        }
        let output = command
            .output()
            .expect("openssl not found: install it (scripts/test-all does)");
        assert!(
            output.status.success(),
            "openssl ca -gencrl failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::rename(&fresh, out).unwrap();
        out.to_owned()
    }
}

/// `YYMMDDHHMMSSZ` (UTCTime, years 2000-2049), as `openssl ca` keeps
/// times in its index and takes them on its command line.
fn openssl_time(t: OffsetDateTime) -> String {
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Adds `crl = [...]` (and `crl_unknown_status` when given) to the
/// `[trust_domains.mesh]` table of a [`material_toml`] config.
fn with_crl(toml: String, crls: &[&Path], unknown_status: Option<&str>) -> String {
    let list: Vec<String> = crls.iter().map(|p| format!("{p:?}")).collect();
    let mut keys = format!("crl = [{}]\n", list.join(", "));
    if let Some(status) = unknown_status {
        keys += &format!("crl_unknown_status = {status:?}\n");
    }
    toml.replacen(
        "[trust_domains.mesh]\n",
        &format!("[trust_domains.mesh]\n{keys}"),
        1,
    )
}

/// Connects with `client` and asserts the peer is refused: either the
/// handshake fails or nothing comes back (TLS 1.3 clients finish before
/// the server has judged their certificate).
async fn assert_refused(addr: std::net::SocketAddr, client: std::sync::Arc<rustls::ClientConfig>) {
    if let Ok(mut stream) = tls_connect(addr, client).await {
        assert_no_echo(&mut stream).await;
    }
}

async fn assert_admitted(addr: std::net::SocketAddr, client: std::sync::Arc<rustls::ClientConfig>) {
    let mut stream = tls_connect(addr, client).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"in").await.unwrap(), b"in");
}

/// Waits until the connection is closed by the other end.
async fn closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) {
    let mut buf = [0u8; 16];
    loop {
        match within("the held connection to close", limit, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

async fn metrics_of(admin: std::net::SocketAddr) -> String {
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_crl_revokes_on_sighup_refuses_new_handshakes_and_closes_held_connections() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let openssl = OpensslCa::new(pki.dir.path(), "mesh", &pki.ca);
    let crl = openssl.publish(&pki.path("mesh.crl"), None);
    let toml = with_crl(material_toml(&files, &pki.ca_file()), &[&crl], None)
        + "[reload]\nwatch = false\ndrain_grace = \"2s\"\n"
        + &inbound_toml("in", echo.addr, "");
    let config = pki.write("server.toml", &toml, 0o600);
    let config_arg = config.display().to_string();
    let mut daemon = MtlsdProcess::spawn(&["run", "--config", &config_arg], &[]);
    let addr = daemon.listener_addr("in").await;
    let admin = daemon.admin_addr().await;

    let leaf = pki.ca.issue(&localhost_leaf("client")).unwrap();
    let client = client_config(pki.ca.cert_der(), Some(&leaf));
    let bystander = client_config(
        pki.ca.cert_der(),
        Some(&pki.ca.issue(&localhost_leaf("bystander")).unwrap()),
    );
    // The CRL revokes nothing yet: the client gets in and stays.
    let mut held = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(round_trip(&mut held, b"hi").await.unwrap(), b"hi");

    openssl.revoke(&leaf);
    openssl.publish(&crl, None);
    daemon.signal(Signal::SIGHUP);
    let reloaded = daemon.wait_for_log("TLS material reloaded", SOON).await;
    let reloaded_at = Instant::now();
    assert_eq!(reloaded["trigger"], "sighup", "{reloaded}");
    assert!(
        reloaded["changed"].as_str().unwrap().contains("crl.mesh"),
        "{reloaded}"
    );
    assert_eq!(reloaded["closing"], 1, "{reloaded}");

    // A new handshake is refused as revoked, with the CRL named as why.
    assert_refused(addr, client.clone()).await;
    let refused = daemon
        .wait_for_log_where("TLS handshake refused", |v| v["reason"] == "revoked", SOON)
        .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("revoked by a CRL"),
        "{refused}"
    );
    let closing = daemon
        .find_log_where(
            "peer no longer qualifies after a trust change; closing its connection after the grace period",
            |v| v["reason"] == "revoked",
            SOON,
        )
        .await;
    assert_eq!(closing["listener"], "in", "{closing}");
    // Everyone else is untouched.
    assert_admitted(addr, bystander).await;

    // The held connection works through the grace period, then closes.
    assert_eq!(round_trip(&mut held, b"grace").await.unwrap(), b"grace");
    closed(&mut held, Duration::from_secs(3)).await;
    let took = reloaded_at.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(3),
        "closed {took:?} after the reload; drain_grace is 2s"
    );

    let text = metrics_of(admin).await;
    let revoked = [("listener", "in"), ("reason", "revoked")];
    assert_eq!(
        metric(&text, "mtlsd_handshake_failures_total", &revoked),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "mtlsd_connections_closed_total", &revoked),
        Some(1.0),
        "{text}"
    );

    // The audit log names the CRL item, live, with old and new SHA-256.
    let audit = std::fs::read_to_string(pki.path("state").join("audit.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["result"], "applied", "{last}");
    let items = last["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the CRL changed: {last}");
    assert_eq!(items[0]["item"], "crl.mesh");
    assert_eq!(items[0]["applies"], "live");
    assert_ne!(items[0]["old"], items[0]["new"]);

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.exited(SOON).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_crl_is_picked_up_by_the_file_watcher_and_unrevoking_restores_access() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let openssl = OpensslCa::new(pki.dir.path(), "mesh", &pki.ca);
    let crl = openssl.publish(&pki.path("mesh.crl"), None);
    let toml = with_crl(material_toml(&files, &pki.ca_file()), &[&crl], None)
        + "[reload]\nsettle = \"50ms\"\ndrain_grace = \"500ms\"\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, config) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let stats = server.stats("in").unwrap();
    let leaf = pki.ca.issue(&localhost_leaf("client")).unwrap();
    let client = client_config(pki.ca.cert_der(), Some(&leaf));
    assert_admitted(addr, client.clone()).await;

    openssl.revoke(&leaf);
    openssl.publish(&crl, None);
    eventually("the new CRL in force", || {
        server.store().current().number() == 2
    })
    .await;
    assert_refused(addr, client.clone()).await;
    eventually("a revoked refusal", || {
        stats.refusals(RejectReason::Revoked) == 1
    })
    .await;
    let audit = std::fs::read_to_string(&config.reload.audit_log).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["trigger"], "inotify", "{last}");
    assert_eq!(last["items"][0]["item"], "crl.mesh", "{last}");

    // The CA takes the revocation back: the next CRL lets the client in.
    openssl.unrevoke_all();
    openssl.publish(&crl, None);
    eventually("the third CRL in force", || {
        server.store().current().number() == 3
    })
    .await;
    assert_admitted(addr, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_signed_by_a_foreign_ca_fails_check_and_is_rejected_on_reload() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let leaf = pki.ca.issue(&localhost_leaf("client")).unwrap();
    let good = OpensslCa::new(pki.dir.path(), "mesh", &pki.ca).publish(&pki.path("mesh.crl"), None);
    // A CA of another name, and an impostor with the mesh CA's very name
    // but its own key. Both "revoke" the client.
    let stranger = CertificateAuthority::new("stranger CA").unwrap();
    let impostor = CertificateAuthority::new("test mesh CA").unwrap();
    let cases = [
        (
            "stranger",
            &stranger,
            "issued by 'CN=stranger CA, O=mtlsd dev CA', which is not a CA of trust domain 'mesh'",
        ),
        (
            "impostor",
            &impostor,
            "its signature does not verify against the CA 'CN=test mesh CA, O=mtlsd dev CA' of trust domain 'mesh'",
        ),
    ];
    let mut foreign = Vec::new();
    for (name, ca, expected) in cases {
        let openssl = OpensslCa::new(pki.dir.path(), name, ca);
        openssl.revoke(&leaf);
        let crl = openssl.publish(&pki.path(&format!("{name}.crl")), None);
        let toml = with_crl(material_toml(&files, &pki.ca_file()), &[&crl], None)
            + &inbound_toml("in", echo.addr, "");
        let config = pki.write(&format!("check-{name}.toml"), &toml, 0o600);
        let config_arg = config.display().to_string();
        let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
            run_to_end(&["check", "--config", &config_arg], Duration::from_secs(20))
        })
        .await
        .unwrap();
        assert_eq!(status.code(), Some(1), "{name}: {stdout}\n{stderr}");
        let problem = stderr
            .lines()
            .find(|line| line.contains(&crl.display().to_string()))
            .unwrap_or_else(|| panic!("{name}: the CRL file is not named:\n{stderr}"));
        assert!(
            problem.contains(expected),
            "{name}: expected {expected:?} in:\n{stderr}"
        );
        foreign.push(crl);
    }

    // A daemon serving with the good CRL keeps it when a foreign one
    // replaces the file.
    let toml = with_crl(material_toml(&files, &pki.ca_file()), &[&good], None)
        + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let client = client_config(pki.ca.cert_der(), Some(&leaf));
    assert_admitted(addr, client.clone()).await;
    for crl in &foreign {
        std::fs::copy(crl, &good).unwrap();
        let outcome = server.reload(Trigger::Admin).await.unwrap();
        assert_eq!(outcome.result, ReloadResult::Rejected, "{outcome}");
        assert_eq!(outcome.generation, 1, "{outcome}");
        let reason = outcome.reason.unwrap();
        assert!(reason.contains("mesh.crl"), "{reason}");
        assert!(reason.contains("trust domain 'mesh'"), "{reason}");
        // The old list stays in force: the client it does not revoke
        // still gets in.
        assert_admitted(addr, client.clone()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_without_extensions_is_refused_with_what_to_configure() {
    let pki = Pki::new();
    let files = pki.host("server", &localhost_leaf("server"));
    let crl = OpensslCa::new(pki.dir.path(), "bare", &pki.ca)
        .without_crl_extensions()
        .publish(&pki.path("bare.crl"), None);
    let toml = with_crl(material_toml(&files, &pki.ca_file()), &[&crl], None);
    let config = pki.write("server.toml", &toml, 0o600);
    let config_arg = config.display().to_string();
    let (status, _, stderr) = tokio::task::spawn_blocking(move || {
        run_to_end(&["check", "--config", &config_arg], Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let problem = stderr
        .lines()
        .find(|line| line.contains("bare.crl"))
        .unwrap_or_else(|| panic!("the CRL file is not named:\n{stderr}"));
    assert!(
        problem.contains("it has no extensions")
            && problem.contains("`crlnumber` and `crl_extensions`"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_crl_warns_keeps_serving_still_revokes_and_exports_its_next_update() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let revoked = pki.ca.issue(&localhost_leaf("revoked")).unwrap();
    let fine = pki.ca.issue(&localhost_leaf("fine")).unwrap();
    let openssl = OpensslCa::new(pki.dir.path(), "mesh", &pki.ca);
    openssl.revoke(&revoked);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let next_update = now - Duration::from_secs(86_400);
    let crl = openssl.publish(
        &pki.path("mesh.crl"),
        Some((now - Duration::from_secs(8 * 86_400), next_update)),
    );
    let toml = with_crl(material_toml(&files, &pki.ca_file()), &[&crl], None)
        + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    let config = pki.write("server.toml", &toml, 0o600);
    let config_arg = config.display().to_string();
    const LATE: &str = "CRL is past its nextUpdate; still enforcing it until a newer one is loaded";

    // A late CRL is not a configuration problem.
    let check_arg = config_arg.clone();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_to_end(&["check", "--config", &check_arg], Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains(LATE), "{stderr}");

    let mut daemon = MtlsdProcess::spawn(&["run", "--config", &config_arg], &[]);
    let warning = daemon.find_log_where(LATE, |_| true, SOON).await;
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["path"], crl.display().to_string(), "{warning}");
    let addr = daemon.listener_addr("in").await;
    let admin = daemon.admin_addr().await;

    assert_admitted(addr, client_config(pki.ca.cert_der(), Some(&fine))).await;
    assert_refused(addr, client_config(pki.ca.cert_der(), Some(&revoked))).await;
    let refused = daemon.wait_for_log("TLS handshake refused", SOON).await;
    assert_eq!(refused["reason"], "revoked", "{refused}");

    let der = CertificateRevocationListDer::from_pem_file(&crl).unwrap();
    let fingerprint = short_fingerprint(Fingerprint::of(der.as_ref()));
    let text = metrics_of(admin).await;
    assert_eq!(
        metric(
            &text,
            "mtlsd_crl_next_update_timestamp_seconds",
            &[("trust_domain", "mesh"), ("fingerprint", &fingerprint)]
        ),
        Some(next_update.unix_timestamp() as f64),
        "{text}"
    );
    promtool_check_metrics(&text);

    // A reload with the same late CRL is not rejected either.
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log(LATE, SOON).await;
    daemon.wait_for_log("reload: nothing changed", SOON).await;
    assert_admitted(addr, client_config(pki.ca.cert_der(), Some(&fine))).await;
}

/// The chain a host issued by `intermediate` presents: leaf, intermediate.
fn chain_client(
    root: &CertificateAuthority,
    intermediate: &CertificateAuthority,
    leaf: &IssuedCert,
) -> std::sync::Arc<rustls::ClientConfig> {
    client_config_chain(
        root.cert_der(),
        vec![leaf.cert_der.clone(), intermediate.cert_der().clone()],
        leaf.key_der(),
    )
}

/// A host certificate issued by `intermediate`, written with its chain.
fn host_under(pki: &Pki, intermediate: &CertificateAuthority) -> HostFiles {
    let files = pki.host_from(intermediate, "server", &localhost_leaf("server"));
    pki.write(
        "server.crt",
        &format!("{}{}", files.issued.cert_pem, intermediate.cert_pem()),
        0o644,
    );
    files
}

fn serial_of(ca: &CertificateAuthority) -> String {
    CertFacts::from_der(ca.cert_der()).unwrap().serial_hex
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_of_intermediates_revoke_leaves_and_the_root_crl_revokes_intermediates() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let issuing = pki.ca.intermediate("mesh issuing CA").unwrap();
    let other = pki.ca.intermediate("mesh other issuing CA").unwrap();
    let files = host_under(&pki, &issuing);
    let revoked = issuing.issue(&localhost_leaf("revoked")).unwrap();
    let fine = issuing.issue(&localhost_leaf("fine")).unwrap();
    let under_other = other.issue(&localhost_leaf("under-other")).unwrap();

    // The issuing intermediate's CRL revokes one of its leaves; the
    // root's CRL revokes the other intermediate.
    let issuing_ca = OpensslCa::new(pki.dir.path(), "issuing", &issuing);
    issuing_ca.revoke(&revoked);
    let issuing_crl = issuing_ca.publish(&pki.path("issuing.crl"), None);
    let root_ca = OpensslCa::new(pki.dir.path(), "root", &pki.ca);
    root_ca.revoke_serial(&serial_of(&other));
    let root_crl = root_ca.publish(&pki.path("root.crl"), None);

    // The bundle is the root alone; the intermediate's CRL is accepted
    // because the intermediate is in this host's own chain.
    let toml = with_crl(
        material_toml(&files, &pki.ca_file()),
        &[&issuing_crl, &root_crl],
        None,
    ) + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, config) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let stats = server.stats("in").unwrap();

    assert_admitted(addr, chain_client(&pki.ca, &issuing, &fine)).await;
    assert_refused(addr, chain_client(&pki.ca, &issuing, &revoked)).await;
    eventually("the revoked leaf counted", || {
        stats.refusals(RejectReason::Revoked) == 1
    })
    .await;
    // A leaf whose intermediate is revoked by the root is refused too
    // (revocation is checked for the whole chain).
    assert_refused(addr, chain_client(&pki.ca, &other, &under_other)).await;
    eventually("the revoked intermediate counted", || {
        stats.refusals(RejectReason::Revoked) == 2
    })
    .await;
    assert_eq!(stats.total_refusals(), 2);

    // The other intermediate's CRL is not loadable here: that
    // intermediate is neither in the bundle nor in this host's chain.
    let other_crl =
        OpensslCa::new(pki.dir.path(), "other", &other).publish(&pki.path("other.crl"), None);
    let text = std::fs::read_to_string(&config.source).unwrap();
    let with_other = text.replacen(
        &format!("{:?}]", root_crl),
        &format!("{:?}, {:?}]", root_crl, other_crl),
        1,
    );
    assert_ne!(with_other, text);
    pki.write("server.toml", &with_other, 0o600);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Rejected, "{outcome}");
    let reason = outcome.reason.unwrap();
    assert!(reason.contains("other.crl"), "{reason}");
    assert!(
        reason.contains("nor an intermediate of this host's certificate chain"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_unknown_status_deny_refuses_a_chain_through_an_intermediate_without_a_crl() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    // This host is issued by the root, whose CRL is configured; a client
    // comes through an intermediate that publishes none.
    let files = pki.host("server", &localhost_leaf("server"));
    let intermediate = pki.ca.intermediate("mesh issuing CA").unwrap();
    let via_intermediate = intermediate.issue(&localhost_leaf("client")).unwrap();
    let client = chain_client(&pki.ca, &intermediate, &via_intermediate);
    let direct = client_config(
        pki.ca.cert_der(),
        Some(&pki.ca.issue(&localhost_leaf("direct")).unwrap()),
    );
    let root_crl =
        OpensslCa::new(pki.dir.path(), "root", &pki.ca).publish(&pki.path("root.crl"), None);
    let config_with = |status: &str| {
        with_crl(
            material_toml(&files, &pki.ca_file()),
            &[&root_crl],
            Some(status),
        ) + "[reload]\nwatch = false\ndrain_grace = \"300ms\"\n"
            + &inbound_toml("in", echo.addr, "")
    };

    // allow (the default, spelled out): admitted, and held open.
    let (server, _) = start_daemon(&pki, "server.toml", &config_with("allow")).await;
    let addr = server.local_addr("in").unwrap();
    let stats = server.stats("in").unwrap();
    let mut held = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(round_trip(&mut held, b"hi").await.unwrap(), b"hi");

    // deny: refused as revoked, and the held connection is closed.
    pki.write("server.toml", &config_with("deny"), 0o600);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome}");
    assert_eq!(outcome.closing, 1, "{outcome}");
    closed(&mut held, Duration::from_millis(1300)).await;
    assert_refused(addr, client.clone()).await;
    eventually("refused as revoked", || {
        stats.refusals(RejectReason::Revoked) == 1
    })
    .await;
    // A leaf the root's CRL covers is still admitted.
    assert_admitted(addr, direct).await;

    // And back to allow.
    pki.write("server.toml", &config_with("allow"), 0o600);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome}");
    assert_admitted(addr, client).await;
    assert_eq!(stats.total_refusals(), 1);
}

/// SHA-256 of a CA's SubjectPublicKeyInfo the way the operator guide
/// says to compute it.
fn issuer_sha256_with_openssl(pki: &Pki, name: &str, ca_pem: &str) -> String {
    let path = pki.write(&format!("{name}.pem"), ca_pem, 0o644);
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_revocation_by_issuer_key_covers_every_cross_signed_form_and_no_other_ca() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    // The mesh CA (pki.ca) is also cross-signed by a bridge root: its
    // leaves chain to the mesh CA directly, or through the cross-signed
    // form to the bridge root.
    let bridge = CertificateAuthority::new("bridge root").unwrap();
    let cross = pki.ca.cross_signed_by(&bridge).unwrap();
    let bridge_bundle = pki.write("bridge.pem", bridge.cert_pem(), 0o644);
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );

    let mesh_key = issuer_sha256_with_openssl(&pki, "mesh-ca-copy", pki.ca.cert_pem());
    let cross_key = issuer_sha256_with_openssl(&pki, "cross", cross.cert_pem());
    let bridge_key = issuer_sha256_with_openssl(&pki, "bridge-copy", bridge.cert_pem());
    assert_eq!(mesh_key, cross_key, "one key, one SPKI");
    assert_eq!(
        mesh_key,
        Fingerprint::of(&pki.ca.spki_der()).to_hex(),
        "the operator guide's command hashes the SPKI"
    );
    // The same serial is revoked for the mesh CA (colon-separated upper
    // case, as some tools print it) and another serial only for the
    // bridge root, which never issued it.
    let colons = mesh_key
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let inventory = format!(
        r#"
cluster = "cross"

[hosts.server]
sans = ["DNS:server.test"]
roles = ["database"]

[hosts.api1]
sans = ["DNS:api1.test"]
roles = ["api"]

[[revoked]]
serial = "c0ffee01"
issuer = "{colons}"

[[revoked]]
serial = "c0ffee02"
issuer = "{bridge_key}"
"#
    );
    let leaf = |serial: u64| {
        pki.ca
            .issue(&LeafSpec::new("api1", &["api1.test"]).serial(serial))
            .unwrap()
    };
    let (revoked, other_issuer) = (leaf(0xc0ffee01), leaf(0xc0ffee02));

    // "in": the mesh domain, chains end at the mesh CA. "bridged": a
    // domain trusting only the bridge root; clients present the
    // cross-signed form as their intermediate.
    let toml = with_inventory(
        &pki,
        &inventory,
        "server",
        material_toml(&files, &pki.ca_file()),
    ) + &format!("[trust_domains.bridge]\nbundle = {bridge_bundle:?}\n\n")
        + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "allow_roles = [\"api\"]")
        + &inbound_toml(
            "bridged",
            echo.addr,
            "trust_domain = \"bridge\"\nallow_roles = [\"api\"]",
        );
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let direct_client = |leaf: &IssuedCert| client_config(pki.ca.cert_der(), Some(leaf));
    let bridged_client = |leaf: &IssuedCert| {
        client_config_chain(
            pki.ca.cert_der(),
            vec![leaf.cert_der.clone(), cross.cert_der().clone()],
            leaf.key_der(),
        )
    };
    for (listener, client) in [
        ("in", &direct_client as &dyn Fn(&IssuedCert) -> _),
        ("bridged", &bridged_client),
    ] {
        let addr = server.local_addr(listener).unwrap();
        let stats = server.stats(listener).unwrap();
        assert_refused(addr, client(&revoked)).await;
        eventually("refused as revoked", || {
            stats.refusals(RejectReason::Revoked) == 1
        })
        .await;
        assert_admitted(addr, client(&other_issuer)).await;
        assert_eq!(stats.total_refusals(), 1, "{listener}");
    }
    // The bridged listener really verified through the cross-signed form:
    // the leaf alone does not chain to the bridge root.
    let addr = server.local_addr("bridged").unwrap();
    assert_refused(
        addr,
        client_config_chain(
            pki.ca.cert_der(),
            vec![other_issuer.cert_der.clone()],
            other_issuer.key_der(),
        ),
    )
    .await;
    let stats = server.stats("bridged").unwrap();
    eventually("refused as unknown CA", || {
        stats.refusals(RejectReason::UnknownCa) == 1
    })
    .await;
}

// Two bugs the first version of these tests found, fixed since.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cas_with_one_name_each_with_its_own_crl_admit_the_leaves_of_both() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let rekeyed = CertificateAuthority::new("test mesh CA").unwrap();
    let bundle = pki.write(
        "bundle.pem",
        &format!("{}{}", pki.ca.cert_pem(), rekeyed.cert_pem()),
        0o644,
    );
    let files = pki.host("server", &localhost_leaf("server"));
    let old_crl =
        OpensslCa::new(pki.dir.path(), "old", &pki.ca).publish(&pki.path("old.crl"), None);
    let new_crl =
        OpensslCa::new(pki.dir.path(), "new", &rekeyed).publish(&pki.path("new.crl"), None);
    // webpki takes the first CRL whose issuer name matches; before the
    // fix, one CA's leaves were refused in every order (with [new] or
    // [new, old] the old CA's, with [old, new] the re-keyed CA's).
    for crls in [
        vec![new_crl.as_path()],
        vec![old_crl.as_path(), new_crl.as_path()],
        vec![new_crl.as_path(), old_crl.as_path()],
    ] {
        let toml = with_crl(material_toml(&files, &bundle), &crls, None)
            + &inbound_toml("in", echo.addr, "");
        let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
        let addr = server.local_addr("in").unwrap();
        for ca in [&pki.ca, &rekeyed] {
            let leaf = ca.issue(&localhost_leaf("client")).unwrap();
            assert_admitted(addr, client_config(pki.ca.cert_der(), Some(&leaf))).await;
        }
        server.drain(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_in_flight_across_a_revoking_reload_does_not_keep_its_connection() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let openssl = OpensslCa::new(pki.dir.path(), "mesh", &pki.ca);
    let crl = openssl.publish(&pki.path("mesh.crl"), None);
    let toml = with_crl(material_toml(&files, &pki.ca_file()), &[&crl], None)
        + "[reload]\nwatch = false\ndrain_grace = \"300ms\"\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let leaf = pki.ca.issue(&localhost_leaf("client")).unwrap();
    let config = client_config(pki.ca.cert_der(), Some(&leaf));

    // A client that sends its ClientHello, reads the server's flight, and
    // holds back its certificate and Finished until told to go on.
    let (paused_tx, paused_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(SOON)).unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::ClientConnection::new(config, name).unwrap();
        while tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        }
        while !tls.wants_write() {
            tls.read_tls(&mut tcp).unwrap();
            tls.process_new_packets().unwrap();
        }
        paused_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
        stream.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        let echoed = stream.read_exact(&mut back).is_ok();
        std::thread::sleep(Duration::from_millis(1500));
        // After drain_grace, is the connection still usable?
        let still = stream.write_all(b"pong").is_ok() && stream.read_exact(&mut back).is_ok();
        (echoed, still)
    });
    tokio::task::spawn_blocking(move || paused_rx.recv().unwrap())
        .await
        .unwrap();

    openssl.revoke(&leaf);
    openssl.publish(&crl, None);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome}");
    go_tx.send(()).unwrap();
    let (echoed, still) = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    assert!(
        !still,
        "a client revoked before its certificate was judged is still connected after \
         drain_grace (first echo: {echoed})"
    );
}
