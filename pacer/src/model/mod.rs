//! A model-based congestion controller, after BBR (Cardwell et al.,
//! "BBR: Congestion-Based Congestion Control", and the IETF drafts), for a
//! sender that owns neither its TCP stack's window nor its retransmissions
//! (the TCP mode steers smoltcp from the device layer): it is told what
//! left, what was delivered and what was lost, and answers with a pacing
//! rate and a cap on the bytes in flight.
//!
//! The model is two numbers: the bottleneck rate (the windowed maximum of
//! the delivery-rate samples over the last 10 rounds, [`DeliverySampler`])
//! and the path's round-trip propagation time (the minimum RTT over 10 s).
//! From them:
//! - **Start-up** doubles the rate each round (pacing gain 2.89) and stops
//!   when the delivery rate has not grown by 25 % in three rounds, *or* as
//!   soon as a round loses more than 2 % of what it sent: a buffer of a
//!   tenth of the path's BDP fills in a tenth of a round, so waiting three
//!   rounds for the rate to flatten would send a whole BDP into a full
//!   queue. **Drain** then empties the queue start-up built.
//! - **Probe-bandwidth** paces at the bottleneck rate with a cycle of eight
//!   phases of one min-RTT each (gain 1.25 to find more, 0.75 to drain what
//!   that queued, then six at 1), in-flight capped at 2 × BDP plus the
//!   largest burst of ACKs beyond the rate in the last 10 rounds (BBR's
//!   `extra_acked`: hosts that batch would otherwise idle the sender).
//! - **Losses** do not move the model: random loss (a dirty fibre, 0.1 %)
//!   says nothing about the bottleneck. Losing more than 2 % of what was in
//!   flight (when the lost segment left) in a round does say the sender is
//!   too much for the buffer, or for the flows it shares it with (after
//!   BBRv2's `inflight_hi`): the moment it does, the in-flight cap becomes
//!   90 % of what was in flight when the segment that crossed the line was
//!   sent, and probing for more stops. How low it may go depends on the
//!   queue: with one standing through the last round, the buffer is shared
//!   and the cap may go to 90 % of the BDP (the flow's delivery rate, then
//!   its model, fall with it, which leaves the others room); with none, the
//!   losses were a burst (a host that paused, then caught up) and the cap
//!   stays at the BDP plus the ACK-aggregation allowance, which fills the
//!   pipe without a queue. One cut per episode: losses of segments sent
//!   before the last cut are that cut's. The probing phase then grows the cap again,
//!   by 1, 2, 4, ... segments a round (at most a sixteenth of it) for as
//!   long as it stays clean. That is what leaves a
//!   loss-based flow (kernel Cubic) its share of a shallow buffer, and keeps
//!   a lone flow's probes from overflowing it every cycle.
//! - **Probing ends at the queue**: a probe that makes every segment of a
//!   stretch of an eighth of the min RTT wait a twentieth of it (the lowest
//!   RTT of the stretch counts: a host that reads ACKs late, a sleeping poll
//!   loop on a busy core, delays some by milliseconds, a queue all; a
//!   buffer of a tenth of the BDP is then half full) has found the path's
//!   capacity; the cap becomes 95 % of what was in flight when the least
//!   delayed of them left, and the probe ends before the buffer
//!   overflows. (Only on paths of 5 ms and more: below that, delay is the
//!   hosts' batching, not a queue.)
//! - **The rate holds without a reason to fall**: the bottleneck
//!   maximum ages out only over rounds that saw a loss or a queue; a round
//!   with neither that delivered less says the sender sent less (pacing is
//!   done by a poll loop, which can fall short), not that the path slowed.
//! - **Probe-RTT**: a min RTT not seen again for 10 s is re-measured by
//!   holding in-flight to half the BDP for 200 ms (and a round), so that a
//!   queue of its own making does not become the path's RTT.

mod sampler;

use std::{collections::VecDeque, time::Duration, time::Instant};

pub use sampler::{DeliverySampler, RateSample, SendStamp};

use crate::Rate;

