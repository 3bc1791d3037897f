//! Talking to the host engine: find its socket in this network namespace,
//! attach (hello, welcome), and send one request. Every blocking connect
//! and every listener has its own control connection, so nothing of it is
//! shared between threads or survives a fork half-used: a forked child's
//! connect attaches afresh, and a listener's connection is the listener's
//! descriptor itself (readable when the engine has a connection for it).
//! What outlives one call (letting go of streams, how they ended, the
//! non-blocking connects' answers) goes over one shared connection per
//! process, behind a mutex, which a forked child replaces with its own.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::ffi::OsStrExt,
    time::{Duration, Instant},
};

use libc::{c_int, c_void};
use xsock_attach::{Msg, Place, VERSION, place::default_dir, wire::MAX_STR};

use crate::real;

/// Room for every message the preload asks for or accepts (the longest,
/// a failure, carries at most MAX_STR bytes of text); a longer one is a
/// protocol error (truncated), not a reason to take 64 KiB per call.
pub const ANSWER_MAX: usize = MAX_STR + 64;

/// An attached control connection (closed on drop).
pub struct Ctl {
    pub fd: c_int,
    /// The engine's interface, address and prefix.
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// The engine's overlay node: its virtual address, and the virtual
    /// network (prefix 0: the engine joined no overlay).
    pub vaddr: Ipv4Addr,
    pub vnet: (Ipv4Addr, u8),
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if self.fd >= 0 {
            real::close(self.fd);
        }
    }
}

impl Ctl {
    /// What the engine said at attach, without the descriptor.
    pub fn welcome(&self) -> Ctl {
        Ctl { fd: -1, iface: self.iface.clone(), ..*self }
    }

    /// Gives up the descriptor (it now belongs to the program).
    pub fn into_fd(mut self) -> c_int {
        std::mem::replace(&mut self.fd, -1)
    }

    /// Whether `ip` is an overlay node's virtual address (connects to it
    /// go through the engine's node, whatever the transport setting).
    pub fn is_virtual(&self, ip: Ipv4Addr) -> bool {
        in_net(self.vnet, ip)
    }

