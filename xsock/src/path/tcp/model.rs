//! The TCP mode's own congestion control (`Congestion::Model`): one
//! [`ModelCc`] per destination host, fed from the device layer, where every
//! segment the mode sends and every ACK it receives passes (smoltcp runs
//! with its window open, `CongestionControl::None`, and is steered from
//! outside: the aggregate pacer runs at the sum of the models' rates, and
//! each connection may hold no more unacknowledged data than its share of
//! its path's in-flight cap).
//!
//! Connections to one host share its model, as RFC 3124's congestion
//! manager has it: parallel streams to one peer cross the same bottleneck,
//! so they split one model's cap evenly instead of competing for it (and a
//! new connection to a host starts from what the last one learned).
//!
//! The per-segment part (send stamps, delivery by cumulative ACK or SACK,
//! loss when the SACK scoreboard sends a segment again) lives in
//! [`super::sack`], which holds every unacknowledged segment anyway.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use xsock_pacer::{ModelCc, Rate, SendStamp};

/// A path counts toward the aggregate pacing rate this long after it last sent.
const ACTIVE_FOR: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct PathModel {
    cc: ModelCc,
    /// Payload bytes sent to the host and neither delivered nor gone.
    pipe: u64,
    last_sent: Instant,
    /// When the model's state was last logged (at debug level, once a second).
    logged: Instant,
}

/// The models, by destination IPv4 address.
#[derive(Debug)]
pub(crate) struct PathModels {
    paths: HashMap<[u8; 4], PathModel>,
    mss: u32,
}

impl PathModels {
    /// Models for segments of up to `mss` payload bytes.
    pub fn new(mss: u32) -> PathModels {
        PathModels { paths: HashMap::new(), mss }
    }

    fn path(&mut self, host: [u8; 4], now: Instant) -> &mut PathModel {
        let mss = self.mss;
        self.paths.entry(host).or_insert_with(|| PathModel {
            cc: ModelCc::new(mss, now, None),
            pipe: 0,
            last_sent: now,
            logged: now,
        })
    }

    /// A new data segment of `len` bytes leaves for `host`.
    pub fn on_sent(&mut self, host: [u8; 4], now: Instant, len: u64) -> SendStamp {
        let p = self.path(host, now);
        let stamp = p.cc.on_sent(now, p.pipe, len);
        p.pipe += len;
        p.last_sent = now;
        stamp
    }

    /// A segment reached `host` (cumulatively acknowledged or SACKed for the
    /// first time); `first_transmission` if it was sent only once.
    pub fn on_delivered(&mut self, host: [u8; 4], now: Instant, stamp: &SendStamp, len: u64, first_transmission: bool) {
        let p = self.path(host, now);
        p.pipe = p.pipe.saturating_sub(len);
        p.cc.on_delivered(now, stamp, len, first_transmission);
    }

    /// The SACK scoreboard sends a segment again: it was lost (the copy
    /// sent again stays in the pipe).
    pub fn on_lost(&mut self, host: [u8; 4], now: Instant, stamp: &SendStamp, len: u64) {
        self.path(host, now).cc.on_lost(now, stamp, len);
    }

    /// The end of one ACK from `host`, which moved the cumulative ACK by `acked`.
    pub fn on_ack(&mut self, host: [u8; 4], now: Instant, acked: u64) {
        let p = self.path(host, now);
        p.cc.on_ack(now, p.pipe, acked);
        if now.saturating_duration_since(p.logged) >= Duration::from_secs(1) && log::log_enabled!(log::Level::Debug) {
            p.logged = now;
            let s = p.cc.state();
            log::debug!(
                "TCP mode model for {}: {:?}, bottleneck {}, min RTT {:?}, pacing {}, cap {} B (loss cap {:?}), {} B in flight, round {}, cuts: {} for loss, {} at a queue; {} segments lost",
                std::net::Ipv4Addr::from(host),
                s.phase,
                s.bottleneck.map_or("-".into(), |r| r.to_string()),
                s.min_rtt,
                s.pacing,
                s.cwnd,
                s.inflight_hi,
                p.pipe,
                s.round,
                s.loss_cuts,
                s.queue_cuts,
                s.lost
            );
        }
    }

    /// Segments no longer tracked (their connection is gone).
    pub fn gone(&mut self, host: [u8; 4], len: u64) {
        if let Some(p) = self.paths.get_mut(&host) {
            p.pipe = p.pipe.saturating_sub(len);
        }
    }

    /// A connection to `host` has sent all it was given.
    pub fn on_app_limited(&mut self, host: [u8; 4]) {
        if let Some(p) = self.paths.get_mut(&host) {
            p.cc.on_app_limited(p.pipe);
        }
    }

    /// The model's BDP of the path to `host`, with the bottleneck rate and
    /// the propagation RTT it comes from (once start-up has filled the pipe).
    pub fn path_of(&self, host: [u8; 4]) -> Option<(u64, Rate, Duration)> {
        let s = self.paths.get(&host)?.cc.state();
        if s.phase == xsock_pacer::Phase::Startup {
            return None;
        }
        let (rate, rtt) = (s.bottleneck?, s.min_rtt?);
        Some((rate.bytes_in(rtt), rate, rtt))
    }

    /// The in-flight cap of the path to `host`.
    pub fn cwnd(&self, host: [u8; 4]) -> u64 {
        self.paths.get(&host).map_or(10 * u64::from(self.mss), |p| p.cc.cwnd())
    }

    /// The sum of the pacing rates of the paths in use (`None` if none is).
    pub fn rate(&self, now: Instant) -> Option<Rate> {
        let bps: u64 = self
            .paths
            .values()
            .filter(|p| p.pipe > 0 || now.saturating_duration_since(p.last_sent) < ACTIVE_FOR)
            .map(|p| p.cc.pacing_rate().bits_per_sec())
            .sum();
        Rate::from_bits_per_sec(bps)
    }
}
