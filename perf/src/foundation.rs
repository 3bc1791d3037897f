//! The foundation suite (issue 2): the raw datapath against kernel UDP and
//! TCP on one veth pair.

use std::{io, path::Path, time::Instant};

use xsock_perf::{
    Bench, Rate, Rtt,
    report::{Table, median, ratio},
};

use crate::suites_common::{progress, rate_row, rtt_row};

/// The foundation issue's measurements: raw datapath latency and rate
/// against kernel TCP/UDP on the same veth pair.
pub fn run(xsock: &Path, rounds: usize) -> io::Result<()> {
    let started = Instant::now();
    let mut out = String::new();

    // 1. Latency, 64-byte messages, MTU 1500.
    let bench = Bench::two_hosts(xsock, 1500)?;
    let (mut raw, mut kern, mut sp, mut ratios, mut raw_native) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        progress(&format!("latency round {round}/{rounds}"));
        let r = bench.rawping(64, 20_000, &[])?;
        let rn = bench.rawping(64, 20_000, &["--xdp-mode", "native"])?;
        let k = bench.kernel_ping(64, 20_000)?;
        let s = bench.sockperf_ping(64, 2)?;
        ratios.push(r.rtt_p50_ns as f64 / k.rtt_p50_ns as f64);
        raw.push(r);
        raw_native.push(rn);
        kern.push(k);
        sp.push(s);
    }
    let per_round = |a: &[Rtt], b: &[Rtt]| -> f64 {
        median(a.iter().zip(b).map(|(x, y)| x.rtt_p50_ns as f64 / y.rtt_p50_ns as f64).collect())
    };
    let mut t =
        Table::new(["64 B ping-pong, both ends busy-poll", "p50", "p99", "p99.9", "p50 / kernel TCP p50", "rounds"]);
    rtt_row(
        &mut t,
        "xsock rawping (AF_XDP copy mode, generic XDP: the default on veth)",
        &raw,
        Some(median(ratios.clone())),
    );
    rtt_row(&mut t, "xsock rawping (AF_XDP copy mode, native XDP)", &raw_native, Some(per_round(&raw_native, &kern)));
    rtt_row(&mut t, "kernel TCP: xsock ping --transport kernel", &kern, None);
    rtt_row(&mut t, "kernel TCP: sockperf ping-pong --full-rtt", &sp, Some(per_round(&sp, &kern)));
    out += "### Round-trip latency (MTU 1500)\n\n";
    out += &t.markdown();
    out += &format!(
        "\nPer-round p50 ratios xsock/kernel: {}\n\n",
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
    );

    // 2. Rate, MTU 1500.
    let secs = 3;
    let (mut r64, mut u64b, mut r1514, mut u1514, mut tcp, mut r1514n) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=rounds.min(3) {
        progress(&format!("rate round {round}/{}", rounds.min(3)));
        r64.push(bench.rawbw(64, secs, &[])?);
        u64b.push(bench.iperf3_udp(22, secs)?);
        r1514.push(bench.rawbw(1514, secs, &[])?);
        r1514n.push(bench.rawbw(1514, secs, &["--xdp-mode", "native"])?);
        u1514.push(bench.iperf3_udp(1472, secs)?);
        tcp.push(bench.iperf3_tcp(secs)?);
    }
    drop(bench);
    let pps_ratio = |a: &[Rate], b: &[Rate]| -> f64 {
        median(a.iter().zip(b).map(|(x, y)| x.pps.unwrap_or(0.0) / y.pps.unwrap_or(1.0)).collect())
    };
    let gb_ratio =
        |a: &[Rate], b: &[Rate]| -> f64 { median(a.iter().zip(b).map(|(x, y)| x.gbit_per_s / y.gbit_per_s).collect()) };

    // 3. Rate, MTU 9000 (jumbo, multi-buffer).
    let jumbo = Bench::two_hosts(xsock, 9000)?;
    let (mut r9014, mut u9014, mut tcp9k) = (vec![], vec![], vec![]);
    for round in 1..=rounds.min(3) {
        progress(&format!("jumbo round {round}/{}", rounds.min(3)));
        r9014.push(jumbo.rawbw(9014, secs, &["--multi-buffer"])?);
        u9014.push(jumbo.iperf3_udp(8958, secs)?);
        tcp9k.push(jumbo.iperf3_tcp(secs)?);
    }
    drop(jumbo);

    let mut t = Table::new(["one-way, 3 s each", "frame", "Gbit/s", "Mpps", "loss", "vs kernel (same round)"]);
    rate_row(&mut t, "xsock rawbw", "64 B", &r64, Some(pps_ratio(&r64, &u64b)));
    rate_row(&mut t, "kernel UDP (iperf3 -u -b 0 -l 22)", "64 B", &u64b, None);
    rate_row(&mut t, "xsock rawbw", "1514 B", &r1514, Some(gb_ratio(&r1514, &u1514)));
    rate_row(&mut t, "xsock rawbw, native XDP", "1514 B", &r1514n, Some(gb_ratio(&r1514n, &u1514)));
    rate_row(&mut t, "kernel UDP (iperf3 -u -b 0 -l 1472)", "1514 B", &u1514, None);
    rate_row(&mut t, "kernel TCP (iperf3, goodput, GSO)", "MTU 1500", &tcp, Some(gb_ratio(&tcp, &u1514)));
    rate_row(&mut t, "xsock rawbw --multi-buffer", "9014 B", &r9014, Some(gb_ratio(&r9014, &u9014)));
    rate_row(&mut t, "kernel UDP (iperf3 -u -b 0 -l 8958)", "9014 B", &u9014, None);
    rate_row(&mut t, "kernel TCP (iperf3, goodput, GSO)", "MTU 9000", &tcp9k, Some(gb_ratio(&tcp9k, &u9014)));
    out += "### One-way rate\n\n";
    out += &t.markdown();
    out += &format!(
        "\nRaw and UDP rates count whole frames received (Ethernet header included, FCS excluded); TCP is \
         goodput. The \"vs kernel\" column compares with the UDP row of the same frame size (Mpps at 64 B, \
         Gbit/s otherwise). xsock rawbw vs kernel TCP at MTU 1500: {}; at MTU 9000: {}.\n",
        ratio(median(r1514.iter().map(|r| r.gbit_per_s).collect()), median(tcp.iter().map(|r| r.gbit_per_s).collect())),
        ratio(
            median(r9014.iter().map(|r| r.gbit_per_s).collect()),
            median(tcp9k.iter().map(|r| r.gbit_per_s).collect())
        ),
    );
    out += &format!("\nSuite wall time: {:.0} s, {} rounds.\n", started.elapsed().as_secs_f64(), rounds);
    println!("{out}");
    Ok(())
}
