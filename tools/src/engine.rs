//! `xsock engine`: the host engine daemon (see the xsock-engine crate).
//! Runs until SIGTERM or SIGINT, then tells its clients, resets their
//! peers, removes its socket and detaches the XDP program. `--status`
//! asks a running engine for its status instead (JSON on stdout).

use clap::Args;
use xsock::{Driving, EngineUse, Runtime};
use xsock_engine::{Engine, EngineConfig};
use xsock_nic::sys;

use crate::{
    args::{Poll, RuntimeArgs},
    fail::Fail,
};

/// Flags of `xsock engine`.
#[derive(Debug, Args)]
pub struct EngineCmd {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Queues to drive.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// How the engine's loop waits when idle (busy: lowest latency, a core).
    #[arg(long, value_enum, default_value = "adaptive")]
    poll: Poll,
    /// With `--poll adaptive`: how long the loop keeps spinning after its
    /// last work before it sleeps (e.g. 50us, 1ms). A window longer than a
    /// request-response program's round trip keeps the engine spinning
    /// while the program talks (busy-poll latency) and asleep when it is
    /// idle. [default: 50us]
    #[arg(long, value_parser = crate::args::parse_duration)]
    spin: Option<std::time::Duration>,
    /// Members of this group may attach too (root and the engine's user
    /// always may).
    #[arg(long)]
    group: Option<String>,
    /// Processes attached at once, at most.
    #[arg(long, default_value_t = 1024)]
    max_clients: usize,
    /// Streams per process, at most.
    #[arg(long, default_value_t = 16_384)]
    max_streams: usize,
    /// KiB of each of a stream's two shared-memory rings (a power of two,
    /// 4 to 16384): what one stream may have in flight between a process
    /// and the engine each way.
    #[arg(long, default_value_t = 128)]
    ring_kib: usize,
    /// Print the running engine's status (JSON) and exit.
    #[arg(long)]
    status: bool,
    /// Print the overlay's virtual addresses as /etc/hosts lines (asks the
    /// running engine, which asks a bootstrap server) and exit: append them
    /// to /etc/hosts, or use them as an MPI hostfile's addresses.
    #[arg(long)]
    hosts: bool,
    /// With --boot: the engine joins the overlay as one node for every
    /// process on the host (one relay session; programs under the preload
    /// reach other LANs by the nodes' virtual addresses).
    #[command(flatten)]
    join: crate::overlay::JoinArgs,
}

impl EngineCmd {
    pub fn run(self) -> Result<(), Fail> {
        let Some(iface) = self.rt.iface.clone() else {
            return Err(Fail::msg("xsock engine needs --iface: the interface it drives for every process"));
        };
        if self.status || self.hosts {
            let rt = Runtime::builder().interface(&iface).engine(EngineUse::Require).build()?;
            let json = rt.engine_status().expect("attached")?;
            if self.status {
                println!("{json}");
                return Ok(());
            }
            return print_hosts(&json);
        }
        sys::catch_interrupts()?;
        let cfg = EngineConfig {
            queues: self.queues,
            poll: match (self.poll, self.spin) {
                (Poll::Adaptive, Some(spin)) => xsock::PollMode::Adaptive { spin },
                (p, None) => p.into(),
                (p, Some(_)) => {
                    return Err(Fail::msg(format!(
                        "--spin is how long --poll adaptive spins before it sleeps; it means nothing with --poll {}: \
                         drop --spin or use --poll adaptive",
                        if p == Poll::Busy { "busy" } else { "sleep" }
                    )));
                }
            },
            group: self.group.clone(),
            max_clients: self.max_clients,
            max_streams_per_client: self.max_streams,
            ring_bytes: self.ring_kib.saturating_mul(1024),
            overlay: if self.join.wanted() { Some(self.join.config()?) } else { None },
            ..EngineConfig::new(&iface)
        };
        let builder = self.rt.builder(Driving::Inline, cfg.poll);
        let mut engine = Engine::open(cfg, builder).map_err(|e| Fail::msg(e.to_string()))?;
        engine.run(sys::interrupted).map_err(|e| Fail::msg(e.to_string()))?;
        Ok(())
    }
}

/// The status's overlay directory as /etc/hosts lines.
fn print_hosts(status: &str) -> Result<(), Fail> {
    let v: serde_json::Value =
        serde_json::from_str(status).map_err(|e| Fail::msg(format!("the engine's status is not JSON: {e}")))?;
    let Some(hosts) = v["overlay"]["hosts"].as_array() else {
        return Err(Fail::msg("this engine joined no overlay: start it with --boot IP:PORT --name NAME --key-file F"));
    };
    println!(
        "# xsock overlay {} (virtual addresses from the bootstrap servers)",
        v["overlay"]["vnet"].as_str().unwrap_or("?")
    );
    for h in hosts {
        if let Some(e) = h["error"].as_str() {
            return Err(Fail::msg(format!("the engine could not fetch the directory: {e}")));
        }
        println!("{}\t{}", h["vaddr"].as_str().unwrap_or("?"), h["name"].as_str().unwrap_or("?"));
    }
    Ok(())
}
