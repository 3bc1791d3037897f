//! The files of a cluster that uses node certificates (made by
//! `xsock keys`): the CA key, each node's credentials (its private static
//! key, its certificate and the CA it trusts) and the revocation list.
//! Each is `#` comment lines saying what is inside, then `field hex` lines.

use std::path::Path;

use xsock_overlay::{
    cert::{CaKey, CaPublic, Cert, Revocations, Trust, field, from_hex, to_hex},
    secure::{Identity, StaticKey, fingerprint},
    wire::Role,
};

use super::secure::process_key;
use crate::Error;

fn read(path: &Path, what: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

fn hex_field(text: &str, name: &str, path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    let v = field(text, name).ok_or_else(|| {
        Error::Config(format!("{} has no `{name}` line: is it {what} made by `xsock keys`?", path.display()))
    })?;
    from_hex(v).map_err(|e| Error::Config(format!("{}: `{name}`: {e}", path.display())))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The CA key file's text.
pub fn ca_key_text(ca: &CaKey) -> String {
    format!(
        "# xsock cluster CA key {}: keep it offline and secret; `xsock keys issue|revoke --ca` sign with it\nca-key {}\n",
        fingerprint(&ca.public().0),
        to_hex(ca.pkcs8())
    )
}

/// Reads a CA key file.
pub fn load_ca(path: &Path) -> Result<CaKey, Error> {
    let text = read(path, "CA key file")?;
    let bytes = hex_field(&text, "ca-key", path, "a CA key")?;
    CaKey::from_pkcs8(&bytes).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// A node's credentials file's text.
pub fn node_text(key: &StaticKey, cert: &Cert) -> String {
    format!(
        "# xsock node credentials: {}\n# give it to the node with --cert FILE; keep it secret (it holds the node's private key)\n\
         private {}\ncert {}\nca {}\n",
        cert.describe(),
        to_hex(key.private()),
        to_hex(&cert.to_bytes()),
        to_hex(&cert.ca.0)
    )
}

/// A node's static key and certificate from its credentials file.
pub fn load_node(path: &Path) -> Result<(StaticKey, Cert, CaPublic), Error> {
    let text = read(path, "node credentials file")?;
    let what = "a node's credentials";
    let private: [u8; 32] = hex_field(&text, "private", path, what)?
        .try_into()
        .map_err(|_| Error::Config(format!("{}: `private` is not 32 bytes", path.display())))?;
    let cert = Cert::parse(&hex_field(&text, "cert", path, what)?)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let ca: [u8; 32] = hex_field(&text, "ca", path, what)?
        .try_into()
        .map_err(|_| Error::Config(format!("{}: `ca` is not 32 bytes", path.display())))?;
    let key = StaticKey::from_private(&private);
    if cert.body.key[..] != *key.public() {
        return Err(Error::Config(format!(
            "{}: the certificate is for another key than the private key beside it: issue the file again",
            path.display()
        )));
    }
    Ok((key, cert, CaPublic(ca)))
}

/// A revocation list file's text.
pub fn revocations_text(list: &Revocations) -> String {
    let mut t = format!(
        "# xsock revocation list number {} of CA {}, issued {}, {} keys\n",
        list.seq,
        fingerprint(&list.ca.0),
        xsock_overlay::cert::date(list.issued),
        list.keys.len()
    );
    for k in &list.keys {
        t.push_str(&format!("#   key {}\n", fingerprint(k)));
    }
    t.push_str(&format!("revocations {}\n", to_hex(&list.to_bytes())));
    t
}

/// Reads a revocation list file (its signature is checked when a trust
/// adopts it).
pub fn load_revocations(path: &Path) -> Result<Revocations, Error> {
    let text = read(path, "revocation list")?;
    Revocations::parse(&hex_field(&text, "revocations", path, "a revocation list")?)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Who this node is at the encrypted handshakes, as `role` named `name`:
/// with `cert` (a credentials file), its certified key, and every peer is
/// checked against the CA (and against the list in `revoked`); without,
/// this process's own key and no certificate checks.
/// `name` None takes the certificate's (the bootstrap server has no name
/// of its own).
pub fn load_identity(
    cert: Option<&Path>,
    revoked: Option<&Path>,
    role: Role,
    name: Option<&str>,
) -> Result<Identity, Error> {
    let Some(path) = cert else {
        if revoked.is_some() {
            return Err(Error::Config(
                "--revoked needs --cert: a node checks revocations only in a cluster with certificates".into(),
            ));
        }
        return Ok(Identity::plain(process_key().clone()));
    };
    let (key, c, ca) = load_node(path)?;
    let b = &c.body;
    let name = name.unwrap_or(&b.name);
    if b.role != role || b.name != name {
        return Err(Error::Config(format!(
            "{} certifies the {:?} {:?}, not the {role:?} {name:?}: give this node its own file (`xsock keys issue --name {name} --role {}`)",
            path.display(),
            b.role,
            b.name,
            format!("{role:?}").to_lowercase()
        )));
    }
    let now = unix_now();
    if now > b.not_after {
        return Err(Error::Config(format!(
            "{}: this node's certificate expired at {}: renew it with `xsock keys issue --renew {}`",
            path.display(),
            xsock_overlay::cert::date(b.not_after),
            path.display()
        )));
    }
    let mut trust = Trust::new(ca);
    if let Some(r) = revoked {
        let list = load_revocations(r)?;
        trust.adopt(list).map_err(|e| Error::Config(format!("{}: {e}", r.display())))?;
    }
    if trust.is_revoked(key.public()) {
        return Err(Error::Config(format!("{}: the CA revoked this node's key", path.display())));
    }
    Ok(Identity { key, cert: Some(c), trust: Some(trust) })
}

/// A revocation list file watched for changes (`xsock keys revoke`
/// rewrites it whole): a relay or bootstrap server takes the new list
/// without a restart.
#[derive(Debug)]
pub struct WatchedList {
    path: std::path::PathBuf,
    seen: Option<std::time::SystemTime>,
}

impl WatchedList {
    /// Watches `path` (read already at start: the next change counts).
    pub fn new(path: &Path) -> WatchedList {
        let seen = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        WatchedList { path: path.to_owned(), seen }
    }

    /// The list's bytes if the file changed since the last call.
    pub fn changed(&mut self) -> Option<Result<Vec<u8>, Error>> {
        let m = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok()?;
        if self.seen == Some(m) {
            return None;
        }
        self.seen = Some(m);
        Some(load_revocations(&self.path).map(|l| l.to_bytes()))
    }
}
