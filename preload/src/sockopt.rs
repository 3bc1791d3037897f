//! Socket options on our descriptors, answered as a TCP socket would.
//!
//! Socket-level options (buffers, timeouts, keepalive, linger, SO_ERROR)
//! go to the descriptor itself, a kernel socket that honours them, except
//! the ones that would betray it is not TCP (type, domain, protocol,
//! accepting). TCP- and IP-level options are kept here: set returns what
//! Linux returns for a valid value (the stream's own protocol decides how
//! it sends), get returns what was set or Linux's default; an option
//! Linux does not know is ENOPROTOOPT, a short value EINVAL, an unknown
//! congestion control ENOENT.

use std::collections::HashMap;

use libc::{c_int, c_void, socklen_t};

use crate::{fail, real, table, table::Kind};

/// TCP-level integer options and Linux's defaults.
const TCP_INTS: &[(c_int, c_int)] = &[
    (libc::TCP_NODELAY, 0),
    (libc::TCP_MAXSEG, 1448),
    (libc::TCP_CORK, 0),
    (libc::TCP_KEEPIDLE, 7200),
    (libc::TCP_KEEPINTVL, 75),
    (libc::TCP_KEEPCNT, 9),
    (libc::TCP_SYNCNT, 6),
    (libc::TCP_LINGER2, 60),
    (libc::TCP_DEFER_ACCEPT, 0),
    (libc::TCP_WINDOW_CLAMP, 0),
    (libc::TCP_QUICKACK, 1),
    (libc::TCP_USER_TIMEOUT, 0),
    (libc::TCP_NOTSENT_LOWAT, 0),
    (libc::TCP_FASTOPEN, 0),
    (libc::TCP_THIN_LINEAR_TIMEOUTS, 0),
];

/// IP-level integer options and their defaults.
const IP_INTS: &[(c_int, c_int)] = &[
    (libc::IP_TOS, 0),
    (libc::IP_TTL, 64),
    (libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_WANT),
    (libc::IP_RECVERR, 0),
    (libc::IP_FREEBIND, 0),
    (libc::IP_BIND_ADDRESS_NO_PORT, 0),
];

fn default_of(table: &[(c_int, c_int)], name: c_int) -> Option<c_int> {
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The TCP- and IP-level options the program set on a fresh socket before
/// connecting, to answer them the same afterwards.
pub fn kept_from_fresh(fd: c_int) -> HashMap<(c_int, c_int), Vec<u8>> {
    let mut out = HashMap::new();
    for (level, table) in [(libc::IPPROTO_TCP, TCP_INTS), (libc::IPPROTO_IP, IP_INTS)] {
        for &(name, default) in table {
            let mut v: c_int = 0;
            let mut len = 4 as socklen_t;
            if real::getsockopt(fd, level, name, (&raw mut v).cast(), &raw mut len) == 0 && len == 4 && v != default {
                out.insert((level, name), v.to_ne_bytes().to_vec());
            }
        }
    }
    out
}

/// Socket-level options that mean the same on the handed-over descriptor:
/// copied from the program's socket before it is replaced.
pub fn carry_over(from: c_int, to: c_int) {
    for name in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO, libc::SO_KEEPALIVE, libc::SO_LINGER, libc::SO_PRIORITY] {
        let mut buf = [0u8; 32];
        let mut len = buf.len() as socklen_t;
        if real::getsockopt(from, libc::SOL_SOCKET, name, buf.as_mut_ptr().cast(), &raw mut len) == 0 {
            real::setsockopt(to, libc::SOL_SOCKET, name, buf.as_ptr().cast(), len);
        }
    }
}

/// Writes an int option to a caller's option buffer.
///
/// # Safety
/// As [`put`].
pub unsafe fn put_int(v: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int {
    // SAFETY: as our caller's.
    unsafe { put(&v.to_ne_bytes(), val, len) }
}

/// Writes `bytes` to a caller's option buffer: at most `*len`, and `*len`
/// set to what was written (as Linux does for these options).
///
/// # Safety
/// `val` points at `*len` writable bytes; `len` is valid.
unsafe fn put(bytes: &[u8], val: *mut c_void, len: *mut socklen_t) -> c_int {
    if val.is_null() || len.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: `len` is valid per the caller.
    let room = unsafe { *len };
    if (room as c_int) < 0 {
        return fail(libc::EINVAL);
    }
    let n = bytes.len().min(room as usize);
    // SAFETY: n <= room bytes into the caller's buffer, from our slice.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), val.cast::<u8>(), n) };
    // SAFETY: as above.
    unsafe { *len = n as socklen_t };
    0
}

fn tcp_info(kind: Kind) -> Vec<u8> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut t: libc::tcp_info = unsafe { std::mem::zeroed() };
    t.tcpi_state = match kind {
        Kind::Listener => 10,  // TCP_LISTEN
        Kind::Connecting => 2, // TCP_SYN_SENT
        _ => 1,                // TCP_ESTABLISHED
    };
    t.tcpi_snd_mss = 1448;
    t.tcpi_rcv_mss = 1448;
    t.tcpi_advmss = 1448;
    t.tcpi_pmtu = 1500;
    // SAFETY: reading the bytes of a plain-data struct we own.
    let bytes =
        unsafe { std::slice::from_raw_parts((&raw const t).cast::<u8>(), std::mem::size_of::<libc::tcp_info>()) };
    bytes.to_vec()
}

