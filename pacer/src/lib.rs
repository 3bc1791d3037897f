//! # xsock-pacer (sans-IO)
//!
//! Will own pacing for the TCP mode on long fat networks: departure times
//! from a rate (an inter-packet gap instead of line-rate bursts), the rate
//! set by configuration (a reserved bandwidth) or derived from congestion
//! state (cwnd/RTT with a gain), aggregate shaping across the flows of one
//! interface, and cooperative window caps across the parallel streams of one
//! transfer (cap the fastest so the slow ones catch up), after the Data
//! Reservoir results. A pure function of time: it answers "when may the next
//! frame leave" and never sleeps.

#![forbid(unsafe_code)]