/// Start-up's gain, 2/ln 2 (the smallest that doubles the delivery rate
/// each round), in percent.
const STARTUP_GAIN: u64 = 289;
/// Drain's pacing gain, 1/2.89.
const DRAIN_GAIN: u64 = 35;
/// In-flight cap in BDPs, percent.
const CWND_GAIN: u64 = 200;
/// Probe-bandwidth's pacing gains, percent, one min-RTT each.
pub const PROBE_CYCLE: [u64; 8] = [125, 75, 100, 100, 100, 100, 100, 100];
/// Rounds the bottleneck-rate maximum looks back over.
const BW_ROUNDS: u64 = 10;
/// How long a min RTT stands without being seen again.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long Probe-RTT holds in-flight down.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// A round losing more than this share (per mille) of what it sent is
/// congestion, not noise.
const LOSS_PER_MILLE: u64 = 20;
/// Queueing delay below this is noise, not a queue (probing ends at a
/// queue of a twentieth of the min RTT, or this).
const QUEUE_MIN: Duration = Duration::from_micros(500);
/// Delay is judged by the lowest RTT over stretches of an eighth of the
/// min RTT, within these bounds.
const QUEUE_WINDOW_MIN: Duration = Duration::from_millis(2);
const QUEUE_WINDOW_MAX: Duration = Duration::from_millis(25);
/// Below this min RTT, delay is the hosts' batching and polling, not a
/// queue: probing ends on loss only.
const DELAY_SIGNAL_MIN_RTT: Duration = Duration::from_millis(5);
/// What the cap keeps of the in-flight level where probing found a queue, percent.
const QUEUE_BETA_PERCENT: u64 = 95;
/// What the cap keeps of the in-flight level where losses began, percent.
const LOSS_BETA_PERCENT: u64 = 90;
/// Segments a cap never goes below.
const MIN_CWND_SEGMENTS: u64 = 4;
/// Segments in flight before the first round trip.
const INITIAL_CWND_SEGMENTS: u64 = 10;

/// Where the controller is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Doubling the rate each round until the pipe is full.
    Startup,
    /// Emptying the queue start-up built.
    Drain,
    /// Probe-bandwidth, at the given index of [`PROBE_CYCLE`].
    ProbeBw(usize),
    /// Holding in-flight down to see the propagation RTT again.
    ProbeRtt,
}

/// What the controller says and believes at one moment (for traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelState {
    /// The phase.
    pub phase: Phase,
    /// The bottleneck-rate estimate.
    pub bottleneck: Option<Rate>,
    /// The propagation RTT estimate.
    pub min_rtt: Option<Duration>,
    /// The pacing rate.
    pub pacing: Rate,
    /// Bytes in flight allowed.
    pub cwnd: u64,
    /// The loss-driven ceiling on `cwnd`, while there is one.
    pub inflight_hi: Option<u64>,
    /// Rounds completed.
    pub round: u64,
    /// Times the cap was cut for losses.
    pub loss_cuts: u64,
    /// Times probing ended at a queue.
    pub queue_cuts: u64,
    /// Segments reported lost.
    pub lost: u64,
}

/// A stretch of RTT samples: when it began, its lowest sample, and its
/// lowest of segments sent while probing (with what was in flight then).
#[derive(Debug, Clone, Default)]
struct RttSlot {
    since: Option<Instant>,
    lowest: Option<Duration>,
    lowest_probing: Option<(Duration, u64)>,
}

