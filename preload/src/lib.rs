//! `libxsock_preload.so`: `LD_PRELOAD=libxsock_preload.so program` puts an
//! unmodified program's TCP/IPv4 sockets on xsock, through the host engine
//! (`xsock engine`), as the Myrinet socket bypass ran unmodified socket
//! programs.
//!
//! How, in one paragraph: `socket(AF_INET, SOCK_STREAM)` is still the
//! kernel's socket, so bind and options before a connect behave exactly as
//! Linux's. At `connect` to a peer on the engine's segment, the engine
//! opens a reliable-link stream and hands back one end of a socketpair,
//! which replaces the program's descriptor under the same number (dup3).
//! A non-blocking connect cannot wait for that: the descriptor becomes
//! one end of a socketpair of our own at once, filled until it is not
//! writable, and the engine connects on the other end, dropping the
//! filler once connected (so poll and epoll see the connect finish) or
//! hanging up if it failed (`connect::dial`, `Msg::Dial`).
//! From then on the descriptor *is* a kernel socket with the stream's
//! bytes: read, write, send, recv, sendfile, poll, select, epoll, fcntl,
//! ioctl, dup, fork, exec and close need nothing from this library and
//! behave as the kernel makes them. At `listen`, the descriptor becomes a
//! control connection to the engine, readable when a connection waits; the
//! engine listens on both paths, so plain kernel TCP clients still connect
//! (their sockets are handed over as they are). What the socketpair cannot
//! answer as a TCP socket would is answered here: the names
//! (getsockname/getpeername), TCP- and IP-level options, the socket's
//! type, domain and protocol, and the address fields of
//! recvfrom/recvmsg/sendto/sendmsg.
//!
//! Everything else passes to libc untouched: other families and types,
//! loopback, destinations off the segment (unless XSOCK_TRANSPORT=tcp),
//! and every socket when no engine runs (one warning; XSOCK_STRICT=1 makes
//! that an error). The settings are in `xsock_attach::preload`.

mod addr;
mod connect;
mod engine;
mod listen;
mod names;
mod real;
mod sockopt;
mod table;

use std::{
    net::Ipv4Addr,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use libc::{c_int, c_void, msghdr, size_t, sockaddr, socklen_t, ssize_t};
use xsock_attach::{
    EndKind, PathKind,
    preload::{PreloadSettings, PreloadTransport},
};

use table::Kind;

static SETTINGS: OnceLock<PreloadSettings> = OnceLock::new();

fn settings() -> &'static PreloadSettings {
    SETTINGS.get_or_init(|| PreloadSettings::from_env().unwrap_or_else(|e| die(&e)))
}

/// Reads the settings when the library loads, so a typo stops the program
/// at once with the reason rather than at its first connect.
extern "C" fn init() {
    let _ = settings();
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

/// At a normal exit, lets go of every stream still open, so their
/// hang-ups are orderly closes for the peers (a killed process runs no
/// such code, and its peers are reset).
extern "C" fn fini() {
    // Not through settings(): an exit from inside its first reading (a
    // typo) must not read them again.
    let Some(s) = SETTINGS.get() else { return };
    // Connects decided by now count as the streams they became.
    for req in table::dials() {
        if let Some(&fd) = table::naming_dial(req).first() {
            connect::settle(fd);
        }
    }
    engine::let_go(&table::streams(), s.iface.as_deref(), true);
}

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = fini;

/// Says why and exits (a setting that cannot be honoured).
pub(crate) fn die(msg: &str) -> ! {
    eprintln!("xsock preload: {msg}");
    std::process::exit(2)
}

fn log(line: impl FnOnce() -> String) {
    if settings().log {
        eprintln!("xsock preload[{}]: {}", std::process::id(), line());
    }
}

/// One warning per process, per reason.
fn warn_once(flag: &AtomicBool, msg: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        eprintln!("xsock preload: {msg}");
    }
}

