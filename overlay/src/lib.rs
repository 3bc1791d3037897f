//! # xsock-overlay (sans-IO)
//!
//! Will own the relay overlay that joins LANs (after SSOCK): node identity
//! independent of IP addresses, the bootstrap protocol, relay-to-relay
//! links, link-state advertisements with sequence numbers and ageing,
//! shortest-path routing behind a pluggable routing-algorithm trait, the
//! virtual-connection protocol (open, data, end-to-end credits, close,
//! abort) multiplexed over relay links, and authentication with cluster or
//! per-node keys. Sans-IO, so the same code runs in a many-node emulator and
//! for real.

#![forbid(unsafe_code)]
