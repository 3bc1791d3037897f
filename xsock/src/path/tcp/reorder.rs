//! Out-of-order data held beside smoltcp's receivers, answered with SACK.
//!
//! smoltcp's receive side keeps out-of-order data in an assembler of at
//! most 32 ranges (the largest its features allow); a segment that would
//! open a 33rd hole is dropped. A burst of drop-tail losses on a long path
//! opens hundreds: measured on a 500 Mbit/s, 100 ms path with a 10 %-BDP
//! buffer, the receiving TCP mode dropped 18,133 segments that had arrived
//! in 10 s while the emulator had dropped 1,644, and every one of them was
//! sent again. So the device keeps out-of-order segments itself: smoltcp is
//! given data only in order, and each segment held is answered at once with
//! an ACK of our own carrying SACK blocks (RFC 2018: the block holding the
//! segment first), as a kernel receiver would send. When the hole fills,
//! the held segments go to smoltcp in order and its cumulative ACK jumps.
//!
//! Our ACKs never acknowledge beyond what smoltcp itself acknowledged last:
//! the cumulative ACK is smoltcp's promise, SACK is advice (RFC 2018: the
//! sender keeps SACKed data until it is cumulatively acknowledged), so data
//! handed to smoltcp but not yet acknowledged by it is only SACKed.
//!
//! What a peer can make us hold is bounded (segments within 1 GiB ahead of
//! the cumulative ACK, [`MAX_HELD_BYTES`] a flow); beyond that, segments go
//! to smoltcp as before, which drops what it cannot place.

use std::collections::{HashMap, VecDeque};

use smoltcp::{
    phy::ChecksumCapabilities,
    wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet,
        Ipv4Repr, TcpControl, TcpOption, TcpPacket, TcpRepr, TcpSeqNumber, TcpTimestampRepr,
    },
};

use super::segment::{Segment, after};

/// Most payload bytes held for one connection.
pub const MAX_HELD_BYTES: usize = 64 << 20;
/// Held data lies at most this far ahead of the cumulative ACK.
const MAX_AHEAD: u32 = 1 << 30;

/// A connection as its frames name it: (local port, remote address, remote port).
type Key = (u16, [u8; 4], u16);

/// What an ACK of ours copies from smoltcp's last segment to the peer.
#[derive(Debug, Clone, Copy)]
struct Template {
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    ip_src: Ipv4Address,
    ip_dst: Ipv4Address,
    ttl: u8,
    sport: u16,
    dport: u16,
    /// Next sequence number of ours (smoltcp's SND.NXT as its frames show it).
    seq: u32,
    /// The window field as smoltcp last sent it (already scaled down).
    window: u16,
    timestamp: Option<TcpTimestampRepr>,
}

#[derive(Debug, Clone)]
struct Held {
    seq: u32,
    end: u32,
    frame: Vec<u8>,
}

#[derive(Debug, Default)]
struct Flow {
    /// smoltcp's last cumulative ACK to the peer.
    acked: Option<u32>,
    /// The end of what has been handed to smoltcp in order.
    given: Option<u32>,
    /// Out-of-order segments, in sequence order, none overlapping `given`.
    held: VecDeque<Held>,
    /// The held data as merged ranges, in sequence order.
    ranges: VecDeque<(u32, u32)>,
    held_bytes: usize,
    template: Option<Template>,
    /// The window scale smoltcp announced in its SYN, and whether the
    /// peer's SYN had the option too (else neither side scales).
    our_shift: Option<u8>,
    peer_scales: bool,
}

/// The fields of a received segment the decision needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    key: Key,
    seq: u32,
    len: u32,
    syn: bool,
    fin: bool,
    rst: bool,
    /// A SYN with the window scale option.
    scales: bool,
}

impl Arrival {
    pub fn of(s: &Segment<'_>) -> Arrival {
        let scales = s.syn && s.window_scale().is_some();
        Arrival { key: (s.dport, s.src, s.sport), seq: s.seq, len: s.len, syn: s.syn, fin: s.fin, rst: s.rst, scales }
    }
}

