//! # xsock-perf: side-by-side measurements
//!
//! Builds a two-host network in namespaces ([`Bench`]) and runs xsock's
//! tools beside kernel baselines (our own kernel-TCP ping-pong, sockperf,
//! iperf3) on the same veth pair, one measurement at a time: on a 2-core
//! machine a busy-polling pair owns the machine, so nothing else may run.
//! Results are parsed from each tool's JSON (or sockperf's text) and
//! reported as tables with ratios against the baseline of the same run.
//!
//! Used by the `xsock-perf` suite (writes perf/RESULTS.md tables) and by
//! `xsock demo`.

#![forbid(unsafe_code)]

pub mod many;
pub mod plot;
pub mod report;

use std::{
    io,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use serde::Deserialize;
use xsock_testbed::{Host, LinkOpts, Testbed};

/// Round-trip percentiles, in nanoseconds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct Rtt {
    /// Median.
    pub rtt_p50_ns: u64,
    /// 99th percentile.
    pub rtt_p99_ns: u64,
    /// 99.9th percentile.
    pub rtt_p999_ns: u64,
    /// Maximum.
    pub rtt_max_ns: u64,
    /// Round trips measured.
    #[serde(default)]
    pub count: u64,
}

/// A one-way rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bits per second, in Gbit/s (see each scenario for what bytes count).
    pub gbit_per_s: f64,
    /// Packets (frames, datagrams) per second, where the tool reports them.
    pub pps: Option<f64>,
    /// Fraction of packets lost, where known.
    pub loss: Option<f64>,
}

/// Two hosts `a` (10.90.0.1) and `b` (10.90.0.2) on one veth pair.
pub struct Bench {
    /// The test bed; everything is removed when the bench drops.
    pub bed: Testbed,
    /// Client host.
    pub a: Host,
    /// Server host.
    pub b: Host,
    /// Path of the `xsock` binary.
    pub xsock: PathBuf,
    /// MTU of the link.
    pub mtu: u32,
}

/// The /24 the two hosts share.
pub const NET: &str = "10.90.0";
/// Address of host a.
pub const A_IP: &str = "10.90.0.1";
/// Address of host b.
pub const B_IP: &str = "10.90.0.2";

