//! An application's node on the overlay: registration, name resolution,
//! listening, and connecting directly or through a relay.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddrV4,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use xsock_overlay::{
    NodeId, SiteId,
    auth::{Handshake, Key},
    preamble::{Done, Preamble, PreambleError},
    wire::{Entry, Msg, Role},
};

use super::{
    boots::{Boots, Registration},
    io::{fresh_nonce, run_preamble, send_msg},
    session::Session,
};
use crate::{Error, Listener, Runtime, Stream};

/// How to join the overlay.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// The bootstrap servers (one or more: the node registers with each,
    /// asks the first that answers).
    pub boots: Vec<SocketAddrV4>,
    /// This node's unique name.
    pub name: String,
    /// The cluster key.
    pub key: Key,
    /// A launcher rank others may resolve (defaults to the runtime's).
    pub rank: Option<u32>,
    /// Bound on each handshake and on each request to the server.
    pub timeout: Duration,
    /// Who the node is at the encrypted handshakes: by default this
    /// process's key without a certificate; in a cluster with node
    /// certificates, [`super::load_identity`] of its credentials file.
    pub identity: super::Identity,
    /// The virtual address to ask for (by default the bootstrap server
    /// leases one to the name).
    pub vaddr: Option<std::net::Ipv4Addr>,
    /// Relays of our LAN to attach to: the first carries our opens, the
    /// rest stand by and deliver to us (default 2; `usize::MAX`: every
    /// one, as a host engine does, whose listeners take no relay's LAN
    /// stream).
    pub sessions: usize,
}

impl OverlayConfig {
    /// `name` joining through `boot` with `key`.
    pub fn new(boot: SocketAddrV4, name: impl Into<String>, key: Key) -> Self {
        Self::with_boots(vec![boot], name, key)
    }

    /// `name` joining through every server of `boots` with `key`.
    pub fn with_boots(boots: Vec<SocketAddrV4>, name: impl Into<String>, key: Key) -> Self {
        let identity = super::Identity::plain(super::process_key().clone());
        Self {
            boots,
            name: name.into(),
            key,
            rank: None,
            timeout: Duration::from_secs(5),
            identity,
            vaddr: None,
            sessions: STANDBYS + 1,
        }
    }
}

/// Reads a key file; the error names the file and the fix.
pub fn load_key(path: &std::path::Path) -> Result<Key, Error> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::Config(format!("cannot read the key file {}: {e}", path.display())))?;
    Key::from_file_contents(&bytes).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// How long the relays of our LAN, as last heard, are trusted (a relay
/// that fails is dropped sooner: the list is refreshed on failure).
const RELAYS_FRESH: Duration = Duration::from_secs(10);

struct Inner {
    rt: Runtime,
    key: Key,
    name: String,
    id: NodeId,
    site: SiteId,
    vaddr: Option<std::net::Ipv4Addr>,
    vnet: (std::net::Ipv4Addr, u8),
    /// How many relays to attach to.
    max_sessions: usize,
    timeout: Duration,
    boot: Mutex<Boots>,
    cache: Mutex<HashMap<String, Entry>>,
    relays: Mutex<(Vec<Entry>, Option<Instant>)>,
    ports: Mutex<BTreeSet<u16>>,
    /// The sessions with relays of our LAN, once attached: the one we open
    /// through first, and a standby where the LAN has a second relay (a
    /// relay of our LAN delivers to us through its own session). None in a
    /// LAN without relays, or while no relay takes us.
    sessions: Mutex<Vec<Arc<Session>>>,
    /// Our listeners, for the session's VCs (a new session hears them too).
    listeners: Mutex<HashMap<u16, Weak<crate::listener::ListenShared>>>,
    /// When attaching last failed (not tried again for a while).
    attach_failed: Mutex<Option<Instant>>,
}

/// Sessions kept beside the one opened through (where the LAN has more
/// relays), by default.
const STANDBYS: usize = 1;

/// How long after a failed attach connects open a stream each instead.
const ATTACH_RETRY: Duration = Duration::from_secs(5);