/// One connection's controller.
#[derive(Debug, Clone)]
pub struct ModelCc {
    mss: u64,
    sampler: DeliverySampler,
    phase: Phase,
    phase_since: Instant,
    /// Per-round maxima of the delivery rate, newest last (round, bits/s).
    bw: VecDeque<(u64, u64)>,
    min_rtt: Option<(Duration, Instant)>,
    /// Start-up: the best rate and the rounds it has not grown by 25 %.
    full_bw: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    /// This round: bytes lost, `delivered` at its start, whether the loss
    /// response has run in it.
    round_lost: u64,
    round_base: u64,
    round_reacted: bool,
    inflight_hi: Option<u64>,
    /// Segments the cap grows by in the next round of probing.
    probe_growth: u64,
    /// The last probe ended with neither queue nor loss while the cap held it.
    clean_probe: bool,
    /// This round saw a loss or a queue (a reason the bottleneck rate may
    /// have fallen).
    round_congested: bool,
    /// The current stretch of RTT samples ([`ModelCc::queue_sample`]).
    slot: RttSlot,
    /// Lowest RTT in the current phase, and in the one before it.
    phase_rtt: Option<Duration>,
    /// Lowest RTT in the current round, and in the one before it.
    round_rtt: Option<Duration>,
    last_round_rtt: Option<Duration>,
    probe_base_rtt: Option<Duration>,
    /// Probe-RTT: when it may end (once in-flight is down), the cap to restore.
    probe_rtt_until: Option<Instant>,
    probe_rtt_round: u64,
    prior_cwnd: u64,
    pacing: Rate,
    cwnd: u64,
    /// ACK aggregation (BBR's `extra_acked`): the epoch's start and bytes
    /// delivered in it, and per-round maxima of the excess over the model's
    /// rate (round, bytes), newest last.
    agg_since: Option<Instant>,
    agg_delivered: u64,
    extra_acked: VecDeque<(u64, u64)>,
    /// When the cap was last cut for losses.
    last_cut: Option<Instant>,
    loss_cuts: u64,
    queue_cuts: u64,
    lost: u64,
}

impl ModelCc {
    /// A controller for segments of up to `mss` payload bytes, starting at
    /// `now`; `rtt` is the handshake's round trip if known.
    pub fn new(mss: u32, now: Instant, rtt: Option<Duration>) -> ModelCc {
        let mss = u64::from(mss.max(1));
        let cwnd = INITIAL_CWND_SEGMENTS * mss;
        let rtt = rtt.unwrap_or(Duration::from_millis(1));
        let pacing = Rate::from_window(cwnd, rtt, STARTUP_GAIN as u32).unwrap_or(Rate::mbit(1));
        ModelCc {
            mss,
            sampler: DeliverySampler::new(),
            phase: Phase::Startup,
            phase_since: now,
            bw: VecDeque::new(),
            min_rtt: None,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            round_lost: 0,
            round_base: 0,
            round_reacted: false,
            inflight_hi: None,
            probe_growth: 1,
            clean_probe: false,
            round_congested: false,
            slot: RttSlot::default(),
            phase_rtt: None,
            round_rtt: None,
            last_round_rtt: None,
            probe_base_rtt: None,
            probe_rtt_until: None,
            probe_rtt_round: 0,
            prior_cwnd: cwnd,
            pacing,
            cwnd,
            agg_since: None,
            agg_delivered: 0,
            extra_acked: VecDeque::new(),
            last_cut: None,
            loss_cuts: 0,
            queue_cuts: 0,
            lost: 0,
        }
    }

    /// The rate to pace this connection's segments at.
    pub fn pacing_rate(&self) -> Rate {
        self.pacing
    }

    /// Bytes this connection may have in flight.
    pub fn cwnd(&self) -> u64 {
        self.cwnd
    }

    /// What the controller believes and says now.
    pub fn state(&self) -> ModelState {
        ModelState {
            phase: self.phase,
            bottleneck: self.bottleneck(),
            min_rtt: self.min_rtt.map(|m| m.0),
            pacing: self.pacing,
            cwnd: self.cwnd,
            inflight_hi: self.inflight_hi,
            round: self.sampler.round(),
            loss_cuts: self.loss_cuts,
            queue_cuts: self.queue_cuts,
            lost: self.lost,
        }
    }

    fn bottleneck(&self) -> Option<Rate> {
        self.bw.iter().map(|b| b.1).max().and_then(Rate::from_bits_per_sec)
    }

    /// The path's BDP by the model (`None` before it has both numbers).
    pub fn bdp(&self) -> Option<u64> {
        Some(self.bottleneck()?.bytes_in(self.min_rtt?.0))
    }

    /// A segment of `bytes` leaves at `now` with `in_flight` bytes already
    /// out: the stamp to keep with it until it is delivered or lost.
    pub fn on_sent(&mut self, now: Instant, in_flight: u64, bytes: u64) -> SendStamp {
        self.sampler.on_sent(now, in_flight, bytes)
    }

    /// The sender ran out of data with `in_flight` out.
    pub fn on_app_limited(&mut self, in_flight: u64) {
        self.sampler.on_app_limited(in_flight);
    }

