//! Idle and abusive HTTP/2 peers (issue 20): an authenticated peer that
//! completes TLS and never sends the preface, one that sends it and goes
//! quiet, and one that resets streams as fast as it can. Raw frames over
//! real mTLS, so nothing in a client library hides what the server does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mtlsd::daemon::Running;
use mtlsd::reject::RejectReason;
use mtlsd_devca::LeafSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;

const INVENTORY: &str = r#"
cluster = "h2"

[hosts.server]
sans = ["DNS:server.test"]
roles = ["database"]

[hosts.api1]
sans = ["DNS:api1.test"]
roles = ["api"]
"#;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const GOAWAY: u8 = 0x7;

struct Server {
    pki: Pki,
    daemon: Running,
    client: Arc<rustls::ClientConfig>,
}

impl Server {
    async fn start(extra: &str) -> Self {
        let pki = Pki::new();
        let files = pki.host(
            "server",
            &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
        );
        let upstream = mtlsd_testsvc::serve().await;
        let toml = inventory_material_toml(&pki, INVENTORY, "server", &files)
            + &inbound_toml(
                "rpc",
                upstream,
                &format!("protocol = \"grpc\"\nallow_roles = [\"api\"]\n{extra}"),
            );
        let (daemon, _) = start_daemon(&pki, "server.toml", &toml).await;
        let api1 = pki
            .ca
            .issue(&LeafSpec::new("api1", &["api1.test"]))
            .unwrap();
        let mut config = (*client_config(pki.ca.cert_der(), Some(&api1))).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            pki,
            daemon,
            client: Arc::new(config),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.daemon.local_addr("rpc").unwrap()
    }

    async fn tls(&self) -> TlsStream<TcpStream> {
        tls_connect(self.addr(), self.client.clone()).await.unwrap()
    }

    async fn ended(&self, reason: &str) -> f64 {
        let text = http_get(self.daemon.admin_addr(), "/metrics").await.1;
        metric(
            &text,
            "mtlsd_http_connections_ended_total",
            &[("listener", "rpc"), ("reason", reason)],
        )
        .unwrap_or(0.0)
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads frames until one of `kind` arrives (Some) or the connection ends
/// (None); panics if neither happens within `limit`.
async fn until_frame(stream: &mut TlsStream<TcpStream>, kind: u8, limit: Duration) -> Option<u8> {
    let read = async {
        loop {
            let mut header = [0u8; 9];
            if stream.read_exact(&mut header).await.is_err() {
                return None;
            }
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return None;
            }
            if header[3] == kind {
                return Some(kind);
            }
        }
    };
    within("a frame or the end of the connection", limit, read).await
}

/// Completes TLS and sends nothing: dropped after the handshake timeout,
/// so such peers cannot hold every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_sends_the_preface_is_dropped_and_frees_its_slot() {
    let server = Server::start("handshake_timeout = \"1s\"\nmax_connections = 2\n").await;
    let mut silent = vec![server.tls().await, server.tls().await];
    for stream in &mut silent {
        // The server's own SETTINGS may arrive; then the end.
        let mut sink = Vec::new();
        let _ = within(
            "the server closing a silent connection",
            Duration::from_secs(4),
            stream.read_to_end(&mut sink),
        )
        .await;
    }
    assert_eq!(server.ended("no_first_bytes").await, 2.0);
    // The slots are free again: a real caller gets through.
    let mut caller = server.tls().await;
    caller.write_all(PREFACE).await.unwrap();
    caller.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    let settings = until_frame(&mut caller, 0x4, SOON).await;
    assert_eq!(settings, Some(0x4));
    drop(server.pki);
}

/// Sends the preface and then nothing: GOAWAY after idle_timeout, then
/// the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway_then_closes() {
    let server = Server::start("idle_timeout = \"2s\"\n").await;
    let mut quiet = server.tls().await;
    quiet.write_all(PREFACE).await.unwrap();
    quiet.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    let started = tokio::time::Instant::now();
    let goaway = until_frame(&mut quiet, GOAWAY, Duration::from_secs(6)).await;
    assert_eq!(goaway, Some(GOAWAY), "no GOAWAY for an idle connection");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "GOAWAY before idle_timeout"
    );
    let end = until_frame(&mut quiet, 0xff, Duration::from_secs(4)).await;
    assert_eq!(end, None, "the idle connection stayed open after GOAWAY");
    assert_eq!(server.ended("idle").await, 1.0);
}

