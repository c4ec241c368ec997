//! mariadb mode against a real MariaDB server with TLS and
//! `--require-secure-transport`, driven by the real `mariadb` client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtlsd::reject::RejectReason;
use mtlsd_devca::{CertificateAuthority, LeafSpec};

use crate::support::*;

/// A mariadbd in a temp dir, stopped by its own PID on drop.
struct MariaDb {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl MariaDb {
    /// `server` is the server's certificate (issued by the database CA);
    /// `client_ca` is the CA whose client certificates it accepts.
    fn start(server: &mtlsd_devca::IssuedCert, client_ca: &CertificateAuthority) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &str| {
            let path = d.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("server.crt", &server.cert_pem);
        let key = write("server.key", &server.key_pem);
        let ca = write("client-ca.pem", client_ca.cert_pem());
        // Several tests start servers at once; installing data directories
        // one at a time keeps mariadb-install-db from tripping over load.
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
        let install = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .arg(format!("--datadir={}", d.join("data").display()))
            .output()
            .expect("mariadb-install-db (apt-get install mariadb-server)");
        assert!(
            install.status.success(),
            "{}",
            String::from_utf8_lossy(&install.stderr)
        );
        drop(serial);
        let port = free_port();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--max-allowed-packet=64M",
                "--require-secure-transport",
                "--user=root",
            ])
            .arg(format!("--ssl-cert={}", cert.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .arg(format!("--ssl-ca={}", ca.display()))
            .arg(format!("--log-error={}", d.join("err.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let db = Self { dir, child, port };
        // Ready when a real query over the socket works.
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.admin("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(db.dir.path().join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        db.admin(
            "INSTALL SONAME 'auth_ed25519';\
             CREATE DATABASE t;\
             CREATE USER app@'%' IDENTIFIED BY 'app-secret';\
             CREATE USER edu@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edu-secret');\
             CREATE USER certified@'%' IDENTIFIED BY 'cert-secret' REQUIRE X509;\
             GRANT ALL ON t.* TO app@'%', edu@'%', certified@'%';",
        )
        .unwrap();
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// As root over the unix socket (secure by MariaDB's rules).
    fn admin(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The `mariadb` CLI over TCP to `addr` as `user`, with `extra` options.
fn client(addr: SocketAddr, user: &str, password: &str, extra: &[&str], sql: &str) -> Output {
    Command::new("mariadb")
        .args([
            "--no-defaults",
            "-N",
            "-B",
            "--max-allowed-packet=64M",
            "--protocol=TCP",
            "--database=t",
        ])
        .arg(format!("-h{}", addr.ip()))
        .arg(format!("-P{}", addr.port()))
        .arg(format!("-u{user}"))
        .arg(format!("-p{password}"))
        .args(extra)
        .args(["-e", sql])
        .output()
        .expect("mariadb client (apt-get install mariadb-client)")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "mariadb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Setup {
    pki: Pki,
    db_ca: CertificateAuthority,
    db: MariaDb,
}

impl Setup {
    fn new() -> Self {
        let pki = Pki::new();
        let db_ca = CertificateAuthority::new("database CA").unwrap();
        let server = db_ca
            .issue(&LeafSpec::new("db", &["db.test", "127.0.0.1"]))
            .unwrap();
        let db = MariaDb::start(&server, &pki.ca);
        Self { pki, db_ca, db }
    }

    /// A host with an outbound mariadb listener to the server; `ca` is the
    /// database trust bundle it verifies the server with.
    async fn upgrade_host(&self, ca: &CertificateAuthority, extra: &str) -> mtlsd::daemon::Running {
        let files = self.pki.host("client-host", &localhost_leaf("client-host"));
        let db_bundle = self.pki.write("db-ca.pem", ca.cert_pem(), 0o644);
        let toml = material_toml(&files, &self.pki.ca_file()).replace(
            "[admin]",
            &format!("[trust_domains.mariadb]\nbundle = {db_bundle:?}\n\n[admin]"),
        ) + &outbound_toml(
            "db",
            format!("127.0.0.1:{}", self.db.port).parse().unwrap(),
            "db.test",
            &format!("protocol = \"mariadb\"\ntrust_domain = \"mariadb\"\n{extra}"),
        );
        start_daemon(&self.pki, "client-host.toml", &toml).await.0
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_really_requires_tls() {
    let setup = Setup::new();
    let addr: SocketAddr = format!("127.0.0.1:{}", setup.db.port).parse().unwrap();
    let out = blocking(move || client(addr, "app", "app-secret", &["--skip-ssl"], "SELECT 1"))
        .await
        .unwrap();
    assert!(!out.status.success(), "plaintext login worked");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("insecure transport") || stderr.contains("1045") || stderr.contains("3159"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_gives_a_plaintext_client_a_tls_session_for_every_user_kind() {
    let setup = Setup::new();
    let host = setup.upgrade_host(&setup.db_ca, "").await;
    let entry = host.local_addr("db").unwrap();

    let cipher = blocking(move || {
        client(
            entry,
            "app",
            "app-secret",
            &[],
            "SHOW STATUS LIKE 'Ssl_cipher'",
        )
    })
    .await
    .unwrap();
    let cipher = ok(&cipher);
    assert!(
        cipher.contains("TLS_"),
        "no TLS cipher for the session: {cipher:?}"
    );

    let ed = blocking(move || client(entry, "edu", "edu-secret", &[], "SELECT CURRENT_USER()"))
        .await
        .unwrap();
    assert!(ok(&ed).contains("edu@%"));

    // REQUIRE X509: mtlsd presents this host's certificate to the server.
    let x509 = blocking(move || {
        client(
            entry,
            "certified",
            "cert-secret",
            &[],
            "SHOW STATUS LIKE 'Ssl_version'",
        )
    })
    .await
    .unwrap();
    assert!(ok(&x509).contains("TLSv1.3"));

    let wrong = blocking(move || client(entry, "app", "wrong", &[], "SELECT 1"))
        .await
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("Access denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_results_and_a_twenty_mebibyte_blob_cross_byte_exact() {
    let setup = Setup::new();
    let host = setup.upgrade_host(&setup.db_ca, "").await;
    let entry = host.local_addr("db").unwrap();

    let rows = blocking(move || {
        client(
            entry,
            "app",
            "app-secret",
            &[],
            "SELECT seq FROM seq_1_to_100000",
        )
    })
    .await
    .unwrap();
    let rows = ok(&rows);
    let values: Vec<u64> = rows.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), 100_000);
    assert_eq!(values.iter().sum::<u64>(), 100_000 * 100_001 / 2);

    // 20 MiB of pseudo-random bytes up as hex, stored, and back.
    let blob = pseudo_random(20 * 1024 * 1024, 20);
    let hex: String = blob.iter().map(|b| format!("{b:02X}")).collect();
    let sql = format!(
        "CREATE TABLE t.blobs (b LONGBLOB); INSERT INTO t.blobs VALUES (UNHEX('{hex}')); SELECT HEX(b) FROM t.blobs;"
    );
    let back = blocking(move || {
        use std::io::Write;
        let mut child = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-N",
                "-B",
                "--max-allowed-packet=256M",
                "--protocol=TCP",
            ])
            .arg(format!("-h{}", entry.ip()))
            .arg(format!("-P{}", entry.port()))
            .args(["-uapp", "-papp-secret"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || stdin.write_all(sql.as_bytes()));
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let back = ok(&back);
    assert!(
        back.trim_end() == hex,
        "the blob changed in transit ({} hex chars back)",
        back.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_the_wrong_ca_is_refused() {
    let setup = Setup::new();
    let stranger = CertificateAuthority::new("stranger").unwrap();
    let host = setup.upgrade_host(&stranger, "").await;
    let entry = host.local_addr("db").unwrap();
    let out = blocking(move || client(entry, "app", "app-secret", &[], "SELECT 1"))
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "query went through a server from the wrong CA"
    );
    let stats = host.stats("db").unwrap();
    eventually("unknown_ca counted", || {
        stats.refusals(RejectReason::UnknownCa) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_requires_tls_from_the_client_and_forwards_to_the_local_server() {
    let setup = Setup::new();
    let files = setup.pki.host(
        "db-host",
        &LeafSpec::new("db-host", &["db-host.test", "localhost", "127.0.0.1"]),
    );
    let socket = setup.db.socket();
    let toml = material_toml(&files, &setup.pki.ca_file())
        + &format!(
            "[[inbound]]\nname = \"mariadb-in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"unix:{}\"\nprotocol = \"mariadb\"\n",
            socket.display()
        );
    let (host, _) = start_daemon(&setup.pki, "db-host.toml", &toml).await;
    let entry = host.local_addr("mariadb-in").unwrap();

    let client_files = setup
        .pki
        .host("remote-client", &localhost_leaf("remote-client"));
    let ca = setup.pki.ca_file();
    let tls_args = [
        "--ssl".to_owned(),
        format!("--ssl-ca={}", ca.display()),
        format!("--ssl-cert={}", client_files.cert.display()),
        format!("--ssl-key={}", client_files.key.display()),
    ];
    let out = blocking(move || {
        let args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        client(
            entry,
            "app",
            "app-secret",
            &args,
            "SELECT CURRENT_USER(), 40 + 2",
        )
    })
    .await
    .unwrap();
    let out = ok(&out);
    assert!(out.contains("app@%") && out.contains("42"), "{out}");

    let plain = blocking(move || client(entry, "app", "app-secret", &["--skip-ssl"], "SELECT 1"))
        .await
        .unwrap();
    assert!(
        !plain.status.success(),
        "plaintext login through terminate worked"
    );
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_pair_carries_mariadb_in_a_tcp_tunnel() {
    // Third option: outbound tcp on the client host, inbound tcp on the
    // database host, the local server reached over its unix socket.
    let setup = Setup::new();
    let files = setup.pki.host("db-host", &localhost_leaf("db-host"));
    let socket = setup.db.socket();
    let toml = material_toml(&files, &setup.pki.ca_file())
        + &format!(
            "[[inbound]]\nname = \"db-tunnel\"\nlisten = \"127.0.0.1:0\"\nupstream = \"unix:{}\"\n",
            socket.display()
        );
    let (db_host, _) = start_daemon(&setup.pki, "db-host.toml", &toml).await;
    let client_files = setup.pki.host("app-host", &localhost_leaf("app-host"));
    let toml = material_toml(&client_files, &setup.pki.ca_file())
        + &outbound_toml(
            "db",
            db_host.local_addr("db-tunnel").unwrap(),
            "localhost",
            "",
        );
    let (app_host, _) = start_daemon(&setup.pki, "app-host.toml", &toml).await;
    let entry = app_host.local_addr("db").unwrap();
    let out = blocking(move || {
        client(
            entry,
            "app",
            "app-secret",
            &["--skip-ssl"],
            "SELECT CURRENT_USER()",
        )
    })
    .await
    .unwrap();
    assert!(ok(&out).contains("app@%"));
    assert_eq!(db_host.stats("db-tunnel").unwrap().handshakes(), 1);
}
