//! The relay suite (issue 5): latency and bulk through relays against
//! direct kernel TCP between the same hosts, the cost of an extra relay
//! hop, all-to-all connect of 64 endpoints over 8 LANs against plain
//! kernel TCP (with the TCP connections that cross LAN boundaries counted
//! by the routers), and recovery after a relay is killed.
//!
//! One part alone: `XSOCK_PERF_RELAY=probe` (an isolated relayed connect),
//! `=mesh` (the all-to-all), `=kill` (the relay kill), `=preload`
//! (unmodified programs across LANs by virtual address, `across.rs`), or
//! `XSOCK_PERF_RELAY_BULK="FLAGS"` (relayed bulk with the relays' flags).
//! The all-to-all's size: `XSOCK_PERF_MESH_LANS` (8), `..._PER_HOST`
//! (endpoints per process, 4), `..._PARALLEL` (connects in flight per
//! endpoint, 2), `..._POLL` (the endpoints' `--poll`, adaptive).
//! `XSOCK_PERF_KILL_DUMP=1` prints the relay kill's attempts
//! within 100 ms of the kill.

use std::{
    io,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use xsock_perf::{
    Rate, Rtt,
    report::{Table, median, ratio, us},
};
use xsock_testbed::{
    Host,
    overlay::{MESH_PORT, Overlay},
    sites::{Policy, Site, SiteSpec},
};

use crate::suites_common::{progress, rtt_row};

fn json<T: serde::de::DeserializeOwned>(what: &str, out: io::Result<std::process::Output>) -> io::Result<T> {
    let out = out?;
    if !out.status.success() {
        return Err(io::Error::other(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| io::Error::other(format!("{what}: bad JSON ({e}): {text}")))
}

fn all_relays(o: &Overlay) -> Vec<String> {
    o.relay_names()
}

fn converge(o: &Overlay) {
    let names = all_relays(o);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    o.converge(&refs, Duration::from_secs(30));
}

/// Counts TCP SYNs (connection attempts) each router forwards from its LAN
/// to the WAN: the TCP connections crossing LAN boundaries.
fn count_crossings(sites: &[Site]) -> io::Result<()> {
    for s in sites {
        s.router.nft(
            "table inet xsock_count {
                chain crossings {
                    type filter hook forward priority -10; policy accept;
                    iifname \"lan0\" oifname \"wan0\" tcp flags & (syn | ack) == syn counter
                }
            }",
        )?;
    }
    Ok(())
}

/// SYNs counted so far (cumulative: take differences).
fn crossings(sites: &[Site]) -> io::Result<u64> {
    let mut n = 0;
    for s in sites {
        let text = String::from_utf8_lossy(&s.router.exec("nft", &["list", "table", "inet", "xsock_count"])?.stdout)
            .to_string();
        let p =
            text.split("packets ").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|v| v.parse::<u64>().ok());
        n += p.ok_or_else(|| io::Error::other(format!("no counter in {text}")))?;
    }
    Ok(n)
}

/// The relayed bulk sender and sink sleep when idle: on two cores, two
/// busy-polling ends leave the two relays between them no CPU.
const BULK_POLL: &str = "sleep";

struct PathBench<'a> {
    o: &'a Overlay,
    xsock: &'a str,
}

