//! A thread of its own for the TLS handshakes of gRPC listeners.
//!
//! With one worker (the default) every established connection is served
//! by one thread. A full handshake is a few hundred microseconds of
//! signing and verifying on each side; run there, it holds up every call
//! that arrives meanwhile. gRPC listeners have few connections, each
//! carrying many calls: a renewal of this host's certificate makes its new
//! pooled connection beside the old one (make-before-break), and that
//! full handshake stalled the data path of both sides at every renewal
//! (issue 15). Their handshakes (inbound accepts, pool dials) run here, as
//! tasks on a runtime of their own; the finished stream's socket then
//! moves to the caller's runtime ([`super::socket::MovableTcp`]), where
//! the connection lives from then on.
//!
//! Only theirs: moving every handshake here was measured too, and the two
//! moves of each socket and the hops between threads cost a new
//! connection about a fifth more CPU (resumed connections per CPU-second
//! through a tcp pair −20 %, full handshakes −10 to −20 %). The tcp,
//! mariadb and http modes make a connection per session, where that cost
//! counts; their handshakes stay on the data path.
//!
//! The thread runs below the data path's CPU priority
//! ([`crate::cpu_priority`]): otherwise, at a renewal, the handshake held a
//! core a data path thread wanted, and only moved the wait there.
//!
//! The handshake keeps its own timeout, its counting and its policy
//! verdicts: only the thread changes. A caller that gives up drops the
//! handshake with it.

use std::future::Future;
use std::sync::OnceLock;

use tokio::sync::oneshot;
use tracing::Instrument;

/// The handshake thread: a runtime of one worker, for the life of the
/// process.
///
/// Multi-threaded with one worker rather than single-threaded: a
/// handshake whose key is in a token blocks on the token's signature,
/// and on this scheduler (`block_in_place`) the other handshakes move to
/// another thread meanwhile, so the token's sessions still sign in
/// parallel.
#[derive(Debug)]
pub struct HandshakeThread {
    runtime: tokio::runtime::Runtime,
}

/// The handshake thread dropped a job without an answer (a panic in it).
#[derive(Debug, thiserror::Error)]
#[error("the TLS handshake thread gave no answer (see the log for a panic)")]
pub struct HandshakeThreadGone;

impl HandshakeThread {
    /// The process's handshake thread, started on first use. `None` when
    /// it cannot start (the caller then runs handshakes itself).
    pub fn shared() -> Option<&'static HandshakeThread> {
        static SHARED: OnceLock<Option<HandshakeThread>> = OnceLock::new();
        SHARED
            .get_or_init(|| match Self::start() {
                Ok(thread) => Some(thread),
                Err(e) => {
                    tracing::warn!(error = %e,
                        "cannot start the TLS handshake thread; handshakes run on the data path");
                    None
                }
            })
            .as_ref()
    }

    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mtlsd-handshake")
            // Every thread of it, the ones `block_in_place` adds too.
            .on_thread_start(|| crate::cpu_priority::give_way_to_data_path("mtlsd-handshake"))
            .enable_all()
            .build()?;
        Ok(Self { runtime })
    }

    /// Runs `job` on the handshake thread and waits for its answer without
    /// blocking the caller's runtime. Dropping the returned future drops
    /// the job too.
    pub async fn run<F, T>(&self, job: F) -> Result<T, HandshakeThreadGone>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (mut answer, answered) = oneshot::channel();
        let job = async move {
            tokio::select! {
                out = job => { let _ = answer.send(out); }
                () = answer.closed() => {}
            }
        }
        .in_current_span();
        self.runtime.spawn(job);
        answered.await.map_err(|_| HandshakeThreadGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn a_job_runs_off_the_callers_thread_and_answers() {
        let thread = HandshakeThread::shared().expect("the thread starts");
        let caller = std::thread::current().id();
        let ran_on = thread
            .run(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(ran_on.as_deref(), Some("mtlsd-handshake"));
        let ran_on = thread
            .run(async { std::thread::current().id() })
            .await
            .unwrap();
        assert_ne!(ran_on, caller);
    }

    /// A handshake waiting for a token's signature blocks its thread
    /// (`block_in_place`, as the token signer does): the other handshakes
    /// go on meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn a_job_that_blocks_does_not_hold_up_the_others() {
        let thread = HandshakeThread::shared().expect("the thread starts");
        let (release, released) = std::sync::mpsc::channel::<()>();
        let blocked = tokio::spawn(thread.run(async move {
            tokio::task::block_in_place(|| released.recv_timeout(Duration::from_secs(20)).is_ok())
        }));
        // Give the blocking job time to start blocking.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let other =
            tokio::time::timeout(Duration::from_secs(10), thread.run(async { 6 * 7 })).await;
        assert_eq!(other.expect("held up by the blocked job").unwrap(), 42);
        release.send(()).unwrap();
        assert!(
            blocked.await.unwrap().unwrap(),
            "the blocked job was released"
        );
    }

    /// The worker the runtime starts in place of a blocked one as well.
    #[tokio::test(flavor = "current_thread")]
    async fn its_threads_run_below_the_data_paths_cpu_priority() {
        use crate::cpu_priority::{background_nice, calling_thread_nice};
        let thread = HandshakeThread::shared().expect("the thread starts");
        let expected = background_nice().unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let blocked = tokio::spawn(thread.run(async move {
            tokio::task::block_in_place(|| {
                let nice = (std::thread::current().id(), calling_thread_nice().unwrap());
                let _ = released.recv_timeout(Duration::from_secs(20));
                nice
            })
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let other = tokio::time::timeout(
            Duration::from_secs(10),
            thread.run(async { (std::thread::current().id(), calling_thread_nice().unwrap()) }),
        )
        .await
        .expect("held up by the blocked job")
        .unwrap();
        release.send(()).unwrap();
        let blocked = blocked.await.unwrap().unwrap();
        assert_ne!(
            blocked.0, other.0,
            "the second job ran on the blocked thread"
        );
        assert_eq!(
            (blocked.1, other.1),
            (expected, expected),
            "the handshake threads' nice values"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_gives_up_drops_its_job() {
        let thread = HandshakeThread::shared().expect("the thread starts");
        let finished = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let job = {
            let finished = finished.clone();
            let flag = Flag(dropped.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(30)).await;
                finished.store(true, Ordering::SeqCst);
            }
        };
        let gave_up = tokio::time::timeout(Duration::from_millis(50), thread.run(job)).await;
        assert!(gave_up.is_err());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !dropped.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(dropped.load(Ordering::SeqCst), "the job was not dropped");
        assert!(!finished.load(Ordering::SeqCst));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_is_an_error_and_the_thread_carries_on() {
        let thread = HandshakeThread::shared().expect("the thread starts");
        let failed = thread.run(async { panic!("bad handshake") }).await;
        assert!(matches!(failed, Err(HandshakeThreadGone)), "{failed:?}");
        assert_eq!(thread.run(async { 6 * 7 }).await.unwrap(), 42);
    }
}
