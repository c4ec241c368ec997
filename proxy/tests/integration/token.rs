//! Keys in a PKCS#11 token: a real SoftHSM2 token, initialised by each
//! test in its own directory (`softhsm2-util`, apt `softhsm2`), holding a
//! key minted by the dev CA and imported, never a key file.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, at `C_Initialize`, so
//! every daemon here is the real `mtlsd` binary in its own process with
//! its own token directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mtlsd_devca::IssuedCert;
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::process::MtlsdProcess;
use crate::support::{
    Echo, Pki, SOON, client_config, http_get, inbound_toml, localhost_leaf, metric, outbound_toml,
    round_trip, tls_connect,
};

const PIN: &str = "1234";
const SO_PIN: &str = "5678";

/// The SoftHSM2 module as Debian installs it.
fn module() -> PathBuf {
    let candidates = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("libsofthsm2.so: install the Debian package softhsm2 (scripts/test-all does)")
}

/// One host's SoftHSM2 token store: its config file, token directory and
/// PIN file.
struct Token {
    dir: PathBuf,
    conf: PathBuf,
    tokens: PathBuf,
    pin_file: PathBuf,
}

impl Token {
    /// Initialises token `mesh` in a fresh store under `pki`/`name`.
    fn init(pki: &Pki, name: &str) -> Self {
        let dir = pki.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin_file = pki.write(&format!("{name}/pin"), &format!("{PIN}\n"), 0o600);
        let token = Self {
            dir,
            conf,
            tokens,
            pin_file,
        };
        token.run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                "mesh",
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ],
        );
        token
    }

    /// Runs a SoftHSM tool against this store; panics with its output on
    /// failure.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e} (apt softhsm2 / opensc)"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?}: {text}");
        text
    }

    /// Imports `key_pem` (PKCS#8) as private key `label` with CKA_ID `id`.
    fn import(&self, key_pem: &str, label: &str, id: &str) {
        let path = self.dir.join(format!("{label}.p8"));
        std::fs::write(&path, key_pem).unwrap();
        let path = path.display().to_string();
        self.run(
            "softhsm2-util",
            &[
                "--import", &path, "--token", "mesh", "--label", label, "--id", id, "--pin", PIN,
            ],
        );
        // The key now lives only in the token.
        std::fs::remove_file(&path).unwrap();
    }

    fn env(&self) -> [(&'static str, &Path); 1] {
        [("SOFTHSM2_CONF", self.conf.as_path())]
    }

    /// `[identity]` with the key in this token, `[pkcs11]`, the trust
    /// domain, the admin endpoint and a state dir, as `material_toml`
    /// writes them for key files.
    fn toml(&self, cert: &Path, ca: &Path, uri: &str, extra_pkcs11: &str) -> String {
        format!(
            "state_dir = {:?}\n\n[identity]\ncert = {cert:?}\nkey = {uri:?}\n\n\
             [pkcs11]\nmodule = {:?}\npin_file = {:?}\n{extra_pkcs11}\n\n\
             [trust_domains.mesh]\nbundle = {ca:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [shutdown]\ndrain_timeout = \"2s\"\n\n",
            self.dir.join("state"),
            module(),
            self.pin_file,
        )
    }
}

/// A host whose key was minted by the dev CA, imported into its own token
/// as `host` (id 01), and whose certificate file is `<name>/host.crt`.
struct TokenHost {
    token: Token,
    issued: IssuedCert,
    cert: PathBuf,
}

fn token_host(pki: &Pki, name: &str) -> TokenHost {
    let token = Token::init(pki, name);
    let issued = pki.ca.issue(&localhost_leaf(name)).unwrap();
    token.import(&issued.key_pem, "host", "01");
    let cert = pki.write(&format!("{name}/host.crt"), &issued.cert_pem, 0o644);
    TokenHost {
        token,
        issued,
        cert,
    }
}

const HOST_URI: &str = "pkcs11:token=mesh;object=host;id=%01;type=private";

fn spawn(config: &Path, token: &Token) -> MtlsdProcess {
    let config = config.display().to_string();
    MtlsdProcess::spawn(&["run", "--config", &config], &token.env())
}

