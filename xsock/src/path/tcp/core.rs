//! The TCP mode's state: smoltcp's interface and sockets, the ports we took
//! from the kernel, and what the socket API asks of them.

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use smoltcp::{
    iface::{Config, Interface, SocketHandle, SocketSet},
    socket::tcp::{self, CongestionControl, State},
    wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint},
};
use xsock_nic::{MacAddr, xdp::Ipv4Rule, xdp::XdpFilter};
use xsock_pacer::{CapConfig, CapCoordinator, GapPacer, StreamId, StreamSample};
use xsock_reliable_link::buffer::Budget;

use super::{Congestion, Pace, TcpConfig, arp::ArpProxy, arp::NeighborSource};
use crate::{Error, notify::Notifier};

const IPPROTO_TCP: u8 = 6;

/// The TCP mode and what waits on it.
pub(crate) struct TcpShared {
    pub core: Mutex<TcpCore>,
    /// The runtime's "anything changed" notifier.
    pub notifier: Arc<Notifier>,
    /// Each held connection's notifier (see [`crate::path::link::LinkShared`]).
    pub signals: Mutex<HashMap<SocketHandle, Arc<Notifier>>>,
    /// Each listening port's notifier.
    pub listeners: Mutex<HashMap<u16, Arc<Notifier>>>,
}

impl TcpShared {
    pub fn new(core: TcpCore, notifier: Arc<Notifier>) -> Self {
        Self {
            core: Mutex::new(core),
            notifier,
            signals: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, TcpCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, h: SocketHandle, signal: &Arc<Notifier>) {
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).insert(h, signal.clone());
    }

    pub fn unregister(&self, h: SocketHandle) {
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).remove(&h);
    }

    /// Wakes the connections and listeners housekeeping found changed.
    pub fn wake(&self, handles: &mut Vec<SocketHandle>, ports: &mut Vec<u16>) {
        if handles.is_empty() && ports.is_empty() {
            return;
        }
        {
            let signals = self.signals.lock().unwrap_or_else(|p| p.into_inner());
            for h in handles.drain(..) {
                if let Some(s) = signals.get(&h) {
                    s.notify();
                }
            }
        }
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for port in ports.drain(..) {
            if let Some(s) = listeners.get(&port) {
                s.notify();
            }
        }
    }
}

/// Bytes in MiB, for people.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Per connection, beside smoltcp's socket.
struct ConnMeta {
    /// A kernel socket bound to our port, so the kernel gives it to no one
    /// else (connections we opened; accepted ones share the listener's).
    port_guard: Option<Arc<TcpListener>>,
    /// The filter rule steering our port to us (connections we opened).
    rule: Option<Ipv4Rule>,
    released: bool,
    aborted: bool,
    /// Given up on by us: data waited unacknowledged for `dead_after`.
    timed_out: bool,
    established: bool,
    peer_finished: bool,
    started: Instant,
    rtt: Option<Duration>,
    last_progress: Instant,
    last_queues: (usize, usize),
    last_state: State,
    written: u64,
    /// Bytes the application took out.
    read: u64,
    /// (acknowledged, arrived) bytes when housekeeping last looked: either
    /// growing is progress (the queues alone can stay level while data
    /// flows, an application refilling what the peer acknowledges).
    last_moved: (u64, u64),
    /// Our FIN waits for the send queue to drain (see [`TcpCore::shutdown`]).
    fin_deferred: bool,
    cap: Option<StreamId>,
    /// The warning that the send buffer is too small for the path was given.
    buffer_warned: bool,
}

struct ListenMeta {
    ready: Vec<SocketHandle>,
    /// Got a SYN; accepted once the handshake completes.
    pending: Vec<SocketHandle>,
    accepted: VecDeque<SocketHandle>,
    port_guard: Option<Arc<TcpListener>>,
    rule: Option<Ipv4Rule>,
}

/// What a TCP-mode connection has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Bytes written and acknowledged by the peer.
    pub acked_bytes: u64,
    /// Data segments sent, retransmissions included.
    pub segments_sent: u64,
    /// Data segments sent again.
    pub retransmits: u64,
    /// The window cap in force, if window caps are on.
    pub window_cap: Option<u64>,
    /// Time from SYN to established (the first RTT sample).
    pub handshake_rtt: Option<Duration>,
    /// Bytes sent and not yet acknowledged (read off the wire).
    pub in_flight: u64,
    /// Smoothed round-trip time of data segments (read off the wire).
    pub srtt: Option<Duration>,
}

/// What a read found.
pub(crate) enum ReadOutcome {
    Data(usize),
    End,
    Empty,
}

