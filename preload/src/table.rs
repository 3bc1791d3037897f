//! Which of the program's descriptors are ours, and what each stands for.
//!
//! A kind per descriptor number in an array of atomics, so the calls that
//! only need to know "is this one ours" (recvfrom, sendto, close) cost one
//! load; the addresses and emulated options of the descriptors that are
//! ours sit in one map behind a mutex, touched only by calls that need
//! them. No lock is held across a call into the C library.

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

/// Descriptor numbers this library can follow; a higher one stays a
/// kernel socket (said once on stderr).
pub const MAX_FD: usize = 1 << 16;

/// What a descriptor of ours is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP/IPv4 socket not yet connected or listening: still the kernel
    /// socket the program created (bind and options go to it).
    Fresh = 1,
    /// A stream through the engine: one end of a socketpair.
    Stream = 2,
    /// A listener through the engine: its control connection, readable
    /// when a connection waits.
    Listener = 3,
    /// A non-blocking connect through the engine, not known to have
    /// succeeded: one end of a socketpair, writable once connected, hung
    /// up if the connect failed ([`Info::pending`], [`Info::error`]).
    Connecting = 4,
}

/// What the program is told about a descriptor of ours.
#[derive(Debug, Clone)]
pub struct Info {
    /// Our address (the listener's, or the stream's end).
    pub local: SocketAddrV4,
    /// The peer's (streams).
    pub peer: Option<SocketAddrV4>,
    /// The path, for TCP_CONGESTION and the log ("reliable-link", ...).
    pub path: &'static str,
    /// Options the program set that the socketpair cannot hold
    /// ((level, name) -> bytes), returned as set.
    pub opts: HashMap<(i32, i32), Vec<u8>>,
    /// The engine's id of the stream (0 for a listener).
    pub stream: u32,
    /// The program made it AF_INET6: names are IPv4-mapped IPv6.
    pub v6: bool,
    /// A dual-stack listener's parts (the descriptor is then an epoll
    /// instance over them).
    pub dual: Option<Arc<Dual>>,
    /// A connecting descriptor's dial (its request number; 0: none).
    pub pending: u32,
    /// A failed connect's errno, until SO_ERROR (or a read) reports it.
    pub error: i32,
    /// Connected by a dial whose success no connect(2) has reported yet
    /// (the next one returns 0, as Linux's does once).
    pub dialed: bool,
    /// A connecting descriptor's send buffer (SO_SNDBUF as read), given
    /// back once connected: the filler ran with the least there is.
    pub sndbuf: i32,
}

impl Default for Info {
    fn default() -> Self {
        Info {
            local: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            peer: None,
            path: "kernel",
            opts: HashMap::new(),
            stream: 0,
            v6: false,
            dual: None,
            pending: 0,
            error: 0,
            dialed: false,
            sndbuf: 0,
        }
    }
}

/// The two halves of a dual-stack (AF_INET6, not V6ONLY) listener: the
/// engine's control connection (IPv4 on both paths) and a kernel IPv6-only
/// listener. Closed when the last descriptor naming them is.
#[derive(Debug)]
pub struct Dual {
    /// The control connection the engine announces connections on.
    pub ctl: i32,
    /// The kernel's IPv6 listener (-1 without IPv6 here).
    pub v6: i32,
}

impl Drop for Dual {
    fn drop(&mut self) {
        crate::real::close(self.ctl);
        if self.v6 >= 0 {
            crate::real::close(self.v6);
        }
    }
}

static KIND: [AtomicU8; MAX_FD] = [const { AtomicU8::new(0) }; MAX_FD];
static INFO: Mutex<Option<HashMap<i32, Info>>> = Mutex::new(None);

fn slot(fd: i32) -> Option<&'static AtomicU8> {
    usize::try_from(fd).ok().and_then(|i| KIND.get(i))
}

/// The kind of `fd`, if it is ours.
pub fn kind(fd: i32) -> Option<Kind> {
    match slot(fd)?.load(Ordering::Acquire) {
        1 => Some(Kind::Fresh),
        2 => Some(Kind::Stream),
        3 => Some(Kind::Listener),
        4 => Some(Kind::Connecting),
        _ => None,
    }
}

