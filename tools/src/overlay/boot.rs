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
    time::{Duration, Instant},
};

use clap::Args;
use crossbeam_channel::{Receiver, Sender, unbounded};
use xsock::overlay::{Identity, Key, Peer, Role, SecureParts, SecureTcp, load_identity, read_frames, session_clock};
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
}

enum Event {
    Joined(SessionId, TcpStream, Box<Sealer>, Ipv4Addr, Peer),
    Frame(SessionId, Vec<u8>),
    Closed(SessionId),
}

impl Boot {
    /// Runs until killed.
    pub fn run(self) -> Result<(), Fail> {
        let key = key_from(self.key_file.as_deref())?;
        let me = load_identity(self.cert.as_deref(), self.revoked.as_deref(), Role::Boot, None)?;
        let listener = TcpListener::bind(self.listen).map_err(|e| {
            Fail::msg(format!("cannot listen on {}: {e} (is the address on this host, the port free?)", self.listen))
        })?;
        log::info!("bootstrap server listening on {}", self.listen);
        let (tx, rx) = unbounded();
        std::thread::Builder::new().name("boot-accept".into()).spawn(move || accept_loop(listener, (key, me), tx))?;
        serve(rx);
        Ok(())
    }
}

fn accept_loop(listener: TcpListener, cred: (Key, Identity), tx: Sender<Event>) {
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

fn session_loop(session: SessionId, s: TcpStream, (key, me): (Key, Identity), tx: Sender<Event>) {
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
    let SecureParts { mut stream, sealer, mut opener, plain } = st.into_parts();
    let Ok(writer) = stream.try_clone() else { return };
    if tx.send(Event::Joined(session, writer, Box::new(sealer), *from.ip(), peer.clone())).is_err() {
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

fn serve(rx: Receiver<Event>) {
    let mut reg = Registry::new();
    let mut sessions: HashMap<SessionId, (TcpStream, Box<Sealer>, Ipv4Addr, Peer)> = HashMap::new();
    let mut out = Vec::new();
    while let Ok(ev) = rx.recv() {
        match ev {
            Event::Joined(id, w, sealer, ip, peer) => {
                sessions.insert(id, (w, sealer, ip, peer));
            }
            Event::Frame(id, f) => {
                let Some((w, sealer, ip, peer)) = sessions.get_mut(&id) else { continue };
                let name = &peer.name;
                // A node registers as what it proved at the handshake (its
                // certificate's name and role, where there are certificates).
                let as_proved = match Msg::parse(&f) {
                    Ok(Msg::Register { role, name, .. }) if role != peer.role || name != peer.name => Err(format!(
                        "registering as the {role:?} {name:?} after the handshake as the {:?} {:?}",
                        peer.role, peer.name
                    )),
                    _ => Ok(()),
                };
                if let Err(reason) = as_proved.and_then(|()| reg.handle_message(id, *ip, &f)) {
                    log::warn!("refused {ip} ({name}): {reason}");
                    out.clear();
                    sealer.seal(session_clock(), &Msg::Refused { reason: &reason }.to_frame(), &mut out);
                    let _ = w.write_all(&out);
                    let _ = w.shutdown(std::net::Shutdown::Both);
                } else if let Ok(Msg::Register { role, name, .. }) = Msg::parse(&f) {
                    log::info!("{role:?} {name} registered from {ip}");
                }
            }
            Event::Closed(id) => {
                sessions.remove(&id);
                if let Some(e) = reg.handle_session_closed(id) {
                    log::info!("{:?} {} ({}) left", e.role, e.name, e.node);
                }
            }
        }
        while let Some((id, frame)) = reg.poll_transmit() {
            if let Some((w, sealer, ip, Peer { name, .. })) = sessions.get_mut(&id) {
                out.clear();
                sealer.seal(session_clock(), &frame, &mut out);
                if let Err(e) = w.write_all(&out) {
                    log::warn!("{ip} ({name}): {e}");
                }
            }
        }
    }
}
