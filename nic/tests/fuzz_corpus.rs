//! Replays the committed corpus of the `offload_frame` fuzz target on
//! stable Rust, so every test run checks the inputs the fuzzer found.

#[test]
fn every_offload_corpus_input_is_survived() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/offload_frame");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/offload_frame is committed") {
        xsock_nic::offload::hostile_frame(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 10, "the corpus has {n} inputs");
}
