//! One long-lived thread reads files and builds every generation.
//!
//! Building a generation allocates the whole inventory and every TLS
//! config. glibc gives each thread that allocates its own arena and does
//! not hand memory freed in one arena to another; tokio's blocking pool
//! starts and retires threads as it likes, so with `spawn_blocking` each
//! reload could build in a fresh arena while the last generation's memory
//! sat in an old one. Measured with a 50,000-host inventory: RSS rose
//! from 167 MB to 657 MB over 16 reloads. With every build on the same
//! thread, the memory a generation frees is what the next one reuses.
//! (It also keeps the work off the runtime: with one worker, the
//! default, a build there would stall every connection.) The daemon now
//! links mimalloc (see `main.rs`), which returns freed pages itself; one
//! thread still means one build at a time and warm free lists for it.
//!
//! It runs below the data path's CPU priority ([`crate::cpu_priority`]):
//! a build at a renewal otherwise holds a core a data path thread wants.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The thread; dropping this lets it finish its queue and exit.
#[derive(Debug)]
pub(super) struct Builder {
    jobs: mpsc::Sender<Job>,
}

/// A job gave no answer: it panicked (the thread carries on with the next
/// one), or the thread is gone.
#[derive(Debug, thiserror::Error)]
#[error("the generation builder thread gave no answer (a bug: see the log for a panic)")]
pub(super) struct BuilderGone;

impl Builder {
    pub(super) fn spawn() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mtlsd-builder".to_owned())
            .spawn(move || {
                crate::cpu_priority::give_way_to_data_path("mtlsd-builder");
                for job in queue {
                    // A panic in one build must not leave every later
                    // reload without a builder: its answer is dropped,
                    // which the caller sees as `BuilderGone`.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the builder thread and waits for its answer without
    /// blocking the runtime.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BuilderGone> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = answer.send(work());
            }))
            .map_err(|_| BuilderGone)?;
        answered.await.map_err(|_| BuilderGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn every_job_runs_on_the_same_thread_off_the_runtime() {
        let builder = Builder::spawn().unwrap();
        let runtime_thread = std::thread::current().id();
        let first = builder.run(|| std::thread::current().id()).await.unwrap();
        let second = builder.run(|| std::thread::current().id()).await.unwrap();
        assert_eq!(first, second);
        assert_ne!(first, runtime_thread);
        assert_eq!(builder.run(|| 6 * 7).await.unwrap(), 42);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn builds_run_below_the_data_paths_cpu_priority() {
        let builder = Builder::spawn().unwrap();
        // Exact, not just "above": a test run at nice 19 cannot go lower.
        let expected = crate::cpu_priority::background_nice().unwrap();
        let nice = builder
            .run(crate::cpu_priority::calling_thread_nice)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(nice, expected, "the builder's nice value");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_is_an_error_and_the_next_job_still_runs() {
        let builder = Builder::spawn().unwrap();
        let failed = builder.run(|| -> u8 { panic!("bad build") }).await;
        assert!(matches!(failed, Err(BuilderGone)), "{failed:?}");
        assert_eq!(builder.run(|| 6 * 7).await.unwrap(), 42);
    }
}
