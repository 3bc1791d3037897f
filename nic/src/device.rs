//! The frame-device trait every backend implements, and the types it speaks.

use std::{fmt, io, os::fd::BorrowedFd, time::Duration};

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Whether the group bit is set (broadcast or multicast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address; write six hex bytes like 02:00:00:00:00:01")]
pub struct MacParseError(pub String);

impl std::str::FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// Length of an Ethernet II header (no VLAN tag).
pub const ETH_HEADER_LEN: usize = 14;

/// A received frame, borrowed from the device for the length of a callback.
///
/// Most frames are one contiguous buffer. A multi-buffer (jumbo) frame on
/// AF_XDP arrives as several UMEM chunks: [`RxFrame::head`] is the first
/// (it always holds the Ethernet header and, in practice, the headers above
/// it), and [`RxFrame::segments`] walks all of them without copying.
#[derive(Clone, Copy)]
pub struct RxFrame<'a> {
    head: &'a [u8],
    rest: &'a [&'a [u8]],
    len: usize,
}

impl<'a> RxFrame<'a> {
    /// A frame in one buffer.
    pub fn contiguous(data: &'a [u8]) -> Self {
        Self { head: data, rest: &[], len: data.len() }
    }

    /// A frame in several buffers, `head` first.
    pub fn segmented(head: &'a [u8], rest: &'a [&'a [u8]]) -> Self {
        let len = head.len() + rest.iter().map(|s| s.len()).sum::<usize>();
        Self { head, rest, len }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first buffer of the frame.
    pub fn head(&self) -> &'a [u8] {
        self.head
    }

    /// The whole frame when it is one buffer.
    pub fn as_contiguous(&self) -> Option<&'a [u8]> {
        self.rest.is_empty().then_some(self.head)
    }

    /// The frame's buffers, in order.
    pub fn segments(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        std::iter::once(self.head).chain(self.rest.iter().copied())
    }

