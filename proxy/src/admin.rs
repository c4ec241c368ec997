//! The admin endpoint (loopback by default): health, metrics, and the
//! synchronous reload that `mtlsd reload` and systemd's `ExecReload` use.
//!
//! Routes: `GET /healthz` (the process answers), `GET /readyz` (listeners
//! bound, not draining, identity within its validity window), `GET
//! /metrics` (Prometheus text), `GET /status` (JSON: what `mtlsd status`
//! shows), `POST /reload` (JSON outcome; 200 when applied or unchanged,
//! 422 when rejected).
//!
//! The same routes are served on the local control socket (`admin.socket`,
//! [`crate::control_socket`]): no TLS there, the kernel says who connects.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::reloading::{ReloadRequest, ReloadResult, Trigger};
use crate::rotation_report::Phase;
use crate::state::DaemonState;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub daemon: Arc<DaemonState>,
    pub reloads: mpsc::Sender<ReloadRequest>,
    /// Serve over mTLS (`[admin] tls = true`).
    pub tls: bool,
}

/// Who is on the other end of an admin connection.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// The TCP endpoint (`admin.listen`).
    Tcp(std::net::SocketAddr),
    /// The control socket, from a process of an authorized uid.
    Local { uid: u32 },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Local { uid } => write!(f, "control socket (uid {uid})"),
        }
    }
}

/// How long an admin client may take to finish its TLS handshake.
const ADMIN_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let serve = async {
                if state.tls {
                    if let Some(tls) = accept_tls(&state, stream, peer).await {
                        serve_http(state.clone(), tls, Peer::Tcp(peer)).await;
                    }
                } else {
                    serve_http(state.clone(), stream, Peer::Tcp(peer)).await;
                }
            };
            tokio::select! {
                () = serve => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Serves the admin routes on one connection, TLS already done (or none).
pub(crate) async fn serve_http<I>(state: AdminState, io: I, peer: Peer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| handle(state.clone(), request, peer));
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

/// The admin endpoint's mTLS handshake: this host's identity, clients of
/// the admin trust domain holding an allowed role.
async fn accept_tls(
    state: &AdminState,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let generation = state.daemon.store.current();
    let config = generation.server_config(crate::config::ADMIN_TLS_USE)?;
    let handshake = mtlsd_reload::observe(tokio_rustls::TlsAcceptor::from(config).accept(stream));
    match tokio::time::timeout(ADMIN_HANDSHAKE_TIMEOUT, handshake).await {
        Ok((Ok(tls), report)) => {
            if report.admitted.is_some() {
                return Some(tls);
            }
            // A resumed session skipped the verifier: the same policy
            // judges the session's chain.
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
            let policy = generation.policy(crate::config::ADMIN_TLS_USE)?;
            let now = rustls_pki_types::UnixTime::now();
            match policy.admit(chain, None, now, mtlsd_reload::Stage::Handshake) {
                Ok(_) => Some(tls),
                Err(verdict) => {
                    tracing::warn!(%peer, reason = verdict.refusal.as_str(), detail = %verdict.detail,
                        "admin TLS session refused");
                    None
                }
            }
        }
        Ok((Err(e), report)) => {
            let reason = crate::reject::RejectReason::of_handshake(&e, report.refused.as_ref());
            tracing::warn!(%peer, reason = reason.as_str(), error = %e, "admin TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, reason = "timeout", "admin TLS handshake refused");
            None
        }
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    state: AdminState,
    request: Request<Incoming>,
    peer: Peer,
) -> Result<Reply, Infallible> {
    let remote_without_tls = match peer {
        Peer::Tcp(addr) => !state.tls && !addr.ip().is_loopback(),
        Peer::Local { .. } => false,
    };
    Ok(match (request.method(), request.uri().path()) {
        // Without mTLS, only this host may change what runs.
        (&Method::POST, "/reload") if remote_without_tls => {
            tracing::warn!(%peer, "admin reload refused: not from loopback and admin TLS is off");
            text(
                StatusCode::FORBIDDEN,
                "reload is only accepted from loopback (or over admin TLS)\n",
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match crate::status::readiness(&state.daemon) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => metrics(&state),
        (&Method::GET, "/status") => json(StatusCode::OK, &crate::status::status(&state.daemon)),
        (&Method::POST, "/reload") => reload(&state).await,
        (&Method::GET, "/rotation") => rotation(&state, request.uri().query().unwrap_or("")),
        (_, "/healthz" | "/readyz" | "/metrics" | "/status" | "/reload" | "/rotation") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// `GET /rotation?phase=add-ca|reissue|remove-ca&ca=SHA256[&trust_domain=NAME]`.
fn rotation(state: &AdminState, query: &str) -> Reply {
    let mut phase = None;
    let mut ca = None;
    let mut domain = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("phase", v)) => phase = Some(v),
            Some(("ca", v)) => ca = Some(v),
            Some(("trust_domain", v)) => domain = Some(v),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown query parameter '{pair}'\n"),
                );
            }
        }
    }
    let Some(phase) = phase.and_then(Phase::parse) else {
        return text(
            StatusCode::BAD_REQUEST,
            "phase: one of add-ca, reissue, remove-ca is required\n",
        );
    };
    let Some(ca) = ca else {
        return text(
            StatusCode::BAD_REQUEST,
            "ca: the CA's SHA-256 is required\n",
        );
    };
    match crate::rotation::check(&state.daemon, phase, ca, domain) {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    }
}

fn metrics(state: &AdminState) -> Reply {
    let families = state.daemon.metrics.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(body) => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

async fn reload(state: &AdminState) -> Reply {
    let (reply, outcome) = oneshot::channel();
    let request = ReloadRequest {
        trigger: Trigger::Admin,
        reply: Some(reply),
    };
    if state.reloads.send(request).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Ok(outcome) = outcome.await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    };
    let status = match outcome.result {
        ReloadResult::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    json(status, &outcome)
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

pub(crate) fn text(status: StatusCode, body: &str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
