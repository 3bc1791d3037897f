//! Connection buffers that cost what they hold: byte rings made of chunks
//! from a pool shared by every connection of an endpoint, and the memory
//! budget the pool hands out.
//!
//! A connection's send side keeps every byte from the oldest
//! unacknowledged offset to the newest written one (so go-back-N can resend
//! from any offset in between); its receive side keeps bytes received in
//! order and not yet read. Both are [`ChunkRing`]s indexed by absolute
//! stream offset (u64, never wrapping): a ring holds exactly the chunks its
//! bytes occupy, takes a chunk from the [`BufferPool`] when a write crosses
//! into a new one and gives chunks back as bytes are released, so an idle
//! connection holds no buffer memory at all.
//!
//! The pool keeps released chunks warm (already faulted in) for reuse, and
//! starts with some: a first burst of traffic takes no page faults on its
//! latency path, which is what pre-faulting a fixed 4 MiB ring per
//! connection used to buy at 8 MiB per connection. How many it keeps
//! follows the traffic: [`BufferPool::age`] (called about once a second)
//! keeps enough to get back to the last interval's peak without the
//! allocator, and gives the rest back, so a busy runtime stops churning
//! pages and an idle one returns its memory.
//!
//! Memory is also *budgeted*: a connection reserves, before it grants
//! credit or accepts bytes to send, the bytes those may come to
//! ([`BufferPool::reserve`]). The sum of reservations never exceeds the
//! pool's limit, so chunks are only ever taken against a reservation and
//! the process's buffer memory is bounded by the limit.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Bytes per chunk (a power of two).
pub const CHUNK: usize = 16 << 10;
const SHIFT: u32 = CHUNK.trailing_zeros();

/// A memory budget: the most bytes connection buffers may reserve
/// together. One budget can be shared by several pools (and by other
/// buffer owners, like a runtime's TCP mode), so a process has one limit.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    reserved: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit, reserved: AtomicUsize::new(0) })
    }

    /// Reserves `bytes`; false (and nothing reserved) if that would pass
    /// the limit.
    pub fn reserve(&self, bytes: usize) -> bool {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_add(bytes).filter(|&n| n <= self.limit))
            .is_ok()
    }

    /// Gives back `bytes` reserved earlier.
    pub fn release(&self, bytes: usize) {
        let _ = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(bytes)));
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes not reserved.
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.reserved())
    }
}

/// What a pool holds, for status output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The budget: the most bytes connections may reserve together.
    pub limit: usize,
    /// Bytes reserved by connections now (of the whole budget, if it is
    /// shared with other pools).
    pub reserved: usize,
    /// Chunks holding connection bytes now.
    pub chunks_in_use: usize,
    /// Released chunks kept warm for reuse.
    pub chunks_warm: usize,
    /// Chunks ever allocated from the system (not from the warm list).
    pub chunks_allocated: u64,
    /// Chunks ever given back to the system (beyond the warm list).
    pub chunks_released: u64,
    /// Bytes by which receive windows together have grown beyond their
    /// first windows now.
    pub window_growth: usize,
}

/// Chunks and the budget they come out of (see the module documentation).
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<Box<[u8]>>,
    /// Warm chunks kept even when idle.
    warm_min: usize,
    budget: Arc<Budget>,
    in_use: usize,
    /// The most chunks in use since the last [`BufferPool::age`].
    peak: usize,
    allocated: u64,
    released: u64,
    /// Bytes by which receive windows together have grown beyond their
    /// first windows, and the most they may.
    growth: usize,
    growth_cap: usize,
}

impl BufferPool {
    /// A pool with its own budget of `limit` bytes and `warm` chunks
    /// allocated (and faulted in) now, kept warm even when idle.
    pub fn new(limit: usize, warm: usize) -> Self {
        Self::with_budget(Budget::new(limit), warm)
    }

