//! One direction of the emulated WAN path, sans-IO: random loss on arrival,
//! a drop-tail queue in front of a bottleneck of fixed rate, then a fixed
//! one-way delay. Frames are given with the `now` they arrived and taken out
//! when their delivery time has come; nothing here reads a clock.
//!
//! The bottleneck counts the bytes of each frame as handed over (Ethernet
//! header included, no preamble, FCS or inter-frame gap), as tc's rate
//! options do by default. A frame occupies the queue from its arrival until
//! its last bit has left the bottleneck; it is refused (drop-tail) if it
//! would take the queue past its byte limit.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::Serialize;
use xsock_pacer::Rate;

/// Settings of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HopConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Bottleneck rate.
    pub rate: Rate,
    /// Drop-tail queue limit in bytes, the frame in service included.
    pub buffer_bytes: u64,
    /// Probability that an arriving frame is lost (0 to 1).
    pub loss: f64,
    /// Seed of the loss draws.
    pub seed: u64,
}

/// What became of an arriving frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Queued; it will be delivered.
    Queued,
    /// Lost to the random-loss draw.
    Lost,
    /// Refused by the full queue.
    QueueFull,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HopStats {
    /// Frames that arrived.
    pub frames_in: u64,
    /// Bytes that arrived.
    pub bytes_in: u64,
    /// Frames delivered.
    pub frames_out: u64,
    /// Bytes delivered.
    pub bytes_out: u64,
    /// Frames lost to the random-loss draw.
    pub dropped_loss: u64,
    /// Frames refused by the full queue.
    pub dropped_queue: u64,
    /// Bytes in the bottleneck queue now.
    pub queue_bytes: u64,
    /// Most bytes the bottleneck queue has held.
    pub max_queue_bytes: u64,
}

/// One direction of the path.
#[derive(Debug)]
pub struct Hop {
    config: HopConfig,
    rng: u64,
    /// When each queued frame's last bit leaves the bottleneck, and its size.
    in_queue: VecDeque<(Instant, u64)>,
    /// When the bottleneck finishes its current backlog.
    busy_until: Option<Instant>,
    /// Frames on the wire, in delivery order, with their delivery time.
    on_wire: VecDeque<(Instant, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    stats: HopStats,
}

/// Buffers kept for reuse, so a steady stream allocates nothing.
const SPARE_BUFFERS: usize = 4096;

impl Hop {
    /// A direction with `config`.
    pub fn new(config: HopConfig) -> Hop {
        let rng = config.seed ^ 0x9E37_79B9_7F4A_7C15;
        Hop {
            config,
            rng: rng.max(1),
            in_queue: VecDeque::new(),
            busy_until: None,
            on_wire: VecDeque::new(),
            spare: Vec::new(),
            stats: HopStats::default(),
        }
    }

    /// A frame of `len` bytes arrives at `now`; `fill` copies it into the
    /// buffer it is given (exactly `len` bytes). Call once per received frame.
    pub fn handle_frame(&mut self, now: Instant, len: usize, fill: impl FnOnce(&mut [u8])) -> Arrival {
        self.stats.frames_in += 1;
        self.stats.bytes_in += len as u64;
        if self.config.loss > 0.0 && self.unit() < self.config.loss {
            self.stats.dropped_loss += 1;
            return Arrival::Lost;
        }
        self.drain_queue(now);
        let bytes = len as u64;
        if self.stats.queue_bytes + bytes > self.config.buffer_bytes {
            self.stats.dropped_queue += 1;
            return Arrival::QueueFull;
        }
        let start = self.busy_until.filter(|&t| t > now).unwrap_or(now);
        let leaves = start + self.config.rate.time_for(bytes);
        self.busy_until = Some(leaves);
        self.in_queue.push_back((leaves, bytes));
        self.stats.queue_bytes += bytes;
        self.stats.max_queue_bytes = self.stats.max_queue_bytes.max(self.stats.queue_bytes);
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.resize(len, 0);
        fill(&mut buf);
        self.on_wire.push_back((leaves + self.config.delay, buf));
        Arrival::Queued
    }

    /// Hands every frame due by `now` to `send`, in order, until `send`
    /// returns false (the transmit ring is full; that frame stays first in
    /// line). Returns how many were sent. Call whenever `poll_timeout` says.
    pub fn transmit_due(&mut self, now: Instant, mut send: impl FnMut(&[u8]) -> bool) -> usize {
        let mut sent = 0;
        while let Some((due, frame)) = self.on_wire.front() {
            if *due > now || !send(frame) {
                break;
            }
            let (_, frame) = self.on_wire.pop_front().expect("front exists");
            self.stats.frames_out += 1;
            self.stats.bytes_out += frame.len() as u64;
            if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(frame);
            }
            sent += 1;
        }
        sent
    }

