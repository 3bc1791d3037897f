//! [`Poller`]: which of these thousand streams can I read or write now,
//! without a thread per stream.
//!
//! In the style of mio, but level-triggered like poll(2): register streams
//! and listeners with a [`Token`] and an [`Interest`], then
//! [`Poller::poll`] fills [`Events`] with those that are ready, and keeps
//! reporting a stream for as long as it stays ready. It costs what is
//! ready, not what is registered: every connection's notifier queues its
//! token when a frame (or a timer, or an accept) changes it, and a poll
//! looks only at queued tokens, at the ones it reported last time (still
//! ready?), at connects in progress, and at kernel sockets through one
//! epoll set.
//!
//! ```no_run
//! use xsock::{Interest, Poller, Runtime, Stream, Token, Events};
//! # fn main() -> Result<(), xsock::Error> {
//! let rt = Runtime::builder().interface("eth0").build()?;
//! let mut streams = Vec::new();
//! let mut poller = Poller::new(&rt)?;
//! for (i, peer) in ["10.0.0.2:7000", "10.0.0.3:7000"].iter().enumerate() {
//!     let s = Stream::connect_start(&rt, peer.parse().unwrap(), Default::default())?; // returns at once
//!     poller.register(&s, Token(i), Interest::READABLE | Interest::WRITABLE)?;
//!     streams.push(s);
//! }
//! let mut events = Events::with_capacity(1024);
//! loop {
//!     poller.poll(&mut events, None)?;
//!     for e in events.iter() {
//!         let s = &mut streams[e.token().0];
//!         if !s.poll_connect()? { continue; }         // connected now, or still on its way
//!         if e.is_readable() { let mut buf = [0u8; 4096]; let _ = s.try_recv(&mut buf); }
//!     }
//! }
//! # }
//! ```
//!
//! With a datapath thread, [`Poller::as_fd`] is a descriptor to put in the
//! application's own poll/epoll/select set: readable when a registered
//! source has something (then call `poll` with a zero timeout). With inline
//! driving, `poll` runs the datapath itself while it waits.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd, BorrowedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xsock_nic::sys::{Epoll, EpollReady, EventFd};

use crate::{
    Error, Listener, PollMode, Runtime, Stream,
    connect::{Pending, Progress, Source},
    listener::ListenShared,
    notify::Notifier,
    runtime::Engine,
    stream::PollSource,
};

/// The caller's name for a registered stream or listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub usize);

/// What to be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest(u8);

impl Interest {
    /// Bytes (or the end of the stream, or an error) to read; for a
    /// listener, a connection to accept.
    pub const READABLE: Interest = Interest(1);
    /// Room to write; for a connecting stream, that the connect finished.
    pub const WRITABLE: Interest = Interest(2);

    fn readable(self) -> bool {
        self.0 & 1 != 0
    }

    fn writable(self) -> bool {
        self.0 & 2 != 0
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        Interest(self.0 | rhs.0)
    }
}

/// One ready source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    token: Token,
    readable: bool,
    writable: bool,
    closed: bool,
}

impl Event {
    /// Which source.
    pub fn token(&self) -> Token {
        self.token
    }

    /// A read will not block (it may return the end of the stream or an
    /// error; for a listener, an accept will not block).
    pub fn is_readable(&self) -> bool {
        self.readable
    }

    /// A write will not block (for a connecting stream: the connect is
    /// over, call `poll_connect`).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The connection has ended (gracefully or not) or the connect failed:
    /// the next call on the stream says how.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Ready sources, filled by [`Poller::poll`].
#[derive(Debug, Default)]
pub struct Events(Vec<Event>);

impl Events {
    /// Room for `n` events without allocating.
    pub fn with_capacity(n: usize) -> Events {
        Events(Vec::with_capacity(n))
    }

    /// The events.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Empties the list.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// What notifiers push tokens into (shared with every watched notifier).
#[derive(Debug)]
pub(crate) struct PollerShared {
    queued: Mutex<HashSet<usize>>,
    nonempty: AtomicBool,
    /// Rung when a token is queued while someone may sleep on the fd.
    doorbell: EventFd,
    /// Ring the doorbell on every push (someone sleeps on it, or the
    /// application holds the fd).
    ring: AtomicBool,
    /// The application holds the fd ([`Poller::as_fd`]): always ring.
    external: AtomicBool,
}

impl PollerShared {
    pub fn push(&self, token: usize) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        q.insert(token);
        let was = self.nonempty.swap(true, Ordering::SeqCst);
        drop(q);
        if !was && self.ring.load(Ordering::SeqCst) {
            self.doorbell.signal();
        }
    }

