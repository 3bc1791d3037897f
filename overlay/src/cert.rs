//! Node certificates: a cluster CA (an Ed25519 key kept offline) certifies
//! each node's Noise static key with the node's name, role and validity;
//! a revocation list signed by the same CA names keys no longer trusted.
//! A node that trusts a CA ([`Trust`]) refuses, at the Noise handshake,
//! every peer whose certificate is missing, from another CA, forged, for
//! another key, name or role, not yet valid, expired or revoked, and says
//! which ([`CertError`]).
//!
//! Sans-IO: time comes in as Unix seconds; the only randomness drawn here
//! is a new CA key's ([`CaKey::generate`], from the operating system).
//!
//! ```text
//! certificate:  "XSC1" role:u8 name:str key:[32] serial:u64
//!               not_before:u64 not_after:u64 ca:[32] sig:[64]
//! revocations:  "XSR1" ca:[32] seq:u64 issued:u64 count:u16 key:[32]*
//!               sig:[64]
//! ```
//!
//! `str` is `len:u16` then UTF-8; numbers are big-endian; `sig` is the
//! CA's Ed25519 signature of every byte before it. Files hold the same
//! bytes as hex after `#` comment lines that say what is inside.

use ring::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey},
};

use crate::{
    secure::fingerprint,
    wire::{ParseError, Reader, Role, Writer},
};

const CERT_MAGIC: &[u8; 4] = b"XSC1";
const LIST_MAGIC: &[u8; 4] = b"XSR1";
const SIG: usize = 64;
/// The most keys one revocation list names (it floods in one overlay
/// frame: 4,096 keys are 128 KiB).
pub const MAX_REVOKED: usize = 4096;
/// The longest node name a certificate holds.
pub const MAX_NAME: usize = 255;

/// Why a certificate or revocation list is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// The peer showed no certificate, and we require one.
    Missing,
    /// Bytes that are not a certificate or list.
    Malformed(String),
    /// Signed by another CA than ours (its key's fingerprint).
    OtherCa(String),
    /// The signature does not match: changed, or not from the CA.
    BadSignature,
    /// The certificate is for another static key than the peer's.
    NotItsKey,
    /// The certificate names another node than the peer says it is.
    Name {
        /// The certificate's name.
        cert: String,
        /// The name the peer gave.
        said: String,
    },
    /// The certificate is for another role.
    Role {
        /// The certificate's role.
        cert: Role,
        /// The role the peer gave.
        said: Role,
    },
    /// Valid only from this time (Unix seconds).
    NotYetValid(u64),
    /// Expired at this time (Unix seconds).
    Expired(u64),
    /// The CA revoked this key (its fingerprint).
    Revoked(String),
    /// A revocation list older than the one held (its sequence number).
    Stale(u64),
    /// More keys than [`MAX_REVOKED`].
    TooMany(usize),
    /// The CA key could not be made or read.
    Key(String),
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertError::Missing => write!(
                f,
                "no node certificate: this cluster requires one (make it with `xsock keys issue`, give it with --cert)"
            ),
            CertError::Malformed(e) => write!(f, "not an xsock node certificate or revocation list: {e}"),
            CertError::OtherCa(fp) => {
                write!(f, "certificate signed by another CA ({fp}): issue it with this cluster's CA key")
            }
            CertError::BadSignature => write!(f, "the CA's signature does not match: the certificate was changed"),
            CertError::NotItsKey => write!(f, "the certificate is for another node key than the one it uses"),
            CertError::Name { cert, said } => {
                write!(f, "the certificate is for node {cert:?}, but it calls itself {said:?}: use --name {cert}")
            }
            CertError::Role { cert, said } => {
                write!(f, "the certificate is for a {cert:?}, but it joins as a {said:?}: issue one with --role")
            }
            CertError::NotYetValid(t) => write!(f, "the certificate is valid only from {} (check the clock)", date(*t)),
            CertError::Expired(t) => {
                write!(f, "the certificate expired at {}: renew it with `xsock keys issue`", date(*t))
            }
            CertError::Revoked(fp) => write!(f, "the CA revoked node key {fp}"),
            CertError::Stale(seq) => write!(f, "an older revocation list (number {seq}) than the one held"),
            CertError::TooMany(n) => write!(f, "{n} revoked keys: at most {MAX_REVOKED} fit one list"),
            CertError::Key(e) => write!(f, "CA key: {e}"),
        }
    }
}

