//! The relay's protocol core, sans-IO: relay links, link-state flooding,
//! routing, and virtual connections forwarded hop by hop.
//!
//! The I/O shell (`xsock relay`) owns the sockets. It tells the core what
//! happened (`handle_*`), sends what [`RelayCore::poll_transmit`] returns on
//! the named link, carries out what [`RelayCore::poll_action`] asks of the
//! endpoint streams of its LAN, and calls [`RelayCore::handle_timeout`] by
//! [`RelayCore::poll_timeout`].
//!
//! A virtual connection (VC) has two *ends* at each relay it crosses: a
//! (link, vc id) pair toward each neighbour, or a *local* end, the stream to
//! an endpoint of this relay's LAN. Ids on a link are chosen by the sender
//! of `Open`: the relay with the smaller node id uses even ids, the other
//! odd, so both may open at once. Flow control is end to end: the relay
//! holding a local end forwards the endpoint's bytes only within the credit
//! the other end granted (in `Open` and `Accept`, then `Credit` as it
//! delivers). Relays in between forward without buffering beyond that.
//!
//! An endpoint that attaches ([`RelayCore::handle_session_up`]) keeps one
//! stream to the relay, its *session*, and speaks the links' VC messages
//! on it: its VCs open with one `Open` per hop carrying their first bytes,
//! and the relay delivers VCs to it the same way, with no stream or
//! handshake per VC. A session is a link in all but routing: no
//! advertisement goes on it or names it, and the endpoint may open VCs
//! only as itself. On a session the endpoint picks even VC ids, the relay
//! odd ones.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use crate::{
    NodeId, SiteId,
    cert::{CertError, Revocations, Trust},
    linkq::LinkQueue,
    lsdb::{Install, LinkStateDb, Lsa},
    route::{Route, Routing},
    wire::{Entry, MAX_DATA, Msg, ParseError, Role},
};

/// A relay link, named by the shell.
pub type LinkId = u64;
/// A local end (an endpoint stream at this relay), named by the core.
pub type LocalId = u64;

/// How the reason of a VC aborted because a relay or relay link on its
/// path went down begins (the shell tells the endpoint so).
pub const PATH_LOST: &str = "path lost: ";

/// The most a VC may have queued on one link of ours: more than any
/// window the ends grant (they grow to 16 MiB), so only a sender that
/// ignores credit reaches it.
pub const MAX_VC_QUEUE: usize = 64 << 20;

/// Hops an `Open` may take.
pub const MAX_HOPS: u8 = 16;

/// Tunables.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This relay.
    pub me: NodeId,
    /// Bytes a local end can take before the sender must wait for credit.
    pub window: u32,
    /// How often our advertisement is re-flooded when nothing changed (a
    /// refresh costs every relay of the overlay a message, so it is rare:
    /// link liveness comes from keepalives).
    pub refresh: Duration,
    /// A link with nothing else sent for this long carries a keepalive.
    pub keepalive: Duration,
    /// Our links changed within this long of our last advertisement: the
    /// next one waits for the rest of the interval, so the links of a start
    /// (or a flap) go out in one advertisement, not one per link.
    pub min_originate: Duration,
    /// The longest that hold grows to: advertisements that follow each
    /// other within twice the hold double it (a flapping link, a storm of
    /// links lost and made under load, which would otherwise flood every
    /// relay with every change as fast as `min_originate` allows); one
    /// that comes after a quiet spell of twice the hold sets it back.
    pub max_originate: Duration,
    /// Routes are recomputed this long after the first change of a burst
    /// (one computation for the burst of advertisements a change floods;
    /// a VC opened meanwhile computes them at once).
    pub spf_delay: Duration,
    /// Advertisements not refreshed for this long are dropped.
    pub max_age: Duration,
    /// A link that has been silent this long is closed (10 s: see
    /// `AttachConfig::new` for why not 2).
    pub link_timeout: Duration,
    /// First sequence number (the shell passes its start time in µs, so a
    /// restarted relay's advertisements are newer than its old ones).
    pub seq_start: u64,
}

impl RelayConfig {
    /// Defaults for relay `me`.
    pub fn new(me: NodeId, seq_start: u64) -> Self {
        Self {
            me,
            window: 4 << 20,
            refresh: Duration::from_secs(30),
            keepalive: Duration::from_millis(500),
            spf_delay: Duration::from_millis(2),
            min_originate: Duration::from_millis(50),
            max_originate: Duration::from_secs(2),
            max_age: Duration::from_secs(120),
            link_timeout: Duration::from_millis(10000),
            seq_start,
        }
    }
}

/// What the shell must do with an endpoint stream.
// Each variant's doc names its fields.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a stream to endpoint `dst` (of this LAN, not attached) on
    /// `port`, on behalf of `src`; report with `handle_local_connected` or
    /// `handle_local_failed`.
    Connect { local: LocalId, src: NodeId, dst: NodeId, port: u16 },
    /// The VC opened by this local end was accepted: tell the endpoint and
    /// start relaying.
    Opened { local: LocalId },
    /// The VC is refused or broken: tell the endpoint why (or reset its
    /// stream if it was open) and drop the stream.
    Failed { local: LocalId, reason: String },
    /// Bytes for the endpoint.
    Write { local: LocalId, bytes: Vec<u8> },
    /// The far end sends nothing more: half-close the endpoint's stream
    /// after the bytes written so far.
    Shutdown { local: LocalId },
    /// Both directions are finished: close the stream once flushed.
    Finished { local: LocalId },
    /// Close this link or session (a duplicate, or it went silent).
    CloseLink { link: LinkId },
    /// A newer revocation list was taken (from a link or the shell) and
    /// flooded on: refuse these keys from now on, close the links and
    /// sessions of nodes that hold one, tell the bootstrap servers.
    Revoked { list: Revocations },
}

