//! The bootstrap endpoint (`[bootstrap] listen`): the public trust
//! bundles, served to hosts that cannot verify anything yet.
//!
//! A host joining the mesh has no bundle, so it cannot check who it talks
//! to; `mtlsd trust fetch` takes a bundle from here and accepts it only if
//! its CAs' SHA-256 fingerprints are the ones the operator got out of band
//! (docs/operator_guide/joining.md). The endpoint therefore speaks TLS with
//! this host's certificate but asks for no client certificate, and serves
//! nothing but what is public anyway:
//!
//! * `GET /v1/trust`: JSON, every served trust domain with its version,
//!   the SHA-256 of the PEM served for it, the bundle fingerprint `mtlsd
//!   status` shows, and each CA's SHA-256 and subject;
//! * `GET /v1/trust/<domain>`: the bundle as PEM, re-encoded from the CAs
//!   of the generation in force (never the file on disk, which may hold a
//!   change a reload refused, or text that is not a certificate), with its
//!   SHA-256 in `x-mtlsd-bundle-sha256`.
//!
//! Anything else is 404: the admin routes do not exist here. Every
//! response names this host's identity trust domain in
//! `x-mtlsd-identity-domain`, so the fetcher knows when the server's own
//! certificate must chain to the bundle it got.
//!
//! Abuse is bounded: each source address (IPv6: its /64) gets
//! `requests_per_minute` tokens, one per connection and one per further
//! request on it; at most `max_connections` are served at once; a
//! handshake has 10 s, request headers 10 s, a connection 60 s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mtlsd_expiry::Fingerprint;
use mtlsd_reload::{Generation, MaterialStore, TrustBundle};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{BOOTSTRAP_TLS_USE, BootstrapConfig};

/// The header with the SHA-256 of the PEM body.
pub const BUNDLE_SHA256_HEADER: &str = "x-mtlsd-bundle-sha256";
/// The header naming the serving host's identity trust domain.
pub const IDENTITY_DOMAIN_HEADER: &str = "x-mtlsd-identity-domain";
/// The path prefix of the one resource family served.
pub const TRUST_PATH: &str = "/v1/trust";

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Source addresses remembered at once; see [`RateLimiter`].
const MAX_TRACKED_SOURCES: usize = 4096;

/// The endpoint's counters; the label sets are fixed.
#[derive(Debug, Clone)]
pub struct BootstrapMetrics {
    connections: IntCounterVec,
    requests: IntCounterVec,
}

impl BootstrapMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let connections = IntCounterVec::new(
            Opts::new(
                "mtlsd_bootstrap_connections_total",
                "Connections to the bootstrap endpoint by result: accepted (TLS handshake done), rate_limited (closed before the handshake: the source address had no requests left this minute), handshake_failed (TLS failed or timed out).",
            ),
            &["result"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "mtlsd_bootstrap_requests_total",
                "Requests to the bootstrap endpoint by result: index (GET /v1/trust), bundle (GET /v1/trust/<domain>), not_found (any other method, path or domain), rate_limited (answered 429).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self {
            connections,
            requests,
        })
    }

    fn connection(&self, result: &str) {
        self.connections.with_label_values(&[result]).inc();
    }

    fn request(&self, result: &str) {
        self.requests.with_label_values(&[result]).inc();
    }
}

/// What the accept loop and every connection share.
#[derive(Debug)]
pub struct Bootstrap {
    config: BootstrapConfig,
    store: Arc<MaterialStore>,
    metrics: BootstrapMetrics,
    limiter: RateLimiter,
    slots: Arc<Semaphore>,
}

impl Bootstrap {
    pub fn new(
        config: BootstrapConfig,
        store: Arc<MaterialStore>,
        metrics: BootstrapMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter: RateLimiter::new(config.requests_per_minute, MAX_TRACKED_SOURCES),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
            store,
            metrics,
        })
    }
}

/// Accepts until `stop`.
pub async fn serve(listener: TcpListener, bootstrap: Arc<Bootstrap>, stop: CancellationToken) {
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = bootstrap.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "bootstrap accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !bootstrap.limiter.take(peer.ip(), Instant::now()) {
            bootstrap.metrics.connection("rate_limited");
            tracing::debug!(%peer, "bootstrap connection refused: rate limit");
            continue; // dropping the stream closes it, before any TLS work
        }
        let bootstrap = bootstrap.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                () = connection(&bootstrap, stream, peer) => {}
                () = stop.cancelled() => {}
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    tracing::debug!(%peer, "bootstrap connection closed: lifetime reached");
                }
            }
        });
    }
}

