//! [`Stream`]: one connection, over reliable-link or the kernel's TCP —
//! the same calls either way.
//!
//! Path selection (the protocol switch of the Myrinet socket bypass): a
//! destination on the driven interface's subnet is looked up with
//! reliable-link discovery; if an xsock peer answers, the connection goes
//! over reliable-link. Anything else — a peer off the segment, a peer that
//! does not run xsock, no interface at all, or an xsock peer that refuses
//! on reliable-link (perhaps a plain TCP server owns the port) — goes over
//! the kernel's own TCP socket.
//!
//! Three styles: blocking calls (`send`, `recv`, `send_message`,
//! `recv_message`), non-blocking ones (`try_send`, `try_recv`, returning
//! [`Error::WouldBlock`]), and inline polling ([`crate::Runtime::poll`]
//! plus the non-blocking calls) when the runtime is driven inline.

use std::{
    io::{self, IoSlice, IoSliceMut, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use xsock_reliable_link::{CloseReason, Mode, wire::RstReason};

use crate::{
    Error, PollMode, Runtime,
    connect::{Pending, Progress, Source},
    framing::{self, Received},
    notify::Notifier,
    path::tcp::conn::TcpConn,
};

/// Which path a connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// reliable-link for an xsock peer on the segment, else kernel TCP.
    #[default]
    Auto,
    /// reliable-link only (an error if the peer cannot be reached so).
    Link,
    /// The kernel's TCP only.
    Kernel,
    /// The TCP mode (smoltcp on the datapath) only: plain TCP on the wire,
    /// to any TCP peer, without the kernel's stack on our side.
    Tcp,
}

/// The path a connection took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// reliable-link, over the datapath.
    Link,
    /// The kernel's TCP socket.
    Kernel,
    /// The TCP mode.
    Tcp,
    /// Not decided yet: still connecting ([`Stream::connect_start`]).
    Connecting,
}

/// How to connect.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Which paths may be used.
    pub transport: Transport,
    /// Byte stream or messages (both ends must agree).
    pub mode: Mode,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self { transport: Transport::Auto, mode: Mode::Stream, timeout: Duration::from_secs(10) }
    }
}

pub(crate) enum Conn {
    Link {
        cid: u64,
        handle: Arc<LinkHandle>,
    },
    /// A kernel socket: our TCP socket, or a host engine's socketpair.
    Kernel(crate::path::kernel::Sock),
    Tcp(TcpConn),
    /// Still connecting ([`Stream::connect_start`]); every call settles it
    /// first (a blocking call waits, a non-blocking one says would-block).
    Connecting(Arc<Mutex<Pending>>),
    /// Reset by this side (see [`Stream::recv_message`]): every call fails
    /// with the reason.
    Failed {
        path: Path,
        why: String,
    },
}

/// Lets go of a reliable-link connection when the last handle on it
/// (stream and clones) drops: it then closes gracefully in the background.
/// Holds the connection's notifier, registered with the link while the
/// handle lives, so the connection's events wake its waiters (only them).
pub(crate) struct LinkHandle {
    rt: Runtime,
    cid: u64,
    pub signal: Arc<Notifier>,
}

impl LinkHandle {
    pub fn new(rt: &Runtime, cid: u64, signal: Arc<Notifier>) -> Self {
        if let Some(link) = rt.link() {
            link.shared.register(cid, &signal);
        }
        Self { rt: rt.clone(), cid, signal }
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        if let Some(link) = self.rt.link() {
            link.shared.unregister(self.cid);
            link.shared.lock().release(self.cid);
            self.rt.kick();
        }
    }
}

/// A connection.
pub struct Stream {
    rt: Runtime,
    conn: Conn,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    mode: Mode,
    spin: bool,
    max_message: usize,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("path", &self.path())
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("mode", &self.mode)
            .finish()
    }
}

/// The error every call on a stream this side reset returns.
fn failed(why: &str) -> Error {
    Error::ConnectionReset(why.to_owned())
}

pub(crate) fn close_error(reason: CloseReason, peer: SocketAddrV4) -> Error {
    match reason {
        CloseReason::Refused => Error::ConnectionRefused(peer),
        CloseReason::TimedOut => Error::TimedOut(format!("{peer} stopped answering")),
        CloseReason::Reset(RstReason::Aborted) => Error::ConnectionReset(format!("{peer} aborted the connection")),
        CloseReason::Reset(RstReason::PathLost) => Error::ConnectionReset(format!(
            "relay {peer} lost the path to the far end (a relay or relay link on the way went down); connect again: \
             new connections route around it"
        )),
        CloseReason::Reset(RstReason::Unknown) => {
            Error::ConnectionReset(format!("{peer} no longer knows the connection (it restarted?)"))
        }
        CloseReason::Reset(RstReason::Overloaded) => Error::ConnectionReset(format!(
            "{peer} refused the connection: it has no memory for another (its runtime's memory_limit is reached)"
        )),
        CloseReason::Reset(RstReason::ProcessGone) => Error::ConnectionReset(format!(
            "{peer}'s process went away (killed or crashed) with the connection open; its xsock engine reset it"
        )),
        CloseReason::Reset(RstReason::Protocol) => {
            Error::ConnectionReset(format!("{peer} reset the connection: it says this side broke the protocol"))
        }
        CloseReason::Reset(r) => Error::ConnectionReset(format!("{peer} reset the connection ({r:?})")),
        CloseReason::Aborted => Error::Closed,
        CloseReason::Protocol(v) => {
            Error::Protocol(format!("{peer} broke the reliable-link protocol ({v}); this side reset the connection"))
        }
        CloseReason::Graceful => Error::Closed,
    }
}

