//! Across LAN boundaries: the socket API over the relay overlay.
//!
//! A [`Node`] registers with the bootstrap server (`xsock boot`, the only
//! address anyone configures) under a unique name and gets a [`NodeId`].
//! [`Node::connect`] resolves a name: a node of the same LAN is reached
//! directly (reliable-link, or kernel TCP where the peer has no xsock);
//! a node of another LAN through a relay of this LAN, which opens a virtual
//! connection hop by hop to the destination's LAN. Either way the
//! application gets a plain [`crate::Stream`]. Every connection inside a
//! LAN starts with the mutual key handshake of [`xsock_overlay::auth`],
//! then one `Open` (who, to whom, which port) answered by `Accept` or
//! `Refuse`; after that the stream carries the application's bytes only.
//! Sessions that cross a LAN boundary (with the bootstrap server, between
//! relays) are Noise sessions ([`SecureTcp`]): encrypted, with the cluster
//! key as the pre-shared key; in a cluster with node certificates
//! ([`keys`], `xsock keys`), each node's own key, certified by the
//! cluster CA and checked by every peer.

mod boots;
mod io;
pub mod keys;
mod node;
mod secure;
mod session;

pub use boots::{Placement, Registration, is_refusal, register};
pub use io::{FrameIo, authenticate, fresh_nonce, recv_frame, send_msg};
pub use keys::{load_identity, unix_now};
pub use node::{Node, NodeListener, OverlayConfig, Served, load_key};
pub use secure::{SecureParts, SecureTcp, process_key, read_frames, session_clock};
pub use session::VcEnd;
pub use xsock_overlay::{
    NodeId, SiteId,
    auth::{Key, Peer},
    secure::Identity,
    wire::{Entry, Role},
};
