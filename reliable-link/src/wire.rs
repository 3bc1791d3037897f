//! The reliable-link wire format, version 2, as zero-copy views
//! ([`Packet`]) and parsed representations ([`Repr`]).
//!
//! Frames travel on the IEEE 802 Local Experimental EtherType 1 (0x88B5).
//! After the Ethernet header, every frame starts with this 40-byte header
//! (big-endian):
//!
//! ```text
//!  0        1        2        3        4                                12
//! +--------+--------+--------+--------+--------------------------------+
//! |version |  kind  | flags  | epoch  |        dst_cid (u64)           |
//! +--------+--------+--------+--------+--------------------------------+
//! 12                               20                               28
//! +--------------------------------+--------------------------------+
//! |            seq (u64)           |            ack (u64)           |
//! +--------------------------------+--------------------------------+
//! 28                               36       38       40
//! +--------------------------------+--------+--------+----------------
//! |           limit (u64)          |len(u16)|seen|rs | body / payload
//! +--------------------------------+--------+--------+----------------
//! ```
//!
//! - `dst_cid`: the receiver's connection id (0 in SYN and discovery frames).
//! - `seq`: for DATA, the stream offset of the first payload byte; for FIN,
//!   the final stream length; for NAK, the end of the hole it asks for
//!   (`ack` is its start; the NAK's sender holds the bytes from `seq` on,
//!   and 0 says it holds nothing beyond the hole: send everything from
//!   `ack` again); for a CREDIT with [`FLAG_SHRINK_ACK`], the limit the
//!   sender keeps to; otherwise 0.
//! - `ack`, `limit`: the sender's receive state for the reverse direction,
//!   carried in every connection frame: all bytes below `ack` arrived in
//!   order, and the peer may send bytes below `limit` (the credit).
//! - `len`: bytes of body or payload after the header (frames may be padded
//!   by the NIC to the Ethernet minimum; padding is ignored).
//! - `epoch`: how many times the sender has shrunk its receive window
//!   ([`FLAG_SHRINK`], mod 256); `seen` (byte 38): the peer's epoch the
//!   sender last took. A limit from an older epoch than the last shrink
//!   taken is stale and not used (it may have been overtaken), and a
//!   [`FLAG_SHRINK_ACK`] confirms the shrink of the epoch in `seen` only.
//!
//! Bodies of the control kinds are fixed-size and documented on each
//! `*Body` type. A receiver drops frames of any other version.
//!
//! No accessor panics on a packet that passed [`Packet::new_checked`].

use std::net::Ipv4Addr;

/// EtherType of reliable-link frames (IEEE 802 Local Experimental 1).
pub const ETHERTYPE: u16 = 0x88B5;
/// The wire version this crate speaks (2: SYN and SYN-ACK carry the
/// endpoint's instance id; KEEPALIVE kinds).
pub const VERSION: u8 = 2;
/// Bytes of the common header.
pub const HEADER_LEN: usize = 40;
/// The smallest DATA payload a node may say it can receive (an IPv4
/// minimum MTU's worth less headers): a smaller one is refused as malformed,
/// so nobody can make a peer send its stream in 1-byte frames.
pub const MIN_PAYLOAD: u16 = 512;

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const KIND: usize = 1;
    pub const FLAGS: usize = 2;
    pub const DST_CID: Range<usize> = 4..12;
    pub const SEQ: Range<usize> = 12..20;
    pub const ACK: Range<usize> = 20..28;
    pub const LIMIT: Range<usize> = 28..36;
    pub const LEN: Range<usize> = 36..38;
    pub const EPOCH: usize = 3;
    pub const EPOCH_SEEN: usize = 38;
}

