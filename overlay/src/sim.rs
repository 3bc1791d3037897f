//! Relay cores joined by in-memory links on virtual time: the harness of
//! the relay tests (`tests/relay_sim.rs`) and of the many-relay benchmark
//! (`xsock-perf relaysim`). Frames move between cores as the shells would
//! move them, with no I/O and no clock but the one the harness advances.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::Ipv4Addr,
    time::Duration,
};

use crate::{
    NodeId, SiteId,
    attach::{AttachConfig, Attachment, Event},
    relay::{Action, LinkId, LocalId, RelayConfig, RelayCore},
    route::ShortestPath,
    wire::{Entry, FrameReader, Role},
};

/// The simulated overlay.
pub struct Sim {
    /// See the type.
    pub now: Duration,
    /// See the type.
    pub relays: BTreeMap<u64, RelayCore>,
    /// link id -> (relay a, relay b); both ends use the same id.
    /// See the type.
    pub links: HashMap<LinkId, (u64, u64)>,
    /// See the type.
    pub wires: HashMap<(LinkId, u64), FrameReader>,
    /// See the type.
    pub in_flight: VecDeque<(LinkId, u64, Vec<u8>)>,
    /// See the type.
    pub actions: Vec<(u64, Action)>,
    /// See the type.
    pub next_link: LinkId,
    /// Frames moved between cores so far (each hop counts).
    pub delivered: u64,
    /// Their bytes.
    pub delivered_bytes: u64,
    /// Rounds of delivery that moved frames (one round = one hop for
    /// everything in flight): the flooding depth.
    pub rounds: u64,
    /// Attached endpoints, by node id: their relay, session and core.
    pub attached: BTreeMap<u64, (u64, LinkId, Attachment)>,
    /// Events the attached endpoints reported, in order.
    pub events: Vec<(u64, Event)>,
    /// Messages by type byte that crossed a hop (relay links and sessions).
    pub msgs_by_type: BTreeMap<u8, u64>,
    /// Whether [`Sim::settle`] fires the burst timers at quiet points
    /// (true; false leaves them to virtual time, as in `xsock relay`).
    pub flush_bursts: bool,
}

/// Relay `id` in site `id`.
pub fn relay_entry(id: u64) -> Entry {
    Entry {
        node: NodeId(id),
        role: Role::Relay,
        name: format!("relay-{id}"),
        site: SiteId(id),
        lan_ip: Ipv4Addr::new(10, 0, 0, 1),
        wan: None,
        serve_port: 1,
        rank: None,
        ports: vec![],
        vaddr: None,
    }
}

/// Endpoint `100 * site + k`, listening on port 80, in site `site`.
pub fn endpoint_entry(site: u64, k: u64) -> Entry {
    Entry {
        node: NodeId(100 * site + k),
        role: Role::Endpoint,
        name: format!("h{site}-{k}"),
        site: SiteId(site),
        lan_ip: Ipv4Addr::new(10, 0, 0, 2),
        wan: None,
        serve_port: 0,
        rank: None,
        ports: vec![80],
        vaddr: Some(Ipv4Addr::new(100, 64, site as u8, k as u8)),
    }
}

impl Sim {
    /// Relays `ids`, each in its own site with endpoints `h<id>-1` and
    /// `h<id>-2` listening on port 80, no links yet.
    pub fn new(ids: &[u64], window: u32) -> Sim {
        let mut dir: Vec<Entry> = ids.iter().map(|&i| relay_entry(i)).collect();
        dir.extend(ids.iter().flat_map(|&i| [endpoint_entry(i, 1), endpoint_entry(i, 2)]));
        Self::build(ids, window, Some(&dir))
    }

    /// Relays `ids` with no directory: routing only (the many-relay
    /// benchmark, where a directory per relay would be N^2 entries).
    pub fn routing_only(ids: &[u64]) -> Sim {
        Self::build(ids, 1 << 20, None)
    }

