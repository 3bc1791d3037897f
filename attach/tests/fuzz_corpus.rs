//! Replays the committed fuzz corpus of the control-message parser on
//! stable (the fuzz run itself needs nightly): every input parses or fails
//! cleanly, and what parses re-emits to the same bytes.

use xsock_attach::Msg;

#[test]
fn every_attach_msg_corpus_input_parses_or_fails_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/attach_msg");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/attach_msg is committed") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(m) = Msg::parse(&data) {
            assert_eq!(m.emit(), data, "{m:?}");
        }
        n += 1;
    }
    assert!(n >= 13, "the corpus has {n} inputs");
}
