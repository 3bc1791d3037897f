//! # xsock-capi: the C ABI (`include/xsock.h`)
//!
//! `libxsock.so` and `libxsock.a` for C, C++ and Fortran codes: the runtime,
//! listeners and streams of the `xsock` crate behind opaque pointers and
//! integer error codes, with a per-thread description of the last failure.
//!
//! This is the one crate besides `xsock-nic` with `unsafe`: a C boundary
//! cannot be crossed without trusting the caller's pointers. Every function
//! states its contract in a `# Safety` section, every dereference has a
//! `// SAFETY:` comment, and no panic crosses into C (each body runs under
//! `catch_unwind` and a panic becomes `XSOCK_EIO`).

#![allow(non_camel_case_types)]

use std::{
    cell::RefCell,
    ffi::{CStr, CString, c_char, c_int, c_void},
    net::SocketAddrV4,
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use xsock::{
    ConnectOptions, Driving, Error, ListenOptions, Listener, Mode, Path, PollMode, Received, Runtime, Stream, Transport,
};

mod poll;

pub use poll::*;

/// Error codes; keep in step with xsock.h.
pub mod code {
    #![allow(missing_docs)]
    pub const OK: i32 = 0;
    pub const EAGAIN: i32 = -1;
    pub const ECONNREFUSED: i32 = -2;
    pub const ECONNRESET: i32 = -3;
    pub const ETIMEDOUT: i32 = -4;
    pub const ECLOSED: i32 = -5;
    pub const EINVAL: i32 = -6;
    pub const ENOLINK: i32 = -7;
    pub const ENOTPEER: i32 = -8;
    pub const EADDRINUSE: i32 = -9;
    pub const EMSGSIZE: i32 = -10;
    pub const EIO: i32 = -11;
    pub const EPERM: i32 = -12;
    pub const ENOTLAUNCHED: i32 = -13;
    pub const EPROTO: i32 = -14;
    pub const ENOMEM: i32 = -15;
}

/// Configuration (see xsock.h).
#[repr(C)]
pub struct xsock_config {
    /// Interface to drive, or null.
    pub iface: *const c_char,
    /// 1: inline driving.
    pub inline_poll: c_int,
    /// 1: busy-poll.
    pub busy_poll: c_int,
    /// Per-connection buffers; 0 = default.
    pub buffer_bytes: usize,
    /// XSOCK_TRANSPORT_*.
    pub transport: c_int,
    /// Largest message `xsock_recv_msg` accepts from a peer; 0 = 1 GiB.
    pub max_message: usize,
    /// Memory limit of all connection buffers; 0 = an eighth of the RAM.
    pub memory_limit: usize,
}

/// An xsock runtime.
pub struct xsock_runtime {
    rt: Runtime,
    transport: Transport,
}

/// A listener.
pub struct xsock_listener {
    l: Listener,
}

/// A stream.
pub struct xsock_stream {
    s: Stream,
    msg: Vec<u8>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn error_code(e: &Error) -> i32 {
    match e {
        Error::WouldBlock => code::EAGAIN,
        Error::ConnectionRefused(_) => code::ECONNREFUSED,
        Error::ConnectionReset(_) => code::ECONNRESET,
        Error::TimedOut(_) => code::ETIMEDOUT,
        Error::Closed | Error::Stopped => code::ECLOSED,
        Error::Config(_) => code::EINVAL,
        Error::NoLink => code::ENOLINK,
        Error::NotXsockPeer(_) => code::ENOTPEER,
        Error::AddrInUse(_) => code::EADDRINUSE,
        Error::Protocol(_) => code::EPROTO,
        Error::MessageTooLarge { .. } => code::EMSGSIZE,
        Error::MemoryLimit { .. } => code::ENOMEM,
        Error::Nic(xsock::nic::NicError::PermissionDenied { .. }) => code::EPERM,
        _ => code::EIO,
    }
}

/// Records `e` as the thread's last error and returns its code.
fn fail(e: Error) -> i32 {
    if !matches!(e, Error::WouldBlock) {
        set_error(&e.to_string());
    }
    error_code(&e)
}

fn invalid(what: &str) -> i32 {
    set_error(what);
    code::EINVAL
}

/// Runs `f`, turning a panic into `XSOCK_EIO` (no unwinding into C).
fn guard<T: From<i32>>(f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let what = p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(|s| s.as_str()));
            set_error(&format!("internal error (a bug in xsock; please report it): {}", what.unwrap_or("panic")));
            T::from(code::EIO)
        }
    }
}

