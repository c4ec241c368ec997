//! Which of a connection task's futures to poll when it wakes.
//!
//! The task that drives an HTTP/2 connection wakes for every frame and
//! every stream's progress, but also waits on things that almost never
//! happen: a drain, a trust change, a reset flood, a timer tick, a PING's
//! answer. Polling all of those on every wake-up (what `select!` does) was
//! measured at about 2 % of the instructions per proxied call (issue 15).
//! A [`WakeGate`] gives those rare waiters a waker of their own that
//! notes it fired before it wakes the task, so the task polls them only
//! after one of them has fired, and polls the connection every time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The waker the rare waiters are polled with.
#[derive(Debug)]
pub struct WakeGate {
    shared: Arc<Shared>,
    waker: Waker,
}

#[derive(Debug)]
struct Shared {
    /// Set when a gated waiter fired (and at first, so they are polled once
    /// to register).
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for WakeGate {
    fn default() -> Self {
        Self::new()
    }
}

impl WakeGate {
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(shared.clone());
        Self { shared, waker }
    }

    /// Called on each poll of the task: keeps the task's waker for the
    /// gated waiters, and returns the context to poll them with when one
    /// of them fired since the last time (or [`WakeGate::rearm`] was
    /// called); `None` means they need no poll now.
    pub fn opened(&self, cx: &Context<'_>) -> Option<Context<'_>> {
        // Register before looking at the flag: a waiter that fires in
        // between sets it and wakes the task once more, which is harmless.
        self.shared.task.register(cx.waker());
        self.shared
            .fired
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }

    /// Polls the gated waiters on the next [`WakeGate::opened`] too: after
    /// one fired and was handled, the others (and a reset timer) must be
    /// polled again to register.
    pub fn rearm(&self) {
        self.shared.fired.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    /// Counts the task's wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn gated_waiters_are_polled_once_then_only_after_they_fire() {
        let count = Arc::new(Count(0.into()));
        let task = Waker::from(count.clone());
        let cx = Context::from_waker(&task);
        let gate = WakeGate::new();
        let notify = tokio::sync::Notify::new();
        let mut notified = pin!(notify.notified());

        // First poll: the waiter must be polled to register.
        let mut side = gate.opened(&cx).expect("polled at first");
        assert!(notified.as_mut().poll(&mut side).is_pending());
        // Woken by something else: the waiter is not polled.
        assert!(gate.opened(&cx).is_none());
        // The waiter fires: the task is woken and the gate opens once.
        notify.notify_one();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let mut side = gate.opened(&cx).expect("the waiter fired");
        assert_eq!(notified.as_mut().poll(&mut side), Poll::Ready(()));
        assert!(gate.opened(&cx).is_none());
        gate.rearm();
        assert!(gate.opened(&cx).is_some());
    }
}