impl std::error::Error for CertError {}

fn malformed(e: ParseError) -> CertError {
    CertError::Malformed(e.to_string())
}

/// A CA's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPublic(pub [u8; 32]);

impl std::fmt::Debug for CaPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaPublic({})", fingerprint(&self.0))
    }
}

impl CaPublic {
    fn verifies(&self, signed: &[u8], sig: &[u8; SIG]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(signed, sig).is_ok()
    }
}

/// The CA's key pair (PKCS#8, as ring keeps it).
pub struct CaKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaKey({})", fingerprint(&self.public().0))
    }
}

impl CaKey {
    /// A new CA key (from the operating system's randomness).
    pub fn generate() -> Result<CaKey, CertError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| CertError::Key(e.to_string()))?;
        CaKey::from_pkcs8(doc.as_ref())
    }

    /// The key saved by [`CaKey::pkcs8`].
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<CaKey, CertError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| CertError::Key(e.to_string()))?;
        Ok(CaKey { pair, pkcs8: pkcs8.to_vec() })
    }

    /// The bytes to keep (secret).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, which every node trusts.
    pub fn public(&self) -> CaPublic {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        CaPublic(k)
    }

    fn sign(&self, signed: &[u8]) -> [u8; SIG] {
        let mut s = [0u8; SIG];
        s.copy_from_slice(self.pair.sign(signed).as_ref());
        s
    }

    /// Certifies `key` (a node's Noise static public key) as `name` in
    /// `role`, valid from `not_before` to `not_after` (Unix seconds).
    pub fn issue(&self, body: CertBody) -> Result<Cert, CertError> {
        if body.name.is_empty() || body.name.len() > MAX_NAME {
            return Err(CertError::Malformed(format!("a node name of 1 to {MAX_NAME} bytes, not {}", body.name.len())));
        }
        let mut c = Cert { body, ca: self.public(), sig: [0; SIG] };
        c.sig = self.sign(&c.signed_part());
        Ok(c)
    }

    /// The list after `held` that also names `add` (numbered one higher).
    pub fn revoke(&self, held: Option<&Revocations>, add: &[[u8; 32]], issued: u64) -> Result<Revocations, CertError> {
        let mut keys = held.map(|h| h.keys.clone()).unwrap_or_default();
        for k in add {
            if !keys.contains(k) {
                keys.push(*k);
            }
        }
        if keys.len() > MAX_REVOKED {
            return Err(CertError::TooMany(keys.len()));
        }
        let seq = held.map_or(1, |h| h.seq + 1);
        let mut r = Revocations { ca: self.public(), seq, issued, keys, sig: [0; SIG] };
        r.sig = self.sign(&r.signed_part());
        Ok(r)
    }
}

/// What a certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBody {
    /// The node's name on the overlay.
    pub name: String,
    /// What it may join as.
    pub role: Role,
    /// Its Noise static public key (X25519).
    pub key: [u8; 32],
    /// A number the CA picks (to tell certificates apart).
    pub serial: u64,
    /// Valid from (Unix seconds).
    pub not_before: u64,
    /// Valid until (Unix seconds).
    pub not_after: u64,
}

/// A node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// What it certifies.
    pub body: CertBody,
    /// Who signed it.
    pub ca: CaPublic,
    sig: [u8; SIG],
}

impl Cert {
    fn signed_part(&self) -> Vec<u8> {
        let mut out = CERT_MAGIC.to_vec();
        let mut w = Writer { out: &mut out };
        let b = &self.body;
        w.u8(b.role as u8);
        w.str(&b.name);
        w.out.extend_from_slice(&b.key);
        w.u64(b.serial);
        w.u64(b.not_before);
        w.u64(b.not_after);
        w.out.extend_from_slice(&self.ca.0);
        out
    }

