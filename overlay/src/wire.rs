//! The overlay's wire format: length-prefixed messages on a byte stream
//! (a relay link, a bootstrap session, the preamble of a LAN connection).
//!
//! ```text
//! frame   = length:u32be  type:u8  body        (length counts type + body)
//! str     = len:u16be utf-8 bytes
//! list<T> = count:u16be T*
//! ```
//!
//! All integers are big-endian. [`Msg::parse`] checks every length against
//! the frame before reading, so no input makes it panic (fuzzed by
//! `fuzz/fuzz_targets/overlay_frame.rs`); [`Msg::emit`] is its inverse.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::{NodeId, SiteId};

/// Largest frame accepted (type + body).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest data payload one `Data` message carries.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest first data an `Open` carries: the opener may send this much
/// before the far end has granted any credit, and the far end takes it
/// beside the credit it grants.
pub const OPEN_DATA: usize = 16 * 1024;
/// Protocol version in `Hello`.
pub const VERSION: u8 = 5;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The bootstrap server.
    Boot = 1,
    /// A relay appliance.
    Relay = 2,
    /// An application endpoint.
    Endpoint = 3,
}

impl Role {
    pub(crate) fn from_u8(v: u8) -> Result<Role, ParseError> {
        Ok(match v {
            1 => Role::Boot,
            2 => Role::Relay,
            3 => Role::Endpoint,
            _ => return Err(ParseError::BadValue("role")),
        })
    }
}

/// One node as the bootstrap server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id.
    pub node: NodeId,
    /// Relay or endpoint.
    pub role: Role,
    /// Its unique name.
    pub name: String,
    /// Its LAN.
    pub site: SiteId,
    /// Its address on its LAN.
    pub lan_ip: Ipv4Addr,
    /// Relays: where other relays may connect (None: outbound only).
    pub wan: Option<SocketAddrV4>,
    /// Relays: the LAN port endpoints open virtual connections on.
    pub serve_port: u16,
    /// Endpoints: the launcher's rank, if any.
    pub rank: Option<u32>,
    /// Endpoints: the ports it listens on.
    pub ports: Vec<u16>,
    /// Endpoints: its virtual IPv4 address (from the bootstrap server's
    /// `--vnet`), which unmodified programs connect to.
    pub vaddr: Option<Ipv4Addr>,
}

