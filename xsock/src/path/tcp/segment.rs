//! The TCP segment of an IPv4 Ethernet frame, read once per frame for the
//! TCP mode's own bookkeeping beside smoltcp ([`super::flows`] and
//! [`super::sack`] both look at every frame in and out).
//!
//! Read with smoltcp's checked wire views (Ethernet, IPv4, TCP), so there is
//! one TCP parser in the mode: the one smoltcp itself runs on every frame.
//! What a hostile peer can put in a frame (short headers, lengths that lie,
//! options that overrun) makes [`Segment::parse`] or
//! [`Segment::sack_ranges`] give nothing, never a panic; the fuzz target
//! `tcp_segment` checks it, and the fields against smoltcp's own
//! [`TcpRepr`](smoltcp::wire::TcpRepr) ([`crate::fuzzing::tcp_segment`]).

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpOption, TcpPacket};

/// The fields of a TCP segment that the bookkeeping reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment<'f> {
    /// The whole Ethernet frame.
    pub frame: &'f [u8],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub ack_flag: bool,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// Payload bytes (Ethernet padding after the IPv4 total length excluded).
    pub len: u32,
    /// The TCP header and payload, length-checked by [`TcpPacket::new_checked`].
    tcp: &'f [u8],
}

impl<'f> Segment<'f> {
    /// Reads `f`, if it is an unfragmented IPv4/TCP frame whose headers and
    /// lengths are consistent (nothing here panics, whatever the bytes).
    pub fn parse(f: &'f [u8]) -> Option<Segment<'f>> {
        let eth = EthernetFrame::new_checked(f).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.version() != 4 || ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        Some(Segment {
            frame: f,
            src: ip.src_addr().octets(),
            dst: ip.dst_addr().octets(),
            sport: tcp.src_port(),
            dport: tcp.dst_port(),
            seq: tcp.seq_number().0 as u32,
            ack: tcp.ack_number().0 as u32,
            ack_flag: tcp.ack(),
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            len: tcp.payload().len() as u32,
            tcp: tcp.into_inner(),
        })
    }

    /// The SACK blocks (RFC 2018) of the segment's options, as smoltcp reads
    /// them (the first three; none if the options are malformed).
    pub fn sack_ranges(&self) -> impl Iterator<Item = (u32, u32)> + use<> {
        TcpPacket::new_unchecked(self.tcp).selective_ack_ranges().unwrap_or_default().into_iter().flatten()
    }

    /// The window scale option's shift (RFC 7323), if the segment has one
    /// (only a SYN may; smoltcp caps it at 14 as the RFC says).
    pub fn window_scale(&self) -> Option<u8> {
        let mut options = TcpPacket::new_unchecked(self.tcp).options();
        while let Ok((rest, option)) = TcpOption::parse(options) {
            match option {
                TcpOption::EndOfList => break,
                TcpOption::WindowScale(shift) => return Some(shift.min(14)),
                _ => {}
            }
            options = rest;
        }
        None
    }
}

/// What [`build`] puts in a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec<'a> {
    /// From [`HOST_A`] to [`HOST_B`], or back.
    pub from_b: bool,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: Option<u32>,
    pub payload: &'a [u8],
    pub sack: &'a [(u32, u32)],
}

/// The two hosts of [`build`]'s frames.
pub(crate) const HOST_A: [u8; 4] = [10, 1, 0, 1];
pub(crate) const HOST_B: [u8; 4] = [10, 1, 0, 2];

/// An Ethernet/IPv4/TCP frame between [`HOST_A`] and [`HOST_B`], emitted by
/// smoltcp with complete checksums: the frames of the unit tests and of the
/// fuzz entry's sender.
pub(crate) fn build(s: Spec<'_>) -> Vec<u8> {
    build_with(s, None, 512)
}