static WARNED_NO_ENGINE: AtomicBool = AtomicBool::new(false);
static WARNED_HIGH_FD: AtomicBool = AtomicBool::new(false);

/// A destination (or bound address) the engine could serve.
fn served(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast())
}

fn fail(e: c_int) -> c_int {
    real::set_errno(e);
    -1
}

fn errno_of(kind: EndKind) -> c_int {
    match kind {
        EndKind::Refused => libc::ECONNREFUSED,
        EndKind::TimedOut => libc::ETIMEDOUT,
        EndKind::Reset => libc::ECONNRESET,
        EndKind::Unreachable => libc::EHOSTUNREACH,
        EndKind::Config => libc::EADDRNOTAVAIL,
        EndKind::Shutdown => libc::ENETDOWN,
        EndKind::Overloaded => libc::ENOBUFS,
        EndKind::Other => libc::EIO,
    }
}

fn path_name(p: PathKind) -> &'static str {
    match p {
        PathKind::Link => "reliable-link",
        PathKind::Tcp => "tcp-mode",
        PathKind::Kernel => "kernel",
    }
}

/// What to do when no engine can be attached: stay on the kernel (after
/// one warning) or, strict, fail with ENETDOWN.
fn no_engine(why: &str) -> Option<c_int> {
    if settings().strict {
        eprintln!("xsock preload: {why} (XSOCK_STRICT=1: failing with ENETDOWN)");
        return Some(fail(libc::ENETDOWN));
    }
    warn_once(&WARNED_NO_ENGINE, &format!("{why}; TCP stays on the kernel"));
    None
}

fn attach() -> Result<engine::Ctl, Option<c_int>> {
    match engine::attach(settings().iface.as_deref()) {
        Ok(c) => Ok(c),
        Err(engine::AttachError::None(why) | engine::AttachError::Broken(why)) => Err(no_engine(&why)),
    }
}

/// As [`attach`], but only what the engine said, from this process's
/// shared connection (no new connection, no round trip).
fn welcome() -> Result<engine::Ctl, Option<c_int>> {
    match engine::welcome(settings().iface.as_deref()) {
        Ok(c) => Ok(c),
        Err(engine::AttachError::None(why) | engine::AttachError::Broken(why)) => Err(no_engine(&why)),
    }
}

/// A descriptor's blocking mode and close-on-exec flag, kept when another
/// descriptor takes its number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Modes {
    nonblocking: bool,
    cloexec: bool,
}

impl Modes {
    /// `fd`'s.
    pub(crate) fn of(fd: c_int) -> Modes {
        let (fl, fdfl) = (real::fcntl(fd, libc::F_GETFL, 0), real::fcntl(fd, libc::F_GETFD, 0));
        Modes { nonblocking: fl >= 0 && fl & libc::O_NONBLOCK != 0, cloexec: fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0 }
    }

    /// Puts `new` under `fd`'s number with these modes (what `fd` was
    /// closes) and closes `new`'s own number; `Err(errno)` if dup3 failed.
    pub(crate) fn replace(self, new: c_int, fd: c_int) -> Result<(), c_int> {
        let r = real::dup3(new, fd, if self.cloexec { libc::O_CLOEXEC } else { 0 });
        let e = real::errno();
        real::close(new);
        if r < 0 {
            return Err(e);
        }
        set_nonblocking(fd, self.nonblocking);
        Ok(())
    }
}

/// Puts `new` (a descriptor the engine handed over) in place of `fd`,
/// keeping `fd`'s number and modes, and the socket-level timeouts and
/// keepalive the program set.
fn install(fd: c_int, new: c_int) -> Result<(), c_int> {
    let modes = Modes::of(fd);
    sockopt::carry_over(fd, new);
    modes.replace(new, fd)
}

