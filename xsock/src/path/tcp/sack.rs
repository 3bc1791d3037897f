//! Selective-acknowledgement recovery for the TCP mode's senders, done
//! beside smoltcp rather than in it.
//!
//! smoltcp asks for SACK in its SYN and its receivers send SACK blocks, but
//! its sender ignores them: after a burst of losses it repairs one hole per
//! round trip (three duplicate ACKs, one fast retransmission, a partial ACK,
//! again), and at 350 ms with hundreds of holes that takes minutes (measured:
//! a 1 Gbit/s stream fell to kilobits for over a minute after a slow-start
//! overshoot). So the device keeps a copy of every data segment it sends
//! until the peer acknowledges it, reads the SACK blocks of the peer's ACKs,
//! and sends again, itself, each segment that the SACK scoreboard says is
//! lost (RFC 6675: three segments' worth of data SACKed above it), once per
//! round trip at most; a repair not SACKed a round trip later was lost too
//! and goes again. smoltcp sees the cumulative ACK jump and carries on; a
//! segment it also resends is a harmless duplicate, except that after its
//! retransmission timeout it resends everything from the cumulative ACK
//! (go-back-N, a whole window at 1 Gbit/s and 350 ms): copies of data the
//! peer SACKed do not leave ([`SackRecovery::sends_only_sacked`]).
//!
//! A copy sent again carries the ACK number and window of its first
//! transmission: a peer takes an old ACK for what it is (RFC 9293: an ACK
//! below SND.UNA is ignored) and does not take a window update from a
//! segment older than its last one (SND.WL1 rules), so neither misleads it.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use xsock_pacer::SendStamp;

use super::{
    model::PathModels,
    segment::{Segment, after},
};

/// Segments' worth of SACKed data above a hole before it counts as lost
/// (RFC 6675's DupThresh).
const DUP_THRESH: u32 = 3;
/// Retransmissions are not repeated sooner than this, whatever the RTT.
const MIN_RESEND_GAP: Duration = Duration::from_millis(10);
/// Most segments copied per flow (bounds memory: 128 Ki segments ≈ 192
/// MiB; a 1 Gbit/s, 350 ms path with buffers of 2.5 x its BDP has 75 Ki in
/// flight). The connections' send space keeps within it
/// ([`SackRecovery::room`]): a segment sent and not copied could be
/// repaired only by smoltcp's timeout, which sends everything after it
/// again (measured at 64 Ki: 437,000 retransmissions and seconds at zero).
const MAX_SEGMENTS: usize = 1 << 17;

#[derive(Debug)]
struct Sent {
    seq: u32,
    end: u32,
    frame: Vec<u8>,
    sacked: bool,
    resent_at: Option<Instant>,
    /// Its stamp for the congestion model, when there is one.
    stamp: Option<SendStamp>,
}

#[derive(Debug, Default)]
struct Flow {
    segs: VecDeque<Sent>,
    /// Highest right edge SACKed.
    high_sacked: Option<u32>,
    /// The sequence ranges SACK blocks have covered, merged, in order, all
    /// above the cumulative ACK: a block is walked only where it is new
    /// (each ACK repeats its blocks, and walking a block of thousands of
    /// segments again on every ACK took a quarter of a sender's CPU at
    /// 1 Gbit/s with 0.1 % loss).
    covered: Vec<(u32, u32)>,
    /// Segments before this index have been dealt with (SACKed or sent again).
    next_check: usize,
    mss: u32,
    /// Payload bytes SACKed and not yet cumulatively acknowledged.
    sacked_bytes: u64,
    /// Payload bytes of the segments held.
    unacked_bytes: u64,
    /// The scoreboard was found full (and said so).
    full_warned: bool,
    /// The segments sent again, by sequence number, oldest repair first:
    /// a repair not SACKed within the resend gap was lost too.
    repairs: VecDeque<(Instant, u32)>,
}

/// A connection as its frames name it: (local port, remote address, remote port).
type Key = (u16, [u8; 4], u16);