    /// Whether `ip` is on the engine's subnet.
    pub fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        let bits = u32::from(self.prefix.min(32));
        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

/// Whether `ip` is a host address of `net`/`prefix` (as the bootstrap
/// server leases them: neither the network nor the broadcast address).
fn in_net((net, prefix): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    if prefix == 0 || prefix > 30 {
        return false;
    }
    let mask = u32::MAX << (32 - prefix);
    let (n, i) = (u32::from(net) & mask, u32::from(ip));
    i & mask == n && i != n && i != n | !mask
}

/// Why no engine could be attached.
pub enum AttachError {
    /// None runs in this namespace (or for XSOCK_IFACE).
    None(String),
    /// One runs but refused or broke; the text says why.
    Broken(String),
}

/// The engine's socket: XSOCK_IFACE's, or the only one of this namespace.
fn engine_socket(iface: Option<&str>) -> Result<std::path::PathBuf, AttachError> {
    let netns =
        std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
    if let Some(i) = iface {
        return Ok(Place::new(None, i, netns).socket());
    }
    let dir = default_dir();
    let tail = format!(".{netns}.sock");
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().as_bytes().ends_with(tail.as_bytes()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    match found.len() {
        0 => Err(AttachError::None(format!(
            "no host engine runs in this network namespace (no *{tail} in {}): start one with `xsock engine --iface \
             IF`",
            dir.display()
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(AttachError::Broken(format!(
            "{} engines run in this network namespace: say which with XSOCK_IFACE=IF",
            found.len()
        ))),
    }
}

/// Attaches: a new control connection with the hello answered.
pub fn attach(iface: Option<&str>) -> Result<Ctl, AttachError> {
    let path = engine_socket(iface)?;
    let fd = real::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
    if fd < 0 {
        return Err(AttachError::Broken(format!("socket(AF_UNIX): {}", std::io::Error::last_os_error())));
    }
    let none = Ipv4Addr::UNSPECIFIED;
    let mut ctl = Ctl { fd, iface: String::new(), addr: none, prefix: 0, vaddr: none, vnet: (none, 0) };
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sun.sun_path.len() {
        return Err(AttachError::Broken(format!("{} is too long a socket path", path.display())));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    if real::connect(fd, (&raw const sun).cast(), len) < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT | libc::ECONNREFUSED) => AttachError::None(format!(
                "no host engine answers at {} (start one with `xsock engine --iface IF`)",
                path.display()
            )),
            _ => AttachError::Broken(format!(
                "the host engine's socket {} cannot be reached: {e} (is this user allowed to attach? the engine's \
                 --group admits a group)",
                path.display()
            )),
        });
    }
    send(fd, &Msg::Hello { version: VERSION, rings: false, ends: false }).map_err(AttachError::Broken)?;
    let mut buf = [0u8; ANSWER_MAX];
    let deadline = Instant::now() + Duration::from_secs(5);
    let (n, fds) = recv(fd, &mut buf, Some(deadline), false).map_err(|e| AttachError::Broken(e.to_string()))?;
    close_all(&fds);
    match Msg::parse(&buf[..n]) {
        Ok(Msg::Welcome { version, iface, addr, prefix, vaddr, vnet, vnet_prefix, .. }) if version == VERSION => {
            ctl.iface = iface.to_owned();
            ctl.addr = addr;
            ctl.prefix = prefix;
            ctl.vaddr = vaddr;
            ctl.vnet = (vnet, vnet_prefix);
            Ok(ctl)
        }
        Ok(Msg::Welcome { version, engine_pid, .. }) => Err(AttachError::Broken(format!(
            "the host engine (pid {engine_pid}) speaks protocol version {version}, this library {VERSION}: run the \
             same xsock version for both"
        ))),
        Ok(Msg::Refused { reason }) => Err(AttachError::Broken(format!("the host engine refused: {reason}"))),
        Ok(other) => Err(AttachError::Broken(format!("the host engine answered hello with {other:?}"))),
        Err(e) => Err(AttachError::Broken(format!("the host engine sent {e}"))),
    }
}

/// Sends one message.
pub fn send(fd: c_int, m: &Msg<'_>) -> Result<(), String> {
    let bytes = m.emit();
    loop {
        let n = real::sendto(fd, bytes.as_ptr().cast::<c_void>(), bytes.len(), libc::MSG_NOSIGNAL, std::ptr::null(), 0);
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("the host engine's connection broke: {e}"));
        }
    }
}

/// Why a receive returned nothing.
#[derive(Debug)]
pub enum RecvError {
    /// The engine closed the connection.
    Closed,
    /// A system call failed with this errno (EAGAIN on a non-blocking
    /// descriptor with nothing waiting, EINTR, ...).
    Errno(c_int),
    /// Nothing arrived in time.
    TimedOut,
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Closed => write!(f, "the host engine closed the connection"),
            RecvError::Errno(e) => write!(f, "{}", std::io::Error::from_raw_os_error(*e)),
            RecvError::TimedOut => write!(f, "the host engine did not answer in time"),
        }
    }
}

/// Most descriptors one message carries.
const MAX_FDS: usize = 4;

/// Receives one message and the descriptors with it (close-on-exec if
/// `cloexec`). With a deadline, waits at most until then; without, as the
/// descriptor's own blocking mode says (EINTR is returned, not retried).
pub fn recv(
    fd: c_int,
    buf: &mut [u8],
    deadline: Option<Instant>,
    cloexec: bool,
) -> Result<(usize, Vec<c_int>), RecvError> {
    if let Some(d) = deadline {
        loop {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::TimedOut);
            }
            let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let ms = c_int::try_from(left.as_millis().max(1)).unwrap_or(c_int::MAX);
            // SAFETY: one live pollfd, and its count.
            let r = unsafe { libc::poll(&raw mut p, 1, ms) };
            if r > 0 {
                break;
            }
            if r < 0 && real::errno() != libc::EINTR {
                return Err(RecvError::Errno(real::errno()));
            }
        }
    }
    recv_msg(fd, buf, if cloexec { libc::MSG_CMSG_CLOEXEC } else { 0 })
}