    /// The certificate's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signed_part();
        out.extend_from_slice(&self.sig);
        out
    }

    /// Parses a certificate (the signature is checked by [`Trust::check`]).
    pub fn parse(b: &[u8]) -> Result<Cert, CertError> {
        let mut r = Reader { buf: b };
        if r.take(4).map_err(malformed)? != CERT_MAGIC {
            return Err(CertError::Malformed("it does not start with XSC1".into()));
        }
        let role = Role::from_u8(r.u8().map_err(malformed)?).map_err(malformed)?;
        let name = r.str().map_err(malformed)?.to_owned();
        let body = CertBody {
            role,
            name,
            key: r.array().map_err(malformed)?,
            serial: r.u64().map_err(malformed)?,
            not_before: r.u64().map_err(malformed)?,
            not_after: r.u64().map_err(malformed)?,
        };
        let c = Cert { body, ca: CaPublic(r.array().map_err(malformed)?), sig: r.array().map_err(malformed)? };
        if !r.buf.is_empty() {
            return Err(malformed(ParseError::Trailing));
        }
        Ok(c)
    }

    /// A one-line summary for people.
    pub fn describe(&self) -> String {
        let b = &self.body;
        format!(
            "node {:?}, role {:?}, key {}, serial {}, valid {} to {}, CA {}",
            b.name,
            b.role,
            fingerprint(&b.key),
            b.serial,
            date(b.not_before),
            date(b.not_after),
            fingerprint(&self.ca.0)
        )
    }
}

/// The keys a CA revoked, numbered so that a newer list replaces an older.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocations {
    /// Who signed it.
    pub ca: CaPublic,
    /// Its number: each list the CA makes is one higher.
    pub seq: u64,
    /// When it was made (Unix seconds).
    pub issued: u64,
    /// The revoked Noise static public keys.
    pub keys: Vec<[u8; 32]>,
    sig: [u8; SIG],
}

impl Revocations {
    fn signed_part(&self) -> Vec<u8> {
        let mut out = LIST_MAGIC.to_vec();
        out.extend_from_slice(&self.ca.0);
        let mut w = Writer { out: &mut out };
        w.u64(self.seq);
        w.u64(self.issued);
        w.count(self.keys.len());
        for k in &self.keys {
            w.out.extend_from_slice(k);
        }
        out
    }

    /// The list's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signed_part();
        out.extend_from_slice(&self.sig);
        out
    }

    /// Parses a list (the signature is checked by [`Trust::adopt`]).
    pub fn parse(b: &[u8]) -> Result<Revocations, CertError> {
        let mut r = Reader { buf: b };
        if r.take(4).map_err(malformed)? != LIST_MAGIC {
            return Err(CertError::Malformed("it does not start with XSR1".into()));
        }
        let ca = CaPublic(r.array().map_err(malformed)?);
        let seq = r.u64().map_err(malformed)?;
        let issued = r.u64().map_err(malformed)?;
        let n = usize::from(r.u16().map_err(malformed)?);
        if n > MAX_REVOKED {
            return Err(CertError::TooMany(n));
        }
        if r.buf.len() < n * 32 {
            return Err(malformed(ParseError::Truncated));
        }
        let keys = (0..n).map(|_| r.array()).collect::<Result<Vec<_>, _>>().map_err(malformed)?;
        let l = Revocations { ca, seq, issued, keys, sig: r.array().map_err(malformed)? };
        if !r.buf.is_empty() {
            return Err(malformed(ParseError::Trailing));
        }
        Ok(l)
    }
}

/// What a node trusts: a CA, and the newest revocation list it has seen.
#[derive(Debug, Clone)]
pub struct Trust {
    ca: CaPublic,
    revoked: Option<Revocations>,
}

impl Trust {
    /// Trusts certificates that `ca` signed.
    pub fn new(ca: CaPublic) -> Trust {
        Trust { ca, revoked: None }
    }

    /// The CA.
    pub fn ca(&self) -> CaPublic {
        self.ca
    }

    /// The revocation list held, if any.
    pub fn revocations(&self) -> Option<&Revocations> {
        self.revoked.as_ref()
    }