/// The SACK scoreboards of the TCP mode's sending connections (a listening
/// port's accepted connections share the local port, so the remote end is
/// part of the key).
#[derive(Debug, Default)]
pub(crate) struct SackRecovery {
    flows: HashMap<Key, Flow>,
    spare: Vec<Vec<u8>>,
    /// Segments sent again by this recovery.
    pub resent: u64,
    /// Copies smoltcp sent again of data the peer had SACKed, not sent.
    pub not_sent: u64,
    /// The congestion models the segments feed (`Congestion::Model`).
    pub models: Option<PathModels>,
}

impl SackRecovery {
    /// A scoreboard that also feeds per-host congestion models for
    /// segments of up to `mss` bytes.
    pub fn with_models(mss: u32) -> SackRecovery {
        SackRecovery { models: Some(PathModels::new(mss)), ..Default::default() }
    }

    /// Looks at an outgoing segment at `now`: new data segments are copied.
    pub fn on_sent(&mut self, s: &Segment<'_>, now: Instant) {
        if s.len == 0 {
            return;
        }
        let end = s.seq.wrapping_add(s.len);
        let flow = self.flows.entry((s.sport, s.dst, s.dport)).or_default();
        flow.mss = flow.mss.max(s.len);
        if flow.segs.back().is_some_and(|last| !after(end, last.end)) {
            return; // a retransmission (its first copy is kept)
        }
        if flow.segs.len() >= MAX_SEGMENTS {
            if !flow.full_warned {
                flow.full_warned = true;
                log::warn!(
                    "TCP mode: {MAX_SEGMENTS} segments in flight to {}:{}, the most the SACK scoreboard copies; later ones are repaired only by smoltcp's timeout",
                    std::net::Ipv4Addr::from(s.dst),
                    s.dport
                );
            }
            return;
        }
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        frame.extend_from_slice(s.frame);
        let stamp = self.models.as_mut().map(|m| m.on_sent(s.dst, now, u64::from(s.len)));
        flow.unacked_bytes += u64::from(s.len);
        flow.segs.push_back(Sent { seq: s.seq, end, frame, sacked: false, resent_at: None, stamp });
    }

