//! Copying bytes both ways between two established streams.
//!
//! Each direction is its own loop, so a slow reader on one side only stalls
//! its own direction: a write that cannot complete stops that loop from
//! reading more (back-pressure) and nothing is buffered beyond one chunk.
//! End-of-stream on one side becomes a shutdown of the other side's write
//! half — for TLS a close_notify, for TCP a FIN — while the opposite
//! direction keeps flowing: half-close is preserved end to end.
//! A connection is idle only when neither direction has moved a byte for
//! the idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Most of a sidecar's connections wait far more than they move bytes, so
/// a direction starts with a small buffer; memory per held connection is
/// a goal (issue 7). The buffer is never zeroed: only the pages a read
/// writes become resident.
const SMALL_CHUNK: usize = 2 * 1024;
/// A read that fills the small buffer means bulk traffic: the direction
/// grows to a full TLS record, so TLS → plain moves whole records per read.
const LARGE_CHUNK: usize = 16 * 1024;
/// After this many reads in a row that would have fit the small buffer,
/// a grown direction returns to it (hysteresis, so a stream of mixed reads
/// does not reallocate every time).
const SHRINK_AFTER_SMALL_READS: u32 = 8;

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no data in either direction for {0:?}")]
    Idle(Duration),
    #[error("peer no longer verifies under the current trust bundle")]
    NoLongerTrusted,
    #[error("{side} side: {source}")]
    Io {
        side: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Relays between `a` and `b` until both directions have ended, one fails,
/// or the connection is idle for `idle`. `a_name`/`b_name` label errors.
pub async fn relay<A, B>(
    a: A,
    b: B,
    names: (&'static str, &'static str),
    idle: Duration,
) -> Result<Transferred, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let activity = Activity::new();

    let a_to_b = pump(&mut a_read, &mut b_write, names, &activity);
    let b_to_a = pump(&mut b_read, &mut a_write, (names.1, names.0), &activity);
    let both = futures_util::future::try_join(a_to_b, b_to_a);
    tokio::pin!(both);

    loop {
        tokio::select! {
            result = &mut both => {
                let (a_to_b, b_to_a) = result?;
                return Ok(Transferred { a_to_b, b_to_a });
            }
            () = tokio::time::sleep_until(activity.last() + idle) => {
                if activity.last() + idle <= Instant::now() {
                    return Err(RelayError::Idle(idle));
                }
            }
        }
    }
}

/// Copies `from` → `to` until EOF, then shuts `to` down.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    (from_name, to_name): (&'static str, &'static str),
    activity: &Activity,
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let read_err = |source| RelayError::Io {
        side: from_name,
        source,
    };
    let write_err = |source| RelayError::Io {
        side: to_name,
        source,
    };
    let mut buf = ChunkBuffer::new();
    let mut total = 0u64;
    loop {
        let n = from.read_buf(buf.empty()).await.map_err(read_err)?;
        if n == 0 {
            to.shutdown().await.map_err(write_err)?;
            return Ok(total);
        }
        buf.filled(n);
        activity.touch();
        to.write_all(buf.data()).await.map_err(write_err)?;
        to.flush().await.map_err(write_err)?;
        activity.touch();
        total += n as u64;
    }
}

/// One direction's buffer, sized to the traffic it sees.
struct ChunkBuffer {
    bytes: Vec<u8>,
    small_reads: u32,
}

impl ChunkBuffer {
    fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(SMALL_CHUNK),
            small_reads: 0,
        }
    }

    /// Empty, with room for one read of the current chunk size.
    fn empty(&mut self) -> &mut Vec<u8> {
        self.bytes.clear();
        &mut self.bytes
    }

    /// Records a read of `n` bytes and picks the size of the next one.
    fn filled(&mut self, n: usize) {
        let capacity = self.bytes.capacity();
        if n >= capacity && capacity < LARGE_CHUNK {
            self.small_reads = 0;
            self.bytes.reserve_exact(LARGE_CHUNK - self.bytes.len());
        } else if capacity > SMALL_CHUNK && n <= SMALL_CHUNK {
            self.small_reads += 1;
            if self.small_reads >= SHRINK_AFTER_SMALL_READS {
                self.small_reads = 0;
                let mut small = Vec::with_capacity(SMALL_CHUNK.max(n));
                small.extend_from_slice(&self.bytes);
                self.bytes = small;
            }
        } else {
            self.small_reads = 0;
        }
    }

    fn data(&self) -> &[u8] {
        &self.bytes
    }
}

