//! One stream carried for a client: the engine's end of the socketpair on
//! one side, the xsock [`Stream`] (reliable-link or the TCP mode) on the
//! other, and at most one bounded buffer each way between them. A client
//! that stops reading fills its socketpair and then this buffer; the
//! engine then stops reading the stream, so the peer runs out of credit
//! (reliable-link) or window (TCP): the engine's memory per stream stays
//! bounded and nobody else waits.
//!
//! Ends: the client's end of the stream (every copy of its descriptor
//! closed) is a graceful end toward the peer once what it wrote is sent,
//! unless the client's process was killed, in which case the peer gets a
//! reset that says so. The peer's end reaches the client as the end of its
//! socket; a reset or a timeout reaches it as [`End`], sent on the control
//! socket before the engine closes its end.

use std::{
    io::{self, Read},
    os::{fd::AsFd, unix::net::UnixStream},
};

use xsock::{Error, Stream};
use xsock_attach::{EndKind, wire::CHUNK_HEADER};

/// Bytes one buffer holds (each way, per stream).
pub const BUF: usize = 64 * 1024;

/// Buffers kept for reuse (a stream holds one only while bytes wait in it).
#[derive(Default)]
pub struct BufPool(Vec<Box<[u8]>>);

impl BufPool {
    fn take(&mut self) -> Box<[u8]> {
        self.0.pop().unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice())
    }

    fn give(&mut self, b: Box<[u8]>) {
        if self.0.len() < 256 {
            self.0.push(b);
        }
    }

    /// Buffers kept.
    pub fn kept(&self) -> usize {
        self.0.len()
    }
}

/// Bytes on their way one direction.
#[derive(Default)]
struct Buf {
    data: Option<Box<[u8]>>,
    lo: usize,
    hi: usize,
}

impl Buf {
    fn is_empty(&self) -> bool {
        self.lo == self.hi
    }

    fn pending(&self) -> &[u8] {
        self.data.as_ref().map_or(&[][..], |d| &d[self.lo..self.hi])
    }

    fn consume(&mut self, n: usize, pool: &mut BufPool) {
        self.lo += n;
        if self.lo == self.hi {
            self.lo = 0;
            self.hi = 0;
            if let Some(d) = self.data.take() {
                pool.give(d);
            }
        }
    }

    /// Fills the (empty) buffer with `fill`; returns what `fill` returned.
    fn fill<E>(&mut self, pool: &mut BufPool, fill: impl FnOnce(&mut [u8]) -> Result<usize, E>) -> Result<usize, E> {
        debug_assert!(self.is_empty());
        let mut d = self.data.take().unwrap_or_else(|| pool.take());
        let r = fill(&mut d);
        match r {
            Ok(n) if n > 0 => {
                self.lo = 0;
                self.hi = n;
                self.data = Some(d);
            }
            _ => pool.give(d),
        }
        r
    }

    fn release(&mut self, pool: &mut BufPool) {
        self.lo = 0;
        self.hi = 0;
        if let Some(d) = self.data.take() {
            pool.give(d);
        }
    }
}

/// Why a bridged stream ended other than cleanly (sent to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The kind.
    pub kind: EndKind,
    /// The words.
    pub text: String,
}

impl End {
    /// The end an xsock error means.
    pub fn of(e: &Error) -> End {
        let kind = match e {
            Error::ConnectionRefused(_) => EndKind::Refused,
            Error::TimedOut(_) => EndKind::TimedOut,
            Error::ConnectionReset(_) | Error::Closed | Error::Protocol(_) => EndKind::Reset,
            Error::Config(_) | Error::AddrInUse(_) | Error::NoLink | Error::NotXsockPeer(_) => EndKind::Config,
            Error::MemoryLimit { .. } => EndKind::Overloaded,
            _ => EndKind::Other,
        };
        End { kind, text: e.to_string() }
    }
}

/// What a pump left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wants {
    /// Watch the socketpair for reading / writing.
    pub pair_read: bool,
    /// Room in the socketpair is awaited.
    pub pair_write: bool,
    /// Watch the stream for reading.
    pub stream_read: bool,
    /// Room in the stream is awaited.
    pub stream_write: bool,
}

/// What a pump concluded.
#[derive(Debug)]
pub enum Outcome {
    /// Still running; watch as said.
    Running(Wants),
    /// Both directions ended cleanly: drop the bridge.
    Done,
    /// The client's end closed; the caller decides how (the process may
    /// have been killed): [`Bridge::finish_client_gone`] or carry on with
    /// [`Bridge::client_closed`].
    ClientClosed,
    /// The stream failed: tell the client, drop the bridge.
    Failed(End),
}

