//! A runtime attached to the host engine (`xsock engine`): the engine owns
//! the interface and every protocol; this process sends it requests over a
//! Unix seqpacket socket and gets each stream back as one end of a
//! socketpair (or, for kernel TCP, the kernel socket itself). Reads and
//! writes then go straight to that descriptor, so dup, fork, poll/epoll and
//! close behave as with any socket, and the process dying closes them all:
//! the engine sees the hang-up and resets the peers.
//!
//! One reader thread per attached runtime takes the engine's messages:
//! replies wake the request that waits for them, accepted connections go
//! to their listener's queue (and wake its notifier), and the reasons
//! streams ended are kept until the stream is dropped.

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use xsock_attach::{EndKind, Msg, PathKind, Place, TransportKind, VERSION, wire::MAX_MSG};
use xsock_nic::unix;

use crate::{Error, Path, Transport, notify::Notifier};

/// What the engine answered a request with.
pub(crate) enum Reply {
    Stream(Handed),
    Failed(EndKind, String),
    Listening { listen: u32, local: SocketAddrV4 },
    Status(String),
    Synced,
}

/// A stream the engine handed over.
pub(crate) struct Handed {
    pub stream: u32,
    pub path: PathKind,
    pub local: SocketAddrV4,
    pub peer: SocketAddrV4,
    pub fd: OwnedFd,
    /// The region of the stream's shared rings and each ring's bytes.
    pub ring: Option<(OwnedFd, u32)>,
}

#[derive(Default)]
struct ListenQueue {
    waiting: VecDeque<Handed>,
    signal: Option<Arc<Notifier>>,
}

#[derive(Default)]
struct State {
    replies: HashMap<u32, Reply>,
    /// Who to wake when a request's reply comes (a connect under way).
    waiters: HashMap<u32, Arc<Notifier>>,
    /// Requests whose asker went away: their replies are dropped (a
    /// handed stream's descriptor closes, which the engine sees).
    abandoned: std::collections::HashSet<u32>,
    listeners: HashMap<u32, ListenQueue>,
    ended: HashMap<u32, (EndKind, String)>,
    /// Why the engine is gone (its socket closed or broke).
    gone: Option<String>,
}

/// The connection to the engine, shared by the runtime, its streams and
/// the reader thread.
pub(crate) struct ClientShared {
    ctl: OwnedFd,
    state: Mutex<State>,
    cond: Condvar,
    next_req: AtomicU32,
    /// The interface the engine drives, its address and prefix.
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// The engine's pid.
    pub engine_pid: u32,
    pub socket: PathBuf,
    /// The process that attached (a forked child shares the control
    /// socket but not the reader thread: it must not use it).
    pid: u32,
}

/// The attached runtime's handle: stops the reader thread when dropped.
pub(crate) struct Client {
    pub shared: Arc<ClientShared>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // The reader's recvmsg returns 0 and it ends.
        let _ = unix::shutdown(self.shared.ctl.as_fd());
    }
}

/// Whether to go through a host engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineUse {
    /// Attach if an engine runs for the interface, else drive it here.
    #[default]
    Auto,
    /// Always drive the interface in this process.
    Never,
    /// Attach, or fail (no engine: an error naming how to start one).
    Require,
}

impl EngineUse {
    /// From `XSOCK_ENGINE` (`auto`, `off`, `require`); `None` if unset.
    pub fn from_env() -> Result<Option<EngineUse>, Error> {
        let Ok(v) = std::env::var("XSOCK_ENGINE") else { return Ok(None) };
        Ok(Some(match v.as_str() {
            "" | "auto" => EngineUse::Auto,
            "off" | "never" | "0" => EngineUse::Never,
            "require" | "on" | "1" => EngineUse::Require,
            other => {
                return Err(Error::Config(format!(
                    "XSOCK_ENGINE={other} is not a setting: use auto (attach if an engine runs), off (drive the \
                     interface in this process) or require"
                )));
            }
        }))
    }
}