    /// Looks at an incoming segment at `now`: its cumulative ACK frees
    /// copies, its SACK blocks mark them (each newly delivered segment
    /// feeds the congestion model of its host).
    pub fn on_received(&mut self, s: &Segment<'_>, now: Instant) {
        if !s.ack_flag {
            return;
        }
        let host = s.src;
        let Some(flow) = self.flows.get_mut(&(s.dport, host, s.sport)) else { return };
        let mut models = self.models.as_mut();
        let mut popped = 0;
        let mut acked = 0u64;
        while flow.segs.front().is_some_and(|g| !after(g.end, s.ack)) {
            let g = flow.segs.pop_front().expect("checked");
            let len = u64::from(g.end.wrapping_sub(g.seq));
            acked += len;
            flow.unacked_bytes = flow.unacked_bytes.saturating_sub(len);
            if g.sacked {
                flow.sacked_bytes = flow.sacked_bytes.saturating_sub(len);
            } else if let (Some(m), Some(st)) = (models.as_deref_mut(), &g.stamp) {
                m.on_delivered(host, now, st, len, g.resent_at.is_none());
            }
            self.spare.push(g.frame);
            popped += 1;
        }
        flow.next_check = flow.next_check.saturating_sub(popped);
        // The copy the cumulative ACK lands in is not the peer's, whatever
        // a SACK block said of it: a receiver that takes only part of a
        // segment (its window cut it) acknowledges up to the cut, and a
        // receiver may drop data it SACKed (RFC 2018, section 8). Left
        // marked, it was never sent again: smoltcp's timeout resends from
        // the ACK, inside this copy, and that looked like SACKed data
        // (measured: a stream stalled for good, FIN-WAIT-1 with 209 KB
        // unacknowledged, every copy marked SACKed).
        if let Some(g) = flow.segs.front_mut()
            && g.sacked
            && after(s.ack, g.seq)
        {
            g.sacked = false;
            flow.sacked_bytes = flow.sacked_bytes.saturating_sub(u64::from(g.end.wrapping_sub(g.seq)));
            flow.next_check = 0;
        }
        // Once the cumulative ACK passes the highest SACKed edge there is no
        // hole left: forget the edge. Kept, it went stale, and 2 GiB later
        // (18 s at 1 Gbit/s) sequence arithmetic took it for data far ahead
        // of every segment in flight, so each one looked lost and was sent
        // again (measured: 190,000 spurious retransmissions in a 30 s run).
        if flow.high_sacked.is_some_and(|h| flow.segs.front().is_none_or(|g| !after(h, g.seq))) {
            flow.high_sacked = None;
        }
        if let Some(front) = flow.segs.front().map(|g| g.seq) {
            let rel = |x: u32| x.wrapping_sub(front);
            // Ranges at or below the cumulative ACK are done with; one that
            // straddles it keeps its part above.
            flow.covered.retain_mut(|c| {
                if !after(c.1, front) {
                    return false;
                }
                if after(front, c.0) {
                    c.0 = front;
                }
                true
            });
            let sent_end = flow.segs.back().map_or(front, |g| g.end);
            for (l, r) in s.sack_ranges() {
                // Nothing beyond what was sent is held, whatever the block
                // says: covered, it would hide segments sent there later.
                let r = if after(r, sent_end) { sent_end } else { r };
                if !after(r, l) || !after(r, front) {
                    continue;
                }
                flow.high_sacked = Some(match flow.high_sacked {
                    Some(h) if !after(r, h) => h,
                    _ => r,
                });
                if after(front, l) {
                    continue; // reaches below the cumulative ACK: a D-SACK (RFC 2883) or stale
                }
                // A segment is SACKed once the blocks seen, together, hold all
                // of it (RFC 6675's scoreboard counts octets). Every segment
                // inside the ranges covered before is marked already: walk only
                // the parts of [l, r) they did not cover, and mark what lies
                // whole in the range [l, r) joins.
                let ((i, j), (ml, mr)) = merged(&flow.covered, (l, r), front);
                let mut walk = |a: u32, b: u32| {
                    // A segment may straddle a covered edge: start at the first
                    // one ending past `a`.
                    let start = flow.segs.partition_point(|g| rel(g.end) <= rel(a));
                    for g in flow.segs.range_mut(start..) {
                        if !after(b, g.seq) || after(g.end, mr) {
                            break;
                        }
                        if !g.sacked && !after(ml, g.seq) {
                            g.sacked = true;
                            let len = u64::from(g.end.wrapping_sub(g.seq));
                            flow.sacked_bytes += len;
                            if let (Some(m), Some(st)) = (models.as_deref_mut(), &g.stamp) {
                                m.on_delivered(host, now, st, len, g.resent_at.is_none());
                            }
                        }
                    }
                };
                // Ranges i..j overlap or touch [l, r), in order.
                let mut at = l;
                for &(cl, cr) in &flow.covered[i..j] {
                    if after(cl, at) {
                        walk(at, cl);
                    }
                    if after(cr, at) {
                        at = cr;
                    }
                }
                if after(r, at) {
                    walk(at, r);
                }
                flow.covered.splice(i..j, [(ml, mr)]);
            }
        } else {
            flow.covered.clear();
        }
        if let Some(m) = models {
            m.on_ack(host, now, acked);
        }
    }

    /// Payload bytes of the connection `key` the peer holds beyond a hole
    /// (SACKed, not yet cumulatively acknowledged): in its send queue, no
    /// longer in flight.
    pub fn sacked_bytes(&self, key: Key) -> u64 {
        self.flows.get(&key).map_or(0, |f| f.sacked_bytes)
    }

