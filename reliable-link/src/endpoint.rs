//! All reliable-link connections of one node on one link: demultiplexing
//! by connection id, listeners and the handshake's responder side,
//! discovery, and fair transmission across connections.
//!
//! Same sans-IO surface as [`Connection`]: `handle_input`,
//! `handle_timeout`, `poll_timeout`, `poll_transmit`, `poll_event`, plus
//! the application calls (`connect`, `listen`, `accept`, `write`, `read`,
//! `close`, `abort`, `release`), each of which may make frames to send.

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::{
    connection::{Addressing, CloseReason, Config, Connection, Event, Mode, ReadOutcome, StreamError},
    discovery::{Discovery, DiscoveryConfig, Lookup, Peer},
    fasthash::FastMap,
    wire::{self, Body, DiscoverBody, DiscoverReplyBody, HEADER_LEN, Packet, Repr, RstBody, RstReason, SynBody},
};

/// The broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Flag of an RST whose `dst_cid` is the (unknown) id the peer sent to,
/// not the peer's own id.
pub const FLAG_RST_UNKNOWN_TARGET: u8 = 0x08;

/// An IPv4 address of this node, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr {
    /// The address.
    pub ip: Ipv4Addr,
    /// Prefix length of its subnet.
    pub prefix: u8,
}

impl LocalAddr {
    /// Whether `ip` is in this address's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix.min(32)) };
        u32::from(self.ip) & mask == u32::from(ip) & mask
    }
}

/// Configuration of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Our MAC on the link.
    pub mac: [u8; 6],
    /// Our IPv4 addresses on the link.
    pub addrs: Vec<LocalAddr>,
    /// Largest DATA payload we can receive (max frame − Ethernet − header).
    pub max_payload: u16,
    /// Per-connection tunables.
    pub connection: Config,
    /// Discovery tunables.
    pub discovery: DiscoveryConfig,
    /// Connections a listener queues before refusing more.
    pub backlog: usize,
}

impl EndpointConfig {
    /// Defaults for a node at `mac` with `addrs` and frames up to `max_frame`
    /// bytes (Ethernet header included).
    pub fn new(mac: [u8; 6], addrs: Vec<LocalAddr>, max_frame: usize) -> Self {
        let max_payload = max_frame.saturating_sub(14 + HEADER_LEN).min(u16::MAX as usize) as u16;
        Self {
            mac,
            addrs,
            max_payload,
            connection: Config::default(),
            discovery: DiscoveryConfig::default(),
            backlog: 128,
        }
    }
}

/// A frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Destination MAC (the broadcast address for DISCOVER).
    pub dst_mac: [u8; 6],
    /// Bytes written (after the Ethernet header).
    pub len: usize,
}

/// What the application should hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A connection arrived for the listener on `port` and can be accepted.
    Incoming {
        /// The listener's port.
        port: u16,
        /// The new connection.
        cid: u64,
    },
    /// Something happened on a connection.
    Connection {
        /// Which connection.
        cid: u64,
        /// What.
        event: Event,
    },
    /// A discovery concluded.
    Discovered {
        /// The address asked about.
        ip: Ipv4Addr,
        /// Its xsock peer, if any.
        peer: Option<Peer>,
    },
}

/// What [`Endpoint::read_status`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadStatus {
    /// Bytes read.
    pub len: usize,
    /// They end a message.
    pub end_of_message: bool,
    /// The peer finished its stream and every byte has been read.
    pub eof: bool,
    /// The connection has ended, and why.
    pub closed: Option<CloseReason>,
    /// The connection has a frame to send now (call `poll_transmit`).
    pub wants_transmit: bool,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Something already listens on the port.
    #[error("port {0} is already in use by another listener")]
    PortInUse(u16),
    /// No such connection (closed and forgotten, or never existed).
    #[error("no connection {0:#x}")]
    NoConnection(u64),
    /// The endpoint has no IPv4 address to speak from.
    #[error("this node has no IPv4 address on the link; add one to the interface")]
    NoAddress,
    /// The stream refused the call.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Counters of the endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Frames that did not parse (wrong version, truncated, malformed).
    pub malformed: u64,
    /// Frames for a connection id we do not have (stale or forged).
    pub unknown_cid: u64,
    /// Frames for a connection that came from another MAC (forged).
    pub wrong_source: u64,
    /// SYNs refused (no listener, full backlog).
    pub refused: u64,
}

struct Slot {
    conn: Connection,
    held: bool,
    ready: bool,
    port: Option<u16>,
}

