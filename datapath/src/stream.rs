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
    sync::Arc,
    time::{Duration, Instant},
};

use xsock_reliable_link::{CloseReason, Lookup, Mode, Peer, wire::RstReason};

use crate::{
    Error, PollMode, Runtime,
    framing::{self, Received},
    tcp::conn::TcpConn,
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
        _handle: Arc<LinkHandle>,
    },
    Kernel(TcpStream),
    Tcp(TcpConn),
    /// Reset by this side (see [`Stream::recv_message`]): every call fails
    /// with the reason.
    Failed {
        path: Path,
        why: String,
    },
}

/// Lets go of a reliable-link connection when the last handle on it
/// (stream and clones) drops: it then closes gracefully in the background.
pub(crate) struct LinkHandle {
    rt: Runtime,
    cid: u64,
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        if let Some(link) = self.rt.link() {
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

fn close_error(reason: CloseReason, peer: SocketAddrV4) -> Error {
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

impl Stream {
    /// Connects to `addr`, picking the path automatically.
    pub fn connect(rt: &Runtime, addr: SocketAddrV4) -> Result<Stream, Error> {
        Self::connect_with(rt, addr, ConnectOptions::default())
    }

    /// Connects to `addr` as `opts` say.
    pub fn connect_with(rt: &Runtime, addr: SocketAddrV4, opts: ConnectOptions) -> Result<Stream, Error> {
        let deadline = Instant::now() + opts.timeout;
        let ip = *addr.ip();
        if opts.transport == Transport::Tcp {
            let c = crate::tcp::conn::connect(rt, addr, deadline)?;
            return Ok(Stream::from_tcp(rt, c, opts.mode));
        }
        if opts.transport != Transport::Kernel {
            match rt.link() {
                Some(link) => {
                    let on_segment = link.addrs.iter().any(|a| a.contains(ip));
                    if on_segment || opts.transport == Transport::Link {
                        match discover(rt, ip, deadline)? {
                            Some(peer) => match link_connect(rt, addr, peer, opts.mode, deadline) {
                                Ok(s) => return Ok(s),
                                Err(Error::ConnectionRefused(_)) if opts.transport == Transport::Auto => {
                                    log::debug!("{addr} refused on reliable-link; trying kernel TCP");
                                }
                                Err(e) => return Err(e),
                            },
                            None if opts.transport == Transport::Link => {
                                return Err(Error::NotXsockPeer(ip));
                            }
                            None => {}
                        }
                    }
                }
                None if opts.transport == Transport::Link => return Err(Error::NoLink),
                None => {}
            }
        }
        if opts.transport == Transport::Auto && rt.link().is_some_and(|l| l.tcp_fallback) && rt.has_tcp_mode() {
            let c = crate::tcp::conn::connect(rt, addr, deadline)?;
            return Ok(Stream::from_tcp(rt, c, opts.mode));
        }
        kernel_connect(rt, addr, opts.mode, deadline)
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
        let handle = Arc::new(LinkHandle { rt: rt.clone(), cid });
        Stream {
            rt: rt.clone(),
            conn: Conn::Link { cid, _handle: handle },
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
        Ok(Stream { rt: rt.clone(), conn: Conn::Kernel(sock), local, peer, mode, spin, max_message: rt.max_message() })
    }

    /// Another handle on the same connection (to read on one thread and
    /// write on another). The connection is let go when the last handle
    /// drops.
    pub fn try_clone(&self) -> Result<Stream, Error> {
        let conn = match &self.conn {
            Conn::Link { cid, _handle } => Conn::Link { cid: *cid, _handle: _handle.clone() },
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

    /// The runtime this connection belongs to.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The path this connection takes.
    pub fn path(&self) -> Path {
        match self.conn {
            Conn::Link { .. } => Path::Link,
            Conn::Kernel(_) => Path::Kernel,
            Conn::Tcp(_) => Path::Tcp,
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
        self.send_all(data, false)
    }

    /// Sends `msg` as one message (any size; the receiver gets it whole from
    /// [`Stream::recv_message`]).
    pub fn send_message(&mut self, msg: &[u8]) -> Result<(), Error> {
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
        }
    }

    /// Sends the slices in order, as if one buffer.
    pub fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<(), Error> {
        match &mut self.conn {
            Conn::Kernel(s) => kernel_write_all(s, bufs, self.spin),
            Conn::Tcp(c) => bufs.iter().try_for_each(|b| c.write_all(self.peer, b)),
            Conn::Failed { why, .. } => Err(failed(why)),
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
            rt.wait_until(None, || {
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
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.conn {
            Conn::Kernel(s) => kernel_read(s, buf, self.spin),
            Conn::Tcp(c) => c.read(self.peer, buf),
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Link { cid, .. } => {
                let cid = *cid;
                self.link_read_blocking(cid, buf, false).map(|(n, _)| n)
            }
        }
    }

    /// Receives into the slices in order; returns the bytes received.
    pub fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Result<usize, Error> {
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
        out.clear();
        let max = self.max_message;
        let spin = self.spin;
        let r = match &mut self.conn {
            Conn::Kernel(s) => framing::recv_framed(out, max, |buf| kernel_read_exact(s, buf, spin)),
            Conn::Tcp(c) => {
                let peer = self.peer;
                framing::recv_framed(out, max, |buf| tcp_read_exact(c, peer, buf))
            }
            Conn::Failed { why, .. } => Err(failed(why)),
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
            Conn::Link { cid, _handle } => {
                self.rt.link().expect("link").shared.lock().abort_with(cid, RstReason::Protocol);
                self.rt.kick();
                drop(_handle);
            }
            Conn::Failed { .. } => {}
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
        let mut wants_transmit = false;
        let r = rt
            .wait_until(None, || {
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
        match &mut self.conn {
            Conn::Kernel(s) => {
                s.set_nonblocking(true).map_err(Error::Io)?;
                let r = s.write(data);
                s.set_nonblocking(self.spin).map_err(Error::Io)?;
                r.map_err(Error::from_io)
            }
            Conn::Failed { why, .. } => Err(failed(why)),
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
        match &mut self.conn {
            Conn::Kernel(s) => {
                s.set_nonblocking(true).map_err(Error::Io)?;
                let r = s.read(buf);
                s.set_nonblocking(self.spin).map_err(Error::Io)?;
                r.map_err(Error::from_io)
            }
            Conn::Tcp(c) => c.try_read(self.peer, buf)?.ok_or(Error::WouldBlock),
            Conn::Failed { why, .. } => Err(failed(why)),
            Conn::Link { cid, .. } => {
                let cid = *cid;
                let link = self.rt.link().expect("link");
                let mut ep = link.shared.lock();
                let r = ep.read(cid, buf, false).map_err(|_| Error::Closed)?;
                let c = ep.connection(cid).ok_or(Error::Closed)?;
                let result = if r.len > 0 || c.is_eof() || buf.is_empty() {
                    Ok(r.len)
                } else {
                    match c.close_reason() {
                        Some(CloseReason::Graceful) => Ok(0),
                        Some(reason) => Err(close_error(reason, self.peer)),
                        None => Err(Error::WouldBlock),
                    }
                };
                drop(ep);
                if r.len > 0 {
                    self.rt.kick();
                }
                result
            }
        }
    }

    // ---- ending ------------------------------------------------------------

    /// Closes the sending side (the peer reads the end of the stream after
    /// the last byte); receiving goes on.
    pub fn shutdown_write(&mut self) -> Result<(), Error> {
        match &mut self.conn {
            Conn::Kernel(s) => s.shutdown(Shutdown::Write).map_err(Error::Io),
            Conn::Tcp(c) => {
                c.shutdown();
                Ok(())
            }
            Conn::Failed { why, .. } => Err(failed(why)),
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
        // Already shut down (by a clone, say) or already ended: the state
        // below tells which.
        let _ = self.shutdown_write();
        let cid = match &self.conn {
            Conn::Link { cid, .. } => *cid,
            Conn::Tcp(c) => return c.wait_sent(self.peer, timeout),
            Conn::Kernel(_) => return Ok(()),
            Conn::Failed { why, .. } => return Err(failed(why)),
        };
        let rt = self.rt.clone();
        let peer = self.peer;
        let done = rt.wait_until(Some(Instant::now() + timeout), || {
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

    /// Aborts the connection: the peer sees a reset; unsent data is lost.
    pub fn abort(self) {
        self.abort_with(RstReason::Aborted);
    }

    /// For relays: aborts because the path to the far end is gone, so the
    /// endpoint's error says so (reliable-link; other paths plain abort).
    pub fn abort_path_lost(self) {
        self.abort_with(RstReason::PathLost);
    }

    fn abort_with(self, reason: RstReason) {
        if let Conn::Tcp(c) = &self.conn {
            c.abort();
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

/// Looks `ip` up as an xsock peer (discovery), waiting up to `deadline`.
fn discover(rt: &Runtime, ip: Ipv4Addr, deadline: Instant) -> Result<Option<Peer>, Error> {
    let link = rt.link().expect("caller checked");
    let mut first = true;
    let r = rt.wait_until(Some(deadline), || {
        let lookup = link.shared.lock().discover(Instant::now(), ip);
        if first {
            first = false;
            rt.kick();
        }
        Ok(match lookup {
            Lookup::Present(p) => Some(Some(p)),
            Lookup::Absent => Some(None),
            Lookup::Pending => None,
        })
    })?;
    r.ok_or_else(|| Error::TimedOut(format!("no answer to discovery of {ip} before the connect timeout")))
}

fn link_connect(rt: &Runtime, addr: SocketAddrV4, peer: Peer, mode: Mode, deadline: Instant) -> Result<Stream, Error> {
    let link = rt.link().expect("caller checked");
    let cid = link.shared.lock().connect(Instant::now(), *addr.ip(), addr.port(), peer, mode).map_err(|e| match e {
        xsock_reliable_link::EndpointError::MemoryLimit { reserved, limit, connections } => {
            Error::MemoryLimit { held: reserved, limit, connections }
        }
        e => Error::Config(e.to_string()),
    })?;
    rt.kick();
    let outcome = rt.wait_until(Some(deadline), || {
        let ep = link.shared.lock();
        let Some(c) = ep.connection(cid) else {
            return Err(Error::Closed);
        };
        if c.is_established() {
            return Ok(Some(Ok(())));
        }
        Ok(c.close_reason().map(|r| Err(close_error(r, addr))))
    })?;
    match outcome {
        Some(Ok(())) => Ok(Stream::from_link(rt, cid, mode)),
        Some(Err(e)) => {
            link.shared.lock().release(cid);
            Err(e)
        }
        None => {
            let mut ep = link.shared.lock();
            ep.abort(cid);
            ep.release(cid);
            Err(Error::TimedOut(format!("no handshake with {addr} before the connect timeout")))
        }
    }
}

fn kernel_connect(rt: &Runtime, addr: SocketAddrV4, mode: Mode, deadline: Instant) -> Result<Stream, Error> {
    let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let sock = TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => Error::ConnectionRefused(addr),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            Error::TimedOut(format!("kernel TCP connect to {addr} took longer than {timeout:?}"))
        }
        _ => Error::Io(e),
    })?;
    Stream::from_kernel(rt, sock, mode)
}

fn kernel_write_all(s: &mut TcpStream, bufs: &[IoSlice<'_>], spin: bool) -> Result<(), Error> {
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

fn kernel_read(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> Result<usize, Error> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && spin => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from_io(e)),
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
fn kernel_read_exact(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> Result<bool, Error> {
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
