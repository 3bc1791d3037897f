//! Unmodified programs across LANs (issue 13, point 3): sockperf
//! ping-pong and iperf3 under the preload, reaching the other LAN's host
//! by its virtual address through both LANs' engines and relays, against
//! the same programs on kernel TCP between the same hosts (routed across
//! the WAN, no relay), interleaved per round.
//!
//! `xsock-perf relay` with `XSOCK_PERF_RELAY=preload`; the engines' poll
//! mode from `XSOCK_PERF_ENGINE_POLL` (default adaptive), the relays'
//! spin from `XSOCK_PERF_RELAY_SPIN` (default 0: sleeping).

use std::{io, time::Duration};

use xsock_perf::report::{Table, median, ratio};
use xsock_testbed::{
    Host,
    overlay::Overlay,
    sites::{Policy, SiteSpec},
};

/// One round's figures: sockperf p50 one way (us) and iperf3 Gbit/s.
struct Round {
    p50_us: f64,
    gbps: f64,
}

pub fn run(xsock: &str, rounds: usize, out: &mut String) -> io::Result<()> {
    let poll = std::env::var("XSOCK_PERF_ENGINE_POLL").unwrap_or_else(|_| "adaptive".into());
    let spin = std::env::var("XSOCK_PERF_RELAY_SPIN").unwrap_or_else(|_| "0".into());
    let specs = [
        SiteSpec { name: "p1", policy: Policy::Open, relays: 1, hosts: 1 },
        SiteSpec { name: "p2", policy: Policy::Open, relays: 1, hosts: 1 },
    ];
    let o = Overlay::start_with(xsock, "perf-across", &specs, &["--spin", &spin]);
    o.converge(&["p1-x0", "p2-x0"], Duration::from_secs(30));
    let (a, b) = (&o.sites.sites[0].hosts[0], &o.sites.sites[1].hosts[0]);
    let b_ip = o.sites.sites[1].host_ip(0).to_string();
    for (name, h) in [("pa", a), ("pb", b)] {
        let mut args = vec!["engine".to_owned()];
        args.extend(o.join_flags(name));
        args.extend(["--poll".to_owned(), poll.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = o.bed.spawn(h, xsock, &args)?;
        let t = std::time::Instant::now();
        while !o.bed.log_tail(pid, 20).contains("listening on") {
            if t.elapsed() > Duration::from_secs(15) {
                return Err(io::Error::other(format!("engine {name}: {}", o.bed.log_tail(pid, 10))));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let hosts = String::from_utf8_lossy(&a.exec(xsock, &["engine", "--iface", "eth0", "--hosts"])?.stdout).into_owned();
    let vb = hosts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("pb"))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| io::Error::other(format!("pb has no virtual address: {hosts}")))?
        .to_owned();
    let (mut kernel, mut pre) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        for preload in [false, true] {
            let dest = if preload { &vb } else { &b_ip };
            let round = Round {
                p50_us: sockperf(&o, xsock, (a, b), dest, preload)?,
                gbps: iperf(&o, xsock, (a, b), dest, preload)?,
            };
            eprintln!(
                "round {r} {}: sockperf p50 {:.1} us one way, iperf3 {:.2} Gbit/s",
                if preload { "preload by virtual address" } else { "kernel TCP" },
                round.p50_us,
                round.gbps
            );
            if preload { pre.push(round) } else { kernel.push(round) }
        }
    }
    let med = |v: &[Round], f: fn(&Round) -> f64| median(v.iter().map(f).collect());
    let mut t = Table::new(["measurement", "kernel TCP, routed", "preload by virtual address, relayed", "ratio"]);
    let (kp, pp) = (med(&kernel, |r| r.p50_us), med(&pre, |r| r.p50_us));
    t.row(["sockperf ping-pong p50, one way (us)".to_owned(), format!("{kp:.1}"), format!("{pp:.1}"), ratio(pp, kp)]);
    let (kg, pg) = (med(&kernel, |r| r.gbps), med(&pre, |r| r.gbps));
    t.row(["iperf3, one stream (Gbit/s)".to_owned(), format!("{kg:.2}"), format!("{pg:.2}"), ratio(pg, kg)]);
    *out += &format!(
        "### Unmodified programs across LANs by virtual address (engines --poll {poll}, relays --spin {spin}, \
         {rounds} rounds)\n\n"
    );
    *out += &t.markdown();
    *out += "\nTwo LANs with one relay each, joined over the routed WAN; an engine joined to the overlay on each \
             LAN's host. The preload's column: `xsock preload sockperf|iperf3` to the other host's virtual address \
             (engine, session, relay, encrypted relay link, relay, session, engine). The kernel's: the same programs \
             without the preload to the host's LAN address, routed across the WAN. Medians; the two alternate in \
             every round.\n\n";
    Ok(())
}

fn pre(xsock: &str, preload: bool, prog: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = if preload { vec![xsock.to_owned(), "preload".to_owned()] } else { Vec::new() };
    v.extend(prog.iter().map(|s| s.to_string()));
    v
}

fn sockperf(o: &Overlay, xsock: &str, (a, b): (&Host, &Host), dest: &str, preload: bool) -> io::Result<f64> {
    let server = pre(xsock, preload, &["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "11111"]);
    let server: Vec<&str> = server.iter().map(String::as_str).collect();
    let pid = o.bed.spawn_ready(b, server[0], &server[1..], || b.listening(11111))?;
    std::thread::sleep(Duration::from_millis(300));
    let client =
        pre(xsock, preload, &["sockperf", "ping-pong", "--tcp", "-i", dest, "-p", "11111", "-t", "4", "-m", "64"]);
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let got = a.command(client[0], &client[1..]).output()?;
    std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status()?;
    let _ = o.bed.wait_exit(pid, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got.stdout).into_owned() + &String::from_utf8_lossy(&got.stderr);
    text.lines()
        .find(|l| l.contains("percentile 50.000"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("sockperf to {dest}: {text}")))
}

fn iperf(o: &Overlay, xsock: &str, (a, b): (&Host, &Host), dest: &str, preload: bool) -> io::Result<f64> {
    let server = pre(xsock, preload, &["iperf3", "-s", "-1", "-p", "5201"]);
    let server: Vec<&str> = server.iter().map(String::as_str).collect();
    let pid = o.bed.spawn_ready(b, server[0], &server[1..], || b.listening(5201))?;
    std::thread::sleep(Duration::from_millis(300));
    let client = pre(xsock, preload, &["iperf3", "-c", dest, "-p", "5201", "-t", "5", "-J"]);
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let got = a.command(client[0], &client[1..]).output()?;
    let _ = o.bed.wait_exit(pid, Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_slice(&got.stdout)
        .map_err(|e| io::Error::other(format!("iperf3 to {dest}: {e}: {}", String::from_utf8_lossy(&got.stderr))))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| io::Error::other(format!("iperf3 to {dest}: {v}")))
}
