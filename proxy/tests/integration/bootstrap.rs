//! Joining hosts: the bootstrap endpoint (`[bootstrap] listen`), `mtlsd
//! trust fetch` against it and against hostile endpoints, and pinned
//! bundles (`trust_domains.NAME.sha256`) at start, in `check` and on
//! reload. Real TLS on both sides, the real binary for the CLI.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mtlsd::reloading::{ReloadResult, Trigger};
use mtlsd_devca::{CertificateAuthority, IssuedCert};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::process::run_to_end;
use crate::support::*;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What `openssl x509 -outform DER | sha256sum` prints for `ca`.
fn ca_sha256(ca: &CertificateAuthority) -> String {
    sha256_hex(ca.cert_der())
}

/// A host with `[bootstrap]` on, its mesh bundle, and a second trust
/// domain `db` (another CA).
struct Host {
    pki: Pki,
    host: HostFiles,
    mesh_bundle: PathBuf,
    db_ca: CertificateAuthority,
    db_bundle: PathBuf,
}

impl Host {
    fn new() -> Self {
        let pki = Pki::new();
        let host = pki.host("host", &localhost_leaf("host"));
        let mesh_bundle = pki.ca_file();
        let db_ca = CertificateAuthority::new("operator database CA").unwrap();
        let db_bundle = pki.write("db-ca.pem", db_ca.cert_pem(), 0o644);
        Self {
            pki,
            host,
            mesh_bundle,
            db_ca,
            db_bundle,
        }
    }

    /// The config: material, `db` domain, `[bootstrap]` with `bootstrap`
    /// (extra keys), `mesh_extra` under `[trust_domains.mesh]`.
    fn toml(&self, bootstrap: &str, mesh_extra: &str) -> String {
        let base = material_toml(&self.host, &self.mesh_bundle).replacen(
            "[trust_domains.mesh]\n",
            "[trust_domains.mesh]\nversion = \"v1\"\n",
            1,
        );
        let base = base.replacen(
            "version = \"v1\"\n",
            &format!("version = \"v1\"\n{mesh_extra}\n"),
            1,
        );
        format!(
            "{base}[reload]\nwatch = false\n\n[trust_domains.db]\nbundle = {:?}\n\n[bootstrap]\nlisten = \"127.0.0.1:0\"\n{bootstrap}\n",
            self.db_bundle
        )
    }

    async fn start(
        &self,
        bootstrap: &str,
        mesh_extra: &str,
    ) -> (mtlsd::daemon::Running, SocketAddr) {
        let (running, _) =
            start_daemon(&self.pki, "mtlsd.toml", &self.toml(bootstrap, mesh_extra)).await;
        let addr = running.bootstrap_addr().expect("bootstrap endpoint bound");
        (running, addr)
    }
}

/// A client of the bootstrap endpoint: trusts `ca`, offers `cert` if given.
async fn connect(
    addr: SocketAddr,
    ca: &CertificateAuthority,
    cert: Option<&IssuedCert>,
) -> std::io::Result<SendRequest<Empty<Bytes>>> {
    let mut config = Arc::unwrap_or_clone(client_config(ca.cert_der(), cert));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tls_connect(addr, Arc::new(config)).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, method: &str, path: &str) -> Answer {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    // The previous response on this connection must be done first.
    within("connection ready", SOON, sender.ready())
        .await
        .unwrap();
    let response = within("bootstrap answer", SOON, sender.send_request(request))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// One request on a fresh connection.
async fn get(addr: SocketAddr, ca: &CertificateAuthority, path: &str) -> Answer {
    let mut sender = connect(addr, ca, None).await.unwrap();
    send(&mut sender, "GET", path).await
}

async fn metrics(running: &mtlsd::daemon::Running) -> String {
    http_get(running.admin_addr(), "/metrics").await.1
}

/// `mtlsd trust fetch ARGS` (the real binary) off the runtime's threads.
async fn fetch(args: Vec<String>) -> (ExitStatus, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["trust".to_owned(), "fetch".to_owned()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_to_end(&all, SOON * 3)
    })
    .await
    .unwrap()
}