fn check(config: &Path, token: &Token) -> (bool, String) {
    let config = config.display().to_string();
    let mut process = MtlsdProcess::spawn(&["check", "--config", &config], &token.env());
    let status = process.wait_exit(Duration::from_secs(30));
    process.drain();
    let text = format!(
        "{}\n{}\n(exit: {status})",
        process.stdout_seen.join("\n"),
        process.stderr_seen.join("\n")
    );
    (status.success(), text)
}

/// A client presenting `cert` that never resumes a session: every
/// handshake makes the server sign through its token.
fn full_handshake_client(pki: &Pki, cert: &IssuedCert) -> Arc<rustls::ClientConfig> {
    let mut config = (*client_config(pki.ca.cert_der(), Some(cert))).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The handshake-failure counter of `listener` for `reason`.
async fn failures(admin: SocketAddr, listener: &str, reason: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    metric(
        &body,
        "mtlsd_handshake_failures_total",
        &[("listener", listener), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_key_does_mtls_both_ways() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;

    // Server host: its inbound listener signs with the token key and
    // requires a client certificate.
    let server = token_host(&pki, "server");
    let toml =
        server.token.toml(&server.cert, &ca, HOST_URI, "") + &inbound_toml("in", echo.addr, "");
    let config = pki.write("server/mtlsd.toml", &toml, 0o600);
    let mut server_daemon = spawn(&config, &server.token);
    let inbound = server_daemon.listener_addr("in").await;

    // A direct client sees the token-signed handshake and the leaf of the
    // imported key.
    let direct = pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let mut stream = tls_connect(inbound, client_config(pki.ca.cert_der(), Some(&direct)))
        .await
        .unwrap();
    assert_eq!(
        round_trip(&mut stream, b"server side").await.unwrap(),
        b"server side"
    );
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(served, server.issued.cert_der);
    for _ in 0..3 {
        let mut stream = tls_connect(inbound, full_handshake_client(&pki, &direct))
            .await
            .unwrap();
        assert_eq!(round_trip(&mut stream, b"again").await.unwrap(), b"again");
    }

    // Client host: its outbound listener presents the token key as the
    // client certificate to the server, which requires one.
    let client = token_host(&pki, "client");
    let toml = client.token.toml(&client.cert, &ca, HOST_URI, "")
        + &outbound_toml("out", inbound, "localhost", "");
    let config = pki.write("client/mtlsd.toml", &toml, 0o600);
    let mut client_daemon = spawn(&config, &client.token);
    let entry = client_daemon.listener_addr("out").await;
    five_round_trips(entry).await;
    // The server admitted the client daemon's five handshakes (and the
    // direct one), none failing on its own key.
    let admin = server_daemon.admin_addr().await;
    let (_, body) = http_get(admin, "/metrics").await;
    let completed = metric(
        &body,
        "mtlsd_handshakes_completed_total",
        &[("listener", "in")],
    );
    assert_eq!(completed, Some(9.0), "{body}");
    assert_eq!(failures(admin, "in", "local_key").await, 0.0);
    // One session by default, and /status says so.
    let token = &status_json(admin).await["identity_token"];
    assert_eq!(
        (token["sessions"].as_u64(), token["sessions_open"].as_u64()),
        (Some(1), Some(1)),
        "{token}"
    );

    for daemon in [&mut server_daemon, &mut client_daemon] {
        daemon.signal(Signal::SIGTERM);
        assert_eq!(daemon.exited(SOON).await.code(), Some(0));
    }
}

#[test]
fn check_names_the_token_object_and_reason() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let host = token_host(&pki, "host");
    let good = host.token.toml(&host.cert, &ca, HOST_URI, "");
    let config = pki.write("host/mtlsd.toml", &good, 0o600);
    let (ok, text) = check(&config, &host.token);
    assert!(ok, "{text}");

    // A certificate for another key: the challenge signed by the token
    // does not verify under it.
    let other = pki.ca.issue(&localhost_leaf("host")).unwrap();
    let other_cert = pki.write("host/other.crt", &other.cert_pem, 0o644);
    let config = pki.write(
        "host/mismatch.toml",
        &host.token.toml(&other_cert, &ca, HOST_URI, ""),
        0o600,
    );
    let (ok, text) = check(&config, &host.token);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "token 'mesh' object 'host' id 01: the private key does not match the certificate in"
        ) && text.contains("other.crt"),
        "{text}"
    );

    // Wrong PIN: named with the token and where the PIN came from.
    let wrong_pin = pki.write("host/wrong-pin", "9999\n", 0o600);
    let config = pki.write(
        "host/wrong-pin.toml",
        &good.replace(
            &format!("pin_file = {:?}", host.token.pin_file),
            &format!("pin_file = {wrong_pin:?}"),
        ),
        0o600,
    );
    let (ok, text) = check(&config, &host.token);
    assert!(!ok, "{text}");
    assert!(
        text.contains("token 'mesh': the PIN from pkcs11.pin_file")
            && text.contains("wrong-pin is incorrect (CKR_PIN_INCORRECT)"),
        "{text}"
    );

    // An object that is not there, and a token that is not there.
    for (uri, expected) in [
        (
            "pkcs11:token=mesh;object=nothost",
            "token 'mesh' object 'nothost': no private key object with that label",
        ),
        (
            "pkcs11:token=mesh;object=host;id=%02",
            "token 'mesh' object 'host' id 02: no private key object with that label and id",
        ),
        (
            "pkcs11:token=elsewhere;object=host",
            "token 'elsewhere' is not present in module",
        ),
    ] {
        let config = pki.write(
            "host/absent.toml",
            &host.token.toml(&host.cert, &ca, uri, ""),
            0o600,
        );
        let (ok, text) = check(&config, &host.token);
        assert!(!ok, "{uri}: {text}");
        assert!(text.contains(expected), "{uri}: {text}");
        if uri.contains("elsewhere") {
            assert!(text.contains("(tokens present: 'mesh')"), "{text}");
        }
    }
}