    fn build(ids: &[u64], window: u32, dir: Option<&[Entry]>) -> Sim {
        let relays = ids
            .iter()
            .map(|&i| {
                let mut cfg = RelayConfig::new(NodeId(i), 1000 * i);
                cfg.window = window;
                let mut c = RelayCore::new(cfg, Box::new(ShortestPath), Duration::ZERO);
                if let Some(d) = dir {
                    c.set_directory(d);
                }
                (i, c)
            })
            .collect();
        Sim {
            delivered: 0,
            delivered_bytes: 0,
            rounds: 0,
            now: Duration::ZERO,
            relays,
            links: HashMap::new(),
            wires: HashMap::new(),
            in_flight: VecDeque::new(),
            actions: vec![],
            next_link: 1,
            attached: BTreeMap::new(),
            events: Vec::new(),
            msgs_by_type: BTreeMap::new(),
            flush_bursts: true,
        }
    }

    /// Endpoint `node` attaches to relay `relay` (a session, as after its
    /// LAN preamble).
    pub fn attach(&mut self, relay: u64, node: u64) -> LinkId {
        let l = self.next_link;
        self.next_link += 1;
        let now = self.now;
        self.core(relay).handle_session_up(now, l, NodeId(node));
        let mut a = Attachment::new(AttachConfig::new(NodeId(node)), now);
        a.listen(80);
        self.attached.insert(node, (relay, l, a));
        l
    }

    /// Attached endpoint `node`'s core.
    pub fn endpoint(&mut self, node: u64) -> &mut Attachment {
        &mut self.attached.get_mut(&node).expect("attached").2
    }

    /// The session of `node` breaks at both ends.
    pub fn detach(&mut self, node: u64) {
        let (relay, link, mut a) = self.attached.remove(&node).expect("attached");
        a.handle_session_lost("the session broke");
        while let Some(e) = a.poll_event() {
            self.events.push((node, e));
        }
        let now = self.now;
        if let Some(c) = self.relays.get_mut(&relay) {
            c.handle_link_down(now, link);
        }
    }

    /// Takes the events reported so far.
    pub fn take_events(&mut self) -> Vec<(u64, Event)> {
        std::mem::take(&mut self.events)
    }

    fn count_types(&mut self, bytes: &[u8]) {
        let mut rd = FrameReader::default();
        rd.push(bytes);
        while let Ok(Some(f)) = rd.next_frame() {
            *self.msgs_by_type.entry(f[0]).or_default() += 1;
        }
    }

    /// A link from `a` (which dialled) to `b`.
    pub fn connect(&mut self, a: u64, b: u64) -> LinkId {
        let l = self.next_link;
        self.next_link += 1;
        self.links.insert(l, (a, b));
        let now = self.now;
        self.relays.get_mut(&a).unwrap().handle_link_up(now, l, NodeId(b), true);
        self.relays.get_mut(&b).unwrap().handle_link_up(now, l, NodeId(a), false);
        l
    }

    /// Link `l` goes down at both ends.
    pub fn cut(&mut self, l: LinkId) {
        let (a, b) = self.links.remove(&l).unwrap();
        let now = self.now;
        for r in [a, b] {
            if let Some(c) = self.relays.get_mut(&r) {
                c.handle_link_down(now, l);
            }
        }
    }

    /// A relay dies: its neighbours see its links go down.
    pub fn kill(&mut self, r: u64) {
        self.relays.remove(&r);
        let dead: Vec<LinkId> = self.links.iter().filter(|(_, (a, b))| *a == r || *b == r).map(|(l, _)| *l).collect();
        for l in dead {
            self.cut(l);
        }
    }