fn fetch_args(from: SocketAddr, domain: &str, pins: &[String], out: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "--from".to_owned(),
        from.to_string(),
        "--domain".to_owned(),
        domain.to_owned(),
    ];
    for pin in pins {
        args.extend(["--sha256".to_owned(), pin.clone()]);
    }
    if let Some(out) = out {
        args.extend(["--out".to_owned(), out.display().to_string()]);
    }
    args
}

/// The names in `dir`: nothing written means nothing here, not even a
/// temporary file.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_the_right_fingerprint_writes_the_bundle_byte_exact() {
    let host = Host::new();
    let (running, addr) = host.start("", "").await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("mesh-ca.pem");

    let (status, stdout, stderr) = fetch(fetch_args(
        addr,
        "mesh",
        &[ca_sha256(&host.pki.ca)],
        Some(&out),
    ))
    .await;
    assert!(status.success(), "{status}: {stdout}\n{stderr}");
    let written = std::fs::read(&out).unwrap();
    // Byte for byte the bundle mtlsd serves, and here also the file the
    // serving host loaded (rcgen writes canonical PEM).
    assert_eq!(
        written,
        get(addr, &host.pki.ca, "/v1/trust/mesh").await.body
    );
    assert_eq!(written, std::fs::read(&host.mesh_bundle).unwrap());
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(files_in(out_dir.path()), ["mesh-ca.pem"]);
    assert!(stdout.contains(&ca_sha256(&host.pki.ca)), "{stdout}");

    // The other domain is not the server's own: the pin alone decides. The
    // fingerprint as `openssl x509 -fingerprint -sha256` writes it works too.
    let colons = mtlsd_expiry::Fingerprint::of(host.db_ca.cert_der()).to_string();
    let db_out = out_dir.path().join("db-ca.pem");
    let (status, stdout, stderr) = fetch(fetch_args(addr, "db", &[colons], Some(&db_out))).await;
    assert!(status.success(), "{status}: {stdout}\n{stderr}");
    assert_eq!(
        std::fs::read(&db_out).unwrap(),
        host.db_ca.cert_pem().as_bytes()
    );

    // A file already there is replaced whole.
    std::fs::write(&out, "old contents\n").unwrap();
    let (status, ..) = fetch(fetch_args(
        addr,
        "mesh",
        &[ca_sha256(&host.pki.ca)],
        Some(&out),
    ))
    .await;
    assert!(status.success());
    assert_eq!(std::fs::read(&out).unwrap(), written);

    let text = metrics(&running).await;
    assert_eq!(
        metric(
            &text,
            "mtlsd_bootstrap_requests_total",
            &[("result", "bundle")]
        ),
        Some(4.0),
        "{text}"
    );
    promtool_check_metrics(&text);
    running.drain(SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_mid_rotation_needs_every_fingerprint_and_no_other() {
    let host = Host::new();
    let next = CertificateAuthority::new("test mesh CA 2").unwrap();
    std::fs::write(
        &host.mesh_bundle,
        format!("{}{}", host.pki.ca.cert_pem(), next.cert_pem()),
    )
    .unwrap();
    let (running, addr) = host.start("", "").await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("mesh-ca.pem");

    let (status, _, stderr) = fetch(fetch_args(
        addr,
        "mesh",
        &[ca_sha256(&host.pki.ca)],
        Some(&out),
    ))
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&ca_sha256(&next)),
        "the CA not pinned is named: {stderr}"
    );
    assert!(files_in(out_dir.path()).is_empty());

    // Order does not matter: the set does.
    let both = [ca_sha256(&next), ca_sha256(&host.pki.ca)];
    let (status, stdout, stderr) = fetch(fetch_args(addr, "mesh", &both, Some(&out))).await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&host.mesh_bundle).unwrap()
    );

    // One more pin than CAs is a mismatch too.
    std::fs::remove_file(&out).unwrap();
    let stranger = CertificateAuthority::new("stranger").unwrap();
    let three = [
        ca_sha256(&next),
        ca_sha256(&host.pki.ca),
        ca_sha256(&stranger),
    ];
    let (status, _, stderr) = fetch(fetch_args(addr, "mesh", &three, Some(&out))).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NOT received"), "{stderr}");
    assert!(files_in(out_dir.path()).is_empty());
    running.drain(SOON).await;
}