/// Handshakes and round trips continuously; counts and records failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(addr: SocketAddr, client: Arc<rustls::ClientConfig>, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (stop, ok, client) = (stop.clone(), ok.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match tls_connect(addr, client.clone()).await {
                        Ok(mut stream) => match round_trip(&mut stream, b"load").await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.push(format!("round trip: {e}")),
                        },
                        Err(e) => failures.push(format!("handshake: {e}")),
                    }
                }
                failures
            }));
        }
        let task = tokio::spawn(async move {
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        });
        Self { stop, ok, task }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// The certificate `addr` serves now, seen by a client with no session
/// to resume (a resumed session shows the certificate it was made with).
async fn served_leaf(addr: SocketAddr, pki: &Pki, client_cert: &IssuedCert) -> Vec<u8> {
    let client = client_config(pki.ca.cert_der(), Some(client_cert));
    let stream = tls_connect(addr, client).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn wait_until_served(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: &IssuedCert,
    cert: &IssuedCert,
) {
    let deadline = Instant::now() + SOON;
    while served_leaf(addr, pki, client_cert).await != cert.cert_der.to_vec() {
        assert!(Instant::now() < deadline, "new certificate not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_to_a_new_certificate_and_a_new_token_object_fail_no_call() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let host = token_host(&pki, "host");
    let toml = host.token.toml(&host.cert, &ca, HOST_URI, "")
        + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    let config = pki.write("host/mtlsd.toml", &toml, 0o600);
    let mut daemon = spawn(&config, &host.token);
    let inbound = daemon.listener_addr("in").await;
    let direct = pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let load = Load::start(inbound, full_handshake_client(&pki, &direct), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. A renewed certificate for the same token key.
    let renewed = pki
        .ca
        .issue_for_key(&localhost_leaf("host renewed"), &host.issued.key_pem)
        .unwrap();
    pki.write("host/host.crt", &renewed.cert_pem, 0o644);
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_for_log_where("TLS material reloaded", |l| l["generation"] == 2, SOON)
        .await;
    wait_until_served(inbound, &pki, &direct, &renewed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2. A new key object in the token, its certificate, and the URI
    // naming it: one reload applies all three.
    let next = pki.ca.issue(&localhost_leaf("host next")).unwrap();
    host.token.import(&next.key_pem, "host-2", "02");
    let next_cert = pki.write("host/host-2.crt", &next.cert_pem, 0o644);
    let toml = host.token.toml(
        &next_cert,
        &ca,
        "pkcs11:token=mesh;object=host-2;id=%02",
        "",
    ) + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    pki.write("host/mtlsd.toml", &toml, 0o600);
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_for_log_where("TLS material reloaded", |l| l["generation"] == 3, SOON)
        .await;
    wait_until_served(inbound, &pki, &direct, &next).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed calls, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20, "only {ok} calls completed across the reloads");
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.exited(SOON).await.code(), Some(0));
}

/// A daemon started with a key file runs on the single-threaded runtime;
/// a reload that moves its key into a token applies (handshakes are signed
/// by the token) and says that each signature now holds the other
/// connections until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_a_key_file_into_a_token_applies_and_asks_for_a_restart() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let host = token_host(&pki, "host");
    let key_file = pki.write("host/host.key", &host.issued.key_pem, 0o600);
    let with_token = host.token.toml(&host.cert, &ca, HOST_URI, "")
        + "[reload]\nwatch = false\n"
        + &inbound_toml("in", echo.addr, "");
    // The same host with its key in a file, and no [pkcs11] (which a key
    // file refuses).
    let pkcs11 = with_token.find("[pkcs11]").unwrap();
    let trust = with_token.find("[trust_domains").unwrap();
    let with_file = format!("{}{}", &with_token[..pkcs11], &with_token[trust..]).replace(
        &format!("key = {HOST_URI:?}"),
        &format!("key = {key_file:?}"),
    );
    let config = pki.write("host/mtlsd.toml", &with_file, 0o600);
    let mut daemon = spawn(&config, &host.token);
    let inbound = daemon.listener_addr("in").await;
    let direct = pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let client = full_handshake_client(&pki, &direct);
    let mut stream = tls_connect(inbound, client.clone()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"file").await.unwrap(), b"file");

    pki.write("host/mtlsd.toml", &with_token, 0o600);
    daemon.signal(Signal::SIGHUP);
    // Said while the new generation is applied, before it is logged.
    let line = daemon
        .find_log_where(
            "this host's key is now in a token, but mtlsd started with a key file on its \
             single-threaded runtime: each handshake's token signature holds every other \
             connection until it is done; restart mtlsd to sign beside them",
            |_| true,
            SOON,
        )
        .await;
    daemon
        .wait_for_log_where("TLS material reloaded", |l| l["generation"] == 2, SOON)
        .await;
    assert_eq!(line["level"], "WARN", "{line}");
    let mut stream = tls_connect(inbound, client).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"token").await.unwrap(), b"token");
    let admin = daemon.admin_addr().await;
    assert_eq!(
        status_json(admin).await["identity_token"]["sessions_open"],
        1
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.exited(SOON).await.code(), Some(0));
}

