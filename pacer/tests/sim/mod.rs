//! A model bottleneck on virtual time, for the congestion controllers:
//! senders (the [`ModelCc`] behind a [`GapPacer`], or a CUBIC reference
//! like the kernel's) push segments through one drop-tail queue of a given
//! rate and size, with a propagation delay each way and random loss, to
//! receivers that acknowledge every segment with exact SACK information.
//!
//! The sender's bookkeeping is what the TCP mode does at its device layer:
//! a segment is lost once three segments sent after it are delivered
//! (RFC 6675's DupThresh, on a path that does not reorder), lost segments go
//! again before new data, and a retransmission timer catches a lost tail.
//! Everything is a pure function of the seed, so traces are snapshots.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    fmt::Write as _,
    time::{Duration, Instant},
};

use xsock_pacer::{GapPacer, ModelCc, Phase, Rate, SendStamp};

/// Payload bytes per segment (a 1500-byte MTU).
pub const MSS: u64 = 1448;
/// Bytes on the wire per segment (headers, Ethernet framing).
pub const WIRE: u64 = 1538;

/// The path.
#[derive(Debug, Clone, Copy)]
pub struct Path {
    pub rate: Rate,
    /// Round-trip propagation delay.
    pub rtt: Duration,
    /// Queue at the bottleneck, as a share of the BDP (percent).
    pub buffer_percent: u64,
    /// Random loss per segment, parts per million.
    pub loss_ppm: u64,
    /// From this time on, the bottleneck runs at this rate instead.
    pub rate_change: Option<(Duration, Rate)>,
    /// Every this often, this many segments in a row are lost whatever
    /// the queue holds (a host that paused and then delivered its backlog
    /// at once, a link that hiccupped: seen on veth through `xsock wanemu`
    /// on a busy 2-core machine as bursts of 150 drops with in-flight below
    /// the BDP).
    pub bursts: Option<(Duration, u64)>,
}

impl Path {
    pub fn bdp(&self) -> u64 {
        self.rate.bytes_in(self.rtt)
    }
}

/// A sender's congestion control.
pub enum Cc {
    Model(Box<ModelCc>, GapPacer),
    Cubic(Cubic),
}

/// CUBIC (RFC 9438) with its TCP-friendly region, SACK loss recovery,
/// unpaced: the kernel default the model shares a bottleneck with.
pub struct Cubic {
    cwnd: f64,
    ssthresh: f64,
    w_max: f64,
    epoch: Option<Duration>,
    /// The Reno-equivalent window (the TCP-friendly region).
    w_est: f64,
    recover_until_tx: u64,
}

impl Cubic {
    pub fn new() -> Cubic {
        Cubic { cwnd: 10.0, ssthresh: f64::INFINITY, w_max: 0.0, epoch: None, w_est: 0.0, recover_until_tx: 0 }
    }