/// Flag of a DATA frame: its last byte ends a message.
pub const FLAG_END: u8 = 0x01;
/// Flag of a CREDIT frame: the sender has received the peer's FIN.
pub const FLAG_FIN_SEEN: u8 = 0x02;
/// Flag of a DATA frame: it used the last byte of credit and the sender has
/// more waiting (the window, not the data, is what holds it back: the
/// receiver grows the window if its reader keeps up).
pub const FLAG_BLOCKED: u8 = 0x10;
/// Flag of a CREDIT frame: its `limit` replaces the one the peer had, even
/// if lower (the receiver withdraws credit from an idle connection; a peer
/// keeps a lower limit for no other frame).
pub const FLAG_SHRINK: u8 = 0x20;
/// Flag of a CREDIT frame: it confirms a [`FLAG_SHRINK`]; `seq` is the
/// limit the sender now keeps to (the new one, or what it had already sent).
pub const FLAG_SHRINK_ACK: u8 = 0x40;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Open a connection ([`SynBody`]).
    Syn = 1,
    /// Accept a connection ([`SynAckBody`]).
    SynAck = 2,
    /// Stream bytes (payload).
    Data = 3,
    /// Receive state only: acknowledgement and credit.
    Credit = 4,
    /// A gap: "resend from `ack`" (go-back-N).
    Nak = 5,
    /// "Tell me your receive state" (rare path: no progress for a while).
    Probe = 6,
    /// No more data: the stream's length is `seq`.
    Fin = 7,
    /// Abort ([`RstBody`]).
    Rst = 8,
    /// "Who runs xsock at this IPv4 address?" (broadcast, [`DiscoverBody`]).
    Discover = 9,
    /// "I do" ([`DiscoverReplyBody`]).
    DiscoverReply = 10,
    /// "Are you still there?" to a peer node, not a connection
    /// ([`KeepaliveBody`]): one per idle peer, however many connections.
    Keepalive = 11,
    /// "I am" ([`KeepaliveBody`]).
    KeepaliveReply = 12,
}

impl Kind {
    /// The kind for a byte, if defined.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Syn,
            2 => Kind::SynAck,
            3 => Kind::Data,
            4 => Kind::Credit,
            5 => Kind::Nak,
            6 => Kind::Probe,
            7 => Kind::Fin,
            8 => Kind::Rst,
            9 => Kind::Discover,
            10 => Kind::DiscoverReply,
            11 => Kind::Keepalive,
            12 => Kind::KeepaliveReply,
            _ => return None,
        })
    }

    /// Bytes of fixed body this kind carries (DATA carries a payload instead).
    pub fn body_len(self) -> usize {
        match self {
            Kind::Syn => SynBody::LEN,
            Kind::SynAck => SynAckBody::LEN,
            Kind::Rst => RstBody::LEN,
            Kind::Discover => DiscoverBody::LEN,
            Kind::DiscoverReply => DiscoverReplyBody::LEN,
            Kind::Keepalive | Kind::KeepaliveReply => KeepaliveBody::LEN,
            Kind::Data | Kind::Credit | Kind::Nak | Kind::Probe | Kind::Fin => 0,
        }
    }
}