/// An inbound daemon (its own process) whose key is in a SoftHSM token
/// with `pkcs11.timeout = "1s"`, in front of an echo, and a client that
/// has made one full handshake and round trip through it.
struct TokenInbound {
    _pki: Pki,
    _echo: Echo,
    host: TokenHost,
    daemon: MtlsdProcess,
    inbound: SocketAddr,
    admin: SocketAddr,
    client: Arc<rustls::ClientConfig>,
}

impl TokenInbound {
    async fn start() -> Self {
        let pki = Pki::new();
        let ca = pki.ca_file();
        let echo = Echo::start().await;
        let host = token_host(&pki, "host");
        let toml = host
            .token
            .toml(&host.cert, &ca, HOST_URI, "timeout = \"1s\"")
            + "[reload]\nwatch = false\n"
            + &inbound_toml("in", echo.addr, "");
        let config = pki.write("host/mtlsd.toml", &toml, 0o600);
        let mut daemon = spawn(&config, &host.token);
        let inbound = daemon.listener_addr("in").await;
        let admin = daemon.admin_addr().await;
        let direct = pki.ca.issue(&localhost_leaf("direct")).unwrap();
        let client = full_handshake_client(&pki, &direct);
        let mut stream = tls_connect(inbound, client.clone()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"up").await.unwrap(), b"up");
        Self {
            _pki: pki,
            _echo: echo,
            host,
            daemon,
            inbound,
            admin,
            client,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_token_refuses_handshakes_and_says_it_is_absent() {
    let TokenInbound {
        _pki,
        _echo,
        host,
        mut daemon,
        inbound,
        admin,
        client,
    } = TokenInbound::start().await;

    // The token goes away under the running daemon.
    std::fs::remove_dir_all(&host.token.tokens).unwrap();
    std::fs::create_dir(&host.token.tokens).unwrap();

    for _ in 0..3 {
        let started = Instant::now();
        let attempt = tokio::time::timeout(SOON, async {
            match tls_connect(inbound, client.clone()).await {
                Ok(mut stream) => {
                    let mut buf = [0u8; 1];
                    stream.read(&mut buf).await.map(|_| ())
                }
                Err(e) => Err(e),
            }
        })
        .await;
        if attempt.is_err() {
            daemon.signal(Signal::SIGKILL);
            daemon.drain();
            panic!(
                "a handshake hung with the token gone; daemon log:\n{}",
                daemon.stderr_seen.join("\n")
            );
        }
        let attempt = attempt.unwrap_or(Ok(()));
        daemon.drain();
        assert!(
            attempt.is_err(),
            "a handshake succeeded without the token; daemon log:\n{}",
            daemon.stderr_seen.join("\n")
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "refusal took {:?}",
            started.elapsed()
        );
    }
    // Counted as our own key failing, and logged naming the token.
    let refused = failures(admin, "in", "local_key").await;
    assert!(refused >= 3.0, "local_key failures: {refused}");
    let line = daemon
        .find_log_where(
            "token signature failed; the handshake fails",
            |_| true,
            SOON,
        )
        .await;
    assert_eq!(
        line["error"],
        format!(
            "token 'mesh' is not present in module {} (tokens present: none)",
            module().display()
        ),
        "{line}"
    );
    // The daemon itself is fine: its admin endpoint answers, and it stops
    // cleanly.
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.exited(SOON).await.code(), Some(0));
}

/// Holds POSIX record locks on every file of a SoftHSM token store, as
/// SoftHSM itself takes them: a SoftHSM call in another process that
/// needs one of these files blocks until they are released. A stand-in
/// for a token that stops answering (a hung HSM, a slow network HSM).
struct StoreLocks {
    /// Closing them releases the locks.
    _files: Vec<std::fs::File>,
}

impl StoreLocks {
    fn take(tokens: &Path) -> Self {
        let mut files = Vec::new();
        for dir in std::fs::read_dir(tokens).unwrap() {
            for entry in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(entry.unwrap().path())
                    .unwrap();
                let lock = nix::libc::flock {
                    l_type: nix::libc::F_WRLCK as i16,
                    l_whence: nix::libc::SEEK_SET as i16,
                    l_start: 0,
                    l_len: 0,
                    l_pid: 0,
                };
                nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETLK(&lock)).unwrap();
                files.push(file);
            }
        }
        assert!(
            !files.is_empty(),
            "no token files under {}",
            tokens.display()
        );
        Self { _files: files }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_stops_answering_fails_handshakes_at_the_bound_and_recovers() {
    let TokenInbound {
        _pki,
        _echo,
        host,
        mut daemon,
        inbound,
        admin,
        client,
    } = TokenInbound::start().await;

    let locks = StoreLocks::take(&host.token.tokens);
    let started = Instant::now();
    let handshake = {
        let client = client.clone();
        tokio::spawn(async move {
            let attempt = tokio::time::timeout(SOON, tls_connect(inbound, client)).await;
            (attempt, started.elapsed())
        })
    };
    // While that handshake waits for the token, the daemon serves
    // everything else: its admin endpoint answers at once. (On a runtime
    // whose only thread waited for the token, it would answer only after
    // the 1s bound.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "the admin endpoint answered after {:?}, behind the token",
        asked.elapsed()
    );
    assert!(
        !handshake.is_finished(),
        "the handshake ended before the token's bound"
    );
    let (attempt, took) = handshake.await.unwrap();
    let Ok(attempt) = attempt else {
        panic!("the handshake hung behind the unanswering token");
    };
    assert!(
        attempt.is_err(),
        "a handshake succeeded while the token hung"
    );
    // Refused at the 1s bound, not before it and not long after.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "refused after {took:?}"
    );
    let line = daemon
        .find_log_where(
            "token signature failed; the handshake fails",
            |_| true,
            SOON,
        )
        .await;
    assert_eq!(
        line["error"], "token 'mesh' object 'host' id 01: no answer from the token within 1s",
        "{line}"
    );
    // Counted when the handshake's task ends, which may be just after the
    // log line.
    let deadline = Instant::now() + SOON;
    while failures(admin, "in", "local_key").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the refusal was not counted local_key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The token answers again: so does the daemon.
    drop(locks);
    let deadline = Instant::now() + SOON;
    loop {
        if let Ok(mut stream) = tls_connect(inbound, client.clone()).await {
            assert_eq!(round_trip(&mut stream, b"back").await.unwrap(), b"back");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the token answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.exited(SOON).await.code(), Some(0));
}

