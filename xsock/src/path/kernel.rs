//! The kernel descriptor behind a stream that the kernel carries: a TCP
//! socket of our own, or one end of a socketpair the host engine handed us
//! (the engine moves its bytes over the path it chose). Reads, writes,
//! readiness and shutdown are the same system calls on both; only the end
//! of the stream differs: an engine stream whose engine reset it (or that
//! lost its engine) reads as that error, not as a clean end.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream},
    os::{
        fd::{AsRawFd, RawFd},
        unix::net::UnixStream,
    },
    sync::Arc,
};

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
}

/// Where to ask how an engine stream ended; the last clone's drop tells
/// the client to forget it.
pub(crate) struct EndWatch {
    pub id: u32,
    pub client: Arc<ClientShared>,
}

impl Drop for EndWatch {
    fn drop(&mut self) {
        self.client.forget(self.id);
    }
}

impl EngineSock {
    /// What a read's result means: 0 is the end of the stream, unless the
    /// engine said the stream ended otherwise (or is gone itself).
    fn settle(&self, r: io::Result<usize>) -> io::Result<usize> {
        match r {
            Ok(0) => match self.end.client.end_of(self.end.id) {
                Some(e) => Err(io::Error::from(e)),
                None => Ok(0),
            },
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                Err(self.end.client.end_of(self.end.id).map_or(e, io::Error::from))
            }
            r => r,
        }
    }
}

impl Sock {
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_nonblocking(on),
            Sock::Engine(e) => e.sock.set_nonblocking(on),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(how),
            Sock::Engine(e) => e.sock.shutdown(how),
        }
    }

    pub fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
            Sock::Engine(e) => {
                Sock::Engine(EngineSock { sock: e.sock.try_clone()?, path: e.path, end: e.end.clone(), local: e.local })
            }
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
            Sock::Engine(e) => {
                let r = e.sock.read(buf);
                e.settle(r)
            }
        }
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read_vectored(bufs),
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
            Sock::Engine(e) => match xsock_nic::unix::send_nosignal(std::os::fd::AsFd::as_fd(&e.sock), buf) {
                Err(err) if matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {
                    Err(e.end.client.end_of(e.end.id).map_or(err, io::Error::from))
                }
                r => r,
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