impl PathBench<'_> {
    fn host(&self, site: usize) -> (&Host, String) {
        let s = &self.o.sites.sites[site];
        (&s.hosts[0], s.host_ip(0).to_string())
    }

    /// Plain kernel TCP ping servers on every host (port 7701; blocking
    /// reads, no XDP), up beside the overlay ones.
    fn start_kernel_servers(&self) -> io::Result<()> {
        for s in self.o.sites.sites.iter().filter(|s| !s.hosts.is_empty()) {
            let h = &s.hosts[0];
            // Sleeping servers: busy ones would take the cores the relays need.
            let args =
                ["ping", "--transport", "kernel", "--listen", &format!("{}:7701", s.host_ip(0)), "--poll", "sleep"];
            self.o.bed.spawn_ready(h, self.xsock, &args, || h.listening(7701))?;
        }
        Ok(())
    }

    /// Runs `f` while an overlay `tool` server (ping on 7700 as
    /// `SITE-echo`, bw on 7702 as `SITE-sink`) runs on `site`'s host; one
    /// xsock runtime per interface, so it is stopped afterwards.
    fn with_server<T>(&self, site: &str, tool: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let s = self.o.sites.sites.iter().find(|s| s.spec.name == site).expect("site");
        let h = &s.hosts[0];
        let key = self.o.key.to_str().expect("utf-8");
        let (port, name) = if tool == "ping" { (7700, format!("{site}-echo")) } else { (7702, format!("{site}-sink")) };
        let listen = format!("{}:{port}", s.host_ip(0));
        // The echo server sleeps like its kernel counterpart; the bulk sink polls.
        let poll = if tool == "ping" { "sleep" } else { BULK_POLL };
        let args = [
            tool,
            "--iface",
            "eth0",
            "--listen",
            &listen,
            "--boot",
            &self.o.boot,
            "--name",
            &name,
            "--key-file",
            key,
            "--poll",
            poll,
        ];
        let pid = self.o.bed.spawn_ready(h, self.xsock, &args, || h.listening(port))?;
        // Its port must reach the relays' directory before anyone connects.
        std::thread::sleep(Duration::from_millis(200));
        let r = f();
        let _ = self.o.bed.finish(pid);
        let t = Instant::now();
        while h.has_xdp("eth0").unwrap_or(false) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        r
    }

    fn relayed_ping(&self, from: usize, to: &str, poll: &str) -> io::Result<Rtt> {
        let (h, _) = self.host(from);
        let key = self.o.key.to_str().expect("utf-8");
        let dst = format!("{to}-echo:7700");
        let args = [
            "ping",
            "--iface",
            "eth0",
            "--connect",
            &dst,
            "--boot",
            &self.o.boot,
            "--name",
            "prober",
            "--key-file",
            key,
            "--count",
            "20000",
            "--warmup",
            "2000",
            "--poll",
            poll,
            "--json",
        ];
        json("relayed xsock ping", h.command(self.xsock, &args).output())
    }

    fn kernel_ping(&self, from: usize, to: usize, poll: &str) -> io::Result<Rtt> {
        let (h, _) = self.host(from);
        let dst = format!("{}:7701", self.host(to).1);
        let args = [
            "ping",
            "--transport",
            "kernel",
            "--connect",
            &dst,
            "--count",
            "20000",
            "--warmup",
            "2000",
            "--poll",
            poll,
            "--json",
        ];
        json("direct kernel ping", h.command(self.xsock, &args).output())
    }

    fn relayed_bw(&self, from: usize, to: &str) -> io::Result<Rate> {
        let (h, _) = self.host(from);
        let key = self.o.key.to_str().expect("utf-8");
        let dst = format!("{to}-sink:7702");
        let args = [
            "bw",
            "--iface",
            "eth0",
            "--connect",
            &dst,
            "--boot",
            &self.o.boot,
            "--name",
            "sender",
            "--key-file",
            key,
            "--size",
            "1048576",
            "--seconds",
            "5",
            "--poll",
            BULK_POLL,
            "--json",
        ];
        let r: Value = json("relayed xsock bw", h.command(self.xsock, &args).output())?;
        Ok(Rate { gbit_per_s: r["gbit_per_s"].as_f64().unwrap_or(0.0), pps: None, loss: None })
    }

    fn kernel_bw(&self, from: usize, to: usize) -> io::Result<Rate> {
        let (h, _) = self.host(from);
        let (sh, ip) = self.host(to);
        let dst = format!("{ip}:7703");
        // A busy-polling receiver: `xsock bw` over kernel TCP does not sleep
        // on the socket, so a sleeping one would wake only every 100 ms.
        let pid = self
            .o
            .bed
            .spawn_ready(sh, self.xsock, &["bw", "--transport", "kernel", "--listen", &dst], || sh.listening(7703))?;
        let args = ["bw", "--transport", "kernel", "--connect", &dst, "--size", "1048576", "--seconds", "5", "--json"];
        let r: io::Result<Value> = json("direct kernel bw", h.command(self.xsock, &args).output());
        let _ = self.o.bed.finish(pid);
        let r = r?;
        Ok(Rate { gbit_per_s: r["gbit_per_s"].as_f64().unwrap_or(0.0), pps: None, loss: None })
    }
}