fn set_nonblocking(fd: c_int, on: bool) {
    let cur = real::fcntl(fd, libc::F_GETFL, 0);
    if cur >= 0 {
        let want = if on { cur | libc::O_NONBLOCK } else { cur & !libc::O_NONBLOCK };
        if want != cur {
            real::fcntl(fd, libc::F_SETFL, want as libc::c_ulong);
        }
    }
}

/// socket(2): a TCP socket (IPv4, or IPv6 that may carry IPv4-mapped
/// addresses) is followed from here on.
///
/// # Safety
/// As socket(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let fd = real::socket(domain, ty, protocol);
    let tcp = (domain == libc::AF_INET || domain == libc::AF_INET6)
        && ty & 0xf == libc::SOCK_STREAM
        && (protocol == 0 || protocol == libc::IPPROTO_TCP);
    if fd >= 0 && tcp {
        let s = settings();
        if s.enabled && s.transport != PreloadTransport::Kernel && !table::mark_fresh(fd) {
            warn_once(
                &WARNED_HIGH_FD,
                &format!("descriptor {fd} is above {}: such sockets stay on the kernel", table::MAX_FD),
            );
        }
    }
    fd
}

/// connect(2): through the engine when the destination is an xsock peer.
///
/// # Safety
/// As connect(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match table::kind(fd) {
        Some(Kind::Fresh) => {}
        Some(Kind::Stream) => return connected_again(fd),
        Some(Kind::Listener) => return fail(libc::EINVAL),
        Some(Kind::Connecting) => {
            let e = connect::take_error(fd);
            return match table::kind(fd) {
                Some(Kind::Stream) => connected_again(fd),
                _ if e != 0 => fail(e),
                _ if table::info(fd).is_some_and(|i| i.pending != 0) => fail(libc::EALREADY),
                // Failed, and said so already: this socket cannot try again.
                _ => fail(libc::ECONNABORTED),
            };
        }
        None => return real::connect(fd, addr, len),
    }
    // SAFETY: the caller passes `len` readable bytes at `addr`.
    let dest = unsafe { addr::read(addr, len) };
    let Some((dest, v6)) = dest.filter(|(d, _)| served(*d.ip())) else {
        table::forget(fd);
        return real::connect(fd, addr, len);
    };
    match connect::through_engine(fd, dest, v6) {
        Some(r) => r,
        None => {
            table::forget(fd);
            real::connect(fd, addr, len)
        }
    }
}

/// getaddrinfo(3): overlay node names resolve to their virtual addresses
/// (see `names`); everything else is the C library's.
///
/// # Safety
/// As getaddrinfo(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const std::ffi::c_char,
    service: *const std::ffi::c_char,
    hints: *const libc::addrinfo,
    res: *mut *mut libc::addrinfo,
) -> c_int {
    // SAFETY: passed on as the caller gave them.
    match unsafe { names::getaddrinfo(node, service, hints, res) } {
        Some(r) => r,
        None => real::getaddrinfo(node, service, hints, res),
    }
}

/// gethostbyname_r(3): overlay node names resolve to their virtual
/// addresses (see `names`); everything else is the C library's.
///
/// # Safety
/// As gethostbyname_r(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname_r(
    node: *const std::ffi::c_char,
    ret: *mut libc::hostent,
    buf: *mut std::ffi::c_char,
    len: size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: passed on as the caller gave them.
    match unsafe { names::gethostbyname_r(node, ret, buf, len, result, h_errnop) } {
        Some(r) => r,
        None => real::gethostbyname_r(node, ret, buf, len, result, h_errnop),
    }
}

/// gethostbyname2(3): for AF_INET as gethostbyname; other families are
/// the C library's.
///
/// # Safety
/// As gethostbyname2(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2(node: *const std::ffi::c_char, af: c_int) -> *mut libc::hostent {
    if af == libc::AF_INET {
        // SAFETY: as our caller's.
        unsafe { gethostbyname(node) }
    } else {
        real::gethostbyname2(node, af)
    }
}

