//! Descriptors passed over a Unix socket and the peer's credentials (issue
//! 12's attach path): a shared-memory region and an eventfd arrive usable,
//! a peer that sends more descriptors than expected gets an error and
//! leaks nothing into our descriptor table, and SO_PEERCRED names us.

use std::{os::fd::AsFd, sync::Arc};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use xsock_nic::{
    shm::{Consumer, Region, ring, ring_bytes},
    sys::EventFd,
    unix::{FdPassError, peer_cred, recv_with_fds, send_with_fds},
};

fn pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap()
}

/// The tests of this file one at a time: one of them counts the process's
/// open descriptors.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_region_and_a_doorbell_arrive_usable() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (a, b) = pair();
    let cap = 4096;
    let region = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
    let (mut tx, _) = ring(&region, 0, cap).unwrap();
    let bell = EventFd::new().unwrap();
    assert_eq!(send_with_fds(a.as_fd(), b"attach", &[region.fd(), bell.fd()]).unwrap(), 6);
    let mut buf = [0u8; 64];
    let (n, mut fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
    assert_eq!(&buf[..n], b"attach");
    assert_eq!(fds.len(), 2);
    let their_bell = EventFd::from_owned(fds.pop().unwrap());
    let theirs = Arc::new(Region::open(fds.pop().unwrap(), ring_bytes(cap)).unwrap());
    let mut rx = Consumer::attach(&theirs, 0, cap).unwrap();
    assert!(!rx.prepare_sleep().unwrap());
    let m = tx.push(b"hello").unwrap();
    assert!(m.wake_peer, "the consumer said it sleeps");
    bell.signal();
    let ready = xsock_nic::sys::poll_fds(
        &[xsock_nic::sys::Interest { fd: their_bell.fd(), read: true, write: false }],
        Some(std::time::Duration::from_secs(1)),
    )
    .unwrap();
    assert!(ready[0].readable, "the passed eventfd is the same doorbell");
    let mut out = [0u8; 16];
    assert_eq!(rx.pop(&mut out).unwrap().bytes, 5);
    assert_eq!(&out[..5], b"hello");
    // No descriptors at all is fine too.
    send_with_fds(a.as_fd(), b"plain", &[]).unwrap();
    let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
    assert_eq!((&buf[..n], fds.len()), (&b"plain"[..], 0));
}

#[test]
fn more_descriptors_than_expected_are_closed_and_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (a, b) = pair();
    let bells: Vec<EventFd> = (0..5).map(|_| EventFd::new().unwrap()).collect();
    let before = open_fds();
    send_with_fds(a.as_fd(), b"x", &bells.iter().map(|e| e.fd()).collect::<Vec<_>>()).unwrap();
    let mut buf = [0u8; 8];
    let e = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap_err();
    assert!(matches!(e, FdPassError::TooManyFds { got: 5, max: 2 }), "{e}");
    assert_eq!(open_fds(), before, "every received descriptor was closed");
    // A message longer than the buffer, with a descriptor: refused, closed.
    send_with_fds(a.as_fd(), &[7u8; 100], &[bells[0].fd()]).unwrap();
    let e = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap_err();
    assert!(matches!(e, FdPassError::Truncated(8)), "{e}");
    assert_eq!(open_fds(), before);
    // The peer gone: a clean end, no descriptors.
    drop(a);
    let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
    assert_eq!((n, fds.len()), (0, 0));
}

#[test]
fn the_kernel_names_the_peer() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (a, _b) = pair();
    let c = peer_cred(a.as_fd()).unwrap();
    assert_eq!(c.pid, std::process::id() as i32);
    assert_eq!((c.uid, c.gid), (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()));
}