/// Whether streams' bytes should cross shared rings (`XSOCK_ENGINE_RINGS`:
/// `on`, the default, or `off`: through the socketpair itself, for a
/// comparison or for code that reads the descriptor directly).
fn rings_from_env() -> Result<bool, Error> {
    match std::env::var("XSOCK_ENGINE_RINGS").as_deref() {
        Err(_) | Ok("" | "on" | "1") => Ok(true),
        Ok("off" | "0") => Ok(false),
        Ok(other) => Err(Error::Config(format!(
            "XSOCK_ENGINE_RINGS={other} is not a setting: use on (stream bytes cross shared rings) or off (they \
             cross the socketpair)"
        ))),
    }
}

/// The engine's place for `iface` in this network namespace.
pub(crate) fn place(iface: &str) -> Place {
    let netns = xsock_nic::sys::netns_id().map(|(_, ino)| ino).unwrap_or(0);
    Place::new(None, iface, netns)
}

/// How long a request waits for the engine beyond its own timeout.
const GRACE: Duration = Duration::from_secs(5);

impl Client {
    /// Attaches to the engine at `place`; `Ok(None)` if none runs there
    /// (no socket, or a stale one nobody listens on).
    pub fn attach(place: &Place) -> Result<Option<Client>, Error> {
        let path = place.socket();
        let ctl = match unix::seqpacket_connect(&path) {
            Ok(fd) => fd,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::Config(format!(
                    "the host engine's socket {} cannot be reached: {e} (is this user allowed to attach? the \
                     engine's --group admits a group)",
                    path.display()
                )));
            }
        };
        send(&ctl, &Msg::Hello { version: VERSION, rings: rings_from_env()?, ends: true })?;
        let mut buf = vec![0u8; MAX_MSG];
        let (n, fds) = recv_timeout(&ctl, &mut buf, Duration::from_secs(5))?;
        drop(fds);
        let welcome = Msg::parse(&buf[..n])
            .map_err(|e| Error::Protocol(format!("the host engine at {} sent {e}", path.display())))?;
        let (iface, addr, prefix, engine_pid) = match welcome {
            Msg::Welcome { version, engine_pid, iface, addr, prefix, .. } if version == VERSION => {
                (iface.to_owned(), addr, prefix, engine_pid)
            }
            Msg::Welcome { version, engine_pid, .. } => {
                return Err(Error::Config(format!(
                    "the host engine (pid {engine_pid}) speaks protocol version {version}, this library {VERSION}: \
                     run the same xsock version for both (restart the engine after an upgrade)"
                )));
            }
            Msg::Refused { reason } => return Err(Error::Config(format!("the host engine refused: {reason}"))),
            other => return Err(Error::Protocol(format!("the host engine answered hello with {other:?}"))),
        };
        // Every stream is a descriptor here: take what the hard limit allows.
        let _ = xsock_nic::sys::raise_nofile();
        let shared = Arc::new(ClientShared {
            ctl,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            next_req: AtomicU32::new(1),
            iface,
            addr,
            prefix,
            engine_pid,
            socket: path,
            pid: std::process::id(),
        });
        let reader = shared.clone();
        std::thread::Builder::new()
            .name("xsock-attach".into())
            .spawn(move || reader.read_loop(buf))
            .map_err(Error::Io)?;
        Ok(Some(Client { shared }))
    }
}

fn send(ctl: &OwnedFd, m: &Msg<'_>) -> Result<(), Error> {
    unix::send_with_fds(ctl.as_fd(), &m.emit(), &[]).map(|_| ()).map_err(Error::Io)
}

