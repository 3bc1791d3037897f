//! An attached endpoint's session with a relay of its LAN: the I/O shell
//! of [`xsock_overlay::attach`]. One stream to the relay, authenticated
//! once, carries every virtual connection (VC) of the node; a VC opens
//! with one `Open` answered by `Accept`, with no stream or handshake of
//! its own.
//!
//! A pump thread owns the session stream and the attachment core. Each VC
//! is a socketpair: the application's [`Stream`] holds one end (so it
//! reads, writes, polls, clones and closes like any kernel socket), the
//! pump the other, moving bytes between it and the session within the
//! VC's credit. A VC that ends badly leaves its reason in its [`VcEnd`],
//! where the stream's next read or write finds it.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::SocketAddrV4,
    os::{fd::AsFd, unix::net::UnixStream},
    sync::{Arc, Mutex, Weak, mpsc},
    time::{Duration, Instant},
};

use xsock_overlay::{
    NodeId,
    attach::{AttachConfig, Attachment, Event, VcId},
    linkq::SendBuf,
    relay::PATH_LOST,
    wire::FrameReader,
};

use crate::{Error, Events, Interest, Poller, Runtime, Stream, Token, listener::ListenShared};

/// How a VC carried by a session ended, for its stream's next call.
#[derive(Debug, Default)]
pub struct VcEnd {
    reason: Mutex<Option<String>>,
    /// Our end of the VC went out whole: every byte and the Close were
    /// acknowledged by the relay (which carries them on if we exit).
    flushed: Mutex<bool>,
    changed: std::sync::Condvar,
    /// Our side aborts: when the pump finds our socket closed, it aborts
    /// the VC with this reason instead of closing it.
    abort: Mutex<Option<&'static str>>,
    /// Handed to a process as it is (a host engine's client): its pid, and
    /// whether it let go of the stream; a closed socket whose process was
    /// killed first aborts the VC.
    owner: Mutex<Option<(i32, bool)>>,
    /// Bytes the pump moved toward the far end and toward us.
    to_net: std::sync::atomic::AtomicU64,
    to_app: std::sync::atomic::AtomicU64,
}

impl VcEnd {
    /// Our end, closed next, aborts the VC with `why` (a host engine whose
    /// client was killed: its far end must not take the end as complete).
    pub(crate) fn request_abort(&self, why: &'static str) {
        *self.abort.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// The socket is process `pid`'s now (a host engine handed it over):
    /// if it closes after the process died without letting go, the VC is
    /// aborted, as a killed program's connections are.
    pub fn set_owner(&self, pid: i32) {
        *self.owner.lock().unwrap_or_else(|p| p.into_inner()) = Some((pid, false));
    }

    /// The owner let go of the stream: its close is orderly even if the
    /// process is exiting by then.
    pub fn set_released(&self) {
        if let Some(o) = self.owner.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            o.1 = true;
        }
    }