fn io_err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn stdout_json<T: for<'de> Deserialize<'de>>(what: &str, out: &Output) -> io::Result<T> {
    if !out.status.success() {
        return Err(io_err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| io_err(format!("{what}: bad JSON ({e}): {text}")))
}

impl Bench {
    /// Builds the two hosts with a link of `mtu`.
    pub fn two_hosts(xsock: &Path, mtu: u32) -> io::Result<Bench> {
        let bed = Testbed::new()?;
        let (a, b) = bed.pair(LinkOpts { mtu, queues: 1 }, NET)?;
        // Resolve ARP once so the first kernel measurement does not include it.
        a.exec("ping", &["-c1", "-W2", B_IP])?;
        Ok(Bench { bed, a, b, xsock: xsock.to_owned(), mtu })
    }

    fn xsock(&self) -> &str {
        self.xsock.to_str().expect("utf-8 path")
    }

    /// Starts an xsock server in `b` and waits until its XDP filter is attached.
    fn start_xsock_server(&self, args: &[&str]) -> io::Result<u32> {
        self.bed.spawn_ready(&self.b, self.xsock(), args, || self.b.has_xdp("eth0"))
    }

    /// Starts a TCP server in `b` and waits until `port` is listening.
    fn start_tcp_server(&self, program: &str, args: &[&str], port: u16) -> io::Result<u32> {
        self.bed.spawn_ready(&self.b, program, args, || self.b.listening(port))
    }

    fn stop(&self, pid: u32) {
        let _ = self.bed.finish(pid);
        // The XDP filter of an xsock server goes with it; wait so the next
        // measurement starts on a clean interface.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.b.has_xdp("eth0").unwrap_or(false) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `xsock rawping` between the hosts: `size`-byte frames, both ends busy-polling.
    pub fn rawping(&self, size: usize, count: u64, extra: &[&str]) -> io::Result<Rtt> {
        let mut server = vec!["rawping", "--iface", "eth0", "--echo", "--poll", "busy"];
        server.extend_from_slice(extra);
        let pid = self.start_xsock_server(&server)?;
        let peer = self.b.mac("eth0")?;
        let (size, count) = (size.to_string(), count.to_string());
        let mut client =
            vec!["rawping", "--iface", "eth0", "--peer-mac", &peer, "--size", &size, "--count", &count, "--json"];
        client.extend_from_slice(extra);
        let out = self.a.command(self.xsock(), &client).output();
        self.stop(pid);
        stdout_json("xsock rawping", &out?)
    }

    /// Kernel TCP ping-pong with `xsock ping --transport kernel`, both ends
    /// busy-polling non-blocking sockets.
    pub fn kernel_ping(&self, size: usize, count: u64) -> io::Result<Rtt> {
        let listen = format!("{B_IP}:7001");
        let pid = self.start_tcp_server(
            self.xsock(),
            &["ping", "--listen", &listen, "--transport", "kernel", "--poll", "busy"],
            7001,
        )?;
        let (size, count) = (size.to_string(), count.to_string());
        let out = self
            .a
            .command(
                self.xsock(),
                &[
                    "ping",
                    "--connect",
                    &listen,
                    "--transport",
                    "kernel",
                    "--poll",
                    "busy",
                    "--size",
                    &size,
                    "--count",
                    &count,
                    "--json",
                ],
            )
            .output();
        self.stop(pid);
        stdout_json("xsock ping --transport kernel", &out?)
    }

    /// sockperf TCP ping-pong (full round-trip times), both ends busy-polling
    /// (non-blocking sockets, zero epoll timeout), for `seconds`.
    pub fn sockperf_ping(&self, size: usize, seconds: u32) -> io::Result<Rtt> {
        let pid = self.start_tcp_server(
            "sockperf",
            &["server", "--tcp", "-i", B_IP, "-p", "7002", "--nonblocked", "--timeout", "0"],
            7002,
        )?;
        let (size, secs) = (size.to_string(), seconds.to_string());
        let out = self
            .a
            .command(
                "sockperf",
                &[
                    "ping-pong",
                    "--tcp",
                    "-i",
                    B_IP,
                    "-p",
                    "7002",
                    "-m",
                    &size,
                    "-t",
                    &secs,
                    "--full-rtt",
                    "--nonblocked",
                ],
            )
            .output();
        self.stop(pid);
        let out = out?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        parse_sockperf(&text).ok_or_else(|| io_err(format!("could not read sockperf's percentiles from:\n{text}")))
    }

    /// `xsock rawbw`: raw frames of `size` bytes for `seconds`; Gbit/s of
    /// whole frames received.
    pub fn rawbw(&self, size: usize, seconds: u32, extra: &[&str]) -> io::Result<Rate> {
        let mut server = vec!["rawbw", "--iface", "eth0", "--listen", "--poll", "busy"];
        server.extend_from_slice(extra);
        let pid = self.start_xsock_server(&server)?;
        let peer = self.b.mac("eth0")?;
        let (size, secs) = (size.to_string(), format!("{seconds}s"));
        let mut client =
            vec!["rawbw", "--iface", "eth0", "--peer-mac", &peer, "--size", &size, "--seconds", &secs, "--json"];
        client.extend_from_slice(extra);
        let out = self.a.command(self.xsock(), &client).output();
        self.stop(pid);
        #[derive(Deserialize)]
        struct R {
            gbit_per_s: f64,
            msgs_per_s: f64,
            loss: f64,
        }
        let r: R = stdout_json("xsock rawbw", &out?)?;
        Ok(Rate { gbit_per_s: r.gbit_per_s, pps: Some(r.msgs_per_s), loss: Some(r.loss) })
    }

    /// `xsock ping` over `transport` ("link" or "kernel"): `size`-byte
    /// messages, `count` round trips, both ends inline and busy-polling.
    pub fn ping(
        &self,
        transport: &str,
        size: usize,
        count: u64,
        server_extra: &[&str],
        client_extra: &[&str],
    ) -> io::Result<Rtt> {
        let listen = format!("{B_IP}:7005");
        let mut server = vec!["ping", "--iface", "eth0", "--listen", &listen];
        server.extend_from_slice(server_extra);
        let pid = self.start_tcp_server(self.xsock(), &server, 7005)?;
        let (size, count) = (size.to_string(), count.to_string());
        let mut client = vec![
            "ping",
            "--iface",
            "eth0",
            "--connect",
            &listen,
            "--transport",
            transport,
            "--size",
            &size,
            "--count",
            &count,
            "--json",
        ];
        client.extend_from_slice(client_extra);
        let out = self.a.command(self.xsock(), &client).output();
        self.stop(pid);
        stdout_json("xsock ping", &out?)
    }

    /// `xsock ping --sweep` over `transport`, powers of two up to `max`.
    pub fn ping_sweep(&self, transport: &str, max: usize, count: u64) -> io::Result<Vec<(usize, Rtt)>> {
        let listen = format!("{B_IP}:7006");
        let pid = self.start_tcp_server(self.xsock(), &["ping", "--iface", "eth0", "--listen", &listen], 7006)?;
        let (max, count) = (max.to_string(), count.to_string());
        let out = self
            .a
            .command(
                self.xsock(),
                &[
                    "ping",
                    "--iface",
                    "eth0",
                    "--connect",
                    &listen,
                    "--transport",
                    transport,
                    "--sweep",
                    "--max-size",
                    &max,
                    "--count",
                    &count,
                    "--json",
                ],
            )
            .output();
        self.stop(pid);
        #[derive(Deserialize)]
        struct Row {
            size: usize,
            #[serde(flatten)]
            rtt: Rtt,
        }
        #[derive(Deserialize)]
        struct Sweep {
            sweep: Vec<Row>,
        }
        let s: Sweep = stdout_json("xsock ping --sweep", &out?)?;
        Ok(s.sweep.into_iter().map(|r| (r.size, r.rtt)).collect())
    }

    /// `xsock bw` over `transport` with `size`-byte sends for `seconds`:
    /// receiver-measured goodput (bytes checked against the sent pattern).
    pub fn bw(
        &self,
        transport: &str,
        size: usize,
        seconds: u32,
        server_extra: &[&str],
        client_extra: &[&str],
    ) -> io::Result<Rate> {
        let listen = format!("{B_IP}:7007");
        let mut server = vec!["bw", "--iface", "eth0", "--listen", &listen];
        server.extend_from_slice(server_extra);
        let pid = self.start_tcp_server(self.xsock(), &server, 7007)?;
        let (size, secs) = (size.to_string(), format!("{seconds}s"));
        let mut client = vec![
            "bw",
            "--iface",
            "eth0",
            "--connect",
            &listen,
            "--transport",
            transport,
            "--size",
            &size,
            "--seconds",
            &secs,
            "--json",
        ];
        client.extend_from_slice(client_extra);
        let out = self.a.command(self.xsock(), &client).output();
        self.stop(pid);
        #[derive(Deserialize)]
        struct R {
            gbit_per_s: f64,
            corrupt_bytes: u64,
        }
        let r: R = stdout_json("xsock bw", &out?)?;
        if r.corrupt_bytes > 0 {
            return Err(io_err(format!("xsock bw: {} corrupt bytes", r.corrupt_bytes)));
        }
        Ok(Rate { gbit_per_s: r.gbit_per_s, pps: None, loss: None })
    }

    /// iperf3 TCP for `seconds`: receiver goodput (TCP payload bytes).
    pub fn iperf3_tcp(&self, seconds: u32) -> io::Result<Rate> {
        let pid = self.start_tcp_server("iperf3", &["-s", "-B", B_IP, "-p", "7003"], 7003)?;
        let secs = seconds.to_string();
        let out = self.a.command("iperf3", &["-c", B_IP, "-p", "7003", "-t", &secs, "-J"]).output();
        self.stop(pid);
        let v: serde_json::Value = stdout_json("iperf3 TCP", &out?)?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| io_err("iperf3 JSON has no end.sum_received.bits_per_second"))?;
        Ok(Rate { gbit_per_s: bps / 1e9, pps: None, loss: None })
    }

    /// iperf3 UDP with `payload`-byte datagrams, unlimited rate, for
    /// `seconds`. Reports whole-frame Gbit/s (payload + 42 bytes of
    /// Ethernet/IP/UDP headers) and datagrams received per second, so it
    /// compares with `rawbw`'s frame counts.
    pub fn iperf3_udp(&self, payload: usize, seconds: u32) -> io::Result<Rate> {
        let pid = self.start_tcp_server("iperf3", &["-s", "-B", B_IP, "-p", "7004"], 7004)?;
        let (len, secs) = (payload.to_string(), seconds.to_string());
        let out = self
            .a
            .command("iperf3", &["-c", B_IP, "-p", "7004", "-u", "-b", "0", "-l", &len, "-t", &secs, "-J"])
            .output();
        self.stop(pid);
        let v: serde_json::Value = stdout_json("iperf3 UDP", &out?)?;
        let sum = &v["end"]["sum"];
        let packets = sum["packets"].as_f64().ok_or_else(|| io_err("iperf3 JSON has no end.sum.packets"))?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let secs = sum["seconds"].as_f64().unwrap_or(f64::from(seconds)).max(1e-9);
        let received = packets - lost;
        Ok(Rate {
            gbit_per_s: received * (payload as f64 + 42.0) * 8.0 / secs / 1e9,
            pps: Some(received / secs),
            loss: Some(if packets > 0.0 { lost / packets } else { 0.0 }),
        })
    }
}

/// Reads the RTT percentiles from sockperf's `--full-rtt` report (µs).
pub fn parse_sockperf(text: &str) -> Option<Rtt> {
    let pct = |label: &str| -> Option<u64> {
        text.lines().find(|l| l.contains(label)).and_then(|l| {
            let v: f64 = l.rsplit('=').next()?.trim().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()?;
            Some((v * 1000.0).round() as u64)
        })
    };
    let count = text
        .lines()
        .find(|l| l.contains("Total") && l.contains("observations"))
        .and_then(|l| l.split("Total ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(Rtt {
        rtt_p50_ns: pct("percentile 50.000")?,
        rtt_p99_ns: pct("percentile 99.000")?,
        rtt_p999_ns: pct("percentile 99.900")?,
        rtt_max_ns: pct("<MAX> observation")?,
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_report_parses() {
        let text = "sockperf: \u{1b}[2;35mTotal 192614 observations\u{1b}[0m; each percentile contains 1926.14 observations\n\
            sockperf: ---> <MAX> observation = 1520.976\n\
            sockperf: ---> percentile 99.900 =   54.030\n\
            sockperf: ---> percentile 99.000 =   36.989\n\
            sockperf: ---> percentile 50.000 =   12.714\n";
        let r = parse_sockperf(text).unwrap();
        assert_eq!(r.rtt_p50_ns, 12_714);
        assert_eq!(r.rtt_p99_ns, 36_989);
        assert_eq!(r.rtt_p999_ns, 54_030);
        assert_eq!(r.rtt_max_ns, 1_520_976);
        assert_eq!(r.count, 192_614);
        assert!(parse_sockperf("nothing here").is_none());
    }
}
