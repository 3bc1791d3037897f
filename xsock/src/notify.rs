//! Wake-ups for application threads waiting on the runtime.
//!
//! A [`Notifier`] is a generation counter that the datapath bumps when
//! something a waiter may care about changed. Every connection has its own
//! (a frame for stream 17 bumps stream 17's notifier, and wakes only who
//! waits on it), every listener has one, discovery has one, and the runtime
//! has one more for loops that wait on "anything" ([`crate::Runtime::idle`]).
//!
//! A busy-polling waiter spins on the counter without taking any lock; a
//! sleeping one waits on a condvar. A waiter reads the generation *before*
//! checking its condition and sleeps only while the generation is still the
//! same, and the producer bumps it before notifying under the same mutex, so
//! no wake-up is lost. A [`crate::Poller`] *watches* notifiers: a bump then
//! also queues the poller's token for the stream and wakes the poller.

use std::{
    sync::{
        Arc, Condvar, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::poller::PollerShared;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    generation: AtomicU64,
    /// Threads inside `wait_past`: a notify with none skips the condvar
    /// (whose wake-up is a system call even when nobody waits).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
    /// Whether `watchers` may be non-empty (checked without the lock).
    watched: AtomicBool,
    watchers: Mutex<Vec<(Weak<PollerShared>, usize)>>,
}

impl Notifier {
    pub fn new() -> Arc<Notifier> {
        Arc::new(Notifier::default())
    }

    /// The current generation (read before checking a condition).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Something changed: wake every waiter and watching poller.
    pub fn notify(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        // A sleeper registers before it checks the generation, so one that
        // registers after this load sees the new generation and never sleeps.
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.cond.notify_all();
        }
        if self.watched.load(Ordering::SeqCst) {
            let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            w.retain(|(poller, token)| match poller.upgrade() {
                Some(p) => {
                    p.push(*token);
                    true
                }
                None => false,
            });
            if w.is_empty() {
                self.watched.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Queues `token` on `poller` whenever this notifier is bumped (and once
    /// now, so the poller looks at the source's current state).
    pub fn watch(&self, poller: &Arc<PollerShared>, token: usize) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|(p, t)| !(p.ptr_eq(&Arc::downgrade(poller)) && *t == token) && p.strong_count() > 0);
        w.push((Arc::downgrade(poller), token));
        self.watched.store(true, Ordering::SeqCst);
        drop(w);
        poller.push(token);
    }

    /// Stops queueing `token` on `poller`.
    pub fn unwatch(&self, poller: &Arc<PollerShared>, token: usize) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|(p, t)| !(p.ptr_eq(&Arc::downgrade(poller)) && *t == token) && p.strong_count() > 0);
        if w.is_empty() {
            self.watched.store(false, Ordering::SeqCst);
        }
    }

    /// Spins until the generation moves past `seen` or `deadline` passes.
    pub fn spin_past(&self, seen: u64, deadline: Option<Instant>) {
        let mut n = 0u32;
        while self.generation() == seen {
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
        }
    }

    /// Sleeps until the generation moves past `seen`, or `max` passes.
    pub fn wait_past(&self, seen: u64, max: Duration) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() == seen {
            let _ = self.cond.wait_timeout_while(g, max, |_| self.generation() == seen);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_between_check_and_sleep_is_not_lost() {
        let n = Arc::new(Notifier::default());
        for _ in 0..200 {
            let seen = n.generation();
            let n2 = n.clone();
            let t = std::thread::spawn(move || n2.notify());
            // However the notify interleaves with this wait, it returns.
            n.wait_past(seen, Duration::from_secs(5));
            assert_ne!(n.generation(), seen);
            t.join().unwrap();
        }
    }

    #[test]
    fn spinning_stops_at_the_deadline() {
        let n = Notifier::default();
        let t0 = Instant::now();
        n.spin_past(n.generation(), Some(t0 + Duration::from_millis(5)));
        assert!(t0.elapsed() >= Duration::from_millis(5));
    }
}
