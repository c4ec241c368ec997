//! What a reload keeps (issue 15): the pooled mTLS connections of an
//! outbound grpc listener and the TLS session caches on both sides survive
//! a reload that changes neither trust nor this host's certificate; any
//! trust change starts fresh ones (a session or connection made under the
//! old trust must not admit anybody the new trust would refuse), and so
//! does any new certificate of this host, renewal included: peers must see
//! it at their next call (their expiry metrics and rotation readiness read
//! what each handshake shows).
//!
//! | change (on the side named) | pooled connection to the server | client side's cached sessions | server side's session store |
//! |---|---|---|---|
//! | client: config only (`reload.drain_grace`) | kept (no handshake) | kept | — |
//! | client: leaf renewed, same names | new, full handshake, made before the old one is left | dropped | — |
//! | client: bundle gains a CA | new, full handshake | dropped | — |
//! | client: re-issued by another trusted CA | new, full handshake | dropped | — |
//! | server: config only | kept | — | kept: a client resumes |
//! | server: leaf renewed | kept (not judged again: trust unchanged) | — | dropped: full handshake, new certificate shown |
//! | server: bundle gains a CA | judged again (still qualifies) | — | dropped: full handshake |
//! | server: re-issued by another trusted CA | kept | — | dropped: full handshake, new chain shown |
//!
//! Each row makes exactly one change, reloads the side it changed, and
//! reads the server side's `mtlsd_handshakes_completed_total` and
//! `mtlsd_handshakes_resumed_total` for the listener the pair uses; every
//! call before and after must succeed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mtlsd::daemon::Running;
use mtlsd::reloading::{ReloadResult, Trigger};
use mtlsd_devca::{CertificateAuthority, LeafSpec};
use mtlsd_testsvc::EchoClient;
use mtlsd_testsvc::proto::Msg;
use tonic::transport::Channel;

use crate::support::relay::Relay;
use crate::support::*;

const NO_WATCH: &str = "[reload]\nwatch = false\n\n";

struct Pair {
    pki: Pki,
    client: Running,
    server: Running,
    client_files: HostFiles,
    server_files: HostFiles,
    client_bundle: PathBuf,
    server_bundle: PathBuf,
    rpc: EchoClient<Channel>,
    /// The server side's tcp listener, for a rustls client's own sessions.
    server_raw: SocketAddr,
}

impl Pair {
    async fn start() -> Self {
        Self::start_with_relay().await.0
    }

