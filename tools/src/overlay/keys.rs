//! `xsock keys`: the cluster CA and node certificates. Run it where the CA
//! key lives (offline): `ca` makes the CA key, `issue` a node's
//! credentials file (a fresh static key, or a renewed certificate for the
//! key of an existing file), `revoke` adds keys to the revocation list,
//! `show` says what a file holds.
//!
//! ```text
//! xsock keys ca --out ca.key
//! xsock keys issue --ca ca.key --name site-a --role relay --days 365 --out site-a.node
//! xsock keys revoke --ca ca.key --list revoked.list site-a.node
//! xsock relay ... --cert site-a.node --revoked revoked.list
//! ```

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand, ValueEnum};
use xsock::overlay::{
    Role,
    keys::{ca_key_text, load_ca, load_node, load_revocations, node_text, revocations_text},
    unix_now,
};
use xsock_overlay::{
    cert::{CaKey, CertBody, from_hex},
    secure::{StaticKey, fingerprint},
};

use crate::fail::Fail;

/// `xsock keys`.
#[derive(Debug, Args)]
pub struct Keys {
    #[command(subcommand)]
    cmd: KeysCmd,
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Make the cluster CA key (keep it offline; it signs every node's certificate).
    Ca {
        /// Where to write it (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Make a node's credentials file: its static key and a certificate for it.
    Issue {
        /// The CA key file.
        #[arg(long)]
        ca: PathBuf,
        /// The node's name on the overlay (its --name).
        #[arg(long)]
        name: String,
        /// What it joins as.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Keep the key of this credentials file (a renewal); without it, a fresh key.
        #[arg(long)]
        renew: Option<PathBuf>,
        /// Where to write it (mode 0600; give it to the node with --cert).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Add node keys to the CA's revocation list (made if it does not exist).
    Revoke {
        /// The CA key file.
        #[arg(long)]
        ca: PathBuf,
        /// The revocation list file (given to relays and bootstrap servers with --revoked).
        #[arg(long)]
        list: PathBuf,
        /// Credentials files whose keys to revoke.
        nodes: Vec<PathBuf>,
        /// Static public keys to revoke (64 hex digits), when the file is gone.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Say what a CA key, credentials or revocation list file holds.
    Show {
        /// The file.
        file: PathBuf,
    },
}

/// A role as the flag takes it.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Relay,
    Endpoint,
    Boot,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Relay => Role::Relay,
            RoleArg::Endpoint => Role::Endpoint,
            RoleArg::Boot => Role::Boot,
        }
    }
}

/// Writes `text` to `path` whole or not at all (a temporary file renamed
/// over it), readable only by its owner when `secret`.
fn write_file(path: &Path, text: &str, secret: bool, replace: bool) -> Result<(), Fail> {
    if !replace && path.exists() {
        return Err(Fail::msg(format!("{} exists: give --force to replace it", path.display())));
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Fail::msg(format!("cannot write {}: {e}", path.display()))
    })
}

impl Keys {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        match self.cmd {
            KeysCmd::Ca { out, force } => {
                let ca = CaKey::generate().map_err(|e| Fail::msg(e.to_string()))?;
                write_file(&out, &ca_key_text(&ca), true, force)?;
                println!("CA {} written to {} (keep it offline)", fingerprint(&ca.public().0), out.display());
            }
            KeysCmd::Issue { ca, name, role, days, renew, out, force } => {
                let ca = load_ca(&ca)?;
                let key = match &renew {
                    Some(p) => load_node(p)?.0,
                    None => StaticKey::generate().map_err(|e| Fail::msg(e.to_string()))?,
                };
                let now = unix_now();
                let body = CertBody {
                    name,
                    role: role.into(),
                    key: key.public().try_into().expect("an X25519 key is 32 bytes"),
                    // Seconds since the epoch tell one issue from the next.
                    serial: now,
                    // A little slack for clocks a minute apart.
                    not_before: now.saturating_sub(300),
                    not_after: now.saturating_add(days.saturating_mul(86_400)),
                };
                let cert = ca.issue(body).map_err(|e| Fail::msg(e.to_string()))?;
                write_file(&out, &node_text(&key, &cert), true, force || renew.as_deref() == Some(&out))?;
                println!("{} written to {}", cert.describe(), out.display());
            }
            KeysCmd::Revoke { ca, list, nodes, keys } => {
                let ca = load_ca(&ca)?;
                let held = if list.exists() { Some(load_revocations(&list)?) } else { None };
                let mut add = Vec::new();
                for p in &nodes {
                    add.push(load_node(p)?.1.body.key);
                }
                for k in &keys {
                    let b = from_hex(k).map_err(|e| Fail::msg(format!("--key {k}: {e}")))?;
                    add.push(b.try_into().map_err(|_| Fail::msg(format!("--key {k}: a key is 64 hex digits")))?);
                }
                if add.is_empty() {
                    return Err(Fail::msg("name the keys to revoke: credentials files, or --key HEX"));
                }
                let next = ca.revoke(held.as_ref(), &add, unix_now()).map_err(|e| Fail::msg(e.to_string()))?;
                write_file(&list, &revocations_text(&next), false, true)?;
                println!(
                    "revocation list number {} ({} keys) written to {}: give it to relays and bootstrap servers with --revoked",
                    next.seq,
                    next.keys.len(),
                    list.display()
                );
            }
            KeysCmd::Show { file } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| Fail::msg(format!("cannot read {}: {e}", file.display())))?;
                if text.contains("\nca-key ") || text.starts_with("ca-key ") {
                    println!("CA key {}", fingerprint(&load_ca(&file)?.public().0));
                } else if text.contains("\nrevocations ") {
                    print!("{}", revocations_text(&load_revocations(&file)?));
                } else {
                    let (key, cert, _) = load_node(&file)?;
                    println!("{} (key {} is this file's)", cert.describe(), fingerprint(key.public()));
                }
            }
        }
        Ok(())
    }
}
