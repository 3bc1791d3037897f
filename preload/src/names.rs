//! getaddrinfo(3) of overlay node names: with an engine joined to the
//! overlay, a name the bootstrap servers know (`n2a`) resolves to that
//! node's virtual address, so `nc n2a 5000` needs no /etc/hosts entry.
//! The engine is asked first (a name it does not know goes on to the C
//! library's lookup, /etc/hosts and DNS, unchanged); answers are kept 10 s.
//! The result is the C library's own, built from the numeric address, so
//! freeaddrinfo(3) frees it as usual.

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
    let s = settings();
    if node.is_null() || !s.enabled || s.transport == PreloadTransport::Kernel {
        return None;
    }
    // SAFETY: the caller's NUL-terminated name.
    let name = unsafe { CStr::from_ptr(node) }.to_str().ok()?;
    if !plausible(name) {
        return None;
    }
    // SAFETY: the caller's hints, null or valid.
    let mut h: addrinfo = if hints.is_null() { unsafe { std::mem::zeroed() } } else { unsafe { hints.read() } };
    if (h.ai_family != libc::AF_UNSPEC && h.ai_family != libc::AF_INET) || h.ai_flags & libc::AI_NUMERICHOST != 0 {
        return None;
    }
    let addr = vaddr_of(name)?;
    log(|| format!("getaddrinfo({name}): the overlay node's virtual address {addr}"));
    h.ai_family = libc::AF_INET;
    // (AI_CANONNAME is kept: the canonical name is then the address, and
    // a program that asked for one finds one.)
    h.ai_flags |= libc::AI_NUMERICHOST;
    let numeric = std::ffi::CString::new(addr.to_string()).expect("no NUL in an address");
    Some(real::getaddrinfo(numeric.as_ptr(), service, &raw const h, res))
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
