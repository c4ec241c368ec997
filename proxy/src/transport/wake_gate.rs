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
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The waker the rare waiters are polled with: a [`WakeSet`] of one part
/// whose task is woken on every wake-up, its own poll included.
#[derive(Debug, Default)]
pub struct WakeGate(WakeSet<1>);

impl WakeGate {
    pub fn new() -> Self {
        Self(WakeSet::new())
    }

    /// Called on each poll of the task: keeps the task's waker for the
    /// gated waiters, and returns the context to poll them with when one
    /// of them fired since the last time (or [`WakeGate::rearm`] was
    /// called); `None` means they need no poll now.
    pub fn opened(&self, cx: &Context<'_>) -> Option<Context<'_>> {
        // Register before looking at the mark: a waiter that fires in
        // between marks it and wakes the task once more, which is harmless.
        self.0.leave(cx);
        self.0.take(0)
    }

    /// Polls the gated waiters on the next [`WakeGate::opened`] too: after
    /// one fired and was handled, the others (and a reset timer) must be
    /// polled again to register.
    pub fn rearm(&self) {
        self.0.mark(0);
    }
}

/// Wakers for the parts of one task that are polled apart (an HTTP/2
/// connection and the streams it serves), so a wake-up polls only the part
/// that was woken, and a part woken while the task is being polled (a
/// stream that queued a frame wakes its connection) is polled again in the
/// same turn instead of scheduling the task once more.
#[derive(Debug)]
pub struct WakeSet<const N: usize> {
    shared: Arc<SetShared>,
    wakers: [Waker; N],
}

#[derive(Debug)]
struct SetShared {
    /// One bit per part: woken since it was last polled.
    fired: AtomicU32,
    /// The task's waker, taken out while the task is being polled.
    task: AtomicWaker,
}

#[derive(Debug)]
struct PartWaker {
    shared: Arc<SetShared>,
    bit: u32,
}

impl Wake for PartWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.fired.fetch_or(self.bit, Ordering::AcqRel);
        self.shared.task.wake();
    }
}

impl<const N: usize> Default for WakeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> WakeSet<N> {
    /// Every part starts woken, so each is polled once to register.
    pub fn new() -> Self {
        const { assert!(N >= 1 && N <= 32) };
        let shared = Arc::new(SetShared {
            fired: AtomicU32::new(u32::MAX >> (32 - N)),
            task: AtomicWaker::new(),
        });
        let wakers = std::array::from_fn(|part| {
            Waker::from(Arc::new(PartWaker {
                shared: shared.clone(),
                bit: 1 << part,
            }))
        });
        Self { shared, wakers }
    }

    /// Called when the task's poll begins: from now until
    /// [`WakeSet::leave`], a part's wake-up only marks it.
    pub fn enter(&self) {
        drop(self.shared.task.take());
    }

    /// The context to poll `part` with if it was woken since its last
    /// poll (clearing the mark), `None` if it needs no poll.
    pub fn take(&self, part: usize) -> Option<Context<'_>> {
        let bit = 1 << part;
        (self.shared.fired.fetch_and(!bit, Ordering::AcqRel) & bit != 0)
            .then(|| Context::from_waker(&self.wakers[part]))
    }

    /// Marks `part` to be polled on the task's next poll (the task is not
    /// woken: the caller is about to poll it).
    pub fn mark(&self, part: usize) {
        self.shared.fired.fetch_or(1 << part, Ordering::AcqRel);
    }

    /// Whether any part is marked.
    pub fn any(&self) -> bool {
        self.shared.fired.load(Ordering::Acquire) != 0
    }

    /// Called before the task's poll returns `Pending`: from now on a
    /// part's wake-up wakes the task. Returns `true` if a part was woken
    /// meanwhile, so the task must go on polling instead.
    pub fn leave(&self, cx: &Context<'_>) -> bool {
        self.shared.task.register(cx.waker());
        self.any()
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

    #[test]
    fn a_part_woken_during_the_poll_is_marked_not_scheduled() {
        let count = Arc::new(Count(0.into()));
        let task = Waker::from(count.clone());
        let cx = Context::from_waker(&task);
        let set = WakeSet::<2>::new();

        // Both parts are polled at first; a part woken while the task is
        // being polled is polled again in the same turn, not scheduled.
        set.enter();
        let first = set.take(0).expect("polled at first");
        assert!(set.take(1).is_some());
        first.waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(set.leave(&cx), "the woken part must be polled again");
        set.enter();
        let again = set.take(0).expect("marked");
        assert!(set.take(1).is_none());
        assert!(!set.leave(&cx));
        // Once the poll has ended, a wake-up schedules the task, and only
        // the part that was woken is polled.
        again.waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        set.enter();
        assert!(set.take(1).is_none());
        assert!(set.take(0).is_some());
        // A part marked by the task itself does not wake it.
        set.mark(1);
        assert!(set.take(1).is_some());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