    /// Bytes moved so far: (toward the far end, toward us).
    pub fn moved(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.to_net.load(Relaxed), self.to_app.load(Relaxed))
    }

    /// The reason to abort with, now that our socket closed, if any.
    fn abort_on_close(&self) -> Option<&'static str> {
        if let Some(why) = *self.abort.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(why);
        }
        let (pid, released) = (*self.owner.lock().unwrap_or_else(|p| p.into_inner()))?;
        use xsock_nic::sys::ProcessState;
        let lives = matches!(xsock_nic::sys::process_state(pid), ProcessState::Alive | ProcessState::Exiting { .. });
        (!released && !lives).then_some(
            "the far end's process went away (killed or crashed) with the connection open; its xsock engine reset it",
        )
    }

    fn set(&self, why: &str) {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| why.to_owned());
        self.changed.notify_all();
    }

    fn set_flushed(&self) {
        *self.flushed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until our end went out whole ([`Stream::close`]).
    pub(crate) fn wait_flushed(&self, peer: SocketAddrV4, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut done = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            if let Some(e) = self.end_of() {
                return Err(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::TimedOut(format!("the relay did not take the end of the stream to {peer}")));
            }
            done = self
                .changed
                .wait_timeout(done, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Why the VC ended, if not cleanly (its stream's next call, or a host
    /// engine answering its client).
    pub fn end_of(&self) -> Option<Error> {
        let why = self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some(Error::ConnectionReset(match why.strip_prefix(PATH_LOST) {
            Some(rest) => {
                format!(
                    "the overlay lost the path to the far end ({rest}); connect again: new connections route around it"
                )
            }
            None => why,
        }))
    }
}

enum Request {
    Open { dst: NodeId, port: u16, first: Vec<u8>, addrs: (SocketAddrV4, SocketAddrV4), label: String, reply: Reply },
    Listen { port: u16, to: Weak<ListenShared> },
    Unlisten { port: u16 },
}

type Reply = mpsc::Sender<Result<Stream, Error>>;

/// The application's side of a session: asks the pump thread for VCs.
pub(crate) struct Session {
    requests: Mutex<mpsc::Sender<Request>>,
    /// A byte here wakes the pump.
    bell: UnixStream,
    /// Why the session ended, once it has.
    dead: Arc<Mutex<Option<String>>>,
    /// The relay, by name (for messages).
    pub relay: String,
}

/// Why a session ends when its node is dropped.
const LEFT: &str = "the node left the overlay";

const SESSION: Token = Token(0);
const BELL: Token = Token(1);
/// A VC's socket is watched as `FIRST_VC + vc`.
const FIRST_VC: usize = 2;
/// The pump stops reading the applications' bytes while this much waits
/// for the session stream.
const MAX_QUEUED: usize = 4 << 20;

impl Session {
    /// Starts the pump on `stream`, whose attach preamble (as node `me`,
    /// to relay `relay`) has just ended.
    pub fn start(rt: &Runtime, stream: Stream, me: NodeId, relay: String) -> Result<Session, Error> {
        let (bell, ring) = UnixStream::pair().map_err(Error::Io)?;
        ring.set_nonblocking(true).map_err(Error::Io)?;
        bell.set_nonblocking(true).map_err(Error::Io)?;
        let (tx, rx) = mpsc::channel();
        let dead = Arc::new(Mutex::new(None));
        let epoch = Instant::now();
        let mut poller = Poller::sleeping(rt)?;
        poller.register(&stream, SESSION, Interest::READABLE)?;
        poller.register_fd(ring.as_fd(), BELL, Interest::READABLE)?;
        let pump = Pump {
            rt: rt.clone(),
            s: stream,
            rd: FrameReader::default(),
            out: SendBuf::default(),
            core: Attachment::new(AttachConfig::new(me), Duration::ZERO),
            epoch,
            vcs: HashMap::new(),
            opens: HashMap::new(),
            listeners: HashMap::new(),
            rx,
            ring,
            poller,
            dead: dead.clone(),
            relay: relay.clone(),
            session_writable: false,
            flushing: Vec::new(),
            leaving: false,
        };
        std::thread::Builder::new().name("xsock-session".into()).spawn(move || pump.run()).map_err(Error::Io)?;
        Ok(Session { requests: Mutex::new(tx), bell, dead, relay })
    }

    /// Why the session ended, if it has.
    pub fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn ask(&self, r: Request) -> Result<(), Error> {
        let sent = self.requests.lock().unwrap_or_else(|p| p.into_inner()).send(r).is_ok();
        let _ = (&self.bell).write(&[1]);
        if sent {
            Ok(())
        } else {
            Err(Error::Overlay(format!(
                "the session with relay {} ended: {}",
                self.relay,
                self.dead().unwrap_or_default()
            )))
        }
    }

    /// Opens a VC to `dst`:`port` carrying `first` (at most
    /// [`xsock_overlay::wire::OPEN_DATA`] bytes), waiting up to `timeout`
    /// for the far end's answer. `addrs` are the stream's (local, peer);
    /// errors name the destination `label`.
    pub fn open(
        &self,
        (dst, port, label): (NodeId, u16, &str),
        first: &[u8],
        addrs: (SocketAddrV4, SocketAddrV4),
        timeout: Duration,
    ) -> Result<Stream, Error> {
        let (reply, answer) = mpsc::channel();
        let label = label.to_owned();
        self.ask(Request::Open { dst, port, first: first.to_vec(), addrs, label: label.clone(), reply })?;
        match answer.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err(Error::TimedOut(format!(
                "no answer through relay {} within {timeout:?} to the open of {label}",
                self.relay
            ))),
        }
    }

    /// VCs for `port` go to `to` from now on.
    pub fn listen(&self, port: u16, to: &Arc<ListenShared>) -> Result<(), Error> {
        self.ask(Request::Listen { port, to: Arc::downgrade(to) })
    }

    /// VCs for `port` are refused from now on.
    pub fn unlisten(&self, port: u16) {
        let _ = self.ask(Request::Unlisten { port });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The pump sees the channel close and ends the session.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut *self.requests.lock().unwrap_or_else(|p| p.into_inner()), tx));
        let _ = (&self.bell).write(&[1]);
    }
}

