//! `xsock boot --listen IP:PORT --key-file F`: the rendezvous point. Nodes
//! open an encrypted session (Noise, the cluster key as psk) and register;
//! relays get the directory pushed on every change; endpoints resolve
//! names and ranks. One thread per session reads and opens; one thread
//! owns the registry and seals and writes.

use std::{
    collections::HashMap,
    io::Write,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Args;
use crossbeam_channel::{Receiver, Sender, unbounded};
use xsock::overlay::{
    Identity, Key, Peer, Role, SecureParts, SecureTcp, keys::WatchedList, load_identity, read_frames, session_clock,
};
use xsock_overlay::{
    registry::{Registry, SessionId},
    secure::Sealer,
    wire::Msg,
};

use super::key_from;
use crate::fail::Fail;

/// `xsock boot`.
#[derive(Debug, Args)]
pub struct Boot {
    /// Address to listen on (the one address every node is configured with).
    #[arg(long)]
    listen: SocketAddrV4,
    /// The cluster key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// This server's credentials file (`xsock keys issue --role boot`): in
    /// a cluster with node certificates, every node that registers must
    /// show one from the same CA.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The CA's revocation list (`xsock keys revoke`; needs --cert).
    #[arg(long)]
    revoked: Option<PathBuf>,
    /// The virtual network endpoints get their addresses from (programs
    /// under the preload connect to them; independent of the LANs' own
    /// addresses). Give every bootstrap server the same one.
    #[arg(long, value_name = "NET/PREFIX", default_value = "100.64.0.0/16", value_parser = parse_vnet)]
    vnet: (Ipv4Addr, u8),
    /// Keep the virtual address leases in this file (ADDRESS NAME lines, a
    /// hosts file), written on every new lease and read at start: a
    /// restarted server gives every name its address back.
    #[arg(long, value_name = "FILE")]
    leases: Option<PathBuf>,
}

/// The leases a previous run kept in `path` (none if it does not exist).
fn read_leases(path: &std::path::Path) -> Result<Vec<(Ipv4Addr, String)>, Fail> {
    match std::fs::read_to_string(path) {
        Ok(text) => xsock_overlay::registry::parse_leases(&text)
            .map_err(|e| Fail::msg(format!("{}: {e} (fix or remove the file)", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Fail::msg(format!("cannot read the leases file {}: {e}", path.display()))),
    }
}

/// Writes the leases whole (a temporary file renamed over the old one, so
/// a crash leaves one or the other).
fn write_leases(path: &std::path::Path, reg: &Registry) {
    let tmp = path.with_extension("tmp");
    let text = xsock_overlay::registry::format_leases(&reg.leases());
    let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        log::warn!("cannot write the leases file {}: {e}; a restart would hand out new addresses", path.display());
    }
}

/// `A.B.C.D/P`, checked as [`Registry::with_vnet`] checks it.
fn parse_vnet(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (net, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?}: give a network as A.B.C.D/PREFIX"))?;
    let net: Ipv4Addr = net.parse().map_err(|e| format!("{net:?}: {e}"))?;
    let prefix: u8 = prefix.parse().map_err(|e| format!("prefix {prefix:?}: {e}"))?;
    Registry::with_vnet(net, prefix)?;
    Ok((net, prefix))
}

enum Event {
    /// A session is up: its writer, sealer, address, peer and static key.
    Joined(SessionId, TcpStream, Box<Sealer>, Ipv4Addr, Peer, Vec<u8>),
    /// The revocation list file changed: its bytes.
    Revocations(Vec<u8>),
    Frame(SessionId, Vec<u8>),
    Closed(SessionId),
}

impl Boot {
    /// Runs until killed.
    pub fn run(self) -> Result<(), Fail> {
        let key = key_from(self.key_file.as_deref())?;
        let me = load_identity(self.cert.as_deref(), self.revoked.as_deref(), Role::Boot, None)?;
        let mut reg = Registry::with_vnet(self.vnet.0, self.vnet.1).map_err(Fail::msg)?;
        if let Some(path) = &self.leases {
            let skipped = reg.restore_leases(read_leases(path)?);
            for (ip, name) in &skipped {
                log::warn!("{}: skipped the lease of {ip} to {name} (outside --vnet, or a duplicate)", path.display());
            }
            log::info!("took back {} leases from {}", reg.leases().len(), path.display());
        }
        let listener = TcpListener::bind(self.listen).map_err(|e| {
            Fail::msg(format!("cannot listen on {}: {e} (is the address on this host, the port free?)", self.listen))
        })?;
        log::info!(
            "bootstrap server listening on {}; endpoints' virtual addresses from {}/{}",
            self.listen,
            self.vnet.0,
            self.vnet.1
        );
        let (tx, rx) = unbounded();
        let me = Arc::new(Mutex::new(me));
        if let Some(path) = self.revoked.clone() {
            let tx = tx.clone();
            std::thread::Builder::new().name("boot-revoked".into()).spawn(move || {
                let mut w = WatchedList::new(&path);
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    match w.changed() {
                        Some(Ok(list)) if tx.send(Event::Revocations(list.clone())).is_err() => return,
                        Some(Err(e)) => log::warn!("{e}"),
                        _ => {}
                    }
                }
            })?;
        }
        let shared = me.clone();
        std::thread::Builder::new().name("boot-accept".into()).spawn(move || accept_loop(listener, (key, me), tx))?;
        serve(rx, &shared, reg, self.leases.as_deref());
        Ok(())
    }
}

fn accept_loop(listener: TcpListener, cred: (Key, Arc<Mutex<Identity>>), tx: Sender<Event>) {
    let mut next: SessionId = 1;
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let session = next;
        next += 1;
        let (cred, tx) = (cred.clone(), tx.clone());
        let _ = std::thread::Builder::new()
            .name(format!("boot-s{session}"))
            .spawn(move || session_loop(session, s, cred, tx));
    }
}

