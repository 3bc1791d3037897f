//! A node's sessions with its bootstrap servers (`--boot A,B,C`): no single
//! point of failure. The node registers with every server under the id it
//! drew for itself, asks the first one that answers, and registers again
//! with a server that comes back. Running virtual connections never touch
//! a bootstrap server, so they outlive all of them.

use std::{
    net::{SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use xsock_overlay::{
    NodeId, SiteId,
    auth::Key,
    secure::Identity,
    wire::{Msg, Role},
};

use super::{
    io::{recv_frame, send_msg},
    secure::SecureTcp,
};
use crate::Error;

/// What a node says when it registers (the same at every server).
#[derive(Debug, Clone)]
pub struct Registration {
    /// The id the node drew for itself.
    pub node: NodeId,
    /// Relay or endpoint.
    pub role: Role,
    /// Its unique name.
    pub name: String,
    /// Its LAN address and prefix.
    pub lan_ip: std::net::Ipv4Addr,
    /// The prefix length of its LAN.
    pub prefix: u8,
    /// Relays: where other relays may dial it.
    pub wan: Option<SocketAddrV4>,
    /// Relays: the LAN port endpoints open VCs on.
    pub serve_port: u16,
    /// A launcher rank.
    pub rank: Option<u32>,
    /// Endpoints: the virtual address to ask for (`--vaddr`; after the
    /// first server answered, the one it gave).
    pub vaddr: Option<std::net::Ipv4Addr>,
}

/// Where a server put a node: its site, and (endpoints) its virtual
/// address and the virtual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The node's site.
    pub site: SiteId,
    /// Its virtual address (endpoints).
    pub vaddr: Option<std::net::Ipv4Addr>,
    /// The virtual network and its prefix length.
    pub vnet: (std::net::Ipv4Addr, u8),
}

impl Registration {
    /// A fresh random id (never 0).
    pub fn fresh_id() -> NodeId {
        loop {
            let b = super::io::fresh_nonce();
            let id = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            if id != 0 {
                return NodeId(id);
            }
        }
    }
}

/// Connects to the server at `addr`, opens the encrypted session and
/// registers: the session and the site the server put us in.
pub fn register(
    addr: SocketAddrV4,
    key: &Key,
    me: &Identity,
    reg: &Registration,
    timeout: Duration,
) -> Result<(SecureTcp, Placement), Error> {
    let deadline = Instant::now() + timeout;
    let tcp = TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| {
        Error::Overlay(format!("cannot reach the bootstrap server at {addr}: {e} (is `xsock boot` running there?)"))
    })?;
    tcp.set_nodelay(true).map_err(Error::Io)?;
    let mut s = SecureTcp::connect(tcp, key, me, reg.role, &reg.name, deadline).map_err(|e| match e {
        // Kept apart: a server too busy to answer in time is asked again.
        Error::TimedOut(m) => Error::TimedOut(format!("bootstrap server {addr}: {m}")),
        e => Error::Overlay(format!("bootstrap server {addr}: {e}")),
    })?;
    if s.peer().role != Role::Boot {
        return Err(Error::Overlay(format!("{addr} is a {:?}, not a bootstrap server", s.peer().role)));
    }
    let msg = Msg::Register {
        node: reg.node,
        role: reg.role,
        name: &reg.name,
        lan_ip: reg.lan_ip,
        prefix: reg.prefix,
        wan: reg.wan,
        serve_port: reg.serve_port,
        rank: reg.rank,
        vaddr: reg.vaddr,
    };
    send_msg(&mut s, &msg)?;
    // Its verdict on our certificate comes first, if it refuses it.
    let reply = recv_frame(&mut s, deadline).map_err(|e| match e {
        Error::Overlay(m) => Error::Overlay(format!("bootstrap server {addr}: {m}")),
        Error::TimedOut(m) => Error::TimedOut(format!("bootstrap server {addr}: {m}")),
        e => e,
    })?;
    match Msg::parse(&reply).map_err(|e| Error::Protocol(e.to_string()))? {
        Msg::Registered { node, site, vaddr, vnet, vnet_prefix } if node == reg.node => {
            Ok((s, Placement { site, vaddr, vnet: (vnet, vnet_prefix) }))
        }
        Msg::Registered { node, .. } => {
            Err(Error::Protocol(format!("bootstrap server {addr} registered us as {node}, not {}", reg.node)))
        }
        Msg::Refused { reason } => Err(Error::Overlay(format!("bootstrap server {addr} refused us: {reason}"))),
        _ => Err(Error::Protocol(format!("bootstrap server {addr}: unexpected answer to Register"))),
    }
}