/// Why a frame did not parse. Never the peer's problem to hear about: the
/// frame is dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the header, or than the header's `len` says.
    #[error("frame truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes required.
        need: usize,
    },
    /// A version this implementation does not speak.
    #[error("unsupported reliable-link version {0}")]
    Version(u8),
    /// An undefined kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A control frame whose body has the wrong length.
    #[error("{kind:?} body of {len} bytes, expected {expected}")]
    BodyLength {
        /// The frame's kind.
        kind: Kind,
        /// Its `len` field.
        len: usize,
        /// What the kind requires.
        expected: usize,
    },
    /// A field holds a value the protocol forbids.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// A reliable-link frame (the bytes after the Ethernet header).
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer holds the header and the `len` bytes it announces.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let have = self.buffer.as_ref().len();
        if have < HEADER_LEN {
            return Err(ParseError::Truncated { have, need: HEADER_LEN });
        }
        let need = HEADER_LEN + self.len() as usize;
        if have < need {
            return Err(ParseError::Truncated { have, need });
        }
        Ok(())
    }

    fn u64_at(&self, r: std::ops::Range<usize>) -> u64 {
        u64::from_be_bytes(self.buffer.as_ref()[r].try_into().expect("eight bytes"))
    }

    /// Version byte.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// Kind byte, raw.
    pub fn kind_raw(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// Flags.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The sender's window epoch.
    pub fn epoch(&self) -> u8 {
        self.buffer.as_ref()[field::EPOCH]
    }

    /// The receiver's window epoch as the sender last took it.
    pub fn epoch_seen(&self) -> u8 {
        self.buffer.as_ref()[field::EPOCH_SEEN]
    }

    /// Receiver's connection id.
    pub fn dst_cid(&self) -> u64 {
        self.u64_at(field::DST_CID)
    }

    /// Stream offset (DATA) or final length (FIN).
    pub fn seq(&self) -> u64 {
        self.u64_at(field::SEQ)
    }

    /// Bytes of the reverse direction received in order.
    pub fn ack(&self) -> u64 {
        self.u64_at(field::ACK)
    }

    /// Credit for the reverse direction: the peer may send bytes below this.
    pub fn limit(&self) -> u64 {
        self.u64_at(field::LIMIT)
    }

    /// Bytes of body or payload after the header.
    pub fn len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Whether no body or payload follows the header.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body or payload (`len` bytes; any NIC padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put_u64(&mut self, r: std::ops::Range<usize>, v: u64) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the `len` field.
    pub fn set_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// The body or payload area, writable (everything after the header; the
    /// caller sets `len` to what it wrote).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// Body of SYN (32 bytes): the initiator's id and the addressing of the
/// connection.
///
/// `0..8` src_cid · `8..12` dst_ip · `12..16` src_ip · `16..18` dst_port ·
/// `18..20` src_port · `20` mode · `21` rsvd · `22..24` max_payload ·
/// `24..32` instance
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynBody {
    /// The initiator's connection id (the responder addresses it with this).
    pub src_cid: u64,
    /// Address the initiator wants to reach.
    pub dst_ip: Ipv4Addr,
    /// The initiator's address.
    pub src_ip: Ipv4Addr,
    /// Port the initiator wants to reach.
    pub dst_port: u16,
    /// The initiator's port.
    pub src_port: u16,
    /// Stream (0) or message (1) semantics.
    pub mode: u8,
    /// Largest DATA payload the initiator can receive.
    pub max_payload: u16,
    /// The initiator's endpoint instance (random per runtime): a peer that
    /// answers with another one has restarted.
    pub instance: u64,
}

impl SynBody {
    /// Body length.
    pub const LEN: usize = 32;

    fn parse(b: &[u8]) -> Self {
        Self {
            src_cid: u64::from_be_bytes(b[0..8].try_into().expect("8")),
            dst_ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
            src_ip: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
            dst_port: u16::from_be_bytes([b[16], b[17]]),
            src_port: u16::from_be_bytes([b[18], b[19]]),
            mode: b[20],
            max_payload: u16::from_be_bytes([b[22], b[23]]),
            instance: u64::from_be_bytes(b[24..32].try_into().expect("8")),
        }
    }

    fn emit(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.src_cid.to_be_bytes());
        b[8..12].copy_from_slice(&self.dst_ip.octets());
        b[12..16].copy_from_slice(&self.src_ip.octets());
        b[16..18].copy_from_slice(&self.dst_port.to_be_bytes());
        b[18..20].copy_from_slice(&self.src_port.to_be_bytes());
        b[20] = self.mode;
        b[21] = 0;
        b[22..24].copy_from_slice(&self.max_payload.to_be_bytes());
        b[24..32].copy_from_slice(&self.instance.to_be_bytes());
    }
}

/// Body of SYN-ACK (20 bytes): `0..8` src_cid · `8..10` max_payload ·
/// `10` mode · `11` rsvd · `12..20` instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynAckBody {
    /// The responder's connection id.
    pub src_cid: u64,
    /// Largest DATA payload the responder can receive.
    pub max_payload: u16,
    /// The mode the responder accepted.
    pub mode: u8,
    /// The responder's endpoint instance.
    pub instance: u64,
}