fn session_loop(session: SessionId, s: TcpStream, (key, me): (Key, Arc<Mutex<Identity>>), tx: Sender<Event>) {
    // The newest revocation list taken applies.
    let Ok(me) = me.lock().map(|m| m.clone()) else { return };
    let from = match s.peer_addr() {
        Ok(SocketAddr::V4(a)) => a,
        _ => return,
    };
    let _ = s.set_nodelay(true);
    // With a certificate the server goes by its certificate's name.
    let name = me.cert.as_ref().map_or("boot", |c| c.body.name.as_str());
    let st = match SecureTcp::accept(s, &key, &me, Role::Boot, name, Instant::now() + Duration::from_secs(5)) {
        Ok(st) => st,
        Err(e) => {
            log::warn!("refused {from}: {e}");
            return;
        }
    };
    let peer = st.peer().clone();
    log::debug!("{from} ({}) holds key {}", peer.name, st.peer_key());
    let SecureParts { mut stream, sealer, mut opener, plain, remote_static } = st.into_parts();
    let Ok(writer) = stream.try_clone() else { return };
    if tx.send(Event::Joined(session, writer, Box::new(sealer), *from.ip(), peer.clone(), remote_static)).is_err() {
        return;
    }
    let why = read_frames(&mut stream, &mut opener, plain, |f| tx.send(Event::Frame(session, f.to_vec())).is_ok());
    if why.contains("broke") {
        log::warn!("{from} ({}): {why}; closing its session", peer.name);
    } else {
        log::debug!("{from} ({}): {why}", peer.name);
    }
    let _ = tx.send(Event::Closed(session));
}

/// A node's session, as the registry loop holds it.
struct Session {
    w: TcpStream,
    sealer: Box<Sealer>,
    ip: Ipv4Addr,
    peer: Peer,
    key: Vec<u8>,
}

impl Session {
    fn send(&mut self, frame: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        out.clear();
        self.sealer.seal(session_clock(), frame, out);
        self.w.write_all(out)
    }

    /// Tells the node why, and ends its session (its reader reports it
    /// closed, and the registry forgets it).
    fn refuse(&mut self, reason: &str, out: &mut Vec<u8>) {
        log::warn!("refused {} ({}): {reason}", self.ip, self.peer.name);
        let _ = self.send(&Msg::Refused { reason }.to_frame(), out);
        let _ = self.w.shutdown(std::net::Shutdown::Both);
    }
}

/// Takes `list` (from `whence`) if it is a newer list of our CA: ends the
/// sessions of the keys it names and hands it to every relay.
fn take_revocations(
    list: &[u8],
    whence: &str,
    me: &Mutex<Identity>,
    sessions: &mut HashMap<SessionId, Session>,
    out: &mut Vec<u8>,
) {
    let taken = match me.lock() {
        Ok(mut m) => match &mut m.trust {
            Some(t) => xsock_overlay::cert::Revocations::parse(list).and_then(|l| t.adopt(l)),
            None => Ok(false),
        },
        Err(_) => Ok(false),
    };
    match taken {
        Ok(true) => {
            let frame = Msg::Revocations { list }.to_frame();
            let trust = me.lock().ok().and_then(|m| m.trust.clone());
            log::info!("took a new revocation list from {whence}; telling the relays");
            for s in sessions.values_mut() {
                if trust.as_ref().is_some_and(|t| t.is_revoked(&s.key)) {
                    s.refuse("the CA revoked your key", out);
                } else if s.peer.role == Role::Relay {
                    let _ = s.send(&frame, out);
                }
            }
        }
        Ok(false) => {}
        Err(e) => log::warn!("the revocation list from {whence} was not taken: {e}"),
    }
}

