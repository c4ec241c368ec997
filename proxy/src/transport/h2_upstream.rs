//! The gRPC modes' upstream: one multiplexed HTTP/2 connection per pool,
//! driven with the `h2` crate directly.
//!
//! hyper's client layers (the legacy pool, the connection task's request
//! queue, a spawned task per request body and per response) cost more per
//! call than the HTTP/2 work itself on this path (issue 15's profile). Here
//! a call opens its stream on the shared connection from the task that
//! serves the downstream stream, sends the request body from that same task
//! while it waits for the response headers, and hands the response body
//! back as it arrives: no task and no channel per call. Only a request body
//! still streaming when the response starts gets a task of its own, so the
//! two directions of a bidirectional call never wait on each other.
//!
//! Each connection has one task of its own that drives it, sends keep-alive
//! PINGs (a peer that vanished without a FIN is noticed within the
//! handshake timeout of a PING) and closes it after `idle_timeout` without
//! an open stream. A connection that ends (closed by the peer, a GOAWAY, a
//! policy close after a trust change) is replaced at the next call.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::{Ping, PingPong};
use http::{Request, Response};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::coalesce::Coalescing;
use super::h2_stream::{BodyPump, H2Body};
use super::handshake::Handshaker;
use super::pool::TlsConnection;
use super::wake_gate::WakeGate;
use crate::config::{ListenerConfig, Outbound, Timeouts};
use crate::error_chain::root_cause;