/// A rogue host runs a real mtlsd with its own CA: the operator's pin
/// refuses its bundle, naming both sides, and nothing is written (a file
/// already there stays as it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_writes_nothing_and_exits_non_zero() {
    let real = Host::new();
    let rogue = Host::new();
    let (running, rogue_addr) = rogue.start("", "").await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("mesh-ca.pem");
    std::fs::write(&out, "what was here before\n").unwrap();

    let expected = ca_sha256(&real.pki.ca);
    let (status, stdout, stderr) = fetch(fetch_args(
        rogue_addr,
        "mesh",
        std::slice::from_ref(&expected),
        Some(&out),
    ))
    .await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    for needle in [
        expected.as_str(),
        &ca_sha256(&rogue.pki.ca),
        "nothing written",
        "NOT expected",
        "NOT received",
        "test mesh CA",
    ] {
        assert!(stderr.contains(needle), "{needle} missing:\n{stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "what was here before\n"
    );
    assert_eq!(files_in(out_dir.path()), ["mesh-ca.pem"]);

    // Not a SHA-256 at all: refused before connecting.
    let (status, _, stderr) = fetch(fetch_args(
        rogue_addr,
        "mesh",
        &["abc123".to_owned()],
        Some(&out),
    ))
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("--sha256 \\\"abc123\\\": not a SHA-256"),
        "{stderr}"
    );
    running.drain(SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fingerprint_it_prints_them_and_writes_nothing() {
    let host = Host::new();
    let (running, addr) = host.start("", "").await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("mesh-ca.pem");

    let (status, stdout, stderr) = fetch(fetch_args(addr, "mesh", &[], Some(&out))).await;
    assert_eq!(status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stdout.contains(&ca_sha256(&host.pki.ca)), "{stdout}");
    assert!(stdout.contains("test mesh CA"), "{stdout}");
    assert!(stderr.contains("out of band"), "{stderr}");
    assert!(
        stderr.contains(&format!("--sha256 {}", ca_sha256(&host.pki.ca))),
        "the command to run next: {stderr}"
    );
    assert!(files_in(out_dir.path()).is_empty());

    // --sha256 without --out is a usage error.
    let (status, _, stderr) =
        fetch(fetch_args(addr, "mesh", &[ca_sha256(&host.pki.ca)], None)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--out"), "{stderr}");
    running.drain(SOON).await;
}

/// A hand-made endpoint: TLS with `leaf` (signed by whoever), answering
/// every connection with `response` (raw HTTP/1.1 bytes).
async fn fake_endpoint(leaf: IssuedCert, response: Vec<u8>) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(mtlsd_reload::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response = Arc::new(response);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let response = response.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = [0u8; 4096];
                let _ = tls.read(&mut request).await;
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn http_response(body: &[u8], headers: &[(&str, String)]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(body);
    response
}

fn mtlsd_headers(body: &[u8], identity_domain: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-mtlsd-bundle-sha256", sha256_hex(body)),
        ("x-mtlsd-identity-domain", identity_domain.to_owned()),
    ]
}

/// The mesh's real bundle (public, so anyone can serve it) from a server
/// whose certificate is not of the mesh: the pin matches, but the server
/// says the bundle is its own domain's and its certificate does not chain
/// to it, so the bundle is refused. Claiming another domain leaves the pin
/// alone to decide (the bundle is authentic either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_certificate_does_not_chain_to_the_bundle_it_serves_is_refused() {
    let mesh = Pki::new();
    let rogue_ca = CertificateAuthority::new("rogue CA").unwrap();
    let bundle = mesh.ca.cert_pem().as_bytes().to_vec();
    let pin = ca_sha256(&mesh.ca);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("mesh-ca.pem");

    let rogue_leaf = rogue_ca.issue(&localhost_leaf("rogue")).unwrap();
    let as_own = fake_endpoint(
        rogue_leaf.clone(),
        http_response(&bundle, &mtlsd_headers(&bundle, "mesh")),
    )
    .await;
    let (status, stdout, stderr) = fetch(fetch_args(
        as_own,
        "mesh",
        std::slice::from_ref(&pin),
        Some(&out),
    ))
    .await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("does not chain to the bundle it serves"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rogue"),
        "the server's certificate is named: {stderr}"
    );
    assert!(
        files_in(out_dir.path()).is_empty(),
        "{:?}",
        files_in(out_dir.path())
    );

    let as_other = fake_endpoint(
        rogue_leaf,
        http_response(&bundle, &mtlsd_headers(&bundle, "elsewhere")),
    )
    .await;
    let (status, stdout, stderr) = fetch(fetch_args(
        as_other,
        "mesh",
        std::slice::from_ref(&pin),
        Some(&out),
    ))
    .await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), bundle);

    // And a mesh member serving it is accepted as its own domain's.
    std::fs::remove_file(&out).unwrap();
    let member = fake_endpoint(
        mesh.ca.issue(&localhost_leaf("member")).unwrap(),
        http_response(&bundle, &mtlsd_headers(&bundle, "mesh")),
    )
    .await;
    let (status, stdout, stderr) = fetch(fetch_args(
        member,
        "mesh",
        std::slice::from_ref(&pin),
        Some(&out),
    ))
    .await;
    assert!(status.success(), "{stdout}\n{stderr}");
}

