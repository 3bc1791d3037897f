//! The host engine (`xsock engine --iface IF`): one process per interface
//! (and network namespace) owns the AF_XDP sockets, the XDP filter and all
//! protocol state; every other xsock process on the host attaches to it
//! over a Unix seqpacket socket (see `xsock-attach` for the protocol) and
//! gets its streams as descriptors.
//!
//! One thread runs everything: the datapath (driven inline), the control
//! sockets, and one [`bridge::Bridge`] per carried stream, all in one
//! [`xsock::Poller`]. Connects are non-blocking, so one slow peer never
//! holds up another client's request.
//!
//! Faults: a client's process killed mid-transfer closes its descriptors;
//! the engine sees the hang-up, finds the process killed (or gone) and
//! resets its peers with "the process went away". The engine killed: every
//! client's control socket and stream descriptors hang up at once, and the
//! XDP program goes with the engine's bpf_link. A dead engine's lock is
//! free (flock), so a new one starts at once.

pub mod bridge;
mod control;
mod overlay;
mod status;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use xsock::{Driving, EngineUse, Error, Events, Interest, Listener, PollMode, Poller, Runtime, Stream, Token};
use xsock_attach::{Msg, Place, Policy};
use xsock_nic::{lockfile::LockFile, unix};

use bridge::{Bridge, BufPool, End, Moved, Outcome};

/// How to run an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The interface.
    pub iface: String,
    /// Queues to drive.
    pub queues: u32,
    /// How the loop waits when idle.
    pub poll: PollMode,
    /// A group whose members may attach (besides root and our user).
    pub group: Option<String>,
    /// Where the socket and lock go (default `XSOCK_RUN_DIR` or /run/xsock).
    pub run_dir: Option<PathBuf>,
    /// Processes attached at once, at most.
    pub max_clients: usize,
    /// Streams (open or connecting) per process, at most.
    pub max_streams_per_client: usize,
    /// Bytes of each of a stream's two shared rings (a power of two; for
    /// clients that move bytes through rings).
    pub ring_bytes: usize,
    /// Join the overlay as one node for every process (`--boot ...`).
    pub overlay: Option<xsock::overlay::OverlayConfig>,
}

/// The smallest and largest ring a stream may have.
pub const RING_BYTES: std::ops::RangeInclusive<usize> = 4096..=(16 << 20);

impl EngineConfig {
    /// Defaults for `iface`.
    pub fn new(iface: impl Into<String>) -> EngineConfig {
        EngineConfig {
            iface: iface.into(),
            queues: 1,
            poll: PollMode::default(),
            group: None,
            run_dir: None,
            max_clients: 1024,
            max_streams_per_client: 16_384,
            ring_bytes: 128 * 1024,
            overlay: None,
        }
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Another engine runs for the interface.
    #[error("an xsock engine already runs for {iface}: {source}")]
    Running {
        /// The interface.
        iface: String,
        /// Who holds the lock.
        source: xsock_nic::lockfile::LockError,
    },
    /// The interface could not be driven.
    #[error("the engine cannot drive {iface}: {source}")]
    Interface {
        /// The interface.
        iface: String,
        /// Why.
        source: Error,
    },
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Io { what, source }
}

/// How long a busy-polling engine keeps looking at a stream's ring after
/// the client last wrote into it, before it arms the ring (so the client's
/// next write rings a doorbell, a system call): a request-response client
/// writes again within a round trip.
const HOT: Duration = Duration::from_millis(1);

/// Messages that may wait for one client's control socket.
const OUT_QUEUE: usize = 1 << 16;

/// Token kinds (the low 3 bits of a token; the rest is an id).
mod kind {
    pub const ACCEPT: usize = 0;
    pub const CTL: usize = 1;
    pub const PAIR: usize = 2;
    pub const STREAM: usize = 3;
    pub const LISTEN: usize = 4;
    /// The overlay's finished opens (id 0).
    pub const OVERLAY: usize = 5;
}

fn token(id: u32, k: usize) -> Token {
    Token(((id as usize) << 3) | k)
}

/// An attached process.
struct Client {
    ctl: OwnedFd,
    /// Messages (and their descriptors) the socket could not take yet.
    outq: std::collections::VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    pid: i32,
    uid: u32,
    hello: bool,
    /// It asked for its streams' bytes in shared rings.
    rings: bool,
    /// It reads [`Msg::Ended`] (the preload does not).
    ends: bool,
    /// Streams open or connecting.
    streams: HashSet<u32>,
    listens: HashSet<u32>,
}

/// A connect under way for a client.
struct Connecting {
    client: u32,
    req: u32,
    stream: Stream,
    /// The virtual address:port the process asked for (a node of this
    /// LAN, reached at its LAN address): what its socket's names show.
    shown: Option<std::net::SocketAddrV4>,
}

/// The program's side of a [`Msg::Dial`]: the socketpair end to carry
/// the stream on, and the filler to discard from it once connected.
struct Dial {
    pair: std::os::unix::net::UnixStream,
    filler: u32,
}

/// A listener for a client.
struct Listen {
    client: u32,
    listener: Listener,
    /// Its port's virtual connections come to it too (overlay engines).
    _served: Option<xsock::overlay::Served>,
}

/// A carried stream and what the engine knows of its owner.
struct Carried {
    bridge: Bridge,
    pid: i32,
    /// The client let go of it (Msg::Close): its hang-up is orderly.
    released: bool,
}

/// Totals since the engine started.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    attached: u64,
    refused: u64,
    streams: u64,
    kernel_handed: u64,
    /// VCs handed to the preload as they are.
    vcs_handed: u64,
    process_gone_resets: u64,
    failed_connects: u64,
    moved: Moved,
    /// Doorbells rung to clients by streams that ended.
    bells: u64,
}

