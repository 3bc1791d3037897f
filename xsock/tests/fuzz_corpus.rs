//! Replays the committed corpus of the `tcp_segment` fuzz target on stable
//! Rust, so every test run checks the inputs the fuzzer found.

#[test]
fn every_tcp_segment_corpus_input_is_survived() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/tcp_segment");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/tcp_segment is committed") {
        xsock::fuzzing::tcp_segment(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 10, "the corpus has {n} inputs");
}
