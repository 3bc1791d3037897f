//! The Noise handshake and the record layer of the sessions that cross LAN
//! boundaries, fed what a hostile peer sends: no input panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xsock_overlay::secure::hostile_bytes(data));