/// A running engine.
pub struct Engine {
    cfg: EngineConfig,
    rt: Runtime,
    poller: Poller,
    listen_sock: OwnedFd,
    place: Place,
    policy: Policy,
    lock: Option<LockFile>,
    clients: HashMap<u32, Client>,
    carried: HashMap<u32, Carried>,
    connecting: HashMap<u32, Connecting>,
    /// Non-blocking connects' socketpair ends, by (client, request), until
    /// the connect is carried on them or fails (dropping one hangs up the
    /// program's descriptor).
    dials: HashMap<(u32, u32), Dial>,
    listens: HashMap<u32, Listen>,
    /// What each registered token is watched for now.
    watched: HashMap<usize, Interest>,
    pool: BufPool,
    next_id: u32,
    totals: Totals,
    started: Instant,
    buf: Vec<u8>,
    /// Passes of the loop (where a pass starts in its events).
    turn: usize,
    /// Streams to pump on the next pass whatever the poller says (their
    /// rings hold work no doorbell announces).
    again: Vec<u32>,
    /// The engine's node on the overlay, if it joined one.
    overlay: Option<overlay::Overlay>,
    /// How streams of clients that take no [`Msg::Ended`] (the preload)
    /// ended badly, by stream id with the owner's pid, until the process
    /// asks ([`Msg::HowEnded`]); the oldest go past [`ENDED_KEPT`].
    ended: HashMap<u32, (i32, End)>,
    ended_order: std::collections::VecDeque<u32>,
    /// Virtual connections handed to the preload as they are (their
    /// socket is the program's; the overlay session moves the bytes).
    direct: HashMap<u32, Direct>,
}

/// A VC whose socket a process holds.
struct Direct {
    client: u32,
    pid: i32,
    end: std::sync::Arc<xsock::overlay::VcEnd>,
}

/// Bad ends kept for the processes to ask about.
const ENDED_KEPT: usize = 1 << 16;