/// A node of the overlay. Cheap to clone; it leaves the directory when the
/// last clone (and listener) drops.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.inner.name).field("id", &self.inner.id).finish()
    }
}

impl Node {
    /// Registers with the bootstrap server (kernel TCP) and authenticates.
    /// The runtime must drive this LAN's interface: its address and prefix
    /// tell the server which LAN we are in.
    pub fn join(rt: &Runtime, cfg: OverlayConfig) -> Result<Node, Error> {
        let Some(&(lan_ip, prefix)) = rt.local_subnets().first() else {
            return Err(Error::Overlay(match rt.link_status() {
                crate::LinkStatus::KernelOnly { reason } => {
                    format!("the overlay needs the LAN interface the relays serve, and this runtime has none: {reason}")
                }
                _ => "the runtime's interface has no IPv4 address: give it the LAN address the relays serve".into(),
            }));
        };
        let rank = cfg.rank.or(rt.launch().map(|l| l.rank));
        let reg = Registration {
            node: Registration::fresh_id(),
            role: Role::Endpoint,
            name: cfg.name.clone(),
            lan_ip,
            prefix,
            wan: None,
            serve_port: 0,
            rank,
            vaddr: cfg.vaddr,
        };
        let (boot, placed) = Boots::register_all(&cfg.boots, &cfg.key, &cfg.identity, reg, cfg.timeout)?;
        let (id, site) = (boot.node(), placed.site);
        let up: Vec<String> = boot.servers().iter().filter(|(_, up)| *up).map(|(a, _)| a.to_string()).collect();
        let vaddr = placed.vaddr.map(|a| format!(", virtual address {a}")).unwrap_or_default();
        log::info!("joined the overlay as {} ({id}, {site}{vaddr}) through {}", cfg.name, up.join(", "));
        let node = Node {
            inner: Arc::new(Inner {
                rt: rt.clone(),
                key: cfg.key,
                name: cfg.name,
                id,
                site,
                vaddr: placed.vaddr,
                vnet: placed.vnet,
                max_sessions: cfg.sessions.max(1),
                timeout: cfg.timeout,
                boot: Mutex::new(boot),
                cache: Mutex::new(HashMap::new()),
                relays: Mutex::new((Vec::new(), None)),
                ports: Mutex::new(BTreeSet::new()),
                sessions: Mutex::new(Vec::new()),
                listeners: Mutex::new(HashMap::new()),
                attach_failed: Mutex::new(None),
            }),
        };
        node.keep_registered();
        if node.relays_for(id, false).is_ok_and(|r| !r.is_empty()) {
            node.session();
        }
        Ok(node)
    }

    /// A live session with a relay of our LAN, attaching again if none is
    /// (the relays ended them).
    fn session(&self) -> Option<Arc<Session>> {
        let live =
            self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|s| s.dead().is_none()).cloned();
        if live.is_some() {
            return live;
        }
        let failed = *self.inner.attach_failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_some_and(|t| t.elapsed() < ATTACH_RETRY) {
            return None;
        }
        let r = self.attach();
        if let Err(e) = &r {
            log::debug!("not attached to a relay: {e}");
            *self.inner.attach_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        r.ok()
    }