    fn on_ack(&mut self, now: Duration, rtt: Duration) {
        if self.cwnd < self.ssthresh {
            self.cwnd += 1.0;
            return;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let t = (now - epoch + rtt).as_secs_f64();
        let k = (self.w_max * (1.0 - 0.7) / 0.4).cbrt();
        let target = 0.4 * (t - k).powi(3) + self.w_max;
        self.w_est += 3.0 * (1.0 - 0.7) / (1.0 + 0.7) / self.cwnd;
        let target = target.max(self.w_est);
        if target > self.cwnd {
            self.cwnd += (target - self.cwnd) / self.cwnd;
        }
    }

    fn on_loss(&mut self, tx: u64, next_tx: u64) {
        if tx < self.recover_until_tx {
            return; // one reduction per window of losses
        }
        self.recover_until_tx = next_tx;
        self.w_max = self.cwnd;
        self.cwnd = (self.cwnd * 0.7).max(2.0);
        self.ssthresh = self.cwnd;
        self.w_est = self.cwnd;
        self.epoch = None;
    }
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    stamp: Option<SendStamp>,
    /// Number of the segment's latest transmission.
    tx: u64,
    sends: u32,
    sent_at: Duration,
    delivered: bool,
    lost: bool,
}

/// One sending connection.
pub struct Sender {
    pub cc: Cc,
    /// Bytes the application has to send (`u64::MAX`: a bulk transfer).
    pub to_send: u64,
    pub start: Duration,
    segs: VecDeque<Seg>,
    /// Index of `segs[0]` in the stream.
    base: u64,
    /// Transmissions in order: (tx number, segment index).
    order: VecDeque<(u64, u64)>,
    next_tx: u64,
    retransmit: VecDeque<u64>,
    in_flight: u64,
    srtt: Option<Duration>,
    last_progress: Duration,
    wake_at: Option<Duration>,
    /// Bytes delivered to the receiver in order, and when each 100 ms
    /// slot ended (for goodput over any stretch).
    pub delivered: u64,
    pub slots: Vec<u64>,
    /// `retransmitted` at the end of each 100 ms slot.
    pub retx_slots: Vec<u64>,
    pub sent: u64,
    pub retransmitted: u64,
    pub timeouts: u64,
    /// Percent of its pacing rate the sender achieves (a poll loop that
    /// wakes late sends less than its pacer allows; 100 = exact).
    pub pacing_achieved_percent: u64,
    /// A sender whose poll loop sleeps: ACKs are seen only when it wakes,
    /// every this long plus up to as much again of scheduling delay (on a
    /// busy 2-core host, several milliseconds), so they arrive in batches
    /// and their RTTs carry up to twice this of noise.
    pub ack_batch: Option<Duration>,
    /// When the sender's poll loop next wakes for ACKs.
    next_poll: Duration,
}

impl Sender {
    pub fn new(cc: Cc, start: Duration, to_send: u64) -> Sender {
        Sender {
            cc,
            to_send,
            start,
            segs: VecDeque::new(),
            base: 0,
            order: VecDeque::new(),
            next_tx: 0,
            retransmit: VecDeque::new(),
            in_flight: 0,
            srtt: None,
            last_progress: start,
            wake_at: None,
            delivered: 0,
            slots: Vec::new(),
            retx_slots: Vec::new(),
            sent: 0,
            retransmitted: 0,
            timeouts: 0,
            pacing_achieved_percent: 100,
            ack_batch: None,
            next_poll: Duration::ZERO,
        }
    }

    /// Bytes per second delivered in order over `[from, to)`.
    pub fn goodput(&self, from: Duration, to: Duration) -> f64 {
        let slot = |t: Duration| ((t.as_millis() / 100) as usize).min(self.slots.len());
        let (a, b) = (slot(from), slot(to));
        if b <= a {
            return 0.0;
        }
        let at = |i: usize| if i == 0 { 0 } else { self.slots[i - 1] };
        (at(b) - at(a)) as f64 / ((b - a) as f64 / 10.0)
    }

    /// Segments sent again over `[from, to)`.
    pub fn retransmitted_in(&self, from: Duration, to: Duration) -> u64 {
        let slot = |t: Duration| ((t.as_millis() / 100) as usize).min(self.retx_slots.len());
        let at = |i: usize| if i == 0 { 0 } else { self.retx_slots[i - 1] };
        at(slot(to)) - at(slot(from))
    }

    fn cwnd(&self) -> u64 {
        match &self.cc {
            Cc::Model(m, _) => m.cwnd(),
            Cc::Cubic(c) => (c.cwnd * MSS as f64) as u64,
        }
    }

