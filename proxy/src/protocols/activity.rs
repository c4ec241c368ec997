//! What one HTTP connection (h2 or HTTP/1) is doing, so that idle and
//! abusive connections cannot hold a listener's slots.
//!
//! hyper serves a connection for as long as the peer keeps it open: an
//! authenticated peer that never sends the HTTP/2 preface, or sends it
//! and then stays silent (answering PINGs), would keep its slot forever,
//! and `max_connections` such peers lock everyone else out. A peer that
//! opens and resets streams as fast as it can makes mtlsd forward every
//! one. [`Activity`] records the facts that decide both — whether the
//! peer sent anything yet, how many streams are open, since when none is,
//! and how fast streams end early — and `l7::drive` acts on them: close a
//! connection whose peer sent nothing within the handshake timeout, send
//! GOAWAY to one with no open stream for `idle_timeout`, and to one whose
//! peer resets streams faster than [`RESET_RATE`] allows.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Streams a peer may end early (reset, cancel) per second on average…
pub const RESET_RATE: f64 = 50.0;
/// …with bursts of this many (a client shutting down cancels its calls).
pub const RESET_BURST: f64 = 200.0;

/// One connection's activity, shared by its I/O, its streams and the task
/// that drives it.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    read_any: AtomicBool,
    open_streams: AtomicUsize,
    /// Milliseconds since `started` when the last stream ended.
    idle_since_ms: AtomicU64,
    resets: Mutex<TokenBucket>,
    /// Cancelled when the peer resets streams too fast.
    flood: CancellationToken,
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            started: now,
            read_any: AtomicBool::new(false),
            open_streams: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            resets: Mutex::new(TokenBucket {
                tokens: RESET_BURST,
                at: now,
            }),
            flood: CancellationToken::new(),
        })
    }

    /// Whether the peer has sent any byte (for h2: its preface).
    pub fn heard_from_peer(&self) -> bool {
        self.read_any.load(Ordering::Relaxed)
    }

    /// How long no stream has been open; zero while one is.
    pub fn idle_for(&self) -> Duration {
        if self.open_streams.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(since)
    }

    /// Resolves when the peer has reset streams faster than allowed.
    pub async fn flooding(&self) {
        self.flood.cancelled().await;
    }

    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// A stream (request) starts; it ends when the guard drops.
    pub fn stream(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            activity: self.clone(),
            completed: AtomicBool::new(false),
        }
    }

    fn stream_ended(&self, completed: bool) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Relaxed);
        self.open_streams.fetch_sub(1, Ordering::Relaxed);
        if !completed {
            let mut bucket = self.resets.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(bucket.at).as_secs_f64() * RESET_RATE;
            bucket.tokens = (bucket.tokens + refill).min(RESET_BURST) - 1.0;
            bucket.at = now;
            if bucket.tokens < 0.0 {
                self.flood.cancel();
            }
        }
    }
}

/// One open stream; ending without [`StreamGuard::complete`] counts as
/// ended early (the peer reset or cancelled it).
#[derive(Debug)]
pub struct StreamGuard {
    activity: Arc<Activity>,
    completed: AtomicBool,
}

impl StreamGuard {
    pub fn complete(self) {
        self.mark_complete();
    }

    fn mark_complete(&self) {
        self.completed.store(true, Ordering::Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.activity
            .stream_ended(self.completed.load(Ordering::Relaxed));
    }
}

/// A response body that ends its stream's guard: completed when the body
/// reached its end, early when it is dropped before.
pub struct Tracked<B> {
    inner: B,
    guard: Option<StreamGuard>,
}

impl<B> std::fmt::Debug for Tracked<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: StreamGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The end of the body, or trailers (always last): hyper may stop
        // polling once `is_end_stream` says so, without a final `None`.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            _ => false,
        };
        if ended && let Some(guard) = self.guard.take() {
            guard.complete();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end && let Some(guard) = &self.guard {
            guard.mark_complete();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A hyper service whose every request is a tracked stream: the guard is
/// taken when the request arrives and ends with the response body (early
/// if the peer resets the stream, even while the handler still waits).
#[derive(Debug, Clone)]
pub struct TrackStreams<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> TrackStreams<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

/// The body type of every response the L7 modes send: what
/// [`TrackStreams`] wraps, so it lives here and `l7` re-exports it.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The error of a response body: hyper's (an HTTP/1.1 upstream) or h2's
/// (an HTTP/2 one).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, Req> hyper::service::Service<Req> for TrackStreams<S>
where
    S: hyper::service::Service<Req, Response = http::Response<BoxBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Req) -> Self::Future {
        let guard = self.activity.stream();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| BodyExt::boxed(Tracked::new(body, guard))))
        })
    }
}

/// The connection's I/O, noting the first byte the peer sends.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !self.activity.heard_from_peer() {
            self.activity.read_any.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_ends_beyond_the_burst_flag_a_flood_and_completions_do_not() {
        let activity = Activity::new();
        for _ in 0..1000 {
            activity.stream().complete();
        }
        assert!(!activity.flood.is_cancelled());
        for _ in 0..(RESET_BURST as usize - 10) {
            drop(activity.stream());
        }
        assert!(!activity.flood.is_cancelled(), "within the burst");
        for _ in 0..20 {
            drop(activity.stream());
        }
        assert!(activity.flood.is_cancelled());
    }

    #[test]
    fn idle_counts_from_the_last_stream_and_not_while_one_is_open() {
        let activity = Activity::new();
        let open = activity.stream();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        open.complete();
        assert!(activity.idle_for() < Duration::from_millis(15));
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
    }
}