/// # Safety
/// `p` must be null or a valid NUL-terminated string.
unsafe fn str_arg<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller promises a valid NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// # Safety
/// `p` must be null or a valid NUL-terminated string.
unsafe fn addr_arg(p: *const c_char) -> Result<SocketAddrV4, i32> {
    // SAFETY: forwarded contract.
    let s = unsafe { str_arg(p) }.ok_or_else(|| invalid("the address is null or not UTF-8"))?;
    s.parse().map_err(|_| invalid(&format!("{s:?} is not an IPv4 address and port like 10.0.0.2:7000")))
}

fn timeout(ms: c_int) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

fn mode(message_mode: c_int) -> Mode {
    if message_mode != 0 { Mode::Message } else { Mode::Stream }
}

/// Creates a runtime.
///
/// # Safety
/// `cfg` must point at a valid `xsock_config` (its `iface` null or a valid
/// string); `out` must be valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_runtime_new(cfg: *const xsock_config, out: *mut *mut xsock_runtime) -> c_int {
    guard(|| {
        if cfg.is_null() || out.is_null() {
            return invalid("xsock_runtime_new needs a config and an out pointer");
        }
        let _ = env_logger::Builder::from_env(env_logger::Env::new().filter_or("XSOCK_LOG", "warn")).try_init();
        // SAFETY: checked non-null; the caller promises a valid config.
        let cfg = unsafe { &*cfg };
        let transport = match cfg.transport {
            0 => Transport::Auto,
            1 => Transport::Link,
            2 => Transport::Kernel,
            t => return invalid(&format!("transport {t} is not one of XSOCK_TRANSPORT_*")),
        };
        let mut b = Runtime::builder()
            .driving(if cfg.inline_poll != 0 { Driving::Inline } else { Driving::Thread })
            .poll_mode(if cfg.busy_poll != 0 { PollMode::Busy } else { PollMode::default() });
        if cfg.buffer_bytes > 0 {
            b = b.send_buffer(cfg.buffer_bytes).recv_buffer(cfg.buffer_bytes);
        }
        if cfg.max_message > 0 {
            b = b.max_message(cfg.max_message);
        }
        if cfg.memory_limit > 0 {
            b = b.memory_limit(cfg.memory_limit);
        }
        // SAFETY: the caller promises `iface` is null or a valid string.
        match unsafe { str_arg(cfg.iface) } {
            Some(i) if transport != Transport::Kernel => b = b.interface(i).require_link(transport == Transport::Link),
            _ => {}
        }
        match b.build() {
            Ok(rt) => {
                // SAFETY: checked non-null; the caller promises it is writable.
                unsafe { *out = Box::into_raw(Box::new(xsock_runtime { rt, transport })) };
                code::OK
            }
            Err(e) => fail(e),
        }
    })
}

/// Frees a runtime (after its streams and listeners).
///
/// # Safety
/// `rt` must be null or come from `xsock_runtime_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_runtime_free(rt: *mut xsock_runtime) {
    if !rt.is_null() {
        let _ = guard(|| {
            // SAFETY: the caller passes ownership of a pointer from Box::into_raw.
            drop(unsafe { Box::from_raw(rt) });
            0
        });
    }
}

/// One pass of the poll loop (inline driving). Returns the work done.
///
/// # Safety
/// `rt` must be a live runtime.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_poll(rt: *mut xsock_runtime) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live runtime.
        let Some(rt) = (unsafe { rt.as_ref() }) else {
            return invalid("null runtime");
        };
        match rt.rt.poll() {
            Ok(n) => n.min(i32::MAX as usize) as c_int,
            Err(e) => fail(e),
        }
    })
}

/// Rank and size under a launcher.
///
/// # Safety
/// `rt` must be a live runtime; `rank` and `size` valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_rank(rt: *const xsock_runtime, rank: *mut u32, size: *mut u32) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live runtime.
        let Some(rt) = (unsafe { rt.as_ref() }) else {
            return invalid("null runtime");
        };
        if rank.is_null() || size.is_null() {
            return invalid("xsock_rank needs rank and size pointers");
        }
        match rt.rt.launch() {
            Some(l) => {
                // SAFETY: checked non-null; the caller promises writable.
                unsafe { *rank = l.rank };
                // SAFETY: as above.
                unsafe { *size = l.size };
                code::OK
            }
            None => {
                set_error(
                    "not started by Slurm or an MPI launcher (no SLURM_PROCID, PMI_RANK or OMPI_COMM_WORLD_RANK)",
                );
                code::ENOTLAUNCHED
            }
        }
    })
}

