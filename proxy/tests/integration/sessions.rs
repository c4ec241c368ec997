//! What a reload keeps (issue 15): the pooled mTLS connections of an
//! outbound grpc listener and the TLS session caches on both sides survive
//! a renewal of this host's own leaf, so reloads under load put no new
//! handshake in front of the next calls; any change of trust, of this
//! host's names or of its issuing CA starts fresh ones (a session or
//! connection made under the old trust must not admit anybody the new
//! trust would refuse, and after a re-issue peers must see the new chain).
//!
//! | change (on the side named) | pooled connection to the server | client side's cached sessions | server side's session store |
//! |---|---|---|---|
//! | client: leaf renewed, same names | kept (no handshake) | kept | — |
//! | client: leaf with another name | new, full handshake | dropped | — |
//! | client: bundle gains a CA | new, full handshake | dropped | — |
//! | server: leaf renewed, same names | kept (not re-judged) | — | kept: a client resumes |
//! | server: bundle gains a CA | closed only if it no longer qualifies (it does) | — | dropped: full handshake |
//! | client: re-issued by another trusted CA | new, full handshake | dropped | — |
//! | server: re-issued by another trusted CA | — | — | dropped: full handshake, new chain shown |
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
        let client_files = pki.host("client", &LeafSpec::new("client", &["client.test"]));
        let toml = material_toml(&client_files, &client_bundle)
            + NO_WATCH
            + &outbound_toml(
                "to-db",
                server.local_addr("db-grpc").unwrap(),
                "localhost",
                "protocol = \"grpc\"",
            );
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
        Self {
            pki,
            client,
            server,
            client_files,
            server_files,
            client_bundle,
            server_bundle,
            rpc: EchoClient::new(channel),
            server_raw,
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_renewal_keeps_pooled_connections_and_sessions_and_a_trust_change_does_not() {
    let mut pair = Pair::start().await;
    pair.calls("at the start").await;
    let (start, _) = pair.server_handshakes("db-grpc").await;
    assert_eq!(start, 1.0, "the pair's first call opens one connection");

    // Client: leaf renewed with the same names. The pooled connection stays.
    let renewed = pair
        .pki
        .ca
        .issue(&LeafSpec::new("client", &["client.test"]))
        .unwrap();
    replace(&pair.client_files.key, &renewed.key_pem);
    replace(&pair.client_files.cert, &renewed.cert_pem);
    Pair::reload(&pair.client, "client leaf renewed").await;
    pair.calls("after the client's renewal").await;
    let (after_renewal, resumed_renewal) = pair.server_handshakes("db-grpc").await;
    assert_eq!(
        after_renewal, start,
        "a renewal of the client's own leaf must keep its pooled connection"
    );

    // Client: a leaf with another name. New pool, new full handshake.
    let renamed = pair
        .pki
        .ca
        .issue(&LeafSpec::new("client", &["client.test", "client2.test"]))
        .unwrap();
    replace(&pair.client_files.key, &renamed.key_pem);
    replace(&pair.client_files.cert, &renamed.cert_pem);
    Pair::reload(&pair.client, "client leaf renamed").await;
    pair.calls("after the client's new name").await;
    let (after_rename, resumed_rename) = pair.server_handshakes("db-grpc").await;
    assert_eq!(
        after_rename,
        after_renewal + 1.0,
        "a new name must open a new connection"
    );
    assert_eq!(
        resumed_rename, resumed_renewal,
        "a new name must not resume a session made under the old one"
    );

    // Client: its bundle gains a CA. Trust changed: new pool, full handshake.
    replace(&pair.client_bundle, &widened(&pair.pki));
    Pair::reload(&pair.client, "client bundle widened").await;
    pair.calls("after the client's trust change").await;
    let (after_trust, resumed_trust) = pair.server_handshakes("db-grpc").await;
    assert_eq!(
        after_trust,
        after_rename + 1.0,
        "a trust change must open a new connection"
    );
    assert_eq!(
        resumed_trust, resumed_rename,
        "a trust change must not resume a session made under the old trust"
    );

    // Server: a rustls client with a session cache, then the server's leaf
    // renewed: the client resumes. Then the server's bundle gains a CA:
    // the same client must make a full handshake.
    let direct = pair.pki.ca.issue(&localhost_leaf("direct")).unwrap();
    let rustls_client = client_config(pair.pki.ca.cert_der(), Some(&direct));
    let mut first = tls_connect(pair.server_raw, rustls_client.clone())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut first, b"first").await.unwrap(), b"first");
    drop(first);
    let server_renewed = pair.pki.ca.issue(&localhost_leaf("server")).unwrap();
    replace(&pair.server_files.key, &server_renewed.key_pem);
    replace(&pair.server_files.cert, &server_renewed.cert_pem);
    Pair::reload(&pair.server, "server leaf renewed").await;
    let kind = reconnect_kind(pair.server_raw, &rustls_client).await;
    assert_eq!(
        kind,
        rustls::HandshakeKind::Resumed,
        "a renewal of the server's own leaf must keep its session store"
    );
    let (raw_completed, raw_resumed) = pair.server_handshakes("raw").await;
    assert_eq!((raw_completed, raw_resumed), (2.0, 1.0));
    pair.calls("after the server's renewal").await;
    assert_eq!(
        pair.server_handshakes("db-grpc").await.0,
        after_trust,
        "the server's renewal must not cut the pair's pooled connection"
    );

    replace(&pair.server_bundle, &widened(&pair.pki));
    Pair::reload(&pair.server, "server bundle widened").await;
    let kind = reconnect_kind(pair.server_raw, &rustls_client).await;
    assert_eq!(
        kind,
        rustls::HandshakeKind::Full,
        "after a trust change the server must not resume a session made before it"
    );
    assert_eq!(pair.server_handshakes("raw").await, (3.0, 1.0));
    pair.calls("after the server's trust change").await;
}

/// Connects with `config` (and its session cache), round-trips, and says
/// whether the handshake was full or resumed.
async fn reconnect_kind(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> rustls::HandshakeKind {
    let mut stream = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"again").await.unwrap(), b"again");
    stream.get_ref().1.handshake_kind().unwrap()
}

/// The reload-under-load shape of the benchmark: calls keep flowing while
/// both sides renew their leaf (same names) and reload, several times.
/// The pair's pooled connection survives every round and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_renewing_under_load_keep_the_pooled_connection() {
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
        start,
        "renewals on both sides must keep the pair's pooled connection"
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
        reconnect_kind(pair.server_raw, &rustls_client).await,
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