impl Engine {
    /// Takes the interface's lock, drives the interface and listens for
    /// clients. `builder` carries the runtime's settings (rings, buffers,
    /// memory limit, TCP mode); the engine sets the interface, the poll
    /// mode and inline driving itself.
    pub fn open(cfg: EngineConfig, builder: xsock::RuntimeBuilder) -> Result<Engine, EngineError> {
        if !cfg.ring_bytes.is_power_of_two() || !RING_BYTES.contains(&cfg.ring_bytes) {
            return Err(EngineError::Config(format!(
                "a stream's ring must be a power of two from {} KiB to {} MiB, not {} bytes",
                RING_BYTES.start() >> 10,
                RING_BYTES.end() >> 20,
                cfg.ring_bytes
            )));
        }
        let netns = xsock_nic::sys::netns_id().map(|(_, ino)| ino).unwrap_or(0);
        let place = Place::new(cfg.run_dir.as_deref(), &cfg.iface, netns);
        create_dir(&place)?;
        let lock = take_lock(&place, &cfg.iface)?;
        match xsock_nic::sys::raise_nofile() {
            Ok(n) if n < cfg.max_streams_per_client as u64 => log::warn!(
                "the engine may open {n} descriptors (ulimit -n): a stream takes one; raise the hard limit \
                 (LimitNOFILE= in the unit, or `ulimit -Hn`) for more streams"
            ),
            Ok(_) => {}
            Err(e) => log::debug!("RLIMIT_NOFILE: {e}"),
        }
        let group = match &cfg.group {
            Some(name) => Some((group_id(name)?, name.clone())),
            None => None,
        };
        let policy = Policy { engine_uid: nix_uid(), group: group.clone() };
        let rt = builder
            .interface(&cfg.iface)
            .queues(cfg.queues)
            .poll_mode(cfg.poll)
            .driving(Driving::Inline)
            .require_link(true)
            .engine(EngineUse::Never)
            .build()
            .map_err(|source| EngineError::Interface { iface: cfg.iface.clone(), source })?;
        let overlay = match cfg.overlay.clone() {
            Some(mut ocfg) => {
                // Every relay of the LAN delivers through a session: the
                // engine's listeners take plain streams only.
                ocfg.sessions = usize::MAX;
                let name = ocfg.name.clone();
                let node = xsock::overlay::Node::join(&rt, ocfg).map_err(|e| {
                    EngineError::Config(format!("the engine could not join the overlay as {name}: {e}"))
                })?;
                Some(overlay::Overlay::new(node).map_err(io_err("an eventfd for the overlay"))?)
            }
            None => None,
        };
        // We hold the lock: a socket file left here is a dead engine's.
        let path = place.socket();
        let _ = std::fs::remove_file(&path);
        let listen_sock =
            unix::seqpacket_listen(&path, 1024).map_err(io_err(format!("listen on {}", path.display())))?;
        set_socket_access(&path, group.as_ref().map(|g| g.0))?;
        let mut poller = Poller::new(&rt).map_err(|e| EngineError::Config(e.to_string()))?;
        poller
            .register_fd(listen_sock.as_fd(), token(0, kind::ACCEPT), Interest::READABLE)
            .map_err(|e| EngineError::Config(e.to_string()))?;
        if let Some(o) = &overlay {
            poller
                .register_fd(o.bell.fd(), token(0, kind::OVERLAY), Interest::READABLE)
                .map_err(|e| EngineError::Config(e.to_string()))?;
            log::info!(
                "the engine is overlay node {} (virtual address {}) for every process on {}",
                o.node.name(),
                o.vaddr(),
                cfg.iface
            );
        }
        log::info!(
            "xsock engine for {} (pid {}): listening on {}; admits root, uid {}{}; {:?} polling",
            cfg.iface,
            std::process::id(),
            path.display(),
            policy.engine_uid,
            group.map(|(g, n)| format!(" and group {n} ({g})")).unwrap_or_default(),
            cfg.poll
        );
        Ok(Engine {
            cfg,
            rt,
            poller,
            listen_sock,
            place,
            policy,
            lock: Some(lock),
            clients: HashMap::new(),
            carried: HashMap::new(),
            connecting: HashMap::new(),
            dials: HashMap::new(),
            listens: HashMap::new(),
            watched: HashMap::new(),
            pool: BufPool::default(),
            next_id: 1,
            totals: Totals::default(),
            started: Instant::now(),
            buf: vec![0u8; xsock_attach::wire::MAX_MSG],
            turn: 0,
            again: Vec::new(),
            overlay,
            ended: HashMap::new(),
            ended_order: Default::default(),
            direct: HashMap::new(),
        })
    }

    /// The socket clients connect to.
    pub fn socket_path(&self) -> PathBuf {
        self.place.socket()
    }

