//! http mode: TLS termination for the API (client certificates optional)
//! and the exporters (required, `monitoring` role only), with real
//! HTTP/1.1 and h2 clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mtlsd::reject::RejectReason;
use mtlsd_devca::{IssuedCert, LeafSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::support::*;

const INVENTORY: &str = r#"
cluster = "http-test"

[hosts.api1]
sans = ["DNS:api1.test"]
roles = ["api"]

[hosts.prom1]
sans = ["DNS:prom1.test"]
roles = ["monitoring"]
"#;

/// An HTTP/1.1 upstream that answers with the headers it got, and echoes
/// bytes after a `Upgrade: echo` switch.
async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(upgraded) = upgrade.await {
                                let mut io = TokioIo::new(upgraded);
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        return Ok::<_, Infallible>(
                            Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        );
                    }
                    let mut report = String::new();
                    for (name, value) in req.headers() {
                        if name.as_str().starts_with("x-") {
                            report.push_str(&format!("{name}={}\n", value.to_str().unwrap_or("?")));
                        }
                    }
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    report.push_str(&format!("body={}\n", body.len()));
                    Ok(Response::new(Full::new(Bytes::from(report))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

struct Setup {
    pki: Pki,
    api: SocketAddr,
    metrics: SocketAddr,
    daemon: mtlsd::daemon::Running,
}

impl Setup {
    async fn start() -> Self {
        let pki = Pki::new();
        let upstream = start_upstream().await;
        let files = pki.host(
            "api1",
            &LeafSpec::new("api1", &["api1.test", "localhost", "127.0.0.1"]),
        );
        let toml = inventory_material_toml(&pki, INVENTORY, "api1", &files)
            + &inbound_toml(
                "api",
                upstream,
                "protocol = \"http\"\nclient_auth = \"optional\"",
            )
            + &inbound_toml(
                "metrics",
                upstream,
                "protocol = \"http\"\nallow_roles = [\"monitoring\"]",
            );
        let (daemon, _) = start_daemon(&pki, "mtlsd.toml", &toml).await;
        Self {
            api: daemon.local_addr("api").unwrap(),
            metrics: daemon.local_addr("metrics").unwrap(),
            pki,
            daemon,
        }
    }

    fn cert(&self, host: &str) -> IssuedCert {
        self.pki
            .ca
            .issue(&LeafSpec::new(host, &[&format!("{host}.test")]))
            .unwrap()
    }

    fn tls(&self, cert: Option<&IssuedCert>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut config = (*client_config(self.pki.ca.cert_der(), cert)).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

/// GET `path` over TLS with HTTP/1.1 or h2; returns status and body.
async fn get(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    extra: &[(&str, &str)],
) -> std::io::Result<(StatusCode, String)> {
    let h2 = tls.alpn_protocols == [b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let stream = TlsConnector::from(tls)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await?;
    let mut request = Request::get(format!("https://api.example{path}"));
    if !h2 {
        request = request.header("host", "api.example");
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_http1_and_h2_with_or_without_a_client_certificate() {
    let setup = Setup::start().await;
    let forged = [
        ("x-mtlsd-peer-host", "prom1"),
        ("x-forwarded-for", "6.6.6.6"),
    ];

    // HTTP/1.1, no certificate: anonymous, forwarded headers set by mtlsd.
    let (status, body) = get(
        setup.api,
        setup.tls(None, b"http/1.1"),
        "/v1/things",
        &forged,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-forwarded-for=127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto=https\n"), "{body}");
    assert!(body.contains("x-forwarded-host=api.example\n"), "{body}");
    assert!(!body.contains("x-mtlsd-peer-host"), "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");

    // h2 with api1's certificate: identified.
    let api1 = setup.cert("api1");
    let (status, body) = get(
        setup.api,
        setup.tls(Some(&api1), b"h2"),
        "/v1/things",
        &forged,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-mtlsd-peer-host=api1\n"), "{body}");
    assert!(body.contains("x-mtlsd-peer-roles=api\n"), "{body}");
    assert!(body.contains("x-forwarded-host=api.example\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporters_require_a_certificate_and_the_monitoring_role() {
    let setup = Setup::start().await;
    let stats = setup.daemon.stats("metrics").unwrap();

    // No certificate: the handshake is refused.
    let result = get(setup.metrics, setup.tls(None, b"http/1.1"), "/metrics", &[]).await;
    assert!(result.is_err(), "{result:?}");
    eventually("no_client_cert counted", || {
        stats.refusals(RejectReason::NoClientCert) == 1
    })
    .await;

    // api1 verifies but lacks the role: 403.
    let api1 = setup.cert("api1");
    let (status, _) = get(
        setup.metrics,
        setup.tls(Some(&api1), b"http/1.1"),
        "/metrics",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, metrics) = http_get(setup.daemon.admin_addr(), "/metrics").await;
    let denied = [
        ("listener", "metrics"),
        ("rule", "allow_roles"),
        ("decision", "deny"),
    ];
    assert_eq!(
        metric(&metrics, "mtlsd_authz_decisions_total", &denied),
        Some(1.0),
        "{metrics}"
    );

    // prom1 holds monitoring.
    let prom1 = setup.cert("prom1");
    let (status, body) = get(
        setup.metrics,
        setup.tls(Some(&prom1), b"h2"),
        "/metrics",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-mtlsd-peer-host=prom1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_switched_through() {
    let setup = Setup::start().await;
    let tcp = TcpStream::connect(setup.api).await.unwrap();
    let mut tls = TlsConnector::from(setup.tls(None, b"http/1.1"))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: api.example\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("101 response", SOON, tls.read_exact(&mut byte))
            .await
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        round_trip(&mut tls, b"over the upgraded stream")
            .await
            .unwrap(),
        b"over the upgraded stream"
    );
}
