//! getaddrinfo(3) and gethostbyname(3) of overlay node names: with an
//! engine joined to the overlay, a name the bootstrap servers know (`n2a`)
//! resolves to that node's virtual address, so `nc n2a 5000` needs no
//! /etc/hosts entry.
//! The engine is asked first (a name it does not know goes on to the C
//! library's lookup, /etc/hosts and DNS, unchanged); answers are kept 10 s.
//! getaddrinfo's result is the C library's own, built from the numeric
//! address, so freeaddrinfo(3) frees it as usual; gethostbyname's is built
//! here, in the caller's buffer (`_r`) or a buffer of the thread's.

use std::{
    collections::HashMap,
    ffi::CStr,
    net::Ipv4Addr,
    sync::Mutex,
    time::{Duration, Instant},
};

use libc::{addrinfo, c_char, c_int};
use xsock_attach::{Msg, preload::PreloadTransport};

use crate::{engine, log, real, settings};

/// glibc's h_errno for "see errno" (netdb.h).
const NETDB_INTERNAL: c_int = -1;

/// How long an answer (either way) is kept.
const KEEP: Duration = Duration::from_secs(10);

/// A name's answer (its address, or none) and when it came.
type Answer = (Option<Ipv4Addr>, Instant);

/// Names asked of the engine.
static ASKED: Mutex<Option<HashMap<String, Answer>>> = Mutex::new(None);

/// getaddrinfo for an overlay name: `Some(result)` if `node` is one,
/// `None` to leave the call to the C library.
///
/// # Safety
/// As getaddrinfo(3): `node` and `service` NUL-terminated or null, `hints`
/// null or valid, `res` writable.
pub unsafe fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> Option<c_int> {
    // SAFETY: the caller's hints, null or valid.
    let mut h: addrinfo = if hints.is_null() { unsafe { std::mem::zeroed() } } else { unsafe { hints.read() } };
    if (h.ai_family != libc::AF_UNSPEC && h.ai_family != libc::AF_INET) || h.ai_flags & libc::AI_NUMERICHOST != 0 {
        return None;
    }
    // SAFETY: the caller's NUL-terminated name.
    let (name, addr) = unsafe { overlay_name(node) }?;
    log(|| format!("getaddrinfo({name}): the overlay node's virtual address {addr}"));
    h.ai_family = libc::AF_INET;
    // (AI_CANONNAME is kept: the canonical name is then the address, and
    // a program that asked for one finds one.)
    h.ai_flags |= libc::AI_NUMERICHOST;
    let numeric = std::ffi::CString::new(addr.to_string()).expect("no NUL in an address");
    Some(real::getaddrinfo(numeric.as_ptr(), service, &raw const h, res))
}

/// `node` and its virtual address, if it names an overlay node.
///
/// # Safety
/// `node` is null or NUL-terminated.
unsafe fn overlay_name<'a>(node: *const c_char) -> Option<(&'a str, Ipv4Addr)> {
    let s = settings();
    if node.is_null() || !s.enabled || s.transport == PreloadTransport::Kernel {
        return None;
    }
    // SAFETY: as the caller promises.
    let name = unsafe { CStr::from_ptr(node) }.to_str().ok()?;
    if !plausible(name) {
        return None;
    }
    Some((name, vaddr_of(name)?))
}