    /// Runs until `stop` says so (checked at least every 100 ms), then
    /// shuts down: clients told, peers reset, the socket removed.
    pub fn run(&mut self, stop: impl Fn() -> bool) -> Result<(), EngineError> {
        let mut events = Events::with_capacity(1024);
        while !stop() {
            let wait = if self.again.is_empty() { Duration::from_millis(100) } else { Duration::ZERO };
            match self.poller.poll(&mut events, Some(wait)) {
                Ok(_) => {}
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EngineError::Config(format!("the engine's poll loop failed: {e}"))),
            }
            // The poller reports in token order: start each pass somewhere
            // else, so the streams first in line do not always go first.
            let mut tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
            if !tokens.is_empty() {
                self.turn = self.turn.wrapping_add(1);
                let k = self.turn % tokens.len();
                tokens.rotate_left(k);
            }
            for t in tokens {
                self.dispatch(t);
            }
            for id in std::mem::take(&mut self.again) {
                self.pump(id, false);
            }
        }
        self.shutdown("the host engine is shutting down");
        Ok(())
    }

    fn dispatch(&mut self, t: Token) {
        let id = (t.0 >> 3) as u32;
        match t.0 & 7 {
            kind::ACCEPT => self.accept_clients(),
            kind::CTL => {
                self.flush_client(id);
                self.serve_client(id);
            }
            kind::PAIR | kind::STREAM => {
                if self.connecting.contains_key(&id) {
                    self.advance_connect(id);
                } else {
                    self.pump(id, t.0 & 7 == kind::PAIR);
                }
            }
            kind::LISTEN => self.accept_streams(id),
            kind::OVERLAY => self.overlay_opened(),
            _ => {}
        }
    }

    fn new_id(&mut self) -> u32 {
        // Ids fit 61 bits of a token; wrapping past u32 skips ids in use.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.carried.contains_key(&id)
                && !self.connecting.contains_key(&id)
                && !self.listens.contains_key(&id)
                && !self.clients.contains_key(&id)
            {
                return id;
            }
        }
    }

    /// Sets what `t` is watched for (`None`: not at all); `register` adds
    /// the source the first time.
    fn watch(
        &mut self,
        t: Token,
        want: Option<Interest>,
        register: impl FnOnce(&mut Poller, Interest) -> Result<(), Error>,
    ) {
        watch(&mut self.poller, &mut self.watched, t, want, register);
    }

    fn watch_stream(&mut self, t: Token, stream: &Stream, want: Option<Interest>) {
        self.watch(t, want, |p, i| p.register(stream, t, i));
    }

    fn watch_fd(&mut self, t: Token, fd: std::os::fd::BorrowedFd<'_>, want: Option<Interest>) {
        self.watch(t, want, |p, i| p.register_fd(fd, t, i));
    }

    fn unwatch(&mut self, t: Token) {
        if self.watched.remove(&t.0).is_some() {
            let _ = self.poller.deregister(t);
        }
    }

    /// Sends `m` (with `fds`) to `client`, in order: what the client's
    /// socket cannot take now waits in the client's queue (a thousand
    /// connects answered at once fill a seqpacket socket), up to
    /// [`OUT_QUEUE`] messages; a client that does not read its control
    /// socket at all is detached then. False if the client is gone.
    fn send_to(&mut self, client: u32, m: &Msg<'_>, fd: impl IntoIterator<Item = OwnedFd>) -> bool {
        let fd: Vec<OwnedFd> = fd.into_iter().collect();
        let Some(c) = self.clients.get_mut(&client) else { return false };
        if matches!(m, Msg::Ended { .. }) && !c.ends {
            return true; // it asked not to be told
        }
        let bytes = m.emit();
        if c.outq.is_empty() {
            let fds: Vec<std::os::fd::BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
            match unix::send_with_fds(c.ctl.as_fd(), &bytes, &fds) {
                Ok(_) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::debug!("engine: to client {client} (pid {}): {e}", c.pid);
                    return false;
                }
            }
        }
        if c.outq.len() >= OUT_QUEUE {
            log::warn!("engine: pid {} does not read its control socket ({OUT_QUEUE} messages wait); detached", c.pid);
            self.client_gone(client, "its control socket stayed full");
            return false;
        }
        // The descriptor waits with its message (moved, not duplicated: a
        // queue of ten thousand answers must not double the descriptors).
        c.outq.push_back((bytes, fd));
        self.set_interest(token(client, kind::CTL), Interest::READABLE | Interest::WRITABLE);
        true
    }

    /// Sends what waits in `client`'s queue, as far as its socket takes it.
    fn flush_client(&mut self, client: u32) {
        let Some(c) = self.clients.get_mut(&client) else { return };
        while let Some((bytes, fds)) = c.outq.front() {
            let borrowed: Vec<std::os::fd::BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            match unix::send_with_fds(c.ctl.as_fd(), bytes, &borrowed) {
                Ok(_) => {
                    c.outq.pop_front();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.outq.clear();
                    return;
                }
            }
        }
        self.set_interest(token(client, kind::CTL), Interest::READABLE);
    }

    /// Changes what a registered token is watched for.
    fn set_interest(&mut self, t: Token, want: Interest) {
        match self.watched.get(&t.0) {
            Some(&now) if now != want => {
                if let Err(e) = self.poller.reregister(t, want) {
                    log::warn!("engine: watching token {}: {e}", t.0);
                }
                self.watched.insert(t.0, want);
            }
            _ => {}
        }
    }

    // ---- streams --------------------------------------------------------

    /// Hands `stream` to `client` with the message `make` builds for the
    /// stream's id and path: the kernel socket itself for kernel TCP, else
    /// one end of a new socketpair whose other end the engine carries.
    fn hand_over(
        &mut self,
        client: u32,
        stream: Stream,
        make: impl FnOnce(u32, xsock_attach::PathKind, u32) -> Msg<'static>,
        req: Option<u32>,
    ) {
        let id = self.new_id();
        // A non-blocking connect's: carried on the program's socketpair
        // whatever the path (dropped, so hung up, if refused below).
        let dial = req.and_then(|r| self.dials.remove(&(client, r)));
        let (pid, ok, wants_rings) = match self.clients.get(&client) {
            Some(c) => (c.pid, c.streams.len() < self.cfg.max_streams_per_client, c.rings),
            None => return stream.abort(),
        };
        if !ok {
            let text = format!(
                "this process holds {} streams through the engine, its cap (xsock engine --max-streams)",
                self.cfg.max_streams_per_client
            );
            log::warn!("engine: client pid {pid}: {text}; refused one");
            if let Some(req) = req {
                self.connect_failed(client, req, xsock_attach::EndKind::Overloaded, &text);
            }
            return stream.abort();
        }
        if let Some(dial) = dial {
            return self.carry_dialed(client, id, pid, stream, dial, make);
        }
        match stream.into_kernel() {
            Ok(sock) => {
                self.totals.kernel_handed += 1;
                // The client's is the socket now.
                self.send_to(client, &make(id, xsock_attach::PathKind::Kernel, 0), Some(OwnedFd::from(sock)));
            }
            Err(stream) => {
                // A VC for the preload: its socket is handed over as it is,
                // no bridge (the session pump moves its bytes, and aborts it
                // if the process dies holding it).
                let stream = if self.clients.get(&client).is_some_and(|c| !c.ends) {
                    match stream.into_vc() {
                        Ok((sock, end)) => {
                            end.set_owner(pid);
                            if !self.send_to(
                                client,
                                &make(id, xsock_attach::PathKind::Link, 0),
                                Some(OwnedFd::from(sock)),
                            ) {
                                return;
                            }
                            self.totals.streams += 1;
                            self.totals.vcs_handed += 1;
                            if let Some(c) = self.clients.get_mut(&client) {
                                c.streams.insert(id);
                            }
                            self.ended.remove(&id);
                            self.direct.insert(id, Direct { client, pid, end });
                            self.prune_direct();
                            return;
                        }
                        Err(stream) => stream,
                    }
                } else {
                    stream
                };
                let path = match stream.path() {
                    xsock::Path::Tcp => xsock_attach::PathKind::Tcp,
                    _ => xsock_attach::PathKind::Link,
                };
                let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
                    Ok(p) => p,
                    Err(e) => {
                        log::warn!("engine: socketpair: {e} (raise the engine's open-file limit)");
                        if let Some(req) = req {
                            let text = format!(
                                "the host engine is out of descriptors ({e}): raise its open-file limit \
                                 (LimitNOFILE=, ulimit -Hn)"
                            );
                            self.send_to(
                                client,
                                &Msg::Failed { req, kind: xsock_attach::EndKind::Overloaded, text: &text },
                                None,
                            );
                        }
                        return stream.abort();
                    }
                };
                let mut fds = vec![OwnedFd::from(theirs)];
                let mut rings = None;
                if wants_rings {
                    match bridge::Rings::create(self.cfg.ring_bytes) {
                        Ok((r, fd)) => {
                            rings = Some(r);
                            fds.push(fd);
                        }
                        Err(e) => {
                            log::warn!("engine: a stream's shared rings: {e}");
                            if let Some(req) = req {
                                let text = format!("the host engine could not make the stream's shared rings: {e}");
                                self.send_to(
                                    client,
                                    &Msg::Failed { req, kind: xsock_attach::EndKind::Overloaded, text: &text },
                                    None,
                                );
                            }
                            return stream.abort();
                        }
                    }
                }
                let ring = if rings.is_some() { self.cfg.ring_bytes as u32 } else { 0 };
                if !self.send_to(client, &make(id, path, ring), fds) {
                    return stream.abort();
                }
                self.carry(client, id, pid, stream, ours, rings);
            }
        }
    }

    /// A non-blocking connect succeeded: answered [`Msg::Dialed`] first,
    /// then the filler goes (the program's descriptor turns writable with
    /// the answer already waiting), and the stream is carried on the
    /// program's socketpair, whatever its path.
    fn carry_dialed(
        &mut self,
        client: u32,
        id: u32,
        pid: i32,
        stream: Stream,
        dial: Dial,
        make: impl FnOnce(u32, xsock_attach::PathKind, u32) -> Msg<'static>,
    ) {
        // (A virtual connection reads a socket, but is no kernel TCP
        // stream: it is told as the link, as when handed over.)
        let path = match stream.path() {
            xsock::Path::Tcp => xsock_attach::PathKind::Tcp,
            xsock::Path::Kernel if !stream.is_virtual() => xsock_attach::PathKind::Kernel,
            _ => xsock_attach::PathKind::Link,
        };
        let Msg::Connected { req, local, peer, .. } = make(id, path, 0) else {
            unreachable!("a connect's answer is Connected")
        };
        if !self.send_to(client, &Msg::Dialed { req, stream: id, path, local, peer }, None) {
            return stream.abort();
        }
        let Dial { pair, filler } = dial;
        if let Err(e) = bridge::discard(&pair, filler as usize, &mut self.buf) {
            log::warn!("engine: pid {pid}'s connect: its filler: {e}; the stream is reset");
            return stream.abort();
        }
        self.carry(client, id, pid, stream, pair, None);
    }

    /// Carries `stream` on `pair` (the engine's end of the client's
    /// socketpair) from now on.
    fn carry(
        &mut self,
        client: u32,
        id: u32,
        pid: i32,
        stream: Stream,
        pair: std::os::unix::net::UnixStream,
        rings: Option<bridge::Rings>,
    ) {
        let spin = (self.cfg.poll == PollMode::Busy).then_some(HOT);
        let bridge = match Bridge::new(client, stream, pair, rings, spin) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("engine: {e}");
                return;
            }
        };
        self.totals.streams += 1;
        if let Some(c) = self.clients.get_mut(&client) {
            c.streams.insert(id);
        }
        // A bad end kept under a reused id is no longer this one's.
        self.ended.remove(&id);
        self.carried.insert(id, Carried { bridge, pid, released: false });
        self.pump(id, false);
    }

    /// A connect of `client`'s (request `req`) failed: answered, and a
    /// non-blocking connect's socketpair end dropped after the answer (so
    /// the program finds the reason when its descriptor hangs up).
    pub(crate) fn connect_failed(&mut self, client: u32, req: u32, kind: xsock_attach::EndKind, text: &str) {
        self.send_to(client, &Msg::Failed { req, kind, text }, None);
        drop(self.dials.remove(&(client, req)));
    }

    /// Moves a carried stream's bytes and acts on how it stands.
    /// `pair_event`: the poller reported the socketpair (doorbells or a
    /// hang-up to read).
    fn pump(&mut self, id: u32, pair_event: bool) {
        let mut pair_event = pair_event;
        loop {
            let Some(c) = self.carried.get_mut(&id) else { return };
            let outcome = c.bridge.pump(&mut self.pool, std::mem::take(&mut pair_event));
            log::trace!("engine: pump {id}: {outcome:?} {}", c.bridge.describe());
            match outcome {
                Outcome::Running(w) => {
                    if w.again && !self.again.contains(&id) {
                        self.again.push(id);
                    }
                    let pair_i = interest(w.pair_read, w.pair_write);
                    let stream_i = interest(w.stream_read, w.stream_write);
                    // Field by field: the registrations borrow the bridge.
                    let (poller, watched) = (&mut self.poller, &mut self.watched);
                    let (pt, st) = (token(id, kind::PAIR), token(id, kind::STREAM));
                    watch(poller, watched, pt, pair_i, |p, i| p.register_fd(c.bridge.pair.as_fd(), pt, i));
                    watch(poller, watched, st, stream_i, |p, i| p.register(&c.bridge.stream, st, i));
                    return;
                }
                Outcome::Done => return self.drop_carried(id, None),
                Outcome::Failed(end) => {
                    let (client, pid) = (c.bridge.client, c.pid);
                    if self.clients.get(&client).is_none_or(|cl| !cl.ends) {
                        // Kept before the socketpair closes, so the read
                        // that finds the end can ask how it came (the
                        // preload takes no Ended, and lets go of the
                        // connection it connected on).
                        self.remember_end(id, pid, end.clone());
                    }
                    self.send_to(client, &Msg::Ended { stream: id, kind: end.kind, text: &end.text }, None);
                    return self.drop_carried(id, None);
                }
                Outcome::ClientClosed => {
                    let (client, pid, released) = (c.bridge.client, c.pid, c.released);
                    // A Close sent just before the hang-up may still wait
                    // in the control socket: read it first.
                    if !released && self.clients.contains_key(&client) {
                        self.serve_client(client);
                    }
                    let Some(c) = self.carried.get_mut(&id) else { return };
                    if c.released || process_lives(pid) {
                        c.bridge.client_closed();
                        continue;
                    }
                    log::info!("engine: pid {pid} went away with stream {id} open; resetting its peer");
                    self.totals.process_gone_resets += 1;
                    return self.drop_carried(id, Some(Gone));
                }
            }
        }
    }

    /// Lets go of the handed-over VCs whose session ended them: their
    /// bytes join the totals, a bad end is kept for the process to ask.
    pub(crate) fn prune_direct(&mut self) {
        let done: Vec<u32> =
            self.direct.iter().filter(|(_, d)| std::sync::Arc::strong_count(&d.end) == 1).map(|(id, _)| *id).collect();
        for id in done {
            let Some(d) = self.direct.remove(&id) else { continue };
            let (to_net, to_app) = d.end.moved();
            self.totals.moved.to_net += to_net;
            self.totals.moved.to_app += to_app;
            if let Some(c) = self.clients.get_mut(&d.client) {
                c.streams.remove(&id);
            }
            if let Some(e) = d.end.end_of() {
                self.remember_end(id, d.pid, End::of(&e));
            }
        }
    }

    fn remember_end(&mut self, id: u32, pid: i32, end: End) {
        log::debug!("engine: stream {id} of pid {pid} ended badly: {}", end.text);
        if self.ended.insert(id, (pid, end)).is_none() {
            self.ended_order.push_back(id);
        }
        while self.ended_order.len() > ENDED_KEPT {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    fn drop_carried(&mut self, id: u32, gone: Option<Gone>) {
        self.unwatch(token(id, kind::PAIR));
        self.unwatch(token(id, kind::STREAM));
        let Some(mut c) = self.carried.remove(&id) else { return };
        c.bridge.release(&mut self.pool);
        let m = c.bridge.moved;
        self.totals.moved.to_net += m.to_net;
        self.totals.moved.to_app += m.to_app;
        self.totals.bells += c.bridge.bells;
        if let Some(cl) = self.clients.get_mut(&c.bridge.client) {
            cl.streams.remove(&id);
        }
        if gone.is_some() {
            c.bridge.stream.abort_process_gone();
        }
        // Otherwise dropping the stream closes it gracefully (or it has
        // failed already).
    }

    fn advance_connect(&mut self, id: u32) {
        let Some(mut p) = self.connecting.remove(&id) else { return };
        match p.stream.poll_connect() {
            Ok(false) => {
                self.connecting.insert(id, p);
            }
            Ok(true) => {
                self.unwatch(token(id, kind::STREAM));
                if let Some(c) = self.clients.get_mut(&p.client) {
                    c.streams.remove(&id);
                }
                let (req, mut local, mut peer) = (p.req, p.stream.local_addr(), p.stream.peer_addr());
                if let (Some(shown), Some(o)) = (p.shown, &self.overlay) {
                    (local, peer) = (SocketAddrV4::new(o.vaddr(), local.port()), shown);
                }
                self.hand_over(
                    p.client,
                    p.stream,
                    |stream, path, ring| Msg::Connected { req, stream, path, local, peer, ring },
                    Some(req),
                );
            }
            Err(e) => {
                self.unwatch(token(id, kind::STREAM));
                if let Some(c) = self.clients.get_mut(&p.client) {
                    c.streams.remove(&id);
                }
                self.totals.failed_connects += 1;
                let end = End::of(&e);
                self.connect_failed(p.client, p.req, end.kind, &end.text);
            }
        }
    }

    fn accept_streams(&mut self, id: u32) {
        loop {
            let Some(l) = self.listens.get(&id) else { return };
            let client = l.client;
            match l.listener.try_accept_tagged() {
                Ok((s, tag)) => {
                    let (mut local, mut peer) = (s.local_addr(), s.peer_addr());
                    if tag.is_none() && self.overlay.as_ref().is_some_and(|o| o.node.is_lan_relay(*peer.ip())) {
                        // A relay delivering by a LAN stream (its preamble
                        // would reach the program as bytes): refused; the
                        // engine attaches to every relay of its LAN.
                        log::warn!(
                            "engine: relay {} opened a LAN stream to port {}; refused (the engine takes virtual \
                             connections over its relay sessions, and attaches to a new relay within 5 s)",
                            peer.ip(),
                            local.port()
                        );
                        s.abort();
                        continue;
                    }
                    // A virtual connection: it shows the opener's virtual
                    // address (a VC has no source port: one is made up).
                    if let (Some(src), Some(o)) = (tag, &mut self.overlay) {
                        let from = o.vaddr_of(xsock::overlay::NodeId(src));
                        (local, peer) =
                            (SocketAddrV4::new(o.vaddr(), local.port()), SocketAddrV4::new(from, vc_port(id)));
                    }
                    self.hand_over(
                        client,
                        s,
                        |stream, path, ring| Msg::Accepted { listen: id, stream, path, local, peer, ring },
                        None,
                    );
                }
                Err(Error::WouldBlock) => return,
                Err(e) => {
                    log::warn!("engine: accepting on listener {id}: {e}");
                    return;
                }
            }
        }
    }

    /// Stops: every client told, every carried stream reset, the socket
    /// file removed (the lock goes with the process).
    fn shutdown(&mut self, why: &str) {
        log::info!(
            "xsock engine for {}: shutting down ({} clients, {} streams)",
            self.cfg.iface,
            self.clients.len(),
            self.carried.len()
        );
        let ids: Vec<u32> = self.carried.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.carried.get(&id) {
                let client = c.bridge.client;
                self.send_to(
                    client,
                    &Msg::Ended { stream: id, kind: xsock_attach::EndKind::Shutdown, text: why },
                    None,
                );
            }
            self.unwatch(token(id, kind::PAIR));
            self.unwatch(token(id, kind::STREAM));
            if let Some(mut c) = self.carried.remove(&id) {
                c.bridge.release(&mut self.pool);
                c.bridge.stream.abort();
            }
        }
        for (_, p) in self.connecting.drain() {
            p.stream.abort();
        }
        self.listens.clear();
        for c in self.clients.values() {
            let _ = unix::shutdown(c.ctl.as_fd());
        }
        self.clients.clear();
        let _ = std::fs::remove_file(self.place.socket());
        // Let the runtime tell peers (resets go out on the next passes).
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            if self.rt.poll().unwrap_or(0) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.place.socket());
        if let Some(l) = self.lock.take() {
            l.remove();
        }
    }
}