/// As [`build`], announcing receive window field `window`, and a SYN (or
/// SYN-ACK, with `s.ack`) with window scale option `syn_shift` if given.
pub(crate) fn build_with(s: Spec<'_>, syn_shift: Option<u8>, window: u16) -> Vec<u8> {
    use smoltcp::{
        phy::ChecksumCapabilities,
        wire::{IpAddress, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber},
    };
    let (a, b) = (Ipv4Address::from(HOST_A), Ipv4Address::from(HOST_B));
    let (src, dst) = if s.from_b { (b, a) } else { (a, b) };
    let mut sack_ranges = [None; 3];
    for (slot, &r) in sack_ranges.iter_mut().zip(s.sack) {
        *slot = Some(r);
    }
    let tcp = TcpRepr {
        src_port: s.sport,
        dst_port: s.dport,
        control: match (syn_shift, s.payload.is_empty()) {
            (Some(_), _) => TcpControl::Syn,
            (None, true) => TcpControl::None,
            (None, false) => TcpControl::Psh,
        },
        seq_number: TcpSeqNumber(s.seq as i32),
        ack_number: s.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: window,
        window_scale: syn_shift,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges,
        timestamp: None,
        payload: s.payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(&mut t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps);
    f
}

/// `a` is after `b` in sequence space (RFC 9293 modular comparison).
pub(crate) fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use smoltcp::wire::{IpProtocol, checksum};
    use xsock_nic::offload::finish_checksum;

    use super::*;

    #[test]
    fn random_bytes_never_panic_and_sequence_order_wraps() {
        let mut x = 0x853c_49e6_748f_ea9bu64;
        let mut f = [0u8; 120];
        for _ in 0..20_000 {
            for b in f.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f[12] = 0x08;
            f[13] = 0x00;
            f[23] = 6;
            let cut = (x % 121) as usize;
            let _ = Segment::parse(&f[..cut]);
            let _ = finish_checksum(&mut f[..cut]);
        }
        assert!(after(5, u32::MAX - 5));
        assert!(!after(u32::MAX - 5, 5));
        assert!(!after(7, 7));
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        build(Spec { from_b: false, sport: 40000, dport: 7601, seq: 7, ack: Some(9), payload, sack: &[] })
    }

    /// What a peer may put in a frame, read as smoltcp reads it.
    #[test]
    fn lying_lengths_fragments_padding_and_odd_sack_options() {
        let seg = |f: &[u8]| Segment::parse(f).map(|s| (s.seq, s.len, s.sack_ranges().collect::<Vec<_>>()));
        let data = frame(&[7; 100]);
        assert_eq!(seg(&data), Some((7, 100, vec![])));
        // Ethernet padding after the IPv4 total length is not payload.
        let mut padded = data.clone();
        padded.extend_from_slice(&[0; 30]);
        assert_eq!(seg(&padded), Some((7, 100, vec![])));
        // An IPv4 total length longer than the frame, or shorter than the headers.
        for total in [20 + 20 + 101u16, 20 + 19] {
            let mut lie = data.clone();
            lie[16..18].copy_from_slice(&total.to_be_bytes());
            assert_eq!(seg(&lie), None, "total length {total}");
        }
        // A fragment (more fragments, or an offset) carries no TCP header to trust.
        for flags in [[0x20, 0x00], [0x00, 0x10]] {
            let mut frag = data.clone();
            frag[20..22].copy_from_slice(&flags);
            assert_eq!(seg(&frag), None);
        }
        // IPv6 in an IPv4 EtherType, UDP, a TCP data offset past the end.
        for (at, byte) in [(14, 0x65), (23, 17), (46, 0xf0)] {
            let mut odd = frame(&[7; 10]);
            odd[at] = byte;
            assert_eq!(seg(&odd), None, "byte {at} = {byte:#x}");
        }
        // SACK blocks: three of four kept; an option that overruns gives none.
        let blocks = [(1000, 2000), (3000, 4000), (5000, 6000)];
        let acked =
            build(Spec { from_b: true, sport: 80, dport: 5000, seq: 1, ack: Some(0), payload: &[], sack: &blocks });
        assert_eq!(seg(&acked).unwrap().2, blocks.to_vec());
        let mut four = acked.clone();
        four[55] = 34; // kind 5, length 34: four blocks, the fourth past the header
        assert_eq!(seg(&four).unwrap().2, vec![]);
        let mut overrun = acked.clone();
        overrun[55] = 200;
        assert_eq!(seg(&overrun).unwrap().2, vec![]);
    }

    fn tcp_checksum_ok(f: &[u8]) -> bool {
        use smoltcp::wire::{IpAddress, TcpPacket};
        let t = TcpPacket::new_checked(&f[34..]).unwrap();
        t.verify_checksum(&IpAddress::v4(10, 1, 0, 1), &IpAddress::v4(10, 1, 0, 2))
    }

    /// The offload's finishing, checked by smoltcp's own checksum code.
    #[test]
    fn a_checksum_a_kernel_left_partial_is_finished_as_smoltcp_checks_it() {
        for len in [0usize, 1, 2, 1447, 1448, 65_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let full = frame(&payload);
            assert!(tcp_checksum_ok(&full));
            // What Linux writes with CHECKSUM_PARTIAL: the pseudo-header sum.
            let mut partial = full.clone();
            let ip = |i: usize| Ipv4Addr::new(full[i], full[i + 1], full[i + 2], full[i + 3]);
            let pseudo = checksum::pseudo_header_v4(&ip(26), &ip(30), IpProtocol::Tcp, (full.len() - 34) as u32);
            partial[50..52].copy_from_slice(&pseudo.to_be_bytes());
            assert!(!tcp_checksum_ok(&partial) || partial == full, "len {len}");
            assert!(finish_checksum(&mut partial), "len {len}");
            assert_eq!(partial, full, "len {len}: finished checksum");
            // A complete checksum is not touched.
            let mut again = full.clone();
            finish_checksum(&mut again);
            assert_eq!(again, full);
            // A damaged frame with a complete checksum stays damaged.
            if len > 0 {
                let mut bad = full.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0x40;
                assert!(!finish_checksum(&mut bad));
                assert!(!tcp_checksum_ok(&bad));
            }
            // A frame whose IP length claims more than it holds is left alone.
            let mut cut = partial.clone();
            cut.truncate(cut.len() - 1);
            cut[50..52].copy_from_slice(&pseudo.to_be_bytes());
            assert!(!finish_checksum(&mut cut));
        }
    }
}
