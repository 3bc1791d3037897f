//! Control messages, one per seqpacket datagram: a tag byte, fixed
//! little-endian fields, strings as a u16 length and UTF-8 bytes. Parsing
//! borrows from the datagram (strings are views), checks every length
//! against what arrived and refuses trailing bytes, so a message parses to
//! exactly one value and re-emits to the same bytes.
//!
//! A message that carries a descriptor (a stream's end of a socketpair, or
//! the kernel socket itself) says so in [`Msg::fds`]; the receiver takes
//! exactly that many and closes any others.

use std::net::{Ipv4Addr, SocketAddrV4};

/// The protocol version a client and an engine must share.
pub const VERSION: u16 = 5;

/// The largest control message either side sends or accepts.
pub const MAX_MSG: usize = 64 * 1024;

/// Longest string a message carries (an error's text, an interface name).
pub const MAX_STR: usize = 4096;

/// Bytes before each chunk of a message the engine passes to a client.
pub const CHUNK_HEADER: usize = 5;

/// Which paths a connect may take (as `xsock::Transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// reliable-link for an xsock peer on the segment, else kernel TCP.
    Auto,
    /// reliable-link only.
    Link,
    /// Kernel TCP only.
    Kernel,
    /// The TCP mode only.
    Tcp,
}

/// The path a stream took (as `xsock::Path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// reliable-link through the engine.
    Link,
    /// A kernel TCP socket (handed to the client as it is).
    Kernel,
    /// The engine's TCP mode.
    Tcp,
}

