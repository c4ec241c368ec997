//! tcp mode end to end, in-process: two daemons (a "client host" with an
//! outbound listener, a "server host" with an inbound listener) in front of
//! a real upstream, real TLS, certificates minted per test.

use std::net::SocketAddr;
use std::time::Duration;

use mtlsd::daemon::Running;
use mtlsd::reject::RejectReason;
use mtlsd_devca::{CertificateAuthority, LeafSpec};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A server host (inbound → `upstream`) and a client host (outbound →
/// the server host), both with certificates from `pki`'s CA.
struct Pair {
    server: Running,
    client: Running,
}

impl Pair {
    async fn start(pki: &Pki, upstream: SocketAddr, outbound_extra: &str) -> Self {
        Self::start_named(pki, upstream, "localhost", outbound_extra).await
    }

    async fn start_named(
        pki: &Pki,
        upstream: SocketAddr,
        server_name: &str,
        outbound_extra: &str,
    ) -> Self {
        let ca = pki.ca_file();
        let server_host = pki.host("server", &localhost_leaf("server"));
        let client_host = pki.host("client", &localhost_leaf("client"));
        let (server, _) = start_daemon(
            pki,
            "server.toml",
            &(material_toml(&server_host, &ca) + &inbound_toml("in", upstream, "")),
        )
        .await;
        let inbound = server.local_addr("in").unwrap();
        let (client, _) = start_daemon(
            pki,
            "client.toml",
            &(material_toml(&client_host, &ca)
                + &outbound_toml("out", inbound, server_name, outbound_extra)),
        )
        .await;
        Self { server, client }
    }

    fn entry(&self) -> SocketAddr {
        self.client.local_addr("out").unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_carries_bytes_to_the_upstream_and_back() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let pair = Pair::start(&pki, echo.addr, "").await;

    let mut plain = TcpStream::connect(pair.entry()).await.unwrap();
    assert_eq!(
        round_trip(&mut plain, b"hello mesh").await.unwrap(),
        b"hello mesh"
    );
    assert_eq!(round_trip(&mut plain, b"again").await.unwrap(), b"again");
    assert_eq!(echo.accepted(), 1);
    assert_eq!(pair.client.stats("out").unwrap().handshakes(), 1);
    assert_eq!(pair.server.stats("in").unwrap().handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_each_kind_of_bad_client() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let ca = pki.ca_file();
    let server_host = pki.host("server", &localhost_leaf("server"));
    let (server, _) = start_daemon(
        &pki,
        "server.toml",
        &(material_toml(&server_host, &ca) + &inbound_toml("in", echo.addr, "")),
    )
    .await;
    let addr = server.local_addr("in").unwrap();
    let ca_der = pki.ca.cert_der().clone();
    let stranger = CertificateAuthority::new("stranger CA").unwrap();

    let cases = [
        ("no client certificate", None, RejectReason::NoClientCert),
        (
            "certificate from another CA",
            Some(stranger.issue(&localhost_leaf("rogue")).unwrap()),
            RejectReason::UnknownCa,
        ),
        (
            "expired certificate",
            Some(pki.ca.issue(&localhost_leaf("old").expired()).unwrap()),
            RejectReason::Expired,
        ),
        (
            "not yet valid certificate",
            Some(
                pki.ca
                    .issue(&localhost_leaf("early").not_yet_valid())
                    .unwrap(),
            ),
            RejectReason::NotYetValid,
        ),
    ];
    for (what, cert, reason) in cases {
        let config = client_config(&ca_der, cert.as_ref());
        // TLS 1.3 clients finish their side before the server has checked
        // the certificate, so the refusal shows on first use.
        if let Ok(mut stream) = tls_connect(addr, config).await {
            assert_no_echo(&mut stream).await;
        }
        let stats = server.stats("in").unwrap();
        eventually(&format!("{what} counted as {reason}"), || {
            stats.refusals(reason) == 1
        })
        .await;
    }
    let stats = server.stats("in").unwrap();
    assert_eq!(stats.handshakes(), 0);
    assert_eq!(
        echo.accepted(),
        0,
        "a refused peer must never reach the upstream"
    );

    // And the good client still gets through.
    let good = pki.ca.issue(&localhost_leaf("good")).unwrap();
    let mut stream = tls_connect(addr, client_config(&ca_der, Some(&good)))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut stream, b"ok").await.unwrap(), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_not_valid_for_the_configured_name() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let pair = Pair::start_named(&pki, echo.addr, "db1.cluster.example", "").await;

    let mut plain = TcpStream::connect(pair.entry()).await.unwrap();
    assert_no_echo(&mut plain).await;
    let stats = pair.client.stats("out").unwrap();
    eventually("name mismatch counted", || {
        stats.refusals(RejectReason::NameMismatch) == 1
    })
    .await;
    assert_eq!(echo.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_from_another_ca() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    // The server host's certificate and bundle come from a different CA.
    let other = Pki::new();
    let server_host = other.host("server", &localhost_leaf("server"));
    let (server, _) = start_daemon(
        &other,
        "server.toml",
        &(material_toml(&server_host, &other.ca_file()) + &inbound_toml("in", echo.addr, "")),
    )
    .await;
    let client_host = pki.host("client", &localhost_leaf("client"));
    let (client, _) = start_daemon(
        &pki,
        "client.toml",
        &(material_toml(&client_host, &pki.ca_file())
            + &outbound_toml("out", server.local_addr("in").unwrap(), "localhost", "")),
    )
    .await;

    let mut plain = TcpStream::connect(client.local_addr("out").unwrap())
        .await
        .unwrap();
    assert_no_echo(&mut plain).await;
    let stats = client.stats("out").unwrap();
    eventually("unknown CA counted", || {
        stats.refusals(RejectReason::UnknownCa) == 1
    })
    .await;
    assert_eq!(echo.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_cross_byte_exact_both_ways() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let pair = Pair::start(&pki, echo.addr, "").await;

    let payload = pseudo_random(64 * 1024 * 1024, 0x6d746c73);
    let sent_digest = Sha256::digest(&payload);
    let stream = TcpStream::connect(pair.entry()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(64 * 1024 * 1024);
    within(
        "64 MiB echo",
        Duration::from_secs(120),
        read.read_to_end(&mut received),
    )
    .await
    .unwrap();
    writer.await.unwrap();
    assert_eq!(received.len(), 64 * 1024 * 1024);
    assert_eq!(Sha256::digest(&received), sent_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_connections() {
    const N: usize = 500;
    let pki = Pki::new();
    let echo = Echo::start().await;
    let pair = Pair::start(&pki, echo.addr, "").await;
    let entry = pair.entry();
    let all_open = std::sync::Arc::new(tokio::sync::Barrier::new(N));

    let mut tasks = Vec::new();
    for i in 0..N {
        let all_open = all_open.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(entry).await?;
            let first = format!("hello from {i}");
            assert_eq!(
                round_trip(&mut stream, first.as_bytes()).await?,
                first.as_bytes()
            );
            // Every connection is established before any finishes.
            all_open.wait().await;
            let second = format!("bye from {i}");
            assert_eq!(
                round_trip(&mut stream, second.as_bytes()).await?,
                second.as_bytes()
            );
            Ok::<_, std::io::Error>(())
        }));
    }
    for task in tasks {
        within("a concurrent connection", Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(echo.accepted(), N);
    assert_eq!(pair.server.stats("in").unwrap().handshakes(), N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_travels_through_the_pair() {
    let pki = Pki::new();
    let upstream = start_count_then_answer().await;
    let pair = Pair::start(&pki, upstream, "").await;

    let mut stream = TcpStream::connect(pair.entry()).await.unwrap();
    stream.write_all(&pseudo_random(100_000, 7)).await.unwrap();
    // FIN from the client must reach the upstream as EOF (through TLS
    // close_notify) while the way back stays open for the answer.
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    within(
        "answer after half-close",
        SOON,
        stream.read_to_string(&mut answer),
    )
    .await
    .unwrap();
    assert_eq!(answer, "got 100000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_new_clients_until_a_slot_frees() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let pair = Pair::start(&pki, echo.addr, "max_connections = 2").await;

    let mut first = TcpStream::connect(pair.entry()).await.unwrap();
    let mut second = TcpStream::connect(pair.entry()).await.unwrap();
    assert_eq!(round_trip(&mut first, b"1").await.unwrap(), b"1");
    assert_eq!(round_trip(&mut second, b"2").await.unwrap(), b"2");

    // The kernel accepts the TCP connection into the backlog, but mtlsd
    // does not take it: nothing is echoed while two are open.
    let mut third = TcpStream::connect(pair.entry()).await.unwrap();
    third.write_all(b"3").await.unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "third connection was served while at the limit"
    );
    assert_eq!(echo.accepted(), 2);

    drop(first);
    within("third connection served", SOON, third.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let pair = Pair::start(&pki, echo.addr, "idle_timeout = \"300ms\"").await;

    let mut stream = TcpStream::connect(pair.entry()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"x").await.unwrap(), b"x");
    let mut buf = [0u8; 1];
    let n = within("idle close", SOON, stream.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "expected the idle connection to be closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_refused_unless_opted_in() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let ca = pki.ca_file();
    let host = pki.host("server", &localhost_leaf("server"));
    let (server, _) = start_daemon(
        &pki,
        "server.toml",
        &(material_toml(&host, &ca) + &inbound_toml("in", echo.addr, "")),
    )
    .await;
    let good = pki.ca.issue(&LeafSpec::new("c", &["localhost"])).unwrap();
    let tls12_only = {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.cert_der().clone()).unwrap();
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(mtlsd_reload::provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![good.cert_der.clone()], good.key_der())
                .unwrap(),
        )
    };
    let addr = server.local_addr("in").unwrap();
    assert!(tls_connect(addr, tls12_only.clone()).await.is_err());
    let stats = server.stats("in").unwrap();
    eventually("TLS 1.2 refused as protocol", || {
        stats.refusals(RejectReason::Protocol) == 1
    })
    .await;

    let (opted_in, _) = start_daemon(
        &pki,
        "server12.toml",
        &(material_toml(&host, &ca)
            + "[tls]\nmin_version = \"1.2\"\n"
            + &inbound_toml("in", echo.addr, "")),
    )
    .await;
    let mut stream = tls_connect(opted_in.local_addr("in").unwrap(), tls12_only)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut stream, b"v12").await.unwrap(), b"v12");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_cut_off_at_the_handshake_timeout() {
    let pki = Pki::new();
    let echo = Echo::start().await;
    let ca = pki.ca_file();
    let host = pki.host("server", &localhost_leaf("server"));
    let (server, _) = start_daemon(
        &pki,
        "server.toml",
        &(material_toml(&host, &ca)
            + &inbound_toml("in", echo.addr, "handshake_timeout = \"300ms\"")),
    )
    .await;
    // Connects, never says a word.
    let mut silent = TcpStream::connect(server.local_addr("in").unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let n = within("handshake timeout", SOON, silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(
        server.stats("in").unwrap().refusals(RejectReason::Timeout),
        1
    );
    assert_eq!(echo.accepted(), 0);
}