/// Counters of one bridge (and, summed, of the engine).
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    /// Bytes the client wrote that went into the stream.
    pub to_net: u64,
    /// Bytes from the stream written to the client.
    pub to_app: u64,
}

/// One carried stream.
pub struct Bridge {
    /// The client it belongs to.
    pub client: u32,
    /// The network side.
    pub stream: Stream,
    /// The engine's end of the socketpair.
    pub pair: UnixStream,
    to_net: Buf,
    to_app: Buf,
    /// The client's end is closed for writing (its descriptor's last copy
    /// is closed, or it shut down writing).
    app_eof: bool,
    /// The end was decided on (graceful: keep going).
    app_eof_handled: bool,
    /// We shut the stream's sending side down.
    net_shut: bool,
    /// The peer ended its stream.
    net_eof: bool,
    /// We shut the pair's sending side down.
    app_shut: bool,
    /// The client stopped reading for good (EPIPE).
    app_gone: bool,
    /// Bytes moved so far.
    pub moved: Moved,
    pumps: u64,
    /// Messages over reliable-link: the client's framing (an 8-byte length
    /// and the bytes) becomes link messages, and link messages become
    /// chunks for the client (see `xsock_attach::Msg::Connected`).
    framed: Option<Framing>,
}

/// Where the bridge is in the client's current message.
#[derive(Default)]
struct Framing {
    header: [u8; 8],
    header_len: usize,
    /// Bytes of the current message still to send (`None`: between
    /// messages, reading a length).
    left: Option<u64>,
    max: u64,
}

/// Rounds of reading and writing per pump: bounds what one busy stream
/// takes of the loop before the others get their turn.
const ROUNDS: usize = 8;

impl Bridge {
    /// A bridge over `stream` and the engine's end `pair` (made
    /// non-blocking here).
    pub fn new(client: u32, stream: Stream, pair: UnixStream) -> io::Result<Bridge> {
        pair.set_nonblocking(true)?;
        Ok(Bridge {
            client,
            pair,
            to_net: Buf::default(),
            to_app: Buf::default(),
            app_eof: false,
            app_eof_handled: false,
            net_shut: false,
            net_eof: false,
            app_shut: false,
            app_gone: false,
            moved: Moved::default(),
            pumps: 0,
            framed: (stream.mode() == xsock::Mode::Message && stream.path() == xsock::Path::Link)
                .then(|| Framing { max: stream.max_message() as u64, ..Framing::default() }),
            stream,
        })
    }

    /// Moves what can move now, both ways.
    pub fn pump(&mut self, pool: &mut BufPool) -> Outcome {
        self.pumps += 1;
        for _ in 0..ROUNDS {
            let mut progress = false;
            // Client -> network.
            if !self.to_net.is_empty() {
                let r = if self.framed.is_some() { self.send_messages(pool) } else { self.send_bytes(pool) };
                match r {
                    Ok(p) => progress |= p,
                    Err(e) => return self.fail(&e, pool),
                }
            }
            if self.to_net.is_empty() && !self.app_eof {
                let pair = &mut self.pair;
                match self.to_net.fill(pool, |b| pair.read(b)) {
                    Ok(0) => {
                        self.app_eof = true;
                        progress = true;
                    }
                    Ok(_) => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    // A reset pair is the client gone as well.
                    Err(_) => {
                        self.app_eof = true;
                        progress = true;
                    }
                }
            }
            if self.app_eof && !self.app_eof_handled {
                return Outcome::ClientClosed;
            }
            if self.app_eof && self.to_net.is_empty() && !self.net_shut {
                self.net_shut = true;
                if let Err(e) = self.stream.shutdown_write() {
                    return self.fail(&e, pool);
                }
            }
            // Network -> client.
            if !self.to_app.is_empty() {
                match xsock_nic::unix::send_nosignal(self.pair.as_fd(), self.to_app.pending()) {
                    Ok(n) => {
                        self.moved.to_app += n as u64;
                        self.to_app.consume(n, pool);
                        progress |= n > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        // The client closed its end: nothing more can be
                        // delivered. As a TCP socket closed with data
                        // arriving, the peer is reset.
                        self.app_gone = true;
                        self.to_app.release(pool);
                    }
                }
            }
            if self.app_gone {
                let e = Error::ConnectionReset("the application closed the stream with data arriving".into());
                return self.fail(&e, pool);
            }
            if self.to_app.is_empty() && !self.net_eof {
                let stream = &mut self.stream;
                let chunked = self.framed.is_some();
                let r = self.to_app.fill(pool, |b| {
                    if !chunked {
                        return stream.try_recv(b);
                    }
                    // A chunk: length, last-chunk flag, bytes.
                    let (n, end) = stream.try_recv_part(&mut b[CHUNK_HEADER..])?;
                    if n == 0 && !end {
                        return Ok(0);
                    }
                    b[..4].copy_from_slice(&(n as u32).to_le_bytes());
                    b[4] = u8::from(end);
                    Ok(n + CHUNK_HEADER)
                });
                match r {
                    Ok(0) => {
                        self.net_eof = true;
                        progress = true;
                    }
                    Ok(_) => progress = true,
                    Err(Error::WouldBlock) => {}
                    Err(e) => return self.fail(&e, pool),
                }
            }
            if self.net_eof && self.to_app.is_empty() && !self.app_shut {
                self.app_shut = true;
                let _ = self.pair.shutdown(std::net::Shutdown::Write);
            }
            if self.net_eof && self.app_eof && self.to_app.is_empty() && self.to_net.is_empty() {
                return Outcome::Done;
            }
            if !progress {
                break;
            }
        }
        Outcome::Running(Wants {
            pair_read: !self.app_eof && self.to_net.is_empty(),
            pair_write: !self.to_app.is_empty(),
            stream_read: !self.net_eof && self.to_app.is_empty(),
            stream_write: !self.to_net.is_empty(),
        })
    }

