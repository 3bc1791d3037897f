//! The relay's bootstrap sessions, one reader thread per server: each hands
//! the directories its server pushes to the loop, and when the session is
//! lost registers again (same id) with backoff until the server answers.
//! The loop merges what every server last said, so a relay keeps relaying
//! with the last directory while every server is down.

use std::{
    io::Write,
    net::{SocketAddrV4, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use xsock::overlay::{Identity, Key, Registration, SecureParts, read_frames, register, session_clock};
use xsock_overlay::secure::{Opener, Sealer};
use xsock_overlay::wire::{Entry, Msg};

use super::shell::{Event, Notify};

/// The first retry after a lost session; it doubles up to 5 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Reads server `index` at `addr` for the life of the process, starting on
/// `first` (the session made at start) or registering anew. While the
/// session is up, its writing half is in `writers[index]` (the loop tells
/// the server of revocation lists through it).
pub fn spawn(
    index: usize,
    addr: SocketAddrV4,
    first: Option<SecureParts>,
    reg: Registration,
    (key, me, writers): (Key, Arc<Mutex<Identity>>, Writers),
    tx: Notify,
) {
    let _ = std::thread::Builder::new().name(format!("boot-{index}")).spawn(move || {
        let mut session = first;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let parts = match session.take() {
                Some(p) => p,
                // (A copy: the lock must not be held across the match.)
                None => match register(addr, &key, &identity(&me), &reg, Duration::from_secs(2)) {
                    Ok((s, _)) => {
                        log::info!("registered again with the bootstrap server {addr}");
                        backoff = FIRST_BACKOFF;
                        s.into_parts()
                    }
                    // Our certificate refused (revoked, expired): every
                    // server and relay will say the same; stop.
                    Err(e) if e.to_string().contains("your certificate") => {
                        tx.send(Event::Fatal { why: e.to_string() });
                        return;
                    }
                    Err(e) => {
                        log::debug!("bootstrap server {addr}: {e}; next try in {backoff:?}");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            let SecureParts { stream, sealer, opener, plain, .. } = parts;
            if let (Ok(w), Some(slot)) = (stream.try_clone(), lock(&writers).get_mut(index)) {
                *slot = Some((w, sealer));
            }
            // A server that restarted without the list learns it back.
            let list = identity(&me).trust.and_then(|t| t.revocations().map(|l| l.to_bytes()));
            if let Some(list) = list {
                tell(&writers, Some(index), &Msg::Revocations { list: &list }.to_frame());
            }
            let why = read(index, (stream, opener, plain), &tx);
            if let Some(slot) = lock(&writers).get_mut(index) {
                *slot = None;
            }
            tx.send(Event::BootLost { index, why });
            std::thread::sleep(backoff);
        }
    });
}

/// A copy of the shared identity (with the newest revocation list).
fn identity(me: &Mutex<Identity>) -> Identity {
    lock(me).clone()
}

/// The writing half of each bootstrap session that is up.
pub type Writers = Arc<Mutex<Vec<Option<(TcpStream, Sealer)>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seals `frame` to every bootstrap server whose session is up.
pub fn tell_all(writers: &Writers, frame: &[u8]) {
    tell(writers, None, frame);
}

/// Seals `frame` to server `only` (or every one) if its session is up.
fn tell(writers: &Writers, only: Option<usize>, frame: &[u8]) {
    let mut out = Vec::new();
    let mut all = lock(writers);
    let chosen = all.iter_mut().enumerate().filter(|(i, _)| only.is_none_or(|o| o == *i));
    for (w, sealer) in chosen.filter_map(|(_, s)| s.as_mut()) {
        out.clear();
        sealer.seal(session_clock(), frame, &mut out);
        if let Err(e) = w.write_all(&out) {
            log::debug!("telling a bootstrap server: {e}");
        }
    }
}

/// Hands every directory to the loop until the session ends; why it did.
fn read(index: usize, (mut stream, mut opener, plain): (TcpStream, Opener, Vec<u8>), tx: &Notify) -> String {
    read_frames(&mut stream, &mut opener, plain, |f| {
        match Msg::parse(f) {
            Ok(Msg::Directory { entries }) => tx.send(Event::Directory { index, entries }),
            Ok(Msg::Refused { reason }) => log::error!("the bootstrap server: {reason}"),
            Ok(Msg::Revocations { list }) => tx.send(Event::Revocations { list: list.to_vec() }),
            _ => {}
        }
        true
    })
}

/// One directory from what each server last said: every node any of them
/// lists, as the first server listing it says.
pub fn merge(dirs: &[Vec<Entry>]) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<Entry> = dirs.iter().flatten().filter(|e| seen.insert(e.node)).cloned().collect();
    out.sort_by_key(|e| e.node);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xsock_overlay::{NodeId, SiteId, wire::Role};

    fn entry(id: u64, name: &str) -> Entry {
        Entry {
            node: NodeId(id),
            role: Role::Endpoint,
            name: name.into(),
            site: SiteId(1),
            lan_ip: [10, 0, 0, 2].into(),
            wan: None,
            serve_port: 0,
            rank: None,
            ports: vec![],
            vaddr: Some([100, 64, 0, id as u8].into()),
        }
    }

    #[test]
    fn merged_directories_hold_every_node_once() {
        let a = vec![entry(1, "h1"), entry(2, "h2")];
        let b = vec![entry(2, "h2-as-b-says"), entry(3, "h3")];
        let m = merge(&[a, b, vec![]]);
        let names: Vec<&str> = m.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["h1", "h2", "h3"]);
    }
}

/// `--directory-cache FILE`: the merged directory, with our id and site,
/// written on every change, so that a relay started while every bootstrap
/// server is down still knows the other relays and the endpoints.
///
/// Format: `XSDC1\n`, our id and site (8 bytes each, big-endian), then the
/// directory as the overlay's own `Directory` frame (the parser every
/// relay already runs on what a server sends).
pub mod cache {
    use std::path::Path;

    use xsock_overlay::{
        NodeId, SiteId,
        wire::{Entry, Msg},
    };

    const MAGIC: &[u8] = b"XSDC1\n";

    /// Writes the cache whole (a crash leaves the old one, never half).
    pub fn save(path: &Path, me: NodeId, site: SiteId, entries: &[Entry]) -> std::io::Result<()> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&me.0.to_be_bytes());
        b.extend_from_slice(&site.0.to_be_bytes());
        b.extend_from_slice(&Msg::Directory { entries: entries.to_vec() }.to_frame());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &b)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads it back; the error says what is wrong with the file.
    pub fn load(path: &Path) -> Result<(NodeId, SiteId, Vec<Entry>), String> {
        let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |what: &str| format!("{} is not an xsock directory cache ({what}); delete it", path.display());
        let rest = b.strip_prefix(MAGIC).ok_or_else(|| bad("no header"))?;
        if rest.len() < 20 {
            return Err(bad("too short"));
        }
        let me = NodeId(u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")));
        let site = SiteId(u64::from_be_bytes(rest[8..16].try_into().expect("8 bytes")));
        let len = u32::from_be_bytes(rest[16..20].try_into().expect("4 bytes")) as usize;
        let frame = rest.get(20..20 + len).ok_or_else(|| bad("cut short"))?;
        match Msg::parse(frame) {
            Ok(Msg::Directory { entries }) if me.0 != 0 => Ok((me, site, entries)),
            _ => Err(bad("the directory does not parse")),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use xsock_overlay::wire::Role;

        #[test]
        fn round_trips_and_refuses_damage() {
            let dir = std::env::temp_dir().join(format!("xsock-dircache-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("relay.dir");
            let e = Entry {
                node: NodeId(5),
                role: Role::Relay,
                name: "hub-x0".into(),
                site: SiteId(9),
                lan_ip: [10, 1, 0, 2].into(),
                wan: Some("198.18.0.10:7402".parse().unwrap()),
                serve_port: 7401,
                rank: None,
                ports: vec![],
                vaddr: None,
            };
            save(&p, NodeId(1), SiteId(2), std::slice::from_ref(&e)).unwrap();
            assert_eq!(load(&p).unwrap(), (NodeId(1), SiteId(2), vec![e]));
            let mut b = std::fs::read(&p).unwrap();
            b.truncate(b.len() - 3);
            std::fs::write(&p, &b).unwrap();
            assert!(load(&p).unwrap_err().contains("delete it"));
            std::fs::write(&p, b"not a cache").unwrap();
            assert!(load(&p).unwrap_err().contains("no header"));
            assert!(load(&dir.join("missing")).is_err());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
