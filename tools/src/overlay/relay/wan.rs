//! Relay links: kernel TCP between relays, each an encrypted Noise session
//! (`SecureTcp`). Dialling, accepting, the handshake (the session, then
//! each side's `Registered{node, site}` as its identity inside it).

use std::{
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use xsock::overlay::{Identity, Key, Role, SecureParts, SecureTcp, recv_frame, send_msg};
use xsock_overlay::{NodeId, SiteId, wire::Msg};

use super::shell::{Event, Notify};

/// Who we are on relay links.
#[derive(Debug, Clone)]
pub struct Ident {
    pub key: Key,
    /// Our certified key, and the CA peers are checked against (or this
    /// process's key, without certificates).
    pub identity: Arc<Mutex<Identity>>,
    pub me: NodeId,
    pub site: SiteId,
    pub name: String,
    /// Relay links refused at the handshake (wrong key, stranger, old
    /// protocol), for the metrics.
    pub refused: Arc<AtomicU64>,
}

/// The session on `s`, then the identities: the peer relay's id and name.
fn handshake(s: TcpStream, id: &Ident, dialled: bool) -> Result<(SecureParts, NodeId, String), String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    // The newest revocation list the loop took applies.
    let me = id.identity.lock().map_err(|_| "the identity lock is poisoned".to_owned())?.clone();
    let mut st = if dialled {
        SecureTcp::connect(s, &id.key, &me, Role::Relay, &id.name, deadline)
    } else {
        SecureTcp::accept(s, &id.key, &me, Role::Relay, &id.name, deadline)
    }
    .map_err(|e| e.to_string())?;
    let peer = st.peer().clone();
    if peer.role != Role::Relay {
        return Err(format!("{} is a {:?}, not a relay", peer.name, peer.role));
    }
    let me = Msg::Registered {
        node: id.me,
        site: id.site,
        vaddr: None,
        vnet: std::net::Ipv4Addr::UNSPECIFIED,
        vnet_prefix: 0,
    };
    send_msg(&mut st, &me).map_err(|e| e.to_string())?;
    let f = recv_frame(&mut st, deadline).map_err(|e| e.to_string())?;
    match Msg::parse(&f) {
        Ok(Msg::Registered { node, .. }) if node != id.me => {
            log::debug!("relay {} ({node}) holds key {}", peer.name, st.peer_key());
            Ok((st.into_parts(), node, peer.name))
        }
        _ => Err("no identity after the handshake".into()),
    }
}

/// Accepts relay links until the process ends.
pub fn spawn_accept(listener: TcpListener, id: Ident, tx: Notify) {
    let _ = std::thread::Builder::new().name("wan-accept".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(s) = conn else { continue };
            let (id, tx) = (id.clone(), tx.clone());
            let _ = std::thread::Builder::new().name("wan-hs".into()).spawn(move || {
                let from = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                match handshake(s, &id, false) {
                    Ok((session, peer, name)) => {
                        tx.send(Event::LinkUp { session: Box::new(session), peer, name, initiated: false })
                    }
                    Err(e) => {
                        id.refused.fetch_add(1, Ordering::Relaxed);
                        log::warn!("refused a relay link from {from}: {e}")
                    }
                }
            });
        }
    });
}

/// Dials relay `peer` at `addr` once.
pub fn spawn_dial(addr: SocketAddrV4, peer: NodeId, id: Ident, tx: Notify) {
    let _ = std::thread::Builder::new().name("wan-dial".into()).spawn(move || {
        let r = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1))
            .map_err(|e| format!("cannot reach {addr}: {e}"))
            .and_then(|s| handshake(s, &id, true));
        match r {
            Ok((session, p, name)) if p == peer => {
                tx.send(Event::LinkUp { session: Box::new(session), peer: p, name, initiated: true })
            }
            Ok((_, p, name)) => {
                tx.send(Event::DialFailed { peer, why: format!("{addr} is relay {name} ({p}), not {peer}") })
            }
            Err(why) => tx.send(Event::DialFailed { peer, why }),
        }
    });
}