/// gethostbyname_r for an overlay name: `Some(status)` if `node` is one
/// (0, or ERANGE when `buf` is too small, as glibc's), `None` to leave the
/// call to the C library.
///
/// # Safety
/// As gethostbyname_r(3): `node` NUL-terminated or null, `ret` writable,
/// `buf` writable for `len` bytes, `result` and `h_errnop` writable.
pub unsafe fn gethostbyname_r(
    node: *const c_char,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    len: usize,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> Option<c_int> {
    // SAFETY: the caller's NUL-terminated name.
    let (name, addr) = unsafe { overlay_name(node) }?;
    log(|| format!("gethostbyname({name}): the overlay node's virtual address {addr}"));
    // SAFETY: as our caller promises.
    Some(unsafe { fill_hostent(name, addr, ret, buf, len, result, h_errnop) })
}

/// Writes `name`'s hostent (one IPv4 address, no aliases) into `ret` and
/// `buf`: 0, or ERANGE when `len` bytes cannot hold it.
///
/// # Safety
/// As gethostbyname_r(3): `ret` writable, `buf` writable for `len` bytes,
/// `result` and `h_errnop` writable.
unsafe fn fill_hostent(
    name: &str,
    addr: Ipv4Addr,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    len: usize,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // The buffer: [address list: 2 pointers][aliases: 1 pointer][address:
    // 4 bytes][name, NUL], the pointers aligned.
    let ptr = std::mem::size_of::<usize>();
    let skip = (buf as usize).next_multiple_of(ptr) - buf as usize;
    let need = skip + 3 * ptr + 4 + name.len() + 1;
    if buf.is_null() || len < need {
        // SAFETY: the caller's result slot, writable.
        unsafe { *result = std::ptr::null_mut() };
        // SAFETY: the caller's h_errno slot, writable.
        unsafe { *h_errnop = NETDB_INTERNAL };
        return libc::ERANGE;
    }
    // SAFETY: `buf` is the caller's, writable for `len` bytes and not
    // otherwise used while this call runs.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    let at = |off: usize| buf.wrapping_add(off);
    let (list, aliases, a, n) = (skip, skip + 2 * ptr, skip + 3 * ptr, skip + 3 * ptr + 4);
    out[list..list + ptr].copy_from_slice(&(at(a) as usize).to_ne_bytes());
    out[list + ptr..aliases].fill(0);
    out[aliases..a].fill(0);
    out[a..n].copy_from_slice(&addr.octets());
    out[n..n + name.len()].copy_from_slice(name.as_bytes());
    out[n + name.len()] = 0;
    let host = libc::hostent {
        h_name: at(n),
        h_aliases: at(aliases).cast(),
        h_addrtype: libc::AF_INET,
        h_length: 4,
        h_addr_list: at(list).cast(),
    };
    // SAFETY: the caller's hostent, writable.
    unsafe { ret.write(host) };
    // SAFETY: the caller's result slot, writable.
    unsafe { *result = ret };
    0
}

/// Whether `name` could be a node's (not a numeric address, not local).
fn plausible(name: &str) -> bool {
    !name.is_empty()
        && name != "localhost"
        && name.parse::<Ipv4Addr>().is_err()
        && !name.contains(':')
        && name.len() <= xsock_attach::wire::MAX_STR
}

/// The virtual address the engine gives `name`, asked at most every 10 s.
fn vaddr_of(name: &str) -> Option<Ipv4Addr> {
    {
        let g = ASKED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, at)) = g.as_ref().and_then(|m| m.get(name))
            && at.elapsed() < KEEP
        {
            return *a;
        }
    }
    let found = ask(name);
    let mut g = ASKED.lock().unwrap_or_else(|p| p.into_inner());
    let m = g.get_or_insert_with(HashMap::new);
    if m.len() > 4096 {
        m.retain(|_, (_, at)| at.elapsed() < KEEP);
    }
    m.insert(name.to_owned(), (found, Instant::now()));
    found
}

