//! Fewer, larger writes on HTTP/2 connections over TLS.
//!
//! h2 flushes each time its connection task runs with frames to send, and
//! the frames of one unary gRPC call reach that task in several turns
//! (headers, body and trailers come from the calls, which run in other
//! tasks or, on the listener side, in other turns of the same task). Over
//! TLS every flush was its own record and its own `sendto`, so a call cost
//! several of each (issue 7's profile: most of the L7 CPU is in the
//! kernel). [`Coalescing`] keeps what h2 writes and, at the first flush,
//! yields once, waking the connection: frames that the calls hand over
//! meanwhile join the same write. (On a listener the wake-up marks the
//! connection to be polled again after the streams that were woken, in
//! the same turn of its task: see `protocols/h2_serve.rs`.) Writes stay
//! bounded ([`LIMIT`]): beyond it, they go through and back-pressure is
//! the inner stream's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes through without waiting for a flush.
const LIMIT: usize = 64 * 1024;
/// Capacity kept between flushes (a full TLS record); more is released.
const KEEP: usize = 16 * 1024;

#[derive(Debug)]
pub struct Coalescing<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes held at most: [`LIMIT`], or 0 to pass every write through.
    limit: usize,
    /// The flush in progress has already yielded once.
    yielded: bool,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            limit: LIMIT,
            yielded: false,
        }
    }

    /// Holds nothing: every write goes straight through (for connections
    /// whose protocol already writes a message at a time, HTTP/1.1).
    pub fn passthrough(inner: T) -> Self {
        Self {
            limit: 0,
            ..Self::new(inner)
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes everything held to the inner stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        while written < self.buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.buf.drain(..written);
                    return Poll::Pending;
                }
            }
        }
        self.buf.clear();
        self.buf.shrink_to(KEEP);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > this.limit {
            ready!(this.poll_drain(cx))?;
            if data.len() >= this.limit {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > this.limit {
            ready!(this.poll_drain(cx))?;
            if total >= this.limit {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A buffer of a full record or more is bulk: no reason to wait.
        if !this.buf.is_empty() && this.buf.len() < KEEP && !this.yielded {
            // Let the tasks that are about to add frames run first.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_a_flush_and_arrive_in_order() {
        let (near, mut far) = tokio::io::duplex(1024 * 1024);
        let mut io = Coalescing::new(near);
        io.write_all(b"headers").await.unwrap();
        io.write_all(b"+body").await.unwrap();
        let mut probe = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(20), far.read(&mut probe)).await;
        assert!(early.is_err(), "bytes went out before the flush");
        io.flush().await.unwrap();
        let mut got = vec![0u8; 12];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"headers+body");
    }

    #[tokio::test]
    async fn passthrough_writes_at_once() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = Coalescing::passthrough(near);
        io.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        assert!(io.buf.is_empty());
    }

    #[tokio::test]
    async fn large_writes_go_through_with_back_pressure() {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut io = Coalescing::new(near);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            io.write_all(&data).await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == expected, "bytes changed");
    }
}