    /// [`Pair::start`] with a [`Relay`] between the client side's outbound
    /// listener and the server side's grpc listener.
    async fn start_with_relay() -> (Self, Relay) {
        let pki = Pki::new();
        let grpc_upstream = mtlsd_testsvc::serve().await;
        let echo = Echo::start().await;
        let client_bundle = pki.write("client-bundle.pem", pki.ca.cert_pem(), 0o644);
        let server_bundle = pki.write("server-bundle.pem", pki.ca.cert_pem(), 0o644);
        let server_files = pki.host("server", &localhost_leaf("server"));
        let toml = material_toml(&server_files, &server_bundle)
            + NO_WATCH
            + &inbound_toml("db-grpc", grpc_upstream, "protocol = \"grpc\"")
            + &inbound_toml("raw", echo.addr, "");
        let (server, _) = start_daemon(&pki, "server.toml", &toml).await;
        let relay = Relay::start(server.local_addr("db-grpc").unwrap()).await;
        let client_files = pki.host("client", &LeafSpec::new("client", &["client.test"]));
        let toml = material_toml(&client_files, &client_bundle)
            + NO_WATCH
            + &outbound_toml("to-db", relay.addr, "localhost", "protocol = \"grpc\"");
        let (client, _) = start_daemon(&pki, "client.toml", &toml).await;
        let channel =
            Channel::from_shared(format!("http://{}", client.local_addr("to-db").unwrap()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let server_raw = server.local_addr("raw").unwrap();
        // The echo's accept task runs on the test's runtime; it needs no handle.
        let _ = echo.accepted();
        let pair = Self {
            pki,
            client,
            server,
            client_files,
            server_files,
            client_bundle,
            server_bundle,
            rpc: EchoClient::new(channel),
            server_raw,
        };
        (pair, relay)
    }

    /// Twenty unary calls through the pair; each must come back intact.
    async fn calls(&mut self, when: &str) {
        for i in 0..20u8 {
            let payload = vec![i; 64];
            let reply = self
                .rpc
                .unary(Msg {
                    payload: payload.clone(),
                })
                .await
                .unwrap_or_else(|status| panic!("call {i} {when}: {status}"));
            assert_eq!(reply.into_inner().payload, payload, "call {i} {when}");
        }
    }

    /// (completed, resumed) handshakes on the server side's `listener`.
    async fn server_handshakes(&self, listener: &str) -> (f64, f64) {
        let (_, text) = http_get(self.server.admin_addr(), "/metrics").await;
        let get = |name| metric(&text, name, &[("listener", listener)]).unwrap_or(0.0);
        (
            get("mtlsd_handshakes_completed_total"),
            get("mtlsd_handshakes_resumed_total"),
        )
    }

    /// The client side's leaf renewed with the same names, and reloaded.
    async fn renew_client(&self) {
        let renewed = self
            .pki
            .ca
            .issue(&LeafSpec::new("client", &["client.test"]))
            .unwrap();
        replace(&self.client_files.key, &renewed.key_pem);
        replace(&self.client_files.cert, &renewed.cert_pem);
        Self::reload(&self.client, "client leaf renewed").await;
    }

    async fn reload(daemon: &Running, what: &str) {
        let outcome = daemon.reload(Trigger::Admin).await.unwrap();
        assert_eq!(
            outcome.result,
            ReloadResult::Applied,
            "{what}: {:?}",
            outcome.reason
        );
    }
}

/// Writes `contents` beside `path` with its mode and renames it over.
fn replace(path: &std::path::Path, contents: &str) {
    let mode = std::fs::metadata(path).unwrap().permissions();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, mode).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A bundle that also holds another CA: trust changes, nobody is cut off.
fn widened(pki: &Pki) -> String {
    let other = CertificateAuthority::new("another CA").unwrap();
    format!("{}{}", pki.ca.cert_pem(), other.cert_pem())
}

/// Adds `drain_grace = "SECS"` to a daemon's `[reload]` section: a
/// config-only change that applies live.
fn config_only_change(pki: &Pki, file: &str, secs: u32) {
    let path = pki.path(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        NO_WATCH,
        &format!("[reload]\nwatch = false\ndrain_grace = \"{secs}s\"\n\n"),
        1,
    );
    replace(&path, &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reloads_that_keep_trust_and_certificate_keep_pooled_connections_and_sessions() {
    let mut pair = Pair::start().await;
    pair.calls("at the start").await;
    let (start, _) = pair.server_handshakes("db-grpc").await;
    assert_eq!(start, 1.0, "the pair's first call opens one connection");

    // Client: a config-only change. The pooled connection stays.
    config_only_change(&pair.pki, "client.toml", 7);
    Pair::reload(&pair.client, "client config only").await;
    pair.calls("after the client's config change").await;
    let (after_config, resumed_config) = pair.server_handshakes("db-grpc").await;
    assert_eq!(
        after_config, start,
        "a config-only reload must keep the pooled connection"
    );

    // Client: leaf renewed with the same names. The server must see it at
    // the next call: a new connection, a full handshake.
    pair.renew_client().await;
    pair.calls("after the client's renewal").await;
    // The new connection is made beside the old one, which carries calls
    // until it is up (see the make-before-break test below).
    let (after_renewal, resumed_renewal) = loop {
        let counts = pair.server_handshakes("db-grpc").await;
        if counts.0 > after_config {
            break counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    pair.calls("after the client's renewal reached the server")
        .await;
    assert_eq!(
        pair.server_handshakes("db-grpc").await.0,
        after_config + 1.0,
        "a renewal must reach the server with exactly one new connection"
    );
    assert_eq!(
        resumed_renewal, resumed_config,
        "with a full handshake, not a session made with the old certificate"
    );

    // Client: its bundle gains a CA. Trust changed: new pool, full handshake.
    replace(&pair.client_bundle, &widened(&pair.pki));
    Pair::reload(&pair.client, "client bundle widened").await;
    pair.calls("after the client's trust change").await;
    let (after_trust, resumed_trust) = pair.server_handshakes("db-grpc").await;
    assert_eq!(
        after_trust,
        after_renewal + 1.0,
        "a trust change must open a new connection"
    );
    assert_eq!(
        resumed_trust, resumed_renewal,
        "a trust change must not resume a session made under the old trust"
    );

    // Server: a rustls client with a session cache. A config-only reload
    // keeps the server's session store; a renewal of the server's leaf
    // drops it (the client gets the new certificate); a trust change too.
    let direct = pair.pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let rustls_client = client_config(pair.pki.ca.cert_der(), Some(&direct));
    let mut first = tls_connect(pair.server_raw, rustls_client.clone())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut first, b"first").await.unwrap(), b"first");
    drop(first);
    config_only_change(&pair.pki, "server.toml", 7);
    Pair::reload(&pair.server, "server config only").await;
    assert_eq!(
        reconnect_kind(pair.server_raw, &rustls_client).await.0,
        rustls::HandshakeKind::Resumed,
        "a config-only reload must keep the server's session store"
    );
    assert_eq!(pair.server_handshakes("raw").await, (2.0, 1.0));

    let server_renewed = pair.pki.ca.issue(&localhost_leaf("server")).unwrap();
    replace(&pair.server_files.key, &server_renewed.key_pem);
    replace(&pair.server_files.cert, &server_renewed.cert_pem);
    Pair::reload(&pair.server, "server leaf renewed").await;
    let (kind, shown) = reconnect_kind(pair.server_raw, &rustls_client).await;
    assert_eq!(
        kind,
        rustls::HandshakeKind::Full,
        "after the server's renewal a client must get the new certificate"
    );
    assert_eq!(shown, server_renewed.cert_der);
    pair.calls("after the server's renewal").await;
    assert_eq!(
        pair.server_handshakes("db-grpc").await.0,
        after_trust,
        "the server's renewal must not cut the pair's pooled connection"
    );

    replace(&pair.server_bundle, &widened(&pair.pki));
    Pair::reload(&pair.server, "server bundle widened").await;
    assert_eq!(
        reconnect_kind(pair.server_raw, &rustls_client).await.0,
        rustls::HandshakeKind::Full,
        "after a trust change the server must not resume a session made before it"
    );
    pair.calls("after the server's trust change").await;
}

/// Connects with `config` (and its session cache), round-trips, and says
/// whether the handshake was full or resumed, and which leaf it showed.
async fn reconnect_kind(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> (
    rustls::HandshakeKind,
    rustls_pki_types::CertificateDer<'static>,
) {
    let mut stream = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"again").await.unwrap(), b"again");
    let session = stream.get_ref().1;
    (
        session.handshake_kind().unwrap(),
        session.peer_certificates().unwrap()[0].clone().into_owned(),
    )
}

/// The reload-under-load shape of the benchmark: calls keep flowing while
/// both sides renew their leaf (same names) and reload, several times. No
/// call fails; each client renewal reaches the server with exactly one
/// new connection, and the server's renewals cut none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_renewing_under_load_fail_no_call_and_each_client_renewal_reaches_the_server() {
    let mut pair = Pair::start().await;
    pair.calls("at the start").await;
    let (start, _) = pair.server_handshakes("db-grpc").await;
    let mut load = pair.rpc.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flowing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut done = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = load
                    .unary(Msg {
                        payload: vec![7; 1024],
                    })
                    .await;
                assert!(
                    reply.is_ok(),
                    "call {done} failed during the renewals: {reply:?}"
                );
                done += 1;
            }
            done
        })
    };
    for round in 0..3 {
        for (files, cn, sans) in [
            (&pair.client_files, "client", &["client.test"][..]),
            (
                &pair.server_files,
                "server",
                &["localhost", "127.0.0.1"][..],
            ),
        ] {
            let renewed = pair.pki.ca.issue(&LeafSpec::new(cn, sans)).unwrap();
            replace(&files.key, &renewed.key_pem);
            replace(&files.cert, &renewed.cert_pem);
        }
        Pair::reload(&pair.client, &format!("client renewal {round}")).await;
        Pair::reload(&pair.server, &format!("server renewal {round}")).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = flowing.await.unwrap();
    assert!(calls >= 3, "only {calls} calls flowed during the renewals");
    pair.calls("after the renewals").await;
    assert_eq!(
        pair.server_handshakes("db-grpc").await.0,
        start + 3.0,
        "each of the 3 client renewals opens one new connection, nothing else does"
    );
}