/// Why a request failed or a stream ended: the client maps it to its own
/// error type, with the engine's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// The peer refused the connection.
    Refused,
    /// The peer stopped answering, or the connect timed out.
    TimedOut,
    /// The connection was reset (the text says by whom and why).
    Reset,
    /// The peer cannot be reached on any path allowed.
    Unreachable,
    /// A bad request (an address in use, a port not ours, ...).
    Config,
    /// The engine is shutting down.
    Shutdown,
    /// The engine has no room for this client's request (its caps).
    Overloaded,
    /// Anything else.
    Other,
}

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg<'a> {
    /// Client, first: the version it speaks.
    Hello {
        /// [`VERSION`].
        version: u16,
        /// Move stream bytes through shared-memory rings (the descriptor
        /// is then the stream's handle and doorbell), not through the
        /// socketpair itself (a client that hands the descriptor to code
        /// that reads it directly asks for `false`).
        rings: bool,
        /// Send [`Msg::Ended`] with the reason a stream ended abnormally (a
        /// client that never reads them, such as the preload, whose
        /// listener's descriptor must be readable only when a connection
        /// waits, asks for `false`).
        ends: bool,
    },
    /// Client: connect to `addr`.
    Connect {
        /// Echoed in the reply.
        req: u32,
        /// Where.
        addr: SocketAddrV4,
        /// Which paths.
        transport: TransportKind,
        /// Messages rather than a byte stream (see [`Msg::Connected`]).
        messages: bool,
        /// Give up after this long.
        timeout_ms: u32,
    },
    /// Client: connect to `addr` without waiting, the stream to be
    /// carried on the socketpair end that comes with this message (the
    /// preload's non-blocking connect). The client keeps the other end as
    /// the program's descriptor, with `filler` bytes written into it until
    /// it stopped being writable: the engine answers [`Msg::Dialed`] (or
    /// [`Msg::Failed`]) first and then discards exactly `filler` bytes, so
    /// the descriptor turns writable when, and only when, the stream is
    /// connected; a failed connect closes the engine's end instead (the
    /// descriptor hangs up).
    Dial {
        /// Echoed in the reply.
        req: u32,
        /// Where.
        addr: SocketAddrV4,
        /// Which paths (a fallback to kernel TCP is carried through the
        /// engine too: the descriptor is already the program's).
        transport: TransportKind,
        /// Give up after this long.
        timeout_ms: u32,
        /// Bytes to discard from the socketpair before the stream's.
        filler: u32,
    },
    /// Engine: a [`Msg::Dial`] connected (its stream is carried on the
    /// socketpair end the client sent; no descriptor comes back).
    Dialed {
        /// From the request.
        req: u32,
        /// The engine's id for the stream.
        stream: u32,
        /// The path taken.
        path: PathKind,
        /// Our end.
        local: SocketAddrV4,
        /// The peer's.
        peer: SocketAddrV4,
    },
    /// Client: listen on `addr` (port 0: the engine picks).
    Listen {
        /// Echoed in the reply.
        req: u32,
        /// Where.
        addr: SocketAddrV4,
        /// Messages rather than a byte stream.
        messages: bool,
    },
    /// Client: stop listening.
    Unlisten {
        /// From [`Msg::Listening`].
        listen: u32,
    },
    /// Client: the engine's status as JSON text.
    Status {
        /// Echoed in the reply.
        req: u32,
    },
    /// Client: answer with [`Msg::Synced`] (everything the engine sent
    /// before, such as the [`Msg::Ended`] of a stream this process just
    /// read the end of, is then here).
    Sync {
        /// Echoed in the reply.
        req: u32,
    },
    /// Client: which virtual address has the overlay node `name`?
    /// Answered [`Msg::Found`], or [`Msg::Failed`] (no overlay, no such
    /// node).
    Lookup {
        /// Echoed in the reply.
        req: u32,
        /// The node's name.
        name: &'a str,
    },
    /// Engine: the answer to a [`Msg::Lookup`].
    Found {
        /// The request's.
        req: u32,
        /// The node's virtual address.
        addr: Ipv4Addr,
    },
    /// Client (the preload, which takes no [`Msg::Ended`]): how did
    /// `stream`, whose end it just read, end? Answered [`Msg::Failed`]
    /// with `req` if badly (the read then fails as Linux's would,
    /// ECONNRESET...), else [`Msg::Synced`] with `req`.
    HowEnded {
        /// Echoed in the reply.
        req: u32,
        /// The stream.
        stream: u32,
    },
    /// Client: this process lets go of `stream` (its last handle is being
    /// dropped): the end of the socket that follows is orderly even if the
    /// process is exiting.
    Close {
        /// The stream.
        stream: u32,
    },
    /// Engine, first: attached.
    Welcome {
        /// [`VERSION`].
        version: u16,
        /// The engine's process id (for the client's log line).
        engine_pid: u32,
        /// The interface the engine drives.
        iface: &'a str,
        /// Its IPv4 address and prefix length.
        addr: Ipv4Addr,
        /// Prefix length of `addr`.
        prefix: u8,
        /// The engine's virtual address on the overlay (0.0.0.0: the
        /// engine joined none).
        vaddr: Ipv4Addr,
        /// The overlay's virtual network (programs' connects to it go
        /// through the engine's node) and its prefix length (0: none).
        vnet: Ipv4Addr,
        /// Prefix length of `vnet`.
        vnet_prefix: u8,
    },
    /// Engine, first: not attached, and why (the connection then closes).
    Refused {
        /// Why, with the fix.
        reason: &'a str,
    },
    /// Engine: a connect succeeded; the stream's descriptor comes with it.
    /// In message mode the client writes each message as an 8-byte
    /// little-endian length and the bytes (as on kernel TCP), and reads
    /// messages as chunks: a 4-byte little-endian length, a byte that is 1
    /// on a message's last chunk, and the bytes ([`CHUNK_HEADER`]).
    Connected {
        /// From the request.
        req: u32,
        /// The engine's id for the stream (names it in [`Msg::Ended`]).
        stream: u32,
        /// The path taken.
        path: PathKind,
        /// Our end.
        local: SocketAddrV4,
        /// The peer's.
        peer: SocketAddrV4,
        /// Bytes of each of the stream's two shared rings (0: the bytes
        /// move through the socketpair; else a second descriptor, the
        /// sealed region holding both rings, comes with the message).
        ring: u32,
    },
    /// Engine: a request failed.
    Failed {
        /// From the request.
        req: u32,
        /// What kind of failure.
        kind: EndKind,
        /// The engine's words.
        text: &'a str,
    },
    /// Engine: listening.
    Listening {
        /// From the request.
        req: u32,
        /// Names the listener in [`Msg::Accepted`] and [`Msg::Unlisten`].
        listen: u32,
        /// The address bound (the port chosen, for port 0).
        local: SocketAddrV4,
    },
    /// Engine: a connection arrived on a listener; its descriptor comes
    /// with it.
    Accepted {
        /// The listener.
        listen: u32,
        /// The engine's id for the stream.
        stream: u32,
        /// The path it came over.
        path: PathKind,
        /// Our end.
        local: SocketAddrV4,
        /// The peer's.
        peer: SocketAddrV4,
        /// As in [`Msg::Connected`].
        ring: u32,
    },
    /// Engine: a stream ended other than by an orderly close (sent before
    /// the engine closes its end, so a client that reads the end of the
    /// stream finds the reason already here).
    Ended {
        /// The stream.
        stream: u32,
        /// What kind of end.
        kind: EndKind,
        /// The engine's words.
        text: &'a str,
    },
    /// Engine: the answer to [`Msg::Sync`].
    Synced {
        /// From the request.
        req: u32,
    },
    /// Engine: the status.
    StatusReply {
        /// From the request.
        req: u32,
        /// JSON text.
        json: &'a str,
    },
}

