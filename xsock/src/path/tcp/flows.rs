//! What the TCP mode's connections do on the wire, read off the frames:
//! data segments sent and sent again, bytes in flight, and the round-trip
//! time. smoltcp keeps its congestion state private, so the retransmission
//! counts in `bw`'s report and the window behind `--pace auto` come from
//! here: our own segments on the way out, the peer's ACKs on the way in.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use xsock_pacer::{Rate, WindowRate};

use super::segment::{Segment, after};

/// Lowest automatic pacing rate of a flow (before it has a window to go by).
pub const AUTO_PACE_FLOOR: Rate = Rate::mbit(10);

/// Per local port.
#[derive(Debug)]
struct Flow {
    /// End of the highest sequence number sent.
    highest_end: u32,
    /// The first data byte's sequence number.
    first: u32,
    /// Highest cumulative acknowledgement from the peer.
    una: Option<u32>,
    /// Bytes acknowledged so far.
    acked: u64,
    segments: u64,
    retransmits: u64,
    /// The segment whose acknowledgement will give the next RTT sample.
    probe: Option<(u32, Instant)>,
    srtt: Option<Duration>,
    rate: WindowRate,
    /// The last segment each way, for the report of a stalled connection.
    last_out: Option<Glimpse>,
    last_in: Option<Glimpse>,
}

/// One segment's header fields, as a stalled connection's report shows them.
#[derive(Debug, Clone, Copy)]
struct Glimpse {
    seq: u32,
    ack: u32,
    len: u32,
    flags: [bool; 4],
    at: Instant,
}

impl Glimpse {
    fn of(s: &Segment<'_>, at: Instant) -> Glimpse {
        Glimpse { seq: s.seq, ack: s.ack, len: s.len, flags: [s.syn, s.ack_flag, s.fin, s.rst], at }
    }

    fn show(g: Option<Glimpse>, now: Instant) -> String {
        let Some(g) = g else { return "none".into() };
        let flags: String = g.flags.iter().zip("SAFR".chars()).filter(|(on, _)| **on).map(|(_, c)| c).collect();
        format!("seq {} ack {} len {} [{flags}] {:?} ago", g.seq, g.ack, g.len, now.saturating_duration_since(g.at))
    }
}

/// The flows of the TCP mode, by local port.
#[derive(Debug, Default)]
pub(crate) struct FlowTracker {
    ports: HashMap<u16, Flow>,
}

impl FlowTracker {
    /// Looks at an outgoing segment.
    pub fn on_sent(&mut self, s: &Segment<'_>, now: Instant) {
        if s.len == 0 {
            if let Some(flow) = self.ports.get_mut(&s.sport) {
                flow.last_out = Some(Glimpse::of(s, now));
            }
            return;
        }
        let (port, seq) = (s.sport, s.seq);
        let end = seq.wrapping_add(s.len);
        let flow = self.ports.entry(port).or_insert_with(|| Flow {
            highest_end: seq,
            first: seq,
            una: None,
            acked: 0,
            segments: 0,
            retransmits: 0,
            probe: None,
            srtt: None,
            rate: WindowRate::new(AUTO_PACE_FLOOR),
            last_out: None,
            last_in: None,
        });
        flow.last_out = Some(Glimpse::of(s, now));
        flow.segments += 1;
        if after(end, flow.highest_end) {
            flow.highest_end = end;
            flow.probe.get_or_insert((end, now));
        } else if flow.segments > 1 {
            flow.retransmits += 1;
            flow.rate.on_loss();
            // Karn: an ACK after a retransmission says nothing about the RTT.
            flow.probe = None;
        }
        flow.observe(now);
    }

    /// Looks at an incoming segment (an ACK for one of our flows).
    pub fn on_received(&mut self, s: &Segment<'_>, now: Instant) {
        if !s.ack_flag {
            return;
        }
        let Some(flow) = self.ports.get_mut(&s.dport) else { return };
        flow.last_in = Some(Glimpse::of(s, now));
        let ack = s.ack;
        if after(ack, flow.highest_end) || flow.una.is_some_and(|u| !after(ack, u)) {
            return;
        }
        let base = flow.una.unwrap_or(flow.first);
        flow.acked += u64::from(ack.wrapping_sub(base));
        flow.una = Some(ack);
        if let Some((end, sent)) = flow.probe
            && !after(end, ack)
        {
            let sample = now.saturating_duration_since(sent);
            flow.srtt = Some(match flow.srtt {
                None => sample,
                Some(s) => (s * 7 + sample) / 8,
            });
            flow.probe = None;
        }
        flow.observe(now);
    }

    /// (data segments sent, of which retransmissions) from local `port`.
    pub fn counts(&self, port: u16) -> (u64, u64) {
        self.ports.get(&port).map_or((0, 0), |f| (f.segments, f.retransmits))
    }

