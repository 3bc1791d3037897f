//! One flow's inter-packet gap: frames leave at the flow's rate, spaced by
//! their serialization time at that rate, instead of in line-rate bursts.
//!
//! The schedule is a virtual clock (GCRA): `due` is when the next frame
//! would leave if the flow had always been exactly on schedule. A frame may
//! leave at `due - tolerance`; sending `n` bytes moves `due` on by the time
//! `n` bytes take at the rate. The tolerance is a small burst allowance so
//! that a sender woken a few microseconds late catches up instead of losing
//! rate for good, and it is also the most that can leave back to back after
//! an idle period.
//!
//! A driver that cannot afford to wake for every frame (at 1 Gbit/s the gap
//! is 12 µs, and two cores run a sender, a receiver and an emulator) paces
//! in *quanta*: [`GapPacer::with_quantum`] sizes the tolerance to two quanta
//! and [`GapPacer::wake_at`] says when to wake so that one wake-up sends
//! about one quantum's worth back to back. The long-run rate is the same;
//! bursts are at most two quanta (at 1 Gbit/s and 200 µs: 50 KB, smaller
//! than the kernel's own TSO bursts at that rate).

use std::time::{Duration, Instant};

use crate::Rate;

/// The smallest burst tolerance: two full-size Ethernet frames. Below that a
/// timer that wakes a microsecond late costs rate on every frame.
pub const MIN_BURST_BYTES: u64 = 2 * 1514;

/// Paces one flow. A pure function of time: it answers when the next frame
/// may leave and never sleeps.
#[derive(Debug, Clone)]
pub struct GapPacer {
    rate: Rate,
    burst_bytes: u64,
    tolerance: Duration,
    /// The wake-up quantum, if the driver paces in quanta.
    quantum: Option<Duration>,
    due: Option<Instant>,
    /// Sub-nanosecond remainder of the schedule, in bit-nanoseconds, so the
    /// long-run rate is exact whatever the rate and frame size.
    carry: u128,
}