/// Counters for the status report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// VCs opened through this relay (any role).
    pub vcs_opened: u64,
    /// Opens refused or unroutable here or beyond.
    pub vcs_refused: u64,
    /// VCs aborted.
    pub vcs_aborted: u64,
    /// VCs that ended gracefully.
    pub vcs_closed: u64,
    /// Data bytes forwarded (from any end to any end).
    pub bytes_forwarded: u64,
    /// Advertisements received.
    pub lsas_in: u64,
    /// Advertisements of our own sent (changes and refreshes).
    pub lsas_originated: u64,
    /// Relay links closed because they went silent.
    pub links_silent: u64,
    /// Relay links that went down (closed or broken under us).
    pub links_down: u64,
    /// Relay links replaced by a newer one to the same relay.
    pub links_replaced: u64,
    /// Endpoint sessions that ended (closed, broken or silent).
    pub sessions_ended: u64,
    /// Route computations.
    pub route_runs: u64,
    /// Revocation lists from links that were not taken (another CA's, a
    /// bad signature, older than ours).
    pub revocations_refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    Link(LinkId, u32),
    Local(LocalId),
    /// An attached endpoint that finished sending (its `Close` went on)
    /// and then left: the VC lives until the other end closes too, and
    /// data for it is answered with `Abort`.
    Departed(u64),
}

#[derive(Debug)]
struct Vc {
    ends: [End; 2],
    /// Which ends have sent Close.
    closed: [bool; 2],
    open: bool,
}

#[derive(Debug)]
struct LocalEnd {
    vc: u64,
    /// Bytes this end may still forward.
    credit: u64,
    /// Bytes delivered to the endpoint, not yet credited back.
    owed: u32,
    /// The VC's first bytes (from its `Open`), for a stream still being
    /// connected; once delivered they are not credited back (they needed
    /// no credit).
    first: Vec<u8>,
    free: u32,
}

#[derive(Debug)]
struct LinkState {
    peer: NodeId,
    next_vc: u32,
    last_heard: Duration,
    /// When we last sent on it (as of the last timeout).
    last_sent: Duration,
    /// Something was sent since then.
    sent: bool,
    initiated_by_me: bool,
    /// An attached endpoint's session, not a relay link.
    endpoint: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RelayCore {
    cfg: RelayConfig,
    routing: Box<dyn Routing>,
    db: LinkStateDb,
    routes: HashMap<NodeId, Route>,
    seq: u64,
    next_refresh: Duration,
    links: HashMap<LinkId, LinkState>,
    link_to: HashMap<NodeId, LinkId>,
    /// Attached endpoints' sessions, by node.
    attached: HashMap<NodeId, LinkId>,
    out: HashMap<LinkId, LinkQueue>,
    dirty: Vec<LinkId>,
    vcs: HashMap<u64, Vc>,
    next_vc: u64,
    by_end: HashMap<End, u64>,
    locals: HashMap<LocalId, LocalEnd>,
    next_local: LocalId,
    actions: VecDeque<Action>,
    my_site: Option<SiteId>,
    relay_site: HashMap<NodeId, SiteId>,
    endpoints: HashMap<NodeId, (SiteId, HashSet<u16>, String)>,
    counters: Counters,
    routes_changed: Option<Duration>,
    /// Shutting down: new VCs are refused with this reason.
    draining: Option<String>,
    /// Routes are stale since this time (see [`RelayConfig::spf_delay`]).
    routes_dirty: Option<Duration>,
    /// When we last advertised our links.
    last_originated: Duration,
    /// An advertisement waits for this time (see
    /// [`RelayConfig::min_originate`]).
    originate_at: Option<Duration>,
    /// How long after an advertisement the next may go (from
    /// `min_originate` up to `max_originate`).
    hold: Duration,
    /// The cluster CA and the newest revocation list, in a cluster with
    /// node certificates.
    trust: Option<Trust>,
}

impl RelayCore {
    /// A relay with no links yet, routing with `routing`.
    pub fn new(cfg: RelayConfig, routing: Box<dyn Routing>, now: Duration) -> Self {
        let hold = cfg.min_originate;
        let mut core = Self {
            db: LinkStateDb::new(cfg.max_age),
            seq: cfg.seq_start,
            next_refresh: now + cfg.refresh,
            cfg,
            routing,
            routes: HashMap::new(),
            links: HashMap::new(),
            link_to: HashMap::new(),
            attached: HashMap::new(),
            out: HashMap::new(),
            dirty: Vec::new(),
            vcs: HashMap::new(),
            next_vc: 1,
            by_end: HashMap::new(),
            locals: HashMap::new(),
            next_local: 1,
            actions: VecDeque::new(),
            my_site: None,
            relay_site: HashMap::new(),
            endpoints: HashMap::new(),
            counters: Counters::default(),
            routes_changed: None,
            draining: None,
            routes_dirty: None,
            last_originated: now,
            originate_at: None,
            hold,
            trust: None,
        };
        core.originate(now);
        core.hold = core.cfg.min_originate;
        core
    }

