//! Readiness of many streams from C: a poller object (register streams and
//! listeners with a 64-bit token, wait for events, or put its descriptor in
//! your own poll/epoll set), and `xsock_poll_streams`, which works like
//! poll(2) on an array of streams.

use std::{ffi::c_int, os::fd::AsFd, os::fd::AsRawFd};

use xsock::{Events, Interest, Poller, Token};

use crate::{code, fail, guard, invalid, timeout, xsock_listener, xsock_runtime, xsock_stream};

/// Readable (or the end of the stream, or an error; a listener: a
/// connection waits).
pub const POLLIN: i16 = 1;
/// Writable (a connecting stream: the connect finished).
pub const POLLOUT: i16 = 2;
/// The connection ended or the connect failed (the next call says how).
pub const POLLHUP: i16 = 4;

/// A poller (see xsock.h).
pub struct xsock_poller {
    p: Poller,
    events: Events,
}

/// One event of `xsock_poller_wait` (see xsock.h).
#[repr(C)]
pub struct xsock_event {
    /// The token the source was added with.
    pub token: u64,
    /// XSOCK_POLLIN | XSOCK_POLLOUT | XSOCK_POLLHUP.
    pub events: i16,
}

/// One entry of `xsock_poll_streams` (see xsock.h).
#[repr(C)]
pub struct xsock_pollitem {
    /// The stream.
    pub stream: *mut xsock_stream,
    /// XSOCK_POLLIN and/or XSOCK_POLLOUT.
    pub events: i16,
    /// Set by the call.
    pub revents: i16,
}

fn interest(events: i16) -> Result<Interest, c_int> {
    match (events & POLLIN != 0, events & POLLOUT != 0) {
        (true, true) => Ok(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Ok(Interest::READABLE),
        (false, true) => Ok(Interest::WRITABLE),
        (false, false) => Err(invalid("events must include XSOCK_POLLIN or XSOCK_POLLOUT")),
    }
}

fn token(t: u64) -> Result<Token, c_int> {
    usize::try_from(t).map(Token).map_err(|_| invalid("the token does not fit this platform's size_t"))
}

fn revents(e: &xsock::Event) -> i16 {
    (if e.is_readable() { POLLIN } else { 0 })
        | (if e.is_writable() { POLLOUT } else { 0 })
        | (if e.is_closed() { POLLHUP } else { 0 })
}

/// Creates a poller for streams and listeners of `rt`.
///
/// # Safety
/// `rt` must be a live runtime; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_new(rt: *mut xsock_runtime, out: *mut *mut xsock_poller) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live runtime.
        let Some(rt) = (unsafe { rt.as_ref() }) else {
            return invalid("null runtime");
        };
        if out.is_null() {
            return invalid("null out pointer");
        }
        match Poller::new(&rt.rt) {
            Ok(p) => {
                // SAFETY: checked non-null; the caller promises writable.
                unsafe { *out = Box::into_raw(Box::new(xsock_poller { p, events: Events::with_capacity(256) })) };
                code::OK
            }
            Err(e) => fail(e),
        }
    })
}

/// Frees a poller (before the streams it watches are freed, or after they
/// were removed from it).
///
/// # Safety
/// `p` must be null or a poller from `xsock_poller_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_free(p: *mut xsock_poller) {
    if !p.is_null() {
        let _ = guard(|| {
            // SAFETY: the caller passes ownership of a pointer from Box::into_raw.
            drop(unsafe { Box::from_raw(p) });
            0
        });
    }
}

/// Watches `s` as `tok` for `events` (XSOCK_POLLIN, XSOCK_POLLOUT).
///
/// # Safety
/// `p` and `s` must be live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_add(
    p: *mut xsock_poller,
    s: *const xsock_stream,
    tok: u64,
    events: i16,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises live objects.
        let (Some(p), Some(s)) = (unsafe { p.as_mut() }, unsafe { s.as_ref() }) else {
            return invalid("null poller or stream");
        };
        let (t, i) = match (token(tok), interest(events)) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(c), _) | (_, Err(c)) => return c,
        };
        match p.p.register(&s.s, t, i) {
            Ok(()) => code::OK,
            Err(e) => fail(e),
        }
    })
}