/// Where socket-level options of `fd` live: the descriptor itself, except
/// for a dual-stack listener (an epoll instance), whose kernel IPv6
/// listener (or engine connection) holds them.
fn socket_level_fd(fd: c_int) -> c_int {
    match table::info(fd).and_then(|i| i.dual) {
        Some(d) if d.v6 >= 0 => d.v6,
        Some(d) => d.ctl,
        None => fd,
    }
}

/// getsockopt on a stream or listener of ours.
///
/// # Safety
/// As getsockopt(2).
pub unsafe fn get(fd: c_int, kind: Kind, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int {
    let int = |v: c_int| v.to_ne_bytes().to_vec();
    let set = table::info(fd).and_then(|i| i.opts.get(&(level, name)).cloned());
    let bytes = match level {
        libc::SOL_SOCKET => match name {
            libc::SO_TYPE => int(libc::SOCK_STREAM),
            libc::SO_DOMAIN => int(if table::info(fd).is_some_and(|i| i.v6) { libc::AF_INET6 } else { libc::AF_INET }),
            libc::SO_PROTOCOL => int(libc::IPPROTO_TCP),
            libc::SO_ACCEPTCONN => int(c_int::from(kind == Kind::Listener)),
            _ => return real::getsockopt(socket_level_fd(fd), level, name, val, len),
        },
        libc::IPPROTO_TCP => match name {
            libc::TCP_INFO => tcp_info(kind),
            libc::TCP_CONGESTION => set.unwrap_or_else(|| {
                let path = table::info(fd).map_or("reliable-link", |i| i.path);
                let mut b = path.as_bytes().to_vec();
                b.resize(16, 0);
                b
            }),
            n => match (set, default_of(TCP_INTS, n)) {
                (Some(v), _) => v,
                (None, Some(d)) => int(d),
                (None, None) => return fail(libc::ENOPROTOOPT),
            },
        },
        libc::IPPROTO_IP => match (set, default_of(IP_INTS, name)) {
            (Some(v), _) => v,
            (None, Some(d)) => int(d),
            (None, None) if name == libc::IP_MTU && kind == Kind::Stream => int(1500),
            (None, None) => return fail(libc::ENOPROTOOPT),
        },
        _ => return fail(libc::ENOPROTOOPT),
    };
    // SAFETY: the caller's buffers, as getsockopt(2) takes them.
    unsafe { put(&bytes, val, len) }
}

/// The congestion controls this kernel offers (what Linux accepts).
fn known_congestion(name: &[u8]) -> bool {
    let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|s| s.split_whitespace().any(|n| n == name))
        .unwrap_or(false)
}

/// setsockopt on a stream or listener of ours.
///
/// # Safety
/// As setsockopt(2).
pub unsafe fn set(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    if level == libc::SOL_SOCKET {
        return real::setsockopt(socket_level_fd(fd), level, name, val, len);
    }
    if val.is_null() && len > 0 {
        return fail(libc::EFAULT);
    }
    let bytes = if len == 0 {
        Vec::new()
    } else {
        // SAFETY: the caller passes `len` readable bytes at `val`.
        unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }.to_vec()
    };
    match level {
        libc::IPPROTO_TCP if name == libc::TCP_CONGESTION => {
            if !known_congestion(&bytes) {
                return fail(libc::ENOENT);
            }
        }
        libc::IPPROTO_TCP => {
            if default_of(TCP_INTS, name).is_none() {
                return fail(libc::ENOPROTOOPT);
            }
            if bytes.len() < 4 {
                return fail(libc::EINVAL);
            }
        }
        libc::IPPROTO_IP => {
            if default_of(IP_INTS, name).is_none() {
                return fail(libc::ENOPROTOOPT);
            }
            if bytes.is_empty() {
                return fail(libc::EINVAL);
            }
        }
        _ => return fail(libc::ENOPROTOOPT),
    }
    let bytes = if level == libc::IPPROTO_TCP && name == libc::TCP_CONGESTION {
        bytes
    } else {
        // Integers as Linux reads them: the first int (a shorter IP value
        // is one byte).
        let mut v = [0u8; 4];
        let n = bytes.len().min(4);
        v[..n].copy_from_slice(&bytes[..n]);
        v.to_vec()
    };
    table::set_opt(fd, level, name, bytes);
    0
}