pub(crate) struct TcpCore {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    conns: HashMap<SocketHandle, ConnMeta>,
    listeners: HashMap<u16, ListenMeta>,
    filter: Option<Arc<XdpFilter>>,
    /// Users of each steered port (a listener and the connections it
    /// accepted share one rule; it goes when the last of them does).
    steered: HashMap<u16, usize>,
    pub ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    pub arp: ArpProxy,
    pub pacer: Option<GapPacer>,
    caps: Option<CapCoordinator>,
    pub config: TcpConfig,
    pub epoch: Instant,
    /// Frames to feed smoltcp on the next pass (synthesized ARP replies).
    pub injected: VecDeque<Vec<u8>>,
    pub mtu: usize,
    next_port: u16,
    /// The earliest `dead_after` deadline of a connection with data in flight.
    give_up_at: Option<Instant>,
    pub tracker: super::flows::FlowTracker,
    /// Copies of unacknowledged segments, sent again from SACK information.
    pub sack: super::sack::SackRecovery,
    /// Out-of-order segments held beside smoltcp's receivers.
    pub reorder: super::reorder::Reorder,
    /// Every socket's buffers are reserved here while it exists.
    budget: Arc<Budget>,
    /// Connections whose state changed in the last housekeeping (to wake).
    pub changed: Vec<SocketHandle>,
    /// Listening ports with a connection newly ready to accept.
    pub acceptable: Vec<u16>,
}

/// Where the TCP mode runs.
pub(crate) struct TcpSetup {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub neighbors: NeighborSource,
    pub filter: Option<Arc<XdpFilter>>,
    pub mtu: usize,
    pub seed: u64,
    /// The runtime's memory budget (shared with reliable-link).
    pub budget: Arc<Budget>,
}

