//! A host-engine stream whose bytes cross two shared-memory rings (the
//! engine made them in one sealed region and handed it over with the
//! stream): this process writes into one and reads from the other with no
//! system call while both sides keep up. The socketpair end stays the
//! stream's handle and doorbell: a byte on it means "look at the rings",
//! and its hang-up is the end of the engine's side (or, seen by the
//! engine, the last close of ours).
//!
//! Waking: a side about to wait sets its ring's "asleep" flag and looks
//! once more ([`xsock_nic::shm`]); the other side, after moving bytes,
//! sees the flag and writes a doorbell byte. Doorbells for both directions
//! arrive on the one descriptor, so in this process only one thread at a
//! time waits on it (the *leader*); it reads every doorbell there is and
//! wakes the others, who look at their rings again. A poller's look that
//! finds nothing to do also reads the doorbells (when nobody leads), and
//! bumps the same generation, so a waiter never sleeps on a doorbell
//! somebody else consumed. A non-blocking call that finds nothing arms
//! nothing: a caller that spins on the ring makes no system call and costs
//! the engine no doorbells.
//!
//! The end of our writing is a flag in our ring, not a shutdown of the
//! socket, so doorbells keep working both ways until both ends are done.
//! A stream used by two processes at once (a parent and its forked child
//! both reading) may leave one of them waiting: use an inherited stream
//! from one process at a time (each end follows the ring's shared counter,
//! so it can change hands).

use std::{
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixStream,
    },
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use xsock_nic::shm::{self, Consumer, Corrupt, Producer, Region};

/// The largest ring a client accepts from an engine.
const MAX_RING: usize = 16 << 20;

#[derive(Default)]
struct Waiting {
    /// A thread waits on the descriptor for everyone.
    leader: bool,
    /// Bumped whenever doorbells were read.
    generation: u64,
}

/// This process's ends of a stream's two rings.
pub(crate) struct Rings {
    /// Our bytes to the engine.
    tx: Mutex<Producer>,
    /// The engine's bytes to us.
    rx: Mutex<Consumer>,
    _region: Arc<Region>,
    /// A copy of our end of the socketpair (doorbells both ways). Only the
    /// stream and its clones hold the `Rings` (a poller holds a weak
    /// reference), so the last close still reaches the engine.
    sock: UnixStream,
    /// The engine's end of the socketpair hung up.
    hup: AtomicBool,
    /// Calls return `WouldBlock` rather than wait (as O_NONBLOCK is shared
    /// by every copy of a descriptor, this is shared by the stream's clones).
    pub nonblocking: AtomicBool,
    waiting: Mutex<Waiting>,
    woken: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn corrupt(c: Corrupt) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the host engine's shared ring is broken ({c})"))
}

/// How a stream stands for a poller: (readable, writable, closed).
pub(crate) type Readiness = (bool, bool, bool);

