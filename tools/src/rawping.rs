//! `xsock rawping`: raw frame ping-pong over the datapath (no transport).

use std::time::Duration;

use clap::Args;
use xsock::diag::{
    self,
    ping::{EchoHandler, PingClient, round_trip},
};
use xsock_nic::MacAddr;

use crate::{
    args::{DatapathArgs, check_frame_size, parse_duration, serve_forever},
    fail::Fail,
    latency::Latencies,
};

/// Flags of `xsock rawping`.
#[derive(Debug, Args)]
pub struct RawPing {
    #[command(flatten)]
    dp: DatapathArgs,
    /// Answer pings (the server side); runs until killed.
    #[arg(long, conflicts_with = "peer_mac")]
    echo: bool,
    /// MAC address of the peer running `--echo`.
    #[arg(long, required_unless_present = "echo")]
    peer_mac: Option<MacAddr>,
    /// Frame size in bytes, Ethernet header included (no FCS).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Round trips to measure.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Give up on a round trip after this long (counted as lost).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

impl RawPing {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        let mut dp = self.dp.open()?;
        let info = dp.device_info(0).clone();
        if self.echo {
            dp.register(diag::ETHERTYPE, Box::new(EchoHandler::default()))?;
            return Ok(serve_forever(&mut dp, "rawping echo")?);
        }
        let peer = self.peer_mac.expect("clap requires --peer-mac without --echo");
        check_frame_size(self.size, &info).map_err(Fail::msg)?;
        let id = dp.register(diag::ETHERTYPE, Box::new(PingClient::new(peer, self.size)?))?;
        let mut lat = Latencies::new();
        let mut answered_warmup = 0;
        for seq in 0..self.warmup {
            if round_trip(&mut dp, id, seq, self.timeout)?.is_some() {
                answered_warmup += 1;
            }
        }
        if self.warmup > 0 && answered_warmup == 0 {
            return Err(Fail::msg(format!(
                "no answer from {peer} to {} warm-up pings: is `xsock rawping --echo` running on the peer, \
                 and is {peer} its MAC on this link?",
                self.warmup
            )));
        }
        for seq in self.warmup..self.warmup + self.count {
            match round_trip(&mut dp, id, seq, self.timeout)? {
                Some(rtt) => lat.record(rtt),
                None => lat.lost += 1,
            }
        }
        if lat.is_empty() {
            return Err(Fail::msg(format!("all {} pings to {peer} were lost", self.count)));
        }
        let summary = lat.summary("raw", self.size);
        if self.json {
            let mut v = serde_json::to_value(&summary).expect("serialisable");
            v["backend"] = info.backend.to_string().into();
            println!("{v}");
        } else {
            println!(
                "rawping {} on {} → {peer}: {} round trips after {} warm-up",
                info.backend, info.name, summary.count, self.warmup
            );
            println!("{}", summary.table());
        }
        Ok(())
    }
}