/// Listens on `addr`.
///
/// # Safety
/// `rt` must be a live runtime, `addr` a valid string, `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_listen(
    rt: *mut xsock_runtime,
    addr: *const c_char,
    message_mode: c_int,
    out: *mut *mut xsock_listener,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live runtime.
        let Some(rt) = (unsafe { rt.as_ref() }) else {
            return invalid("null runtime");
        };
        if out.is_null() {
            return invalid("null out pointer");
        }
        // SAFETY: the caller promises a valid string.
        let addr = match unsafe { addr_arg(addr) } {
            Ok(a) => a,
            Err(c) => return c,
        };
        match Listener::bind_with(&rt.rt, addr, ListenOptions { transport: rt.transport, mode: mode(message_mode) }) {
            Ok(l) => {
                // SAFETY: checked non-null; the caller promises writable.
                unsafe { *out = Box::into_raw(Box::new(xsock_listener { l })) };
                code::OK
            }
            Err(e) => fail(e),
        }
    })
}

/// Waits up to `timeout_ms` (-1: forever) for a connection.
///
/// # Safety
/// `l` must be a live listener; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_accept(l: *mut xsock_listener, timeout_ms: c_int, out: *mut *mut xsock_stream) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live listener.
        let Some(l) = (unsafe { l.as_ref() }) else {
            return invalid("null listener");
        };
        if out.is_null() {
            return invalid("null out pointer");
        }
        match l.l.accept_timeout(timeout(timeout_ms)) {
            Ok(Some(s)) => {
                // SAFETY: checked non-null; the caller promises writable.
                unsafe { *out = Box::into_raw(Box::new(xsock_stream { s, msg: Vec::new() })) };
                code::OK
            }
            Ok(None) => {
                set_error("no connection arrived before the timeout");
                code::ETIMEDOUT
            }
            Err(e) => fail(e),
        }
    })
}

/// Frees a listener.
///
/// # Safety
/// `l` must be null or a listener from `xsock_listen`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_listener_free(l: *mut xsock_listener) {
    if !l.is_null() {
        let _ = guard(|| {
            // SAFETY: the caller passes ownership of a pointer from Box::into_raw.
            drop(unsafe { Box::from_raw(l) });
            0
        });
    }
}

/// Connects to `addr`.
///
/// # Safety
/// `rt` must be a live runtime, `addr` a valid string, `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_connect(
    rt: *mut xsock_runtime,
    addr: *const c_char,
    message_mode: c_int,
    timeout_ms: c_int,
    out: *mut *mut xsock_stream,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live runtime.
        let Some(rt) = (unsafe { rt.as_ref() }) else {
            return invalid("null runtime");
        };
        if out.is_null() {
            return invalid("null out pointer");
        }
        // SAFETY: the caller promises a valid string.
        let addr = match unsafe { addr_arg(addr) } {
            Ok(a) => a,
            Err(c) => return c,
        };
        let opts = ConnectOptions {
            transport: rt.transport,
            mode: mode(message_mode),
            timeout: timeout(timeout_ms).unwrap_or(Duration::from_secs(3600)),
        };
        match Stream::connect_with(&rt.rt, addr, opts) {
            Ok(s) => {
                // SAFETY: checked non-null; the caller promises writable.
                unsafe { *out = Box::into_raw(Box::new(xsock_stream { s, msg: Vec::new() })) };
                code::OK
            }
            Err(e) => fail(e),
        }
    })
}

/// Starts connecting to `addr` and returns at once with the stream in
/// `*out` (connecting); `xsock_connect_poll` (or a poller reporting it
/// writable) says when it is connected.
///
/// # Safety
/// `rt` must be a live runtime, `addr` a valid string, `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_connect_start(
    rt: *mut xsock_runtime,
    addr: *const c_char,
    message_mode: c_int,
    timeout_ms: c_int,
    out: *mut *mut xsock_stream,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live runtime.
        let Some(rt) = (unsafe { rt.as_ref() }) else {
            return invalid("null runtime");
        };
        if out.is_null() {
            return invalid("null out pointer");
        }
        // SAFETY: the caller promises a valid string.
        let addr = match unsafe { addr_arg(addr) } {
            Ok(a) => a,
            Err(c) => return c,
        };
        let opts = ConnectOptions {
            transport: rt.transport,
            mode: mode(message_mode),
            timeout: timeout(timeout_ms).unwrap_or(Duration::from_secs(3600)),
        };
        match Stream::connect_start(&rt.rt, addr, opts) {
            Ok(s) => {
                // SAFETY: checked non-null; the caller promises writable.
                unsafe { *out = Box::into_raw(Box::new(xsock_stream { s, msg: Vec::new() })) };
                code::OK
            }
            Err(e) => fail(e),
        }
    })
}

