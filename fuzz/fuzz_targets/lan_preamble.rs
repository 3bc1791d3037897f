//! The LAN preamble (key handshake, then `Open` and `Accept`) that every
//! endpoint and relay runs before a stream carries a virtual connection,
//! fed what a hostile peer sends, in pieces of every size: no input panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xsock_overlay::preamble::hostile_bytes(data);
});
