//! What a NIC would have done to a Linux sender's frames, done in software
//! for frames that never meet one.
//!
//! A Linux sender whose interface offers offloads (a veth does, by default:
//! every container's interface) leaves two jobs to the device:
//! - **Checksums** (`CHECKSUM_PARTIAL`): the TCP or UDP checksum field holds
//!   only the pseudo-header's sum; the device sums the rest.
//! - **Segmentation** (TSO/GSO): a TCP segment of up to 64 KiB goes down
//!   whole, with one set of headers; the device cuts it into frames that
//!   fit the MTU.
//!
//! A veth does neither: it hands the frame to its peer as it is, and the
//! peer's kernel knows, from the socket buffer's metadata, that the work is
//! still to do. A frame that XDP takes from the peer carries no such
//! metadata. [`finish_checksum`] and [`segment_tcp`] do the work instead.
//! Nothing here panics, whatever the bytes.

use crate::device::ETH_HEADER_LEN;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// An IPv4 frame's layout: where the transport header starts and how long
/// the transport part is (by the IP header's total length).
#[derive(Debug, Clone, Copy)]
struct Ipv4 {
    /// Offset of the transport header.
    l4: usize,
    /// Bytes of transport header and payload.
    l4_len: usize,
    proto: u8,
}

fn ipv4(f: &[u8]) -> Option<Ipv4> {
    if f.len() < ETH_HEADER_LEN + 20 || f[12..14] != ETHERTYPE_IPV4 || f[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    // A fragment's transport header is not ours to touch.
    let frag = u16::from_be_bytes([f[20], f[21]]) & 0x3fff;
    if ihl < 20 || total < ihl || f.len() < ETH_HEADER_LEN + total || frag != 0 {
        return None;
    }
    Some(Ipv4 { l4: ETH_HEADER_LEN + ihl, l4_len: total - ihl, proto: f[23] })
}

/// The one's-complement sum of `b` (big-endian words, an odd last byte
/// padded with zero) added to `acc`, not folded.
fn sum(b: &[u8], acc: u64) -> u64 {
    let mut acc = acc;
    let mut words = b.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds a running sum into 16 bits (end-around carry).
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header's sum for a transport part of `len` bytes.
fn pseudo(f: &[u8], proto: u8, len: usize) -> u64 {
    sum(&f[26..34], u64::from(proto) + len as u64)
}

/// The IPv4 header checksum, recomputed in place.
fn set_ip_checksum(f: &mut [u8], l4: usize) {
    f[24] = 0;
    f[25] = 0;
    let c = !fold(sum(&f[ETH_HEADER_LEN..l4], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// The transport checksum over `f[l4..l4 + len]`, stored at `at` (a UDP
/// checksum that sums to zero is sent as all ones, RFC 768).
fn set_l4_checksum(f: &mut [u8], l4: usize, len: usize, proto: u8, at: usize) {
    f[at] = 0;
    f[at + 1] = 0;
    let mut c = !fold(sum(&f[l4..l4 + len], pseudo(f, proto, len)));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Finishes the TCP or UDP checksum of an IPv4 frame whose sender left it
/// to an offload, and says whether it did.
///
/// Linux writes the pseudo-header's folded sum into the field
/// (`CHECKSUM_PARTIAL`). When the field holds exactly that, the sum over the
/// transport part replaces it. On a frame whose checksum was complete this
/// changes nothing (the field is recomputed to its own value), so it is safe
/// on every frame; a damaged frame still fails the receiver's check.
pub fn finish_checksum(f: &mut [u8]) -> bool {
    let Some(ip) = ipv4(f) else { return false };
    let at = match ip.proto {
        PROTO_TCP if ip.l4_len >= 20 => ip.l4 + 16,
        // UDP's field 0 means "no checksum": never a partial one.
        PROTO_UDP if ip.l4_len >= 8 => ip.l4 + 6,
        _ => return false,
    };
    let field = u16::from_be_bytes([f[at], f[at + 1]]);
    if field == 0 && ip.proto == PROTO_UDP || field != fold(pseudo(f, ip.proto, ip.l4_len)) {
        return false;
    }
    set_l4_checksum(f, ip.l4, ip.l4_len, ip.proto, at);
    true
}

/// Why [`segment_tcp`] left a frame as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSegmented {
    /// It fits `max_frame` already.
    Fits,
    /// It is not an IPv4/TCP frame with consistent headers (forward it or
    /// drop it as it is).
    NotTcp,
    /// Its headers alone do not fit `max_frame`.
    HeadersTooLong,
}

/// Cuts an IPv4/TCP frame longer than `max_frame` bytes (Ethernet header
/// included) into frames that fit, as a segmentation offload would, and
/// hands each to `emit` in order; returns how many.
///
/// Each piece carries the original headers (options included) with its own
/// sequence number, IP length, IP id (the first's plus its index) and
/// checksums; FIN and PSH stay on the last piece only, CWR on the first.
/// `scratch` is reused across calls.
pub fn segment_tcp(
    f: &[u8],
    max_frame: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, NotSegmented> {
    if f.len() <= max_frame {
        return Err(NotSegmented::Fits);
    }
    let Some(ip) = ipv4(f) else { return Err(NotSegmented::NotTcp) };
    if ip.proto != PROTO_TCP || ip.l4_len < 20 {
        return Err(NotSegmented::NotTcp);
    }
    let doff = usize::from(f[ip.l4 + 12] >> 4) * 4;
    if doff < 20 || doff > ip.l4_len {
        return Err(NotSegmented::NotTcp);
    }
    let headers = ip.l4 + doff;
    if headers >= max_frame {
        return Err(NotSegmented::HeadersTooLong);
    }
    let payload = &f[headers..ip.l4 + ip.l4_len];
    let mss = max_frame - headers;
    let seq = u32::from_be_bytes([f[ip.l4 + 4], f[ip.l4 + 5], f[ip.l4 + 6], f[ip.l4 + 7]]);
    let id = u16::from_be_bytes([f[18], f[19]]);
    let flags = f[ip.l4 + 13];
    let pieces = payload.len().div_ceil(mss).max(1);
    for i in 0..pieces {
        let chunk = &payload[i * mss..((i + 1) * mss).min(payload.len())];
        scratch.clear();
        scratch.extend_from_slice(&f[..headers]);
        scratch.extend_from_slice(chunk);
        let s = &mut scratch[..];
        let ip_total = (headers - ETH_HEADER_LEN + chunk.len()) as u16;
        s[16..18].copy_from_slice(&ip_total.to_be_bytes());
        s[18..20].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        set_ip_checksum(s, ip.l4);
        let piece_seq = seq.wrapping_add((i * mss) as u32);
        s[ip.l4 + 4..ip.l4 + 8].copy_from_slice(&piece_seq.to_be_bytes());
        const FIN: u8 = 0x01;
        const PSH: u8 = 0x08;
        const CWR: u8 = 0x80;
        let mut fl = flags;
        if i + 1 < pieces {
            fl &= !(FIN | PSH);
        }
        if i > 0 {
            fl &= !CWR;
        }
        s[ip.l4 + 13] = fl;
        let l4_len = doff + chunk.len();
        set_l4_checksum(s, ip.l4, l4_len, PROTO_TCP, ip.l4 + 16);
        emit(s);
    }
    Ok(pieces)
}

/// Runs both functions on hostile bytes and checks what must hold whatever
/// they are: nothing panics, finishing is idempotent, every piece fits and
/// is finished, and the pieces carry the segment's payload in order. The
/// first two bytes choose the frame limit. The fuzz target `offload_frame`
/// runs this; `tests/fuzz_corpus.rs` replays its corpus.
pub fn hostile_frame(data: &[u8]) {
    let Some((limit, frame)) = data.split_first_chunk::<2>() else { return };
    let max_frame = usize::from(u16::from_be_bytes(*limit)).max(1);
    let mut once = frame.to_vec();
    finish_checksum(&mut once);
    let mut twice = once.clone();
    finish_checksum(&mut twice);
    assert_eq!(once, twice, "finishing twice changed the frame");
    let mut scratch = Vec::new();
    let mut carried = Vec::new();
    let mut payload_at = None;
    let r = segment_tcp(frame, max_frame, &mut scratch, |p| {
        assert!(p.len() <= max_frame, "a {}-byte piece for a {max_frame}-byte limit", p.len());
        let ip = ipv4(p).expect("a piece is an IPv4 frame");
        let doff = usize::from(p[ip.l4 + 12] >> 4) * 4;
        assert_eq!(fold(sum(&p[ETH_HEADER_LEN..ip.l4], 0)), 0xffff, "IP checksum of a piece");
        assert_eq!(fold(sum(&p[ip.l4..ip.l4 + ip.l4_len], pseudo(p, PROTO_TCP, ip.l4_len))), 0xffff);
        payload_at.get_or_insert(ip.l4 + doff);
        carried.extend_from_slice(&p[ip.l4 + doff..ip.l4 + ip.l4_len]);
    });
    if let (Ok(_), Some(ip), Some(at)) = (r, ipv4(frame), payload_at) {
        assert_eq!(carried, frame[at..ip.l4 + ip.l4_len], "the pieces carry the segment's payload");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame with complete checksums: headers with a
    /// 12-byte option block, then `payload`.
    fn tcp_frame(payload: &[u8], flags: u8) -> Vec<u8> {
        let doff = 32;
        let mut f = vec![0u8; 14 + 20 + doff];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        f[14] = 0x45;
        let total = (20 + doff + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[18..20].copy_from_slice(&0xfffeu16.to_be_bytes());
        f[20] = 0x40; // DF
        f[22] = 64;
        f[23] = PROTO_TCP;
        f[26..30].copy_from_slice(&[10, 1, 0, 1]);
        f[30..34].copy_from_slice(&[10, 1, 0, 2]);
        let t = 34;
        f[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&0xffff_fff0u32.to_be_bytes()); // wraps
        f[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
        f[t + 12] = (doff as u8 / 4) << 4;
        f[t + 13] = flags;
        f[t + 14..t + 16].copy_from_slice(&1024u16.to_be_bytes());
        // NOP, NOP, timestamps.
        f[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        f.extend_from_slice(payload);
        set_ip_checksum(&mut f, t);
        let len = f.len() - t;
        set_l4_checksum(&mut f, t, len, PROTO_TCP, t + 16);
        f
    }

    fn checksums_ok(f: &[u8]) -> bool {
        let ip = ipv4(f).unwrap();
        fold(sum(&f[14..ip.l4], 0)) == 0xffff
            && fold(sum(&f[ip.l4..ip.l4 + ip.l4_len], pseudo(f, ip.proto, ip.l4_len))) == 0xffff
    }

    fn partial(full: &[u8]) -> Vec<u8> {
        let mut p = full.to_vec();
        let ip = ipv4(full).unwrap();
        let at = if ip.proto == PROTO_TCP { ip.l4 + 16 } else { ip.l4 + 6 };
        let field = fold(pseudo(full, ip.proto, ip.l4_len));
        p[at..at + 2].copy_from_slice(&field.to_be_bytes());
        p
    }

    #[test]
    fn a_partial_checksum_is_finished_and_a_complete_or_damaged_one_is_left_alone() {
        for len in [0usize, 1, 2, 3, 1447, 1448, 65_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let full = tcp_frame(&payload, 0x18);
            assert!(checksums_ok(&full));
            let mut p = partial(&full);
            assert!(finish_checksum(&mut p), "len {len}");
            assert_eq!(p, full, "len {len}");
            let mut again = full.clone();
            finish_checksum(&mut again);
            assert_eq!(again, full);
            let mut bad = full.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x40;
            finish_checksum(&mut bad);
            assert!(!checksums_ok(&bad));
            // An IP length that claims more than the frame holds: untouched.
            let mut cut = partial(&full);
            cut.pop();
            let before = cut.clone();
            assert!(!finish_checksum(&mut cut));
            assert_eq!(cut, before);
        }
    }

    #[test]
    fn a_udp_partial_checksum_is_finished_and_a_zero_one_means_none() {
        let mut f = tcp_frame(&[], 0);
        f.truncate(34);
        f[23] = PROTO_UDP;
        let body = [0x9c, 0x40, 0x14, 0x51, 0, 12, 0, 0, b'd', b'a', b't', b'a'];
        f.extend_from_slice(&body);
        f[16..18].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
        set_ip_checksum(&mut f, 34);
        let mut none = f.clone();
        assert!(!finish_checksum(&mut none), "a zero UDP checksum is 'none'");
        set_l4_checksum(&mut f, 34, body.len(), PROTO_UDP, 40);
        assert!(checksums_ok(&f));
        let mut p = partial(&f);
        assert!(finish_checksum(&mut p));
        assert_eq!(p, f);
    }

    #[test]
    fn a_64k_segment_is_cut_into_frames_that_fit_and_carry_the_same_bytes() {
        let payload: Vec<u8> = (0..65_000u32).map(|i| (i % 251) as u8).collect();
        let big = tcp_frame(&payload, 0x19); // ACK PSH FIN
        let mut scratch = Vec::new();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let n = segment_tcp(&big, 1514, &mut scratch, |p| pieces.push(p.to_vec())).unwrap();
        assert_eq!(n, pieces.len());
        let mss = 1514 - 66;
        assert_eq!(n, payload.len().div_ceil(mss));
        let mut joined = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.len() <= 1514 && checksums_ok(p), "piece {i}");
            let seq = u32::from_be_bytes([p[38], p[39], p[40], p[41]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add((i * mss) as u32));
            assert_eq!(u16::from_be_bytes([p[18], p[19]]), 0xfffeu16.wrapping_add(i as u16));
            let last = i + 1 == n;
            assert_eq!(p[47] & 0x09 != 0, last, "FIN/PSH only on the last piece");
            assert_eq!(p[47] & 0x10, 0x10, "ACK on every piece");
            assert_eq!(p[54..66], big[54..66], "options copied");
            joined.extend_from_slice(&p[66..]);
        }
        assert_eq!(joined, payload);
        // A partial checksum on the big frame does not matter: pieces are summed whole.
        let mut pieces2 = 0;
        segment_tcp(&partial(&big), 1514, &mut scratch, |p| {
            assert!(checksums_ok(p));
            pieces2 += 1;
        })
        .unwrap();
        assert_eq!(pieces2, n);
        assert_eq!(segment_tcp(&big, 70_000, &mut scratch, |_| ()), Err(NotSegmented::Fits));
        assert_eq!(segment_tcp(&big, 60, &mut scratch, |_| ()), Err(NotSegmented::HeadersTooLong));
        let mut arp = big.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(segment_tcp(&arp, 1514, &mut scratch, |_| ()), Err(NotSegmented::NotTcp));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x853c_49e6_748f_ea9bu64;
        let mut f = vec![0u8; 3000];
        let mut scratch = Vec::new();
        for round in 0..20_000 {
            for b in f.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f[12..14].copy_from_slice(&ETHERTYPE_IPV4);
            f[14] = 0x40 | (f[14] & 0x0f);
            f[20] &= 0xc0;
            f[21] = 0;
            f[23] = if round % 2 == 0 { PROTO_TCP } else { PROTO_UDP };
            let cut = (x % 3001) as usize;
            let _ = finish_checksum(&mut f[..cut]);
            let _ = segment_tcp(&f[..cut], 200 + (x % 1400) as usize, &mut scratch, |p| assert!(p.len() <= 1600));
        }
    }
}