/// Phase 2 of a CA rotation: the same names, re-issued by another CA that
/// both sides already trust. Peers must see the new chain (their rotation
/// readiness counts on it), so neither the pooled connection nor a cached
/// session made with the old chain may be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissue_by_another_ca_starts_fresh_pools_and_sessions() {
    let mut pair = Pair::start().await;
    let next_ca = CertificateAuthority::new("test mesh CA, next").unwrap();
    let both = format!("{}{}", pair.pki.ca.cert_pem(), next_ca.cert_pem());
    replace(&pair.client_bundle, &both);
    replace(&pair.server_bundle, &both);
    Pair::reload(&pair.client, "client trusts the next CA").await;
    Pair::reload(&pair.server, "server trusts the next CA").await;
    pair.calls("with both CAs trusted").await;
    let (before, resumed_before) = pair.server_handshakes("db-grpc").await;

    // The client's leaf, same names, from the next CA.
    let reissued = next_ca
        .issue(&LeafSpec::new("client", &["client.test"]))
        .unwrap();
    replace(&pair.client_files.key, &reissued.key_pem);
    replace(&pair.client_files.cert, &reissued.cert_pem);
    Pair::reload(&pair.client, "client re-issued by the next CA").await;
    pair.calls("after the client's re-issue").await;
    // The trust is the same (both sides already trust the next CA), so the
    // new connection is made beside the old one, which carries these calls
    // until it is up: wait for it, then check it was exactly one.
    within(
        "the re-issue's new connection",
        std::time::Duration::from_secs(10),
        async {
            while pair.server_handshakes("db-grpc").await.0 <= before {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    pair.calls("after the re-issue reached the server").await;
    let (after, resumed_after) = pair.server_handshakes("db-grpc").await;
    assert_eq!(
        after,
        before + 1.0,
        "a re-issue by another CA must open a new connection"
    );
    assert_eq!(
        resumed_after, resumed_before,
        "and a full handshake, showing the new chain"
    );

    // The server's leaf from the next CA: a client holding a session made
    // with the old chain gets a full handshake and the new chain.
    let direct = pair.pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pair.pki.ca.cert_der().clone()).unwrap();
    roots.add(next_ca.cert_der().clone()).unwrap();
    let rustls_client = Arc::new(
        rustls::ClientConfig::builder_with_provider(mtlsd_reload::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![direct.cert_der.clone()], direct.key_der())
            .unwrap(),
    );
    let mut first = tls_connect(pair.server_raw, rustls_client.clone())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut first, b"first").await.unwrap(), b"first");
    drop(first);
    assert_eq!(
        reconnect_kind(pair.server_raw, &rustls_client).await.0,
        rustls::HandshakeKind::Resumed,
        "before the re-issue the client resumes"
    );
    let server_reissued = next_ca.issue(&localhost_leaf("server")).unwrap();
    replace(&pair.server_files.key, &server_reissued.key_pem);
    replace(&pair.server_files.cert, &server_reissued.cert_pem);
    Pair::reload(&pair.server, "server re-issued by the next CA").await;
    let mut stream = tls_connect(pair.server_raw, rustls_client.clone())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut stream, b"again").await.unwrap(), b"again");
    let session = stream.get_ref().1;
    assert_eq!(session.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let shown = session.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        shown, server_reissued.cert_der,
        "the client sees the re-issued certificate"
    );
    pair.calls("after the server's re-issue").await;
}

