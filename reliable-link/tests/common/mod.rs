//! A deterministic two-node harness: two endpoints joined by a simulated
//! link with virtual time and seeded faults.
//!
//! Corruption follows the hardware this protocol trusts: the sender's NIC
//! appends a CRC-32 and the receiver's NIC drops a frame whose CRC fails, so
//! a corrupted frame becomes a lost one (unless the fault is configured to
//! slip past the check, to test the parser and state machine on garbage).

#![allow(dead_code)]

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use xsock_reliable_link::{Endpoint, EndpointConfig, EndpointEvent, LocalAddr};

pub const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
pub const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Faults on each direction of the link.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub corrupt: f64,
    /// Corrupted frames that slip past the CRC check (0 = a real NIC).
    pub crc_miss: f64,
    pub latency: Duration,
    /// Frames in flight per direction before the link drops (a full ring).
    pub capacity: usize,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            crc_miss: 0.0,
            latency: Duration::from_micros(5),
            capacity: 100_000,
        }
    }
}

/// splitmix64 for the harness's own choices.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.f64() < p
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    to_b: bool,
    src: [u8; 6],
    frame: Vec<u8>,
    fcs: u32,
}

/// Counters of what the link did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    pub sent: u64,
    pub lost: u64,
    pub corrupted: u64,
    pub crc_dropped: u64,
    pub duplicated: u64,
    pub overflow: u64,
}

pub struct Sim {
    pub a: Endpoint,
    pub b: Endpoint,
    pub now: Instant,
    pub faults: Faults,
    rng: Rng,
    link: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    pub a_events: Vec<EndpointEvent>,
    pub b_events: Vec<EndpointEvent>,
    pub link_stats: LinkStats,
    buf: Vec<u8>,
}

pub fn endpoint_config(mac: [u8; 6], ip: Ipv4Addr, max_frame: usize) -> EndpointConfig {
    EndpointConfig::new(mac, vec![LocalAddr { ip, prefix: 24 }], max_frame)
}

impl Sim {
    pub fn new(seed: u64, faults: Faults, a: EndpointConfig, b: EndpointConfig) -> Self {
        Self {
            a: Endpoint::new(a, seed ^ 0xa),
            b: Endpoint::new(b, seed ^ 0xb),
            now: Instant::now(),
            faults,
            rng: Rng(seed),
            link: BinaryHeap::new(),
            seq: 0,
            a_events: Vec::new(),
            b_events: Vec::new(),
            link_stats: LinkStats::default(),
            buf: vec![0; 65536],
        }
    }

    pub fn pair(seed: u64, faults: Faults) -> Self {
        Self::new(seed, faults, endpoint_config(A_MAC, A_IP, 1514), endpoint_config(B_MAC, B_IP, 1514))
    }

    fn put_on_link(&mut self, to_b: bool, src: [u8; 6], frame: Vec<u8>) {
        self.link_stats.sent += 1;
        let f = self.faults;
        let in_flight = self.link.iter().filter(|Reverse(x)| x.to_b == to_b).count();
        if in_flight >= f.capacity {
            self.link_stats.overflow += 1;
            return;
        }
        if self.rng.chance(f.loss) {
            self.link_stats.lost += 1;
            return;
        }
        let fcs = crc32(&frame);
        let copies = if self.rng.chance(f.duplicate) {
            self.link_stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut frame = frame.clone();
            if self.rng.chance(f.corrupt) && !frame.is_empty() {
                let bit = self.rng.below(frame.len() as u64 * 8);
                frame[(bit / 8) as usize] ^= 1 << (bit % 8);
                self.link_stats.corrupted += 1;
            }
            let mut at = self.now + f.latency;
            if self.rng.chance(f.reorder) {
                at += Duration::from_nanos(1 + self.rng.below(f.latency.as_nanos() as u64 * 4 + 1000));
            }
            self.seq += 1;
            self.link.push(Reverse(InFlight { at, seq: self.seq, to_b, src, frame, fcs }));
        }
    }

    /// Moves every frame each endpoint wants to send onto the link.
    pub fn flush(&mut self) {
        let now = self.now;
        loop {
            let mut moved = false;
            if let Some(t) = self.a.poll_transmit(now, &mut self.buf) {
                let f = self.buf[..t.len].to_vec();
                self.put_on_link(true, A_MAC, f);
                moved = true;
            }
            if let Some(t) = self.b.poll_transmit(now, &mut self.buf) {
                let f = self.buf[..t.len].to_vec();
                self.put_on_link(false, B_MAC, f);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    /// Advances to the next thing that happens (a delivery or a timer) and
    /// does it. Returns false if nothing will ever happen again.
    pub fn step(&mut self) -> bool {
        self.flush();
        let next_frame = self.link.peek().map(|Reverse(f)| f.at);
        let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min();
        let Some(next) = [next_frame, next_timer].into_iter().flatten().min() else {
            return false;
        };
        if next > self.now {
            self.now = next;
        }
        while self.link.peek().is_some_and(|Reverse(f)| f.at <= self.now) {
            let Reverse(f) = self.link.pop().expect("peeked");
            if crc32(&f.frame) != f.fcs && !self.rng.chance(self.faults.crc_miss) {
                self.link_stats.crc_dropped += 1;
                continue;
            }
            let dst = if f.to_b { &mut self.b } else { &mut self.a };
            dst.handle_input(self.now, f.src, &f.frame);
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.flush();
        true
    }

    /// Steps until `done(self)` or `max_steps`; returns whether done.
    pub fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
        done(self)
    }

    pub fn elapsed_since(&self, t0: Instant) -> Duration {
        self.now - t0
    }
}

/// The deterministic content of message `i` of length `len`.
pub fn message(i: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ len as u64);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}