    /// Moves frames until nothing is in flight and no burst timer waits
    /// (they fire at once: see [`RelayCore::flush`]); returns the actions.
    pub fn settle(&mut self) -> Vec<(u64, Action)> {
        let mut flushed = false;
        for _ in 0..10_000 {
            let mut to_endpoints = Vec::new();
            for (&id, core) in self.relays.iter_mut() {
                while let Some((link, bytes)) = core.poll_transmit() {
                    if let Some(&(a, b)) = self.links.get(&link) {
                        let to = if a == id { b } else { a };
                        self.in_flight.push_back((link, to, bytes));
                    } else if let Some((&node, _)) = self.attached.iter().find(|(_, (_, l, _))| *l == link) {
                        to_endpoints.push((node, bytes));
                    }
                }
                while let Some(a) = core.poll_action() {
                    self.actions.push((id, a));
                }
            }
            let now = self.now;
            for (node, bytes) in to_endpoints {
                self.delivered += 1;
                self.delivered_bytes += bytes.len() as u64;
                self.count_types(&bytes);
                let (_, _, a) = self.attached.get_mut(&node).expect("found");
                let mut rd = FrameReader::default();
                rd.push(&bytes);
                while let Some(f) = rd.next_frame().unwrap() {
                    a.handle_frame(now, f).unwrap();
                }
                flushed = false;
            }
            for (&node, (relay, link, a)) in self.attached.iter_mut() {
                while let Some(e) = a.poll_event() {
                    self.events.push((node, e));
                }
                if let Some(bytes) = a.poll_transmit(now) {
                    self.in_flight.push_back((*link, *relay, bytes));
                }
            }
            if self.in_flight.is_empty() {
                if flushed || !self.flush_bursts {
                    return std::mem::take(&mut self.actions);
                }
                // Quiet: the timers of the burst fire.
                let now = self.now;
                for c in self.relays.values_mut() {
                    c.flush(now);
                }
                flushed = true;
                continue;
            }
            flushed = false;
            self.rounds += 1;
            while let Some((link, to, bytes)) = self.in_flight.pop_front() {
                self.delivered += 1;
                self.delivered_bytes += bytes.len() as u64;
                if !self.attached.is_empty() {
                    self.count_types(&bytes);
                }
                let Some(core) = self.relays.get_mut(&to) else { continue };
                let rd = self.wires.entry((link, to)).or_default();
                rd.push(&bytes);
                while let Some(f) = rd.next_frame().unwrap() {
                    core.handle_link_frame(self.now, link, f).unwrap();
                }
            }
        }
        panic!("the overlay never went quiet");
    }

    /// Runs timers for `d` of virtual time, settling after each.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let relays = self.relays.values().map(|c| c.poll_timeout());
            let endpoints = self.attached.values().map(|(_, _, a)| a.poll_timeout());
            let next = relays.chain(endpoints).min().unwrap_or(end).min(end);
            self.now = next.max(self.now);
            let now = self.now;
            for c in self.relays.values_mut() {
                if c.poll_timeout() <= now {
                    c.handle_timeout(now);
                }
            }
            for (_, _, a) in self.attached.values_mut() {
                if a.poll_timeout() <= now {
                    a.handle_timeout(now);
                }
            }
            self.settle();
            if next >= end {
                break;
            }
        }
    }

    /// Relay `r`'s core.
    pub fn core(&mut self, r: u64) -> &mut RelayCore {
        self.relays.get_mut(&r).unwrap()
    }

    /// Opens a VC from endpoint h`from`-1 to h`to`-1:port; answers the
    /// Connect at the far relay. Returns (source local, destination relay
    /// and local), or the failure reason.
    pub fn open(&mut self, from: u64, to: u64, port: u16) -> Result<(LocalId, u64, LocalId), String> {
        let now = self.now;
        let src = self.core(from).handle_local_open(now, NodeId(100 * from + 1), NodeId(100 * to + 1), port);
        let mut far = None;
        for (r, a) in self.settle() {
            match a {
                Action::Connect { local, .. } => far = Some((r, local)),
                Action::Failed { local, reason } if local == src && r == from => return Err(reason),
                other => panic!("unexpected {other:?}"),
            }
        }
        let (r, local) = far.expect("a Connect at the far relay");
        self.core(r).handle_local_connected(local);
        let acts = self.settle();
        assert!(acts.contains(&(from, Action::Opened { local: src })), "{acts:?}");
        Ok((src, r, local))
    }
}