    /// Bytes sent from `port` and not yet acknowledged.
    pub fn in_flight(&self, port: u16) -> u64 {
        self.ports.get(&port).map_or(0, Flow::in_flight)
    }

    /// The smoothed RTT of `port`'s flow, once sampled.
    pub fn srtt(&self, port: u16) -> Option<Duration> {
        self.ports.get(&port)?.srtt
    }

    /// The sum of every open flow's window-derived pacing rate (a flow
    /// that paused keeps its rate, so it does not restart from the floor);
    /// `None` without flows.
    pub fn auto_rate(&self) -> Option<Rate> {
        let bps: u64 = self.ports.values().map(|f| f.rate.rate().bits_per_sec()).sum();
        Rate::from_bits_per_sec(bps)
    }

    pub fn forget(&mut self, port: u16) {
        self.ports.remove(&port);
    }

    /// What `port`'s flow last sent and received, and what it has in
    /// flight (for the report of a connection that stalled).
    pub fn describe(&self, port: u16, now: Instant) -> String {
        let Some(f) = self.ports.get(&port) else { return "no data sent".into() };
        format!(
            "highest sent {}, acknowledged to {:?}, {} B in flight; last out: {}; last in: {}",
            f.highest_end,
            f.una,
            f.in_flight(),
            Glimpse::show(f.last_out, now),
            Glimpse::show(f.last_in, now)
        )
    }
}

impl Flow {
    fn in_flight(&self) -> u64 {
        let base = self.una.unwrap_or(self.first);
        u64::from(self.highest_end.wrapping_sub(base))
    }

    fn observe(&mut self, now: Instant) {
        if let Some(srtt) = self.srtt {
            let inflight = self.in_flight();
            self.rate.observe(now, inflight, self.acked, srtt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::segment::{Spec, build},
        *,
    };

    fn segment(sport: u16, dport: u16, seq: u32, ack: u32, len: usize) -> Vec<u8> {
        build(Spec { from_b: sport < dport, sport, dport, seq, ack: Some(ack), payload: &vec![0; len], sack: &[] })
    }

    /// Feeds an outgoing / incoming frame, as the device does.
    fn sent(t: &mut FlowTracker, f: &[u8], now: Instant) {
        if let Some(s) = Segment::parse(f) {
            t.on_sent(&s, now);
        }
    }

    fn received(t: &mut FlowTracker, f: &[u8], now: Instant) {
        if let Some(s) = Segment::parse(f) {
            t.on_received(&s, now);
        }
    }

    #[test]
    fn counts_retransmissions_in_flight_and_rtt_across_sequence_wraparound() {
        let t0 = Instant::now();
        let mut t = FlowTracker::default();
        let start = u32::MAX - 2000;
        for i in 0..4u32 {
            sent(&mut t, &segment(5000, 80, start.wrapping_add(i * 1000), 0, 1000), t0);
        }
        assert_eq!(t.in_flight(5000), 4000);
        // The second segment again: a retransmission.
        sent(&mut t, &segment(5000, 80, start.wrapping_add(1000), 0, 1000), t0);
        assert_eq!(t.counts(5000), (5, 1));
        // Karn: the ACK covering the probe after a retransmission gives no sample.
        received(&mut t, &segment(80, 5000, 0, start.wrapping_add(2000), 0), t0 + Duration::from_millis(10));
        assert_eq!(t.srtt(5000), None);
        assert_eq!(t.in_flight(5000), 2000);
        // A fresh segment is probed; its ACK 30 ms later is the first sample.
        sent(&mut t, &segment(5000, 80, start.wrapping_add(4000), 0, 1000), t0 + Duration::from_millis(10));
        received(&mut t, &segment(80, 5000, 0, start.wrapping_add(5000), 0), t0 + Duration::from_millis(40));
        assert_eq!(t.srtt(5000), Some(Duration::from_millis(30)));
        assert_eq!(t.in_flight(5000), 0);
        // Old and impossible ACKs are ignored.
        received(&mut t, &segment(80, 5000, 0, start, 0), t0 + Duration::from_millis(41));
        received(&mut t, &segment(80, 5000, 0, start.wrapping_add(90_000), 0), t0 + Duration::from_millis(41));
        assert_eq!(t.in_flight(5000), 0);
    }

    #[test]
    fn short_and_foreign_frames_are_ignored() {
        let mut t = FlowTracker::default();
        let now = Instant::now();
        sent(&mut t, &[0u8; 20], now);
        let mut arp = segment(5000, 80, 1, 0, 100);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        sent(&mut t, &arp, now);
        received(&mut t, &segment(80, 4000, 0, 5, 0), now);
        assert_eq!(t.counts(5000), (0, 0));
        assert_eq!(t.auto_rate(), None);
    }
}
