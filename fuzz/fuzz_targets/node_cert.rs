//! Node certificates and revocation lists as a hostile peer or a damaged
//! file gives them: parsed, re-encoded, checked; no input panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xsock_overlay::cert::hostile_bytes(data));
