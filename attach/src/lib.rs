//! The protocol between an xsock process and the host engine (issue 12):
//! a process attaches over a Unix seqpacket socket, the kernel tells the
//! engine who it is (SO_PEERCRED), and every stream it opens or accepts
//! comes back as one end of a socketpair passed with the reply
//! (SCM_RIGHTS). Data moves over that socketpair; the control socket
//! carries requests, replies and the reasons streams end.
//!
//! Sans-IO: this crate parses and emits messages ([`wire`]), decides who
//! may attach ([`policy`]) and names the engine's socket ([`place`]); the
//! engine (`xsock-engine`) and the client library (`xsock`) do the I/O.

pub mod place;
pub mod policy;
pub mod preload;
pub mod wire;

pub use place::Place;
pub use policy::{Policy, Refusal};
pub use wire::{EndKind, Msg, ParseError, PathKind, TransportKind, VERSION};
