//! The TCP segment of an IPv4 Ethernet frame, read once per frame for the
//! TCP mode's own bookkeeping beside smoltcp ([`super::flows`] and
//! [`super::sack`] both look at every frame in and out).

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
    /// Payload bytes.
    pub len: u32,
    /// The TCP options.
    pub options: &'f [u8],
}

impl<'f> Segment<'f> {
    /// Reads `f`, if it is an IPv4/TCP frame whose headers fit in it
    /// (nothing here panics, whatever the bytes).
    pub fn parse(f: &'f [u8]) -> Option<Segment<'f>> {
        if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
            return None;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let t = 14 + ihl;
        if ihl < 20 || f.len() < t + 20 {
            return None;
        }
        let doff = usize::from(f[t + 12] >> 4) * 4;
        if doff < 20 || f.len() < t + doff {
            return None;
        }
        let be32 = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        Some(Segment {
            frame: f,
            src: [f[26], f[27], f[28], f[29]],
            dst: [f[30], f[31], f[32], f[33]],
            sport: u16::from_be_bytes([f[t], f[t + 1]]),
            dport: u16::from_be_bytes([f[t + 2], f[t + 3]]),
            seq: be32(t + 4),
            ack: be32(t + 8),
            ack_flag: f[t + 13] & 0x10 != 0,
            len: total.saturating_sub(ihl + doff) as u32,
            options: &f[t + 20..t + doff],
        })
    }
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

    /// An Ethernet/IPv4/TCP frame with `payload`, its checksums complete.
    fn frame(payload: &[u8]) -> Vec<u8> {
        use smoltcp::{
            phy::ChecksumCapabilities,
            wire::{IpAddress, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber},
        };
        let (src, dst) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 7601,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(7),
            ack_number: Some(TcpSeqNumber(9)),
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
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