    /// Starts draining: every new VC through this relay (from its LAN, or
    /// arriving on a link) is refused with `reason`; the VCs already open
    /// keep running until they end. [`RelayCore::vc_count`] says when none
    /// is left. The relay advertises no links from now on, so the others
    /// route new VCs around it while its links still carry the old ones.
    pub fn set_draining(&mut self, now: Duration, reason: impl Into<String>) {
        self.draining = Some(reason.into());
        self.originate(now);
    }

    /// Whether [`RelayCore::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// This relay's id.
    pub fn me(&self) -> NodeId {
        self.cfg.me
    }

    // ---- directory ---------------------------------------------------------

    /// The bootstrap server's directory (replaces the previous one).
    pub fn set_directory(&mut self, entries: &[Entry]) {
        self.relay_site.clear();
        self.endpoints.clear();
        for e in entries {
            match e.role {
                Role::Relay => {
                    self.relay_site.insert(e.node, e.site);
                    if e.node == self.cfg.me {
                        self.my_site = Some(e.site);
                    }
                }
                Role::Endpoint => {
                    self.endpoints.insert(e.node, (e.site, e.ports.iter().copied().collect(), e.name.clone()));
                }
                Role::Boot => {}
            }
        }
    }

    // ---- links -------------------------------------------------------------

    /// An authenticated link to relay `peer` is up. If one already exists,
    /// the one opened by the smaller node id is kept (both sides agree
    /// without talking) and the other closed.
    pub fn handle_link_up(&mut self, now: Duration, link: LinkId, peer: NodeId, initiated_by_me: bool) {
        if let Some(&old) = self.link_to.get(&peer) {
            let opener_of = |mine: bool| if mine { self.cfg.me } else { peer };
            let keep_new = opener_of(initiated_by_me) < opener_of(self.links[&old].initiated_by_me)
                || (opener_of(initiated_by_me) == opener_of(self.links[&old].initiated_by_me) && link > old);
            if !keep_new {
                self.actions.push_back(Action::CloseLink { link });
                return;
            }
            self.actions.push_back(Action::CloseLink { link: old });
            self.counters.links_replaced += 1;
            self.drop_link(now, old, "replaced by a newer link");
        }
        let next_vc = if self.cfg.me < peer { 2 } else { 1 };
        self.links.insert(
            link,
            LinkState { peer, next_vc, last_heard: now, last_sent: now, sent: false, initiated_by_me, endpoint: false },
        );
        self.link_to.insert(peer, link);
        // Full sync: everything we know, then our new advertisement.
        let all: Vec<Vec<u8>> = self
            .db
            .iter()
            .filter(|l| l.origin != self.cfg.me)
            .map(|l| Msg::Lsa { origin: l.origin, seq: l.seq, neighbors: l.neighbors.clone() }.to_frame())
            .collect();
        for f in all {
            self.send_raw(link, &f);
        }
        if let Some(list) = self.trust.as_ref().and_then(Trust::revocations).map(Revocations::to_bytes) {
            self.send_msg(link, &Msg::Revocations { list: &list });
        }
        self.links_changed(now);
    }

    /// Endpoint `node` of our LAN, authenticated by the shell as that node,
    /// attached: `link` (a name the shell picks, distinct from its relay
    /// links') is its session. A session `node` had before is closed.
    pub fn handle_session_up(&mut self, now: Duration, link: LinkId, node: NodeId) {
        if let Some(old) = self.attached.insert(node, link)
            && old != link
        {
            self.actions.push_back(Action::CloseLink { link: old });
            self.drop_link(now, old, "replaced by a newer session of the endpoint");
            self.attached.insert(node, link);
        }
        let st = LinkState {
            peer: node,
            next_vc: 1,
            last_heard: now,
            last_sent: now,
            sent: false,
            initiated_by_me: false,
            endpoint: true,
        };
        self.links.insert(link, st);
    }

    /// Endpoints attached now.
    pub fn session_count(&self) -> usize {
        self.attached.len()
    }

    /// Relay links (not sessions), but `except`.
    fn relay_links(&self, except: Option<LinkId>) -> Vec<LinkId> {
        self.links.iter().filter(|(l, s)| !s.endpoint && Some(**l) != except).map(|(l, _)| *l).collect()
    }

    /// Checks certificates against `trust` (its CA, its list): lists that
    /// CA signed are taken and flooded from now on.
    pub fn set_trust(&mut self, trust: Trust) {
        self.trust = Some(trust);
    }

    /// What this relay trusts, with the newest list taken.
    pub fn trust(&self) -> Option<&Trust> {
        self.trust.as_ref()
    }

    /// A revocation list from outside the links (a bootstrap server, the
    /// file): taken and flooded to every link if it is newer (true).
    pub fn handle_revocations(&mut self, list: &[u8]) -> Result<bool, CertError> {
        self.take_revocations(None, list)
    }

    /// Takes `bytes` if they are a newer list of our CA, and floods it on
    /// every link but `from`.
    fn take_revocations(&mut self, from: Option<LinkId>, bytes: &[u8]) -> Result<bool, CertError> {
        let Some(trust) = &mut self.trust else { return Ok(false) };
        let list = Revocations::parse(bytes)?;
        if !trust.adopt(list.clone())? {
            return Ok(false);
        }
        for l in self.relay_links(from) {
            self.send_msg(l, &Msg::Revocations { list: bytes });
        }
        self.actions.push_back(Action::Revoked { list });
        Ok(true)
    }