/// Moves a connect on: XSOCK_OK once connected, XSOCK_EAGAIN while still
/// connecting, the error code if it failed.
///
/// # Safety
/// `s` must be a live stream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_connect_poll(s: *mut xsock_stream) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live stream, used by one thread.
        let Some(s) = (unsafe { s.as_mut() }) else {
            return invalid("null stream");
        };
        match s.s.poll_connect() {
            Ok(true) => code::OK,
            Ok(false) => code::EAGAIN,
            Err(e) => fail(e),
        }
    })
}

/// The path a stream takes.
///
/// # Safety
/// `s` must be a live stream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_stream_path(s: *const xsock_stream) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live stream.
        match unsafe { s.as_ref() } {
            Some(s) => match s.s.path() {
                Path::Link => 1,
                Path::Kernel => 2,
                Path::Tcp => 3,
                _ => 0,
            },
            None => invalid("null stream"),
        }
    })
}

/// # Safety
/// `s` must be a live stream and `buf` valid for `len` bytes (or `len` 0).
unsafe fn with_stream<'a>(
    s: *mut xsock_stream,
    buf: *const c_void,
    len: usize,
) -> Result<(&'a mut xsock_stream, &'a [u8]), i64> {
    // SAFETY: the caller promises a live stream, used by one thread.
    let Some(s) = (unsafe { s.as_mut() }) else {
        return Err(i64::from(invalid("null stream")));
    };
    if buf.is_null() && len > 0 {
        return Err(i64::from(invalid("null buffer")));
    }
    let data: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: non-null, and the caller promises `len` readable bytes.
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
    };
    Ok((s, data))
}

/// # Safety
/// `s` must be a live stream and `buf` valid for writing `len` bytes.
unsafe fn with_stream_mut<'a>(
    s: *mut xsock_stream,
    buf: *mut c_void,
    len: usize,
) -> Result<(&'a mut xsock_stream, &'a mut [u8]), i64> {
    // SAFETY: the caller promises a live stream, used by one thread.
    let Some(s) = (unsafe { s.as_mut() }) else {
        return Err(i64::from(invalid("null stream")));
    };
    if buf.is_null() && len > 0 {
        return Err(i64::from(invalid("null buffer")));
    }
    let data: &mut [u8] = if len == 0 {
        &mut []
    } else {
        // SAFETY: non-null, and the caller promises `len` writable bytes.
        unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
    };
    Ok((s, data))
}

fn result(r: Result<usize, Error>) -> i64 {
    match r {
        Ok(n) => n as i64,
        Err(e) => i64::from(fail(e)),
    }
}

/// Sends all `len` bytes (blocking).
///
/// # Safety
/// `s` must be a live stream; `buf` readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_send(s: *mut xsock_stream, buf: *const c_void, len: usize) -> i64 {
    guard(|| {
        // SAFETY: forwarded contract.
        match unsafe { with_stream(s, buf, len) } {
            Ok((s, data)) => result(s.s.send(data).map(|()| len)),
            Err(c) => c,
        }
    })
}

/// Receives at least one byte (blocking); 0 at the end of the stream.
///
/// # Safety
/// `s` must be a live stream; `buf` writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_recv(s: *mut xsock_stream, buf: *mut c_void, len: usize) -> i64 {
    guard(|| {
        // SAFETY: forwarded contract.
        match unsafe { with_stream_mut(s, buf, len) } {
            Ok((s, data)) => result(s.s.recv(data)),
            Err(c) => c,
        }
    })
}

/// Sends one message (blocking).
///
/// # Safety
/// `s` must be a live stream; `buf` readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_send_msg(s: *mut xsock_stream, buf: *const c_void, len: usize) -> i64 {
    guard(|| {
        // SAFETY: forwarded contract.
        match unsafe { with_stream(s, buf, len) } {
            Ok((s, data)) => result(s.s.send_message(data).map(|()| len)),
            Err(c) => c,
        }
    })
}

