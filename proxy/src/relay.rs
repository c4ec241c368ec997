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

/// One chunk per direction: a full TLS record, so TLS → plain moves whole
/// records per read.
const CHUNK: usize = 16 * 1024;

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
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            to.shutdown().await.map_err(write_err)?;
            return Ok(total);
        }
        activity.touch();
        to.write_all(&buf[..n]).await.map_err(write_err)?;
        to.flush().await.map_err(write_err)?;
        activity.touch();
        total += n as u64;
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
}