    /// Takes `list` if our CA signed it and it is newer than the one held
    /// (true); the same list again is `Ok(false)`.
    pub fn adopt(&mut self, list: Revocations) -> Result<bool, CertError> {
        if list.ca != self.ca {
            return Err(CertError::OtherCa(fingerprint(&list.ca.0)));
        }
        if !self.ca.verifies(&list.signed_part(), &list.sig) {
            return Err(CertError::BadSignature);
        }
        match &self.revoked {
            Some(held) if held.seq == list.seq => Ok(false),
            Some(held) if held.seq > list.seq => Err(CertError::Stale(list.seq)),
            _ => {
                self.revoked = Some(list);
                Ok(true)
            }
        }
    }

    /// Whether `key` is revoked.
    pub fn is_revoked(&self, key: &[u8]) -> bool {
        self.revoked.as_ref().is_some_and(|l| l.keys.iter().any(|k| k[..] == *key))
    }

    /// Checks the certificate a peer showed (`cert`, its bytes) against the
    /// static key it proved it holds and the role and name it gave, at
    /// `now` (Unix seconds).
    pub fn check(&self, cert: &[u8], key: &[u8], role: Role, name: &str, now: u64) -> Result<Cert, CertError> {
        if cert.is_empty() {
            return Err(CertError::Missing);
        }
        let c = Cert::parse(cert)?;
        if c.ca != self.ca {
            return Err(CertError::OtherCa(fingerprint(&c.ca.0)));
        }
        if !self.ca.verifies(&c.signed_part(), &c.sig) {
            return Err(CertError::BadSignature);
        }
        let b = &c.body;
        if b.key[..] != *key {
            return Err(CertError::NotItsKey);
        }
        if b.role != role {
            return Err(CertError::Role { cert: b.role, said: role });
        }
        if b.name != name {
            return Err(CertError::Name { cert: b.name.clone(), said: name.to_owned() });
        }
        if now < b.not_before {
            return Err(CertError::NotYetValid(b.not_before));
        }
        if now > b.not_after {
            return Err(CertError::Expired(b.not_after));
        }
        if self.is_revoked(key) {
            return Err(CertError::Revoked(fingerprint(key)));
        }
        Ok(c)
    }
}

/// `bytes` as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex (white space ignored) as bytes.
pub fn from_hex(s: &str) -> Result<Vec<u8>, CertError> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(CertError::Malformed("an odd number of hex digits".into()));
    }
    let val =
        |d: u8| (d as char).to_digit(16).ok_or_else(|| CertError::Malformed(format!("{:?} is not hex", d as char)));
    digits.chunks(2).map(|p| Ok((val(p[0])? * 16 + val(p[1])?) as u8)).collect()
}

/// The values of a file's `field value` lines (lines starting with `#`
/// are comments).
pub fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(str::trim)
}

