//! A seeded fault injector that wraps any frame device: loss, duplication,
//! reordering, corruption and delay on the frames it transmits.
//!
//! Everything random comes from one [`SeededRng`], so a given seed, clock
//! and call sequence produce the same faults every run. Delayed and
//! reordered frames are held in the wrapper and released to the inner
//! device when due — on any later call (`receive`, `transmit`, `flush`), and
//! `wait` wakes in time for the next one.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    os::fd::BorrowedFd,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    clock::{Clock, SeededRng, SystemClock},
    device::{DeviceInfo, DeviceStats, FrameDevice, FrameSink, RxFrame, TxError},
};

/// What a receiver does with a frame whose bits were flipped in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Corruption {
    /// The receiving NIC checks the Ethernet FCS and drops it (what real
    /// hardware does; counted in `fcs_drops`).
    #[default]
    CaughtByFcs,
    /// It reaches the receiver corrupted (an FCS miss; tests that a parser
    /// or protocol survives garbage).
    Delivered,
}

/// Fault probabilities and delays. All probabilities are per frame.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Probability a frame is lost.
    pub loss: f64,
    /// Probability a frame is sent twice.
    pub duplicate: f64,
    /// Probability a frame is held back so later frames overtake it.
    pub reorder: f64,
    /// How long a reordered frame is held back, at most (uniform in (0, window]).
    pub reorder_window: Duration,
    /// Probability one bit of a frame is flipped.
    pub corrupt: f64,
    /// What the receiver does with a corrupted frame.
    pub corruption: Corruption,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra uniform delay in [0, jitter] (reorders frames too).
    pub jitter: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Duration::from_micros(200),
            corrupt: 0.0,
            corruption: Corruption::CaughtByFcs,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

/// What the injector did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames offered to the injector.
    pub offered: u64,
    /// Frames dropped as lost.
    pub lost: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Frames held back to be overtaken.
    pub reordered: u64,
    /// Frames corrupted and delivered.
    pub corrupted: u64,
    /// Frames corrupted and dropped by the receiver's FCS check.
    pub fcs_drops: u64,
    /// Frames the inner device refused (ring full) and that were lost.
    pub inner_full: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    due: Instant,
    seq: u64,
    frame: Vec<u8>,
}

struct FaultState {
    config: FaultConfig,
    rng: SeededRng,
    clock: Arc<dyn Clock>,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    stats: FaultStats,
}