/// Receives one message if one waits (close-on-exec descriptors), else
/// EAGAIN.
pub fn recv_now(fd: c_int, buf: &mut [u8]) -> Result<(usize, Vec<c_int>), RecvError> {
    recv_msg(fd, buf, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT)
}

fn recv_msg(fd: c_int, buf: &mut [u8], flags: c_int) -> Result<(usize, Vec<c_int>), RecvError> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = [0u64; 16]; // room for MAX_FDS descriptors, aligned
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = real::recvmsg(fd, &raw mut msg, flags);
    if n < 0 {
        return Err(RecvError::Errno(real::errno()));
    }
    let mut fds = Vec::new();
    // SAFETY: msg was filled by recvmsg; the CMSG macros walk its control
    // buffer, which we own, within msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !c.is_null() {
        // SAFETY: `c` points at a control header inside cbuf (CMSG_FIRSTHDR
        // / CMSG_NXTHDR return null past the end).
        let hdr = unsafe { c.read_unaligned() };
        let (level, ty, len) = (hdr.cmsg_level, hdr.cmsg_type, hdr.cmsg_len);
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is arithmetic on a constant.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (len.saturating_sub(head)) / std::mem::size_of::<c_int>();
            // SAFETY: the header's data follows it inside cbuf.
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<c_int>();
            for i in 0..count {
                // SAFETY: `i` < count, which the header's length bounds, so
                // the pointer stays inside cbuf.
                let p = unsafe { data.add(i) };
                // SAFETY: in bounds as above; unaligned, as control data has
                // no alignment promise.
                fds.push(unsafe { p.read_unaligned() });
            }
        }
        // SAFETY: as above: the next header, or null.
        c = unsafe { libc::CMSG_NXTHDR(&raw const msg, c) };
    }
    if fds.len() > MAX_FDS || msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        close_all(&fds);
        return Err(RecvError::Errno(libc::EPROTO));
    }
    if n == 0 {
        close_all(&fds);
        return Err(RecvError::Closed);
    }
    Ok((n as usize, fds))
}

/// Closes descriptors a message brought that nobody takes.
pub fn close_all(fds: &[c_int]) {
    for &f in fds {
        real::close(f);
    }
}

/// The engine's answer to a connect or listen: a stream, a listener, or a
/// failure.
pub enum Answer {
    /// Connected; the stream's descriptor and whether it is a kernel TCP
    /// socket (else a socketpair end of a link or TCP-mode stream).
    Stream { fd: c_int, stream: u32, path: xsock_attach::PathKind, local: SocketAddrV4, peer: SocketAddrV4 },
    /// Listening on `local`.
    Listening { local: SocketAddrV4 },
    /// Failed.
    Failed { kind: xsock_attach::EndKind, text: String },
    /// A lookup's answer.
    Found { addr: Ipv4Addr },
}

/// Sends `m` (request number 1) and waits for its answer until `deadline`,
/// skipping anything else the engine says meanwhile.
pub fn request(fd: c_int, m: &Msg<'_>, deadline: Instant) -> Result<Answer, String> {
    send(fd, m)?;
    let mut buf = [0u8; ANSWER_MAX];
    loop {
        let (n, fds) = match recv(fd, &mut buf, Some(deadline), true) {
            Ok(r) => r,
            Err(RecvError::Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e.to_string()),
        };
        let answer = match Msg::parse(&buf[..n]) {
            Ok(Msg::Connected { req: 1, stream, path, local, peer, .. }) if fds.len() == 1 => {
                return Ok(Answer::Stream { fd: fds[0], stream, path, local, peer });
            }
            Ok(Msg::Listening { req: 1, local, .. }) => Some(Answer::Listening { local }),
            Ok(Msg::Found { req: 1, addr }) => Some(Answer::Found { addr }),
            Ok(Msg::Failed { req: 1, kind, text }) => Some(Answer::Failed { kind, text: text.to_owned() }),
            Ok(_) => None,
            Err(e) => {
                close_all(&fds);
                return Err(format!("the host engine sent {e}"));
            }
        };
        close_all(&fds);
        if let Some(a) = answer {
            return Ok(a);
        }
    }
}