/// One server's session, or why there is none and when to try again.
struct Session {
    addr: SocketAddrV4,
    conn: Option<SecureTcp>,
    next_try: Instant,
    backoff: Duration,
    why: String,
}

/// The sessions of an endpoint, one per server.
pub struct Boots {
    key: Key,
    me: Identity,
    reg: Registration,
    timeout: Duration,
    sessions: Vec<Session>,
}

impl std::fmt::Debug for Boots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boots").field("servers", &self.sessions.iter().map(|s| s.addr).collect::<Vec<_>>()).finish()
    }
}

/// The first retry after a lost session; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Tries of a server that is reachable but too slow to answer, while no
/// server has taken us yet.
const SLOW_TRIES: u32 = 4;

impl Boots {
    /// Registers with every server of `addrs`; fails only if none takes us
    /// (with each one's reason). The placement is the first server's; the
    /// others are asked for the same virtual address.
    pub fn register_all(
        addrs: &[SocketAddrV4],
        key: &Key,
        me: &Identity,
        mut reg: Registration,
        timeout: Duration,
    ) -> Result<(Boots, Placement), Error> {
        if addrs.is_empty() {
            return Err(Error::Config("no bootstrap server given: --boot IP:PORT[,IP:PORT...]".into()));
        }
        let mut site = None;
        let mut sessions = Vec::new();
        let mut refused = None;
        for &addr in addrs {
            // A server that took the connection but did not answer in time
            // is busy (a thousand nodes joining at once), not gone: until
            // one server has taken us, ask it again a few times.
            let mut tries = 1;
            let first = loop {
                let r = register(addr, key, me, &reg, timeout);
                match &r {
                    Err(e @ Error::TimedOut(_)) if site.is_none() && tries < SLOW_TRIES => {
                        log::warn!("{e}; the server is busy, asking again ({} of {SLOW_TRIES})", tries + 1);
                        std::thread::sleep(FIRST_BACKOFF * tries);
                        tries += 1;
                    }
                    _ => break r,
                }
            };
            let (conn, why) = match first {
                Ok((s, placed)) => {
                    let got = placed.site;
                    match site {
                        None => {
                            site = Some(placed);
                            reg.vaddr = reg.vaddr.or(placed.vaddr);
                        }
                        Some(Placement { site: first, .. }) if first != got => log::warn!(
                            "bootstrap server {addr} puts us in {got}, the first one in {first}: do both see this \
                             LAN's traffic from the same address?"
                        ),
                        Some(_) => {}
                    }
                    (Some(s), String::new())
                }
                Err(e) => {
                    if is_refusal(&e) {
                        // A refusal (a taken name, a wrong key, a bad
                        // certificate) is the same at every server: say
                        // it, do not fail over.
                        refused.get_or_insert(e.to_string());
                    }
                    log::warn!("{e}; registering there again when it answers");
                    (None, e.to_string())
                }
            };
            sessions.push(Session {
                addr,
                conn,
                next_try: Instant::now() + FIRST_BACKOFF,
                backoff: FIRST_BACKOFF,
                why,
            });
        }
        if let Some(why) = refused {
            return Err(Error::Overlay(why));
        }
        let Some(site) = site else {
            let whys: Vec<String> = sessions.iter().map(|s| s.why.clone()).collect();
            return Err(Error::Overlay(format!("no bootstrap server took us: {}", whys.join("; "))));
        };
        Ok((Boots { key: key.clone(), me: me.clone(), reg, timeout, sessions }, site))
    }

    /// Our id.
    pub fn node(&self) -> NodeId {
        self.reg.node
    }

    /// The servers, and which are up.
    pub fn servers(&self) -> Vec<(SocketAddrV4, bool)> {
        self.sessions.iter().map(|s| (s.addr, s.conn.is_some())).collect()
    }

    fn lost(s: &mut Session, why: String) {
        log::warn!("lost the bootstrap server {}: {why}", s.addr);
        s.conn = None;
        s.why = why;
        s.backoff = FIRST_BACKOFF;
        s.next_try = Instant::now() + s.backoff;
    }

