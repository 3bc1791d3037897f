//! The LAN preamble, sans-IO: what a stream inside a LAN (an endpoint to a
//! relay, a relay to an endpoint it delivers to, an endpoint to another)
//! carries before it is a virtual connection's byte stream. Both sides
//! run the key handshake ([`Handshake`]); then the side that opens sends
//! `Open` and waits for `Accept` (or a refusal's reason), and the side
//! that answers waits for the `Open` and decides on it itself.
//!
//! The endpoints' library drives it with blocking reads, the relay as
//! one of many non-blocking state machines in its event loop; both give
//! it whole frames and send what [`Preamble::poll_transmit`] gives them.
//! [`ExactReader`] reads one frame and never a byte past it: what follows
//! the preamble belongs to the virtual connection.

use std::collections::VecDeque;

use crate::{
    NodeId,
    auth::{AuthError, Handshake, Peer},
    wire::{MAX_FRAME, Msg, ParseError},
};

/// Reads one length-prefixed frame at a time, exactly: ask
/// [`ExactReader::space`] what to read into, report with
/// [`ExactReader::filled`].
#[derive(Debug, Default)]
pub struct ExactReader {
    buf: Vec<u8>,
    got: usize,
}

impl ExactReader {
    /// Where the next bytes go: never longer than what the current frame
    /// still needs.
    pub fn space(&mut self) -> &mut [u8] {
        let need = self.need();
        self.buf.resize(need, 0);
        &mut self.buf[self.got..need]
    }

    fn need(&self) -> usize {
        if self.got < 4 {
            4
        } else {
            4 + u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
        }
    }

    /// `n` bytes were read into [`ExactReader::space`]: the frame (type +
    /// body) once it is complete; an error for a length no overlay peer
    /// sends (close the stream).
    pub fn filled(&mut self, n: usize) -> Result<Option<Vec<u8>>, ParseError> {
        self.got = (self.got + n).min(self.buf.len());
        if self.got < 4 {
            return Ok(None);
        }
        let len = self.need() - 4;
        if len == 0 {
            return Err(ParseError::BadValue("an empty frame"));
        }
        if len > MAX_FRAME {
            return Err(ParseError::TooLong(len));
        }
        if self.got < 4 + len {
            return Ok(None);
        }
        let frame = self.buf[4..4 + len].to_vec();
        *self = ExactReader::default();
        Ok(Some(frame))
    }
}

/// How a preamble ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The key handshake alone ([`Preamble::authenticate`]) held.
    Authenticated(Peer),
    /// The far end accepted our `Open`.
    Accepted(Peer),
    /// The far end asks for a virtual connection from `src` to `dst` on
    /// `port`; the caller answers `Accept` or `Refuse` itself.
    Asked {
        /// Who asks (proven).
        peer: Peer,
        /// The node the virtual connection comes from.
        src: NodeId,
        /// The node it is for.
        dst: NodeId,
        /// The port it is for.
        port: u16,
    },
    /// The far end attaches as node `node` ([`Preamble::attach`]): the
    /// caller answers `Accept { vc: 0 }` or `Refuse` itself, and the
    /// stream carries the node's virtual connections from then on.
    Attaching {
        /// Who asks (proven).
        peer: Peer,
        /// The node it attaches as.
        node: NodeId,
    },
}

/// Why a preamble failed. Send what [`Preamble::poll_transmit`] still
/// holds (a refusal the peer should see), then close the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreambleError {
    /// The key handshake failed.
    Auth(AuthError),
    /// The far end refused, with its reason.
    Refused(String),
    /// Something else than the step wanted arrived (the text names what
    /// was wanted).
    Unexpected(&'static str),
    /// Unparseable bytes.
    Parse(ParseError),
}

impl std::fmt::Display for PreambleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreambleError::Auth(e) => write!(f, "{e}"),
            PreambleError::Refused(r) => write!(f, "{r}"),
            PreambleError::Unexpected(what) => write!(f, "unexpected message after the handshake (wanted {what})"),
            PreambleError::Parse(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PreambleError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Authenticate,
    Open { src: NodeId, dst: NodeId, port: u16 },
    Attach { node: NodeId },
    Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Hello,
    Proof,
    /// The opener waits for `Accept`; the answerer for `Open`.
    Request,
    Over,
}

