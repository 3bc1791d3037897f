//! The scale suite (issue 11): many connections at once (`xsock conns`),
//! many bulk streams (`xsock bw --streams`), each beside kernel TCP with the
//! same counts, then one stream against raw frames and iperf3 and 64-byte
//! round trips against raw frames, all in one run, one measurement at a time.

use std::{io, path::Path, time::Instant};

use xsock_perf::{
    Bench, Rate, Rtt,
    many::{BulkRun, ConnsRun},
    report::{Table, median, us},
};

use crate::suites_common::{progress, rtt_row};

/// Connection counts of the connections table.
const COUNTS: [usize; 6] = [1, 16, 128, 512, 2048, 10_000];
/// Stream counts of the bulk table.
const STREAMS: [usize; 4] = [1, 16, 128, 512];
/// Seconds each connection is held idle (memory is read at its end).
const HOLD: u32 = 2;

fn med(v: impl Iterator<Item = f64>) -> f64 {
    median(v.collect())
}

fn ms(ns: f64) -> String {
    if ns >= 1e9 { format!("{:.2} s", ns / 1e9) } else { format!("{:.1} ms", ns / 1e6) }
}

/// Median over rounds of a/b, taken within each round.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

fn connections(xsock: &Path, rounds: usize) -> io::Result<String> {
    let mut t = Table::new([
        "connections",
        "transport",
        "ok / failed",
        "wall (open + 64 KiB each way)",
        "link / kernel wall",
        "connect p50",
        "connect p99",
        "client RSS idle",
        "server RSS idle",
        "KiB per idle conn (client / server)",
        "kernel TCP mem",
    ]);
    let mut first: [Option<(f64, f64)>; 2] = [None, None];
    for count in COUNTS {
        let rounds = if count >= 2048 { rounds.min(2) } else { rounds };
        let mut runs: [Vec<ConnsRun>; 2] = [vec![], vec![]];
        for round in 1..=rounds {
            for (i, transport) in ["link", "kernel"].into_iter().enumerate() {
                progress(&format!("{count} connections over {transport}, round {round}/{rounds}"));
                // Fresh hosts for every run: 10,000 kernel connections
                // leave 10,000 sockets in TIME-WAIT, and the next 10,000
                // connects beside them took 24 s instead of 3.
                let bench = Bench::two_hosts(xsock, 1500)?;
                runs[i].push(bench.conns(transport, count, 64 << 10, HOLD)?);
            }
        }
        let wall = |r: &[ConnsRun]| r.iter().map(|x| x.seconds).collect::<Vec<_>>();
        let vs = paired(&wall(&runs[0]), &wall(&runs[1]));
        for (i, transport) in ["link (reliable-link)", "kernel TCP"].into_iter().enumerate() {
            let r = &runs[i];
            let ok: usize = r.iter().map(|x| x.ok).sum();
            let failed: usize = r.iter().map(|x| x.failed).sum();
            let client = med(r.iter().map(|x| x.rss_kib as f64));
            let server = med(r.iter().map(|x| x.server_idle_kib as f64));
            // Per idle connection: against the run with one connection
            // (a runtime's own start-up memory is not a connection's).
            let (client_base, server_base) = *first[i].get_or_insert((client, server));
            let per = |now: f64, base: f64| {
                if count > 1 { format!("{:.1}", (now - base) / (count - 1) as f64) } else { "-".into() }
            };
            let pages = med(r.iter().map(|x| x.kernel_tcp_pages as f64));
            t.row([
                count.to_string(),
                transport.to_owned(),
                format!("{ok} / {failed}"),
                ms(med(r.iter().map(|x| x.seconds * 1e9))),
                if i == 0 { format!("{vs:.2}") } else { "1.00".into() },
                ms(med(r.iter().map(|x| x.connect_p50_ns as f64))),
                ms(med(r.iter().map(|x| x.connect_p99_ns as f64))),
                format!("{:.0} MiB", client / 1024.0),
                format!("{:.0} MiB", server / 1024.0),
                format!("{} / {}", per(client, client_base), per(server, server_base)),
                format!("{:.0} MiB", pages * 4.0 / 1024.0),
            ]);
            if let Some(e) = r.iter().find_map(|x| x.first_error.clone()) {
                progress(&format!("{count} over {transport}: first error: {e}"));
            }
        }
    }
    let mut out = format!(
        "### Many connections at once: open, 64 KiB each way, hold {HOLD} s idle, close \
         (`xsock conns --count N --bytes 65536 --hold {HOLD}s`)\n\n"
    );
    out += &t.markdown();
    out += "\nEvery run on freshly made hosts (namespaces). RSS is read from /proc when the client reports that it has held every connection idle \
            (the server) and by the client itself at that moment. Kernel TCP keeps its socket buffers in \
            the kernel, outside RSS: the last column is /proc/net/sockstat's TCP `mem` on the server's host \
            then. Wall times and connect times are medians over rounds; the ratio is taken within each round.\n\n";
    Ok(out)
}

