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
use mtlsd_reload::{AuthUsage, PeerIdentity};
use tokio::net::TcpStream;

use super::grpc::Body;
use super::handshake;
use super::identity_headers::{self, IdentityHeaders};
use super::pool::UpstreamTarget;
use crate::config::ListenerConfig;
use crate::listener::ListenerContext;

struct Inbound {
    ctx: Arc<ListenerContext>,
    listener: Arc<ListenerConfig>,
    identity: Option<PeerIdentity>,
    identity_headers: Option<IdentityHeaders>,
    target: Option<UpstreamTarget>,
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
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let Some(accepted) = handshake::accept(&ctx, &listener, tcp, peer).await else {
        return;
    };
    let registration = (!accepted.chain.is_empty())
        .then(|| ctx.register(&listener, peer, AuthUsage::Client, accepted.chain.clone()));
    let target = UpstreamTarget::new(http::uri::Scheme::HTTP, &listener.upstream);
    let state = Arc::new(Inbound {
        ctx: ctx.clone(),
        listener: listener.clone(),
        identity_headers: accepted.identity.as_ref().map(IdentityHeaders::new),
        identity: accepted.identity,
        upstream_host: target
            .as_ref()
            .and_then(|t| HeaderValue::from_str(t.authority().as_str()).ok()),
        target,
        forwarded_for: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        peer,
    });
    let service = service_fn(move |request| handle(state.clone(), request));
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(accepted.tls), service);
    tokio::pin!(connection);
    let closed = async {
        match &registration {
            Some(registration) => registration.closed_by_policy().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = ctx.draining.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = closed => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = %listener.name, %peer, error = %e, "HTTP connection ended with an error");
    }
}

async fn handle(
    state: Arc<Inbound>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let listener = &state.listener;
    if let Some(roles) = &listener.roles {
        let host = state.identity.as_ref().and_then(|i| i.host.as_ref());
        let allowed = host.is_some_and(|h| !h.roles.is_disjoint(roles));
        state
            .ctx
            .metrics
            .authz(&listener.name, "allow_roles", allowed);
        if !allowed {
            tracing::warn!(
                listener = %listener.name, peer = %state.peer,
                host = host.map(|h| h.name.as_str()).unwrap_or("-"),
                reason = "role_not_allowed", path = request.uri().path(),
                "HTTP request refused"
            );
            return Ok(text(
                StatusCode::FORBIDDEN,
                "forbidden: your certificate's host does not hold an allowed role\n",
            ));
        }
    }

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
    if let Some(identity) = &state.identity_headers {
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
    let Some(uri) = state
        .target
        .as_ref()
        .and_then(|t| t.uri(parts.uri.path_and_query()))
    else {
        return Ok(text(StatusCode::BAD_GATEWAY, "upstream is not host:port\n"));
    };
    parts.uri = uri;
    // HTTP/1.1 to the upstream whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    if let Some(host) = &state.upstream_host {
        parts.headers.insert(header::HOST, host.clone());
    }

    let client = state.ctx.pool.plain(listener, false);
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
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_side.await, upstream_side.await) {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
    Ok(response.map(BodyExt::boxed))
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