/// The first message, waited for at most `max`.
fn recv_timeout(ctl: &OwnedFd, buf: &mut [u8], max: Duration) -> Result<(usize, Vec<OwnedFd>), Error> {
    let ready =
        xsock_nic::sys::poll_fds(&[xsock_nic::sys::Interest { fd: ctl.as_fd(), read: true, write: false }], Some(max))
            .map_err(Error::Io)?;
    if ready.is_empty() {
        return Err(Error::TimedOut(format!("the host engine did not answer within {max:?}")));
    }
    let (n, fds) = unix::recv_with_fds(ctl.as_fd(), buf, 1).map_err(|e| Error::Protocol(e.to_string()))?;
    if n == 0 {
        return Err(Error::ConnectionReset("the host engine closed the connection at once".into()));
    }
    Ok((n, fds))
}

impl ClientShared {
    fn read_loop(self: Arc<Self>, mut buf: Vec<u8>) {
        let why = loop {
            let (n, mut fds) = match unix::recv_with_fds(self.ctl.as_fd(), &mut buf, 2) {
                Ok((0, _)) => break "its socket closed".to_owned(),
                Ok(r) => r,
                Err(unix::FdPassError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break e.to_string(),
            };
            let m = match Msg::parse(&buf[..n]) {
                Ok(m) => m,
                Err(e) => break format!("it sent {e}"),
            };
            if fds.len() != m.fds() {
                break format!("it sent {} descriptors with a message that takes {}", fds.len(), m.fds());
            }
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match m {
                Msg::Connected { req, stream, path, local, peer, ring } => {
                    let region = if ring > 0 { fds.pop().map(|f| (f, ring)) } else { None };
                    let fd = fds.pop().expect("counted");
                    self.deliver(&mut st, req, Reply::Stream(Handed { stream, path, local, peer, fd, ring: region }));
                }
                Msg::Failed { req, kind, text } => {
                    self.deliver(&mut st, req, Reply::Failed(kind, text.to_owned()));
                }
                Msg::Listening { req, listen, local } => {
                    self.deliver(&mut st, req, Reply::Listening { listen, local });
                }
                Msg::Synced { req } => {
                    self.deliver(&mut st, req, Reply::Synced);
                }
                Msg::StatusReply { req, json } => {
                    self.deliver(&mut st, req, Reply::Status(json.to_owned()));
                }
                Msg::Accepted { listen, stream, path, local, peer, ring } => {
                    let region = if ring > 0 { fds.pop().map(|f| (f, ring)) } else { None };
                    let fd = fds.pop().expect("counted");
                    let q = st.listeners.entry(listen).or_default();
                    q.waiting.push_back(Handed { stream, path, local, peer, fd, ring: region });
                    if let Some(s) = &q.signal {
                        s.notify();
                    }
                    continue;
                }
                Msg::Ended { stream, kind, text } => {
                    st.ended.insert(stream, (kind, text.to_owned()));
                    continue;
                }
                other => {
                    drop(st);
                    break format!("it sent {other:?}, which only a client sends");
                }
            }
            drop(st);
            self.cond.notify_all();
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.gone = Some(format!(
            "the host engine for {} (pid {}) went away ({why}); restart it (`xsock engine --iface {}`) and connect \
             again",
            self.iface, self.engine_pid, self.iface
        ));
        for q in st.listeners.values() {
            if let Some(s) = &q.signal {
                s.notify();
            }
        }
        for (_, w) in st.waiters.drain() {
            w.notify();
        }
        drop(st);
        self.cond.notify_all();
    }

    /// Files the reply to `req`: wakes who waits for it, or lets it go if
    /// the asker went away (a handed stream's descriptor closes, which the
    /// engine hears as an orderly close).
    fn deliver(&self, st: &mut State, req: u32, reply: Reply) {
        if st.abandoned.remove(&req) {
            if let Reply::Stream(h) = reply {
                let _ = send(&self.ctl, &Msg::Close { stream: h.stream });
            }
            return;
        }
        st.replies.insert(req, reply);
        if let Some(w) = st.waiters.remove(&req) {
            w.notify();
        }
    }

    /// Starts a connect through the engine: the reply wakes `signal` and
    /// waits for [`ClientShared::take_reply`].
    pub fn connect_begin(
        &self,
        addr: SocketAddrV4,
        transport: Transport,
        timeout: Duration,
        messages: bool,
        signal: Arc<Notifier>,
    ) -> Result<u32, Error> {
        self.same_process()?;
        let transport = transport_kind(transport);
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(why) = &st.gone {
                return Err(Error::ConnectionReset(why.clone()));
            }
            st.waiters.insert(req, signal);
        }
        if let Err(e) = send(&self.ctl, &Msg::Connect { req, addr, transport, messages, timeout_ms }) {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).waiters.remove(&req);
            return Err(self.gone().map_or(e, Error::ConnectionReset));
        }
        Ok(req)
    }

