//! `protocol = "grpc"`: HTTP/2 on both legs, with per-method policy.
//!
//! Inbound: TLS with ALPN h2; each call is authorized against the first
//! matching route (`/pkg.Service/Method`, `/pkg.Service/*`) or else the
//! listener's `allow_roles`; a refusal is a real gRPC answer (status 7
//! PERMISSION_DENIED naming the rule), never a reset. Allowed calls go to
//! the local daemon over pooled h2c with the verified identity as headers
//! (incoming ones are stripped). An unreachable daemon is status 14
//! UNAVAILABLE; a `grpc-timeout` that passes while waiting for it is
//! status 4 DEADLINE_EXCEEDED (the header is also passed on).
//!
//! Outbound: h2c from the local daemon, pooled h2 over mTLS to the remote
//! host. Bodies stream through in both directions, frame by frame, so
//! HTTP/2 flow control reaches end to end and a slow consumer slows the
//! producer instead of filling mtlsd's memory. On drain, or when a peer
//! stops verifying after a trust change, connections get a GOAWAY.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::activity::{Activity, BoxError, Watched};
use super::grpc_status::{self, GrpcCode};
use super::grpc_wire::{grpc_timeout, split_path};
use super::h2_serve::{H2Connection, RequestBody};
use super::identity_headers::{self, ConnectionIdentity};
use crate::config::{ListenerConfig, Outbound};
use crate::error_chain::{WithCauses, root_cause};
use crate::listener_context::ListenerContext;
use crate::metrics::{GrpcCallSeries, RequestMetrics};
use crate::transport::coalesce::Coalescing;
use crate::transport::h2_upstream::{UpstreamBody, UpstreamError};
use crate::transport::handshake;
use crate::transport::pool::UpstreamTarget;

pub use super::l7::Body;

struct Inbound {
    ctx: Arc<ListenerContext>,
    listener: Arc<ListenerConfig>,
    identity: ConnectionIdentity,
    target: UpstreamTarget,
    peer: SocketAddr,
    /// The metric series of the rule the last allowed call matched.
    series: std::sync::Mutex<Option<Arc<GrpcCallSeries>>>,
}

impl Inbound {
    /// The series for an allowed call that matched `rule`: the cached one
    /// when the rule is the last call's (the labels never change under a
    /// rule's name), else looked up and cached.
    fn series(&self, rule: &str) -> Arc<GrpcCallSeries> {
        let mut cached = self.series.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some(series) if series.rule() == rule => series.clone(),
            _ => {
                let series = Arc::new(self.ctx.metrics.grpc_call_series(
                    &self.listener.name,
                    rule,
                    GrpcCode::Ok.name(),
                ));
                *cached = Some(series.clone());
                series
            }
        }
    }
}

/// Serves one connection accepted by an inbound grpc listener.
pub async fn serve_inbound(
    ctx: Arc<ListenerContext>,
    listener: Arc<ListenerConfig>,
    target: UpstreamTarget,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    // On the handshake thread: a gRPC connection is one of few, each
    // carrying many calls that a handshake here would hold up.
    let Some(accepted) = handshake::accept_off_path(&ctx.handshaker, &listener, tcp, peer).await
    else {
        return;
    };
    if accepted.tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        tracing::warn!(listener = %listener.name, %peer, "peer did not negotiate h2 (ALPN); closing");
        return;
    }
    let registration =
        ctx.handshaker
            .register(&listener, peer, accepted.chain, accepted.generation);
    let state = Arc::new(Inbound {
        ctx: ctx.clone(),
        listener: listener.clone(),
        identity: ConnectionIdentity::new(accepted.identity, accepted.generation),
        target,
        peer,
        series: std::sync::Mutex::new(None),
    });
    let handler = move |request| handle_inbound(state.clone(), request);
    serve_h2(&ctx, &listener, accepted.tls, handler, Some(&registration)).await;
}

