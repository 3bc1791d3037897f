//! connect(2) of a fresh TCP socket: through the engine to an xsock peer,
//! or left to the kernel on the program's own socket.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use libc::c_int;
use xsock_attach::{EndKind, Msg, PathKind, TransportKind, preload::PreloadTransport};

use crate::{
    addr, attach, engine, errno_of, fail, install, log, no_engine, path_name, real, settings, sockopt,
    table::{self, Info, Kind},
};

/// `Some(result)` if decided here (through the engine, or failed), `None`
/// to leave the connect to the kernel. `v6`: the program's socket is
/// AF_INET6 (its names are then IPv4-mapped).
pub fn through_engine(fd: c_int, dest: SocketAddrV4, v6: bool) -> Option<c_int> {
    let s = settings();
    let ctl = match attach() {
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
                let info = Info { local, peer: Some(peer), path: path_name(path), opts, stream, v6, dual: None };
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
                return None;
            }
            log(|| format!("fd {fd}: connect to {dest} failed: {text}"));
            Some(fail(errno_of(kind)))
        }
        Ok(engine::Answer::Listening { .. } | engine::Answer::Found { .. }) => Some(fail(libc::EPROTO)),
        Err(text) => no_engine(&text),
    }
}