    /// The reply to `req` if it came; `Err` if the engine is gone.
    pub fn take_reply(&self, req: u32, addr: SocketAddrV4) -> Result<Option<Handed>, Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.replies.remove(&req) {
            Some(Reply::Stream(h)) => Ok(Some(h)),
            Some(Reply::Failed(kind, text)) => Err(error_of(kind, text, Some(addr))),
            Some(_) => Err(Error::Protocol("the host engine answered a connect with something else".into())),
            None => match &st.gone {
                Some(why) => Err(Error::ConnectionReset(why.clone())),
                None => Ok(None),
            },
        }
    }

    /// The asker of `req` went away: its reply, when it comes, is dropped.
    pub fn abandon(&self, req: u32) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.waiters.remove(&req);
        match st.replies.remove(&req) {
            Some(Reply::Stream(h)) => {
                let _ = send(&self.ctl, &Msg::Close { stream: h.stream });
            }
            Some(_) => {}
            None => {
                st.abandoned.insert(req);
            }
        }
    }

    /// An error in a forked child: the control socket is its parent's (a
    /// request sent from here would be answered to the parent's reader).
    fn same_process(&self) -> Result<(), Error> {
        if std::process::id() == self.pid {
            return Ok(());
        }
        Err(Error::Config(format!(
            "this process is a fork of pid {}, which attached to the host engine: the streams it inherited work, but \
             new connections and listeners need a runtime of its own (build one in the child)",
            self.pid
        )))
    }

    /// Sends a request and waits up to `max` for its reply.
    pub fn request(&self, make: impl FnOnce(u32) -> Msg<'static>, max: Duration) -> Result<Reply, Error> {
        self.same_process()?;
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = self.gone() {
            return Err(Error::ConnectionReset(why));
        }
        send(&self.ctl, &make(req)).map_err(|e| match self.gone() {
            Some(why) => Error::ConnectionReset(why),
            None => e,
        })?;
        let deadline = Instant::now() + max;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = st.replies.remove(&req) {
                return Ok(r);
            }
            if let Some(why) = &st.gone {
                return Err(Error::ConnectionReset(why.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::TimedOut(format!(
                    "the host engine (pid {}) did not answer within {max:?}",
                    self.engine_pid
                )));
            }
            st = self.cond.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Listens through the engine; accepted streams queue for `signal`.
    pub fn listen(
        &self,
        addr: SocketAddrV4,
        signal: Arc<Notifier>,
        messages: bool,
    ) -> Result<(u32, SocketAddrV4), Error> {
        match self.request(|req| Msg::Listen { req, addr, messages }, GRACE)? {
            Reply::Listening { listen, local } => {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let q = st.listeners.entry(listen).or_default();
                if !q.waiting.is_empty() {
                    signal.notify();
                }
                q.signal = Some(signal);
                Ok((listen, local))
            }
            Reply::Failed(kind, text) => Err(error_of(kind, text, Some(addr))),
            _ => Err(Error::Protocol("the host engine answered a listen with something else".into())),
        }
    }

    /// Stops listening (connections still queued here are closed).
    pub fn unlisten(&self, listen: u32) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).listeners.remove(&listen);
        if self.same_process().is_ok() {
            let _ = send(&self.ctl, &Msg::Unlisten { listen });
        }
    }

    /// A connection waiting on `listen`, or why none can come.
    pub fn take_accepted(&self, listen: u32) -> Result<Option<Handed>, Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = st.listeners.get_mut(&listen).and_then(|q| q.waiting.pop_front()) {
            return Ok(Some(h));
        }
        match &st.gone {
            Some(why) => Err(Error::ConnectionReset(why.clone())),
            None => Ok(None),
        }
    }

    /// Connections waiting on `listen`.
    pub fn waiting(&self, listen: u32) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.listeners.get(&listen).map_or(0, |q| q.waiting.len()) + usize::from(st.gone.is_some())
    }

    /// The engine's status (JSON).
    pub fn status(&self) -> Result<String, Error> {
        match self.request(|req| Msg::Status { req }, GRACE)? {
            Reply::Status(s) => Ok(s),
            _ => Err(Error::Protocol("the host engine answered a status request with something else".into())),
        }
    }

    /// Why the engine is gone, if it is.
    pub fn gone(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).gone.clone()
    }

    /// How stream `id` ended, if not cleanly (or the engine is gone). The
    /// engine says why before it closes its end, so one round trip over
    /// the control socket brings the reason in.
    pub fn end_of(&self, id: u32) -> Option<Error> {
        // A forked child cannot ask (the control socket's answers go to its
        // parent): an inherited stream's end reads as a plain end there.
        self.same_process().ok()?;
        if self.request(|req| Msg::Sync { req }, GRACE).is_err() {
            return Some(Error::ConnectionReset(self.gone().unwrap_or_else(|| {
                format!(
                    "the host engine for {} (pid {}) went away; restart it (`xsock engine --iface {}`) and connect \
                     again",
                    self.iface, self.engine_pid, self.iface
                )
            })));
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((kind, text)) = st.ended.get(&id) {
            return Some(error_of(*kind, text.clone(), None));
        }
        st.gone.as_ref().map(|why| Error::ConnectionReset(why.clone()))
    }

    /// Stream `id`'s last handle here is being dropped: tell the engine
    /// (so the hang-up that follows is an orderly close even if this
    /// process is exiting) and forget how it ended.
    pub fn forget(&self, id: u32) {
        // A child letting go of its copy says nothing: the parent's holds on.
        if self.same_process().is_ok() {
            let _ = send(&self.ctl, &Msg::Close { stream: id });
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).ended.remove(&id);
    }
}

