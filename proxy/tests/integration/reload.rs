//! Hot reload: rotations under load, odd ways of updating files, trust
//! changes, config-driven listener changes, `mtlsd reload`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mtlsd::reloading::{ReloadResult, Trigger};
use mtlsd_devca::{CertificateAuthority, IssuedCert};
use nix::sys::signal::Signal;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::support::process::{MtlsdProcess, run_to_end};
use crate::support::*;

/// Replaces `path` the way careful tools do: write a temp file in the same
/// directory, then rename over.
fn replace_atomically(path: &Path, contents: &str, mode: u32) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Installs a new leaf at `files`' paths (key first, then cert).
fn rotate(pki: &Pki, files: &HostFiles, cn: &str) -> IssuedCert {
    let next = pki.ca.issue(&localhost_leaf(cn)).unwrap();
    replace_atomically(&files.key, &next.key_pem, 0o600);
    replace_atomically(&files.cert, &next.cert_pem, 0o644);
    next
}

/// The serial of the certificate a fresh handshake to `addr` is served.
/// Full, never resumed: since the server keeps its session store across a
/// renewal of its own leaf, a resumed session still shows the certificate
/// it was made with (up to rustls' 24 h session lifetime).
async fn served_serial(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> String {
    let mut full = (**client).clone();
    full.resumption = rustls::client::Resumption::disabled();
    let stream = tls_connect(addr, Arc::new(full)).await.unwrap();
    let der = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    mtlsd_expiry::CertFacts::from_der(&der).unwrap().serial_hex
}

async fn wait_for_serial(addr: SocketAddr, client: &Arc<rustls::ClientConfig>, serial: &str) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        if served_serial(addr, client).await == serial {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serial {serial} never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clients hammering `entry` with request/response; every error counts.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: mpsc::UnboundedReceiver<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(entry: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (fail_tx, failures) = mpsc::unbounded_channel();
        let tasks = (0..clients)
            .map(|client| {
                let (stop, ok, fail_tx) = (stop.clone(), ok.clone(), fail_tx.clone());
                tokio::spawn(async move {
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // A fresh connection every 10 requests, so new
                        // handshakes happen all through the rotations.
                        let result = async {
                            let mut stream = TcpStream::connect(entry).await?;
                            for i in 0..10 {
                                let msg = format!("client {client} round {round} req {i}");
                                let back = round_trip(&mut stream, msg.as_bytes()).await?;
                                if back != msg.as_bytes() {
                                    return Err(std::io::Error::other("wrong echo"));
                                }
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok::<_, std::io::Error>(())
                        }
                        .await;
                        if let Err(e) = result {
                            let _ = fail_tx.send(format!("client {client} round {round}: {e}"));
                        }
                        round += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let mut failures = Vec::new();
        while let Ok(f) = self.failures.try_recv() {
            failures.push(f);
        }
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// A TLS server that requires a client certificate from `ca` and reports
/// each client's serial: shows which certificate an outbound presents.
async fn serial_probe(pki: &Pki) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let server = pki.ca.issue(&localhost_leaf("probe")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).unwrap();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), mtlsd_reload::provider())
            .build()
            .unwrap();
    let config = ServerConfig::builder_with_provider(mtlsd_reload::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                    let facts = mtlsd_expiry::CertFacts::from_der(&der).unwrap();
                    let _ = tx.send(facts.serial_hex);
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, rx)
}

fn args_for(config: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_rotations_under_load_fail_no_request() {
    const ROTATIONS: usize = 200;
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let (probe, mut probed) = serial_probe(&pki).await;

    // Server host: rotated by writing files (inotify).
    let server_files = pki.host("server", &localhost_leaf("server"));
    let server_toml = material_toml(&server_files, &ca)
        + "[reload]\nsettle = \"50ms\"\n"
        + &inbound_toml("in", echo.addr, "");
    let server_config = pki.write("server.toml", &server_toml, 0o600);
    let mut server = MtlsdProcess::spawn(
        &args_for(&server_config)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    let inbound = server.listener_addr("in").await;

    // Client host: rotated with SIGHUP only (no file watching). Its
    // material lives in its own directory so the server's watcher does
    // not see it.
    let client_dir = pki.path("client-host");
    std::fs::create_dir(&client_dir).unwrap();
    let client_files = pki.host("client-host/client", &localhost_leaf("client"));
    let client_toml = material_toml(&client_files, &ca)
        + "[reload]\nwatch = false\n"
        + &outbound_toml("out", inbound, "localhost", "")
        + &outbound_toml("probe", probe, "localhost", "");
    let client_config = pki.write("client-host/client.toml", &client_toml, 0o600);
    let mut client = MtlsdProcess::spawn(
        &args_for(&client_config)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    let entry = client.listener_addr("out").await;
    let probe_entry = client.listener_addr("probe").await;

    let direct = client_config_for(&pki);
    let load = Load::start(entry, 32);
    tokio::time::sleep(Duration::from_millis(200)).await;

    for i in 0..ROTATIONS {
        if i % 2 == 0 {
            let next = rotate(&pki, &server_files, &format!("server-{i}"));
            wait_for_serial(inbound, &direct, &next.serial_hex).await;
            // Every handshake after the swap presents the new serial.
            assert_eq!(served_serial(inbound, &direct).await, next.serial_hex);
        } else {
            let next = rotate(&pki, &client_files, &format!("client-{i}"));
            client.signal(Signal::SIGHUP);
            client
                .wait_for_log_where(
                    "TLS material reloaded",
                    |l| l["trigger"] == "sighup" && l["generation"] == (i / 2 + 2) as u64,
                    SOON,
                )
                .await;
            let mut plain = TcpStream::connect(probe_entry).await.unwrap();
            let mut ok = [0u8; 2];
            within("probe answer", SOON, plain.read_exact(&mut ok))
                .await
                .unwrap();
            let seen = within("probe serial", SOON, probed.recv()).await.unwrap();
            assert_eq!(
                seen, next.serial_hex,
                "rotation {i}: old client cert presented"
            );
        }
    }

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok > 1000,
        "only {ok} requests completed during the rotations"
    );
    server.signal(Signal::SIGTERM);
    client.signal(Signal::SIGTERM);
    assert_eq!(server.exited(SOON).await.code(), Some(0));
    assert_eq!(client.exited(SOON).await.code(), Some(0));
}

/// A client trusting the test CA and presenting a fresh leaf from it.
fn client_config_for(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let leaf = pki.ca.issue(&localhost_leaf("direct")).unwrap();
    client_config(pki.ca.cert_der(), Some(&leaf))
}

/// Handshakes continuously; any failure is recorded.
struct Prober {
    stop: Arc<AtomicBool>,
    handshakes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Prober {
    fn start(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicU64::new(0));
        let (s, h) = (stop.clone(), handshakes.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match tls_connect(addr, client.clone()).await {
                    Ok(mut stream) => match round_trip(&mut stream, b"probe").await {
                        Ok(_) => {
                            h.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("round trip: {e}")),
                    },
                    Err(e) => failures.push(format!("handshake: {e}")),
                }
            }
            failures
        });
        Self {
            stop,
            handshakes,
            task,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.handshakes.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_file_updates_end_with_a_correct_pair_and_never_a_mismatch() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &ca)
        + "[reload]\nsettle = \"100ms\"\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let client = client_config_for(&pki);
    let prober = Prober::start(addr, client.clone());
    let pause = || tokio::time::sleep(Duration::from_millis(400));

    // Certificate written first; the key follows after a pause longer than
    // the settle time, so a reload sees the mismatched pair.
    let next = pki.ca.issue(&localhost_leaf("cert-first")).unwrap();
    std::fs::write(&files.cert, &next.cert_pem).unwrap();
    pause().await;
    std::fs::write(&files.key, &next.key_pem).unwrap();
    wait_for_serial(addr, &client, &next.serial_hex).await;

    // A certificate written in two halves.
    let next = pki.ca.issue(&localhost_leaf("truncated")).unwrap();
    std::fs::write(&files.key, &next.key_pem).unwrap();
    std::fs::write(&files.cert, &next.cert_pem[..next.cert_pem.len() / 2]).unwrap();
    pause().await;
    std::fs::write(&files.cert, &next.cert_pem).unwrap();
    wait_for_serial(addr, &client, &next.serial_hex).await;

    // mv into place.
    let next = rotate(&pki, &files, "moved");
    wait_for_serial(addr, &client, &next.serial_hex).await;

    // Editor save: backup by rename, write a new file, remove the backup.
    let next = pki.ca.issue(&localhost_leaf("editor")).unwrap();
    replace_atomically(&files.key, &next.key_pem, 0o600);
    let backup = files.cert.with_extension("crt~");
    std::fs::rename(&files.cert, &backup).unwrap();
    std::fs::write(&files.cert, &next.cert_pem).unwrap();
    std::fs::remove_file(&backup).unwrap();
    wait_for_serial(addr, &client, &next.serial_hex).await;

    // Deleted, then recreated a moment later.
    let next = pki.ca.issue(&localhost_leaf("recreated")).unwrap();
    std::fs::remove_file(&files.cert).unwrap();
    std::fs::remove_file(&files.key).unwrap();
    pause().await;
    pki.write("server.key", &next.key_pem, 0o600);
    pki.write("server.crt", &next.cert_pem, 0o644);
    wait_for_serial(addr, &client, &next.serial_hex).await;

    // Key permissions flipped to group/world readable: refused, the last
    // good pair stays; flipped back with a new pair: applied.
    let kept = next.serial_hex.clone();
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Rejected);
    assert!(
        outcome
            .reason
            .as_deref()
            .unwrap()
            .contains("readable by group or others")
    );
    assert_eq!(served_serial(addr, &client).await, kept);
    let next = rotate(&pki, &files, "after-chmod");
    wait_for_serial(addr, &client, &next.serial_hex).await;

    let (handshakes, failures) = prober.finish().await;
    assert!(failures.is_empty(), "clients saw failures: {failures:?}");
    assert!(handshakes > 20, "only {handshakes} probe handshakes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_style_data_symlink_swap_is_picked_up() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    // dir/host.crt -> ..data/host.crt, ..data -> ..v1
    let dir = pki.path("secret");
    let version = |n: u32, leaf: &IssuedCert, ca: &CertificateAuthority| -> PathBuf {
        let v = dir.join(format!("..v{n}"));
        std::fs::create_dir_all(&v).unwrap();
        for (name, text, mode) in [
            ("host.crt", leaf.cert_pem.as_str(), 0o644),
            ("host.key", leaf.key_pem.as_str(), 0o600),
            ("ca.pem", ca.cert_pem(), 0o644),
        ] {
            std::fs::write(v.join(name), text).unwrap();
            std::fs::set_permissions(v.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        v
    };
    let first = pki.ca.issue(&localhost_leaf("v1")).unwrap();
    let v1 = version(1, &first, &pki.ca);
    std::os::unix::fs::symlink(v1.file_name().unwrap(), dir.join("..data")).unwrap();
    for name in ["host.crt", "host.key", "ca.pem"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    let toml = format!(
        "state_dir = {:?}\n[identity]\ncert = {:?}\nkey = {:?}\n[trust_domains.mesh]\nbundle = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n[reload]\nsettle = \"100ms\"\n{}",
        pki.path("state"),
        dir.join("host.crt"),
        dir.join("host.key"),
        dir.join("ca.pem"),
        inbound_toml("in", echo.addr, "")
    );
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let client = client_config_for(&pki);
    assert_eq!(served_serial(addr, &client).await, first.serial_hex);

    let second = pki.ca.issue(&localhost_leaf("v2")).unwrap();
    let v2 = version(2, &second, &pki.ca);
    std::os::unix::fs::symlink(v2.file_name().unwrap(), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    wait_for_serial(addr, &client, &second.serial_hex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_is_rejected_old_serial_stays_and_the_audit_log_says_why() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &ca)
        + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, config) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let client = client_config_for(&pki);

    // Same material: unchanged, generation stays 1.
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(
        (outcome.result, outcome.generation),
        (ReloadResult::Unchanged, 1)
    );

    let stranger = pki.ca.issue(&localhost_leaf("stranger")).unwrap();
    std::fs::write(&files.key, &stranger.key_pem).unwrap();
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Rejected);
    assert_eq!(outcome.generation, 1);
    assert_eq!(served_serial(addr, &client).await, files.issued.serial_hex);

    let audit = std::fs::read_to_string(&config.reload.audit_log).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "startup, unchanged, rejected:\n{audit}");
    assert_eq!(lines[0]["trigger"], "startup");
    assert_eq!(lines[0]["result"], "applied");
    assert_eq!(lines[1]["result"], "unchanged");
    let last = &lines[2];
    assert_eq!(last["trigger"], "admin");
    assert_eq!(last["result"], "rejected");
    assert_eq!(last["generation"], 1);
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
    assert!(
        last["reason"].as_str().unwrap().contains("does not match"),
        "{last}"
    );
    assert!(
        last["reason"].as_str().unwrap().contains("server.key"),
        "{last}"
    );

    // A good rotation then records old -> new fingerprints.
    let next = rotate(&pki, &files, "good");
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(
        (outcome.result, outcome.generation),
        (ReloadResult::Applied, 2)
    );
    let audit = std::fs::read_to_string(&config.reload.audit_log).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    let identity = &last["items"][0];
    assert_eq!(identity["item"], "identity");
    assert_eq!(
        identity["new"],
        mtlsd_expiry::Fingerprint::of(&next.cert_der).to_hex()
    );
    assert_ne!(identity["old"], identity["new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_ca_can_neither_resume_nor_reconnect_and_its_connections_close() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let old_ca = CertificateAuthority::new("old mesh CA").unwrap();
    // The bundle trusts both CAs (a rotation in progress).
    let bundle = pki.write(
        "bundle.pem",
        &format!("{}{}", pki.ca.cert_pem(), old_ca.cert_pem()),
        0o644,
    );
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &bundle)
        + "[reload]\nwatch = false\ndrain_grace = \"500ms\"\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();

    let old_leaf = old_ca.issue(&localhost_leaf("old-client")).unwrap();
    let old_client = client_config(pki.ca.cert_der(), Some(&old_leaf));
    let mut established = tls_connect(addr, old_client.clone()).await.unwrap();
    assert_eq!(round_trip(&mut established, b"hi").await.unwrap(), b"hi");
    // Resumption works while the CA is trusted.
    let mut resumed = tls_connect(addr, old_client.clone()).await.unwrap();
    assert_eq!(round_trip(&mut resumed, b"again").await.unwrap(), b"again");
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    drop(resumed);

    // The old CA leaves the bundle.
    replace_atomically(&bundle, pki.ca.cert_pem(), 0o644);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied);
    // The established connection at least; the resumed one, just dropped,
    // may not have unregistered yet.
    assert!(
        outcome.closing >= 1,
        "the established old-CA connection is doomed"
    );

    // Neither a resumption attempt nor a full handshake gets through.
    let mut attempt = tls_connect(addr, old_client.clone()).await;
    if let Ok(stream) = &mut attempt {
        assert_ne!(
            stream.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        assert_no_echo(stream).await;
    }
    // The established one still works inside the grace period...
    assert_eq!(
        round_trip(&mut established, b"grace").await.unwrap(),
        b"grace"
    );
    // ...and is closed after it.
    let mut buf = [0u8; 1];
    let n = within("close after grace", SOON, established.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)));

    // Clients of the remaining CA are unaffected.
    let mut fine = tls_connect(addr, client_config_for(&pki)).await.unwrap();
    assert_eq!(round_trip(&mut fine, b"fine").await.unwrap(), b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_moves_and_removes_listeners_and_refuses_what_cannot_change() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let base = material_toml(&files, &ca) + "[reload]\nwatch = false\n";
    let (server, _) = start_daemon(
        &pki,
        "server.toml",
        &(base.clone() + &inbound_toml("a", echo.addr, "")),
    )
    .await;
    let a = server.local_addr("a").unwrap();
    let client = client_config_for(&pki);

    // Add listener b; change a's idle timeout; try to move the admin port.
    let mut keep_a = tls_connect(a, client.clone()).await.unwrap();
    assert_eq!(round_trip(&mut keep_a, b"a").await.unwrap(), b"a");
    let text = base.replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:1\"",
    ) + &inbound_toml("a", echo.addr, "idle_timeout = \"1h\"")
        + &inbound_toml("b", echo.addr, "");
    pki.write("server.toml", &text, 0o600);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    // The rest applies; the admin port waits for a restart, and says so.
    assert_eq!(outcome.result, ReloadResult::RestartRequired, "{outcome}");
    assert_eq!(outcome.refused.len(), 1, "{outcome}");
    assert!(outcome.refused[0].starts_with("admin.listen"), "{outcome}");
    let b = server.local_addr("b").unwrap();
    let mut via_b = tls_connect(b, client.clone()).await.unwrap();
    assert_eq!(round_trip(&mut via_b, b"b").await.unwrap(), b"b");
    assert_eq!(server.local_addr("a"), Some(a), "a kept its socket");

    // Remove a: its port closes, its open connection may finish its work
    // (within reload.drain_grace).
    pki.write(
        "server.toml",
        &(base.clone() + &inbound_toml("b", echo.addr, "")),
        0o600,
    );
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome}");
    eventually("a closed", || std::net::TcpStream::connect(a).is_err()).await;
    assert_eq!(round_trip(&mut keep_a, b"still").await.unwrap(), b"still");

    // A config that does not parse is rejected whole.
    pki.write("server.toml", "[identity\n", 0o600);
    let outcome = server.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Rejected);
    assert!(outcome.reason.unwrap().contains("server.toml"));
    let mut still_b = tls_connect(b, client).await.unwrap();
    assert_eq!(round_trip(&mut still_b, b"b2").await.unwrap(), b"b2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtlsd_reload_exit_codes() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &ca)
        + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    let config = pki.write("server.toml", &toml, 0o600);
    let notify_path = pki.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(SOON)).unwrap();
    let args = args_for(&config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = MtlsdProcess::spawn(&args, &[("NOTIFY_SOCKET", &notify_path)]);
    let mut note = [0u8; 512];
    let n = notify.recv(&mut note).unwrap();
    assert!(String::from_utf8_lossy(&note[..n]).contains("READY=1"));
    let admin = daemon.wait_for_log("admin endpoint listening", SOON).await["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let reload = |admin: String| {
        tokio::task::spawn_blocking(move || {
            run_to_end(&["reload", "--admin", &admin], Duration::from_secs(30))
        })
    };

    let (status, stdout, _) = reload(admin.clone()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        stdout.contains("reload unchanged: generation 1"),
        "{stdout}"
    );
    // systemd hears about the reload: RELOADING=1 with a timestamp, then READY=1.
    let n = notify.recv(&mut note).unwrap();
    let reloading = String::from_utf8_lossy(&note[..n]).into_owned();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let n = notify.recv(&mut note).unwrap();
    assert!(String::from_utf8_lossy(&note[..n]).contains("READY=1"));

    rotate(&pki, &files, "next");
    let (status, stdout, _) = reload(admin.clone()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("reload applied: generation 2"), "{stdout}");

    std::fs::write(
        &files.key,
        pki.ca.issue(&localhost_leaf("x")).unwrap().key_pem,
    )
    .unwrap();
    let (status, _, stderr) = reload(admin.clone()).await.unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("rejected, still serving generation 2"),
        "{stderr}"
    );
    assert!(stderr.contains("does not match"), "{stderr}");

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.exited(SOON).await.code(), Some(0));
    let (status, _, stderr) = reload(admin).await.unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(stderr.contains("no mtlsd answered"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_events_without_changes_are_counted_but_not_audited() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &ca)
        + "[reload]\nsettle = \"50ms\"\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, config) = start_daemon(&pki, "server.toml", &toml).await;
    let admin = server.admin_addr();
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".to_owned()));

    // Rewrite the certificate with the very same bytes.
    std::fs::write(&files.cert, &files.issued.cert_pem).unwrap();
    // One write may arrive as more than one settled event under load; any
    // number of unchanged attempts is fine, none may swap or be audited.
    let unchanged = [("result", "unchanged"), ("trigger", "inotify")];
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let (status, metrics) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        if metric(&metrics, "mtlsd_reload_attempts_total", &unchanged).is_some_and(|n| n >= 1.0) {
            assert!(metrics.contains("mtlsd_material_generation 1"), "{metrics}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no unchanged attempt in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = std::fs::read_to_string(&config.reload.audit_log).unwrap();
    assert_eq!(audit.lines().count(), 1, "only the startup line:\n{audit}");
    assert_eq!(server.store().current().number(), 1);
    assert_eq!(http_get(admin, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_check_picks_up_changes_without_watching() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &ca)
        + "[reload]\nwatch = false\ninterval = \"200ms\"\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, config) = start_daemon(&pki, "server.toml", &toml).await;
    let addr = server.local_addr("in").unwrap();
    let client = client_config_for(&pki);
    let next = rotate(&pki, &files, "timer");
    wait_for_serial(addr, &client, &next.serial_hex).await;
    let audit = std::fs::read_to_string(&config.reload.audit_log).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["trigger"], "timer");
    assert_eq!(last["result"], "applied");
}

/// A SIGHUP or `mtlsd reload` that arrives while a file change is still
/// settling is served at once, not after the settle time (issue 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_reload_during_a_settle_wait_is_served_at_once() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let files = pki.host("server", &localhost_leaf("server"));
    let toml = material_toml(&files, &pki.ca_file())
        + "[reload]\nwatch = true\nsettle = \"5s\"\n"
        + &inbound_toml("in", echo.addr, "");
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    // A file event starts a 5 s settle wait...
    let next = rotate(&pki, &files, "rotated");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and an explicit reload does not wait it out.
    let started = tokio::time::Instant::now();
    let outcome = within(
        "an admin reload during a settle wait",
        Duration::from_secs(3),
        server.reload(Trigger::Admin),
    )
    .await
    .unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let addr = server.local_addr("in").unwrap();
    assert_eq!(
        served_serial(addr, &client_config_for(&pki)).await,
        next.serial_hex
    );
}
