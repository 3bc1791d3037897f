//! The TCP mode's segment reader and SACK scoreboard on hostile bytes: no
//! input panics, the fields agree with smoltcp's full parse, and a script
//! of hostile ACKs never makes the scoreboard send what was not sent
//! ([`xsock::fuzzing::tcp_segment`]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xsock::fuzzing::tcp_segment(data));