    fn take(&self, into: &mut Vec<usize>) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        into.extend(q.drain());
        self.nonempty.store(false, Ordering::SeqCst);
    }
}

enum What {
    Stream(Source),
    Connecting(Arc<Mutex<Pending>>),
    Listener(Arc<ListenShared>),
    Failed,
}

struct Registration {
    what: What,
    interest: Interest,
    /// The notifier we watch (its bumps queue our token).
    notifier: Option<Arc<Notifier>>,
    /// A kernel socket in the epoll set (a stream's, or a connect's).
    in_epoll: Option<RawFd>,
}

/// The token the doorbell has in the epoll set.
const DOORBELL: u64 = u64::MAX;

/// Readiness of many streams at once (see the module documentation).
pub struct Poller {
    rt: Runtime,
    shared: Arc<PollerShared>,
    regs: HashMap<usize, Registration>,
    epoll: Epoll,
    /// Tokens reported last time: looked at again (level-triggered).
    level: Vec<usize>,
    candidates: Vec<usize>,
    kernel_ready: Vec<EpollReady>,
    /// Tokens whose connect is under way (looked at on every poll).
    connecting: HashSet<usize>,
    /// Registrations with a kernel socket in the epoll set.
    watched_fds: usize,
    /// Scratch: link connections' readiness for one collect.
    link_ready: Vec<(usize, (bool, bool, bool))>,
    /// Waits sleep whatever the runtime's poll mode ([`Poller::sleeping`]).
    sleeps: bool,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").field("registered", &self.regs.len()).finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller for streams and listeners of `rt`.
    pub fn new(rt: &Runtime) -> Result<Poller, Error> {
        let shared = Arc::new(PollerShared {
            queued: Mutex::new(HashSet::new()),
            nonempty: AtomicBool::new(false),
            doorbell: EventFd::new().map_err(Error::Io)?,
            ring: AtomicBool::new(false),
            external: AtomicBool::new(false),
        });
        let epoll = Epoll::new().map_err(Error::Io)?;
        epoll.add(shared.doorbell.fd(), DOORBELL, true, false).map_err(Error::Io)?;
        Ok(Poller {
            rt: rt.clone(),
            shared,
            regs: HashMap::new(),
            epoll,
            level: Vec::new(),
            candidates: Vec::new(),
            kernel_ready: Vec::new(),
            connecting: HashSet::new(),
            watched_fds: 0,
            link_ready: Vec::new(),
            sleeps: false,
        })
    }

    /// A poller whose waits sleep whatever the runtime's poll mode: for a
    /// helper thread beside the application's (an overlay session's pump),
    /// which must not spin a core away from it.
    pub(crate) fn sleeping(rt: &Runtime) -> Result<Poller, Error> {
        let mut p = Poller::new(rt)?;
        p.sleeps = true;
        Ok(p)
    }

    /// Watches `stream` as `token` for `interest`. A token names one source
    /// at a time; deregister before dropping the stream.
    pub fn register(&mut self, stream: &Stream, token: Token, interest: Interest) -> Result<(), Error> {
        if self.regs.contains_key(&token.0) {
            return Err(Error::Config(format!("token {} is already registered with this poller", token.0)));
        }
        let reg = match stream.poll_source() {
            PollSource::Ready(src, notifier) => {
                Registration { what: What::Stream(src), interest, notifier, in_epoll: None }
            }
            PollSource::Connecting(p, notifier) => {
                Registration { what: What::Connecting(p), interest, notifier: Some(notifier), in_epoll: None }
            }
            PollSource::Failed => Registration { what: What::Failed, interest, notifier: None, in_epoll: None },
        };
        self.insert(token, reg)
    }

