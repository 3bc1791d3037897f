//! # xsock-pacer (sans-IO)
//!
//! Pacing for the TCP mode on long fat networks, after the Data Reservoir
//! results (parallel TCP over a 24,000 km, 350 ms path reached 85% of the
//! bottleneck only once each stream left at its own rate instead of in
//! line-rate bursts, and the fastest streams' windows were capped):
//!
//! - [`GapPacer`]: one flow's inter-packet gap. Departure times come from a
//!   [`Rate`], set by configuration (a reserved bandwidth) or derived from
//!   congestion state ([`WindowRate`]: gain × window / RTT in start-up,
//!   then the measured bottleneck rate with a probing gain cycle).
//! - [`plan_wait`]: how a driver waits for a departure without burning a
//!   core when gaps are long (sleep, then spin the last stretch).
//! - [`Shaper`]: aggregate shaping over the flows of one interface, shared
//!   fairly by bytes.
//! - [`CapCoordinator`]: cooperative window caps across the parallel
//!   streams of one transfer (cap the fast ones so the slow ones catch up).
//! - [`ModelCc`]: congestion control that needs no reserved rate, from a
//!   model of the path (bottleneck rate and propagation RTT, BBR-style),
//!   fed delivery-rate samples ([`DeliverySampler`]); tested against a model
//!   bottleneck on virtual time (`tests/model_sim.rs`).
//!
//! Everything here is a pure function of the `now` it is given: it answers
//! "when may the next frame leave" and never sleeps or reads a clock, so it
//! is tested on virtual time.

#![forbid(unsafe_code)]

mod caps;
mod gap;
pub mod model;
mod rate;
mod shaper;
mod window_rate;

pub use caps::{CapConfig, CapCoordinator, StreamId, StreamSample};
pub use gap::{GapPacer, MIN_BURST_BYTES, Wait, plan_wait};
pub use model::{DeliverySampler, ModelCc, ModelState, Phase, SendStamp};
pub use rate::{ParseRateError, Rate};
pub use shaper::{FlowId, Shaper};
pub use window_rate::{CYCLE_GAIN_PERCENT, GROWING_GAIN_PERCENT, STEADY_GAIN_PERCENT, WindowRate};