    /// The segment stamped `stamp` (`bytes` of payload) was delivered at
    /// `now`; `first_transmission` when it was sent only once (so its
    /// round trip is a sample).
    pub fn on_delivered(&mut self, now: Instant, stamp: &SendStamp, bytes: u64, first_transmission: bool) {
        self.sampler.on_delivered(now, stamp, bytes);
        if first_transmission {
            let rtt = now.saturating_duration_since(stamp.sent_at);
            self.rtt_sample(now, rtt);
            self.phase_rtt = Some(self.phase_rtt.map_or(rtt, |r| r.min(rtt)));
            self.round_rtt = Some(self.round_rtt.map_or(rtt, |r| r.min(rtt)));
            self.queue_sample(now, stamp, rtt);
        }
    }

    /// Judges delay by the lowest RTT of each stretch of a few milliseconds
    /// (an eighth of the min RTT, 2 to 25 ms): a host that reads its ACKs
    /// late (a sleeping poll loop, a busy core) delays some samples by
    /// milliseconds, a queue delays every one.
    fn queue_sample(&mut self, now: Instant, stamp: &SendStamp, rtt: Duration) {
        let Some((m, _)) = self.min_rtt else { return };
        let window = (m / 8).clamp(QUEUE_WINDOW_MIN, QUEUE_WINDOW_MAX);
        let since = *self.slot.since.get_or_insert(now);
        if now.saturating_duration_since(since) >= window {
            let slot = std::mem::take(&mut self.slot);
            self.slot.since = Some(now);
            if slot.lowest.is_some_and(|r| r > m + (m / 10).max(Duration::from_millis(1))) {
                self.round_congested = true;
            }
            // Probing has found the queue: every segment sent in it for a
            // stretch waited a twentieth of the RTT. More than was in flight
            // when the least delayed of them left only fills the buffer.
            if let (Phase::ProbeBw(0), Some((rtt, in_flight))) = (self.phase, slot.lowest_probing)
                && m >= DELAY_SIGNAL_MIN_RTT
                && rtt > self.probe_base_rtt.unwrap_or(m).max(m) + (m / 20).max(QUEUE_MIN)
            {
                let level = in_flight * QUEUE_BETA_PERCENT / 100;
                self.queue_cuts += 1;
                self.inflight_hi = Some(self.inflight_hi.map_or(level, |h| h.max(level)));
                self.probe_growth = 1;
                self.clean_probe = false;
                self.enter(Phase::ProbeBw(1), now);
            }
        }
        self.slot.lowest = Some(self.slot.lowest.map_or(rtt, |r| r.min(rtt)));
        if self.phase == Phase::ProbeBw(0) && stamp.sent_at >= self.phase_since {
            self.slot.lowest_probing = Some(match self.slot.lowest_probing {
                Some((r, f)) if r <= rtt => (r, f),
                _ => (rtt, stamp.in_flight),
            });
        }
    }

    /// The segment stamped `stamp`, `bytes` long, is deemed lost at `now`.
    pub fn on_lost(&mut self, now: Instant, stamp: &SendStamp, bytes: u64) {
        self.round_lost += bytes;
        self.lost += 1;
        // The share is of what was in flight when the lost segment left (as
        // BBRv2's `inflight_hi` has it), or of the round so far if that is
        // more: early in a round, what it has delivered is a few segments,
        // and three random losses among them (0.1 % of a gigabit path
        // loses eight a round) would read as 2 % and cut the cap.
        let delivered = self.sampler.delivered() - self.round_base;
        let sent = (delivered + self.round_lost).max(stamp.in_flight);
        let too_much = self.round_lost * 1000 > sent * LOSS_PER_MILLE && self.round_lost >= 3 * self.mss;
        // Losses of a quarter of that are a reason the bottleneck rate may
        // have fallen; random loss below them is not.
        if self.round_lost * 1000 > sent * LOSS_PER_MILLE / 4 {
            self.round_congested = true;
        }
        // One cut per episode: the losses of what was sent before the last
        // cut are that cut's (a burst of drops is found over two rounds).
        let fresh = self.last_cut.is_none_or(|at| stamp.sent_at >= at);
        if too_much && fresh && !self.round_reacted {
            self.round_reacted = true;
            self.last_cut = Some(now);
            self.loss_cuts += 1;
            self.inflight_too_high(now, stamp.in_flight);
        }
    }

