//! Encrypted sessions on kernel TCP, for everything that crosses a LAN
//! boundary: the blocking shell around [`xsock_overlay::secure`] (its
//! handshake and records). A [`SecureTcp`] is a [`FrameIo`], so the
//! overlay's messages go over it exactly as over a plain stream; a loop
//! that does its own non-blocking I/O takes it apart with
//! [`SecureTcp::into_parts`] and seals and opens records itself.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::OnceLock,
    time::{Duration, Instant},
};

use xsock_overlay::{
    auth::{AuthError, Key, Peer},
    cert::Cert,
    secure::{Identity, OpenError, Opener, Sealer, SecureHandshake, StaticKey, fingerprint},
    wire::{FrameReader, Role},
};

use super::io::FrameIo;
use crate::Error;

/// This process's static key, for nodes without a certificate (a node
/// with one uses its certified key: [`super::load_identity`]).
pub fn process_key() -> &'static StaticKey {
    static KEY: OnceLock<StaticKey> = OnceLock::new();
    KEY.get_or_init(|| StaticKey::generate().unwrap_or_else(|e| panic!("cannot make a Noise static key: {e}")))
}

/// Time for the record layer's rekey budget: since the first call.
pub fn session_clock() -> Duration {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

fn overlay_err(e: AuthError) -> Error {
    Error::Overlay(e.to_string())
}

/// A refusal (of our certificate) is the peer's word, not a broken
/// session: callers tell it apart to stop retrying.
fn open_err(e: OpenError) -> Error {
    match e {
        OpenError::Refused(_) => Error::Overlay(e.to_string()),
        e => Error::Protocol(e.to_string()),
    }
}

/// An encrypted, authenticated session on a kernel TCP connection.
pub struct SecureTcp {
    s: TcpStream,
    sealer: Sealer,
    opener: Opener,
    /// Opened bytes not yet taken.
    plain: Vec<u8>,
    peer: Peer,
    remote_static: Vec<u8>,
    cert: Option<Cert>,
}

impl std::fmt::Debug for SecureTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureTcp").field("peer", &self.peer).field("key", &fingerprint(&self.remote_static)).finish()
    }
}

/// The pieces of a [`SecureTcp`] for a loop of its own.
#[derive(Debug)]
pub struct SecureParts {
    /// The connection.
    pub stream: TcpStream,
    /// Seals what we send on it.
    pub sealer: Sealer,
    /// Opens what arrives (it may hold part of a record already).
    pub opener: Opener,
    /// Bytes already opened and not yet taken: they come first.
    pub plain: Vec<u8>,
    /// The peer's static public key (what a revocation names).
    pub remote_static: Vec<u8>,
}