/// The pump's end of one VC.
struct VcIo {
    sock: UnixStream,
    end: Arc<VcEnd>,
    /// Bytes from the far end not yet taken by the application's socket.
    pending: Vec<u8>,
    off: usize,
    /// The application shut its writing side (we sent Close).
    app_done: bool,
    /// We shut the application's reading side (the far end finished).
    shut: bool,
    /// What its socket is watched for: (bytes to read, room to write);
    /// neither means not watched.
    watch: (bool, bool),
}

struct Pump {
    rt: Runtime,
    s: Stream,
    rd: FrameReader,
    /// Bytes on their way to the session stream.
    out: SendBuf,
    core: Attachment,
    epoch: Instant,
    vcs: HashMap<VcId, VcIo>,
    opens: HashMap<VcId, (Reply, (SocketAddrV4, SocketAddrV4), String)>,
    listeners: HashMap<u16, Weak<ListenShared>>,
    rx: mpsc::Receiver<Request>,
    ring: UnixStream,
    poller: Poller,
    dead: Arc<Mutex<Option<String>>>,
    relay: String,
    session_writable: bool,
    /// VC ends whose application finished writing, until the relay has
    /// acknowledged everything up to their Close.
    flushing: Vec<Arc<VcEnd>>,
    /// The node was dropped: the session ends with its last VC.
    leaving: bool,
}

impl Pump {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn run(mut self) {
        let mut buf = vec![0u8; 256 << 10];
        let mut events = Events::with_capacity(256);
        let why = loop {
            if let Err(why) = self.pass(&mut buf) {
                break why;
            }
            let mut wait = self.core.poll_timeout().saturating_sub(self.now());
            if !self.flushing.is_empty() {
                // Acknowledgements wake nothing here: look again soon.
                wait = wait.min(Duration::from_millis(2));
            }
            if let Err(e) = self.poller.poll(&mut events, Some(wait.max(Duration::from_millis(1)))) {
                break format!("the session's poller failed: {e}");
            }
        };
        self.lose(&why);
    }

