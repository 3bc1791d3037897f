//! Talking to the host engine: find its socket in this network namespace,
//! attach (hello, welcome), and send one request. Every connect and every
//! listener has its own control connection, so nothing here is shared
//! between threads or survives a fork half-used: a forked child's connect
//! attaches afresh, and a listener's connection is the listener's
//! descriptor itself (readable when the engine has a connection for it).

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
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = [0u64; 16]; // room for MAX_FDS descriptors, aligned
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let flags = if cloexec { libc::MSG_CMSG_CLOEXEC } else { 0 };
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

/// This process's connection for letting go of streams (its pid, the
/// descriptor, and the descriptor's device and inode, so a number the
/// program closed and reused is never written to).
static CLOSER: std::sync::Mutex<Option<(u32, c_int, u64, u64)>> = std::sync::Mutex::new(None);

/// Its descriptor number (-1: none), so that every other close the program
/// makes costs one load, not the mutex.
static CLOSER_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn set_closer(g: &mut Option<(u32, c_int, u64, u64)>, v: Option<(u32, c_int, u64, u64)>) {
    CLOSER_FD.store(v.map_or(-1, |(_, fd, _, _)| fd), std::sync::atomic::Ordering::Relaxed);
    *g = v;
}

fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: stat is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live stat buffer for fstat to fill.
    (unsafe { libc::fstat(fd, &raw mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// Forgets the closing connection if `fd` is it (the program closed it).
pub fn closer_closed(fd: c_int) {
    if CLOSER_FD.load(std::sync::atomic::Ordering::Relaxed) != fd {
        return;
    }
    let mut g = CLOSER.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_some_and(|(_, c, _, _)| c == fd) {
        set_closer(&mut g, None);
    }
}

/// Makes sure `g` holds this process's own connection for letting go of
/// streams (a forked child's copy is its parent's: it attaches afresh).
fn closer(g: &mut Option<(u32, c_int, u64, u64)>, iface: Option<&str>) {
    let pid = std::process::id();
    let usable = g.is_some_and(|(p, fd, dev, ino)| p == pid && identity(fd) == Some((dev, ino)));
    if usable {
        return;
    }
    if let Some((p, fd, _, _)) = *g
        && p == pid
    {
        real::close(fd);
    }
    set_closer(g, None);
    let Ok(ctl) = attach(iface) else { return };
    let fd = ctl.into_fd();
    let Some((dev, ino)) = identity(fd) else { return };
    set_closer(g, Some((pid, fd, dev, ino)));
}

/// How `stream`, whose end the program just read, ended: `Some(kind)` if
/// badly (a reset, a lost path), `None` if orderly or unknown.
pub fn how_ended(stream: u32, iface: Option<&str>) -> Option<xsock_attach::EndKind> {
    let mut g = CLOSER.lock().unwrap_or_else(|p| p.into_inner());
    closer(&mut g, iface);
    let (_, fd, _, _) = (*g)?;
    if send(fd, &Msg::HowEnded { req: 2, stream }).is_err() {
        real::close(fd);
        set_closer(&mut g, None);
        return None;
    }
    let mut buf = [0u8; ANSWER_MAX];
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Ok((n, fds)) = recv(fd, &mut buf, Some(deadline), true) {
        close_all(&fds);
        match Msg::parse(&buf[..n]) {
            Ok(Msg::Failed { req: 2, kind, .. }) => return Some(kind),
            Ok(Msg::Synced { req: 2 }) => return None,
            _ => {}
        }
    }
    None
}

/// Tells the engine this process lets go of `streams` (their hang-up that
/// follows is an orderly close, even if the process is exiting by then).
/// `sync`: wait until the engine has read it (at exit).
pub fn let_go(streams: &[u32], iface: Option<&str>, sync: bool) {
    if streams.is_empty() {
        return;
    }
    let mut g = CLOSER.lock().unwrap_or_else(|p| p.into_inner());
    closer(&mut g, iface);
    let Some((_, fd, _, _)) = *g else { return };
    for &stream in streams {
        if send(fd, &Msg::Close { stream }).is_err() {
            real::close(fd);
            set_closer(&mut g, None);
            return;
        }
    }
    if sync {
        let _ = send(fd, &Msg::Sync { req: 1 });
        let mut buf = [0u8; ANSWER_MAX];
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok((n, fds)) = recv(fd, &mut buf, Some(deadline), true) {
            close_all(&fds);
            if matches!(Msg::parse(&buf[..n]), Ok(Msg::Synced { req: 1 })) {
                break;
            }
        }
    }
}
