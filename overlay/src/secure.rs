//! Encrypted sessions for everything that crosses a LAN boundary (relay
//! links, and every node's session with the bootstrap server): a Noise
//! handshake, `Noise_XXpsk0_25519_AESGCM_BLAKE2s`, then AES-256-GCM records
//! (Noise's cipher functions, through `ring`: 5.4 GB/s on this project's
//! Xeon against 0.9 GB/s for the pure-Rust ciphers, and every byte a relay
//! forwards is sealed or opened once per link), rekeyed on a byte and time
//! budget. Sans-IO like the rest of the crate: bytes in, bytes out, time as
//! an argument.
//!
//! - **psk0**: the cluster key (hashed to 32 bytes) is mixed in before the
//!   first message, so a node without it cannot even read the first
//!   message, and learns nothing (not the names, not the roles). A wrong
//!   key fails the responder at once; it answers with a plaintext refusal
//!   record so that the initiator can say "another cluster key" instead of
//!   timing out (an attacker could forge that refusal, as it could reset
//!   the TCP connection: no more).
//! - **XX**: both sides send a static X25519 key, encrypted; each learns
//!   the other's ([`Established::remote_static`]), the identity that node
//!   certificates will sign.
//! - The payloads of the handshake are the overlay's own `Hello` messages
//!   (version, role, name), so the peer is known when the handshake ends.
//!
//! Wire format:
//!
//! ```text
//! handshake:  "XSN1" (initiator, once) then records  kind:u8 len:u16 bytes
//!             kind 'N' = a Noise handshake message, 'R' = refusal (UTF-8)
//! transport:  records  len:u16 ciphertext   (at most 65,535 bytes)
//!             plaintext = type:u8 data      type 0 = data, 1 = rekey
//! ```
//!
//! A record's nonce is its number in its direction (never sent). A rekey
//! record tells the reader that the next record uses the next key (Noise's
//! REKEY: the old key encrypts 32 zero bytes at nonce 2^64-1).
//!
//! Randomness: the caller gives the static key; the handshake's ephemeral
//! keys come from the operating system through `snow` (the one place this
//! crate draws randomness itself).

use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use crate::{
    auth::{AuthError, Key, Peer},
    cert::{Cert, Trust},
    wire::{Msg, Role, VERSION},
};

/// The Noise protocol name.
pub const PATTERN: &str = "Noise_XXpsk0_25519_AESGCM_BLAKE2s";
/// What an initiator sends first (a peer of another protocol is told so).
pub const MAGIC: &[u8; 4] = b"XSN1";
/// The longest record on the wire (its length is 16 bits).
pub const MAX_RECORD: usize = u16::MAX as usize;
const TAG: usize = 16;
/// The most data one transport record carries.
pub const MAX_DATA: usize = MAX_RECORD - TAG - 1;
/// Rekey after this many bytes sealed with one key...
pub const REKEY_BYTES: u64 = 1 << 30;
/// ...or this long with one key, whichever comes first.
pub const REKEY_AFTER: Duration = Duration::from_secs(600);

const KIND_NOISE: u8 = b'N';
const KIND_REFUSE: u8 = b'R';
const DATA: u8 = 0;
const REKEY: u8 = 1;
/// The responder's verdict on the initiator's certificate, when it refuses
/// it (the handshake is over by then, so the refusal is sealed).
const REFUSE: u8 = 2;

/// A node's static X25519 key pair.
#[derive(Clone)]
pub struct StaticKey {
    private: Vec<u8>,
    public: Vec<u8>,
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKey({})", fingerprint(&self.public))
    }
}

impl StaticKey {
    /// A fresh key pair (from the operating system's randomness).
    pub fn generate() -> Result<StaticKey, AuthError> {
        let kp = builder().generate_keypair().map_err(noise)?;
        Ok(StaticKey { private: kp.private, public: kp.public })
    }

    /// The key pair of a saved private key.
    pub fn from_private(private: &[u8; 32]) -> StaticKey {
        use snow::resolvers::CryptoResolver;
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("the default resolver has X25519");
        dh.set(private);
        StaticKey { private: private.to_vec(), public: dh.pubkey().to_vec() }
    }

    /// The public half.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The private half (to save it; keep it secret).
    pub fn private(&self) -> &[u8] {
        &self.private
    }
}

