//! The two halves of an AF_XDP socket: the receive side (rx + fill rings)
//! and the transmit side (tx + completion rings). They are separate so a
//! receive callback can transmit while the received frame is still borrowed.
//!
//! Ownership rule (the AF_XDP contract, kernel docs "Usage"): a descriptor
//! handed to the fill or tx ring belongs to the kernel until it comes back
//! on the rx or completion ring. Every `FrameDesc` here is in exactly one
//! place: a ring, `spare`, `free` or `pending`.

use std::{io, os::fd::RawFd};

use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem, socket::XdpStatistics};

use crate::{
    device::{DeviceStats, FrameSink, RxFrame, TxError},
    sys,
};

/// `XDP_PKT_CONTD` (if_xdp.h): "this descriptor is not the last of its packet".
const XDP_PKT_CONTD: u32 = 1;

pub(super) struct RxSide {
    umem: Umem,
    rx_q: RxQueue,
    fill_q: FillQueue,
    /// Scratch for descriptors taken off the rx ring.
    descs: Vec<FrameDesc>,
    /// Receive frames not in the kernel's hands, most recently used last:
    /// the fill ring is topped up from the end, so the buffers the kernel
    /// writes next are the ones still in cache.
    spare: Vec<FrameDesc>,
    /// Frames on the fill ring or in the kernel, not yet received back.
    in_kernel: usize,
    /// How many frames to keep in the kernel's hands (see [`FillDepth`]).
    depth: FillDepth,
    fd: RawFd,
    frames: u64,
    bytes: u64,
}

impl RxSide {
    pub(super) fn new(umem: Umem, rx_q: RxQueue, fill_q: FillQueue, ring: usize, fill_min: usize, fd: RawFd) -> Self {
        Self {
            umem,
            rx_q,
            fill_q,
            descs: vec![FrameDesc::default(); ring],
            spare: Vec::with_capacity(ring * 2),
            in_kernel: 0,
            depth: FillDepth::with_min(ring, fill_min),
            fd,
            frames: 0,
            bytes: 0,
        }
    }

    /// Takes the receive frames and hands the first batch to the kernel.
    pub(super) fn prime(&mut self, frames: &[FrameDesc]) -> io::Result<()> {
        self.spare.extend_from_slice(frames);
        self.depth.max = self.depth.max.min(frames.len());
        self.refill_ring()
    }

    fn refill_ring(&mut self) -> io::Result<()> {
        let want = self.depth.target.saturating_sub(self.in_kernel).min(self.spare.len());
        if want == 0 {
            return Ok(());
        }
        // The reserve is all-or-nothing, so offer what fits.
        let n = (self.fill_q.nb_free(want as u32) as usize).min(want);
        if n > 0 {
            let start = self.spare.len() - n;
            // SAFETY: these descriptors came from this UMEM (at creation or
            // off the rx ring) and are in no ring now.
            let produced = unsafe { self.fill_q.produce(&self.spare[start..]) };
            debug_assert_eq!(produced, n);
            self.spare.truncate(self.spare.len() - produced);
            self.in_kernel += produced;
        }
        if self.fill_q.needs_wakeup() {
            sys::xsk_kick_rx(self.fd)?;
        }
        Ok(())
    }