    /// A pool drawing on a shared `budget`.
    pub fn with_budget(budget: Arc<Budget>, warm: usize) -> Self {
        let warm = warm.min(budget.limit() / CHUNK);
        let mut p = Self {
            free: Vec::new(),
            warm_min: warm,
            budget,
            in_use: 0,
            peak: 0,
            allocated: 0,
            released: 0,
            growth: 0,
            growth_cap: usize::MAX,
        };
        for _ in 0..warm {
            let c = p.fresh();
            p.free.push(c);
        }
        p
    }

    fn fresh(&mut self) -> Box<[u8]> {
        self.allocated += 1;
        let mut c = vec![0u8; CHUNK].into_boxed_slice();
        // Fault the pages in now (the allocator's zeroed memory may be
        // untouched mappings): an opaque store per page.
        for page in c.chunks_mut(4096) {
            page[0] = std::hint::black_box(0);
        }
        c
    }

    /// Reserves `bytes` of the budget; false (and nothing reserved) if the
    /// limit would be passed.
    pub fn reserve(&mut self, bytes: usize) -> bool {
        self.budget.reserve(bytes)
    }

    /// Gives back `bytes` reserved earlier.
    pub fn unreserve(&mut self, bytes: usize) {
        self.budget.release(bytes);
    }

    /// Caps how far all receive windows together may grow beyond their
    /// first windows.
    pub fn set_growth_cap(&mut self, bytes: usize) {
        self.growth_cap = bytes;
    }

    /// Takes `bytes` of window growth, if the cap has room.
    pub fn take_growth(&mut self, bytes: usize) -> bool {
        match self.growth.checked_add(bytes) {
            Some(g) if g <= self.growth_cap => {
                self.growth = g;
                true
            }
            _ => false,
        }
    }

    /// Gives back `bytes` of window growth.
    pub fn give_growth(&mut self, bytes: usize) {
        self.growth = self.growth.saturating_sub(bytes);
    }

    /// Bytes of window growth taken now.
    pub fn growth(&self) -> usize {
        self.growth
    }

    /// Bytes of budget not reserved.
    pub fn available(&self) -> usize {
        self.budget.available()
    }

    /// The budget this pool draws on.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// A chunk for connection bytes (warm if one is kept).
    pub fn take(&mut self) -> Box<[u8]> {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        match self.free.pop() {
            Some(c) => c,
            None => self.fresh(),
        }
    }

    /// Returns a chunk taken with [`BufferPool::take`].
    pub fn give(&mut self, c: Box<[u8]>) {
        self.in_use = self.in_use.saturating_sub(1);
        self.free.push(c);
    }

    /// Starts a new interval: keeps the warm chunks that would get the pool
    /// back to the last interval's peak (at least the warm minimum) and
    /// gives the others to the allocator. Returns how many were given back.
    pub fn age(&mut self) -> usize {
        let keep = self.peak.saturating_sub(self.in_use).max(self.warm_min);
        self.peak = self.in_use;
        let drop = self.free.len().saturating_sub(keep);
        if drop > 0 {
            self.free.truncate(keep);
            self.free.shrink_to(keep);
            self.released += drop as u64;
        }
        drop
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            limit: self.budget.limit(),
            reserved: self.budget.reserved(),
            chunks_in_use: self.in_use,
            chunks_warm: self.free.len(),
            chunks_allocated: self.allocated,
            chunks_released: self.released,
            window_growth: self.growth,
        }
    }
}

/// Bytes at stream offsets `[start, end)`, in chunks from a [`BufferPool`],
/// with the message boundaries that fall inside them.
///
/// The ring does no accounting of its own: the connection that owns it
/// decides how much may be pushed (its reservation). Chunks go back to the
/// pool as bytes are released, all of them once the ring is empty; a ring
/// that is dropped instead of [`ChunkRing::clear`]ed frees its chunks to
/// the system allocator (nothing leaks, the pool just loses them).
#[derive(Debug, Default)]
pub struct ChunkRing {
    chunks: VecDeque<Box<[u8]>>,
    /// Offset of the first byte of `chunks[0]` (a multiple of [`CHUNK`]).
    base: u64,
    start: u64,
    end: u64,
    /// Offsets where a message ends (exclusive end offsets), ascending,
    /// all in `(start, end]`.
    ends: VecDeque<u64>,
}

