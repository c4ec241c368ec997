//! grpc mode end to end with real tonic services: a tonic client on the
//! "api1" host dials its outbound grpc listener in h2c; mtlsd carries the
//! calls over mTLS to the "server" host's inbound grpc listener, which
//! authorizes each call and hands it to a tonic server in h2c.

use std::net::SocketAddr;
use std::time::Duration;

use mtlsd::daemon::Running;
use mtlsd_devca::LeafSpec;
use mtlsd_testsvc::EchoClient;
use mtlsd_testsvc::proto::{Msg, StreamRequest};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::relay::Relay;
use crate::support::*;

const INVENTORY: &str = r#"
cluster = "grpc-test"

[hosts.server]
sans = ["DNS:server.test"]
roles = ["database"]

[hosts.api1]
sans = ["DNS:api1.test"]
roles = ["api"]

[hosts.hv1]
sans = ["DNS:hv1.test"]
roles = ["hypervisor"]
"#;

/// The server host's inbound grpc listener in front of `upstream`.
const SERVER_RULES: &str = r#"protocol = "grpc"
allow_roles = ["api", "hypervisor"]
[[inbound.routes]]
path = "/mtlsd.test.Echo/Delete*"
allow_roles = ["admin"]
[[inbound.routes]]
path = "/mtlsd.test.Echo/Slow"
allow_roles = ["api"]
"#;

struct Cluster {
    pki: Pki,
    server: Running,
}

fn host_toml(pki: &Pki, host: &str, files: &HostFiles) -> String {
    inventory_material_toml(pki, INVENTORY, host, files)
}

impl Cluster {
    async fn start(upstream: SocketAddr) -> Self {
        let pki = Pki::new();
        let files = pki.host(
            "server",
            &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
        );
        let toml =
            host_toml(&pki, "server", &files) + &inbound_toml("db-grpc", upstream, SERVER_RULES);
        let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
        Self { pki, server }
    }