/// gethostbyname(3), as gethostbyname_r, into a buffer of the thread's
/// (glibc's is per thread too, overwritten by the next call).
///
/// # Safety
/// As gethostbyname(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(node: *const std::ffi::c_char) -> *mut libc::hostent {
    /// The thread's answer: the hostent and the buffer it points into.
    struct HostBuf {
        host: libc::hostent,
        buf: [u64; 64],
    }
    thread_local! {
        static HOST: std::cell::UnsafeCell<HostBuf> =
            // SAFETY: hostent is plain pointers and integers; all zero is a
            // valid (empty) value.
            const { std::cell::UnsafeCell::new(HostBuf { host: unsafe { std::mem::zeroed() }, buf: [0; 64] }) };
    }
    HOST.with(|cell| {
        // SAFETY: the thread's own cell, borrowed by nobody else while this
        // call runs (gethostbyname is not reentrant on one thread).
        let hb = unsafe { &mut *cell.get() };
        let (mut result, mut herr) = (std::ptr::null_mut(), 0);
        let len = std::mem::size_of_val(&hb.buf);
        // SAFETY: the thread's hostent and buffer (`len` bytes, aligned);
        // the caller's NUL-terminated name.
        let r = unsafe {
            names::gethostbyname_r(
                node,
                &raw mut hb.host,
                hb.buf.as_mut_ptr().cast(),
                len,
                &raw mut result,
                &raw mut herr,
            )
        };
        match r {
            Some(0) => result,
            Some(_) => std::ptr::null_mut(),
            None => real::gethostbyname(node),
        }
    })
}

/// connect(2) on a connected stream: 0 the first time after a
/// non-blocking connect succeeded (as Linux reports it once), else
/// EISCONN.
fn connected_again(fd: c_int) -> c_int {
    if table::update(fd, |i| std::mem::take(&mut i.dialed)) == Some(true) { 0 } else { fail(libc::EISCONN) }
}

/// getifaddrs(3): as the C library's, with the engine's interface on its
/// virtual address under `XSOCK_IFADDR=virtual` ([`names::virtual_ifaddrs`]).
///
/// # Safety
/// As getifaddrs(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getifaddrs(ifap: *mut *mut libc::ifaddrs) -> c_int {
    let r = real::getifaddrs(ifap);
    if r == 0 && !ifap.is_null() && settings().enabled && settings().virtual_ifaddr {
        // SAFETY: getifaddrs succeeded, so `*ifap` holds its list.
        let list = unsafe { *ifap };
        // SAFETY: the list the C library just made.
        unsafe { names::virtual_ifaddrs(list) };
    }
    r
}

/// bind(2): the kernel's, except to this host's virtual address on the
/// overlay, which no interface holds: the socket binds the port on every
/// address instead, and its name says the virtual address.
///
/// # Safety
/// As bind(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let r = real::bind(fd, addr, len);
    if r == 0 || table::kind(fd) != Some(Kind::Fresh) || real::errno() != libc::EADDRNOTAVAIL {
        return r;
    }
    // SAFETY: the caller passes `len` readable bytes at `addr`.
    let Some((want, v6)) = (unsafe { addr::read(addr, len) }) else { return r };
    let vaddr = match attach() {
        Ok(ctl) => ctl.vaddr,
        Err(_) => return fail(libc::EADDRNOTAVAIL),
    };
    if vaddr.is_unspecified() || *want.ip() != vaddr {
        return fail(libc::EADDRNOTAVAIL);
    }
    let (ss, l) = addr::to_kernel(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, want.port()), v6);
    if real::bind(fd, (&raw const ss).cast(), l) < 0 {
        return -1;
    }
    let port = addr::bound(fd).map_or(want.port(), |(a, _)| a.port());
    let local = std::net::SocketAddrV4::new(vaddr, port);
    log(|| format!("fd {fd}: bound to {local}, this host's virtual address (the port on every address)"));
    table::name_fresh(fd, local, v6);
    0
}