    /// Payload bytes the connection `key` may still send and have copied:
    /// room for that many more full segments (`None` before it has sent any).
    pub fn room(&self, key: Key) -> Option<u64> {
        let f = self.flows.get(&key)?;
        Some((MAX_SEGMENTS.saturating_sub(f.segs.len()) as u64) * u64::from(f.mss))
    }

    /// Payload bytes of the connection `key` sent and not cumulatively acknowledged.
    pub fn unacked(&self, key: Key) -> u64 {
        self.flows.get(&key).map_or(0, |f| f.unacked_bytes)
    }

    /// Connections with unacknowledged data to the host of `key`, counting
    /// `key` itself whatever it has (at least one).
    pub fn flows_to_with(&self, key: Key) -> usize {
        let others = self.flows.iter().filter(|(k, f)| k.1 == key.1 && **k != key && !f.segs.is_empty()).count();
        others + 1
    }

    /// The next segment to send again, if one is lost: its frame, which the
    /// caller transmits as it is. `srtt` paces repeats of one segment.
    pub fn poll_resend(&mut self, now: Instant, srtt: &dyn Fn(u16) -> Option<Duration>) -> Option<&[u8]> {
        let mut found = None;
        for (&key, flow) in &mut self.flows {
            let gap = srtt(key.0).map_or(Duration::from_millis(200), |r| r + r / 4).max(MIN_RESEND_GAP);
            let Some(high) = flow.high_sacked else { continue };
            // Every hole again whose repair was lost too (not only the
            // oldest: after a burst of lost repairs that would mend one a
            // round trip, measured as a 1 Gbit/s, 350 ms flow stuck at
            // three segments a second).
            while let Some(&(at, seq)) = flow.repairs.front() {
                if now.saturating_duration_since(at) < gap {
                    break;
                }
                flow.repairs.pop_front();
                let Some(front) = flow.segs.front().map(|g| g.seq) else { continue };
                let i = flow.segs.partition_point(|g| g.seq.wrapping_sub(front) < seq.wrapping_sub(front));
                if let Some(g) = flow.segs.get_mut(i)
                    && g.seq == seq
                    && !g.sacked
                    && g.resent_at == Some(at)
                {
                    g.resent_at = None;
                    flow.next_check = flow.next_check.min(i);
                }
            }
            let thresh = DUP_THRESH * flow.mss.max(1);
            while let Some(g) = flow.segs.get(flow.next_check) {
                if high.wrapping_sub(g.end) < thresh || after(g.end, high) {
                    break;
                }
                if !g.sacked && g.resent_at.is_none() {
                    found = Some((key, flow.next_check));
                    break;
                }
                flow.next_check += 1;
            }
            if found.is_some() {
                break;
            }
        }
        let (key, i) = found?;
        let flow = self.flows.get_mut(&key).expect("found");
        flow.next_check = i + 1;
        let g = &mut flow.segs[i];
        if let (Some(m), Some(st)) = (self.models.as_mut(), &g.stamp) {
            m.on_lost(key.1, now, st, u64::from(g.end.wrapping_sub(g.seq)));
        }
        g.resent_at = Some(now);
        flow.repairs.push_back((now, g.seq));
        self.resent += 1;
        Some(&g.frame)
    }

    /// Whether `s`, from smoltcp, sends again only data the peer has
    /// SACKed (after its retransmission timeout smoltcp sends everything
    /// from the cumulative ACK on, knowing nothing of SACK): such a copy
    /// need not leave. The segment at the cumulative ACK always leaves, so
    /// a peer that dropped SACKed data (RFC 2018 lets it) still gets it.
    pub fn sends_only_sacked(&self, s: &Segment<'_>) -> bool {
        let Some(flow) = self.flows.get(&(s.sport, s.dst, s.dport)) else { return false };
        let (Some(front), Some(last)) = (flow.segs.front(), flow.segs.back()) else { return false };
        let end = s.seq.wrapping_add(s.len);
        if s.len == 0 || s.syn || s.fin || !after(s.seq, front.seq) || after(end, last.end) {
            return false;
        }
        let rel = |x: u32| x.wrapping_sub(front.seq);
        let mut at = s.seq;
        for g in flow.segs.range(flow.segs.partition_point(|g| rel(g.end) <= rel(s.seq))..) {
            if !after(end, at) {
                break;
            }
            if !g.sacked || after(g.seq, at) {
                return false;
            }
            at = g.end;
        }
        !after(end, at)
    }

