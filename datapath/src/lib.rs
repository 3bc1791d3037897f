//! # xsock: the runtime applications embed
//!
//! A poll-mode datapath over one or more NIC queues (AF_XDP, with AF_PACKET
//! and in-memory backends from `xsock-nic`):
//!
//! - [`Datapath::poll`] receives in batches on every queue and hands each
//!   frame to the [`FrameHandler`] registered for its EtherType, runs due
//!   timers ([`Context::set_timer`]) and flushes transmissions;
//! - per-queue [`Counters`] (frames, bytes, unclaimed frames, ring-full
//!   events, kernel drops) are readable from any thread;
//! - it is driven **inline** (`poll()` from the application's own thread, the
//!   lowest-latency HPC way) or on a **dedicated thread**
//!   ([`Datapath::spawn`]) that application threads reach through closures
//!   and crossbeam channels ([`ChannelHandler`]);
//! - idle behaviour is a [`PollMode`]: busy-poll, adaptive (spin, then sleep
//!   in poll(2) on the socket fds), or sleep.
//!
//! [`diag`] holds the raw ping-pong and blast that measure the datapath
//! itself. Later layers (reliable-link, the smoltcp TCP mode, relays and the
//! socket API) are handlers on this loop.

#![forbid(unsafe_code)]

mod channel;
mod client;
mod connect;
mod counters;
mod datapath;
pub mod diag;
mod error;
mod framing;
mod handler;
pub mod launch;
mod link;
mod listener;
mod notify;
pub mod overlay;
mod poller;
mod runtime;
mod sock;
mod stream;
mod tcp;
mod thread;
mod timer;

pub use channel::{ChannelEndpoint, ChannelHandler};
pub use client::EngineUse;
pub use counters::{Counters, QueueStats};
pub use datapath::{Datapath, DatapathBuilder, PollMode, RX_BUDGET, Waker};
pub use error::Error;
pub use framing::{DEFAULT_MAX_MESSAGE, Received};
pub use handler::{Context, FrameHandler, HandlerId};
pub use launch::Launch;
pub use listener::{ListenOptions, Listener};
pub use poller::{Event, Events, Interest, Poller, Token};
pub use runtime::{Driving, LinkStatus, MemoryStats, Runtime, RuntimeBuilder};
pub use stream::{ConnectOptions, Path, Stream, Transport};
pub use tcp::{Congestion, Pace, TcpConfig, core::TcpStats};
pub use thread::DatapathThread;
pub use timer::{Due, TimerQueue};
pub use xsock_nic as nic;
pub use xsock_reliable_link::Mode;