fn paths(xsock: &str, rounds: usize, out: &mut String, spin: &str, bulk: bool) -> io::Result<()> {
    let s = |name, policy, hosts| SiteSpec { name, policy, relays: 1, hosts };
    let specs =
        [s("hub", Policy::Open, 0), s("a", Policy::Open, 1), s("b", Policy::Open, 1), s("s", Policy::HubOnly, 1)];
    let o = Overlay::start_with(xsock, "perf-paths", &specs, &["--spin", spin]);
    converge(&o);
    let b = PathBench { o: &o, xsock };
    b.start_kernel_servers()?;
    // Endpoints sleep while waiting: on two cores, two busy-polling
    // endpoints leave the relays between them no CPU.
    for poll in ["sleep"] {
        let (mut relayed, mut kernel, mut extra) = (vec![], vec![], vec![]);
        for round in 1..=rounds {
            progress(&format!("relay latency ({poll}) round {round}/{rounds}"));
            relayed.push(b.with_server("b", "ping", || b.relayed_ping(1, "b", poll))?);
            kernel.push(b.kernel_ping(1, 2, poll)?);
            extra.push(b.with_server("s", "ping", || b.relayed_ping(1, "s", poll))?);
        }
        let p50 = |v: &[Rtt]| v.iter().map(|r| r.rtt_p50_ns as f64).collect::<Vec<_>>();
        let per_round = |a: &[Rtt], k: &[Rtt]| median(p50(a).iter().zip(p50(k)).map(|(x, y)| x / y).collect());
        let mut t = Table::new([
            format!("64 B ping-pong, endpoints {poll}-poll, relays --spin {spin}"),
            "p50".into(),
            "p99".into(),
            "p99.9".into(),
            "p50 / direct kernel TCP".into(),
            "rounds".into(),
        ]);
        rtt_row(&mut t, "direct kernel TCP a -> b (through both routers)", &kernel, None);
        rtt_row(&mut t, "overlay a -> relay a -> relay b -> b", &relayed, Some(per_round(&relayed, &kernel)));
        rtt_row(&mut t, "overlay a -> relay a -> hub relay -> relay s -> s", &extra, Some(per_round(&extra, &kernel)));
        *out += &format!("### Latency through relays (endpoints {poll}-poll, relays --spin {spin})\n\n");
        *out += &t.markdown();
        let hop = median(p50(&extra).iter().zip(p50(&relayed)).map(|(x, y)| x - y).collect());
        *out +=
            &format!("\nCost of the extra relay hop (p50, median of per-round differences): {}.\n\n", us(hop as u64));
    }
    if !bulk {
        return Ok(());
    }
    let (mut relayed, mut kernel) = (vec![], vec![]);
    for round in 1..=rounds {
        progress(&format!("relay bulk round {round}/{rounds}"));
        relayed.push(b.with_server("b", "bw", || b.relayed_bw(1, "b"))?);
        kernel.push(b.kernel_bw(1, 2)?);
    }
    let g = |v: &[Rate]| v.iter().map(|r| r.gbit_per_s).collect::<Vec<_>>();
    let per_round = median(g(&relayed).iter().zip(g(&kernel)).map(|(x, y)| x / y).collect());
    let mut t = Table::new(["bulk a -> b, 1 MiB sends, 5 s, bytes checked", "Gbit/s", "vs direct", "rounds"]);
    t.row([
        "direct kernel TCP (xsock bw --transport kernel)".into(),
        format!("{:.2}", median(g(&kernel))),
        "1.00".into(),
        rounds.to_string(),
    ]);
    t.row([
        "overlay: reliable-link -> relay a -> kernel TCP -> relay b -> reliable-link".into(),
        format!("{:.2}", median(g(&relayed))),
        format!("{per_round:.2}"),
        rounds.to_string(),
    ]);
    *out += "### Bulk through relays\n\n";
    *out += &t.markdown();
    *out += "\n";
    Ok(())
}

