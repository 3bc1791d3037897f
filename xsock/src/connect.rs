//! Connecting without blocking: one state machine for every path, driven by
//! whoever looks at it (a blocking connect waiting on it, a stream call, or
//! a [`crate::Poller`]), so a rank can open a thousand connections at once.
//!
//! Path selection, as the Myrinet socket bypass switches protocols: a
//! destination on the driven interface's subnet is looked up with
//! reliable-link discovery; if an xsock peer answers, the connection goes
//! over reliable-link. Anything else (a peer off the segment, a peer that
//! does not run xsock, no interface, an xsock peer that refuses on
//! reliable-link because a plain TCP server owns the port) goes over the
//! kernel's TCP, or over the TCP mode with `prefer_tcp_mode`.
//!
//! Every stage waits on something that wakes the connect's notifier: a
//! discovery concluding, the link handshake (the connection's events), the
//! TCP mode's handshake (its housekeeping), or — for the kernel's
//! non-blocking connect — the socket becoming writable, which the caller
//! polls (see [`Pending::kernel_fd`]).

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use xsock_nic::sys::{self, Interest};
use xsock_reliable_link::{CloseReason, Lookup};

use crate::{
    ConnectOptions, Error, Runtime, Transport,
    notify::Notifier,
    path::tcp::conn::TcpConn,
    stream::{Conn, LinkHandle, close_error},
};

/// How long the TCP mode waits for the kernel to resolve the next hop.
const ARP_WAIT: Duration = Duration::from_secs(3);

enum Stage {
    /// Nothing decided yet.
    Start,
    /// Waiting for reliable-link discovery of the address.
    Discover,
    /// The reliable-link handshake is under way.
    Link(Conn),
    /// The TCP mode waits for the kernel to know the next hop's MAC.
    TcpArp { hop: Ipv4Addr, since: Instant },
    /// The TCP mode's handshake is under way.
    Tcp(TcpConn),
    /// The kernel's non-blocking connect is under way.
    Kernel(TcpStream),
    /// The host engine is connecting for us (request `req`).
    Engine { req: u32 },
    /// Connected; the stream has not taken the connection yet.
    Done(Conn),
    /// Connected and taken: what the stream now holds.
    Taken(Source),
    /// Failed (every look gets the error again).
    Failed(Error),
}

/// Where a connection's readiness comes from, once it is established.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Link(u64),
    Tcp(smoltcp::iface::SocketHandle),
    Kernel(RawFd),
    /// A host-engine stream over shared rings: its descriptor (doorbells,
    /// hang-up) and the rings (weak: a poller must not keep the stream
    /// open).
    Rings(RawFd, std::sync::Weak<crate::path::rings::Rings>),
}

/// What a look at a connect found.
pub(crate) enum Progress {
    /// Still connecting.
    Waiting,
    /// Connected: the connection, for the stream to take.
    Ready(Conn),
    /// Connected, already taken.
    Taken(Source),
    /// Failed.
    Failed(Error),
}

/// One connect in progress.
pub(crate) struct Pending {
    pub addr: SocketAddrV4,
    pub opts: ConnectOptions,
    pub deadline: Instant,
    /// Woken by everything the connect waits on; becomes the connection's
    /// own notifier.
    pub signal: Arc<Notifier>,
    stage: Stage,
    /// The host engine's request, while it is out (dropped unanswered:
    /// the engine's answer is let go of when it comes).
    engine_req: Option<u32>,
    rt: Option<Runtime>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let (Some(req), Some(c)) = (self.engine_req, self.rt.as_ref().and_then(|r| r.client())) {
            c.abandon(req);
        }
    }
}

impl Pending {
    /// Starts connecting to `addr`. Errors that need no waiting (no link
    /// for a forced reliable-link, no TCP mode) come back here.
    pub fn start(rt: &Runtime, addr: SocketAddrV4, opts: ConnectOptions) -> Result<Pending, Error> {
        if opts.transport == Transport::Link && !rt.has_link() {
            return Err(Error::NoLink);
        }
        if opts.transport == Transport::Tcp && !rt.has_tcp_mode() {
            return Err(tcp_unavailable());
        }
        let mut p = Pending {
            addr,
            opts,
            deadline: Instant::now() + opts.timeout,
            signal: Notifier::new(),
            stage: Stage::Start,
            engine_req: None,
            rt: rt.is_attached().then(|| rt.clone()),
        };
        // The first step at once: a SYN or DISCOVER goes out now.
        match p.advance(rt) {
            Progress::Failed(e) => return Err(e),
            Progress::Ready(conn) => p.put_back(conn),
            Progress::Waiting | Progress::Taken(_) => {}
        }
        Ok(p)
    }

