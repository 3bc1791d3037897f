//! Replays the committed fuzz corpora of the frame parser and the endpoint
//! state machines on stable Rust, so
//! every input the fuzzer kept is checked on each test run even where
//! cargo-fuzz (nightly) is not available.

use xsock_reliable_link::wire::{self, Packet};

#[test]
fn every_link_frame_corpus_input_parses_or_fails_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/link_frame");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/link_frame is committed") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok((repr, payload)) = wire::parse(&data) {
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut out[..]));
            out[wire::HEADER_LEN..wire::HEADER_LEN + payload.len()].copy_from_slice(payload);
            assert_eq!(wire::parse(&out).unwrap().0, repr);
        }
        n += 1;
    }
    assert!(n > 10, "the corpus has {n} inputs");
}

#[test]
fn every_link_endpoint_corpus_input_runs_to_the_end() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/link_endpoint");
    let (mut n, mut ops) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/link_endpoint is committed") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        ops += xsock_reliable_link::fuzzing::run_endpoint_ops(&data);
        n += 1;
    }
    assert!(n > 100, "the corpus has {n} inputs");
    assert!(ops > n, "the inputs decode to operations ({ops} for {n} inputs)");
}
