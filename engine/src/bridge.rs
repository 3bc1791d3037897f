//! One stream carried for a client: the engine's end of the socketpair on
//! one side, the xsock [`Stream`] (reliable-link or the TCP mode) on the
//! other, and at most one bounded buffer each way between them. A client
//! that stops reading fills its socketpair and then this buffer; the
//! engine then stops reading the stream, so the peer runs out of credit
//! (reliable-link) or window (TCP): the engine's memory per stream stays
//! bounded and nobody else waits.
//!
//! The bytes cross between the client and the engine one of two ways:
//! through the socketpair itself, or (the default for xsock's own library)
//! through two shared-memory rings in a sealed region the engine made for
//! the stream ([`Rings`]): the client writes into one and reads from the
//! other with no system call while both sides keep up, and the socketpair
//! is then only the stream's handle and doorbell (a byte on it says "look
//! at the rings"; its hang-up is still the client's last close). The
//! client's end of its writing is a flag in its ring, not a shutdown of
//! the socket, so doorbells keep working both ways until both ends are
//! done.
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
    sync::Arc,
};

use xsock::{Error, Stream};
use xsock_attach::{EndKind, wire::CHUNK_HEADER};
use xsock_nic::shm::{self, Consumer, Corrupt, Producer, Region};

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

/// The engine's ends of a stream's two rings and the region holding them.
pub struct Rings {
    /// Client -> network (the client produces).
    from_app: Consumer,
    /// Network -> client (the engine produces).
    to_app: Producer,
    _region: Arc<Region>,
    /// The socketpair hung up (every copy of the client's descriptor is
    /// closed): nobody reads `to_app` any more.
    hup: bool,
}

/// Where a stream's two rings of `capacity` bytes lie in their region:
/// (client -> network offset, network -> client offset, region length).
pub use shm::duplex_layout as ring_layout;

impl Rings {
    /// A new region with two empty rings of `capacity` bytes (a power of
    /// two) each; the descriptor to hand the client comes with it (sealed:
    /// the client cannot resize it under the engine's map).
    pub fn create(capacity: usize) -> Result<(Rings, std::os::fd::OwnedFd), shm::ShmError> {
        let (a, b, len) = ring_layout(capacity);
        let region = Arc::new(Region::create("xsock-stream", len)?);
        let (_, from_app) = shm::ring(&region, a, capacity)?;
        let (to_app, _) = shm::ring(&region, b, capacity)?;
        let fd = region.fd().try_clone_to_owned().map_err(shm::ShmError::Io)?;
        Ok((Rings { from_app, to_app, _region: region, hup: false }, fd))
    }
}

