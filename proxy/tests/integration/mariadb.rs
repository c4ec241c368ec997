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
        // Its bootstrap server has failed once in a while on a loaded
        // machine; a fresh data directory and another try is what an
        // operator would do too.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let data = d.join("data");
            let _ = std::fs::remove_dir_all(&data);
            let install = Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--user=root",
                ])
                .arg(format!("--datadir={}", data.display()))
                .output()
                .expect("mariadb-install-db (apt-get install mariadb-server)");
            if install.status.success() {
                break;
            }
            failures.push(format!(
                "{}{}",
                String::from_utf8_lossy(&install.stdout),
                String::from_utf8_lossy(&install.stderr)
            ));
        }
        assert!(
            failures.len() < 3,
            "mariadb-install-db failed three times:\n{}",
            failures.join("\n---\n")
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

/// Inventory for the terminate tests: db-host serves, remote-client is an
/// api host, batch has no role the listener allows.
const INVENTORY: &str = r#"
cluster = "test"

[hosts.db-host]
sans = ["DNS:db-host.test"]
roles = ["database"]

[hosts.remote-client]
sans = ["DNS:localhost"]
roles = ["api"]

[hosts.batch]
sans = ["DNS:batch.test"]
roles = ["batch"]
"#;

impl Setup {
    /// A database host with an inbound mariadb listener in front of the
    /// server's unix socket; with `allow_roles`, identities come from
    /// [`INVENTORY`].
    async fn terminate_host(&self, allow_roles: Option<&str>) -> mtlsd::daemon::Running {
        let files = self.pki.host(
            "db-host",
            &LeafSpec::new("db-host", &["db-host.test", "localhost", "127.0.0.1"]),
        );
        let mut toml = material_toml(&files, &self.pki.ca_file());
        if allow_roles.is_some() {
            toml = with_inventory(&self.pki, INVENTORY, "db-host", toml);
        }
        toml += &format!(
            "[[inbound]]\nname = \"mariadb-in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"unix:{}\"\nprotocol = \"mariadb\"\n{}\n",
            self.db.socket().display(),
            allow_roles
                .map(|roles| format!("allow_roles = {roles}"))
                .unwrap_or_default()
        );
        start_daemon(&self.pki, "db-host.toml", &toml).await.0
    }

    /// `mariadb` CLI options for TLS to a terminate listener with the
    /// certificate of `host` (issued for `sans`).
    fn tls_client_args(&self, host: &str, sans: &[&str]) -> Vec<String> {
        let files = self.pki.host(host, &LeafSpec::new(host, sans));
        vec![
            "--ssl".to_owned(),
            format!("--ssl-ca={}", self.pki.ca_file().display()),
            format!("--ssl-cert={}", files.cert.display()),
            format!("--ssl-key={}", files.key.display()),
        ]
    }
}

/// [`client`], off the async runtime.
async fn query(entry: SocketAddr, user: &str, password: &str, extra: &[&str], sql: &str) -> Output {
    let owned = |s: &str| s.to_owned();
    let (user, password, sql) = (owned(user), owned(password), owned(sql));
    let extra: Vec<String> = extra.iter().map(|s| owned(s)).collect();
    blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        client(entry, &user, &password, &extra, &sql)
    })
    .await
    .unwrap()
}

/// [`query`] with owned options (as [`Setup::tls_client_args`] makes them).
async fn client_with(
    entry: SocketAddr,
    user: &str,
    password: &str,
    args: Vec<String>,
    sql: &str,
) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    query(entry, user, password, &args, sql).await
}