/// Who a node is at the Noise handshake: its static key, the certificate
/// the cluster CA gave that key (if the cluster uses certificates), and
/// the CA it checks peers against (if it does: then a peer without a valid
/// certificate is refused).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The static key.
    pub key: StaticKey,
    /// Its certificate.
    pub cert: Option<Cert>,
    /// What peers' certificates are checked against.
    pub trust: Option<Trust>,
}

impl Identity {
    /// A node without certificates: `key`, and no peer is checked beyond
    /// the cluster key.
    pub fn plain(key: StaticKey) -> Identity {
        Identity { key, cert: None, trust: None }
    }
}

/// A short printable name of a public key (the first 8 bytes of its
/// SHA-256, hex).
pub fn fingerprint(public: &[u8]) -> String {
    Sha256::digest(public)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn builder() -> snow::Builder<'static> {
    snow::Builder::new(PATTERN.parse().expect("a valid Noise pattern"))
}

fn noise(e: snow::Error) -> AuthError {
    AuthError::Noise(e.to_string())
}

/// The cluster key as Noise's 32-byte pre-shared key.
fn psk(key: &Key) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"xsock-noise-psk-v1");
    h.update(key.bytes());
    h.finalize().into()
}

/// One side of the handshake. Write what [`SecureHandshake::poll_transmit`]
/// gives, feed what arrives to [`SecureHandshake::handle_bytes`], until
/// [`SecureHandshake::is_finished`]; then [`SecureHandshake::finish`]. On
/// an error, still write what `poll_transmit` gives (a refusal) before
/// closing.
pub struct SecureHandshake {
    hs: snow::HandshakeState,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    hello: Vec<u8>,
    magic_seen: bool,
    peer: Option<Peer>,
    failed: bool,
    /// Our certificate's bytes (empty without one).
    cert: Vec<u8>,
    trust: Option<Trust>,
    /// Unix seconds, for the peer certificate's validity.
    unix_now: u64,
    /// The peer's certificate, once checked.
    peer_cert: Option<Cert>,
}

impl std::fmt::Debug for SecureHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureHandshake").field("peer", &self.peer).field("finished", &self.is_finished()).finish()
    }
}

/// A finished handshake: who the peer is and the two directions' ciphers.
pub struct Established {
    /// Its role and name (from its `Hello`).
    pub peer: Peer,
    /// Its static public key.
    pub remote_static: Vec<u8>,
    /// Seals what we send.
    pub sealer: Sealer,
    /// Opens what we receive.
    pub opener: Opener,
    /// Bytes that arrived after the handshake: the first transport records
    /// (feed them to the opener).
    pub leftover: Vec<u8>,
    /// Its certificate, when we check certificates.
    pub cert: Option<Cert>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .field("remote_static", &fingerprint(&self.remote_static))
            .finish()
    }
}

impl SecureHandshake {
    /// Starts as the side that connected, as `role` named `name`, at
    /// `unix_now` (seconds, for the peer certificate's validity).
    pub fn initiator(
        key: &Key,
        me: &Identity,
        role: Role,
        name: &str,
        unix_now: u64,
    ) -> Result<SecureHandshake, AuthError> {
        let mut h = Self::new(Self::state(key, me, true)?, me, role, name, unix_now);
        h.out.extend_from_slice(MAGIC);
        h.magic_seen = true; // only the initiator sends it
        let hello = std::mem::take(&mut h.hello);
        h.write(&hello)?;
        h.hello = hello;
        Ok(h)
    }

    /// Starts as the side that accepted.
    pub fn responder(
        key: &Key,
        me: &Identity,
        role: Role,
        name: &str,
        unix_now: u64,
    ) -> Result<SecureHandshake, AuthError> {
        Ok(Self::new(Self::state(key, me, false)?, me, role, name, unix_now))
    }

    /// Noise's state for one side: our static key, the cluster key as psk.
    fn state(key: &Key, me: &Identity, initiator: bool) -> Result<snow::HandshakeState, AuthError> {
        let psk = psk(key);
        let b = builder().local_private_key(&me.key.private).map_err(noise)?.psk(0, &psk).map_err(noise)?;
        if initiator { b.build_initiator() } else { b.build_responder() }.map_err(noise)
    }