    /// `msg`, answered by the first server that answers.
    pub fn request(&mut self, msg: &Msg<'_>) -> Result<Vec<u8>, Error> {
        let timeout = self.timeout;
        for s in &mut self.sessions {
            let Some(conn) = &mut s.conn else { continue };
            let deadline = Instant::now() + timeout;
            match send_msg(conn, msg).and_then(|_| recv_frame(conn, deadline)) {
                Ok(reply) => return Ok(reply),
                Err(e) => Self::lost(s, e.to_string()),
            }
        }
        let whys: Vec<String> = self.sessions.iter().map(|s| format!("{}: {}", s.addr, s.why)).collect();
        Err(Error::Overlay(format!(
            "no bootstrap server answers ({}); running connections are unaffected, new ones need a server",
            whys.join("; ")
        )))
    }

    /// Sends `msg` to every server that is up (no answer expected).
    pub fn tell_all(&mut self, msg: &Msg<'_>) -> Result<(), Error> {
        let mut told = false;
        for s in &mut self.sessions {
            let Some(conn) = &mut s.conn else { continue };
            match send_msg(conn, msg) {
                Ok(()) => told = true,
                Err(e) => Self::lost(s, e.to_string()),
            }
        }
        if told { Ok(()) } else { Err(Error::Overlay("no bootstrap server is up to tell".into())) }
    }

    /// Notices servers that closed their session (without blocking), and
    /// registers again with those whose retry time has come; a server taken
    /// back also learns `ports`. Returns how many came back.
    pub fn revive(&mut self, ports: &[u16]) -> usize {
        let mut back = 0;
        for s in &mut self.sessions {
            if let Some(conn) = &s.conn
                && let Some(why) = closed(conn.tcp())
            {
                Self::lost(s, why);
            }
            if s.conn.is_some() || Instant::now() < s.next_try {
                continue;
            }
            match register(s.addr, &self.key, &self.me, &self.reg, self.timeout.min(Duration::from_secs(1))) {
                Ok((mut conn, _)) => {
                    if !ports.is_empty() && send_msg(&mut conn, &Msg::Ports { ports: ports.to_vec() }).is_err() {
                        continue;
                    }
                    log::info!("registered again with the bootstrap server {}", s.addr);
                    s.conn = Some(conn);
                    s.why.clear();
                    back += 1;
                }
                Err(e) => {
                    s.why = e.to_string();
                    s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                    s.next_try = Instant::now() + s.backoff;
                }
            }
        }
        back
    }
}

/// Whether `e` is a server's refusal of us (the same at every server, and
/// again on a retry): a taken name, another cluster key, a certificate.
pub fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Overlay(m) if m.contains("refused us") || m.contains("cluster key") || m.contains("certificate"))
}

/// Whether the peer closed `s` (EOF or an error pending), without waiting.
fn closed(s: &TcpStream) -> Option<String> {
    if s.set_nonblocking(true).is_err() {
        return None;
    }
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => Some("the server closed the session".into()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that takes the connection and never answers is asked
    /// again (busy, not gone), then the join fails with one clear line; a
    /// server nobody listens at is not asked again.
    #[test]
    fn a_silent_server_is_asked_again_and_a_closed_port_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(silent) = listener.local_addr().unwrap() else { unreachable!() };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let held = std::thread::spawn(move || {
            let mut conns = Vec::new();
            listener.set_nonblocking(true).unwrap();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => conns.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            conns.len()
        });
        let key = Key::from_file_contents(b"a cluster key of more than enough bytes").unwrap();
        let me = super::super::Identity::plain(super::super::process_key().clone());
        let reg = Registration {
            node: Registration::fresh_id(),
            role: Role::Endpoint,
            name: "n".into(),
            lan_ip: std::net::Ipv4Addr::LOCALHOST,
            prefix: 8,
            wan: None,
            serve_port: 0,
            rank: None,
            vaddr: None,
        };
        let timeout = Duration::from_millis(150);
        let t = Instant::now();
        let Err(e) = Boots::register_all(&[silent], &key, &me, reg.clone(), timeout) else { panic!("registered") };
        assert!(e.to_string().contains("no bootstrap server took us"), "{e}");
        assert!(t.elapsed() >= timeout * SLOW_TRIES, "asked {SLOW_TRIES} times: {:?}", t.elapsed());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(held.join().unwrap(), SLOW_TRIES as usize, "one connection per try");
        // Nobody listens: refused at once, no second try.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let std::net::SocketAddr::V4(a) = l.local_addr().unwrap() else { unreachable!() };
            a
        };
        let t = Instant::now();
        let Err(e) = Boots::register_all(&[closed], &key, &me, reg, timeout) else { panic!("registered") };
        assert!(e.to_string().contains("cannot reach"), "{e}");
        assert!(t.elapsed() < timeout, "{:?}", t.elapsed());
    }
}
