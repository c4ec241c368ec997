//! What the HTTP/2 and HTTP/1 modes share: driving a served connection to
//! its end, with GOAWAY on drain and on a peer that no longer qualifies.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use crate::connections::Registration;

/// Runs `connection` until it ends. When the daemon drains, or the peer no
/// longer qualifies after a trust change (`registration`), `shutdown` is
/// called once (hyper sends GOAWAY, or closes an idle HTTP/1 connection)
/// and in-flight requests may finish; a peer that no longer qualifies gets
/// at most `reload.drain_grace` for them, after which the connection is
/// dropped and `None` returned. (A drain is bounded by the daemon's drain
/// deadline instead.)
pub async fn drive<F, T>(
    mut connection: Pin<&mut F>,
    shutdown: impl Fn(Pin<&mut F>),
    draining: &CancellationToken,
    registration: Option<&Registration>,
) -> Option<T>
where
    F: Future<Output = T>,
{
    let leave = async {
        match registration {
            Some(registration) => registration.must_leave().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = connection.as_mut() => return Some(result),
        () = draining.cancelled() => {
            shutdown(connection.as_mut());
            return Some(connection.await);
        }
        () = leave => {}
    }
    shutdown(connection.as_mut());
    let closed = async {
        match registration {
            Some(registration) => registration.closed_by_policy().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = connection => Some(result),
        () = closed => None,
    }
}
