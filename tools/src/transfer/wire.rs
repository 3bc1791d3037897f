//! The messages of `xsock send` / `xsock recv`, on each of a transfer's
//! streams. Every message is `kind (u8) | length (u32 LE) | payload`; a
//! `Chunk` message is followed by `len` raw bytes of the file, which the
//! receiver writes straight into its map of the file.
//!
//! Per stream: the sender opens with `Hello`. On stream 0 the receiver
//! answers `Ready` (which chunks it already holds, for resume) or `Refuse`
//! (why not: a full disk, a bad name). Then the sender sends `Chunk`s on
//! every stream, `End` on stream 0 when all are out, and the receiver
//! answers `Done` with the SHA-256 of the whole file it wrote.
//!
//! Parsing never panics, whatever the bytes ([`parse`] is fuzzed by the
//! unit tests below on random input).

use std::fmt;

/// First bytes of a `Hello` payload.
pub const MAGIC: [u8; 4] = *b"XSFT";
/// Protocol version.
pub const VERSION: u8 = 1;
/// Longest message payload accepted (a `Ready` bitmap of 8 M chunks).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Bytes before a message's payload.
pub const HEADER_LEN: usize = 5;
/// Longest file name.
pub const MAX_NAME: usize = 255;
/// Most parallel streams in one transfer.
pub const MAX_STREAMS: u16 = 256;
/// Chunk size bounds.
pub const MIN_CHUNK: u32 = 4096;
/// Largest chunk.
pub const MAX_CHUNK: u32 = 1 << 30;

const HELLO: u8 = 1;
const READY: u8 = 2;
const REFUSE: u8 = 3;
const CHUNK: u8 = 4;
const END: u8 = 5;
const DONE: u8 = 6;

/// What a stream of a transfer says first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Random per run of `xsock send`: groups the streams of one run.
    pub transfer: u64,
    /// This stream's index (0 carries the control messages).
    pub stream: u16,
    /// How many streams the run opens.
    pub streams: u16,
    /// Identity of the source (name, size and modification time hashed):
    /// a resume continues only a transfer of the same source.
    pub file_id: u64,
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes (the last chunk may be shorter).
    pub chunk_size: u32,
    /// File name (a plain name, no directories).
    pub name: String,
}

impl Hello {
    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Sender → receiver, first on every stream.
    Hello(Hello),
    /// Receiver → sender on stream 0: bit `i` set = chunk `i` already held.
    Ready {
        /// The bitmap, least significant bit first.
        held: Vec<u8>,
    },
    /// Receiver → sender: the transfer cannot happen, and why.
    Refuse(String),
    /// Sender → receiver: `len` bytes of chunk `index` follow, whose
    /// SHA-256 is `digest`.
    Chunk {
        /// Chunk index.
        index: u32,
        /// Bytes that follow.
        len: u32,
        /// SHA-256 of those bytes.
        digest: [u8; 32],
    },
    /// Sender → receiver on stream 0: every chunk has been sent; `sha256` is
    /// the whole source file's.
    End {
        /// SHA-256 of the source file.
        sha256: [u8; 32],
    },
    /// Receiver → sender on stream 0: the file is complete (`ok`) or not.
    Done {
        /// Whether the file is complete and matches.
        ok: bool,
        /// SHA-256 of the file as written.
        sha256: [u8; 32],
        /// What went wrong, if anything.
        message: String,
    },
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// An unknown message kind.
    UnknownKind(u8),
    /// A payload longer than [`MAX_PAYLOAD`].
    TooLong(usize),
    /// A payload of the wrong shape for its kind.
    Malformed(&'static str),
    /// A peer speaking another version.
    Version(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k} (is the peer an xsock send/recv?)"),
            WireError::TooLong(n) => write!(f, "a {n}-byte message is longer than the protocol allows"),
            WireError::Malformed(what) => write!(f, "malformed message: {what}"),
            WireError::Version(v) => write!(f, "the peer speaks transfer protocol version {v}, this xsock {VERSION}"),
        }
    }
}

/// Parses one message from the front of `buf`: `Ok(None)` if more bytes
/// are needed, else the message and the bytes it took (for `Chunk`, the
/// header only: the data follows).
pub fn parse(buf: &[u8]) -> Result<Option<(Msg, usize)>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLong(len));
    }
    if !(HELLO..=DONE).contains(&kind) {
        return Err(WireError::UnknownKind(kind));
    }
    let Some(p) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Ok(None) };
    let msg = match kind {
        HELLO => Msg::Hello(parse_hello(p)?),
        READY => Msg::Ready { held: p.to_vec() },
        REFUSE => Msg::Refuse(text(p)?),
        CHUNK => {
            if p.len() != 40 {
                return Err(WireError::Malformed("chunk header is not 40 bytes"));
            }
            Msg::Chunk { index: le32(&p[0..4]), len: le32(&p[4..8]), digest: p[8..40].try_into().expect("32") }
        }
        END => Msg::End { sha256: p.try_into().map_err(|_| WireError::Malformed("end is not 32 bytes"))? },
        _ => {
            if p.len() < 33 {
                return Err(WireError::Malformed("done is shorter than 33 bytes"));
            }
            Msg::Done { ok: p[0] == 1, sha256: p[1..33].try_into().expect("32"), message: text(&p[33..])? }
        }
    };
    Ok(Some((msg, HEADER_LEN + len)))
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8"))
}

fn text(p: &[u8]) -> Result<String, WireError> {
    String::from_utf8(p.to_vec()).map_err(|_| WireError::Malformed("text is not UTF-8"))
}

