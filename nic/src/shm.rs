//! Shared memory between processes: the channel a host engine and its
//! client processes will move stream bytes through (issue 12), built here
//! because it is a kernel interface (memfd, mmap, eventfd) and its
//! `unsafe` belongs with the others in this crate.
//!
//! - [`Region`]: a memfd, sized once and **sealed** against shrinking and
//!   growing before anyone else sees it, mapped shared. A process that is
//!   handed a region's descriptor ([`Region::open`]) checks the seals and
//!   the size first: a peer that could shrink the file under our map would
//!   make our next access a SIGBUS, so an unsealed or wrongly sized
//!   descriptor is refused.
//! - [`Producer`] / [`Consumer`]: one single-producer single-consumer byte
//!   ring inside a region: a 192-byte header (the producer's and the
//!   consumer's counters on cache lines of their own, and "asleep" flags)
//!   and a power-of-two data area. Each side keeps its own counter in
//!   private memory and only publishes it; the counter it reads from the
//!   peer is checked (the peer may be hostile or broken) and a value that
//!   no correct peer could publish is [`Corrupt`], never a panic or an
//!   access outside the ring (a counter that moves backwards only makes the
//!   ring look fuller or emptier than it is, which hurts only that peer).
//! - Wake-ups: a side about to sleep sets its flag and looks once more; the
//!   other side, after moving bytes, sees the flag and rings the sleeper's
//!   doorbell ([`crate::sys::EventFd`], which can be passed like any
//!   descriptor). A busy peer never makes a system call.
//!
//! Bytes in the data area are read while the peer may (if it misbehaves)
//! write them: such a peer gets garbage delivered to itself, as it would by
//! sending garbage over a socket; the counters are atomics, so they are
//! never torn.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use memmap2::{MmapOptions, MmapRaw};

/// Bytes of a ring's header, before its data area.
pub const RING_HEADER: usize = 192;

const HEAD: usize = 0; // producer's counter (bytes ever written)
const TAIL: usize = 64; // consumer's counter (bytes ever read)
const CONSUMER_ASLEEP: usize = 128;
const PRODUCER_ASLEEP: usize = 132;
const PRODUCER_DONE: usize = 136; // the producer will write no more

/// Why a shared region or ring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A system call failed.
    #[error("shared memory: {0}")]
    Io(#[from] io::Error),
    /// The descriptor is not sealed against resizing (it could be shrunk
    /// under our map).
    #[error(
        "shared memory descriptor is not sealed against shrinking and growing (seals {0:#x}); create it with Region::create"
    )]
    NotSealed(i32),
    /// The region is not the size agreed on.
    #[error("shared memory region is {actual} bytes, expected {expected}")]
    WrongSize {
        /// What fstat says.
        actual: u64,
        /// What the caller expected.
        expected: usize,
    },
    /// A ring does not fit its region, or its capacity is not a power of two.
    #[error(
        "a ring of {capacity} bytes at offset {offset} does not fit a region of {len} bytes (capacity: a power of two)"
    )]
    BadRing {
        /// Offset asked for.
        offset: usize,
        /// Capacity asked for.
        capacity: usize,
        /// Region length.
        len: usize,
    },
}

/// The peer published a counter no correct peer could: drop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer corrupted the shared ring (it published counter {published}, ours is {ours}, capacity {capacity})")]
pub struct Corrupt {
    /// The counter the peer published.
    pub published: u64,
    /// Our own counter.
    pub ours: u64,
    /// The ring's capacity.
    pub capacity: usize,
}

/// A sealed, shared memory mapping (see the module documentation).
#[derive(Debug)]
pub struct Region {
    map: MmapRaw,
    file: File,
}