    /// The flow's scoreboard, for the report of a connection that stalled.
    pub fn describe(&self, key: Key) -> String {
        let Some(f) = self.flows.get(&key) else { return "no scoreboard".into() };
        let sacked = f.segs.iter().filter(|g| g.sacked).count();
        format!(
            "{} copies from {:?} to {:?} ({sacked} SACKed), highest SACKed {:?}, {} repairs waiting",
            f.segs.len(),
            f.segs.front().map(|g| g.seq),
            f.segs.back().map(|g| g.end),
            f.high_sacked,
            f.repairs.len()
        )
    }

    /// Whether any flow has a segment it may have to send again.
    pub fn has_holes(&self) -> bool {
        self.flows.values().any(|f| f.high_sacked.is_some() && !f.segs.is_empty())
    }

    /// Segment copies held, over all flows.
    pub fn held(&self) -> usize {
        self.flows.values().map(|f| f.segs.len()).sum()
    }

    /// Drops the copies of every connection from local `port` (they are gone).
    pub fn forget(&mut self, port: u16) {
        let keys: Vec<Key> = self.flows.keys().filter(|k| k.0 == port).copied().collect();
        for k in keys {
            let f = self.flows.remove(&k).expect("listed");
            if let Some(m) = self.models.as_mut() {
                let unsacked: u64 =
                    f.segs.iter().filter(|g| !g.sacked).map(|g| u64::from(g.end.wrapping_sub(g.seq))).sum();
                m.gone(k.1, unsacked);
            }
            self.spare.extend(f.segs.into_iter().map(|g| g.frame));
        }
        self.spare.truncate(1024);
    }
}

/// The ranges of the merged, ordered `covered` (all above `front`) that
/// `[l, r)` overlaps or touches (indices `i..j`), and the range they make with it.
fn merged(covered: &[(u32, u32)], (l, r): (u32, u32), front: u32) -> ((usize, usize), (u32, u32)) {
    let rel = |x: u32| x.wrapping_sub(front);
    // The first range that ends at or after `l`, and the first that starts after `r`.
    let i = covered.partition_point(|c| rel(c.1) < rel(l));
    let j = covered.partition_point(|c| rel(c.0) <= rel(r));
    if i == j {
        return ((i, j), (l, r));
    }
    let lo = if rel(covered[i].0) < rel(l) { covered[i].0 } else { l };
    let hi = if rel(covered[j - 1].1) > rel(r) { covered[j - 1].1 } else { r };
    ((i, j), (lo, hi))
}

#[cfg(test)]
mod tests {
    use super::{
        super::segment::{Spec, build},
        *,
    };

    fn frame(sport: u16, dport: u16, seq: u32, ack: u32, len: usize, sack: &[(u32, u32)]) -> Vec<u8> {
        build(Spec { from_b: sport < dport, sport, dport, seq, ack: Some(ack), payload: &vec![0; len], sack })
    }

    const MSS: u32 = 1000;

    /// Sends `n` segments from `start` on port 5000.
    fn send(r: &mut SackRecovery, start: u32, n: u32) {
        for i in 0..n {
            let f = frame(5000, 80, start.wrapping_add(i * MSS), 0, MSS as usize, &[]);
            r.on_sent(&Segment::parse(&f).unwrap(), Instant::now());
        }
    }

    fn ack(r: &mut SackRecovery, ack: u32, sack: &[(u32, u32)]) {
        let f = frame(80, 5000, 0, ack, 0, sack);
        r.on_received(&Segment::parse(&f).unwrap(), Instant::now());
    }