/// What to do with a received frame.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Give it to smoltcp.
    Pass(Vec<u8>),
    /// Held out of order: send this ACK (SACK blocks) to the peer.
    Held(Option<Vec<u8>>),
}

/// The held segments of every TCP-mode connection.
#[derive(Debug, Default)]
pub(crate) struct Reorder {
    flows: HashMap<Key, Flow>,
    /// Segments held out of order, over the process's life.
    pub held_total: u64,
    /// smoltcp acknowledged or opened its window on a flow that holds
    /// segments: [`Reorder::release_open`] may have some to give.
    due: bool,
}

impl Reorder {
    /// Looks at a segment smoltcp sends: its ACK, window and addresses.
    pub fn on_sent(&mut self, s: &Segment<'_>) {
        let key = (s.sport, s.dst, s.dport);
        if s.syn {
            self.flows.entry(key).or_default().our_shift = Some(s.window_scale().unwrap_or(0));
        }
        if !s.ack_flag || s.syn || s.rst {
            return;
        }
        let Some((eth, ip, tcp)) = views(s.frame) else { return };
        let flow = self.flows.entry(key).or_default();
        self.due |= !flow.held.is_empty();
        if flow.acked.is_none_or(|a| after(s.ack, a)) {
            flow.acked = Some(s.ack);
        }
        if flow.given.is_none_or(|g| after(s.ack, g)) {
            flow.given = Some(s.ack);
        }
        let end = s.seq.wrapping_add(s.len).wrapping_add(u32::from(s.fin));
        let seq = match flow.template {
            Some(t) if !after(end, t.seq) => t.seq,
            _ => end,
        };
        flow.template = Some(Template {
            eth_src: eth.0,
            eth_dst: eth.1,
            ip_src: ip.0,
            ip_dst: ip.1,
            ttl: ip.2,
            sport: s.sport,
            dport: s.dport,
            seq,
            window: tcp.0,
            timestamp: tcp.1,
        });
    }

    /// Decides about a received frame (already parsed as `s`, checksums
    /// finished). `ready` gets held frames that this one put in order, to
    /// be given to smoltcp right after it, in order.
    pub fn on_received(&mut self, s: Arrival, frame: Vec<u8>, ready: &mut Vec<Vec<u8>>) -> Verdict {
        let key = s.key;
        if s.syn || s.rst {
            // A new connection on the same ports, or the end of this one
            // (what smoltcp's own SYN said is kept for its SYN-ACK).
            let our_shift = self.flows.remove(&key).and_then(|f| f.our_shift);
            if s.syn {
                self.flows.insert(key, Flow { our_shift, peer_scales: s.scales, ..Flow::default() });
            }
            return Verdict::Pass(frame);
        }
        let Some(flow) = self.flows.get_mut(&key) else { return Verdict::Pass(frame) };
        let (Some(given), Some(acked), Some(window_end)) = (flow.given, flow.acked, flow.window_end()) else {
            return Verdict::Pass(frame);
        };
        let end = s.seq.wrapping_add(s.len);
        if s.len == 0 || !after(s.seq, given) {
            // In order (or old): smoltcp takes it if its window has room,
            // then what it unblocks. Data beyond the window smoltcp drops,
            // so it is not counted as given (nor SACKed by our ACKs).
            if after(end, given) && !after(end, window_end) {
                flow.given = Some(end);
                flow.release(ready);
            }
            return Verdict::Pass(frame);
        }
        if s.fin
            || after(end, window_end)
            || end.wrapping_sub(acked) > MAX_AHEAD
            || flow.held_bytes + frame.len() > MAX_HELD_BYTES
        {
            // Data smoltcp's window has no room for is not ours to promise.
            return Verdict::Pass(frame);
        }
        // Out of order: keep it (once), in sequence order.
        let rel = |x: u32| x.wrapping_sub(given);
        let at = flow.held.partition_point(|h| rel(h.seq) < rel(s.seq));
        let duplicate = flow.held.get(at).is_some_and(|h| h.seq == s.seq && !after(end, h.end))
            || at > 0 && !after(end, flow.held[at - 1].end);
        if !duplicate {
            flow.held_bytes += frame.len();
            flow.held.insert(at, Held { seq: s.seq, end, frame });
            flow.add_range(s.seq, end, given);
            self.held_total += 1;
        }
        Verdict::Held(flow.sack_ack(s.seq))
    }