/// Whether `name` is a plain file name (no directories, nothing special).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.starts_with(".xsock-")
}

fn parse_hello(p: &[u8]) -> Result<Hello, WireError> {
    if p.len() < 5 || p[..4] != MAGIC {
        return Err(WireError::Malformed("hello without the XSFT magic"));
    }
    if p[4] != VERSION {
        return Err(WireError::Version(p[4]));
    }
    if p.len() < 39 {
        return Err(WireError::Malformed("hello shorter than its fixed fields"));
    }
    let f = &p[5..];
    let h = Hello {
        transfer: le64(&f[0..]),
        stream: u16::from_le_bytes([f[8], f[9]]),
        streams: u16::from_le_bytes([f[10], f[11]]),
        file_id: le64(&f[12..]),
        size: le64(&f[20..]),
        chunk_size: le32(&f[28..]),
        name: text(&f[34..])?,
    };
    let name_len = usize::from(u16::from_le_bytes([f[32], f[33]]));
    if name_len != h.name.len() || !valid_name(&h.name) {
        return Err(WireError::Malformed("the file name is not a plain name"));
    }
    if h.streams == 0 || h.streams > MAX_STREAMS || h.stream >= h.streams {
        return Err(WireError::Malformed("stream index or count out of range"));
    }
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&h.chunk_size) || h.chunks() > u64::from(u32::MAX) {
        return Err(WireError::Malformed("chunk size out of range"));
    }
    if h.chunks().div_ceil(8) > MAX_PAYLOAD as u64 {
        return Err(WireError::Malformed("too many chunks: use larger chunks"));
    }
    Ok(h)
}

/// Appends `msg` to `out`.
pub fn emit(msg: &Msg, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let kind = match msg {
        Msg::Hello(h) => {
            out.extend_from_slice(&MAGIC);
            out.push(VERSION);
            out.extend_from_slice(&h.transfer.to_le_bytes());
            out.extend_from_slice(&h.stream.to_le_bytes());
            out.extend_from_slice(&h.streams.to_le_bytes());
            out.extend_from_slice(&h.file_id.to_le_bytes());
            out.extend_from_slice(&h.size.to_le_bytes());
            out.extend_from_slice(&h.chunk_size.to_le_bytes());
            out.extend_from_slice(&(h.name.len() as u16).to_le_bytes());
            out.extend_from_slice(h.name.as_bytes());
            HELLO
        }
        Msg::Ready { held } => {
            out.extend_from_slice(held);
            READY
        }
        Msg::Refuse(m) => {
            out.extend_from_slice(m.as_bytes());
            REFUSE
        }
        Msg::Chunk { index, len, digest } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(digest);
            CHUNK
        }
        Msg::End { sha256 } => {
            out.extend_from_slice(sha256);
            END
        }
        Msg::Done { ok, sha256, message } => {
            out.push(u8::from(*ok));
            out.extend_from_slice(sha256);
            out.extend_from_slice(message.as_bytes());
            DONE
        }
    };
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start] = kind;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            transfer: 7,
            stream: 1,
            streams: 4,
            file_id: 99,
            size: 10 << 20,
            chunk_size: 4 << 20,
            name: "data.bin".into(),
        }
    }

    #[test]
    fn every_message_round_trips_and_partial_input_asks_for_more() {
        let msgs = [
            Msg::Hello(hello()),
            Msg::Ready { held: vec![0b101] },
            Msg::Refuse("no space".into()),
            Msg::Chunk { index: 2, len: 4096, digest: [3; 32] },
            Msg::End { sha256: [4; 32] },
            Msg::Done { ok: true, sha256: [5; 32], message: String::new() },
        ];
        for m in &msgs {
            let mut b = Vec::new();
            emit(m, &mut b);
            for cut in 0..b.len() {
                assert_eq!(parse(&b[..cut]), Ok(None), "{m:?} cut at {cut}");
            }
            assert_eq!(parse(&b), Ok(Some((m.clone(), b.len()))));
        }
        assert_eq!(hello().chunks(), 3);
    }

    #[test]
    fn names_with_directories_and_bad_counts_are_refused() {
        for name in ["", ".", "..", "a/b", "../etc/passwd", "x\0y", ".xsock-state"] {
            let mut b = Vec::new();
            emit(&Msg::Hello(Hello { name: name.into(), ..hello() }), &mut b);
            assert!(parse(&b).is_err(), "{name:?} accepted");
        }
        for h in [Hello { stream: 4, ..hello() }, Hello { streams: 0, ..hello() }, Hello { chunk_size: 1, ..hello() }] {
            let mut b = Vec::new();
            emit(&Msg::Hello(h.clone()), &mut b);
            assert!(parse(&b).is_err(), "{h:?} accepted");
        }
        let mut b = Vec::new();
        emit(&Msg::Hello(hello()), &mut b);
        b[HEADER_LEN + 4] = 9;
        assert_eq!(parse(&b), Err(WireError::Version(9)));
        assert_eq!(parse(&[9, 0, 0, 0, 0]), Err(WireError::UnknownKind(9)));
        assert!(matches!(parse(&[1, 0xff, 0xff, 0xff, 0xff]), Err(WireError::TooLong(_))));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.clear();
            let len = (x % 64) as usize;
            let mut y = x;
            for _ in 0..len {
                y = y.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                buf.push((y >> 56) as u8);
            }
            if !buf.is_empty() {
                buf[0] = (x % 8) as u8;
            }
            if buf.len() >= 5 {
                buf[1..5].copy_from_slice(&((len.saturating_sub(5)) as u32).to_le_bytes());
            }
            let _ = parse(&buf);
        }
    }
}
