//! The datapath's timer facility: a min-heap of deadlines, each owned by a
//! handler and tagged with the handler's own token.
//!
//! There is no cancel: a handler that no longer wants a timer ignores its
//! token when it fires (sans-IO state machines re-arm from
//! `poll_timeout()` anyway, so stale firings are harmless and cheap).

use std::{cmp::Reverse, collections::BinaryHeap, time::Instant};

use crate::handler::HandlerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    seq: u64,
    handler: HandlerId,
    queue: usize,
    token: u64,
}

/// Pending timers, earliest first.
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

/// A timer that has come due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The handler that set it.
    pub handler: HandlerId,
    /// The queue it was set from (its callback gets that queue's sink).
    pub queue: usize,
    /// The handler's token.
    pub token: u64,
}

impl TimerQueue {
    /// Arms a timer for `handler` at `at`.
    pub fn set(&mut self, at: Instant, handler: HandlerId, queue: usize, token: u64) {
        self.seq += 1;
        self.heap.push(Reverse(Entry { at, seq: self.seq, handler, queue, token }));
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Removes and returns the earliest timer due at `now`, if any. Timers
    /// with equal deadlines come out in the order they were set.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        let Reverse(e) = self.heap.pop()?;
        Some(Due { handler: e.handler, queue: e.queue, token: e.token })
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_then_insertion_order() {
        let t0 = Instant::now();
        let h = HandlerId(0);
        let mut q = TimerQueue::default();
        q.set(t0 + Duration::from_millis(3), h, 0, 3);
        q.set(t0 + Duration::from_millis(1), h, 0, 1);
        q.set(t0 + Duration::from_millis(1), h, 1, 2);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert_eq!(q.pop_due(t0), None);
        let now = t0 + Duration::from_millis(2);
        assert_eq!(q.pop_due(now).map(|d| d.token), Some(1));
        assert_eq!(q.pop_due(now).map(|d| (d.token, d.queue)), Some((2, 1)));
        assert_eq!(q.pop_due(now), None);
        assert_eq!(q.len(), 1);
    }
}
