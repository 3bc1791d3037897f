//! # xsock: the runtime applications embed
//!
//! One socket-like API ([`Runtime`], [`Listener`], [`Stream`], [`Poller`])
//! that picks the path per destination:
//!
//! - reliable-link for an xsock peer on the segment, the TCP mode (smoltcp,
//!   paced) for any other TCP peer, or the kernel's TCP (the
//!   three as peer modules under one connection surface, in `src/path/`);
//! - over a poll loop on the interface ([`Datapath`], from the
//!   `xsock-datapath` crate, re-exported here), driven inline or on a
//!   thread;
//! - or, when a host engine (`xsock engine`) owns the interface, through
//!   the engine (`src/engine_client.rs`: every stream is then a descriptor the
//!   engine handed over);
//! - and, across LAN boundaries, through relays ([`overlay`]).
//!
//! [`diag`] holds the raw ping-pong and blast that measure the datapath
//! itself.

#![forbid(unsafe_code)]

mod connect;
mod engine_client;
mod framing;
mod listener;
mod notify;
pub mod overlay;
/// Entry points of the fuzz targets (`fuzz/`), replayed by the tests on the
/// committed corpus. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::path::tcp::hostile::tcp_segment;
}
mod path;
mod poller;
mod runtime;
mod stream;

pub use engine_client::EngineUse;
pub use framing::{DEFAULT_MAX_MESSAGE, Received};
pub use listener::{ListenOptions, Listener};
pub use path::tcp::{Congestion, Pace, TcpConfig, core::TcpStats};
pub use poller::{Event, Events, Interest, Poller, Token};
pub use runtime::{Driving, LinkStatus, MemoryStats, Runtime, RuntimeBuilder};
pub use stream::{ConnectOptions, Path, Stream, Transport};
pub use xsock_datapath::{
    ChannelEndpoint, ChannelHandler, Context, Counters, Datapath, DatapathBuilder, DatapathThread, Due, Error,
    FrameHandler, HandlerId, Launch, PollMode, QueueStats, RX_BUDGET, TimerQueue, Waker, diag, launch,
};
pub use xsock_nic as nic;
pub use xsock_reliable_link::Mode;
