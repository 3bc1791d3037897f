//! A NIC's offloads done in software on frames from a veth peer: no input
//! panics, finishing is idempotent, and cut pieces fit, are finished and
//! carry the payload ([`xsock_nic::offload::hostile_frame`]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xsock_nic::offload::hostile_frame(data));