struct Listener {
    ip: Option<Ipv4Addr>,
    backlog: VecDeque<u64>,
}

/// The reliable-link endpoint of one node on one link.
pub struct Endpoint {
    config: EndpointConfig,
    rng: SplitMix,
    slots: FastMap<u64, Slot>,
    /// (peer MAC, peer's cid) → our cid, to recognise a repeated SYN.
    syns: FastMap<([u8; 6], u64), u64>,
    listeners: FastMap<u16, Listener>,
    control: VecDeque<([u8; 6], Repr)>,
    ready: VecDeque<u64>,
    discovery: Discovery,
    events: VecDeque<EndpointEvent>,
    next_port: u16,
    last_unknown_rst: Option<(u64, Instant)>,
    stats: EndpointStats,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("connections", &self.slots.len()).finish_non_exhaustive()
    }
}

/// splitmix64: connection ids and ephemeral ports. Seeded by the caller
/// from the OS's entropy (sans-IO: this crate reads no randomness itself).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Endpoint {
    /// An endpoint; `seed` must come from a good entropy source (connection
    /// ids derive from it).
    pub fn new(config: EndpointConfig, seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let next_port = 49152 + (rng.next() % 16384) as u16;
        Self {
            discovery: Discovery::new(config.discovery.clone()),
            config,
            rng,
            slots: FastMap::default(),
            syns: FastMap::default(),
            listeners: FastMap::default(),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            next_port,
            last_unknown_rst: None,
            stats: EndpointStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Our configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    fn new_cid(&mut self) -> u64 {
        loop {
            let c = self.rng.next();
            if c != 0 && !self.slots.contains_key(&c) {
                return c;
            }
        }
    }

    fn mark_ready(&mut self, cid: u64) {
        if let Some(s) = self.slots.get_mut(&cid)
            && !s.ready
        {
            s.ready = true;
            self.ready.push_back(cid);
        }
    }

    fn drain_events(&mut self, cid: u64) {
        if let Some(s) = self.slots.get_mut(&cid) {
            while let Some(event) = s.conn.poll_event() {
                if s.held || !matches!(event, Event::Readable | Event::Writable) {
                    self.events.push_back(EndpointEvent::Connection { cid, event });
                }
            }
        }
    }

    fn local_addr_for(&self, dst: Ipv4Addr) -> Option<LocalAddr> {
        self.config.addrs.iter().copied().find(|a| a.contains(dst)).or_else(|| self.config.addrs.first().copied())
    }

    // ---- application calls -------------------------------------------------

    /// What is known about `ip` as an xsock peer (starting discovery if
    /// nothing is); a [`EndpointEvent::Discovered`] follows a `Pending`.
    pub fn discover(&mut self, now: Instant, ip: Ipv4Addr) -> Lookup {
        self.discovery.lookup(now, ip)
    }

    /// Forgets a discovery result (after the peer stopped answering).
    pub fn forget_peer(&mut self, ip: Ipv4Addr) {
        self.discovery.forget(ip);
    }

    /// Opens a connection to `dst_ip:dst_port` at `peer`; `Connected` (or
    /// `Closed`) follows as an event.
    pub fn connect(
        &mut self,
        now: Instant,
        dst_ip: Ipv4Addr,
        dst_port: u16,
        peer: Peer,
        mode: Mode,
    ) -> Result<u64, EndpointError> {
        let local = self.local_addr_for(dst_ip).ok_or(EndpointError::NoAddress)?;
        let cid = self.new_cid();
        let port = self.next_port;
        self.next_port = if self.next_port == u16::MAX { 49152 } else { self.next_port + 1 };
        let addr = Addressing {
            local_ip: local.ip,
            local_port: port,
            remote_ip: dst_ip,
            remote_port: dst_port,
            remote_mac: peer.mac,
        };
        let max_payload = self.config.max_payload.min(peer.max_payload);
        let conn = Connection::connect(now, cid, addr, mode, max_payload, self.config.connection.clone());
        self.slots.insert(cid, Slot { conn, held: true, ready: false, port: None });
        self.mark_ready(cid);
        Ok(cid)
    }

    /// Listens on `port` (on `ip`, or on all our addresses).
    pub fn listen(&mut self, ip: Option<Ipv4Addr>, port: u16) -> Result<(), EndpointError> {
        if self.listeners.contains_key(&port) {
            return Err(EndpointError::PortInUse(port));
        }
        self.listeners.insert(port, Listener { ip, backlog: VecDeque::new() });
        Ok(())
    }

    /// Stops listening on `port`; queued connections are refused (reset).
    pub fn unlisten(&mut self, port: u16) {
        if let Some(l) = self.listeners.remove(&port) {
            for cid in l.backlog {
                self.abort(cid);
                self.release(cid);
            }
        }
    }

    /// The next connection waiting on the listener at `port`.
    pub fn accept(&mut self, port: u16) -> Option<u64> {
        let cid = self.listeners.get_mut(&port)?.backlog.pop_front()?;
        if let Some(s) = self.slots.get_mut(&cid) {
            s.held = true;
            s.port = None;
        }
        Some(cid)
    }

    /// The connection `cid`, to inspect.
    pub fn connection(&self, cid: u64) -> Option<&Connection> {
        self.slots.get(&cid).map(|s| &s.conn)
    }

    fn slot(&mut self, cid: u64) -> Result<&mut Slot, EndpointError> {
        self.slots.get_mut(&cid).ok_or(EndpointError::NoConnection(cid))
    }

    /// Queues bytes on `cid` (see [`Connection::write`]).
    pub fn write(&mut self, cid: u64, data: &[u8], end_of_message: bool) -> Result<usize, EndpointError> {
        let n = self.slot(cid)?.conn.write(data, end_of_message)?;
        self.mark_ready(cid);
        Ok(n)
    }

    /// Reads from `cid` (see [`Connection::read`]).
    pub fn read(&mut self, cid: u64, out: &mut [u8], stop_at_message_end: bool) -> Result<ReadOutcome, EndpointError> {
        self.read_status(cid, out, stop_at_message_end)
            .map(|s| ReadOutcome { len: s.len, end_of_message: s.end_of_message })
    }

    /// Reads from `cid` and says what else the application needs to know,
    /// in one lookup: whether the stream ended, whether the connection did,
    /// and whether the read made a frame worth sending (a credit grant).
    pub fn read_status(
        &mut self,
        cid: u64,
        out: &mut [u8],
        stop_at_message_end: bool,
    ) -> Result<ReadStatus, EndpointError> {
        let slot = self.slot(cid)?;
        let r = slot.conn.read(out, stop_at_message_end);
        let status = ReadStatus {
            len: r.len,
            end_of_message: r.end_of_message,
            eof: slot.conn.is_eof(),
            closed: slot.conn.close_reason(),
            wants_transmit: slot.conn.wants_transmit(),
        };
        if status.wants_transmit {
            self.mark_ready(cid);
        }
        Ok(status)
    }

    /// Closes `cid` for writing (a FIN follows the data).
    pub fn close(&mut self, cid: u64) -> Result<(), EndpointError> {
        self.slot(cid)?.conn.close();
        self.mark_ready(cid);
        Ok(())
    }

    /// Aborts `cid` (RST).
    pub fn abort(&mut self, cid: u64) {
        self.abort_with(cid, crate::wire::RstReason::Aborted);
    }

    /// Aborts `cid`, telling the peer `reason`.
    pub fn abort_with(&mut self, cid: u64, reason: crate::wire::RstReason) {
        if let Some(s) = self.slots.get_mut(&cid) {
            s.conn.abort_with(reason);
            self.mark_ready(cid);
            self.drain_events(cid);
        }
    }

    /// The application lets go of `cid`. An open connection is closed
    /// gracefully in the background and forgotten when done.
    pub fn release(&mut self, cid: u64) {
        if let Some(s) = self.slots.get_mut(&cid) {
            s.held = false;
            if s.conn.close_reason().is_none() {
                s.conn.close();
            }
            self.mark_ready(cid);
        }
    }

    // ---- input -------------------------------------------------------------

    /// A frame arrived from `src_mac` (`frame` = the bytes after the
    /// Ethernet header).
    pub fn handle_input(&mut self, now: Instant, src_mac: [u8; 6], frame: &[u8]) {
        let (repr, payload) = match wire::parse(frame) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match repr.body {
            Body::Discover(d) => self.on_discover(now, src_mac, d),
            Body::DiscoverReply(r) => {
                self.discovery.on_reply(now, r.ip, Peer { mac: src_mac, max_payload: r.max_payload });
                self.drain_discovery();
            }
            Body::Syn(s) => self.on_syn(now, src_mac, &repr, &s),
            Body::Rst(_) if repr.flags & FLAG_RST_UNKNOWN_TARGET != 0 => {
                // The peer does not know the id we sent to: find our side.
                let ours = self
                    .slots
                    .iter()
                    .find(|(_, s)| s.conn.remote_cid() == repr.dst_cid && s.conn.addressing().remote_mac == src_mac)
                    .map(|(c, _)| *c);
                if let Some(cid) = ours {
                    let rst = Repr { dst_cid: cid, flags: 0, ..repr };
                    self.deliver(now, cid, &rst, payload);
                }
            }
            _ => {
                let cid = repr.dst_cid;
                match self.slots.get(&cid) {
                    Some(s) if s.conn.addressing().remote_mac == src_mac => self.deliver(now, cid, &repr, payload),
                    Some(_) => self.stats.wrong_source += 1,
                    None => self.on_unknown(now, src_mac, &repr),
                }
            }
        }
    }

    fn deliver(&mut self, now: Instant, cid: u64, repr: &Repr, payload: &[u8]) {
        if let Some(s) = self.slots.get_mut(&cid) {
            s.conn.handle_input(now, repr, payload);
        }
        self.mark_ready(cid);
        self.drain_events(cid);
    }

    fn on_discover(&mut self, now: Instant, src_mac: [u8; 6], d: DiscoverBody) {
        // The asker runs xsock too.
        if !d.sender_ip.is_unspecified() {
            self.discovery.learn(now, d.sender_ip, Peer { mac: src_mac, max_payload: self.config.max_payload });
        }
        if self.config.addrs.iter().any(|a| a.ip == d.target_ip) {
            let body = DiscoverReplyBody { ip: d.target_ip, max_payload: self.config.max_payload };
            self.control.push_back((src_mac, control_repr(0, Body::DiscoverReply(body))));
        }
    }

    fn on_syn(&mut self, now: Instant, src_mac: [u8; 6], repr: &Repr, syn: &SynBody) {
        if let Some(&cid) = self.syns.get(&(src_mac, syn.src_cid)) {
            self.deliver(now, cid, repr, &[]);
            return;
        }
        let ours = self.config.addrs.iter().any(|a| a.ip == syn.dst_ip);
        let listener = self.listeners.get(&syn.dst_port).filter(|l| ours && l.ip.is_none_or(|ip| ip == syn.dst_ip));
        let Some(listener) = listener else {
            self.stats.refused += 1;
            self.refuse(src_mac, syn.src_cid);
            return;
        };
        if listener.backlog.len() >= self.config.backlog {
            self.stats.refused += 1;
            self.refuse(src_mac, syn.src_cid);
            return;
        }
        let cid = self.new_cid();
        let addr = Addressing {
            local_ip: syn.dst_ip,
            local_port: syn.dst_port,
            remote_ip: syn.src_ip,
            remote_port: syn.src_port,
            remote_mac: src_mac,
        };
        let conn =
            Connection::accept(now, cid, addr, syn, repr, self.config.max_payload, self.config.connection.clone());
        self.slots.insert(cid, Slot { conn, held: false, ready: false, port: Some(syn.dst_port) });
        self.syns.insert((src_mac, syn.src_cid), cid);
        if let Some(l) = self.listeners.get_mut(&syn.dst_port) {
            l.backlog.push_back(cid);
        }
        self.discovery.learn(now, syn.src_ip, Peer { mac: src_mac, max_payload: syn.max_payload });
        self.events.push_back(EndpointEvent::Incoming { port: syn.dst_port, cid });
        self.mark_ready(cid);
    }

    fn refuse(&mut self, dst_mac: [u8; 6], their_cid: u64) {
        let r = control_repr(their_cid, Body::Rst(RstBody { reason: RstReason::Refused }));
        self.control.push_back((dst_mac, r));
    }

    fn on_unknown(&mut self, now: Instant, src_mac: [u8; 6], repr: &Repr) {
        self.stats.unknown_cid += 1;
        // Tell the sender its connection is gone (at most once per id per
        // 10 ms, and never in answer to an RST).
        if matches!(repr.body, Body::Rst(_)) {
            return;
        }
        if let Some((c, t)) = self.last_unknown_rst
            && c == repr.dst_cid
            && now.duration_since(t) < Duration::from_millis(10)
        {
            return;
        }
        self.last_unknown_rst = Some((repr.dst_cid, now));
        let mut r = control_repr(repr.dst_cid, Body::Rst(RstBody { reason: RstReason::Unknown }));
        r.flags = FLAG_RST_UNKNOWN_TARGET;
        self.control.push_back((src_mac, r));
    }

    fn drain_discovery(&mut self) {
        while let Some((ip, lookup)) = self.discovery.poll_finished() {
            let peer = match lookup {
                Lookup::Present(p) => Some(p),
                _ => None,
            };
            self.events.push_back(EndpointEvent::Discovered { ip, peer });
        }
    }

    // ---- time ----------------------------------------------------------------

    /// When [`Endpoint::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self
            .slots
            .values()
            .filter_map(|s| {
                let forget = if s.held { None } else { s.conn.forget_at() };
                match (s.conn.poll_timeout(), forget) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min();
        match (conns, self.discovery.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.conn.poll_timeout().is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        for cid in due {
            if let Some(s) = self.slots.get_mut(&cid) {
                s.conn.handle_timeout(now);
            }
            self.mark_ready(cid);
            self.drain_events(cid);
        }
        self.discovery.handle_timeout(now);
        self.drain_discovery();
        self.reap(now);
    }

    /// Forgets connections the application let go of that are finished.
    fn reap(&mut self, now: Instant) {
        let gone: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.held && s.port.is_none() && s.conn.is_finished(now))
            .map(|(c, _)| *c)
            .collect();
        for cid in gone {
            if let Some(s) = self.slots.remove(&cid) {
                self.syns.remove(&(s.conn.addressing().remote_mac, s.conn.remote_cid()));
            }
        }
    }

    // ---- output --------------------------------------------------------------

    /// Writes the next frame to send into `buf` (after the Ethernet header;
    /// at least header + max payload bytes). Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((dst_mac, repr)) = self.control.pop_front() {
            repr.emit(&mut Packet::new_unchecked(&mut *buf));
            return Some(Transmit { dst_mac, len: repr.buffer_len() });
        }
        if let Some(ip) = self.discovery.poll_transmit(now) {
            let sender_ip = self.local_addr_for(ip).map_or(Ipv4Addr::UNSPECIFIED, |a| a.ip);
            let repr = control_repr(0, Body::Discover(DiscoverBody { target_ip: ip, sender_ip }));
            repr.emit(&mut Packet::new_unchecked(&mut *buf));
            return Some(Transmit { dst_mac: BROADCAST, len: repr.buffer_len() });
        }
        while let Some(cid) = self.ready.pop_front() {
            let Some(s) = self.slots.get_mut(&cid) else {
                continue;
            };
            match s.conn.poll_transmit(now, buf) {
                Some(len) => {
                    let dst_mac = s.conn.addressing().remote_mac;
                    // Round-robin: back of the queue, to be asked again.
                    self.ready.push_back(cid);
                    self.drain_events(cid);
                    return Some(Transmit { dst_mac, len });
                }
                None => {
                    s.ready = false;
                    self.drain_events(cid);
                }
            }
        }
        None
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// Ids of all connections the endpoint holds.
    pub fn connection_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.keys().copied()
    }

    /// Whether a frame may be waiting to be sent at `now` (a control frame,
    /// a due discovery, or a connection with something to say).
    pub fn wants_transmit(&self, now: Instant) -> bool {
        !self.control.is_empty() || !self.ready.is_empty() || self.discovery.poll_timeout().is_some_and(|t| t <= now)
    }

    /// Tracks connection `cid` as wanting a transmit check (after a change
    /// the endpoint did not see, e.g. through [`Endpoint::connection_mut`]).
    pub fn touch(&mut self, cid: u64) {
        self.mark_ready(cid);
    }

    /// Known peers on the link, as discovered so far.
    pub fn lookup_cached(&mut self, now: Instant, ip: Ipv4Addr) -> Option<Lookup> {
        match self.discovery.lookup(now, ip) {
            Lookup::Pending => None,
            l => Some(l),
        }
    }
}

fn control_repr(dst_cid: u64, body: Body) -> Repr {
    Repr { flags: 0, dst_cid, seq: 0, ack: 0, limit: 0, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_contain_their_addresses() {
        let a = LocalAddr { ip: Ipv4Addr::new(10, 1, 2, 3), prefix: 24 };
        assert!(a.contains(Ipv4Addr::new(10, 1, 2, 200)));
        assert!(!a.contains(Ipv4Addr::new(10, 1, 3, 1)));
        assert!(LocalAddr { ip: Ipv4Addr::new(1, 2, 3, 4), prefix: 0 }.contains(Ipv4Addr::new(9, 9, 9, 9)));
        assert!(LocalAddr { ip: Ipv4Addr::new(1, 2, 3, 4), prefix: 32 }.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }
}