/// What a poller watches for a stream.
pub(crate) enum PollSource {
    /// An established connection, and its notifier (none for kernel sockets:
    /// epoll watches those).
    Ready(Source, Option<Arc<Notifier>>),
    /// A connect in progress.
    Connecting(Arc<Mutex<Pending>>, Arc<Notifier>),
    /// A stream that failed: always ready (every call says why).
    Failed,
}

impl Stream {
    /// Connects to `addr`, picking the path automatically.
    pub fn connect(rt: &Runtime, addr: SocketAddrV4) -> Result<Stream, Error> {
        Self::connect_with(rt, addr, ConnectOptions::default())
    }

    /// Connects to `addr` as `opts` say, waiting (up to `opts.timeout`)
    /// for the handshake.
    pub fn connect_with(rt: &Runtime, addr: SocketAddrV4, opts: ConnectOptions) -> Result<Stream, Error> {
        let mut s = Self::connect_start(rt, addr, opts)?;
        s.settle(true)?;
        Ok(s)
    }

    /// Starts connecting to `addr` and returns at once: the stream is
    /// [`Path::Connecting`] until [`Stream::poll_connect`] says it is
    /// connected (or failed). A [`crate::Poller`] reports the stream
    /// writable when the connect has finished either way; a blocking call
    /// on the stream waits for it. This is how a rank opens a thousand
    /// connections at once.
    pub fn connect_start(rt: &Runtime, addr: SocketAddrV4, opts: ConnectOptions) -> Result<Stream, Error> {
        let pending = Pending::start(rt, addr, opts)?;
        Ok(Stream {
            rt: rt.clone(),
            conn: Conn::Connecting(Arc::new(Mutex::new(pending))),
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            peer: addr,
            mode: opts.mode,
            spin: rt.poll_mode() == PollMode::Busy,
            max_message: rt.max_message(),
        })
    }