impl TcpCore {
    pub fn new(setup: TcpSetup, config: TcpConfig) -> Result<TcpCore, Error> {
        let epoch = Instant::now();
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(setup.mac.0)));
        cfg.random_seed = setup.seed;
        let mut dev = NullDevice(setup.mtu, config.verify_checksum);
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(setup.ip.into(), setup.prefix));
        });
        if let Some(gw) = setup.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| Error::Config("the TCP mode's route table is full".into()))?;
        }
        let model = config.congestion == Congestion::Model;
        let pacer = match config.pace {
            Pace::Rate(r) => Some(GapPacer::with_quantum(r, config.pace_quantum)),
            // The model paces at its own rate (set in housekeeping).
            _ if model => Some(GapPacer::with_quantum(UNPACED, config.pace_quantum)),
            Pace::Off => None,
            Pace::Auto => Some(GapPacer::with_quantum(super::flows::AUTO_PACE_FLOOR, config.pace_quantum)),
        };
        let mss = setup.mtu.saturating_sub(40).max(536) as u32;
        let sack = if model { super::sack::SackRecovery::with_models(mss) } else { Default::default() };
        let caps = config.window_caps.then(|| CapCoordinator::new(cap_config(config.pace.fixed())));
        Ok(TcpCore {
            iface,
            sockets: SocketSet::new(Vec::new()),
            conns: HashMap::new(),
            listeners: HashMap::new(),
            filter: setup.filter,
            steered: HashMap::new(),
            ip: setup.ip,
            prefix: setup.prefix,
            gateway: setup.gateway,
            arp: ArpProxy::new(setup.neighbors, setup.mac, setup.ip),
            pacer,
            caps,
            config,
            epoch,
            injected: VecDeque::new(),
            mtu: setup.mtu,
            next_port: 0,
            give_up_at: None,
            tracker: Default::default(),
            sack,
            reorder: Default::default(),
            budget: setup.budget,
            changed: Vec::new(),
            acceptable: Vec::new(),
        })
    }

    pub fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    pub fn std_time(&self, t: smoltcp::time::Instant) -> Instant {
        self.epoch + Duration::from_micros(t.total_micros().max(0) as u64)
    }

    /// Bytes one socket's buffers take (smoltcp's buffers have a fixed
    /// capacity for the socket's life, so it reserves all of it).
    fn socket_bytes(&self) -> usize {
        self.config.recv_buffer.saturating_add(self.config.send_buffer)
    }

    /// A socket, its buffers reserved from the memory budget (or
    /// [`Error::MemoryLimit`]); [`TcpCore::drop_socket`] gives them back.
    fn new_socket(&self) -> Result<tcp::Socket<'static>, Error> {
        if !self.budget.reserve(self.socket_bytes()) {
            return Err(Error::MemoryLimit {
                held: self.budget.reserved(),
                limit: self.budget.limit(),
                connections: self.sockets.iter().count(),
            });
        }
        let c = &self.config;
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; c.recv_buffer]),
            tcp::SocketBuffer::new(vec![0u8; c.send_buffer]),
        );
        s.set_congestion_control(match c.congestion {
            Congestion::Cubic => CongestionControl::Cubic,
            Congestion::Reno => CongestionControl::Reno,
            // The model steers smoltcp from outside (pacing, in-flight cap).
            Congestion::None | Congestion::Model => CongestionControl::None,
        });
        s.set_ack_delay(c.ack_delay.map(|d| smoltcp::time::Duration::from_micros(d.as_micros() as u64)));
        s.set_nagle_enabled(false);
        let dead = smoltcp::time::Duration::from_millis(c.dead_after.as_millis() as u64);
        s.set_timeout(Some(dead));
        s.set_keep_alive(Some(dead / 3));
        Ok(s)
    }

    /// Removes a socket and gives its buffers' reservation back.
    fn drop_socket(&mut self, h: SocketHandle) -> smoltcp::socket::Socket<'static> {
        self.budget.release(self.socket_bytes());
        self.sockets.remove(h)
    }

    fn steer(&mut self, port: u16) -> Result<Option<Ipv4Rule>, Error> {
        let Some(f) = &self.filter else { return Ok(None) };
        let rule = Ipv4Rule { addr: self.ip, proto: IPPROTO_TCP, port };
        let users = self.steered.entry(port).or_insert(0);
        if *users == 0 {
            f.add_ipv4_rule(rule)?;
        }
        *users += 1;
        Ok(Some(rule))
    }

    fn unsteer(&mut self, rule: Option<Ipv4Rule>) {
        let (Some(f), Some(r)) = (&self.filter, rule) else { return };
        let users = self.steered.entry(r.port).or_insert(1);
        *users -= 1;
        if *users == 0 {
            self.steered.remove(&r.port);
            f.remove_ipv4_rule(r);
        }
    }

    /// Whether `ip` is reached directly (else through the default gateway).
    pub fn next_hop(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        if u32::from(ip) & mask == u32::from(self.ip) & mask {
            return Some(ip);
        }
        self.gateway
    }

    /// Starts connecting to `remote` from a port the kernel hands us.
    pub fn connect(&mut self, now: Instant, remote: SocketAddrV4) -> Result<SocketHandle, Error> {
        let (guard, port) = if self.filter.is_some() {
            // The kernel picks the port and keeps it from everyone else.
            let g = TcpListener::bind(SocketAddrV4::new(self.ip, 0)).map_err(Error::Io)?;
            let port = g.local_addr().map_err(Error::Io)?.port();
            (Some(g), port)
        } else {
            (None, self.ephemeral_port())
        };
        let mut s = self.new_socket()?;
        let rule = match self.steer(port) {
            Ok(r) => r,
            Err(e) => {
                self.budget.release(self.socket_bytes());
                return Err(e);
            }
        };
        let remote_ep = IpEndpoint::new((*remote.ip()).into(), remote.port());
        if let Err(e) = s.connect(self.iface.context(), remote_ep, port) {
            self.unsteer(rule);
            self.budget.release(self.socket_bytes());
            return Err(Error::Config(format!("TCP mode cannot connect to {remote}: {e}")));
        }
        let h = self.sockets.add(s);
        self.conns.insert(h, self.meta(now, guard.map(Arc::new), rule));
        if let Some(c) = &mut self.caps {
            let id = c.add_stream();
            self.conns.get_mut(&h).expect("just added").cap = Some(id);
        }
        Ok(h)
    }

    /// A free port of our own (no kernel to ask: in-memory devices).
    fn ephemeral_port(&mut self) -> u16 {
        loop {
            self.next_port = if self.next_port < 49152 { 49152 } else { self.next_port.wrapping_add(1) };
            let p = self.next_port;
            let used = self.sockets.iter().any(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => t.local_endpoint().is_some_and(|e| e.port == p),
                #[allow(unreachable_patterns)]
                _ => false,
            });
            if !used && !self.listeners.contains_key(&p) {
                return p;
            }
        }
    }

    fn meta(&self, now: Instant, guard: Option<Arc<TcpListener>>, rule: Option<Ipv4Rule>) -> ConnMeta {
        ConnMeta {
            port_guard: guard,
            rule,
            released: false,
            aborted: false,
            timed_out: false,
            established: false,
            peer_finished: false,
            started: now,
            rtt: None,
            last_progress: now,
            last_queues: (0, 0),
            last_state: State::Closed,
            written: 0,
            read: 0,
            last_moved: (0, 0),
            fin_deferred: false,
            buffer_warned: false,
            cap: None,
        }
    }

    /// Listens on `port` (our address); 0 takes a free port. Returns the
    /// port.
    pub fn listen(&mut self, port: u16) -> Result<u16, Error> {
        let addr = SocketAddrV4::new(self.ip, port);
        if port != 0 && self.listeners.contains_key(&port) {
            return Err(Error::AddrInUse(addr));
        }
        let guard = if self.filter.is_some() {
            Some(Arc::new(TcpListener::bind(addr).map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => Error::AddrInUse(addr),
                _ => Error::Io(e),
            })?))
        } else {
            None
        };
        let port = match (&guard, port) {
            (Some(g), 0) => g.local_addr().map_err(Error::Io)?.port(),
            (None, 0) => self.ephemeral_port(),
            (_, p) => p,
        };
        let rule = self.steer(port)?;
        let mut meta =
            ListenMeta { ready: Vec::new(), pending: Vec::new(), accepted: VecDeque::new(), port_guard: guard, rule };
        for _ in 0..self.config.backlog.max(1) {
            let made = self.new_socket().and_then(|mut s| {
                s.listen(port).map_err(|e| Error::Config(format!("TCP mode cannot listen on {port}: {e}")))?;
                Ok(s)
            });
            match made {
                Ok(s) => meta.ready.push(self.sockets.add(s)),
                Err(e) => {
                    for h in meta.ready.drain(..) {
                        self.drop_socket(h);
                    }
                    self.unsteer(meta.rule);
                    return Err(e);
                }
            }
        }
        self.listeners.insert(port, meta);
        Ok(port)
    }

    /// Stops listening; connections not yet accepted are reset.
    pub fn unlisten(&mut self, port: u16) {
        let Some(l) = self.listeners.remove(&port) else { return };
        for h in l.ready.into_iter().chain(l.pending).chain(l.accepted) {
            self.sockets.get_mut::<tcp::Socket<'_>>(h).abort();
            if !self.conns.contains_key(&h) {
                self.conns.insert(h, self.meta(Instant::now(), None, None));
            }
            let m = self.conns.get_mut(&h).expect("just added");
            m.released = true;
            m.aborted = true;
        }
        self.unsteer(l.rule);
    }

    /// Connections ready to accept on `port`.
    pub fn backlog(&self, port: u16) -> usize {
        self.listeners.get(&port).map_or(0, |l| l.accepted.len())
    }

    /// A connection accepted on `port`, if one is ready.
    pub fn accept(&mut self, port: u16) -> Option<SocketHandle> {
        self.listeners.get_mut(&port)?.accepted.pop_front()
    }

    /// After a received frame: listening sockets that got a SYN become
    /// connections; fresh ones replace them.
    pub fn replenish(&mut self, now: Instant) {
        let mut moved = Vec::new();
        for (&port, l) in &mut self.listeners {
            l.ready.retain(|&h| {
                let s = self.sockets.get::<tcp::Socket<'_>>(h);
                if s.state() == State::Listen {
                    return true;
                }
                moved.push((port, h));
                false
            });
        }
        for (port, h) in moved {
            // The connection keeps the listener's port steered and reserved
            // for as long as it lives, even if the listener goes first.
            let guard = self.listeners.get(&port).and_then(|l| l.port_guard.clone());
            let rule = self.steer(port).ok().flatten();
            self.conns.insert(h, self.meta(now, guard, rule));
            match self.new_socket() {
                Ok(mut s) => {
                    if s.listen(port).is_ok() {
                        let h2 = self.sockets.add(s);
                        self.listeners.get_mut(&port).expect("listed").ready.push(h2);
                    } else {
                        self.budget.release(self.socket_bytes());
                    }
                }
                // No memory for another ready socket: this listener takes
                // fewer connections until some close.
                Err(e) => log::debug!("TCP mode listener on {port}: {e}"),
            }
            self.listeners.get_mut(&port).expect("listed").pending.push(h);
        }
    }

    fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(h)
    }

    /// Room for `send` now (bounded by the connection's window cap).
    pub fn send_space(&mut self, h: SocketHandle) -> usize {
        let cap = self.conns.get(&h).and_then(|m| m.cap).and_then(|id| self.caps.as_ref()?.cap(id));
        let s = self.socket(h);
        if !s.may_send() {
            return 0;
        }
        let free = s.send_capacity() - s.send_queue();
        let queued = s.send_queue();
        let (local, remote) = (s.local_endpoint(), s.remote_endpoint());
        let free = match cap {
            Some(c) => free.min((c as usize).saturating_sub(queued)),
            None => free,
        };
        let (Some(l), Some(r)) = (local, remote) else { return free };
        let smoltcp::wire::IpAddress::Ipv4(addr) = r.addr;
        let key = (l.port, addr.octets(), r.port);
        // No more unsent data than the SACK scoreboard has room to copy.
        let unsent = (queued as u64).saturating_sub(self.sack.unacked(key));
        let free = match self.sack.room(key) {
            Some(room) => free.min(room.saturating_sub(unsent) as usize),
            None => free,
        };
        // The congestion model's in-flight cap, split over the connections
        // to the same host; SACKed bytes sit in smoltcp's send queue but
        // are no longer in flight.
        match &self.sack.models {
            Some(models) => {
                let share = models.cwnd(key.1) / self.sack.flows_to_with(key) as u64;
                let cap = share + self.sack.sacked_bytes(key);
                free.min((cap as usize).saturating_sub(queued))
            }
            None => free,
        }
    }

    /// Queues what fits of `data`; an error once the connection has failed.
    pub fn send(&mut self, h: SocketHandle, peer: SocketAddrV4, data: &[u8]) -> Result<usize, Error> {
        if let Some(e) = self.failure(h, peer) {
            return Err(e);
        }
        let room = self.send_space(h);
        let shut = self.conns.get(&h).is_some_and(|m| m.fin_deferred);
        let s = self.socket(h);
        if !s.may_send() || shut {
            return Err(Error::Closed);
        }
        let n = s.send_slice(&data[..data.len().min(room)]).map_err(|_| Error::Closed)?;
        if let Some(m) = self.conns.get_mut(&h) {
            m.written += n as u64;
        }
        Ok(n)
    }

    /// Reads what is there.
    pub fn recv(&mut self, h: SocketHandle, peer: SocketAddrV4, buf: &mut [u8]) -> Result<ReadOutcome, Error> {
        let s = self.socket(h);
        match s.recv_slice(buf) {
            Ok(0) if !buf.is_empty() => {}
            Ok(n) => {
                if let Some(m) = self.conns.get_mut(&h) {
                    m.read += n as u64;
                }
                return Ok(ReadOutcome::Data(n));
            }
            Err(tcp::RecvError::Finished) => {
                if let Some(m) = self.conns.get_mut(&h) {
                    m.peer_finished = true;
                }
                return Ok(ReadOutcome::End);
            }
            Err(tcp::RecvError::InvalidState) => {}
        }
        match self.failure(h, peer) {
            Some(e) => Err(e),
            None if !self.socket(h).is_active() => Ok(ReadOutcome::End),
            None => Ok(ReadOutcome::Empty),
        }
    }

    /// (readable, writable, closed) of a connection now, for a poller.
    pub fn readiness(&mut self, h: SocketHandle) -> (bool, bool, bool) {
        if !self.conns.contains_key(&h) {
            return (true, true, true);
        }
        let peer = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let failed = self.failure(h, peer).is_some();
        let s = self.socket(h);
        let ended = !s.may_recv() && s.recv_queue() == 0;
        let closed = failed || (ended && !s.may_send());
        (s.recv_queue() > 0 || ended || failed, self.send_space(h) > 0 || failed, closed)
    }

    pub fn is_established(&mut self, h: SocketHandle) -> bool {
        self.conns.get(&h).is_some_and(|m| m.established)
    }

    /// Why the connection failed, if it did (a graceful end is not a failure).
    pub fn failure(&mut self, h: SocketHandle, peer: SocketAddrV4) -> Option<Error> {
        let state = self.socket(h).state();
        let m = self.conns.get(&h)?;
        if m.timed_out {
            return Some(Error::TimedOut(format!(
                "{peer} stopped answering (no acknowledgement for {:?})",
                self.config.dead_after
            )));
        }
        if state != State::Closed || m.aborted {
            return (m.aborted && state == State::Closed).then_some(Error::Closed);
        }
        let silent = m.last_progress.elapsed() >= self.config.dead_after.mul_f32(0.9);
        Some(if !m.established {
            if silent {
                Error::TimedOut(format!("no answer from {peer} to the TCP handshake"))
            } else {
                Error::ConnectionRefused(peer)
            }
        } else if m.peer_finished && self.sockets.get::<tcp::Socket<'_>>(h).send_queue() == 0 {
            // The peer finished and everything we wrote was acknowledged: a
            // graceful end. (A peer that half-closed and then vanished with
            // our data unacknowledged is a failure: found by the vanished-
            // peer test, whose nc peer half-closes at once.)
            return None;
        } else if silent {
            Error::TimedOut(format!("{peer} stopped answering (no acknowledgement for {:?})", self.config.dead_after))
        } else {
            Error::ConnectionReset(format!("{peer} reset the TCP connection"))
        })
    }

    /// Everything written has been acknowledged (and the FIN, once sent).
    pub fn send_finished(&mut self, h: SocketHandle) -> bool {
        let s = self.socket(h);
        s.send_queue() == 0 && matches!(s.state(), State::FinWait2 | State::TimeWait | State::Closed)
    }

    /// Ends our direction: a FIN after what is queued. When the peer has
    /// already finished and data is still queued, the FIN waits until the
    /// queue has drained: smoltcp (0.14) in LAST-ACK takes an ACK that
    /// acknowledges nothing new for a duplicate and drops it before reading
    /// its window, so a receiver that had closed its window and opened it
    /// again would never be heard, and the rest of the data would wait for
    /// a timeout (found by the in-memory bulk echo: a server echoing 8 MiB
    /// and closing, stuck at a zero window until we gave up).
    pub fn shutdown(&mut self, h: SocketHandle) {
        let s = self.socket(h);
        if s.state() == State::CloseWait
            && s.send_queue() > 0
            && let Some(m) = self.conns.get_mut(&h)
        {
            m.fin_deferred = true;
            return;
        }
        self.socket(h).close();
    }

    pub fn abort(&mut self, h: SocketHandle) {
        self.socket(h).abort();
        if let Some(m) = self.conns.get_mut(&h) {
            m.aborted = true;
        }
    }

    /// The application let go: close gracefully in the background.
    pub fn release(&mut self, h: SocketHandle) {
        if let Some(m) = self.conns.get_mut(&h) {
            m.released = true;
        }
        self.shutdown(h);
    }

    pub fn endpoints(&mut self, h: SocketHandle) -> (SocketAddrV4, SocketAddrV4) {
        let s = self.socket(h);
        let v4 = |e: Option<IpEndpoint>| match e {
            Some(IpEndpoint { addr: smoltcp::wire::IpAddress::Ipv4(a), port }) => SocketAddrV4::new(a, port),
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        (v4(s.local_endpoint()), v4(s.remote_endpoint()))
    }

    /// Once per pass: establishment, progress, window caps, and removal of
    /// released connections that have ended. Returns whether anything
    /// changed that a waiter could care about.
    pub fn housekeeping(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let mut gone = Vec::new();
        let mut gave_up = Vec::new();
        let mut deadline = None;
        for (&h, m) in &mut self.conns {
            let s = self.sockets.get::<tcp::Socket<'_>>(h);
            let state = s.state();
            if !m.established && matches!(state, State::Established | State::CloseWait) {
                m.established = true;
                m.rtt = Some(now.duration_since(m.started));
                changed = true;
            }
            if matches!(state, State::CloseWait | State::LastAck | State::Closing | State::TimeWait) {
                m.peer_finished = true;
            }
            if m.fin_deferred && s.send_queue() == 0 {
                m.fin_deferred = false;
                self.sockets.get_mut::<tcp::Socket<'_>>(h).close();
                changed = true;
            }
            let s = self.sockets.get::<tcp::Socket<'_>>(h);
            let q = (s.send_queue(), s.recv_queue());
            if let (true, Some(l), Some(r)) = (self.sack.models.is_some(), s.local_endpoint(), s.remote_endpoint()) {
                // Nothing queued beyond what is in flight: the connection
                // sends what it is given, and its samples may understate the path.
                let smoltcp::wire::IpAddress::Ipv4(addr) = r.addr;
                let key = (l.port, addr.octets(), r.port);
                if q.0 as u64 <= self.sack.unacked(key)
                    && let Some(models) = &mut self.sack.models
                {
                    models.on_app_limited(key.1);
                }
                if !m.buffer_warned
                    && q.0 >= s.send_capacity()
                    && let Some((bdp, rate, rtt)) = self.sack.models.as_ref().and_then(|ms| ms.path_of(key.1))
                {
                    let share = bdp / self.sack.flows_to_with(key) as u64;
                    if (s.send_capacity() as u64) < 2 * share {
                        m.buffer_warned = true;
                        log::warn!(
                            "TCP mode to {}: the path holds {:.1} MiB ({rate} x {rtt:?}), this connection's share {:.1} MiB, and its send buffer of {:.1} MiB is under twice that: a lost segment holds the buffer for a round trip while it is repaired, so the connection stalls on every loss. Give the TCP mode buffers of 2.5 x the path's BDP, {:.0} MiB or more (--buffer on the tools; TcpConfig::send_buffer and recv_buffer, or TcpConfig::for_path)",
                            std::net::Ipv4Addr::from(key.1),
                            mib(bdp),
                            mib(share),
                            mib(s.send_capacity() as u64),
                            mib(share * 5 / 2).ceil()
                        );
                    }
                }
            }
            let mut moved = state != m.last_state;
            m.last_state = state;
            let flow = (m.written - q.0 as u64, m.read + q.1 as u64);
            // Progress: the peer acknowledged data, or sent some, or data
            // was written to an idle connection (its deadline starts now,
            // not when the connection last moved).
            if flow.0 > m.last_moved.0 || flow.1 > m.last_moved.1 || (m.last_queues.0 == 0 && q.0 > 0) {
                m.last_progress = now;
            }
            m.last_moved = flow;
            if q != m.last_queues {
                moved = true;
                m.last_queues = q;
                changed = true;
            }
            // smoltcp checks its own timeout only when it transmits, and it
            // stops transmitting to a peer whose neighbour entry is gone (a
            // peer whose link went down never answers ARP again): so the
            // deadline is kept here too.
            if m.established
                && !m.timed_out
                && q.0 > 0
                && now.saturating_duration_since(m.last_progress) >= self.config.dead_after
                && !matches!(state, State::Closed | State::TimeWait)
            {
                m.timed_out = true;
                gave_up.push(h);
                changed = true;
                moved = true;
            } else if m.established && !m.timed_out && q.0 > 0 {
                let due = m.last_progress + self.config.dead_after;
                deadline = Some(deadline.map_or(due, |d: Instant| d.min(due)));
            }
            if let (Some(c), Some(id)) = (&mut self.caps, m.cap) {
                let acked = m.written - q.0 as u64;
                let port = s.local_endpoint().map_or(0, |e| e.port);
                let srtt = self.tracker.srtt(port).or(m.rtt).unwrap_or(Duration::from_millis(100));
                c.observe(id, StreamSample { acked_bytes: acked, srtt });
            }
            if moved {
                self.changed.push(h);
            }
            if m.released && matches!(state, State::Closed | State::TimeWait) {
                gone.push(h);
            }
        }
        self.give_up_at = deadline;
        for h in gave_up {
            let s = self.sockets.get::<tcp::Socket<'_>>(h);
            let (port, remote) = match (s.local_endpoint(), s.remote_endpoint()) {
                (Some(l), Some(smoltcp::wire::IpEndpoint { addr: smoltcp::wire::IpAddress::Ipv4(a), port })) => {
                    (l.port, (a.octets(), port))
                }
                _ => (0, ([0; 4], 0)),
            };
            let key = (port, remote.0, remote.1);
            log::debug!(
                "TCP mode: giving up on a connection with data unacknowledged for {:?}: smoltcp {} with {} B to send and {} B to read; wire: {}; reorder: {}; SACK: {}",
                self.config.dead_after,
                s.state(),
                s.send_queue(),
                s.recv_queue(),
                self.tracker.describe(port, now),
                self.reorder.describe(key),
                self.sack.describe(key),
            );
            self.sockets.get_mut::<tcp::Socket<'_>>(h).abort();
        }
        for (&port, l) in self.listeners.iter_mut() {
            l.pending.retain(|&h| match self.conns.get_mut(&h) {
                Some(m) if m.established => {
                    l.accepted.push_back(h);
                    self.acceptable.push(port);
                    changed = true;
                    false
                }
                Some(m) if self.sockets.get::<tcp::Socket<'_>>(h).state() == State::Closed => {
                    m.released = true;
                    gone.push(h);
                    false
                }
                Some(_) => true,
                None => false,
            });
        }
        if self.config.pace == Pace::Auto
            && self.sack.models.is_none()
            && let Some(p) = &mut self.pacer
        {
            p.set_rate(now, self.tracker.auto_rate().unwrap_or(super::flows::AUTO_PACE_FLOOR));
        }
        if let (Some(models), Some(p), None) = (&self.sack.models, &mut self.pacer, self.config.pace.fixed()) {
            // The models' rates are payload; the pacer counts whole frames.
            let frame = (self.mtu + 14) as u64;
            let rate = models.rate(now).and_then(|r| r.scaled(frame, frame - 54)).unwrap_or(UNPACED);
            p.set_rate(now, rate);
        }
        if let Some(c) = &mut self.caps
            && c.poll_timeout().is_none_or(|t| t <= now)
        {
            // (The first call starts the coordinator's clock.)
            c.handle_timeout(now);
        }
        for h in gone {
            let m = self.conns.remove(&h).expect("listed");
            let s = self.drop_socket(h);
            if let smoltcp::socket::Socket::Tcp(t) = s
                && let Some(e) = t.local_endpoint()
                && m.port_guard.as_ref().is_some_and(|g| Arc::strong_count(g) == 1)
            {
                let (segments, retransmits) = self.tracker.counts(e.port);
                log::debug!(
                    "TCP mode connection from port {} gone: {segments} segments sent, {retransmits} again; over this process's life the SACK scoreboard sent {} again and kept back {} copies of SACKed data, the reorder buffer held {} segments",
                    e.port,
                    self.sack.resent,
                    self.sack.not_sent,
                    self.reorder.held_total
                );
                self.tracker.forget(e.port);
                self.sack.forget(e.port);
                self.reorder.forget(e.port);
            }
            self.unsteer(m.rule);
            if let (Some(c), Some(id)) = (&mut self.caps, m.cap) {
                c.remove_stream(id);
            }
            drop(m.port_guard);
        }
        changed
    }

    /// No socket at all (no connection, no listener) and no ARP question
    /// open: a pass has nothing to do.
    pub fn is_idle(&self) -> bool {
        self.conns.is_empty() && self.listeners.is_empty() && !self.arp.busy() && self.sockets.iter().next().is_none()
    }

    /// When housekeeping wants to run next (window caps; the deadline of
    /// a connection whose data waits unacknowledged).
    pub fn next_housekeeping(&self) -> Option<Instant> {
        [self.caps.as_ref().and_then(|c| c.poll_timeout()), self.give_up_at].into_iter().flatten().min()
    }

    /// What a connection has done so far.
    pub fn stats(&mut self, h: SocketHandle) -> TcpStats {
        let cap = self.conns.get(&h).and_then(|m| m.cap).and_then(|id| self.caps.as_ref()?.cap(id));
        let (written, rtt) = self.conns.get(&h).map_or((0, None), |m| (m.written, m.rtt));
        let s = self.socket(h);
        let queued = s.send_queue() as u64;
        let port = s.local_endpoint().map_or(0, |e| e.port);
        let (segments, retransmits) = self.tracker.counts(port);
        TcpStats {
            in_flight: self.tracker.in_flight(port),
            srtt: self.tracker.srtt(port),
            acked_bytes: written.saturating_sub(queued),
            segments_sent: segments,
            retransmits,
            window_cap: cap,
            handshake_rtt: rtt,
        }
    }
}

