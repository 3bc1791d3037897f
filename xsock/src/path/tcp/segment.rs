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
        }
        assert!(after(5, u32::MAX - 5));
        assert!(!after(u32::MAX - 5, 5));
        assert!(!after(7, 7));
    }
}