/// Why a datagram is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty datagram.
    #[error("an empty control message")]
    Empty,
    /// Unknown tag.
    #[error("unknown control message tag {0}")]
    UnknownTag(u8),
    /// Shorter than its fields say.
    #[error("a truncated control message (tag {0})")]
    Truncated(u8),
    /// Longer than its fields say.
    #[error("{1} stray bytes after a control message (tag {0})")]
    Trailing(u8, usize),
    /// A field holds a value no sender emits.
    #[error("control message tag {0}: bad {1}")]
    BadField(u8, &'static str),
}

/// [`Msg::Hello`]'s flag bits.
const HELLO_RINGS: u8 = 1;
const HELLO_ENDS: u8 = 2;

mod tag {
    pub const HELLO: u8 = 1;
    pub const CONNECT: u8 = 2;
    pub const LISTEN: u8 = 3;
    pub const UNLISTEN: u8 = 4;
    pub const STATUS: u8 = 5;
    pub const SYNC: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const HOW_ENDED: u8 = 8;
    pub const LOOKUP: u8 = 9;
    pub const DIAL: u8 = 10;
    pub const WELCOME: u8 = 64;
    pub const REFUSED: u8 = 65;
    pub const CONNECTED: u8 = 66;
    pub const FAILED: u8 = 67;
    pub const LISTENING: u8 = 68;
    pub const ACCEPTED: u8 = 69;
    pub const ENDED: u8 = 70;
    pub const STATUS_REPLY: u8 = 71;
    pub const SYNCED: u8 = 72;
    pub const FOUND: u8 = 73;
    pub const DIALED: u8 = 74;
}

impl TransportKind {
    fn code(self) -> u8 {
        match self {
            TransportKind::Auto => 0,
            TransportKind::Link => 1,
            TransportKind::Kernel => 2,
            TransportKind::Tcp => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => TransportKind::Auto,
            1 => TransportKind::Link,
            2 => TransportKind::Kernel,
            3 => TransportKind::Tcp,
            _ => return None,
        })
    }
}

impl PathKind {
    fn code(self) -> u8 {
        match self {
            PathKind::Link => 1,
            PathKind::Kernel => 2,
            PathKind::Tcp => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => PathKind::Link,
            2 => PathKind::Kernel,
            3 => PathKind::Tcp,
            _ => return None,
        })
    }
}

impl EndKind {
    const ALL: [EndKind; 8] = [
        EndKind::Refused,
        EndKind::TimedOut,
        EndKind::Reset,
        EndKind::Unreachable,
        EndKind::Config,
        EndKind::Shutdown,
        EndKind::Overloaded,
        EndKind::Other,
    ];
    fn code(self) -> u8 {
        Self::ALL.iter().position(|&k| k == self).map_or(0, |i| i as u8 + 1)
    }
    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.get(usize::from(c).checked_sub(1)?).copied()
    }
}

/// Reads fields off a datagram, each checked against what is left.
struct Reader<'a> {
    tag: u8,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.rest.len() < n {
            return Err(ParseError::Truncated(self.tag));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn ip(&mut self) -> Result<Ipv4Addr, ParseError> {
        let b = self.take(4)?;
        Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
    fn addr(&mut self) -> Result<SocketAddrV4, ParseError> {
        let ip = self.ip()?;
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }
    fn str(&mut self) -> Result<&'a str, ParseError> {
        let n = usize::from(self.u16()?);
        if n > MAX_STR {
            return Err(ParseError::BadField(self.tag, "string length"));
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| ParseError::BadField(self.tag, "UTF-8 text"))
    }
    fn flag(&mut self) -> Result<bool, ParseError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ParseError::BadField(self.tag, "flag")),
        }
    }
    fn transport(&mut self) -> Result<TransportKind, ParseError> {
        TransportKind::from_code(self.u8()?).ok_or(ParseError::BadField(self.tag, "transport"))
    }
    fn path(&mut self) -> Result<PathKind, ParseError> {
        PathKind::from_code(self.u8()?).ok_or(ParseError::BadField(self.tag, "path"))
    }
    fn kind(&mut self) -> Result<EndKind, ParseError> {
        EndKind::from_code(self.u8()?).ok_or(ParseError::BadField(self.tag, "kind"))
    }
    fn done(self) -> Result<(), ParseError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(ParseError::Trailing(self.tag, n)),
        }
    }
}