async fn connection(bootstrap: &Arc<Bootstrap>, stream: TcpStream, peer: SocketAddr) {
    let generation = bootstrap.store.current();
    let Some(tls) = generation.server_config(BOOTSTRAP_TLS_USE) else {
        // Built whenever [bootstrap] is configured, and that needs a restart.
        tracing::error!("bootstrap endpoint has no TLS configuration in this generation");
        return;
    };
    drop(generation);
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            bootstrap.metrics.connection("handshake_failed");
            tracing::debug!(%peer, error = %e, "bootstrap TLS handshake failed");
            return;
        }
        Err(_) => {
            bootstrap.metrics.connection("handshake_failed");
            tracing::debug!(%peer, "bootstrap TLS handshake timed out");
            return;
        }
    };
    bootstrap.metrics.connection("accepted");
    // The connection paid for its first request when it was accepted.
    let requests = Arc::new(AtomicU64::new(0));
    let shared = bootstrap.clone();
    let service = service_fn(move |request| {
        let first = requests.fetch_add(1, Ordering::Relaxed) == 0;
        let reply = answer(&shared, &request, peer, first);
        async move { Ok::<_, Infallible>(reply) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(tls), service);
    if let Err(e) = served.await {
        tracing::debug!(%peer, error = %e, "bootstrap connection ended with an error");
    }
}

type Reply = Response<Full<Bytes>>;

fn answer(
    bootstrap: &Bootstrap,
    request: &Request<Incoming>,
    peer: SocketAddr,
    first: bool,
) -> Reply {
    if !first && !bootstrap.limiter.take(peer.ip(), Instant::now()) {
        bootstrap.metrics.request("rate_limited");
        tracing::debug!(%peer, "bootstrap request refused: rate limit");
        let mut reply = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests from this address; try again in a minute\n",
        );
        reply
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return reply;
    }
    let generation = bootstrap.store.current();
    let mut reply = route(bootstrap, &generation, request, peer);
    if let Ok(domain) = HeaderValue::from_str(&generation.identity().spec().trust_domain) {
        reply.headers_mut().insert(IDENTITY_DOMAIN_HEADER, domain);
    }
    reply
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

fn route(
    bootstrap: &Bootstrap,
    generation: &Generation,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Reply {
    let path = request.uri().path();
    if request.method() == Method::GET {
        if path == TRUST_PATH {
            bootstrap.metrics.request("index");
            return index(bootstrap, generation);
        }
        // An exact name of a served domain, nothing else: no decoding, so
        // `..`, `%2e%2e` or `mesh/x` are just names that do not exist.
        if let Some(name) = path
            .strip_prefix(TRUST_PATH)
            .and_then(|p| p.strip_prefix('/'))
            && bootstrap.config.serves(name)
            && let Some(bundle) = generation.bundle(name)
        {
            bootstrap.metrics.request("bundle");
            tracing::info!(%peer, trust_domain = name, fingerprint = %bundle.fingerprint().to_hex(),
                "bootstrap: served trust bundle");
            return bundle_reply(bundle);
        }
    }
    bootstrap.metrics.request("not_found");
    tracing::debug!(%peer, method = %request.method(), path, "bootstrap: not found");
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `GET /v1/trust`.
fn index(bootstrap: &Bootstrap, generation: &Generation) -> Reply {
    let domains: Vec<serde_json::Value> = generation
        .bundles()
        .values()
        .filter(|bundle| bootstrap.config.serves(bundle.name()))
        .map(|bundle| {
            let pem = bundle_pem(bundle);
            serde_json::json!({
                "name": bundle.name(),
                "version": bundle.version(),
                "sha256": Fingerprint::of(pem.as_bytes()).to_hex(),
                "fingerprint": bundle.fingerprint().to_hex(),
                "cas": bundle.cas().iter().map(|ca| serde_json::json!({
                    "sha256": ca.facts.fingerprint.to_hex(),
                    "subject": ca.facts.subject,
                    "not_after": humantime::format_rfc3339_seconds(ca.facts.not_after).to_string(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let body = serde_json::json!({
        "identity_domain": generation.identity().spec().trust_domain,
        "domains": domains,
    });
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply
}

/// `GET /v1/trust/<domain>`.
fn bundle_reply(bundle: &TrustBundle) -> Reply {
    let pem = bundle_pem(bundle);
    let sha256 = Fingerprint::of(pem.as_bytes()).to_hex();
    let mut reply = Response::new(Full::new(Bytes::from(pem)));
    let headers = reply.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    if let Ok(value) = HeaderValue::from_str(&sha256) {
        headers.insert(BUNDLE_SHA256_HEADER, value);
    }
    reply
}

/// The bundle's CAs as PEM: 64-column base64, `\n` line ends, in the
/// bundle's order.
pub fn bundle_pem(bundle: &TrustBundle) -> String {
    let mut pem = String::new();
    for ca in bundle.cas() {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(ca.der.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            // base64 output is ASCII.
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

/// A token bucket per source: `per_minute` tokens, refilled evenly over
/// the minute. IPv6 sources are keyed by their /64 (one host can hold a
/// whole /64). At most `max_sources` are remembered; when the table is
/// full, buckets that are full again (as good as forgotten) are dropped,
/// and if none is, a new source is refused rather than the memory grown.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    max_sources: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_minute: u32, max_sources: usize) -> Self {
        Self {
            per_minute,
            max_sources,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `source` at `now`; `false` when it has none.
    pub fn take(&self, source: IpAddr, now: Instant) -> bool {
        let capacity = f64::from(self.per_minute);
        let refill = |bucket: &Bucket| {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            (bucket.tokens + elapsed * capacity / 60.0).min(capacity)
        };
        let key = source_key(source);
        // Held only for this map update.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.max_sources {
            buckets.retain(|_, bucket| refill(bucket) < capacity);
            if buckets.len() >= self.max_sources {
                return false;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let tokens = refill(bucket);
        let (tokens, taken) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        *bucket = Bucket { tokens, at: now };
        taken
    }
}

/// IPv4 (and IPv4-mapped IPv6) by address, other IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_minute_then_refills_evenly() {
        let limiter = RateLimiter::new(3, 100);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(ip("192.0.2.1"), start));
        }
        assert!(!limiter.take(ip("192.0.2.1"), start));
        // Another source has its own bucket.
        assert!(limiter.take(ip("192.0.2.2"), start));
        // 3 a minute: one token back every 20 s (a refused attempt costs
        // nothing).
        assert!(!limiter.take(ip("192.0.2.1"), start + Duration::from_secs(19)));
        let forty = start + Duration::from_secs(40);
        assert!(limiter.take(ip("192.0.2.1"), forty));
        assert!(limiter.take(ip("192.0.2.1"), forty));
        assert!(!limiter.take(ip("192.0.2.1"), forty));
        // Never more than a minute's worth, however long the pause.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.take(ip("192.0.2.1"), later));
        }
        assert!(!limiter.take(ip("192.0.2.1"), later));
    }

    #[test]
    fn ipv6_sources_share_their_slash_64() {
        let limiter = RateLimiter::new(1, 100);
        let now = Instant::now();
        assert!(limiter.take(ip("2001:db8:1:2::1"), now));
        assert!(!limiter.take(ip("2001:db8:1:2:ffff::9"), now));
        assert!(limiter.take(ip("2001:db8:1:3::1"), now));
        // An IPv4-mapped address is its IPv4 address.
        assert!(limiter.take(ip("192.0.2.7"), now));
        assert!(!limiter.take(ip("::ffff:192.0.2.7"), now));
    }

    #[test]
    fn a_full_table_forgets_full_buckets_and_otherwise_refuses_new_sources() {
        let limiter = RateLimiter::new(2, 2);
        let now = Instant::now();
        assert!(limiter.take(ip("192.0.2.1"), now));
        assert!(limiter.take(ip("192.0.2.2"), now));
        // Both are remembered with a spent token: a third source is refused.
        assert!(!limiter.take(ip("192.0.2.3"), now));
        // A minute on, both are full again and can be forgotten.
        assert!(limiter.take(ip("192.0.2.3"), now + Duration::from_secs(60)));
    }
}
