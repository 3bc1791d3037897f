//! The relay's core loop: owns the [`RelayCore`], every relay link's
//! writing side and every endpoint stream; helpers hand it events over a
//! channel and wake it.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use std::os::fd::AsFd;

use crossbeam_channel::{Receiver, Sender, unbounded};
use xsock::{
    Error, Listener, Runtime, Stream,
    overlay::{Identity, Key, Registration, SecureParts, session_clock},
};
use xsock_overlay::{
    NodeId, SiteId,
    linkq::SendBuf,
    relay::{Action, LinkId, LocalId, RelayConfig, RelayCore},
    route::ShortestPath,
    secure::{Opener, Sealer},
    wire::{Entry, FrameReader, Msg, Role},
};

use super::{Settings, lan, metrics, sessions::Sessions, wan};
use crate::{
    fail::Fail,
    overlay::{Clock, epoch_micros},
};

/// What helpers report to the core loop.
pub enum Event {
    /// A relay link is up: its encrypted session, and who is at the end.
    LinkUp { session: Box<SecureParts>, peer: NodeId, name: String, initiated: bool },
    /// Dialling a relay failed.
    DialFailed { peer: NodeId, why: String },
    /// Bootstrap server `index`'s directory.
    Directory { index: usize, entries: Vec<Entry> },
    /// The bootstrap session ended.
    BootLost { index: usize, why: String },
    /// A bootstrap server pushed the CA's revocation list.
    Revocations { list: Vec<u8> },
    /// The relay cannot go on (its certificate is refused): exit with this.
    Fatal { why: String },
    /// A delivery stream is connected (its handshake is next), or not.
    Dialed { local: LocalId, ip: std::net::Ipv4Addr, port: u16, stream: Result<Stream, Error> },
}

/// The channel to the core loop, waking it on every event.
#[derive(Clone)]
pub struct Notify {
    tx: Sender<Event>,
    rt: Runtime,
}

impl Notify {
    /// Hands `ev` to the core loop.
    pub fn send(&self, ev: Event) {
        let _ = self.tx.send(ev);
        self.rt.wake();
    }
}

/// What the relay starts with.
pub struct Setup {
    pub settings: Settings,
    pub key: Key,
    pub identity: Identity,
    pub rt: Runtime,
    pub me: NodeId,
    pub site: SiteId,
    /// What we registered as (to register again).
    pub reg: Registration,
    /// Each bootstrap server, with the session made at start (if it
    /// answered).
    pub boots: Vec<(std::net::SocketAddrV4, Option<SecureParts>)>,
    /// The directory to start with (from the cache; empty when a server
    /// answered: its push comes first).
    pub initial: Vec<Entry>,
    pub lan_listener: Listener,
    pub wan_listener: Option<TcpListener>,
}

struct Link {
    w: TcpStream,
    seal: Sealer,
    open: Opener,
    /// Sealed records waiting for the socket.
    out: SendBuf,
    rd: FrameReader,
    peer: NodeId,
    name: String,
    /// The peer's static key (a revocation may name it).
    key: Vec<u8>,
    bytes_in: u64,
    bytes_out: u64,
}

struct Local {
    s: Stream,
    out: SendBuf,
    open: bool,
    eof: bool,
    shutdown: bool,
    finished: bool,
}

struct Dial {
    busy: bool,
    next: Instant,
    backoff: Duration,
    why: String,
}