fn corrupt(c: Corrupt) -> Error {
    Error::Protocol(format!("the client process broke its stream's shared ring ({c}); the stream is reset"))
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
            Error::ConnectionRefused(_) | Error::OverlayRefused(_) => EndKind::Refused,
            Error::TimedOut(_) => EndKind::TimedOut,
            Error::ConnectionReset(_) | Error::Closed | Error::Protocol(_) => EndKind::Reset,
            Error::Config(_) | Error::AddrInUse(_) | Error::NoLink | Error::NotXsockPeer(_) => EndKind::Config,
            Error::MemoryLimit { .. } => EndKind::Overloaded,
            Error::Io(e) if matches!(e.kind(), io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable) => {
                EndKind::Unreachable
            }
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
    /// Pump again soon without waiting for anything (ring mode: the pump
    /// stopped at its round limit with bytes or room in a ring, which no
    /// doorbell will announce).
    pub again: bool,
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
    /// The stream's shared rings (`None`: bytes cross the socketpair).
    rings: Option<Rings>,
    /// Doorbells rung to the client (ring mode).
    pub bells: u64,
    /// Ring mode, busy engine: keep looking at the client's ring this long
    /// after its last bytes instead of arming it.
    spin: Option<std::time::Duration>,
    /// When bytes last came from the client's ring.
    last_from_app: Option<std::time::Instant>,
    /// Byte mode: the pair may hold bytes not read yet (the poller reported
    /// it since a read last found it empty). A short read or WouldBlock
    /// clears it, so a pump the network side woke makes no system call on
    /// the pair.
    pair_unread: bool,
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
    pub fn new(
        client: u32,
        stream: Stream,
        pair: UnixStream,
        rings: Option<Rings>,
        spin: Option<std::time::Duration>,
    ) -> io::Result<Bridge> {
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
            rings,
            bells: 0,
            spin,
            last_from_app: None,
            pair_unread: true,
        })
    }

    /// Moves what can move now, both ways. `pair_event`: the socketpair
    /// was reported readable (ring mode: doorbells or the hang-up to read;
    /// otherwise it is not read, which keeps a spinning pump free of
    /// system calls; byte mode: bytes or the hang-up, and without it the
    /// pair is read only if no read has found it empty since the last
    /// report).
    pub fn pump(&mut self, pool: &mut BufPool, pair_event: bool) -> Outcome {
        self.pumps += 1;
        let now = std::time::Instant::now();
        let hot = self.spin.is_some_and(|d| self.last_from_app.is_some_and(|t| now.duration_since(t) < d));
        if let (Some(rings), true) = (self.rings.as_mut(), pair_event) {
            drain_bells(rings, &mut self.pair);
        }
        self.pair_unread |= pair_event;
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
                let r = match self.rings.as_mut() {
                    None if !self.pair_unread => Err(io::ErrorKind::WouldBlock.into()),
                    None => {
                        let pair = &mut self.pair;
                        let r = self.to_net.fill(pool, |b| pair.read(b));
                        // Less than asked for: the pair was empty then, and
                        // bytes after it are reported by the poller.
                        if r.as_ref().map_or_else(|e| e.kind() == io::ErrorKind::WouldBlock, |&n| n > 0 && n < BUF) {
                            self.pair_unread = false;
                        }
                        r
                    }
                    Some(rings) => {
                        match take_from_ring(rings, &self.pair, &mut self.to_net, pool, &mut self.bells, !hot) {
                            Ok(r) => {
                                if matches!(r, Ok(n) if n > 0) {
                                    self.last_from_app = Some(now);
                                }
                                r
                            }
                            Err(e) => return self.fail(&e, pool),
                        }
                    }
                };
                match r {
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
                let r = match self.rings.as_mut() {
                    None => xsock_nic::unix::send_nosignal(self.pair.as_fd(), self.to_app.pending()),
                    Some(rings) => match put_in_ring(rings, &self.pair, self.to_app.pending(), &mut self.bells) {
                        Ok(r) => r,
                        Err(e) => return self.fail(&e, pool),
                    },
                };
                match r {
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
                match self.rings.as_mut() {
                    None => {
                        let _ = self.pair.shutdown(std::net::Shutdown::Write);
                    }
                    Some(r) => {
                        if r.to_app.finish() {
                            ring_bell(&self.pair, &mut self.bells);
                        }
                    }
                }
            }
            if self.net_eof && self.app_eof && self.to_app.is_empty() && self.to_net.is_empty() {
                return Outcome::Done;
            }
            if !progress {
                break;
            }
        }
        if let Some(r) = &mut self.rings {
            // The pair carries doorbells (both ways) and the hang-up. A
            // ring this pump did not leave armed (it stopped at its round
            // limit while bytes still moved) is armed now, so the client's
            // next move rings; if it has moved already, pump again.
            let mut again = false;
            let armed = (|| -> Result<(), Corrupt> {
                if !self.to_app.is_empty() && !r.hup {
                    again |= r.to_app.prepare_sleep()?;
                }
                if self.to_net.is_empty() && !self.app_eof {
                    // A busy engine keeps looking at a client that wrote
                    // just now rather than have it ring.
                    again |= hot || r.from_app.prepare_sleep()?;
                }
                Ok(())
            })();
            if let Err(c) = armed {
                return self.fail(&corrupt(c), pool);
            }
            let Some(r) = &self.rings else { unreachable!() };
            return Outcome::Running(Wants {
                pair_read: !r.hup,
                pair_write: false,
                stream_read: !self.net_eof && self.to_app.is_empty(),
                stream_write: !self.to_net.is_empty(),
                again,
            });
        }
        Outcome::Running(Wants {
            pair_read: !self.app_eof && self.to_net.is_empty(),
            pair_write: !self.to_app.is_empty(),
            stream_read: !self.net_eof && self.to_app.is_empty(),
            stream_write: !self.to_net.is_empty(),
            again: false,
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

    /// Whether the stream's bytes cross shared rings.
    pub fn has_rings(&self) -> bool {
        self.rings.is_some()
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

/// Reads and drops the `n` filler bytes a non-blocking connect's client
/// wrote into its socketpair (`Msg::Dial`): they are all queued before
/// the request arrives, so finding fewer is the client's error.
pub fn discard(pair: &UnixStream, n: usize, scratch: &mut [u8]) -> io::Result<()> {
    pair.set_nonblocking(true)?;
    let mut left = n;
    while left > 0 {
        let want = left.min(scratch.len());
        match (&*pair).read(&mut scratch[..want]) {
            Ok(0) => return Err(io::Error::other(format!("the socketpair ended {left} bytes short of the filler"))),
            Ok(got) => left -= got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::other(format!("{left} bytes of the filler it announced never came")));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the doorbells waiting on the pair (ring mode) and notes a
/// hang-up. Bounded, so a client that only rings cannot hold the loop.
fn drain_bells(rings: &mut Rings, pair: &mut UnixStream) {
    if !xsock_nic::unix::drain_doorbells(pair.as_fd(), 4096) {
        rings.hup = true;
    }
}

/// Tells the client to look at its rings.
fn ring_bell(pair: &UnixStream, bells: &mut u64) {
    *bells += 1;
    xsock_nic::unix::ring_doorbell(pair.as_fd());
}

/// Client -> network, ring mode: what the client's ring holds into `buf`
/// (as a read of the pair would: 0 is the client's end, after its last
/// byte; `WouldBlock` with the ring armed if `arm`, so the client's next
/// write rings).
fn take_from_ring(
    rings: &mut Rings,
    pair: &UnixStream,
    buf: &mut Buf,
    pool: &mut BufPool,
    bells: &mut u64,
    arm: bool,
) -> Result<io::Result<usize>, Error> {
    for _ in 0..2 {
        let mut woke = false;
        let r = buf.fill(pool, |b| {
            let m = rings.from_app.pop(b)?;
            woke = m.wake_peer;
            Ok::<usize, Corrupt>(m.bytes)
        });
        let n = r.map_err(corrupt)?;
        if woke {
            ring_bell(pair, bells);
        }
        if n > 0 {
            return Ok(Ok(n));
        }
        if rings.from_app.at_end().map_err(corrupt)? || rings.hup {
            return Ok(Ok(0));
        }
        if !arm || !rings.from_app.prepare_sleep().map_err(corrupt)? {
            break;
        }
    }
    Ok(Err(io::ErrorKind::WouldBlock.into()))
}

/// Network -> client, ring mode: as much of `data` as the client's ring
/// takes (`WouldBlock` with the ring armed when it takes nothing; a
/// broken pipe once the client's descriptor is closed).
fn put_in_ring(rings: &mut Rings, pair: &UnixStream, data: &[u8], bells: &mut u64) -> Result<io::Result<usize>, Error> {
    if rings.hup {
        return Ok(Err(io::ErrorKind::BrokenPipe.into()));
    }
    for _ in 0..2 {
        let m = rings.to_app.push(data).map_err(corrupt)?;
        if m.wake_peer {
            ring_bell(pair, bells);
        }
        if m.bytes > 0 {
            return Ok(Ok(m.bytes));
        }
        if !rings.to_app.prepare_sleep().map_err(corrupt)? {
            break;
        }
    }
    Ok(Err(io::ErrorKind::WouldBlock.into()))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::FileExt, sync::Arc};

    use super::*;

    /// A client's view of a stream's rings, from the descriptor the engine
    /// hands over: its producer (to the engine) and consumer (from it).
    fn client_ends(fd: &std::os::fd::OwnedFd, cap: usize) -> (Producer, Consumer) {
        let (a, b, len) = ring_layout(cap);
        let region = Arc::new(Region::open(fd.try_clone().unwrap(), len).unwrap());
        (Producer::attach(&region, a, cap).unwrap(), Consumer::attach(&region, b, cap).unwrap())
    }

    #[test]
    fn bytes_doorbells_and_the_end_cross_the_rings() {
        let cap = 4096;
        let (mut rings, fd) = Rings::create(cap).unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let (mut tx, mut rx) = client_ends(&fd, cap);
        let (mut pool, mut buf, mut bells) = (BufPool::default(), Buf::default(), 0);

        // Nothing yet: the engine arms the ring, so the client's push says
        // to ring.
        let r = take_from_ring(&mut rings, &ours, &mut buf, &mut pool, &mut bells, true).unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(tx.push(b"hello").unwrap().wake_peer, "the engine waits: ring it");
        assert_eq!(take_from_ring(&mut rings, &ours, &mut buf, &mut pool, &mut bells, true).unwrap().unwrap(), 5);
        assert_eq!(buf.pending(), b"hello");
        buf.consume(5, &mut pool);

        // The engine fills the client's ring; the client, asleep, is rung.
        assert!(!rx.prepare_sleep().unwrap());
        let big = vec![7u8; cap + 100];
        assert_eq!(put_in_ring(&mut rings, &ours, &big, &mut bells).unwrap().unwrap(), cap);
        assert_eq!(bells, 1);
        assert_eq!(
            put_in_ring(&mut rings, &ours, &big, &mut bells).unwrap().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut out = vec![0u8; cap];
        assert!(rx.pop(&mut out).unwrap().wake_peer, "the engine waits for room: the client rings it");

        // The client's end of writing: after its last byte, 0.
        tx.push(b"bye").unwrap();
        tx.finish();
        assert_eq!(take_from_ring(&mut rings, &ours, &mut buf, &mut pool, &mut bells, true).unwrap().unwrap(), 3);
        buf.consume(3, &mut pool);
        assert_eq!(take_from_ring(&mut rings, &ours, &mut buf, &mut pool, &mut bells, true).unwrap().unwrap(), 0);

        // The client's descriptor closes: nobody reads any more.
        drop(theirs);
        drain_bells(&mut rings, &mut ours);
        let r = take_from_ring(&mut rings, &ours, &mut buf, &mut pool, &mut bells, true).unwrap();
        assert_eq!(r.unwrap(), 0);
        assert!(rings.hup);
        assert_eq!(
            put_in_ring(&mut rings, &ours, b"x", &mut bells).unwrap().unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    /// A client may write anything into the region (it is shared): counters
    /// no correct client could publish reset that stream, never crash the
    /// engine or reach outside the ring.
    #[test]
    fn a_client_that_breaks_its_rings_gets_its_stream_reset() {
        let cap = 4096;
        let (_, to_app_at, _) = ring_layout(cap);
        for (offset, value) in [(0u64, u64::MAX), (0, cap as u64 + 1), (to_app_at as u64 + 64, 1 << 40)] {
            let (mut rings, fd) = Rings::create(cap).unwrap();
            let (ours, _theirs) = UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            let file = std::fs::File::from(fd);
            file.write_at(&value.to_le_bytes(), offset).unwrap();
            let (mut pool, mut buf, mut bells) = (BufPool::default(), Buf::default(), 0);
            let a = take_from_ring(&mut rings, &ours, &mut buf, &mut pool, &mut bells, true);
            let b = put_in_ring(&mut rings, &ours, b"data", &mut bells);
            let broke = matches!(a, Err(Error::Protocol(_))) || matches!(b, Err(Error::Protocol(_)));
            assert!(broke, "counter {value} at {offset}: {a:?} / {b:?}");
        }
    }
}