fn bulk(bench: &Bench, rounds: usize) -> io::Result<String> {
    let secs = 3;
    let mut t = Table::new([
        "streams",
        "link Gbit/s",
        "kernel TCP Gbit/s",
        "link / kernel",
        "streams with no byte (link / kernel)",
        "link peak RSS (client / server)",
        "kernel peak RSS (client / server)",
    ]);
    for streams in STREAMS {
        let mut runs: [Vec<BulkRun>; 2] = [vec![], vec![]];
        for round in 1..=rounds.min(3) {
            for (i, transport) in ["link", "kernel"].into_iter().enumerate() {
                progress(&format!("bulk {streams} streams over {transport}, round {round}/{}", rounds.min(3)));
                runs[i].push(bench.bulk(transport, streams, 64 << 10, secs)?);
            }
        }
        let g = |r: &[BulkRun]| r.iter().map(|x| x.rate.gbit_per_s).collect::<Vec<_>>();
        let peak = |r: &[BulkRun]| {
            format!(
                "{:.0} / {:.0} MiB",
                med(r.iter().map(|x| x.client_peak_kib as f64)) / 1024.0,
                med(r.iter().map(|x| x.server_peak_kib as f64)) / 1024.0
            )
        };
        let starved = |r: &[BulkRun]| r.iter().map(|x| x.starved).max().unwrap_or(0);
        t.row([
            streams.to_string(),
            format!("{:.2}", median(g(&runs[0]))),
            format!("{:.2}", median(g(&runs[1]))),
            format!("{:.2}", paired(&g(&runs[0]), &g(&runs[1]))),
            format!("{} / {}", starved(&runs[0]), starved(&runs[1])),
            peak(&runs[0]),
            peak(&runs[1]),
        ]);
    }
    let mut out = format!(
        "### Bulk over many streams, 64 KiB sends, {secs} s, MTU 1500 (`xsock bw --streams N --size 65536`)\n\n"
    );
    out += &t.markdown();
    out += "\nGoodput counted at the receiver, every byte checked. Both ends sleep-poll (`bw`'s default).\n\n";
    Ok(out)
}

