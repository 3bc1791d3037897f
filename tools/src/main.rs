//! `xsock`: the command-line tools of the xsock runtime. Flags and JSON
//! fields that scripts depend on are fixed in CLI.md.

mod args;
mod bw;
mod cat;
mod conns;
mod demo;
mod engine;
mod fail;
mod latency;
mod overlay;
mod ping;
mod preload;
mod rawbw;
mod rawping;
mod transfer;
mod wanemu;

use clap::{Parser, Subcommand};

/// xsock: userspace networking over AF_XDP.
#[derive(Debug, Parser)]
#[command(name = "xsock", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Raw frame ping-pong between two hosts over the datapath (AF_XDP).
    Rawping(rawping::RawPing),
    /// Raw one-way frame blast: frame rate and bit rate of the datapath.
    Rawbw(rawbw::RawBw),
    /// Message ping-pong over reliable-link or kernel TCP, timed round trip by round trip.
    Ping(ping::Ping),
    /// One-way bulk throughput over reliable-link or kernel TCP.
    Bw(bw::Bw),
    /// netcat over xsock: stdin to the peer, the peer to stdout.
    Cat(cat::Cat),
    /// Many connections at once: open, exchange, hold idle, close; connect times and memory.
    Conns(conns::Conns),
    /// Build a two-host network in namespaces and compare xsock with kernel TCP.
    Demo(demo::Demo),
    /// Send a file to `xsock recv` over parallel (paced, TCP-mode) streams, resumable.
    Send(transfer::send::Send),
    /// Receive files from `xsock send` into a directory.
    Recv(transfer::recv::Recv),
    /// The overlay's bootstrap server: the one address every relay and endpoint is configured with.
    Boot(overlay::boot::Boot),
    /// The relay appliance: joins this LAN to the others over relay links.
    Relay(overlay::relay::Relay),
    /// The overlay's cluster CA and node certificates: make, issue, revoke, show.
    Keys(overlay::keys::Keys),
    /// All-to-all connect: every endpoint connects to every peer at once and exchanges one message.
    Mesh(overlay::mesh::Mesh),
    /// The host engine: drives the interface for every xsock process on the host (they attach to it).
    Engine(engine::EngineCmd),
    /// Run an unmodified program with its TCP sockets on xsock (LD_PRELOAD through the host engine).
    Preload(preload::Preload),
    /// Long-fat-network emulator: an L2 bridge with delay, rate, buffer and loss per direction.
    Wanemu(wanemu::WanEmu),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Rawping(c) => c.run(),
        Cmd::Rawbw(c) => c.run(),
        Cmd::Ping(c) => c.run(),
        Cmd::Bw(c) => c.run(),
        Cmd::Cat(c) => c.run(),
        Cmd::Conns(c) => c.run(),
        Cmd::Wanemu(c) => c.run(),
        Cmd::Engine(c) => c.run(),
        Cmd::Send(c) => c.run(),
        Cmd::Recv(c) => c.run(),
        Cmd::Demo(c) => c.run(),
        Cmd::Boot(c) => c.run(),
        Cmd::Relay(c) => c.run(),
        Cmd::Keys(c) => c.run(),
        Cmd::Mesh(c) => c.run(),
        Cmd::Preload(c) => c.run(),
    };
    if let Err(e) = r {
        if xsock_nic::sys::interrupted() {
            eprintln!("xsock: interrupted ({e}); everything it built has been removed");
        } else {
            eprintln!("xsock: {e}");
        }
        std::process::exit(1);
    }
}
