//! Per-queue counters, readable from any thread.
//!
//! The poll loop counts in plain integers and publishes them to shared
//! atomics once per pass (plain stores, no read-modify-write on the hot
//! path). Kernel-side figures (AF_XDP ring drops) are refreshed at most every
//! [`KERNEL_REFRESH`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use xsock_nic::DeviceStats;

/// How often the poll loop re-reads the kernel's socket statistics.
pub const KERNEL_REFRESH: Duration = Duration::from_millis(50);

/// Counters of one queue, as last published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Queue index within the datapath.
    pub queue: usize,
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames received that no handler claimed (unknown EtherType), dropped.
    pub rx_unclaimed: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Transmit attempts refused because the ring had no free buffer.
    pub tx_ring_full: u64,
    /// Frames the kernel dropped before we saw them (ring full, no fill buffer).
    pub rx_dropped: u64,
    /// Times the kernel found our rx ring full.
    pub rx_ring_full: u64,
    /// Times the kernel found our fill ring empty.
    pub fill_ring_empty: u64,
    /// Poll passes.
    pub polls: u64,
    /// Times the loop went to sleep in poll(2) for lack of work.
    pub sleeps: u64,
}

/// The hot-path tally of one queue (owned by the poll loop).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_unclaimed: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_ring_full: u64,
    pub polls: u64,
    pub sleeps: u64,
}

#[derive(Debug, Default)]
struct Shared {
    values: [AtomicU64; 12],
}

/// A handle on the published counters of every queue; clone it freely.
#[derive(Debug, Clone)]
pub struct Counters {
    queues: Arc<[Shared]>,
}

impl Counters {
    pub(crate) fn new(queues: usize) -> Self {
        Self { queues: (0..queues).map(|_| Shared::default()).collect() }
    }

    pub(crate) fn publish(&self, queue: usize, t: &Tally) {
        let v = &self.queues[queue].values;
        for (slot, x) in v.iter().zip([
            t.rx_frames,
            t.rx_bytes,
            t.rx_unclaimed,
            t.tx_frames,
            t.tx_bytes,
            t.tx_ring_full,
            t.polls,
            t.sleeps,
        ]) {
            slot.store(x, Relaxed);
        }
    }

    pub(crate) fn publish_kernel(&self, queue: usize, d: &DeviceStats) {
        let v = &self.queues[queue].values;
        v[8].store(d.rx_dropped, Relaxed);
        v[9].store(d.rx_ring_full, Relaxed);
        v[10].store(d.fill_ring_empty, Relaxed);
        v[11].store(d.tx_ring_full, Relaxed);
    }

    /// Number of queues.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The last published counters of `queue`.
    pub fn get(&self, queue: usize) -> QueueStats {
        let v = &self.queues[queue].values;
        let l = |i: usize| v[i].load(Relaxed);
        QueueStats {
            queue,
            rx_frames: l(0),
            rx_bytes: l(1),
            rx_unclaimed: l(2),
            tx_frames: l(3),
            tx_bytes: l(4),
            // Refusals seen by the loop, plus any the device counted itself.
            tx_ring_full: l(5).max(l(11)),
            polls: l(6),
            sleeps: l(7),
            rx_dropped: l(8),
            rx_ring_full: l(9),
            fill_ring_empty: l(10),
        }
    }

    /// The last published counters of every queue.
    pub fn all(&self) -> Vec<QueueStats> {
        (0..self.queues()).map(|q| self.get(q)).collect()
    }
}
