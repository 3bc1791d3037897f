//! A pacing rate derived from congestion state, for `--pace auto`.
//!
//! Two phases, per flow:
//!
//! - **Start-up**: `gain × window / RTT` with a gain of 2 while the window
//!   grows fast (slow start doubles it every round trip) and 1.25 otherwise
//!   (Linux's `tcp_pacing_ss_ratio` and `tcp_pacing_ca_ratio` are 200% and
//!   120%), so the window leaves evenly over a round trip instead of in a
//!   line-rate burst.
//! - **Pipe full**: once the delivery rate (bytes acknowledged per round
//!   trip) has stopped growing by a quarter for three round trips, the
//!   bottleneck is taken to be the
//!   highest delivery rate of the last ten round trips, and the flow is
//!   paced at it, probing for more a quarter above it one round trip in
//!   eight and draining a quarter below it the next (the gain cycle of
//!   BBR). The congestion window no longer sets the rate: a 10%-of-BDP
//!   buffer on a 350 ms path overflows long before Cubic's window stops
//!   growing, and smoltcp recovers slowly from a burst of losses.
//!
//! The window itself is not visible (smoltcp keeps its congestion state
//! private), so [`WindowRate`] works from what the caller sees on the wire:
//! bytes in flight and acknowledged, sampled whenever they change, and the
//! smoothed RTT. The largest in-flight over the current and previous round
//! trip stands for the window.

use std::time::{Duration, Instant};

use crate::Rate;

/// Percent gain while the window grows quickly (slow start).
pub const GROWING_GAIN_PERCENT: u32 = 200;
/// Percent gain in start-up otherwise.
pub const STEADY_GAIN_PERCENT: u32 = 125;
/// Percent gains of the pipe-full cycle, one round trip each.
pub const CYCLE_GAIN_PERCENT: [u32; 8] = [125, 75, 100, 100, 100, 100, 100, 100];
/// Round trips of delivery-rate history the bottleneck estimate keeps.
const BTL_ROUNDS: usize = 10;
/// Shortest measuring round: on a LAN the RTT is tens of microseconds, and
/// a delivery rate measured over so short a time is mostly the noise of
/// ACK batching.
pub const MIN_ROUND: Duration = Duration::from_millis(1);

/// Derives one flow's pacing rate. Sans-IO: the caller reports samples
/// with their `now`.
#[derive(Debug, Clone)]
pub struct WindowRate {
    /// Rate before there is a window to go by (at least this, always).
    floor: Rate,
    srtt: Option<Duration>,
    round_start: Option<Instant>,
    rounds: u64,
    /// Largest in-flight of the round trip in progress, and of the last two.
    this_round: u64,
    last_round: u64,
    round_before: u64,
    /// Acknowledged bytes at the start of the round trip in progress.
    acked_at_round_start: u64,
    acked: u64,
    /// Delivery rate of the last round trips, bit/s, newest last.
    delivery: Vec<u64>,
    /// Rounds the delivery rate has not grown by a quarter.
    flat_rounds: u32,
    best_delivery: u64,
    /// Round at which the pipe was found full.
    full_since: Option<u64>,
    losses: u64,
}

impl WindowRate {
    /// An estimator that never asks for less than `floor`.
    pub fn new(floor: Rate) -> WindowRate {
        WindowRate {
            floor,
            srtt: None,
            round_start: None,
            rounds: 0,
            this_round: 0,
            last_round: 0,
            round_before: 0,
            acked_at_round_start: 0,
            acked: 0,
            delivery: Vec::new(),
            flat_rounds: 0,
            best_delivery: 0,
            full_since: None,
            losses: 0,
        }
    }

    /// Records the bytes in flight, the bytes acknowledged so far (a
    /// running total) and the smoothed RTT at `now`.
    pub fn observe(&mut self, now: Instant, in_flight: u64, acked_total: u64, srtt: Duration) {
        self.srtt = Some(srtt);
        let start = *self.round_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= srtt.max(MIN_ROUND) {
            // What was acknowledged up to the last sample belongs to the
            // round trip that just ended; this sample opens the next.
            self.end_round(elapsed);
            self.round_start = Some(now);
        }
        self.acked = self.acked.max(acked_total);
        self.this_round = self.this_round.max(in_flight);
    }

    /// A segment was sent again. Loss alone does not mean the pipe is full
    /// (measured: taking it so at 100 ms locked a stream onto the delivery
    /// rate of the round trips in which it was recovering, and it crawled
    /// back up at the probing gain); the window, which the congestion
    /// control cuts, sets the rate until the delivery rate stops growing.
    pub fn on_loss(&mut self) {
        self.losses += 1;
    }

    /// Segments sent again so far.
    pub fn losses(&self) -> u64 {
        self.losses
    }

    fn end_round(&mut self, elapsed: Duration) {
        self.rounds += 1;
        self.round_before = self.last_round;
        self.last_round = self.this_round;
        self.this_round = 0;
        let bytes = self.acked - self.acked_at_round_start;
        self.acked_at_round_start = self.acked;
        let bps = (u128::from(bytes) * 8 * 1_000_000_000 / elapsed.as_nanos().max(1)) as u64;
        if self.delivery.len() == BTL_ROUNDS {
            self.delivery.remove(0);
        }
        self.delivery.push(bps);
        if bps * 4 > self.best_delivery * 5 {
            self.best_delivery = bps;
            self.flat_rounds = 0;
        } else {
            self.flat_rounds += 1;
            if self.flat_rounds >= 3 && self.full_since.is_none() && self.best_delivery > 0 {
                self.full_since = Some(self.rounds);
            }
        }
    }