    /// Losses say the path holds no more than `level` in flight: the cap
    /// goes a little below it (so the queue drains, and flows sharing the
    /// bottleneck converge: equal growth, proportional cuts).
    fn inflight_too_high(&mut self, now: Instant, level: u64) {
        let bdp = self.bdp().unwrap_or(0);
        self.probe_growth = 1;
        self.clean_probe = false;
        if self.phase == Phase::Startup {
            // Start-up overflows by rate (it paces at 2.89 x), not by the
            // level in flight: the pipe holds at least the model's BDP.
            self.inflight_hi = Some(level.max(bdp));
            self.filled_pipe = true;
            self.enter(Phase::Drain, now);
            return;
        }
        // Losses with a queue standing through the last round (every
        // segment of it waited) come from sharing the buffer: the cap goes
        // below the BDP, and the flow's delivery rate, and then its model,
        // with it, which leaves the others room. Losses with no queue
        // standing are a burst (a host that paused and caught up, a link
        // that hiccupped): in-flight at the BDP fills the pipe without a
        // queue (hosts that batch ACKs hold the aggregation allowance more
        // without one), and a cap below it only costs rate: measured on
        // wanemu at 1 Gbit/s, 100 ms, bursts of 150 drops every second or
        // two held the cap at 90 % of the BDP and the flow at 77 %.
        let m = self.min_rtt.map_or(Duration::ZERO, |m| m.0);
        let lowest = self.round_rtt.into_iter().chain(self.last_round_rtt).min();
        let standing = lowest.is_some_and(|r| r > m + (m / 40).max(QUEUE_MIN));
        let floor = if standing { bdp * 9 / 10 } else { bdp + self.extra_acked() };
        let floor = floor.max(MIN_CWND_SEGMENTS * self.mss);
        let level = self.inflight_hi.map_or(level, |hi| hi.min(level));
        self.inflight_hi = Some((level * LOSS_BETA_PERCENT / 100).max(floor));
        if self.phase == Phase::ProbeBw(0) {
            self.enter(Phase::ProbeBw(1), now);
        }
    }

    fn rtt_sample(&mut self, now: Instant, rtt: Duration) {
        if self.min_rtt.is_none() && !self.filled_pipe {
            // The first round trip: start-up's rate from it, not from the
            // 1 ms guess (which at 2.89 x ten segments is 334 Mbit/s, more
            // than many paths, and overflowed a shallow buffer in start-up).
            self.pacing = Rate::from_window(self.cwnd, rtt, STARTUP_GAIN as u32).unwrap_or(self.pacing);
        }
        match self.min_rtt {
            Some((m, at)) if rtt > m && now.saturating_duration_since(at) < MIN_RTT_WINDOW => {
                // Seen again (within 1/64): the estimate still stands.
                if rtt <= m + m / 64 {
                    self.min_rtt = Some((m, now));
                }
            }
            _ => self.min_rtt = Some((rtt, now)),
        }
    }

    /// Ends the processing of one acknowledgement at `now`, which newly
    /// acknowledged `acked` bytes cumulatively, with `in_flight` still out:
    /// the model and its outputs move.
    pub fn on_ack(&mut self, now: Instant, in_flight: u64, acked: u64) {
        let delivered_before = self.sampler.delivered_at_last_sample();
        if let Some(s) = self.sampler.take_sample(now) {
            self.aggregation(now, self.sampler.delivered() - delivered_before);
            if let Some(rate) = s.rate {
                let round = self.sampler.round();
                let bps = rate.bits_per_sec();
                let best = self.bottleneck().map_or(0, |b| b.bits_per_sec());
                if !s.app_limited || bps >= best {
                    match self.bw.back_mut() {
                        Some((r, b)) if *r == round => *b = (*b).max(bps),
                        _ => self.bw.push_back((round, bps)),
                    }
                    while self.bw.front().is_some_and(|(r, _)| r + BW_ROUNDS <= round) {
                        self.bw.pop_front();
                    }
                }
            }
            if s.round_start {
                self.end_round(now);
            }
        }
        self.advance_phase(now, in_flight);
        self.set_outputs(acked);
    }

