//! Authentication with a shared cluster key: every connection (to the
//! bootstrap server, between relays, from an endpoint to a relay or to
//! another endpoint) starts with a mutual challenge-response.
//!
//! ```text
//! A -> B  Hello{version, role, name, nonce_A}     B -> A  Hello{..., nonce_B}
//! A -> B  Proof{HMAC(K, "xsock-proof" | hello_A | hello_B)}
//! B -> A  Proof{HMAC(K, "xsock-proof" | hello_B | hello_A)}
//! ```
//!
//! Each side proves it knows K over both fresh nonces, so a recorded proof
//! is useless later, and a proof reflected back fails because the two
//! hellos are in the other order. The key never crosses the wire. This
//! authenticates; it does not encrypt (the data path stays plaintext, as
//! the reliable-link and TCP paths are).

use sha2::{Digest, Sha256};

use crate::wire::{Msg, ParseError, Role, VERSION};

/// Shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// A cluster key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from the contents of a key file (surrounding whitespace
    /// ignored); an error names the fix when it is too short.
    pub fn from_file_contents(bytes: &[u8]) -> Result<Key, String> {
        let s = bytes.trim_ascii();
        if s.len() < MIN_KEY_LEN {
            return Err(format!(
                "the key file holds {} bytes; use at least {MIN_KEY_LEN} (e.g. `head -c 32 /dev/urandom | base64 > KEYFILE`)",
                s.len()
            ));
        }
        Ok(Key(s.to_vec()))
    }

    /// The key's bytes (for deriving other keys from it).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// HMAC-SHA256 (RFC 2104) of `parts` concatenated.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        const BLOCK: usize = 64;
        let mut k = [0u8; BLOCK];
        if self.0.len() > BLOCK {
            k[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            k[..self.0.len()].copy_from_slice(&self.0);
        }
        let mut inner = Sha256::new();
        inner.update(k.map(|b| b ^ 0x36));
        for p in parts {
            inner.update(p);
        }
        let mut outer = Sha256::new();
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

/// Who is on the other side, once proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// What it said it is.
    pub role: Role,
    /// Its name.
    pub name: String,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The peer's proof does not match: it has another key.
    WrongKey,
    /// The peer speaks another protocol version.
    Version(u8),
    /// The peer refused us, with its reason.
    Refused(String),
    /// Something other than the expected handshake message arrived.
    Unexpected(&'static str),
    /// Unparseable bytes.
    Parse(ParseError),
    /// The peer speaks the plaintext handshake of an older release.
    OldProtocol,
    /// The Noise handshake failed (its reason).
    Noise(String),
    /// The peer's node certificate is not accepted.
    Cert(crate::cert::CertError),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::WrongKey => write!(
                f,
                "the peer's proof does not match our key: it uses another cluster key (check --key-file on both)"
            ),
            AuthError::Version(v) => {
                write!(f, "the peer speaks overlay protocol version {v}, we speak {VERSION}: upgrade the older one")
            }
            AuthError::Refused(r) => write!(f, "refused by the peer: {r}"),
            AuthError::Unexpected(what) => {
                write!(f, "unexpected message during the handshake (wanted {what}): not an xsock overlay peer?")
            }
            AuthError::Parse(e) => write!(f, "{e}"),
            AuthError::OldProtocol => write!(
                f,
                "the peer does not speak the encrypted overlay protocol (an older xsock, or not xsock): upgrade it"
            ),
            AuthError::Noise(e) => write!(f, "the encrypted handshake failed: {e}"),
            AuthError::Cert(e) => write!(f, "the peer's certificate: {e}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// One side of the handshake, sans-IO: send [`Handshake::hello`], feed the
/// peer's hello to [`Handshake::on_hello`] (which returns our proof to
/// send), then the peer's proof to [`Handshake::on_proof`].
#[derive(Debug)]
pub struct Handshake {
    key: Key,
    mine: Vec<u8>,
    theirs: Option<(Vec<u8>, Peer)>,
}

impl Handshake {
    /// Starts a handshake as `role` named `name`, with a fresh random
    /// `nonce` from the caller (this crate reads no randomness).
    pub fn new(key: Key, role: Role, name: &str, nonce: [u8; 16]) -> Handshake {
        let mine = Msg::Hello { version: VERSION, role, name, nonce }.to_frame();
        Handshake { key, mine, theirs: None }
    }

    /// Our hello frame (send it first).
    pub fn hello(&self) -> &[u8] {
        &self.mine
    }

    /// The peer's hello frame (type + body, as [`crate::wire::FrameReader`]
    /// returns it). Returns our proof frame to send.
    pub fn on_hello(&mut self, frame: &[u8]) -> Result<Vec<u8>, AuthError> {
        let peer = match Msg::parse(frame).map_err(AuthError::Parse)? {
            Msg::Hello { version, .. } if version != VERSION => return Err(AuthError::Version(version)),
            Msg::Hello { role, name, .. } => Peer { role, name: name.to_owned() },
            Msg::Refused { reason } => return Err(AuthError::Refused(reason.to_owned())),
            _ => return Err(AuthError::Unexpected("Hello")),
        };
        let mut theirs = Vec::with_capacity(frame.len() + 4);
        theirs.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        theirs.extend_from_slice(frame);
        // Our own hello reflected back would make both proofs the same MAC
        // (the test below caught it): refuse it.
        if theirs == self.mine {
            return Err(AuthError::Unexpected("a Hello other than our own"));
        }
        let mac = self.key.mac(&[b"xsock-proof", &self.mine, &theirs]);
        self.theirs = Some((theirs, peer));
        Ok(Msg::Proof { mac }.to_frame())
    }

    /// The peer's proof frame: who it is, if the proof holds.
    pub fn on_proof(&self, frame: &[u8]) -> Result<Peer, AuthError> {
        let Some((theirs, peer)) = &self.theirs else { return Err(AuthError::Unexpected("Hello before Proof")) };
        match Msg::parse(frame).map_err(AuthError::Parse)? {
            Msg::Proof { mac } => {
                let want = self.key.mac(&[b"xsock-proof", theirs, &self.mine]);
                // Constant time: a byte-by-byte early exit would leak how
                // much of a guessed proof was right.
                let diff = mac.iter().zip(want.iter()).fold(0u8, |d, (a, b)| d | (a ^ b));
                if diff == 0 { Ok(peer.clone()) } else { Err(AuthError::WrongKey) }
            }
            Msg::Refused { reason } => Err(AuthError::Refused(reason.to_owned())),
            _ => Err(AuthError::Unexpected("Proof")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::from_file_contents(s.as_bytes()).unwrap()
    }

    fn run(a_key: &str, b_key: &str) -> (Result<Peer, AuthError>, Result<Peer, AuthError>) {
        let mut a = Handshake::new(key(a_key), Role::Endpoint, "a", [1; 16]);
        let mut b = Handshake::new(key(b_key), Role::Relay, "b", [2; 16]);
        let pa = a.on_hello(&b.hello()[4..]).unwrap();
        let pb = b.on_hello(&a.hello()[4..]).unwrap();
        (a.on_proof(&pb[4..]), b.on_proof(&pa[4..]))
    }

    #[test]
    fn same_key_authenticates_both_ways() {
        let (a, b) = run("0123456789abcdef-cluster", "0123456789abcdef-cluster");
        assert_eq!(a.unwrap(), Peer { role: Role::Relay, name: "b".into() });
        assert_eq!(b.unwrap().name, "a");
    }

    #[test]
    fn a_wrong_key_is_refused_on_both_sides() {
        let (a, b) = run("0123456789abcdef-cluster", "0123456789abcdef-other!");
        assert_eq!(a, Err(AuthError::WrongKey));
        assert_eq!(b, Err(AuthError::WrongKey));
    }

    #[test]
    fn a_reflected_proof_fails() {
        let k = "0123456789abcdef-cluster";
        let mut a = Handshake::new(key(k), Role::Endpoint, "a", [1; 16]);
        // An attacker without the key echoes A's own hello and then A's proof.
        let hello = a.hello()[4..].to_vec();
        assert!(matches!(a.on_hello(&hello), Err(AuthError::Unexpected(_))));
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let k = Key(b"Jefe".to_vec());
        let mac = k.mac(&[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn short_keys_are_refused_with_the_fix() {
        let e = Key::from_file_contents(b"  short\n").unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
    }
}