    /// Moves to `ready` the held segments that smoltcp can now take, in
    /// order (after its window opened: the application read).
    pub fn release_open(&mut self, ready: &mut Vec<Vec<u8>>) {
        if !std::mem::take(&mut self.due) {
            return;
        }
        for flow in self.flows.values_mut() {
            if !flow.held.is_empty() {
                flow.release(ready);
            }
        }
    }

    /// Whether [`Reorder::release_open`] may have segments to give.
    pub fn is_due(&self) -> bool {
        self.due
    }

    /// Drops what is held for the connections of local `port` (gone).
    pub fn forget(&mut self, port: u16) {
        self.flows.retain(|k, _| k.0 != port);
    }

    /// The flow's state, for the report of a connection that stalled.
    pub fn describe(&self, key: Key) -> String {
        let Some(f) = self.flows.get(&key) else { return "no flow".into() };
        format!(
            "smoltcp acknowledged {:?}, given {:?}, window end {:?}, {} held ({} B) in {:?}",
            f.acked,
            f.given,
            f.window_end(),
            f.held.len(),
            f.held_bytes,
            f.ranges.iter().take(4).collect::<Vec<_>>()
        )
    }

    /// Segments held now, over all flows.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.flows.values().map(|f| f.held.len()).sum()
    }
}

impl Flow {
    /// Moves the held segments that are now in order to `ready`.
    fn release(&mut self, ready: &mut Vec<Vec<u8>>) {
        let (Some(mut given), Some(window_end)) = (self.given, self.window_end()) else { return };
        while let Some(h) = self.held.front() {
            if after(h.seq, given) || after(h.end, window_end) {
                break;
            }
            let h = self.held.pop_front().expect("checked");
            self.held_bytes -= h.frame.len();
            if after(h.end, given) {
                given = h.end;
                ready.push(h.frame);
            }
        }
        self.given = Some(given);
        while self.ranges.front().is_some_and(|r| !after(r.1, given)) {
            self.ranges.pop_front();
        }
        if let Some(r) = self.ranges.front_mut()
            && after(given, r.0)
        {
            r.0 = given;
        }
    }

    /// The right edge of smoltcp's receive window, as it last announced
    /// it: it drops data beyond (RFC 9293's acceptability test).
    fn window_end(&self) -> Option<u32> {
        let (acked, t) = (self.acked?, self.template?);
        let shift = if self.peer_scales { self.our_shift.unwrap_or(0) } else { 0 };
        Some(acked.wrapping_add(u32::from(t.window) << shift))
    }

    /// Records held data `[seq, end)` in the merged ranges (sequence
    /// numbers compared relative to `base`, below all of them).
    fn add_range(&mut self, seq: u32, end: u32, base: u32) {
        let rel = |x: u32| x.wrapping_sub(base);
        // The first range that ends at or after `seq`: it or the next may merge.
        let i = self.ranges.partition_point(|r| rel(r.1) < rel(seq));
        if i == self.ranges.len() || rel(self.ranges[i].0) > rel(end) {
            self.ranges.insert(i, (seq, end));
            return;
        }
        let r = &mut self.ranges[i];
        if rel(seq) < rel(r.0) {
            r.0 = seq;
        }
        if rel(end) > rel(r.1) {
            r.1 = end;
        }
        while i + 1 < self.ranges.len() && rel(self.ranges[i + 1].0) <= rel(self.ranges[i].1) {
            let next = self.ranges.remove(i + 1).expect("checked");
            if rel(next.1) > rel(self.ranges[i].1) {
                self.ranges[i].1 = next.1;
            }
        }
    }