async fn handle_inbound(state: Arc<Inbound>, request: Request<RequestBody>) -> Response<Body> {
    let listener = &state.listener;
    let Some((service, method)) = split_path(request.uri().path()) else {
        return grpc_status::error(GrpcCode::Unimplemented, "not a gRPC method path");
    };
    let started = std::time::Instant::now();
    // Decided against the generation in force now, not the one the
    // connection was accepted under: a narrowed route or a removed role
    // applies to the next call on a held connection.
    let generation = state.ctx.store().current();
    let Some(policy) = generation.policy(&listener.name) else {
        return grpc_status::error(GrpcCode::Unavailable, "this listener is being removed");
    };
    let decision = policy.authorize_request(state.identity.identity(), Some((service, method)));
    let metrics = &state.ctx.metrics;
    if let Err(why) = decision.result {
        metrics.authz(&listener.name, decision.rule, false);
        metrics.grpc_request(
            &listener.name,
            decision.rule,
            GrpcCode::PermissionDenied.name(),
            started.elapsed(),
        );
        tracing::warn!(
            listener = %listener.name, peer = %state.peer,
            host = decision.host.map(|h| h.name.as_str()).unwrap_or("-"),
            path = request.uri().path(),
            reason = decision.refusal.map(|r| r.as_str()).unwrap_or("role_not_allowed"),
            %why,
            "gRPC call refused"
        );
        return grpc_status::error(GrpcCode::PermissionDenied, &why);
    }
    let series = state.series(decision.rule);
    series.allowed();
    // From here the call is counted once however it ends, also when the
    // client gives up before the daemon answers (this future is dropped).
    let mut record = CallRecord {
        metrics: state.ctx.metrics.clone(),
        series,
        started,
        status: None,
        recorded: false,
    };
    let headers = state.identity.headers(generation.number(), decision.host);
    drop(generation);

    let (mut parts, body) = request.into_parts();
    identity_headers::strip(&mut parts.headers);
    if let Some(identity) = &headers {
        identity.set(&mut parts.headers);
    }
    let Some(uri) = state.target.uri(parts.uri.path_and_query()) else {
        return grpc_status::error(GrpcCode::Internal, "cannot build the upstream URI");
    };
    parts.uri = uri;
    let deadline = grpc_timeout(&parts.headers);
    let client = state.ctx.pool.h2c(listener, &state.target);
    match forward(
        client.request(Request::from_parts(parts, body)),
        deadline,
        "local daemon",
    )
    .await
    {
        Ok(response) => observed(response, record),
        Err(answer) => {
            // Counted now, as `record` drops.
            record.status = grpc_status::status_of(answer.headers());
            answer
        }
    }
}

/// Wraps the daemon's response so its grpc-status (headers for
/// trailers-only answers, else trailers) and duration are counted when it
/// ends.
fn observed(response: Response<UpstreamBody>, mut record: CallRecord) -> Response<Body> {
    record.status = grpc_status::status_of(response.headers());
    response.map(|body| {
        ObservedBody {
            inner: body,
            record,
        }
        .boxed()
    })
}

/// One allowed call's status and duration, counted exactly once: when its
/// response ends, or when it is dropped first (CANCELLED).
struct CallRecord {
    metrics: Arc<RequestMetrics>,
    series: Arc<GrpcCallSeries>,
    started: std::time::Instant,
    /// From the response's headers, then its trailers.
    status: Option<GrpcCode>,
    recorded: bool,
}

