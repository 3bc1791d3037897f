//! connect(2) of a fresh TCP socket: through the engine to an xsock peer,
//! or left to the kernel on the program's own socket.

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    sync::Mutex,
    time::{Duration, Instant},
};

use libc::c_int;
use xsock_attach::{EndKind, Msg, PathKind, TransportKind, preload::PreloadTransport};

use crate::{
    addr, attach,
    engine::{self, DialState, Dialed},
    errno_of, fail, install, log, no_engine, path_name, real, settings, sockopt,
    table::{self, Info, Kind},
    welcome,
};

/// `Some(result)` if decided here (through the engine, or failed), `None`
/// to leave the connect to the kernel. `v6`: the program's socket is
/// AF_INET6 (its names are then IPv4-mapped).
pub fn through_engine(fd: c_int, dest: SocketAddrV4, v6: bool) -> Option<c_int> {
    let s = settings();
    let nonblocking = real::fcntl(fd, libc::F_GETFL, 0) & libc::O_NONBLOCK != 0;
    // A non-blocking connect goes over this process's shared connection
    // (a dial): the engine's words from it are all it needs.
    let ctl = match if nonblocking { welcome() } else { attach() } {
        Ok(c) => c,
        Err(r) => return r,
    };
    // A node's virtual address: through the engine's overlay node,
    // whatever the transport setting (the kernel has no route to it).
    let virtual_dest = ctl.is_virtual(*dest.ip());
    let transport = match s.transport {
        PreloadTransport::Tcp if !virtual_dest => TransportKind::Tcp,
        _ => TransportKind::Link,
    };
    if virtual_dest && *dest.ip() == ctl.vaddr {
        log(|| format!("fd {fd}: {dest} is this host's virtual address: kernel loopback"));
        table::forget(fd);
        let (ss, len) = addr::to_kernel(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, dest.port()), v6);
        return Some(real::connect(fd, (&raw const ss).cast(), len));
    }
    if !virtual_dest && *dest.ip() == ctl.addr {
        // This host itself: the kernel's TCP is the short way (and the link
        // has no path to itself).
        log(|| format!("fd {fd}: {dest} is this host: kernel TCP"));
        return None;
    }
    if !virtual_dest && transport == TransportKind::Link && !ctl.on_subnet(*dest.ip()) {
        log(|| format!("fd {fd}: {dest} is off {}'s subnet: kernel TCP", ctl.iface));
        return None;
    }
    let timeout_ms = u32::try_from(s.connect_timeout.as_millis()).unwrap_or(u32::MAX);
    let auto = s.transport == PreloadTransport::Auto && !virtual_dest;
    if nonblocking {
        if auto && served_by_kernel(dest) {
            log(|| format!("fd {fd}: {dest} was served by kernel TCP lately: kernel TCP"));
            return None;
        }
        // The engine falls back to kernel TCP itself (the descriptor is
        // the program's from now on, whatever the path).
        let transport = if auto { TransportKind::Auto } else { transport };
        let local = SocketAddrV4::new(if virtual_dest { ctl.vaddr } else { ctl.addr }, 0);
        return dial(fd, Msg::Dial { req: 0, addr: dest, transport, timeout_ms, filler: 0 }, local, v6);
    }
    let deadline = Instant::now() + s.connect_timeout + Duration::from_secs(2);
    let m = Msg::Connect { req: 1, addr: dest, transport, messages: false, timeout_ms };
    match engine::request(ctl.fd, &m, deadline) {
        Ok(engine::Answer::Stream { fd: new, stream, path, local, peer }) => {
            let opts = sockopt::kept_from_fresh(fd);
            if let Err(e) = install(fd, new) {
                return Some(fail(e));
            }
            if path == PathKind::Kernel {
                table::forget(fd);
            } else {
                let info = Info { local, peer: Some(peer), path: path_name(path), opts, stream, v6, ..Info::default() };
                table::mark(fd, Kind::Stream, info);
            }
            log(|| format!("fd {fd}: connected {local} -> {peer} over {}", path_name(path)));
            let nonblocking = real::fcntl(fd, libc::F_GETFL, 0) & libc::O_NONBLOCK != 0;
            // A non-blocking connect says "in progress" as Linux does; the
            // descriptor is writable at once and SO_ERROR is 0.
            Some(if nonblocking { fail(libc::EINPROGRESS) } else { 0 })
        }
        Ok(engine::Answer::Failed { kind, text }) => {
            // Not an xsock peer, or one whose port is a kernel listener's:
            // the kernel's TCP, on the program's own socket.
            let fallback = !virtual_dest
                && s.transport == PreloadTransport::Auto
                && matches!(kind, EndKind::Config | EndKind::Refused | EndKind::Overloaded | EndKind::Shutdown);
            if fallback {
                log(|| format!("fd {fd}: {dest} not on reliable-link ({text}): kernel TCP"));
                remember_kernel(dest);
                return None;
            }
            log(|| format!("fd {fd}: connect to {dest} failed: {text}"));
            Some(fail(errno_of(kind)))
        }
        Ok(engine::Answer::Listening { .. } | engine::Answer::Found { .. }) => Some(fail(libc::EPROTO)),
        Err(text) => no_engine(&text),
    }
}