fn one_stream(xsock: &Path, rounds: usize) -> io::Result<String> {
    let secs = 3;
    let mut t = Table::new([
        "MTU",
        "link Gbit/s",
        "iperf3 Gbit/s",
        "raw frames Gbit/s",
        "link / raw",
        "link / iperf3",
        "rounds",
    ]);
    for mtu in [1500u32, 9000] {
        let bench = Bench::two_hosts(xsock, mtu)?;
        let frame = if mtu == 1500 { 1514 } else { 9014 };
        // No --multi-buffer at 9000: the runtime must choose it itself.
        let (mut l, mut i, mut r) = (Vec::<Rate>::new(), Vec::<Rate>::new(), Vec::<Rate>::new());
        for round in 1..=rounds.min(3) {
            progress(&format!("one stream MTU {mtu} round {round}/{}", rounds.min(3)));
            l.push(bench.bw("link", 1 << 20, secs, &[], &[])?);
            i.push(bench.iperf3_tcp(secs)?);
            r.push(bench.rawbw(frame, secs, &[])?);
        }
        let g = |v: &[Rate]| v.iter().map(|x| x.gbit_per_s).collect::<Vec<_>>();
        t.row([
            mtu.to_string(),
            format!("{:.2}", median(g(&l))),
            format!("{:.2}", median(g(&i))),
            format!("{:.2}", median(g(&r))),
            format!("{:.2}", paired(&g(&l), &g(&r))),
            format!("{:.2}", paired(&g(&l), &g(&i))),
            l.len().to_string(),
        ]);
    }
    let mut out = format!(
        "### One stream, 1 MiB sends, {secs} s: reliable-link vs iperf3 vs raw frames (`xsock bw`, `iperf3 -c`, \
         `xsock rawbw --size 1514|9014`; no flags at MTU 9000)\n\n"
    );
    out += &t.markdown();
    out += "\nraw frames: whole frames received by a busy-polling `xsock rawbw`; link and iperf3: payload.\n\n";
    Ok(out)
}

fn ping(bench: &Bench, rounds: usize) -> io::Result<String> {
    let (mut link, mut kernel, mut raw) = (Vec::<Rtt>::new(), Vec::<Rtt>::new(), Vec::<Rtt>::new());
    for round in 1..=rounds {
        progress(&format!("64 B ping round {round}/{rounds}"));
        link.push(bench.ping("link", 64, 20_000, &[], &[])?);
        kernel.push(bench.ping("kernel", 64, 20_000, &[], &[])?);
        raw.push(bench.rawping(64, 20_000, &[])?);
    }
    let p50 = |v: &[Rtt]| v.iter().map(|r| r.rtt_p50_ns as f64).collect::<Vec<_>>();
    let mut t = Table::new(["64 B ping-pong, both ends busy-poll", "p50", "p99", "p99.9", "p50 / raw p50", "rounds"]);
    rtt_row(&mut t, "xsock ping --transport link", &link, Some(paired(&p50(&link), &p50(&raw))));
    rtt_row(&mut t, "xsock ping --transport kernel", &kernel, Some(paired(&p50(&kernel), &p50(&raw))));
    rtt_row(&mut t, "xsock rawping (bare AF_XDP frames)", &raw, None);
    let mut out =
        String::from("### 64 B round trips, MTU 1500 (`xsock ping --size 64 --count 20000`, `xsock rawping`)\n\n");
    out += &t.markdown();
    out += &format!(
        "\nPer-round link p50: {}; raw p50: {}.\n\n",
        link.iter().map(|r| us(r.rtt_p50_ns)).collect::<Vec<_>>().join(", "),
        raw.iter().map(|r| us(r.rtt_p50_ns)).collect::<Vec<_>>().join(", ")
    );
    Ok(out)
}

pub fn run(xsock: &Path, rounds: usize, only: Option<&str>) -> io::Result<()> {
    let started = Instant::now();
    let want = |part: &str| only.is_none_or(|o| o == part);
    let mut out = String::new();
    if want("conns") {
        out += &connections(xsock, rounds)?;
    }
    let bench = Bench::two_hosts(xsock, 1500)?;
    if want("bulk") {
        out += &bulk(&bench, rounds)?;
    }
    if want("ping") {
        out += &ping(&bench, rounds)?;
    }
    drop(bench);
    if want("one") {
        out += &one_stream(xsock, rounds)?;
    }
    out += &format!("Suite wall time: {:.0} s, {rounds} rounds.\n", started.elapsed().as_secs_f64());
    println!("{out}");
    Ok(())
}