/// Hostile answers: each is refused with a reason, bounded in time and
/// memory, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_refused_and_write_nothing() {
    let mesh = Pki::new();
    let leaf = mesh.ca.issue(&localhost_leaf("member")).unwrap();
    let pin = ca_sha256(&mesh.ca);
    let bundle = mesh.ca.cert_pem().as_bytes().to_vec();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("mesh-ca.pem");

    let with_key = format!("{}{}", mesh.ca.cert_pem(), leaf.key_pem).into_bytes();
    let leaf_only = leaf.cert_pem.clone().into_bytes();
    let truncated = bundle[..bundle.len() / 2].to_vec();
    let mut cut_short = http_response(&bundle, &mtlsd_headers(&bundle, "mesh"));
    cut_short.truncate(cut_short.len() - 100);
    let mut oversized =
        b"HTTP/1.1 200 OK\r\ncontent-length: 6000000\r\nconnection: close\r\n".to_vec();
    oversized
        .extend_from_slice(format!("x-mtlsd-bundle-sha256: {}\r\n", sha256_hex(b"")).as_bytes());
    oversized.extend_from_slice(b"x-mtlsd-identity-domain: mesh\r\n\r\n");
    oversized.extend(std::iter::repeat_n(b'A', 5_000_000));

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            http_response(
                b"<html>hello</html>",
                &mtlsd_headers(b"<html>hello</html>", "mesh"),
            ),
            "holds no certificate",
        ),
        (
            "a private key next to the CA",
            http_response(&with_key, &mtlsd_headers(&with_key, "mesh")),
            "more than certificates",
        ),
        (
            "a leaf instead of a CA",
            http_response(&leaf_only, &mtlsd_headers(&leaf_only, "mesh")),
            "not a CA certificate",
        ),
        (
            "truncated PEM",
            http_response(&truncated, &mtlsd_headers(&truncated, "mesh")),
            "malformed PEM",
        ),
        (
            "cut short on the wire",
            cut_short,
            "reading the bundle failed",
        ),
        ("oversized", oversized, "more than 4194304 bytes"),
        (
            "a body whose SHA-256 is not the header's",
            http_response(&bundle, &mtlsd_headers(b"something else", "mesh")),
            "damaged or cut short",
        ),
        (
            "no mtlsd headers",
            http_response(&bundle, &[]),
            "not an mtlsd bootstrap endpoint",
        ),
        (
            "a 404",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
            "does not serve trust domain 'mesh'",
        ),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), "HTTP"),
    ];
    for (what, response, reason) in cases {
        let addr = fake_endpoint(leaf.clone(), response).await;
        let (status, stdout, stderr) = fetch(fetch_args(
            addr,
            "mesh",
            std::slice::from_ref(&pin),
            Some(&out),
        ))
        .await;
        assert_eq!(status.code(), Some(1), "{what}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(reason),
            "{what}: expected {reason:?} in:\n{stderr}"
        );
        assert!(
            files_in(out_dir.path()).is_empty(),
            "{what}: {:?}",
            files_in(out_dir.path())
        );
    }

    // Nothing listening, and a server that never answers (bounded by
    // --timeout).
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let (status, _, stderr) = fetch(fetch_args(
        closed_addr,
        "mesh",
        std::slice::from_ref(&pin),
        Some(&out),
    ))
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("cannot resolve or connect"), "{stderr}");
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut args = fetch_args(silent_addr, "mesh", std::slice::from_ref(&pin), Some(&out));
    args.extend(["--timeout".to_owned(), "1s".to_owned()]);
    let started = std::time::Instant::now();
    let (status, _, stderr) = fetch(args).await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("no answer within 1s"), "{stderr}");
    assert!(started.elapsed() < SOON, "{:?}", started.elapsed());
    drop(silent);
    assert!(files_in(out_dir.path()).is_empty());
}

