//! # xsock-overlay (sans-IO)
//!
//! The relay overlay that joins LANs (after SSOCK): inside a LAN nodes talk
//! directly; between LANs a connection is *virtual*, carried by relays over
//! a few relay-to-relay links and routed by link state.
//!
//! - [`id`]: [`NodeId`] (assigned at registration, independent of IP
//!   addresses) and [`SiteId`] (a LAN, told apart behind NAT);
//! - [`wire`]: the length-prefixed message format of every overlay
//!   connection (bootstrap sessions, relay links, the preamble of a LAN
//!   connection);
//! - [`auth`]: mutual challenge-response over a cluster key (inside a LAN);
//! - [`preamble`]: what a LAN stream carries before it is a virtual
//!   connection's (the handshake, then `Open` and `Accept`), one state
//!   machine for the endpoints' blocking library and the relay's event loop;
//! - [`cert`]: node certificates from a cluster CA, revocation lists;
//! - [`secure`]: Noise sessions (the cluster key as psk) for everything
//!   that crosses a LAN boundary;
//! - [`registry`]: the bootstrap server's directory (names, ranks, sites);
//! - [`lsdb`] and [`route`]: link-state advertisements with sequence
//!   numbers and ageing, routing behind the [`route::Routing`] trait
//!   (Dijkstra now);
//! - [`attach`]: an attached endpoint's session with its relay (the VCs of
//!   every process behind it on one stream; windows that grow to the path);
//! - [`linkq`]: a link's output queue (VCs take turns, a frame each);
//! - [`relay`]: the relay's core: links, flooding, virtual connections
//!   (open, data, end-to-end credit, close, abort) multiplexed over links;
//! - [`sim`]: relay cores on in-memory links and virtual time (the tests'
//!   harness and the many-relay benchmark's).
//!
//! Nothing here does I/O or reads a clock: time comes in as a `Duration`
//! since an epoch the caller picks, randomness (nonces) from the caller.
//! The same code runs in the many-relay simulation of the tests and in
//! `xsock boot` / `xsock relay`.

#![forbid(unsafe_code)]

pub mod attach;
pub mod auth;
pub mod cert;
pub mod id;
pub mod linkq;
pub mod lsdb;
pub mod preamble;
pub mod registry;
pub mod relay;
pub mod route;
pub mod secure;
pub mod sim;
pub mod wire;

pub use id::{NodeId, SiteId};