    fn new(hs: snow::HandshakeState, me: &Identity, role: Role, name: &str, unix_now: u64) -> SecureHandshake {
        let hello = Msg::Hello { version: VERSION, role, name, nonce: [0; 16] }.to_frame()[4..].to_vec();
        SecureHandshake {
            hs,
            out: Vec::new(),
            inbuf: Vec::new(),
            hello,
            magic_seen: false,
            peer: None,
            failed: false,
            cert: me.cert.as_ref().map(Cert::to_bytes).unwrap_or_default(),
            trust: me.trust.clone(),
            unix_now,
            peer_cert: None,
        }
    }

    /// Bytes to send now, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// Whether both sides are through (then [`SecureHandshake::finish`]).
    pub fn is_finished(&self) -> bool {
        !self.failed && self.hs.is_handshake_finished()
    }

    /// The peer, once its first message is read.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    fn write(&mut self, payload: &[u8]) -> Result<(), AuthError> {
        let mut msg = vec![0u8; MAX_RECORD];
        let n = self.hs.write_message(payload, &mut msg).map_err(noise)?;
        self.out.push(KIND_NOISE);
        self.out.extend_from_slice(&(n as u16).to_be_bytes());
        self.out.extend_from_slice(&msg[..n]);
        Ok(())
    }

    fn refuse(&mut self, reason: &str) {
        let r = &reason.as_bytes()[..reason.len().min(512)];
        self.out.push(KIND_REFUSE);
        self.out.extend_from_slice(&(r.len() as u16).to_be_bytes());
        self.out.extend_from_slice(r);
    }

    /// Bytes from the peer. Consumes records while the handshake needs
    /// them; what follows it stays for [`SecureHandshake::finish`].
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<(), AuthError> {
        if self.failed {
            return Err(AuthError::Unexpected("nothing after a failed handshake"));
        }
        self.inbuf.extend_from_slice(bytes);
        let r = self.consume();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn consume(&mut self) -> Result<(), AuthError> {
        if !self.magic_seen {
            let n = self.inbuf.len().min(MAGIC.len());
            if self.inbuf[..n] != MAGIC[..n] {
                self.refuse("this is an xsock overlay node of a newer protocol: upgrade the peer");
                return Err(AuthError::OldProtocol);
            }
            if n < MAGIC.len() {
                return Ok(());
            }
            self.inbuf.drain(..MAGIC.len());
            self.magic_seen = true;
        }
        while !self.hs.is_handshake_finished() && !self.hs.is_my_turn() {
            let Some((kind, body)) = record(&self.inbuf) else { return Ok(()) };
            let (kind, body) = (kind, body.to_vec());
            self.inbuf.drain(..3 + body.len());
            if kind == KIND_REFUSE {
                return Err(AuthError::Refused(String::from_utf8_lossy(&body).into_owned()));
            }
            if kind != KIND_NOISE {
                return Err(AuthError::Unexpected("a Noise handshake record"));
            }
            let first = self.peer.is_none();
            let mut payload = vec![0u8; MAX_RECORD];
            let n = match self.hs.read_message(&body, &mut payload) {
                Ok(n) => n,
                Err(snow::Error::Decrypt) if first => {
                    // The first message we read is sealed with the psk:
                    // the peer has another cluster key.
                    self.refuse("wrong cluster key: the peer uses another cluster key (check --key-file on both)");
                    return Err(AuthError::WrongKey);
                }
                Err(e) => return Err(noise(e)),
            };
            let payload = &payload[..n];
            // The responder's message: its Hello (length first), then its
            // certificate; the initiator's last: its certificate.
            let (hello, cert) = match (first, self.hs.is_initiator()) {
                (true, false) => (payload, &[][..]),
                (true, true) => {
                    let len = payload
                        .get(..4)
                        .map_or(usize::MAX, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
                    let hello = payload.get(4..4usize.saturating_add(len));
                    let hello = hello.ok_or(AuthError::Parse(crate::wire::ParseError::Truncated))?;
                    (hello, &payload[4 + len..])
                }
                (false, _) => (&[][..], payload),
            };
            if first {
                self.peer = Some(match Msg::parse(hello).map_err(AuthError::Parse)? {
                    Msg::Hello { version, .. } if version != VERSION => {
                        self.refuse(&format!("overlay protocol version {VERSION} here: upgrade the older one"));
                        return Err(AuthError::Version(version));
                    }
                    Msg::Hello { role, name, .. } => Peer { role, name: name.to_owned() },
                    _ => return Err(AuthError::Unexpected("Hello")),
                });
            }
            if self.hs.get_remote_static().is_some() && self.peer_cert.is_none() {
                self.check_cert(cert.to_vec())?;
            }
            if !self.hs.is_handshake_finished() && self.hs.is_my_turn() {
                let payload = if self.hs.is_initiator() {
                    self.cert.clone()
                } else {
                    let mut p = (self.hello.len() as u32).to_be_bytes().to_vec();
                    p.extend_from_slice(&self.hello);
                    p.extend_from_slice(&self.cert);
                    p
                };
                self.write(&payload)?;
            }
        }
        Ok(())
    }

    /// Checks the certificate the peer sent with its static key (if we
    /// check certificates); on a refusal, queues the reason for the peer:
    /// in the clear while the handshake runs, sealed once it is over.
    fn check_cert(&mut self, cert: Vec<u8>) -> Result<(), AuthError> {
        let Some(trust) = &self.trust else { return Ok(()) };
        let peer = self.peer.as_ref().ok_or(AuthError::Unexpected("Hello"))?;
        let key = self.hs.get_remote_static().unwrap_or_default();
        match trust.check(&cert, key, peer.role, &peer.name, self.unix_now) {
            Ok(c) => {
                self.peer_cert = Some(c);
                Ok(())
            }
            Err(e) => {
                let reason = format!("your certificate: {e}");
                if self.hs.is_handshake_finished() {
                    let (k1, k2) = self.hs.dangerously_get_raw_split();
                    let send = if self.hs.is_initiator() { k1 } else { k2 };
                    let mut s = Sealer { dir: Direction::new(send), sealed: 0, since: None, rekeys: 0 };
                    s.record(REFUSE, &reason.as_bytes()[..reason.len().min(512)], &mut self.out);
                } else {
                    self.refuse(&reason);
                }
                Err(AuthError::Cert(e))
            }
        }
    }

    /// The session, once [`SecureHandshake::is_finished`].
    pub fn finish(mut self) -> Result<Established, AuthError> {
        if !self.is_finished() {
            return Err(AuthError::Unexpected("the rest of the handshake"));
        }
        let peer = self.peer.take().ok_or(AuthError::Unexpected("Hello"))?;
        let remote_static = self.hs.get_remote_static().map(<[u8]>::to_vec).unwrap_or_default();
        let initiator = self.hs.is_initiator();
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        Ok(Established {
            peer,
            remote_static,
            sealer: Sealer { dir: Direction::new(send), sealed: 0, since: None, rekeys: 0 },
            opener: Opener { dir: Direction::new(recv), buf: Vec::new() },
            leftover: self.inbuf,
            cert: self.peer_cert,
        })
    }
}

/// `(kind, body)` of the handshake record at the start of `b`, if whole.
fn record(b: &[u8]) -> Option<(u8, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*b.get(1)?, *b.get(2)?]));
    Some((b[0], b.get(3..3 + len)?))
}

