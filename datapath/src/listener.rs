//! [`Listener`]: accepts connections on both paths at once — reliable-link
//! connections from xsock peers on the segment, and kernel TCP connections
//! from anyone else (a peer off the segment, or any TCP program).
//!
//! The kernel side is a non-blocking listening socket watched by a small
//! acceptor thread (sleeping in poll(2), not spinning), which hands accepted
//! sockets to `accept` through the runtime's notifier.

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

use crate::{Error, Runtime, Stream, Transport, tcp::conn::TcpConn};

/// How to listen.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenOptions {
    /// Which paths to accept on.
    pub transport: Transport,
    /// Byte stream or messages (both ends must agree).
    pub mode: Mode,
}

struct KernelSide {
    queue: Arc<Mutex<VecDeque<TcpStream>>>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

/// Accepts connections on an address and port.
pub struct Listener {
    rt: Runtime,
    addr: SocketAddrV4,
    mode: Mode,
    link_port: Option<u16>,
    kernel: Option<KernelSide>,
    tcp_port: Option<u16>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("link", &self.link_port.is_some())
            .field("kernel", &self.kernel.is_some())
            .finish()
    }
}

impl Listener {
    /// Listens on `addr` on every path available.
    pub fn bind(rt: &Runtime, addr: SocketAddrV4) -> Result<Listener, Error> {
        Self::bind_with(rt, addr, ListenOptions::default())
    }

    /// Listens on `addr` as `opts` say.
    pub fn bind_with(rt: &Runtime, addr: SocketAddrV4, opts: ListenOptions) -> Result<Listener, Error> {
        let ip = (!addr.ip().is_unspecified()).then_some(*addr.ip());
        if opts.transport == Transport::Tcp {
            let tcp = rt.tcp().ok_or_else(|| {
                Error::Config("the TCP mode is unavailable: it needs an interface driven with AF_XDP".into())
            })?;
            let mut core = tcp.lock();
            if ip.is_some_and(|ip| ip != core.ip) {
                return Err(Error::Config(format!("the TCP mode listens on {} only, not on {}", core.ip, addr.ip())));
            }
            core.listen(addr.port())?;
            let addr = SocketAddrV4::new(core.ip, addr.port());
            drop(core);
            rt.kick_tcp();
            return Ok(Listener {
                rt: rt.clone(),
                addr,
                mode: opts.mode,
                link_port: None,
                kernel: None,
                tcp_port: Some(addr.port()),
            });
        }
        let mut link_port = None;
        if opts.transport != Transport::Kernel {
            match rt.link() {
                Some(link) => {
                    if ip.is_some_and(|ip| !link.addrs.iter().any(|a| a.ip == ip)) && opts.transport == Transport::Link
                    {
                        return Err(Error::Config(format!("{} is not an address of {}", addr.ip(), link.iface)));
                    }
                    if ip.is_none_or(|ip| link.addrs.iter().any(|a| a.ip == ip)) {
                        link.shared.lock().listen(ip, addr.port()).map_err(|_| Error::AddrInUse(addr))?;
                        link_port = Some(addr.port());
                    }
                }
                None if opts.transport == Transport::Link => return Err(Error::NoLink),
                None => {}
            }
        }
        let kernel = if opts.transport == Transport::Link {
            None
        } else {
            match start_kernel_side(rt, addr) {
                Ok(k) => Some(k),
                Err(e) => {
                    if let (Some(port), Some(link)) = (link_port, rt.link()) {
                        link.shared.lock().unlisten(port);
                    }
                    return Err(e);
                }
            }
        };
        Ok(Listener { rt: rt.clone(), addr, mode: opts.mode, link_port, kernel, tcp_port: None })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Waits for the next connection on either path.
    pub fn accept(&self) -> Result<Stream, Error> {
        self.accept_timeout(None)?.ok_or(Error::Closed)
    }

    /// Waits up to `timeout` (forever with `None`) for a connection.
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<Option<Stream>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let found = self.rt.wait_until(deadline, || Ok(self.take_one()))?;
        match found {
            Some(Accepted::Link(cid)) => Ok(Some(Stream::from_link(&self.rt, cid, self.mode))),
            Some(Accepted::Kernel(sock)) => Ok(Some(Stream::from_kernel(&self.rt, sock, self.mode)?)),
            Some(Accepted::Tcp(h)) => Ok(Some(Stream::from_tcp(&self.rt, TcpConn::new(&self.rt, h), self.mode))),
            None => Ok(None),
        }
    }

    /// A connection if one is waiting now; [`Error::WouldBlock`] otherwise.
    pub fn try_accept(&self) -> Result<Stream, Error> {
        match self.take_one() {
            Some(Accepted::Link(cid)) => Ok(Stream::from_link(&self.rt, cid, self.mode)),
            Some(Accepted::Kernel(sock)) => Stream::from_kernel(&self.rt, sock, self.mode),
            Some(Accepted::Tcp(h)) => Ok(Stream::from_tcp(&self.rt, TcpConn::new(&self.rt, h), self.mode)),
            None => Err(Error::WouldBlock),
        }
    }

    fn take_one(&self) -> Option<Accepted> {
        if let (Some(port), Some(tcp)) = (self.tcp_port, self.rt.tcp()) {
            return tcp.lock().accept(port).map(Accepted::Tcp);
        }
        if let (Some(port), Some(link)) = (self.link_port, self.rt.link())
            && let Some(cid) = link.shared.lock().accept(port)
        {
            return Some(Accepted::Link(cid));
        }
        let k = self.kernel.as_ref()?;
        k.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front().map(Accepted::Kernel)
    }
}

enum Accepted {
    Link(u64),
    Kernel(TcpStream),
    Tcp(smoltcp::iface::SocketHandle),
}

fn start_kernel_side(rt: &Runtime, addr: SocketAddrV4) -> Result<KernelSide, Error> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => Error::AddrInUse(addr),
        io::ErrorKind::AddrNotAvailable => {
            Error::Config(format!("{} is not an address of this host (check `ip addr`)", addr.ip()))
        }
        _ => Error::Io(e),
    })?;
    listener.set_nonblocking(true).map_err(Error::Io)?;
    let queue = Arc::new(Mutex::new(VecDeque::new()));
    let stop = Arc::new(EventFd::new().map_err(Error::Io)?);
    let (q, s, rt2) = (queue.clone(), stop.clone(), rt.clone());
    let thread = std::thread::Builder::new()
        .name(format!("xsock-accept-{}", addr.port()))
        .spawn(move || accept_loop(listener, q, s, rt2))
        .map_err(Error::Io)?;
    Ok(KernelSide { queue, stop, thread: Some(thread) })
}

fn accept_loop(listener: TcpListener, queue: Arc<Mutex<VecDeque<TcpStream>>>, stop: Arc<EventFd>, rt: Runtime) {
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
        if let (Some(port), Some(tcp)) = (self.tcp_port, self.rt.tcp()) {
            tcp.lock().unlisten(port);
            self.rt.kick_tcp();
        }
        if let (Some(port), Some(link)) = (self.link_port, self.rt.link()) {
            link.shared.lock().unlisten(port);
            self.rt.kick();
        }
        if let Some(k) = &mut self.kernel {
            k.stop.signal();
            if let Some(t) = k.thread.take() {
                let _ = t.join();
            }
        }
    }
}