/// The loop. Returns only on a fatal error.
pub fn run(setup: Setup) -> Result<(), Fail> {
    let Setup { settings, key, identity, rt, me, site, reg, boots, initial, lan_listener, wan_listener } = setup;
    let clock = Clock::start();
    let mut cfg = RelayConfig::new(me, epoch_micros());
    cfg.window = settings.window;
    let mut core = RelayCore::new(cfg, Box::new(ShortestPath), clock.now());
    let (tx, rx) = unbounded();
    let notify = Notify { tx, rt: rt.clone() };
    let servers: Vec<(std::net::SocketAddrV4, bool)> = boots.iter().map(|(a, s)| (*a, s.is_some())).collect();
    if let Some(t) = &identity.trust {
        core.set_trust(t.clone());
    }
    let identity = Arc::new(Mutex::new(identity));
    let boot_writers: super::boots::Writers = Arc::new(Mutex::new((0..boots.len()).map(|_| None).collect()));
    for (index, (addr, session)) in boots.into_iter().enumerate() {
        let cred = (key.clone(), identity.clone(), boot_writers.clone());
        super::boots::spawn(index, addr, session, reg.clone(), cred, notify.clone());
    }
    let ident =
        wan::Ident { key: key.clone(), identity, me, site, name: settings.name.clone(), refused: Default::default() };
    let metrics = settings.metrics_listen.map(metrics::Metrics::serve).transpose()?;
    xsock_nic::sys::catch_interrupts()?;
    let mut drain_until: Option<Instant> = None;
    if let Some(l) = wan_listener {
        wan::spawn_accept(l, ident.clone(), notify.clone());
    }
    let connect_jobs = lan::spawn_connectors(&rt, &notify);
    let mut st = State {
        lan_listener,
        connect_jobs,
        handshakes: Vec::new(),
        core,
        rt,
        key,
        name: settings.name.clone(),
        notify,
        ident,
        me,
        links: HashMap::new(),
        next_link: 1,
        locals: HashMap::new(),
        pending: HashMap::new(),
        directory: Vec::new(),
        dials: HashMap::new(),
        clock,
        auth_refused_lan: 0,
        lan_handshakes_failed: 0,
        server_dirs: vec![Vec::new(); servers.len()],
        servers,
        cache: settings.directory_cache.clone().map(|p| (p, site)),
        early: Vec::new(),
        sessions: Sessions::default(),
        sessions_total: 0,
        lan_streams_total: 0,
        fatal: None,
        boot_writers,
    };
    if !initial.is_empty() {
        st.core.set_directory(&initial);
        st.directory = initial;
        st.dial();
    }
    let mut last_work = Instant::now();
    let spin = settings.spin;
    let mut last_status = Instant::now();
    let mut list_file = settings.revoked.as_deref().map(xsock::overlay::keys::WatchedList::new);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut work = st.rt.poll()? > 0;
        work |= st.accept_lan();
        work |= st.poll_handshakes();
        work |= st.read_links(&mut buf);
        work |= st.drain_events(&rx);
        work |= st.serve_locals(&mut buf);
        work |= st.serve_sessions();
        work |= st.run_actions();
        if !st.early.is_empty() {
            work |= st.retry_early();
        }
        work |= st.transmit();
        let now = st.clock.now();
        if now >= st.core.poll_timeout() {
            st.core.handle_timeout(now);
            st.dial();
            work = true;
        }
        if let Some(why) = st.fatal.take() {
            return Err(Fail::msg(why));
        }
        if xsock_nic::sys::interrupted() && drain_until.is_none() {
            drain_until = Some(Instant::now() + settings.drain_timeout);
            let now = st.clock.now();
            st.core.set_draining(now, format!("relay {} is shutting down (draining): connect again", settings.name));
            log::info!(
                "draining: new virtual connections are refused; waiting up to {:?} for {} open ones",
                settings.drain_timeout,
                st.core.vc_count()
            );
            last_status = Instant::now() - settings.status_interval;
        }
        if last_status.elapsed() >= settings.status_interval {
            last_status = Instant::now();
            match list_file.as_mut().and_then(|w| w.changed()) {
                Some(Ok(list)) => st.take_revocations(&list, "--revoked"),
                Some(Err(e)) => log::warn!("{e}"),
                None => {}
            }
            let v = st.status(&settings, site);
            if let Some(p) = &settings.status_file {
                write_status(p, &v);
            }
            if let Some(m) = &metrics {
                m.publish(metrics::render(&v));
            }
        }
        if let Some(until) = drain_until {
            let left = st.core.vc_count();
            if left == 0 || Instant::now() >= until {
                if left == 0 {
                    log::info!("drained: no virtual connection left; exiting");
                } else {
                    log::warn!("drain timeout: exiting with {left} virtual connections still open (they are reset)");
                }
                return Ok(());
            }
        }
        if work {
            last_work = Instant::now();
        } else if last_work.elapsed() < spin {
            // Stay on the CPU a little after work, but let the datapath
            // thread and other processes run: a spinning relay on a busy
            // machine delays the very wake-ups it waits for.
            std::thread::yield_now();
        } else {
            let until = st.core.poll_timeout().saturating_sub(st.clock.now());
            let fds: Vec<std::os::fd::BorrowedFd<'_>> = st.links.values().map(|l| l.w.as_fd()).collect();
            st.rt.idle_with(Some(until.clamp(Duration::from_micros(50), Duration::from_millis(50))), &fds)?;
        }
    }
}

