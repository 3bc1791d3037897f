//! All reliable-link connections of one node on one link: demultiplexing
//! by connection id, listeners and the handshake's responder side,
//! discovery, fair transmission across connections, the buffer pool and
//! memory budget every connection draws on, and peer liveness.
//!
//! Same sans-IO surface as [`Connection`]: `handle_input`,
//! `handle_timeout`, `poll_timeout`, `poll_transmit`, `poll_event`, plus
//! the application calls (`connect`, `listen`, `accept`, `write`, `read`,
//! `close`, `abort`, `release`), each of which may make frames to send.
//!
//! ## Scale
//! Nothing here walks every connection on the fast path: frames find their
//! connection by id, timers live in one heap keyed by deadline (lazily
//! invalidated: an entry whose deadline is no longer the connection's is
//! skipped when it comes up), and liveness is per peer node, not per
//! connection, so 10,000 idle connections to one host cost one keepalive
//! exchange per idle interval.
//!
//! ## Liveness
//! An established connection waiting for nothing arms no timer of its own.
//! Instead the endpoint watches each peer node it has connections with:
//! after [`EndpointConfig::keepalive`] without a frame from it, a KEEPALIVE
//! goes out (every quarter of that interval until one is answered), and
//! after [`Config::dead_after`] of silence every connection to that peer
//! ends with [`CloseReason::TimedOut`]. Each endpoint has a random instance
//! id, carried in SYN, SYN-ACK and keepalives: a peer that answers with a
//! new one has restarted, and the connections of its old instance end at
//! once (as if reset: the new instance does not know them).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    buffer::{Budget, BufferPool, PoolStats},
    connection::{Addressing, CloseReason, Config, Connection, Event, MAX_WINDOW, Mode, ReadOutcome, StreamError},
    discovery::{Discovery, DiscoveryConfig, Lookup, Peer},
    fasthash::FastMap,
    wire::{
        self, Body, DiscoverBody, DiscoverReplyBody, HEADER_LEN, KeepaliveBody, Packet, Repr, RstBody, RstReason,
        SynBody,
    },
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
    /// Connections a listener queues for `accept`; SYNs beyond are dropped
    /// (the initiator retries), as with Linux's accept queue.
    pub backlog: usize,
    /// The most bytes all connections together may reserve for their
    /// buffers; a connection that cannot reserve its first window is
    /// refused.
    pub memory_limit: usize,
    /// Buffer chunks allocated (and faulted in) up front and kept warm even
    /// when idle (beyond them, the pool keeps what recent traffic used; see
    /// [`Endpoint::age_pool`]).
    pub warm_chunks: usize,
    /// Send a KEEPALIVE to a peer node after this long without hearing from
    /// it (`None`: no keepalives; idle connections then never notice a dead
    /// peer).
    pub keepalive: Option<Duration>,
    /// A budget shared with other buffer owners (then `memory_limit` is
    /// ignored); `None`: the endpoint's own.
    pub budget: Option<Arc<Budget>>,
    /// The most all receive windows together may grow beyond their first
    /// windows (`None`: one connection's cap, `connection.recv_buffer`, so
    /// a lone stream still reaches it and many share it). What a receiver
    /// grants at once must fit what it can absorb between two looks at its
    /// receive ring.
    pub window_growth: Option<usize>,
    /// The most bytes of data all connections with one peer node together
    /// may have sent and not yet had acknowledged (0: no bound). Credit is
    /// per connection; without this, 10,000 connections each sending its
    /// first window at once put 300 MB on a link whose receiver takes a
    /// ring of 2,048 frames between two looks, and lost most of it.
    pub node_in_flight: usize,
}

/// The default [`EndpointConfig::node_in_flight`]: 16 MiB, four times one
/// stream's largest window by default (a lone stream is never held back by
/// it). Measured with 10,000 connections echoing 64 KiB at once over a veth
/// (release): 4 MiB took 11 s, 16 MiB 8.3 s, no bound 7.6 s but sent 241 MB
/// again of 1.3 GB and lost 787,000 frames at the receiving ring (16 MiB:
/// 92 MB, 254,000); in a debug build, no bound starved some connections
/// for 30 s (2 runs in 7), the bound none (0 in 10).
pub const DEFAULT_NODE_IN_FLIGHT: usize = 16 << 20;

