//! The connection limit: how many connections one serving process holds at
//! once, and the wait for one to close when all are held.
//!
//! A count and a wake, where a `tokio::sync::Semaphore` took its waiters'
//! lock at every release, once per connection, whether anyone waited or
//! not. Here a connection that closes touches one counter, and the lock
//! only when an accept loop is waiting for a slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Room for `cap` connections, shared by every accept loop of a process.
#[derive(Debug)]
pub(crate) struct Slots {
    cap: usize,
    /// Slots held.
    held: AtomicUsize,
    /// Accept loops waiting in [`Slots::take`].
    waiting: AtomicUsize,
    /// Told when a slot is given back while someone waits.
    freed: Notify,
}

/// One connection's room under the limit, given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Slots {
    pub(crate) fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            cap,
            held: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// How many connections may hold a slot at once.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// A slot, if one is free.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut held = self.held.load(Ordering::SeqCst);
        loop {
            if held >= self.cap {
                return None;
            }
            match self.held.compare_exchange_weak(
                held,
                held + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => held = now,
            }
        }
    }

    /// A slot, once one is free. Cancel-safe: dropped while waiting, it
    /// takes nothing, and a wake meant for it goes to another waiter.
    pub(crate) async fn take(self: &Arc<Self>) -> Slot {
        let _waiting = Waiting::new(self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so that a slot given back after
            // the look wakes this wait.
            freed.as_mut().enable();
            if let Some(slot) = self.try_take() {
                return slot;
            }
            freed.await;
        }
    }

    /// Slots held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.0;
        slots.held.fetch_sub(1, Ordering::SeqCst);
        // Sequentially consistent with the waiter's count and its look at
        // `held`: either the waiter saw this slot free, or this sees the
        // waiter.
        if slots.waiting.load(Ordering::SeqCst) > 0 {
            slots.freed.notify_one();
        }
    }
}

/// An accept loop counted as waiting for as long as this lives.
struct Waiting<'a>(&'a Slots);

impl<'a> Waiting<'a> {
    fn new(slots: &'a Slots) -> Waiting<'a> {
        slots.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(slots)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// No more than `cap` are held; each dropped slot is free again.
    #[test]
    fn holds_at_most_the_cap() {
        let slots = Slots::new(2);
        assert_eq!(slots.cap(), 2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.held(), 2);
        drop(a);
        assert_eq!(slots.held(), 1);
        let c = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop((b, c));
        assert_eq!(slots.held(), 0);
    }

    /// A wait ends when a slot is given back, and each of several waiters
    /// gets one of the slots given back, however the gives and waits
    /// interleave.
    #[test]
    fn every_waiter_is_woken_by_a_slot_given_back() {
        let runtime = runtime();
        runtime.block_on(async {
            for _ in 0..200 {
                let slots = Slots::new(3);
                let held: Vec<Slot> = (0..3).map(|_| slots.try_take().unwrap()).collect();
                let waiters: Vec<_> = (0..3)
                    .map(|_| {
                        let slots = slots.clone();
                        tokio::spawn(async move { slots.take().await })
                    })
                    .collect();
                tokio::task::yield_now().await;
                // Given back from another thread, while the waiters start.
                std::thread::spawn(move || drop(held)).join().unwrap();
                for waiter in waiters {
                    let slot = tokio::time::timeout(Duration::from_secs(10), waiter)
                        .await
                        .expect("a waiter was not woken by a slot given back")
                        .unwrap();
                    drop(slot);
                }
                assert_eq!(slots.held(), 0);
            }
        });
    }

    /// A wait given up (an accept loop told to stop) takes no slot, and
    /// counts as waiting no more.
    #[test]
    fn a_wait_given_up_takes_nothing() {
        let runtime = runtime();
        runtime.block_on(async {
            let slots = Slots::new(1);
            let held = slots.try_take().unwrap();
            let gave_up = tokio::time::timeout(Duration::from_millis(20), slots.take()).await;
            assert!(gave_up.is_err());
            assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
            drop(held);
            assert_eq!(slots.held(), 0);
            let again = slots.take().await;
            assert_eq!(slots.held(), 1);
            drop(again);
        });
    }
}