    /// Our ACK for a segment held at `seq`: smoltcp's cumulative ACK, SACK
    /// blocks for the held range around `seq` first, then for what smoltcp
    /// was given beyond its ACK, then the lowest other held ranges.
    fn sack_ack(&self, seq: u32) -> Option<Vec<u8>> {
        let t = self.template?;
        let (acked, given) = (self.acked?, self.given?);
        let ranges = &self.ranges;
        let mut blocks = [None; 3];
        let mut n = 0;
        let rel = |x: u32| x.wrapping_sub(acked);
        let first = Some(ranges.partition_point(|r| rel(r.1) <= rel(seq))).filter(|&i| i < ranges.len());
        if let Some(i) = first {
            blocks[n] = Some(ranges[i]);
            n += 1;
        }
        if after(given, acked) {
            blocks[n] = Some((acked, given));
            n += 1;
        }
        for (i, r) in ranges.iter().enumerate() {
            if n == blocks.len() {
                break;
            }
            if Some(i) != first {
                blocks[n] = Some(*r);
                n += 1;
            }
        }
        Some(ack_frame(&t, acked, blocks))
    }
}

/// The Ethernet addresses, IPv4 addresses and TTL, and TCP window and
/// timestamp of a frame smoltcp emitted.
type Views = ((EthernetAddress, EthernetAddress), (Ipv4Address, Ipv4Address, u8), (u16, Option<TcpTimestampRepr>));

fn views(f: &[u8]) -> Option<Views> {
    let eth = EthernetFrame::new_checked(f).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    // Only the timestamp option: this runs on every segment smoltcp sends.
    let (mut options, mut ts) = (tcp.options(), None);
    while let Ok((rest, option)) = TcpOption::parse(options) {
        match option {
            TcpOption::EndOfList => break,
            TcpOption::TimeStamp { tsval, tsecr } => ts = Some(TcpTimestampRepr::new(tsval, tsecr)),
            _ => {}
        }
        options = rest;
    }
    Some(((eth.src_addr(), eth.dst_addr()), (ip.src_addr(), ip.dst_addr(), ip.hop_limit()), (tcp.window_len(), ts)))
}

/// A pure ACK from our side of `t`'s connection, emitted by smoltcp's wire
/// code with complete checksums.
fn ack_frame(t: &Template, ack: u32, sack_ranges: [Option<(u32, u32)>; 3]) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: t.sport,
        dst_port: t.dport,
        control: TcpControl::None,
        seq_number: TcpSeqNumber(t.seq as i32),
        ack_number: Some(TcpSeqNumber(ack as i32)),
        window_len: t.window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges,
        timestamp: t.timestamp,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: t.ip_src,
        dst_addr: t.ip_dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: t.ttl,
    };
    let eth = EthernetRepr { src_addr: t.eth_src, dst_addr: t.eth_dst, ethertype: EthernetProtocol::Ipv4 };
    let mut f = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut e = EthernetFrame::new_unchecked(&mut f[..]);
    eth.emit(&mut e);
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
    ip.emit(&mut p, &caps);
    let mut s = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(&mut s, &IpAddress::Ipv4(t.ip_src), &IpAddress::Ipv4(t.ip_dst), &caps);
    f
}

#[cfg(test)]
mod tests {
    use super::{
        super::segment::{Spec, build, build_with},
        *,
    };

    const MSS: u32 = 1000;

    /// The handshake: the peer's SYN (scaling, if `peer_scales`), then
    /// smoltcp's SYN-ACK announcing window scale `shift`.
    fn handshake(r: &mut Reorder, peer_scales: bool, shift: u8) {
        let syn = Spec { from_b: false, sport: 5000, dport: 80, seq: u32::MAX, ack: None, payload: &[], sack: &[] };
        let f = build_with(syn, peer_scales.then_some(7), 512);
        assert_eq!(Segment::parse(&f).unwrap().window_scale(), peer_scales.then_some(7));
        assert!(matches!(
            r.on_received(Arrival::of(&Segment::parse(&f).unwrap()), f, &mut Vec::new()),
            Verdict::Pass(_)
        ));
        let syn_ack = Spec { from_b: true, sport: 80, dport: 5000, seq: 76, ack: Some(0), payload: &[], sack: &[] };
        r.on_sent(&Segment::parse(&build_with(syn_ack, Some(shift), 512)).unwrap());
    }

    /// A connection whose window (64 MiB) holds all the tests send.
    fn opened() -> Reorder {
        let mut r = Reorder::default();
        handshake(&mut r, true, 10);
        r
    }