/// listen(2): the engine listens (both paths) and the descriptor becomes
/// the control connection it announces connections on.
///
/// # Safety
/// As listen(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    match table::kind(fd) {
        Some(Kind::Fresh) => listen::listen(fd, backlog),
        Some(Kind::Listener) => 0,
        Some(Kind::Stream | Kind::Connecting) => fail(libc::EINVAL),
        None => real::listen(fd, backlog),
    }
}

/// accept4(2): the next connection the engine announces (either path).
///
/// # Safety
/// As accept4(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    match table::kind(fd).filter(|k| *k == Kind::Listener).and_then(|_| table::info(fd)) {
        // SAFETY: the caller's buffers, as accept4(2) takes them.
        Some(info) => unsafe { listen::accept(fd, info, addr, len, flags) },
        None => real::accept4(fd, addr, len, flags),
    }
}

/// accept(2).
///
/// # Safety
/// As accept(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: passed on as given.
    unsafe { accept4(fd, addr, len, 0) }
}

/// getsockname(2).
///
/// # Safety
/// As getsockname(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // (A fresh socket has a name of ours only when bound to the virtual
    // address.)
    if table::kind(fd) == Some(Kind::Connecting) {
        connect::settle(fd);
    }
    match table::kind(fd).and_then(|_| table::info(fd)) {
        // SAFETY: the caller's buffers, as getsockname(2) takes them.
        Some(i) => unsafe { addr::write(i.local, i.v6, addr, len) },
        None => real::getsockname(fd, addr, len),
    }
}

/// getpeername(2).
///
/// # Safety
/// As getpeername(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if table::kind(fd) == Some(Kind::Connecting) {
        connect::settle(fd);
    }
    match table::kind(fd) {
        Some(Kind::Stream) => match table::info(fd).and_then(|i| i.peer.map(|p| (p, i.v6))) {
            // SAFETY: the caller's buffers, as getpeername(2) takes them.
            Some((p, v6)) => unsafe { addr::write(p, v6, addr, len) },
            None => fail(libc::ENOTCONN),
        },
        Some(Kind::Listener | Kind::Connecting) => fail(libc::ENOTCONN),
        _ => real::getpeername(fd, addr, len),
    }
}

/// getsockopt(2).
///
/// # Safety
/// As getsockopt(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if table::kind(fd) == Some(Kind::Connecting) && level == libc::SOL_SOCKET && name == libc::SO_ERROR {
        let e = connect::take_error(fd);
        // SAFETY: the caller's buffers, as getsockopt(2) takes them.
        return unsafe { sockopt::put_int(e, val, len) };
    }
    if table::kind(fd) == Some(Kind::Connecting) {
        connect::settle(fd);
    }
    match table::kind(fd) {
        // SAFETY: the caller's buffers, as getsockopt(2) takes them.
        Some(k @ (Kind::Stream | Kind::Listener | Kind::Connecting)) => unsafe {
            sockopt::get(fd, k, level, name, val, len)
        },
        _ => real::getsockopt(fd, level, name, val, len),
    }
}

/// setsockopt(2).
///
/// # Safety
/// As setsockopt(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    match table::kind(fd) {
        // SAFETY: the caller's buffer, as setsockopt(2) takes it.
        Some(Kind::Stream | Kind::Listener | Kind::Connecting) => unsafe { sockopt::set(fd, level, name, val, len) },
        _ => real::setsockopt(fd, level, name, val, len),
    }
}

