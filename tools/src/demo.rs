//! `xsock demo`: builds two hosts in network namespaces joined by a veth
//! pair, and runs xsock beside kernel TCP on it, one measurement at a time,
//! printing the comparison. Everything it builds is removed at the end
//! (also on Ctrl-C or failure).

use clap::Args;
use xsock_perf::{
    Bench,
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
            return Err(Fail::msg(
                "the demo builds network namespaces and attaches XDP programs: run it as root",
            ));
        }
        xsock_nic::sys::catch_interrupts()?;
        let exe = std::env::current_exe()?;
        println!("xsock demo: two hosts (network namespaces) joined by a veth pair, MTU 1500.");
        println!(
            "Both ends busy-poll; each measurement runs alone on this {}-core machine.\n",
            cores()
        );
        let bench = Bench::two_hosts(&exe, 1500)?;

        println!(
            "ping-pong, 64-byte messages, {} round trips each ...",
            self.count
        );
        let raw = bench.rawping(64, self.count, &[])?;
        let kernel = bench.kernel_ping(64, self.count)?;
        let sockperf = bench
            .sockperf_ping(64, 3)
            .map_err(|e| log::warn!("sockperf skipped: {e}"))
            .ok();
        let mut t = Table::new(["round trip", "p50", "p99", "p99.9", "p50 vs kernel TCP"]);
        let k50 = kernel.rtt_p50_ns as f64;
        t.row([
            "xsock rawping (AF_XDP frames)".into(),
            us(raw.rtt_p50_ns),
            us(raw.rtt_p99_ns),
            us(raw.rtt_p999_ns),
            ratio(raw.rtt_p50_ns as f64, k50),
        ]);
        t.row([
            "kernel TCP (xsock ping --transport kernel)".into(),
            us(kernel.rtt_p50_ns),
            us(kernel.rtt_p99_ns),
            us(kernel.rtt_p999_ns),
            "1.00".into(),
        ]);
        if let Some(s) = sockperf {
            t.row([
                "kernel TCP (sockperf, --full-rtt)".into(),
                us(s.rtt_p50_ns),
                us(s.rtt_p99_ns),
                us(s.rtt_p999_ns),
                ratio(s.rtt_p50_ns as f64, k50),
            ]);
        }
        println!("\n{}", t.text());

        println!("one-way rate, {} s each ...", self.seconds);
        let raw64 = bench.rawbw(64, self.seconds, &[])?;
        let udp64 = bench.iperf3_udp(22, self.seconds)?;
        let raw1500 = bench.rawbw(1514, self.seconds, &[])?;
        let udp1500 = bench.iperf3_udp(1472, self.seconds)?;
        let tcp = bench.iperf3_tcp(self.seconds)?;
        let mpps = |r: &xsock_perf::Rate| r.pps.map_or("-".into(), |p| format!("{:.3}", p / 1e6));
        let mut t = Table::new(["one-way", "frame", "Gbit/s", "Mpps"]);
        t.row([
            "xsock rawbw (AF_XDP frames)".into(),
            "64 B".into(),
            format!("{:.2}", raw64.gbit_per_s),
            mpps(&raw64),
        ]);
        t.row([
            "kernel UDP (iperf3)".into(),
            "64 B".into(),
            format!("{:.2}", udp64.gbit_per_s),
            mpps(&udp64),
        ]);
        t.row([
            "xsock rawbw (AF_XDP frames)".into(),
            "1514 B".into(),
            format!("{:.2}", raw1500.gbit_per_s),
            mpps(&raw1500),
        ]);
        t.row([
            "kernel UDP (iperf3)".into(),
            "1514 B".into(),
            format!("{:.2}", udp1500.gbit_per_s),
            mpps(&udp1500),
        ]);
        t.row([
            "kernel TCP (iperf3, goodput; GSO sends 64 KB segments)".into(),
            "-".into(),
            format!("{:.2}", tcp.gbit_per_s),
            "-".into(),
        ]);
        println!("\n{}", t.text());
        println!(
            "Raw rates count whole frames received (Ethernet header included); UDP rates count the same\n\
             frame bytes for comparison. AF_XDP on veth runs in copy mode (no zero-copy on veth).\n\
             The reliable-link transport (xsock ping/bw --transport link) arrives with the next issue."
        );
        Ok(())
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