impl Region {
    /// A new region of `len` bytes (zeroed), sealed against resizing.
    pub fn create(name: &str, len: usize) -> Result<Region, ShmError> {
        let cname = std::ffi::CString::new(name).map_err(|_| io::Error::other("region name contains a NUL byte"))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the call.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by no one else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len as u64)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an int argument; the fd is ours.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Self::map(file, len)
    }

    /// Maps a region another process created and handed over, after
    /// checking that it is sealed against resizing and `len` bytes long.
    pub fn open(fd: OwnedFd, len: usize) -> Result<Region, ShmError> {
        let file = File::from(fd);
        // SAFETY: F_GET_SEALS takes no argument; the fd is ours. A file
        // that is not a memfd fails with EINVAL, refused below.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & needed != needed {
            return Err(ShmError::NotSealed(seals.max(0)));
        }
        let actual = file.metadata()?.len();
        if actual != len as u64 {
            return Err(ShmError::WrongSize { actual, expected: len });
        }
        Self::map(file, len)
    }

    fn map(file: File, len: usize) -> Result<Region, ShmError> {
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Region { map, file })
    }

    /// The descriptor to hand to the other process (SCM_RIGHTS, or
    /// inheritance).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.len());
        // SAFETY: the map is page-aligned and `off` a multiple of 8 inside
        // it (ring offsets are checked in `Ring::check`), so the pointer is
        // valid and aligned for an AtomicU64, which has u64's layout; the
        // map lives as long as `self`, and every party accesses these
        // words atomically (a peer that does not only changes the value).
        unsafe { &*self.map.as_mut_ptr().wrapping_add(off).cast::<AtomicU64>() }
    }

    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= self.len());
        // SAFETY: as for `atomic_u64`, with 4-byte alignment.
        unsafe { &*self.map.as_mut_ptr().wrapping_add(off).cast::<AtomicU32>() }
    }

    /// Copies `src` into the region at `off` (inside it: checked by callers).
    fn write(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len());
        // SAFETY: the destination range lies inside the map (asserted), the
        // source is a distinct private buffer, and the ring protocol gives
        // this side the range until it publishes its counter.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.map.as_mut_ptr().wrapping_add(off), src.len()) }
    }

    /// Copies from the region at `off` into `dst` (inside it: checked).
    fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= self.len());
        // SAFETY: the source range lies inside the map (asserted), `dst` is
        // a distinct private buffer; the peer published these bytes before
        // its counter (Release/Acquire), and may change them only by
        // breaking the protocol (see the module documentation).
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().wrapping_add(off), dst.as_mut_ptr(), dst.len()) }
    }
}

/// Where a ring lives in its region.
#[derive(Debug, Clone)]
struct Ring {
    region: Arc<Region>,
    offset: usize,
    capacity: usize,
}

impl Ring {
    /// The ring of `capacity` bytes at `offset`, if it fits the region.
    fn check(region: Arc<Region>, offset: usize, capacity: usize) -> Result<Ring, ShmError> {
        let fits = capacity.is_power_of_two()
            && offset.is_multiple_of(64)
            && offset.checked_add(RING_HEADER).and_then(|o| o.checked_add(capacity)).is_some_and(|e| e <= region.len());
        if !fits {
            return Err(ShmError::BadRing { offset, capacity, len: region.len() });
        }
        Ok(Ring { region, offset, capacity })
    }

    fn word(&self, field: usize) -> &AtomicU64 {
        self.region.atomic_u64(self.offset + field)
    }

    fn flag(&self, field: usize) -> &AtomicU32 {
        self.region.atomic_u32(self.offset + field)
    }

    /// Copies `src` to the data area at stream position `pos`, wrapping.
    fn put(&self, pos: u64, src: &[u8]) {
        let at = (pos % self.capacity as u64) as usize;
        let first = src.len().min(self.capacity - at);
        let data = self.offset + RING_HEADER;
        self.region.write(data + at, &src[..first]);
        self.region.write(data, &src[first..]);
    }