/// The time `bytes` take at `rate`, rounded down: a burst allowance
/// rounded up could let a frame one nanosecond early, which is a few bytes
/// more than the burst (a property test found 6,060 B leaving at once
/// against 6,059 allowed at 15.781 Gbit/s).
fn tolerance(rate: Rate, bytes: u64) -> Duration {
    let nanos = u128::from(bytes) * 8 * 1_000_000_000 / u128::from(rate.bits_per_sec());
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl GapPacer {
    /// A pacer at `rate` that lets at most `burst_bytes` (at least
    /// [`MIN_BURST_BYTES`]) leave back to back.
    pub fn new(rate: Rate, burst_bytes: u64) -> GapPacer {
        let burst_bytes = burst_bytes.max(MIN_BURST_BYTES);
        GapPacer { rate, burst_bytes, tolerance: tolerance(rate, burst_bytes), due: None, carry: 0, quantum: None }
    }

    /// A pacer at `rate` for a driver that wakes once per `quantum`: the
    /// tolerance is two quanta (at least [`MIN_BURST_BYTES`]), so a wake-up
    /// up to one quantum late still catches up, and it stays two quanta when
    /// the rate changes.
    pub fn with_quantum(rate: Rate, quantum: Duration) -> GapPacer {
        let mut p = GapPacer::new(rate, rate.bytes_in(quantum * 2));
        p.quantum = Some(quantum);
        p
    }

    /// The wake-up quantum ([`GapPacer::with_quantum`]), if any.
    pub fn quantum(&self) -> Option<Duration> {
        self.quantum
    }

    /// Whether a burst may start at `now`: for a quantum pacer, only once
    /// half a quantum's worth may leave (a pass woken early, by an ACK say,
    /// then sends nothing rather than a frame or two, which keeps bursts
    /// whole and lets every flow behind one pacer get a frame in each);
    /// without a quantum, as soon as a frame may leave. Once a burst has
    /// started, [`GapPacer::poll_departure`] says how long it may run.
    pub fn may_start_burst(&self, now: Instant) -> bool {
        let Some(q) = self.quantum else { return self.poll_departure(now).is_none() };
        let Some(due) = self.due else { return true };
        let earliest = due.checked_sub(self.tolerance).unwrap_or(due);
        now >= earliest + q / 2
    }

    /// When a driver held back by [`GapPacer::poll_departure`] should wake:
    /// one quantum after the next frame may leave (so the wake-up sends a
    /// quantum's worth), or at that departure for a pacer without quantum.
    /// `None` if a frame may leave now.
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        if self.may_start_burst(now) && self.poll_departure(now).is_none() {
            return None;
        }
        let due = self.due?;
        let first = due.checked_sub(self.tolerance).unwrap_or(due);
        Some(first + self.quantum.unwrap_or(Duration::ZERO))
    }

    /// The current rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Changes the rate from `now` on. Time already owed at the old rate is
    /// rescaled to the new one, so a flow that slows down does not keep a
    /// schedule computed for a faster rate (and the reverse).
    pub fn set_rate(&mut self, now: Instant, rate: Rate) {
        if rate == self.rate {
            return;
        }
        if let Some(due) = self.due
            && due > now
        {
            let owed = self.rate.bytes_in(due - now);
            self.due = Some(now + rate.time_for(owed));
        }
        self.rate = rate;
        self.carry = 0;
        if let Some(q) = self.quantum {
            self.burst_bytes = rate.bytes_in(q * 2).max(MIN_BURST_BYTES);
        }
        self.tolerance = tolerance(rate, self.burst_bytes);
    }

    /// When the next frame may leave: `None` if it may leave at `now`,
    /// otherwise the instant from which it may. Call before each frame.
    pub fn poll_departure(&self, now: Instant) -> Option<Instant> {
        let due = self.due?;
        let earliest = due.checked_sub(self.tolerance).unwrap_or(due);
        (earliest > now).then_some(earliest)
    }

    /// Records that a frame of `bytes` on-wire bytes left at `now`. Call once
    /// per frame that actually left (not for frames the ring refused).
    pub fn on_sent(&mut self, now: Instant, bytes: u64) {
        let start = match self.due {
            Some(due) if due > now => due,
            _ => now,
        };
        let num = u128::from(bytes) * 8 * 1_000_000_000 + self.carry;
        let per = u128::from(self.rate.bits_per_sec());
        self.carry = num % per;
        let nanos = u64::try_from(num / per).unwrap_or(u64::MAX);
        self.due = Some(start + Duration::from_nanos(nanos));
    }
}

/// How a driver should wait for a pacing deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The deadline has passed: send now.
    Ready,
    /// The deadline is closer than a sleep can be trusted to end: poll
    /// (busy-wait) until it.
    Spin,
    /// Sleep for this long, then ask again (the remainder is spun).
    Sleep(Duration),
}