impl FaultState {
    fn offer(&mut self, frame: Vec<u8>) {
        self.stats.offered += 1;
        let c = &self.config;
        if self.rng.chance(c.loss) {
            self.stats.lost += 1;
            return;
        }
        let mut frame = frame;
        if self.rng.chance(c.corrupt) && !frame.is_empty() {
            if c.corruption == Corruption::CaughtByFcs {
                self.stats.fcs_drops += 1;
                return;
            }
            let bit = self.rng.below(frame.len() as u64 * 8);
            frame[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }
        let copies = if self.rng.chance(c.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let now = self.clock.now();
        for i in 0..copies {
            let mut due = now + self.config.delay;
            if !self.config.jitter.is_zero() {
                due += Duration::from_nanos(self.rng.below(self.config.jitter.as_nanos() as u64 + 1));
            }
            if self.rng.chance(self.config.reorder) {
                self.stats.reordered += 1;
                due += Duration::from_nanos(1 + self.rng.below(self.config.reorder_window.as_nanos().max(1) as u64));
            }
            self.seq += 1;
            let f = if i + 1 == copies { std::mem::take(&mut frame) } else { frame.clone() };
            self.held.push(Reverse(Held { due, seq: self.seq, frame: f }));
        }
    }

    /// Sends every due frame through `inner`.
    fn release(&mut self, inner: &mut dyn FrameSink) {
        let now = self.clock.now();
        while self.held.peek().is_some_and(|Reverse(h)| h.due <= now) {
            let Reverse(h) = self.held.pop().expect("peeked");
            if inner.transmit(h.frame.len(), &mut |b| b.copy_from_slice(&h.frame)).is_err() {
                self.stats.inner_full += 1;
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.held.peek().map(|Reverse(h)| h.due)
    }
}

/// A device whose transmitted frames pass through seeded faults.
pub struct FaultInjector<D> {
    inner: D,
    state: FaultState,
    max_frame: usize,
}

impl<D: FrameDevice> FaultInjector<D> {
    /// Wraps `inner`, timing delays by the system clock.
    pub fn new(inner: D, config: FaultConfig) -> Self {
        Self::with_clock(inner, config, Arc::new(SystemClock))
    }

    /// Wraps `inner`, timing delays by `clock` (a [`crate::clock::ManualClock`]
    /// makes runs fully deterministic).
    pub fn with_clock(inner: D, config: FaultConfig, clock: Arc<dyn Clock>) -> Self {
        let max_frame = inner.info().max_frame;
        Self {
            inner,
            state: FaultState {
                rng: SeededRng::new(config.seed),
                config,
                clock,
                held: BinaryHeap::new(),
                seq: 0,
                stats: FaultStats::default(),
            },
            max_frame,
        }
    }

    /// What the injector has done so far.
    pub fn fault_stats(&self) -> FaultStats {
        self.state.stats
    }

    /// When the next held frame is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.state.next_due()
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

/// The sink handed to receive callbacks: faults in front of the inner sink.
struct Adapter<'a> {
    state: &'a mut FaultState,
    inner: &'a mut dyn FrameSink,
    max_frame: usize,
}

fn transmit_through(
    state: &mut FaultState,
    inner: &mut dyn FrameSink,
    max_frame: usize,
    max_len: usize,
    fill: &mut dyn FnMut(&mut [u8]) -> usize,
) -> Result<usize, TxError> {
    if max_len > max_frame {
        return Err(TxError::TooLong { len: max_len, max: max_frame });
    }
    let mut buf = vec![0u8; max_len];
    let len = fill(&mut buf).min(max_len);
    if len > 0 {
        buf.truncate(len);
        state.offer(buf);
    }
    state.release(inner);
    Ok(len)
}

impl FrameSink for Adapter<'_> {
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError> {
        transmit_through(self.state, self.inner, self.max_frame, max_len, fill)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.state.release(self.inner);
        self.inner.flush()
    }
    fn tx_space(&self) -> usize {
        self.inner.tx_space()
    }
}

impl<D: FrameDevice> FrameSink for FaultInjector<D> {
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError> {
        transmit_through(&mut self.state, self.inner.sink(), self.max_frame, max_len, fill)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.state.release(self.inner.sink());
        self.inner.sink().flush()
    }
    fn tx_space(&self) -> usize {
        usize::MAX
    }
}

impl<D: FrameDevice> FrameDevice for FaultInjector<D> {
    fn ipv4_filter(&self) -> Option<std::sync::Arc<crate::xdp::XdpFilter>> {
        self.inner.ipv4_filter()
    }

    fn receive(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize> {
        self.state.release(self.inner.sink());
        let (state, max_frame) = (&mut self.state, self.max_frame);
        self.inner.receive(budget, &mut |frame, inner_sink| {
            let mut adapter = Adapter { state: &mut *state, inner: inner_sink, max_frame };
            on_frame(frame, &mut adapter);
        })
    }

    fn sink(&mut self) -> &mut dyn FrameSink {
        self
    }

    fn readiness_fd(&self) -> BorrowedFd<'_> {
        self.inner.readiness_fd()
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.state.release(self.inner.sink());
        let timeout = match self.state.next_due() {
            Some(due) => {
                let until = due.saturating_duration_since(self.state.clock.now());
                Some(timeout.map_or(until, |t| t.min(until)))
            }
            None => timeout,
        };
        self.inner.wait(timeout)
    }

    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }

    fn stats(&self) -> DeviceStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::ManualClock,
        mem::{MemConfig, MemDevice},
    };

    fn frame(dst: [u8; 6], seq: u32) -> impl FnMut(&mut [u8]) {
        move |b: &mut [u8]| {
            b[0..6].copy_from_slice(&dst);
            b[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            b[14..18].copy_from_slice(&seq.to_be_bytes());
        }
    }

    fn received(dev: &mut MemDevice) -> Vec<u32> {
        let mut out = Vec::new();
        dev.receive(usize::MAX, &mut |f, _| out.push(u32::from_be_bytes(f.head()[14..18].try_into().unwrap())))
            .unwrap();
        out
    }

    fn run(config: FaultConfig, n: u32) -> (Vec<u32>, FaultStats) {
        let clock = ManualClock::new();
        let (a, mut b) = MemDevice::pair(&MemConfig { inbox_frames: 1 << 20, ..Default::default() }).unwrap();
        let dst = b.info().mac.0;
        let mut a = FaultInjector::with_clock(a, config, Arc::new(clock.clone()));
        for seq in 0..n {
            a.transmit(64, &mut frame(dst, seq)).unwrap();
            clock.advance(Duration::from_micros(10));
        }
        clock.advance(Duration::from_secs(1));
        a.flush().unwrap();
        (received(&mut b), a.fault_stats())
    }

    #[test]
    fn no_faults_is_a_perfect_wire() {
        let (got, stats) = run(FaultConfig::default(), 1000);
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(stats.offered, 1000);
    }

    #[test]
    fn loss_rate_is_close_to_configured_and_reproducible() {
        let cfg = FaultConfig { seed: 42, loss: 0.05, ..Default::default() };
        let (got, stats) = run(cfg.clone(), 20_000);
        assert_eq!(got.len() as u64, 20_000 - stats.lost);
        assert!((800..1200).contains(&stats.lost), "lost {}", stats.lost);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "loss alone never reorders");
        assert_eq!(run(cfg, 20_000).0, got, "same seed, same pattern");
    }

    #[test]
    fn reordering_and_duplication_happen_and_nothing_is_invented() {
        let cfg = FaultConfig { seed: 3, reorder: 0.1, duplicate: 0.05, ..Default::default() };
        let (got, stats) = run(cfg, 5000);
        assert!(stats.reordered > 0 && stats.duplicated > 0);
        assert!(got.windows(2).any(|w| w[0] > w[1]), "some frame was overtaken");
        assert_eq!(got.len() as u64, 5000 + stats.duplicated);
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, (0..5000).collect::<Vec<_>>(), "every frame arrives, none invented");
    }

