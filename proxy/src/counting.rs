//! A listener's counters — handshakes, refusals by class, connections,
//! and the bytes that cross the wire to and from the remote side — kept
//! as plain atomics next to the code that counts them; metrics and
//! `/status` read them at scrape time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use std::sync::atomic::AtomicU64;

use crate::reject::RejectReason;

/// Wraps the socket of the remote side (the TLS side) of a connection;
/// counts bytes received and sent as they move, so long-lived connections
/// show up in the figures before they close.
#[derive(Debug)]
pub struct CountingIo<T> {
    inner: T,
    stats: Arc<ListenerStats>,
}

impl<T> CountingIo<T> {
    pub fn new(inner: T, stats: Arc<ListenerStats>) -> Self {
        Self { inner, stats }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.stats
                .bytes_received
                .fetch_add(read as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            self.stats
                .bytes_sent
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counters for one listener, kept next to the code that counts them.
#[derive(Debug, Default)]
pub struct ListenerStats {
    handshakes_started: AtomicU64,
    handshakes: AtomicU64,
    handshakes_resumed: AtomicU64,
    refused: [AtomicU64; RejectReason::ALL.len()],
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    /// From the remote side (the TLS side), on the wire.
    pub(crate) bytes_received: AtomicU64,
    /// To the remote side, on the wire.
    pub(crate) bytes_sent: AtomicU64,
}

/// Counts a connection as active until dropped.
#[derive(Debug)]
pub struct ActiveConnection(Arc<ListenerStats>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ListenerStats {
    pub(crate) fn handshake_started(&self) {
        self.handshakes_started.fetch_add(1, Ordering::Relaxed);
    }

    /// A completed handshake with an admitted peer; `resumed` when it
    /// resumed a session instead of exchanging certificates.
    pub(crate) fn handshake_ok(&self, resumed: bool) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.handshakes_resumed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn refused(&self, reason: RejectReason) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(self: &Arc<Self>) -> ActiveConnection {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(self.clone())
    }

    /// Connections accepted so far, and open now.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.connections_total.load(Ordering::Relaxed),
            self.connections_active.load(Ordering::Relaxed),
        )
    }

    /// Bytes received from and sent to the remote side so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_received.load(Ordering::Relaxed),
            self.bytes_sent.load(Ordering::Relaxed),
        )
    }

    /// Refused handshakes of every class.
    pub fn total_refusals(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Handshakes started (completed, failed, or still running).
    pub fn handshakes_attempted(&self) -> u64 {
        self.handshakes_started.load(Ordering::Relaxed)
    }

    /// Handshakes that completed and whose peer was admitted (a peer that
    /// resets the connection right after completing counts here too).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Of [`Self::handshakes`], those that resumed a session.
    pub fn handshakes_resumed(&self) -> u64 {
        self.handshakes_resumed.load(Ordering::Relaxed)
    }

    /// Refused handshakes for `reason`.
    pub fn refusals(&self, reason: RejectReason) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }
}