    /// When the next frame is due (`None`: nothing on the wire).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.on_wire.front().map(|(t, _)| *t)
    }

    /// Counters, with the queue depth as of `now`.
    pub fn stats(&mut self, now: Instant) -> HopStats {
        self.drain_queue(now);
        self.stats
    }

    fn drain_queue(&mut self, now: Instant) {
        while let Some(&(leaves, bytes)) = self.in_queue.front() {
            if leaves > now {
                break;
            }
            self.in_queue.pop_front();
            self.stats.queue_bytes -= bytes;
        }
    }

    /// A uniform draw in [0, 1) (xorshift64*).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(delay_ms: u64, mbit: u64, buffer: u64, loss: f64) -> Hop {
        Hop::new(HopConfig {
            delay: Duration::from_millis(delay_ms),
            rate: Rate::mbit(mbit),
            buffer_bytes: buffer,
            loss,
            seed: 1,
        })
    }

    fn offer(h: &mut Hop, now: Instant, len: usize, tag: u8) -> Arrival {
        h.handle_frame(now, len, |b| b.fill(tag))
    }

    #[test]
    fn a_lone_frame_takes_serialization_plus_delay() {
        let t0 = Instant::now();
        let mut h = hop(50, 1000, 1 << 20, 0.0);
        assert_eq!(offer(&mut h, t0, 1514, 7), Arrival::Queued);
        // 1514 B at 1 Gbit/s is 12.112 µs, then 50 ms on the wire.
        let due = h.poll_timeout().unwrap();
        assert_eq!(due - t0, Duration::from_millis(50) + Duration::from_nanos(12_112));
        assert_eq!(h.transmit_due(due - Duration::from_nanos(1), |_| true), 0);
        let mut got = Vec::new();
        assert_eq!(
            h.transmit_due(due, |f| {
                got.push(f.to_vec());
                true
            }),
            1
        );
        assert_eq!(got, vec![vec![7u8; 1514]]);
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn a_burst_leaves_at_the_bottleneck_rate_in_order() {
        let t0 = Instant::now();
        let mut h = hop(10, 100, 1 << 20, 0.0);
        for i in 0..100u8 {
            assert_eq!(offer(&mut h, t0, 1000, i), Arrival::Queued);
        }
        // Deliveries 80 µs apart (1000 B at 100 Mbit/s), first at 10.08 ms.
        let mut deliveries = Vec::new();
        while let Some(t) = h.poll_timeout() {
            h.transmit_due(t, |f| {
                deliveries.push((t, f[0]));
                true
            });
        }
        assert_eq!(deliveries.len(), 100);
        for (i, w) in deliveries.windows(2).enumerate() {
            assert_eq!(w[1].0 - w[0].0, Duration::from_micros(80), "gap after frame {i}");
            assert_eq!(w[1].1, w[0].1 + 1, "order");
        }
        assert_eq!(deliveries[0].0 - t0, Duration::from_micros(10_080));
    }

    #[test]
    fn the_queue_drops_tail_at_its_byte_limit_and_drains_at_the_rate() {
        let t0 = Instant::now();
        let mut h = hop(0, 100, 10_000, 0.0);
        let outcomes: Vec<_> = (0..15).map(|i| offer(&mut h, t0, 1000, i)).collect();
        assert_eq!(outcomes.iter().filter(|&&a| a == Arrival::Queued).count(), 10);
        assert!(outcomes[10..].iter().all(|&a| a == Arrival::QueueFull));
        let s = h.stats(t0);
        assert_eq!((s.queue_bytes, s.max_queue_bytes, s.dropped_queue), (10_000, 10_000, 5));
        // 240 µs later three frames have left the bottleneck: room for three.
        let t1 = t0 + Duration::from_micros(240);
        assert_eq!(h.stats(t1).queue_bytes, 7_000);
        let again: Vec<_> = (0..4).map(|i| offer(&mut h, t1, 1000, i)).collect();
        assert_eq!(again, [Arrival::Queued, Arrival::Queued, Arrival::Queued, Arrival::QueueFull]);
    }

    #[test]
    fn random_loss_hits_its_rate_and_is_reproducible() {
        let t0 = Instant::now();
        let run = || {
            let mut h = hop(1, 10_000, u64::MAX, 0.01);
            (0..200_000)
                .map(|i| offer(&mut h, t0 + Duration::from_micros(i), 64, 0))
                .filter(|&a| a == Arrival::Lost)
                .count()
        };
        let lost = run();
        assert!((1_800..2_200).contains(&lost), "{lost} of 200000 at 1%");
        assert_eq!(run(), lost, "same seed, same losses");
    }

    #[test]
    fn a_full_transmit_ring_keeps_the_frame_first_in_line() {
        let t0 = Instant::now();
        let mut h = hop(0, 1000, 1 << 20, 0.0);
        for i in 0..3 {
            offer(&mut h, t0, 100, i);
        }
        let later = t0 + Duration::from_millis(1);
        let mut first = Vec::new();
        assert_eq!(
            h.transmit_due(later, |f| {
                first.push(f[0]);
                first.len() < 2
            }),
            1
        );
        let mut rest = Vec::new();
        assert_eq!(
            h.transmit_due(later, |f| {
                rest.push(f[0]);
                true
            }),
            2
        );
        assert_eq!((first, rest), (vec![0, 1], vec![1, 2]));
        let s = h.stats(later);
        assert_eq!((s.frames_in, s.frames_out, s.bytes_out), (3, 3, 300));
    }
}