/// One direction's cipher and nonce.
struct Direction {
    key: LessSafeKey,
    nonce: u64,
}

impl Direction {
    fn new(key: [u8; 32]) -> Direction {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte AES-256 key"));
        Direction { key, nonce: 0 }
    }

    /// Noise's AESGCM nonce: 32 zero bits, then the counter big-endian.
    fn nonce(n: u64) -> Nonce {
        let mut b = [0u8; 12];
        b[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(b)
    }

    /// Noise's REKEY: the key that encrypts 32 zero bytes at the last
    /// nonce gives the next key.
    fn rekey(&mut self) {
        let mut next = [0u8; 32];
        let tag = self.key.seal_in_place_separate_tag(Self::nonce(u64::MAX), Aad::empty(), &mut next);
        debug_assert!(tag.is_ok(), "AES-GCM encrypts any 32 bytes");
        self.key = Direction::new(next).key;
    }
}

/// Seals what one side sends.
pub struct Sealer {
    dir: Direction,
    sealed: u64,
    since: Option<Duration>,
    rekeys: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("records", &self.dir.nonce).field("rekeys", &self.rekeys).finish()
    }
}

impl Sealer {
    /// Appends `plain` to `out` as records (split at [`MAX_DATA`]),
    /// followed by a rekey once the budget of the current key is spent.
    pub fn seal(&mut self, now: Duration, plain: &[u8], out: &mut Vec<u8>) {
        let since = *self.since.get_or_insert(now);
        for chunk in plain.chunks(MAX_DATA) {
            self.record(DATA, chunk, out);
        }
        self.sealed += plain.len() as u64;
        if self.sealed >= REKEY_BYTES || now.saturating_sub(since) >= REKEY_AFTER {
            self.record(REKEY, &[], out);
            self.dir.rekey();
            self.sealed = 0;
            self.since = Some(now);
            self.rekeys += 1;
        }
    }