impl SynAckBody {
    /// Body length.
    pub const LEN: usize = 20;

    fn parse(b: &[u8]) -> Self {
        Self {
            src_cid: u64::from_be_bytes(b[0..8].try_into().expect("8")),
            max_payload: u16::from_be_bytes([b[8], b[9]]),
            mode: b[10],
            instance: u64::from_be_bytes(b[12..20].try_into().expect("8")),
        }
    }

    fn emit(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.src_cid.to_be_bytes());
        b[8..10].copy_from_slice(&self.max_payload.to_be_bytes());
        b[10] = self.mode;
        b[11] = 0;
        b[12..20].copy_from_slice(&self.instance.to_be_bytes());
    }
}

/// Body of KEEPALIVE and KEEPALIVE-REPLY (8 bytes): `0..8` the sender's
/// endpoint instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveBody {
    /// The sender's endpoint instance.
    pub instance: u64,
}

impl KeepaliveBody {
    /// Body length.
    pub const LEN: usize = 8;
}

/// Why a connection was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RstReason {
    /// Nobody listens on the port (the SYN's answer).
    Refused = 1,
    /// The application aborted the connection.
    Aborted = 2,
    /// The frame named a connection the receiver does not have.
    Unknown = 3,
    /// The peer broke the protocol (credit overrun, mode mismatch, ...).
    Protocol = 4,
    /// The peer gave up waiting for us.
    TimedOut = 5,
    /// The peer is a relay that lost the path to the far end (a relay or
    /// relay link on the way went down).
    PathLost = 6,
    /// The peer has no memory for another connection (its memory limit).
    Overloaded = 7,
    /// The peer is a host engine whose application process went away
    /// (killed or crashed) while the connection was open.
    ProcessGone = 8,
}

impl RstReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Refused,
            2 => Self::Aborted,
            3 => Self::Unknown,
            4 => Self::Protocol,
            5 => Self::TimedOut,
            6 => Self::PathLost,
            7 => Self::Overloaded,
            8 => Self::ProcessGone,
            _ => return None,
        })
    }
}

/// Body of RST (4 bytes): `0` reason · `1..4` rsvd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RstBody {
    /// Why.
    pub reason: RstReason,
}

impl RstBody {
    /// Body length.
    pub const LEN: usize = 4;
}

/// Body of DISCOVER (8 bytes): `0..4` target_ip · `4..8` sender_ip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoverBody {
    /// The address being looked for.
    pub target_ip: Ipv4Addr,
    /// The asker's address (the answer goes to the frame's source MAC).
    pub sender_ip: Ipv4Addr,
}

impl DiscoverBody {
    /// Body length.
    pub const LEN: usize = 8;
}

/// Body of DISCOVER-REPLY (8 bytes): `0..4` ip · `4..6` max_payload ·
/// `6..8` rsvd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoverReplyBody {
    /// The address the replier answers for.
    pub ip: Ipv4Addr,
    /// Largest DATA payload the replier can receive.
    pub max_payload: u16,
}

impl DiscoverReplyBody {
    /// Body length.
    pub const LEN: usize = 8;
}

/// The parsed body of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// SYN.
    Syn(SynBody),
    /// SYN-ACK.
    SynAck(SynAckBody),
    /// DATA, with this many payload bytes.
    Data {
        /// Payload length.
        len: u16,
    },
    /// CREDIT.
    Credit,
    /// NAK.
    Nak,
    /// PROBE.
    Probe,
    /// FIN.
    Fin,
    /// RST.
    Rst(RstBody),
    /// DISCOVER.
    Discover(DiscoverBody),
    /// DISCOVER-REPLY.
    DiscoverReply(DiscoverReplyBody),
    /// KEEPALIVE.
    Keepalive(KeepaliveBody),
    /// KEEPALIVE-REPLY.
    KeepaliveReply(KeepaliveBody),
}