    /// ACKs that come in bursts (a receiver or a link that batches, a
    /// poll loop that wakes late) deliver more in a stretch than the rate
    /// says: the cap keeps room for the largest such excess of the last
    /// rounds, or the sender idles between bursts.
    fn aggregation(&mut self, now: Instant, delivered: u64) {
        let Some(bw) = self.bottleneck() else { return };
        let since = *self.agg_since.get_or_insert(now);
        let expected = bw.bytes_in(now.saturating_duration_since(since));
        if self.agg_delivered <= expected {
            // Delivery is at or below the rate: a new epoch.
            self.agg_since = Some(now);
            self.agg_delivered = 0;
        }
        self.agg_delivered += delivered;
        let expected = bw.bytes_in(now.saturating_duration_since(self.agg_since.unwrap_or(now)));
        let extra = self.agg_delivered.saturating_sub(expected).min(self.cwnd);
        let round = self.sampler.round();
        match self.extra_acked.back_mut() {
            Some((r, e)) if *r == round => *e = (*e).max(extra),
            _ => self.extra_acked.push_back((round, extra)),
        }
        while self.extra_acked.front().is_some_and(|(r, _)| r + BW_ROUNDS <= round) {
            self.extra_acked.pop_front();
        }
    }

    /// A round ended: start-up's full-pipe check, and the cap's growth
    /// while probing.
    fn end_round(&mut self, now: Instant) {
        let bw = self.bottleneck().map_or(0, |b| b.bits_per_sec());
        // A round with neither loss nor a queue says nothing against the
        // rate the model holds: delivering less then means the sender sent
        // less (its pacing fell short, a poll loop woke late), and letting
        // the maximum age out would pace slower still, and so on down (seen
        // on veth with sleeping endpoints: 970 Mbit/s to 24 in 12 s).
        if self.filled_pipe && !self.round_congested && bw > 0 {
            let round = self.sampler.round();
            match self.bw.back_mut() {
                Some((r, b)) if *r == round => *b = (*b).max(bw),
                _ => self.bw.push_back((round, bw)),
            }
        }
        self.round_congested = false;
        if !self.filled_pipe {
            if bw >= self.full_bw.saturating_mul(5) / 4 {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
            }
            if self.full_bw_rounds >= 3 {
                self.filled_pipe = true;
                self.enter(Phase::Drain, now);
            }
        } else if let (Phase::ProbeBw(0), Some(hi), false) = (self.phase, self.inflight_hi, self.round_reacted) {
            // Doubling steps, at most a sixteenth of the cap a round: the
            // queue that ends probing is seen a round trip late, so one
            // round's growth is what overshoots.
            let hi = hi + (self.probe_growth * self.mss).min(hi / 16).max(self.mss);
            self.probe_growth = (self.probe_growth * 2).min(1 << 20);
            let roomy = self.bdp().is_some_and(|b| hi >= b * CWND_GAIN / 100);
            self.inflight_hi = (!roomy).then_some(hi);
        }
        self.last_round_rtt = self.round_rtt.take();
        self.round_lost = 0;
        self.round_base = self.sampler.delivered();
        self.round_reacted = false;
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        // A probe's queue is measured from what the phase before it saw
        // (a queue another flow keeps standing is not this probe's).
        self.probe_base_rtt = self.phase_rtt.take();
        self.phase = phase;
        self.phase_since = now;
    }