    fn record(&mut self, ty: u8, data: &[u8], out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&((1 + data.len() + TAG) as u16).to_be_bytes());
        out.push(ty);
        out.extend_from_slice(data);
        let n = self.dir.nonce;
        // Records are numbered in 64 bits: 2^64 of them is out of reach.
        self.dir.nonce += 1;
        let tag = self.dir.key.seal_in_place_separate_tag(Direction::nonce(n), Aad::empty(), &mut out[at + 2..]);
        out.extend_from_slice(tag.expect("a record under 64 KiB always encrypts").as_ref());
    }

    /// Keys used up so far.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }
}

/// Why received bytes cannot be opened (close the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// A record does not authenticate: changed, replayed, reordered, or
    /// not from the peer.
    Forged,
    /// A record of a type this side does not know.
    UnknownType(u8),
    /// A record too short to hold its type and tag.
    Short(usize),
    /// The peer refused our certificate, with its reason.
    Refused(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Forged => {
                write!(f, "an encrypted record failed authentication (changed on the way, or not from the peer)")
            }
            OpenError::UnknownType(t) => write!(f, "an encrypted record of unknown type {t}"),
            OpenError::Short(n) => write!(f, "an encrypted record of {n} bytes is too short"),
            OpenError::Refused(r) => write!(f, "the peer refused us: {r}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens what one side receives.
pub struct Opener {
    dir: Direction,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("records", &self.dir.nonce).field("buffered", &self.buf.len()).finish()
    }
}

impl Opener {
    /// Feeds received bytes; appends the data of every whole record to
    /// `plain` (a partial record waits for the rest).
    pub fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>) -> Result<(), OpenError> {
        self.buf.extend_from_slice(wire);
        let mut at = 0;
        let r = loop {
            let Some(len) = self.buf.get(at..at + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
                break Ok(());
            };
            if len < 1 + TAG {
                break Err(OpenError::Short(len));
            }
            if self.buf.len() < at + 2 + len {
                break Ok(());
            }
            let rec = &mut self.buf[at + 2..at + 2 + len];
            let n = self.dir.nonce;
            let Ok(body) = self.dir.key.open_in_place(Direction::nonce(n), Aad::empty(), rec) else {
                break Err(OpenError::Forged);
            };
            self.dir.nonce += 1;
            match body[0] {
                DATA => plain.extend_from_slice(&body[1..]),
                REKEY => self.dir.rekey(),
                REFUSE => break Err(OpenError::Refused(String::from_utf8_lossy(&body[1..]).into_owned())),
                t => break Err(OpenError::UnknownType(t)),
            }
            at += 2 + len;
        };
        self.buf.drain(..at);
        r
    }

    /// Bytes of a record not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// What a hostile peer can do with `data`, run against every surface of
/// this module: as the bytes of a handshake to a responder and to an
/// initiator, and as the records of a session (some sealed honestly
/// first, the rest as they come). Nothing may panic. The fuzz target
/// `secure_session` runs this; `tests/fuzz_corpus.rs` replays its corpus.
pub fn hostile_bytes(data: &[u8]) {
    use std::sync::OnceLock;
    static ME: OnceLock<(Key, Identity)> = OnceLock::new();
    let (key, plain) = ME.get_or_init(|| {
        let key = Key::from_file_contents(b"fuzzing-cluster-key-0123456789").expect("a long key");
        (key, Identity::plain(StaticKey::generate().expect("a key pair")))
    });
    // The same, checking certificates against a CA.
    let checking = Identity { trust: Some(Trust::new(crate::cert::CaPublic([7; 32]))), ..plain.clone() };
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for (initiator, me) in [(false, plain), (true, plain), (false, &checking), (true, &checking)] {
        let hs = if initiator {
            SecureHandshake::initiator(key, me, Role::Relay, "fuzz", 0)
        } else {
            SecureHandshake::responder(key, me, Role::Boot, "boot", 0)
        };
        let Ok(mut hs) = hs else { return };
        let _ = hs.poll_transmit();
        let _ = hs.handle_bytes(&data[..cut]).and_then(|()| hs.handle_bytes(&data[cut..]));
        let _ = hs.poll_transmit();
        if hs.is_finished() {
            let _ = hs.finish();
        }
    }
    let mut sealer = Sealer { dir: Direction::new([7; 32]), sealed: 0, since: None, rekeys: 0 };
    let mut opener = Opener { dir: Direction::new([7; 32]), buf: Vec::new() };
    let mut wire = Vec::new();
    sealer.seal(Duration::ZERO, &data[..cut], &mut wire);
    if cut.is_multiple_of(3) {
        sealer.seal(REKEY_AFTER, b"after a rekey", &mut wire);
    }
    let mut plain = Vec::new();
    opener.open(&wire, &mut plain).expect("honest records open");
    assert!(plain.starts_with(&data[..cut]), "what was sealed comes out");
    let _ = opener.open(&data[cut..], &mut plain);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{CaKey, CertBody, CertError};

    const NOW: u64 = 1_800_000_000;
    const K: &str = "cluster-key-0123456789";

    fn key(s: &str) -> Key {
        Key::from_file_contents(s.as_bytes()).unwrap()
    }

    /// A node certified by `ca` as `name` in `role` until `until`.
    fn certified(ca: &CaKey, role: Role, name: &str, until: u64) -> Identity {
        let key = StaticKey::generate().unwrap();
        let body = CertBody {
            name: name.into(),
            role,
            key: key.public().try_into().unwrap(),
            serial: 1,
            not_before: 0,
            not_after: until,
        };
        Identity { key, cert: Some(ca.issue(body).unwrap()), trust: Some(Trust::new(ca.public())) }
    }

    #[test]
    fn certified_nodes_meet_and_each_learns_the_others_certificate() {
        let ca = CaKey::generate().unwrap();
        let (ia, ib) = (certified(&ca, Role::Relay, "relay-a", NOW + 1), certified(&ca, Role::Boot, "boot", NOW + 1));
        for step in [1, 5, 4096] {
            let (a, b) = pair_of(K, K, &ia, &ib, step);
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.cert.unwrap().body.name, "boot");
            assert_eq!(b.cert.unwrap().body.name, "relay-a");
        }
        // The saved private key gives the same key pair.
        let again = StaticKey::from_private(ia.key.private().try_into().unwrap());
        assert_eq!(again.public(), ia.key.public());
    }

    /// The responder's verdict on the initiator comes sealed after the
    /// handshake: the initiator reads it as its first record.
    fn verdict(a: Result<Established, AuthError>) -> String {
        let mut a = a.expect("the initiator is through when the responder judges it");
        let mut sink = Vec::new();
        match a.opener.open(&a.leftover, &mut sink) {
            Err(OpenError::Refused(r)) => r,
            r => panic!("no refusal: {r:?}"),
        }
    }

    #[test]
    fn a_node_without_a_good_certificate_is_refused_and_hears_why() {
        let ca = CaKey::generate().unwrap();
        let boot = certified(&ca, Role::Boot, "boot", NOW + 1);
        // No certificate at all.
        let bare = Identity::plain(StaticKey::generate().unwrap());
        let (a, b) = pair_of(K, K, &bare, &boot, 4096);
        assert_eq!(b.unwrap_err(), AuthError::Cert(CertError::Missing));
        assert!(verdict(a).contains("requires one"));
        // Expired.
        let old = certified(&ca, Role::Relay, "relay-a", NOW - 1);
        let (a, b) = pair_of(K, K, &old, &boot, 7);
        assert!(matches!(b.unwrap_err(), AuthError::Cert(CertError::Expired(_))));
        assert!(verdict(a).contains("expired"));
        // Another CA's, and another name's.
        let stranger =
            Identity { trust: None, ..certified(&CaKey::generate().unwrap(), Role::Relay, "relay-a", NOW + 1) };
        let (a, b) = pair_of(K, K, &stranger, &boot, 4096);
        assert!(matches!(b.unwrap_err(), AuthError::Cert(CertError::OtherCa(_))));
        assert!(verdict(a).contains("another CA"));
        let renamed = certified(&ca, Role::Relay, "relay-z", NOW + 1);
        assert!(matches!(pair_of(K, K, &renamed, &boot, 4096).1, Err(AuthError::Cert(CertError::Name { .. }))));
        // Revoked: after the CA's list reaches the responder.
        let a_ok = certified(&ca, Role::Relay, "relay-a", NOW + 1);
        let mut judge = boot.clone();
        let list = ca.revoke(None, &[a_ok.key.public().try_into().unwrap()], NOW).unwrap();
        judge.trust.as_mut().unwrap().adopt(list).unwrap();
        let (a, b) = pair_of(K, K, &a_ok, &judge, 4096);
        assert!(matches!(b.unwrap_err(), AuthError::Cert(CertError::Revoked(_))));
        assert!(verdict(a).contains("revoked"));
        // The initiator refuses a responder whose certificate is bad, in
        // the handshake, and the responder hears why.
        let old_boot = certified(&ca, Role::Boot, "boot", NOW - 1);
        let (a, b) = pair_of(K, K, &a_ok, &old_boot, 4096);
        assert!(matches!(a.unwrap_err(), AuthError::Cert(CertError::Expired(_))));
        assert!(matches!(b.unwrap_err(), AuthError::Refused(r) if r.contains("expired")));
        // A certified node that checks nothing meets one without a
        // certificate (a cluster not using certificates yet).
        let a_lax = Identity { trust: None, ..a_ok };
        let (a, b) = pair_of(K, K, &a_lax, &Identity::plain(StaticKey::generate().unwrap()), 4096);
        assert!(a.is_ok() && b.is_ok());
    }

    type Ends = (Result<Established, AuthError>, Result<Established, AuthError>);

    /// Runs a handshake to its end, delivering bytes in pieces of `step`.
    fn pair(ka: &str, kb: &str, step: usize) -> Ends {
        let (sa, sb) = (StaticKey::generate().unwrap(), StaticKey::generate().unwrap());
        pair_of(ka, kb, &Identity::plain(sa), &Identity::plain(sb), step)
    }

    /// The same between `ia` ("relay-a") and `ib` ("boot"), at [`NOW`].
    fn pair_of(ka: &str, kb: &str, ia: &Identity, ib: &Identity, step: usize) -> Ends {
        let mut a = SecureHandshake::initiator(&key(ka), ia, Role::Relay, "relay-a", NOW).unwrap();
        let mut b = SecureHandshake::responder(&key(kb), ib, Role::Boot, "boot", NOW).unwrap();
        let (mut ea, mut eb) = (None, None);
        for _ in 0..20 {
            if let Some(bytes) = a.poll_transmit() {
                for piece in bytes.chunks(step) {
                    if let Err(e) = b.handle_bytes(piece) {
                        eb = Some(e);
                        break;
                    }
                }
            }
            if let Some(bytes) = b.poll_transmit() {
                for piece in bytes.chunks(step) {
                    if let Err(e) = a.handle_bytes(piece) {
                        ea = Some(e);
                        break;
                    }
                }
            }
            // A side that failed says why (a refusal) before it hangs up.
            if ea.is_some()
                && eb.is_none()
                && let Some(bytes) = a.poll_transmit()
                && let Err(e) = b.handle_bytes(&bytes)
            {
                eb = Some(e);
            }
            if (a.is_finished() && b.is_finished()) || ea.is_some() || eb.is_some() {
                break;
            }
        }
        let fa = match ea {
            Some(e) => Err(e),
            None => a.finish(),
        };
        let fb = match eb {
            Some(e) => Err(e),
            None => b.finish(),
        };
        (fa, fb)
    }

    #[test]
    fn both_sides_learn_who_the_other_is_and_talk_both_ways() {
        for step in [1, 7, 4096] {
            let (a, b) = pair("cluster-key-0123456789", "cluster-key-0123456789", step);
            let (mut a, mut b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.peer, Peer { role: Role::Boot, name: "boot".into() });
            assert_eq!(b.peer, Peer { role: Role::Relay, name: "relay-a".into() });
            assert_eq!(a.remote_static.len(), 32);
            let now = Duration::ZERO;
            let mut wire = Vec::new();
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            a.sealer.seal(now, b"hello", &mut wire);
            a.sealer.seal(now, &big, &mut wire);
            assert!(!wire.windows(5).any(|w| w == b"hello"), "plaintext on the wire");
            let mut got = Vec::new();
            for piece in wire.chunks(step.max(3)) {
                b.opener.open(piece, &mut got).unwrap();
            }
            assert_eq!(&got[..5], b"hello");
            assert_eq!(&got[5..], &big[..]);
            let mut back = Vec::new();
            b.sealer.seal(now, b"and back", &mut back);
            let mut got = Vec::new();
            a.opener.open(&back, &mut got).unwrap();
            assert_eq!(got, b"and back");
        }
    }

    #[test]
    fn a_wrong_key_is_refused_and_the_initiator_hears_why() {
        let (a, b) = pair("cluster-key-0123456789", "another-key-0123456789", 4096);
        assert_eq!(b.unwrap_err(), AuthError::WrongKey);
        match a.unwrap_err() {
            AuthError::Refused(r) => assert!(r.contains("another cluster key"), "{r}"),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn an_old_plaintext_peer_is_told_to_upgrade() {
        let sb = Identity::plain(StaticKey::generate().unwrap());
        let mut b = SecureHandshake::responder(&key("cluster-key-0123456789"), &sb, Role::Boot, "boot", NOW).unwrap();
        let old_hello = Msg::Hello { version: 1, role: Role::Relay, name: "r", nonce: [1; 16] }.to_frame();
        assert_eq!(b.handle_bytes(&old_hello), Err(AuthError::OldProtocol));
        assert_eq!(b.poll_transmit().unwrap()[0], KIND_REFUSE);
    }

    fn established() -> (Established, Established) {
        let (a, b) = pair("cluster-key-0123456789", "cluster-key-0123456789", 4096);
        (a.unwrap(), b.unwrap())
    }

    #[test]
    fn a_changed_replayed_or_dropped_record_fails() {
        let sealed = |a: &mut Established| {
            let (mut r1, mut r2) = (Vec::new(), Vec::new());
            a.sealer.seal(Duration::ZERO, b"one", &mut r1);
            a.sealer.seal(Duration::ZERO, b"two", &mut r2);
            (r1, r2)
        };
        let mut sink = Vec::new();
        let (mut a, mut b) = established();
        let (mut r1, _) = sealed(&mut a);
        r1[4] ^= 1;
        assert_eq!(b.opener.open(&r1, &mut sink), Err(OpenError::Forged), "a flipped bit");
        let (mut a, mut b) = established();
        let (_, r2) = sealed(&mut a);
        assert_eq!(b.opener.open(&r2, &mut sink), Err(OpenError::Forged), "the second record first (one dropped)");
        let (mut a, mut b) = established();
        let (r1, _) = sealed(&mut a);
        b.opener.open(&r1, &mut sink).unwrap();
        assert_eq!(b.opener.open(&r1, &mut sink), Err(OpenError::Forged), "a replay");
        let (_, mut b) = established();
        assert_eq!(b.opener.open(&[0, 3, 0, 0, 0], &mut sink), Err(OpenError::Short(3)));
        let (mut a, _) = established();
        let (r1, _) = sealed(&mut a);
        let (_, mut stranger) = established();
        assert_eq!(stranger.opener.open(&r1, &mut sink), Err(OpenError::Forged), "another session's record");
    }

    #[test]
    fn keys_change_on_the_time_budget_and_both_sides_follow() {
        let (mut a, mut b) = established();
        let mut got = Vec::new();
        let mut first = Vec::new();
        for i in 0..5u32 {
            let mut wire = Vec::new();
            a.sealer.seal(REKEY_AFTER * i, b"same text", &mut wire);
            if i == 0 {
                first = wire.clone();
            }
            b.opener.open(&wire, &mut got).unwrap();
        }
        assert_eq!(a.sealer.rekeys(), 4);
        assert_eq!(got, b"same text".repeat(5), "the reader follows every rekey");
        // A record of the first key is not one of a later key: an opener
        // that has moved on refuses it.
        assert_eq!(b.opener.open(&first, &mut got), Err(OpenError::Forged));
    }
}