/// A message.
// Each variant's doc names its fields.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg<'a> {
    /// First message each way on every connection.
    Hello { version: u8, role: Role, name: &'a str, nonce: [u8; 16] },
    /// Second message each way: proves knowledge of the key.
    Proof { mac: [u8; 32] },
    /// The connection is refused; the text says why and what to do.
    Refused { reason: &'a str },
    /// To a bootstrap server: here I am. `node` is the id the node drew
    /// for itself (random, once per process), the same at every bootstrap
    /// server it registers with.
    Register {
        node: NodeId,
        role: Role,
        name: &'a str,
        lan_ip: Ipv4Addr,
        prefix: u8,
        wan: Option<SocketAddrV4>,
        serve_port: u16,
        rank: Option<u32>,
        /// Endpoints: the virtual address asked for (a `--vaddr`, or the
        /// one another bootstrap server gave), if any.
        vaddr: Option<Ipv4Addr>,
    },
    /// From the bootstrap server: your id, your site, your virtual
    /// address (endpoints) and the virtual network it is in.
    Registered { node: NodeId, site: SiteId, vaddr: Option<Ipv4Addr>, vnet: Ipv4Addr, vnet_prefix: u8 },
    /// To the bootstrap server: the ports I listen on now.
    Ports { ports: Vec<u16> },
    /// To the bootstrap server: who is `name`?
    Resolve { name: &'a str },
    /// To the bootstrap server: who has launcher rank `rank`?
    ResolveRank { rank: u32 },
    /// To the bootstrap server: who has virtual address `addr`?
    ResolveAddr { addr: Ipv4Addr },
    /// Answer to a resolve: the node, and the relays of the asker's site.
    Resolved { entry: Entry, my_relays: Vec<Entry> },
    /// Answer to a resolve: nobody by that name or rank.
    NotFound { what: &'a str },
    /// To the bootstrap server: send me everything.
    GetDirectory,
    /// Every registered node (pushed to relays on every change).
    Directory { entries: Vec<Entry> },
    /// On a relay link that has been quiet for a keepalive interval: the
    /// link is alive (advertisements are refreshed far less often).
    Keepalive,
    /// The cluster CA's revocation list (its bytes, [`crate::cert`]),
    /// flooded with the link state and pushed by bootstrap servers.
    Revocations { list: &'a [u8] },
    /// A relay's link-state advertisement.
    Lsa { origin: NodeId, seq: u64, neighbors: Vec<(NodeId, u32)> },
    /// Opens virtual connection `vc` on this hop from `src` to `dst`:`port`;
    /// `ttl` counts down per hop (a transient routing loop ends), `credit`
    /// is what the opening end can take back, `data` the connection's first
    /// bytes (at most [`OPEN_DATA`]; they need no credit).
    Open { vc: u32, src: NodeId, dst: NodeId, port: u16, ttl: u8, credit: u32, data: &'a [u8] },
    /// An endpoint, its LAN preamble's handshake done, attaches to the
    /// relay as node `node`: the stream becomes its session, carrying the
    /// virtual connections of every process behind it (`Open`, `Data`, ...
    /// as on a relay link). Answered `Accept { vc: 0 }` or `Refuse`.
    Attach { node: NodeId },
    /// The destination accepted; `credit` bytes may be sent toward it.
    Accept { vc: u32, credit: u32 },
    /// The open failed; the text says why.
    Refuse { vc: u32, reason: &'a str },
    /// Bytes of a virtual connection.
    Data { vc: u32, bytes: &'a [u8] },
    /// The receiving end delivered `bytes` more: the sender may send them.
    Credit { vc: u32, bytes: u32 },
    /// The sender of this message sends no more bytes on `vc`.
    Close { vc: u32 },
    /// `vc` is gone; the text says why.
    Abort { vc: u32, reason: &'a str },
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its fields.
    Truncated,
    /// Bytes left over after the last field.
    Trailing,
    /// A type byte we do not know.
    UnknownType(u8),
    /// A field's value is out of range.
    BadValue(&'static str),
    /// A frame longer than [`MAX_FRAME`].
    TooLong(usize),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Truncated => write!(f, "truncated overlay frame"),
            ParseError::Trailing => write!(f, "overlay frame has trailing bytes"),
            ParseError::UnknownType(t) => write!(f, "unknown overlay message type {t}"),
            ParseError::BadValue(what) => write!(f, "bad {what} in overlay frame"),
            ParseError::TooLong(n) => write!(f, "overlay frame of {n} bytes is over the {MAX_FRAME}-byte limit"),
        }
    }
}

impl std::error::Error for ParseError {}

mod ty {
    pub const HELLO: u8 = 1;
    pub const PROOF: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const REGISTER: u8 = 10;
    pub const REGISTERED: u8 = 11;
    pub const PORTS: u8 = 12;
    pub const RESOLVE: u8 = 13;
    pub const RESOLVE_RANK: u8 = 14;
    pub const RESOLVED: u8 = 15;
    pub const RESOLVE_ADDR: u8 = 19;
    pub const NOT_FOUND: u8 = 16;
    pub const GET_DIRECTORY: u8 = 17;
    pub const DIRECTORY: u8 = 18;
    pub const LSA: u8 = 20;
    pub const KEEPALIVE: u8 = 21;
    pub const REVOCATIONS: u8 = 22;
    pub const ATTACH: u8 = 23;
    pub const OPEN: u8 = 30;
    pub const ACCEPT: u8 = 31;
    pub const REFUSE: u8 = 32;
    pub const DATA: u8 = 33;
    pub const CREDIT: u8 = 34;
    pub const CLOSE: u8 = 35;
    pub const ABORT: u8 = 36;
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.buf.len() < n {
            return Err(ParseError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn node(&mut self) -> Result<NodeId, ParseError> {
        match self.u64()? {
            0 => Err(ParseError::BadValue("node id 0")),
            v => Ok(NodeId(v)),
        }
    }
    pub(crate) fn str(&mut self) -> Result<&'a str, ParseError> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| ParseError::BadValue("utf-8 string"))
    }
    pub(crate) fn ip(&mut self) -> Result<Ipv4Addr, ParseError> {
        Ok(Ipv4Addr::from(self.u32()?))
    }
    pub(crate) fn opt_addr(&mut self) -> Result<Option<SocketAddrV4>, ParseError> {
        let ip = self.ip()?;
        let port = self.u16()?;
        Ok((port != 0).then(|| SocketAddrV4::new(ip, port)))
    }
    pub(crate) fn opt_ip(&mut self) -> Result<Option<Ipv4Addr>, ParseError> {
        let ip = self.ip()?;
        Ok((!ip.is_unspecified()).then_some(ip))
    }
    pub(crate) fn prefix(&mut self) -> Result<u8, ParseError> {
        match self.u8()? {
            p @ 0..=32 => Ok(p),
            _ => Err(ParseError::BadValue("prefix length")),
        }
    }
    pub(crate) fn opt_rank(&mut self) -> Result<Option<u32>, ParseError> {
        Ok(match self.u32()? {
            u32::MAX => None,
            r => Some(r),
        })
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        let n = usize::from(self.u16()?);
        // Each item is at least one byte: a count beyond what is left is a lie.
        if n > self.buf.len() {
            return Err(ParseError::Truncated);
        }
        (0..n).map(|_| item(self)).collect()
    }
    pub(crate) fn entry(&mut self) -> Result<Entry, ParseError> {
        Ok(Entry {
            node: self.node()?,
            role: Role::from_u8(self.u8()?)?,
            name: self.str()?.to_owned(),
            site: SiteId(self.u64()?),
            lan_ip: self.ip()?,
            wan: self.opt_addr()?,
            serve_port: self.u16()?,
            rank: self.opt_rank()?,
            ports: self.list(|r| r.u16())?,
            vaddr: self.opt_ip()?,
        })
    }
}

pub(crate) struct Writer<'b> {
    pub(crate) out: &'b mut Vec<u8>,
}

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn str(&mut self, s: &str) {
        // Longer strings are cut at a character boundary (names and reasons
        // are short; a cut reason is still a reason).
        let mut n = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.u16(n as u16);
        self.out.extend_from_slice(&s.as_bytes()[..n]);
    }
    pub(crate) fn opt_addr(&mut self, a: Option<SocketAddrV4>) {
        let a = a.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        self.u32(u32::from(*a.ip()));
        self.u16(a.port());
    }
    pub(crate) fn opt_ip(&mut self, a: Option<Ipv4Addr>) {
        self.u32(u32::from(a.unwrap_or(Ipv4Addr::UNSPECIFIED)));
    }
    pub(crate) fn count(&mut self, n: usize) {
        self.u16(u16::try_from(n).expect("lists hold at most 65535 items"));
    }
    pub(crate) fn entry(&mut self, e: &Entry) {
        self.u64(e.node.0);
        self.u8(e.role as u8);
        self.str(&e.name);
        self.u64(e.site.0);
        self.u32(u32::from(e.lan_ip));
        self.opt_addr(e.wan);
        self.u16(e.serve_port);
        self.u32(e.rank.unwrap_or(u32::MAX));
        self.count(e.ports.len());
        for p in &e.ports {
            self.u16(*p);
        }
        self.opt_ip(e.vaddr);
    }
}

impl<'a> Msg<'a> {
    /// Parses one frame's type and body (the part after the length).
    pub fn parse(frame: &'a [u8]) -> Result<Msg<'a>, ParseError> {
        if frame.len() > MAX_FRAME {
            return Err(ParseError::TooLong(frame.len()));
        }
        let mut r = Reader { buf: frame };
        let t = r.u8()?;
        let m = match t {
            ty::HELLO => {
                Msg::Hello { version: r.u8()?, role: Role::from_u8(r.u8()?)?, name: r.str()?, nonce: r.array()? }
            }
            ty::PROOF => Msg::Proof { mac: r.array()? },
            ty::REFUSED => Msg::Refused { reason: r.str()? },
            ty::REGISTER => Msg::Register {
                role: Role::from_u8(r.u8()?)?,
                name: r.str()?,
                lan_ip: r.ip()?,
                prefix: r.prefix()?,
                wan: r.opt_addr()?,
                serve_port: r.u16()?,
                rank: r.opt_rank()?,
                node: r.node()?,
                vaddr: r.opt_ip()?,
            },
            ty::REGISTERED => Msg::Registered {
                node: r.node()?,
                site: SiteId(r.u64()?),
                vaddr: r.opt_ip()?,
                vnet: r.ip()?,
                vnet_prefix: r.prefix()?,
            },
            ty::PORTS => Msg::Ports { ports: r.list(|r| r.u16())? },
            ty::RESOLVE => Msg::Resolve { name: r.str()? },
            ty::RESOLVE_RANK => Msg::ResolveRank { rank: r.u32()? },
            ty::RESOLVE_ADDR => Msg::ResolveAddr { addr: r.ip()? },
            ty::RESOLVED => Msg::Resolved { entry: r.entry()?, my_relays: r.list(|r| r.entry())? },
            ty::NOT_FOUND => Msg::NotFound { what: r.str()? },
            ty::GET_DIRECTORY => Msg::GetDirectory,
            ty::DIRECTORY => Msg::Directory { entries: r.list(|r| r.entry())? },
            ty::KEEPALIVE => Msg::Keepalive,
            ty::REVOCATIONS => Msg::Revocations { list: std::mem::take(&mut r.buf) },
            ty::LSA => Msg::Lsa { origin: r.node()?, seq: r.u64()?, neighbors: r.list(|r| Ok((r.node()?, r.u32()?)))? },
            ty::OPEN => Msg::Open {
                vc: r.u32()?,
                src: r.node()?,
                dst: r.node()?,
                port: r.u16()?,
                ttl: r.u8()?,
                credit: r.u32()?,
                data: {
                    let data = std::mem::take(&mut r.buf);
                    if data.len() > OPEN_DATA {
                        return Err(ParseError::BadValue("first data length"));
                    }
                    data
                },
            },
            ty::ATTACH => Msg::Attach { node: r.node()? },
            ty::ACCEPT => Msg::Accept { vc: r.u32()?, credit: r.u32()? },
            ty::REFUSE => Msg::Refuse { vc: r.u32()?, reason: r.str()? },
            ty::DATA => {
                let vc = r.u32()?;
                let bytes = std::mem::take(&mut r.buf);
                if bytes.len() > MAX_DATA {
                    return Err(ParseError::BadValue("data length"));
                }
                Msg::Data { vc, bytes }
            }
            ty::CREDIT => Msg::Credit { vc: r.u32()?, bytes: r.u32()? },
            ty::CLOSE => Msg::Close { vc: r.u32()? },
            ty::ABORT => Msg::Abort { vc: r.u32()?, reason: r.str()? },
            t => return Err(ParseError::UnknownType(t)),
        };
        if !r.buf.is_empty() {
            return Err(ParseError::Trailing);
        }
        Ok(m)
    }

    /// The virtual connection this message belongs to (its id on the hop),
    /// for the messages that have one.
    pub fn vc(&self) -> Option<u32> {
        match self {
            Msg::Open { vc, .. }
            | Msg::Accept { vc, .. }
            | Msg::Refuse { vc, .. }
            | Msg::Data { vc, .. }
            | Msg::Credit { vc, .. }
            | Msg::Close { vc }
            | Msg::Abort { vc, .. } => Some(*vc),
            _ => None,
        }
    }

    /// Appends this message as one frame (length prefix included) to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut w = Writer { out };
        match self {
            Msg::Hello { version, role, name, nonce } => {
                w.u8(ty::HELLO);
                w.u8(*version);
                w.u8(*role as u8);
                w.str(name);
                w.out.extend_from_slice(nonce);
            }
            Msg::Proof { mac } => {
                w.u8(ty::PROOF);
                w.out.extend_from_slice(mac);
            }
            Msg::Refused { reason } => {
                w.u8(ty::REFUSED);
                w.str(reason);
            }
            Msg::Register { node, role, name, lan_ip, prefix, wan, serve_port, rank, vaddr } => {
                w.u8(ty::REGISTER);
                w.u8(*role as u8);
                w.str(name);
                w.u32(u32::from(*lan_ip));
                w.u8(*prefix);
                w.opt_addr(*wan);
                w.u16(*serve_port);
                w.u32(rank.unwrap_or(u32::MAX));
                w.u64(node.0);
                w.opt_ip(*vaddr);
            }
            Msg::Registered { node, site, vaddr, vnet, vnet_prefix } => {
                w.u8(ty::REGISTERED);
                w.u64(node.0);
                w.u64(site.0);
                w.opt_ip(*vaddr);
                w.u32(u32::from(*vnet));
                w.u8(*vnet_prefix);
            }
            Msg::Ports { ports } => {
                w.u8(ty::PORTS);
                w.count(ports.len());
                for p in ports {
                    w.u16(*p);
                }
            }
            Msg::Resolve { name } => {
                w.u8(ty::RESOLVE);
                w.str(name);
            }
            Msg::ResolveRank { rank } => {
                w.u8(ty::RESOLVE_RANK);
                w.u32(*rank);
            }
            Msg::ResolveAddr { addr } => {
                w.u8(ty::RESOLVE_ADDR);
                w.u32(u32::from(*addr));
            }
            Msg::Resolved { entry, my_relays } => {
                w.u8(ty::RESOLVED);
                w.entry(entry);
                w.count(my_relays.len());
                for e in my_relays {
                    w.entry(e);
                }
            }
            Msg::NotFound { what } => {
                w.u8(ty::NOT_FOUND);
                w.str(what);
            }
            Msg::GetDirectory => w.u8(ty::GET_DIRECTORY),
            Msg::Keepalive => w.u8(ty::KEEPALIVE),
            Msg::Revocations { list } => {
                w.u8(ty::REVOCATIONS);
                w.out.extend_from_slice(list);
            }
            Msg::Directory { entries } => {
                w.u8(ty::DIRECTORY);
                w.count(entries.len());
                for e in entries {
                    w.entry(e);
                }
            }
            Msg::Lsa { origin, seq, neighbors } => {
                w.u8(ty::LSA);
                w.u64(origin.0);
                w.u64(*seq);
                w.count(neighbors.len());
                for (n, cost) in neighbors {
                    w.u64(n.0);
                    w.u32(*cost);
                }
            }
            Msg::Open { vc, src, dst, port, ttl, credit, data } => {
                w.u8(ty::OPEN);
                w.u32(*vc);
                w.u64(src.0);
                w.u64(dst.0);
                w.u16(*port);
                w.u8(*ttl);
                w.u32(*credit);
                w.out.extend_from_slice(data);
            }
            Msg::Attach { node } => {
                w.u8(ty::ATTACH);
                w.u64(node.0);
            }
            Msg::Accept { vc, credit } => {
                w.u8(ty::ACCEPT);
                w.u32(*vc);
                w.u32(*credit);
            }
            Msg::Refuse { vc, reason } => {
                w.u8(ty::REFUSE);
                w.u32(*vc);
                w.str(reason);
            }
            Msg::Data { vc, bytes } => {
                w.u8(ty::DATA);
                w.u32(*vc);
                w.out.extend_from_slice(bytes);
            }
            Msg::Credit { vc, bytes } => {
                w.u8(ty::CREDIT);
                w.u32(*vc);
                w.u32(*bytes);
            }
            Msg::Close { vc } => {
                w.u8(ty::CLOSE);
                w.u32(*vc);
            }
            Msg::Abort { vc, reason } => {
                w.u8(ty::ABORT);
                w.u32(*vc);
                w.str(reason);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// This message as one frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.emit(&mut v);
        v
    }
}

/// What a session receives at once into its [`FrameReader`] (which keeps
/// that much room: a small part of a stream's own buffers).
pub const SESSION_READ: usize = 64 << 10;

/// Cuts a byte stream into frames. Feed it what arrives ([`push`], or
/// [`read_with`] to receive straight into it, which saves a copy of every
/// byte); take frames out.
///
/// [`push`]: FrameReader::push
/// [`read_with`]: FrameReader::read_with
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Held bytes are `buf[start..end]`; the rest is room (kept, so that a
    /// read into it does not zero it first).
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// Appends bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Lets `read` put up to `max` bytes straight after what is held (a
    /// stream's receive); keeps what it says it read. Returns what `read`
    /// returned.
    pub fn read_with<E>(&mut self, max: usize, read: impl FnOnce(&mut [u8]) -> Result<usize, E>) -> Result<usize, E> {
        self.room(max);
        let r = read(&mut self.buf[self.end..self.end + max]);
        if let Ok(n) = r {
            self.end += n.min(max);
        }
        r
    }

    /// Makes room for `n` more bytes after what is held.
    fn room(&mut self, n: usize) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.buf.len() - self.end >= n {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.buf.len() - self.end < n {
            self.buf.resize(self.end + n, 0);
        }
    }

    /// The next complete frame (type + body), if one is in; an error if the
    /// stream announces a frame over [`MAX_FRAME`] (close the connection).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ParseError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ParseError::TooLong(len));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let s = self.start + 4;
        self.start = s + len;
        Ok(Some(&self.buf[s..s + len]))
    }

    /// Bytes held that are not a complete frame yet.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }
}

/// Cuts `data` into frames twice, pushed whole and received in reads of a
/// size its first byte picks ([`FrameReader::read_with`]): the same
/// frames, or the same error, and never a panic (the `overlay_frame` fuzz
/// target, whose corpus the tests replay).
pub fn reader_bytes(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else { return };
    let (max, mut at) = (usize::from(k % 64) + 1, 0);
    let (mut whole, mut read) = (FrameReader::default(), FrameReader::default());
    whole.push(rest);
    while at < rest.len() {
        let r = read.read_with(max, |room| -> Result<usize, ()> {
            let n = room.len().min(rest.len() - at);
            room[..n].copy_from_slice(&rest[at..at + n]);
            Ok(n)
        });
        at += r.unwrap_or(0);
        loop {
            match read.next_frame() {
                Ok(Some(f)) => assert_eq!(Ok(Some(f)), whole.next_frame(), "read_with and push cut the same frames"),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(Err(e), whole.next_frame(), "the same error either way");
                    return;
                }
            }
        }
    }
    assert_eq!(read.pending(), whole.pending());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            node: NodeId(7),
            role: Role::Relay,
            name: "relay-a".into(),
            site: SiteId(99),
            lan_ip: Ipv4Addr::new(10, 0, 0, 1),
            wan: Some(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 7400)),
            serve_port: 7401,
            rank: Some(3),
            ports: vec![5000, 5001],
            vaddr: Some(Ipv4Addr::new(100, 64, 0, 9)),
        }
    }

    fn all() -> Vec<Msg<'static>> {
        vec![
            Msg::Hello { version: VERSION, role: Role::Endpoint, name: "é-node", nonce: [9; 16] },
            Msg::Proof { mac: [3; 32] },
            Msg::Refused { reason: "wrong key" },
            Msg::Register {
                node: NodeId(7),
                role: Role::Relay,
                name: "r",
                lan_ip: Ipv4Addr::new(10, 0, 0, 1),
                prefix: 24,
                wan: None,
                serve_port: 1,
                rank: None,
                vaddr: Some(Ipv4Addr::new(100, 64, 0, 3)),
            },
            Msg::Registered {
                node: NodeId(1),
                site: SiteId(2),
                vaddr: None,
                vnet: Ipv4Addr::new(100, 64, 0, 0),
                vnet_prefix: 16,
            },
            Msg::ResolveAddr { addr: Ipv4Addr::new(100, 64, 0, 3) },
            Msg::Keepalive,
            Msg::Revocations { list: b"XSR1..." },
            Msg::Ports { ports: vec![1, 2, 3] },
            Msg::Resolve { name: "x" },
            Msg::ResolveRank { rank: 5 },
            Msg::Resolved { entry: entry(), my_relays: vec![entry(), entry()] },
            Msg::NotFound { what: "x" },
            Msg::GetDirectory,
            Msg::Directory { entries: vec![entry()] },
            Msg::Lsa { origin: NodeId(1), seq: 9, neighbors: vec![(NodeId(2), 1), (NodeId(3), 10)] },
            Msg::Open { vc: 4, src: NodeId(1), dst: NodeId(2), port: 80, ttl: 16, credit: 1 << 20, data: b"" },
            Msg::Open { vc: 6, src: NodeId(1), dst: NodeId(2), port: 80, ttl: 16, credit: 1 << 20, data: b"GET /" },
            Msg::Attach { node: NodeId(12) },
            Msg::Accept { vc: 4, credit: 1 << 20 },
            Msg::Refuse { vc: 4, reason: "no" },
            Msg::Data { vc: 4, bytes: b"hello" },
            Msg::Credit { vc: 4, bytes: 5 },
            Msg::Close { vc: 4 },
            Msg::Abort { vc: 4, reason: "relay gone" },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_stream_cut_anywhere() {
        let mut stream = Vec::new();
        for m in all() {
            m.emit(&mut stream);
        }
        for cut in [1, 2, 3, 7, 64, stream.len()] {
            let mut rd = FrameReader::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                rd.push(chunk);
                while let Some(f) = rd.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            let parsed: Vec<_> = got.iter().map(|f| Msg::parse(f).unwrap()).collect();
            assert_eq!(parsed, all(), "cut {cut}");
            assert_eq!(rd.pending(), 0);
        }
    }

    /// The same stream received straight into the reader, in reads of
    /// every size, some of them short: the same frames, nothing left.
    #[test]
    fn reads_into_the_reader_give_the_frames_that_pushes_give() {
        let mut stream = Vec::new();
        for m in all() {
            m.emit(&mut stream);
        }
        for max in [1, 3, 5, 64, 100, stream.len() + 10] {
            let mut rd = FrameReader::default();
            let (mut got, mut at, mut turn) = (Vec::new(), 0, 0usize);
            while at < stream.len() {
                turn += 1;
                // Every third read finds less than it may take.
                let want = if turn % 3 == 0 { max.div_ceil(2) } else { max };
                let n = rd
                    .read_with(max, |room| -> Result<usize, ()> {
                        assert_eq!(room.len(), max);
                        let n = want.min(stream.len() - at);
                        room[..n].copy_from_slice(&stream[at..at + n]);
                        Ok(n)
                    })
                    .unwrap();
                at += n;
                while let Some(f) = rd.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(rd.read_with(8, |_| Err::<usize, _>("would block")), Err("would block"));
            let parsed: Vec<_> = got.iter().map(|f| Msg::parse(f).unwrap()).collect();
            assert_eq!(parsed, all(), "reads of {max}");
            assert_eq!(rd.pending(), 0);
            assert!(rd.buf.len() <= 2 * max + MAX_FRAME.min(stream.len()), "room stays bounded: {}", rd.buf.len());
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for m in all() {
            let f = m.to_frame();
            for n in 0..f.len() - 4 {
                let open_data = matches!(m, Msg::Open { data, .. } if n >= f.len() - 4 - data.len());
                if (matches!(m, Msg::Data { .. }) && n >= 5)
                    || (matches!(m, Msg::Revocations { .. }) && n >= 1)
                    || open_data
                {
                    continue; // a shorter payload is still a message (its reader judges the bytes)
                }
                assert!(Msg::parse(&f[4..4 + n]).is_err(), "{m:?} cut to {n}");
            }
            let mut long = f[4..].to_vec();
            long.push(0);
            if !matches!(m, Msg::Data { .. } | Msg::Revocations { .. } | Msg::Open { .. }) {
                assert_eq!(Msg::parse(&long), Err(ParseError::Trailing), "{m:?}");
            }
        }
    }

    #[test]
    fn a_huge_announced_length_is_refused_before_buffering() {
        let mut rd = FrameReader::default();
        rd.push(&u32::MAX.to_be_bytes());
        assert!(matches!(rd.next_frame(), Err(ParseError::TooLong(_))));
    }

    #[test]
    fn node_id_zero_and_lying_counts_are_refused() {
        let mut f =
            Msg::Open { vc: 1, src: NodeId(1), dst: NodeId(2), port: 1, ttl: 1, credit: 1, data: b"" }.to_frame();
        f[9..17].fill(0);
        assert_eq!(Msg::parse(&f[4..]), Err(ParseError::BadValue("node id 0")));
        let f = [ty::PORTS, 0xff, 0xff, 0, 1];
        assert_eq!(Msg::parse(&f), Err(ParseError::Truncated));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Msg::parse(&bytes);
            let mut rd = FrameReader::default();
            rd.push(&bytes);
            while let Ok(Some(f)) = rd.next_frame() {
                let _ = Msg::parse(f);
            }
        }
    }
}