/// The engine's answer to a [`Msg::Dial`].
#[derive(Debug, Clone)]
pub enum Dialed {
    /// Connected: the program's descriptor carries the stream.
    Stream { stream: u32, path: xsock_attach::PathKind, local: SocketAddrV4, peer: SocketAddrV4 },
    /// Failed (the engine has closed its end).
    Failed { kind: xsock_attach::EndKind, text: String },
}

/// Where a dial stands for [`take_dial`].
#[derive(Debug)]
pub enum DialState {
    /// Not answered yet.
    Pending,
    /// Its answer cannot come to this process: it was asked on a
    /// connection this process no longer has (a forked child's dial of
    /// its parent's, or the engine went away).
    Lost,
    /// Answered.
    Done(Dialed),
}

/// This process's own connection to the engine for what outlives one
/// call: letting go of streams, asking how they ended, and the
/// non-blocking connects (dials) with their answers as they come.
struct Shared {
    /// The process it is this process's for (a forked child's copy is its
    /// parent's: it attaches afresh).
    pid: u32,
    fd: c_int,
    /// The descriptor's device and inode, so a number the program closed
    /// and reused is never written to.
    dev: u64,
    ino: u64,
    /// What the engine said when it attached (no descriptor).
    welcome: Ctl,
    /// The next dial's request number.
    next_dial: u32,
    /// Dials asked on it and not taken, with their answers once read.
    dials: std::collections::HashMap<u32, Option<Dialed>>,
}

/// Request numbers below this are the one-off requests' (let-go's sync,
/// how-ended); dials count from here.
const FIRST_DIAL: u32 = 16;

static SHARED: std::sync::Mutex<Option<Shared>> = std::sync::Mutex::new(None);

/// Its descriptor number (-1: none), so that every other close the program
/// makes costs one load, not the mutex.
static SHARED_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn set_shared(g: &mut Option<Shared>, v: Option<Shared>) {
    SHARED_FD.store(v.as_ref().map_or(-1, |s| s.fd), std::sync::atomic::Ordering::Relaxed);
    *g = v;
}

fn lock() -> std::sync::MutexGuard<'static, Option<Shared>> {
    SHARED.lock().unwrap_or_else(|p| p.into_inner())
}

fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: stat is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live stat buffer for fstat to fill.
    (unsafe { libc::fstat(fd, &raw mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// Forgets the shared connection if `fd` is it (the program closed it).
pub fn closer_closed(fd: c_int) {
    if SHARED_FD.load(std::sync::atomic::Ordering::Relaxed) != fd {
        return;
    }
    let mut g = lock();
    if g.as_ref().is_some_and(|s| s.fd == fd) {
        set_shared(&mut g, None);
    }
}

/// Makes sure `g` holds this process's own shared connection, and returns
/// it (or why no engine could be attached to).
fn shared<'a>(g: &'a mut Option<Shared>, iface: Option<&str>) -> Result<&'a mut Shared, AttachError> {
    let pid = std::process::id();
    let usable = g.as_ref().is_some_and(|s| s.pid == pid && identity(s.fd) == Some((s.dev, s.ino)));
    if !usable {
        if let Some(s) = g.as_ref()
            && s.pid == pid
        {
            real::close(s.fd);
        }
        set_shared(g, None);
        let ctl = attach(iface)?;
        let welcome = ctl.welcome();
        let fd = ctl.into_fd();
        let Some((dev, ino)) = identity(fd) else {
            real::close(fd);
            return Err(AttachError::Broken(format!("fstat: {}", std::io::Error::last_os_error())));
        };
        let next_dial = FIRST_DIAL;
        set_shared(g, Some(Shared { pid, fd, dev, ino, welcome, next_dial, dials: Default::default() }));
    }
    Ok(g.as_mut().expect("set above"))
}

/// What the engine said when this process's shared connection attached
/// (attaching it if need be): its interface, addresses and overlay.
pub fn welcome(iface: Option<&str>) -> Result<Ctl, AttachError> {
    let mut g = lock();
    Ok(shared(&mut g, iface)?.welcome.welcome())
}

/// Drops the shared connection (it broke).
fn broken(g: &mut Option<Shared>) {
    if let Some(s) = g.take() {
        real::close(s.fd);
    }
    set_shared(g, None);
}

/// Reads what the engine sent on `s` until `done` accepts a message
/// (returning what it made of it), dial `dial`'s answer comes, or, with
/// `deadline` `None`, nothing more waits; dials' answers are kept as they
/// pass. `Err(())`: the connection broke.
fn read_until<R>(
    s: &mut Shared,
    deadline: Option<Instant>,
    dial: Option<u32>,
    mut done: impl FnMut(&Msg<'_>) -> Option<R>,
) -> Result<Option<R>, ()> {
    let mut buf = [0u8; ANSWER_MAX];
    loop {
        let got = match deadline {
            Some(d) => recv(s.fd, &mut buf, Some(d), true),
            None => recv_now(s.fd, &mut buf),
        };
        let (n, fds) = match got {
            Ok(r) => r,
            Err(RecvError::Errno(libc::EINTR)) => continue,
            Err(RecvError::Errno(libc::EAGAIN) | RecvError::TimedOut) => return Ok(None),
            Err(_) => return Err(()),
        };
        close_all(&fds);
        let Ok(m) = Msg::parse(&buf[..n]) else { return Err(()) };
        let answer = match &m {
            Msg::Dialed { req, stream, path, local, peer } => {
                Some((*req, Dialed::Stream { stream: *stream, path: *path, local: *local, peer: *peer }))
            }
            Msg::Failed { req, kind, text } if *req >= FIRST_DIAL => {
                Some((*req, Dialed::Failed { kind: *kind, text: (*text).to_owned() }))
            }
            _ => None,
        };
        if let Some((req, d)) = answer {
            // A dial the program gave up on (closed) is dropped here; its
            // descriptor went with it.
            if let Some(slot) = s.dials.get_mut(&req) {
                *slot = Some(d);
            }
            if dial == Some(req) {
                return Ok(None);
            }
            continue;
        }
        if let Some(r) = done(&m) {
            return Ok(Some(r));
        }
    }
}

/// How `stream`, whose end the program just read, ended: `Some(kind)` if
/// badly (a reset, a lost path), `None` if orderly or unknown.
pub fn how_ended(stream: u32, iface: Option<&str>) -> Option<xsock_attach::EndKind> {
    let mut g = lock();
    let s = shared(&mut g, iface).ok()?;
    if send(s.fd, &Msg::HowEnded { req: 2, stream }).is_err() {
        broken(&mut g);
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let r = read_until(s, Some(deadline), None, |m| match m {
        Msg::Failed { req: 2, kind, .. } => Some(Some(*kind)),
        Msg::Synced { req: 2 } => Some(None),
        _ => None,
    });
    match r {
        Ok(found) => found.flatten(),
        Err(()) => {
            broken(&mut g);
            None
        }
    }
}

/// Tells the engine this process lets go of `streams` (their hang-up that
/// follows is an orderly close, even if the process is exiting by then).
/// `sync`: wait until the engine has read it (at exit).
pub fn let_go(streams: &[u32], iface: Option<&str>, sync: bool) {
    if streams.is_empty() {
        return;
    }
    let mut g = lock();
    let Ok(s) = shared(&mut g, iface) else { return };
    for &stream in streams {
        if send(s.fd, &Msg::Close { stream }).is_err() {
            return broken(&mut g);
        }
    }
    if sync {
        let _ = send(s.fd, &Msg::Sync { req: 1 });
        let deadline = Instant::now() + Duration::from_secs(1);
        if read_until(s, Some(deadline), None, |m| matches!(m, Msg::Synced { req: 1 }).then_some(())).is_err() {
            broken(&mut g);
        }
    }
}

/// Asks the engine to connect `m` (a [`Msg::Dial`] whose request number is
/// set here) without waiting, the stream to be carried on `pair`, which
/// goes to the engine (and is closed here either way). The dial's number.
pub fn dial(m: Msg<'_>, pair: c_int, iface: Option<&str>) -> Result<u32, String> {
    let mut g = lock();
    let s = match shared(&mut g, iface) {
        Ok(s) => s,
        Err(AttachError::None(e) | AttachError::Broken(e)) => {
            real::close(pair);
            return Err(e);
        }
    };
    // What waits is read first: answers of dials nobody asked about yet
    // (a program that writes without SO_ERROR) must not fill the
    // connection until the engine gives up on this process.
    if read_until(s, None, None, |_| None::<()>).is_err() {
        broken(&mut g);
        real::close(pair);
        return Err("the host engine's connection broke".to_owned());
    }
    let Some(s) = g.as_mut() else { unreachable!("kept above") };
    let req = s.next_dial;
    s.next_dial = s.next_dial.checked_add(1).unwrap_or(FIRST_DIAL);
    let m = match m {
        Msg::Dial { addr, transport, timeout_ms, filler, .. } => Msg::Dial { req, addr, transport, timeout_ms, filler },
        other => other,
    };
    let sent = send_fd(s.fd, &m, pair);
    real::close(pair);
    match sent {
        Ok(()) => {
            s.dials.insert(req, None);
            Ok(req)
        }
        Err(e) => {
            broken(&mut g);
            Err(e)
        }
    }
}

/// Dial `req`'s answer, if it came (reading what waits for it, until
/// `deadline` if one is given); taken answers are forgotten here.
pub fn take_dial(req: u32, deadline: Option<Instant>) -> DialState {
    let mut g = lock();
    let pid = std::process::id();
    let Some(s) = g.as_mut().filter(|s| s.pid == pid && s.dials.contains_key(&req)) else {
        return DialState::Lost;
    };
    if s.dials.get(&req).is_some_and(Option::is_some) {
        return DialState::Done(s.dials.remove(&req).flatten().expect("checked"));
    }
    let r = read_until(s, deadline, Some(req), |_| None::<()>);
    let answered = s.dials.get(&req).is_some_and(Option::is_some);
    if answered {
        return DialState::Done(s.dials.remove(&req).flatten().expect("checked"));
    }
    if r.is_err() {
        broken(&mut g);
        return DialState::Lost;
    }
    DialState::Pending
}

/// Forgets dial `req` (the program closed its descriptor): its answer is
/// dropped when it comes.
pub fn abandon_dial(req: u32) {
    let mut g = lock();
    if let Some(s) = g.as_mut() {
        s.dials.remove(&req);
    }
}

/// Sends `m` with descriptor `pass` attached.
fn send_fd(fd: c_int, m: &Msg<'_>, pass: c_int) -> Result<(), String> {
    let bytes = m.emit();
    let mut iov = libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() };
    let mut cbuf = [0u64; 4]; // one descriptor's control message, aligned
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic on a constant.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) } as usize;
    // SAFETY: msg_control points at cbuf, which has room for one header
    // and one descriptor (CMSG_SPACE above is at most its size).
    let c = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    // SAFETY: CMSG_LEN is arithmetic on a constant.
    let cmsg_len = unsafe { libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) } as usize;
    let hdr = libc::cmsghdr { cmsg_len, cmsg_level: libc::SOL_SOCKET, cmsg_type: libc::SCM_RIGHTS };
    // SAFETY: `c` is cbuf's first header (non-null: the buffer has room).
    unsafe { c.write_unaligned(hdr) };
    // SAFETY: `c` is cbuf's first header, just written.
    let data = unsafe { libc::CMSG_DATA(c) }.cast::<c_int>();
    // SAFETY: the header's data area holds one c_int inside cbuf.
    unsafe { data.write_unaligned(pass) };
    loop {
        if real::sendmsg(fd, &raw const msg, libc::MSG_NOSIGNAL) >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("the host engine's connection broke: {e}"));
        }
    }
}
