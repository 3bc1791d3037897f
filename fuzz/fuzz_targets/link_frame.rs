//! The reliable-link frame parser: no input panics, and whatever parses
//! re-emits to a frame that parses to the same representation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xsock_reliable_link::wire::{self, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok((repr, payload)) = wire::parse(data) {
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        out[wire::HEADER_LEN..wire::HEADER_LEN + payload.len()].copy_from_slice(payload);
        let (again, again_payload) = wire::parse(&out).expect("an emitted frame parses");
        assert_eq!(again, repr);
        assert_eq!(again_payload, payload);
    }
});
