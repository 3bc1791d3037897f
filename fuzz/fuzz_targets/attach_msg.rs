//! The engine's control-message parser: no input panics; whatever parses
//! re-emits to exactly the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xsock_attach::Msg;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::parse(data) {
        assert_eq!(m.emit(), data, "{m:?}");
    }
});
