//! `xsock demo`: builds two hosts in network namespaces joined by a veth
//! pair, and runs xsock beside kernel TCP on it, one measurement at a time,
//! printing the comparison. Everything it builds is removed at the end
//! (also on Ctrl-C or failure).

use clap::Args;
use xsock_perf::{
    Bench, Rate,
    report::{Table, ratio, us},
};

use crate::fail::Fail;

/// Flags of `xsock demo`.
#[derive(Debug, Args)]
pub struct Demo {
    /// Round trips per ping-pong measurement.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Seconds per bandwidth measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
}

impl Demo {
    /// Runs the demo.
    pub fn run(self) -> Result<(), Fail> {
        if !xsock_testbed::is_root() {
            return Err(Fail::msg("the demo builds network namespaces and attaches XDP programs: run it as root"));
        }
        xsock_nic::sys::catch_interrupts()?;
        let exe = std::env::current_exe()?;
        println!("xsock demo: two hosts (network namespaces) joined by a veth pair, MTU 1500.");
        println!("Both ends busy-poll; each measurement runs alone on this {}-core machine.\n", cores());
        let bench = Bench::two_hosts(&exe, 1500)?;

        println!("ping-pong, 64-byte messages, {} round trips each ...", self.count);
        let link = bench.ping("link", 64, self.count, &[], &[])?;
        let kernel = bench.ping("kernel", 64, self.count, &[], &[])?;
        let raw = bench.rawping(64, self.count, &[])?;
        let sockperf = bench.sockperf_ping(64, 2).map_err(|e| log::warn!("sockperf skipped: {e}")).ok();
        let k50 = kernel.rtt_p50_ns as f64;
        let mut t = Table::new(["round trip", "p50", "p99", "p99.9", "p50 vs kernel TCP"]);
        let mut row = |name: &str, r: &xsock_perf::Rtt| {
            t.row([
                name.to_owned(),
                us(r.rtt_p50_ns),
                us(r.rtt_p99_ns),
                us(r.rtt_p999_ns),
                ratio(r.rtt_p50_ns as f64, k50),
            ]);
        };
        row("xsock ping --transport link (reliable-link)", &link);
        row("xsock ping --transport kernel (kernel TCP)", &kernel);
        if let Some(s) = &sockperf {
            row("sockperf ping-pong (kernel TCP, --full-rtt)", s);
        }
        row("xsock rawping (bare AF_XDP frames, the floor)", &raw);
        println!("\n{}", t.text());

        println!("one-way bulk transfer, 1 MiB sends, {} s each ...", self.seconds);
        let link_bw = bench.bw("link", 1 << 20, self.seconds, &[], &[])?;
        let kernel_bw = bench.bw("kernel", 1 << 20, self.seconds, &[], &[])?;
        let iperf = bench.iperf3_tcp(self.seconds)?;
        let raw_bw = bench.rawbw(1514, self.seconds, &[])?;
        let k = kernel_bw.gbit_per_s;
        let mut t = Table::new(["one-way", "Gbit/s", "vs kernel TCP"]);
        let mut row = |name: &str, r: &Rate| {
            t.row([name.to_owned(), format!("{:.2}", r.gbit_per_s), ratio(r.gbit_per_s, k)]);
        };
        row("xsock bw --transport link (reliable-link, bytes checked)", &link_bw);
        row("xsock bw --transport kernel (kernel TCP, bytes checked)", &kernel_bw);
        row("iperf3 (kernel TCP)", &iperf);
        row("xsock rawbw 1514-byte frames (bare AF_XDP, the ceiling)", &raw_bw);
        println!("\n{}", t.text());
        println!(
            "AF_XDP on veth runs in copy mode (veth has no zero-copy): every frame costs the kernel an\n\
             skb and two copies, ~2.5 µs per direction here, which bounds xsock's figures; kernel TCP\n\
             moves 64 KB per skb (GSO). perf/RESULTS.md has the full tables and what limits each figure."
        );
        Ok(())
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