/// A private key made by `openssl genpkey ARGS`, as PKCS#8 PEM.
fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> String {
    let path = dir.join(format!("{name}.pem"));
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .output()
        .expect("openssl (apt openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p384_rsa_pss_and_ed25519_token_keys_sign_handshakes() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let direct = pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let kinds: [(&str, &[&str]); 3] = [
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        ("ed25519", &["-algorithm", "ED25519"]),
    ];
    for (name, args) in kinds {
        let token = Token::init(&pki, name);
        let key_pem = openssl_key(&token.dir, name, args);
        let issued = pki
            .ca
            .issue_for_key(&localhost_leaf(name), &key_pem)
            .unwrap();
        token.import(&key_pem, "host", "01");
        let cert = pki.write(&format!("{name}/host.crt"), &issued.cert_pem, 0o644);
        let toml = token.toml(&cert, &ca, HOST_URI, "")
            + "[reload]\nwatch = false\n"
            + &inbound_toml("in", echo.addr, "");
        let config = pki.write(&format!("{name}/mtlsd.toml"), &toml, 0o600);
        let (ok, text) = check(&config, &token);
        assert!(ok, "{name}: {text}");
        let mut daemon = spawn(&config, &token);
        let inbound = daemon.listener_addr("in").await;
        for _ in 0..2 {
            let mut stream = tls_connect(inbound, full_handshake_client(&pki, &direct))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                round_trip(&mut stream, name.as_bytes()).await.unwrap(),
                name.as_bytes()
            );
            let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
            assert_eq!(served, issued.cert_der, "{name}");
        }
        daemon.signal(Signal::SIGTERM);
        assert_eq!(daemon.exited(SOON).await.code(), Some(0), "{name}");
    }
}

