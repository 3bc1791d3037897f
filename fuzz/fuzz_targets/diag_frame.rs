//! The diagnostic (rawping/rawbw) frame parser: no input panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xsock::diag::{DiagPacket, DiagRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = DiagPacket::new_checked(data) {
        let _ = DiagRepr::parse(&p);
        let _ = (p.seq(), p.value(), p.extra(), p.body().len());
    }
});
