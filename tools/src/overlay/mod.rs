//! `xsock boot` and `xsock relay`: the overlay's rendezvous server and
//! relay appliance (I/O shells around `xsock-overlay`'s sans-IO cores).

pub mod boot;
pub mod keys;
pub mod mesh;
pub mod relay;

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Args;
use xsock::{
    Error, ListenOptions, Listener, Mode, Runtime, Stream,
    overlay::{Key, Node, NodeListener, OverlayConfig, load_identity, load_key},
};

use crate::fail::Fail;

/// Flags of the tools that join the overlay as an endpoint (CLI.md:
/// `--boot IP:PORT --name NAME --key-file F`).
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The bootstrap servers (`xsock boot`), IP:PORT[,IP:PORT...]: the node
    /// registers with each (no single point of failure); with them,
    /// `--connect NAME:PORT` names a node of the overlay.
    #[arg(long, value_delimiter = ',')]
    pub boot: Vec<SocketAddrV4>,
    /// This node's unique name on the overlay.
    #[arg(long)]
    pub name: Option<String>,
    /// The cluster key file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// This node's credentials file (`xsock keys issue --role endpoint`),
    /// in a cluster with node certificates.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The virtual address to ask the bootstrap servers for (by default
    /// they lease one to the name; `xsock hosts` lists them).
    #[arg(long)]
    pub vaddr: Option<std::net::Ipv4Addr>,
}

impl JoinArgs {
    /// Whether the overlay is asked for.
    pub fn wanted(&self) -> bool {
        !self.boot.is_empty()
    }

    /// Joins the overlay on `rt`.
    pub fn join(&self, rt: &xsock::Runtime) -> Result<Node, Fail> {
        Ok(Node::join(rt, self.config()?)?)
    }

    /// How to join, from the flags.
    pub fn config(&self) -> Result<OverlayConfig, Fail> {
        if self.boot.is_empty() {
            return Err(Fail::msg("--boot IP:PORT is needed to join the overlay"));
        }
        let name = self.name.clone().ok_or_else(|| Fail::msg("--name NAME is needed with --boot"))?;
        let key = key_from(self.key_file.as_deref())?;
        let mut cfg = OverlayConfig::with_boots(self.boot.clone(), name.clone(), key);
        cfg.identity = load_identity(self.cert.as_deref(), None, xsock::overlay::Role::Endpoint, Some(&name))?;
        cfg.vaddr = self.vaddr;
        Ok(cfg)
    }
}

/// Loads `--key-file`, or says it is missing.
pub fn key_from(path: Option<&Path>) -> Result<Key, Fail> {
    let path = path.ok_or_else(|| {
        Fail::msg("--key-file F is needed: every node of the overlay must hold the cluster key (make one with `head -c 32 /dev/urandom | base64 > F`)")
    })?;
    Ok(load_key(path)?)
}

/// What `--listen` opens: a listener on the address, or (joined to the
/// overlay) on its port of this node, which relays forward to.
pub enum Accepting {
    /// `--listen IP:PORT`.
    Plain(Listener),
    /// `--listen IP:PORT --boot ...`: the port, on the overlay.
    Overlay(NodeListener),
}

impl Accepting {
    /// Listens on `addr` with `transport`, or on its port of `node`.
    pub fn bind(
        rt: &Runtime,
        addr: SocketAddrV4,
        transport: xsock::Transport,
        node: Option<&Node>,
    ) -> Result<Accepting, Error> {
        Ok(match node {
            Some(n) => Accepting::Overlay(n.listen(addr.port())?),
            None => Accepting::Plain(Listener::bind_with(rt, addr, ListenOptions { transport, mode: Mode::Stream })?),
        })
    }

    /// The next connection (waits for it).
    pub fn accept(&self) -> Result<Stream, Error> {
        match self {
            Accepting::Plain(l) => l.accept(),
            Accepting::Overlay(l) => l.accept().map(|(s, _)| s),
        }
    }

    /// A connection if one waits ([`Error::WouldBlock`] if not).
    pub fn try_accept(&self) -> Result<Stream, Error> {
        match self {
            Accepting::Plain(l) => l.try_accept(),
            Accepting::Overlay(l) => l.try_accept().map(|(s, _)| s),
        }
    }

    /// The plain listener, for a poller to watch (an overlay listener has
    /// no registration: look at it now and then).
    pub fn plain(&self) -> Option<&Listener> {
        match self {
            Accepting::Plain(l) => Some(l),
            Accepting::Overlay(_) => None,
        }
    }
}

impl std::fmt::Display for Accepting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // With the port the kernel chose for port 0.
            Accepting::Plain(l) => write!(f, "{}", l.local_addr()),
            Accepting::Overlay(l) => write!(f, "the overlay as {}:{} ({})", l.node().name(), l.port(), l.node().id()),
        }
    }
}

/// Where `--connect` points: an address, or a node of the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// `IP:PORT`.
    Addr(SocketAddrV4),
    /// `NAME:PORT` (with `--boot`).
    Node(String, u16),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Addr(a) => write!(f, "{a}"),
            Dest::Node(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

impl Dest {
    /// Parses `--connect`: `NAME:PORT` when joining the overlay, else `IP:PORT`.
    pub fn parse(s: &str, overlay: bool) -> Result<Dest, Fail> {
        if overlay {
            let (n, p) = parse_name_port(s)?;
            return Ok(Dest::Node(n, p));
        }
        s.parse().map(Dest::Addr).map_err(|_| {
            Fail::msg(format!(
                "--connect {s:?}: expected IP:PORT (a node name needs --boot IP:PORT --name NAME --key-file F)"
            ))
        })
    }

    /// Connects: by address with `opts`, or through the overlay.
    pub fn connect(
        &self,
        rt: &xsock::Runtime,
        node: Option<&Node>,
        opts: xsock::ConnectOptions,
    ) -> Result<xsock::Stream, xsock::Error> {
        match (self, node) {
            (Dest::Node(name, port), Some(node)) => node.connect(name, *port),
            (Dest::Addr(a), _) => xsock::Stream::connect_with(rt, *a, opts),
            (Dest::Node(..), None) => Err(xsock::Error::Config("a node name needs --boot".into())),
        }
    }
}

/// `NAME:PORT` of `--connect` across LANs.
pub fn parse_name_port(s: &str) -> Result<(String, u16), Fail> {
    let (name, port) = s
        .rsplit_once(':')
        .ok_or_else(|| Fail::msg(format!("--connect {s:?}: expected NAME:PORT (or IP:PORT without --boot)")))?;
    let port = port.parse().map_err(|_| Fail::msg(format!("--connect {s:?}: {port:?} is not a port number")))?;
    if name.is_empty() {
        return Err(Fail::msg(format!("--connect {s:?}: the node name is empty")));
    }
    Ok((name.to_owned(), port))
}

/// Microseconds since the Unix epoch (first sequence number of a relay).
pub fn epoch_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

/// A monotonic clock for the sans-IO cores: time since `start`.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// Starts now.
    pub fn start() -> Self {
        Clock(Instant::now())
    }
    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}
