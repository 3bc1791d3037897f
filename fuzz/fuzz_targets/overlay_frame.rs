//! The overlay frame parser and the cores behind it (a relay link, an
//! endpoint's session at both ends): no input panics any of them;
//! whatever parses re-emits to a frame that parses the same, and a frame
//! reader cuts the same frames however the bytes arrive.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use xsock_overlay::{
    NodeId,
    relay::{RelayConfig, RelayCore},
    route::ShortestPath,
    wire::{FrameReader, Msg},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::parse(data) {
        let f = m.to_frame();
        assert_eq!(Msg::parse(&f[4..]).expect("an emitted frame parses"), m);
    }
    // The same bytes as a stream on a relay link.
    let mut core = RelayCore::new(RelayConfig::new(NodeId(1), 1), Box::new(ShortestPath), Duration::ZERO);
    core.handle_link_up(Duration::ZERO, 7, NodeId(2), true);
    let mut rd = FrameReader::default();
    rd.push(data);
    while let Ok(Some(f)) = rd.next_frame() {
        if core.handle_link_frame(Duration::from_millis(1), 7, f).is_err() {
            break;
        }
    }
    while core.poll_transmit().is_some() {}
    while core.poll_action().is_some() {}
    core.handle_timeout(Duration::from_secs(10));
    // And as an endpoint's session with its relay, both ends.
    xsock_overlay::attach::hostile_bytes(data);
    // Received straight into a frame reader.
    xsock_overlay::wire::reader_bytes(data);
});
