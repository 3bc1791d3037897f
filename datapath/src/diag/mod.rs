//! xsock's diagnostic protocol on the Local Experimental EtherType 2: raw
//! frame ping-pong ([`ping`]) and one-way blast ([`blast`]) that measure the
//! datapath itself, with no transport above it.
//!
//! Wire format (after the 14-byte Ethernet header), big-endian:
//!
//! ```text
//!  0       1       2       4               12              20              28
//! +-------+-------+-------+---------------+---------------+---------------+-----------
//! | kind  | flags | rsvd  |      seq      |     value     |     extra     | padding…
//! +-------+-------+-------+---------------+---------------+---------------+-----------
//! ```
//!
//! `kind`: 1 ping, 2 pong, 3 blast, 4 blast-end, 5 blast-report. The
//! meaning of `seq`, `value` and `extra` per kind is documented on [`Kind`].

pub mod blast;
pub mod ping;

/// The EtherType the diagnostic protocol runs on.
pub const ETHERTYPE: u16 = xsock_nic::ETHERTYPE_LOCAL_EXP2;

mod field {
    use std::ops::Range;
    pub const KIND: usize = 0;
    pub const FLAGS: usize = 1;
    pub const SEQ: Range<usize> = 4..12;
    pub const VALUE: Range<usize> = 12..20;
    pub const EXTRA: Range<usize> = 20..28;
}

/// Bytes of diagnostic header after the Ethernet header.
pub const HEADER_LEN: usize = 28;
/// Smallest diagnostic frame, Ethernet header included.
pub const MIN_FRAME: usize = xsock_nic::ETH_HEADER_LEN + HEADER_LEN;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Echo request: `seq` = sequence number.
    Ping = 1,
    /// Echo reply: the request with only the kind changed.
    Pong = 2,
    /// Blast data: `seq` = frame number, `extra` = run id.
    Blast = 3,
    /// End of a blast: `seq` = frames sent, `value` = bytes sent, `extra` = run id.
    BlastEnd = 4,
    /// Receiver's tally: `seq` = frames, `value` = bytes, `extra` = run id,
    /// and the 8 bytes after the header = nanoseconds from first to last frame.
    BlastReport = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Ping,
            2 => Kind::Pong,
            3 => Kind::Blast,
            4 => Kind::BlastEnd,
            5 => Kind::BlastReport,
            _ => return None,
        })
    }
}

/// Why a diagnostic packet did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the header.
    #[error("diagnostic packet of {0} bytes is shorter than its 28-byte header")]
    Truncated(usize),
    /// Unknown kind byte.
    #[error("unknown diagnostic kind {0}")]
    UnknownKind(u8),
}

/// A diagnostic packet (the bytes after the Ethernet header), as a zero-copy
/// view. No accessor panics after [`DiagPacket::new_checked`].
#[derive(Debug, Clone, Copy)]
pub struct DiagPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DiagPacket<T> {
    /// Wraps `buffer` without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN { Err(ParseError::Truncated(len)) } else { Ok(()) }
    }

    fn u64_at(&self, r: std::ops::Range<usize>) -> u64 {
        u64::from_be_bytes(self.buffer.as_ref()[r].try_into().expect("eight bytes"))
    }

    /// The kind byte, raw.
    pub fn kind_raw(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// The kind, if known.
    pub fn kind(&self) -> Result<Kind, ParseError> {
        Kind::from_u8(self.kind_raw()).ok_or(ParseError::UnknownKind(self.kind_raw()))
    }

    /// Flags (none defined; sent as zero).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The `seq` field.
    pub fn seq(&self) -> u64 {
        self.u64_at(field::SEQ)
    }

    /// The `value` field.
    pub fn value(&self) -> u64 {
        self.u64_at(field::VALUE)
    }

    /// The `extra` field.
    pub fn extra(&self) -> u64 {
        self.u64_at(field::EXTRA)
    }

    /// Bytes after the header.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DiagPacket<T> {
    /// Sets the kind.
    pub fn set_kind(&mut self, k: Kind) {
        self.buffer.as_mut()[field::KIND] = k as u8;
    }

    /// Bytes after the header, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A parsed diagnostic header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagRepr {
    /// Message kind.
    pub kind: Kind,
    /// `seq` field.
    pub seq: u64,
    /// `value` field.
    pub value: u64,
    /// `extra` field.
    pub extra: u64,
}

impl DiagRepr {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &DiagPacket<T>) -> Result<Self, ParseError> {
        Ok(Self { kind: p.kind()?, seq: p.seq(), value: p.value(), extra: p.extra() })
    }

    /// Header bytes [`DiagRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into a packet of at least [`HEADER_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut DiagPacket<T>) {
        let b = p.buffer.as_mut();
        b[field::KIND] = self.kind as u8;
        b[field::FLAGS] = 0;
        b[2..4].fill(0);
        b[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        b[field::VALUE].copy_from_slice(&self.value.to_be_bytes());
        b[field::EXTRA].copy_from_slice(&self.extra.to_be_bytes());
    }
}

/// Writes a whole diagnostic frame header (Ethernet + diagnostic) into `buf`.
pub(crate) fn emit_frame(buf: &mut [u8], dst: xsock_nic::MacAddr, src: xsock_nic::MacAddr, repr: &DiagRepr) {
    let mut eth = xsock_nic::wire::EthernetFrame::new_unchecked(&mut *buf);
    eth.emit_header(dst, src, ETHERTYPE);
    repr.emit(&mut DiagPacket::new_unchecked(eth.payload_mut()));
}

/// Parses a received frame's Ethernet and diagnostic headers.
pub(crate) fn parse_frame(head: &[u8]) -> Option<(xsock_nic::MacAddr, DiagRepr)> {
    let eth = xsock_nic::wire::EthernetFrame::new_checked(head).ok()?;
    let p = DiagPacket::new_checked(eth.payload()).ok()?;
    Some((eth.src(), DiagRepr::parse(&p).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repr_round_trips() {
        let r = DiagRepr { kind: Kind::BlastEnd, seq: 1 << 40, value: 7, extra: u64::MAX };
        let mut buf = [0xffu8; 40];
        let mut p = DiagPacket::new_checked(&mut buf[..]).unwrap();
        r.emit(&mut p);
        let p = DiagPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(DiagRepr::parse(&p).unwrap(), r);
        assert_eq!(p.flags(), 0);
        assert_eq!(p.body().len(), 12);
    }

    #[test]
    fn junk_is_an_error() {
        assert_eq!(DiagPacket::new_checked(&[0u8; 27][..]).unwrap_err(), ParseError::Truncated(27));
        let p = DiagPacket::new_checked([9u8; 28]).unwrap();
        assert_eq!(DiagRepr::parse(&p).unwrap_err(), ParseError::UnknownKind(9));
    }

    proptest! {
        /// No input makes the frame parser panic.
        #[test]
        fn parse_frame_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_frame(&bytes);
        }
    }
}