/// Events taken at most before the answers go out.
const BATCH: usize = 1024;

/// The registry loop's sessions and state, as one event changes them.
struct Registrar<'a> {
    me: &'a Mutex<Identity>,
    sessions: HashMap<SessionId, Session>,
    reg: Registry,
    out: Vec<u8>,
}

impl Registrar<'_> {
    /// Takes one event; returns the relay that just registered, if any
    /// (it gets the revocation list after its answer).
    fn take(&mut self, ev: Event) -> Option<SessionId> {
        let Registrar { me, sessions, reg, out } = self;
        match ev {
            Event::Joined(id, w, sealer, ip, peer, key) => {
                sessions.insert(id, Session { w, sealer, ip, peer, key });
            }
            Event::Revocations(list) => take_revocations(&list, "--revoked", me, sessions, out),
            Event::Frame(id, f) => {
                let msg = Msg::parse(&f);
                // A relay passes on a list it took (from its links or file).
                if let Ok(Msg::Revocations { list }) = &msg {
                    let whence = sessions.get(&id).map(|s| format!("relay {}", s.peer.name)).unwrap_or_default();
                    take_revocations(list, &whence, me, sessions, out);
                    return None;
                }
                let s = sessions.get_mut(&id)?;
                // A node registers as what it proved at the handshake (its
                // certificate's name and role, where there are certificates).
                let as_proved = match &msg {
                    Ok(Msg::Register { role, name, .. }) if *role != s.peer.role || *name != s.peer.name => {
                        Err(format!(
                            "registering as the {role:?} {name:?} after the handshake as the {:?} {:?}",
                            s.peer.role, s.peer.name
                        ))
                    }
                    _ => Ok(()),
                };
                if let Err(reason) = as_proved.and_then(|()| reg.handle_message(id, s.ip, &f)) {
                    s.refuse(&reason, out);
                } else if let Ok(Msg::Register { role, name, .. }) = msg {
                    log::info!("{role:?} {name} registered from {}", s.ip);
                    return (role == Role::Relay).then_some(id);
                }
            }
            Event::Closed(id) => {
                sessions.remove(&id);
                if let Some(e) = reg.handle_session_closed(id) {
                    log::info!("{:?} {} ({}) left", e.role, e.name, e.node);
                }
            }
        }
        None
    }
}

fn serve(rx: Receiver<Event>, me: &Mutex<Identity>, reg: Registry, leases: Option<&std::path::Path>) {
    let mut st = Registrar { me, sessions: HashMap::new(), reg, out: Vec::new() };
    // The list relays get (the newest taken), as bytes.
    let list_of = |me: &Mutex<Identity>| {
        me.lock().ok().and_then(|m| m.trust.as_ref().and_then(|t| t.revocations()).map(|l| l.to_bytes()))
    };
    while let Ok(first) = rx.recv() {
        // What else waits is taken before anyone is answered: a storm of
        // joins then costs each relay one directory (the registry pushes
        // it once per drain), not one per join.
        let tell: Vec<SessionId> =
            std::iter::once(first).chain(rx.try_iter().take(BATCH - 1)).filter_map(|ev| st.take(ev)).collect();
        let Registrar { sessions, reg, out, .. } = &mut st;
        while let Some((id, frame)) = reg.poll_transmit() {
            if let Some(s) = sessions.get_mut(&id)
                && let Err(e) = s.send(&frame, out)
            {
                log::warn!("{} ({}): {e}", s.ip, s.peer.name);
            }
        }
        if let Some(list) = if tell.is_empty() { None } else { list_of(me) } {
            let frame = Msg::Revocations { list: &list }.to_frame();
            for id in &tell {
                if let Some(s) = sessions.get_mut(id) {
                    let _ = s.send(&frame, out);
                }
            }
        }
        if reg.take_leases_changed()
            && let Some(path) = leases
        {
            write_leases(path, reg);
        }
    }
}
