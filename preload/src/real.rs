//! The C library's own functions behind the ones this library exports,
//! found once with `dlsym(RTLD_NEXT, ...)`. Everything the preload does
//! itself goes through these, never through its own exports, so that its
//! internal sockets are never mistaken for the program's.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_void, msghdr, size_t, sockaddr, socklen_t, ssize_t};

/// Looks `name` (NUL-terminated) up past this library.
fn lookup(slot: &AtomicUsize, name: &'static [u8]) -> usize {
    let p = slot.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: `name` is a NUL-terminated static string; RTLD_NEXT asks the
    // dynamic linker for the next definition after this object, which it
    // keeps loaded for the process's life.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast::<c_char>()) } as usize;
    if found == 0 {
        let text = String::from_utf8_lossy(&name[..name.len() - 1]).into_owned();
        crate::die(&format!("the C library has no {text}: this libxsock_preload.so needs glibc"));
    }
    slot.store(found, Ordering::Relaxed);
    found
}

macro_rules! real {
    ($(fn $name:ident($($arg:ident: $t:ty),*) -> $r:ty;)*) => {$(
        /// The C library's function of this name.
        pub fn $name($($arg: $t),*) -> $r {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let p = lookup(&SLOT, concat!(stringify!($name), "\0").as_bytes());
            // SAFETY: `p` is the address glibc exports under this name,
            // whose C prototype is the one written here.
            let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $r>(p) };
            // SAFETY: the arguments are passed on unchanged from a caller of
            // the same prototype (or built by this library to its rules).
            unsafe { f($($arg),*) }
        }
    )*};
}

real! {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn socketpair(domain: c_int, ty: c_int, protocol: c_int, sv: *mut c_int) -> c_int;
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn dup(fd: c_int) -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    fn readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t;
    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    fn getaddrinfo(node: *const c_char, service: *const c_char, hints: *const libc::addrinfo, res: *mut *mut libc::addrinfo) -> c_int;
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    fn gethostbyname_r(node: *const c_char, ret: *mut libc::hostent, buf: *mut c_char, len: size_t, result: *mut *mut libc::hostent, h_errnop: *mut c_int) -> c_int;
    fn gethostbyname(node: *const c_char) -> *mut libc::hostent;
    fn getifaddrs(ifap: *mut *mut libc::ifaddrs) -> c_int;
    fn gethostbyname2(node: *const c_char, af: c_int) -> *mut libc::hostent;
}

/// `errno` now.
pub fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Sets `errno` (for a call this library answers itself).
pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location has no preconditions.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: it returns this thread's errno slot, valid for the thread's
    // life.
    unsafe { *slot = e };
}
