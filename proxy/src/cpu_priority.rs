//! The threads that work beside the data path give way to it for the CPU.
//!
//! Two threads take slow work off the data path's thread: the generation
//! builder (`reloading/builder.rs`) and the gRPC listeners' handshake
//! thread (`transport/handshake_thread.rs`). On a small host they still
//! want the same cores, and at the same moment: a renewal of the
//! certificate wakes both, on both sides of a connection. At the same
//! priority, a data path thread woken by a call while one of them holds
//! the core waits for the kernel to end that thread's time slice, and the
//! call waits with it. Measured with the reload figure (issue 15, 2 cores,
//! `perf` on the scheduler's switches): the data path threads waited more
//! than 100 µs 6.3–8.2 times in the 13 ms after each renewal, against
//! 3.6–5.8 times with these threads at nice 10; the calls over 1 ms in the
//! 12 ms after each renewal fell from 60–95 to 40–53 per 20 renewals.
//!
//! Why 10 steps and not the lowest priority: under full contention a
//! thread at nice 10 still gets about a tenth of a core beside a data path
//! thread (kernel weights 110 : 1024), so a revocation still applies
//! within tens of milliseconds on a saturated core. Nice 19 (about 1.5 %)
//! gained nothing more in the same runs, and `SCHED_IDLE` (0.3 %) could
//! hold a trust change behind a busy data path for seconds.
//!
//! The steps count from the process's own nice value (its main thread's),
//! so an operator's `Nice=` in the unit moves both together. Lowering a
//! priority needs no privilege; the shipped unit lets `setpriority(2)`
//! through its system call filter. Where a sandbox refuses it, the thread
//! runs at the process's priority, as it did before, and logs why once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// How many nice steps below the process's own the background threads run.
pub const NICE_STEPS_BELOW_DATA_PATH: i32 = 10;

/// The highest nice value, the lowest priority, Linux has.
const LOWEST: i32 = 19;

/// Lowers the calling thread's CPU priority to
/// [`NICE_STEPS_BELOW_DATA_PATH`] below the process's own. `thread` names
/// it in the log line that says it could not; that line is written once
/// per process (tokio starts handshake threads as it needs them, and each
/// would be refused alike).
pub fn give_way_to_data_path(thread: &str) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if let Err(e) = lower_calling_thread()
        && !SAID.swap(true, Ordering::Relaxed)
    {
        tracing::info!(
            thread,
            error = %e,
            "cannot lower this thread's CPU priority; it competes with the data path at the \
             process's priority (calls may slow down around reloads)"
        );
    }
}

/// The nice value the background threads run at: the process's own plus
/// [`NICE_STEPS_BELOW_DATA_PATH`], at most the lowest priority.
pub fn background_nice() -> io::Result<i32> {
    Ok(process_nice()?
        .saturating_add(NICE_STEPS_BELOW_DATA_PATH)
        .min(LOWEST))
}

/// The nice value the thread now has. Idempotent: it counts from the main
/// thread's value, not the caller's, so a thread started by one that
/// already gave way (it inherits the lower priority) lands on the same
/// value.
pub fn lower_calling_thread() -> io::Result<i32> {
    let target = background_nice()?;
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), target)?;
    Ok(target)
}

/// The calling thread's nice value.
pub fn calling_thread_nice() -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(
        rustix::thread::gettid(),
    ))?)
}

/// The process's own nice value: its main thread's.
pub fn process_nice() -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(
        rustix::process::getpid(),
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_itself_below_the_process_and_only_once() {
        let process = process_nice().unwrap();
        let (first, again, child) = std::thread::spawn(|| {
            let first = lower_calling_thread().unwrap();
            assert_eq!(calling_thread_nice().unwrap(), first);
            let again = lower_calling_thread().unwrap();
            // A thread started by a lowered one inherits its value and,
            // lowering itself, stays there.
            let child = std::thread::spawn(|| lower_calling_thread().unwrap())
                .join()
                .unwrap();
            (first, again, child)
        })
        .join()
        .unwrap();
        let expected = (process + NICE_STEPS_BELOW_DATA_PATH).min(LOWEST);
        assert!(expected > process || process == LOWEST);
        assert_eq!(background_nice().unwrap(), expected);
        assert_eq!((first, again, child), (expected, expected, expected));
        // Only the calling thread changed, not the process.
        assert_eq!(process_nice().unwrap(), process);
    }
}