    /// One round of everything; an error ends the session with its reason.
    fn pass(&mut self, buf: &mut [u8]) -> Result<(), String> {
        let mut drain = [0u8; 64];
        while matches!((&self.ring).read(&mut drain), Ok(n) if n > 0) {}
        while !self.leaving {
            match self.rx.try_recv() {
                Ok(r) => self.request(r),
                Err(mpsc::TryRecvError::Empty) => break,
                // The node is gone; its open streams carry on to their end.
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.leaving = true;
                    // Its bell's other end is gone too: always readable now.
                    let _ = self.poller.deregister(BELL);
                }
            }
        }
        if self.leaving && self.vcs.is_empty() && self.flushing.is_empty() {
            return Err(LEFT.into());
        }
        self.read_session()?;
        self.events();
        self.move_bytes(buf);
        let now = self.now();
        if now >= self.core.poll_timeout() {
            self.core.handle_timeout(now);
        }
        if let Some(why) = self.core.dead() {
            return Err(why.to_owned());
        }
        self.write_session()?;
        if !self.flushing.is_empty() && self.out.is_empty() && self.core.queued() == 0 && self.s.unacknowledged() == 0 {
            for end in self.flushing.drain(..) {
                end.set_flushed();
            }
        }
        Ok(())
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Open { dst, port, first, addrs, label, reply } => {
                let (vc, took) = self.core.open(dst, port, &first);
                debug_assert_eq!(took, first.len(), "Session::open takes at most OPEN_DATA first bytes");
                self.opens.insert(vc, (reply, addrs, label));
            }
            Request::Listen { port, to } => {
                self.core.listen(port);
                self.listeners.insert(port, to);
            }
            Request::Unlisten { port } => {
                self.core.unlisten(port);
                self.listeners.remove(&port);
            }
        }
    }

    fn read_session(&mut self) -> Result<(), String> {
        loop {
            // Straight from the stream into the frame reader.
            match self.rd.read_with(xsock_overlay::wire::SESSION_READ, |room| self.s.try_recv(room)) {
                Ok(0) => return Err(format!("relay {} closed the session", self.relay)),
                Ok(_) => {
                    let now = self.now();
                    while let Some(f) = self.rd.next_frame().map_err(|e| format!("relay {}: {e}", self.relay))? {
                        self.core
                            .handle_frame(now, f)
                            .map_err(|e| format!("relay {} broke the protocol: {e}", self.relay))?;
                    }
                }
                Err(Error::WouldBlock) => return Ok(()),
                Err(e) => return Err(format!("the session with relay {} broke: {e}", self.relay)),
            }
        }
    }

    fn write_session(&mut self) -> Result<(), String> {
        loop {
            if self.out.is_empty() {
                match self.core.poll_transmit_some(self.now(), 256 << 10) {
                    Some(b) => self.out.push(b),
                    None => break,
                }
            }
            match self.s.try_send(self.out.pending()) {
                Ok(0) => break,
                Ok(n) => self.out.advance(n),
                Err(Error::WouldBlock) => break,
                Err(e) => return Err(format!("the session with relay {} broke: {e}", self.relay)),
            }
        }
        let want = !self.out.is_empty();
        if want != self.session_writable {
            self.session_writable = want;
            let i = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poller.reregister(SESSION, i);
        }
        Ok(())
    }

    fn events(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            match ev {
                Event::Opened(vc) => {
                    let Some((reply, addrs, _)) = self.opens.remove(&vc) else {
                        self.core.abort(vc, "the opener gave up waiting");
                        continue;
                    };
                    match self.new_vc(vc) {
                        Ok((app, end)) => {
                            if reply.send(Ok(Stream::from_vc(&self.rt, app, end, addrs))).is_err() {
                                self.drop_vc(vc, "the opener gave up waiting");
                            }
                        }
                        Err(e) => {
                            self.core.abort(vc, "the opener ran out of sockets");
                            let _ = reply.send(Err(Error::Io(e)));
                        }
                    }
                }
                Event::Refused { vc, reason } => {
                    if let Some((reply, _, label)) = self.opens.remove(&vc) {
                        let _ = reply.send(Err(Error::OverlayRefused(format!("{label} refused: {reason}"))));
                    }
                }
                Event::Incoming { vc, src, port } => {
                    let Some(to) = self.listeners.get(&port).and_then(Weak::upgrade) else {
                        self.core.refuse(vc, &format!("nothing listens on port {port}"));
                        continue;
                    };
                    match self.new_vc(vc) {
                        Ok((app, end)) => {
                            self.core.accept(vc);
                            let ip = self.rt.local_subnets().first().map_or(std::net::Ipv4Addr::UNSPECIFIED, |s| s.0);
                            let addrs =
                                (SocketAddrV4::new(ip, port), SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
                            to.offer(Stream::from_vc(&self.rt, app, end, addrs), src.0);
                        }
                        Err(e) => self.core.refuse(vc, &format!("the listener ran out of sockets: {e}")),
                    }
                }
                Event::Aborted { vc, reason } => {
                    log::debug!("overlay session: VC {vc} aborted: {reason}");
                    if let Some((reply, _, label)) = self.opens.remove(&vc) {
                        let _ = reply.send(Err(Error::Overlay(format!("{label}: {reason}"))));
                    }
                    if let Some(v) = self.vcs.remove(&vc) {
                        v.end.set(&reason);
                        self.unwatch(vc, &v);
                        let _ = v.sock.shutdown(std::net::Shutdown::Both);
                    }
                }
                Event::Readable(_) | Event::Writable(_) | Event::Finished(_) => {}
            }
        }
    }

    /// A socketpair for `vc`: the application's end, and its VcEnd.
    fn new_vc(&mut self, vc: VcId) -> std::io::Result<(UnixStream, Arc<VcEnd>)> {
        let (app, ours) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let end = Arc::new(VcEnd::default());
        if self.poller.register_fd(ours.as_fd(), Token(FIRST_VC + vc as usize), Interest::READABLE).is_err() {
            return Err(std::io::Error::other("cannot watch the VC's socket"));
        }
        let io = VcIo {
            sock: ours,
            end: end.clone(),
            pending: Vec::new(),
            off: 0,
            app_done: false,
            shut: false,
            watch: (true, false),
        };
        self.vcs.insert(vc, io);
        Ok((app, end))
    }

    fn drop_vc(&mut self, vc: VcId, why: &str) {
        self.core.abort(vc, why);
        if let Some(v) = self.vcs.remove(&vc) {
            self.unwatch(vc, &v);
        }
    }

    fn unwatch(&mut self, vc: VcId, v: &VcIo) {
        if v.watch != (false, false) {
            let _ = self.poller.deregister(Token(FIRST_VC + vc as usize));
        }
    }

    /// Moves bytes between each VC's socket and the core.
    fn move_bytes(&mut self, buf: &mut [u8]) {
        let ids: Vec<VcId> = self.vcs.keys().copied().collect();
        for vc in ids {
            let Some(v) = self.vcs.get_mut(&vc) else { continue };
            // Far end -> application.
            let mut broken = None;
            loop {
                if v.off == v.pending.len() {
                    v.pending.clear();
                    v.off = 0;
                    let n = self.core.readable(vc).min(buf.len());
                    if n == 0 {
                        break;
                    }
                    let got = self.core.read(vc, &mut buf[..n]);
                    v.pending.extend_from_slice(&buf[..got]);
                }
                match xsock_nic::unix::send_nosignal(v.sock.as_fd(), &v.pending[v.off..]) {
                    Ok(k) => {
                        v.off += k;
                        v.end.to_app.fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        broken = Some(format!("the application's end went away: {e}"));
                        break;
                    }
                }
            }
            if let Some(why) = broken {
                self.drop_vc(vc, &why);
                continue;
            }
            let want_write = v.off < v.pending.len();
            if v.off == v.pending.len() && self.core.at_end(vc) && !v.shut {
                v.shut = true;
                let _ = v.sock.shutdown(std::net::Shutdown::Write);
            }
            // Application -> far end, within the credit.
            let space = self.core.send_space(vc).min(buf.len());
            if !v.app_done && space > 0 && self.core.queued() < MAX_QUEUED {
                match v.sock.read(&mut buf[..space]) {
                    Ok(0) if let Some(why) = v.end.abort_on_close() => {
                        log::debug!("overlay session: VC {vc} aborted by our side: {why}");
                        self.drop_vc(vc, why);
                        continue;
                    }
                    Ok(0) => {
                        v.app_done = true;
                        self.core.close(vc);
                        self.flushing.push(v.end.clone());
                    }
                    Ok(n) => {
                        self.core.write(vc, &buf[..n]);
                        v.end.to_net.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.drop_vc(vc, &format!("the application's end went away: {e}"));
                        continue;
                    }
                }
            }
            let Some(v) = self.vcs.get(&vc) else { continue };
            // Both sides done and delivered: the pump lets go of its end.
            if v.app_done && v.shut {
                let v = self.vcs.remove(&vc).expect("there");
                self.unwatch(vc, &v);
                continue;
            }
            // Read only with credit to send it with (an unread socket stays
            // readable, and would spin the pump).
            let want = (!v.app_done && self.core.send_space(vc) > 0, want_write);
            if want != v.watch {
                let token = Token(FIRST_VC + vc as usize);
                let interest = match want {
                    (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
                    (true, false) => Some(Interest::READABLE),
                    (false, true) => Some(Interest::WRITABLE),
                    (false, false) => None,
                };
                let r = match (v.watch, interest) {
                    (_, None) => self.poller.deregister(token),
                    ((false, false), Some(i)) => self.poller.register_fd(v.sock.as_fd(), token, i),
                    (_, Some(i)) => self.poller.reregister(token, i),
                };
                if r.is_ok() {
                    self.vcs.get_mut(&vc).expect("there").watch = want;
                }
            }
        }
    }

    /// The session is over: every VC and every open hears why.
    fn lose(mut self, why: &str) {
        if why == LEFT {
            log::debug!("overlay session with relay {} ended: {why}", self.relay);
        } else {
            log::warn!("overlay session with relay {} ended: {why}", self.relay);
        }
        *self.dead.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
        self.core.handle_session_lost(why);
        self.events();
        for (_, (reply, _, label)) in self.opens.drain() {
            let _ = reply.send(Err(Error::Overlay(format!("{label}: {PATH_LOST}{why}"))));
        }
        for (_, v) in self.vcs.drain() {
            v.end.set(&format!("{PATH_LOST}{why}"));
            let _ = v.sock.shutdown(std::net::Shutdown::Both);
        }
        for end in self.flushing.drain(..) {
            end.set(&format!("{PATH_LOST}{why}"));
        }
        let _ = self.s.shutdown_write();
    }
}
