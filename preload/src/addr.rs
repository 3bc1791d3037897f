//! Socket addresses between the program's structures and ours: IPv4, and
//! IPv4-mapped IPv6 for programs that open AF_INET6 sockets (a dual-stack
//! server such as `iperf3 -s`, or a client given `::ffff:a.b.c.d`).

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{c_int, sockaddr, socklen_t};

use crate::real;

/// An IPv4 destination from a caller's address: a sockaddr_in, or a
/// sockaddr_in6 holding an IPv4-mapped address (`.1` then says so).
///
/// # Safety
/// `addr` is null or points at `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<(SocketAddrV4, bool)> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable; unaligned, as a
    // sockaddr may sit anywhere.
    let family = c_int::from(unsafe { addr.cast::<libc::sa_family_t>().read_unaligned() });
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the buffer holds a whole sockaddr_in.
            let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some((SocketAddrV4::new(ip, u16::from_be(sin.sin_port)), false))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the buffer holds a whole sockaddr_in6.
            let sin6 = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            let ip6 = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let ip = if ip6.is_unspecified() { Some(Ipv4Addr::UNSPECIFIED) } else { ip6.to_ipv4_mapped() };
            ip.map(|ip| (SocketAddrV4::new(ip, u16::from_be(sin6.sin6_port)), true))
        }
        _ => None,
    }
}

/// Writes `a` to a caller's address buffer as the kernel does (at most
/// `*len` bytes; `*len` set to the full size), as a sockaddr_in6 holding
/// the IPv4-mapped address if `v6` (`0.0.0.0` becomes `::`).
///
/// # Safety
/// `addr` is null or points at `*len` writable bytes; `len` is null or
/// valid.
pub unsafe fn write(a: SocketAddrV4, v6: bool, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if addr.is_null() || len.is_null() {
        return 0;
    }
    // SAFETY: sockaddr_in6 is plain data; all zeroes is a valid value.
    let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let bytes: &[u8] = if v6 {
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = a.port().to_be();
        let ip6 = if a.ip().is_unspecified() { std::net::Ipv6Addr::UNSPECIFIED } else { a.ip().to_ipv6_mapped() };
        sin6.sin6_addr.s6_addr = ip6.octets();
        // SAFETY: the bytes of a plain-data local, for its size.
        unsafe { std::slice::from_raw_parts((&raw const sin6).cast::<u8>(), std::mem::size_of_val(&sin6)) }
    } else {
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = a.port().to_be();
        sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts((&raw const sin).cast::<u8>(), std::mem::size_of_val(&sin)) }
    };
    // SAFETY: `len` is valid per the caller.
    let room = unsafe { *len } as usize;
    // SAFETY: at most `room` bytes into the caller's buffer of `room`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), room.min(bytes.len())) };
    // SAFETY: as above.
    unsafe { *len = bytes.len() as socklen_t };
    0
}

/// A sockaddr for `a` (IPv4-mapped IPv6 if `v6`), to hand to the kernel.
pub fn to_kernel(a: SocketAddrV4, v6: bool) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: sockaddr_storage has room for either family.
    unsafe { write(a, v6, (&raw mut ss).cast(), &raw mut len) };
    (ss, len)
}

/// What a fresh socket is bound to, binding it to a port first if it has
/// none (as listen(2) would). `None`: not an address the engine can take
/// (an IPv6 address that is not `::` or IPv4-mapped).
pub fn bound(fd: c_int) -> Option<(SocketAddrV4, bool)> {
    let get = || {
        // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        if real::getsockname(fd, (&raw mut ss).cast(), &raw mut len) < 0 {
            return None;
        }
        // SAFETY: getsockname wrote `len` bytes into ss.
        unsafe { read((&raw const ss).cast(), len) }
    };
    let (a, v6) = get()?;
    if a.port() != 0 {
        return Some((a, v6));
    }
    let (ss, len) = to_kernel(a, v6);
    if real::bind(fd, (&raw const ss).cast(), len) < 0 {
        return None;
    }
    get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_mapped_ipv6_round_trip() {
        for v6 in [false, true] {
            let a: SocketAddrV4 = "10.1.2.3:5201".parse().unwrap();
            let (ss, len) = to_kernel(a, v6);
            // SAFETY: `ss` holds `len` bytes written by to_kernel.
            let back = unsafe { read((&raw const ss).cast(), len) };
            assert_eq!(back, Some((a, v6)));
            let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80);
            let (ss, len) = to_kernel(any, v6);
            // SAFETY: as above.
            assert_eq!(unsafe { read((&raw const ss).cast(), len) }, Some((any, v6)), "0.0.0.0 and ::");
        }
    }

    #[test]
    fn short_foreign_and_real_ipv6_addresses_are_not_ours() {
        let (ss, len) = to_kernel("10.1.2.3:1".parse().unwrap(), false);
        // SAFETY: fewer bytes than the buffer holds.
        assert_eq!(unsafe { read((&raw const ss).cast(), len - 1) }, None, "truncated");
        // SAFETY: a null pointer is refused before any read.
        assert_eq!(unsafe { read(std::ptr::null(), len) }, None);
        // SAFETY: sockaddr_in6 is plain data.
        let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_addr.s6_addr = "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let n = std::mem::size_of_val(&sin6) as socklen_t;
        // SAFETY: a whole sockaddr_in6.
        assert_eq!(unsafe { read((&raw const sin6).cast(), n) }, None, "a real IPv6 address stays the kernel's");
    }

    #[test]
    fn writing_truncates_like_the_kernel_and_reports_the_full_size() {
        let mut buf = [0u8; 4];
        let mut len = buf.len() as socklen_t;
        // SAFETY: `buf` holds `len` bytes.
        unsafe { write("10.1.2.3:7".parse().unwrap(), false, buf.as_mut_ptr().cast(), &raw mut len) };
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), libc::AF_INET as u16);
    }
}