    /// The link is gone (closed, reset, or the shell gave up on it).
    pub fn handle_link_down(&mut self, now: Duration, link: LinkId) {
        if self.links.get(&link).is_some_and(|s| !s.endpoint) {
            self.counters.links_down += 1;
        }
        self.drop_link(now, link, "the relay link carrying it went down");
    }

    fn drop_link(&mut self, now: Duration, link: LinkId, why: &str) {
        let Some(st) = self.links.remove(&link) else { return };
        if st.endpoint {
            self.counters.sessions_ended += 1;
            if self.attached.get(&st.peer) == Some(&link) {
                self.attached.remove(&st.peer);
            }
            self.out.remove(&link);
            let reason = format!("{PATH_LOST}{why} (endpoint {} at relay {})", st.peer, self.cfg.me);
            for (end, vc) in self.ends_on(link) {
                // An endpoint that closed its half and exited ended well:
                // what it sent is on its way; the far end reads it all.
                let finished = self.vcs.get(&vc).is_some_and(|v| v.open && v.closed[usize::from(v.ends[1] == end)]);
                if finished {
                    self.by_end.remove(&end);
                    self.by_end.insert(End::Departed(vc), vc);
                    let v = self.vcs.get_mut(&vc).expect("listed");
                    let i = usize::from(v.ends[1] == end);
                    v.ends[i] = End::Departed(vc);
                } else {
                    self.abort_vc(vc, Some(end), &reason);
                }
            }
            return;
        }
        if self.link_to.get(&st.peer) == Some(&link) {
            self.link_to.remove(&st.peer);
            // Another link to the same relay (a duplicate not yet closed)
            // takes over.
            if let Some((&other, _)) = self.links.iter().find(|(_, s)| s.peer == st.peer) {
                self.link_to.insert(st.peer, other);
            }
        }
        self.out.remove(&link);
        let reason = format!("{PATH_LOST}{why} (relay {} to relay {})", self.cfg.me, st.peer);
        for (end, vc) in self.ends_on(link) {
            self.abort_vc(vc, Some(end), &reason);
        }
        self.links_changed(now);
        // Our own routes follow a lost link at once: its VCs have just
        // failed and their ends reconnect now, so neither the hold on our
        // next advertisement (the link-state database still listed the
        // link until it went out, up to `min_originate` later) nor the wait
        // for a burst of others' (`spf_delay`) may route them into it.
        if self.originate_at.is_some() {
            self.seq += 1;
            self.db.install(self.own_lsa(self.seq), now);
        }
        self.routes_stale(now);
        self.flush_routes(now);
    }

    fn queued_for(&self, link: LinkId, vc: u32) -> usize {
        self.out.get(&link).map_or(0, |q| q.vc_len(vc))
    }

    /// The VC ends on `link`.
    fn ends_on(&self, link: LinkId) -> Vec<(End, u64)> {
        self.by_end.iter().filter(|(e, _)| matches!(e, End::Link(l, _) if *l == link)).map(|(e, v)| (*e, *v)).collect()
    }

    /// One frame (type + body) from `link` (a relay link or a session). An
    /// error means the peer broke the protocol: close it.
    pub fn handle_link_frame(&mut self, now: Duration, link: LinkId, frame: &[u8]) -> Result<(), ParseError> {
        let msg = Msg::parse(frame)?;
        let Some(st) = self.links.get_mut(&link) else { return Ok(()) };
        st.last_heard = now;
        if st.endpoint {
            let node = st.peer;
            return match msg {
                // An endpoint opens as itself, never on another's behalf.
                Msg::Open { src, .. } if src != node => Err(ParseError::BadValue("open from another node's id")),
                Msg::Open { vc, .. } if vc % 2 == 1 => Err(ParseError::BadValue("odd vc id from an endpoint")),
                Msg::Lsa { .. } | Msg::Revocations { .. } => Err(ParseError::BadValue("message type on a session")),
                msg => self.handle_vc_msg(now, link, msg),
            };
        }
        match msg {
            Msg::Lsa { origin, seq, neighbors } => {
                self.counters.lsas_in += 1;
                if origin == self.cfg.me {
                    // An old advertisement of ours from before a restart:
                    // jump past it so ours wins everywhere. Our current
                    // one coming back (a new link's full sync) is no news:
                    // answering it with a fresh one flooded every relay
                    // once per link made.
                    if seq > self.seq {
                        self.seq = seq;
                        self.links_changed(now);
                    }
                    return Ok(());
                }
                // A refresh with the same links changes no route: flood it,
                // skip the computation (most advertisements are refreshes).
                let same_links = self.db.get(origin).is_some_and(|old| old.neighbors == neighbors);
                if self.db.install(Lsa { origin, seq, neighbors }, now) == Install::Updated {
                    for l in self.relay_links(Some(link)) {
                        self.send_raw(l, frame_with_len(frame).as_slice());
                    }
                    if !same_links {
                        self.routes_stale(now);
                    }
                }
            }
            Msg::Revocations { list } => {
                // A list that is not our CA's, or older, is not flooded on.
                match self.take_revocations(Some(link), list) {
                    Ok(_) | Err(CertError::Stale(_)) => {}
                    Err(_) => self.counters.revocations_refused += 1,
                }
            }
            msg => return self.handle_vc_msg(now, link, msg),
        }
        Ok(())
    }