    /// Starts a client host `host` with an outbound grpc listener to the
    /// server host and returns a tonic channel through it.
    async fn client(&self, host: &str) -> (Running, EchoClient<Channel>) {
        let files = self
            .pki
            .host(host, &LeafSpec::new(host, &[&format!("{host}.test")]));
        let toml = host_toml(&self.pki, host, &files)
            + &outbound_toml(
                "to-db",
                self.server.local_addr("db-grpc").unwrap(),
                "localhost",
                "protocol = \"grpc\"\nexpect_roles = [\"database\"]",
            );
        let (daemon, _) = start_daemon(&self.pki, &format!("{host}.toml"), &toml).await;
        let channel =
            Channel::from_shared(format!("http://{}", daemon.local_addr("to-db").unwrap()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let client = EchoClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        (daemon, client)
    }
}

fn msg(payload: &[u8]) -> Msg {
    Msg {
        payload: payload.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_shape_crosses_the_pair() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, mut client) = cluster.client("api1").await;

    let reply = client.unary(msg(b"hello")).await.unwrap().into_inner();
    assert_eq!(reply.payload, b"hello");

    let mut stream = client
        .server_stream(StreamRequest {
            count: 100,
            size: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while let Some(item) = stream.message().await.unwrap() {
        assert_eq!(item.payload.len(), 1000);
        received += 1;
    }
    assert_eq!(received, 100);

    let outbound = tokio_stream::iter((0..100).map(|_| msg(&[7u8; 500])));
    let reply = client.client_stream(outbound).await.unwrap().into_inner();
    assert_eq!(reply.payload, b"100 messages, 50000 bytes");

    let outbound = tokio_stream::iter((0..100u8).map(|i| msg(&[i; 10])));
    let mut replies = client.bidi(outbound).await.unwrap().into_inner();
    let mut seen = 0u8;
    while let Some(item) = replies.message().await.unwrap() {
        assert_eq!(item.payload, vec![seen; 10]);
        seen += 1;
    }
    assert_eq!(seen, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixteen_mebibyte_message_round_trips() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, mut client) = cluster.client("api1").await;
    let payload = pseudo_random(16 * 1024 * 1024, 16);
    let reply = client.unary(msg(&payload)).await.unwrap().into_inner();
    assert!(
        reply.payload == payload,
        "16 MiB payload changed in transit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, client) = cluster.client("api1").await;
    let calls = (0..1000u32).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            // Each call waits 100 ms upstream, so they overlap.
            client
                .slow(StreamRequest {
                    count: 100,
                    size: i,
                })
                .await
        })
    });
    let results = within(
        "1000 calls",
        Duration::from_secs(60),
        futures_join_all(calls),
    )
    .await;
    let failed: Vec<_> = results
        .into_iter()
        .filter_map(|r| r.unwrap().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

async fn futures_join_all<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_rules_deny_with_permission_denied_naming_the_rule() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, mut api) = cluster.client("api1").await;
    let status = api.delete_thing(msg(b"x")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("route /mtlsd.test.Echo/Delete* allows roles [admin]"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("host 'api1'"),
        "{}",
        status.message()
    );
    // Unary is allowed for api by the listener's roles.
    api.unary(msg(b"ok")).await.unwrap();

    // hv1 may call what the listener allows, but not Slow (api only).
    let (_hv1, mut hv) = cluster.client("hv1").await;
    hv.unary(msg(b"ok")).await.unwrap();
    let status = hv
        .slow(StreamRequest { count: 0, size: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let (_, metrics) = http_get(cluster.server.admin_addr(), "/metrics").await;
    for rule in ["/mtlsd.test.Echo/Delete*", "/mtlsd.test.Echo/Slow"] {
        assert_eq!(decisions(&metrics, rule, "deny"), 1.0, "{metrics}");
        assert_eq!(
            requests(&metrics, rule, "PERMISSION_DENIED"),
            1.0,
            "{metrics}"
        );
    }
    assert_eq!(requests(&metrics, "default", "OK"), 2.0, "{metrics}");
}

/// A Slow call (the daemon answers after `ms` milliseconds) in the
/// background.
fn slow_call(
    client: &EchoClient<Channel>,
    ms: u32,
) -> tokio::task::JoinHandle<Result<tonic::Response<Msg>, tonic::Status>> {
    let mut client = client.clone();
    tokio::spawn(async move { client.slow(StreamRequest { count: ms, size: 0 }).await })
}

/// The server's `mtlsd_authz_decisions_total` for `rule` and `decision`
/// on its grpc listener (0 when the series is absent).
fn decisions(metrics: &str, rule: &str, decision: &str) -> f64 {
    let labels = [
        ("listener", "db-grpc"),
        ("rule", rule),
        ("decision", decision),
    ];
    metric(metrics, "mtlsd_authz_decisions_total", &labels).unwrap_or(0.0)
}

/// The server's `mtlsd_grpc_requests_total` for `rule` and `status`.
fn requests(metrics: &str, rule: &str, status: &str) -> f64 {
    let labels = [
        ("listener", "db-grpc"),
        ("rule", rule),
        ("grpc_status", status),
    ];
    metric(metrics, "mtlsd_grpc_requests_total", &labels).unwrap_or(0.0)
}

/// How many calls under `rule` the server's duration histogram counted.
fn timed(metrics: &str, rule: &str) -> f64 {
    let labels = [("listener", "db-grpc"), ("rule", rule)];
    metric(
        metrics,
        "mtlsd_grpc_request_duration_seconds_count",
        &labels,
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_set_by_mtlsd_and_forged_ones_dropped() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, mut client) = cluster.client("api1").await;
    let mut request = tonic::Request::new(msg(b""));
    let metadata = request.metadata_mut();
    metadata.insert("x-mtlsd-peer-host", "server".parse().unwrap());
    metadata.insert("x-mtlsd-peer-roles", "admin".parse().unwrap());
    metadata.insert("x-forwarded-client-cert", "Hash=forged".parse().unwrap());
    let report =
        String::from_utf8(client.headers(request).await.unwrap().into_inner().payload).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 3, "{report}");
    assert!(lines.contains(&"x-mtlsd-peer-host=api1"), "{report}");
    assert!(lines.contains(&"x-mtlsd-peer-roles=api"), "{report}");
    let api1_cert = std::fs::read_to_string(cluster.pki.path("api1.crt")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(api1_cert.as_bytes()).unwrap();
    let expected_hash = mtlsd_expiry::Fingerprint::of(&der_bytes(der)).to_hex();
    assert!(
        report.contains(&format!(
            "x-forwarded-client-cert=Hash={expected_hash};Subject=\""
        )),
        "{report}"
    );
    assert!(report.contains(";DNS=api1.test"), "{report}");
    assert!(!report.contains("forged"), "{report}");
}

fn der_bytes(der: rustls_pki_types::CertificateDer<'static>) -> Vec<u8> {
    der.as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_unavailable() {
    // Nothing listens on the upstream port.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let cluster = Cluster::start(closed).await;
    let (_api1, mut client) = cluster.client("api1").await;
    let status = client.unary(msg(b"x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("mtlsd cannot reach the local daemon"),
        "{}",
        status.message()
    );
    // An allowed call that fails is counted under its rule and status.
    let (_, metrics) = http_get(cluster.server.admin_addr(), "/metrics").await;
    assert_eq!(
        requests(&metrics, "default", "UNAVAILABLE"),
        1.0,
        "{metrics}"
    );
    assert_eq!(requests(&metrics, "default", "OK"), 0.0, "{metrics}");
}

/// The per-call series (decision, status, duration) follow each call's
/// rule, also when calls on one held connection alternate between rules
/// (mtlsd keeps the last rule's series per connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_metrics_follow_each_calls_rule_on_one_connection() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, mut api) = cluster.client("api1").await;
    api.unary(msg(b"1")).await.unwrap();
    api.unary(msg(b"2")).await.unwrap();
    api.slow(StreamRequest { count: 0, size: 0 }).await.unwrap();
    api.unary(msg(b"3")).await.unwrap();
    api.slow(StreamRequest { count: 0, size: 0 }).await.unwrap();
    api.unary(msg(b"4")).await.unwrap();
    let (_, metrics) = http_get(cluster.server.admin_addr(), "/metrics").await;
    for (rule, calls) in [("default", 4.0), ("/mtlsd.test.Echo/Slow", 2.0)] {
        assert_eq!(
            decisions(&metrics, rule, "allow"),
            calls,
            "{rule}: {metrics}"
        );
        assert_eq!(requests(&metrics, rule, "OK"), calls, "{rule}: {metrics}");
        assert_eq!(timed(&metrics, rule), calls, "{rule}: {metrics}");
    }

    // A call the client gives up on while the daemon has not answered yet
    // (Slow waits 5 s upstream) is counted too: CANCELLED, with its time.
    let call = slow_call(&api, 5000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let slow = "/mtlsd.test.Echo/Slow";
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let (_, metrics) = http_get(cluster.server.admin_addr(), "/metrics").await;
        // The status and the duration are two series: a scrape may fall
        // between their updates.
        if requests(&metrics, slow, "CANCELLED") == 1.0 && timed(&metrics, slow) == 3.0 {
            assert_eq!(decisions(&metrics, slow, "allow"), 3.0, "{metrics}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled call was not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_honoured() {
    use http_body_util::{BodyExt, Full};
    use prost::Message;

    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (api1, _) = cluster.client("api1").await;
    // A raw h2c client: tonic would enforce grpc-timeout itself, and this
    // must show that mtlsd does.
    let tcp = tokio::net::TcpStream::connect(api1.local_addr("to-db").unwrap())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let message = StreamRequest {
        count: 3000,
        size: 0,
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let request = http::Request::post("http://server.test/mtlsd.test.Echo/Slow")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let started = std::time::Instant::now();
    let response = within("response", SOON, sender.send_request(request))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let status = response.headers().get("grpc-status").cloned();
    let message = response.headers().get("grpc-message").cloned();
    let _ = response.into_body().collect().await;
    assert_eq!(status.unwrap(), "4", "grpc-message: {message:?}");
    assert!(
        message
            .unwrap()
            .to_str()
            .unwrap()
            .contains("deadline passed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_calls_finish() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, client) = cluster.client("api1").await;
    let in_flight = slow_call(&client, 700);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The server host drains: GOAWAY to its peers, in-flight calls finish.
    let drained = within("drain", SOON, cluster.server.drain(Duration::from_secs(5))).await;
    assert_eq!(drained.forced, 0, "the in-flight call had to be cut");
    in_flight.await.unwrap().unwrap();
}

/// Resident set size of this process (upstream, both daemons and the
/// client all live here), from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_make_mtlsd_buffer_the_stream() {
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let (_api1, mut client) = cluster.client("api1").await;
    // 256 MiB on offer in 64 KiB messages.
    let mut stream = client
        .server_stream(StreamRequest {
            count: 4096,
            size: 64 * 1024,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let before = rss_bytes();
    // Stop reading. Flow control must stop the producer within a few
    // windows instead of mtlsd buffering the rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_bytes().saturating_sub(before);
    // RSS is the whole test process's, and other tests run alongside
    // (52 MiB was seen once against an earlier 48 MiB bound); buffering
    // the stream would be 256 MiB.
    assert!(
        grown < 96 * 1024 * 1024,
        "RSS grew by {} MiB while the reader stalled",
        grown / (1024 * 1024)
    );
    // The stream still works after the stall.
    for _ in 0..10 {
        assert_eq!(
            stream.message().await.unwrap().unwrap().payload.len(),
            64 * 1024
        );
    }
}

/// The pooled mTLS connection of an outbound listener is re-judged too:
/// when the server it dials loses the role the listener expects (here in
/// the client host's inventory), the pooled connection closes after the
/// grace period, no new call reaches the server, and the closing is
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_to_a_server_that_lost_its_role_is_closed() {
    use mtlsd::reloading::{ReloadResult, Trigger};
    let cluster = Cluster::start(mtlsd_testsvc::serve().await).await;
    let pki = &cluster.pki;
    let files = pki.host("api1", &LeafSpec::new("api1", &["api1.test"]));
    // api1 has its own copy of the inventory, which it reloads alone.
    let own_inventory = pki.write("api1-inventory.toml", INVENTORY, 0o644);
    let toml = material_toml(&files, &pki.ca_file()).replacen(
        "[identity]\n",
        &format!("[inventory]\npath = {own_inventory:?}\n\n[identity]\nhost = \"api1\"\n"),
        1,
    ) + "[reload]\nwatch = false\ndrain_grace = \"1s\"\n"
        + &outbound_toml(
            "to-db",
            cluster.server.local_addr("db-grpc").unwrap(),
            "localhost",
            "protocol = \"grpc\"\nexpect_roles = [\"database\"]",
        );
    let (api1, _) = start_daemon(pki, "api1-own.toml", &toml).await;
    let entry = api1.local_addr("to-db").unwrap();
    let channel = Channel::from_shared(format!("http://{entry}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = EchoClient::new(channel);
    assert_eq!(
        client
            .unary(msg(b"before"))
            .await
            .unwrap()
            .into_inner()
            .payload,
        b"before"
    );
    let handshakes_before = api1.stats("to-db").unwrap().handshakes();

    // The server now holds `storage`, not `database`.
    pki.write(
        "api1-inventory.toml",
        &INVENTORY.replacen("roles = [\"database\"]", "roles = [\"storage\"]", 1),
        0o644,
    );
    let outcome = api1.reload(Trigger::Admin).await.unwrap();
    assert_eq!(outcome.result, ReloadResult::Applied, "{outcome}");
    assert_eq!(outcome.closing, 1, "{outcome}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = client.unary(msg(b"after")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let stats = api1.stats("to-db").unwrap();
    assert_eq!(
        stats.handshakes(),
        handshakes_before,
        "a new connection was admitted"
    );
    assert!(stats.refusals(mtlsd::reject::RejectReason::RoleNotAllowed) >= 1);
    let metrics = http_get(api1.admin_addr(), "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "mtlsd_connections_closed_total",
            &[("listener", "to-db"), ("reason", "role_not_allowed")]
        ),
        Some(1.0)
    );
}

/// The pooled h2c connection to the local daemon: replaced without a
/// failed call when the daemon restarts (GOAWAY, then a new process on the
/// same port); closed after `idle_timeout` without a call; dropped when
/// the daemon stops answering (keep-alive PINGs), after which the next
/// call gets a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooled_daemon_connection_survives_restarts_and_closes_when_idle_or_silent() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon_addr = port.local_addr().unwrap();
    let (stop_first, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(mtlsd_testsvc::serve_until(port, async {
        let _ = stopped.await;
    }));
    let relay = Relay::start(daemon_addr).await;
    let pki = Pki::new();
    let files = pki.host(
        "server",
        &LeafSpec::new("server", &["server.test", "localhost", "127.0.0.1"]),
    );
    // idle_timeout 3 s: PINGs every second, answered within the 1 s
    // handshake timeout.
    let rules = format!("idle_timeout = \"3s\"\nhandshake_timeout = \"1s\"\n{SERVER_RULES}");
    let toml = host_toml(&pki, "server", &files) + &inbound_toml("db-grpc", relay.addr, &rules);
    let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
    let cluster = Cluster { pki, server };
    let (_api1, mut client) = cluster.client("api1").await;
    let call = |client: &mut EchoClient<Channel>, what: &'static str| {
        let mut client = client.clone();
        async move {
            let answer = client.unary(msg(what.as_bytes())).await;
            assert_eq!(
                answer.unwrap().into_inner().payload,
                what.as_bytes(),
                "{what}"
            );
        }
    };
    call(&mut client, "first").await;
    call(&mut client, "pooled").await;
    assert_eq!(relay.accepted(), 1, "one pooled connection");

    // The daemon restarts: GOAWAY, its connections close, a new process
    // binds the same port. The next call reaches it.
    stop_first.send(()).unwrap();
    within("the old daemon to finish", Duration::from_secs(10), first)
        .await
        .unwrap();
    let port = tokio::net::TcpListener::bind(daemon_addr).await.unwrap();
    tokio::spawn(mtlsd_testsvc::serve_until(port, std::future::pending()));
    call(&mut client, "after restart").await;
    assert_eq!(relay.accepted(), 2, "a new connection");

    // No call for longer than idle_timeout: mtlsd closes it.
    eventually("the idle pooled connection to close", || relay.open() == 0).await;
    call(&mut client, "after idle").await;
    assert_eq!(relay.accepted(), 3);

    // The daemon's host stops answering without closing anything, a call
    // in flight: the unanswered PING drops the connection (idle_timeout
    // does not apply while a stream is open), the call fails instead of
    // hanging, and the next call dials anew.
    relay.freeze();
    let hung = within(
        "the call to the silent daemon to fail",
        Duration::from_secs(8),
        client.clone().unary(msg(b"into silence")),
    )
    .await
    .unwrap_err();
    assert_eq!(hung.code(), Code::Unavailable, "{hung:?}");
    eventually("the silent pooled connection to be dropped", || {
        relay.open() == 0
    })
    .await;
    call(&mut client, "after silence").await;
    assert_eq!(relay.accepted(), 4);
}