/// Receives one whole message (blocking).
///
/// # Safety
/// `s` must be a live stream; `buf` writable for `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_recv_msg(s: *mut xsock_stream, buf: *mut c_void, cap: usize) -> i64 {
    guard(|| {
        // SAFETY: forwarded contract.
        let (s, out) = match unsafe { with_stream_mut(s, buf, cap) } {
            Ok(v) => v,
            Err(c) => return c,
        };
        let mut msg = std::mem::take(&mut s.msg);
        let r = match s.s.recv_message(&mut msg) {
            Ok(Received::End) => 0,
            Ok(Received::Message) if msg.len() > out.len() => {
                set_error(&format!(
                    "a {}-byte message does not fit a {}-byte buffer; it was dropped",
                    msg.len(),
                    out.len()
                ));
                i64::from(code::EMSGSIZE)
            }
            Ok(Received::Message) => {
                out[..msg.len()].copy_from_slice(&msg);
                msg.len() as i64
            }
            Err(e) => i64::from(fail(e)),
        };
        s.msg = msg;
        r
    })
}

/// Sends what fits now; XSOCK_EAGAIN if nothing does.
///
/// # Safety
/// `s` must be a live stream; `buf` readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_try_send(s: *mut xsock_stream, buf: *const c_void, len: usize) -> i64 {
    guard(|| {
        // SAFETY: forwarded contract.
        match unsafe { with_stream(s, buf, len) } {
            Ok((s, data)) => result(s.s.try_send(data)),
            Err(c) => c,
        }
    })
}

/// Receives what is there now; 0 at the end; XSOCK_EAGAIN if nothing is.
///
/// # Safety
/// `s` must be a live stream; `buf` writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_try_recv(s: *mut xsock_stream, buf: *mut c_void, len: usize) -> i64 {
    guard(|| {
        // SAFETY: forwarded contract.
        match unsafe { with_stream_mut(s, buf, len) } {
            Ok((s, data)) => result(s.s.try_recv(data)),
            Err(c) => c,
        }
    })
}

/// Half-closes the stream.
///
/// # Safety
/// `s` must be a live stream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_shutdown(s: *mut xsock_stream) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live stream.
        let Some(s) = (unsafe { s.as_mut() }) else {
            return invalid("null stream");
        };
        match s.s.shutdown_write() {
            Ok(()) => code::OK,
            Err(e) => fail(e),
        }
    })
}

/// Closes gracefully (waiting up to `timeout_ms`) and frees the stream.
///
/// # Safety
/// `s` must be null or a live stream; it is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_close(s: *mut xsock_stream, timeout_ms: c_int) -> c_int {
    if s.is_null() {
        return code::OK;
    }
    guard(|| {
        // SAFETY: the caller passes ownership of a pointer from Box::into_raw.
        let s = unsafe { Box::from_raw(s) };
        match s.s.close(timeout(timeout_ms).unwrap_or(Duration::from_secs(3600))) {
            Ok(()) => code::OK,
            Err(e) => fail(e),
        }
    })
}

/// Aborts the connection and frees the stream.
///
/// # Safety
/// `s` must be null or a live stream; it is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xsock_abort(s: *mut xsock_stream) {
    if !s.is_null() {
        let _ = guard(|| {
            // SAFETY: the caller passes ownership of a pointer from Box::into_raw.
            unsafe { Box::from_raw(s) }.s.abort();
            0
        });
    }
}

/// A static description of an error code.
#[unsafe(no_mangle)]
pub extern "C" fn xsock_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        code::OK => c"success",
        code::EAGAIN => c"the operation would block",
        code::ECONNREFUSED => c"connection refused: nothing listens at the address",
        code::ECONNRESET => c"the peer reset the connection",
        code::ETIMEDOUT => c"timed out: the peer stopped answering",
        code::ECLOSED => c"the connection is closed",
        code::EINVAL => c"invalid argument",
        code::ENOLINK => c"no interface is driven by xsock (reliable-link unavailable)",
        code::ENOTPEER => c"the peer does not run xsock on this segment",
        code::EADDRINUSE => c"the address is already in use",
        code::EMSGSIZE => c"the message does not fit the buffer",
        code::EIO => c"system or device error",
        code::EPERM => c"missing privileges: run as root or grant CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF",
        code::ENOTLAUNCHED => c"not started by Slurm or an MPI launcher",
        code::EPROTO => c"the peer broke the protocol",
        code::ENOMEM => c"the runtime's memory limit for connection buffers is reached",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

/// The calling thread's last failure, described.
#[unsafe(no_mangle)]
pub extern "C" fn xsock_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}