/// Cuts a string to [`MAX_STR`] bytes on a character boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_STR {
        return s;
    }
    let mut end = MAX_STR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends fields to a datagram.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn ip(&mut self, ip: Ipv4Addr) -> &mut Self {
        self.0.extend_from_slice(&ip.octets());
        self
    }
    fn addr(&mut self, a: SocketAddrV4) -> &mut Self {
        self.ip(*a.ip()).u16(a.port())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        let s = clip(s);
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

impl<'a> Msg<'a> {
    /// Parses one datagram.
    pub fn parse(data: &'a [u8]) -> Result<Msg<'a>, ParseError> {
        let (&t, rest) = data.split_first().ok_or(ParseError::Empty)?;
        let mut r = Reader { tag: t, rest };
        let m = match t {
            tag::HELLO => {
                let version = r.u16()?;
                let flags = r.u8()?;
                if flags & !(HELLO_RINGS | HELLO_ENDS) != 0 {
                    return Err(ParseError::BadField(tag::HELLO, "flags"));
                }
                Msg::Hello { version, rings: flags & HELLO_RINGS != 0, ends: flags & HELLO_ENDS != 0 }
            }
            tag::CONNECT => Msg::Connect {
                req: r.u32()?,
                addr: r.addr()?,
                transport: r.transport()?,
                messages: r.flag()?,
                timeout_ms: r.u32()?,
            },
            tag::DIAL => Msg::Dial {
                req: r.u32()?,
                addr: r.addr()?,
                transport: r.transport()?,
                timeout_ms: r.u32()?,
                filler: r.u32()?,
            },
            tag::DIALED => {
                Msg::Dialed { req: r.u32()?, stream: r.u32()?, path: r.path()?, local: r.addr()?, peer: r.addr()? }
            }
            tag::LISTEN => Msg::Listen { req: r.u32()?, addr: r.addr()?, messages: r.flag()? },
            tag::UNLISTEN => Msg::Unlisten { listen: r.u32()? },
            tag::STATUS => Msg::Status { req: r.u32()? },
            tag::SYNC => Msg::Sync { req: r.u32()? },
            tag::CLOSE => Msg::Close { stream: r.u32()? },
            tag::HOW_ENDED => Msg::HowEnded { req: r.u32()?, stream: r.u32()? },
            tag::LOOKUP => Msg::Lookup { req: r.u32()?, name: r.str()? },
            tag::FOUND => Msg::Found { req: r.u32()?, addr: r.ip()? },
            tag::SYNCED => Msg::Synced { req: r.u32()? },
            tag::WELCOME => Msg::Welcome {
                version: r.u16()?,
                engine_pid: r.u32()?,
                iface: r.str()?,
                addr: r.ip()?,
                prefix: match r.u8()? {
                    p @ 0..=32 => p,
                    _ => return Err(ParseError::BadField(t, "prefix length")),
                },
                vaddr: r.ip()?,
                vnet: r.ip()?,
                vnet_prefix: match r.u8()? {
                    p @ 0..=32 => p,
                    _ => return Err(ParseError::BadField(t, "prefix length")),
                },
            },
            tag::REFUSED => Msg::Refused { reason: r.str()? },
            tag::CONNECTED => Msg::Connected {
                req: r.u32()?,
                stream: r.u32()?,
                path: r.path()?,
                local: r.addr()?,
                peer: r.addr()?,
                ring: r.u32()?,
            },
            tag::FAILED => Msg::Failed { req: r.u32()?, kind: r.kind()?, text: r.str()? },
            tag::LISTENING => Msg::Listening { req: r.u32()?, listen: r.u32()?, local: r.addr()? },
            tag::ACCEPTED => Msg::Accepted {
                listen: r.u32()?,
                stream: r.u32()?,
                path: r.path()?,
                local: r.addr()?,
                peer: r.addr()?,
                ring: r.u32()?,
            },
            tag::ENDED => Msg::Ended { stream: r.u32()?, kind: r.kind()?, text: r.str()? },
            tag::STATUS_REPLY => {
                let req = r.u32()?;
                let n = r.u32()? as usize;
                let json = std::str::from_utf8(r.take(n)?).map_err(|_| ParseError::BadField(t, "UTF-8 text"))?;
                Msg::StatusReply { req, json }
            }
            other => return Err(ParseError::UnknownTag(other)),
        };
        r.done()?;
        Ok(m)
    }

    /// The datagram (strings longer than [`MAX_STR`] are cut; a status
    /// longer than fits [`MAX_MSG`] is cut too).
    pub fn emit(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(32));
        match *self {
            Msg::Hello { version, rings, ends } => {
                let flags = if rings { HELLO_RINGS } else { 0 } | if ends { HELLO_ENDS } else { 0 };
                w.u8(tag::HELLO).u16(version).u8(flags)
            }
            Msg::Connect { req, addr, transport, messages, timeout_ms } => {
                w.u8(tag::CONNECT).u32(req).addr(addr).u8(transport.code()).u8(u8::from(messages)).u32(timeout_ms)
            }
            Msg::Dial { req, addr, transport, timeout_ms, filler } => {
                w.u8(tag::DIAL).u32(req).addr(addr).u8(transport.code()).u32(timeout_ms).u32(filler)
            }
            Msg::Dialed { req, stream, path, local, peer } => {
                w.u8(tag::DIALED).u32(req).u32(stream).u8(path.code()).addr(local).addr(peer)
            }
            Msg::Listen { req, addr, messages } => w.u8(tag::LISTEN).u32(req).addr(addr).u8(u8::from(messages)),
            Msg::Unlisten { listen } => w.u8(tag::UNLISTEN).u32(listen),
            Msg::Status { req } => w.u8(tag::STATUS).u32(req),
            Msg::Sync { req } => w.u8(tag::SYNC).u32(req),
            Msg::Close { stream } => w.u8(tag::CLOSE).u32(stream),
            Msg::HowEnded { req, stream } => w.u8(tag::HOW_ENDED).u32(req).u32(stream),
            Msg::Lookup { req, name } => w.u8(tag::LOOKUP).u32(req).str(name),
            Msg::Found { req, addr } => w.u8(tag::FOUND).u32(req).ip(addr),
            Msg::Synced { req } => w.u8(tag::SYNCED).u32(req),
            Msg::Welcome { version, engine_pid, iface, addr, prefix, vaddr, vnet, vnet_prefix } => w
                .u8(tag::WELCOME)
                .u16(version)
                .u32(engine_pid)
                .str(iface)
                .ip(addr)
                .u8(prefix.min(32))
                .ip(vaddr)
                .ip(vnet)
                .u8(vnet_prefix.min(32)),
            Msg::Refused { reason } => w.u8(tag::REFUSED).str(reason),
            Msg::Connected { req, stream, path, local, peer, ring } => {
                w.u8(tag::CONNECTED).u32(req).u32(stream).u8(path.code()).addr(local).addr(peer).u32(ring)
            }
            Msg::Failed { req, kind, text } => w.u8(tag::FAILED).u32(req).u8(kind.code()).str(text),
            Msg::Listening { req, listen, local } => w.u8(tag::LISTENING).u32(req).u32(listen).addr(local),
            Msg::Accepted { listen, stream, path, local, peer, ring } => {
                w.u8(tag::ACCEPTED).u32(listen).u32(stream).u8(path.code()).addr(local).addr(peer).u32(ring)
            }
            Msg::Ended { stream, kind, text } => w.u8(tag::ENDED).u32(stream).u8(kind.code()).str(text),
            Msg::StatusReply { req, json } => {
                let room = MAX_MSG - 9;
                let mut end = json.len().min(room);
                while !json.is_char_boundary(end) {
                    end -= 1;
                }
                w.u8(tag::STATUS_REPLY).u32(req).u32(end as u32);
                w.0.extend_from_slice(&json.as_bytes()[..end]);
                &mut w
            }
        };
        w.0
    }

    /// Descriptors that travel with this message.
    pub fn fds(&self) -> usize {
        match self {
            Msg::Connected { ring, .. } | Msg::Accepted { ring, .. } => 1 + usize::from(*ring > 0),
            Msg::Dial { .. } => 1,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn every() -> Vec<Msg<'static>> {
        vec![
            Msg::Hello { version: VERSION, rings: true, ends: true },
            Msg::Hello { version: VERSION, rings: false, ends: false },
            Msg::Connect {
                req: 7,
                addr: a("10.0.0.2:5000"),
                transport: TransportKind::Link,
                messages: true,
                timeout_ms: 10_000,
            },
            Msg::Dial {
                req: 17,
                addr: a("10.0.0.2:5000"),
                transport: TransportKind::Auto,
                timeout_ms: 10_000,
                filler: 212_992,
            },
            Msg::Dialed {
                req: 17,
                stream: 13,
                path: PathKind::Kernel,
                local: a("10.0.0.1:40001"),
                peer: a("10.0.0.2:5000"),
            },
            Msg::Listen { req: 8, addr: a("0.0.0.0:0"), messages: false },
            Msg::Unlisten { listen: 3 },
            Msg::Status { req: 9 },
            Msg::Sync { req: 10 },
            Msg::Close { stream: 11 },
            Msg::HowEnded { req: 4, stream: 11 },
            Msg::Lookup { req: 5, name: "n2a" },
            Msg::Found { req: 5, addr: Ipv4Addr::new(100, 64, 0, 3) },
            Msg::Synced { req: 10 },
            Msg::Welcome {
                version: 1,
                engine_pid: 4242,
                iface: "e0",
                addr: Ipv4Addr::new(10, 0, 0, 1),
                prefix: 24,
                vaddr: Ipv4Addr::new(100, 64, 0, 7),
                vnet: Ipv4Addr::new(100, 64, 0, 0),
                vnet_prefix: 16,
            },
            Msg::Refused { reason: "uid 1000 is not allowed" },
            Msg::Connected {
                req: 7,
                stream: 11,
                path: PathKind::Link,
                local: a("10.0.0.1:40000"),
                peer: a("10.0.0.2:5000"),
                ring: 65536,
            },
            Msg::Failed { req: 7, kind: EndKind::Refused, text: "10.0.0.2:5000 refused" },
            Msg::Listening { req: 8, listen: 3, local: a("10.0.0.1:5000") },
            Msg::Accepted {
                listen: 3,
                stream: 12,
                path: PathKind::Kernel,
                local: a("10.0.0.1:5000"),
                peer: a("10.0.0.9:1234"),
                ring: 0,
            },
            Msg::Ended { stream: 12, kind: EndKind::Reset, text: "the process went away" },
            Msg::StatusReply { req: 9, json: "{\"clients\":1}" },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in every() {
            let b = m.emit();
            assert_eq!(Msg::parse(&b).unwrap(), m, "{m:?}");
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for m in every() {
            let b = m.emit();
            for n in 0..b.len() {
                assert!(Msg::parse(&b[..n]).is_err(), "{m:?} cut to {n} bytes parsed");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(matches!(Msg::parse(&longer), Err(ParseError::Trailing(..))), "{m:?} with a stray byte");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut b = Msg::Failed { req: 1, kind: EndKind::Other, text: "x" }.emit();
        b[5] = 200;
        assert_eq!(Msg::parse(&b), Err(ParseError::BadField(tag::FAILED, "kind")));
        assert_eq!(Msg::parse(&[250]), Err(ParseError::UnknownTag(250)));
        assert_eq!(Msg::parse(&[]), Err(ParseError::Empty));
        // A string length past what arrived.
        assert_eq!(Msg::parse(&[tag::REFUSED, 0xff, 0x00, b'a']), Err(ParseError::Truncated(tag::REFUSED)));
        // Invalid UTF-8.
        assert!(matches!(Msg::parse(&[tag::REFUSED, 1, 0, 0xff]), Err(ParseError::BadField(_, "UTF-8 text"))));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_STR);
        let b = Msg::Refused { reason: &long }.emit();
        let Msg::Refused { reason } = Msg::parse(&b).unwrap() else { panic!() };
        assert!(reason.len() <= MAX_STR && reason.chars().all(|c| c == 'é'));
        let json = "x".repeat(MAX_MSG * 2);
        let b = Msg::StatusReply { req: 1, json: &json }.emit();
        assert!(b.len() <= MAX_MSG);
        assert!(Msg::parse(&b).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_reemit_exactly(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(m) = Msg::parse(&data) {
                proptest::prop_assert_eq!(m.emit(), data);
            }
        }
    }
}