    /// A VC message (or a keepalive) from a relay link or a session.
    fn handle_vc_msg(&mut self, now: Duration, link: LinkId, msg: Msg<'_>) -> Result<(), ParseError> {
        match msg {
            Msg::Open { vc, src, dst, port, ttl, credit, data } => {
                let end = End::Link(link, vc);
                if self.by_end.contains_key(&end) {
                    return Err(ParseError::BadValue("open of a vc id in use"));
                }
                self.open(now, end, (src, dst, port), ttl, credit, data);
            }
            Msg::Accept { vc, credit } => self.on_accept(End::Link(link, vc), credit),
            Msg::Refuse { vc, reason } | Msg::Abort { vc, reason } => {
                if let Some(id) = self.by_end.get(&End::Link(link, vc)).copied() {
                    self.abort_vc(id, Some(End::Link(link, vc)), reason);
                }
            }
            Msg::Data { vc, bytes } => self.on_data(End::Link(link, vc), bytes),
            Msg::Credit { vc, bytes } => self.on_credit(End::Link(link, vc), bytes),
            Msg::Close { vc } => self.on_close(End::Link(link, vc)),
            Msg::Keepalive => {}
            // Handshake and directory messages do not belong on a link.
            _ => return Err(ParseError::BadValue("message type on a relay link")),
        }
        Ok(())
    }

    // ---- local ends ----------------------------------------------------------

    /// An endpoint of this LAN asks for a VC from `src` (itself) to
    /// `dst`:`port`. Returns its local end; the answer comes as
    /// [`Action::Opened`] or [`Action::Failed`].
    pub fn handle_local_open(&mut self, now: Duration, src: NodeId, dst: NodeId, port: u16) -> LocalId {
        let local = self.new_local();
        let window = self.cfg.window;
        self.open(now, End::Local(local), (src, dst, port), MAX_HOPS, window, &[]);
        local
    }

    /// The stream for [`Action::Connect`] is open and the endpoint accepted.
    pub fn handle_local_connected(&mut self, local: LocalId) {
        let window = self.cfg.window;
        if let Some(l) = self.locals.get_mut(&local)
            && !l.first.is_empty()
        {
            let bytes = std::mem::take(&mut l.first);
            self.actions.push_back(Action::Write { local, bytes });
        }
        self.on_accept(End::Local(local), window);
    }

    /// The stream for [`Action::Connect`] could not be opened, or a local
    /// end's stream broke: the VC is aborted with `reason`.
    pub fn handle_local_failed(&mut self, local: LocalId, reason: &str) {
        if let Some(vc) = self.locals.get(&local).map(|l| l.vc) {
            self.abort_vc(vc, Some(End::Local(local)), reason);
        }
    }

    /// How many bytes the shell may read from `local`'s endpoint and pass
    /// to [`RelayCore::handle_local_data`] now.
    pub fn local_credit(&self, local: LocalId) -> usize {
        match self.locals.get(&local) {
            Some(l) if self.vcs.get(&l.vc).is_some_and(|v| v.open) => l.credit.min(usize::MAX as u64) as usize,
            _ => 0,
        }
    }

    /// Bytes the endpoint sent (at most [`RelayCore::local_credit`]).
    pub fn handle_local_data(&mut self, local: LocalId, bytes: &[u8]) {
        let Some(l) = self.locals.get_mut(&local) else { return };
        debug_assert!(bytes.len() as u64 <= l.credit, "the shell sent past the credit");
        l.credit = l.credit.saturating_sub(bytes.len() as u64);
        let vc = l.vc;
        self.forward_data(vc, End::Local(local), bytes);
    }

    /// The shell handed `n` more bytes to `local`'s endpoint stream.
    pub fn handle_local_delivered(&mut self, local: LocalId, n: usize) {
        let window = self.cfg.window;
        let Some(l) = self.locals.get_mut(&local) else { return };
        // The first bytes came without credit: none goes back for them.
        let free = l.free.min(n as u32);
        l.free -= free;
        l.owed = l.owed.saturating_add(n as u32 - free);
        // Credit back in quarters of the window: few messages, and the
        // sender never waits while three quarters are still open.
        if l.owed >= window / 4 {
            let bytes = std::mem::take(&mut l.owed);
            self.on_credit(End::Local(local), bytes);
        }
    }

    /// The endpoint half-closed its stream.
    pub fn handle_local_eof(&mut self, local: LocalId) {
        self.on_close(End::Local(local));
    }

    // ---- time ----------------------------------------------------------------

    /// Refreshes our advertisement, ages the database, closes silent links.
    pub fn handle_timeout(&mut self, now: Duration) {
        if now >= self.next_refresh || self.originate_at.is_some_and(|t| now >= t) {
            self.originate(now);
        }
        if !self.db.expire(now).is_empty() {
            self.routes_stale(now);
        }
        if let Some(since) = self.routes_dirty
            && now >= since + self.cfg.spf_delay
        {
            self.recompute(now);
        }
        self.keep_links_alive(now);
        let timeout = self.cfg.link_timeout;
        let silent: Vec<LinkId> =
            self.links.iter().filter(|(_, s)| now.saturating_sub(s.last_heard) > timeout).map(|(l, _)| *l).collect();
        for link in silent {
            self.actions.push_back(Action::CloseLink { link });
            if self.links.get(&link).is_some_and(|s| !s.endpoint) {
                self.counters.links_silent += 1;
            }
            self.drop_link(now, link, "the relay link went silent");
        }
    }