    fn resend_seqs(r: &mut SackRecovery, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(f) = r.poll_resend(now, &|_| Some(Duration::from_millis(100))) {
            out.push(Segment::parse(f).unwrap().seq);
        }
        out
    }

    #[test]
    fn every_hole_below_three_sacked_segments_is_sent_again_once_in_a_round_trip() {
        let t0 = Instant::now();
        let base = u32::MAX - 4500; // across the wrap
        let mut r = SackRecovery::default();
        send(&mut r, base, 20);
        // Segments 2 and 5 lost; the peer SACKs 3-4 and 6-19 (one block per ACK).
        let s = |i: u32| base.wrapping_add(i * MSS);
        ack(&mut r, s(2), &[(s(3), s(5))]);
        ack(&mut r, s(2), &[(s(6), s(20))]);
        assert_eq!(resend_seqs(&mut r, t0), vec![s(2), s(5)]);
        // Not again within the round trip...
        assert!(resend_seqs(&mut r, t0 + Duration::from_millis(50)).is_empty());
        // ...but again once their repairs are overdue.
        assert_eq!(resend_seqs(&mut r, t0 + Duration::from_millis(130)), vec![s(2), s(5)]);
        // The repairs arrive: everything is acknowledged, nothing is held.
        ack(&mut r, s(20), &[]);
        assert!(r.flows.values().all(|f| f.segs.is_empty()));
        assert!(resend_seqs(&mut r, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(r.resent, 4);
    }

    #[test]
    fn every_repair_that_was_lost_too_is_sent_again_within_a_round_trip() {
        let t0 = Instant::now();
        let mut r = SackRecovery::default();
        send(&mut r, 0, 20);
        // 2, 5 and 8 lost; their repairs are lost as well.
        let s = |i: u32| i * MSS;
        ack(&mut r, s(2), &[(s(9), s(20)), (s(6), s(8)), (s(3), s(5))]);
        assert_eq!(resend_seqs(&mut r, t0), vec![s(2), s(5), s(8)]);
        assert!(resend_seqs(&mut r, t0 + Duration::from_millis(50)).is_empty());
        // Once overdue, every one of them goes again, not only the oldest.
        assert_eq!(resend_seqs(&mut r, t0 + Duration::from_millis(130)), vec![s(2), s(5), s(8)]);
        // The second repair of 5 arrives: only 2 and 8 go a third time.
        ack(&mut r, s(2), &[(s(5), s(8))]);
        assert_eq!(resend_seqs(&mut r, t0 + Duration::from_millis(260)), vec![s(2), s(8)]);
        assert_eq!(r.resent, 8);
    }

    #[test]
    fn smoltcp_sending_sacked_data_again_after_a_timeout_need_not_leave() {
        let mut r = SackRecovery::default();
        send(&mut r, 0, 10);
        ack(&mut r, 2 * MSS, &[(3 * MSS, 6 * MSS), (7 * MSS, 10 * MSS)]);
        let again = |seq: u32, len: usize| frame(5000, 80, seq, 0, len, &[]);
        let only_sacked = |r: &SackRecovery, f: &[u8]| r.sends_only_sacked(&Segment::parse(f).unwrap());
        // The segment at the cumulative ACK always goes; so do holes.
        assert!(!only_sacked(&r, &again(2 * MSS, MSS as usize)));
        assert!(!only_sacked(&r, &again(6 * MSS, MSS as usize)));
        // SACKed, even cut differently from the first copies: not sent.
        assert!(only_sacked(&r, &again(3 * MSS, MSS as usize)));
        assert!(only_sacked(&r, &again(3 * MSS + 500, 2 * MSS as usize)));
        // Across a hole, or beyond what was sent: sent.
        assert!(!only_sacked(&r, &again(5 * MSS, 2 * MSS as usize)));
        assert!(!only_sacked(&r, &again(9 * MSS, 2 * MSS as usize)));
        assert!(!only_sacked(&r, &again(10 * MSS, MSS as usize)));
    }

    #[test]
    fn a_loss_long_repaired_does_not_make_segments_2_gib_later_look_lost() {
        let mut r = SackRecovery::default();
        send(&mut r, 0, 10);
        ack(&mut r, 2 * MSS, &[(3 * MSS, 10 * MSS)]);
        assert_eq!(resend_seqs(&mut r, Instant::now()), vec![2 * MSS]);
        ack(&mut r, 10 * MSS, &[]);
        // 2 GiB and more go by without a loss (sequence numbers are
        // compared modulo 2^32, so an edge kept from before reads as ahead).
        let later = 10 * MSS + (1 << 31) + 5 * MSS;
        ack(&mut r, later, &[]);
        send(&mut r, later, 10);
        ack(&mut r, later + 2 * MSS, &[]);
        assert!(!r.has_holes());
        assert!(resend_seqs(&mut r, Instant::now()).is_empty());
        assert_eq!(r.resent, 1);
    }

    #[test]
    fn a_segment_the_cumulative_ack_lands_inside_is_sent_again_whatever_was_sacked() {
        let t0 = Instant::now();
        let mut r = SackRecovery::default();
        send(&mut r, 0, 10);
        let s = |i: u32| i * MSS;
        // The peer SACKs everything from segment 2 on, then acknowledges
        // only half of segment 2 (its window cut it) and still SACKs the rest.
        ack(&mut r, s(2), &[(s(2), s(10))]);
        ack(&mut r, s(2) + 500, &[(s(2) + 500, s(10))]);
        // smoltcp's resend from the ACK leaves; the copy of segment 2 goes
        // again at once (the peer holds more than three segments above it).
        let tail = frame(5000, 80, s(2) + 500, 0, 500, &[]);
        assert!(!r.sends_only_sacked(&Segment::parse(&tail).unwrap()));
        assert_eq!(resend_seqs(&mut r, t0), vec![s(2)]);
        // Segment 3 on is still the peer's: smoltcp's copies of it stay back.
        let three = frame(5000, 80, s(3), 0, MSS as usize, &[]);
        assert!(r.sends_only_sacked(&Segment::parse(&three).unwrap()));
        ack(&mut r, s(10), &[]);
        assert_eq!(r.flows.values().map(|f| f.sacked_bytes).sum::<u64>(), 0);
    }

    #[test]
    fn a_hole_with_too_little_sacked_above_it_waits() {
        let mut r = SackRecovery::default();
        send(&mut r, 0, 10);
        // Segment 7 lost, only 8 SACKed: reordering, not yet loss.
        ack(&mut r, 7 * MSS, &[(8 * MSS, 9 * MSS)]);
        assert!(resend_seqs(&mut r, Instant::now()).is_empty());
        ack(&mut r, 7 * MSS, &[(8 * MSS, 10 * MSS)]);
        assert!(resend_seqs(&mut r, Instant::now()).is_empty());
        // Three segments' worth above it: lost.
        send(&mut r, 10 * MSS, 1);
        ack(&mut r, 7 * MSS, &[(8 * MSS, 11 * MSS)]);
        assert_eq!(resend_seqs(&mut r, Instant::now()), vec![7 * MSS]);
    }

    #[test]
    fn retransmissions_by_smoltcp_are_not_copied_twice_and_garbage_is_ignored() {
        let mut r = SackRecovery::default();
        send(&mut r, 0, 3);
        send(&mut r, 0, 1);
        assert_eq!(r.held(), 3);
        assert!(Segment::parse(&[0u8; 30]).is_none());
        let mut bad = frame(80, 5000, 0, 0, 0, &[(1, 2)]);
        bad[55] = 200; // a SACK option longer than the header
        let seg = Segment::parse(&bad).unwrap();
        assert_eq!(seg.sack_ranges().count(), 0);
        r.on_received(&seg, Instant::now());
        assert_eq!(
            Segment::parse(&frame(80, 5000, 0, 0, 0, &[(1, 2)])).unwrap().sack_ranges().collect::<Vec<_>>(),
            vec![(1, 2)]
        );
    }

    #[test]
    fn a_block_beyond_what_was_sent_does_not_hide_segments_sent_later() {
        let mut r = SackRecovery::default();
        send(&mut r, 0, 4);
        // A block that runs past the last segment sent (a peer's mistake,
        // or a lie) covers only what was sent...
        ack(&mut r, 0, &[(2 * MSS, 10 * MSS)]);
        assert_eq!(r.sacked_bytes((5000, super::super::segment::HOST_B, 80)), 2 * u64::from(MSS));
        // ...so segments sent into it later are marked when a block holds them.
        send(&mut r, 4 * MSS, 4);
        ack(&mut r, 0, &[(2 * MSS, 8 * MSS)]);
        assert_eq!(r.sacked_bytes((5000, super::super::segment::HOST_B, 80)), 6 * u64::from(MSS));
    }

    #[test]
    fn room_counts_down_to_a_full_scoreboard_and_up_as_acks_free_it() {
        let mut r = SackRecovery::default();
        let key = (5000, super::super::segment::HOST_B, 80);
        assert_eq!(r.room(key), None);
        send(&mut r, 0, 10);
        assert_eq!(r.room(key), Some((MAX_SEGMENTS as u64 - 10) * u64::from(MSS)));
        send(&mut r, 10 * MSS, MAX_SEGMENTS as u32);
        assert_eq!(r.room(key), Some(0));
        assert_eq!(r.held(), MAX_SEGMENTS, "copies beyond the bound are not kept");
        ack(&mut r, 100 * MSS, &[]);
        assert_eq!(r.room(key), Some(100 * u64::from(MSS)));
    }

    proptest::proptest! {
        /// Walking only the new parts of each SACK block marks exactly the
        /// segments whose every byte some block seen has held, whatever the
        /// order, overlap and alignment of the blocks, across the sequence
        /// wrap.
        #[test]
        fn marking_only_new_sack_coverage_equals_marking_every_block(
            base in proptest::prelude::any::<u32>(),
            acks in proptest::collection::vec(
                (0u32..4, proptest::collection::vec((0u32..60_000, 1u32..20_000), 0..4)),
                1..40,
            ),
        ) {
            let mut r = SackRecovery::default();
            send(&mut r, base, 60);
            let mut cum = 0u32;
            let mut held: Vec<(u32, u32)> = (0..60).map(|i| (i * MSS, (i + 1) * MSS)).collect();
            let mut marked = [false; 60];
            // The bytes some block has held (blocks end below 200,000).
            let mut seen = vec![false; 200_000];
            for (step, blocks) in acks {
                cum = (cum + step * MSS).min(60 * MSS);
                let blocks: Vec<(u32, u32)> = blocks.iter().map(|&(l, n)| (cum + l, cum + l + n)).collect();
                let wire: Vec<(u32, u32)> =
                    blocks.iter().map(|&(l, r)| (base.wrapping_add(l), base.wrapping_add(r))).collect();
                ack(&mut r, base.wrapping_add(cum), &wire);
                held.retain(|&(_, e)| e > cum);
                for &(l, r) in &blocks {
                    seen[l as usize..r as usize].fill(true);
                }
                for (i, m) in marked.iter_mut().enumerate() {
                    let (a, b) = (i as u32 * MSS, (i as u32 + 1) * MSS);
                    if a >= cum && seen[a as usize..b as usize].iter().all(|&x| x) {
                        *m = true;
                    }
                }
                let flow = r.flows.values().next().unwrap();
                let got: Vec<bool> = flow.segs.iter().map(|g| g.sacked).collect();
                let want: Vec<bool> = held.iter().map(|&(a, _)| marked[(a / MSS) as usize]).collect();
                proptest::prop_assert_eq!(&got, &want);
                let bytes = want.iter().filter(|&&m| m).count() as u64 * u64::from(MSS);
                proptest::prop_assert_eq!(flow.sacked_bytes, bytes);
            }
        }
    }
}