/// Addresses whose last connect ended on kernel TCP, and when: a
/// non-blocking connect to one goes straight to the kernel for
/// [`KERNEL_KEPT`] (a dial's fallback is carried through the engine).
static KERNEL_SERVED: Mutex<Option<HashMap<SocketAddrV4, Instant>>> = Mutex::new(None);

/// As long as discovery trusts that an address runs no xsock.
const KERNEL_KEPT: Duration = Duration::from_secs(10);

fn remember_kernel(dest: SocketAddrV4) {
    let mut g = KERNEL_SERVED.lock().unwrap_or_else(|p| p.into_inner());
    let m = g.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    if m.len() >= 4096 {
        m.retain(|_, t| now.duration_since(*t) < KERNEL_KEPT);
    }
    m.insert(dest, now);
}

fn served_by_kernel(dest: SocketAddrV4) -> bool {
    let g = KERNEL_SERVED.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref().and_then(|m| m.get(&dest)).is_some_and(|t| t.elapsed() < KERNEL_KEPT)
}

/// Zeroes for the filler.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// A non-blocking connect: the program's descriptor becomes one end of a
/// socketpair at once, filled until it is not writable, and the engine
/// connects on the other ([`Msg::Dial`]): the descriptor turns writable
/// when the stream is connected, or hangs up if the connect failed, so
/// poll, select and epoll see what they would of a TCP socket; SO_ERROR
/// then says which ([`settle`]). `local`: the name it shows meanwhile.
fn dial(fd: c_int, m: Msg<'_>, local: SocketAddrV4, v6: bool) -> Option<c_int> {
    let mut sv = [-1 as c_int; 2];
    if real::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0, sv.as_mut_ptr())
        < 0
    {
        return Some(-1); // EMFILE, ENFILE: as the kernel said
    }
    let (ours, theirs) = (sv[0], sv[1]);
    // The least send buffer there is while filling (a few KiB of filler,
    // not the default's 200), the default given back once connected.
    let (mut sndbuf, mut len) = (0 as c_int, 4 as libc::socklen_t);
    real::getsockopt(ours, libc::SOL_SOCKET, libc::SO_SNDBUF, (&raw mut sndbuf).cast(), &raw mut len);
    let least: c_int = 1;
    real::setsockopt(ours, libc::SOL_SOCKET, libc::SO_SNDBUF, (&raw const least).cast(), 4);
    let mut filler = 0u32;
    loop {
        let n = real::sendto(ours, ZEROES.as_ptr().cast(), ZEROES.len(), libc::MSG_NOSIGNAL, std::ptr::null(), 0);
        if n > 0 {
            filler = filler.saturating_add(n as u32);
        } else if n < 0 && real::errno() == libc::EINTR {
            continue;
        } else {
            break; // EAGAIN: not writable any more
        }
    }
    let Msg::Dial { addr: dest, transport, timeout_ms, .. } = m else { unreachable!("a dial") };
    let m = Msg::Dial { req: 0, addr: dest, transport, timeout_ms, filler };
    let req = match engine::dial(m, theirs, settings().iface.as_deref()) {
        Ok(r) => r,
        Err(text) => {
            real::close(ours);
            return no_engine(&text);
        }
    };
    let opts = sockopt::kept_from_fresh(fd);
    if let Err(e) = install(fd, ours) {
        engine::abandon_dial(req);
        return Some(fail(e));
    }
    let info = Info { local, peer: Some(dest), path: "connecting", opts, v6, pending: req, sndbuf, ..Info::default() };
    table::mark(fd, Kind::Connecting, info);
    log(|| format!("fd {fd}: connecting to {dest} without waiting (dial {req}, {filler} bytes of filler)"));
    Some(fail(libc::EINPROGRESS))
}