    /// Attaches to (up to) two relays of our LAN (or as many as the
    /// config says): one stream and one handshake each, then every virtual
    /// connection of this node rides them. Returns the first.
    fn attach(&self) -> Result<Arc<Session>, Error> {
        let n = &self.inner;
        let relays = self.relays_for(n.id, false)?;
        let mut err = None;
        let mut got = Vec::new();
        for relay in relays {
            if got.len() == n.max_sessions {
                break;
            }
            match self.attach_to(&relay) {
                Ok(session) => got.push(session),
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        let first = got.first().cloned();
        if !got.is_empty() {
            // (Dead ones stay until then: the helper thread tries again.)
            *n.sessions.lock().unwrap_or_else(|p| p.into_inner()) = got;
        }
        first.ok_or_else(|| err.unwrap_or_else(|| Error::Overlay("no relay serves our LAN".into())))
    }

    /// One session with `relay`, our listeners told to it.
    fn attach_to(&self, relay: &Entry) -> Result<Arc<Session>, Error> {
        let n = &self.inner;
        let t = Instant::now();
        let attached = Stream::connect(&n.rt, SocketAddrV4::new(relay.lan_ip, relay.serve_port)).and_then(|mut s| {
            let hs = Handshake::new(n.key.clone(), Role::Endpoint, &n.name, fresh_nonce());
            match run_preamble(&mut s, Preamble::attach(hs, n.id), t + n.timeout)? {
                Ok(_) => Ok(s),
                Err(e) => Err(preamble_error(e)),
            }
        });
        let session = match attached.and_then(|s| Session::start(&n.rt, s, n.id, relay.name.clone())) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                log::debug!("attaching to relay {}: {e}", relay.name);
                return Err(e);
            }
        };
        for (port, l) in n.listeners.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(l) = l.upgrade() {
                session.listen(*port, &l)?;
            }
        }
        log::info!("attached to relay {} in {:?}", relay.name, t.elapsed());
        Ok(session)
    }

    /// A node that attaches to every relay of its LAN (a host engine's)
    /// attaches to those it holds no live session with: a relay started
    /// after it attached would otherwise deliver by a LAN stream, which
    /// the engine's listeners do not take.
    fn top_up(&self) {
        let n = &self.inner;
        if n.max_sessions != usize::MAX {
            return;
        }
        let live: Vec<String> = {
            let sessions = n.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.iter().filter(|s| s.dead().is_none()).map(|s| s.relay.clone()).collect()
        };
        if live.is_empty() {
            return; // session() attaches afresh
        }
        // (One request to a bootstrap server each time: a host engine's.)
        let Ok(relays) = self.relays_for(n.id, true) else { return };
        for relay in relays.iter().filter(|r| !live.contains(&r.name)) {
            if let Ok(s) = self.attach_to(relay) {
                let mut sessions = n.sessions.lock().unwrap_or_else(|p| p.into_inner());
                sessions.retain(|s| s.dead().is_none());
                sessions.push(s);
            }
        }
    }

    /// A helper thread that registers again with servers that come back
    /// (and tells them our ports), and attaches again once every relay
    /// session ended (a relay restarted: a node that only listens would
    /// otherwise get a stream per connection from then on), as long as the
    /// node lives.
    fn keep_registered(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let _ = std::thread::Builder::new().name("xsock-boots".into()).spawn(move || {
            for tick in 1u64.. {
                std::thread::sleep(Duration::from_millis(200));
                let Some(inner) = weak.upgrade() else { return };
                if tick % 25 == 0 {
                    Node { inner: inner.clone() }.top_up();
                }
                let ports: Vec<u16> = inner.ports.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
                inner.boot.lock().unwrap_or_else(|p| p.into_inner()).revive(&ports);
                let lost = {
                    let sessions = inner.sessions.lock().unwrap_or_else(|p| p.into_inner());
                    !sessions.is_empty() && sessions.iter().all(|s| s.dead().is_some())
                };
                if lost {
                    // Rate-limited inside: a relay still down is tried again later.
                    Node { inner }.session();
                }
            }
        });
    }

    /// The bootstrap servers, and which of them we have a session with.
    pub fn boot_servers(&self) -> Vec<(SocketAddrV4, bool)> {
        self.inner.boot.lock().unwrap_or_else(|p| p.into_inner()).servers()
    }

    /// Our id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Our LAN.
    pub fn site(&self) -> SiteId {
        self.inner.site
    }

    /// Our virtual address (the bootstrap server's lease to our name).
    pub fn vaddr(&self) -> Option<std::net::Ipv4Addr> {
        self.inner.vaddr
    }

    /// The virtual network our address is in, and its prefix length.
    pub fn vnet(&self) -> (std::net::Ipv4Addr, u8) {
        self.inner.vnet
    }

    /// Whether `ip` is a host address of the virtual network.
    pub fn is_virtual(&self, ip: std::net::Ipv4Addr) -> bool {
        xsock_overlay::registry::in_net(self.inner.vnet, ip)
    }

    /// Our name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.rt
    }

    fn request(&self, msg: &Msg<'_>) -> Result<Vec<u8>, Error> {
        self.inner.boot.lock().unwrap_or_else(|p| p.into_inner()).request(msg)
    }

    fn remember(&self, entry: Entry, my_relays: Vec<Entry>) -> Entry {
        *self.inner.relays.lock().unwrap_or_else(|p| p.into_inner()) = (my_relays, Some(Instant::now()));
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(entry.name.clone(), entry.clone());
        entry
    }

    /// Asks the server who `name` is (and refreshes our LAN's relays).
    pub fn resolve(&self, name: &str) -> Result<Entry, Error> {
        let reply = self.request(&Msg::Resolve { name })?;
        match parse(&reply)? {
            Msg::Resolved { entry, my_relays } => Ok(self.remember(entry, my_relays)),
            Msg::NotFound { .. } => Err(Error::Overlay(format!(
                "no node named {name:?} is registered with the bootstrap server (not started yet, or a typo)"
            ))),
            _ => Err(Error::Protocol("unexpected answer to Resolve".into())),
        }
    }

    /// Asks the server which node has launcher rank `rank`.
    pub fn resolve_rank(&self, rank: u32) -> Result<Entry, Error> {
        let reply = self.request(&Msg::ResolveRank { rank })?;
        match parse(&reply)? {
            Msg::Resolved { entry, my_relays } => Ok(self.remember(entry, my_relays)),
            Msg::NotFound { .. } => Err(Error::Overlay(format!("no node has rank {rank} (not started yet?)"))),
            _ => Err(Error::Protocol("unexpected answer to ResolveRank".into())),
        }
    }

    /// Asks the server which node has virtual address `ip`.
    pub fn resolve_addr(&self, ip: std::net::Ipv4Addr) -> Result<Entry, Error> {
        let reply = self.request(&Msg::ResolveAddr { addr: ip })?;
        match parse(&reply)? {
            Msg::Resolved { entry, my_relays } => Ok(self.remember(entry, my_relays)),
            Msg::NotFound { .. } => Err(Error::Overlay(format!(
                "no node has the virtual address {ip} (not started yet, or a stale hostfile: `xsock hosts` lists \
                 the addresses)"
            ))),
            _ => Err(Error::Protocol("unexpected answer to ResolveAddr".into())),
        }
    }

    /// Who has virtual address `ip`: from the cache, else asked of the
    /// server.
    pub fn lookup_addr(&self, ip: std::net::Ipv4Addr) -> Result<Entry, Error> {
        let cached = {
            let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.values().find(|e| e.vaddr == Some(ip)).cloned()
        };
        match cached {
            Some(e) => Ok(e),
            None => self.resolve_addr(ip),
        }
    }

    /// Whether `ip` is the LAN address of a relay of our LAN, as last
    /// heard (no request).
    pub fn is_lan_relay(&self, ip: std::net::Ipv4Addr) -> bool {
        self.inner.relays.lock().unwrap_or_else(|p| p.into_inner()).0.iter().any(|e| e.lan_ip == ip)
    }

    /// The node with id `node`, if the cache knows it.
    pub fn cached(&self, node: NodeId) -> Option<Entry> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).values().find(|e| e.node == node).cloned()
    }

    /// Every registered node, in one round trip to the server.
    pub fn directory(&self) -> Result<Vec<Entry>, Error> {
        let reply = self.request(&Msg::GetDirectory)?;
        let Msg::Directory { entries } = parse(&reply)? else {
            return Err(Error::Protocol("unexpected answer to GetDirectory".into()));
        };
        Ok(entries)
    }

    /// Fetches the whole directory into the cache in one round trip (before
    /// connecting to many nodes); returns how many nodes it holds.
    pub fn load_directory(&self) -> Result<usize, Error> {
        let entries = self.directory()?;
        let relays: Vec<Entry> =
            entries.iter().filter(|e| e.role == Role::Relay && e.site == self.inner.site).cloned().collect();
        *self.inner.relays.lock().unwrap_or_else(|p| p.into_inner()) = (relays, Some(Instant::now()));
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        let n = entries.len();
        for e in entries {
            cache.insert(e.name.clone(), e);
        }
        Ok(n)
    }

    /// Who `name` is: from the cache, else asked of the server.
    pub fn lookup(&self, name: &str) -> Result<Entry, Error> {
        let cached = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        match cached {
            Some(e) => Ok(e),
            None => self.resolve(name),
        }
    }

    /// Listens on `port` of our LAN address and tells the server, so relays
    /// forward to it (they forward to no port we do not list).
    pub fn listen(&self, port: u16) -> Result<NodeListener, Error> {
        let ip = self.inner.rt.local_subnets()[0].0;
        let inner = Listener::bind(&self.inner.rt, SocketAddrV4::new(ip, port))?;
        let served = self.serve(&inner)?;
        Ok(NodeListener { node: self.clone(), inner, port, _served: served })
    }

    /// Takes the virtual connections to `listener`'s port into it: they
    /// come out of its accepts beside the LAN's plain connections (the
    /// host engine's listeners; no handshake is run on those). Published
    /// to the servers; undone when the guard drops.
    pub fn serve(&self, listener: &Listener) -> Result<Served, Error> {
        let port = listener.local_addr().port();
        self.inner.ports.lock().unwrap_or_else(|p| p.into_inner()).insert(port);
        self.inner.listeners.lock().unwrap_or_else(|p| p.into_inner()).insert(port, Arc::downgrade(listener.shared()));
        let served = Served { node: self.clone(), port };
        for s in self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s.listen(port, listener.shared())?;
        }
        self.publish_ports()?;
        Ok(served)
    }

    fn publish_ports(&self) -> Result<(), Error> {
        let ports: Vec<u16> = self.inner.ports.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        self.inner.boot.lock().unwrap_or_else(|p| p.into_inner()).tell_all(&Msg::Ports { ports })
    }

    /// Connects to `name`:`port`: directly inside our LAN, through a relay
    /// of our LAN otherwise. The stream is the same type either way.
    pub fn connect(&self, name: &str, port: u16) -> Result<Stream, Error> {
        self.open(name, port, &[])
    }

    /// Connects to `name`:`port` and sends `first`: through our relay
    /// session, the virtual connection's `Open` carries the first bytes
    /// (up to 16 KiB), so they arrive with the connection itself.
    pub fn open(&self, name: &str, port: u16, first: &[u8]) -> Result<Stream, Error> {
        let entry = self.lookup(name)?;
        self.connect_entry(&entry, port, first)
    }

    /// Connects to `entry`:`port` (as [`Node::open`] does once it knows
    /// the node).
    pub fn open_entry(&self, entry: &Entry, port: u16, first: &[u8]) -> Result<Stream, Error> {
        self.connect_entry(entry, port, first)
    }

    /// Connects to the node with launcher rank `rank`.
    pub fn connect_rank(&self, rank: u32, port: u16) -> Result<Stream, Error> {
        let entry = self.resolve_rank(rank)?;
        self.connect_entry(&entry, port, &[])
    }

    fn connect_entry(&self, dst: &Entry, port: u16, first: &[u8]) -> Result<Stream, Error> {
        let (head, rest) = first.split_at(first.len().min(xsock_overlay::wire::OPEN_DATA));
        let mut s = self.connect_carrying(dst, port, head)?;
        if !rest.is_empty() {
            s.send(rest)?;
        }
        Ok(s)
    }

    /// Connects, `first` (at most an Open's worth) sent.
    fn connect_carrying(&self, dst: &Entry, port: u16, first: &[u8]) -> Result<Stream, Error> {
        let sent_after = |r: Result<Stream, Error>| {
            r.and_then(|mut s| {
                if !first.is_empty() {
                    s.send(first)?;
                }
                Ok(s)
            })
        };
        if dst.site == self.inner.site {
            let s = Stream::connect(&self.inner.rt, SocketAddrV4::new(dst.lan_ip, port))?;
            return sent_after(self.open_on(s, dst, port));
        }
        if let Some(session) = self.session() {
            let ip = self.inner.rt.local_subnets()[0].0;
            let addrs = (SocketAddrV4::new(ip, 0), SocketAddrV4::new(dst.lan_ip, port));
            let label = format!("{}:{port}", dst.name);
            match session.open((dst.node, port, &label), first, addrs, self.inner.timeout) {
                // A session that died under the open: the old way below.
                Err(e) if session.dead().is_some() => log::debug!("{label} through the session: {e}"),
                r => return r,
            }
        }
        sent_after(self.connect_relayed(dst, port))
    }

    /// A stream to a relay of our LAN for this one VC (no session).
    fn connect_relayed(&self, dst: &Entry, port: u16) -> Result<Stream, Error> {
        let relays = self.relays_for(dst.node, false)?;
        let mut first_error = None;
        for (i, relay) in relays.iter().enumerate() {
            match self.via_relay(relay, dst, port) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    log::debug!("relay {} for {}:{port}: {e}", relay.name, dst.name);
                    first_error.get_or_insert(e);
                    if i == 0 {
                        // The relay list may be stale (a relay left): refresh once.
                        let fresh = self.relays_for(dst.node, true).unwrap_or_default();
                        if fresh.iter().map(|r| r.node).ne(relays.iter().map(|r| r.node)) {
                            return self.try_relays(&fresh, dst, port).map_err(|e| first_error.take().unwrap_or(e));
                        }
                    }
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Overlay("no relay answered".into())))
    }

    fn try_relays(&self, relays: &[Entry], dst: &Entry, port: u16) -> Result<Stream, Error> {
        let mut err =
            Error::Overlay(format!("no relay serves our LAN ({}) (start `xsock relay` here)", self.inner.site));
        for r in relays {
            match self.via_relay(r, dst, port) {
                Ok(s) => return Ok(s),
                Err(e) => err = e,
            }
        }
        Err(err)
    }

    /// The relays of our LAN, in this destination's preferred order (load
    /// shared by destination).
    fn relays_for(&self, dst: NodeId, refresh: bool) -> Result<Vec<Entry>, Error> {
        let stale = {
            let r = self.inner.relays.lock().unwrap_or_else(|p| p.into_inner());
            refresh || r.1.is_none_or(|t| t.elapsed() > RELAYS_FRESH)
        };
        if stale {
            self.resolve(&self.inner.name.clone())?;
        }
        let mut relays = self.inner.relays.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
        if relays.is_empty() {
            return Err(Error::Overlay(format!(
                "no relay serves our LAN ({}): start `xsock relay` here to reach other LANs",
                self.inner.site
            )));
        }
        relays.sort_by_key(|r| (r.node.0 ^ dst.0).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Ok(relays)
    }

    fn via_relay(&self, relay: &Entry, dst: &Entry, port: u16) -> Result<Stream, Error> {
        let t = Instant::now();
        let s = Stream::connect(&self.inner.rt, SocketAddrV4::new(relay.lan_ip, relay.serve_port))?;
        let c = t.elapsed();
        let r = self.open_on(s, dst, port);
        log::debug!("via relay {}: stream {c:?}, handshake and open {:?}", relay.name, t.elapsed() - c);
        r
    }

    /// Handshake, then `Open`, then `Accept` or the refusal's reason.
    fn open_on(&self, mut s: Stream, dst: &Entry, port: u16) -> Result<Stream, Error> {
        let t = Instant::now();
        let n = &self.inner;
        let hs = Handshake::new(n.key.clone(), Role::Endpoint, &n.name, fresh_nonce());
        match run_preamble(&mut s, Preamble::open(hs, n.id, dst.node, port), t + n.timeout)? {
            Ok(_) => {
                log::debug!("opened through {} in {:?}", s.peer_addr(), t.elapsed());
                Ok(s)
            }
            Err(PreambleError::Refused(reason)) => {
                Err(Error::Overlay(format!("{}:{port} refused: {reason}", dst.name)))
            }
            Err(e) => Err(preamble_error(e)),
        }
    }
}