impl Rings {
    /// Maps the region the engine handed over (`capacity` bytes per ring,
    /// laid out as the engine's `ring_layout`: ours to it first).
    pub fn open(fd: OwnedFd, capacity: u32, sock: &UnixStream) -> io::Result<Rings> {
        let capacity = capacity as usize;
        if !capacity.is_power_of_two() || capacity > MAX_RING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the host engine offered a ring of {capacity} bytes (not a power of two up to {MAX_RING})"),
            ));
        }
        let (to_engine, from_engine, len) = shm::duplex_layout(capacity);
        let map_err = |e: shm::ShmError| io::Error::other(format!("the host engine's shared ring: {e}"));
        let region = Arc::new(Region::open(fd, len).map_err(map_err)?);
        let mut tx = Producer::attach(&region, to_engine, capacity).map_err(map_err)?;
        let mut rx = Consumer::attach(&region, from_engine, capacity).map_err(map_err)?;
        tx.follow_shared_counter();
        rx.follow_shared_counter();
        Ok(Rings {
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            _region: region,
            sock: sock.try_clone()?,
            hup: AtomicBool::new(false),
            nonblocking: AtomicBool::new(false),
            waiting: Mutex::new(Waiting::default()),
            woken: Condvar::new(),
        })
    }

    fn bell(&self) {
        if !xsock_nic::unix::ring_doorbell(self.sock.as_fd()) {
            self.hup.store(true, Ordering::SeqCst);
        }
    }

    /// Reads the doorbells waiting (notes a hang-up).
    fn drain(&self) {
        if !xsock_nic::unix::drain_doorbells(self.sock.as_fd(), usize::MAX) {
            self.hup.store(true, Ordering::SeqCst);
        }
    }

    /// Reads the doorbells now, unless a leader is waiting (it will).
    fn drain_now(&self) {
        let mut w = lock(&self.waiting);
        if !w.leader {
            self.drain();
            w.generation += 1;
        }
    }

    fn generation(&self) -> u64 {
        lock(&self.waiting).generation
    }

    /// Waits until a doorbell arrives or someone read doorbells since
    /// generation `seen`.
    fn wait(&self, seen: u64) -> io::Result<()> {
        let mut w = lock(&self.waiting);
        if w.generation != seen {
            return Ok(());
        }
        if w.leader {
            while w.leader && w.generation == seen {
                w = self.woken.wait(w).unwrap_or_else(|p| p.into_inner());
            }
            return Ok(());
        }
        w.leader = true;
        drop(w);
        let fd = self.sock.as_fd();
        let r = xsock_nic::sys::poll_fds(&[xsock_nic::sys::Interest { fd, read: true, write: false }], None);
        let mut w = lock(&self.waiting);
        self.drain();
        w.leader = false;
        w.generation += 1;
        drop(w);
        self.woken.notify_all();
        match r {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads what the engine sent: 0 at the stream's clean end (the engine
    /// finished its ring), `Ok(None)` once the engine hung up without
    /// finishing (the caller asks why), `WouldBlock` if non-blocking and
    /// nothing is there.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let nonblocking = self.nonblocking.load(Ordering::Relaxed);
        loop {
            let mut rx = lock(&self.rx);
            let m = rx.pop(buf).map_err(corrupt)?;
            if m.bytes > 0 || buf.is_empty() {
                drop(rx);
                if m.wake_peer {
                    self.bell();
                }
                return Ok(Some(m.bytes));
            }
            if rx.at_end().map_err(corrupt)? {
                return Ok(Some(0));
            }
            if self.hup.load(Ordering::SeqCst) {
                return Ok(None);
            }
            if nonblocking {
                // Not armed: a caller that spins on the ring costs the
                // engine no doorbells; one that waits does so through a
                // poller, which arms what it waits for.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // Noted before arming: a doorbell read by anyone after the arm
            // moves the generation on, and the wait returns at once.
            let seen = self.generation();
            if rx.prepare_sleep().map_err(corrupt)? {
                continue;
            }
            drop(rx);
            self.wait(seen)?;
        }
    }

    /// Writes what fits (`WouldBlock` if `nonblocking` and nothing does; a
    /// broken pipe once the engine's end is gone).
    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        let nonblocking = self.nonblocking.load(Ordering::Relaxed);
        loop {
            if self.hup.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let mut tx = lock(&self.tx);
            let m = tx.push(data).map_err(corrupt)?;
            if m.bytes > 0 || data.is_empty() {
                drop(tx);
                if m.wake_peer {
                    self.bell();
                }
                return Ok(m.bytes);
            }
            if nonblocking {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let seen = self.generation();
            if tx.prepare_sleep().map_err(corrupt)? {
                continue;
            }
            drop(tx);
            self.wait(seen)?;
        }
    }

    /// No more bytes from us: the engine ends the stream toward the peer
    /// once it has sent what the ring holds.
    pub fn finish(&self) {
        if lock(&self.tx).finish() {
            self.bell();
        }
    }

    /// How the stream stands, for a poller (level-triggered): a direction
    /// it waits for and that is not ready is armed, so the engine's next
    /// move rings the descriptor the poller watches.
    pub fn readiness(&self, read: bool, write: bool) -> Readiness {
        let look = |arm: bool| -> Result<Readiness, Corrupt> {
            let hup = self.hup.load(Ordering::SeqCst);
            let mut rx = lock(&self.rx);
            let mut r = rx.waiting()? > 0 || rx.at_end()?;
            if read && !r && arm {
                r = rx.prepare_sleep()?;
            }
            drop(rx);
            let mut tx = lock(&self.tx);
            let mut w = tx.room()? > 0;
            if write && !w && arm {
                w = tx.prepare_sleep()?;
            }
            Ok((r || hup, w || hup, hup && !r))
        };
        match look(false) {
            Ok(st) if (st.0 || !read) && (st.1 || !write) => st,
            Ok(_) => {
                self.drain_now();
                look(true).unwrap_or((true, true, true))
            }
            // A broken ring reads as an error on the next call.
            Err(_) => (true, true, true),
        }
    }
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings").field("hup", &self.hup.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}
