//! The kernel descriptor behind a stream that the kernel carries: a TCP
//! socket of our own, or one end of a socketpair the host engine handed us
//! (the engine moves its bytes over the path it chose). Reads, writes,
//! readiness and shutdown are the same system calls on both; only the end
//! of the stream differs: an engine stream whose engine reset it (or that
//! lost its engine) reads as that error, not as a clean end. An engine
//! stream's bytes cross either the socketpair itself or, when the engine
//! made them, two shared rings ([`super::rings`]) with the socketpair as
//! handle and doorbell.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream},
    os::{
        fd::{AsFd, AsRawFd, RawFd},
        unix::net::UnixStream,
    },
    sync::{Arc, atomic::Ordering},
};

use super::rings::Rings;
use crate::{Path, engine_client::ClientShared};

pub(crate) enum Sock {
    Tcp(TcpStream),
    Engine(EngineSock),
}

/// A stream the host engine carries.
pub(crate) struct EngineSock {
    /// Shared by the stream's clones: the engine's id for it. Declared
    /// first, so it drops first: the engine hears that the stream is let go
    /// of before the last descriptor closes.
    pub end: Arc<EndWatch>,
    pub sock: UnixStream,
    /// The path the engine took.
    pub path: Path,
    /// Our end's address, as the engine said.
    pub local: std::net::SocketAddrV4,
    /// The stream's shared rings, if its bytes cross them.
    pub rings: Option<Arc<Rings>>,
}

/// Where to ask how a stream carried over a socketpair ended: the host
/// engine (the last clone's drop tells the client to forget it), or the
/// overlay session that carries a virtual connection.
pub(crate) enum EndWatch {
    Engine { id: u32, client: Arc<ClientShared> },
    Vc(Arc<crate::overlay::VcEnd>),
}

impl EndWatch {
    /// Why the stream ended, if not cleanly.
    fn end_of(&self) -> Option<crate::Error> {
        match self {
            EndWatch::Engine { id, client } => client.end_of(*id),
            EndWatch::Vc(v) => v.end_of(),
        }
    }
}

impl Drop for EndWatch {
    fn drop(&mut self) {
        if let EndWatch::Engine { id, client } = self {
            client.forget(*id);
        }
    }
}

impl EngineSock {
    /// What a read's result means: 0 is the end of the stream, unless the
    /// engine said the stream ended otherwise (or is gone itself).
    /// A read: through the rings (their clean end is final; a hang-up
    /// without it is asked about as a socket's end is), or the socket.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &self.rings {
            Some(rings) => match rings.read(buf) {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => Ok(0),
                Err(e) => Err(e),
            },
            None => self.sock.read(buf),
        };
        self.settle(r)
    }

    fn settle(&self, r: io::Result<usize>) -> io::Result<usize> {
        match r {
            Ok(0) => match self.end.end_of() {
                Some(e) => Err(io::Error::from(e)),
                None => Ok(0),
            },
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(self.end.end_of().map_or(e, io::Error::from)),
            r => r,
        }
    }
}

impl Sock {
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_nonblocking(on),
            // The descriptor itself stays non-blocking (it only carries
            // doorbells); the calls honour the setting.
            Sock::Engine(EngineSock { rings: Some(r), .. }) => {
                r.nonblocking.store(on, Ordering::Relaxed);
                Ok(())
            }
            Sock::Engine(e) => e.sock.set_nonblocking(on),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(how),
            Sock::Engine(EngineSock { rings: Some(r), .. }) => {
                // Our end of writing is a flag in our ring; the socket
                // keeps carrying doorbells. Nothing to do for reading.
                if how != Shutdown::Read {
                    r.finish();
                }
                Ok(())
            }
            Sock::Engine(e) => e.sock.shutdown(how),
        }
    }

    pub fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
            Sock::Engine(e) => Sock::Engine(EngineSock {
                sock: e.sock.try_clone()?,
                path: e.path,
                end: e.end.clone(),
                local: e.local,
                rings: e.rings.clone(),
            }),
        })
    }

    /// The path the bytes take.
    pub fn path(&self) -> Path {
        match self {
            Sock::Tcp(_) => Path::Kernel,
            Sock::Engine(e) => e.path,
        }
    }
}

impl std::os::fd::AsFd for Sock {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Engine(e) => e.sock.as_fd(),
        }
    }
}

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Engine(e) => e.sock.as_raw_fd(),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Engine(e) => e.read(buf),
        }
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read_vectored(bufs),
            Sock::Engine(e) if e.rings.is_some() => {
                let first = bufs.iter_mut().find(|b| !b.is_empty());
                e.read(first.map_or(&mut [][..], |b| &mut b[..]))
            }
            Sock::Engine(e) => {
                let r = e.sock.read_vectored(bufs);
                e.settle(r)
            }
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            // send(MSG_NOSIGNAL): a closed peer is EPIPE, never SIGPIPE (C
            // programs on the C ABI keep the default SIGPIPE action).
            Sock::Engine(e) => match match &e.rings {
                Some(r) => r.write(buf),
                None => xsock_nic::unix::send_nosignal(e.sock.as_fd(), buf),
            } {
                Err(err) if matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {
                    Err(e.end.end_of().map_or(err, io::Error::from))
                }
                r => r,
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