fn ask(name: &str) -> Option<Ipv4Addr> {
    let ctl = engine::attach(settings().iface.as_deref()).ok()?;
    if ctl.vnet.1 == 0 {
        return None; // the engine joined no overlay
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    match engine::request(ctl.fd, &Msg::Lookup { req: 1, name }, deadline) {
        Ok(engine::Answer::Found { addr }) => Some(addr),
        _ => None,
    }
}

/// getifaddrs(3) with `XSOCK_IFADDR=virtual`: the engine's interface shows
/// this host's virtual address, the virtual network's mask and its
/// broadcast address (written into the list the C library made, which
/// freeifaddrs frees as ever). Nothing changes without an overlay.
///
/// # Safety
/// `list` is the head of a list getifaddrs just returned.
pub unsafe fn virtual_ifaddrs(list: *mut libc::ifaddrs) {
    let Ok(w) = crate::welcome() else { return };
    if w.vaddr.is_unspecified() {
        return;
    }
    let (vnet, prefix) = w.vnet;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    let broadcast = Ipv4Addr::from(u32::from(vnet) | !mask);
    let mut ifa = list;
    while !ifa.is_null() {
        // SAFETY: a node of the list getifaddrs made (the caller's).
        let node = unsafe { &mut *ifa };
        ifa = node.ifa_next;
        // SAFETY: getifaddrs names every node with a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(node.ifa_name) };
        if name.to_bytes() != w.iface.as_bytes() || node.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a sockaddr getifaddrs filled (its family says which).
        if i32::from(unsafe { (*node.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        for (sa, ip) in [(node.ifa_addr, w.vaddr), (node.ifa_netmask, Ipv4Addr::from(mask))]
            .into_iter()
            .chain(std::iter::once((node.ifa_ifu, broadcast)))
        {
            if !sa.is_null() {
                let sin = sa.cast::<libc::sockaddr_in>();
                // SAFETY: an AF_INET entry's addresses are sockaddr_in
                // (getifaddrs allocates them so); written in place.
                unsafe { (*sin).sin_addr.s_addr = u32::from(ip).to_be() };
            }
        }
    }
    crate::log(|| format!("getifaddrs: {} shows the virtual address {}/{prefix}", w.iface, w.vaddr));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostent says: name, first address, second address slot
    /// null, first alias null.
    type Read = (String, [u8; 4], bool, bool);

    /// The hostent `fill_hostent` writes into `buf`, read back.
    fn fill(buf: &mut [u8], host: &mut libc::hostent) -> (c_int, Option<Read>) {
        let (mut result, mut herr) = (std::ptr::null_mut(), 0);
        let addr = Ipv4Addr::new(100, 64, 0, 7);
        // SAFETY: `host`, `buf` (its own length), `result` and `herr` are
        // this function's, alive for the call.
        let r = unsafe {
            fill_hostent("n2a", addr, host, buf.as_mut_ptr().cast(), buf.len(), &raw mut result, &raw mut herr)
        };
        if r != 0 {
            assert!(result.is_null() && herr == NETDB_INTERNAL);
            return (r, None);
        }
        assert_eq!(result, &raw mut *host);
        assert_eq!((host.h_addrtype, host.h_length), (libc::AF_INET, 4));
        // SAFETY: h_name points into `buf`, NUL-terminated by fill_hostent.
        let name = unsafe { CStr::from_ptr(host.h_name) }.to_str().unwrap().to_owned();
        // SAFETY: h_addr_list points at two pointer slots in `buf`.
        let slots = unsafe { std::slice::from_raw_parts(host.h_addr_list, 2) };
        let (first, second) = (slots[0], slots[1]);
        let mut octets = [0; 4];
        // SAFETY: the first slot points at the 4 address bytes in `buf`.
        unsafe { std::ptr::copy_nonoverlapping(first.cast::<u8>(), octets.as_mut_ptr(), 4) };
        // SAFETY: h_aliases points at one pointer slot in `buf`.
        let alias = unsafe { *host.h_aliases };
        (r, Some((name, octets, second.is_null(), alias.is_null())))
    }

    #[test]
    fn a_hostent_reads_back_and_a_short_buffer_is_erange() {
        // SAFETY: hostent is plain pointers and integers; zero is valid.
        let mut host: libc::hostent = unsafe { std::mem::zeroed() };
        for start in 0..8 {
            // Every misalignment of the caller's buffer.
            let mut buf = [0u8; 64];
            let (r, got) = fill(&mut buf[start..], &mut host);
            assert_eq!(r, 0);
            assert_eq!(got, Some(("n2a".to_owned(), [100, 64, 0, 7], true, true)));
        }
        assert_eq!(fill(&mut [0u8; 16], &mut host), (libc::ERANGE, None));
    }
}