    /// Our side (HOST_B:80) acknowledges `ack` (smoltcp's ACK), with a
    /// window of 65535 << 10 bytes.
    fn smoltcp_acks(r: &mut Reorder, ack: u32) {
        smoltcp_acks_window(r, ack, u16::MAX);
    }

    fn smoltcp_acks_window(r: &mut Reorder, ack: u32, window: u16) {
        let f = build_with(
            Spec { from_b: true, sport: 80, dport: 5000, seq: 77, ack: Some(ack), payload: &[], sack: &[] },
            None,
            window,
        );
        r.on_sent(&Segment::parse(&f).unwrap());
    }

    /// The peer's segment `i` (MSS bytes from `i * MSS`) arrives.
    fn arrives(r: &mut Reorder, i: u32) -> (Verdict, Vec<u32>) {
        let payload = vec![i as u8; MSS as usize];
        let f = build(Spec {
            from_b: false,
            sport: 5000,
            dport: 80,
            seq: i * MSS,
            ack: Some(77),
            payload: &payload,
            sack: &[],
        });
        let a = Arrival::of(&Segment::parse(&f).unwrap());
        let mut ready = Vec::new();
        let v = r.on_received(a, f, &mut ready);
        (v, ready.iter().map(|f| Segment::parse(f).unwrap().seq / MSS).collect())
    }

    fn ack_of(v: &Verdict) -> (u32, Vec<(u32, u32)>) {
        let Verdict::Held(Some(f)) = v else { panic!("not held with an ACK: {v:?}") };
        let s = Segment::parse(f).unwrap();
        assert_eq!((s.sport, s.dport, s.seq, s.len), (80, 5000, 77, 0));
        assert!(s.ack_flag);
        (s.ack, s.sack_ranges().collect())
    }

