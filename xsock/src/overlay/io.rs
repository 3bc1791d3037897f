//! Blocking framed I/O for the overlay's control messages, on kernel TCP
//! sockets and on xsock streams alike, each read bounded by a deadline.
//! Frames are read exactly (length, then body), never ahead: whatever
//! follows the handshake belongs to the application.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use xsock_overlay::{
    auth::{Handshake, Key, Peer},
    preamble::{Done, ExactReader, Preamble, PreambleError},
    wire::{Msg, Role},
};

use crate::{Error, Stream};

/// A byte stream the overlay can talk over.
pub trait FrameIo {
    /// Writes all of `bytes`.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error>;
    /// Fills `buf`, or fails at `deadline` or at the end of the stream.
    fn get_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), Error>;
}

fn timed_out(what: &str) -> Error {
    Error::TimedOut(format!("{what}: no answer within the handshake deadline (is the peer an xsock overlay node?)"))
}

impl FrameIo for TcpStream {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.write_all(bytes).map_err(Error::from_io)
    }

    fn get_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), Error> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        self.set_read_timeout(Some(left)).map_err(Error::Io)?;
        let r = self.read_exact(buf);
        self.set_read_timeout(None).map_err(Error::Io)?;
        r.map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out("kernel TCP peer"),
            std::io::ErrorKind::UnexpectedEof => Error::ConnectionReset("the peer closed the connection".into()),
            _ => Error::from_io(e),
        })
    }
}

impl FrameIo for Stream {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.send(bytes)
    }

    fn get_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), Error> {
        let rt = self.runtime().clone();
        let signal = self.signal();
        let mut got = 0;
        while got < buf.len() && self.path() == crate::Path::Kernel {
            // A kernel socket has no notifier: look every 200 µs.
            match self.try_recv(&mut buf[got..]) {
                Ok(0) => return Err(Error::ConnectionReset("the peer closed the connection".into())),
                Ok(n) => got += n,
                Err(Error::WouldBlock) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
                Err(Error::WouldBlock) => return Err(timed_out("overlay peer")),
                Err(e) => return Err(e),
            }
        }
        while got < buf.len() {
            // Drives the datapath where this thread may (inline), waits to
            // be notified where another thread drives it.
            let r = rt.wait_on(&signal, Some(deadline), || match self.try_recv(&mut buf[got..]) {
                Ok(0) => Err(Error::ConnectionReset("the peer closed the connection".into())),
                Ok(n) => Ok(Some(n)),
                Err(Error::WouldBlock) => Ok(None),
                Err(e) => Err(e),
            })?;
            match r {
                Some(n) => got += n,
                None => return Err(timed_out("overlay peer")),
            }
        }
        Ok(())
    }
}

/// Sends one message.
pub fn send_msg(io: &mut impl FrameIo, msg: &Msg<'_>) -> Result<(), Error> {
    io.put(&msg.to_frame())
}

/// Receives one frame (type + body), exactly: not a byte past it.
pub fn recv_frame(io: &mut impl FrameIo, deadline: Instant) -> Result<Vec<u8>, Error> {
    let mut rd = ExactReader::default();
    loop {
        let space = rd.space();
        let n = space.len();
        io.get_exact(space, deadline)?;
        match rd.filled(n) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(Error::Protocol(format!("{e}: not an xsock overlay peer?"))),
        }
    }
}

/// 16 fresh random bytes (from the kernel's random pool).
pub fn fresh_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut n)) {
        Ok(()) => n,
        Err(e) => panic!("cannot read /dev/urandom for a handshake nonce: {e}"),
    }
}

/// Runs a LAN preamble ([`xsock_overlay::preamble`]) to its end over a
/// blocking stream: its frames out as it gives them, one frame in at a
/// time. The outer error is the stream's (or the deadline's), the inner
/// the preamble's (whose refusal, if it has one for the peer, was sent).
pub fn run_preamble(
    io: &mut impl FrameIo,
    mut pre: Preamble,
    deadline: Instant,
) -> Result<Result<Done, PreambleError>, Error> {
    loop {
        while let Some(f) = pre.poll_transmit() {
            io.put(&f)?;
        }
        let end = match pre.handle_frame(&recv_frame(io, deadline)?) {
            Ok(None) => continue,
            Ok(Some(done)) => Ok(done),
            Err(e) => Err(e),
        };
        // What is left to send goes out; after a failure (a refusal for
        // the peer) the stream's own error no longer matters.
        while let Some(f) = pre.poll_transmit() {
            let sent = io.put(&f);
            if end.is_ok() {
                sent?;
            }
        }
        return Ok(end);
    }
}

/// Runs the mutual key handshake as `role` named `name`; returns the
/// proven peer. A wrong key on either side fails both with
/// [`Error::Overlay`] naming it.
pub fn authenticate(
    io: &mut impl FrameIo,
    key: &Key,
    role: Role,
    name: &str,
    deadline: Instant,
) -> Result<Peer, Error> {
    let pre = Preamble::authenticate(Handshake::new(key.clone(), role, name, fresh_nonce()));
    match run_preamble(io, pre, deadline)? {
        Ok(Done::Authenticated(peer)) => Ok(peer),
        Ok(_) => Err(Error::Protocol("the handshake ended with a virtual connection's step".into())),
        Err(e) => Err(Error::Overlay(e.to_string())),
    }
}