fn with_info<R>(f: impl FnOnce(&mut HashMap<i32, Info>) -> R) -> R {
    let mut g = INFO.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

/// Follows `fd` as a fresh socket; false if its number is too high.
pub fn mark_fresh(fd: i32) -> bool {
    let Some(s) = slot(fd) else { return false };
    let gone = with_info(|m| m.remove(&fd));
    drop(gone);
    s.store(Kind::Fresh as u8, Ordering::Release);
    true
}

/// Names fresh socket `fd` `local` (bound to the virtual address).
pub fn name_fresh(fd: i32, local: SocketAddrV4, v6: bool) {
    if kind(fd) != Some(Kind::Fresh) {
        return;
    }
    let info = Info { local, peer: None, path: "kernel", opts: HashMap::new(), stream: 0, v6, ..Info::default() };
    let gone = with_info(|m| m.insert(fd, info));
    drop(gone);
}

/// Follows `fd` as a stream or listener through the engine.
pub fn mark(fd: i32, kind: Kind, info: Info) {
    let Some(s) = slot(fd) else { return };
    let gone = with_info(|m| m.insert(fd, info));
    drop(gone);
    s.store(kind as u8, Ordering::Release);
}

/// Forgets `fd` (closed, or left to the kernel).
pub fn forget(fd: i32) {
    let Some(s) = slot(fd) else { return };
    if s.swap(0, Ordering::AcqRel) != 0 {
        let gone = with_info(|m| m.remove(&fd));
        drop(gone); // outside the lock: a dual listener's last name closes its parts
    }
}

/// `new` now names what `old` does (dup and friends).
pub fn copy(old: i32, new: i32) {
    forget(new);
    let Some(k) = kind(old) else { return };
    let Some(s) = slot(new) else { return };
    let info = with_info(|m| m.get(&old).cloned());
    if let Some(i) = info {
        let gone = with_info(|m| m.insert(new, i));
        drop(gone);
    }
    s.store(k as u8, Ordering::Release);
}

/// A copy of what we know of `fd`.
pub fn info(fd: i32) -> Option<Info> {
    with_info(|m| m.get(&fd).cloned())
}

/// Changes what we know of `fd` (nothing if it is not ours).
pub fn update<R>(fd: i32, f: impl FnOnce(&mut Info) -> R) -> Option<R> {
    with_info(|m| m.get_mut(&fd).map(f))
}

/// Records an option the program set on `fd`.
pub fn set_opt(fd: i32, level: i32, name: i32, value: Vec<u8>) {
    with_info(|m| {
        if let Some(i) = m.get_mut(&fd) {
            i.opts.insert((level, name), value);
        }
    });
}

/// Every descriptor that names dial `req` (dups of a connecting one).
pub fn naming_dial(req: u32) -> Vec<i32> {
    with_info(|m| m.iter().filter(|(_, i)| i.pending == req).map(|(fd, _)| *fd).collect())
}

/// Every dial a connecting descriptor names.
pub fn dials() -> Vec<u32> {
    with_info(|m| m.values().map(|i| i.pending).filter(|r| *r != 0).collect())
}

/// Whether any descriptor still names engine stream `id`.
pub fn names_stream(id: u32) -> bool {
    with_info(|m| m.values().any(|i| i.stream == id))
}

/// Every engine stream a descriptor names.
pub fn streams() -> Vec<u32> {
    with_info(|m| m.values().map(|i| i.stream).filter(|s| *s != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: u32) -> Info {
        let a = "10.0.0.1:40000".parse().unwrap();
        Info { local: a, peer: Some(a), path: "reliable-link", stream: id, ..Info::default() }
    }

    #[test]
    fn dup_copies_and_close_forgets_one_name_at_a_time() {
        // Numbers no real descriptor of this test process uses.
        let (fd, dup) = (60_001, 60_002);
        mark(fd, Kind::Stream, stream(77));
        copy(fd, dup);
        assert_eq!(kind(dup), Some(Kind::Stream));
        assert_eq!(info(dup).unwrap().stream, 77);
        forget(fd);
        assert_eq!(kind(fd), None);
        assert!(names_stream(77), "the dup still names the stream");
        forget(dup);
        assert!(!names_stream(77), "the last name is gone");
        // A dup onto a number of ours replaces what it named.
        mark(fd, Kind::Stream, stream(78));
        mark_fresh(dup);
        copy(fd, dup);
        assert_eq!(info(dup).unwrap().stream, 78);
        forget(fd);
        forget(dup);
    }

    #[test]
    fn numbers_past_the_table_are_never_ours() {
        assert!(!mark_fresh(MAX_FD as i32));
        assert!(!mark_fresh(-1));
        assert_eq!(kind(MAX_FD as i32), None);
        set_opt(-1, 6, 1, vec![1, 0, 0, 0]); // no entry: nothing happens
    }
}
