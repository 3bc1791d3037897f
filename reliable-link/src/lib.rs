//! # xsock-reliable-link: a transport for trusted Ethernet segments (sans-IO)
//!
//! On one L2 segment the NIC checks every frame's CRC, and frames arrive in
//! order (one queue, one path). So, like the Myrinet socket bypass this
//! follows, reliable-link computes **no software checksum** and keeps **no
//! per-frame acknowledgement or retransmit timer** on the fast path; it does
//! keep **credit-based flow control**, so a sender never overruns the
//! receiver's buffer.
//!
//! Ethernet can still drop a frame (a full ring, a switch without PAUSE),
//! and then a trusted link must not corrupt a stream: offsets detect the
//! gap, and a rare-path recovery repairs it — the receiver keeps what
//! arrived behind the hole and NAKs once, naming the hole, and the sender
//! resends just the hole (out of the bytes it keeps until acknowledged,
//! never more than the peer's credit); a
//! single timer per connection, armed only while waiting for the peer,
//! probes for a lost tail and, after `dead_after` of silence, fails the
//! connection with an error. Loss costs time, never data. Corruption is the
//! link's business: a frame that fails the FCS never reaches us (the test
//! harness models exactly that); an integrity check above the link would
//! belong to the application.
//!
//! ## Pieces
//! - [`wire`]: the versioned frame format (EtherType 0x88B5), as zero-copy
//!   views and parsed representations.
//! - [`Connection`]: one connection's state machine: handshake (SYN,
//!   SYN-ACK, confirmation), stream offsets, message boundaries (each write
//!   may end a message; messages of any size stream through the credit
//!   window), credits, NAKs naming holes, probes, FIN in each direction, RST.
//! - [`reorder`]: frames kept behind a hole until it is filled.
//! - [`Endpoint`]: every connection of a node on a link; connection ids,
//!   listeners, discovery, fair transmission.
//! - [`discovery`]: how a node learns the MAC of an IPv4 peer that runs
//!   xsock (a DISCOVER broadcast on our EtherType, answered only by xsock
//!   nodes; see the module).
//!
//! ## Connection ids
//! Each side picks a random, non-zero 64-bit id for its end of every
//! connection (from a seed the caller draws from the OS's entropy) and
//! frames carry the *receiver's* id. A frame from an old connection names an
//! id that no longer exists and is dropped (and answered with an RST so the
//! sender learns fast); a frame for a live id from any MAC but the peer's is
//! dropped too.
//!
//! ## Driving it
//! Nothing here reads a clock or touches a socket: callers pass frames and
//! `now` in ([`Endpoint::handle_input`], [`Endpoint::handle_timeout`]) and
//! take frames and deadlines out ([`Endpoint::poll_transmit`],
//! [`Endpoint::poll_timeout`]). The `xsock` crate drives it on AF_XDP; the
//! tests drive it on a simulated link with seeded faults and virtual time.

#![forbid(unsafe_code)]

pub mod buffer;
pub mod connection;
pub mod discovery;
pub mod endpoint;
pub mod fasthash;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod reorder;
pub mod wire;

pub use connection::{CloseReason, Config, ConnStats, Connection, Event, Mode, ReadOutcome, StreamError};
pub use discovery::{DiscoveryConfig, Lookup, Peer};
pub use endpoint::{
    Endpoint, EndpointConfig, EndpointError, EndpointEvent, EndpointStats, LocalAddr, ReadStatus, Transmit,
};
