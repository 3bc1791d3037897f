//! [`Listener`]: accepts connections on both paths at once — reliable-link
//! connections from xsock peers on the segment, and kernel TCP connections
//! from anyone else (a peer off the segment, or any TCP program).
//!
//! The kernel side is a non-blocking listening socket watched by a small
//! acceptor thread (sleeping in poll(2), not spinning), which hands accepted
//! sockets to `accept`. Each listener has its own notifier: a connection
//! arriving on either path wakes who waits on this listener (a blocking
//! `accept`, a [`crate::Poller`]), and nobody else.

use std::{
    collections::VecDeque,
    io,
    net::{SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsFd,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xsock_nic::sys::{EventFd, Interest, poll_fds};
use xsock_reliable_link::Mode;

use crate::{Error, Runtime, Stream, Transport, notify::Notifier, path::tcp::conn::TcpConn};

/// How to listen.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenOptions {
    /// Which paths to accept on.
    pub transport: Transport,
    /// Byte stream or messages (both ends must agree).
    pub mode: Mode,
}

struct KernelSide {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

/// What a listener's waiters look at: the ports it has on each path, the
/// kernel side's queue, and its notifier.
pub(crate) struct ListenShared {
    rt: Runtime,
    link_port: Option<u16>,
    tcp_port: Option<u16>,
    kernel_queue: Option<Arc<Mutex<VecDeque<TcpStream>>>>,
    /// The host engine's id for this listener (attached runtimes).
    engine: Option<u32>,
    pub signal: Arc<Notifier>,
    /// Streams handed to the listener by another carrier (an overlay
    /// session's virtual connections), each with the carrier's tag.
    offered: Mutex<VecDeque<(Stream, u64)>>,
}

impl ListenShared {
    /// Queues `stream`, tagged `tag`, for the listener's next accept.
    pub fn offer(&self, stream: Stream, tag: u64) {
        self.offered.lock().unwrap_or_else(|p| p.into_inner()).push_back((stream, tag));
        self.signal.notify();
    }

    /// Connections waiting to be accepted (on every path).
    pub fn waiting(&self) -> usize {
        let mut n = self.offered.lock().unwrap_or_else(|p| p.into_inner()).len();
        if let (Some(port), Some(tcp)) = (self.tcp_port, self.rt.tcp()) {
            n += tcp.lock().backlog(port);
        }
        if let (Some(port), Some(link)) = (self.link_port, self.rt.link()) {
            n += link.shared.lock().backlog(port);
        }
        if let Some(q) = &self.kernel_queue {
            n += q.lock().unwrap_or_else(|p| p.into_inner()).len();
        }
        if let (Some(id), Some(c)) = (self.engine, self.rt.client()) {
            n += c.waiting(id);
        }
        n
    }
}

/// Accepts connections on an address and port.
pub struct Listener {
    addr: SocketAddrV4,
    mode: Mode,
    shared: Arc<ListenShared>,
    kernel: Option<KernelSide>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("link", &self.shared.link_port.is_some())
            .field("tcp", &self.shared.tcp_port.is_some())
            .field("kernel", &self.kernel.is_some())
            .finish()
    }
}

impl Listener {
    /// Listens on `addr` on every path available.
    pub fn bind(rt: &Runtime, addr: SocketAddrV4) -> Result<Listener, Error> {
        Self::bind_with(rt, addr, ListenOptions::default())
    }

    /// Listens on `addr` as `opts` say. Port 0 asks the kernel for a free
    /// port; the listener then listens on that port on every path
    /// ([`Listener::local_addr`] says which).
    pub fn bind_with(rt: &Runtime, addr: SocketAddrV4, opts: ListenOptions) -> Result<Listener, Error> {
        let signal = Notifier::new();
        if let Some(client) = rt.client() {
            let (id, addr) = client.listen(addr, signal.clone(), opts.mode == Mode::Message)?;
            let shared = Arc::new(ListenShared {
                rt: rt.clone(),
                link_port: None,
                tcp_port: None,
                kernel_queue: None,
                engine: Some(id),
                signal,
                offered: Mutex::default(),
            });
            return Ok(Listener { addr, mode: opts.mode, shared, kernel: None });
        }
        let ip = (!addr.ip().is_unspecified()).then_some(*addr.ip());
        if opts.transport == Transport::Tcp {
            let tcp = rt.tcp().ok_or_else(|| {
                Error::Config("the TCP mode is unavailable: it needs an interface driven with AF_XDP".into())
            })?;
            let mut core = tcp.lock();
            if ip.is_some_and(|ip| ip != core.ip) {
                return Err(Error::Config(format!("the TCP mode listens on {} only, not on {}", core.ip, addr.ip())));
            }
            let port = core.listen(addr.port())?;
            let addr = SocketAddrV4::new(core.ip, port);
            drop(core);
            tcp.listeners.lock().unwrap_or_else(|p| p.into_inner()).insert(port, signal.clone());
            rt.kick_tcp();
            let shared = Arc::new(ListenShared {
                rt: rt.clone(),
                link_port: None,
                tcp_port: Some(port),
                kernel_queue: None,
                engine: None,
                signal,
                offered: Mutex::default(),
            });
            return Ok(Listener { addr, mode: opts.mode, shared, kernel: None });
        }
        // The kernel side first when there is one: it settles port 0.
        let mut addr = addr;
        let kernel_listener = if opts.transport == Transport::Link {
            None
        } else {
            let l = bind_kernel(addr)?;
            addr.set_port(l.local_addr().map_err(Error::Io)?.port());
            Some(l)
        };
        let mut link_port = None;
        if opts.transport != Transport::Kernel {
            match rt.link() {
                Some(link) => {
                    if ip.is_some_and(|ip| !link.addrs.iter().any(|a| a.ip == ip)) && opts.transport == Transport::Link
                    {
                        return Err(Error::Config(format!("{} is not an address of {}", addr.ip(), link.iface)));
                    }
                    if ip.is_none_or(|ip| link.addrs.iter().any(|a| a.ip == ip)) {
                        if addr.port() == 0 {
                            return Err(Error::Config(
                                "a reliable-link-only listener needs a port: 0 would ask the kernel, which this \
                                 listener does not use (use the automatic transport, or name a port)"
                                    .into(),
                            ));
                        }
                        link.shared.lock().listen(ip, addr.port()).map_err(|_| Error::AddrInUse(addr))?;
                        link.shared
                            .listeners
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(addr.port(), signal.clone());
                        link_port = Some(addr.port());
                    }
                }
                None if opts.transport == Transport::Link => return Err(Error::NoLink),
                None => {}
            }
        }
        let (kernel, kernel_queue) = match kernel_listener {
            Some(l) => {
                let queue = Arc::new(Mutex::new(VecDeque::new()));
                match start_kernel_side(rt, addr, l, queue.clone(), signal.clone()) {
                    Ok(k) => (Some(k), Some(queue)),
                    Err(e) => {
                        if let (Some(port), Some(link)) = (link_port, rt.link()) {
                            link.shared.lock().unlisten(port);
                            link.shared.listeners.lock().unwrap_or_else(|p| p.into_inner()).remove(&port);
                        }
                        return Err(e);
                    }
                }
            }
            None => (None, None),
        };
        let shared = Arc::new(ListenShared {
            rt: rt.clone(),
            link_port,
            tcp_port: None,
            kernel_queue,
            engine: None,
            signal,
            offered: Mutex::default(),
        });
        Ok(Listener { addr, mode: opts.mode, shared, kernel })
    }

    /// The address listened on (with the port the kernel chose, if 0 was
    /// asked for).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }

    pub(crate) fn shared(&self) -> &Arc<ListenShared> {
        &self.shared
    }

    /// Waits for the next connection on either path.
    pub fn accept(&self) -> Result<Stream, Error> {
        self.accept_timeout(None)?.ok_or(Error::Closed)
    }

    /// Waits up to `timeout` (forever with `None`) for a connection.
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<Option<Stream>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let rt = &self.shared.rt;
        let found = rt.wait_on(&self.shared.signal, deadline, || self.take_one())?;
        found.map(|a| self.stream(a)).transpose()
    }

    /// A connection if one is waiting now; [`Error::WouldBlock`] otherwise.
    pub fn try_accept(&self) -> Result<Stream, Error> {
        match self.take_one()? {
            Some(a) => self.stream(a),
            None => Err(Error::WouldBlock),
        }
    }

    fn stream(&self, a: Accepted) -> Result<Stream, Error> {
        let rt = &self.shared.rt;
        match a {
            Accepted::Link(cid) => Ok(Stream::from_link(rt, cid, self.mode)),
            Accepted::Kernel(sock) => Stream::from_kernel(rt, sock, self.mode),
            Accepted::Tcp(h) => Ok(Stream::from_tcp(rt, TcpConn::new(rt, h, Notifier::new()), self.mode)),
            Accepted::Engine(h) => Stream::from_engine(rt, h, self.mode),
            Accepted::Offered(s, _) => Ok(s),
        }
    }

    /// Like [`Listener::accept_timeout`], also saying which streams were
    /// offered ([`ListenShared::offer`]) and with what tag.
    pub(crate) fn accept_tagged(&self, timeout: Option<Duration>) -> Result<Option<(Stream, Option<u64>)>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let rt = &self.shared.rt;
        let found = rt.wait_on(&self.shared.signal, deadline, || self.take_one())?;
        found.map(|a| self.stream_tagged(a)).transpose()
    }

    /// Like [`Listener::try_accept`], also giving the tag of a stream an
    /// overlay session offered (the id of the node that opened it).
    pub fn try_accept_tagged(&self) -> Result<(Stream, Option<u64>), Error> {
        match self.take_one()? {
            Some(a) => self.stream_tagged(a),
            None => Err(Error::WouldBlock),
        }
    }

    fn stream_tagged(&self, a: Accepted) -> Result<(Stream, Option<u64>), Error> {
        match a {
            Accepted::Offered(s, tag) => Ok((s, Some(tag))),
            a => Ok((self.stream(a)?, None)),
        }
    }

    fn take_one(&self) -> Result<Option<Accepted>, Error> {
        let s = &self.shared;
        if let Some((st, tag)) = s.offered.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
            return Ok(Some(Accepted::Offered(st, tag)));
        }
        if let (Some(id), Some(c)) = (s.engine, s.rt.client()) {
            return Ok(c.take_accepted(id)?.map(Accepted::Engine));
        }
        if let (Some(port), Some(tcp)) = (s.tcp_port, s.rt.tcp()) {
            return Ok(tcp.lock().accept(port).map(Accepted::Tcp));
        }
        if let (Some(port), Some(link)) = (s.link_port, s.rt.link())
            && let Some(cid) = link.shared.lock().accept(port)
        {
            return Ok(Some(Accepted::Link(cid)));
        }
        let Some(q) = s.kernel_queue.as_ref() else { return Ok(None) };
        Ok(q.lock().unwrap_or_else(|p| p.into_inner()).pop_front().map(Accepted::Kernel))
    }
}