    fn advance_phase(&mut self, now: Instant, in_flight: u64) {
        let min_rtt = self.min_rtt.map_or(Duration::from_millis(1), |m| m.0);
        let bdp = self.bdp().unwrap_or(self.cwnd);
        match self.phase {
            Phase::Drain if in_flight <= bdp => {
                // Start the cycle at a phase of its own (not the draining
                // one), so flows that start together do not probe together.
                let i = [0, 2, 3, 4, 5, 6, 7][(self.sampler.round() % 7) as usize];
                self.enter(Phase::ProbeBw(i), now);
            }
            Phase::ProbeBw(i) => {
                let elapsed = now.saturating_duration_since(self.phase_since);
                let done = match i {
                    // Probing lasts a round trip, and on while the loss
                    // cap holds it back and keeps growing cleanly.
                    0 => {
                        elapsed >= min_rtt
                            && self.inflight_hi.is_none_or(|hi| hi >= bdp * 5 / 4 || in_flight + hi / 16 < hi)
                    }
                    // Draining ends once the queue is gone.
                    1 => elapsed >= min_rtt || (elapsed >= min_rtt / 2 && in_flight <= bdp),
                    _ => elapsed >= min_rtt,
                };
                if done {
                    // A probe that ended cleanly (neither queue nor loss
                    // found) with the loss cap holding it back probes again
                    // right after its drain phase, its growth carried on:
                    // the cap is below what the path holds.
                    let next = match i {
                        0 => {
                            self.clean_probe = self.inflight_hi.is_some();
                            1
                        }
                        1 if self.clean_probe => 0,
                        _ => (i + 1) % PROBE_CYCLE.len(),
                    };
                    self.enter(Phase::ProbeBw(next), now);
                }
            }
            Phase::ProbeRtt => {
                let target = self.probe_rtt_cwnd();
                match self.probe_rtt_until {
                    None if in_flight <= target => {
                        self.probe_rtt_until = Some(now + PROBE_RTT_TIME.max(min_rtt));
                        self.probe_rtt_round = self.sampler.round();
                    }
                    Some(until) if now >= until && self.sampler.round() > self.probe_rtt_round => {
                        self.probe_rtt_until = None;
                        if let Some((m, _)) = self.min_rtt {
                            self.min_rtt = Some((m, now));
                        }
                        self.cwnd = self.cwnd.max(self.prior_cwnd);
                        let next = if self.filled_pipe { Phase::ProbeBw(2) } else { Phase::Startup };
                        self.enter(next, now);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        let stale = self.min_rtt.is_some_and(|(_, at)| now.saturating_duration_since(at) >= MIN_RTT_WINDOW);
        if stale && self.phase != Phase::ProbeRtt {
            self.prior_cwnd = self.cwnd;
            self.probe_rtt_until = None;
            self.enter(Phase::ProbeRtt, now);
        }
    }

    /// The largest ACK-aggregation excess of the last rounds.
    fn extra_acked(&self) -> u64 {
        self.extra_acked.iter().map(|e| e.1).max().unwrap_or(0)
    }

    fn probe_rtt_cwnd(&self) -> u64 {
        (self.bdp().unwrap_or(self.cwnd) / 2).max(MIN_CWND_SEGMENTS * self.mss)
    }

    fn set_outputs(&mut self, acked: u64) {
        let (pacing_gain, cwnd_gain) = match self.phase {
            Phase::Startup => (STARTUP_GAIN, STARTUP_GAIN),
            Phase::Drain => (DRAIN_GAIN, STARTUP_GAIN),
            Phase::ProbeBw(i) => (PROBE_CYCLE[i], CWND_GAIN),
            Phase::ProbeRtt => (100, 100),
        };
        if let Some(bw) = self.bottleneck() {
            let rate = bw.scaled(pacing_gain, 100).unwrap_or(bw);
            // Start-up only raises the rate: an early sample from a
            // half-empty pipe is not the bottleneck.
            if self.filled_pipe || rate > self.pacing {
                self.pacing = rate;
            }
        }
        let floor = MIN_CWND_SEGMENTS * self.mss;
        let extra = if self.filled_pipe { self.extra_acked() } else { 0 };
        let target = self.bdp().map(|b| b * cwnd_gain / 100 + 3 * self.mss + extra);
        self.cwnd = match (self.phase, target) {
            (Phase::ProbeRtt, _) => self.probe_rtt_cwnd(),
            (_, None) => self.cwnd + acked,
            (_, Some(t)) if self.filled_pipe => (self.cwnd + acked).min(t),
            (_, Some(t)) => (self.cwnd + acked).min(t.max(self.cwnd)),
        };
        if let Some(hi) = self.inflight_hi {
            self.cwnd = self.cwnd.min(hi);
        }
        self.cwnd = self.cwnd.max(floor);
    }
}