    fn rto(&self) -> Duration {
        self.srtt.map_or(Duration::from_secs(1), |s| (s * 2).max(Duration::from_millis(200)))
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A sender may send.
    Wake(usize),
    /// A segment reaches its receiver (flow, segment index, tx number).
    Arrive(usize, u64, u64),
    /// Its acknowledgement reaches the sender.
    Ack(usize, u64, u64),
}

/// A sample of the first sender's state.
pub struct TracePoint {
    pub line: String,
}

pub struct Sim {
    pub path: Path,
    pub senders: Vec<Sender>,
    t0: Instant,
    now: Duration,
    events: BinaryHeap<Reverse<(Duration, u64, Ev)>>,
    order: u64,
    busy_until: Duration,
    rng: u64,
    pub dropped_queue: u64,
    pub dropped_random: u64,
    /// Drops of [`Path::bursts`].
    pub dropped_burst: u64,
    next_burst: Duration,
    pub trace: Vec<TracePoint>,
    /// Highest queue occupancy seen, bytes.
    pub peak_queue: u64,
}

impl Sim {
    pub fn new(path: Path, senders: Vec<Sender>, seed: u64) -> Sim {
        let mut sim = Sim {
            path,
            senders,
            t0: Instant::now(),
            now: Duration::ZERO,
            events: BinaryHeap::new(),
            order: 0,
            busy_until: Duration::ZERO,
            rng: seed | 1,
            dropped_queue: 0,
            dropped_random: 0,
            dropped_burst: 0,
            next_burst: path.bursts.map_or(Duration::MAX, |b| b.0),
            trace: Vec::new(),
            peak_queue: 0,
        };
        for i in 0..sim.senders.len() {
            let at = sim.senders[i].start;
            sim.push(at, Ev::Wake(i));
        }
        sim
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.order += 1;
        self.events.push(Reverse((at, self.order, ev)));
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn rate(&self) -> Rate {
        match self.path.rate_change {
            Some((at, r)) if self.now >= at => r,
            _ => self.path.rate,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Runs until `end`, sampling the first sender every `every`.
    pub fn run(&mut self, end: Duration, every: Duration) {
        let mut next_sample = Duration::ZERO;
        let mut next_slot = Duration::from_millis(100);
        while let Some(Reverse((at, _, ev))) = self.events.pop() {
            if at >= end {
                break;
            }
            while next_slot <= at {
                for s in &mut self.senders {
                    s.slots.push(s.delivered);
                    s.retx_slots.push(s.retransmitted);
                }
                next_slot += Duration::from_millis(100);
            }
            self.now = at;
            if at >= next_sample {
                self.sample();
                next_sample += every;
            }
            match ev {
                Ev::Wake(i) => {
                    if self.senders[i].wake_at.is_some_and(|w| w <= at) {
                        self.senders[i].wake_at = None;
                    }
                    self.try_send(i);
                }
                Ev::Arrive(i, seg, tx) => {
                    let mut back = self.now + self.path.rtt / 2;
                    if let Some(p) = self.senders[i].ack_batch {
                        while self.senders[i].next_poll < back {
                            let late = Duration::from_micros(self.random() % (p.as_micros() as u64 + 1));
                            self.senders[i].next_poll += p + late;
                        }
                        back = self.senders[i].next_poll;
                    }
                    self.push(back, Ev::Ack(i, seg, tx));
                }
                Ev::Ack(i, seg, tx) => {
                    self.on_ack(i, seg, tx);
                    // A poll loop reads its batch of ACKs, then sends (as
                    // smoltcp does: ingress, then egress), not in between.
                    let more =
                        matches!(self.events.peek(), Some(Reverse((t, _, Ev::Ack(j, ..)))) if *t == at && *j == i);
                    if !more {
                        self.try_send(i);
                    }
                }
            }
        }
    }

    fn sample(&mut self) {
        let s = &self.senders[0];
        let mut line = String::new();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let _ = write!(line, "{:7.1}s ", self.now.as_secs_f64());
        if let Cc::Model(m, _) = &s.cc {
            let st = m.state();
            let phase = match st.phase {
                Phase::Startup => "startup".to_string(),
                Phase::Drain => "drain".to_string(),
                Phase::ProbeBw(i) => format!("probe-bw {i}"),
                Phase::ProbeRtt => "probe-rtt".to_string(),
            };
            let mbit = |r: Rate| r.bits_per_sec() as f64 / 1e6;
            let _ = write!(
                line,
                "{phase:<10} btl {:7.1} min-rtt {:6.1} pace {:7.1} cwnd {:6} hi {:>6}",
                st.bottleneck.map_or(0.0, mbit),
                st.min_rtt.map_or(0.0, ms),
                mbit(st.pacing),
                st.cwnd / MSS,
                st.inflight_hi.map_or("-".to_string(), |h| (h / MSS).to_string()),
            );
        }
        let _ = write!(
            line,
            " | inflight {:6} delivered {:9} MB retx {:6} rto {}",
            s.in_flight / MSS,
            s.delivered / 1_000_000,
            s.retransmitted,
            s.timeouts
        );
        self.trace.push(TracePoint { line });
    }

    /// The bottleneck: random loss, then the drop-tail queue.
    fn offer(&mut self, i: usize, seg: u64, tx: u64) {
        if self.path.loss_ppm > 0 && self.random() % 1_000_000 < self.path.loss_ppm {
            self.dropped_random += 1;
            return;
        }
        if let Some((every, count)) = self.path.bursts
            && self.now >= self.next_burst
        {
            self.dropped_burst += 1;
            if self.dropped_burst.is_multiple_of(count) {
                self.next_burst += every;
            }
            return;
        }
        let rate = self.rate();
        let backlog = if self.busy_until > self.now { rate.bytes_in(self.busy_until - self.now) } else { 0 };
        let limit = (self.path.bdp() * self.path.buffer_percent / 100).max(2 * WIRE);
        if backlog + WIRE > limit {
            self.dropped_queue += 1;
            return;
        }
        self.peak_queue = self.peak_queue.max(backlog + WIRE);
        let start = self.busy_until.max(self.now);
        self.busy_until = start + rate.time_for(WIRE);
        let at = self.busy_until + self.path.rtt / 2;
        self.push(at, Ev::Arrive(i, seg, tx));
    }

    fn try_send(&mut self, i: usize) {
        let now = self.now;
        let instant = self.instant();
        loop {
            let s = &mut self.senders[i];
            // The retransmission timer: nothing delivered for an RTO.
            if s.in_flight > 0 && now.saturating_sub(s.last_progress) >= s.rto() {
                s.timeouts += 1;
                s.last_progress = now;
                for k in 0..s.segs.len() {
                    let g = &mut s.segs[k];
                    if !g.delivered && !g.lost {
                        g.lost = true;
                        s.in_flight -= MSS;
                        s.retransmit.push_back(s.base + k as u64);
                        if let (Cc::Model(m, _), Some(st)) = (&mut s.cc, &g.stamp) {
                            m.on_lost(instant, st, MSS);
                        }
                    }
                }
                if let Cc::Cubic(c) = &mut s.cc {
                    c.on_loss(u64::MAX - 1, s.next_tx);
                    c.cwnd = 1.0;
                }
            }
            while s.retransmit.front().is_some_and(|&k| k < s.base || s.segs[(k - s.base) as usize].delivered) {
                s.retransmit.pop_front();
            }
            let resend = s.retransmit.front().copied();
            let new_data = s.sent < s.to_send;
            if resend.is_none() && !new_data {
                return;
            }
            if s.in_flight + MSS > s.cwnd() {
                return;
            }
            if let Cc::Model(_, p) = &s.cc
                && let Some(at) = p.poll_departure(instant)
            {
                let at = now + (at - instant);
                if s.wake_at.is_none_or(|w| w > at) {
                    s.wake_at = Some(at);
                    self.push(at, Ev::Wake(i));
                }
                return;
            }
            let tx = s.next_tx;
            s.next_tx += 1;
            let in_flight = s.in_flight;
            let stamp = match &mut s.cc {
                Cc::Model(m, p) => {
                    // The model paces payload (its rates are delivered payload).
                    p.on_sent(instant, MSS * 100 / s.pacing_achieved_percent.max(1));
                    Some(m.on_sent(instant, in_flight, MSS))
                }
                Cc::Cubic(_) => None,
            };
            let k = match resend {
                Some(k) => {
                    s.retransmit.pop_front();
                    s.retransmitted += 1;
                    k
                }
                None => {
                    s.segs.push_back(Seg { stamp: None, tx, sends: 0, sent_at: now, delivered: false, lost: false });
                    s.sent += MSS;
                    s.base + s.segs.len() as u64 - 1
                }
            };
            let g = &mut s.segs[(k - s.base) as usize];
            g.stamp = stamp;
            g.tx = tx;
            g.sends += 1;
            g.sent_at = now;
            g.lost = false;
            s.in_flight += MSS;
            s.order.push_back((tx, k));
            if s.in_flight == MSS {
                s.last_progress = now;
            }
            self.offer(i, k, tx);
        }
    }

    fn on_ack(&mut self, i: usize, k: u64, tx: u64) {
        let now = self.now;
        let instant = self.instant();
        let s = &mut self.senders[i];
        if k < s.base {
            return;
        }
        let idx = (k - s.base) as usize;
        let g = s.segs[idx];
        if g.delivered {
            return;
        }
        s.segs[idx].delivered = true;
        if !g.lost {
            s.in_flight -= MSS;
        }
        s.last_progress = now;
        let first = g.sends == 1 && g.tx == tx;
        if first {
            let rtt = now - g.sent_at;
            s.srtt = Some(s.srtt.map_or(rtt, |r| (r * 7 + rtt) / 8));
        }
        match &mut s.cc {
            Cc::Model(m, _) => {
                if let Some(st) = &g.stamp {
                    m.on_delivered(instant, st, MSS, first);
                }
            }
            Cc::Cubic(c) => c.on_ack(now, s.srtt.unwrap_or(Duration::from_millis(100))),
        }
        // Segments sent three transmissions before this one and still out: lost.
        while let Some(&(otx, ok)) = s.order.front() {
            if otx + 3 > tx {
                break;
            }
            s.order.pop_front();
            if ok < s.base {
                continue;
            }
            let o = &mut s.segs[(ok - s.base) as usize];
            if o.tx != otx || o.delivered || o.lost {
                continue;
            }
            o.lost = true;
            s.in_flight -= MSS;
            s.retransmit.push_back(ok);
            match (&mut s.cc, &o.stamp) {
                (Cc::Model(m, _), Some(st)) => m.on_lost(instant, st, MSS),
                (Cc::Model(..), None) => {}
                (Cc::Cubic(c), _) => c.on_loss(otx, s.next_tx),
            }
        }
        // In-order delivery moves the cumulative ACK.
        let mut acked = 0;
        while s.segs.front().is_some_and(|g| g.delivered) {
            s.segs.pop_front();
            s.base += 1;
            s.delivered += MSS;
            acked += MSS;
        }
        if let Cc::Model(m, p) = &mut s.cc {
            m.on_ack(instant, s.in_flight, acked.max(MSS));
            p.set_rate(instant, m.pacing_rate());
            if s.sent >= s.to_send && s.retransmit.is_empty() {
                m.on_app_limited(s.in_flight);
            }
        }
    }
}

/// The trace as text, one line per sample.
pub fn render(trace: &[TracePoint]) -> String {
    trace.iter().map(|p| format!("{}\n", p.line)).collect()
}

/// Compares `text` with the committed snapshot `name` (or writes it when
/// `UPDATE_SNAPSHOTS=1`); a difference fails with both files named.
pub fn snapshot(name: &str, text: &str) {
    let path = format!("{}/tests/snapshots/{name}.trace", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let kept = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no snapshot {path}: run with UPDATE_SNAPSHOTS=1 to write it"));
    if kept != text {
        let new = format!("{path}.new");
        std::fs::write(&new, text).unwrap();
        panic!("the trace differs from {path} (written to {new}); if the change is meant, run with UPDATE_SNAPSHOTS=1");
    }
}