impl ChunkRing {
    /// An empty ring starting at offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offset of the first byte held.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Offset one past the last byte held.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Chunks held now.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Appends `data` (the caller has checked it may), taking chunks from
    /// `pool` as needed; with `end_message` a message boundary is recorded
    /// after it.
    pub fn push(&mut self, pool: &mut BufferPool, data: &[u8], end_message: bool) {
        if self.chunks.is_empty() {
            self.base = self.end & !(CHUNK as u64 - 1);
        }
        let mut written = 0;
        while written < data.len() {
            let at = self.end + written as u64 - self.base;
            let k = (at >> SHIFT) as usize;
            if k == self.chunks.len() {
                self.chunks.push_back(pool.take());
            }
            let within = (at as usize) & (CHUNK - 1);
            let run = (CHUNK - within).min(data.len() - written);
            self.chunks[k][within..within + run].copy_from_slice(&data[written..written + run]);
            written += run;
        }
        self.end += data.len() as u64;
        if end_message && !data.is_empty() && self.ends.back() != Some(&self.end) {
            self.ends.push_back(self.end);
        }
    }

    /// Records a message boundary at the current end (for a message whose
    /// last bytes were pushed without the flag).
    pub fn mark_end(&mut self) {
        if self.end > self.start.max(self.ends.back().copied().unwrap_or(0)) {
            self.ends.push_back(self.end);
        }
    }

    /// Copies bytes starting at `offset` (which must be held) into `out`,
    /// stopping at the end of the held bytes. Returns the bytes copied.
    pub fn copy_out(&self, offset: u64, out: &mut [u8]) -> usize {
        debug_assert!(offset >= self.start && offset <= self.end);
        let n = out.len().min(self.end.saturating_sub(offset) as usize);
        let mut done = 0;
        while done < n {
            let at = offset + done as u64 - self.base;
            let k = (at >> SHIFT) as usize;
            let within = (at as usize) & (CHUNK - 1);
            let run = (CHUNK - within).min(n - done);
            out[done..done + run].copy_from_slice(&self.chunks[k][within..within + run]);
            done += run;
        }
        n
    }

    /// The held bytes from `offset` on, as up to two... slices: the run up to
    /// the end of `offset`'s chunk (at most `max` bytes). Empty if none.
    pub fn run_at(&self, offset: u64, max: usize) -> &[u8] {
        if offset < self.start || offset >= self.end {
            return &[];
        }
        let at = offset - self.base;
        let k = (at >> SHIFT) as usize;
        let within = (at as usize) & (CHUNK - 1);
        let run = (CHUNK - within).min((self.end - offset) as usize).min(max);
        &self.chunks[k][within..within + run]
    }

    /// Drops bytes below `offset` (and the boundaries at or below it),
    /// returning the chunks they no longer need to `pool`.
    pub fn release_to(&mut self, pool: &mut BufferPool, offset: u64) {
        let offset = offset.clamp(self.start, self.end);
        self.start = offset;
        while self.ends.front().is_some_and(|&e| e <= offset) {
            self.ends.pop_front();
        }
        if self.start == self.end {
            self.clear(pool);
            return;
        }
        while self.base + CHUNK as u64 <= self.start {
            if let Some(c) = self.chunks.pop_front() {
                pool.give(c);
            }
            self.base += CHUNK as u64;
        }
    }

    /// Returns every chunk to `pool` (the bytes held are dropped; offsets
    /// stay where they are).
    pub fn clear(&mut self, pool: &mut BufferPool) {
        for c in self.chunks.drain(..) {
            pool.give(c);
        }
        self.start = self.end;
        self.ends.clear();
        if self.ends.capacity() > 64 {
            self.ends.shrink_to(8);
        }
        self.base = self.end & !(CHUNK as u64 - 1);
    }

    /// The first message boundary after `offset`, if any is held.
    pub fn next_end_after(&self, offset: u64) -> Option<u64> {
        // Boundaries are ascending and all above `start`: the first one is
        // the answer for `offset == start`, the common case.
        match self.ends.front() {
            Some(&e) if e > offset => Some(e),
            _ => self.ends.iter().copied().find(|&e| e > offset),
        }
    }