/// Plans a wait for `deadline`. Sleeps (poll(2), a timerfd) overshoot by
/// tens of microseconds, so the last `spin_below` before a deadline is spun
/// and only the time before that is slept. At 1 Gbit/s the gap between
/// 1514-byte frames is 12 µs, below any sane `spin_below`, so a fast flow
/// spins; a 10 Mbit/s flow (1.2 ms gaps) sleeps most of each gap and costs
/// almost no CPU.
pub fn plan_wait(now: Instant, deadline: Instant, spin_below: Duration) -> Wait {
    if deadline <= now {
        Wait::Ready
    } else if deadline - now <= spin_below {
        Wait::Spin
    } else {
        Wait::Sleep(deadline - now - spin_below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `frames` frames of `bytes` as fast as the pacer allows, with the
    /// virtual clock jumping to each departure, and returns the departures.
    fn run(p: &mut GapPacer, start: Instant, frames: usize, bytes: u64) -> Vec<Instant> {
        let mut now = start;
        let mut out = Vec::new();
        for _ in 0..frames {
            if let Some(t) = p.poll_departure(now) {
                now = t;
            }
            out.push(now);
            p.on_sent(now, bytes);
        }
        out
    }

    #[test]
    fn frames_are_spaced_by_their_serialization_time_after_the_burst() {
        let t0 = Instant::now();
        let mut p = GapPacer::new(Rate::gbit(1), 0);
        let d = run(&mut p, t0, 100, 1514);
        // The first frame and two more (the burst tolerance) go back to back.
        assert_eq!(&d[..3], &[t0, t0, t0]);
        // Every later frame is exactly one serialization time after the last.
        for w in d[2..].windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_nanos(12_112));
        }
    }

    #[test]
    fn long_run_rate_matches_within_a_part_per_million() {
        let t0 = Instant::now();
        for (rate, bytes) in [(Rate::mbit(100), 1514), (Rate::gbit(1), 64), (Rate::mbit(333), 9014)] {
            let mut p = GapPacer::new(rate, 0);
            let n = 200_000;
            let d = run(&mut p, t0, n, bytes);
            // Past the initial burst, frames m..n span n-1-m gaps.
            let m = 1000;
            let span = (d[n - 1] - d[m]).as_secs_f64();
            let measured = (n - 1 - m) as f64 * bytes as f64 * 8.0 / span;
            let err = (measured / rate.bits_per_sec() as f64 - 1.0).abs();
            assert!(err < 1e-6, "{rate} at {bytes} B: measured {measured:.0} bit/s, error {err:e}");
        }
    }

    #[test]
    fn a_late_sender_catches_up_within_the_tolerance_but_never_beyond() {
        let t0 = Instant::now();
        let mut p = GapPacer::new(Rate::gbit(1), 10 * 1514);
        run(&mut p, t0, 20, 1514);
        // The sender wakes 50 µs late: 10 frames' worth of tolerance lets
        // it send a few back to back, then it is paced again.
        let due = p.poll_departure(t0).unwrap();
        let late = due + Duration::from_micros(50);
        let mut now = late;
        let mut back_to_back = 0;
        while p.poll_departure(now).is_none() {
            p.on_sent(now, 1514);
            back_to_back += 1;
            assert!(back_to_back <= 11, "ran past the tolerance");
        }
        assert!(back_to_back >= 4, "did not catch up: {back_to_back}");
        now = p.poll_departure(now).unwrap();
        assert!(now > late);
    }

    #[test]
    fn an_idle_flow_does_not_bank_credit() {
        let t0 = Instant::now();
        let mut p = GapPacer::new(Rate::mbit(100), 0);
        run(&mut p, t0, 10, 1514);
        // One second idle, then a backlog: only one frame plus the burst
        // tolerance leave at once.
        let later = t0 + Duration::from_secs(1);
        let d = run(&mut p, later, 10, 1514);
        assert_eq!(d.iter().filter(|&&t| t == later).count(), 3);
    }

    #[test]
    fn a_rate_change_rescales_what_is_owed() {
        let t0 = Instant::now();
        let mut p = GapPacer::new(Rate::mbit(10), 0);
        for _ in 0..3 {
            p.on_sent(t0, 1514);
        }
        // At 10 Mbit/s three frames owe 3.6 ms; at 1 Gbit/s they owe 36 µs.
        let slow = p.poll_departure(t0).unwrap() - t0;
        p.set_rate(t0, Rate::gbit(1));
        let fast = p.poll_departure(t0).unwrap() - t0;
        assert!(slow > Duration::from_millis(1), "{slow:?}");
        assert!(fast < Duration::from_micros(40), "{fast:?}");
    }

    /// A driver that wakes at `wake_at` plus a lateness, sends all it may,
    /// and sleeps again: the long-run rate is the pacer's, one wake-up sends
    /// about a quantum, and nothing ever leaves beyond two quanta at once.
    #[test]
    fn quantum_pacing_keeps_the_rate_with_one_wake_up_per_quantum() {
        let t0 = Instant::now();
        let rate = Rate::gbit(1);
        let quantum = Duration::from_micros(200);
        for late_us in [0u64, 40, 150] {
            let mut p = GapPacer::with_quantum(rate, quantum);
            let mut now = t0;
            let (mut frames, mut wakes, mut most) = (0u64, 0u64, 0u64);
            while now < t0 + Duration::from_secs(1) {
                let mut burst = 0;
                while p.poll_departure(now).is_none() {
                    p.on_sent(now, 1514);
                    burst += 1;
                }
                frames += burst;
                most = most.max(burst);
                wakes += 1;
                now = p.wake_at(now).expect("held") + Duration::from_micros(late_us);
            }
            let sent_rate = frames as f64 * 1514.0 * 8.0 / (now - t0).as_secs_f64();
            let err = (sent_rate / rate.bits_per_sec() as f64 - 1.0).abs();
            assert!(err < 0.01, "late {late_us} µs: rate off by {err:.4}");
            // A quantum is 16.5 frames at 1 Gbit/s; lateness adds its own worth.
            assert!(wakes <= 5_100, "late {late_us} µs: {wakes} wake-ups in 1 s");
            assert!(most <= rate.bytes_in(quantum * 2) / 1514 + 2, "late {late_us} µs: burst of {most}");
        }
    }

    #[test]
    fn an_early_pass_does_not_start_a_burst() {
        let t0 = Instant::now();
        let q = Duration::from_micros(200);
        let mut p = GapPacer::with_quantum(Rate::gbit(1), q);
        while p.poll_departure(t0).is_none() {
            p.on_sent(t0, 1514);
        }
        let wake = p.wake_at(t0).expect("held");
        // A frame may leave one gap later, but a burst waits for half a quantum.
        let one_gap = p.poll_departure(t0).expect("held");
        assert!(!p.may_start_burst(one_gap));
        assert!(p.may_start_burst(one_gap + q / 2));
        assert_eq!(p.wake_at(one_gap), Some(wake));
        assert_eq!(p.wake_at(wake), None);
    }

    #[test]
    fn a_quantum_pacer_keeps_its_burst_in_time_across_rate_changes() {
        let t0 = Instant::now();
        let mut p = GapPacer::with_quantum(Rate::mbit(100), Duration::from_micros(500));
        p.set_rate(t0, Rate::gbit(2));
        // 2 quanta at 2 Gbit/s = 250 KB = 165 frames back to back, no more.
        let mut n = 0;
        while p.poll_departure(t0).is_none() {
            p.on_sent(t0, 1514);
            n += 1;
        }
        assert!((164..=167).contains(&n), "{n}");
        assert_eq!(p.wake_at(t0), p.poll_departure(t0).map(|d| d + Duration::from_micros(500)));
    }

    #[test]
    fn wait_plans_spin_only_near_the_deadline() {
        let t0 = Instant::now();
        let spin = Duration::from_micros(50);
        assert_eq!(plan_wait(t0, t0, spin), Wait::Ready);
        assert_eq!(plan_wait(t0, t0 + Duration::from_micros(12), spin), Wait::Spin);
        assert_eq!(plan_wait(t0, t0 + Duration::from_micros(1200), spin), Wait::Sleep(Duration::from_micros(1150)));
    }

    #[test]
    fn slow_flows_mostly_sleep() {
        // The share of each gap that is spun, for a 10 Mbit/s and a 1 Gbit/s flow.
        let spin = Duration::from_micros(50);
        let t0 = Instant::now();
        for (rate, max_spun) in [(Rate::mbit(10), 0.05), (Rate::gbit(1), 1.0)] {
            let gap = rate.time_for(1514);
            let spun = match plan_wait(t0, t0 + gap, spin) {
                Wait::Sleep(s) => (gap - s).as_secs_f64() / gap.as_secs_f64(),
                Wait::Spin => 1.0,
                Wait::Ready => 0.0,
            };
            assert!(spun <= max_spun, "{rate}: spins {spun:.2} of each gap");
        }
    }
}