    /// The kernel socket being connected, if that is the stage (its
    /// writability is the event to wait for).
    pub fn kernel_fd(&self) -> Option<RawFd> {
        match &self.stage {
            Stage::Kernel(s) => Some(s.as_raw_fd()),
            _ => None,
        }
    }

    /// Gives back a connection [`Pending::advance`] handed out (to a poller,
    /// which only looks): the stream takes it on its next call.
    pub fn put_back(&mut self, conn: Conn) {
        self.stage = Stage::Done(conn);
    }

    /// Waits up to `max` for the kernel socket being connected to become
    /// writable (returns at once in other stages).
    pub fn wait_kernel(&self, max: Duration) -> std::io::Result<()> {
        if let Stage::Kernel(s) = &self.stage {
            sys::poll_fds(&[Interest { fd: s.as_fd(), read: false, write: true }], Some(max))?;
        }
        Ok(())
    }

    /// Whether the connect waits on something only polling notices (the
    /// kernel resolving a next hop): the caller should look again soon.
    pub fn needs_polling(&self) -> bool {
        matches!(self.stage, Stage::TcpArp { .. })
    }

    /// Moves the connect on as far as it can go now.
    pub fn advance(&mut self, rt: &Runtime) -> Progress {
        loop {
            let now = Instant::now();
            let stage = std::mem::replace(&mut self.stage, Stage::Start);
            let next = match stage {
                Stage::Start => self.choose(rt),
                Stage::Discover => self.discover(rt, now),
                Stage::Link(conn) => self.link(rt, conn, now),
                Stage::TcpArp { hop, since } => self.tcp_arp(rt, hop, since, now),
                Stage::Tcp(c) => self.tcp(c, now),
                Stage::Kernel(s) => self.kernel(s, now),
                Stage::Engine { req } => self.engine(rt, req, now),
                Stage::Done(conn) => {
                    self.stage = Stage::Taken(source_of(&conn));
                    return Progress::Ready(conn);
                }
                Stage::Taken(src) => {
                    self.stage = Stage::Taken(src.clone());
                    return Progress::Taken(src);
                }
                Stage::Failed(e) => {
                    let again = e.duplicate();
                    self.stage = Stage::Failed(e);
                    return Progress::Failed(again);
                }
            };
            match next {
                Ok(Step::Go(stage)) => self.stage = stage,
                Ok(Step::Wait(stage)) => {
                    self.stage = stage;
                    return Progress::Waiting;
                }
                Err(e) => {
                    self.stage = Stage::Failed(e.duplicate());
                    return Progress::Failed(e);
                }
            }
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Which path to try first.
    fn choose(&mut self, rt: &Runtime) -> Result<Step, Error> {
        if let Some(client) = rt.client() {
            // The host engine chooses and connects; its answer wakes us.
            let req = client.connect_begin(
                self.addr,
                self.opts.transport,
                self.opts.timeout,
                self.opts.mode == xsock_reliable_link::Mode::Message,
                self.signal.clone(),
            )?;
            self.engine_req = Some(req);
            return Ok(Step::Wait(Stage::Engine { req }));
        }
        match self.opts.transport {
            Transport::Tcp => return Ok(Step::Go(self.tcp_start(rt)?)),
            Transport::Kernel => return Ok(Step::Go(self.kernel_start()?)),
            _ => {}
        }
        let on_segment = rt.link().is_some_and(|l| l.addrs.iter().any(|a| a.contains(*self.addr.ip())));
        if on_segment || (self.opts.transport == Transport::Link && rt.link().is_some()) {
            return Ok(Step::Go(Stage::Discover));
        }
        self.fallback(rt)
    }

    /// Not over reliable-link: the TCP mode if preferred, else the kernel.
    fn fallback(&mut self, rt: &Runtime) -> Result<Step, Error> {
        if rt.link().is_some_and(|l| l.tcp_fallback) && rt.has_tcp_mode() {
            return Ok(Step::Go(self.tcp_start(rt)?));
        }
        Ok(Step::Go(self.kernel_start()?))
    }

    fn engine(&mut self, rt: &Runtime, req: u32, now: Instant) -> Result<Step, Error> {
        let client = rt.client().expect("an engine stage needs the engine");
        match client.take_reply(req, self.addr)? {
            Some(h) => {
                self.engine_req = None;
                Ok(Step::Go(Stage::Done(crate::stream::engine_conn(rt, h)?)))
            }
            None if now >= self.deadline + crate::engine_client::CONNECT_GRACE => Err(Error::TimedOut(format!(
                "the host engine did not answer a connect to {} within {:?}",
                self.addr,
                self.opts.timeout + crate::engine_client::CONNECT_GRACE
            ))),
            None => Ok(Step::Wait(Stage::Engine { req })),
        }
    }

    fn discover(&mut self, rt: &Runtime, now: Instant) -> Result<Step, Error> {
        let link = rt.link().expect("chosen only with a link");
        let ip = *self.addr.ip();
        let lookup = link.shared.lock().discover(now, ip);
        match lookup {
            Lookup::Present(peer) => {
                let cid =
                    link.shared.lock().connect(now, ip, self.addr.port(), peer, self.opts.mode).map_err(
                        |e| match e {
                            xsock_reliable_link::EndpointError::MemoryLimit { reserved, limit, connections } => {
                                Error::MemoryLimit { held: reserved, limit, connections }
                            }
                            e => Error::Config(e.to_string()),
                        },
                    )?;
                let handle = Arc::new(LinkHandle::new(rt, cid, self.signal.clone()));
                rt.kick();
                Ok(Step::Go(Stage::Link(Conn::Link { cid, handle })))
            }
            Lookup::Absent if self.opts.transport == Transport::Link => Err(Error::NotXsockPeer(ip)),
            Lookup::Absent => self.fallback(rt),
            Lookup::Pending if self.expired(now) => {
                Err(Error::TimedOut(format!("no answer to discovery of {ip} before the connect timeout")))
            }
            Lookup::Pending => {
                link.shared.await_discovery(&self.signal);
                rt.kick();
                Ok(Step::Wait(Stage::Discover))
            }
        }
    }

    fn link(&mut self, rt: &Runtime, conn: Conn, now: Instant) -> Result<Step, Error> {
        let Conn::Link { cid, .. } = &conn else { unreachable!("the link stage holds a link connection") };
        let cid = *cid;
        let link = rt.link().expect("a link connection needs the link");
        let state = {
            let ep = link.shared.lock();
            ep.connection(cid).map(|c| (c.is_established(), c.close_reason()))
        };
        match state {
            Some((true, _)) => Ok(Step::Go(Stage::Done(conn))),
            Some((false, Some(CloseReason::Refused))) if self.opts.transport == Transport::Auto => {
                log::debug!("{} refused on reliable-link; trying kernel TCP", self.addr);
                drop(conn); // releases the link connection
                self.fallback(rt)
            }
            Some((false, Some(r))) => Err(close_error(r, self.addr)),
            None => Err(Error::Closed),
            Some((false, None)) if self.expired(now) => {
                link.shared.lock().abort(cid);
                Err(Error::TimedOut(format!("no handshake with {} before the connect timeout", self.addr)))
            }
            Some((false, None)) => Ok(Step::Wait(Stage::Link(conn))),
        }
    }

    /// The TCP mode: first make sure the kernel knows the next hop, so the
    /// first SYN is not lost to a neighbour lookup.
    fn tcp_start(&mut self, rt: &Runtime) -> Result<Stage, Error> {
        let tcp = rt.tcp().ok_or_else(tcp_unavailable)?;
        let hop = tcp.lock().next_hop(*self.addr.ip()).ok_or_else(|| {
            Error::Config(format!(
                "no route to {}: it is off our subnet and the interface has no default gateway",
                self.addr
            ))
        })?;
        let core = tcp.lock();
        if core.arp.source().known(hop).is_none() {
            core.arp.source().ask(hop);
        }
        Ok(Stage::TcpArp { hop, since: Instant::now() })
    }

    fn tcp_arp(&mut self, rt: &Runtime, hop: Ipv4Addr, since: Instant, now: Instant) -> Result<Step, Error> {
        let tcp = rt.tcp().ok_or_else(tcp_unavailable)?;
        if tcp.lock().arp.source().known(hop).is_none() {
            if now.duration_since(since) >= ARP_WAIT || self.expired(now) {
                return Err(Error::TimedOut(format!(
                    "{hop} does not answer ARP on this interface{}: is the peer up and on this link?",
                    if hop == *self.addr.ip() { String::new() } else { format!(" (the gateway to {})", self.addr) }
                )));
            }
            return Ok(Step::Wait(Stage::TcpArp { hop, since }));
        }
        let h = tcp.lock().connect(now, self.addr)?;
        let conn = TcpConn::new(rt, h, self.signal.clone());
        rt.kick_tcp();
        Ok(Step::Go(Stage::Tcp(conn)))
    }

    fn tcp(&mut self, c: TcpConn, now: Instant) -> Result<Step, Error> {
        if c.established(self.addr)? {
            return Ok(Step::Go(Stage::Done(Conn::Tcp(c))));
        }
        if self.expired(now) {
            c.abort();
            return Err(Error::TimedOut(format!("no TCP handshake with {} before the connect timeout", self.addr)));
        }
        Ok(Step::Wait(Stage::Tcp(c)))
    }

    fn kernel_start(&mut self) -> Result<Stage, Error> {
        let s = sys::tcp_connect_start(self.addr).map_err(|e| self.kernel_error(e))?;
        Ok(Stage::Kernel(s))
    }

    fn kernel(&mut self, s: TcpStream, now: Instant) -> Result<Step, Error> {
        let ready = sys::poll_fds(&[Interest { fd: s.as_fd(), read: false, write: true }], Some(Duration::ZERO))
            .map_err(Error::Io)?;
        if ready[0].writable || ready[0].error {
            return match sys::socket_error(s.as_fd()).map_err(Error::Io)? {
                None => Ok(Step::Go(Stage::Done(Conn::Kernel(crate::path::kernel::Sock::Tcp(s))))),
                Some(e) => Err(self.kernel_error(e)),
            };
        }
        if self.expired(now) {
            return Err(Error::TimedOut(format!(
                "kernel TCP connect to {} took longer than {:?}",
                self.addr, self.opts.timeout
            )));
        }
        Ok(Step::Wait(Stage::Kernel(s)))
    }

    fn kernel_error(&self, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused(self.addr),
            std::io::ErrorKind::TimedOut => {
                Error::TimedOut(format!("kernel TCP connect to {}: the peer does not answer", self.addr))
            }
            // The kind kept (EHOSTUNREACH, as the kernel's own connect
            // reports a neighbour that never answered ARP).
            k @ (std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable) => {
                Error::Io(std::io::Error::new(k, format!("kernel TCP connect to {}: no route to the host", self.addr)))
            }
            _ => Error::Io(e),
        }
    }
}

/// What the next stage is, and whether to go on now or wait.
enum Step {
    Go(Stage),
    Wait(Stage),
}

fn tcp_unavailable() -> Error {
    Error::Config(
        "the TCP mode is unavailable: it needs an interface driven with AF_XDP (see Runtime::link_status for why it \
         is not)"
            .into(),
    )
}

pub(crate) fn source_of(conn: &Conn) -> Source {
    match conn {
        Conn::Link { cid, .. } => Source::Link(*cid),
        Conn::Tcp(c) => Source::Tcp(c.h),
        Conn::Kernel(crate::path::kernel::Sock::Engine(e)) if e.rings.is_some() => {
            Source::Rings(e.sock.as_raw_fd(), Arc::downgrade(e.rings.as_ref().expect("rings")))
        }
        Conn::Kernel(s) => Source::Kernel(s.as_raw_fd()),
        Conn::Connecting(_) | Conn::Failed { .. } => unreachable!("only established connections have a source"),
    }
}
