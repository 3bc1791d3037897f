//! # xsock-reliable-link (sans-IO)
//!
//! Will own the protocol xsock speaks between hosts on one trusted L2
//! segment: the versioned wire format on the Local Experimental EtherType
//! (zero-copy views and parsed representations), connection set-up and
//! tear-down with connection ids that reject stale frames, credit-based flow
//! control so a sender never overruns the receiver, sequence numbers that
//! detect a gap, and the rare-path recovery (NAK, go-back-N from the unacked
//! credit window, a timeout as last resort). No software checksum and no
//! per-packet ACK or retransmit timer on the fast path: the NIC checks the
//! CRC. Like every protocol crate here it does no I/O and reads no clock: it
//! takes frames and `now`, and returns frames to send and the next deadline.

#![forbid(unsafe_code)]