/// Flow-control windows and buffers for the upstream leg (hyper's client
/// defaults, which the flow-control tests were written against): a
/// stalled reader holds at most a window's worth per stream in mtlsd.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Why a call could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect")]
    Connect(#[source] io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("the peer did not negotiate h2 (ALPN)")]
    NotH2,
    #[error("HTTP/2 error")]
    H2(#[source] h2::Error),
    /// Another call's dial, which this call waited for, failed.
    #[error("{0}")]
    DialFailed(Arc<str>),
}

/// How a pool's connection is dialed.
#[derive(Debug, Clone)]
pub enum Dial {
    /// h2c to the local daemon.
    Plain { authority: http::uri::Authority },
    /// mTLS to a remote host, through the shared handshake (so refusals are
    /// classified and counted) and registered for policy closes.
    Remote {
        handshaker: Handshaker,
        listener: Arc<ListenerConfig>,
        outbound: Outbound,
        client_addr: SocketAddr,
    },
}

/// A pool of one HTTP/2 connection to one upstream; cheap to clone.
#[derive(Debug, Clone)]
pub struct H2Upstream {
    inner: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    dial: Dial,
    timeouts: Timeouts,
    /// The live connection, if any.
    current: Mutex<Option<Live>>,
    /// Held while dialing, so concurrent first calls share one connection.
    dialing: tokio::sync::Mutex<()>,
    /// Set once a warm-up dial ([`H2Upstream::warm`]) has finished, either
    /// way.
    warmed: AtomicBool,
    /// Dial attempts finished, and why the last one failed: calls that
    /// waited for a dial that failed share its answer instead of each
    /// dialing again in turn (a black-holed upstream would otherwise cost
    /// the last of N waiting calls N timeouts).
    dials: AtomicU64,
    last_failure: Mutex<Option<Arc<str>>>,
}

#[derive(Debug, Clone)]
struct Live {
    sender: SendRequest<Bytes>,
    state: Arc<ConnState>,
}

/// What the calls on a connection and its driver share.
#[derive(Debug)]
pub struct ConnState {
    born: Instant,
    /// Set by the driver when the connection has ended.
    ended: AtomicBool,
    open_streams: AtomicUsize,
    /// Milliseconds since `born` when the last stream ended.
    idle_since_ms: AtomicU64,
}

impl ConnState {
    fn stream(self: &Arc<Self>) -> ActiveStream {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        ActiveStream(self.clone())
    }

    fn idle_for(&self) -> Duration {
        if self.open_streams.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(since)
    }
}

/// A response body from the upstream; it keeps its stream counted as open
/// on its connection until dropped.
pub type UpstreamBody = H2Body<ActiveStream>;

/// One open stream on a connection; ends when dropped.
#[derive(Debug)]
pub struct ActiveStream(Arc<ConnState>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms, Ordering::Relaxed);
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl H2Upstream {
    pub fn new(dial: Dial, timeouts: Timeouts) -> Self {
        Self {
            inner: Arc::new(Pool {
                dial,
                timeouts,
                current: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(()),
                warmed: AtomicBool::new(false),
                dials: AtomicU64::new(0),
                last_failure: Mutex::new(None),
            }),
        }
    }

    /// Sends `request` on the pool's connection (dialed first when there is
    /// none) and resolves with the response headers; its body streams on.
    pub async fn request<B>(
        &self,
        request: Request<B>,
    ) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = request.into_parts();
        let (mut sender, state) = self.ready_sender().await?;
        let end_of_stream = body.is_end_stream();
        let mut head = Request::from_parts(parts, ());
        *head.version_mut() = http::Version::HTTP_2;
        let active = state.stream();
        let (response, send) = sender
            .send_request(head, end_of_stream)
            .map_err(|e| self.failed(&state, e))?;
        let mut pump = (!end_of_stream).then(|| BodyPump::new(body, send));
        let mut response = std::pin::pin!(response);
        let response = std::future::poll_fn(|cx| {
            if let Some(p) = &mut pump
                && p.poll_pump(cx).is_ready()
            {
                pump = None;
            }
            response.as_mut().poll(cx)
        })
        .await
        .map_err(UpstreamError::H2)?;
        if let Some(mut rest) = pump {
            // A request still streaming: on its own from here, so a
            // response the downstream reads slowly never holds it up.
            tokio::spawn(std::future::poll_fn(move |cx| rest.poll_pump(cx).map(drop)));
        }
        Ok(response.map(|recv| H2Body::new(recv, active)))
    }

    /// Dials this pool's connection in the background, so the first call
    /// finds it up ([`Self::warmed`] says when the attempt is over). A
    /// failure is only logged: the next call dials again and answers for it.
    pub fn warm(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            if let Err(e) = pool.ready_sender().await {
                tracing::debug!(error = %e, "warming a new upstream pool failed; the next call dials again");
            }
            pool.inner.warmed.store(true, Ordering::Release);
        });
    }

    /// Whether a [`Self::warm`] attempt has finished (connected or not).
    pub fn warmed(&self) -> bool {
        self.inner.warmed.load(Ordering::Acquire)
    }

    /// A sender ready for a new stream: the live connection's, or a new
    /// connection's when there is none or it can take no more streams (it
    /// ended, or the peer sent GOAWAY). Nothing of the request has been
    /// sent yet, so one redial is always safe.
    async fn ready_sender(&self) -> Result<(SendRequest<Bytes>, Arc<ConnState>), UpstreamError> {
        let (Live { sender, state }, fresh) = match self.live() {
            Some(live) => (live, false),
            None => (Box::pin(self.dial_shared()).await?, true),
        };
        match sender.ready().await {
            Ok(sender) => Ok((sender, state)),
            Err(e) if fresh => Err(self.failed(&state, e)),
            Err(e) => {
                tracing::debug!(error = %e, "pooled upstream connection takes no more streams; dialing a new one");
                self.forget(&state);
                let Live { sender, state } = Box::pin(self.dial_shared()).await?;
                match sender.ready().await {
                    Ok(sender) => Ok((sender, state)),
                    Err(e) => Err(self.failed(&state, e)),
                }
            }
        }
    }

    fn live(&self) -> Option<Live> {
        let current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|live| !live.state.ended.load(Ordering::Acquire))
            .cloned()
    }

    /// Drops `state`'s connection from the pool (when it is still the
    /// current one) and passes the error on.
    fn failed(&self, state: &Arc<ConnState>, e: h2::Error) -> UpstreamError {
        self.forget(state);
        UpstreamError::H2(e)
    }

    fn forget(&self, state: &Arc<ConnState>) {
        let mut current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|live| Arc::ptr_eq(&live.state, state))
        {
            *current = None;
        }
    }

    /// Dials unless another call just did (then shares its connection).
    /// Callers box it: a TLS handshake's future is kilobytes, and the
    /// per-call future that holds it inline is moved on every call.
    async fn dial_shared(&self) -> Result<Live, UpstreamError> {
        let seen = self.inner.dials.load(Ordering::Acquire);
        let _dialing = self.inner.dialing.lock().await;
        if let Some(live) = self.live() {
            return Ok(live);
        }
        if self.inner.dials.load(Ordering::Acquire) != seen
            && let Some(why) = self
                .inner
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        {
            return Err(UpstreamError::DialFailed(why));
        }
        let dialed = self.dial().await;
        *self
            .inner
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = dialed
            .as_ref()
            .err()
            // What `forward` shows of an error is its root cause: the calls
            // that shared this dial then say what the first one said.
            .map(|e| Arc::from(root_cause(e).to_string().as_str()));
        self.inner.dials.fetch_add(1, Ordering::Release);
        let live = dialed?;
        *self.inner.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
        Ok(live)
    }

    async fn dial(&self) -> Result<Live, UpstreamError> {
        let timeouts = self.inner.timeouts;
        match &self.inner.dial {
            Dial::Plain { authority } => {
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let port = authority.port_u16().unwrap_or(80);
                let tcp = tokio::time::timeout(timeouts.connect, TcpStream::connect((host, port)))
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout(timeouts.connect))?
                    .map_err(UpstreamError::Connect)?;
                tcp.set_nodelay(true).map_err(UpstreamError::Connect)?;
                start(Coalescing::new(tcp), timeouts).await
            }
            Dial::Remote {
                handshaker,
                listener,
                outbound,
                client_addr,
            } => {
                let tls = TlsConnection::dial(handshaker, listener, outbound, *client_addr)
                    .await
                    .map_err(UpstreamError::Connect)?;
                if !tls.negotiated_h2() {
                    return Err(UpstreamError::NotH2);
                }
                start(tls, timeouts).await
            }
        }
    }
}

