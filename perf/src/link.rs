//! The reliable-link suite (issue 3): `xsock ping` and `xsock bw` over
//! reliable-link against the same tools over kernel TCP (and sockperf,
//! iperf3), on one veth pair, one measurement at a time.

use std::{io, path::Path, time::Instant};

use xsock_perf::{
    Bench, Rate, Rtt,
    plot::{LogPlot, Series},
    report::{Table, median, ratio, us},
};

use crate::suites_common::{progress, rtt_row};

fn gbit(runs: &[Rate]) -> f64 {
    median(runs.iter().map(|r| r.gbit_per_s).collect())
}

/// Median over rounds of a/b, taken within each round.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

pub fn run(xsock: &Path, rounds: usize, out_dir: &Path) -> io::Result<()> {
    let started = Instant::now();
    let mut out = String::new();
    let bench = Bench::two_hosts(xsock, 1500)?;

    // 1. 64-byte round trips.
    let (mut link, mut kernel, mut sp, mut raw) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        progress(&format!("64 B latency round {round}/{rounds}"));
        link.push(bench.ping("link", 64, 20_000, &[], &[])?);
        kernel.push(bench.ping("kernel", 64, 20_000, &[], &[])?);
        sp.push(bench.sockperf_ping(64, 2)?);
        raw.push(bench.rawping(64, 20_000, &[])?);
    }
    let p50 = |v: &[Rtt]| v.iter().map(|r| r.rtt_p50_ns as f64).collect::<Vec<_>>();
    let mut t =
        Table::new(["64 B ping-pong, both ends busy-poll", "p50", "p99", "p99.9", "p50 / kernel TCP p50", "rounds"]);
    rtt_row(&mut t, "xsock ping --transport link (reliable-link)", &link, Some(paired(&p50(&link), &p50(&kernel))));
    rtt_row(&mut t, "xsock ping --transport kernel (kernel TCP)", &kernel, None);
    rtt_row(&mut t, "sockperf ping-pong --tcp --full-rtt", &sp, Some(paired(&p50(&sp), &p50(&kernel))));
    rtt_row(&mut t, "xsock rawping (bare AF_XDP frames: the floor)", &raw, Some(paired(&p50(&raw), &p50(&kernel))));
    out += "### Round-trip latency, 64-byte messages (MTU 1500)\n\n";
    out += &t.markdown();
    out += &format!(
        "\nPer-round p50 ratios link / kernel TCP: {}\n\n",
        link.iter()
            .zip(&kernel)
            .map(|(l, k)| format!("{:.2}", l.rtt_p50_ns as f64 / k.rtt_p50_ns as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 2. Latency sweep, 1 B … 1 MiB.
    progress("latency sweep");
    let link_sweep = bench.ping_sweep("link", 1 << 20, 5000)?;
    let kernel_sweep = bench.ping_sweep("kernel", 1 << 20, 5000)?;
    let mut t = Table::new(["size", "link p50", "link p99", "kernel p50", "kernel p99", "link / kernel p50"]);
    for ((size, l), (_, k)) in link_sweep.iter().zip(&kernel_sweep) {
        t.row([
            size.to_string(),
            us(l.rtt_p50_ns),
            us(l.rtt_p99_ns),
            us(k.rtt_p50_ns),
            us(k.rtt_p99_ns),
            ratio(l.rtt_p50_ns as f64, k.rtt_p50_ns as f64),
        ]);
    }
    out += "### Latency sweep, 1 B to 1 MiB (one run each; fewer round trips for large sizes)\n\n";
    out += &t.markdown();
    let series = |label: &str, colour, dashed, s: &[(usize, Rtt)], p99: bool| Series {
        label: label.into(),
        colour,
        dashed,
        points: s
            .iter()
            .map(|(size, r)| (*size as f64, (if p99 { r.rtt_p99_ns } else { r.rtt_p50_ns }) as f64 / 1e3))
            .collect(),
    };
    let plot = LogPlot {
        title: "xsock ping: round trip vs message size (veth, copy-mode AF_XDP, both ends busy-poll)".into(),
        x_label: "message size".into(),
        y_label: "round-trip time".into(),
        series: vec![
            series("reliable-link p50", "#c0392b", false, &link_sweep, false),
            series("reliable-link p99", "#c0392b", true, &link_sweep, true),
            series("kernel TCP p50", "#2c3e50", false, &kernel_sweep, false),
            series("kernel TCP p99", "#2c3e50", true, &kernel_sweep, true),
        ],
    };
    let svg = out_dir.join("latency_sweep.svg");
    std::fs::write(&svg, plot.svg())?;
    out += &format!("\nPlot: `{}`.\n\n", svg.display());

    // 3. Bulk, 1 MiB sends, MTU 1500 then 9000.
    let secs = 3;
    out += "### Bulk throughput, 1 MiB sends, one stream (bytes checked at the receiver)\n\n";
    let mut t = Table::new([
        "MTU",
        "link Gbit/s",
        "xsock bw kernel Gbit/s",
        "iperf3 Gbit/s",
        "link / kernel TCP",
        "raw frames Gbit/s",
    ]);
    for (mtu, mb) in [(1500u32, false), (9000, true)] {
        let b = if mtu == 1500 { None } else { Some(Bench::two_hosts(xsock, mtu)?) };
        let bench = b.as_ref().unwrap_or(&bench);
        let extra: &[&str] = if mb { &["--multi-buffer"] } else { &[] };
        let (mut l, mut k, mut i, mut r) = (vec![], vec![], vec![], vec![]);
        for round in 1..=rounds.min(3) {
            progress(&format!("bulk MTU {mtu} round {round}/{}", rounds.min(3)));
            l.push(bench.bw("link", 1 << 20, secs, extra, extra)?);
            k.push(bench.bw("kernel", 1 << 20, secs, &[], &[])?);
            i.push(bench.iperf3_tcp(secs)?);
            r.push(bench.rawbw(if mb { 9014 } else { 1514 }, secs, extra)?);
        }
        let lk = paired(
            &l.iter().map(|x| x.gbit_per_s).collect::<Vec<_>>(),
            &k.iter().map(|x| x.gbit_per_s).collect::<Vec<_>>(),
        );
        t.row([
            mtu.to_string(),
            format!("{:.2}", gbit(&l)),
            format!("{:.2}", gbit(&k)),
            format!("{:.2}", gbit(&i)),
            format!("{lk:.2}"),
            format!("{:.2}", gbit(&r)),
        ]);
    }
    out += &t.markdown();

    // 4. Loss: both ends drop a share of the frames they transmit.
    out += "\n### Goodput under injected frame loss (MTU 1500, both directions lossy, bytes checked)\n\n";
    let mut t = Table::new(["frame loss", "link Gbit/s", "vs lossless"]);
    let mut lossless = None;
    for loss in ["0", "0.001", "0.01"] {
        let flags = ["--inject-loss", loss];
        let mut runs = vec![];
        for round in 1..=rounds.min(3) {
            progress(&format!("loss {loss} round {round}/{}", rounds.min(3)));
            runs.push(bench.bw("link", 1 << 20, secs, &flags, &flags)?);
        }
        let g = gbit(&runs);
        let base = *lossless.get_or_insert(g);
        t.row([format!("{}%", loss.parse::<f64>().unwrap_or(0.0) * 100.0), format!("{g:.2}"), ratio(g, base)]);
    }
    out += &t.markdown();
    out += "\nEvery run's receiver compared every byte with what was sent: no run reported a corrupt byte \
            (`xsock bw` fails if one does).\n";
    out += &format!("\nSuite wall time: {:.0} s, {} rounds.\n", started.elapsed().as_secs_f64(), rounds);
    println!("{out}");
    Ok(())
}