    pub(super) fn receive(
        &mut self,
        budget: usize,
        tx: &mut TxSide,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize> {
        let want = budget.min(self.descs.len());
        if want == 0 {
            return Ok(0);
        }
        // SAFETY: the rx ring hands us descriptors of this socket's UMEM.
        let mut n = unsafe { self.rx_q.consume(&mut self.descs[..want]) };
        // A multi-buffer packet is placed on the ring whole; if the budget
        // cut it, take its remaining buffers now.
        while n > 0 && self.descs[n - 1].options() & XDP_PKT_CONTD != 0 && n < self.descs.len() {
            // SAFETY: as above.
            let got = unsafe { self.rx_q.consume_one(&mut self.descs[n]) };
            if got == 0 {
                break;
            }
            n += got;
        }
        let mut frames = 0;
        let mut i = 0;
        while i < n {
            let mut end = i;
            while end < n && self.descs[end].options() & XDP_PKT_CONTD != 0 {
                end += 1;
            }
            if end == n {
                // Truncated packet (cannot happen with a well-behaved
                // kernel): drop its buffers back to the fill ring.
                break;
            }
            let umem = &self.umem;
            // SAFETY: the descriptors came off the rx ring, so the kernel
            // has finished writing them and they are ours until refilled.
            let head = unsafe { umem.data(&self.descs[i]) }.contents();
            if end == i {
                self.bytes += head.len() as u64;
                on_frame(RxFrame::contiguous(head), tx);
            } else {
                let mut rest: [&[u8]; super::MAX_SEGMENTS] = [&[]; super::MAX_SEGMENTS];
                let count = (end - i).min(super::MAX_SEGMENTS);
                for (slot, desc) in rest.iter_mut().zip(&self.descs[i + 1..=i + count]) {
                    // SAFETY: as above.
                    *slot = unsafe { umem.data(desc) }.contents();
                }
                let frame = RxFrame::segmented(head, &rest[..count]);
                self.bytes += frame.len() as u64;
                on_frame(frame, tx);
            }
            frames += 1;
            i = end + 1;
        }
        self.frames += frames as u64;
        self.in_kernel -= n;
        self.spare.extend_from_slice(&self.descs[..n]);
        if n > 0 {
            // A full batch: more is waiting, a burst or sustained load.
            if n >= want {
                self.depth.grow();
            }
            self.depth.observe(n);
            if self.depth.check_due()
                && let Ok(k) = self.kernel_stats()
            {
                self.depth.observe_fill_empty(k.rx_fill_ring_empty_descs());
            }
        }
        self.refill_ring()?;
        Ok(frames)
    }

    pub(super) fn kernel_stats(&self) -> io::Result<XdpStatistics> {
        self.rx_q.fd().xdp_statistics()
    }

    pub(super) fn add_stats(&self, s: &mut DeviceStats) {
        s.rx_frames += self.frames;
        s.rx_bytes += self.bytes;
    }
}

/// The default [`super::AfXdpConfig::fill_min`].
pub const FILL_MIN_DEFAULT: usize = FillDepth::MIN;

/// How many receive buffers to keep on the fill ring.
///
/// The kernel takes fill-ring buffers in FIFO order, so a deep ring makes
/// every frame land in a buffer that has gone cold (with 4 KiB chunks, a
/// new page each time). At low rates a shallow ring keeps the working set in
/// cache; under load a deep ring keeps the kernel from running dry. The
/// depth doubles when one receive returns a full batch or a quarter of the
/// depth, and whenever the kernel reports having found the fill ring empty
/// (a drop; checked every [`FillDepth::DROP_CHECK_EVERY`] non-empty
/// receives). It halves after a long calm (4096 non-empty receives each
/// under 1/16 of it).
#[derive(Debug, Clone, Copy)]
pub(super) struct FillDepth {
    pub target: usize,
    pub min: usize,
    pub max: usize,
    calm: u32,
    receives: u32,
    fill_empty_seen: u64,
}

impl FillDepth {
    /// Absorbs a burst of 256 frames arriving while nobody polls; measured
    /// 0.2 µs slower per round trip than 64, 0.5 µs faster than a full ring.
    pub(super) const MIN: usize = 256;
    /// Non-empty receives between looks at the kernel's fill-ring-empty
    /// counter (one getsockopt; under 1% of the receive cost in copy mode).
    const DROP_CHECK_EVERY: u32 = 64;
    const CALM_RECEIVES: u32 = 4096;

    #[cfg(test)]
    fn new(max: usize) -> Self {
        Self::with_min(max, Self::MIN)
    }

    fn with_min(max: usize, min: usize) -> Self {
        let min = min.clamp(1, max);
        Self { target: min, min, max, calm: 0, receives: 0, fill_empty_seen: 0 }
    }

    fn grow(&mut self) {
        self.target = (self.target * 2).min(self.max);
        self.calm = 0;
    }