/// Connects each endpoint has in flight in the all-to-all runs (both
/// sides alike; `XSOCK_PERF_MESH_PARALLEL` changes it).
fn parallel() -> String {
    std::env::var("XSOCK_PERF_MESH_PARALLEL").unwrap_or_else(|_| "2".into())
}

fn bulk_only(xsock: &str, rounds: usize, out: &mut String, flags: &[&str]) -> io::Result<()> {
    let s = |name, policy, hosts| SiteSpec { name, policy, relays: 1, hosts };
    let specs = [s("hub", Policy::Open, 0), s("a", Policy::Open, 1), s("b", Policy::Open, 1)];
    let o = Overlay::start_with(xsock, "perf-bulk", &specs, flags);
    converge(&o);
    let b = PathBench { o: &o, xsock };
    for _ in 0..rounds {
        let r = b.with_server("b", "bw", || b.relayed_bw(1, "b"))?;
        let k = b.kernel_bw(1, 2)?;
        *out += &format!("relays {flags:?}: relayed {:.2} Gbit/s, direct kernel {:.2}\n", r.gbit_per_s, k.gbit_per_s);
    }
    Ok(())
}

fn all_to_all(xsock: &str, rounds: usize, out: &mut String) -> io::Result<()> {
    // 8 LANs of 2 hosts with 4 endpoints each, unless the environment asks
    // for more (XSOCK_PERF_MESH_LANS, XSOCK_PERF_MESH_PER_HOST).
    let knob = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let lans = knob("XSOCK_PERF_MESH_LANS", 8).clamp(2, 32);
    const NAMES: [&str; 32] = [
        "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10", "l11", "l12", "l13", "l14", "l15", "l16", "l17",
        "l18", "l19", "l20", "l21", "l22", "l23", "l24", "l25", "l26", "l27", "l28", "l29", "l30", "l31", "l32",
    ];
    let names = &NAMES[..lans];
    let specs: Vec<SiteSpec> =
        names.iter().map(|&name| SiteSpec { name, policy: Policy::Open, relays: 1, hosts: 2 }).collect();
    let o = Overlay::start_after(xsock, "perf-mesh", &specs, &[], |s| count_crossings(&s.sites));
    converge(&o);
    let setup_crossings = crossings(&o.sites.sites)?;
    let mut seen = setup_crossings;
    let mut delta = |sites: &[Site]| -> io::Result<u64> {
        let now = crossings(sites)?;
        let d = now - seen;
        seen = now;
        Ok(d)
    };
    let hosts = o.endpoints();
    let per_host = knob("XSOCK_PERF_MESH_PER_HOST", 4).clamp(1, 64);
    let endpoints = lans * 2 * per_host;
    let overlay_peers: Vec<String> = hosts
        .iter()
        .flat_map(|(n, _)| (0..per_host).map(move |k| format!("{n}-{k}:{}", MESH_PORT as usize + k)))
        .collect();
    let plain_peers: Vec<String> = o
        .sites
        .sites
        .iter()
        .flat_map(|s| (0..s.hosts.len()).map(move |h| s.host_ip(h)))
        .flat_map(|ip| (0..per_host).map(move |k| format!("{ip}:{}", MESH_PORT as usize + k)))
        .collect();
    let ips: Vec<String> =
        o.sites.sites.iter().flat_map(|s| (0..s.hosts.len()).map(move |h| s.host_ip(h).to_string())).collect();
    let k = per_host.to_string();
    let connect_times = |reports: &[Value]| -> String {
        let p50 = median(reports.iter().filter_map(|r| r["connect_p50_us"].as_f64()).collect());
        let max = reports.iter().filter_map(|r| r["connect_max_us"].as_u64()).max().unwrap_or(0);
        format!("{:.2} / {:.1}", p50 / 1e3, max as f64 / 1e3)
    };
    let span = |reports: &[Value]| -> (f64, u64, u64, usize) {
        let start = reports.iter().filter_map(|r| r["start_unix_ns"].as_u64()).min().unwrap_or(0);
        let end = reports.iter().filter_map(|r| r["end_unix_ns"].as_u64()).max().unwrap_or(0);
        let ok: u64 = reports.iter().filter_map(|r| r["ok"].as_u64()).sum();
        let pairs: u64 = reports.iter().filter_map(|r| r["pairs"].as_u64()).sum();
        let failed = reports.iter().map(|r| r["failed"].as_array().map_or(0, Vec::len)).sum();
        ((end.saturating_sub(start)) as f64 / 1e6, ok, pairs, failed)
    };
    let mut t = Table::new([
        "round",
        "xsock overlay ms",
        "ok / pairs",
        "connect p50 / max ms",
        "TCP conns crossing LANs (joins + connects)",
        "plain kernel TCP ms",
        "ok / pairs",
        "connect p50 / max ms ",
        "TCP conns crossing LANs",
        "overlay / kernel",
    ]);
    let (mut xs, mut ks) = (vec![], vec![]);
    let mut first_error = None;
    let poll = std::env::var("XSOCK_PERF_MESH_POLL").unwrap_or_else(|_| "adaptive".into());
    for round in 1..=rounds {
        progress(&format!("all-to-all round {round}/{rounds}"));
        // Joining (registration) is before the barrier; only the connect
        // phase is timed. Each process holds 4 endpoints.
        let reports = o.mesh_run(&hosts, &overlay_peers.join(","), |_, name| {
            let mut a = o.join_flags(name);
            a.extend(["--endpoints", &k, "--parallel", &parallel(), "--poll", &poll].map(String::from));
            a
        })?;
        let (x_ms, x_ok, x_pairs, _) = span(&reports);
        let x_conn = connect_times(&reports);
        let x_cross = delta(&o.sites.sites)?;
        if first_error.is_none() {
            first_error = reports.iter().find_map(|r| r["failed"].as_array().and_then(|a| a.first()).cloned());
        }
        let per_host_reports = o.mesh_run(&hosts, &plain_peers.join(","), |i, _| {
            ["--plain", "--listen-ip", &ips[i], "--endpoints", &k, "--parallel", &parallel()].map(String::from).to_vec()
        })?;
        let (k_ms, k_ok, k_pairs, _) = span(&per_host_reports);
        let k_conn = connect_times(&per_host_reports);
        let k_cross = delta(&o.sites.sites)?;
        xs.push(x_ms);
        ks.push(k_ms);
        t.row([
            round.to_string(),
            format!("{x_ms:.1}"),
            format!("{x_ok} / {x_pairs}"),
            x_conn.clone(),
            x_cross.to_string(),
            format!("{k_ms:.1}"),
            format!("{k_ok} / {k_pairs}"),
            k_conn.clone(),
            k_cross.to_string(),
            ratio(x_ms, k_ms),
        ]);
    }
    *out += &format!(
        "### All-to-all connect: {endpoints} endpoints over {lans} LANs, every endpoint to every other, one 64-byte message each way\n\n"
    );
    *out += &t.markdown();
    *out += &format!(
        "\nMedian: overlay {:.1} ms, plain kernel TCP {:.1} ms. {} processes (2 hosts per LAN), {per_host} endpoints each, \
         {} connects in flight per endpoint; a barrier (`--start-at`) starts every process together after it \
         has joined and fetched the directory; timed from the first start to the last exchange (joining is not \
         timed). TCP connections crossing LANs are TCP SYNs the routers' nftables counted from LAN to WAN during \
         each round: for the overlay, the {endpoints} endpoints' bootstrap sessions (made at join) and nothing else, since \
         the virtual connections ride the relay links; the relays' own setup (relay links and bootstrap sessions, \
         once, before the rounds) crossed {setup_crossings}.\n",
        median(xs),
        median(ks),
        lans * 2,
        parallel()
    );
    if let Some(e) = first_error {
        *out += &format!("\nFirst overlay failure: {e}\n");
    }
    *out += "\n";
    Ok(())
}

