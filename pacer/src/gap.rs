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
    due: Option<Instant>,
    /// Sub-nanosecond remainder of the schedule, in bit-nanoseconds, so the
    /// long-run rate is exact whatever the rate and frame size.
    carry: u128,
}

impl GapPacer {
    /// A pacer at `rate` that lets at most `burst_bytes` (at least
    /// [`MIN_BURST_BYTES`]) leave back to back.
    pub fn new(rate: Rate, burst_bytes: u64) -> GapPacer {
        let burst_bytes = burst_bytes.max(MIN_BURST_BYTES);
        GapPacer { rate, burst_bytes, tolerance: rate.time_for(burst_bytes), due: None, carry: 0 }
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
        self.tolerance = rate.time_for(self.burst_bytes);
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