/// One side's preamble: [`Preamble::poll_transmit`] after creating it and
/// after each [`Preamble::handle_frame`], until that says it is done.
#[derive(Debug)]
pub struct Preamble {
    hs: Handshake,
    mode: Mode,
    stage: Stage,
    peer: Option<Peer>,
    tx: VecDeque<Vec<u8>>,
}

impl Preamble {
    fn new(hs: Handshake, mode: Mode) -> Preamble {
        let tx = VecDeque::from([hs.hello().to_vec()]);
        Preamble { hs, mode, stage: Stage::Hello, peer: None, tx }
    }

    /// The key handshake alone.
    pub fn authenticate(hs: Handshake) -> Preamble {
        Preamble::new(hs, Mode::Authenticate)
    }

    /// The opening side: after the handshake, asks for a virtual
    /// connection from `src` to `dst` on `port`.
    pub fn open(hs: Handshake, src: NodeId, dst: NodeId, port: u16) -> Preamble {
        Preamble::new(hs, Mode::Open { src, dst, port })
    }

    /// An endpoint attaching to its relay: after the handshake, asks that
    /// the stream be node `node`'s session.
    pub fn attach(hs: Handshake, node: NodeId) -> Preamble {
        Preamble::new(hs, Mode::Attach { node })
    }

    /// The answering side: after the handshake, waits for the `Open` (or
    /// an `Attach`).
    pub fn answer(hs: Handshake) -> Preamble {
        Preamble::new(hs, Mode::Answer)
    }

    /// The next frame to send (whole, length prefix included).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Who the peer proved to be, once it has.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    /// One frame from the peer (type + body): `Some` once the preamble is
    /// over. Nothing may follow an error or the end.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<Option<Done>, PreambleError> {
        let r = self.step(frame);
        if !matches!(r, Ok(None)) {
            self.stage = Stage::Over;
        }
        r
    }

    fn step(&mut self, frame: &[u8]) -> Result<Option<Done>, PreambleError> {
        match self.stage {
            Stage::Hello => {
                let proof = self.hs.on_hello(frame).map_err(PreambleError::Auth)?;
                self.tx.push_back(proof);
                self.stage = Stage::Proof;
                Ok(None)
            }
            Stage::Proof => {
                let peer = self.hs.on_proof(frame).map_err(|e| {
                    if e == AuthError::WrongKey {
                        // Both sides should say so, not time out.
                        self.tx.push_back(Msg::Refused { reason: "wrong cluster key" }.to_frame());
                    }
                    PreambleError::Auth(e)
                })?;
                self.peer = Some(peer.clone());
                self.stage = Stage::Request;
                match self.mode {
                    Mode::Authenticate => Ok(Some(Done::Authenticated(peer))),
                    Mode::Open { src, dst, port } => {
                        self.tx.push_back(Msg::Open { vc: 0, src, dst, port, ttl: 0, credit: 0, data: b"" }.to_frame());
                        Ok(None)
                    }
                    Mode::Attach { node } => {
                        self.tx.push_back(Msg::Attach { node }.to_frame());
                        Ok(None)
                    }
                    Mode::Answer => Ok(None),
                }
            }
            Stage::Request => {
                let msg = Msg::parse(frame).map_err(PreambleError::Parse)?;
                let peer = self.peer.clone().expect("proven before the request");
                match (self.mode, msg) {
                    (Mode::Open { .. } | Mode::Attach { .. }, Msg::Accept { .. }) => Ok(Some(Done::Accepted(peer))),
                    (Mode::Answer, Msg::Open { src, dst, port, .. }) => Ok(Some(Done::Asked { peer, src, dst, port })),
                    (Mode::Answer, Msg::Attach { node }) => Ok(Some(Done::Attaching { peer, node })),
                    (_, Msg::Refuse { reason, .. } | Msg::Refused { reason }) => {
                        Err(PreambleError::Refused(reason.to_owned()))
                    }
                    (Mode::Answer, _) => Err(PreambleError::Unexpected("Open or Attach")),
                    _ => Err(PreambleError::Unexpected("Accept or Refuse")),
                }
            }
            Stage::Over => Err(PreambleError::Unexpected("nothing: the preamble is over")),
        }
    }
}