/// Make-before-break: after a renewal of the client side's certificate its
/// new connection to the server is made beside the old one, and calls go
/// on over the old one while the new handshake cannot finish (the relay
/// holds it); once it can, the server sees the new certificate and the old
/// connection is left; that handshake ran on the handshake thread. After
/// a trust change nothing goes over the old connection: a call waits for
/// the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_made_before_the_old_connection_is_left_and_a_trust_change_is_not() {
    let (mut pair, relay) = Pair::start_with_relay().await;
    pair.calls("at the start").await;
    assert_eq!((relay.accepted(), relay.open()), (1, 1));
    let (start, _) = pair.server_handshakes("db-grpc").await;

    relay.hold();
    pair.renew_client().await;
    within(
        "calls over the old connection while the new one is held",
        std::time::Duration::from_secs(10),
        pair.calls("while the renewal's connection is held"),
    )
    .await;
    eventually("the new connection to be dialed", || relay.accepted() == 2).await;
    assert_eq!(pair.server_handshakes("db-grpc").await.0, start);

    // The new connection's handshake waits on the handshake thread, not
    // on the thread that carries the calls (counted from here: the thread
    // may be another test's too, which only adds).
    let (handshake_thread_before, _) = thread_activity("mtlsd-handshake");
    relay.release();
    let mut rpc = pair.rpc.clone();
    let server = pair.server.admin_addr();
    let mut waited = 0;
    loop {
        // Calls keep flowing while the new connection comes up.
        rpc.unary(Msg { payload: vec![1] }).await.unwrap();
        let (_, text) = http_get(server, "/metrics").await;
        let completed = metric(
            &text,
            "mtlsd_handshakes_completed_total",
            &[("listener", "db-grpc")],
        );
        if completed == Some(start + 1.0) && relay.open() == 1 {
            break;
        }
        waited += 1;
        assert!(
            waited < 500,
            "the renewal never moved the calls: {completed:?}, {} open",
            relay.open()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (handshake_thread_after, _) = thread_activity("mtlsd-handshake");
    assert!(
        handshake_thread_after > handshake_thread_before,
        "the renewal's handshake did not run on the handshake thread"
    );

    // A trust change: the next call must not go over the connection made
    // under the old trust; it waits for the new one.
    relay.hold();
    replace(&pair.client_bundle, &widened(&pair.pki));
    Pair::reload(&pair.client, "client bundle widened").await;
    let mut rpc = pair.rpc.clone();
    let call = tokio::spawn(async move { rpc.unary(Msg { payload: vec![2] }).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !call.is_finished(),
        "a call after a trust change used the old connection"
    );
    relay.release();
    within(
        "the held call to finish",
        std::time::Duration::from_secs(10),
        call,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(pair.server_handshakes("db-grpc").await.0, start + 2.0);
}

/// Calls that wait for the same dial share its failure: with the server
/// side unreachable in a way that only the TLS handshake timeout ends (the
/// relay accepts and forwards nothing), eight concurrent first calls all
/// fail UNAVAILABLE on one dial, not one dial each after the other (eight
/// timeouts); and once the server answers again, a call gets
/// through on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_failed_dial_share_its_answer() {
    let (pair, relay) = Pair::start_with_relay().await;
    // The client side's handshake timeout is the default 10 s.
    relay.hold();
    let calls: Vec<_> = (0..8u8)
        .map(|i| {
            let mut rpc = pair.rpc.clone();
            tokio::spawn(async move { rpc.unary(Msg { payload: vec![i] }).await })
        })
        .collect();
    for call in calls {
        // One dial at a time would take eight handshake timeouts (80 s).
        let status = within("a call to fail", std::time::Duration::from_secs(30), call)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    assert_eq!(relay.accepted(), 1, "one dial for the eight calls");
    relay.release();
    let mut rpc = pair.rpc.clone();
    rpc.unary(Msg { payload: vec![9] }).await.unwrap();
}