    /// Moves a connect on: `Ok(true)` once connected (at once for a stream
    /// that is), `Ok(false)` while still connecting, the error if it failed.
    pub fn poll_connect(&mut self) -> Result<bool, Error> {
        match self.settle(false) {
            Ok(()) => Ok(true),
            Err(Error::WouldBlock) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the connection is established (not connecting, not failed).
    pub fn is_connected(&self) -> bool {
        !matches!(self.conn, Conn::Connecting(_) | Conn::Failed { .. })
    }

    /// If connecting: moves the connect on and takes the connection once
    /// it is there; with `block`, waits for it (up to the connect's own
    /// deadline). `Err(WouldBlock)` if not blocking and not connected yet.
    fn settle(&mut self, block: bool) -> Result<(), Error> {
        let Conn::Connecting(p) = &self.conn else {
            return Ok(());
        };
        let p = p.clone();
        loop {
            let progress = p.lock().unwrap_or_else(|e| e.into_inner()).advance(&self.rt);
            match progress {
                Progress::Ready(conn) => {
                    self.take(conn)?;
                    return Ok(());
                }
                Progress::Taken(_) => {
                    // Only this stream takes from its connect (a connecting
                    // stream cannot be cloned).
                    return Err(Error::Closed);
                }
                Progress::Failed(e) => {
                    self.conn = Conn::Failed { path: Path::Connecting, why: e.to_string() };
                    return Err(e);
                }
                Progress::Waiting if !block => return Err(Error::WouldBlock),
                Progress::Waiting => self.wait_connect(&p)?,
            }
        }
    }

    /// Waits until the connect may have moved (its notifier, its kernel
    /// socket becoming writable, or a short while for stages only polling
    /// notices), driving the runtime if it is driven inline.
    fn wait_connect(&self, p: &Arc<Mutex<Pending>>) -> Result<(), Error> {
        let (signal, fd, deadline, poll_soon) = {
            let g = p.lock().unwrap_or_else(|e| e.into_inner());
            (g.signal.clone(), g.kernel_fd(), g.deadline, g.needs_polling())
        };
        let cap = if fd.is_some() || poll_soon { Duration::from_millis(1) } else { Duration::from_millis(100) };
        let until = deadline.min(Instant::now() + cap);
        if fd.is_some() {
            let _ = self.rt.poll();
            let wait = until.saturating_duration_since(Instant::now());
            p.lock().unwrap_or_else(|e| e.into_inner()).wait_kernel(wait).map_err(Error::Io)?;
            return Ok(());
        }
        let seen = signal.generation();
        self.rt.wait_on(&signal, Some(until), || Ok((signal.generation() != seen).then_some(())))?;
        Ok(())
    }

    /// Takes an established connection out of a finished connect.
    fn take(&mut self, conn: Conn) -> Result<(), Error> {
        match conn {
            Conn::Link { cid, handle } => {
                let a = self.rt.link().and_then(|l| l.shared.lock().connection(cid).map(|c| *c.addressing()));
                if let Some(a) = a {
                    self.local = SocketAddrV4::new(a.local_ip, a.local_port);
                }
                self.conn = Conn::Link { cid, handle };
            }
            Conn::Tcp(c) => {
                let (local, _) = c.endpoints();
                self.local = local;
                self.conn = Conn::Tcp(c);
            }
            Conn::Kernel(crate::path::kernel::Sock::Tcp(sock)) => {
                let s = Stream::from_kernel(&self.rt, sock, self.mode)?;
                self.local = s.local;
                self.conn = s.conn;
            }
            Conn::Kernel(s @ crate::path::kernel::Sock::Engine(_)) => {
                s.set_nonblocking(self.spin).map_err(Error::Io)?;
                if let crate::path::kernel::Sock::Engine(e) = &s {
                    self.local = e.local;
                }
                self.conn = Conn::Kernel(s);
            }
            other => self.conn = other,
        }
        Ok(())
    }

    /// How many times this connection's notifier was bumped: the events
    /// (frames, timers, state changes) that concerned this stream and would
    /// have woken a waiter on it. A diagnostic: it shows that wake-ups are
    /// per connection. Always 0 for kernel sockets (the kernel wakes those).
    pub fn wakeups(&self) -> u64 {
        match &self.conn {
            Conn::Kernel(_) | Conn::Failed { .. } => 0,
            _ => self.signal().generation(),
        }
    }

    /// This connection's notifier (what its blocking calls wait on).
    pub(crate) fn signal(&self) -> Arc<Notifier> {
        match &self.conn {
            Conn::Link { handle, .. } => handle.signal.clone(),
            Conn::Tcp(c) => c.handle.signal.clone(),
            Conn::Connecting(p) => p.lock().unwrap_or_else(|e| e.into_inner()).signal.clone(),
            Conn::Kernel(_) | Conn::Failed { .. } => Notifier::new(),
        }
    }

    /// What a poller watches for this stream.
    pub(crate) fn poll_source(&self) -> PollSource {
        match &self.conn {
            Conn::Link { cid, handle } => PollSource::Ready(Source::Link(*cid), Some(handle.signal.clone())),
            Conn::Tcp(c) => PollSource::Ready(Source::Tcp(c.h), Some(c.handle.signal.clone())),
            Conn::Kernel(_) => PollSource::Ready(crate::connect::source_of(&self.conn), None),
            Conn::Connecting(p) => {
                let signal = p.lock().unwrap_or_else(|e| e.into_inner()).signal.clone();
                PollSource::Connecting(p.clone(), signal)
            }
            Conn::Failed { .. } => PollSource::Failed,
        }
    }

    pub(crate) fn from_tcp(rt: &Runtime, c: TcpConn, mode: Mode) -> Stream {
        let (local, peer) = c.endpoints();
        Stream {
            rt: rt.clone(),
            conn: Conn::Tcp(c),
            local,
            peer,
            mode,
            spin: rt.poll_mode() == PollMode::Busy,
            max_message: rt.max_message(),
        }
    }

    pub(crate) fn from_link(rt: &Runtime, cid: u64, mode: Mode) -> Stream {
        let (local, peer) = {
            let link = rt.link().expect("a link stream needs a link");
            let ep = link.shared.lock();
            let a = ep.connection(cid).map(|c| *c.addressing());
            match a {
                Some(a) => (SocketAddrV4::new(a.local_ip, a.local_port), SocketAddrV4::new(a.remote_ip, a.remote_port)),
                None => (SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            }
        };
        let handle = Arc::new(LinkHandle::new(rt, cid, Notifier::new()));
        Stream {
            rt: rt.clone(),
            conn: Conn::Link { cid, handle },
            local,
            peer,
            mode,
            spin: rt.poll_mode() == PollMode::Busy,
            max_message: rt.max_message(),
        }
    }

    pub(crate) fn from_kernel(rt: &Runtime, sock: TcpStream, mode: Mode) -> Result<Stream, Error> {
        let spin = rt.poll_mode() == PollMode::Busy;
        sock.set_nodelay(true).map_err(Error::Io)?;
        sock.set_nonblocking(spin).map_err(Error::Io)?;
        let v4 = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(v) => v,
            std::net::SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port()),
        };
        let local = v4(sock.local_addr().map_err(Error::Io)?);
        let peer = v4(sock.peer_addr().map_err(Error::Io)?);
        let conn = Conn::Kernel(crate::path::kernel::Sock::Tcp(sock));
        Ok(Stream { rt: rt.clone(), conn, local, peer, mode, spin, max_message: rt.max_message() })
    }

    /// A virtual connection an overlay session carries: our end of its
    /// socketpair, and where to ask how it ended.
    pub(crate) fn from_vc(
        rt: &Runtime,
        sock: std::os::unix::net::UnixStream,
        end: Arc<crate::overlay::VcEnd>,
        (local, peer): (SocketAddrV4, SocketAddrV4),
    ) -> Stream {
        use crate::path::kernel::{EndWatch, EngineSock, Sock};
        let end = Arc::new(EndWatch::Vc(end));
        let conn = Conn::Kernel(Sock::Engine(EngineSock { sock, path: Path::Link, end, local, rings: None }));
        Stream {
            rt: rt.clone(),
            conn,
            local,
            peer,
            mode: Mode::Stream,
            spin: rt.poll_mode() == PollMode::Busy,
            max_message: rt.max_message(),
        }
    }

    /// A stream the host engine handed over.
    pub(crate) fn from_engine(rt: &Runtime, h: crate::engine_client::Handed, mode: Mode) -> Result<Stream, Error> {
        let (local, peer) = (h.local, h.peer);
        let conn = engine_conn(rt, h)?;
        let mut s = Stream {
            rt: rt.clone(),
            conn: Conn::Failed { path: Path::Connecting, why: String::new() },
            local,
            peer,
            mode,
            spin: rt.poll_mode() == PollMode::Busy,
            max_message: rt.max_message(),
        };
        Stream::take(&mut s, conn)?;
        Ok(s)
    }

    /// Another handle on the same connection (to read on one thread and
    /// write on another). The connection is let go when the last handle
    /// drops.
    pub fn try_clone(&self) -> Result<Stream, Error> {
        let conn = match &self.conn {
            Conn::Link { cid, handle } => Conn::Link { cid: *cid, handle: handle.clone() },
            Conn::Connecting(_) => {
                return Err(Error::Config(
                    "the stream is still connecting: clone it once poll_connect says it is connected".into(),
                ));
            }
            Conn::Kernel(s) => Conn::Kernel(s.try_clone().map_err(Error::Io)?),
            Conn::Tcp(c) => Conn::Tcp(c.clone()),
            Conn::Failed { path, why } => Conn::Failed { path: *path, why: why.clone() },
        };
        Ok(Stream {
            rt: self.rt.clone(),
            conn,
            local: self.local,
            peer: self.peer,
            mode: self.mode,
            spin: self.spin,
            max_message: self.max_message,
        })
    }

    /// (readable, writable) now, as a [`crate::Poller`] would report them
    /// (kernel sockets: both true; ask the kernel).
    pub fn ready_now(&self) -> (bool, bool) {
        match &self.conn {
            Conn::Link { cid, .. } => {
                let (r, w, c) = crate::poller::link_readiness(&self.rt, *cid);
                (r || c, w || c)
            }
            Conn::Tcp(c) => {
                let (r, w, cl) = crate::poller::tcp_readiness(&self.rt, c.h);
                (r || cl, w || cl)
            }
            _ => (true, true),
        }
    }

    /// One line of the connection's inner state, for diagnosing a stall
    /// (reliable-link connections; other paths name the path). For people,
    /// not for parsing.
    pub fn describe(&self) -> String {
        match &self.conn {
            Conn::Link { cid, .. } => match self.rt.link() {
                Some(link) => match link.shared.lock().connection(*cid) {
                    Some(c) => c.describe(std::time::Instant::now()),
                    None => format!("link cid {cid}: gone from the endpoint"),
                },
                None => "link: no link runtime".into(),
            },
            _ => format!("{:?}", self.path()),
        }
    }

    /// The runtime this connection belongs to.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The path this connection takes.
    pub fn path(&self) -> Path {
        match self.conn {
            Conn::Link { .. } => Path::Link,
            Conn::Kernel(ref s) => s.path(),
            Conn::Tcp(_) => Path::Tcp,
            Conn::Connecting(_) => Path::Connecting,
            Conn::Failed { path, .. } => path,
        }
    }

    /// What a TCP-mode connection has done so far (`None` on other paths).
    pub fn tcp_stats(&self) -> Option<crate::TcpStats> {
        match &self.conn {
            Conn::Tcp(c) => Some(c.stats()),
            _ => None,
        }
    }

    /// Our address and port.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The peer's address and port.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.peer
    }

