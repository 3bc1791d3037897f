//! What the fuzz target `tcp_segment` runs, and the tests replay on its
//! committed corpus (`xsock/tests/fuzz_corpus.rs`): the TCP mode's frame
//! bookkeeping fed whatever a peer could send.
//!
//! Two uses of the same bytes:
//! - **as one frame**: [`Segment::parse`] never panics, and whenever
//!   smoltcp's own full parse ([`TcpRepr::parse`]) accepts the segment, the
//!   fields agree with it; the flow tracker and SACK scoreboard take it in
//!   both directions;
//! - **as a script of hostile acknowledgements** against a sender's SACK
//!   scoreboard (cumulative ACKs and SACK blocks anywhere in sequence space,
//!   time moving on): every frame it sends again is byte for byte a frame
//!   the sender sent, it never holds more than was sent, and an ACK of
//!   everything empties it;
//! - **as a script of data segments** arriving out of order, again and
//!   overlapping at a receiver's reorder buffer ([`Reorder`]): what it gives
//!   smoltcp is what arrived, in sequence order, its ACKs never
//!   acknowledge more than smoltcp did, and never SACK data smoltcp's
//!   window made it drop.

use std::time::{Duration, Instant};

use smoltcp::{
    phy::ChecksumCapabilities,
    wire::{IpAddress, Ipv4Packet, TcpPacket, TcpRepr},
};

use super::{
    flows::FlowTracker,
    reorder::{Arrival, Reorder, Verdict},
    sack::SackRecovery,
    segment::{HOST_B, Segment, Spec, build},
};

/// Runs one fuzz input; panics on a broken invariant.
pub fn tcp_segment(data: &[u8]) {
    as_one_frame(data);
    as_an_ack_script(data);
    as_a_data_script(data);
}

/// Data segments from HOST_A:5000 to our HOST_B:80, by 5-byte steps: an op
/// (smoltcp acknowledges all it has and announces a scripted window, or a
/// segment arrives at a scripted offset and length), then its argument.
/// smoltcp is modelled as RFC 9293 and smoltcp 0.14 take data: in order,
/// trimmed to the right edge of the window last announced.
fn as_a_data_script(data: &[u8]) {
    use super::segment::{after, build_with};
    const SHIFT: u8 = 6;
    let mut r = Reorder::default();
    let base = u32::from_le_bytes(data.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
    let syn =
        Spec { from_b: false, sport: 5000, dport: 80, seq: base.wrapping_sub(1), ack: None, payload: &[], sack: &[] };
    let f = build_with(syn, Some(7), 512);
    let _ = r.on_received(Arrival::of(&Segment::parse(&f).expect("built")), f, &mut Vec::new());
    let syn_ack = Spec { from_b: true, sport: 80, dport: 5000, seq: 0, ack: Some(base), payload: &[], sack: &[] };
    r.on_sent(&Segment::parse(&build_with(syn_ack, Some(SHIFT), 512)).expect("built"));
    let mut smoltcp_next = base; // what smoltcp has in order
    let (mut acked, mut window) = (base, u16::MAX);
    let mut furthest_edge = base.wrapping_add(u32::from(window) << SHIFT);
    let ours = |ack: u32, window: u16| {
        let spec = Spec { from_b: true, sport: 80, dport: 5000, seq: 1, ack: Some(ack), payload: &[], sack: &[] };
        build_with(spec, None, window)
    };
    r.on_sent(&Segment::parse(&ours(acked, window)).expect("built"));
    let mut ready = Vec::new();
    // smoltcp (modelled) takes what starts at or before its next byte, up
    // to the edge of its window.
    let take = |g: &[u8], next: &mut u32, edge: u32| {
        let s = Segment::parse(g).expect("a frame that arrived");
        let end = s.seq.wrapping_add(s.len);
        if !after(s.seq, *next) && after(end, *next) && after(edge, *next) {
            *next = if after(end, edge) { edge } else { end };
        }
    };
    for step in data.get(4..).unwrap_or_default().chunks_exact(5) {
        let arg = u32::from_le_bytes(step[1..].try_into().expect("four bytes"));
        let edge = acked.wrapping_add(u32::from(window) << SHIFT);
        if step[0] % 4 == 0 {
            (acked, window) = (smoltcp_next, arg as u16);
            let edge = acked.wrapping_add(u32::from(window) << SHIFT);
            if after(edge, furthest_edge) {
                furthest_edge = edge;
            }
            r.on_sent(&Segment::parse(&ours(acked, window)).expect("built"));
            r.release_open(&mut ready);
            for g in ready.drain(..) {
                take(&g, &mut smoltcp_next, edge);
            }
            continue;
        }
        let seq = base.wrapping_add((arg & 0xffff) * 37);
        let payload = vec![0u8; 1 + (arg >> 16) as usize % 3000];
        let f = build(Spec { from_b: false, sport: 5000, dport: 80, seq, ack: Some(1), payload: &payload, sack: &[] });
        let seg = Segment::parse(&f).expect("built");
        match r.on_received(Arrival::of(&seg), f.clone(), &mut ready) {
            Verdict::Pass(given) => {
                assert_eq!(given, f, "smoltcp gets the frame that arrived");
                for g in std::iter::once(given).chain(ready.drain(..)) {
                    take(&g, &mut smoltcp_next, edge);
                }
            }
            Verdict::Held(ack) => {
                assert!(ready.is_empty());
                let ack = ack.expect("a flow smoltcp has spoken on");
                let a = Segment::parse(&ack).expect("our ACK parses");
                assert_eq!(a.ack, acked, "our ACK is smoltcp's");
                assert!(a.sack_ranges().count() <= 3);
                for (left, right) in a.sack_ranges() {
                    // What smoltcp was given beyond its ACK, or data held
                    // within a window it offered: never data it dropped.
                    if left == acked {
                        assert!(!after(right, smoltcp_next), "SACKed {left}..{right}: smoltcp has to {smoltcp_next}");
                    } else {
                        assert!(!after(right, furthest_edge), "SACKed {left}..{right} beyond every window");
                    }
                }
            }
        }
    }
}

fn as_one_frame(data: &[u8]) {
    let Some(seg) = Segment::parse(data) else { return };
    assert!(seg.len as usize + 54 <= data.len(), "payload {} in a {}-byte frame", seg.len, data.len());
    assert!(seg.sack_ranges().count() <= 3);
    let ip = Ipv4Packet::new_checked(&data[14..]).expect("Segment::parse checked the IPv4 header");
    let tcp = TcpPacket::new_checked(ip.payload()).expect("Segment::parse checked the TCP header");
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    if let Ok(repr) = TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::ignored()) {
        assert_eq!((repr.src_port, repr.dst_port), (seg.sport, seg.dport));
        assert_eq!(repr.seq_number.0 as u32, seg.seq);
        assert_eq!(repr.ack_number.map(|a| a.0 as u32), seg.ack_flag.then_some(seg.ack));
        assert_eq!(repr.payload.len(), seg.len as usize);
    }
    let now = Instant::now();
    let (mut flows, mut sack) = (FlowTracker::default(), SackRecovery::with_models(1448));
    flows.on_sent(&seg, now);
    sack.on_sent(&seg, now);
    flows.on_received(&seg, now);
    sack.on_received(&seg, now);
    while sack.poll_resend(now + Duration::from_secs(1), &|_| None).is_some() {}
}