/// The interface's lock. A killed engine's lock is free once the kernel
/// has closed all its descriptors, which can take a moment after its
/// control sockets hang up (the AF_XDP socket is torn down first): a
/// holder that is exiting is waited for, up to 3 s.
/// The port a virtual connection shows as its far end's (it has none):
/// one of the dynamic range, by the stream's id.
fn vc_port(id: u32) -> u16 {
    49152 + (id % 16384) as u16
}

fn take_lock(place: &Place, iface: &str) -> Result<LockFile, EngineError> {
    use xsock_nic::{lockfile::LockError, sys::ProcessState};
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match LockFile::acquire(&place.lock()) {
            Ok(l) => return Ok(l),
            Err(LockError::Held { pid: Some(pid), .. })
                if Instant::now() < deadline && xsock_nic::sys::process_state(pid as i32) != ProcessState::Alive =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => return Err(EngineError::Running { iface: iface.to_owned(), source }),
        }
    }
}

/// Sets what `t` is watched for (`None`: not at all); `register` adds the
/// source the first time. `watched` holds what each token is watched for.
fn watch(
    poller: &mut Poller,
    watched: &mut HashMap<usize, Interest>,
    t: Token,
    want: Option<Interest>,
    register: impl FnOnce(&mut Poller, Interest) -> Result<(), Error>,
) {
    let now = watched.get(&t.0).copied();
    if now == want {
        return;
    }
    let r = match (now, want) {
        (None, Some(i)) => register(poller, i),
        (Some(_), Some(i)) => poller.reregister(t, i),
        (Some(_), None) => poller.deregister(t),
        (None, None) => Ok(()),
    };
    if let Err(e) = r {
        log::warn!("engine: watching token {}: {e}", t.0);
    }
    match want {
        Some(i) => watched.insert(t.0, i),
        None => watched.remove(&t.0),
    };
}