    /// Watches a plain descriptor (a socket, pipe or eventfd of the
    /// caller's) as `token`, in the same set as the streams: readiness as
    /// epoll reports it. The descriptor must stay open while registered.
    pub fn register_fd(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> Result<(), Error> {
        if self.regs.contains_key(&token.0) {
            return Err(Error::Config(format!("token {} is already registered with this poller", token.0)));
        }
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        self.insert(
            token,
            Registration { what: What::Stream(Source::Kernel(raw)), interest, notifier: None, in_epoll: None },
        )
    }

    /// Watches `listener` as `token`: readable when a connection waits.
    pub fn register_listener(&mut self, listener: &Listener, token: Token) -> Result<(), Error> {
        if self.regs.contains_key(&token.0) {
            return Err(Error::Config(format!("token {} is already registered with this poller", token.0)));
        }
        let shared = listener.shared().clone();
        let notifier = Some(shared.signal.clone());
        self.insert(
            token,
            Registration { what: What::Listener(shared), interest: Interest::READABLE, notifier, in_epoll: None },
        )
    }

    fn insert(&mut self, token: Token, mut reg: Registration) -> Result<(), Error> {
        if let What::Stream(src @ (Source::Kernel(_) | Source::Rings(..))) = &reg.what {
            let (fd, interest) = epoll_interest(src, reg.interest);
            self.epoll_add(fd, token.0, interest)?;
            reg.in_epoll = Some(fd);
            self.watched_fds += 1;
        }
        if matches!(reg.what, What::Connecting(_)) {
            self.connecting.insert(token.0);
        }
        if let Some(n) = &reg.notifier {
            n.watch(&self.shared, token.0);
        } else {
            self.shared.push(token.0);
        }
        self.regs.insert(token.0, reg);
        Ok(())
    }

    /// Changes what `token` is watched for.
    pub fn reregister(&mut self, token: Token, interest: Interest) -> Result<(), Error> {
        let reg = self.regs.get_mut(&token.0).ok_or_else(|| not_registered(token))?;
        reg.interest = interest;
        if let Some(fd) = reg.in_epoll {
            let interest = match &reg.what {
                What::Stream(src) => epoll_interest(src, interest).1,
                _ => interest,
            };
            self.epoll.modify_raw(fd, token.0 as u64, interest.readable(), interest.writable()).map_err(Error::Io)?;
        }
        self.shared.push(token.0);
        Ok(())
    }

    /// Stops watching `token`.
    pub fn deregister(&mut self, token: Token) -> Result<(), Error> {
        let reg = self.regs.remove(&token.0).ok_or_else(|| not_registered(token))?;
        if let Some(n) = &reg.notifier {
            n.unwatch(&self.shared, token.0);
        }
        if let Some(fd) = reg.in_epoll {
            self.epoll.delete(fd);
            self.watched_fds -= 1;
        }
        self.connecting.remove(&token.0);
        // A stale token in `level` is skipped: it is not registered.
        Ok(())
    }

    /// Sources registered.
    pub fn len(&self) -> usize {
        self.regs.len()
    }

    /// Nothing registered.
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    fn epoll_add(&self, fd: RawFd, token: usize, interest: Interest) -> Result<(), Error> {
        self.epoll.add_raw(fd, token as u64, interest.readable(), interest.writable()).map_err(Error::Io)
    }

    /// Fills `events` with the registered sources that are ready, waiting
    /// up to `timeout` (`None`: until one is) if none is now. Returns how
    /// many. With inline driving, runs the datapath while it waits.
    pub fn poll(&mut self, events: &mut Events, timeout: Option<Duration>) -> Result<usize, Error> {
        events.clear();
        let deadline = timeout.map(|t| Instant::now() + t);
        let inline = matches!(self.rt.link().map(|l| &l.engine), Some(Engine::Inline(_)));
        loop {
            if inline {
                // The caller works through the events between polls: take
                // everything the rings hold now, not one pass's 64 frames
                // (unless another thread of ours drives it now).
                self.rt.try_poll_drain()?;
            }
            self.collect(events)?;
            if !events.is_empty() {
                return Ok(events.len());
            }
            let now = Instant::now();
            let mut wait = deadline.map(|d| d.saturating_duration_since(now));
            if wait == Some(Duration::ZERO) {
                return Ok(0);
            }
            if !self.connecting.is_empty() {
                // A connect may fail on its deadline, or wait on the kernel
                // resolving a neighbour: look again soon.
                wait = Some(wait.map_or(Duration::from_millis(1), |w| w.min(Duration::from_millis(1))));
            }
            self.wait(inline, wait)?;
        }
    }

    fn wait(&mut self, inline: bool, wait: Option<Duration>) -> Result<(), Error> {
        let mut wait = wait;
        if inline {
            let cap = wait.unwrap_or(Duration::from_millis(100));
            if self.rt.try_idle_with(Some(cap), &[self.epoll.fd()], self.sleeps)? {
                return Ok(());
            }
            // Another thread drives the datapath (and wakes us through the
            // notifiers): wait as with a datapath thread, briefly, in case
            // it stops driving.
            wait = Some(cap.min(crate::runtime::OTHER_DRIVER));
        }
        if self.rt.poll_mode() == PollMode::Busy && !self.sleeps {
            let until = wait.map(|w| Instant::now() + w);
            let mut n = 0u32;
            while !self.shared.nonempty.load(Ordering::SeqCst) {
                std::hint::spin_loop();
                n = n.wrapping_add(1);
                if n.is_multiple_of(256) {
                    if self.watched_fds > 0 {
                        self.epoll.wait(&mut self.kernel_ready, Some(Duration::ZERO)).map_err(Error::Io)?;
                        if !self.kernel_ready.is_empty() {
                            return Ok(());
                        }
                    }
                    if until.is_some_and(|u| Instant::now() >= u) {
                        return Ok(());
                    }
                }
            }
            return Ok(());
        }
        self.shared.ring.store(true, Ordering::SeqCst);
        if !self.shared.nonempty.load(Ordering::SeqCst) {
            self.epoll.wait(&mut self.kernel_ready, wait).map_err(Error::Io)?;
        }
        if !self.shared.external.load(Ordering::SeqCst) {
            self.shared.ring.store(false, Ordering::SeqCst);
        }
        self.shared.doorbell.clear();
        Ok(())
    }

    /// Looks at everything that may be ready and reports what is.
    fn collect(&mut self, events: &mut Events) -> Result<(), Error> {
        self.candidates.clear();
        self.shared.take(&mut self.candidates);
        self.candidates.append(&mut self.level);
        self.candidates.extend(self.connecting.iter().copied());
        // Kernel sockets: what epoll says (it is level-triggered too).
        let mut kernel: HashMap<usize, (bool, bool, bool)> = HashMap::new();
        if self.watched_fds > 0 {
            let mut ready = std::mem::take(&mut self.kernel_ready);
            if ready.is_empty() {
                self.epoll.wait(&mut ready, Some(Duration::ZERO)).map_err(Error::Io)?;
            }
            for e in ready.drain(..) {
                if e.token == DOORBELL {
                    continue;
                }
                kernel.insert(e.token as usize, (e.ready.readable, e.ready.writable, e.ready.error));
                self.candidates.push(e.token as usize);
            }
            self.kernel_ready = ready;
        }
        self.candidates.sort_unstable();
        self.candidates.dedup();
        let candidates = std::mem::take(&mut self.candidates);
        // Link connections under one lock of the endpoint, not one each.
        let mut link = std::mem::take(&mut self.link_ready);
        link.clear();
        if let Some(l) = self.rt.link() {
            let mut ep = None;
            for &t in &candidates {
                if let Some(Registration { what: What::Stream(Source::Link(cid)), .. }) = self.regs.get(&t) {
                    let ep = ep.get_or_insert_with(|| l.shared.lock());
                    link.push((t, link_state(ep.connection(*cid))));
                }
            }
        }
        let mut link_next = link.iter().peekable();
        for &t in &candidates {
            let pre = link_next.next_if(|(lt, _)| *lt == t).map(|&(_, st)| st);
            let state = match pre {
                Some(st) => Some(st),
                None => self.readiness(t, &kernel)?,
            };
            let Some((r, w, c)) = state else { continue };
            let Some(reg) = self.regs.get(&t) else { continue };
            let (r, w) = (r && reg.interest.readable(), w && reg.interest.writable());
            if r || w || c {
                events.0.push(Event { token: Token(t), readable: r || c, writable: w, closed: c });
                self.level.push(t);
            } else if reg.interest.writable() && matches!(reg.what, What::Stream(Source::Link(_) | Source::Tcp(_))) {
                // A blocked writer is looked at on every poll, not only
                // when its notifier is bumped: space comes back with
                // acknowledgements and credit in whatever order frames
                // arrive, and a writer must never depend on having been
                // told of the one moment it was free (a host engine stalled
                // for good on such a stream).
                self.level.push(t);
            }
        }
        self.candidates = candidates;
        self.link_ready = link;
        Ok(())
    }

    /// (readable, writable, closed) of `token` now.
    fn readiness(
        &mut self,
        token: usize,
        kernel: &HashMap<usize, (bool, bool, bool)>,
    ) -> Result<Option<(bool, bool, bool)>, Error> {
        let Some(reg) = self.regs.get_mut(&token) else { return Ok(None) };
        let state = match &reg.what {
            What::Failed => (true, true, true),
            What::Listener(l) => (l.waiting() > 0, false, false),
            What::Stream(Source::Kernel(_)) => kernel.get(&token).copied().unwrap_or_default(),
            What::Stream(Source::Rings(_, rings)) => match rings.upgrade() {
                Some(r) => r.readiness(reg.interest.readable(), reg.interest.writable()),
                // The stream is gone (its owner dropped it while registered).
                None => (true, true, true),
            },
            What::Stream(Source::Link(cid)) => link_readiness(&self.rt, *cid),
            What::Stream(Source::Tcp(h)) => tcp_readiness(&self.rt, *h),
            What::Connecting(p) => {
                let p = p.clone();
                let mut pending = p.lock().unwrap_or_else(|e| e.into_inner());
                let progress = pending.advance(&self.rt);
                let kernel_fd = pending.kernel_fd();
                drop(pending);
                match progress {
                    Progress::Waiting => {
                        // A kernel connect reports through epoll: watch its
                        // socket for writability while it lasts.
                        match (kernel_fd, reg.in_epoll) {
                            (Some(fd), None) => {
                                self.epoll.add_raw(fd, token as u64, false, true).map_err(Error::Io)?;
                                reg.in_epoll = Some(fd);
                                self.watched_fds += 1;
                            }
                            (Some(fd), Some(old)) if fd != old => {
                                self.epoll.delete(old);
                                self.epoll.add_raw(fd, token as u64, false, true).map_err(Error::Io)?;
                                reg.in_epoll = Some(fd);
                            }
                            _ => {}
                        }
                        (false, false, false)
                    }
                    // The connect finished: the stream takes it on its next
                    // call; from now on the poller watches the connection.
                    Progress::Ready(conn) => {
                        let src = crate::connect::source_of(&conn);
                        p.lock().unwrap_or_else(|e| e.into_inner()).put_back(conn);
                        self.settle(token, src)?;
                        (false, true, false)
                    }
                    Progress::Taken(src) => {
                        self.settle(token, src)?;
                        (false, true, false)
                    }
                    Progress::Failed(_) => {
                        if let Some(fd) = reg.in_epoll.take() {
                            self.epoll.delete(fd);
                            self.watched_fds -= 1;
                        }
                        reg.what = What::Failed;
                        self.connecting.remove(&token);
                        (true, true, true)
                    }
                }
            }
        };
        Ok(Some(state))
    }

    /// A connect under `token` finished as `src`: watch the connection.
    fn settle(&mut self, token: usize, src: Source) -> Result<(), Error> {
        let Some(reg) = self.regs.get_mut(&token) else { return Ok(()) };
        self.connecting.remove(&token);
        if let Some(fd) = reg.in_epoll.take() {
            self.epoll.delete(fd);
            self.watched_fds -= 1;
        }
        if let Source::Kernel(_) | Source::Rings(..) = src {
            let (fd, i) = epoll_interest(&src, reg.interest);
            self.epoll.add_raw(fd, token as u64, i.readable(), i.writable()).map_err(Error::Io)?;
            reg.in_epoll = Some(fd);
            self.watched_fds += 1;
        }
        reg.what = What::Stream(src);
        Ok(())
    }
}

impl AsFd for Poller {
    /// The poller as a descriptor (its epoll set, with a doorbell the
    /// datapath rings): readable when a registered source may be ready.
    /// For a runtime with a datapath thread; an inline-driven runtime must
    /// still be driven (call [`Poller::poll`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.external.store(true, Ordering::SeqCst);
        self.shared.ring.store(true, Ordering::SeqCst);
        if self.shared.nonempty.load(Ordering::SeqCst) {
            self.shared.doorbell.signal();
        }
        self.epoll.fd()
    }
}