/// The endpoint serves the bundles and nothing else: no client
/// certificate needed (one offered changes nothing), every other path
/// 404, the admin routes included, and names are matched exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_endpoint_serves_nothing_but_the_bundles() {
    let host = Host::new();
    let (running, addr) = host.start("", "").await;
    let ca = &host.pki.ca;

    let index = get(addr, ca, "/v1/trust").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.header("x-mtlsd-identity-domain"), Some("mesh"));
    let json: serde_json::Value = serde_json::from_slice(&index.body).unwrap();
    assert_eq!(json["identity_domain"], "mesh");
    let domains = json["domains"].as_array().unwrap();
    let names: Vec<&str> = domains
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "mesh"]);
    let mesh = &domains[1];
    assert_eq!(mesh["version"], "v1");
    assert_eq!(mesh["cas"][0]["sha256"], ca_sha256(ca));

    let bundle = get(addr, ca, "/v1/trust/mesh").await;
    assert_eq!(bundle.status, 200);
    assert_eq!(bundle.body, ca.cert_pem().as_bytes());
    assert_eq!(
        bundle.header("x-mtlsd-bundle-sha256"),
        Some(sha256_hex(&bundle.body).as_str())
    );
    assert_eq!(mesh["sha256"], sha256_hex(&bundle.body));
    assert_eq!(
        bundle.header("content-type"),
        Some("application/x-pem-file")
    );

    // A client certificate offered (even one of a CA nobody trusts) is
    // never asked for, and changes nothing.
    let stranger = CertificateAuthority::new("stranger").unwrap();
    let stranger_leaf = stranger.issue(&localhost_leaf("stranger")).unwrap();
    let member_leaf = ca.issue(&localhost_leaf("member")).unwrap();
    for offered in [&stranger_leaf, &member_leaf] {
        let mut sender = connect(addr, ca, Some(offered)).await.unwrap();
        let answer = send(&mut sender, "GET", "/v1/trust/mesh").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, bundle.body);
        // The admin routes do not exist here, whoever asks.
        assert_eq!(send(&mut sender, "GET", "/status").await.status, 404);
    }

    for (method, path) in [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/status"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("POST", "/reload"),
        ("GET", "/rotation?phase=add-ca&ca=00000000"),
        ("GET", "/v1/trust/"),
        ("GET", "/v1/trust/nope"),
        ("GET", "/v1/trust/MESH"),
        ("GET", "/v1/trust/mesh/"),
        ("GET", "/v1/trust/mesh/../db"),
        ("GET", "/v1/trust/../../etc/passwd"),
        ("GET", "/v1/trust/%2e%2e%2fmtlsd.toml"),
        ("GET", "/v1/trust/..%2f..%2fhost.key"),
        ("GET", "/v1/trustmesh"),
        ("GET", "/v1/trust/mesh%00"),
        ("POST", "/v1/trust/mesh"),
        ("PUT", "/v1/trust"),
        ("DELETE", "/v1/trust/mesh"),
    ] {
        let answer = get_with(addr, ca, method, path).await;
        assert_eq!(answer.status, 404, "{method} {path}");
        assert!(
            !String::from_utf8_lossy(&answer.body).contains("PRIVATE"),
            "{method} {path}"
        );
    }

    let text = metrics(&running).await;
    assert_eq!(
        metric(
            &text,
            "mtlsd_bootstrap_requests_total",
            &[("result", "index")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_bootstrap_requests_total",
            &[("result", "not_found")]
        ),
        Some(22.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_bootstrap_connections_total",
            &[("result", "accepted")]
        ),
        Some(24.0),
        "{text}"
    );
    running.drain(SOON).await;

    // bootstrap.domains narrows what is served, the index included.
    let (running, addr) = host.start("domains = [\"mesh\"]", "").await;
    assert_eq!(get(addr, ca, "/v1/trust/db").await.status, 404);
    assert_eq!(get(addr, ca, "/v1/trust/mesh").await.status, 200);
    let json: serde_json::Value =
        serde_json::from_slice(&get(addr, ca, "/v1/trust").await.body).unwrap();
    assert_eq!(json["domains"].as_array().unwrap().len(), 1);
    running.drain(SOON).await;
}

