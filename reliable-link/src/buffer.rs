//! Fixed-capacity byte rings indexed by absolute stream offset, with the
//! message boundaries that fall inside them.
//!
//! The send side keeps every byte from the oldest unacknowledged offset to
//! the newest written one (so go-back-N can resend from any offset in
//! between); the receive side keeps bytes received in order and not yet
//! read. Offsets are u64 and never wrap.

use std::collections::VecDeque;

/// Bytes at stream offsets `[start, end)` in a ring of fixed capacity.
#[derive(Debug)]
pub struct ByteRing {
    buf: Box<[u8]>,
    start: u64,
    end: u64,
    /// Offsets where a message ends (exclusive end offsets), ascending,
    /// all in `(start, end]`.
    ends: VecDeque<u64>,
}

impl ByteRing {
    /// An empty ring holding up to `capacity` bytes, starting at offset 0.
    ///
    /// The memory is touched page by page now, so the first pass of a
    /// stream through the ring takes no page faults (otherwise one in every
    /// 4 KiB lands in some small message's round trip: a tail latency).
    pub fn new(capacity: usize) -> Self {
        let mut buf = vec![0u8; capacity.max(1)].into_boxed_slice();
        for page in buf.chunks_mut(4096) {
            // An opaque value, so the store to the allocator's zeroed memory
            // is not optimised away.
            page[0] = std::hint::black_box(0);
        }
        Self { buf, start: 0, end: 0, ends: VecDeque::new() }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len()
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

    /// Bytes that can still be appended.
    pub fn free(&self) -> usize {
        self.capacity() - self.len()
    }

    fn index(&self, offset: u64) -> usize {
        (offset % self.buf.len() as u64) as usize
    }

    /// Appends as much of `data` as fits; if all of it fits and `end_message`
    /// is set, a message boundary is recorded after it. Returns the bytes
    /// appended.
    pub fn push(&mut self, data: &[u8], end_message: bool) -> usize {
        let n = data.len().min(self.free());
        let mut written = 0;
        while written < n {
            let at = self.index(self.end + written as u64);
            let run = (self.buf.len() - at).min(n - written);
            self.buf[at..at + run].copy_from_slice(&data[written..written + run]);
            written += run;
        }
        self.end += n as u64;
        if end_message && n == data.len() && n > 0 && self.ends.back() != Some(&self.end) {
            self.ends.push_back(self.end);
        }
        n
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
        let n = out.len().min((self.end - offset) as usize);
        let mut done = 0;
        while done < n {
            let at = self.index(offset + done as u64);
            let run = (self.buf.len() - at).min(n - done);
            out[done..done + run].copy_from_slice(&self.buf[at..at + run]);
            done += run;
        }
        n
    }

    /// Drops bytes below `offset` (and the boundaries at or below it).
    pub fn release_to(&mut self, offset: u64) {
        let offset = offset.clamp(self.start, self.end);
        self.start = offset;
        while self.ends.front().is_some_and(|&e| e <= offset) {
            self.ends.pop_front();
        }
    }

    /// The first message boundary after `offset`, if any is held.
    pub fn next_end_after(&self, offset: u64) -> Option<u64> {
        self.ends.iter().copied().find(|&e| e > offset)
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
    fn wraps_and_keeps_offsets() {
        let mut r = ByteRing::new(8);
        assert_eq!(r.push(b"abcdef", true), 6);
        r.release_to(4);
        assert_eq!(r.push(b"ghijklm", false), 6, "only the free space");
        assert_eq!((r.start(), r.end()), (4, 12));
        let mut out = [0u8; 8];
        assert_eq!(r.copy_out(4, &mut out), 8);
        assert_eq!(&out, b"efghijkl");
        assert_eq!(r.next_end_after(4), Some(6));
        assert!(r.is_end(6));
        r.release_to(6);
        assert_eq!(r.next_end_after(6), None, "boundaries at or below the start are dropped");
    }

    proptest! {
        /// The ring behaves like an unbounded byte vector windowed to its
        /// capacity: whatever was pushed comes back at the same offsets.
        #[test]
        fn matches_a_plain_vector(ops in proptest::collection::vec((0usize..40, 0u8..3), 1..200), cap in 1usize..64) {
            let mut ring = ByteRing::new(cap);
            let mut model: Vec<u8> = Vec::new();
            let mut start = 0usize;
            let mut k = 0u8;
            for (n, op) in ops {
                match op {
                    0 | 1 => {
                        let data: Vec<u8> = (0..n).map(|_| { k = k.wrapping_add(1); k }).collect();
                        let took = ring.push(&data, op == 1);
                        prop_assert_eq!(took, n.min(cap - (model.len() - start)));
                        model.extend_from_slice(&data[..took]);
                    }
                    _ => {
                        let to = (start + n).min(model.len());
                        ring.release_to(to as u64);
                        start = to;
                    }
                }
                prop_assert_eq!(ring.start(), start as u64);
                prop_assert_eq!(ring.end(), model.len() as u64);
                let mut out = vec![0u8; model.len() - start];
                ring.copy_out(start as u64, &mut out);
                prop_assert_eq!(&out[..], &model[start..]);
            }
        }
    }
}