/// The default [`EndpointConfig::memory_limit`] (1 GiB; the runtime sets it
/// from the machine's memory).
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 30;

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
            backlog: 4096,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            warm_chunks: 64,
            keepalive: Some(Duration::from_secs(1)),
            budget: None,
            window_growth: None,
            node_in_flight: DEFAULT_NODE_IN_FLIGHT,
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
    /// A SYN for a listening port was refused because the memory budget is
    /// spent (the peer hears RST Overloaded).
    RefusedForMemory {
        /// The listener's port.
        port: u16,
        /// Who asked.
        from: Ipv4Addr,
    },
    /// A peer node went silent for `dead_after` (keepalives unanswered) or
    /// came back as a new instance: its connections ended.
    PeerLost {
        /// The peer's MAC.
        mac: [u8; 6],
        /// Connections that ended with it.
        connections: usize,
        /// True if it answered as a new instance (restarted), false if it
        /// went silent.
        restarted: bool,
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
    /// The memory budget has no room for another connection's first window.
    #[error(
        "no memory for another connection: {reserved} of the {limit}-byte limit is reserved by {connections} \
         connections"
    )]
    MemoryLimit {
        /// Bytes reserved now.
        reserved: usize,
        /// The limit.
        limit: usize,
        /// Connections holding reservations.
        connections: usize,
    },
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
    /// SYNs refused (no listener, full backlog, no memory).
    pub refused: u64,
    /// SYNs refused because the memory budget was spent.
    pub refused_memory: u64,
    /// SYNs dropped because the listener's accept queue was full (the
    /// initiator retries).
    pub backlog_full: u64,
    /// KEEPALIVE frames sent.
    pub keepalives_sent: u64,
    /// Peers declared gone (silent, or restarted).
    pub peers_lost: u64,
}

struct Slot {
    conn: Connection,
    held: bool,
    ready: bool,
    port: Option<u16>,
    /// Index of the peer node in [`Endpoint::peers`].
    peer: usize,
    /// The deadline this slot has in the timer heap, if any.
    armed: Option<Instant>,
    /// Its [`Connection::in_flight`] as last counted in its peer's total.
    in_flight: u64,
    /// Waiting in its peer's queue for room to send new data.
    parked: bool,
}

impl Slot {
    fn new(mut conn: Connection, held: bool, port: Option<u16>, peer: usize, bounded: bool) -> Self {
        if bounded {
            // New data waits for the endpoint's leave (see Endpoint::grant).
            conn.set_node_limit(0);
        }
        Self { conn, held, ready: false, port, peer, armed: None, in_flight: 0, parked: false }
    }
}

/// A peer node we have connections with.
#[derive(Debug)]
struct PeerNode {
    mac: [u8; 6],
    last_heard: Instant,
    /// Connections with it (slots referring to this entry).
    conns: usize,
    /// Its endpoint instance, once known.
    instance: Option<u64>,
    last_probe: Option<Instant>,
    armed: Option<Instant>,
    /// Bytes its connections have in flight (or may send, granted).
    in_flight: u64,
    /// Smoothed round trip over all its connections' samples.
    srtt: Option<Duration>,
    /// Connections with new data waiting for room, first come first served.
    parked: VecDeque<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Conn(u64),
    Peer(usize),
}

struct Listener {
    ip: Option<Ipv4Addr>,
    backlog: VecDeque<u64>,
}