enum Accepted {
    Offered(Stream, u64),
    Engine(crate::engine_client::Handed),
    Link(u64),
    Kernel(TcpStream),
    Tcp(smoltcp::iface::SocketHandle),
}

/// Accept queue of a kernel listener.
const KERNEL_BACKLOG: i32 = 4096;

fn bind_kernel(addr: SocketAddrV4) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => Error::AddrInUse(addr),
        io::ErrorKind::AddrNotAvailable => {
            Error::Config(format!("{} is not an address of this host (check `ip addr`)", addr.ip()))
        }
        _ => Error::Io(e),
    })?;
    listener.set_nonblocking(true).map_err(Error::Io)?;
    // As deep as the link path's accept queue (the kernel caps it at
    // net.core.somaxconn).
    xsock_nic::sys::set_listen_backlog(listener.as_fd(), KERNEL_BACKLOG).map_err(Error::Io)?;
    Ok(listener)
}

fn start_kernel_side(
    rt: &Runtime,
    addr: SocketAddrV4,
    listener: TcpListener,
    queue: Arc<Mutex<VecDeque<TcpStream>>>,
    signal: Arc<Notifier>,
) -> Result<KernelSide, Error> {
    let stop = Arc::new(EventFd::new().map_err(Error::Io)?);
    let (s, rt2) = (stop.clone(), rt.clone());
    let thread = std::thread::Builder::new()
        .name(format!("xsock-accept-{}", addr.port()))
        .spawn(move || accept_loop(listener, queue, s, rt2, signal))
        .map_err(Error::Io)?;
    Ok(KernelSide { stop, thread: Some(thread) })
}