    /// Byte streams: what fits of the client's bytes goes.
    fn send_bytes(&mut self, pool: &mut BufPool) -> Result<bool, Error> {
        match self.stream.try_send(self.to_net.pending()) {
            Ok(n) => {
                self.moved.to_net += n as u64;
                self.to_net.consume(n, pool);
                Ok(n > 0)
            }
            Err(Error::WouldBlock) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Messages: the client's lengths are read (and checked against the
    /// stream's largest message), its bytes sent as parts of link messages.
    fn send_messages(&mut self, pool: &mut BufPool) -> Result<bool, Error> {
        let mut progress = false;
        while !self.to_net.is_empty() {
            let f = self.framed.as_mut().expect("framed");
            let data = self.to_net.pending();
            let Some(left) = f.left else {
                let k = (8 - f.header_len).min(data.len());
                f.header[f.header_len..f.header_len + k].copy_from_slice(&data[..k]);
                f.header_len += k;
                self.to_net.consume(k, pool);
                progress = true;
                if f.header_len == 8 {
                    f.header_len = 0;
                    let len = u64::from_le_bytes(f.header);
                    if len > f.max {
                        return Err(Error::MessageTooLarge { len, max: f.max as usize });
                    }
                    if len == 0 {
                        self.stream.try_send_part(&[], true)?;
                    } else {
                        f.left = Some(len);
                    }
                }
                continue;
            };
            let k = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
            let end = k as u64 == left;
            match self.stream.try_send_part(&data[..k], end) {
                Ok(n) => {
                    let f = self.framed.as_mut().expect("framed");
                    f.left = Some(left - n as u64).filter(|&l| l > 0);
                    self.moved.to_net += n as u64;
                    self.to_net.consume(n, pool);
                    progress |= n > 0;
                    if n < k {
                        break;
                    }
                }
                Err(Error::WouldBlock) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    /// The client's end closed and its process lives (or exited normally):
    /// carry on, ending gracefully toward the peer.
    pub fn client_closed(&mut self) {
        self.app_eof_handled = true;
    }

    fn fail(&mut self, e: &Error, pool: &mut BufPool) -> Outcome {
        self.to_net.release(pool);
        self.to_app.release(pool);
        Outcome::Failed(End::of(e))
    }

    /// The bridge's state in words (for the engine's status).
    pub fn describe(&self) -> String {
        format!(
            "to_net {} to_app {} app_eof {} net_shut {} net_eof {} app_shut {} moved {}/{} ready {:?} pumps {} wakeups {}",
            self.to_net.pending().len(),
            self.to_app.pending().len(),
            self.app_eof,
            self.net_shut,
            self.net_eof,
            self.app_shut,
            self.moved.to_net,
            self.moved.to_app,
            self.stream.ready_now(),
            self.pumps,
            self.stream.wakeups()
        )
    }

    /// Bytes held in this bridge's buffers now.
    pub fn buffered(&self) -> usize {
        self.to_net.pending().len() + self.to_app.pending().len()
    }

    /// Gives the buffers back (the bridge is being dropped).
    pub fn release(&mut self, pool: &mut BufPool) {
        self.to_net.release(pool);
        self.to_app.release(pool);
    }
}