/// A parsed frame header and body (a DATA payload stays in the packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Flags.
    pub flags: u8,
    /// The sender's window epoch (0 outside connections).
    pub epoch: u8,
    /// The receiver's window epoch the sender last took.
    pub epoch_seen: u8,
    /// Receiver's connection id.
    pub dst_cid: u64,
    /// Stream offset (DATA) or final length (FIN).
    pub seq: u64,
    /// Reverse-direction bytes received in order.
    pub ack: u64,
    /// Reverse-direction credit.
    pub limit: u64,
    /// Kind-specific body.
    pub body: Body,
}

impl Repr {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Syn(_) => Kind::Syn,
            Body::SynAck(_) => Kind::SynAck,
            Body::Data { .. } => Kind::Data,
            Body::Credit => Kind::Credit,
            Body::Nak => Kind::Nak,
            Body::Probe => Kind::Probe,
            Body::Fin => Kind::Fin,
            Body::Rst(_) => Kind::Rst,
            Body::Discover(_) => Kind::Discover,
            Body::DiscoverReply(_) => Kind::DiscoverReply,
            Body::Keepalive(_) => Kind::Keepalive,
            Body::KeepaliveReply(_) => Kind::KeepaliveReply,
        }
    }

    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, ParseError> {
        if p.version() != VERSION {
            return Err(ParseError::Version(p.version()));
        }
        let kind = Kind::from_u8(p.kind_raw()).ok_or(ParseError::UnknownKind(p.kind_raw()))?;
        let len = p.len() as usize;
        if kind != Kind::Data && len != kind.body_len() {
            return Err(ParseError::BodyLength { kind, len, expected: kind.body_len() });
        }
        let b = p.payload();
        let body = match kind {
            Kind::Syn => {
                let s = SynBody::parse(b);
                if s.src_cid == 0 {
                    return Err(ParseError::Invalid("SYN with connection id 0"));
                }
                if s.max_payload < MIN_PAYLOAD {
                    return Err(ParseError::Invalid("SYN with a payload size below the minimum"));
                }
                if s.mode > 1 {
                    return Err(ParseError::Invalid("SYN with unknown mode"));
                }
                Body::Syn(s)
            }
            Kind::SynAck => {
                let s = SynAckBody::parse(b);
                if s.src_cid == 0 {
                    return Err(ParseError::Invalid("SYN-ACK with connection id 0"));
                }
                if s.max_payload < MIN_PAYLOAD {
                    return Err(ParseError::Invalid("SYN-ACK with a payload size below the minimum"));
                }
                Body::SynAck(s)
            }
            Kind::Data => {
                if len == 0 {
                    return Err(ParseError::Invalid("empty DATA frame"));
                }
                if p.seq().checked_add(len as u64).is_none() {
                    return Err(ParseError::Invalid("DATA beyond the 64-bit stream"));
                }
                Body::Data { len: len as u16 }
            }
            Kind::Credit => Body::Credit,
            Kind::Nak => Body::Nak,
            Kind::Probe => Body::Probe,
            Kind::Fin => Body::Fin,
            Kind::Rst => Body::Rst(RstBody {
                reason: RstReason::from_u8(b[0]).ok_or(ParseError::Invalid("RST with unknown reason"))?,
            }),
            Kind::Discover => Body::Discover(DiscoverBody {
                target_ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                sender_ip: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
            }),
            Kind::DiscoverReply => {
                let max_payload = u16::from_be_bytes([b[4], b[5]]);
                if max_payload < MIN_PAYLOAD {
                    return Err(ParseError::Invalid("DISCOVER-REPLY with a payload size below the minimum"));
                }
                Body::DiscoverReply(DiscoverReplyBody { ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]), max_payload })
            }
            Kind::Keepalive | Kind::KeepaliveReply => {
                let k = KeepaliveBody { instance: u64::from_be_bytes(b[0..8].try_into().expect("8")) };
                if kind == Kind::Keepalive { Body::Keepalive(k) } else { Body::KeepaliveReply(k) }
            }
        };
        let node_frame =
            matches!(kind, Kind::Syn | Kind::Discover | Kind::DiscoverReply | Kind::Keepalive | Kind::KeepaliveReply);
        if !node_frame && p.dst_cid() == 0 {
            return Err(ParseError::Invalid("connection frame with connection id 0"));
        }
        Ok(Repr {
            flags: p.flags(),
            epoch: p.epoch(),
            epoch_seen: p.epoch_seen(),
            dst_cid: p.dst_cid(),
            seq: p.seq(),
            ack: p.ack(),
            limit: p.limit(),
            body,
        })
    }

    /// Bytes [`Repr::emit`] writes (header and body; a DATA payload is
    /// written by the caller after the header).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self.body {
                Body::Data { len } => len as usize,
                _ => self.kind().body_len(),
            }
    }

    /// Writes header and body into `p` (at least [`Repr::buffer_len`] bytes).
    /// For DATA it sets `len` but leaves the payload to the caller.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let kind = self.kind();
        {
            let b = p.buffer.as_mut();
            b[field::VERSION] = VERSION;
            b[field::KIND] = kind as u8;
            b[field::FLAGS] = self.flags;
            b[field::EPOCH] = self.epoch;
            b[field::EPOCH_SEEN] = self.epoch_seen;
            b[39] = 0;
        }
        p.put_u64(field::DST_CID, self.dst_cid);
        p.put_u64(field::SEQ, self.seq);
        p.put_u64(field::ACK, self.ack);
        p.put_u64(field::LIMIT, self.limit);
        let len = match self.body {
            Body::Data { len } => len,
            _ => kind.body_len() as u16,
        };
        p.set_len(len);
        let b = p.payload_mut();
        match self.body {
            Body::Syn(s) => s.emit(b),
            Body::SynAck(s) => s.emit(b),
            Body::Rst(r) => {
                b[0] = r.reason as u8;
                b[1..4].fill(0);
            }
            Body::Discover(d) => {
                b[0..4].copy_from_slice(&d.target_ip.octets());
                b[4..8].copy_from_slice(&d.sender_ip.octets());
            }
            Body::DiscoverReply(d) => {
                b[0..4].copy_from_slice(&d.ip.octets());
                b[4..6].copy_from_slice(&d.max_payload.to_be_bytes());
                b[6..8].fill(0);
            }
            Body::Keepalive(k) | Body::KeepaliveReply(k) => b[0..8].copy_from_slice(&k.instance.to_be_bytes()),
            Body::Data { .. } | Body::Credit | Body::Nak | Body::Probe | Body::Fin => {}
        }
    }
}