impl CallRecord {
    fn record(&mut self) {
        if !self.recorded {
            self.recorded = true;
            // No status by the end: the stream was cut (CANCELLED).
            let status = self.status.unwrap_or(GrpcCode::Cancelled);
            self.series
                .ended(&self.metrics, status.name(), self.started.elapsed());
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.record();
    }
}

/// A response body whose end (or drop) completes its call's record.
struct ObservedBody {
    inner: UpstreamBody,
    record: CallRecord,
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BoxError::from);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = grpc_status::status_of(trailers)
                {
                    self.record.status = Some(status);
                }
            }
            std::task::Poll::Ready(None) => self.record.record(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

struct OutboundCalls {
    ctx: Arc<ListenerContext>,
    listener: Arc<ListenerConfig>,
    outbound: Outbound,
    target: UpstreamTarget,
    client: SocketAddr,
}

/// Serves one connection accepted by an outbound grpc listener.
pub async fn serve_outbound(
    ctx: Arc<ListenerContext>,
    listener: Arc<ListenerConfig>,
    outbound: Outbound,
    target: UpstreamTarget,
    plain: TcpStream,
    client: SocketAddr,
) {
    let listener_config = listener.clone();
    let state = Arc::new(OutboundCalls {
        ctx: ctx.clone(),
        target,
        outbound,
        listener,
        client,
    });
    let handler = move |request| handle_outbound(state.clone(), request);
    serve_h2(&ctx, &listener_config, plain, handler, None).await;
}

async fn handle_outbound(
    state: Arc<OutboundCalls>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let listener = &state.listener;
    let (mut parts, body) = request.into_parts();
    let Some(uri) = state.target.uri(parts.uri.path_and_query()) else {
        return grpc_status::error(GrpcCode::Internal, "cannot build the upstream URI");
    };
    parts.uri = uri;
    let deadline = grpc_timeout(&parts.headers);
    let (epoch, trust) = {
        let generation = state.ctx.store().current();
        (generation.session_epoch(), generation.trust_fingerprint())
    };
    let client = state.ctx.pool.remote(
        &state.ctx.handshaker,
        listener,
        &state.outbound,
        &state.target,
        epoch,
        trust,
        state.client,
    );
    forward(
        client.request(Request::from_parts(parts, body)),
        deadline,
        "remote host",
    )
    .await
    .map_or_else(
        |answer| answer,
        |response| response.map(|body| body.map_err(BoxError::from).boxed()),
    )
}

/// Serves HTTP/2 on `io` until the peer leaves, held to the listener's
/// limits (see [`super::l7::drive`]): GOAWAY on drain, when the peer no
/// longer qualifies after a trust change, after `idle_timeout` without an
/// open stream, and on a stream-reset flood; a peer that sends no preface
/// within the handshake timeout is dropped.
async fn serve_h2<I, H, F>(
    ctx: &ListenerContext,
    listener: &ListenerConfig,
    io: I,
    handler: H,
    registration: Option<&crate::connections::Registration>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RequestBody>) -> F,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Activity::new();
    let io = Coalescing::new(Watched::new(io, activity.clone()));
    let connection = H2Connection::new(io, handler, activity.clone());
    tokio::pin!(connection);
    let limits = super::l7::Limits {
        listener: &listener.name,
        activity: &activity,
        first_bytes: listener.timeouts.handshake,
        idle: listener.timeouts.idle,
        metrics: &ctx.metrics,
    };
    match super::l7::drive(
        connection,
        H2Connection::graceful_shutdown,
        &ctx.draining,
        registration,
        limits,
    )
    .await
    {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(error = %e, "HTTP/2 connection ended with an error"),
        None => tracing::info!("HTTP/2 connection closed: its peer no longer qualifies"),
    }
}

/// Sends the request on: the peer's response, or the gRPC answer for a
/// failure (UNAVAILABLE, DEADLINE_EXCEEDED).
async fn forward(
    request: impl std::future::Future<Output = Result<Response<UpstreamBody>, UpstreamError>>,
    deadline: Option<Duration>,
    what: &str,
) -> Result<Response<UpstreamBody>, Response<Body>> {
    let response = match deadline {
        Some(deadline) => match tokio::time::timeout(deadline, request).await {
            Ok(response) => response,
            Err(_) => {
                return Err(grpc_status::error(
                    GrpcCode::DeadlineExceeded,
                    &format!("deadline passed waiting for the {what}"),
                ));
            }
        },
        None => request.await,
    };
    response.map_err(|e| {
        let cause = root_cause(&e);
        tracing::warn!(error = %WithCauses(&e), "cannot reach the {what}");
        grpc_status::error(
            GrpcCode::Unavailable,
            &format!("mtlsd cannot reach the {what}: {cause}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn paths_and_timeouts_parse_and_garbage_is_ignored() {
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        assert_eq!(split_path("/a.B/"), None);
        assert_eq!(split_path("/a/b/c"), None);
        assert_eq!(split_path("nope"), None);
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(250)));
        for bad in ["", "m", "12x", "99999999999H", "-1S"] {
            headers.insert("grpc-timeout", HeaderValue::from_str(bad).unwrap());
            assert_eq!(grpc_timeout(&headers), None, "{bad}");
        }
    }
}