fn accept_loop(
    listener: TcpListener,
    queue: Arc<Mutex<VecDeque<TcpStream>>>,
    stop: Arc<EventFd>,
    rt: Runtime,
    signal: Arc<Notifier>,
) {
    loop {
        let interest = [
            Interest { fd: listener.as_fd(), read: true, write: false },
            Interest { fd: stop.fd(), read: true, write: false },
        ];
        match poll_fds(&interest, None) {
            Ok(ready) if ready[1].readable => return,
            Ok(_) => {}
            Err(e) => {
                log::warn!("kernel accept loop stopped: {e}");
                return;
            }
        }
        loop {
            match listener.accept() {
                Ok((sock, _)) => {
                    queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(sock);
                    signal.notify();
                    rt.notify();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("kernel accept failed: {e}");
                    break;
                }
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let s = &self.shared;
        if let (Some(id), Some(c)) = (s.engine, s.rt.client()) {
            c.unlisten(id);
        }
        if let (Some(port), Some(tcp)) = (s.tcp_port, s.rt.tcp()) {
            tcp.lock().unlisten(port);
            tcp.listeners.lock().unwrap_or_else(|p| p.into_inner()).remove(&port);
            s.rt.kick_tcp();
        }
        if let (Some(port), Some(link)) = (s.link_port, s.rt.link()) {
            link.shared.lock().unlisten(port);
            link.shared.listeners.lock().unwrap_or_else(|p| p.into_inner()).remove(&port);
            s.rt.kick();
        }
        if let Some(k) = &mut self.kernel {
            k.stop.signal();
            if let Some(t) = k.thread.take() {
                let _ = t.join();
            }
        }
    }
}