    /// When [`RelayCore::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Duration {
        let mut t = self.next_refresh;
        if let Some(e) = self.db.next_expiry() {
            t = t.min(e + Duration::from_millis(1));
        }
        for s in self.links.values() {
            t = t.min(s.last_heard + self.cfg.link_timeout + Duration::from_millis(1));
            t = t.min(s.last_sent + self.cfg.keepalive);
        }
        if let Some(since) = self.routes_dirty {
            t = t.min(since + self.cfg.spf_delay);
        }
        if let Some(at) = self.originate_at {
            t = t.min(at);
        }
        t
    }

    // ---- output --------------------------------------------------------------

    /// Bytes to write on a link (whole frames), until `None`: everything
    /// queued, each link's VCs interleaved. A shell that writes as the
    /// links take it asks [`RelayCore::poll_transmit_link`] instead.
    pub fn poll_transmit(&mut self) -> Option<(LinkId, Vec<u8>)> {
        while let Some(link) = self.dirty.pop() {
            if let Some(q) = self.out.get_mut(&link)
                && !q.is_empty()
            {
                return Some((link, q.pop(usize::MAX)));
            }
        }
        None
    }

    /// About `budget` bytes (whole frames) to write on `link` now, its VCs
    /// taking turns a frame at a time ([`crate::linkq`]); `None` when
    /// nothing waits. Asked only while the link has room, the rest waits
    /// here in turn instead of in the socket's buffer in arrival order.
    pub fn poll_transmit_link(&mut self, link: LinkId, budget: usize) -> Option<Vec<u8>> {
        let q = self.out.get_mut(&link).filter(|q| !q.is_empty())?;
        let bytes = q.pop(budget);
        if q.is_empty() {
            self.dirty.retain(|l| *l != link);
        }
        Some(bytes)
    }

    /// Bytes queued for `link`.
    pub fn queued(&self, link: LinkId) -> usize {
        self.out.get(&link).map_or(0, LinkQueue::len)
    }

    /// The next thing to do with an endpoint stream or link, until `None`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- status --------------------------------------------------------------

    /// Relays with a live link, and the link.
    pub fn links(&self) -> Vec<(NodeId, LinkId)> {
        let mut v: Vec<_> = self.link_to.iter().map(|(n, l)| (*n, *l)).collect();
        v.sort();
        v
    }