struct State {
    lan_listener: Listener,
    connect_jobs: crossbeam_channel::Sender<lan::ConnectJob>,
    /// LAN streams whose overlay handshake is under way.
    handshakes: Vec<lan::Pending>,
    core: RelayCore,
    rt: Runtime,
    key: Key,
    name: String,
    notify: Notify,
    ident: wan::Ident,
    me: NodeId,
    links: HashMap<LinkId, Link>,
    next_link: LinkId,
    locals: HashMap<LocalId, Local>,
    /// Delivery connects under way (gone once the VC was given up).
    pending: HashMap<LocalId, (NodeId, NodeId, u16)>,
    directory: Vec<Entry>,
    dials: HashMap<NodeId, Dial>,
    clock: Clock,
    /// Endpoints refused at the LAN handshake.
    auth_refused_lan: u64,
    /// Endpoints' LAN handshakes that failed for any other reason (no
    /// answer in time, the stream closed or broke).
    lan_handshakes_failed: u64,
    /// What each bootstrap server last said (kept while it is down).
    server_dirs: Vec<Vec<Entry>>,
    /// Each bootstrap server and whether its session is up.
    servers: Vec<(std::net::SocketAddrV4, bool)>,
    /// `--directory-cache`, and our site to write in it.
    cache: Option<(std::path::PathBuf, SiteId)>,
    /// Opens and attaches from nodes the directory does not list yet, with
    /// a deadline.
    early: Vec<(Instant, Stream, String, Ask)>,
    /// Attached endpoints' sessions.
    sessions: Sessions,
    /// Sessions taken, and VCs that took a LAN stream of their own (an
    /// endpoint that did not attach), over the relay's life.
    sessions_total: u64,
    lan_streams_total: u64,
    /// Why the relay must stop, once it must.
    fatal: Option<String>,
    /// The bootstrap sessions' writing halves (revocation lists go up).
    boot_writers: super::boots::Writers,
}

/// What an authenticated endpoint asks of us.
#[derive(Debug, Clone, Copy)]
enum Ask {
    Open { src: NodeId, dst: NodeId, port: u16 },
    Attach { node: NodeId },
}

impl Ask {
    fn node(self) -> NodeId {
        match self {
            Ask::Open { src, .. } => src,
            Ask::Attach { node } => node,
        }
    }
}

/// Bytes a link or session holds in the shell, on its way to the socket.
const LINK_HIGH: usize = 256 << 10;

/// How long an open from a node the directory does not list yet waits for
/// the directory that lists it.
const EARLY_WAIT: Duration = Duration::from_secs(2);
/// The most such opens held at once.
const MAX_EARLY: usize = 256;

impl State {
    /// Takes endpoints' new streams; each one's handshake runs on a helper.
    fn accept_lan(&mut self) -> bool {
        let mut any = false;
        while let Ok(s) = self.lan_listener.try_accept() {
            any = true;
            let from = s.peer_addr();
            match lan::Pending::start(s, &self.key, &self.name, lan::Purpose::Admit) {
                Ok(p) => self.handshakes.push(p),
                Err(e) => log::warn!("endpoint at {from}: {e}"),
            }
        }
        any
    }