/// The HTTP/2 handshake on `io`, and the connection's driver task.
async fn start<T>(io: T, timeouts: Timeouts) -> Result<Live, UpstreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(1024))
        .handshake::<_, Bytes>(io)
        .await
        .map_err(UpstreamError::H2)?;
    let state = Arc::new(ConnState {
        born: Instant::now(),
        ended: AtomicBool::new(false),
        open_streams: AtomicUsize::new(0),
        idle_since_ms: AtomicU64::new(0),
    });
    tokio::spawn(drive(connection, state.clone(), timeouts));
    Ok(Live { sender, state })
}

/// Drives one connection until it ends, the peer stops answering PINGs or
/// it has been idle for `idle_timeout`.
async fn drive<T>(mut connection: Connection<T, Bytes>, state: Arc<ConnState>, timeouts: Timeouts)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let interval = (timeouts.idle / 3).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut pinger: Option<PingPong> = connection.ping_pong();
    let mut next_tick = tokio::time::Instant::now() + interval;
    let mut pong_due: Option<tokio::time::Instant> = None;
    // The connection wakes this task for every frame; the PING's answer
    // and the timer are polled only after one of them fired (`WakeGate`).
    let gate = WakeGate::new();
    let timer = tokio::time::sleep_until(next_tick);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(ended) = Pin::new(&mut connection).poll(cx) {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
                return Poll::Ready(());
            }
            let Some(mut waits) = gate.opened(cx) else {
                return Poll::Pending;
            };
            if pong_due.is_some()
                && let Some(p) = &mut pinger
                && let Poll::Ready(pong) = p.poll_pong(&mut waits)
            {
                pong_due = None;
                if pong.is_err() {
                    return Poll::Ready(());
                }
            } else if timer.as_mut().poll(&mut waits).is_ready() {
                if pong_due.is_some() {
                    tracing::warn!(timeout = ?timeouts.handshake,
                        "upstream did not answer a keep-alive PING; closing the connection");
                    return Poll::Ready(());
                }
                if state.idle_for() >= timeouts.idle {
                    tracing::debug!(idle = ?timeouts.idle, "pooled upstream connection idle; closing");
                    return Poll::Ready(());
                }
                if let Some(p) = &mut pinger
                    && p.send_ping(Ping::opaque()).is_ok()
                {
                    pong_due = Some(tokio::time::Instant::now() + timeouts.handshake);
                }
                next_tick = tokio::time::Instant::now() + interval;
            } else {
                return Poll::Pending;
            }
            timer.as_mut().reset(pong_due.unwrap_or(next_tick));
            gate.rearm();
        }
    })
    .await;
    state.ended.store(true, Ordering::Release);
}
