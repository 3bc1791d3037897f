//! Delivery-rate samples (after the BBR drafts' "delivery rate
//! estimation"): each segment carries, from the moment it is sent, how
//! much had been delivered by then and when; when it is delivered
//! (cumulatively acknowledged or SACKed for the first time), the bytes
//! delivered since, over the longer of the send and the acknowledgement
//! intervals, is a rate the path really carried. Taking the longer interval
//! is what keeps an ACK that fills a hole (and delivers a whole window at
//! once) from reading as a burst of bandwidth.

use std::time::{Duration, Instant};

use crate::Rate;

/// What a segment remembers from its transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendStamp {
    /// When it was sent.
    pub sent_at: Instant,
    /// Bytes delivered when it was sent.
    delivered: u64,
    /// When the last of those was delivered.
    delivered_at: Instant,
    /// Send time of the segment most recently delivered when it was sent.
    first_sent_at: Instant,
    /// Sent while the sender had too little to send to fill the path.
    app_limited: bool,
    /// The round ([`DeliverySampler::round`]) in which it was sent.
    pub round: u64,
    /// Bytes in flight once it was sent (itself included).
    pub in_flight: u64,
}

/// One rate sample, taken once per acknowledgement that delivered data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSample {
    /// Bytes delivered over `interval`.
    pub delivered: u64,
    /// The longer of the send and the acknowledgement intervals.
    pub interval: Duration,
    /// The rate (`None` if the interval is too short to mean anything).
    pub rate: Option<Rate>,
    /// The sample may be below the path's rate because the sender was short of data.
    pub app_limited: bool,
    /// Bytes delivered when the newest delivered segment was sent.
    pub prior_delivered: u64,
    /// A round of the path (every segment sent before the round began
    /// delivered) ended with this acknowledgement.
    pub round_start: bool,
}

/// The per-connection sampler.
#[derive(Debug, Clone)]
pub struct DeliverySampler {
    delivered: u64,
    delivered_at: Option<Instant>,
    first_sent_at: Option<Instant>,
    /// Until `delivered` passes this, samples are marked app-limited.
    app_limited_until: u64,
    /// The newest segment delivered by the acknowledgement being processed.
    newest: Option<SendStamp>,
    round: u64,
    /// `delivered` at the start of the current round.
    round_ends_at: u64,
    /// `delivered` when the last sample was taken.
    sampled: u64,
}

impl Default for DeliverySampler {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliverySampler {
    /// A sampler with nothing sent yet.
    pub fn new() -> DeliverySampler {
        DeliverySampler {
            delivered: 0,
            delivered_at: None,
            first_sent_at: None,
            app_limited_until: 0,
            newest: None,
            round: 0,
            round_ends_at: 0,
            sampled: 0,
        }
    }

    /// Total bytes delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// `delivered` when the last sample was taken.
    pub fn delivered_at_last_sample(&self) -> u64 {
        self.sampled
    }

    /// Rounds completed.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// A segment of `bytes` leaves at `now` with `in_flight` bytes already out.
    pub fn on_sent(&mut self, now: Instant, in_flight: u64, bytes: u64) -> SendStamp {
        if in_flight == 0 {
            // Nothing out: the send and ack clocks start over.
            self.first_sent_at = Some(now);
            self.delivered_at = Some(now);
        }
        SendStamp {
            sent_at: now,
            delivered: self.delivered,
            delivered_at: self.delivered_at.unwrap_or(now),
            first_sent_at: self.first_sent_at.unwrap_or(now),
            app_limited: self.app_limited_until > self.delivered,
            round: self.round,
            in_flight: in_flight + bytes,
        }
    }

    /// The sender has nothing more to send with `in_flight` out: samples
    /// until that much more is delivered may understate the path.
    pub fn on_app_limited(&mut self, in_flight: u64) {
        self.app_limited_until = (self.delivered + in_flight).max(1);
    }

    /// The segment stamped `stamp`, `bytes` long, is delivered at `now`.
    pub fn on_delivered(&mut self, now: Instant, stamp: &SendStamp, bytes: u64) {
        self.delivered += bytes;
        self.delivered_at = Some(now);
        let newer = self.newest.is_none_or(|n| {
            stamp.delivered > n.delivered || (stamp.delivered == n.delivered && stamp.sent_at > n.sent_at)
        });
        if newer {
            self.newest = Some(*stamp);
            self.first_sent_at = Some(stamp.sent_at);
        }
    }

    /// Ends the processing of one acknowledgement at `now`: the sample it
    /// gives, if it delivered anything.
    pub fn take_sample(&mut self, now: Instant) -> Option<RateSample> {
        let s = self.newest.take()?;
        self.sampled = self.delivered;
        let round_start = s.delivered >= self.round_ends_at;
        if round_start {
            self.round += 1;
            self.round_ends_at = self.delivered;
        }
        if self.app_limited_until != 0 && self.delivered >= self.app_limited_until {
            self.app_limited_until = 0;
        }
        let send_elapsed = s.sent_at.saturating_duration_since(s.first_sent_at);
        let ack_elapsed = now.saturating_duration_since(s.delivered_at);
        let interval = send_elapsed.max(ack_elapsed);
        let delivered = self.delivered - s.delivered;
        let rate =
            (interval >= Duration::from_micros(10)).then(|| Rate::from_window(delivered, interval, 100)).flatten();
        Some(RateSample {
            delivered,
            interval,
            rate,
            app_limited: s.app_limited,
            prior_delivered: s.delivered,
            round_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments of 1500 B sent every `gap`, each delivered one `rtt` later
    /// unless `held` says so, held ones delivered together at `release`.
    /// Returns the rate of the last sample before `release`, and of the one at it.
    fn run(n: u32, held: std::ops::Range<u32>, release: u32) -> (u64, u64) {
        let t0 = Instant::now();
        let gap = Duration::from_micros(12); // 1 Gbit/s
        let rtt = Duration::from_millis(10);
        let lag = (rtt.as_micros() / gap.as_micros()) as u32;
        let mut s = DeliverySampler::new();
        let mut stamps = Vec::new();
        let (mut before, mut at) = (0, 0);
        let mut in_flight = 0u64;
        for i in 0..n {
            let now = t0 + gap * i;
            if i >= lag {
                let j = i - lag;
                if !held.contains(&j) {
                    s.on_delivered(now, &stamps[j as usize], 1500);
                    in_flight -= 1500;
                    before = s.take_sample(now).and_then(|x| x.rate).map_or(0, |r| r.bits_per_sec());
                }
            }
            if i == release {
                for j in held.clone() {
                    s.on_delivered(now, &stamps[j as usize], 1500);
                }
                at = s.take_sample(now).and_then(|x| x.rate).map_or(0, |r| r.bits_per_sec());
                break;
            }
            stamps.push(s.on_sent(now, in_flight, 1500));
            in_flight += 1500;
        }
        (before, at)
    }

    #[test]
    fn a_steady_flow_samples_its_rate_and_a_hole_filled_at_once_is_not_a_burst() {
        let (steady, _) = run(3000, 0..0, 2999);
        assert!((990_000_000..1_010_000_000).contains(&steady), "{steady}");
        // 200 segments held behind a hole while the rest arrives, then
        // delivered by one ACK: no more than the rate the path carried.
        let (before, at) = run(5000, 1000..1200, 4000);
        assert!((990_000_000..1_010_000_000).contains(&before), "{before}");
        assert!(at < 1_050_000_000, "{at}");
    }
}