    /// Moves the LAN handshakes on.
    fn poll_handshakes(&mut self) -> bool {
        if self.handshakes.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut any = false;
        let mut i = 0;
        while i < self.handshakes.len() {
            let outcome = self.handshakes[i].poll(now);
            if matches!(outcome, lan::Outcome::Pending) {
                i += 1;
                continue;
            }
            any = true;
            let from = self.handshakes.swap_remove(i).from();
            match outcome {
                lan::Outcome::Pending => {}
                lan::Outcome::Open { stream, name, src, dst, port } => {
                    self.admit(stream, name, Ask::Open { src, dst, port }, true)
                }
                lan::Outcome::Attach { stream, name, node } => self.admit(stream, name, Ask::Attach { node }, true),
                lan::Outcome::Accepted { stream, local } => {
                    if self.pending.remove(&local).is_some() {
                        self.locals.insert(local, Local::new(stream, true));
                        self.core.handle_local_connected(local);
                    } else {
                        stream.abort();
                    }
                }
                lan::Outcome::Failed { purpose: lan::Purpose::Admit, reason, auth } => {
                    if auth {
                        self.auth_refused_lan += 1;
                        log::warn!("refused an endpoint at {from}: {reason}")
                    } else {
                        self.lan_handshakes_failed += 1;
                        log::info!("an endpoint's handshake at {from} failed: {reason}")
                    }
                }
                lan::Outcome::Failed { purpose: lan::Purpose::Deliver { local, .. }, reason, .. } => {
                    if self.pending.remove(&local).is_some() {
                        self.core.handle_local_failed(local, &format!("delivering to {from}: {reason}"));
                    }
                }
            }
        }
        any
    }

    /// An endpoint, authenticated, asks for a VC or attaches.
    fn admit(&mut self, mut stream: Stream, name: String, ask: Ask, may_wait: bool) {
        // A key holder could claim another's id; the directory says which
        // name owns it.
        let node = ask.node();
        let owner = self.directory.iter().find(|e| e.node == node).map(|e| e.name.as_str());
        if owner.is_none() && may_wait && self.early.len() < MAX_EARLY {
            // A node that has just joined can open before the server's push
            // of the directory that lists it reaches us: wait a little.
            self.early.push((Instant::now() + EARLY_WAIT, stream, name, ask));
            return;
        }
        if owner != Some(name.as_str()) {
            let reason = format!("{name} came as node {node}, which is not its registered id");
            log::warn!("refused: {reason}");
            lan::send_now(&mut stream, &Msg::Refuse { vc: 0, reason: &reason }.to_frame());
            return;
        }
        let now = self.clock.now();
        match ask {
            Ask::Open { src, dst, port } => {
                let local = self.core.handle_local_open(now, src, dst, port);
                self.locals.insert(local, Local::new(stream, false));
                self.lan_streams_total += 1;
            }
            Ask::Attach { node } => {
                if !lan::send_now(&mut stream, &Msg::Accept { vc: 0, credit: 0 }.to_frame()) {
                    return;
                }
                let link = self.next_link;
                self.next_link += 1;
                log::info!("endpoint {name} ({node}) attached: session {link}");
                self.sessions.insert(link, stream, name, node);
                self.core.handle_session_up(now, link, node);
                self.sessions_total += 1;
            }
        }
    }

    /// Moves the sessions' bytes in and out.
    fn serve_sessions(&mut self) -> bool {
        let now = self.clock.now();
        let (any, gone) = self.sessions.read(&mut self.core, now);
        for (link, why) in gone {
            if let Some(s) = self.sessions.remove(link) {
                log::info!("session {link} of endpoint {} ended: {why}", s.name);
            }
            self.core.handle_link_down(now, link);
        }
        any
    }

    /// Held opens whose node the directory now lists, or whose wait is
    /// over, are decided.
    fn retry_early(&mut self) -> bool {
        let now = Instant::now();
        let mut any = false;
        for (deadline, stream, name, ask) in std::mem::take(&mut self.early) {
            if now >= deadline || self.directory.iter().any(|e| e.node == ask.node()) {
                any = true;
                self.admit(stream, name, ask, false);
            } else {
                self.early.push((deadline, stream, name, ask));
            }
        }
        any
    }