/// Waits until `listener` has counted exactly one refusal for `reason`.
async fn counted_once(host: &mtlsd::daemon::Running, listener: &str, reason: RejectReason) {
    let stats = host.stats(listener).unwrap();
    eventually(
        &format!("{listener}: one refusal counted as {reason}"),
        || stats.refusals(reason) == 1,
    )
    .await;
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
    let out = query(addr, "app", "app-secret", &["--skip-ssl"], "SELECT 1").await;
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

    let cipher = query(
        entry,
        "app",
        "app-secret",
        &[],
        "SHOW STATUS LIKE 'Ssl_cipher'",
    )
    .await;
    let cipher = ok(&cipher);
    assert!(
        cipher.contains("TLS_"),
        "no TLS cipher for the session: {cipher:?}"
    );

    let ed = query(entry, "edu", "edu-secret", &[], "SELECT CURRENT_USER()").await;
    assert!(ok(&ed).contains("edu@%"));

    // REQUIRE X509: mtlsd presents this host's certificate to the server.
    let x509 = query(
        entry,
        "certified",
        "cert-secret",
        &[],
        "SHOW STATUS LIKE 'Ssl_version'",
    )
    .await;
    assert!(ok(&x509).contains("TLSv1.3"));

    let wrong = query(entry, "app", "wrong", &[], "SELECT 1").await;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("Access denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_results_and_a_twenty_mebibyte_blob_cross_byte_exact() {
    let setup = Setup::new();
    let host = setup.upgrade_host(&setup.db_ca, "").await;
    let entry = host.local_addr("db").unwrap();

    let rows = query(
        entry,
        "app",
        "app-secret",
        &[],
        "SELECT seq FROM seq_1_to_100000",
    )
    .await;
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
    let out = query(entry, "app", "app-secret", &[], "SELECT 1").await;
    assert!(
        !out.status.success(),
        "query went through a server from the wrong CA"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS to the MariaDB server failed") && stderr.contains("UnknownIssuer"),
        "the client was not told why: {stderr}"
    );
    counted_once(&host, "db", RejectReason::UnknownCa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_requires_tls_from_the_client_and_forwards_to_the_local_server() {
    let setup = Setup::new();
    let host = setup.terminate_host(None).await;
    let entry = host.local_addr("mariadb-in").unwrap();
    let tls_args = setup.tls_client_args("remote-client", &["localhost"]);
    let out = client_with(
        entry,
        "app",
        "app-secret",
        tls_args,
        "SELECT CURRENT_USER(), 40 + 2",
    )
    .await;
    let out = ok(&out);
    assert!(out.contains("app@%") && out.contains("42"), "{out}");

    let plain = query(entry, "app", "app-secret", &["--skip-ssl"], "SELECT 1").await;
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
    let out = query(
        entry,
        "app",
        "app-secret",
        &["--skip-ssl"],
        "SELECT CURRENT_USER()",
    )
    .await;
    assert!(ok(&out).contains("app@%"));
    assert_eq!(db_host.stats("db-tunnel").unwrap().handshakes(), 1);
}

/// mysql_async over TCP to `entry` (never the server's unix socket, which
/// would bypass mtlsd).
fn driver_opts(entry: SocketAddr, user: &str, password: &str) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(entry.ip().to_string())
        .tcp_port(entry.port())
        .prefer_socket(false)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some("t"))
}

/// `SHOW STATUS` value for this session, or "" when the row is missing.
async fn session_status(conn: &mut mysql_async::Conn, name: &str) -> String {
    use mysql_async::prelude::Queryable;
    let row: Option<(String, String)> = conn
        .query_first(format!("SHOW STATUS LIKE '{name}'"))
        .await
        .unwrap();
    row.map(|(_, value)| value).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_driver_gets_tls_through_upgrade_and_can_change_user() {
    use mysql_async::prelude::Queryable;
    let setup = Setup::new();
    let host = setup.upgrade_host(&setup.db_ca, "").await;
    let entry = host.local_addr("db").unwrap();

    let mut conn = mysql_async::Conn::new(driver_opts(entry, "app", "app-secret"))
        .await
        .expect("mysql_async through mtlsd");
    assert!(
        session_status(&mut conn, "Ssl_cipher")
            .await
            .starts_with("TLS_"),
        "the driver's session is not encrypted on the server"
    );
    // The binary protocol (prepared statements) crosses untouched.
    let sum: Option<u64> = conn
        .exec_first("SELECT SUM(seq) FROM seq_1_to_1000 WHERE seq > ?", (10,))
        .await
        .unwrap();
    assert_eq!(sum, Some((11..=1000).sum()));

    // COM_CHANGE_USER to an ed25519 user: the server answers with an auth
    // switch inside the established TLS session, past the connection phase.
    // mysql_common (0.37) drops a trailing zero byte from auth-switch data,
    // so when the server's random 32-byte scramble ends in 0 (1 in 256) the
    // driver signs 31 bytes and is refused. That is the driver, not the
    // relay: one more try on a fresh connection, with a fresh scramble.
    let edu = || {
        mysql_async::ChangeUserOpts::new()
            .with_user(Some("edu".into()))
            .with_pass(Some("edu-secret".into()))
    };
    if let Err(first) = conn.change_user(edu()).await {
        assert!(first.to_string().contains("Access denied"), "{first}");
        conn = mysql_async::Conn::new(driver_opts(entry, "app", "app-secret"))
            .await
            .unwrap();
        conn.change_user(edu())
            .await
            .expect("COM_CHANGE_USER to the ed25519 user, twice");
    }
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("edu@%"));
    assert!(
        session_status(&mut conn, "Ssl_cipher")
            .await
            .starts_with("TLS_")
    );

    // A wrong password on change-user is the server's refusal, relayed.
    let wrong = conn
        .change_user(
            mysql_async::ChangeUserOpts::new()
                .with_user(Some("app".into()))
                .with_pass(Some("wrong".into())),
        )
        .await;
    let wrong = wrong.expect_err("change-user with a wrong password worked");
    assert!(wrong.to_string().contains("Access denied"), "{wrong}");
    drop(conn);

    // A fresh connection still works after the failed change-user.
    let mut again = mysql_async::Conn::new(driver_opts(entry, "app", "app-secret"))
        .await
        .unwrap();
    let one: Option<u8> = again.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    again.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_passes_through_both_modes() {
    use mysql_async::prelude::Queryable;
    let setup = Setup::new();

    // Upgrade: the driver asks for CLIENT_COMPRESS; the SSLRequest mtlsd
    // builds carries it, and the compressed stream is copied as bytes.
    let host = setup.upgrade_host(&setup.db_ca, "").await;
    let entry = host.local_addr("db").unwrap();
    let mut conn = mysql_async::Conn::new(
        driver_opts(entry, "app", "app-secret").compression(mysql_async::Compression::fast()),
    )
    .await
    .unwrap();
    assert_eq!(session_status(&mut conn, "Compression").await, "ON");
    assert!(
        session_status(&mut conn, "Ssl_cipher")
            .await
            .starts_with("TLS_")
    );
    let rows: Vec<u64> = conn.query("SELECT seq FROM seq_1_to_100000").await.unwrap();
    assert_eq!(rows.len(), 100_000);
    assert_eq!(rows.iter().sum::<u64>(), 100_000 * 100_001 / 2);
    conn.disconnect().await.unwrap();

    // Terminate: the mariadb CLI with --compress and TLS to mtlsd.
    let db_host = setup.terminate_host(None).await;
    let entry = db_host.local_addr("mariadb-in").unwrap();
    let mut args = setup.tls_client_args("remote-client", &["localhost"]);
    args.push("--compress".to_owned());
    let out = client_with(
        entry,
        "app",
        "app-secret",
        args,
        "SHOW STATUS LIKE 'Compression'; SELECT SUM(seq) FROM seq_1_to_100000",
    )
    .await;
    let out = ok(&out);
    assert!(out.contains("Compression\tON"), "{out}");
    assert!(out.contains("5000050000"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_listener_can_withhold_the_host_certificate() {
    let setup = Setup::new();
    let host = setup
        .upgrade_host(&setup.db_ca, "present_certificate = false")
        .await;
    let entry = host.local_addr("db").unwrap();
    let plain_user = query(
        entry,
        "app",
        "app-secret",
        &[],
        "SHOW STATUS LIKE 'Ssl_cipher'",
    )
    .await;
    assert!(ok(&plain_user).contains("TLS_"));
    // Without a client certificate a REQUIRE X509 user is the server's
    // to refuse, which proves none was sent.
    let x509 = query(entry, "certified", "cert-secret", &[], "SELECT 1").await;
    assert!(!x509.status.success(), "REQUIRE X509 without a certificate");
    let stderr = String::from_utf8_lossy(&x509.stderr);
    assert!(stderr.contains("Access denied"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_admits_only_inventory_hosts_with_an_allowed_role() {
    let setup = Setup::new();
    let host = setup.terminate_host(Some("[\"api\"]")).await;
    let entry = host.local_addr("mariadb-in").unwrap();
    let stats = host.stats("mariadb-in").unwrap();

    let api = client_with(
        entry,
        "app",
        "app-secret",
        setup.tls_client_args("remote-client", &["localhost"]),
        "SELECT CURRENT_USER()",
    )
    .await;
    assert!(ok(&api).contains("app@%"));

    let cases = [
        ("batch", "batch.test", RejectReason::RoleNotAllowed),
        ("stranger", "stranger.test", RejectReason::SanNotInInventory),
    ];
    for (name, san, reason) in cases {
        let out = client_with(
            entry,
            "app",
            "app-secret",
            setup.tls_client_args(name, &[san]),
            "SELECT 1",
        )
        .await;
        assert!(!out.status.success(), "{name} got through");
        counted_once(&host, "mariadb-in", reason).await;
    }
    assert_eq!(stats.handshakes(), 1);
}

/// Reads one packet: (sequence id, payload).
async fn read_packet<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.unwrap();
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (header[3], payload)
}

/// The 32 bytes a HandshakeResponse41 or SSLRequest starts with: `caps`,
/// a 16 MiB max packet, utf8mb4, and the reserved zeros.
fn capability_block(caps: u32) -> Vec<u8> {
    let mut block = caps.to_le_bytes().to_vec();
    block.extend_from_slice(&(16u32 << 20).to_le_bytes());
    block.push(0x21);
    block.extend_from_slice(&[0u8; 23]);
    block
}

/// `payload` framed as one packet with sequence id `seq`.
fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
    let mut framed = vec![len[0], len[1], len[2], seq];
    framed.extend_from_slice(payload);
    framed
}

/// Announces an 8 MiB login packet as `seq` on `stream`: mtlsd must answer
/// with an ERR as `seq` + 1, without reading or allocating it, and count
/// a protocol refusal on `listener`.
async fn oversized_login_is_refused<S>(
    stream: &mut S,
    seq: u8,
    host: &mtlsd::daemon::Running,
    listener: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(&[0x00, 0x00, 0x80, seq, 1, 2, 3])
        .await
        .unwrap();
    let (err_seq, err) = read_packet(stream).await;
    assert_eq!(err_seq, seq.wrapping_add(1), "the ERR is out of sequence");
    let text = err_text(&err);
    assert!(
        text.contains("malformed MariaDB connection phase"),
        "{text}"
    );
    counted_once(host, listener, RejectReason::Protocol).await;
}

/// The ERR packet's message text, from its payload.
fn err_text(payload: &[u8]) -> String {
    assert_eq!(payload.first(), Some(&0xFF), "not an ERR packet");
    // 0xFF, 2-byte code, '#', 5-byte state, message.
    String::from_utf8_lossy(&payload[9..]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_stalls_mid_authentication_gets_an_err_at_the_deadline() {
    use tokio::io::AsyncWriteExt;
    let setup = Setup::new();
    let host = setup
        .upgrade_host(&setup.db_ca, "handshake_timeout = \"2s\"")
        .await;
    let entry = host.local_addr("db").unwrap();
    let mut stream = tokio::net::TcpStream::connect(entry).await.unwrap();
    let (greeting_seq, _) = read_packet(&mut stream).await;

    // HandshakeResponse41 for the ed25519 user, claiming the native
    // password plugin: the server answers with an auth switch, which this
    // client then never answers.
    // Long password, 4.1, secure connection, plugin auth.
    let mut response = capability_block(0x1 | 0x200 | 0x8000 | 0x8_0000);
    response.extend_from_slice(b"edu\0");
    response.push(20);
    response.extend_from_slice(&[0x5A; 20]);
    response.extend_from_slice(b"mysql_native_password\0");
    stream
        .write_all(&packet(greeting_seq + 1, &response))
        .await
        .unwrap();

    let (switch_seq, switch) = read_packet(&mut stream).await;
    assert_eq!(switch.first(), Some(&0xFE), "expected an auth switch");
    assert_eq!(switch_seq, greeting_seq + 2);
    let started = Instant::now();
    let (err_seq, err) = read_packet(&mut stream).await;
    let text = err_text(&err);
    assert!(text.contains("did not finish within 2s"), "{text}");
    // The client reads it as the server's next packet.
    assert_eq!(err_seq, switch_seq + 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    counted_once(&host, "db", RejectReason::Timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_login_packet_gets_an_err_and_is_counted() {
    let setup = Setup::new();
    let host = setup.upgrade_host(&setup.db_ca, "").await;
    let entry = host.local_addr("db").unwrap();
    let mut stream = tokio::net::TcpStream::connect(entry).await.unwrap();
    let (greeting_seq, _) = read_packet(&mut stream).await;
    oversized_login_is_refused(&mut stream, greeting_seq + 1, &host, "db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_answers_an_oversized_login_over_tls_in_sequence() {
    use tokio::io::AsyncWriteExt;
    let setup = Setup::new();
    let host = setup.terminate_host(None).await;
    let entry = host.local_addr("mariadb-in").unwrap();
    let mut tcp = tokio::net::TcpStream::connect(entry).await.unwrap();
    let (greeting_seq, _) = read_packet(&mut tcp).await;

    // SSLRequest: CLIENT_SSL, 4.1, secure connection.
    let request = capability_block(0x800 | 0x200 | 0x8000);
    tcp.write_all(&packet(greeting_seq + 1, &request))
        .await
        .unwrap();

    let cert = setup
        .pki
        .ca
        .issue(&localhost_leaf("remote-client"))
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_config(setup.pki.ca.cert_der(), Some(&cert)));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // The login response, over TLS, as SSLRequest + 1.
    oversized_login_is_refused(&mut tls, greeting_seq + 2, &host, "mariadb-in").await;
}