/// A Unix time as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn date(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let s = t % 86_400;
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// What a hostile peer or file can do with `data`: parse it as both kinds
/// and check it against a trust (the fuzz target's entry).
pub fn hostile_bytes(data: &[u8]) {
    let mut t = Trust::new(CaPublic([7; 32]));
    if let Ok(l) = Revocations::parse(data) {
        let _ = t.adopt(l.clone());
        assert_eq!(Revocations::parse(&l.to_bytes()).as_ref(), Ok(&l), "a list survives its own bytes");
    }
    if let Ok(c) = Cert::parse(data) {
        assert_eq!(Cert::parse(&c.to_bytes()).as_ref(), Ok(&c), "a certificate survives its own bytes");
    }
    let _ = t.check(data, &[0; 32], Role::Relay, "x", 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn body(name: &str, role: Role, key: u8) -> CertBody {
        CertBody { name: name.into(), role, key: [key; 32], serial: 1, not_before: NOW - 10, not_after: NOW + 100 }
    }

    #[test]
    fn a_certificate_checks_only_for_its_key_name_role_and_time() {
        let ca = CaKey::generate().unwrap();
        let t = Trust::new(ca.public());
        let c = ca.issue(body("relay-a", Role::Relay, 1)).unwrap().to_bytes();
        assert!(t.check(&c, &[1; 32], Role::Relay, "relay-a", NOW).is_ok());
        assert_eq!(t.check(&c, &[2; 32], Role::Relay, "relay-a", NOW), Err(CertError::NotItsKey));
        assert!(matches!(t.check(&c, &[1; 32], Role::Relay, "relay-b", NOW), Err(CertError::Name { .. })));
        assert!(matches!(t.check(&c, &[1; 32], Role::Endpoint, "relay-a", NOW), Err(CertError::Role { .. })));
        assert_eq!(t.check(&c, &[1; 32], Role::Relay, "relay-a", NOW + 101), Err(CertError::Expired(NOW + 100)));
        assert_eq!(t.check(&c, &[1; 32], Role::Relay, "relay-a", NOW - 11), Err(CertError::NotYetValid(NOW - 10)));
        assert_eq!(t.check(&[], &[1; 32], Role::Relay, "relay-a", NOW), Err(CertError::Missing));
    }

    #[test]
    fn another_ca_or_a_changed_byte_is_refused() {
        let (ca, other) = (CaKey::generate().unwrap(), CaKey::generate().unwrap());
        let t = Trust::new(ca.public());
        let theirs = other.issue(body("r", Role::Relay, 1)).unwrap().to_bytes();
        assert!(matches!(t.check(&theirs, &[1; 32], Role::Relay, "r", NOW), Err(CertError::OtherCa(_))));
        let mine = ca.issue(body("r", Role::Relay, 1)).unwrap().to_bytes();
        // Every byte of the signed part and the signature is covered.
        for i in 0..mine.len() {
            let mut c = mine.clone();
            c[i] ^= 1;
            let r = t.check(&c, &[1; 32], Role::Relay, "r", NOW);
            assert!(r.is_err(), "byte {i} changed and still accepted");
        }
        // The CA key survives its own bytes.
        let again = CaKey::from_pkcs8(ca.pkcs8()).unwrap();
        assert_eq!(again.public(), ca.public());
    }

    #[test]
    fn a_revocation_list_takes_keys_back_and_only_a_newer_one_replaces_it() {
        let ca = CaKey::generate().unwrap();
        let mut t = Trust::new(ca.public());
        let c = ca.issue(body("e", Role::Endpoint, 9)).unwrap().to_bytes();
        let l1 = ca.revoke(None, &[[9; 32]], NOW).unwrap();
        let l1 = Revocations::parse(&l1.to_bytes()).unwrap();
        assert_eq!(t.adopt(l1.clone()), Ok(true));
        assert_eq!(t.adopt(l1.clone()), Ok(false));
        assert!(matches!(t.check(&c, &[9; 32], Role::Endpoint, "e", NOW), Err(CertError::Revoked(_))));
        let l2 = ca.revoke(Some(&l1), &[[9; 32], [8; 32]], NOW).unwrap();
        assert_eq!((l2.seq, l2.keys.len()), (2, 2));
        assert_eq!(t.adopt(l2), Ok(true));
        assert_eq!(t.adopt(l1), Err(CertError::Stale(1)));
        // A list from another CA, or changed, is not taken.
        let other = CaKey::generate().unwrap().revoke(None, &[], NOW).unwrap();
        assert!(matches!(t.adopt(other), Err(CertError::OtherCa(_))));
        let mut b = ca.revoke(t.revocations(), &[], NOW).unwrap().to_bytes();
        b[40] ^= 1;
        assert_eq!(t.adopt(Revocations::parse(&b).unwrap()), Err(CertError::BadSignature));
    }

    #[test]
    fn hex_fields_and_dates() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xab, 0xff])).unwrap(), vec![0, 1, 0xab, 0xff]);
        assert!(from_hex("abc").is_err() && from_hex("zz").is_err());
        assert_eq!(field("# cert x\ncert  ab cd \nkey 12", "cert"), Some("ab cd"));
        assert_eq!(field("# key 1", "key"), None);
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(1_796_428_800), "2026-12-05 00:00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn hostile_bytes_survive() {
        hostile_bytes(&[]);
        hostile_bytes(b"XSC1\x02\xff\xff");
        hostile_bytes(b"XSR1");
        let mut l = b"XSR1".to_vec();
        l.extend_from_slice(&[0; 48]);
        l.extend_from_slice(&[0xff, 0xff]);
        hostile_bytes(&l);
    }
}