/// Marks a process that went away.
struct Gone;

fn interest(read: bool, write: bool) -> Option<Interest> {
    match (read, write) {
        (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Some(Interest::READABLE),
        (false, true) => Some(Interest::WRITABLE),
        (false, false) => None,
    }
}

/// Whether `pid` closing a stream is an orderly end: alive, or exiting
/// normally. Killed, or already reaped without having let go of the
/// stream: the process went away.
fn process_lives(pid: i32) -> bool {
    use xsock_nic::sys::ProcessState;
    matches!(xsock_nic::sys::process_state(pid), ProcessState::Alive | ProcessState::Exiting { .. })
}

fn nix_uid() -> u32 {
    xsock_nic::sys::effective_uid()
}

fn create_dir(place: &Place) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    if !place.dir.exists() {
        std::fs::create_dir_all(&place.dir).map_err(io_err(format!(
            "create {} (run as root, or point XSOCK_RUN_DIR at a directory you may write)",
            place.dir.display()
        )))?;
        let _ = std::fs::set_permissions(&place.dir, std::fs::Permissions::from_mode(0o755));
    }
    Ok(())
}

/// Owner and group read-write, others nothing (root attaches anyway).
fn set_socket_access(path: &std::path::Path, gid: Option<u32>) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(io_err(format!("chgrp {} {}", g, path.display())))?;
    }
    Ok(())
}

/// A group's id from /etc/group (or a number).
fn group_id(name: &str) -> Result<u32, EngineError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(io_err("read /etc/group"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let _ = f.next();
            let gid = f.next()?.parse::<u32>().ok()?;
            (n == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            EngineError::Config(format!("--group {name}: no such group in /etc/group (create it: `groupadd {name}`)"))
        })
}