    /// Reads what the relay links have (non-blocking sockets).
    fn read_links(&mut self, buf: &mut [u8]) -> bool {
        let now = self.clock.now();
        let mut any = false;
        let mut gone = Vec::new();
        let mut plain = Vec::new();
        for (&link, l) in self.links.iter_mut() {
            loop {
                match l.w.read(buf) {
                    Ok(0) => {
                        gone.push(link);
                        break;
                    }
                    Ok(n) => {
                        any = true;
                        l.bytes_in += n as u64;
                        plain.clear();
                        if let Err(e) = l.open.open(&buf[..n], &mut plain) {
                            log::warn!("relay {}: {e}; closing the link", l.name);
                            gone.push(link);
                            break;
                        }
                        l.rd.push(&plain);
                        if !feed(&mut self.core, now, link, l) {
                            gone.push(link);
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone.push(link);
                        break;
                    }
                }
            }
        }
        for link in gone {
            if let Some(l) = self.links.remove(&link) {
                log::warn!("link {link} to relay {} ({}) went down", l.name, l.peer);
                let _ = l.w.shutdown(std::net::Shutdown::Both);
            }
            self.core.handle_link_down(now, link);
            any = true;
        }
        if any {
            self.dial();
        }
        any
    }

    fn drain_events(&mut self, rx: &Receiver<Event>) -> bool {
        let mut any = false;
        while let Ok(ev) = rx.try_recv() {
            any = true;
            self.event(ev);
        }
        any
    }

    fn event(&mut self, ev: Event) {
        let now = self.clock.now();
        match ev {
            Event::LinkUp { session, peer, name, initiated } => {
                if let Some(d) = self.dials.get_mut(&peer) {
                    d.busy = false;
                    d.backoff = Duration::from_secs(1);
                }
                let SecureParts { stream, sealer, opener, plain, remote_static } = *session;
                if stream.set_nonblocking(true).is_err() {
                    return;
                }
                let link = self.next_link;
                self.next_link += 1;
                log::info!(
                    "link {link} to relay {name} ({peer}) up ({})",
                    if initiated { "dialled" } else { "accepted" }
                );
                self.links.insert(
                    link,
                    Link {
                        w: stream,
                        seal: sealer,
                        open: opener,
                        out: SendBuf::default(),
                        rd: FrameReader::default(),
                        peer,
                        name,
                        key: remote_static,
                        bytes_in: 0,
                        bytes_out: 0,
                    },
                );
                self.core.handle_link_up(now, link, peer, initiated);
                // Frames that came with the handshake's last bytes.
                if let Some(l) = self.links.get_mut(&link)
                    && !plain.is_empty()
                {
                    l.rd.push(&plain);
                    if !feed(&mut self.core, now, link, l) {
                        self.links.remove(&link);
                        self.core.handle_link_down(now, link);
                    }
                }
            }
            Event::DialFailed { peer, why } => {
                if let Some(d) = self.dials.get_mut(&peer) {
                    d.busy = false;
                    d.next = Instant::now() + d.backoff;
                    log::debug!("dialling {peer}: {why}; next try in {:?}", d.backoff);
                    d.backoff = (d.backoff * 2).min(Duration::from_secs(10));
                    d.why = why;
                }
            }
            Event::Revocations { list } => self.take_revocations(&list, "a bootstrap server"),
            Event::Fatal { why } => self.fatal = Some(why),
            Event::Directory { index, entries } => {
                if let Some(d) = self.server_dirs.get_mut(index) {
                    *d = entries;
                }
                if let Some(s) = self.servers.get_mut(index) {
                    s.1 = true;
                }
                let merged = super::boots::merge(&self.server_dirs);
                if let Some((path, site)) = &self.cache
                    && merged != self.directory
                    && let Err(e) = super::boots::cache::save(path, self.me, *site, &merged)
                {
                    log::warn!("cannot write the directory cache {}: {e}", path.display());
                }
                self.core.set_directory(&merged);
                self.directory = merged;
                self.dial();
                self.retry_early();
            }
            Event::BootLost { index, why } => {
                if let Some(s) = self.servers.get_mut(index) {
                    s.1 = false;
                    log::error!(
                        "lost the bootstrap server {} ({why}); relaying on with the last directory, registering again \
                         when it answers",
                        s.0
                    );
                }
            }
            Event::Dialed { local, ip, port, stream } => {
                let Some(&(src, dst, p)) = self.pending.get(&local) else {
                    if let Ok(s) = stream {
                        s.abort();
                    }
                    return;
                };
                let started = stream.map_err(|e| e.to_string()).and_then(|s| {
                    lan::Pending::start(s, &self.key, &self.name, lan::Purpose::Deliver { local, src, dst, port: p })
                });
                match started {
                    Ok(h) => self.handshakes.push(h),
                    Err(e) => {
                        self.pending.remove(&local);
                        self.core.handle_local_failed(local, &format!("delivering to {ip}:{port}: {e}"));
                    }
                }
            }
        }
    }

    /// Moves bytes between endpoint streams and the core.
    fn serve_locals(&mut self, buf: &mut [u8]) -> bool {
        let mut any = false;
        let mut dead: Vec<(LocalId, String)> = Vec::new();
        let mut done: Vec<LocalId> = Vec::new();
        for (&id, l) in self.locals.iter_mut() {
            if !l.open {
                continue;
            }
            // Endpoint -> overlay, within the credit.
            let credit = self.core.local_credit(id).min(buf.len());
            if credit > 0 && !l.eof {
                match l.s.try_recv(&mut buf[..credit]) {
                    Ok(0) => {
                        l.eof = true;
                        any = true;
                        self.core.handle_local_eof(id);
                    }
                    Ok(n) => {
                        any = true;
                        self.core.handle_local_data(id, &buf[..n]);
                    }
                    Err(Error::WouldBlock) => {}
                    Err(e) => {
                        dead.push((id, e.to_string()));
                        continue;
                    }
                }
            }
            // Overlay -> endpoint.
            if !l.out.is_empty() {
                match l.s.try_send(l.out.pending()) {
                    Ok(n) => {
                        any = true;
                        l.out.advance(n);
                        self.core.handle_local_delivered(id, n);
                    }
                    Err(Error::WouldBlock) => {}
                    Err(e) => {
                        dead.push((id, e.to_string()));
                        continue;
                    }
                }
            }
            if l.out.is_empty() {
                if l.shutdown {
                    l.shutdown = false;
                    let _ = l.s.shutdown_write();
                }
                if l.finished {
                    done.push(id);
                }
            }
        }
        for (id, why) in dead {
            self.locals.remove(&id);
            self.core.handle_local_failed(id, &format!("the endpoint's stream broke: {why}"));
        }
        for id in done {
            self.locals.remove(&id);
        }
        any
    }

    fn run_actions(&mut self) -> bool {
        let mut any = false;
        while let Some(a) = self.core.poll_action() {
            any = true;
            match a {
                Action::Connect { local, src, dst, port } => {
                    let Some(ip) = self.directory.iter().find(|e| e.node == dst).map(|e| e.lan_ip) else {
                        self.core.handle_local_failed(local, "the destination left the directory");
                        continue;
                    };
                    self.pending.insert(local, (src, dst, port));
                    self.lan_streams_total += 1;
                    let _ = self.connect_jobs.send(lan::ConnectJob { local, ip, port });
                }
                Action::Opened { local } => {
                    if let Some(l) = self.locals.get_mut(&local) {
                        if lan::send_now(&mut l.s, &Msg::Accept { vc: 0, credit: 0 }.to_frame()) {
                            l.open = true;
                        } else {
                            self.locals.remove(&local);
                            self.core.handle_local_failed(local, "the opening endpoint went away");
                        }
                    }
                }
                Action::Failed { local, reason } => {
                    if self.pending.remove(&local).is_some() {
                        continue;
                    }
                    if let Some(mut l) = self.locals.remove(&local) {
                        if l.open {
                            log::info!("VC end {local} aborted: {reason}");
                            if reason.starts_with(xsock_overlay::relay::PATH_LOST) {
                                l.s.abort_path_lost();
                            } else {
                                l.s.abort();
                            }
                        } else {
                            lan::send_now(&mut l.s, &Msg::Refuse { vc: 0, reason: &reason }.to_frame());
                        }
                    }
                }
                Action::Write { local, bytes } => {
                    if let Some(l) = self.locals.get_mut(&local) {
                        l.out.tail().extend_from_slice(&bytes);
                    }
                }
                Action::Shutdown { local } => {
                    if let Some(l) = self.locals.get_mut(&local) {
                        l.shutdown = true;
                    }
                }
                Action::Finished { local } => {
                    if let Some(l) = self.locals.get_mut(&local) {
                        l.finished = true;
                    }
                }
                Action::CloseLink { link } => {
                    if let Some(l) = self.links.remove(&link) {
                        let _ = l.w.shutdown(std::net::Shutdown::Both);
                    }
                    if let Some(s) = self.sessions.remove(link) {
                        log::info!("closed session {link} of endpoint {}", s.name);
                    }
                }
                Action::Revoked { list } => self.revoked(list),
            }
        }
        any
    }

    /// A revocation list from `whence`: taken (and flooded) if newer.
    fn take_revocations(&mut self, list: &[u8], whence: &str) {
        match self.core.handle_revocations(list) {
            Ok(_) => {}
            Err(e) => log::warn!("a revocation list from {whence} was not taken: {e}"),
        }
    }

    /// The core took a newer revocation list: new handshakes check it, and
    /// links to relays whose key it names close now.
    fn revoked(&mut self, list: xsock_overlay::cert::Revocations) {
        log::info!("revocation list number {} taken: {} keys revoked", list.seq, list.keys.len());
        // The servers learn it too (one that has it already ignores it).
        super::boots::tell_all(&self.boot_writers, &Msg::Revocations { list: &list.to_bytes() }.to_frame());
        if let Ok(mut id) = self.ident.identity.lock()
            && let Some(t) = &mut id.trust
        {
            let _ = t.adopt(list.clone());
        }
        let now = self.clock.now();
        let gone: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| list.keys.iter().any(|k| k[..] == l.key[..]))
            .map(|(id, _)| *id)
            .collect();
        for link in gone {
            if let Some(l) = self.links.remove(&link) {
                log::warn!("closed the link to relay {} ({}): the CA revoked its key", l.name, l.peer);
                let _ = l.w.shutdown(std::net::Shutdown::Both);
                self.core.handle_link_down(now, link);
            }
        }
    }