    #[test]
    fn out_of_order_data_is_held_and_sacked_then_given_in_order_when_the_hole_fills() {
        let mut r = opened();
        smoltcp_acks(&mut r, 0);
        assert!(matches!(arrives(&mut r, 0), (Verdict::Pass(_), ref ready) if ready.is_empty()));
        // Segment 1 is lost; 2, 3 and 5 arrive: held, each answered with
        // smoltcp's ACK (0: it has not acknowledged segment 0 yet) and SACK
        // blocks: the range holding the segment first, then what smoltcp
        // was given beyond its ACK (segment 0), then the others.
        assert_eq!(ack_of(&arrives(&mut r, 2).0), (0, vec![(2000, 3000), (0, 1000)]));
        assert_eq!(ack_of(&arrives(&mut r, 3).0), (0, vec![(2000, 4000), (0, 1000)]));
        smoltcp_acks(&mut r, 1000);
        assert_eq!(ack_of(&arrives(&mut r, 5).0), (1000, vec![(5000, 6000), (2000, 4000)]));
        // A duplicate is not held twice.
        assert_eq!(ack_of(&arrives(&mut r, 3).0).1, vec![(2000, 4000), (5000, 6000)]);
        assert_eq!(r.held(), 3);
        // The repair: passed, and 2 and 3 after it, in order; 5 still waits.
        let (v, ready) = arrives(&mut r, 1);
        assert!(matches!(v, Verdict::Pass(_)));
        assert_eq!(ready, vec![2, 3]);
        assert_eq!(r.held(), 1);
        // 4 fills the last hole.
        assert_eq!(arrives(&mut r, 4).1, vec![5]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn the_ack_never_goes_beyond_smoltcps_and_unknown_or_closing_flows_pass() {
        let mut r = Reorder::default();
        // Nothing known of the flow yet (smoltcp has not spoken): pass.
        assert!(matches!(arrives(&mut r, 3).0, Verdict::Pass(_)));
        handshake(&mut r, true, 10);
        smoltcp_acks(&mut r, 0);
        for i in 0..4 {
            assert!(matches!(arrives(&mut r, i).0, Verdict::Pass(_)));
        }
        // smoltcp acknowledged nothing of 0-3 yet: our ACK says 0, SACKs 0-3.
        assert_eq!(ack_of(&arrives(&mut r, 6).0), (0, vec![(6000, 7000), (0, 4000)]));
        // A reset ends the flow: everything passes again.
        let f = build(Spec { from_b: false, sport: 5000, dport: 80, seq: 0, ack: Some(77), payload: &[], sack: &[] });
        let mut rst = f.clone();
        rst[14 + 20 + 13] |= 0x04;
        let a = Arrival::of(&Segment::parse(&rst).unwrap());
        assert!(matches!(r.on_received(a, rst, &mut Vec::new()), Verdict::Pass(_)));
        assert!(matches!(arrives(&mut r, 9).0, Verdict::Pass(_)));
    }

    #[test]
    fn what_a_peer_can_make_us_hold_is_bounded() {
        let mut r = opened();
        smoltcp_acks(&mut r, 0);
        // Far ahead of the ACK: not ours to keep.
        let (v, _) = arrives(&mut r, (MAX_AHEAD / MSS) + 2);
        assert!(matches!(v, Verdict::Pass(_)));
        let mut held = 0usize;
        for i in 2..100_000 {
            match arrives(&mut r, i).0 {
                Verdict::Held(_) => held += 1,
                Verdict::Pass(_) => break,
            }
        }
        let frame = 14 + 20 + 20 + MSS as usize;
        assert_eq!(held, MAX_HELD_BYTES / frame);
    }

    /// smoltcp drops data beyond the right edge of the window it last
    /// announced; what it dropped must not be SACKed (the sender would
    /// never send it again) nor held for a window it has not offered.
    #[test]
    fn data_beyond_smoltcps_window_is_neither_sacked_nor_held_and_waits_for_the_window_to_open() {
        let mut r = Reorder::default();
        handshake(&mut r, true, 0);
        smoltcp_acks_window(&mut r, 0, 4000); // room for segments 0-3
        for i in 0..4 {
            assert!(matches!(arrives(&mut r, i).0, Verdict::Pass(_)));
        }
        // In order but beyond the edge: smoltcp drops it, so it is not
        // counted as given; out of order beyond the edge: not held.
        assert!(matches!(arrives(&mut r, 4).0, Verdict::Pass(_)));
        assert!(matches!(arrives(&mut r, 6).0, Verdict::Pass(_)));
        assert_eq!(r.held(), 0);
        // smoltcp took 0-3 and offers 4000 more: 6 is held, and SACKed
        // alone (smoltcp has nothing beyond its ACK).
        smoltcp_acks_window(&mut r, 4000, 4000);
        assert_eq!(ack_of(&arrives(&mut r, 6).0), (4000, vec![(6000, 7000)]));
        assert_eq!(ack_of(&arrives(&mut r, 5).0), (4000, vec![(5000, 7000)]));
        // The edge moves back (a scaled window rounds down): 4 goes to
        // smoltcp, 5 fits after it, 6 no longer does and waits.
        smoltcp_acks_window(&mut r, 4000, 2500);
        assert_eq!(arrives(&mut r, 4).1, vec![5]);
        assert_eq!(r.held(), 1);
        let mut ready = Vec::new();
        r.release_open(&mut ready);
        assert!(ready.is_empty() && !r.is_due());
        // The application read: smoltcp's window opens, 6 is given.
        smoltcp_acks_window(&mut r, 6000, 2000);
        assert!(r.is_due());
        r.release_open(&mut ready);
        assert_eq!(ready.iter().map(|f| Segment::parse(f).unwrap().seq / MSS).collect::<Vec<_>>(), vec![6]);
        assert_eq!(r.held(), 0);
    }

    /// Window scaling counts only when both SYNs carried the option.
    #[test]
    fn the_window_is_scaled_only_if_both_ends_said_so() {
        for (peer_scales, holds) in [(true, true), (false, false)] {
            let mut r = Reorder::default();
            handshake(&mut r, peer_scales, 4);
            smoltcp_acks_window(&mut r, 0, 1000); // 16,000 bytes if scaled
            assert!(matches!(arrives(&mut r, 0).0, Verdict::Pass(_)));
            assert_eq!(matches!(arrives(&mut r, 5).0, Verdict::Held(_)), holds, "peer scales: {peer_scales}");
        }
    }
}