    #[test]
    fn delay_holds_frames_until_due() {
        let clock = ManualClock::new();
        let (a, mut b) = MemDevice::pair(&MemConfig::default()).unwrap();
        let dst = b.info().mac.0;
        let cfg = FaultConfig { delay: Duration::from_millis(5), ..Default::default() };
        let mut a = FaultInjector::with_clock(a, cfg, Arc::new(clock.clone()));
        a.transmit(64, &mut frame(dst, 1)).unwrap();
        a.flush().unwrap();
        assert!(received(&mut b).is_empty());
        clock.advance(Duration::from_millis(4));
        a.flush().unwrap();
        assert!(received(&mut b).is_empty());
        clock.advance(Duration::from_millis(1));
        a.flush().unwrap();
        assert_eq!(received(&mut b), vec![1]);
    }

    #[test]
    fn corruption_is_dropped_by_fcs_or_delivered_flipped() {
        let cfg = FaultConfig { seed: 9, corrupt: 0.2, ..Default::default() };
        let (got, stats) = run(cfg, 2000);
        assert_eq!(got.len() as u64, 2000 - stats.fcs_drops);
        let cfg = FaultConfig { seed: 9, corrupt: 0.2, corruption: Corruption::Delivered, ..Default::default() };
        let (got, stats) = run(cfg, 2000);
        assert_eq!(got.len(), 2000);
        assert!(stats.corrupted > 300);
    }
}