/// A failed preamble as the library's error.
fn preamble_error(e: PreambleError) -> Error {
    match e {
        PreambleError::Auth(_) | PreambleError::Refused(_) => Error::Overlay(e.to_string()),
        PreambleError::Unexpected(_) | PreambleError::Parse(_) => Error::Protocol(e.to_string()),
    }
}

fn parse(frame: &[u8]) -> Result<Msg<'_>, Error> {
    Msg::parse(frame).map_err(|e| Error::Protocol(e.to_string()))
}

/// Accepts overlay connections on one port, direct and relayed alike.
pub struct NodeListener {
    node: Node,
    inner: Listener,
    port: u16,
    _served: Served,
}

/// A port whose virtual connections go to a listener ([`Node::serve`]);
/// dropping it takes the port back.
pub struct Served {
    node: Node,
    port: u16,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("node", &self.node).field("port", &self.port).finish()
    }
}

impl std::fmt::Debug for NodeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeListener").field("node", &self.node).field("port", &self.port).finish()
    }
}

impl NodeListener {
    /// The next authenticated connection and the node that opened it.
    /// Connections that fail the handshake (a wrong key, a stranger) are
    /// refused, logged, and skipped.
    pub fn accept(&self) -> Result<(Stream, NodeId), Error> {
        loop {
            let (s, tag) = self.inner.accept_tagged(None)?.ok_or(Error::Closed)?;
            // A virtual connection our relay session carries: the relay
            // checked who opened it.
            if let Some(src) = tag {
                return Ok((s, NodeId(src)));
            }
            let from = s.peer_addr();
            match self.admit(s) {
                Ok(ok) => return Ok(ok),
                Err(e) => log::warn!("refused an overlay connection from {from} on port {}: {e}", self.port),
            }
        }
    }