/// Brings connecting `fd` (and its dups) up to date with its dial's
/// answer, if it came. A descriptor that shows the connect decided
/// (writable: the engine dropped the filler after answering; hung up: it
/// failed) waits for the answer a little, as it is on its way.
pub fn settle(fd: c_int) {
    let Some(info) = table::info(fd).filter(|i| i.pending != 0) else { return };
    let req = info.pending;
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one live pollfd, and its count.
    let ready = unsafe { libc::poll(&raw mut p, 1, 0) } > 0;
    let hung_up = ready && p.revents & (libc::POLLHUP | libc::POLLERR) != 0;
    let deadline = ready.then(|| Instant::now() + Duration::from_secs(2));
    let outcome = match engine::take_dial(req, deadline) {
        DialState::Pending if !ready => return,
        DialState::Done(d) => d,
        // Decided, but its answer is not ours to read (a forked child's
        // copy of its parent's connect) or never came: what the
        // descriptor shows is all there is.
        DialState::Pending | DialState::Lost if hung_up => {
            Dialed::Failed { kind: EndKind::Reset, text: "the engine closed the connection".into() }
        }
        DialState::Pending | DialState::Lost if ready => {
            Dialed::Stream { stream: 0, path: PathKind::Link, local: info.local, peer: info.peer.unwrap_or(info.local) }
        }
        DialState::Pending | DialState::Lost => return,
    };
    let fds = table::naming_dial(req);
    match outcome {
        Dialed::Stream { stream, path, local, peer } => {
            if path == PathKind::Kernel
                && let Some(dest) = info.peer
            {
                remember_kernel(dest);
            }
            log(|| format!("fd {fd}: connected {local} -> {peer} over {} (dial {req})", path_name(path)));
            // SO_SNDBUF reads back doubled; setting it doubles.
            let give_back = info.sndbuf / 2;
            if give_back > 0 {
                real::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&raw const give_back).cast(), 4);
            }
            for f in fds {
                let i = Info {
                    local,
                    peer: Some(peer),
                    path: path_name(path),
                    opts: info.opts.clone(),
                    stream,
                    v6: info.v6,
                    dialed: true,
                    ..Info::default()
                };
                table::mark(f, Kind::Stream, i);
            }
        }
        Dialed::Failed { kind, text } => {
            let dest = info.peer.map_or_else(String::new, |p| p.to_string());
            log(|| format!("fd {fd}: connect to {dest} failed: {text} (dial {req})"));
            for f in fds {
                table::update(f, |i| {
                    i.pending = 0;
                    i.error = errno_of(kind);
                });
            }
        }
    }
}

/// A connecting descriptor's pending error, taken (reported once, as
/// SO_ERROR does), after bringing it up to date; 0: none (still
/// connecting, or connected).
pub fn take_error(fd: c_int) -> c_int {
    settle(fd);
    table::update(fd, |i| std::mem::take(&mut i.error)).unwrap_or(0)
}