    /// Whether a message ends exactly at `offset`.
    pub fn is_end(&self, offset: u64) -> bool {
        self.ends.binary_search(&offset).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunks_come_and_go_with_the_bytes() {
        let mut pool = BufferPool::new(1 << 30, 2);
        let mut r = ChunkRing::new();
        let data: Vec<u8> = (0..3 * CHUNK + 100).map(|i| i as u8).collect();
        r.push(&mut pool, &data, true);
        assert_eq!(r.chunks(), 4);
        assert_eq!(pool.stats().chunks_in_use, 4);
        let mut out = vec![0u8; data.len()];
        assert_eq!(r.copy_out(0, &mut out), data.len());
        assert_eq!(out, data);
        r.release_to(&mut pool, CHUNK as u64 + 5);
        assert_eq!(r.chunks(), 3, "the first chunk went back");
        assert_eq!(r.copy_out(CHUNK as u64 + 5, &mut out[..10]), 10);
        assert_eq!(&out[..10], &data[CHUNK + 5..CHUNK + 15]);
        assert_eq!(r.next_end_after(0), Some(data.len() as u64));
        r.release_to(&mut pool, data.len() as u64);
        assert!(r.is_empty());
        assert_eq!(r.chunks(), 0, "an empty ring holds nothing");
        assert_eq!(pool.stats().chunks_in_use, 0);
        assert_eq!(pool.stats().chunks_warm, 4, "released chunks stay warm");
        assert_eq!(pool.age(), 0, "the last interval's peak is kept warm");
        assert_eq!(pool.age(), 2, "an idle interval gives back all but the minimum");
        assert_eq!(pool.stats().chunks_warm, 2);
        // Offsets go on from where they were, in a fresh chunk.
        r.push(&mut pool, b"abc", false);
        assert_eq!((r.start(), r.end()), (data.len() as u64, data.len() as u64 + 3));
        assert_eq!(r.run_at(r.start(), 10), b"abc");
    }

    #[test]
    fn the_budget_is_never_passed() {
        let mut pool = BufferPool::new(100, 0);
        assert!(pool.reserve(60));
        assert!(!pool.reserve(41));
        assert!(pool.reserve(40));
        assert_eq!(pool.available(), 0);
        pool.unreserve(60);
        assert!(!pool.reserve(usize::MAX), "no overflow");
        assert_eq!(pool.available(), 60);
    }

    proptest! {
        /// The ring behaves like an unbounded byte vector: whatever was
        /// pushed comes back at the same offsets, and it holds only the
        /// chunks its bytes occupy.
        #[test]
        fn matches_a_plain_vector(ops in proptest::collection::vec((0usize..40_000, 0u8..3), 1..60)) {
            let mut pool = BufferPool::new(usize::MAX, 0);
            let mut ring = ChunkRing::new();
            let mut model: Vec<u8> = Vec::new();
            let mut start = 0usize;
            let mut k = 0u8;
            for (n, op) in ops {
                match op {
                    0 | 1 => {
                        let data: Vec<u8> = (0..n).map(|_| { k = k.wrapping_add(1); k }).collect();
                        ring.push(&mut pool, &data, op == 1);
                        model.extend_from_slice(&data);
                    }
                    _ => {
                        let to = (start + n).min(model.len());
                        ring.release_to(&mut pool, to as u64);
                        start = to;
                    }
                }
                prop_assert_eq!(ring.start(), start as u64);
                prop_assert_eq!(ring.end(), model.len() as u64);
                let mut out = vec![0u8; model.len() - start];
                ring.copy_out(start as u64, &mut out);
                prop_assert_eq!(&out[..], &model[start..]);
                let held = model.len() - start;
                let first = start & !(CHUNK - 1);
                let span = if held == 0 { 0 } else { (model.len() - first).div_ceil(CHUNK) };
                prop_assert_eq!(ring.chunks(), span);
                prop_assert_eq!(pool.stats().chunks_in_use, span);
            }
        }
    }
}