    /// Whether the window grew by more than a quarter over the last round trip.
    pub fn growing(&self) -> bool {
        self.last_round * 4 > self.round_before * 5
    }

    /// The window estimate: the largest in flight over this and the last round trip.
    pub fn window(&self) -> u64 {
        self.this_round.max(self.last_round)
    }

    /// The bottleneck estimate, once the pipe has been found full.
    pub fn bottleneck(&self) -> Option<Rate> {
        self.full_since?;
        Rate::from_bits_per_sec(self.delivery.iter().copied().max()?.max(self.floor.bits_per_sec()))
    }

    /// The pacing rate now.
    pub fn rate(&self) -> Rate {
        let Some(srtt) = self.srtt else { return self.floor };
        if let (Some(since), Some(btl)) = (self.full_since, self.bottleneck()) {
            let gain = CYCLE_GAIN_PERCENT[((self.rounds - since) % CYCLE_GAIN_PERCENT.len() as u64) as usize];
            return btl.scaled(u64::from(gain), 100).map_or(self.floor, |r| r.max(self.floor));
        }
        let gain = if self.growing() || self.round_before == 0 { GROWING_GAIN_PERCENT } else { STEADY_GAIN_PERCENT };
        Rate::from_window(self.window(), srtt, gain).map_or(self.floor, |r| r.max(self.floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    /// One observation per round trip: `(in flight, acked in that round)`.
    fn rounds(w: &mut WindowRate, t0: Instant, per_round: &[(u64, u64)]) -> Instant {
        let mut acked = 0;
        let mut now = t0;
        for &(inflight, delivered) in per_round {
            acked += delivered;
            w.observe(now, inflight, acked, RTT);
            now += RTT;
        }
        now
    }

    #[test]
    fn slow_start_is_paced_at_twice_the_window() {
        let mut w = WindowRate::new(Rate::mbit(1));
        rounds(&mut w, Instant::now(), &[(10_000, 0), (20_000, 10_000), (40_000, 20_000), (80_000, 40_000)]);
        assert!(w.growing());
        assert_eq!(w.bottleneck(), None);
        // 2 × 80 KB / 100 ms = 12.8 Mbit/s.
        assert_eq!(w.rate(), Rate::from_bits_per_sec(12_800_000).unwrap());
    }

    #[test]
    fn a_flat_delivery_rate_means_the_pipe_is_full_and_sets_the_rate() {
        let mut w = WindowRate::new(Rate::mbit(1));
        // Delivery grows to 1.25 MB per round trip (100 Mbit/s) and stays
        // there while the window keeps growing (the queue fills).
        let mut r = vec![(100_000, 100_000), (200_000, 200_000), (400_000, 400_000), (800_000, 800_000)];
        r.extend([(1_600_000, 1_250_000), (2_400_000, 1_250_000), (3_200_000, 1_250_000), (4_000_000, 1_250_000)]);
        r.push((4_800_000, 1_250_000));
        rounds(&mut w, Instant::now(), &r);
        assert_eq!(w.bottleneck(), Some(Rate::mbit(100)));
        // Whatever the window, the rate now follows the bottleneck's cycle.
        let rate = w.rate().bits_per_sec();
        assert!([125, 75, 100].iter().any(|g| rate == 1_000_000 * g), "{rate}");
    }

    #[test]
    fn the_gain_cycle_probes_and_drains_around_the_bottleneck() {
        let mut w = WindowRate::new(Rate::mbit(1));
        let mut r = vec![(100_000, 100_000), (200_000, 200_000)];
        r.extend([(400_000, 250_000); 4]);
        let now = rounds(&mut w, Instant::now(), &r);
        let mut seen = Vec::new();
        let mut acked = 1_300_000;
        for i in 0..8u32 {
            acked += 250_000;
            w.observe(now + RTT * i, 250_000, acked, RTT);
            seen.push(w.rate().bits_per_sec() / 1_000_000);
        }
        // 20 Mbit/s bottleneck: one round at 25, one at 15, six at 20.
        seen.sort();
        assert_eq!(seen, vec![15, 20, 20, 20, 20, 20, 20, 25]);
    }

    #[test]
    fn a_loss_in_slow_start_leaves_the_rate_to_the_window() {
        let mut w = WindowRate::new(Rate::mbit(1));
        rounds(&mut w, Instant::now(), &[(10_000, 0), (20_000, 10_000), (40_000, 20_000), (80_000, 40_000)]);
        w.on_loss();
        assert_eq!(w.bottleneck(), None);
        assert_eq!(w.losses(), 1);
        assert_eq!(w.rate(), Rate::from_bits_per_sec(12_800_000).unwrap());
    }

    #[test]
    fn nothing_in_flight_asks_for_the_floor() {
        let mut w = WindowRate::new(Rate::mbit(2));
        assert_eq!(w.rate(), Rate::mbit(2));
        w.observe(Instant::now(), 0, 0, RTT);
        assert_eq!(w.rate(), Rate::mbit(2));
    }
}