/// The reliable-link endpoint of one node on one link.
pub struct Endpoint {
    config: EndpointConfig,
    rng: SplitMix,
    instance: u64,
    slots: FastMap<u64, Slot>,
    /// (peer MAC, peer's cid) → our cid: a repeated SYN, an RST naming the
    /// peer's side.
    by_remote: FastMap<([u8; 6], u64), u64>,
    peers: Vec<Option<PeerNode>>,
    peer_index: FastMap<[u8; 6], usize>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    pool: BufferPool,
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
        let instance = rng.next() | 1;
        let warm = config.warm_chunks;
        let mut pool =
            BufferPool::with_budget(config.budget.clone().unwrap_or_else(|| Budget::new(config.memory_limit)), warm);
        pool.set_growth_cap(config.window_growth.unwrap_or(config.connection.recv_buffer));
        Self {
            discovery: Discovery::new(config.discovery.clone()),
            pool,
            config,
            rng,
            instance,
            slots: FastMap::default(),
            by_remote: FastMap::default(),
            peers: Vec::new(),
            peer_index: FastMap::default(),
            timers: BinaryHeap::new(),
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

    /// The buffer pool's figures: budget, reservations, chunks.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Call about once a second: the pool keeps the warm chunks recent
    /// traffic used and gives the rest to the allocator. Returns how many it
    /// gave back.
    pub fn age_pool(&mut self) -> usize {
        self.pool.age()
    }

    /// This endpoint's instance id (random; a restarted node has a new one).
    pub fn instance(&self) -> u64 {
        self.instance
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

    /// Puts `cid`'s next deadline in the timer heap if it is earlier than
    /// the one there (a later one is found when the earlier entry fires).
    fn rearm(&mut self, cid: u64) {
        let Some(s) = self.slots.get_mut(&cid) else { return };
        let forget = if s.held { None } else { s.conn.forget_at() };
        let t = match (s.conn.poll_timeout(), forget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = t
            && s.armed.is_none_or(|armed| t < armed)
        {
            s.armed = Some(t);
            self.timers.push(Reverse((t, TimerKey::Conn(cid))));
        }
    }

    // ---- in flight per peer node ----------------------------------------------

    /// Counts `cid`'s in-flight bytes anew in its peer's total (after
    /// anything that may have moved them); room made wakes parked
    /// connections.
    fn account(&mut self, cid: u64) {
        let Some(s) = self.slots.get_mut(&cid) else { return };
        if recount(s, &mut self.peers) {
            let idx = s.peer;
            self.wake_parked(idx);
        }
    }

    /// The most one grant lets a connection send before it asks again:
    /// enough that its receiver answers with credit (a quarter of its
    /// first window), small enough that many connections share the room.
    fn grant_size(&self) -> u64 {
        (self.config.connection.first_window() as u64 / 2).max(u64::from(self.config.max_payload))
    }

    /// `cid` has new data and its peer no room: it waits in line.
    fn park(&mut self, cid: u64) {
        let Some(s) = self.slots.get_mut(&cid) else { return };
        if s.parked {
            return;
        }
        s.parked = true;
        if let Some(Some(p)) = self.peers.get_mut(s.peer) {
            p.parked.push_back(cid);
        }
    }

    /// Room was made at peer `idx`: as many parked connections as one grant
    /// each fits go back to the transmit queue, in the order they came.
    fn wake_parked(&mut self, idx: usize) {
        let q = self.grant_size();
        let cap = self.config.node_in_flight as u64;
        let Some(Some(p)) = self.peers.get_mut(idx) else { return };
        let mut room = cap.saturating_sub(p.in_flight);
        let mut woken = Vec::new();
        while room > 0
            && let Some(cid) = p.parked.pop_front()
        {
            // A connection forgotten meanwhile left its entry: skipped.
            if let Some(s) = self.slots.get_mut(&cid)
                && std::mem::take(&mut s.parked)
            {
                woken.push(cid);
                room = room.saturating_sub(q);
            }
        }
        for cid in woken {
            self.mark_ready(cid);
        }
    }

    fn local_addr_for(&self, dst: Ipv4Addr) -> Option<LocalAddr> {
        self.config.addrs.iter().copied().find(|a| a.contains(dst)).or_else(|| self.config.addrs.first().copied())
    }

    // ---- peers -------------------------------------------------------------

    /// The peer-node entry for `mac`, made if there is none; counts one more
    /// connection with it.
    fn attach_peer(&mut self, now: Instant, mac: [u8; 6]) -> usize {
        let idx = match self.peer_index.get(&mac) {
            Some(&i) => i,
            None => {
                let node = PeerNode {
                    mac,
                    last_heard: now,
                    conns: 0,
                    instance: None,
                    last_probe: None,
                    armed: None,
                    in_flight: 0,
                    srtt: None,
                    parked: VecDeque::new(),
                };
                let i = match self.peers.iter().position(Option::is_none) {
                    Some(i) => {
                        self.peers[i] = Some(node);
                        i
                    }
                    None => {
                        self.peers.push(Some(node));
                        self.peers.len() - 1
                    }
                };
                self.peer_index.insert(mac, i);
                i
            }
        };
        if let Some(p) = &mut self.peers[idx] {
            p.conns += 1;
        }
        self.rearm_peer(idx);
        idx
    }

    fn detach_peer(&mut self, idx: usize) {
        let Some(p) = self.peers.get_mut(idx).and_then(Option::as_mut) else { return };
        p.conns = p.conns.saturating_sub(1);
        if p.conns == 0 {
            self.peer_index.remove(&p.mac);
            self.peers[idx] = None;
        }
    }

    fn peer_due(&self, idx: usize) -> Option<Instant> {
        let p = self.peers.get(idx)?.as_ref()?;
        let idle = self.config.keepalive?.max(Duration::from_millis(1));
        if p.conns == 0 {
            return None;
        }
        let silent_at = p.last_heard + idle;
        let dead_at = p.last_heard + self.config.connection.dead_after;
        let next_probe = match p.last_probe {
            // Probing since the last frame: again every quarter interval.
            Some(t) if t >= p.last_heard => (t + idle / 4).max(silent_at),
            _ => silent_at,
        };
        Some(next_probe.min(dead_at))
    }

    fn rearm_peer(&mut self, idx: usize) {
        let Some(t) = self.peer_due(idx) else { return };
        let Some(p) = self.peers.get_mut(idx).and_then(Option::as_mut) else { return };
        if p.armed.is_none_or(|armed| t < armed) {
            p.armed = Some(t);
            self.timers.push(Reverse((t, TimerKey::Peer(idx))));
        }
    }

    fn on_peer_timer(&mut self, now: Instant, idx: usize) {
        let (Some(idle), dead_after) = (self.config.keepalive, self.config.connection.dead_after) else { return };
        let idle = idle.max(Duration::from_millis(1));
        let Some(p) = self.peers.get_mut(idx).and_then(Option::as_mut) else { return };
        let silent = now.saturating_duration_since(p.last_heard);
        if silent >= dead_after {
            let mac = p.mac;
            self.lose_peer(now, mac, CloseReason::TimedOut, false);
            return;
        }
        if silent >= idle && p.last_probe.is_none_or(|t| t < p.last_heard || now >= t + idle / 4) {
            p.last_probe = Some(now);
            let mac = p.mac;
            let body = Body::Keepalive(KeepaliveBody { instance: self.instance });
            self.control.push_back((mac, control_repr(0, body)));
            self.stats.keepalives_sent += 1;
        }
        self.rearm_peer(idx);
    }

    /// Every connection with the peer at `mac` ends with `reason`.
    fn lose_peer(&mut self, now: Instant, mac: [u8; 6], reason: CloseReason, restarted: bool) {
        let victims: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.conn.addressing().remote_mac == mac && s.conn.close_reason().is_none())
            .map(|(c, _)| *c)
            .collect();
        self.stats.peers_lost += 1;
        self.events.push_back(EndpointEvent::PeerLost { mac, connections: victims.len(), restarted });
        for cid in victims {
            if let Some(s) = self.slots.get_mut(&cid) {
                s.conn.peer_lost(now, reason);
            }
            self.account(cid);
            self.mark_ready(cid);
            self.drain_events(cid);
            self.rearm(cid);
        }
        if let Some(&idx) = self.peer_index.get(&mac)
            && let Some(p) = &mut self.peers[idx]
        {
            // A fresh start for whatever connects next.
            p.last_heard = now;
            p.last_probe = None;
        }
    }

    /// The peer at `mac` says it is instance `instance`: if we knew it as
    /// another, it restarted and the old instance's connections are gone.
    fn learn_instance(&mut self, now: Instant, mac: [u8; 6], instance: u64) {
        let Some(&idx) = self.peer_index.get(&mac) else { return };
        let old = self.peers[idx].as_ref().and_then(|p| p.instance);
        if let Some(p) = &mut self.peers[idx] {
            p.instance = Some(instance);
        }
        if old.is_some_and(|o| o != instance) {
            self.lose_peer(now, mac, CloseReason::Reset(RstReason::Unknown), true);
            if let Some(p) = &mut self.peers[idx] {
                p.instance = Some(instance);
            }
        }
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

    fn memory_error(&self) -> EndpointError {
        let p = self.pool.stats();
        EndpointError::MemoryLimit { reserved: p.reserved, limit: p.limit, connections: self.slots.len() }
    }

    /// Opens a connection to `dst_ip:dst_port` at `peer`; `Connected` (or
    /// `Closed`) follows as an event. Refused with
    /// [`EndpointError::MemoryLimit`] if the budget has no room for the
    /// connection's first window.
    pub fn connect(
        &mut self,
        now: Instant,
        dst_ip: Ipv4Addr,
        dst_port: u16,
        peer: Peer,
        mode: Mode,
    ) -> Result<u64, EndpointError> {
        let local = self.local_addr_for(dst_ip).ok_or(EndpointError::NoAddress)?;
        if !self.pool.reserve(self.config.connection.reservation()) {
            return Err(self.memory_error());
        }
        let cid = self.new_cid();
        let port = self.next_port;
        self.next_port = if self.next_port == u16::MAX { 49152 } else { self.next_port + 1 };
        let addr = Addressing {
            local_ip: local.ip,
            local_port: port,
            remote_ip: dst_ip,
            remote_port: dst_port,
            remote_mac: peer.mac,
            local_instance: self.instance,
        };
        let max_payload = self.config.max_payload.min(peer.max_payload);
        let conn = Connection::connect(now, cid, addr, mode, max_payload, self.config.connection.clone());
        let peer_idx = self.attach_peer(now, peer.mac);
        self.slots.insert(cid, Slot::new(conn, true, None, peer_idx, self.config.node_in_flight > 0));
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
                if let Some(s) = self.slots.get_mut(&cid) {
                    s.port = None;
                }
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

    /// Connections waiting on the listener at `port` to be accepted.
    pub fn backlog(&self, port: u16) -> usize {
        self.listeners.get(&port).map_or(0, |l| l.backlog.len())
    }

    /// The connection `cid`, to inspect.
    pub fn connection(&self, cid: u64) -> Option<&Connection> {
        self.slots.get(&cid).map(|s| &s.conn)
    }

    /// Bytes counted in flight (or granted) to the peer node at `mac`, and
    /// how many connections wait for room there; `None` if we have no
    /// connection with it.
    pub fn in_flight_to(&self, mac: [u8; 6]) -> Option<(u64, usize)> {
        let p = self.peers.get(*self.peer_index.get(&mac)?)?.as_ref()?;
        Some((p.in_flight, p.parked.len()))
    }

    /// Connections held (open, closing or lingering).
    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    fn slot(&mut self, cid: u64) -> Result<&mut Slot, EndpointError> {
        self.slots.get_mut(&cid).ok_or(EndpointError::NoConnection(cid))
    }

    /// Queues bytes on `cid` (see [`Connection::write`]).
    pub fn write(&mut self, cid: u64, data: &[u8], end_of_message: bool) -> Result<usize, EndpointError> {
        let slot = self.slots.get_mut(&cid).ok_or(EndpointError::NoConnection(cid))?;
        let n = slot.conn.write(&mut self.pool, data, end_of_message)?;
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
        let slot = self.slots.get_mut(&cid).ok_or(EndpointError::NoConnection(cid))?;
        let r = slot.conn.read(&mut self.pool, out, stop_at_message_end);
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
        if r.len > 0 {
            self.rearm(cid);
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
            self.account(cid);
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
            self.rearm(cid);
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
            Body::Keepalive(k) => {
                self.heard_from(now, src_mac);
                let body = Body::KeepaliveReply(KeepaliveBody { instance: self.instance });
                self.control.push_back((src_mac, control_repr(0, body)));
                self.learn_instance(now, src_mac, k.instance);
            }
            Body::KeepaliveReply(k) => {
                self.heard_from(now, src_mac);
                self.learn_instance(now, src_mac, k.instance);
            }
            Body::Syn(s) => self.on_syn(now, src_mac, &repr, &s),
            Body::Rst(_) if repr.flags & FLAG_RST_UNKNOWN_TARGET != 0 => {
                // The peer does not know the id we sent to: find our side.
                if let Some(&cid) = self.by_remote.get(&(src_mac, repr.dst_cid)) {
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

    /// A keepalive from `mac`: the peer node lives.
    fn heard_from(&mut self, now: Instant, mac: [u8; 6]) {
        if let Some(&idx) = self.peer_index.get(&mac)
            && let Some(p) = &mut self.peers[idx]
        {
            p.last_heard = now;
        }
    }

    fn deliver(&mut self, now: Instant, cid: u64, repr: &Repr, payload: &[u8]) {
        let Some(s) = self.slots.get_mut(&cid) else { return };
        let was_connecting = s.conn.remote_cid() == 0;
        s.conn.handle_input(now, repr, payload, &mut self.pool);
        let (peer, mac, remote) = (s.peer, s.conn.addressing().remote_mac, s.conn.remote_cid());
        let freed = recount(s, &mut self.peers);
        let sample = s.conn.take_rtt_sample();
        if let Some(Some(p)) = self.peers.get_mut(peer) {
            p.last_heard = now;
            if let Some(sample) = sample {
                p.srtt = Some(p.srtt.map_or(sample, |old| (old * 7 + sample) / 8));
            }
        }
        if freed {
            self.wake_parked(peer);
        }
        if was_connecting && remote != 0 {
            self.by_remote.insert((mac, remote), cid);
        }
        // Only a connection with something to say waits for a transmit
        // pass (most frames, DATA among them, need no answer).
        // (New data counts even with no leave left: a grant is asked for
        // when it is picked.)
        if self.slots.get(&cid).is_some_and(|s| s.conn.wants_transmit() || s.conn.new_data_ready() > 0) {
            self.mark_ready(cid);
        }
        self.drain_events(cid);
        self.rearm(cid);
        if let Body::SynAck(sa) = repr.body {
            self.learn_instance(now, mac, sa.instance);
        }
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
        if let Some(&cid) = self.by_remote.get(&(src_mac, syn.src_cid)) {
            self.deliver(now, cid, repr, &[]);
            return;
        }
        if repr.limit > MAX_WINDOW {
            // An impossible window before the connection even exists.
            self.stats.malformed += 1;
            self.refuse(src_mac, syn.src_cid, RstReason::Protocol);
            return;
        }
        let ours = self.config.addrs.iter().any(|a| a.ip == syn.dst_ip);
        let listener = self.listeners.get(&syn.dst_port).filter(|l| ours && l.ip.is_none_or(|ip| ip == syn.dst_ip));
        let Some(listener) = listener else {
            self.stats.refused += 1;
            self.refuse(src_mac, syn.src_cid, RstReason::Refused);
            return;
        };
        if listener.backlog.len() >= self.config.backlog {
            // A full accept queue drops the SYN, as Linux does: the
            // initiator retries (backing off) and gets in once the
            // application accepts, instead of failing a burst of connects.
            self.stats.backlog_full += 1;
            return;
        }
        if !self.pool.reserve(self.config.connection.reservation()) {
            self.stats.refused += 1;
            self.stats.refused_memory += 1;
            self.refuse(src_mac, syn.src_cid, RstReason::Overloaded);
            self.events.push_back(EndpointEvent::RefusedForMemory { port: syn.dst_port, from: syn.src_ip });
            return;
        }
        let cid = self.new_cid();
        let addr = Addressing {
            local_ip: syn.dst_ip,
            local_port: syn.dst_port,
            remote_ip: syn.src_ip,
            remote_port: syn.src_port,
            remote_mac: src_mac,
            local_instance: self.instance,
        };
        let conn =
            Connection::accept(now, cid, addr, syn, repr, self.config.max_payload, self.config.connection.clone());
        let peer = self.attach_peer(now, src_mac);
        self.learn_instance(now, src_mac, syn.instance);
        self.slots.insert(cid, Slot::new(conn, false, Some(syn.dst_port), peer, self.config.node_in_flight > 0));
        self.by_remote.insert((src_mac, syn.src_cid), cid);
        if let Some(l) = self.listeners.get_mut(&syn.dst_port) {
            l.backlog.push_back(cid);
        }
        self.discovery.learn(now, syn.src_ip, Peer { mac: src_mac, max_payload: syn.max_payload });
        self.events.push_back(EndpointEvent::Incoming { port: syn.dst_port, cid });
        self.mark_ready(cid);
        self.rearm(cid);
    }

    fn refuse(&mut self, dst_mac: [u8; 6], their_cid: u64, reason: RstReason) {
        let r = control_repr(their_cid, Body::Rst(RstBody { reason }));
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

    /// When [`Endpoint::handle_timeout`] must be called next (possibly a
    /// little early: the heap keeps deadlines that have since moved later).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.timers.peek().map(|Reverse((t, _))| *t);
        match (timers, self.discovery.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Entries in the timer heap (deadlines of connections and peers,
    /// including superseded ones not yet popped): what one pass of the
    /// timer wheel may have to look at.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        // What is due now, taken first: a deadline re-armed while handling
        // these waits for the next call, so no input can make this loop
        // forever.
        let mut due = Vec::new();
        while let Some(&Reverse((t, key))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            due.push((t, key));
        }
        for (t, key) in due {
            match key {
                TimerKey::Conn(cid) => {
                    let Some(s) = self.slots.get_mut(&cid) else { continue };
                    if s.armed != Some(t) {
                        continue; // superseded by an earlier deadline, already handled
                    }
                    s.armed = None;
                    if let Some(Some(p)) = self.peers.get(s.peer) {
                        s.conn.peer_alive(p.last_heard);
                        s.conn.set_rto_floor(p.srtt.unwrap_or_default());
                    }
                    s.conn.handle_timeout(now, &mut self.pool);
                    self.account(cid);
                    self.mark_ready(cid);
                    self.drain_events(cid);
                    if !self.reap(now, cid) {
                        self.rearm(cid);
                    }
                }
                TimerKey::Peer(idx) => {
                    let Some(Some(p)) = self.peers.get_mut(idx) else { continue };
                    if p.armed != Some(t) {
                        continue;
                    }
                    p.armed = None;
                    self.on_peer_timer(now, idx);
                }
            }
        }
        self.discovery.handle_timeout(now);
        self.drain_discovery();
    }

    /// Forgets `cid` if the application let go of it and it is finished:
    /// its buffers and budget go back to the pool. Returns whether it went.
    fn reap(&mut self, now: Instant, cid: u64) -> bool {
        let done = self.slots.get(&cid).is_some_and(|s| !s.held && s.port.is_none() && s.conn.is_finished(now));
        if !done {
            return false;
        }
        if let Some(mut s) = self.slots.remove(&cid) {
            self.by_remote.remove(&(s.conn.addressing().remote_mac, s.conn.remote_cid()));
            // (An entry it left in the peer's queue is skipped when met.)
            if let Some(Some(p)) = self.peers.get_mut(s.peer) {
                p.in_flight = p.in_flight.saturating_sub(s.in_flight);
            }
            if s.in_flight > 0 {
                self.wake_parked(s.peer);
            }
            s.conn.free_buffers(&mut self.pool);
            self.detach_peer(s.peer);
            // A map that once held many connections gives its memory back.
            let cap = self.slots.capacity();
            if cap > 1024 && self.slots.len() * 8 < cap {
                self.slots.shrink_to(self.slots.len() * 2);
                self.by_remote.shrink_to(self.by_remote.len() * 2);
            }
        }
        true
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
        let (cap, q) = (self.config.node_in_flight as u64, self.grant_size());
        while let Some(cid) = self.ready.pop_front() {
            let Some(s) = self.slots.get_mut(&cid) else {
                continue;
            };
            let room = cap == 0 || grant(s, &mut self.peers, cap, q);
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
                    let closed = s.conn.close_reason().is_some();
                    if !room && !closed {
                        self.park(cid);
                    }
                    self.drain_events(cid);
                    // What it sent may have started a wait (a retry timer),
                    // or ended it (an RST out: it may be forgotten now).
                    if !(closed && self.reap(now, cid)) {
                        self.rearm(cid);
                    }
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

/// Counts the slot's in-flight bytes anew in its peer's total (after
/// anything that may have moved them); true if that made room.
fn recount(s: &mut Slot, peers: &mut [Option<PeerNode>]) -> bool {
    let now_in = s.conn.in_flight();
    let before = std::mem::replace(&mut s.in_flight, now_in);
    if let Some(Some(p)) = peers.get_mut(s.peer) {
        p.in_flight = (p.in_flight + now_in).saturating_sub(before);
    }
    now_in < before
}

/// Before the slot is asked for a frame: if it has new data and no leave
/// left, a grant of up to `q` bytes from its peer's room under `cap`.
/// False if it has new data and there is no room (it is parked if it has
/// nothing else to send).
fn grant(s: &mut Slot, peers: &mut [Option<PeerNode>], cap: u64, q: u64) -> bool {
    let ready = s.conn.new_data_ready();
    let sent_hi = s.conn.sent_hi();
    if ready == 0 || s.conn.node_limit() > sent_hi {
        return true;
    }
    let Some(Some(p)) = peers.get(s.peer) else { return true };
    let room = cap.saturating_sub(p.in_flight);
    if room == 0 {
        return false;
    }
    s.conn.set_node_limit(sent_hi + ready.min(q).min(room));
    recount(s, peers);
    true
}

fn control_repr(dst_cid: u64, body: Body) -> Repr {
    Repr { flags: 0, epoch: 0, epoch_seen: 0, dst_cid, seq: 0, ack: 0, limit: 0, body }
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