    /// Whether it is time to look at the kernel's drop counter.
    fn check_due(&mut self) -> bool {
        self.receives = self.receives.wrapping_add(1);
        self.receives.is_multiple_of(Self::DROP_CHECK_EVERY)
    }

    /// Feeds the kernel's cumulative fill-ring-empty count.
    fn observe_fill_empty(&mut self, count: u64) {
        if count > self.fill_empty_seen {
            self.fill_empty_seen = count;
            self.grow();
        }
    }

    fn observe(&mut self, received: usize) {
        if received == 0 {
            return;
        }
        if received * 4 >= self.target && self.target < self.max {
            self.grow();
        } else if received * 16 < self.target {
            self.calm += 1;
            if self.calm >= Self::CALM_RECEIVES && self.target > self.min {
                self.target = (self.target / 2).max(self.min);
                self.calm = 0;
            }
        } else {
            self.calm = 0;
        }
    }
}

/// Sizes the transmit side works with.
pub(super) struct TxLimits {
    /// Frame bytes one UMEM chunk holds.
    pub chunk_capacity: usize,
    /// Largest frame the device sends.
    pub max_frame: usize,
    /// Descriptors gathered before they are put on the ring.
    pub batch: usize,
    /// Size of the tx ring.
    pub ring_size: usize,
}

pub(super) struct TxSide {
    umem: Umem,
    tx_q: TxQueue,
    comp_q: CompQueue,
    free: Vec<FrameDesc>,
    /// Written, not yet on the tx ring.
    pending: Vec<FrameDesc>,
    /// Scratch for descriptors taken off the completion ring.
    completed: Vec<FrameDesc>,
    /// On the tx ring or in the kernel, not yet completed.
    in_flight: usize,
    /// Staging for a frame longer than one chunk (multi-buffer).
    scatter: Vec<u8>,
    limits: TxLimits,
    fd: RawFd,
    frames: u64,
    bytes: u64,
    ring_full: u64,
}

impl TxSide {
    pub(super) fn new(
        umem: Umem,
        tx_q: TxQueue,
        comp_q: CompQueue,
        free: Vec<FrameDesc>,
        limits: TxLimits,
        fd: RawFd,
    ) -> Self {
        let n = free.len();
        Self {
            umem,
            tx_q,
            comp_q,
            free,
            pending: Vec::with_capacity(n),
            completed: vec![FrameDesc::default(); n],
            in_flight: 0,
            scatter: Vec::new(),
            limits,
            fd,
            frames: 0,
            bytes: 0,
            ring_full: 0,
        }
    }

    /// Moves completed descriptors back to the free list.
    fn reclaim(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        // SAFETY: the completion ring returns descriptors of this UMEM that
        // the kernel has finished sending.
        let n = unsafe { self.comp_q.consume(&mut self.completed[..self.in_flight]) };
        self.in_flight -= n;
        // In copy mode a completed descriptor comes back with no length;
        // `transmit` sets the length on every reuse.
        self.free.extend_from_slice(&self.completed[..n]);
    }

    /// Puts pending descriptors on the tx ring, whole packets only.
    fn submit(&mut self) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let mut n = (self.tx_q.nb_free(self.pending.len() as u32) as usize).min(self.pending.len());
        while n > 0 && self.pending[n - 1].options() & XDP_PKT_CONTD != 0 {
            n -= 1;
        }
        if n == 0 {
            return 0;
        }
        // SAFETY: the descriptors are of this UMEM, written by `transmit`,
        // and in no ring.
        let produced = unsafe { self.tx_q.produce(&self.pending[..n]) };
        self.pending.drain(..produced);
        self.in_flight += produced;
        produced
    }

    /// Asks the kernel to send what is on the tx ring. In copy mode nothing
    /// leaves without this call (and each call sends at most a small batch).
    fn kick(&mut self) -> io::Result<()> {
        let unsent = (self.tx_q.nb_free_exact() as usize) < self.limits.ring_size;
        if unsent && self.tx_q.needs_wakeup() {
            sys::xsk_kick_tx(self.fd)?;
        }
        Ok(())
    }