/// Drives each kind of preamble with `data` from a hostile peer, cut into
/// frames by [`ExactReader`] in pieces of every size: nothing may panic
/// (the `lan_preamble` fuzz target, whose corpus the tests replay).
/// Returns how many of the four ran to their end (so a replay can tell
/// that its corpus still holds whole transcripts).
pub fn hostile_bytes(data: &[u8]) -> usize {
    let mut done = 0;
    let key = crate::auth::Key::from_file_contents(b"fuzz-cluster-key-0123456789").expect("long enough");
    let hs = || Handshake::new(key.clone(), crate::wire::Role::Relay, "fuzz", [7; 16]);
    let step = data.first().map_or(1, |b| usize::from(*b % 7) + 1);
    for mut p in [
        Preamble::authenticate(hs()),
        Preamble::open(hs(), NodeId(1), NodeId(2), 80),
        Preamble::attach(hs(), NodeId(1)),
        Preamble::answer(hs()),
    ] {
        let mut rd = ExactReader::default();
        let mut at = 0;
        while at < data.len() {
            let space = rd.space();
            let n = space.len().min(step).min(data.len() - at);
            space[..n].copy_from_slice(&data[at..at + n]);
            at += n;
            match rd.filled(n) {
                Ok(Some(frame)) => {
                    let r = p.handle_frame(&frame);
                    done += usize::from(matches!(r, Ok(Some(_))));
                    let over = !matches!(r, Ok(None));
                    while p.poll_transmit().is_some() {}
                    if over {
                        break;
                    }
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::Key, wire::Role};

    fn key(s: &str) -> Key {
        Key::from_file_contents(s.as_bytes()).unwrap()
    }

    /// Runs two preambles against each other, bytes delivered `chunk` at a
    /// time through exact readers; returns how each ended (`None`: still
    /// waiting when nothing was left to deliver).
    type End = Option<Result<Done, PreambleError>>;
    fn run(mut a: Preamble, mut b: Preamble, chunk: usize) -> (End, End) {
        let (mut to_a, mut to_b) = (Vec::<u8>::new(), Vec::<u8>::new());
        let (mut ra, mut rb) = (ExactReader::default(), ExactReader::default());
        let (mut ea, mut eb) = (None, None);
        for _ in 0..1000 {
            while let Some(f) = a.poll_transmit() {
                to_b.extend(f);
            }
            while let Some(f) = b.poll_transmit() {
                to_a.extend(f);
            }
            if ea.is_some() && eb.is_some() || to_a.is_empty() && to_b.is_empty() {
                break;
            }
            for (p, r, inbox, end) in [(&mut a, &mut ra, &mut to_a, &mut ea), (&mut b, &mut rb, &mut to_b, &mut eb)] {
                if end.is_some() || inbox.is_empty() {
                    continue;
                }
                let space = r.space();
                let n = space.len().min(chunk).min(inbox.len());
                space[..n].copy_from_slice(&inbox[..n]);
                inbox.drain(..n);
                if let Some(frame) = r.filled(n).unwrap() {
                    match p.handle_frame(&frame) {
                        Ok(None) => {}
                        Ok(Some(d)) => *end = Some(Ok(d)),
                        Err(e) => *end = Some(Err(e)),
                    }
                }
            }
        }
        (ea, eb)
    }

    fn hs(k: &str, role: Role, name: &str, n: u8) -> Handshake {
        Handshake::new(key(k), role, name, [n; 16])
    }

    /// The hellos cross, then the proofs (each side then holds its request).
    fn cross_hellos_and_proofs(a: &mut Preamble, b: &mut Preamble) {
        for _ in 0..2 {
            let (fa, fb) = (a.poll_transmit().unwrap(), b.poll_transmit().unwrap());
            assert_eq!(a.handle_frame(&fb[4..]), Ok(None));
            assert_eq!(b.handle_frame(&fa[4..]), Ok(None));
        }
    }

    #[test]
    fn an_open_is_asked_for_with_the_peers_proven_names_whatever_the_pieces() {
        for chunk in [1, 3, 64, 4096] {
            let k = "a-cluster-key-of-some-length";
            let a = Preamble::open(hs(k, Role::Endpoint, "ep", 1), NodeId(7), NodeId(9), 5000);
            let b = Preamble::answer(hs(k, Role::Relay, "relay", 2));
            let (ra, rb) = run(a, b, chunk);
            // The answerer decides; until it sends Accept the opener waits.
            assert_eq!(ra, None);
            let Some(Ok(Done::Asked { peer, src, dst, port })) = rb else { panic!("{rb:?}") };
            assert_eq!((peer.name.as_str(), src, dst, port), ("ep", NodeId(7), NodeId(9), 5000));
        }
    }

    #[test]
    fn an_attach_is_asked_for_with_the_peers_proven_name_and_ends_at_accept() {
        for chunk in [1, 5, 4096] {
            let k = "a-cluster-key-of-some-length";
            let a = Preamble::attach(hs(k, Role::Endpoint, "ep", 1), NodeId(7));
            let b = Preamble::answer(hs(k, Role::Relay, "relay", 2));
            let (ra, rb) = run(a, b, chunk);
            assert_eq!(ra, None);
            let Some(Ok(Done::Attaching { peer, node })) = rb else { panic!("{rb:?}") };
            assert_eq!((peer.name.as_str(), node), ("ep", NodeId(7)));
        }
        let k = "a-cluster-key-of-some-length";
        let mut a = Preamble::attach(hs(k, Role::Endpoint, "ep", 1), NodeId(7));
        let mut b = Preamble::answer(hs(k, Role::Relay, "relay", 2));
        cross_hellos_and_proofs(&mut a, &mut b);
        let attach = a.poll_transmit().unwrap();
        assert!(matches!(b.handle_frame(&attach[4..]), Ok(Some(Done::Attaching { node: NodeId(7), .. }))));
        let accept = Msg::Accept { vc: 0, credit: 0 }.to_frame();
        assert!(matches!(a.handle_frame(&accept[4..]), Ok(Some(Done::Accepted(p))) if p.name == "relay"));
    }

    #[test]
    fn accept_and_refuse_end_the_openers_preamble() {
        let k = "a-cluster-key-of-some-length";
        let mut a = Preamble::open(hs(k, Role::Endpoint, "ep", 1), NodeId(7), NodeId(9), 5000);
        let mut b = Preamble::answer(hs(k, Role::Endpoint, "srv", 2));
        // Hellos cross, then proofs.
        let (ha, hb) = (a.poll_transmit().unwrap(), b.poll_transmit().unwrap());
        assert_eq!(a.handle_frame(&hb[4..]), Ok(None));
        assert_eq!(b.handle_frame(&ha[4..]), Ok(None));
        let (pa, pb) = (a.poll_transmit().unwrap(), b.poll_transmit().unwrap());
        assert_eq!(a.handle_frame(&pb[4..]), Ok(None));
        assert_eq!(b.handle_frame(&pa[4..]), Ok(None));
        assert_eq!(a.peer().map(|p| p.name.as_str()), Some("srv"));
        let open = a.poll_transmit().unwrap();
        assert!(matches!(b.handle_frame(&open[4..]), Ok(Some(Done::Asked { port: 5000, .. }))));
        let accept = Msg::Accept { vc: 0, credit: 0 }.to_frame();
        assert!(matches!(a.handle_frame(&accept[4..]), Ok(Some(Done::Accepted(p))) if p.name == "srv"));
        // Over: nothing more is taken.
        assert!(a.handle_frame(&accept[4..]).is_err());

        let mut a = Preamble::open(hs(k, Role::Endpoint, "ep", 3), NodeId(7), NodeId(9), 5000);
        let mut b = Preamble::answer(hs(k, Role::Endpoint, "srv", 4));
        cross_hellos_and_proofs(&mut a, &mut b);
        let refuse = Msg::Refuse { vc: 0, reason: "nothing listens on port 5000" }.to_frame();
        assert_eq!(a.handle_frame(&refuse[4..]), Err(PreambleError::Refused("nothing listens on port 5000".into())));
    }

    #[test]
    fn a_wrong_key_is_named_on_both_sides_and_the_refusal_goes_out() {
        let a = Preamble::authenticate(hs("one-cluster-key-0123456", Role::Relay, "a", 1));
        let b = Preamble::answer(hs("another-cluster-key-6543", Role::Endpoint, "b", 2));
        let (ra, rb) = run(a, b, 5);
        assert_eq!(ra, Some(Err(PreambleError::Auth(AuthError::WrongKey))));
        assert_eq!(rb, Some(Err(PreambleError::Auth(AuthError::WrongKey))));
        // The side that found it has the refusal to send.
        let mut a = Preamble::authenticate(hs("one-cluster-key-0123456", Role::Relay, "a", 1));
        let mut b = Preamble::authenticate(hs("another-cluster-key-6543", Role::Relay, "b", 2));
        let (ha, hb) = (a.poll_transmit().unwrap(), b.poll_transmit().unwrap());
        a.handle_frame(&hb[4..]).unwrap();
        b.handle_frame(&ha[4..]).unwrap();
        let pb = b.poll_transmit().unwrap();
        a.poll_transmit().unwrap();
        assert!(a.handle_frame(&pb[4..]).is_err());
        let refusal = a.poll_transmit().expect("a refusal");
        assert_eq!(Msg::parse(&refusal[4..]), Ok(Msg::Refused { reason: "wrong cluster key" }));
    }

    #[test]
    fn the_reader_never_takes_a_byte_past_its_frame() {
        let k = "a-cluster-key-of-some-length";
        let p = Preamble::authenticate(hs(k, Role::Relay, "a", 1));
        let mut bytes = p.hs.hello().to_vec();
        bytes.extend_from_slice(b"virtual connection data");
        let mut r = ExactReader::default();
        let mut at = 0;
        let frame = loop {
            let space = r.space();
            let n = space.len().min(bytes.len() - at);
            space[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            if let Some(f) = r.filled(n).unwrap() {
                break f;
            }
        };
        assert_eq!(frame, p.hs.hello()[4..]);
        assert_eq!(&bytes[at..], b"virtual connection data");
    }

    #[test]
    fn lengths_no_peer_sends_are_errors() {
        let mut r = ExactReader::default();
        r.space().copy_from_slice(&0u32.to_be_bytes());
        assert!(r.filled(4).is_err());
        let mut r = ExactReader::default();
        r.space().copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(r.filled(4), Err(ParseError::TooLong(u32::MAX as usize)));
    }

    /// Writes the fuzz corpus's seed transcripts (`cargo test -p
    /// xsock-overlay --lib write_corpus_seeds -- --ignored`): what a peer
    /// with the harness's key sends to the harness's hello, and damaged
    /// variants.
    #[test]
    #[ignore]
    fn write_corpus_seeds() {
        let k = key("fuzz-cluster-key-0123456789");
        let ours = Handshake::new(k.clone(), Role::Relay, "fuzz", [7; 16]);
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/lan_preamble");
        std::fs::create_dir_all(dir).unwrap();
        let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
        for (name, kind) in [("opener", 0), ("answerer", 1), ("attacher", 2)] {
            let opener = kind != 1;
            let hs = Handshake::new(k.clone(), Role::Endpoint, "ep", [1; 16]);
            let mut peer = match kind {
                0 => Preamble::open(hs, NodeId(7), NodeId(9), 80),
                1 => Preamble::answer(hs),
                _ => Preamble::attach(hs, NodeId(7)),
            };
            let peer_hello = peer.poll_transmit().unwrap();
            let mut t = peer_hello.clone();
            peer.handle_frame(&ours.hello()[4..]).unwrap();
            t.extend(peer.poll_transmit().unwrap());
            let mut o = Handshake::new(k.clone(), Role::Relay, "fuzz", [7; 16]);
            let proof = o.on_hello(&peer_hello[4..]).unwrap();
            peer.handle_frame(&proof[4..]).unwrap();
            while let Some(f) = peer.poll_transmit() {
                t.extend(f);
            }
            if !opener {
                t.extend(Msg::Accept { vc: 0, credit: 0 }.to_frame());
            }
            let mut refused = t.clone();
            refused.extend(Msg::Refuse { vc: 0, reason: "no" }.to_frame());
            seeds.push((name, t));
            seeds.push((["opener-then-more", "accept-then-refuse", "attacher-then-more"][kind], refused));
        }
        let hello = Handshake::new(k.clone(), Role::Endpoint, "ep", [1; 16]).hello().to_vec();
        let mut wrong = hello.clone();
        wrong.extend(Msg::Proof { mac: [9; 32] }.to_frame());
        seeds.push(("wrong-proof", wrong));
        seeds.push(("refused-at-hello", Msg::Refused { reason: "wrong cluster key" }.to_frame()));
        seeds.push(("empty-frame", vec![0, 0, 0, 0, 1]));
        seeds.push(("huge-frame", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
        seeds.push(("truncated-hello", hello[..hello.len() / 2].to_vec()));
        for (name, bytes) in seeds {
            std::fs::write(format!("{dir}/{name}"), bytes).unwrap();
        }
    }

    #[test]
    fn hostile_bytes_survive() {
        assert_eq!(hostile_bytes(&[]), 0);
        assert_eq!(hostile_bytes(&[0, 0, 0, 1, 0xff]), 0);
        assert_eq!(hostile_bytes(&[3; 300]), 0);
    }
}