impl Drop for TcpCore {
    fn drop(&mut self) {
        let held = self.sockets.iter().count();
        self.budget.release(self.socket_bytes().saturating_mul(held));
        if let Some(f) = &self.filter {
            for &port in self.steered.keys() {
                f.remove_ipv4_rule(Ipv4Rule { addr: self.ip, proto: IPPROTO_TCP, port });
            }
        }
    }
}

/// A device with no frames, for creating the interface (smoltcp keeps the
/// capabilities it reports then: the MTU, and whether to verify TCP
/// checksums on receive).
struct NullDevice(usize, bool);

impl smoltcp::phy::Device for NullDevice {
    type RxToken<'a> = NullToken;
    type TxToken<'a> = NullToken;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(NullToken, NullToken)> {
        None
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<NullToken> {
        None
    }
    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut c = smoltcp::phy::DeviceCapabilities::default();
        c.medium = smoltcp::phy::Medium::Ethernet;
        c.max_transmission_unit = self.0;
        if !self.1 {
            c.checksum.tcp = smoltcp::phy::Checksum::Tx;
        }
        c
    }
}

struct NullToken;
impl smoltcp::phy::RxToken for NullToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&[])
    }
}
impl smoltcp::phy::TxToken for NullToken {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        f(&mut vec![0; len])
    }
}

/// Window caps for the TCP mode. With a pacing rate (a reserved path) the
/// The pacer's rate when the congestion model has no path in use (frames
/// are not held: pure ACKs and handshakes leave at once).
const UNPACED: xsock_pacer::Rate = xsock_pacer::Rate::gbit(100);

/// caps split it evenly with 2% to spare: the aggregate pacer already holds
/// the transfer to the rate, so the fluid model's 10% headroom (for Reno
/// streams recovering from loss) would only let the streams the pacer
/// serves first take more than their share.
fn cap_config(target: Option<xsock_pacer::Rate>) -> CapConfig {
    let tolerance_percent = if target.is_some() { 2 } else { CapConfig::default().tolerance_percent };
    CapConfig { target, tolerance_percent, ..Default::default() }
}