    /// Copies from the data area at stream position `pos` into `dst`.
    fn get(&self, pos: u64, dst: &mut [u8]) {
        let at = (pos % self.capacity as u64) as usize;
        let first = dst.len().min(self.capacity - at);
        let data = self.offset + RING_HEADER;
        self.region.read(data + at, &mut dst[..first]);
        self.region.read(data, &mut dst[first..]);
    }
}

/// Bytes a ring with `capacity` bytes of data takes in a region.
pub const fn ring_bytes(capacity: usize) -> usize {
    RING_HEADER + capacity
}

/// Where a duplex pair of rings of `capacity` bytes each lies in one
/// region: (first ring's offset, second ring's offset, region length).
pub const fn duplex_layout(capacity: usize) -> (usize, usize, usize) {
    let one = ring_bytes(capacity);
    (0, one, 2 * one)
}

/// The writing end of a ring.
#[derive(Debug)]
pub struct Producer {
    ring: Ring,
    head: u64,
    follow: bool,
}

/// The reading end of a ring.
#[derive(Debug)]
pub struct Consumer {
    ring: Ring,
    tail: u64,
    follow: bool,
}

/// Lays out a new, empty ring at `offset` of `region` and returns its two
/// ends (typically one is used here and the peer attaches the other).
pub fn ring(region: &Arc<Region>, offset: usize, capacity: usize) -> Result<(Producer, Consumer), ShmError> {
    let r = Ring::check(region.clone(), offset, capacity)?;
    r.word(HEAD).store(0, Ordering::SeqCst);
    r.word(TAIL).store(0, Ordering::SeqCst);
    r.flag(CONSUMER_ASLEEP).store(0, Ordering::SeqCst);
    r.flag(PRODUCER_ASLEEP).store(0, Ordering::SeqCst);
    r.flag(PRODUCER_DONE).store(0, Ordering::SeqCst);
    Ok((Producer { ring: r.clone(), head: 0, follow: false }, Consumer { ring: r, tail: 0, follow: false }))
}

/// What one [`Producer::push`] or [`Consumer::pop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bytes moved.
    pub bytes: usize,
    /// The peer was asleep waiting for this: ring its doorbell.
    pub wake_peer: bool,
}

impl Producer {
    /// The producing end of the ring a peer laid out at `offset`.
    pub fn attach(region: &Arc<Region>, offset: usize, capacity: usize) -> Result<Producer, ShmError> {
        let ring = Ring::check(region.clone(), offset, capacity)?;
        let head = ring.word(HEAD).load(Ordering::Acquire);
        Ok(Producer { ring, head, follow: false })
    }

    /// Takes this end's own counter from the ring before every operation
    /// instead of keeping it privately: for an end that several processes
    /// hold (a forked child and its parent, one after the other). The
    /// counter is checked against the peer's as always, so a peer that
    /// rewrites it can only garble its own bytes.
    pub fn follow_shared_counter(&mut self) {
        self.follow = true;
    }

    fn refresh(&mut self) {
        if self.follow {
            self.head = self.ring.word(HEAD).load(Ordering::Acquire);
        }
    }

    /// Bytes that fit now.
    pub fn room(&mut self) -> Result<usize, Corrupt> {
        self.refresh();
        self.free()
    }

    /// No more bytes will come: the consumer reads the end once it has
    /// read everything. Says whether to ring the consumer's doorbell.
    pub fn finish(&mut self) -> bool {
        self.ring.flag(PRODUCER_DONE).store(1, Ordering::SeqCst);
        self.ring.flag(CONSUMER_ASLEEP).swap(0, Ordering::SeqCst) != 0
    }

    fn free(&self) -> Result<usize, Corrupt> {
        let tail = self.ring.word(TAIL).load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if used > self.ring.capacity as u64 {
            return Err(Corrupt { published: tail, ours: self.head, capacity: self.ring.capacity });
        }
        Ok(self.ring.capacity - used as usize)
    }