/// Bytes per scripted step: an op, then its arguments.
const STEP: usize = 9;
const MSS: u32 = 1000;

/// The sending side of the script: its scoreboard and every frame it sent.
struct Sender {
    sack: SackRecovery,
    sent: Vec<Vec<u8>>,
    /// Sequence number of the next new byte.
    next: u32,
}

impl Sender {
    fn send(&mut self, n: u32, now: Instant) {
        for _ in 0..n {
            let payload = [self.sent.len() as u8; MSS as usize];
            let f = build(Spec {
                from_b: false,
                sport: 5000,
                dport: 80,
                seq: self.next,
                ack: Some(1),
                payload: &payload,
                sack: &[],
            });
            self.sack.on_sent(&Segment::parse(&f).expect("a built frame parses"), now);
            self.sent.push(f);
            self.next = self.next.wrapping_add(MSS);
        }
    }

    /// The peer's ACK of `ack` with one SACK block.
    fn acked(&mut self, ack: u32, block: (u32, u32), now: Instant) {
        let sack: &[(u32, u32)] = if block.0 == block.1 { &[] } else { &[block] };
        let f = build(Spec { from_b: true, sport: 80, dport: 5000, seq: 1, ack: Some(ack), payload: &[], sack });
        self.sack.on_received(&Segment::parse(&f).expect("a built frame parses"), now);
    }
}

fn as_an_ack_script(data: &[u8]) {
    let Some((head, script)) = data.split_first_chunk::<4>() else { return };
    let base = u32::from_be_bytes(*head);
    let mut now = Instant::now();
    // The scoreboard feeds a congestion model, so hostile ACKs reach it too.
    let mut s = Sender { sack: SackRecovery::with_models(MSS), sent: Vec::new(), next: base };
    s.send(16, now);
    for step in script.chunks_exact(STEP) {
        let word = |i: usize| u32::from_be_bytes([step[i], step[i + 1], step[i + 2], step[i + 3]]);
        match step[0] % 4 {
            // An ACK with one SACK block, both anywhere near what was sent.
            0 | 1 => {
                let ack = base.wrapping_add(word(1) % (s.next.wrapping_sub(base) + 2 * MSS));
                let left = base.wrapping_add(word(5) >> 8);
                s.acked(ack, (left, left.wrapping_add(u32::from(step[8]) * 257)), now);
            }
            // An ACK whose numbers are raw words: anywhere in sequence space.
            2 => s.acked(word(1), (word(5), word(1)), now),
            // More data, then time moves on and whatever is lost goes again.
            _ => {
                s.send(u32::from(step[1] % 8), now);
                now += Duration::from_millis(u64::from(step[2]));
                while let Some(f) = s.sack.poll_resend(now, &|_| Some(Duration::from_millis(20))) {
                    assert!(s.sent.iter().any(|x| x == f), "a resent frame that was never sent");
                }
            }
        }
        assert!(s.sack.held() <= s.sent.len(), "holds {} of {} sent", s.sack.held(), s.sent.len());
        let models = s.sack.models.as_ref().expect("built with models");
        assert!(models.cwnd(HOST_B) >= 4 * u64::from(MSS), "the in-flight cap fell below four segments");
    }
    // The peer acknowledges everything: nothing is held or sent again.
    s.acked(s.next, (0, 0), now);
    assert_eq!(s.sack.held(), 0, "an ACK of everything leaves copies");
    assert!(s.sack.poll_resend(now + Duration::from_secs(5), &|_| None).is_none());
}