/// close(2).
///
/// # Safety
/// As close(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let stream = match table::kind(fd) {
        Some(Kind::Stream) => table::info(fd).map(|i| i.stream),
        Some(Kind::Connecting) => {
            // The last name of a connect under way: its answer is not
            // waited for (the engine carries it on a socketpair whose
            // program end closes here, and so ends it).
            if let Some(req) = table::info(fd).map(|i| i.pending).filter(|r| *r != 0)
                && table::naming_dial(req).len() == 1
            {
                engine::abandon_dial(req);
            }
            None
        }
        Some(_) => None,
        None => {
            engine::closer_closed(fd);
            None
        }
    };
    table::forget(fd);
    if let Some(id) = stream.filter(|id| !table::names_stream(*id)) {
        // Waiting for the engine to have read it: the hang-up follows on
        // another socket, and a program that exits right after (and is
        // reaped) would otherwise look killed to an engine that sees the
        // hang-up first (a CI run reset a peer that way).
        engine::let_go(&[id], settings().iface.as_deref(), true);
    }
    real::close(fd)
}

/// dup(2).
///
/// # Safety
/// As dup(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let r = real::dup(fd);
    if r >= 0 {
        table::copy(fd, r);
    }
    r
}

/// dup2(2).
///
/// # Safety
/// As dup2(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let r = real::dup2(old, new);
    if r >= 0 && old != new {
        table::copy(old, new);
    }
    r
}

/// dup3(2).
///
/// # Safety
/// As dup3(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let r = real::dup3(old, new, flags);
    if r >= 0 {
        table::copy(old, new);
    }
    r
}

fn fcntl_any(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    let r = real::fcntl(fd, cmd, arg);
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        table::copy(fd, r);
    }
    r
}

/// fcntl(2) (its variadic argument is one register wide on every ABI
/// glibc runs on, so it is taken as one).
///
/// # Safety
/// As fcntl(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    fcntl_any(fd, cmd, arg)
}

/// fcntl64, which glibc's headers call fcntl by for 64-bit offsets.
///
/// # Safety
/// As fcntl(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    fcntl_any(fd, cmd, arg)
}

/// recvfrom(2): a stream of ours has no sender address (as TCP).
///
/// # Safety
/// As recvfrom(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if !ours(fd) {
        return real::recvfrom(fd, buf, n, flags, addr, len);
    }
    let r = real::recvfrom(fd, buf, n, flags, std::ptr::null_mut(), std::ptr::null_mut());
    if r >= 0 && !addr.is_null() && !len.is_null() {
        // SAFETY: `len` is the caller's valid socklen_t.
        unsafe { *len = 0 };
    }
    at_end(fd, r, n, flags)
}

/// glibc's checked recvfrom (-D_FORTIFY_SOURCE).
///
/// # Safety
/// As recvfrom(2), with `buflen` the size of `buf`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        die("*** buffer overflow detected ***: recvfrom asked for more than its buffer holds");
    }
    // SAFETY: passed on as given, checked as glibc would.
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

/// A read of `n` bytes (`flags` as recv's) returned `r` on our stream
/// `fd`: at its end, how the stream ended decides what the program sees,
/// 0 for an orderly end, -1 with ECONNRESET (or what Linux gives for the
/// cause) for a reset, as a TCP socket's read reports an RST once.
fn at_end(fd: c_int, r: ssize_t, n: size_t, flags: c_int) -> ssize_t {
    if table::kind(fd) == Some(Kind::Connecting) {
        // A read before the connect is known to have succeeded: a failed
        // one reports its error (once), as a TCP socket's read does.
        let saved = real::errno();
        let e = connect::take_error(fd);
        if e != 0 {
            return fail(e) as ssize_t;
        }
        real::set_errno(saved);
    }
    if r != 0 || n == 0 || flags & libc::MSG_PEEK != 0 {
        return r;
    }
    let Some(stream) = table::info(fd).map(|i| i.stream).filter(|s| *s != 0) else { return r };
    match engine::how_ended(stream, settings().iface.as_deref()) {
        Some(kind) => {
            log(|| format!("fd {fd}: the stream ended badly: {}", errno_name(errno_of(kind))));
            fail(errno_of(kind)) as ssize_t
        }
        None => 0,
    }
}