fn transport_kind(t: Transport) -> TransportKind {
    match t {
        Transport::Auto => TransportKind::Auto,
        Transport::Link => TransportKind::Link,
        Transport::Kernel => TransportKind::Kernel,
        Transport::Tcp => TransportKind::Tcp,
    }
}

/// How long a connect through the engine waits beyond its own timeout for
/// the engine's answer.
pub(crate) const CONNECT_GRACE: Duration = GRACE;

/// The path a handed stream takes.
pub(crate) fn path_of(p: PathKind) -> Path {
    match p {
        PathKind::Link => Path::Link,
        PathKind::Kernel => Path::Kernel,
        PathKind::Tcp => Path::Tcp,
    }
}

/// The error for the engine's `kind` and words.
pub(crate) fn error_of(kind: EndKind, text: String, addr: Option<SocketAddrV4>) -> Error {
    match kind {
        EndKind::Refused => match addr {
            Some(a) => Error::ConnectionRefused(a),
            None => Error::ConnectionReset(text),
        },
        EndKind::TimedOut => Error::TimedOut(text),
        EndKind::Reset | EndKind::Shutdown | EndKind::Overloaded => Error::ConnectionReset(text),
        EndKind::Unreachable | EndKind::Config => Error::Config(text),
        EndKind::Other => Error::Io(std::io::Error::other(text)),
    }
}
