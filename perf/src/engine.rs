//! The host-engine suite (issue 12): many processes per host over
//! reliable-link through one engine per host, beside the same processes on
//! kernel TCP; and 64-byte round trips through the engines (applications
//! blocking, engines busy-polling or adaptive) beside blocking kernel TCP
//! and the in-process mode, interleaved round by round.

use std::{
    io,
    path::Path,
    time::{Duration, Instant},
};

use xsock_perf::{
    B_IP, Bench, Rtt,
    report::{Table, median},
};
use xsock_testbed::Host;

use crate::suites_common::{progress, rtt_row};

/// Process counts on host a.
const PROCS: [usize; 3] = [32, 64, 256];
/// Listener processes on host b (clients spread over them).
const LISTENERS: usize = 4;
/// Seconds each client sends.
const SECONDS: u32 = 3;

fn wait_log(bench: &Bench, pid: u32, text: &str, within: Duration) -> io::Result<()> {
    let t0 = Instant::now();
    while !bench.bed.log_tail(pid, 40).contains(text) {
        if bench.bed.try_wait(pid)?.is_some() || t0.elapsed() > within {
            return Err(io::Error::other(format!("waiting for {text:?}: {}", bench.bed.log_tail(pid, 5))));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn xsock(bench: &Bench) -> &str {
    bench.xsock.to_str().expect("utf-8 path")
}

/// Runs `f` with every xsock process started as `XSOCK_ENGINE_RINGS=off
/// xsock ...` (a wrapper script in front of the binary): attached
/// processes then move their bytes through the socketpair itself, not the
/// shared rings, for the comparison.
fn with_socketpair_bytes<T>(bench: &mut Bench, f: impl FnOnce(&Bench) -> io::Result<T>) -> io::Result<T> {
    let real = bench.xsock.clone();
    let dir = std::env::temp_dir().join(format!("xsock-perf-pair-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let wrapper = dir.join("xsock");
    std::fs::write(&wrapper, format!("#!/bin/sh\nXSOCK_ENGINE_RINGS=off exec {} \"$@\"\n", real.display()))?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    bench.xsock = wrapper;
    let r = f(bench);
    bench.xsock = real;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// An engine on `host`, once it listens.
fn start_engine(bench: &Bench, host: &Host, poll: &str) -> io::Result<u32> {
    let pid = bench.bed.spawn(host, xsock(bench), &["engine", "--iface", "eth0", "--poll", poll])?;
    wait_log(bench, pid, "listening on", Duration::from_secs(10))?;
    Ok(pid)
}

/// Stops engines (SIGTERM) and waits until their XDP programs are gone.
fn stop_engines(bench: &Bench, pids: &[u32]) {
    for &p in pids {
        let _ = bench.bed.finish(p);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (bench.a.has_xdp("eth0").unwrap_or(false) || bench.b.has_xdp("eth0").unwrap_or(false))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What N client processes did.
struct ManyRun {
    ok: usize,
    failed: usize,
    /// Each finished process's Gbit/s (receiver's count).
    rates: Vec<f64>,
    /// Bytes all processes moved (receivers' counts).
    bytes: f64,
    first_error: Option<String>,
    wall: f64,
}

/// `n` bw client processes on a, spread over the listener processes on b,
/// all at once; `transport` link (through the engines) or kernel.
fn many(bench: &Bench, n: usize, transport: &str) -> io::Result<ManyRun> {
    let engines = if transport == "link" {
        vec![start_engine(bench, &bench.a, "adaptive")?, start_engine(bench, &bench.b, "adaptive")?]
    } else {
        vec![]
    };
    let mut servers = Vec::new();
    for l in 0..LISTENERS {
        let listen = format!("{B_IP}:{}", 7100 + l);
        let mut args = vec!["bw", "--listen", &listen, "--poll", "sleep"];
        if transport == "link" {
            args.extend(["--iface", "eth0"]);
        } else {
            args.extend(["--transport", "kernel"]);
        }
        let pid = bench.bed.spawn(&bench.b, xsock(bench), &args)?;
        wait_log(bench, pid, "bw receiver on", Duration::from_secs(10))?;
        servers.push(pid);
    }
    let t0 = Instant::now();
    let secs = format!("{SECONDS}s");
    let mut clients = Vec::new();
    for i in 0..n {
        let connect = format!("{B_IP}:{}", 7100 + i % LISTENERS);
        let mut args = vec![
            "bw",
            "--connect",
            &connect,
            "--seconds",
            &secs,
            "--poll",
            "sleep",
            "--json",
            "--transport",
            transport,
        ];
        if transport == "link" {
            args.extend(["--iface", "eth0"]);
        }
        clients.push(bench.bed.spawn(&bench.a, xsock(bench), &args)?);
    }
    let mut run = ManyRun { ok: 0, failed: 0, rates: vec![], bytes: 0.0, first_error: None, wall: 0.0 };
    for c in clients {
        let st = bench.bed.wait_exit(c, Duration::from_secs(u64::from(SECONDS) + 120))?;
        let log = bench.bed.log_tail(c, 30);
        let json = log
            .lines()
            .rfind(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["transport"] == transport);
        let rate = json.as_ref().and_then(|v| Some((v["gbit_per_s"].as_f64()?, v["bytes"].as_f64()?)));
        match (st.success(), rate) {
            (true, Some((r, b))) => {
                run.ok += 1;
                run.rates.push(r);
                run.bytes += b;
            }
            _ => {
                run.failed += 1;
                run.first_error.get_or_insert_with(|| log.lines().last().unwrap_or("").to_owned());
            }
        }
    }
    run.wall = t0.elapsed().as_secs_f64();
    for s in servers {
        let _ = bench.bed.finish(s);
    }
    stop_engines(bench, &engines);
    Ok(run)
}

fn processes(bench: &Bench, rounds: usize) -> io::Result<String> {
    let mut t = Table::new([
        "client processes on a",
        "transport",
        "ok / failed",
        "sum of per-process rates, Gbit/s",
        "all bytes / wall, Gbit/s",
        "per process p50",
        "per process min / max",
        "link / kernel (bytes / wall)",
        "wall",
    ]);
    let mut notes = String::new();
    for n in PROCS {
        let rounds = if n >= 256 { rounds.min(2) } else { rounds };
        let mut runs: [Vec<ManyRun>; 2] = [vec![], vec![]];
        for round in 1..=rounds {
            for (i, tr) in ["link", "kernel"].into_iter().enumerate() {
                progress(&format!("{n} processes over {tr}, round {round}/{rounds}"));
                runs[i].push(many(bench, n, tr)?);
            }
        }
        let agg = |r: &ManyRun| r.rates.iter().sum::<f64>();
        // Bytes over the whole wall time (start-up included): the processes
        // need not all overlap, so this is a floor and the sum a ceiling.
        let floor = |r: &ManyRun| r.bytes * 8.0 / r.wall / 1e9;
        let ratio = median(runs[0].iter().zip(&runs[1]).map(|(l, k)| floor(l) / floor(k)).collect());
        for (i, name) in ["link, through one engine per host", "kernel TCP"].into_iter().enumerate() {
            let r = &runs[i];
            let ok: usize = r.iter().map(|x| x.ok).sum();
            let failed: usize = r.iter().map(|x| x.failed).sum();
            let all: Vec<f64> = r.iter().flat_map(|x| x.rates.iter().copied()).collect();
            let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = all.iter().copied().fold(0.0, f64::max);
            t.row([
                n.to_string(),
                name.to_string(),
                format!("{ok} / {failed}"),
                format!("{:.2}", median(r.iter().map(agg).collect())),
                format!("{:.2}", median(r.iter().map(floor).collect())),
                format!("{:.3}", median(all.clone())),
                format!("{lo:.3} / {hi:.3}"),
                if i == 0 { format!("{ratio:.2}x") } else { "-".into() },
                format!("{:.1} s", median(r.iter().map(|x| x.wall).collect())),
            ]);
            if let Some(e) = r.iter().find_map(|x| x.first_error.clone()) {
                notes += &format!("- {n} over {name}: first failure: {e}\n");
            }
        }
    }
    let mut out = format!(
        "### Many processes per host (`xsock bw --seconds {SECONDS} --poll sleep`, {LISTENERS} listener processes \
         on b, all clients at once)\n\n"
    );
    out += &t.markdown();
    if !notes.is_empty() {
        out += "\n";
        out += &notes;
    }
    out += "\n";
    Ok(out)
}

/// One 64 B ping-pong in `mode` (see [`rtt`]).
fn rtt_once(bench: &Bench, mode: &str, count: u64) -> io::Result<Rtt> {
    let (engine_a, engine_b, server, client): (Option<&str>, Option<&str>, &[&str], &[&str]) = match mode {
        "kernel" => (None, None, &["--poll", "sleep"], &["--poll", "sleep"]),
        "engines-busy" | "engines-busy-pair" => {
            (Some("busy"), Some("busy"), &["--poll", "sleep"], &["--poll", "sleep"])
        }
        "engines-adaptive" => (Some("adaptive"), Some("adaptive"), &["--poll", "sleep"], &["--poll", "sleep"]),
        "inproc-busy" => (None, None, &["--poll", "busy"], &["--poll", "busy"]),
        "inproc-block-a" => (None, None, &["--poll", "busy"], &["--poll", "sleep"]),
        "engine-a-block" => (Some("busy"), None, &["--poll", "busy"], &["--poll", "sleep"]),
        "engine-a-spin" => (Some("busy"), None, &["--poll", "sleep"], &["--poll", "busy"]),
        "inproc-spin-a" => (None, None, &["--poll", "sleep"], &["--poll", "busy"]),
        other => return Err(io::Error::other(format!("no mode {other}"))),
    };
    let mut engines = Vec::new();
    if let Some(p) = engine_a {
        engines.push(start_engine(bench, &bench.a, p)?);
    }
    if let Some(p) = engine_b {
        engines.push(start_engine(bench, &bench.b, p)?);
    }
    let transport = if mode == "kernel" { "kernel" } else { "link" };
    let r = bench.ping(transport, 64, count, server, client);
    stop_engines(bench, &engines);
    r
}

// Not measured: an application busy-polling behind a busy engine with the
// peer busy-polling too: three spinning threads on this 2-core machine
// time-slice (8 ms round trips in a trial run); it needs a core per
// spinner. Measured instead: the spinning application and its busy engine
// against a blocking peer (two spinners), beside the in-process runtime
// spinning against the same blocking peer.
const MODES: [(&str, &str); 9] = [
    ("kernel", "kernel TCP, both applications block"),
    ("engines-busy", "through engines on both hosts (busy-poll), applications block"),
    ("engines-busy-pair", "the same, bytes through the socketpair instead of shared rings (XSOCK_ENGINE_RINGS=off)"),
    ("engines-adaptive", "through engines on both hosts (adaptive), applications block"),
    ("inproc-busy", "in-process runtimes, both busy-poll (issue 6's mode)"),
    ("inproc-block-a", "a: in-process, blocks; b: in-process, busy-polls"),
    ("engine-a-block", "a: engine (busy) + blocking application; b: in-process, busy-polls"),
    ("engine-a-spin", "a: engine (busy) + application spinning on its rings; b: in-process, blocks"),
    ("inproc-spin-a", "a: in-process, busy-polls; b: in-process, blocks"),
];

fn rtt(bench: &mut Bench, rounds: usize) -> io::Result<String> {
    let mut runs: Vec<Vec<Rtt>> = vec![vec![]; MODES.len()];
    for round in 1..=rounds {
        for (i, (mode, _)) in MODES.iter().enumerate() {
            progress(&format!("64 B ping {mode}, round {round}/{rounds}"));
            let r = if mode.ends_with("-pair") {
                with_socketpair_bytes(bench, |b| rtt_once(b, mode, 20_000))?
            } else {
                rtt_once(bench, mode, 20_000)?
            };
            runs[i].push(r);
        }
    }
    let p50 = |v: &[Rtt]| v.iter().map(|r| r.rtt_p50_ns as f64).collect::<Vec<_>>();
    let paired = |a: &[Rtt], b: &[Rtt]| median(p50(a).iter().zip(p50(b)).map(|(x, y)| x / y).collect());
    let mut t = Table::new(["64 B ping-pong", "p50", "p99", "p99.9", "p50 / kernel p50", "rounds"]);
    for (i, (_, name)) in MODES.iter().enumerate() {
        let ratio = (i > 0).then(|| paired(&runs[i], &runs[0]));
        rtt_row(&mut t, name, &runs[i], ratio);
    }
    let mut out = String::from(
        "### 64 B round trips through the engine (`xsock ping --size 64 --count 20000`; modes interleaved per \
         round)\n\n",
    );
    out += &t.markdown();
    out += "\n";
    Ok(out)
}

/// One bulk stream through engines on both hosts (bytes through the shared
/// rings, and through the socketpair) against the same stream between
/// in-process runtimes: what the crossings cost.
fn one_stream(bench: &mut Bench, rounds: usize) -> io::Result<String> {
    let through_engines = |b: &Bench| -> io::Result<f64> {
        let e = vec![start_engine(b, &b.a, "adaptive")?, start_engine(b, &b.b, "adaptive")?];
        let r = b.bw("link", 1 << 20, SECONDS, &["--poll", "sleep"], &["--poll", "sleep"]);
        stop_engines(b, &e);
        Ok(r?.gbit_per_s)
    };
    let (mut rings, mut pair, mut inproc, mut iperf) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        progress(&format!("one stream, round {round}/{rounds}"));
        rings.push(through_engines(bench)?);
        pair.push(with_socketpair_bytes(bench, through_engines)?);
        inproc.push(bench.bw("link", 1 << 20, SECONDS, &["--poll", "sleep"], &["--poll", "sleep"])?.gbit_per_s);
        iperf.push(bench.iperf3_tcp(SECONDS)?.gbit_per_s);
    }
    let ratio = |v: &[f64]| median(v.iter().zip(&inproc).map(|(e, i)| e / i).collect());
    let mut t = Table::new(["one stream, 1 MiB sends, both ends sleep-poll", "Gbit/s", "/ in-process"]);
    t.row([
        "through engines on both hosts (adaptive), shared rings".into(),
        format!("{:.2}", median(rings.clone())),
        format!("{:.2}x", ratio(&rings)),
    ]);
    t.row([
        "through engines on both hosts (adaptive), socketpair bytes".into(),
        format!("{:.2}", median(pair.clone())),
        format!("{:.2}x", ratio(&pair)),
    ]);
    t.row(["in-process runtimes".into(), format!("{:.2}", median(inproc.clone())), "-".into()]);
    t.row([
        "iperf3, kernel TCP (default offloads: GSO/GRO)".into(),
        format!("{:.2}", median(iperf.clone())),
        format!("{:.2}x", ratio(&iperf)),
    ]);
    let mut out = format!("### One stream (`xsock bw --seconds {SECONDS} --poll sleep`; interleaved per round)\n\n");
    out += &t.markdown();
    out += "\n";
    Ok(out)
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// The engine's memory before and after 1,000 client processes attach,
/// each open a stream to a ping server on b (through b's engine), do 10
/// round trips and exit; 50 at a time, every process sleep-polling (the
/// server answers one client at a time: the others wait blocked, not
/// spinning).
fn memory(bench: &Bench) -> io::Result<String> {
    const CLIENTS: usize = 1000;
    const AT_ONCE: usize = 50;
    let ea = start_engine(bench, &bench.a, "adaptive")?;
    let eb = start_engine(bench, &bench.b, "adaptive")?;
    let listen = format!("{B_IP}:7008");
    let server = bench.bed.spawn(
        &bench.b,
        xsock(bench),
        &["ping", "--iface", "eth0", "--listen", &listen, "--poll", "sleep"],
    )?;
    wait_log(bench, server, "ping echo on", Duration::from_secs(10))?;
    // One client first, so the engine's lazily made pools exist.
    let one = |n: usize| -> io::Result<usize> {
        let kids: Vec<_> = (0..n)
            .map(|_| {
                bench
                    .a
                    .command(
                        xsock(bench),
                        &[
                            "ping",
                            "--iface",
                            "eth0",
                            "--connect",
                            &listen,
                            "--count",
                            "10",
                            "--warmup",
                            "0",
                            "--size",
                            "64",
                            "--poll",
                            "sleep",
                            "--json",
                        ],
                    )
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            })
            .collect::<io::Result<_>>()?;
        let mut ok = 0;
        for mut k in kids {
            ok += usize::from(k.wait()?.success());
        }
        Ok(ok)
    };
    one(1)?;
    let before = rss_kib(ea)?;
    let t0 = Instant::now();
    let mut ok = 0;
    for round in 0..CLIENTS / AT_ONCE {
        if round % 5 == 0 {
            progress(&format!("memory: clients {}..{}", round * AT_ONCE, (round + 5) * AT_ONCE));
        }
        ok += one(AT_ONCE)?;
    }
    let took = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(ea)?;
    let st = bench.a.command(xsock(bench), &["engine", "--iface", "eth0", "--status"]).output()?;
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).map_err(|e| io::Error::other(e.to_string()))?;
    let _ = bench.bed.finish(server);
    stop_engines(bench, &[ea, eb]);
    let mut t = Table::new(["engine on a", "value"]);
    t.row([
        "client processes (10 round trips each, 50 at a time)".into(),
        format!("{ok} of {CLIENTS} ok in {took:.1} s"),
    ]);
    t.row(["resident memory after the first client".into(), format!("{:.1} MiB", before as f64 / 1024.0)]);
    t.row(["resident memory after 1,000 more came and went".into(), format!("{:.1} MiB", after as f64 / 1024.0)]);
    t.row([
        "clients / streams left in the engine (status)".into(),
        format!("{} / {} (attached_total {})", st["clients"], st["streams"], st["attached_total"]),
    ]);
    let mut out = String::from("### Engine memory as clients come and go (`xsock-perf engine --only memory`)\n\n");
    out += &t.markdown();
    out += "\n";
    Ok(out)
}

pub fn run(xsock_bin: &Path, rounds: usize, only: Option<&str>) -> io::Result<()> {
    let started = Instant::now();
    let want = |part: &str| only.is_none_or(|o| o == part);
    let mut bench = Bench::two_hosts(xsock_bin, 1500)?;
    let mut out = String::new();
    if want("procs") {
        out += &processes(&bench, rounds)?;
    }
    if want("one") {
        out += &one_stream(&mut bench, rounds)?;
    }
    if want("ping") {
        out += &rtt(&mut bench, rounds)?;
    }
    if want("memory") {
        out += &memory(&bench)?;
    }
    out += &format!("Suite wall time: {:.0} s, {rounds} rounds.\n", started.elapsed().as_secs_f64());
    println!("{out}");
    Ok(())
}