/// Parses a frame (the bytes after the Ethernet header): the header and
/// body, and for DATA the payload slice.
pub fn parse(frame: &[u8]) -> Result<(Repr, &[u8]), ParseError> {
    let p = Packet::new_checked(frame)?;
    let repr = Repr::parse(&p)?;
    let payload = match repr.body {
        Body::Data { len } => &frame[HEADER_LEN..HEADER_LEN + len as usize],
        _ => &[][..],
    };
    Ok((repr, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(r: Repr) {
        let mut buf = vec![0xaau8; r.buffer_len() + 7];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let (back, payload) = parse(&buf).unwrap();
        assert_eq!(back, r);
        if let Body::Data { len } = r.body {
            assert_eq!(payload.len(), len as usize);
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let ip = Ipv4Addr::new(10, 0, 0, 7);
        let base = Repr {
            flags: 0,
            epoch: 3,
            epoch_seen: 250,
            dst_cid: 42,
            seq: 1 << 40,
            ack: 7,
            limit: u64::MAX - 1,
            body: Body::Credit,
        };
        for body in [
            Body::Syn(SynBody {
                src_cid: 9,
                dst_ip: ip,
                src_ip: ip,
                dst_port: 80,
                src_port: 4000,
                mode: 1,
                max_payload: 1460,
                instance: 0x1234_5678_9abc_def0,
            }),
            Body::SynAck(SynAckBody { src_cid: 11, max_payload: 8960, mode: 0, instance: u64::MAX }),
            Body::Data { len: 1460 },
            Body::Credit,
            Body::Nak,
            Body::Probe,
            Body::Fin,
            Body::Rst(RstBody { reason: RstReason::Refused }),
            Body::Discover(DiscoverBody { target_ip: ip, sender_ip: Ipv4Addr::new(10, 0, 0, 1) }),
            Body::DiscoverReply(DiscoverReplyBody { ip, max_payload: 1460 }),
            Body::Keepalive(KeepaliveBody { instance: 77 }),
            Body::KeepaliveReply(KeepaliveBody { instance: 78 }),
        ] {
            round_trip(Repr { body, flags: if matches!(body, Body::Data { .. }) { FLAG_END } else { 0 }, ..base });
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut buf = [0u8; 64];
        let r = Repr { flags: 0, epoch: 0, epoch_seen: 0, dst_cid: 1, seq: 0, ack: 0, limit: 0, body: Body::Credit };
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert!(parse(&buf).is_ok());
        assert_eq!(parse(&buf[..39]).unwrap_err(), ParseError::Truncated { have: 39, need: 40 });
        let mut v = buf;
        v[0] = 1;
        assert_eq!(parse(&v).unwrap_err(), ParseError::Version(1));
        let mut v = buf;
        v[1] = 99;
        assert_eq!(parse(&v).unwrap_err(), ParseError::UnknownKind(99));
        let mut v = buf;
        v[37] = 4; // a CREDIT with a body
        assert!(matches!(parse(&v).unwrap_err(), ParseError::BodyLength { kind: Kind::Credit, .. }));
        let mut v = buf;
        v[4..12].fill(0); // cid 0 on a connection frame
        assert!(matches!(parse(&v).unwrap_err(), ParseError::Invalid(_)));
        let mut v = buf;
        v[1] = Kind::Data as u8; // DATA with len 0
        assert!(matches!(parse(&v).unwrap_err(), ParseError::Invalid(_)));
        let mut v = buf;
        v[1] = Kind::Data as u8;
        v[36..38].copy_from_slice(&100u16.to_be_bytes()); // longer than the buffer
        assert_eq!(parse(&v).unwrap_err(), ParseError::Truncated { have: 64, need: 140 });
    }

    #[test]
    fn nic_padding_is_not_payload() {
        let r = Repr {
            flags: FLAG_END,
            epoch: 0,
            epoch_seen: 0,
            dst_cid: 3,
            seq: 0,
            ack: 0,
            limit: 0,
            body: Body::Data { len: 2 },
        };
        let mut buf = [0u8; 46]; // the Ethernet minimum leaves padding after 42 bytes
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf[40] = 1;
        buf[41] = 2;
        buf[42..].fill(0xee);
        assert_eq!(parse(&buf).unwrap().1, &[1, 2]);
    }

    proptest! {
        /// No byte string makes the parser panic, and what parses re-emits
        /// to the same header and body bytes.
        #[test]
        fn parser_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok((repr, payload)) = parse(&bytes) {
                let mut out = vec![0u8; repr.buffer_len()];
                repr.emit(&mut Packet::new_unchecked(&mut out[..]));
                let n = if matches!(repr.body, Body::Data { .. }) { HEADER_LEN } else { repr.buffer_len() };
                // Reserved bytes are written as zero; compare the rest.
                let mut expected = bytes[..n].to_vec();
                expected[39] = 0;
                if let Body::Syn(_) = repr.body { expected[HEADER_LEN + 21] = 0; }
                if let Body::SynAck(_) = repr.body { expected[HEADER_LEN + 11] = 0; }
                if let Body::Rst(_) = repr.body { expected[HEADER_LEN + 1..HEADER_LEN + 4].fill(0); }
                if let Body::DiscoverReply(_) = repr.body { expected[HEADER_LEN + 6..HEADER_LEN + 8].fill(0); }
                prop_assert_eq!(&out[..n], &expected[..]);
                prop_assert!(payload.len() <= bytes.len());
            }
        }
    }
}