    /// Stream or message semantics.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    // ---- blocking ----------------------------------------------------------

    /// Sends all of `data` (blocking while the send buffer is full).
    pub fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        self.settle(true)?;
        self.send_all(data, false)
    }

    /// Sends `msg` as one message (any size; the receiver gets it whole from
    /// [`Stream::recv_message`]).
    pub fn send_message(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.settle(true)?;
        if msg.is_empty() {
            return Err(Error::Config("a message must hold at least one byte".into()));
        }
        match &mut self.conn {
            Conn::Link { .. } => self.send_all(msg, true),
            Conn::Kernel(s) => {
                let len = framing::header(msg.len());
                kernel_write_all(s, &[IoSlice::new(&len), IoSlice::new(msg)], self.spin)
            }
            Conn::Tcp(c) => {
                c.write_all(self.peer, &framing::header(msg.len()))?;
                c.write_all(self.peer, msg)
            }
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
        }
    }

    /// Sends the slices in order, as if one buffer.
    pub fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<(), Error> {
        self.settle(true)?;
        match &mut self.conn {
            Conn::Kernel(s) => kernel_write_all(s, bufs, self.spin),
            Conn::Tcp(c) => bufs.iter().try_for_each(|b| c.write_all(self.peer, b)),
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
            Conn::Link { .. } => {
                for b in bufs {
                    self.send_all(b, false)?;
                }
                Ok(())
            }
        }
    }

    fn send_all(&mut self, data: &[u8], end_of_message: bool) -> Result<(), Error> {
        let cid = match &mut self.conn {
            Conn::Link { cid, .. } => *cid,
            Conn::Kernel(s) => return kernel_write_all(s, &[IoSlice::new(data)], self.spin),
            Conn::Tcp(c) => return c.write_all(self.peer, data),
            Conn::Failed { why, .. } => return Err(failed(why)),
            Conn::Connecting(_) => return Err(Error::WouldBlock),
        };
        let mut off = 0;
        loop {
            let n = self.link_write(cid, &data[off..], end_of_message)?;
            off += n;
            if off == data.len() {
                return Ok(());
            }
            let rt = self.rt.clone();
            let peer = self.peer;
            let signal = self.signal();
            rt.wait_on(&signal, None, || {
                let ep = rt.link().expect("link").shared.lock();
                let c = ep.connection(cid).ok_or(Error::Closed)?;
                if let Some(r) = c.close_reason() {
                    return Err(close_error(r, peer));
                }
                Ok((c.send_space() > 0).then_some(()))
            })?;
        }
    }

    fn link_write(&mut self, cid: u64, data: &[u8], end_of_message: bool) -> Result<usize, Error> {
        let link = self.rt.link().expect("link");
        let r = link.shared.lock().write(cid, data, end_of_message);
        let n = match r {
            Ok(n) => n,
            Err(xsock_reliable_link::EndpointError::Stream(xsock_reliable_link::StreamError::Closed(r))) => {
                return Err(close_error(r, self.peer));
            }
            Err(e) => return Err(Error::Protocol(e.to_string())),
        };
        if n > 0 {
            self.rt.kick();
        }
        Ok(n)
    }

    /// Receives at least one byte into `buf` (blocking); 0 means the peer
    /// finished its stream.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.settle(true)?;
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.conn {
            Conn::Kernel(s) => kernel_read(s, buf, self.spin),
            Conn::Tcp(c) => c.read(self.peer, buf),
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
            Conn::Link { cid, .. } => {
                let cid = *cid;
                self.link_read_blocking(cid, buf, false).map(|(n, _)| n)
            }
        }
    }

    /// Receives into the slices in order; returns the bytes received.
    pub fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Result<usize, Error> {
        self.settle(true)?;
        match &mut self.conn {
            Conn::Kernel(s) => loop {
                match s.read_vectored(bufs) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.spin => std::hint::spin_loop(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::Io(e)),
                }
            },
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
            Conn::Link { .. } | Conn::Tcp(_) => {
                let mut total = 0;
                for (i, b) in bufs.iter_mut().enumerate() {
                    if b.is_empty() {
                        continue;
                    }
                    let n = if i == 0 || total == 0 { self.recv(b)? } else { self.try_recv(b).unwrap_or(0) };
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Ok(total)
            }
        }
    }

    /// Receives one whole message into `out` (replacing its contents), or
    /// learns that the peer ended its stream: [`Received::End`], with `out`
    /// empty. A message longer than [`Stream::max_message`] is refused with
    /// [`Error::MessageTooLarge`] and the connection is reset (whatever
    /// length the peer announces, `out` grows only with the bytes that
    /// actually arrive).
    pub fn recv_message(&mut self, out: &mut Vec<u8>) -> Result<Received, Error> {
        self.settle(true)?;
        out.clear();
        let max = self.max_message;
        let spin = self.spin;
        let r = match &mut self.conn {
            // Through the host engine over reliable-link, messages come in
            // the engine's chunks (their length is not known up front).
            Conn::Kernel(s) if s.path() == Path::Link => recv_chunked(s, out, max, spin),
            Conn::Kernel(s) => framing::recv_framed(out, max, |buf| kernel_read_exact(s, buf, spin)),
            Conn::Tcp(c) => {
                let peer = self.peer;
                framing::recv_framed(out, max, |buf| tcp_read_exact(c, peer, buf))
            }
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
            Conn::Link { cid, .. } => {
                let cid = *cid;
                self.link_recv_message(cid, out)
            }
        };
        if let Err(Error::MessageTooLarge { len, max }) = &r {
            log::warn!("{}: the peer sent a {len}-byte message, over the {max}-byte limit: resetting", self.peer);
            self.reset_after(format!("this side reset the connection after a {len}-byte message (limit {max})"));
        }
        r
    }

    fn link_recv_message(&mut self, cid: u64, out: &mut Vec<u8>) -> Result<Received, Error> {
        loop {
            let start = out.len();
            // Grow by a bounded chunk: zero-filling all spare capacity on
            // every read made a large message quadratic.
            let chunk = (out.capacity() - start).clamp(64 << 10, 1 << 20);
            out.resize(start + chunk, 0);
            let (n, end) = self.link_read_blocking(cid, &mut out[start..], true)?;
            out.truncate(start + n);
            if out.len() > self.max_message {
                let len = out.len() as u64;
                out.clear();
                return Err(framing::too_large(len, self.max_message));
            }
            if end {
                return Ok(Received::Message);
            }
            if n == 0 {
                if out.is_empty() {
                    return Ok(Received::End);
                }
                return Err(Error::Protocol("the peer finished in the middle of a message".into()));
            }
        }
    }

    /// Resets the connection from this side (the peer sees a reset) and
    /// leaves the stream failed with `why`.
    fn reset_after(&mut self, why: String) {
        let path = self.path();
        match std::mem::replace(&mut self.conn, Conn::Failed { path, why }) {
            Conn::Kernel(s) => {
                use std::os::fd::AsFd;
                if let Err(e) = xsock_nic::sys::reset_on_close(s.as_fd()) {
                    log::debug!("SO_LINGER before the reset: {e}");
                }
                drop(s);
            }
            Conn::Tcp(c) => c.abort(),
            Conn::Link { cid, handle } => {
                self.rt.link().expect("link").shared.lock().abort_with(cid, RstReason::Protocol);
                self.rt.kick();
                drop(handle);
            }
            Conn::Connecting(_) | Conn::Failed { .. } => {}
        }
    }

    /// The largest message [`Stream::recv_message`] accepts.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Sets the largest message [`Stream::recv_message`] accepts (default:
    /// [`RuntimeBuilder::max_message`](crate::RuntimeBuilder::max_message)).
    pub fn set_max_message(&mut self, bytes: usize) {
        self.max_message = bytes;
    }

    /// Blocks until bytes (or the end) arrive, then reads. Returns the bytes
    /// read and whether they end a message.
    fn link_read_blocking(&mut self, cid: u64, buf: &mut [u8], stop_at_end: bool) -> Result<(usize, bool), Error> {
        let rt = self.rt.clone();
        let peer = self.peer;
        let signal = self.signal();
        let mut wants_transmit = false;
        let r = rt
            .wait_on(&signal, None, || {
                let st = rt
                    .link()
                    .expect("link")
                    .shared
                    .lock()
                    .read_status(cid, buf, stop_at_end)
                    .map_err(|_| Error::Closed)?;
                wants_transmit |= st.wants_transmit;
                if st.len > 0 {
                    return Ok(Some((st.len, st.end_of_message)));
                }
                if st.eof {
                    return Ok(Some((0, false)));
                }
                match st.closed {
                    Some(CloseReason::Graceful) => Ok(Some((0, false))),
                    Some(reason) => Err(close_error(reason, peer)),
                    None => Ok(None),
                }
            })?
            .expect("no deadline");
        if wants_transmit {
            rt.kick(); // the read freed credit worth granting now
        }
        Ok(r)
    }

    // ---- non-blocking --------------------------------------------------------

    /// Sends what fits now; [`Error::WouldBlock`] if nothing does.
    pub fn try_send(&mut self, data: &[u8]) -> Result<usize, Error> {
        self.settle(false)?;
        match &mut self.conn {
            Conn::Kernel(s) => {
                s.set_nonblocking(true).map_err(Error::Io)?;
                let r = s.write(data);
                s.set_nonblocking(self.spin).map_err(Error::Io)?;
                r.map_err(Error::from_io)
            }
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
            Conn::Tcp(c) => match c.try_write(self.peer, data)? {
                0 if !data.is_empty() => Err(Error::WouldBlock),
                n => Ok(n),
            },
            Conn::Link { cid, .. } => {
                let cid = *cid;
                match self.link_write(cid, data, false)? {
                    0 if !data.is_empty() => Err(Error::WouldBlock),
                    n => Ok(n),
                }
            }
        }
    }

    /// Receives what is there now; 0 at the end of the stream;
    /// [`Error::WouldBlock`] if nothing is.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.settle(false)?;
        match &mut self.conn {
            Conn::Kernel(s) => {
                s.set_nonblocking(true).map_err(Error::Io)?;
                let r = s.read(buf);
                s.set_nonblocking(self.spin).map_err(Error::Io)?;
                r.map_err(Error::from_io)
            }
            Conn::Tcp(c) => c.try_read(self.peer, buf)?.ok_or(Error::WouldBlock),
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
            Conn::Link { cid, .. } => {
                let cid = *cid;
                let link = self.rt.link().expect("link");
                let st = link.shared.lock().read_status(cid, buf, false).map_err(|_| Error::Closed)?;
                if st.wants_transmit {
                    self.rt.kick(); // the read freed credit worth granting now
                }
                if st.len > 0 || st.eof || buf.is_empty() {
                    Ok(st.len)
                } else {
                    match st.closed {
                        Some(CloseReason::Graceful) => Ok(0),
                        Some(reason) => Err(close_error(reason, self.peer)),
                        None => Err(Error::WouldBlock),
                    }
                }
            }
        }
    }

    /// Non-blocking, for relaying messages piece by piece (a host engine):
    /// sends what fits of `data`, which continues the current message and
    /// ends it if `end` (marked only once all of `data` is taken: call
    /// again with the rest). Byte streams ignore `end`.
    pub fn try_send_part(&mut self, data: &[u8], end: bool) -> Result<usize, Error> {
        self.settle(false)?;
        if let Conn::Link { cid, .. } = &self.conn
            && self.mode == Mode::Message
        {
            let cid = *cid;
            return match self.link_write(cid, data, end)? {
                0 if !data.is_empty() => Err(Error::WouldBlock),
                n => Ok(n),
            };
        }
        self.try_send(data)
    }

    /// Non-blocking, the receiving side of [`Stream::try_send_part`]: the
    /// bytes there now of the current message and whether they end it;
    /// `(0, false)` at the end of the stream. Byte streams never say `end`.
    pub fn try_recv_part(&mut self, buf: &mut [u8]) -> Result<(usize, bool), Error> {
        self.settle(false)?;
        if let Conn::Link { cid, .. } = &self.conn
            && self.mode == Mode::Message
        {
            let cid = *cid;
            let link = self.rt.link().expect("link");
            let st = link.shared.lock().read_status(cid, buf, true).map_err(|_| Error::Closed)?;
            if st.wants_transmit {
                self.rt.kick();
            }
            if st.len > 0 || st.end_of_message {
                return Ok((st.len, st.end_of_message));
            }
            if st.eof {
                return Ok((0, false));
            }
            return match st.closed {
                Some(CloseReason::Graceful) => Ok((0, false)),
                Some(reason) => Err(close_error(reason, self.peer)),
                None => Err(Error::WouldBlock),
            };
        }
        self.try_recv(buf).map(|n| (n, false))
    }

    // ---- ending ------------------------------------------------------------

    /// Closes the sending side (the peer reads the end of the stream after
    /// the last byte); receiving goes on.
    pub fn shutdown_write(&mut self) -> Result<(), Error> {
        self.settle(true)?;
        match &mut self.conn {
            Conn::Kernel(s) => s.shutdown(Shutdown::Write).map_err(Error::Io),
            Conn::Tcp(c) => {
                c.shutdown();
                Ok(())
            }
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Connecting(_) => Err(Error::WouldBlock),
            Conn::Link { cid, .. } => {
                let cid = *cid;
                self.rt.link().expect("link").shared.lock().close(cid).map_err(|_| Error::Closed)?;
                self.rt.kick();
                Ok(())
            }
        }
    }

    /// Closes gracefully and waits (up to `timeout`) until the peer has
    /// everything that was sent, so exiting right after loses nothing.
    pub fn close(mut self, timeout: Duration) -> Result<(), Error> {
        self.settle(true)?;
        // Already shut down (by a clone, say) or already ended: the state
        // below tells which.
        let _ = self.shutdown_write();
        let cid = match &self.conn {
            Conn::Link { cid, .. } => *cid,
            Conn::Tcp(c) => return c.wait_sent(self.peer, timeout),
            // A virtual connection: its session (in this process) must have
            // handed the end over before the process may exit.
            Conn::Kernel(crate::path::kernel::Sock::Engine(crate::path::kernel::EngineSock { end, .. })) => {
                return match &**end {
                    crate::path::kernel::EndWatch::Vc(v) => v.wait_flushed(self.peer, timeout),
                    crate::path::kernel::EndWatch::Engine { .. } => Ok(()),
                };
            }
            Conn::Kernel(_) => return Ok(()),
            Conn::Failed { why, .. } => return Err(failed(why)),
            Conn::Connecting(_) => return Err(Error::WouldBlock),
        };
        let rt = self.rt.clone();
        let peer = self.peer;
        let signal = self.signal();
        let done = rt.wait_on(&signal, Some(Instant::now() + timeout), || {
            let ep = rt.link().expect("link").shared.lock();
            let Some(c) = ep.connection(cid) else {
                return Ok(Some(()));
            };
            if c.send_finished() {
                return Ok(Some(()));
            }
            match c.close_reason() {
                None | Some(CloseReason::Graceful) => Ok(None),
                Some(r) => Err(close_error(r, peer)),
            }
        })?;
        done.ok_or_else(|| Error::TimedOut(format!("{peer} did not acknowledge the end of the stream")))
    }

    /// Bytes written that the peer has not acknowledged yet (reliable-link;
    /// 0 on paths whose kernel or engine carries the bytes on).
    pub(crate) fn unacknowledged(&self) -> usize {
        match &self.conn {
            Conn::Link { cid, .. } => {
                self.rt.link().and_then(|l| l.shared.lock().connection(*cid).map(|c| c.unacknowledged())).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Aborts the connection: the peer sees a reset; unsent data is lost.
    pub fn abort(self) {
        self.abort_with(RstReason::Aborted);
    }

    /// For relays: aborts because the path to the far end is gone, so the
    /// endpoint's error says so (reliable-link; other paths plain abort).
    pub fn abort_path_lost(self) {
        self.abort_with(RstReason::PathLost);
    }

    /// For host engines: aborts because the application process that held
    /// the connection went away, so the peer's error says so (reliable-link;
    /// other paths plain abort).
    pub fn abort_process_gone(self) {
        self.abort_with(RstReason::ProcessGone);
    }

    /// Whether this is a virtual connection through the overlay (its
    /// bytes cross a session to a relay; [`Stream::path`] says `Kernel`,
    /// the socket it reads).
    pub fn is_virtual(&self) -> bool {
        use crate::path::kernel::{EndWatch, Sock};
        matches!(&self.conn, Conn::Kernel(Sock::Engine(e)) if matches!(&*e.end, EndWatch::Vc(_)))
    }

    /// A virtual connection's socket and the record of how it ends, to
    /// hand the socket on as it is (a host engine passes it to a process);
    /// any other stream comes back unchanged.
    pub fn into_vc(self) -> Result<(std::os::unix::net::UnixStream, Arc<crate::overlay::VcEnd>), Stream> {
        use crate::path::kernel::{EndWatch, Sock};
        match self.conn {
            Conn::Kernel(Sock::Engine(e)) if e.rings.is_none() && matches!(&*e.end, EndWatch::Vc(_)) => {
                let EndWatch::Vc(end) = &*e.end else { unreachable!("matched above") };
                let end = end.clone();
                Ok((e.sock, end))
            }
            conn => Err(Stream { conn, ..self }),
        }
    }

    /// The kernel socket of a connection that took kernel TCP, to hand on
    /// as it is (a host engine passes it to its client); any other stream
    /// comes back unchanged.
    pub fn into_kernel(self) -> Result<TcpStream, Stream> {
        match self.conn {
            Conn::Kernel(crate::path::kernel::Sock::Tcp(s)) => Ok(s),
            conn => Err(Stream { conn, ..self }),
        }
    }

    fn abort_with(self, reason: RstReason) {
        if let Conn::Tcp(c) = &self.conn {
            c.abort();
        }
        if let Conn::Kernel(crate::path::kernel::Sock::Engine(e)) = &self.conn
            && let crate::path::kernel::EndWatch::Vc(v) = &*e.end
        {
            // The session aborts the VC when it finds our end closed.
            v.request_abort(match reason {
                RstReason::ProcessGone => {
                    "the far end's process went away (killed or crashed) with the connection open; its xsock \
                     engine reset it"
                }
                RstReason::PathLost => "the far end's relay lost the path on the way",
                _ => "the far end aborted the connection",
            });
        }
        if let Conn::Link { cid, .. } = self.conn {
            self.rt.link().expect("link").shared.lock().abort_with(cid, reason);
            self.rt.kick();
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf).map_err(io::Error::from)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf).map(|()| buf.len()).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn kernel_write_all(s: &mut crate::path::kernel::Sock, bufs: &[IoSlice<'_>], spin: bool) -> Result<(), Error> {
    for b in bufs {
        let mut data: &[u8] = b;
        while !data.is_empty() {
            match s.write(data) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && spin => std::hint::spin_loop(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_io(e)),
            }
        }
    }
    Ok(())
}

fn kernel_read(s: &mut crate::path::kernel::Sock, buf: &mut [u8], spin: bool) -> Result<usize, Error> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && spin => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from_io(e)),
        }
    }
}