/// Watches listener `l` as `tok` (XSOCK_POLLIN when a connection waits).
///
/// # Safety
/// `p` and `l` must be live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_add_listener(p: *mut xsock_poller, l: *const xsock_listener, tok: u64) -> c_int {
    guard(|| {
        // SAFETY: the caller promises live objects.
        let (Some(p), Some(l)) = (unsafe { p.as_mut() }, unsafe { l.as_ref() }) else {
            return invalid("null poller or listener");
        };
        let t = match token(tok) {
            Ok(t) => t,
            Err(c) => return c,
        };
        match p.p.register_listener(&l.l, t) {
            Ok(()) => code::OK,
            Err(e) => fail(e),
        }
    })
}

/// Changes what `tok` is watched for.
///
/// # Safety
/// `p` must be live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_modify(p: *mut xsock_poller, tok: u64, events: i16) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live poller.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return invalid("null poller");
        };
        let (t, i) = match (token(tok), interest(events)) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(c), _) | (_, Err(c)) => return c,
        };
        match p.p.reregister(t, i) {
            Ok(()) => code::OK,
            Err(e) => fail(e),
        }
    })
}

/// Stops watching `tok`.
///
/// # Safety
/// `p` must be live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_del(p: *mut xsock_poller, tok: u64) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live poller.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return invalid("null poller");
        };
        let t = match token(tok) {
            Ok(t) => t,
            Err(c) => return c,
        };
        match p.p.deregister(t) {
            Ok(()) => code::OK,
            Err(e) => fail(e),
        }
    })
}

/// Waits up to `timeout_ms` (-1: forever, 0: a look) for ready sources;
/// fills up to `max` events and returns how many (0 on timeout).
///
/// # Safety
/// `p` must be live; `out` valid for writing `max` events.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_wait(
    p: *mut xsock_poller,
    out: *mut xsock_event,
    max: c_int,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live poller.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return invalid("null poller");
        };
        if out.is_null() || max <= 0 {
            return invalid("xsock_poller_wait needs an event array and max >= 1");
        }
        if let Err(e) = p.p.poll(&mut p.events, timeout(timeout_ms)) {
            return fail(e);
        }
        // SAFETY: non-null, and the caller promises room for `max` events.
        let out = unsafe { std::slice::from_raw_parts_mut(out, max as usize) };
        let mut n = 0;
        for (slot, e) in out.iter_mut().zip(p.events.iter()) {
            *slot = xsock_event { token: e.token().0 as u64, events: revents(e) };
            n += 1;
        }
        n
    })
}

/// The poller's descriptor, for the caller's own poll/epoll/select: readable
/// when a watched source may be ready (then call `xsock_poller_wait` with a
/// zero timeout). For runtimes with a datapath thread (`inline_poll` 0).
///
/// # Safety
/// `p` must be live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poller_fd(p: *const xsock_poller) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live poller.
        match unsafe { p.as_ref() } {
            Some(p) => p.p.as_fd().as_raw_fd(),
            None => invalid("null poller"),
        }
    })
}

/// Like poll(2) on `n` streams: sets each item's `revents` and returns how
/// many are ready, waiting up to `timeout_ms` (-1: forever) if none is.
///
/// # Safety
/// `rt` must be live, `items` valid for `n` entries, each with a live stream
/// of `rt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poll_streams(
    rt: *mut xsock_runtime,
    items: *mut xsock_pollitem,
    n: usize,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live runtime.
        let Some(rt) = (unsafe { rt.as_ref() }) else {
            return invalid("null runtime");
        };
        if items.is_null() && n > 0 {
            return invalid("null item array");
        }
        let items: &mut [xsock_pollitem] = if n == 0 {
            &mut []
        } else {
            // SAFETY: non-null, and the caller promises `n` entries.
            unsafe { std::slice::from_raw_parts_mut(items, n) }
        };
        let mut p = match Poller::new(&rt.rt) {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        for (i, it) in items.iter_mut().enumerate() {
            it.revents = 0;
            // SAFETY: the caller promises a live stream in every entry.
            let Some(s) = (unsafe { it.stream.as_ref() }) else {
                return invalid(&format!("item {i} has a null stream"));
            };
            let i_ = match interest(it.events) {
                Ok(i) => i,
                Err(c) => return c,
            };
            if let Err(e) = p.register(&s.s, Token(i), i_) {
                return fail(e);
            }
        }
        let mut events = Events::with_capacity(n);
        if let Err(e) = p.poll(&mut events, timeout(timeout_ms)) {
            return fail(e);
        }
        for e in events.iter() {
            items[e.token().0].revents = revents(e);
        }
        events.len().min(c_int::MAX as usize) as c_int
    })
}