/// A peer that starts a call, waits for the answer to begin (so mtlsd has
/// accepted and forwarded the stream) and resets it, as fast as it can:
/// GOAWAY long before 3,000 streams, counted; streams that complete do
/// not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_flood_gets_goaway_and_is_counted() {
    let server = Server::start("").await;
    let mut flood = server.tls().await;
    flood.write_all(PREFACE).await.unwrap();
    flood.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    // :method POST, :scheme http, :path .../ServerStream, :authority x,
    // content-type application/grpc (HPACK, no Huffman).
    let path = b"/mtlsd.test.Echo/ServerStream";
    let mut block = vec![0x83, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path);
    block.extend([0x01, 0x01, b'x', 0x0f, 0x10, 16]);
    block.extend_from_slice(b"application/grpc");
    // StreamRequest { count: 1000, size: 10 } as one gRPC message.
    let message = [0x00, 0, 0, 0, 5, 0x08, 0xe8, 0x07, 0x10, 0x0a];
    // Rounds of 50 streams: start them, wait until each has its answer's
    // HEADERS (accepted and forwarded), reset them all.
    let run = async {
        let mut started = 0u32;
        while started < 3000 {
            let ids: Vec<u32> = (started..started + 50).map(|i| 2 * i + 1).collect();
            started += 50;
            let mut out = Vec::new();
            for id in &ids {
                out.extend(frame(0x1, 0x4, *id, &block));
                out.extend(frame(0x0, 0x1, *id, &message));
            }
            if flood.write_all(&out).await.is_err() {
                return (started, None);
            }
            let mut answered = 0;
            while answered < ids.len() {
                let mut header = [0u8; 9];
                if flood.read_exact(&mut header).await.is_err() {
                    return (started, None);
                }
                let len = usize::from(header[0]) << 16
                    | usize::from(header[1]) << 8
                    | usize::from(header[2]);
                let mut payload = vec![0u8; len];
                if flood.read_exact(&mut payload).await.is_err() {
                    return (started, None);
                }
                if header[3] == GOAWAY && payload.len() >= 8 {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    return (started, Some(code));
                }
                if header[3] == 0x1 {
                    answered += 1;
                }
            }
            let mut resets = Vec::new();
            for id in &ids {
                resets.extend(frame(0x3, 0, *id, &8u32.to_be_bytes()));
            }
            if flood.write_all(&resets).await.is_err() {
                return (started, None);
            }
        }
        (started, None)
    };
    let (streams, goaway) = within("the flood", Duration::from_secs(60), run).await;
    assert_eq!(
        goaway,
        Some(0),
        "after {streams} streams: no graceful GOAWAY"
    );
    assert!(
        streams < 1000,
        "{streams} streams were forwarded before GOAWAY"
    );
    assert_eq!(server.ended("reset_flood").await, 1.0);
}

/// The handshakes of a grpc listener run on the handshake thread (issue
/// 15): every hostile client is still refused, counted under its reason
/// and closed there — silent (the handshake timeout), not TLS at all, a
/// truncated ClientHello, no certificate, another CA's, an expired one, a
/// SAN of no inventory host (roles are judged per call here) — while a
/// caller already
/// connected keeps getting answers, and a new one still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_off_the_data_path_while_a_caller_goes_on() {
    let server = Server::start("handshake_timeout = \"500ms\"\n").await;
    let stats = server.daemon.stats("rpc").unwrap();
    let mut held = server.tls().await;
    held.write_all(PREFACE).await.unwrap();
    held.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    assert_eq!(until_frame(&mut held, 0x4, SOON).await, Some(0x4));
    let (wakes_before, _) = thread_activity("mtlsd-handshake");

    // Plain TCP: says nothing, says something that is not TLS, or starts a
    // ClientHello and stops.
    let raw_cases: [(&str, &[u8], RejectReason); 3] = [
        ("silent", b"", RejectReason::Timeout),
        (
            "not TLS",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            RejectReason::Protocol,
        ),
        (
            "truncated ClientHello",
            &[
                0x16, 0x03, 0x01, 0x00, 0x80, 0x01, 0x00, 0x00, 0x7c, 0x03, 0x03,
            ],
            RejectReason::Timeout,
        ),
    ];
    let stranger = mtlsd_devca::CertificateAuthority::new("stranger CA").unwrap();
    let leaf = |spec: LeafSpec| Some(server.pki.ca.issue(&spec).unwrap());
    let tls_cases = [
        ("no certificate", None, RejectReason::NoClientCert),
        (
            "another CA",
            Some(
                stranger
                    .issue(&LeafSpec::new("api1", &["api1.test"]))
                    .unwrap(),
            ),
            RejectReason::UnknownCa,
        ),
        (
            "an expired certificate",
            leaf(LeafSpec::new("api1", &["api1.test"]).expired()),
            RejectReason::Expired,
        ),
        (
            "a SAN in no inventory host",
            leaf(LeafSpec::new("x", &["nobody.test"])),
            RejectReason::SanNotInInventory,
        ),
    ];
    // After each client: its refusal counted once, under its reason, and
    // the connected caller still answered.
    let mut ping = 0u64;
    let mut counted_and_held_answers = async |what: &str, reason: RejectReason, before: u64| {
        eventually(&format!("{what} counted as {reason}"), || {
            stats.refusals(reason) == before + 1
        })
        .await;
        ping += 1;
        held.write_all(&frame(0x6, 0, 0, &ping.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(until_frame(&mut held, 0x6, SOON).await, Some(0x6));
    };
    for (what, bytes, reason) in raw_cases {
        let before = stats.refusals(reason);
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut sink = Vec::new();
        let _ = within(what, SOON, tcp.read_to_end(&mut sink)).await;
        counted_and_held_answers(what, reason, before).await;
    }
    for (what, cert, reason) in tls_cases {
        let mut config = (*client_config(server.pki.ca.cert_der(), cert.as_ref())).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let before = stats.refusals(reason);
        // TLS 1.3: the client finishes before the server judges it; the
        // refusal shows when it reads.
        if let Ok(mut stream) = tls_connect(server.addr(), Arc::new(config)).await {
            let mut sink = Vec::new();
            let _ = within(what, SOON, stream.read_to_end(&mut sink)).await;
        }
        counted_and_held_answers(what, reason, before).await;
    }
    let (wakes_after, _) = thread_activity("mtlsd-handshake");
    assert!(
        wakes_after > wakes_before,
        "the refusals were not judged on the handshake thread"
    );

    // A new caller still gets through.
    let mut caller = server.tls().await;
    caller.write_all(PREFACE).await.unwrap();
    caller.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    assert_eq!(until_frame(&mut caller, 0x4, SOON).await, Some(0x4));
}
