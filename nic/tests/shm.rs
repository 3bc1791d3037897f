//! Shared-memory rings (issue 12's engine-to-client channel): bytes through
//! a ring in a sealed memfd, between two mappings and between two
//! processes, against a model; a peer's impossible counters are errors, and
//! descriptors that could be resized under the map are refused.

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use proptest::prelude::*;
use xsock_nic::{
    shm::{Consumer, Producer, Region, ShmError, ring, ring_bytes},
    sys::{EventFd, Interest, poll_fds},
};

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> OwnedFd {
    // SAFETY: dup takes a valid descriptor and returns a new one we own.
    let n = unsafe { libc::dup(fd.as_raw_fd()) };
    assert!(n >= 0);
    // SAFETY: `n` was just returned by dup.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// The stream byte at `pos`.
fn pattern(pos: u64) -> u8 {
    (pos.wrapping_mul(2_654_435_761) >> 13) as u8
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever sizes the two sides push and pop, the consumer reads the
    /// producer's bytes in order, through a second mapping of the region.
    #[test]
    fn bytes_arrive_in_order_across_two_mappings(ops in proptest::collection::vec((any::<bool>(), 0usize..3000), 1..200)) {
        let cap = 4096;
        let a = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
        let b = Arc::new(Region::open(dup(a.fd()), ring_bytes(cap)).unwrap());
        let (mut tx, _) = ring(&a, 0, cap).unwrap();
        let mut rx = Consumer::attach(&b, 0, cap).unwrap();
        let mut model = VecDeque::new();
        let (mut written, mut read) = (0u64, 0u64);
        for (push, n) in ops {
            if push {
                let src: Vec<u8> = (written..written + n as u64).map(pattern).collect();
                let m = tx.push(&src).unwrap();
                prop_assert_eq!(m.bytes, n.min(cap - model.len()));
                model.extend(&src[..m.bytes]);
                written += m.bytes as u64;
            } else {
                let mut dst = vec![0u8; n];
                let m = rx.pop(&mut dst).unwrap();
                prop_assert_eq!(m.bytes, n.min(model.len()));
                for (i, &byte) in dst[..m.bytes].iter().enumerate() {
                    prop_assert_eq!(byte, model.pop_front().unwrap());
                    prop_assert_eq!(byte, pattern(read + i as u64));
                }
                read += m.bytes as u64;
            }
        }
    }
}

/// Writes `v` at `off` of the region through a mapping of our own: what a
/// hostile peer can do.
fn poke(region: &Region, off: usize, v: u64) {
    let file = std::fs::File::from(dup(region.fd()));
    // SAFETY: a shared map of a sealed memfd that outlives it; this test is
    // the only thread touching the region.
    let mut m = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    m[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

#[test]
fn counters_no_correct_peer_could_publish_are_errors_not_panics() {
    let cap = 1024;
    // A producer that claims more bytes than the ring holds.
    let region = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
    let (_tx, mut rx) = ring(&region, 0, cap).unwrap();
    poke(&region, 0, 5000);
    let mut buf = vec![0u8; 4096];
    let e = rx.pop(&mut buf).unwrap_err();
    assert_eq!((e.published, e.ours, e.capacity), (5000, 0, cap));
    assert!(rx.pop(&mut buf).is_err() && rx.prepare_sleep().is_err(), "and it stays an error");
    // A consumer that claims to have read more than was written.
    let region = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
    let (mut tx, _rx) = ring(&region, 0, cap).unwrap();
    assert_eq!(tx.push(&[1; 100]).unwrap().bytes, 100);
    poke(&region, 64, 101);
    assert!(tx.push(&[1; 10]).is_err(), "a tail past the head");
    assert!(tx.prepare_sleep().is_err(), "and it stays an error");
    // A tail that went backwards only makes the ring look fuller: less
    // room, never an access outside it.
    poke(&region, 64, u64::MAX);
    assert_eq!(tx.push(&[1; 2000]).unwrap().bytes, cap - 101);
    // Counters that wrap around u64 correctly are fine.
    let region = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
    poke(&region, 0, u64::MAX - 10);
    poke(&region, 64, u64::MAX - 10);
    let mut tx = Producer::attach(&region, 0, cap).unwrap();
    let mut rx = Consumer::attach(&region, 0, cap).unwrap();
    let src: Vec<u8> = (0..600).map(pattern).collect();
    assert_eq!(tx.push(&src).unwrap().bytes, 600);
    assert_eq!(rx.pop(&mut buf).unwrap().bytes, 600);
    assert_eq!(&buf[..600], &src[..]);
}

#[test]
fn unsealed_or_wrongly_sized_descriptors_are_refused() {
    let cap = 1024;
    let region = Region::create("xsock-test", ring_bytes(cap)).unwrap();
    assert!(matches!(
        Region::open(dup(region.fd()), ring_bytes(cap) * 2),
        Err(ShmError::WrongSize { expected, .. }) if expected == ring_bytes(cap) * 2
    ));
    // A memfd nobody sealed could be shrunk under our map (a SIGBUS later).
    let name = std::ffi::CString::new("unsealed").unwrap();
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: just returned by memfd_create.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(ring_bytes(cap) as u64).unwrap();
    let e = Region::open(file.into(), ring_bytes(cap)).unwrap_err();
    assert!(matches!(e, ShmError::NotSealed(_)), "{e}");
    assert!(e.to_string().contains("not sealed"), "{e}");
    // A plain file has no seals at all.
    let tmp = std::fs::File::open("/proc/self/exe").unwrap();
    assert!(matches!(Region::open(tmp.into(), ring_bytes(cap)), Err(ShmError::NotSealed(_))));
    // Rings that do not fit the region.
    let region = Arc::new(region);
    assert!(matches!(ring(&region, 0, 1000), Err(ShmError::BadRing { .. })), "capacity not a power of two");
    assert!(matches!(ring(&region, 64, cap), Err(ShmError::BadRing { .. })), "past the end");
    assert!(matches!(ring(&region, usize::MAX - 10, cap), Err(ShmError::BadRing { .. })), "offset overflows");
}

/// The child's side of the cross-process test: it runs only when the
/// parent starts this test binary with the descriptors in the environment.
#[test]
fn child_producer() {
    let Ok(spec) = std::env::var("XSOCK_SHM_CHILD") else { return };
    let fds: Vec<i32> = spec.split(',').map(|v| v.parse().unwrap()).collect();
    let (cap, total) = (fds[2] as usize, fds[3] as u64);
    // SAFETY: the parent left this descriptor open for us, and nothing
    // else in this process owns it.
    let region_fd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let bell_fd = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    let region = Arc::new(Region::open(region_fd, ring_bytes(cap)).unwrap());
    let bell = EventFd::from_owned(bell_fd);
    let mut tx = Producer::attach(&region, 0, cap).unwrap();
    let mut written = 0u64;
    while written < total {
        let n = (total - written).min(7919) as usize;
        let src: Vec<u8> = (written..written + n as u64).map(pattern).collect();
        let mut off = 0;
        while off < n {
            let m = tx.push(&src[off..]).unwrap();
            if m.wake_peer {
                bell.signal();
            }
            off += m.bytes;
            if m.bytes == 0 {
                std::thread::yield_now();
            }
        }
        written += n as u64;
    }
}

#[test]
fn a_child_process_streams_through_the_ring_to_a_sleeping_consumer() {
    if std::env::var("XSOCK_SHM_CHILD").is_ok() {
        return;
    }
    let (cap, total) = (64 << 10, 16u64 << 20);
    let region = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
    let (_tx, mut rx) = ring(&region, 0, cap).unwrap();
    let bell = EventFd::new().unwrap();
    // dup(2) leaves close-on-exec off: the child inherits these two.
    let (rfd, bfd) = (dup(region.fd()), dup(bell.fd()));
    let spec = format!("{},{},{cap},{total}", rfd.as_raw_fd(), bfd.as_raw_fd());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_producer", "--test-threads", "1"])
        .env("XSOCK_SHM_CHILD", spec)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop((rfd, bfd));
    let mut buf = vec![0u8; 100_000];
    let (mut read, mut sleeps) = (0u64, 0u32);
    let t0 = Instant::now();
    while read < total {
        assert!(t0.elapsed() < Duration::from_secs(60), "{read} of {total} bytes after a minute");
        let m = rx.pop(&mut buf).unwrap();
        for (i, &b) in buf[..m.bytes].iter().enumerate() {
            assert_eq!(b, pattern(read + i as u64), "byte {}", read + i as u64);
        }
        read += m.bytes as u64;
        if m.bytes == 0 && !rx.prepare_sleep().unwrap() {
            // Asleep until the producer rings (or a second, to look again).
            sleeps += 1;
            poll_fds(&[Interest { fd: bell.fd(), read: true, write: false }], Some(Duration::from_secs(1))).unwrap();
            bell.clear();
        }
    }
    assert!(child.wait().unwrap().success());
    eprintln!("{total} bytes through a {cap}-byte ring from another process, {sleeps} sleeps");
    assert!(sleeps > 0, "the consumer slept and was woken");
}

/// The end of a ring: the consumer reads every byte first, then the end;
/// a consumer about to sleep does not sleep past it, and the finishing
/// producer says to wake it.
#[test]
fn the_end_comes_after_every_byte() {
    let cap = 1024;
    let r = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
    let (mut tx, mut rx) = ring(&r, 0, cap).unwrap();
    assert!(!rx.at_end().unwrap());
    assert!(!rx.prepare_sleep().unwrap(), "nothing yet: sleep");
    assert!(tx.push(b"last words").unwrap().wake_peer);
    assert!(!tx.finish(), "the consumer was woken by the push already");
    assert!(!rx.at_end().unwrap(), "bytes first");
    let mut b = [0u8; 64];
    assert_eq!(rx.pop(&mut b).unwrap().bytes, 10);
    assert!(rx.at_end().unwrap());
    assert!(rx.prepare_sleep().unwrap(), "at the end: do not sleep");
}

/// Two holders of one end, one after the other (a parent and the child it
/// forked): with the shared counter followed, the second continues where
/// the first stopped instead of writing over its bytes.
#[test]
fn ends_that_follow_the_shared_counter_can_change_hands() {
    let cap = 1024;
    let r = Arc::new(Region::create("xsock-test", ring_bytes(cap)).unwrap());
    let (mut parent, mut rx) = ring(&r, 0, cap).unwrap();
    parent.follow_shared_counter();
    let mut child = Producer::attach(&r, 0, cap).unwrap();
    child.follow_shared_counter();
    parent.push(b"abc").unwrap();
    child.push(b"def").unwrap();
    parent.push(b"ghi").unwrap();
    let mut b = [0u8; 16];
    let n = rx.pop(&mut b).unwrap().bytes;
    assert_eq!(&b[..n], b"abcdefghi");
}