    pub(super) fn add_stats(&self, s: &mut DeviceStats) {
        s.tx_frames += self.frames;
        s.tx_bytes += self.bytes;
        s.tx_ring_full += self.ring_full;
    }

    /// Fills one free chunk through `fill` (given `max_len` bytes, returning
    /// the length used) and queues it; a length of 0 returns the chunk.
    fn write_one(&mut self, max_len: usize, options: u32, fill: impl FnOnce(&mut [u8]) -> usize) -> usize {
        let mut desc = self.free.pop().expect("caller checked the free list");
        let len = {
            // SAFETY: `desc` is of this UMEM and in no ring, so nothing else
            // reads or writes its chunk.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            data.cursor().set_pos(max_len);
            let len = fill(data.contents_mut()).min(max_len);
            data.cursor().set_pos(len);
            len
        };
        if len == 0 {
            self.free.push(desc);
            return 0;
        }
        desc.set_options(options);
        self.pending.push(desc);
        len
    }
}

impl FrameSink for TxSide {
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError> {
        if max_len > self.limits.max_frame {
            return Err(TxError::TooLong { len: max_len, max: self.limits.max_frame });
        }
        let chunk = self.limits.chunk_capacity;
        let segments = max_len.div_ceil(chunk).max(1);
        if self.free.len() < segments {
            self.reclaim();
            if self.free.len() < segments {
                self.submit();
                let _ = self.kick();
                self.reclaim();
            }
            if self.free.len() < segments {
                self.ring_full += 1;
                return Err(TxError::RingFull);
            }
        }
        let len = if segments == 1 {
            self.write_one(max_len, 0, fill)
        } else {
            // Longer than one chunk: build in a staging buffer, then scatter.
            let mut staged = std::mem::take(&mut self.scatter);
            staged.resize(max_len, 0);
            let len = fill(&mut staged).min(max_len);
            let pieces = len.div_ceil(chunk);
            for (k, piece) in staged[..len].chunks(chunk).enumerate() {
                let options = if k + 1 < pieces { XDP_PKT_CONTD } else { 0 };
                self.write_one(piece.len(), options, |buf| {
                    buf[..piece.len()].copy_from_slice(piece);
                    piece.len()
                });
            }
            self.scatter = staged;
            len
        };
        if len > 0 {
            self.frames += 1;
            self.bytes += len as u64;
            if self.pending.len() >= self.limits.batch {
                self.submit();
            }
        }
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.submit();
        self.kick()?;
        self.reclaim();
        Ok(())
    }

    fn tx_space(&self) -> usize {
        self.free.len() / self.limits.max_frame.div_ceil(self.limits.chunk_capacity).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::FillDepth;

    #[test]
    fn depth_grows_under_load_and_shrinks_after_calm() {
        let mut d = FillDepth::new(2048);
        assert_eq!(d.target, FillDepth::MIN);
        d.observe(64); // a quarter of 256: under load
        assert_eq!(d.target, 512);
        d.observe(1); // a trickle does not grow it
        assert_eq!(d.target, 512);
        for _ in 0..FillDepth::CALM_RECEIVES {
            d.observe(1);
        }
        assert_eq!(d.target, 256, "a long calm halves it");
        for _ in 0..10 * FillDepth::CALM_RECEIVES {
            d.observe(1);
        }
        assert_eq!(d.target, FillDepth::MIN, "never below the floor");
    }

    #[test]
    fn depth_grows_when_the_kernel_reports_an_empty_fill_ring() {
        let mut d = FillDepth::new(2048);
        d.observe_fill_empty(0);
        assert_eq!(d.target, 256);
        d.observe_fill_empty(3);
        assert_eq!(d.target, 512);
        d.observe_fill_empty(3);
        assert_eq!(d.target, 512, "only new drops count");
        for _ in 0..5 {
            d.observe_fill_empty(d.fill_empty_seen + 1);
        }
        assert_eq!(d.target, 2048, "capped at the ring");
    }

    #[test]
    fn depth_fits_a_small_ring() {
        let d = FillDepth::new(64);
        assert_eq!((d.target, d.max), (64, 64));
    }
}
