//! The engine's node on the overlay (`xsock engine --boot ... --name ...`):
//! one node, with a session to every relay of its LAN, for every process
//! on the host. A process connects to a node's virtual address (leased by
//! the bootstrap servers, `xsock engine --hosts`) as to any IPv4 address;
//! the engine resolves it and opens a
//! virtual connection with one `Open` per hop, or, for a node of this LAN,
//! connects to it directly. A listener's port takes virtual connections
//! beside the LAN's own.
//!
//! Resolving and opening wait on the bootstrap server and the far end, so
//! they run on a thread of their own per connect; the result comes back
//! to the loop through a channel and an eventfd the poller watches.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        mpsc::{Receiver, Sender, channel},
    },
    time::{Duration, Instant},
};

use xsock::{
    Error, Stream,
    overlay::{Node, NodeId},
};
use xsock_nic::sys::EventFd;

/// Where a virtual address leads.
pub(crate) enum Route {
    /// A node of this LAN, at its LAN address: a plain connect.
    Direct(SocketAddrV4),
    /// A node of another LAN: the virtual connection, open.
    Vc(Stream),
    /// A lookup's answer: the node's virtual address.
    Found(Ipv4Addr),
}

/// A finished open, for the loop.
pub(crate) struct Opened {
    pub client: u32,
    pub req: u32,
    /// The virtual address:port the process asked for.
    pub dest: SocketAddrV4,
    pub route: Result<Route, Error>,
    /// The connect's bound, for a direct connect that follows.
    pub timeout_ms: u32,
    /// A lookup, not an open.
    pub lookup: bool,
}

/// The node and the way open results come back.
pub(crate) struct Overlay {
    pub node: Node,
    tx: Sender<Opened>,
    rx: Receiver<Opened>,
    pub bell: Arc<EventFd>,
    /// When the directory was last fetched for an unknown opener.
    fetched: Option<Instant>,
    /// Opens under way.
    pub pending: usize,
}

/// How often an accept may fetch the directory to name an opener.
const FETCH_EVERY: Duration = Duration::from_secs(1);

impl Overlay {
    pub fn new(node: Node) -> std::io::Result<Overlay> {
        let (tx, rx) = channel();
        Ok(Overlay { node, tx, rx, bell: Arc::new(EventFd::new()?), fetched: None, pending: 0 })
    }

    /// Whether `ip` is a virtual address.
    pub fn is_virtual(&self, ip: Ipv4Addr) -> bool {
        self.node.is_virtual(ip)
    }

    /// Our virtual address (0.0.0.0 without one).
    pub fn vaddr(&self) -> Ipv4Addr {
        self.node.vaddr().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Starts resolving and opening `dest` for `client`'s request `req`.
    pub fn open(&mut self, client: u32, req: u32, dest: SocketAddrV4, timeout_ms: u32) -> std::io::Result<()> {
        let job =
            Opened { client, req, dest, route: Ok(Route::Found(Ipv4Addr::UNSPECIFIED)), timeout_ms, lookup: false };
        self.run("engine-open", job, move |node| resolve(node, dest))
    }

    /// Starts looking up node `name`'s virtual address for `client`.
    pub fn lookup(&mut self, client: u32, req: u32, name: String) -> std::io::Result<()> {
        let dest = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let job =
            Opened { client, req, dest, route: Ok(Route::Found(Ipv4Addr::UNSPECIFIED)), timeout_ms: 0, lookup: true };
        self.run("engine-lookup", job, move |node| {
            let e = node.lookup(&name)?;
            e.vaddr
                .map(Route::Found)
                .ok_or_else(|| Error::Overlay(format!("{name} is a relay: it has no virtual address")))
        })
    }

    /// Runs `work` on a thread of its own; `job` comes back to the loop
    /// with `work`'s result as its route (what it holds till then is
    /// overwritten).
    fn run(
        &mut self,
        name: &str,
        mut job: Opened,
        work: impl FnOnce(&Node) -> Result<Route, Error> + Send + 'static,
    ) -> std::io::Result<()> {
        let (node, tx, bell) = (self.node.clone(), self.tx.clone(), self.bell.clone());
        std::thread::Builder::new().name(name.into()).spawn(move || {
            job.route = work(&node);
            let _ = tx.send(job);
            bell.signal();
        })?;
        self.pending += 1;
        Ok(())
    }

    /// The opens that finished.
    pub fn finished(&mut self) -> Vec<Opened> {
        self.bell.clear();
        let done: Vec<Opened> = self.rx.try_iter().collect();
        self.pending -= done.len().min(self.pending);
        done
    }

    /// The virtual address of the node that opened a connection (fetching
    /// the directory, at most once a second, for a node not yet known).
    pub fn vaddr_of(&mut self, node: NodeId) -> Ipv4Addr {
        if let Some(ip) = self.node.cached(node).and_then(|e| e.vaddr) {
            return ip;
        }
        if self.fetched.is_none_or(|t| t.elapsed() >= FETCH_EVERY) {
            self.fetched = Some(Instant::now());
            if let Err(e) = self.node.load_directory() {
                log::debug!("engine: the directory, to name {node}: {e}");
            }
        }
        self.node.cached(node).and_then(|e| e.vaddr).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

fn resolve(node: &Node, dest: SocketAddrV4) -> Result<Route, Error> {
    let entry = node.lookup_addr(*dest.ip())?;
    if entry.site == node.site() {
        return Ok(Route::Direct(SocketAddrV4::new(entry.lan_ip, dest.port())));
    }
    node.open_entry(&entry, dest.port(), &[]).map(Route::Vc)
}
