//! The reliable-link state machines' input path (see
//! `xsock_reliable_link::fuzzing`: the harness lives there so the tests
//! replay this target's corpus on stable Rust).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xsock_reliable_link::fuzzing::run_endpoint_ops(data);
});
