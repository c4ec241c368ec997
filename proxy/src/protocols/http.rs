//! `protocol = "http"`: TLS termination for the REST API and exporters.
//!
//! TLS with ALPN h2 and http/1.1; client certificates `required`,
//! `optional` (the API serves humans with browsers) or `none`. With
//! `allow_roles` (e.g. exporters allowing only `monitoring`) a peer whose
//! inventory host lacks the role gets `403`. The local upstream gets plain
//! HTTP/1.1 with `X-Forwarded-For/-Proto/-Host` set by mtlsd and the
//! verified identity headers (incoming ones stripped). Bodies stream both
//! ways; `Upgrade` requests (WebSocket) are switched through end to end.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;

use super::activity::BoxError;
use super::activity::{Activity, TrackStreams, Watched};
use super::grpc::Body;
use super::identity_headers::{self, ConnectionIdentity};
use crate::config::ListenerConfig;
use crate::listener_context::ListenerContext;
use crate::transport::handshake;
use crate::transport::pool::UpstreamTarget;

struct Inbound {
    ctx: Arc<ListenerContext>,
    listener: Arc<ListenerConfig>,
    identity: ConnectionIdentity,
    /// The peer's chain, for registering an upgrade tunnel that outlives
    /// the HTTP connection.
    chain: Arc<[CertificateDer<'static>]>,
    /// The generation whose policy admitted the peer.
    judged_under: u64,
    target: UpstreamTarget,
    /// `x-forwarded-for`, the same for every request of the connection.
    forwarded_for: Option<HeaderValue>,
    /// `host` for the upstream: its authority.
    upstream_host: Option<HeaderValue>,
    peer: SocketAddr,
}

/// Serves one connection accepted by an inbound http listener.
pub async fn serve_inbound(
    ctx: Arc<ListenerContext>,
    listener: Arc<ListenerConfig>,
    target: UpstreamTarget,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let Some(accepted) = handshake::accept(&ctx.handshaker, &listener, tcp, peer).await else {
        return;
    };
    let registration = (!accepted.chain.is_empty()).then(|| {
        ctx.handshaker
            .register(&listener, peer, accepted.chain.clone(), accepted.generation)
    });
    let state = Arc::new(Inbound {
        ctx: ctx.clone(),
        listener: listener.clone(),
        identity: ConnectionIdentity::new(accepted.identity, accepted.generation),
        chain: accepted.chain,
        judged_under: accepted.generation,
        upstream_host: HeaderValue::from_str(target.authority().as_str()).ok(),
        target,
        forwarded_for: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        peer,
    });
    let service = service_fn(move |request| handle(state.clone(), request));
    let activity = Activity::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(
        TokioIo::new(Watched::new(accepted.tls, activity.clone())),
        TrackStreams::new(service, activity.clone()),
    );
    tokio::pin!(connection);
    let shutdown = |connection: std::pin::Pin<&mut _>| {
        auto::UpgradeableConnection::graceful_shutdown(connection)
    };
    let limits = super::l7::Limits {
        listener: &listener.name,
        activity: &activity,
        first_bytes: listener.timeouts.handshake,
        idle: listener.timeouts.idle,
        metrics: &ctx.metrics,
    };
    match super::l7::drive(
        connection,
        shutdown,
        &ctx.draining,
        registration.as_ref(),
        limits,
    )
    .await
    {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::debug!(listener = %listener.name, %peer, error = %e, "HTTP connection ended with an error")
        }
        None => tracing::info!(listener = %listener.name, %peer,
            "HTTP connection closed: its peer no longer qualifies"),
    }
}

async fn handle(
    state: Arc<Inbound>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let listener = &state.listener;
    // Decided against the generation in force now: a role removed from
    // the inventory applies to the next request on a held connection.
    let generation = state.ctx.store().current();
    let Some(policy) = generation.policy(&listener.name) else {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this listener is being removed\n",
        ));
    };
    let decision = policy.authorize_request(state.identity.identity(), None);
    if policy.rule().roles.is_some() {
        state
            .ctx
            .metrics
            .authz(&listener.name, "allow_roles", decision.result.is_ok());
    }
    if let Err(why) = &decision.result {
        tracing::warn!(
            listener = %listener.name, peer = %state.peer,
            host = decision.host.map(|h| h.name.as_str()).unwrap_or("-"),
            reason = decision.refusal.map(|r| r.as_str()).unwrap_or("role_not_allowed"),
            path = request.uri().path(), %why,
            "HTTP request refused"
        );
        return Ok(text(
            StatusCode::FORBIDDEN,
            "forbidden: your certificate's host does not hold an allowed role\n",
        ));
    }
    let identity = state.identity.headers(generation.number(), decision.host);
    drop(generation);

    // The Host the client asked for, before the URI is rewritten.
    let original_host = request.headers().get(header::HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let upgrade = request.headers().contains_key(header::UPGRADE);
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut request));

    let (mut parts, body) = request.into_parts();
    identity_headers::strip(&mut parts.headers);
    if let Some(identity) = &identity {
        identity.set(&mut parts.headers);
    }
    let headers = &mut parts.headers;
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        headers.remove(name);
    }
    if let Some(value) = &state.forwarded_for {
        headers.insert("x-forwarded-for", value.clone());
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    let Some(uri) = state.target.uri(parts.uri.path_and_query()) else {
        return Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot build the upstream URI\n",
        ));
    };
    parts.uri = uri;
    // HTTP/1.1 to the upstream whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    if let Some(host) = &state.upstream_host {
        parts.headers.insert(header::HOST, host.clone());
    }

    let client = state.ctx.pool.http1(listener, &state.target);
    let mut response = match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(listener = %listener.name, error = %e, "cannot reach the upstream");
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                "mtlsd cannot reach the upstream\n",
            ));
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_side
    {
        let upstream_side = hyper::upgrade::on(&mut response);
        // The tunnel outlives the HTTP connection, so it registers itself:
        // a peer that stops qualifying loses its tunnels too.
        let registration = (!state.chain.is_empty()).then(|| {
            state.ctx.handshaker.register(
                listener,
                state.peer,
                state.chain.clone(),
                state.judged_under,
            )
        });
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_side.await, upstream_side.await) {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                match &registration {
                    Some(registration) => {
                        tokio::select! {
                            _ = copied => {}
                            () = registration.closed_by_policy() => {}
                        }
                    }
                    None => {
                        let _ = copied.await;
                    }
                }
            }
        });
    }
    Ok(response.map(|body| body.map_err(BoxError::from).boxed()))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