/// The connection behind a stream the host engine handed over: the kernel
/// socket itself (kernel TCP), or our end of the engine's socketpair.
pub(crate) fn engine_conn(rt: &Runtime, h: crate::engine_client::Handed) -> Result<Conn, Error> {
    use crate::path::kernel::{EndWatch, EngineSock, Sock};
    let client = rt.client().expect("an attached runtime").clone();
    let path = crate::engine_client::path_of(h.path);
    if path == Path::Kernel {
        // Nothing of ours in between.
        client.forget(h.stream);
        return Ok(Conn::Kernel(Sock::Tcp(TcpStream::from(h.fd))));
    }
    let sock = std::os::unix::net::UnixStream::from(h.fd);
    let end = Arc::new(EndWatch::Engine { id: h.stream, client });
    let rings = match h.ring {
        Some((region, capacity)) => {
            // The descriptor only carries doorbells: never block on it.
            sock.set_nonblocking(true).map_err(Error::Io)?;
            Some(Arc::new(crate::path::rings::Rings::open(region, capacity, &sock).map_err(Error::Io)?))
        }
        None => None,
    };
    Ok(Conn::Kernel(Sock::Engine(EngineSock { sock, path, end, local: h.local, rings })))
}

/// One message from the host engine's chunks (see `xsock_attach::Msg::Connected`).
fn recv_chunked(
    s: &mut crate::path::kernel::Sock,
    out: &mut Vec<u8>,
    max: usize,
    spin: bool,
) -> Result<Received, Error> {
    use xsock_attach::wire::CHUNK_HEADER;
    out.clear();
    loop {
        let mut h = [0u8; CHUNK_HEADER];
        if !kernel_read_exact(s, &mut h, spin)? {
            if out.is_empty() {
                return Ok(Received::End);
            }
            return Err(Error::Protocol("the peer finished in the middle of a message".into()));
        }
        let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if out.len() + n > max {
            let len = (out.len() + n) as u64;
            out.clear();
            return Err(framing::too_large(len, max));
        }
        let start = out.len();
        out.resize(start + n, 0);
        if n > 0 && !kernel_read_exact(s, &mut out[start..], spin)? {
            return Err(Error::Protocol("the host engine's stream ended in the middle of a message".into()));
        }
        if h[4] == 1 {
            return Ok(Received::Message);
        }
    }
}

/// Reads exactly `buf.len()` bytes from a TCP-mode connection; false on a
/// clean end of stream before the first byte.
fn tcp_read_exact(c: &TcpConn, peer: SocketAddrV4, buf: &mut [u8]) -> Result<bool, Error> {
    let mut got = 0;
    while got < buf.len() {
        match c.read(peer, &mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(Error::Protocol("the peer closed in the middle of a message".into())),
            n => got += n,
        }
    }
    Ok(true)
}

/// Reads exactly `buf.len()` bytes; false on a clean end of stream before
/// the first byte.
fn kernel_read_exact(s: &mut crate::path::kernel::Sock, buf: &mut [u8], spin: bool) -> Result<bool, Error> {
    let mut got = 0;
    while got < buf.len() {
        match kernel_read(s, &mut buf[got..], spin)? {
            0 if got == 0 => return Ok(false),
            0 => {
                return Err(Error::Protocol("the peer closed in the middle of a message".into()));
            }
            n => got += n,
        }
    }
    Ok(true)
}