    /// Like [`NodeListener::accept`], giving up after `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<(Stream, NodeId)>, Error> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let Some((s, tag)) = self.inner.accept_tagged(Some(left))? else { return Ok(None) };
            if let Some(src) = tag {
                return Ok(Some((s, NodeId(src))));
            }
            let from = s.peer_addr();
            match self.admit(s) {
                Ok(ok) => return Ok(Some(ok)),
                Err(e) => log::warn!("refused an overlay connection from {from} on port {}: {e}", self.port),
            }
        }
    }

    /// A connection if one is waiting ([`Error::WouldBlock`] if not); its
    /// handshake still blocks, bounded by the node's timeout. Connections
    /// that fail it are logged and skipped.
    pub fn try_accept(&self) -> Result<(Stream, NodeId), Error> {
        loop {
            let (s, tag) = self.inner.try_accept_tagged()?;
            if let Some(src) = tag {
                return Ok((s, NodeId(src)));
            }
            let from = s.peer_addr();
            match self.admit(s) {
                Ok(ok) => return Ok(ok),
                Err(e) => log::warn!("refused an overlay connection from {from} on port {}: {e}", self.port),
            }
        }
    }

    fn admit(&self, mut s: Stream) -> Result<(Stream, NodeId), Error> {
        let n = &self.node.inner;
        let hs = Handshake::new(n.key.clone(), Role::Endpoint, &n.name, fresh_nonce());
        match run_preamble(&mut s, Preamble::answer(hs), Instant::now() + n.timeout)? {
            Ok(Done::Asked { src, dst, port, .. }) if dst == n.id && port == self.port => {
                send_msg(&mut s, &Msg::Accept { vc: 0, credit: 0 })?;
                Ok((s, src))
            }
            Ok(Done::Asked { dst, port, .. }) => {
                let reason = format!("this is {} ({}) port {}, not {dst} port {port}", n.name, n.id, self.port);
                let _ = send_msg(&mut s, &Msg::Refuse { vc: 0, reason: &reason });
                Err(Error::Overlay(reason))
            }
            Ok(_) => Err(Error::Protocol("expected Open after the handshake".into())),
            Err(e) => Err(preamble_error(e)),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.node.inner.ports.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.port);
        self.node.inner.listeners.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.port);
        for s in self.node.inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s.unlisten(self.port);
        }
        let _ = self.node.publish_ports();
    }
}
