//! `xsock rawbw`: one-way raw frame blast over the datapath; the receiver
//! counts and reports back, the sender prints the rate.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use xsock::diag::{
    self,
    blast::{BlastHandler, blast},
};
use xsock_nic::MacAddr;

use crate::{
    args::{DatapathArgs, check_frame_size, parse_duration, serve_forever},
    fail::Fail,
};

/// Flags of `xsock rawbw`.
#[derive(Debug, Args)]
pub struct RawBw {
    #[command(flatten)]
    dp: DatapathArgs,
    /// Receive and report (the server side); runs until killed.
    #[arg(long, conflicts_with = "peer_mac")]
    listen: bool,
    /// MAC address of the peer running `--listen`.
    #[arg(long, required_unless_present = "listen")]
    peer_mac: Option<MacAddr>,
    /// Frame size in bytes, Ethernet header included (no FCS).
    #[arg(long, default_value_t = 1514)]
    size: usize,
    /// How long to send.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    seconds: Duration,
    /// Print one JSON object on stdout instead of a line of text.
    #[arg(long)]
    json: bool,
}

/// Result of one blast (the `bw` JSON fields of CLI.md, plus frame counts).
#[derive(Debug, Serialize)]
pub struct RawBwResult {
    transport: &'static str,
    backend: String,
    size: usize,
    seconds: f64,
    streams: u32,
    /// Bytes received (whole frames, Ethernet header included).
    bytes: u64,
    /// Received bits per second of whole frames, in Gbit/s.
    gbit_per_s: f64,
    /// Frames received per second.
    msgs_per_s: f64,
    /// Millions of frames per second received.
    mpps: f64,
    frames_sent: u64,
    frames_received: u64,
    /// Fraction of sent frames that did not arrive.
    loss: f64,
}

impl RawBw {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        let mut dp = self.dp.open()?;
        let info = dp.device_info(0).clone();
        let id = dp.register(diag::ETHERTYPE, Box::new(BlastHandler::default()))?;
        if self.listen {
            return Ok(serve_forever(&mut dp, "rawbw receiver")?);
        }
        let peer = self.peer_mac.expect("clap requires --peer-mac without --listen");
        check_frame_size(self.size, &info).map_err(Fail::msg)?;
        let out = blast(&mut dp, id, peer, self.size, self.seconds, Duration::from_secs(3))?;
        let rx = out.received;
        let span = rx.span.as_secs_f64().max(1e-9);
        let r = RawBwResult {
            transport: "raw",
            backend: info.backend.to_string(),
            size: self.size,
            seconds: out.sent_for.as_secs_f64(),
            streams: 1,
            bytes: rx.bytes,
            gbit_per_s: rx.bytes as f64 * 8.0 / span / 1e9,
            msgs_per_s: rx.frames as f64 / span,
            mpps: rx.frames as f64 / span / 1e6,
            frames_sent: out.sent_frames,
            frames_received: rx.frames,
            loss: 1.0 - rx.frames as f64 / out.sent_frames.max(1) as f64,
        };
        if self.json {
            println!("{}", serde_json::to_string(&r).expect("serialisable"));
        } else {
            println!(
                "rawbw {} on {} → {peer}: {} B frames, {:.2} Gbit/s, {:.3} Mpps received ({} of {} frames, loss {:.2}%)",
                r.backend,
                info.name,
                r.size,
                r.gbit_per_s,
                r.mpps,
                r.frames_received,
                r.frames_sent,
                r.loss * 100.0
            );
        }
        Ok(())
    }
}
