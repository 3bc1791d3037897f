//! Replays the committed fuzz corpora of the overlay frame parser, the
//! encrypted sessions and the LAN preamble on stable Rust, so every test
//! run checks the inputs the fuzzer found.

use xsock_overlay::wire::Msg;

#[test]
fn every_overlay_frame_corpus_input_parses_or_fails_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/overlay_frame");
    let mut n = 0;
    let mut parsed = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/overlay_frame is committed") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        xsock_overlay::attach::hostile_bytes(&bytes);
        xsock_overlay::wire::reader_bytes(&bytes);
        if let Ok(m) = Msg::parse(&bytes) {
            let f = m.to_frame();
            assert_eq!(Msg::parse(&f[4..]).unwrap(), m);
            parsed += 1;
        }
        n += 1;
    }
    assert!(n > 10, "the corpus has {n} inputs");
    assert!(parsed > 5, "only {parsed} corpus inputs parse: the corpus lost its valid frames");
}

/// Runs `each` on every input of the committed corpus `target`; how many.
fn replay(target: &str, mut each: impl FnMut(&[u8])) -> usize {
    let dir = format!("{}/../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir} is committed: {e}")) {
        each(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    n
}

#[test]
fn every_secure_session_corpus_input_is_survived() {
    let n = replay("secure_session", xsock_overlay::secure::hostile_bytes);
    assert!(n > 10, "the corpus has {n} inputs");
}

#[test]
fn every_lan_preamble_corpus_input_is_survived_and_whole_transcripts_finish() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/lan_preamble");
    let (mut n, mut finished) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/lan_preamble is committed") {
        finished += xsock_overlay::preamble::hostile_bytes(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 9, "the corpus has {n} inputs");
    // The seed transcripts (an opener's, an answerer's) run a preamble to
    // its end: a corpus without them no longer reaches past the handshake.
    assert!(finished >= 4, "only {finished} preambles finished on the corpus");
}

#[test]
fn every_node_cert_corpus_input_is_survived() {
    let n = replay("node_cert", xsock_overlay::cert::hostile_bytes);
    assert!(n > 10, "the corpus has {n} inputs");
}