/// The descriptor epoll watches for a kernel-carried source, and for what:
/// a ring stream's descriptor only ever says "look" (a doorbell or the
/// hang-up), so it is watched for reading whatever the caller wants.
fn epoll_interest(src: &Source, interest: Interest) -> (RawFd, Interest) {
    match src {
        Source::Rings(fd, _) => (*fd, Interest::READABLE),
        Source::Kernel(fd) => (*fd, interest),
        Source::Link(_) | Source::Tcp(_) => unreachable!("not in epoll"),
    }
}

fn not_registered(token: Token) -> Error {
    Error::Config(format!("token {} is not registered with this poller", token.0))
}

pub(crate) fn link_readiness(rt: &Runtime, cid: u64) -> (bool, bool, bool) {
    let Some(link) = rt.link() else { return (true, true, true) };
    link_state(link.shared.lock().connection(cid))
}

/// (readable, writable, closed) of a link connection (gone: all three).
fn link_state(c: Option<&xsock_reliable_link::Connection>) -> (bool, bool, bool) {
    match c {
        None => (true, true, true),
        Some(c) => {
            let closed = c.close_reason().is_some();
            (c.readable() > 0 || c.is_eof() || closed, c.send_space() > 0 || closed, closed)
        }
    }
}

pub(crate) fn tcp_readiness(rt: &Runtime, h: smoltcp::iface::SocketHandle) -> (bool, bool, bool) {
    let Some(tcp) = rt.tcp() else { return (true, true, true) };
    tcp.lock().readiness(h)
}