/// Whether a read's short answer on `fd` (0 or -1) may need [`at_end`]:
/// a stream of ours, or a connect of ours under way.
fn ours(fd: c_int) -> bool {
    matches!(table::kind(fd), Some(Kind::Stream | Kind::Connecting))
}

/// The bytes `n` iovecs at `iov` (null: none) have room for.
///
/// # Safety
/// `iov` is null or points to `n` readable iovecs.
unsafe fn iov_total(iov: *const libc::iovec, n: usize) -> usize {
    if iov.is_null() {
        return 0;
    }
    // SAFETY: as the caller promises.
    unsafe { std::slice::from_raw_parts(iov, n) }.iter().map(|v| v.iov_len).sum()
}

fn errno_name(e: c_int) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// read(2): our streams' ends say how they came ([`at_end`]).
///
/// # Safety
/// As read(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    let r = real::read(fd, buf, n);
    if r <= 0 && ours(fd) { at_end(fd, r, n, 0) } else { r }
}

/// glibc's checked read (-D_FORTIFY_SOURCE).
///
/// # Safety
/// As read(2), with `buflen` the size of `buf`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if n > buflen {
        die("*** buffer overflow detected ***: read asked for more than its buffer holds");
    }
    // SAFETY: as our caller's.
    unsafe { read(fd, buf, n) }
}

/// readv(2), as read.
///
/// # Safety
/// As readv(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    let r = real::readv(fd, iov, cnt);
    if r > 0 || !ours(fd) || iov.is_null() {
        return r;
    }
    // SAFETY: the caller's `cnt` iovecs at `iov`, as readv(2) read them.
    let total = unsafe { iov_total(iov, usize::try_from(cnt).unwrap_or(0)) };
    at_end(fd, r, total, 0)
}

/// recv(2), as read.
///
/// # Safety
/// As recv(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    let r = real::recv(fd, buf, n, flags);
    if r <= 0 && ours(fd) { at_end(fd, r, n, flags) } else { r }
}

/// glibc's checked recv (-D_FORTIFY_SOURCE).
///
/// # Safety
/// As recv(2), with `buflen` the size of `buf`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t {
    if n > buflen {
        die("*** buffer overflow detected ***: recv asked for more than its buffer holds");
    }
    // SAFETY: as our caller's.
    unsafe { recv(fd, buf, n, flags) }
}

/// recvmsg(2): as recvfrom, no sender address on our streams.
///
/// # Safety
/// As recvmsg(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if !ours(fd) || msg.is_null() {
        return real::recvmsg(fd, msg, flags);
    }
    // SAFETY: the caller's msghdr, valid per recvmsg(2).
    let mut m = unsafe { msg.read() };
    let name = m.msg_name;
    m.msg_name = std::ptr::null_mut();
    m.msg_namelen = 0;
    let r = real::recvmsg(fd, &raw mut m, flags);
    if r >= 0 {
        m.msg_name = name;
        // SAFETY: writing back what the kernel set, into the caller's
        // msghdr (name length 0: no address).
        unsafe { msg.write(m) };
    }
    // SAFETY: the caller's iovecs, as recvmsg(2) read them.
    let total = unsafe { iov_total(m.msg_iov, m.msg_iovlen) };
    at_end(fd, r, total, flags)
}

/// sendto(2): the address is ignored on a connected stream (as TCP).
///
/// # Safety
/// As sendto(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    if ours(fd) {
        return real::sendto(fd, buf, n, flags, std::ptr::null(), 0);
    }
    real::sendto(fd, buf, n, flags, addr, len)
}

/// sendmsg(2): as sendto.
///
/// # Safety
/// As sendmsg(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if !ours(fd) || msg.is_null() {
        return real::sendmsg(fd, msg, flags);
    }
    // SAFETY: the caller's msghdr, valid per sendmsg(2).
    let mut m = unsafe { msg.read() };
    m.msg_name = std::ptr::null_mut();
    m.msg_namelen = 0;
    real::sendmsg(fd, &raw const m, flags)
}
