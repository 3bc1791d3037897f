//! listen(2) and accept(2) through the engine.
//!
//! An IPv4 listener's descriptor becomes its control connection to the
//! engine, readable when the engine announces a connection (on either
//! path: the engine listens with reliable-link and kernel TCP). A
//! dual-stack IPv6 listener (AF_INET6, not V6ONLY, bound to `::`, as
//! `iperf3 -s` makes) becomes an epoll instance over that control
//! connection and a kernel IPv6-only listener on the same port, so IPv6
//! clients still reach it; readiness, poll, select and epoll on it work as
//! on the kernel's listener.

use std::{
    net::SocketAddrV4,
    sync::Arc,
    time::{Duration, Instant},
};

use libc::{c_int, sockaddr, socklen_t};
use xsock_attach::{Msg, PathKind};

use crate::{
    Modes, addr, attach, engine, fail, log, path_name, real, set_nonblocking,
    table::{self, Dual, Info, Kind},
};

fn v6only(fd: c_int) -> bool {
    let mut v: c_int = 0;
    let mut len = 4 as socklen_t;
    real::getsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&raw mut v).cast(), &raw mut len) == 0 && v != 0
}

/// listen(2) on a fresh socket.
pub fn listen(fd: c_int, backlog: c_int) -> c_int {
    let leave = || {
        table::forget(fd);
        real::listen(fd, backlog)
    };
    let Some((addr, v6)) = addr::bound(fd) else { return leave() };
    if addr.ip().is_loopback() || (v6 && v6only(fd)) {
        return leave();
    }
    let ctl = match attach() {
        Ok(c) => c,
        Err(r) => {
            table::forget(fd);
            return r.unwrap_or_else(|| real::listen(fd, backlog));
        }
    };
    if !addr.ip().is_unspecified() && *addr.ip() != ctl.addr {
        log(|| format!("fd {fd}: {addr} is not {}'s address: kernel listener", ctl.iface));
        return leave();
    }
    let modes = Modes::of(fd);
    let iface = ctl.iface.clone();
    // The program's socket goes (freeing its port) and its number names
    // the listener from here on: the control connection itself, or (dual)
    // an epoll instance over it and a kernel IPv6 listener.
    let (ctl_fd, epoll) = if v6 {
        // SAFETY: epoll_create1 takes flags only.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return leave();
        }
        (ctl.into_fd(), Some(ep))
    } else {
        let c = ctl.into_fd();
        (c, None)
    };
    if modes.replace(epoll.unwrap_or(ctl_fd), fd).is_err() {
        if epoll.is_some() {
            real::close(ctl_fd);
        }
        table::forget(fd);
        return real::listen(fd, backlog);
    }
    let ctl_fd = if epoll.is_some() { ctl_fd } else { fd };
    let deadline = Instant::now() + Duration::from_secs(5);
    let local = match engine::request(ctl_fd, &Msg::Listen { req: 1, addr, messages: false }, deadline) {
        Ok(engine::Answer::Listening { local }) => local,
        other => {
            let why = match other {
                Ok(engine::Answer::Failed { text, .. }) | Err(text) => text,
                Ok(_) => "an unexpected answer".to_owned(),
            };
            if epoll.is_some() {
                real::close(ctl_fd);
            }
            eprintln!("xsock preload: the engine cannot listen on {addr} ({why}); listening on the kernel only");
            return relisten_on_kernel(fd, addr, v6, backlog, modes);
        }
    };
    let dual = if v6 {
        set_nonblocking(ctl_fd, true);
        let k6 = kernel_v6_only(local.port(), backlog);
        for part in [ctl_fd, k6] {
            if part >= 0 {
                let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: part as u64 };
                // SAFETY: `fd` is our epoll instance, `part` a live
                // descriptor, `ev` a valid event for the call.
                unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, part, &raw mut ev) };
            }
        }
        Some(Arc::new(Dual { ctl: ctl_fd, v6: k6 }))
    } else {
        None
    };
    let both = if dual.as_ref().is_some_and(|d| d.v6 >= 0) { " and IPv6 on the kernel" } else { "" };
    // Bound to the virtual address: named by it.
    let local = match table::info(fd) {
        Some(i) => SocketAddrV4::new(*i.local.ip(), local.port()),
        None => local,
    };
    table::mark(
        fd,
        Kind::Listener,
        Info {
            local,
            peer: None,
            path: "reliable-link",
            opts: Default::default(),
            stream: 0,
            v6,
            dual,
            ..Info::default()
        },
    );
    log(|| format!("fd {fd}: listening on {local} through the engine on {iface} (both paths){both}"));
    0
}