/// Reads a session's frames (type + body) in order from `stream`, opened
/// by `opener` (`plain`: what was opened already, first), handing each to
/// `each` (false stops), until the session ends; why it ended. Blocking:
/// for a reader thread of its own, while another thread seals and writes.
pub fn read_frames(
    stream: &mut TcpStream,
    opener: &mut Opener,
    plain: Vec<u8>,
    mut each: impl FnMut(&[u8]) -> bool,
) -> String {
    let mut rd = FrameReader::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut opened = plain;
    loop {
        rd.push(&opened);
        opened.clear();
        loop {
            match rd.next_frame() {
                Ok(Some(f)) => {
                    if !each(f) {
                        return "stopped".into();
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("the peer broke the protocol: {e}"),
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return "the peer closed the session".into(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return e.to_string(),
            Ok(n) => {
                if let Err(e) = opener.open(&buf[..n], &mut opened) {
                    return format!("the session broke: {e}");
                }
            }
        }
    }
}

impl SecureTcp {
    /// Runs the handshake as the side that connected, as `me` in `role`
    /// named `name`; the peer is proven to hold `key` (and, if `me` checks
    /// certificates, a valid certificate of its own key).
    pub fn connect(
        s: TcpStream,
        key: &Key,
        me: &Identity,
        role: Role,
        name: &str,
        deadline: Instant,
    ) -> Result<SecureTcp, Error> {
        let hs = SecureHandshake::initiator(key, me, role, name, super::keys::unix_now()).map_err(overlay_err)?;
        Self::handshake(s, hs, deadline)
    }

    /// Runs the handshake as the side that accepted.
    pub fn accept(
        s: TcpStream,
        key: &Key,
        me: &Identity,
        role: Role,
        name: &str,
        deadline: Instant,
    ) -> Result<SecureTcp, Error> {
        let hs = SecureHandshake::responder(key, me, role, name, super::keys::unix_now()).map_err(overlay_err)?;
        Self::handshake(s, hs, deadline)
    }

    fn handshake(mut s: TcpStream, mut hs: SecureHandshake, deadline: Instant) -> Result<SecureTcp, Error> {
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(out) = hs.poll_transmit() {
                s.write_all(&out).map_err(Error::from_io)?;
            }
            if hs.is_finished() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::TimedOut(
                    "no answer to the encrypted handshake within its deadline (is the peer an xsock overlay node?)"
                        .into(),
                ));
            }
            s.set_read_timeout(Some(left)).map_err(Error::Io)?;
            let n = match s.read(&mut buf) {
                Ok(0) => {
                    return Err(Error::ConnectionReset("the peer closed the connection during the handshake".into()));
                }
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from_io(e)),
            };
            if let Err(e) = hs.handle_bytes(&buf[..n]) {
                // A refusal says why to the peer before we hang up.
                if let Some(out) = hs.poll_transmit() {
                    let _ = s.write_all(&out);
                }
                return Err(overlay_err(e));
            }
        }
        s.set_read_timeout(None).map_err(Error::Io)?;
        let est = hs.finish().map_err(overlay_err)?;
        let mut opener = est.opener;
        let mut plain = Vec::new();
        opener.open(&est.leftover, &mut plain).map_err(open_err)?;
        Ok(SecureTcp {
            s,
            sealer: est.sealer,
            opener,
            plain,
            peer: est.peer,
            remote_static: est.remote_static,
            cert: est.cert,
        })
    }

    /// The peer's certificate, when we check certificates.
    pub fn peer_cert(&self) -> Option<&Cert> {
        self.cert.as_ref()
    }

    /// The peer's static public key.
    pub fn peer_static(&self) -> &[u8] {
        &self.remote_static
    }

    /// Who the peer said it is (proven to hold the cluster key).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// A short name of the peer's static key.
    pub fn peer_key(&self) -> String {
        fingerprint(&self.remote_static)
    }

    /// The connection under the session.
    pub fn tcp(&self) -> &TcpStream {
        &self.s
    }

    /// Takes the session apart (see [`SecureParts`]).
    pub fn into_parts(self) -> SecureParts {
        SecureParts {
            stream: self.s,
            sealer: self.sealer,
            opener: self.opener,
            plain: self.plain,
            remote_static: self.remote_static,
        }
    }
}

impl FrameIo for SecureTcp {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        self.sealer.seal(session_clock(), bytes, &mut out);
        self.s.write_all(&out).map_err(Error::from_io)
    }

    fn get_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), Error> {
        let mut wire = vec![0u8; 64 << 10];
        while self.plain.len() < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            self.s.set_read_timeout(Some(left)).map_err(Error::Io)?;
            let r = self.s.read(&mut wire);
            self.s.set_read_timeout(None).map_err(Error::Io)?;
            match r {
                Ok(0) => return Err(Error::ConnectionReset("the peer closed the connection".into())),
                Ok(n) => self.opener.open(&wire[..n], &mut self.plain).map_err(open_err)?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(Error::TimedOut("overlay peer: no answer within the deadline".into()));
                }
                Err(e) => return Err(Error::from_io(e)),
            }
        }
        buf.copy_from_slice(&self.plain[..buf.len()]);
        self.plain.drain(..buf.len());
        Ok(())
    }
}
