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

mod boots;
mod config;
mod lan;
mod metrics;
mod sessions;
mod shell;
mod wan;

use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

use clap::Args;
use xsock::{
    Runtime,
    overlay::{Registration, Role, is_refusal, load_identity, register},
};

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
    /// The bootstrap servers, IP:PORT[,IP:PORT...] (the relay registers
    /// with each; directories are merged; running VCs survive them all).
    #[arg(long, value_delimiter = ',')]
    boot: Vec<SocketAddrV4>,
    /// The cluster key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// This relay's credentials file (`xsock keys issue --role relay`): in
    /// a cluster with node certificates, its certified key, and every peer
    /// is checked against the cluster CA.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The CA's revocation list (`xsock keys revoke`): keys refused
    /// however valid their certificate (needs --cert).
    #[arg(long)]
    revoked: Option<PathBuf>,
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
    /// Keep the directory (and this relay's id and site) in this file,
    /// rewritten on every change: started while every bootstrap server is
    /// down, the relay runs on it.
    #[arg(long)]
    directory_cache: Option<PathBuf>,
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
    pub boot: Vec<SocketAddrV4>,
    pub key_file: PathBuf,
    pub cert: Option<PathBuf>,
    pub revoked: Option<PathBuf>,
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
    pub directory_cache: Option<PathBuf>,
}

impl Relay {
    /// Runs until killed.
    pub fn run(self) -> Result<(), Fail> {
        let s = config::settings(&self)?;
        let key = key_from(Some(&s.key_file))?;
        let identity = load_identity(s.cert.as_deref(), s.revoked.as_deref(), Role::Relay, Some(&s.name))?;
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
        // Register with every bootstrap server under one id we draw; the
        // site comes from the first that answers.
        let wan = s.wan_advertise.or(s.wan_listen);
        let reg = Registration {
            node: Registration::fresh_id(),
            role: Role::Relay,
            name: s.name.clone(),
            lan_ip,
            prefix,
            wan,
            serve_port: s.serve_port,
            rank: None,
            vaddr: None,
        };
        let mut site = None;
        let mut boots = Vec::new();
        let mut whys = Vec::new();
        for &addr in &s.boot {
            match register(addr, &key, &identity, &reg, Duration::from_secs(5)) {
                Ok((session, got)) => {
                    site.get_or_insert(got.site);
                    boots.push((addr, Some(session.into_parts())));
                }
                // A refusal (a wrong key, a taken name, a certificate) is
                // the same at every server: stop with it.
                Err(e) if is_refusal(&e) => return Err(e.into()),
                Err(e) => {
                    log::warn!("{e}; registering there when it answers");
                    whys.push(e.to_string());
                    boots.push((addr, None));
                }
            }
        }
        let mut reg = reg;
        let mut initial = Vec::new();
        let site = match (site, &s.directory_cache) {
            (Some(site), _) => site,
            (None, Some(path)) => match boots::cache::load(path) {
                Ok((me, site, entries)) => {
                    // Register later under the id the other relays know.
                    reg.node = me;
                    log::warn!(
                        "no bootstrap server answers ({}); starting from the directory cache {} ({} nodes)",
                        whys.join("; "),
                        path.display(),
                        entries.len()
                    );
                    initial = entries;
                    site
                }
                Err(e) => {
                    return Err(Fail::msg(format!(
                        "no bootstrap server took us ({}), and the directory cache cannot stand in: {e}",
                        whys.join("; ")
                    )));
                }
            },
            (None, None) => {
                return Err(Fail::msg(format!(
                    "no bootstrap server took us: {} (with --directory-cache FILE a relay can start without one)",
                    whys.join("; ")
                )));
            }
        };
        let me = reg.node;
        log::info!(
            "relay {} is {me} in {site}; LAN {lan_ip}/{prefix} port {} on {}; relay links: {}",
            s.name,
            s.serve_port,
            s.lan_iface,
            wan.map_or("outbound only".to_owned(), |a| format!("accepted on {a}"))
        );
        shell::run(shell::Setup {
            settings: s,
            key,
            identity,
            rt,
            me,
            site,
            reg,
            boots,
            initial,
            lan_listener,
            wan_listener,
        })
    }
}
