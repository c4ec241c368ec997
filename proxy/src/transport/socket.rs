//! A TCP stream that can move from one tokio runtime to another.
//!
//! TLS handshakes run on their own thread ([`super::handshake_thread`]),
//! while the connection then lives on the data path's runtime. A tokio
//! `TcpStream` belongs to the reactor it was registered with, and
//! tokio-rustls cannot rebuild a `TlsStream` from its parts, so the socket
//! under the finished `TlsStream` is swapped in place: [`MovableTcp::release`]
//! takes it off one reactor (a plain, non-blocking std socket in between)
//! and [`MovableTcp::adopt`] registers it with the runtime it is called on.
//! Nothing is lost in between: the kernel keeps what arrives, and
//! registering an fd that is already readable reports it at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream registered with one runtime's reactor, or in transit.
#[derive(Debug)]
pub struct MovableTcp(Place);

#[derive(Debug)]
enum Place {
    Registered(TcpStream),
    InTransit(std::net::TcpStream),
    /// A move failed half-way; the socket is closed.
    Lost,
}

impl MovableTcp {
    pub fn new(tcp: TcpStream) -> Self {
        Self(Place::Registered(tcp))
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            Place::Registered(tcp) => tcp.peer_addr(),
            Place::InTransit(tcp) => tcp.peer_addr(),
            Place::Lost => Err(lost()),
        }
    }

    /// Takes the socket off the reactor it is registered with, so another
    /// runtime can [`adopt`](Self::adopt) it. Reads and writes fail until
    /// then.
    pub fn release(&mut self) -> io::Result<()> {
        self.0 = match std::mem::replace(&mut self.0, Place::Lost) {
            Place::Registered(tcp) => Place::InTransit(tcp.into_std()?),
            Place::Lost => return Err(lost()),
            in_transit => in_transit,
        };
        Ok(())
    }

    /// Registers a released socket with the runtime this is called on.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled (tokio's own rule).
    pub fn adopt(&mut self) -> io::Result<()> {
        self.0 = match std::mem::replace(&mut self.0, Place::Lost) {
            Place::InTransit(tcp) => Place::Registered(TcpStream::from_std(tcp)?),
            Place::Lost => return Err(lost()),
            registered => registered,
        };
        Ok(())
    }

    fn registered(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.0 {
            Place::Registered(tcp) => Ok(Pin::new(tcp)),
            // A bug, not peer input: nothing polls a socket in transit.
            Place::InTransit(_) => {
                Err(io::Error::other("socket used while moving between threads"))
            }
            Place::Lost => Err(lost()),
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket lost while moving between threads",
    )
}

impl AsyncRead for MovableTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.registered()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for MovableTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.registered()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.registered()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket released on one runtime and adopted on another keeps
    /// working, and what arrived while it moved is read after the move.
    #[test]
    fn a_socket_moves_between_runtimes_without_losing_bytes() {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (mut moving, peer) = first.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let dial = TcpStream::connect(listener.local_addr().unwrap());
            let (accepted, dialed) = tokio::join!(listener.accept(), dial);
            let mut moving = MovableTcp::new(accepted.unwrap().0);
            let mut peer = dialed.unwrap();
            peer.write_all(b"before").await.unwrap();
            let mut buf = [0u8; 6];
            moving.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"before");
            moving.release().unwrap();
            // Written while the socket is on no reactor.
            peer.write_all(b"during").await.unwrap();
            let mut buf = [0u8; 1];
            let err = moving.read(&mut buf).await.unwrap_err();
            assert!(err.to_string().contains("moving"), "{err}");
            (moving, peer.into_std().unwrap())
        });
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        second.block_on(async {
            moving.adopt().unwrap();
            let mut peer = TcpStream::from_std(peer).unwrap();
            let mut buf = [0u8; 6];
            moving.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"during");
            moving.write_all(b"after").await.unwrap();
            let mut buf = [0u8; 5];
            peer.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"after");
            assert!(moving.peer_addr().is_ok());
        });
    }
}