fn recovery(xsock: &str, rounds: usize, out: &mut String) -> io::Result<()> {
    let specs = [
        SiteSpec { name: "hub", policy: Policy::Open, relays: 2, hosts: 0 },
        SiteSpec { name: "sp1", policy: Policy::HubOnly, relays: 1, hosts: 1 },
        SiteSpec { name: "sp2", policy: Policy::HubOnly, relays: 1, hosts: 1 },
    ];
    let mut o = Overlay::start(xsock, "perf-kill", &specs);
    converge(&o);
    let mut t = Table::new([
        "round",
        "killed",
        "sp1 relay's route recomputed",
        "connections through it failed after",
        "first new connection ok after",
        "attempts failed in between",
    ]);
    for round in 1..=rounds {
        progress(&format!("relay kill round {round}/{rounds}"));
        let hosts = o.endpoints();
        let (sp1, sp2) = (hosts[0].clone(), hosts[1].clone());
        // Each probes the other, one connection after another.
        let p2 = o.spawn_probe(&sp2, "sp1h0-0:7500", "6s")?;
        std::thread::sleep(Duration::from_millis(300));
        let p1 = o.spawn_probe(&sp1, "sp2h0-0:7500", "6s")?;
        std::thread::sleep(Duration::from_millis(1500));
        let via = o.status("sp1-x0")["routes"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["relay"] == "sp2-x0"))
            .and_then(|r| r["next_hop"].as_str().map(String::from))
            .ok_or_else(|| io::Error::other("no route from sp1-x0 to sp2-x0"))?;
        let other = if via == "hub-x0" { "hub-x1" } else { "hub-x0" };
        let idx = o.relays.iter().position(|(n, _, _)| *n == via).expect("known relay");
        let pid = o.relays[idx].2;
        let killed_ns =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let killed = Instant::now();
        o.bed.kill9(pid)?;
        let recomputed = loop {
            let st = o.status("sp1-x0");
            let hop = st["routes"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["relay"] == "sp2-x0"))
                .and_then(|r| r["next_hop"].as_str().map(String::from));
            if hop.as_deref() == Some(other) {
                // The relay stamps when its table changed.
                let at = st["routes_changed_unix_ns"].as_u64().unwrap_or(0);
                break Duration::from_nanos(at.saturating_sub(killed_ns));
            }
            if killed.elapsed() > Duration::from_secs(5) {
                return Err(io::Error::other("routes not recomputed within 5 s"));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let lines = p1.finish()?;
        let _ = p2.finish();
        let attempts: Vec<Value> = lines.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let after: Vec<&Value> = attempts.iter().filter(|a| a["t_ns"].as_u64().unwrap_or(0) >= killed_ns).collect();
        let first_ok = after.iter().find(|a| a["ok"] == true).map(|a| {
            (a["t_ns"].as_u64().unwrap_or(0) + a["us"].as_u64().unwrap_or(0) * 1000).saturating_sub(killed_ns)
        });
        let failed_between = after.iter().take_while(|a| a["ok"] != true).count();
        if std::env::var("XSOCK_PERF_KILL_DUMP").is_ok() {
            for a in &attempts {
                let t = a["t_ns"].as_u64().unwrap_or(0) as i64 - killed_ns as i64;
                if t.abs() < 100_000_000 {
                    eprintln!("{:+.1} ms: {a}", t as f64 / 1e6);
                }
            }
        }
        // The attempt in flight at the kill: how long until it failed.
        let in_flight =
            attempts.iter().rev().find(|a| a["t_ns"].as_u64().unwrap_or(0) < killed_ns && a["ok"] == false).map(|a| {
                let end = a["t_ns"].as_u64().unwrap_or(0) + a["us"].as_u64().unwrap_or(0) * 1000;
                let e = a["error"].as_str().unwrap_or("");
                let why = if e.contains("path lost") || e.contains("lost the path") { "path lost" } else { e };
                format!("{:.1} ms ({why})", end.saturating_sub(killed_ns) as f64 / 1e6)
            });
        t.row([
            round.to_string(),
            via.clone(),
            format!("{:.1} ms", recomputed.as_secs_f64() * 1e3),
            in_flight.map_or("- (none in flight)".into(), |e| e.chars().take(60).collect()),
            first_ok.map_or("never".into(), |ns| format!("{:.1} ms", ns as f64 / 1e6)),
            failed_between.to_string(),
        ]);
        // Bring the relay back for the next round.
        let (name, host, _) = o.relays[idx].clone();
        let wan = format!(
            "{}:{}",
            o.sites.sites[0].relay_ip(if name == "hub-x0" { 0 } else { 1 }),
            xsock_testbed::overlay::WAN_PORT
        );
        let _ = std::fs::remove_file(o.status_path(&name));
        let pid = o.start_relay(&name, &host, Some(&wan));
        o.relays[idx].2 = pid;
        converge(&o);
        std::thread::sleep(Duration::from_millis(500));
    }
    *out += "### Killing a relay (kill -9) under live traffic\n\n";
    *out += &t.markdown();
    *out += "\nTopology: two relays in the hub LAN, two LANs that reach only the hub; an endpoint in each spoke \
             connects to the other one connection after another (64-byte exchange, then close; at most one attempt \
             per ms); the killed relay is the one the spoke relay routed through. Times are from the kill (sent by the \
             benchmark, Unix clock): the route change as stamped by the spoke relay when its table changed; the \
             connection in flight at the kill, when its error arrived; the first new connection, when its exchange \
             completed.\n\n";
    Ok(())
}

