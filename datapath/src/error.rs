//! Errors of the xsock runtime and its sockets. Each says what happened
//! and, where there is one, what to do.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
};

use xsock_nic::{NicError, TxError};

/// An error from the runtime or a socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or driving a frame device failed (the message names the fix).
    #[error(transparent)]
    Nic(#[from] NicError),
    /// A system call failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
    /// A frame could not be queued.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// A handler is already registered for this EtherType.
    #[error("a handler for EtherType {0:#06x} is already registered")]
    HandlerExists(u16),
    /// The datapath thread has stopped.
    #[error("the datapath thread has stopped (it returned an error or was shut down)")]
    Stopped,
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Nobody accepts connections at the address.
    #[error("connection refused by {0}: nothing listens there (start the server first, or check the port)")]
    ConnectionRefused(SocketAddrV4),
    /// The peer reset the connection.
    #[error("connection reset: {0}")]
    ConnectionReset(String),
    /// The peer stopped answering, or a connect took too long.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// The destination does not run xsock on this segment (only with
    /// reliable-link forced).
    #[error(
        "{0} does not answer reliable-link discovery: it is not on this segment or does not run xsock \
             (use the automatic transport to fall back to kernel TCP)"
    )]
    NotXsockPeer(Ipv4Addr),
    /// reliable-link was asked for, but no interface is driven.
    #[error(
        "no interface is driven by xsock, so reliable-link is unavailable: build the runtime with \
             .interface(\"eth0\") (it may have failed to open; see the warning logged then)"
    )]
    NoLink,
    /// Something already listens on the address.
    #[error("{0} is already in use: another listener has it")]
    AddrInUse(SocketAddrV4),
    /// The connection has ended (or the stream was closed).
    #[error("the connection is closed")]
    Closed,
    /// A non-blocking call found nothing to do.
    #[error("the operation would block")]
    WouldBlock,
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer announced (or streamed) a message larger than this stream
    /// accepts; the connection was reset.
    #[error(
        "the peer sent a {len}-byte message, over this stream's limit of {max} bytes; the connection was reset \
         (raise it with RuntimeBuilder::max_message or Stream::set_max_message if such messages are expected)"
    )]
    MessageTooLarge {
        /// The length the peer announced (or had sent when it passed the limit).
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The runtime's memory limit for connection buffers is reached, so a
    /// new connection was refused (existing ones keep what they hold).
    #[error(
        "no memory for another connection: {held} of the runtime's {limit}-byte limit is held by {connections} \
         connections (raise RuntimeBuilder::memory_limit, or close idle connections)"
    )]
    MemoryLimit {
        /// Bytes held (reserved) by connections now.
        held: usize,
        /// The limit.
        limit: usize,
        /// Connections holding it.
        connections: usize,
    },
    /// The relay overlay could not do what was asked (the message says why
    /// and what to do: a wrong key, an unknown name, no relay, a refusal).
    #[error("overlay: {0}")]
    Overlay(String),
    /// The far end of a virtual connection, or a relay on its way, refused
    /// the open (nothing listens on the port, no route): the message says
    /// which and why.
    #[error("overlay: {0}")]
    OverlayRefused(String),
}

impl Error {
    /// The same error again (I/O errors keep their kind and message).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Nic(e) => Error::Config(e.to_string()),
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::Tx(e) => Error::Tx(*e),
            Error::HandlerExists(t) => Error::HandlerExists(*t),
            Error::Stopped => Error::Stopped,
            Error::Config(m) => Error::Config(m.clone()),
            Error::ConnectionRefused(a) => Error::ConnectionRefused(*a),
            Error::ConnectionReset(m) => Error::ConnectionReset(m.clone()),
            Error::TimedOut(m) => Error::TimedOut(m.clone()),
            Error::NotXsockPeer(ip) => Error::NotXsockPeer(*ip),
            Error::NoLink => Error::NoLink,
            Error::AddrInUse(a) => Error::AddrInUse(*a),
            Error::Closed => Error::Closed,
            Error::WouldBlock => Error::WouldBlock,
            Error::Protocol(m) => Error::Protocol(m.clone()),
            Error::MessageTooLarge { len, max } => Error::MessageTooLarge { len: *len, max: *max },
            Error::MemoryLimit { held, limit, connections } => {
                Error::MemoryLimit { held: *held, limit: *limit, connections: *connections }
            }
            Error::Overlay(m) => Error::Overlay(m.clone()),
            Error::OverlayRefused(m) => Error::OverlayRefused(m.clone()),
        }
    }

    /// Maps an I/O error from a kernel socket, keeping "would block" distinct.
    pub fn from_io(e: io::Error) -> Error {
        // Our own error carried through an io::Error (a stream's Read and
        // Write): take it back out as it was.
        if e.get_ref().is_some_and(|i| i.is::<Error>()) {
            let kind = e.kind();
            return match e.into_inner().map(|i| i.downcast::<Error>()) {
                Some(Ok(x)) => *x,
                Some(Err(other)) => Error::Io(io::Error::new(kind, other)),
                None => Error::Io(io::Error::from(kind)),
            };
        }
        match e.kind() {
            io::ErrorKind::WouldBlock => Error::WouldBlock,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Error::ConnectionReset(e.to_string()),
            _ => Error::Io(e),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io(inner) => return io::Error::new(inner.kind(), e),
            Error::ConnectionRefused(_) | Error::OverlayRefused(_) => io::ErrorKind::ConnectionRefused,
            Error::ConnectionReset(_) => io::ErrorKind::ConnectionReset,
            Error::TimedOut(_) => io::ErrorKind::TimedOut,
            Error::WouldBlock => io::ErrorKind::WouldBlock,
            Error::AddrInUse(_) => io::ErrorKind::AddrInUse,
            Error::Closed => io::ErrorKind::NotConnected,
            Error::NotXsockPeer(_) | Error::NoLink => io::ErrorKind::Unsupported,
            Error::Config(_) => io::ErrorKind::InvalidInput,
            Error::MessageTooLarge { .. } => io::ErrorKind::InvalidData,
            Error::MemoryLimit { .. } => io::ErrorKind::OutOfMemory,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