/// The last moment a byte moved, shared by both directions.
struct Activity {
    start: Instant,
    last_millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_millis.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (client, proxy_a) = duplex(64);
        let (proxy_b, server) = duplex(64);
        let relay = tokio::spawn(relay(proxy_a, proxy_b, ("a", "b"), Duration::from_secs(5)));

        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut server_read, mut server_write) = tokio::io::split(server);
        client_write.write_all(b"request").await.unwrap();
        client_write.shutdown().await.unwrap();

        let mut got = Vec::new();
        server_read.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");

        // The server answers after seeing EOF; the answer still arrives.
        server_write.write_all(b"response").await.unwrap();
        server_write.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_read.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"response");

        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                a_to_b: 7,
                b_to_a: 8
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_closed_but_active_one_is_not() {
        let (client, proxy_a) = duplex(64);
        let (proxy_b, _server) = duplex(64);
        let relay = tokio::spawn(relay(proxy_a, proxy_b, ("a", "b"), Duration::from_secs(10)));
        let (_client_read, mut client_write) = tokio::io::split(client);
        // Keep it busy past the timeout...
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            client_write.write_all(b"x").await.unwrap();
        }
        assert!(!relay.is_finished());
        // ...then go quiet.
        let err = relay.await.unwrap().unwrap_err();
        assert!(matches!(err, RelayError::Idle(_)), "{err}");
    }

    #[test]
    fn a_direction_grows_for_bulk_and_shrinks_when_quiet() {
        let mut buf = ChunkBuffer::new();
        assert_eq!(buf.empty().capacity(), SMALL_CHUNK);

        // A read that fills the small buffer: bulk, grow, keep the bytes.
        buf.empty().extend(std::iter::repeat_n(7u8, SMALL_CHUNK));
        buf.filled(SMALL_CHUNK);
        assert!(buf.bytes.capacity() >= LARGE_CHUNK);
        assert_eq!(buf.data(), &[7u8; SMALL_CHUNK][..]);

        // Large reads keep it large; a few small ones do not shrink it.
        for _ in 0..SHRINK_AFTER_SMALL_READS - 1 {
            buf.empty().push(1);
            buf.filled(1);
        }
        buf.empty().extend(std::iter::repeat_n(2u8, LARGE_CHUNK));
        buf.filled(LARGE_CHUNK);
        assert!(buf.bytes.capacity() >= LARGE_CHUNK);

        // Enough small reads in a row: back to the small buffer, bytes kept.
        for i in 0..SHRINK_AFTER_SMALL_READS {
            buf.empty().extend_from_slice(b"hi");
            buf.filled(2);
            let shrunk = i + 1 == SHRINK_AFTER_SMALL_READS;
            assert_eq!(buf.bytes.capacity() == SMALL_CHUNK, shrunk, "read {i}");
            assert_eq!(buf.data(), b"hi");
        }
    }

    #[tokio::test]
    async fn bulk_through_the_relay_arrives_intact() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, proxy_a) = duplex(256 * 1024);
        let (proxy_b, mut server) = duplex(256 * 1024);
        let relay = tokio::spawn(relay(proxy_a, proxy_b, ("a", "b"), Duration::from_secs(5)));
        let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            // Mixed sizes: small writes, then bulk, then small again.
            for chunk in sent.chunks(100).take(50) {
                client_write.write_all(chunk).await.unwrap();
            }
            client_write.write_all(&sent[5000..]).await.unwrap();
            client_write.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert!(received == expected, "bytes changed in the relay");
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_read.read_to_end(&mut rest).await.unwrap();
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved.a_to_b, 3_000_000);
    }
}