    fn transmit(&mut self) -> bool {
        let mut any = false;
        let now = session_clock();
        // Only what each link can take soon leaves the core: the rest
        // waits there, where the VCs take turns (a bulk transfer's window
        // does not sit in front of a ping in the socket's buffer).
        for (&link, l) in self.links.iter_mut() {
            while l.out.len() < LINK_HIGH {
                let Some(bytes) = self.core.poll_transmit_link(link, LINK_HIGH) else { break };
                l.seal.seal(now, &bytes, l.out.tail());
            }
        }
        self.sessions.pull(&mut self.core, LINK_HIGH);
        let (wrote, broken) = self.sessions.write();
        any |= wrote;
        for (link, why) in broken {
            if let Some(s) = self.sessions.remove(link) {
                log::info!("session {link} of endpoint {} ended: {why}", s.name);
            }
            self.core.handle_link_down(self.clock.now(), link);
        }
        for l in self.links.values_mut() {
            while !l.out.is_empty() {
                match l.w.write(l.out.pending()) {
                    Ok(n) => {
                        any = true;
                        l.bytes_out += n as u64;
                        l.out.advance(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // The reader sees the end and reports the link down.
                        l.out.clear();
                        let _ = l.w.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
        any
    }

    /// Dials every relay with an address that we have no link to.
    fn dial(&mut self) {
        let linked: HashSet<NodeId> = self.links.values().map(|l| l.peer).collect();
        for e in &self.directory {
            let Some(addr) = e.wan else { continue };
            if e.role != Role::Relay || e.node == self.me || linked.contains(&e.node) {
                continue;
            }
            let d = self.dials.entry(e.node).or_insert(Dial {
                busy: false,
                next: Instant::now(),
                backoff: Duration::from_secs(1),
                why: String::new(),
            });
            if d.busy || Instant::now() < d.next {
                continue;
            }
            d.busy = true;
            wan::spawn_dial(addr, e.node, self.ident.clone(), self.notify.clone());
        }
    }

    /// The status file's JSON (the metrics are rendered from it too).
    fn status(&self, s: &Settings, site: SiteId) -> serde_json::Value {
        let name_of = |n: NodeId| {
            self.directory.iter().find(|e| e.node == n).map(|e| e.name.clone()).unwrap_or_else(|| n.to_string())
        };
        let links: Vec<serde_json::Value> = self
            .links
            .iter()
            .map(|(id, l)| {
                serde_json::json!({"link": id, "peer": l.peer.to_string(), "name": l.name,
                    "bytes_in": l.bytes_in, "bytes_out": l.bytes_out, "queued": l.out.len()})
            })
            .collect();
        let routes: Vec<serde_json::Value> = self
            .core
            .routes()
            .into_iter()
            .map(|(n, r)| {
                serde_json::json!({"relay": name_of(n), "id": n.to_string(), "next_hop": name_of(r.next_hop),
                    "cost": r.cost, "hops": r.hops})
            })
            .collect();
        let unreachable: Vec<serde_json::Value> = self
            .dials
            .iter()
            .filter(|(n, d)| !d.why.is_empty() && !self.links.values().any(|l| l.peer == **n))
            .map(|(n, d)| serde_json::json!({"relay": name_of(*n), "last_error": d.why}))
            .collect();
        let c = self.core.counters();
        // Core time -> Unix time, for readers comparing with their clocks.
        let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let changed = self
            .core
            .routes_changed_at()
            .map(|t| (unix_now.saturating_sub(self.clock.now().saturating_sub(t))).as_nanos() as u64);
        let queues: Vec<serde_json::Value> = self
            .rt
            .queue_stats()
            .iter()
            .map(|q| {
                serde_json::json!({"queue": q.queue, "rx_frames": q.rx_frames, "tx_frames": q.tx_frames,
                    "rx_dropped": q.rx_dropped, "fill_ring_empty": q.fill_ring_empty, "tx_ring_full": q.tx_ring_full,
                    "polls": q.polls, "sleeps": q.sleeps})
            })
            .collect();
        serde_json::json!({
            "draining": self.core.is_draining(),
            "boot_servers": self.servers.iter().map(|(a, up)| serde_json::json!({"addr": a.to_string(), "up": up}))
                .collect::<Vec<_>>(),
            "lan_queues": queues,
            "routes_changed_unix_ns": changed,
            "name": s.name, "id": self.me.to_string(), "site": site.to_string(),
            "links": links, "routes": routes, "not_linked": unreachable,
            "vcs": self.core.vc_count(), "endpoint_streams": self.locals.len(),
            "sessions": self.sessions.iter().map(|(id, s)| serde_json::json!({"session": id, "endpoint": s.name,
                "id": s.node.to_string(), "bytes_in": s.bytes_in, "bytes_out": s.bytes_out})).collect::<Vec<_>>(),
            "counters": {"vcs_opened": c.vcs_opened, "vcs_refused": c.vcs_refused, "vcs_aborted": c.vcs_aborted,
                "vcs_closed": c.vcs_closed, "bytes_forwarded": c.bytes_forwarded, "lsas_in": c.lsas_in,
                "route_runs": c.route_runs, "auth_refused_lan": self.auth_refused_lan,
                "lan_handshakes_failed": self.lan_handshakes_failed, "lsas_originated": c.lsas_originated,
                "links_silent": c.links_silent, "links_down": c.links_down, "links_replaced": c.links_replaced,
                "sessions_ended": c.sessions_ended,
                "sessions_attached": self.sessions_total, "lan_streams": self.lan_streams_total,
                "revocations_refused": c.revocations_refused,
                "revocation_list": self.core.trust().and_then(|t| t.revocations()).map_or(0, |l| l.seq),
                "auth_refused_wan": self.ident.refused.load(std::sync::atomic::Ordering::Relaxed)},
        })
    }
}

/// Writes the status file whole (a reader never sees half of it).
fn write_status(path: &std::path::Path, v: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    let ok = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(serde_json::to_string_pretty(v).unwrap_or_default().as_bytes()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = ok {
        log::warn!("cannot write the status file {}: {e}", path.display());
    }
}

/// Hands the complete frames of `l` to the core; false if the peer broke
/// the protocol (close the link).
fn feed(core: &mut RelayCore, now: Duration, link: LinkId, l: &mut Link) -> bool {
    loop {
        match l.rd.next_frame() {
            Ok(Some(f)) => {
                if let Err(e) = core.handle_link_frame(now, link, f) {
                    log::warn!("relay {} broke the protocol ({e}); closing the link", l.name);
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                log::warn!("relay {}: {e}; closing the link", l.name);
                return false;
            }
        }
    }
}

impl Local {
    fn new(s: Stream, open: bool) -> Self {
        Local { s, out: SendBuf::default(), open, eof: false, shutdown: false, finished: false }
    }
}
