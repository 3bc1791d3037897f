//! `xsock relay --boot IP:PORT --key-file F --name NAME --lan-iface IF
//! [--wan-listen IP:PORT]`: the relay appliance.
//!
//! It registers with the bootstrap server, keeps a link (kernel TCP) to
//! every other relay it can reach (dialling out to all; accepting too where
//! it has `--wan-listen`), floods link state, forwards virtual connections
//! hop by hop, and serves the endpoints of its LAN over the xsock runtime
//! on `--lan-iface` (reliable-link for xsock endpoints). One event loop
//! owns the protocol state, every stream and the relay links: it drives the
//! LAN datapath itself (`Driving::Loop`), reads the link sockets, runs the
//! LAN handshakes as state machines, and sleeps in one poll(2) over all of
//! them. Helper threads only do what blocks (dialling and accepting relay
//! links, opening delivery streams) and hand their results to it.

mod config;
mod lan;
mod metrics;
mod shell;
mod wan;

use std::{
    net::{SocketAddrV4, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Args;
use xsock::{
    Runtime,
    overlay::{Role, SecureTcp},
};
use xsock_overlay::wire::Msg;

use super::key_from;
use crate::fail::Fail;

/// `xsock relay`.
#[derive(Debug, Clone, Args)]
pub struct Relay {
    /// A config file of `key = value` lines: every flag but this one, named
    /// without its dashes (`lan-iface = eth0`, `spin = 1ms`), values as the
    /// flag takes them; flags given on the command line win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The bootstrap server.
    #[arg(long)]
    boot: Option<SocketAddrV4>,
    /// The cluster key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// This relay's unique name.
    #[arg(long)]
    name: Option<String>,
    /// The LAN interface whose endpoints this relay serves (AF_XDP).
    #[arg(long)]
    lan_iface: Option<String>,
    /// Accept relay links here (without it: outbound links only, as behind
    /// a firewall that blocks inbound connections).
    #[arg(long)]
    wan_listen: Option<SocketAddrV4>,
    /// The address other relays should dial (a port forward's public
    /// address); defaults to --wan-listen.
    #[arg(long)]
    wan_advertise: Option<SocketAddrV4>,
    /// LAN port endpoints open virtual connections on.
    #[arg(long)]
    serve_port: Option<u16>,
    /// Rewrite this JSON file every 500 ms with links, routes and counters
    /// (the status endpoint: `cat` it, or `jq`).
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Send and receive buffer of each endpoint stream (bytes; 256KiB,
    /// 1MiB also do).
    #[arg(long, value_parser = crate::wanemu::parse_bytes)]
    lan_buffer: Option<u64>,
    /// How often the status file is rewritten (e.g. 500ms).
    #[arg(long, value_parser = crate::args::parse_duration)]
    status_interval: Option<Duration>,
    /// End-to-end credit window per virtual connection (bytes; 4MiB also
    /// does; at most 4GiB - 1).
    #[arg(long, value_parser = crate::wanemu::parse_bytes)]
    window: Option<u64>,
    /// Poll after work for this long before sleeping (0: sleep at once,
    /// kind to a machine with few cores; more: lower latency when the relay
    /// has a core to itself).
    #[arg(long, value_parser = crate::args::parse_duration)]
    spin: Option<Duration>,
    /// Serve Prometheus metrics over HTTP here (`GET /metrics`).
    #[arg(long)]
    metrics_listen: Option<SocketAddrV4>,
    /// On SIGTERM or SIGINT, refuse new virtual connections and wait this
    /// long at most for the open ones to end before exiting (default 30s).
    #[arg(long, value_parser = crate::args::parse_duration)]
    drain_timeout: Option<Duration>,
}

/// Everything the relay runs with, flags and config file merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub boot: SocketAddrV4,
    pub key_file: PathBuf,
    pub name: String,
    pub lan_iface: String,
    pub wan_listen: Option<SocketAddrV4>,
    pub wan_advertise: Option<SocketAddrV4>,
    pub serve_port: u16,
    pub status_file: Option<PathBuf>,
    pub status_interval: Duration,
    pub lan_buffer: usize,
    pub window: u32,
    pub spin: Duration,
    pub metrics_listen: Option<SocketAddrV4>,
    pub drain_timeout: Duration,
}

impl Relay {
    /// Runs until killed.
    pub fn run(self) -> Result<(), Fail> {
        let s = config::settings(&self)?;
        let key = key_from(Some(&s.key_file))?;
        let rt = Runtime::builder()
            .interface(&s.lan_iface)
            .driving(xsock::Driving::Loop)
            .poll_mode(if s.spin.is_zero() {
                xsock::PollMode::Sleep
            } else {
                xsock::PollMode::Adaptive { spin: s.spin }
            })
            // Per endpoint stream; a relay holds one per virtual connection end
            // (hundreds), and reliable-link pre-faults its buffers.
            .send_buffer(s.lan_buffer)
            .recv_buffer(s.lan_buffer)
            .build()?;
        if !rt.has_link() {
            return Err(Fail::msg(format!(
                "cannot drive {} with AF_XDP (see the warning above): a relay serves its LAN over reliable-link",
                s.lan_iface
            )));
        }
        let Some(&(lan_ip, prefix)) = rt.local_subnets().first() else {
            return Err(Fail::msg(format!(
                "{} has no IPv4 address: give it the LAN address the endpoints use",
                s.lan_iface
            )));
        };
        let lan_listener = xsock::Listener::bind(&rt, SocketAddrV4::new(lan_ip, s.serve_port))?;
        let wan_listener = match s.wan_listen {
            Some(a) => Some(std::net::TcpListener::bind(a).map_err(|e| {
                Fail::msg(format!(
                    "cannot listen for relay links on {a}: {e} (is the address on this host, the port free?)"
                ))
            })?),
            None => None,
        };
        // Register: our id and site come from the bootstrap server.
        let deadline = Instant::now() + Duration::from_secs(5);
        let tcp = TcpStream::connect_timeout(&s.boot.into(), Duration::from_secs(5)).map_err(|e| {
            Fail::msg(format!("cannot reach the bootstrap server at {}: {e} (is `xsock boot` running there?)", s.boot))
        })?;
        tcp.set_nodelay(true)?;
        let mut boot = SecureTcp::connect(tcp, &key, Role::Relay, &s.name, deadline)
            .map_err(|e| Fail::msg(format!("bootstrap server {}: {e}", s.boot)))?;
        let wan = s.wan_advertise.or(s.wan_listen);
        let reg = Msg::Register {
            role: Role::Relay,
            name: &s.name,
            lan_ip,
            prefix,
            wan,
            serve_port: s.serve_port,
            rank: None,
        };
        xsock::overlay::send_msg(&mut boot, &reg)?;
        let reply = xsock::overlay::recv_frame(&mut boot, deadline)?;
        let (me, site) = match Msg::parse(&reply) {
            Ok(Msg::Registered { node, site }) => (node, site),
            Ok(Msg::Refused { reason }) => return Err(Fail::msg(format!("the bootstrap server refused us: {reason}"))),
            _ => return Err(Fail::msg("unexpected answer from the bootstrap server")),
        };
        log::info!(
            "relay {} is {me} in {site}; LAN {lan_ip}/{prefix} port {} on {}; relay links: {}",
            s.name,
            s.serve_port,
            s.lan_iface,
            wan.map_or("outbound only".to_owned(), |a| format!("accepted on {a}"))
        );
        let boot = boot.into_parts();
        shell::run(shell::Setup { settings: s, key, rt, me, site, boot, lan_listener, wan_listener })
    }
}