pub fn run(xsock: &Path, rounds: usize) -> io::Result<()> {
    let started = Instant::now();
    let xsock = xsock.to_str().expect("utf-8 path");
    let mut out = String::new();
    if std::env::var("XSOCK_PERF_RELAY").as_deref() == Ok("probe") {
        let specs = [
            SiteSpec { name: "p1", policy: Policy::Open, relays: 1, hosts: 2 },
            SiteSpec { name: "p2", policy: Policy::Open, relays: 1, hosts: 1 },
        ];
        let o = Overlay::start(xsock, "perf-probe", &specs);
        converge(&o);
        let hosts = o.endpoints();
        let same = std::env::var("XSOCK_PROBE_SAME").is_ok();
        let a = o.spawn_probe(&hosts[if same { 1 } else { 2 }], "p1h0-0:7500", "4s")?;
        std::thread::sleep(Duration::from_millis(300));
        let b = o.spawn_probe(&hosts[0], if same { "p1h1-0:7500" } else { "p2h0-0:7500" }, "4s")?;
        let lines = b.finish()?;
        let _ = a.finish();
        let us: Vec<f64> = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["ok"] == true)
            .filter_map(|v| v["us"].as_f64())
            .collect();
        println!(
            "{} ok attempts, median {:.0} us, max {:.0} us",
            us.len(),
            median(us.clone()),
            us.iter().cloned().fold(0.0, f64::max)
        );
        let cu: Vec<f64> = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["ok"] == true)
            .filter_map(|v| v["connect_us"].as_f64())
            .collect();
        println!("connect median {:.0} us", median(cu));
        println!("relay p1-x0: {}", o.status("p1-x0")["lan_queues"]);
        println!("relay p2-x0: {}", o.status("p2-x0")["lan_queues"]);
        return Ok(());
    }
    if let Ok(flags) = std::env::var("XSOCK_PERF_RELAY_BULK") {
        let flags: Vec<&str> = flags.split_whitespace().collect();
        bulk_only(xsock, rounds, &mut out, &flags)?;
        println!("{out}");
        return Ok(());
    }
    if std::env::var("XSOCK_PERF_RELAY").as_deref() == Ok("kill") {
        recovery(xsock, rounds, &mut out)?;
        println!("{out}");
        return Ok(());
    }
    if std::env::var("XSOCK_PERF_RELAY").as_deref() == Ok("preload") {
        crate::across::run(xsock, rounds, &mut out)?;
        println!("{out}");
        return Ok(());
    }
    if std::env::var("XSOCK_PERF_RELAY").as_deref() == Ok("mesh") {
        all_to_all(xsock, rounds, &mut out)?;
        println!("{out}");
        return Ok(());
    }
    paths(xsock, rounds, &mut out, "0", true)?;
    paths(xsock, rounds, &mut out, "1ms", false)?;
    all_to_all(xsock, rounds, &mut out)?;
    recovery(xsock, rounds, &mut out)?;
    out += &format!("Suite wall time: {:.0} s, {} rounds.\n", started.elapsed().as_secs_f64(), rounds);
    println!("{out}");
    Ok(())
}