/// A kernel IPv6-only listener on `port` (non-blocking, close-on-exec), or
/// -1 where IPv6 is off.
fn kernel_v6_only(port: u16, backlog: c_int) -> c_int {
    let s = real::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0);
    if s < 0 {
        return -1;
    }
    let one: c_int = 1;
    real::setsockopt(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&raw const one).cast(), 4);
    real::setsockopt(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), 4);
    let (ss, len) = addr::to_kernel(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port), true);
    if real::bind(s, (&raw const ss).cast(), len) < 0 || real::listen(s, backlog) < 0 {
        real::close(s);
        return -1;
    }
    s
}

/// A kernel listener again on `fd` after the engine refused `addr`.
fn relisten_on_kernel(fd: c_int, a: SocketAddrV4, v6: bool, backlog: c_int, modes: Modes) -> c_int {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let s = real::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    if s < 0 {
        return -1;
    }
    let one: c_int = 1;
    real::setsockopt(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), 4);
    let (ss, len) = addr::to_kernel(a, v6);
    let mut r = real::bind(s, (&raw const ss).cast(), len);
    if r == 0 {
        r = real::listen(s, backlog);
    }
    let e = real::errno();
    let _ = modes.replace(s, fd);
    table::forget(fd);
    if r < 0 {
        real::set_errno(e);
    }
    r
}

/// One announcement off a listener's control connection: `Ok(Some(fd))`
/// a connection, `Ok(None)` something else (the end of a stream it
/// accepted), `Err(errno)` nothing (EAGAIN, EINTR) or a dead engine.
fn take_accepted(
    ctl: c_int,
    flags: c_int,
    v6: bool,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Result<Option<c_int>, c_int> {
    let mut buf = [0u8; engine::ANSWER_MAX];
    let (n, fds) = match engine::recv(ctl, &mut buf, None, flags & libc::SOCK_CLOEXEC != 0) {
        Ok(r) => r,
        Err(engine::RecvError::Errno(e)) => return Err(e),
        Err(e) => {
            eprintln!("xsock preload: a listener's engine connection ended ({e}); it accepts nothing more");
            return Err(libc::EINVAL);
        }
    };
    if let Ok(Msg::Accepted { stream, path, local, peer, .. }) = Msg::parse(&buf[..n])
        && fds.len() == 1
    {
        let new = fds[0];
        set_nonblocking(new, flags & libc::SOCK_NONBLOCK != 0);
        if path != PathKind::Kernel {
            let info = Info {
                local,
                peer: Some(peer),
                path: path_name(path),
                opts: Default::default(),
                stream,
                v6,
                ..Info::default()
            };
            table::mark(new, Kind::Stream, info);
        }
        log(|| format!("accepted fd {new}: {peer} -> {local} over {}", path_name(path)));
        // SAFETY: the caller's buffers, as accept4(2) takes them.
        unsafe { addr::write(peer, v6, addr, len) };
        return Ok(Some(new));
    }
    engine::close_all(&fds);
    Ok(None)
}

/// accept4(2) on a listener of ours.
///
/// # Safety
/// As accept4(2).
pub unsafe fn accept(fd: c_int, info: Info, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return fail(libc::EINVAL);
    }
    let Some(dual) = info.dual else {
        // The descriptor is the control connection: its own blocking mode.
        loop {
            match take_accepted(fd, flags, info.v6, addr, len) {
                Ok(Some(new)) => return new,
                Ok(None) => continue,
                Err(e) => return fail(e),
            }
        }
    };
    let nonblocking = real::fcntl(fd, libc::F_GETFL, 0) & libc::O_NONBLOCK != 0;
    loop {
        match take_accepted(dual.ctl, flags, true, addr, len) {
            Ok(Some(new)) => return new,
            Ok(None) => continue,
            Err(libc::EAGAIN) => {}
            Err(e) => return fail(e),
        }
        if dual.v6 >= 0 {
            let r = real::accept4(dual.v6, addr, len, flags);
            if r >= 0 || real::errno() != libc::EAGAIN {
                return r;
            }
        }
        if nonblocking {
            return fail(libc::EAGAIN);
        }
        let mut p = [
            libc::pollfd { fd: dual.ctl, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: dual.v6, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two live pollfds (a negative fd is ignored by poll).
        if unsafe { libc::poll(p.as_mut_ptr(), 2, -1) } < 0 {
            return -1; // EINTR, as accept(2) gives it
        }
    }
}
