//! Unix-socket plumbing for the host engine (issue 12): descriptors passed
//! with a message (SCM_RIGHTS: shared-memory regions, eventfds, a stream's
//! end of a socketpair) and the kernel's word on who is at the other end
//! (SO_PEERCRED), so the engine authenticates a client without trusting
//! anything the client says.
//!
//! Receiving is defensive: a peer may send more descriptors than the
//! protocol step expects, or none; every descriptor the kernel installed in
//! our table is either returned or closed, never leaked, and all of them
//! arrive close-on-exec.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, getsockopt, recvmsg, sendmsg, sockopt::PeerCredentials,
};

/// The most descriptors Linux passes in one message (SCM_MAX_FD): the
/// receive buffer holds this many, so the kernel never truncates the
/// control data (truncated descriptors would be installed and lost).
const SCM_MAX_FD: usize = 253;

/// Who is at the other end of a Unix socket, as the kernel saw it when the
/// connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Why a message with descriptors could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum FdPassError {
    /// A system call failed.
    #[error("unix socket: {0}")]
    Io(#[from] io::Error),
    /// The peer sent more descriptors than this step of the protocol takes
    /// (all of them were closed).
    #[error("the peer sent {got} descriptors where at most {max} were expected (closed them)")]
    TooManyFds {
        /// Descriptors received.
        got: usize,
        /// The most expected.
        max: usize,
    },
    /// The message did not fit the buffer (datagram and seqpacket sockets
    /// cut it; descriptors that came with it were closed).
    #[error("a message longer than the {0}-byte buffer (the peer broke the protocol)")]
    Truncated(usize),
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Sends `data` with `fds` attached, in one message (MSG_NOSIGNAL: a
/// closed peer is an error, not a SIGPIPE).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &[ControlMessage::ScmRights(&raw)] };
    sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(data)], cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(errno)
}

/// Receives one message into `buf` and the descriptors that came with it
/// (at most `max_fds`, else all are closed and it is an error). `Ok((0,
/// []))` on a stream socket means the peer closed.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> Result<(usize, Vec<OwnedFd>), FdPassError> {
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let len = buf.len();
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).map_err(errno)?;
    let mut fds = Vec::new();
    // With room for SCM_MAX_FD the control data is never cut; if it were,
    // nix refuses to walk it and the installed descriptors could not be
    // found to close: say so rather than pretend.
    for c in msg.cmsgs().map_err(errno)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our descriptor
                // table for this message; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(FdPassError::Truncated(len));
    }
    if fds.len() > max_fds {
        return Err(FdPassError::TooManyFds { got: fds.len(), max: max_fds });
    }
    Ok((msg.bytes, fds))
}

/// Whether `sock` is a Unix-domain stream socket (as one end of a
/// socketpair a peer passed must be, to be read and written as a stream).
pub fn is_unix_stream(sock: BorrowedFd<'_>) -> bool {
    let unix = nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(sock.as_raw_fd()).is_ok();
    unix && getsockopt(&sock, nix::sys::socket::sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::Stream)
}

/// The peer's credentials (SO_PEERCRED).
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let c = getsockopt(&sock, PeerCredentials).map_err(errno)?;
    Ok(PeerCred { pid: c.pid(), uid: c.uid(), gid: c.gid() })
}

/// Sends `data` on a connected socket without raising SIGPIPE if the peer
/// has gone (the caller gets EPIPE instead, as from a TCP socket).
pub fn send_nosignal(sock: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    nix::sys::socket::send(sock.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL).map_err(errno)
}

/// Doorbells: one byte on a stream socket says "look" to its peer.
/// Rings `sock`'s peer; a full socket already holds a doorbell the peer has
/// not read, which is as good. False once the peer is gone.
pub fn ring_doorbell(sock: BorrowedFd<'_>) -> bool {
    match send_nosignal(sock, &[1]) {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Reads the doorbells waiting on the non-blocking stream socket `sock`
/// (at most `max_bytes`, so a peer that only rings cannot hold the
/// caller). False once the peer has hung up (the end of the stream or an
/// error).
pub fn drain_doorbells(sock: BorrowedFd<'_>, max_bytes: usize) -> bool {
    let mut b = [0u8; 256];
    let mut read = 0;
    while read < max_bytes {
        match nix::unistd::read(sock, &mut b) {
            Ok(0) => return false,
            Ok(n) if n < b.len() => return true,
            Ok(n) => read += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
    true
}

fn seqpacket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(errno)
}

/// A seqpacket connection to the Unix socket at `path` (blocking,
/// close-on-exec).
pub fn seqpacket_connect(path: &std::path::Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{UnixAddr, connect};
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path).map_err(errno)?;
    connect(fd.as_raw_fd(), &addr).map_err(errno)?;
    Ok(fd)
}

/// A listening seqpacket socket bound at `path` (non-blocking,
/// close-on-exec). The caller removes a stale file first.
pub fn seqpacket_listen(path: &std::path::Path, backlog: i32) -> io::Result<OwnedFd> {
    use nix::sys::socket::{Backlog, UnixAddr, bind, listen};
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path).map_err(errno)?;
    bind(fd.as_raw_fd(), &addr).map_err(errno)?;
    listen(&fd, Backlog::new(backlog).map_err(errno)?).map_err(errno)?;
    set_nonblocking(std::os::fd::AsFd::as_fd(&fd), true)?;
    Ok(fd)
}

/// Takes one waiting connection off a non-blocking listener (`None`: none
/// waits); the new socket is non-blocking and close-on-exec.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{SockFlag, accept4};
    match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
        // SAFETY: accept4 just returned this new descriptor; nothing else
        // owns it.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(errno)?);
    let flags = if on { flags | OFlag::O_NONBLOCK } else { flags & !OFlag::O_NONBLOCK };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(errno)?;
    Ok(())
}

/// Shuts a socket down both ways (a thread blocked receiving on it wakes
/// with the end of the stream).
pub fn shutdown(sock: BorrowedFd<'_>) -> io::Result<()> {
    nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both).map_err(errno)
}