/// `/status` of a daemon, as JSON.
async fn status_json(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_token_sessions_sign_concurrent_handshakes_both_ways() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let echo = Echo::start().await;
    let sessions = "sessions = 2\n";

    let server = token_host(&pki, "server");
    let toml = server.token.toml(&server.cert, &ca, HOST_URI, sessions)
        + &inbound_toml("in", echo.addr, "");
    let config = pki.write("server/mtlsd.toml", &toml, 0o600);
    // `check` opens both sessions and says so.
    let (ok, text) = check(&config, &server.token);
    assert!(ok, "{text}");
    assert!(
        text.contains("key        token 'mesh' object 'host' id 01 in ")
            && text.contains(", 2 session(s) logged in"),
        "{text}"
    );
    let mut server_daemon = spawn(&config, &server.token);
    let inbound = server_daemon.listener_addr("in").await;
    let admin = server_daemon.admin_addr().await;
    let token = &status_json(admin).await["identity_token"];
    assert_eq!(token["key"], "token 'mesh' object 'host' id 01", "{token}");
    assert_eq!(token["sessions"], 2, "{token}");
    assert_eq!(token["sessions_open"], 2, "{token}");
    let admin_arg = admin.to_string();
    let (status, stdout, stderr) = crate::support::process::run_to_end(
        &["status", "--admin", &admin_arg],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("key in token 'mesh' object 'host' id 01")
            && stdout.contains("2 of 2 session(s) open"),
        "{stdout}"
    );

    // Eight clients at once, full handshakes each: every one is signed by
    // one of the two sessions taking jobs from the same queue.
    let direct = pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let mut clients = Vec::new();
    for i in 0..8 {
        let client = full_handshake_client(&pki, &direct);
        clients.push(tokio::spawn(async move {
            for j in 0..4 {
                let mut stream = tls_connect(inbound, client.clone()).await?;
                let msg = format!("client {i} call {j}");
                let back = round_trip(&mut stream, msg.as_bytes()).await?;
                assert_eq!(back, msg.as_bytes());
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    for client in clients {
        client.await.unwrap().unwrap();
    }

    // The other way: a client host with two sessions presents its token
    // key to the server, which requires a client certificate.
    let client = token_host(&pki, "client");
    let toml = client.token.toml(&client.cert, &ca, HOST_URI, sessions)
        + &outbound_toml("out", inbound, "localhost", "");
    let config = pki.write("client/mtlsd.toml", &toml, 0o600);
    let mut client_daemon = spawn(&config, &client.token);
    let entry = client_daemon.listener_addr("out").await;
    five_round_trips(entry).await;
    let client_admin = client_daemon.admin_addr().await;
    assert_eq!(
        status_json(client_admin).await["identity_token"]["sessions_open"],
        2
    );

    let (_, body) = http_get(admin, "/metrics").await;
    let completed = metric(
        &body,
        "mtlsd_handshakes_completed_total",
        &[("listener", "in")],
    );
    assert_eq!(completed, Some(37.0), "{body}");
    assert_eq!(failures(admin, "in", "local_key").await, 0.0);
    for daemon in [&mut server_daemon, &mut client_daemon] {
        daemon.signal(Signal::SIGTERM);
        assert_eq!(daemon.exited(SOON).await.code(), Some(0));
    }
}

/// The operator guide's CSR command (token-keys.md §2), run as written
/// against a real token: the request it makes is signed by the token key,
/// and the certificate a CA issues from it passes `mtlsd check` with that
/// key.
#[test]
fn the_guides_csr_command_makes_a_request_signed_by_the_token_key() {
    let guide = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operator_guide/token-keys.md");
    let guide = std::fs::read_to_string(&guide).unwrap();
    let command = guide
        .lines()
        .find_map(|line| line.strip_prefix("# openssl req -new "))
        .map(|rest| format!("openssl req -new {rest}"))
        .expect("token-keys.md has no `# openssl req -new …` line");
    let pki = Pki::new();
    let ca = pki.ca_file();
    let host = token_host(&pki, "host");
    let command = command.replace(
        "/etc/mtlsd/tls/token.pin",
        &host.token.pin_file.display().to_string(),
    );
    let out = Command::new("sh")
        .args(["-c", &command])
        .current_dir(&host.token.dir)
        .env("SOFTHSM2_CONF", &host.token.conf)
        .output()
        .unwrap();
    let said = format!(
        "{command}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the guide's CSR command failed (apt libengine-pkcs11-openssl): {said}"
    );
    let csr = host.token.dir.join("host.csr");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&host.token.dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "openssl {args:?}: {text}");
        text
    };
    // Its self-signature verifies, and its public key is the token key's
    // (the one the dev CA's certificate for the imported key carries).
    let csr_arg = csr.display().to_string();
    assert!(
        openssl(&["req", "-in", &csr_arg, "-verify", "-noout"]).contains("verify OK"),
        "{said}"
    );
    let csr_key = openssl(&["req", "-in", &csr_arg, "-pubkey", "-noout"]);
    let cert_key = openssl(&[
        "x509",
        "-in",
        &host.cert.display().to_string(),
        "-pubkey",
        "-noout",
    ]);
    assert_eq!(csr_key, cert_key, "the CSR's key is not the token key");
    let text = openssl(&["req", "-in", &csr_arg, "-noout", "-text"]);
    assert!(text.contains("DNS:db1.cluster.example"), "{text}");

    // A CA issues the certificate from the request; mtlsd takes it with
    // the token key.
    let ca_key = pki.write("ca.key", pki.ca.key_pem(), 0o600);
    let issued = host.token.dir.join("from-csr.crt");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr_arg,
        "-CA",
        &ca.display().to_string(),
        "-CAkey",
        &ca_key.display().to_string(),
        "-copy_extensions",
        "copy",
        "-days",
        "30",
        "-out",
        &issued.display().to_string(),
    ]);
    let config = pki.write(
        "host/from-csr.toml",
        &host.token.toml(&issued, &ca, HOST_URI, ""),
        0o600,
    );
    let (ok, text) = check(&config, &host.token);
    assert!(ok, "{text}");
    assert!(text.contains("db1.cluster.example"), "{text}");
}

/// Five plaintext round trips through a client daemon's outbound listener
/// at `entry`, each over a new mTLS connection to the server.
async fn five_round_trips(entry: std::net::SocketAddr) {
    for i in 0..5 {
        let mut plain = TcpStream::connect(entry).await.unwrap();
        let msg = format!("both ways {i}");
        assert_eq!(
            round_trip(&mut plain, msg.as_bytes()).await.unwrap(),
            msg.as_bytes()
        );
    }
}