async fn get_with(addr: SocketAddr, ca: &CertificateAuthority, method: &str, path: &str) -> Answer {
    let mut sender = connect(addr, ca, None).await.unwrap();
    send(&mut sender, method, path).await
}

/// Per source address: a connection takes a token before its TLS
/// handshake, each further request on it one more; without one the
/// connection is closed unanswered, a request gets 429. Both counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_refuses_and_counts() {
    let host = Host::new();
    let (running, addr) = host.start("requests_per_minute = 3", "").await;
    let ca = &host.pki.ca;

    // Three tokens: the connection takes one (its first request rides on
    // it), two more requests take the rest, the fourth finds none.
    let mut sender = connect(addr, ca, None).await.unwrap();
    assert_eq!(send(&mut sender, "GET", "/v1/trust").await.status, 200);
    assert_eq!(send(&mut sender, "GET", "/v1/trust/mesh").await.status, 200);
    assert_eq!(send(&mut sender, "GET", "/v1/trust/mesh").await.status, 200);
    let limited = send(&mut sender, "GET", "/v1/trust/mesh").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("60"));

    // A new connection from the same address: closed before TLS.
    let refused = connect(addr, ca, None).await;
    assert!(
        refused.is_err(),
        "a connection without a token must not be served"
    );

    let text = metrics(&running).await;
    assert_eq!(
        metric(
            &text,
            "mtlsd_bootstrap_requests_total",
            &[("result", "rate_limited")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_bootstrap_connections_total",
            &[("result", "rate_limited")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mtlsd_bootstrap_connections_total",
            &[("result", "accepted")]
        ),
        Some(1.0),
        "{text}"
    );
    promtool_check_metrics(&text);

    // A flood of plain TCP connections that never speak TLS is held to the
    // same budget and ends: the daemon still serves its admin endpoint.
    let mut idle = Vec::new();
    for _ in 0..20 {
        if let Ok(stream) = TcpStream::connect(addr).await {
            idle.push(stream);
        }
    }
    assert_eq!(http_get(running.admin_addr(), "/healthz").await.0, 200);
    drop(idle);
    running.drain(SOON).await;
}

/// Pinned bundles: a bundle holding a CA not pinned refuses start-up and
/// `mtlsd check`, naming the file and both fingerprints; on a running
/// host such a bundle is rejected by the reload and the old bundle keeps
/// serving (and is what the bootstrap endpoint serves); a pinned next CA
/// arriving is applied, and served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_a_ca_not_pinned_is_refused_at_start_check_and_reload() {
    let host = Host::new();
    let ca = &host.pki.ca;
    let next = CertificateAuthority::new("test mesh CA 2").unwrap();
    let rogue = CertificateAuthority::new("test mesh CA").unwrap();
    let pins = |list: &[&CertificateAuthority]| {
        format!(
            "sha256 = [{}]",
            list.iter()
                .map(|ca| format!("{:?}", ca_sha256(ca)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };

    // Start: pinned to another CA.
    let path = host
        .pki
        .write("mtlsd.toml", &host.toml("", &pins(&[&next])), 0o600);
    let config = mtlsd::config::Config::load_with_env(&path, std::iter::empty()).unwrap();
    let Err(error) = mtlsd::daemon::Running::start(&config).await else {
        panic!("started with a CA that is not pinned");
    };
    let shown = format!("{error:#}");
    for needle in [
        host.mesh_bundle.display().to_string(),
        ca_sha256(ca),
        ca_sha256(&next),
        "is not pinned for trust domain 'mesh'".to_owned(),
    ] {
        assert!(shown.contains(&needle), "{needle} missing: {shown}");
    }

    // check: the same, exit 1.
    let config_arg = path.display().to_string();
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_to_end(&["check", "--config", &config_arg], SOON))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    for needle in [
        host.mesh_bundle.display().to_string(),
        ca_sha256(ca),
        ca_sha256(&next),
    ] {
        assert!(stderr.contains(&needle), "{needle} missing: {stderr}");
    }

    // A pin with a typo is a config problem with its key.
    let path = host
        .pki
        .write("typo.toml", &host.toml("", "sha256 = [\"abcd\"]"), 0o600);
    let refused = mtlsd::config::Config::load_with_env(&path, std::iter::empty());
    let shown = format!("{:#}", refused.unwrap_err());
    assert!(shown.contains("trust_domains.mesh.sha256[0]"), "{shown}");

    // Running, pinned to the CA and the next one (a rotation staged).
    let (running, addr) = host.start("", &pins(&[ca, &next])).await;
    let before = get(addr, ca, "/v1/trust/mesh").await.body;
    let generation = running.store().current().number();

    for (what, swapped) in [
        (
            "a rogue CA of the same name added",
            format!("{}{}", ca.cert_pem(), rogue.cert_pem()),
        ),
        (
            "the bundle replaced by the rogue CA",
            rogue.cert_pem().to_owned(),
        ),
    ] {
        std::fs::write(&host.mesh_bundle, &swapped).unwrap();
        let outcome = running.reload(Trigger::Admin).await.unwrap();
        assert_eq!(outcome.result, ReloadResult::Rejected, "{what}");
        let reason = outcome.reason.unwrap_or_default();
        for needle in [
            host.mesh_bundle.display().to_string(),
            ca_sha256(&rogue),
            ca_sha256(ca),
            ca_sha256(&next),
        ] {
            assert!(
                reason.contains(&needle),
                "{what}: {needle} missing: {reason}"
            );
        }
        assert_eq!(running.store().current().number(), generation, "{what}");
        // The old bundle keeps serving: over the bootstrap endpoint, and
        // to peers (a client of the rogue CA is refused).
        assert_eq!(get(addr, ca, "/v1/trust/mesh").await.body, before, "{what}");
    }

    // The staged next CA arrives: applied, and served at once.
    let rotated = format!("{}{}", ca.cert_pem(), next.cert_pem());
    std::fs::write(&host.mesh_bundle, &rotated).unwrap();
    let outcome = running.reload(Trigger::Admin).await.unwrap();
    assert_eq!(
        outcome.result,
        ReloadResult::Applied,
        "{:?}",
        outcome.reason
    );
    assert_eq!(
        get(addr, ca, "/v1/trust/mesh").await.body,
        rotated.as_bytes()
    );
    running.drain(SOON).await;
}