    /// The routing table.
    pub fn routes(&self) -> Vec<(NodeId, Route)> {
        let mut v: Vec<_> = self.routes.iter().map(|(n, r)| (*n, *r)).collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    /// Live VCs through this relay.
    pub fn vc_count(&self) -> usize {
        self.vcs.len()
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Relays in the link-state database (including this one).
    pub fn known_relays(&self) -> usize {
        self.db.len()
    }

    // ---- internals -----------------------------------------------------------

    fn new_local(&mut self) -> LocalId {
        let l = self.next_local;
        self.next_local += 1;
        l
    }

    /// Our links changed: advertise them now, or at the end of the
    /// interval after the last advertisement.
    fn links_changed(&mut self, now: Duration) {
        let next = self.last_originated + self.hold;
        if now >= next {
            self.originate(now);
        } else {
            self.originate_at.get_or_insert(next);
        }
    }

    fn originate(&mut self, now: Duration) {
        self.counters.lsas_originated += 1;
        let since = now.saturating_sub(self.last_originated);
        self.hold = if since <= self.hold * 2 {
            (self.hold * 2).min(self.cfg.max_originate.max(self.cfg.min_originate))
        } else {
            self.cfg.min_originate
        };
        self.last_originated = now;
        self.originate_at = None;
        self.seq += 1;
        let lsa = self.own_lsa(self.seq);
        let same_links = self.db.get(self.cfg.me).is_some_and(|old| old.neighbors == lsa.neighbors);
        let frame = Msg::Lsa { origin: lsa.origin, seq: lsa.seq, neighbors: lsa.neighbors.clone() }.to_frame();
        self.db.install(lsa, now);
        for l in self.relay_links(None) {
            self.send_raw(l, &frame);
        }
        self.next_refresh = now + self.cfg.refresh;
        if !same_links {
            self.routes_stale(now);
        }
    }

    /// Our advertisement as of now, numbered `seq`.
    fn own_lsa(&self, seq: u64) -> Lsa {
        // A draining relay offers no path through it.
        let mut neighbors: Vec<(NodeId, u32)> =
            if self.draining.is_some() { Vec::new() } else { self.link_to.keys().map(|n| (*n, 1)).collect() };
        neighbors.sort();
        Lsa { origin: self.cfg.me, seq, neighbors }
    }

    /// The link-state database changed: routes are recomputed after the
    /// burst (see [`RelayConfig::spf_delay`]).
    fn routes_stale(&mut self, now: Duration) {
        self.routes_dirty.get_or_insert(now);
    }

    /// Computes routes now if they are stale (a VC about to open).
    fn flush_routes(&mut self, now: Duration) {
        if self.routes_dirty.is_some() {
            self.recompute(now);
        }
    }

    /// Fires the waiting timers of a burst now: a held-back advertisement,
    /// then the route computation (a harness at a quiet point, where its
    /// virtual time need not pass).
    pub fn flush(&mut self, now: Duration) {
        if self.originate_at.is_some() {
            self.originate(now);
        }
        self.flush_routes(now);
    }

    /// A keepalive on every link nothing was sent on for a keepalive
    /// interval.
    fn keep_links_alive(&mut self, now: Duration) {
        let every = self.cfg.keepalive;
        let quiet: Vec<LinkId> = self
            .links
            .iter_mut()
            .filter_map(|(l, s)| {
                if std::mem::take(&mut s.sent) {
                    s.last_sent = now;
                }
                (now.saturating_sub(s.last_sent) >= every).then_some(*l)
            })
            .collect();
        for l in quiet {
            self.send_msg(l, &Msg::Keepalive);
            if let Some(s) = self.links.get_mut(&l) {
                s.last_sent = now;
                s.sent = false;
            }
        }
    }

    fn recompute(&mut self, now: Duration) {
        self.routes_dirty = None;
        let routes = self.routing.compute(self.cfg.me, &self.db);
        self.counters.route_runs += 1;
        if routes != self.routes {
            self.routes = routes;
            self.routes_changed = Some(now);
        }
    }

    /// When the routing table last changed (not merely recomputed).
    pub fn routes_changed_at(&self) -> Option<Duration> {
        self.routes_changed
    }

    fn send_raw(&mut self, link: LinkId, frame: &[u8]) {
        let Some(st) = self.links.get_mut(&link) else { return };
        st.sent = true;
        let q = self.out.entry(link).or_default();
        if q.is_empty() {
            self.dirty.push(link);
        }
        q.push_control(frame);
    }

    fn send_msg(&mut self, link: LinkId, msg: &Msg<'_>) {
        let Some(st) = self.links.get_mut(&link) else { return };
        st.sent = true;
        let q = self.out.entry(link).or_default();
        if q.is_empty() {
            self.dirty.push(link);
        }
        match msg.vc() {
            Some(vc) => q.push_vc(vc, msg.to_frame()),
            None => q.push_control(&msg.to_frame()),
        }
    }

    /// The relay to hand a VC for `dst` to: the nearest reachable relay of
    /// its site (`None` with the reason when there is none).
    fn target_relay(&self, src: NodeId, dst: NodeId) -> Result<NodeId, String> {
        let Some((site, _, name)) = self.endpoints.get(&dst) else {
            return Err(format!("node {dst} is not registered with the bootstrap server (not started, or it left)"));
        };
        let mut best: Option<(u64, u64, NodeId)> = None;
        let mut any = false;
        for (&relay, s) in &self.relay_site {
            if s != site || relay == self.cfg.me {
                continue;
            }
            any = true;
            if let Some(r) = self.routes.get(&relay) {
                // Equal-cost relays of one site share the load by pair.
                let spread = (src.0 ^ dst.0 ^ relay.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let cand = (r.cost, spread, relay);
                if best.is_none_or(|b| cand < b) {
                    best = Some(cand);
                }
            }
        }
        match best {
            Some((_, _, relay)) => Ok(relay),
            None if any => Err(format!("no route to the relays of {name} ({dst}): they are unreachable from here")),
            None => Err(format!("{name} ({dst}) has no relay in its LAN (start `xsock relay` there)")),
        }
    }

    /// A VC `(src, dst, port)` opened by end `from`, with its first bytes.
    fn open(
        &mut self,
        now: Duration,
        from: End,
        (src, dst, port): (NodeId, NodeId, u16),
        ttl: u8,
        credit: u32,
        data: &[u8],
    ) {
        // A VC takes the routes as they are now, not as of the last burst.
        self.flush_routes(now);
        let id = self.next_vc;
        self.next_vc += 1;
        let refuse = |core: &mut Self, reason: String| {
            core.counters.vcs_refused += 1;
            match from {
                End::Link(link, vc) => core.send_msg(link, &Msg::Refuse { vc, reason: &reason }),
                End::Local(local) => core.actions.push_back(Action::Failed { local, reason }),
                End::Departed(_) => {}
            }
        };
        if let End::Local(l) = from {
            self.locals.insert(l, LocalEnd { vc: id, credit: 0, owed: 0, first: Vec::new(), free: 0 });
        }
        if let Some(reason) = self.draining.clone() {
            self.locals.retain(|_, l| l.vc != id);
            return refuse(self, reason);
        }
        let local_dst = self.endpoints.get(&dst).is_some_and(|(s, _, _)| Some(*s) == self.my_site);
        let to = if let Some(&session) = self.attached.get(&dst) {
            // An attached endpoint knows its own ports (the directory's copy
            // can lag a listen by a push): it accepts or refuses itself.
            let st = self.links.get_mut(&session).expect("attached and links agree");
            let vc = st.next_vc;
            st.next_vc = st.next_vc.wrapping_add(2);
            self.send_msg(session, &Msg::Open { vc, src, dst, port, ttl: 0, credit, data });
            End::Link(session, vc)
        } else if local_dst {
            let (_, ports, name) = &self.endpoints[&dst];
            if !ports.contains(&port) {
                let reason = format!("{name} ({dst}) does not listen on port {port}");
                self.locals.retain(|_, l| l.vc != id);
                return refuse(self, reason);
            }
            {
                let local = self.new_local();
                let first = data.to_vec();
                let free = data.len() as u32;
                self.locals.insert(local, LocalEnd { vc: id, credit: u64::from(credit), owed: 0, first, free });
                self.actions.push_back(Action::Connect { local, src, dst, port });
                End::Local(local)
            }
        } else {
            if ttl == 0 {
                self.locals.retain(|_, l| l.vc != id);
                return refuse(self, format!("no loop-free route to {dst} (hop limit reached; routes are converging)"));
            }
            let relay = match self.target_relay(src, dst) {
                Ok(r) => r,
                Err(reason) => {
                    self.locals.retain(|_, l| l.vc != id);
                    return refuse(self, reason);
                }
            };
            let hop = self.routes[&relay].next_hop;
            let Some(&link) = self.link_to.get(&hop) else {
                self.locals.retain(|_, l| l.vc != id);
                return refuse(self, format!("the link to relay {hop} is down"));
            };
            let st = self.links.get_mut(&link).expect("link_to and links agree");
            let vc = st.next_vc;
            st.next_vc = st.next_vc.wrapping_add(2);
            self.send_msg(link, &Msg::Open { vc, src, dst, port, ttl: ttl - 1, credit, data });
            End::Link(link, vc)
        };
        self.counters.bytes_forwarded += data.len() as u64;
        self.by_end.insert(from, id);
        self.by_end.insert(to, id);
        self.vcs.insert(id, Vc { ends: [from, to], closed: [false; 2], open: false });
    }

    fn other(&self, vc: u64, end: End) -> Option<(usize, End)> {
        let v = self.vcs.get(&vc)?;
        if v.ends[0] == end { Some((1, v.ends[1])) } else { Some((0, v.ends[0])) }
    }

    fn on_accept(&mut self, from: End, credit: u32) {
        let Some(&vc) = self.by_end.get(&from) else { return };
        if let Some(v) = self.vcs.get_mut(&vc) {
            v.open = true;
        }
        self.counters.vcs_opened += 1;
        match self.other(vc, from) {
            Some((_, End::Link(link, id))) => self.send_msg(link, &Msg::Accept { vc: id, credit }),
            Some((_, End::Local(local))) => {
                if let Some(l) = self.locals.get_mut(&local) {
                    l.credit += u64::from(credit);
                }
                self.actions.push_back(Action::Opened { local });
            }
            Some((_, End::Departed(_))) | None => {}
        }
    }

    fn forward_data(&mut self, vc: u64, from: End, bytes: &[u8]) {
        self.counters.bytes_forwarded += bytes.len() as u64;
        match self.other(vc, from) {
            Some((_, End::Link(link, id))) => {
                for chunk in bytes.chunks(MAX_DATA) {
                    self.send_msg(link, &Msg::Data { vc: id, bytes: chunk });
                }
                // Credit bounds what a VC has queued anywhere; a sender
                // that ignores it is cut off before it fills our memory.
                if self.queued_for(link, id) > MAX_VC_QUEUE {
                    self.abort_vc(vc, None, "the sender ignored its credit (a broken peer): reset");
                }
            }
            Some((_, End::Local(local))) => self.actions.push_back(Action::Write { local, bytes: bytes.to_vec() }),
            Some((_, End::Departed(_))) => {
                self.abort_vc(vc, None, "the far end finished and left; it reads nothing more")
            }
            None => {}
        }
    }

    fn on_data(&mut self, from: End, bytes: &[u8]) {
        if let Some(&vc) = self.by_end.get(&from) {
            self.forward_data(vc, from, bytes);
        }
    }

    fn on_credit(&mut self, from: End, n: u32) {
        let Some(&vc) = self.by_end.get(&from) else { return };
        match self.other(vc, from) {
            Some((_, End::Link(link, id))) => self.send_msg(link, &Msg::Credit { vc: id, bytes: n }),
            Some((_, End::Local(local))) => {
                if let Some(l) = self.locals.get_mut(&local) {
                    l.credit += u64::from(n);
                }
            }
            Some((_, End::Departed(_))) | None => {}
        }
    }

    fn on_close(&mut self, from: End) {
        let Some(&vc) = self.by_end.get(&from) else { return };
        let Some((other_idx, other)) = self.other(vc, from) else { return };
        match other {
            End::Link(link, id) => self.send_msg(link, &Msg::Close { vc: id }),
            End::Local(local) => self.actions.push_back(Action::Shutdown { local }),
            End::Departed(_) => {}
        }
        let v = self.vcs.get_mut(&vc).expect("vc of a known end");
        v.closed[1 - other_idx] = true;
        if v.closed == [true, true] {
            self.counters.vcs_closed += 1;
            self.remove_vc(vc, true);
        }
    }

    /// Ends `vc`: tells the ends other than `from` why (a refusal if it
    /// never opened), forgets it.
    fn abort_vc(&mut self, vc: u64, from: Option<End>, reason: &str) {
        let Some(v) = self.vcs.get(&vc) else { return };
        let (ends, open) = (v.ends, v.open);
        if open {
            self.counters.vcs_aborted += 1;
        } else {
            self.counters.vcs_refused += 1;
        }
        for end in ends {
            if Some(end) == from {
                continue;
            }
            match end {
                End::Link(link, id) if open => self.send_msg(link, &Msg::Abort { vc: id, reason }),
                End::Link(link, id) => self.send_msg(link, &Msg::Refuse { vc: id, reason }),
                End::Local(local) => self.actions.push_back(Action::Failed { local, reason: reason.to_owned() }),
                End::Departed(_) => {}
            }
        }
        self.remove_vc(vc, false);
    }

    fn remove_vc(&mut self, vc: u64, graceful: bool) {
        let Some(v) = self.vcs.remove(&vc) else { return };
        for end in v.ends {
            self.by_end.remove(&end);
            if let End::Local(l) = end
                && self.locals.remove(&l).is_some()
                && graceful
            {
                self.actions.push_back(Action::Finished { local: l });
            }
        }
    }
}

fn frame_with_len(frame: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(frame.len() + 4);
    v.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    v.extend_from_slice(frame);
    v
}