    /// The EtherType, if the frame holds a whole Ethernet header.
    pub fn ethertype(&self) -> Option<u16> {
        self.head.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`. Returns
    /// false (and copies nothing) if the frame is too short.
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) -> bool {
        if offset.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        let mut skip = offset;
        let mut written = 0;
        for seg in self.segments() {
            if written == dst.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let take = (seg.len() - skip).min(dst.len() - written);
            dst[written..written + take].copy_from_slice(&seg[skip..skip + take]);
            written += take;
            skip = 0;
        }
        true
    }

    /// The whole frame, copied into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.copy_out(0, &mut v);
        v
    }
}

impl fmt::Debug for RxFrame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxFrame").field("len", &self.len).field("segments", &(1 + self.rest.len())).finish()
    }
}

/// Why a frame could not be queued for transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// No free transmit buffer right now; completions will free some. Flush,
    /// poll, and try again.
    #[error("transmit ring full; flush and retry after the device has drained")]
    RingFull,
    /// The frame is longer than the device can carry.
    #[error("frame of {len} bytes exceeds the device's largest frame of {max} bytes")]
    TooLong {
        /// Requested length.
        len: usize,
        /// Largest frame the device can send.
        max: usize,
    },
}

/// Where frames are transmitted. Frames are built in place: the sink lends
/// its buffer to `fill`, so nothing is assembled and then copied (except on
/// multi-buffer AF_XDP, where a frame longer than one chunk is scattered).
pub trait FrameSink {
    /// Queues one frame built by `fill` in a buffer of `max_len` bytes;
    /// `fill` returns how many of them make the frame (0 = send nothing, the
    /// buffer goes back). Returns that length. `fill` is not called when
    /// there is no buffer ([`TxError::RingFull`]). Queued frames leave at the
    /// next [`FrameSink::flush`] at the latest.
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError>;

    /// Queues one frame of exactly `len` bytes, written by `fill`.
    fn transmit(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), TxError> {
        self.transmit_with(len, &mut |buf| {
            fill(&mut buf[..len]);
            len
        })
        .map(|_| ())
    }

    /// Hands queued frames to the hardware (or the peer) and reclaims
    /// completed buffers. Call after a batch of `transmit`s.
    fn flush(&mut self) -> io::Result<()>;

    /// Frames that can be queued before [`TxError::RingFull`], at least.
    fn tx_space(&self) -> usize;
}

/// Static facts about an open device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Interface name (or the in-memory port's name).
    pub name: String,
    /// Interface index (0 for in-memory ports).
    pub ifindex: u32,
    /// Receive/transmit queue this device is bound to.
    pub queue: u32,
    /// Our MAC address on the link.
    pub mac: MacAddr,
    /// Interface MTU (IP payload bytes per frame).
    pub mtu: u32,
    /// Largest frame (Ethernet header included) this device can send and receive.
    pub max_frame: usize,
    /// Which backend, and in what mode.
    pub backend: Backend,
}

/// The backend behind a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// AF_XDP.
    AfXdp {
        /// Zero-copy (driver DMA into UMEM) or copy mode.
        zero_copy: bool,
        /// XDP program attached in native (driver) mode, else generic (skb).
        native: bool,
        /// Multi-buffer (XDP_USE_SG) frames enabled.
        multi_buffer: bool,
    },
    /// AF_PACKET through pnet's datalink.
    AfPacket,
    /// The in-memory wire or switch.
    Memory,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::AfXdp { zero_copy, native, multi_buffer } => write!(
                f,
                "af_xdp ({}, {} XDP{})",
                if *zero_copy { "zero-copy" } else { "copy mode" },
                if *native { "native" } else { "generic" },
                if *multi_buffer { ", multi-buffer" } else { "" }
            ),
            Backend::AfPacket => f.write_str("af_packet"),
            Backend::Memory => f.write_str("memory"),
        }
    }
}

/// Counters a device keeps (and, for AF_XDP, what the kernel reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames transmitted (handed to the kernel or peer).
    pub tx_frames: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Transmit attempts refused because no buffer was free.
    pub tx_ring_full: u64,
    /// Frames the kernel dropped for us (AF_XDP: rx_dropped + rx_ring_full;
    /// memory: queue overflow).
    pub rx_dropped: u64,
    /// Times the kernel found the rx ring full (AF_XDP).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (AF_XDP).
    pub fill_ring_empty: u64,
    /// Invalid descriptors the kernel saw (AF_XDP rx + tx).
    pub invalid_descs: u64,
}

/// A frame device: batch receive, batch transmit, completions, and waiting
/// for readiness.
///
/// Object-safe, so run-time backend choice is a `Box<dyn FrameDevice>`, and
/// wrappers (fault injection, pcap) compose over any backend.
pub trait FrameDevice: Send {
    /// Receives up to `budget` frames, handing each to `on_frame` together
    /// with the device's sink so a handler can answer in place. A frame's
    /// buffer returns to the device when the callback returns.
    /// Returns the number of frames handed over.
    fn receive(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize>;

    /// The transmit side, for sending outside a receive callback.
    fn sink(&mut self) -> &mut dyn FrameSink;

    /// A descriptor that polls readable when frames may be waiting, for
    /// sleeping in poll(2) (together with other fds) when idle.
    fn readiness_fd(&self) -> BorrowedFd<'_>;

    /// Sleeps until a frame may be waiting or `timeout` passes.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let interest = [crate::sys::Interest { fd: self.readiness_fd(), read: true, write: false }];
        crate::sys::poll_fds(&interest, timeout).map(|_| ())
    }

    /// Static facts about the device.
    fn info(&self) -> &DeviceInfo;

    /// Counters so far.
    fn stats(&self) -> DeviceStats;

    /// The XDP filter that decides which IPv4 traffic reaches this device
    /// instead of the kernel (AF_XDP only). `None` where there is no kernel
    /// to share the interface with (in-memory ports) or no way to take IPv4
    /// away from it (AF_PACKET sees copies; the kernel answers too).
    fn ipv4_filter(&self) -> Option<std::sync::Arc<crate::xdp::XdpFilter>> {
        None
    }
}

impl<D: FrameDevice + ?Sized> FrameDevice for Box<D> {
    fn ipv4_filter(&self) -> Option<std::sync::Arc<crate::xdp::XdpFilter>> {
        (**self).ipv4_filter()
    }

    fn receive(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize> {
        (**self).receive(budget, on_frame)
    }
    fn sink(&mut self) -> &mut dyn FrameSink {
        (**self).sink()
    }
    fn readiness_fd(&self) -> BorrowedFd<'_> {
        (**self).readiness_fd()
    }
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).wait(timeout)
    }
    fn info(&self) -> &DeviceInfo {
        (**self).info()
    }
    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_junk() {
        let m: MacAddr = "02:00:0a:ff:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        assert_eq!("02-00-0a-ff-00-01".parse::<MacAddr>().unwrap(), m);
        for bad in ["", "02:00", "02:00:0a:ff:00:01:02", "zz:00:00:00:00:00", "020:0:0:0:0:0"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segmented_copy_out_crosses_boundaries() {
        let a = [0u8, 1, 2];
        let b = [3u8, 4];
        let c = [5u8, 6, 7, 8];
        let rest: [&[u8]; 2] = [&b, &c];
        let f = RxFrame::segmented(&a, &rest);
        assert_eq!(f.len(), 9);
        assert_eq!(f.to_vec(), (0..9).collect::<Vec<u8>>());
        let mut d = [0u8; 4];
        assert!(f.copy_out(2, &mut d));
        assert_eq!(d, [2, 3, 4, 5]);
        assert!(!f.copy_out(6, &mut d), "reads past the end are refused");
        assert!(!f.copy_out(usize::MAX, &mut d), "offset overflow is refused");
        assert!(f.as_contiguous().is_none());
    }
}
