//! Message framing on the byte-stream paths (kernel TCP and the TCP mode),
//! and the bound on what a peer may make us buffer for one message.
//!
//! reliable-link carries message boundaries itself; TCP has none, so a
//! message there is an 8-byte little-endian length followed by the bytes.
//! The length comes from the peer, so it is checked against the stream's
//! maximum message size before anything is allocated, and the buffer then
//! grows with the bytes that actually arrive (a peer that announces 1 GiB
//! and sends nothing costs nothing). One helper for both paths, so the
//! check exists once.

use crate::Error;

/// Bytes of the length prefix.
pub(crate) const LEN_BYTES: usize = 8;

/// Default largest message [`crate::Stream::recv_message`] accepts (1 GiB).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 30;

/// The buffer grows by at most this much per read, so its size follows the
/// bytes received rather than the length announced.
const GROW: usize = 1 << 20;

/// What [`crate::Stream::recv_message`] received.
#[must_use = "the peer may have ended the stream instead of sending a message: match on Received::End"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A whole message is in the buffer.
    Message,
    /// The peer finished its stream (cleanly, between messages); the buffer
    /// is empty.
    End,
}

impl Received {
    /// Whether a message arrived (rather than the end of the stream).
    pub fn is_message(self) -> bool {
        self == Received::Message
    }
}

/// The length prefix of a message of `len` bytes.
pub(crate) fn header(len: usize) -> [u8; LEN_BYTES] {
    (len as u64).to_le_bytes()
}

/// The error for a message over the limit (the caller resets the connection).
pub(crate) fn too_large(len: u64, max: usize) -> Error {
    Error::MessageTooLarge { len, max }
}

/// Reads one framed message into `out` with `read`, which fills its buffer
/// completely and returns true, or returns false if the stream ended before
/// the first byte. A length over `max` is refused before any allocation.
pub(crate) fn recv_framed(
    out: &mut Vec<u8>,
    max: usize,
    mut read: impl FnMut(&mut [u8]) -> Result<bool, Error>,
) -> Result<Received, Error> {
    out.clear();
    let mut len = [0u8; LEN_BYTES];
    if !read(&mut len)? {
        return Ok(Received::End);
    }
    let len = u64::from_le_bytes(len);
    if len > max as u64 {
        return Err(too_large(len, max));
    }
    let len = len as usize;
    while out.len() < len {
        let start = out.len();
        let end = len.min(start + GROW.max(start));
        out.resize(end, 0);
        if !read(&mut out[start..])? {
            out.clear();
            return Err(Error::Protocol("the peer closed in the middle of a message".into()));
        }
    }
    Ok(Received::Message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> impl FnMut(&mut [u8]) -> Result<bool, Error> + '_ {
        let mut at = 0;
        move |buf: &mut [u8]| {
            if at == bytes.len() {
                return Ok(false);
            }
            if bytes.len() - at < buf.len() {
                return Err(Error::Protocol("the peer closed in the middle of a message".into()));
            }
            buf.copy_from_slice(&bytes[at..at + buf.len()]);
            at += buf.len();
            Ok(true)
        }
    }

    #[test]
    fn a_hostile_length_is_refused_before_allocating() {
        let mut out = Vec::new();
        let e = recv_framed(&mut out, DEFAULT_MAX_MESSAGE, reader(&[0xff; 8])).unwrap_err();
        assert!(matches!(e, Error::MessageTooLarge { len: u64::MAX, .. }), "{e}");
        assert!(e.to_string().contains("max_message"), "the error names the setting: {e}");
        assert_eq!(out.capacity(), 0, "nothing was allocated");
    }

    #[test]
    fn messages_and_the_end_come_back() {
        let mut wire = Vec::new();
        for m in [&b"hello"[..], b"", b"x"] {
            wire.extend_from_slice(&header(m.len()));
            wire.extend_from_slice(m);
        }
        let mut r = reader(&wire);
        let mut out = Vec::new();
        assert_eq!(recv_framed(&mut out, 16, &mut r).unwrap(), Received::Message);
        assert_eq!(out, b"hello");
        assert_eq!(recv_framed(&mut out, 16, &mut r).unwrap(), Received::Message);
        assert!(out.is_empty());
        assert_eq!(recv_framed(&mut out, 16, &mut r).unwrap(), Received::Message);
        assert_eq!(out, b"x");
        assert_eq!(recv_framed(&mut out, 16, &mut r).unwrap(), Received::End);
    }

    #[test]
    fn the_limit_is_inclusive_and_growth_follows_the_bytes() {
        let body = vec![7u8; 3 * GROW + 5];
        let mut wire = header(body.len()).to_vec();
        wire.extend_from_slice(&body);
        let mut out = Vec::new();
        assert_eq!(recv_framed(&mut out, body.len(), reader(&wire)).unwrap(), Received::Message);
        assert_eq!(out, body);
        assert!(recv_framed(&mut out, body.len() - 1, reader(&wire)).is_err());
        // Announced 1 GiB, sent 10 bytes: the buffer never got near 1 GiB.
        let mut short = header(1 << 30).to_vec();
        short.extend_from_slice(&[1; 10]);
        let mut out = Vec::new();
        assert!(recv_framed(&mut out, 1 << 30, reader(&short)).is_err());
        assert!(out.capacity() <= GROW, "grew to {} for 10 bytes", out.capacity());
    }
}
