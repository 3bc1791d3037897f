//! The Ethernet II header, as a zero-copy view over a buffer.
//!
//! Follows smoltcp's wire conventions: `new_checked` validates the length
//! once, after which no accessor panics.

use crate::device::{ETH_HEADER_LEN, MacAddr};

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// The buffer is shorter than an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {0} bytes is shorter than an Ethernet header (14)")]
pub struct Truncated(pub usize);

/// An Ethernet II frame over a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole header; after this no
    /// accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), Truncated> {
        let len = self.buffer.as_ref().len();
        if len < ETH_HEADER_LEN { Err(Truncated(len)) } else { Ok(()) }
    }

    /// Destination address.
    pub fn dst(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::DST].try_into().expect("six bytes"))
    }

    /// Source address.
    pub fn src(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::SRC].try_into().expect("six bytes"))
    }

    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    /// Sets the source address.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }

    /// Bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }

    /// Writes a whole header.
    pub fn emit_header(&mut self, dst: MacAddr, src: MacAddr, ethertype: u16) {
        self.set_dst(dst);
        self.set_src(src);
        self.set_ethertype(ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut buf = [0u8; 20];
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        f.emit_header(MacAddr([1, 2, 3, 4, 5, 6]), MacAddr([7, 8, 9, 10, 11, 12]), 0x88b6);
        f.payload_mut()[0] = 0xee;
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.dst(), MacAddr([1, 2, 3, 4, 5, 6]));
        assert_eq!(f.src(), MacAddr([7, 8, 9, 10, 11, 12]));
        assert_eq!(f.ethertype(), 0x88b6);
        assert_eq!(f.payload(), &[0xee, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn short_buffers_are_refused() {
        assert_eq!(EthernetFrame::new_checked(&[0u8; 13][..]).unwrap_err(), Truncated(13));
        assert!(EthernetFrame::new_checked(&[0u8; 14][..]).is_ok());
    }
}