    /// Writes as much of `src` as there is room for.
    pub fn push(&mut self, src: &[u8]) -> Result<Moved, Corrupt> {
        self.refresh();
        let n = self.free()?.min(src.len());
        if n > 0 {
            self.ring.put(self.head, &src[..n]);
            self.head = self.head.wrapping_add(n as u64);
            self.ring.word(HEAD).store(self.head, Ordering::Release);
        }
        let wake_peer = n > 0 && self.ring.flag(CONSUMER_ASLEEP).swap(0, Ordering::SeqCst) != 0;
        Ok(Moved { bytes: n, wake_peer })
    }

    /// About to sleep until there is room: sets the flag the consumer
    /// checks, then says whether there is room after all (then do not
    /// sleep).
    pub fn prepare_sleep(&mut self) -> Result<bool, Corrupt> {
        self.refresh();
        self.ring.flag(PRODUCER_ASLEEP).store(1, Ordering::SeqCst);
        let room = self.free()? > 0;
        if room {
            self.ring.flag(PRODUCER_ASLEEP).store(0, Ordering::SeqCst);
        }
        Ok(room)
    }
}

impl Consumer {
    /// The consuming end of the ring a peer laid out at `offset`.
    pub fn attach(region: &Arc<Region>, offset: usize, capacity: usize) -> Result<Consumer, ShmError> {
        let ring = Ring::check(region.clone(), offset, capacity)?;
        let tail = ring.word(TAIL).load(Ordering::Acquire);
        Ok(Consumer { ring, tail, follow: false })
    }

    /// As [`Producer::follow_shared_counter`], for this end.
    pub fn follow_shared_counter(&mut self) {
        self.follow = true;
    }

    fn refresh(&mut self) {
        if self.follow {
            self.tail = self.ring.word(TAIL).load(Ordering::Acquire);
        }
    }

    /// Bytes waiting now.
    pub fn waiting(&mut self) -> Result<usize, Corrupt> {
        self.refresh();
        self.available()
    }

    /// The producer finished and every byte it wrote has been read.
    pub fn at_end(&mut self) -> Result<bool, Corrupt> {
        if self.ring.flag(PRODUCER_DONE).load(Ordering::SeqCst) == 0 {
            return Ok(false);
        }
        Ok(self.waiting()? == 0)
    }

    fn available(&self) -> Result<usize, Corrupt> {
        let head = self.ring.word(HEAD).load(Ordering::Acquire);
        let avail = head.wrapping_sub(self.tail);
        if avail > self.ring.capacity as u64 {
            return Err(Corrupt { published: head, ours: self.tail, capacity: self.ring.capacity });
        }
        Ok(avail as usize)
    }

    /// Reads up to `dst.len()` bytes.
    pub fn pop(&mut self, dst: &mut [u8]) -> Result<Moved, Corrupt> {
        self.refresh();
        let n = self.available()?.min(dst.len());
        if n > 0 {
            self.ring.get(self.tail, &mut dst[..n]);
            self.tail = self.tail.wrapping_add(n as u64);
            self.ring.word(TAIL).store(self.tail, Ordering::Release);
        }
        let wake_peer = n > 0 && self.ring.flag(PRODUCER_ASLEEP).swap(0, Ordering::SeqCst) != 0;
        Ok(Moved { bytes: n, wake_peer })
    }

    /// About to sleep until bytes arrive: sets the flag the producer
    /// checks, then says whether bytes arrived after all (then do not
    /// sleep).
    pub fn prepare_sleep(&mut self) -> Result<bool, Corrupt> {
        self.refresh();
        self.ring.flag(CONSUMER_ASLEEP).store(1, Ordering::SeqCst);
        let ready = self.available()? > 0 || self.ring.flag(PRODUCER_DONE).load(Ordering::SeqCst) != 0;
        if ready {
            self.ring.flag(CONSUMER_ASLEEP).store(0, Ordering::SeqCst);
        }
        Ok(ready)
    }
}
