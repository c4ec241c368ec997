//! The one place the current generation lives.
//!
//! Readers (every accepted connection) take a cheap snapshot with
//! [`MaterialStore::current`] and keep using it for that connection's whole
//! handshake, so a swap in the middle cannot mix material. Writers (start-up
//! and reload) publish a fully built generation in one atomic store. There is
//! no way to publish a partial generation and no empty state: a store only
//! exists once a first good generation does, so nothing serves before that.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::generation::Generation;

#[derive(Debug)]
pub struct MaterialStore {
    current: ArcSwap<Generation>,
    /// Serialises publishers so generation numbers are strictly increasing.
    publish_lock: std::sync::Mutex<()>,
}

impl MaterialStore {
    /// A store holding `first` as generation 1.
    pub fn new(mut first: Generation) -> Self {
        first.set_number(1);
        Self {
            current: ArcSwap::from_pointee(first),
            publish_lock: std::sync::Mutex::new(()),
        }
    }

    /// The generation in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Makes `next` the current generation and returns its number.
    pub fn publish(&self, mut next: Generation) -> u64 {
        // A poisoned lock only means another publisher panicked between
        // two plain integer reads; the swap itself is still atomic.
        let _guard = self
            .publish_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let number = self.current.load().number() + 1;
        next.set_number(number);
        self.current.store(Arc::new(next));
        number
    }
}
