//! # xsock-datapath: the poll loop every xsock path runs on
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
//! [`diag`] holds the raw ping-pong and blast that measure the loop itself.
//! The paths above it (reliable-link, the smoltcp TCP mode, relays) are
//! frame handlers on this loop; the socket API that wires them together is
//! the `xsock` crate. [`Error`] is the one error type of both.

#![forbid(unsafe_code)]

mod channel;
mod counters;
pub mod diag;
mod error;
mod handler;
pub mod launch;
mod poll;
mod thread;
mod timer;

pub use channel::{ChannelEndpoint, ChannelHandler};
pub use counters::{Counters, QueueStats};
pub use error::Error;
pub use handler::{Context, FrameHandler, HandlerId};
pub use launch::Launch;
pub use poll::{Datapath, DatapathBuilder, PollMode, RX_BUDGET, Waker};
pub use thread::DatapathThread;
pub use timer::{Due, TimerQueue};
pub use xsock_nic as nic;
