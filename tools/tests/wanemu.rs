//! `xsock wanemu` in namespaces, checked against its own settings by tools
//! that know nothing of it: ping(8) for the delay and loss, iperf3 for the
//! rate, and the emulator's own counters for the queue.

use serde_json::Value;
use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

/// Host A — emulator W — host B, A and B on one subnet, W with no address.
fn path(net: &str) -> (Testbed, Host, Host, Host) {
    let bed = Testbed::new().unwrap();
    let a = bed.host("a").unwrap();
    let w = bed.router("w").unwrap();
    let b = bed.host("b").unwrap();
    bed.link(&a, "eth0", &w, "wa", LinkOpts::default()).unwrap();
    bed.link(&w, "wb", &b, "eth0", LinkOpts::default()).unwrap();
    a.addr("eth0", &format!("{net}.1/24")).unwrap();
    b.addr("eth0", &format!("{net}.2/24")).unwrap();
    // The hosts keep veth's default offloads: their checksums arrive
    // partial and their TCP in 64 KiB segments, which the emulator finishes
    // and cuts as a NIC would.
    (bed, a, w, b)
}

fn start(bed: &Testbed, w: &Host, extra: &[&str]) -> u32 {
    let mut args = vec!["wanemu", "--a", "wa", "--b", "wb"];
    args.extend_from_slice(extra);
    bed.spawn_ready(w, XSOCK, &args, || Ok(w.has_xdp("wa")? && w.has_xdp("wb")?)).unwrap()
}

/// Stops the emulator and returns the counters it prints on exit.
fn stop(bed: &Testbed, pid: u32) -> Value {
    bed.finish(pid).unwrap();
    let log = bed.log_tail(pid, 1);
    serde_json::from_str(&log).unwrap_or_else(|e| panic!("last line is the JSON report ({e}): {log}"))
}

/// ping(8): (loss fraction, sorted RTTs in ms of the replies).
fn ping(a: &Host, to: &str, count: u32, interval: &str) -> (f64, Vec<f64>) {
    let out = a.exec("ping", &["-n", "-c", &count.to_string(), "-i", interval, "-W", "2", to]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let loss = text
        .split(',')
        .find(|p| p.contains("packet loss"))
        .and_then(|p| p.trim().split('%').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no loss figure in: {text}"));
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    (loss / 100.0, rtts)
}

/// The measuring tests run one at a time: on two cores, a second emulator
/// running beside one measured against its settings skews the figures (a
/// fresh-clone CI run saw 180 of 200 Mbit/s with the loss test alongside).
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn delay_rate_and_queue_match_the_settings() {
    require_root!();
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let (bed, a, w, b) = path("10.71.0");
    // 20 ms each way, 200 Mbit/s, a 50 KB queue.
    let pid = start(&bed, &w, &["--delay", "20ms", "--rate", "200mbit", "--buffer", "50000"]);

    // RTT: 40 ms plus the serialization of two 98-byte frames (8 µs). The
    // first ping also waits for ARP (another round trip): warm up first.
    ping(&a, "10.71.0.2", 1, "0.2");
    // Scheduling on a shared two-core machine only ever adds to an RTT (a
    // fresh-clone CI run saw a median of 41.8 ms with the emulator's wake-ups
    // late): the fastest reply measures the emulator's own error, the
    // median only that nothing is far off. No reply may beat the delay.
    let (loss, rtts) = ping(&a, "10.71.0.2", 20, "0.05");
    assert_eq!(loss, 0.0);
    let (fastest, median) = (rtts[0], rtts[rtts.len() / 2]);
    eprintln!("wanemu 20 ms each way: ping RTT fastest {fastest} ms, median {median} ms");
    assert!((40.0..41.2).contains(&fastest), "fastest RTT {fastest} ms, want 40.0 (+3%): {rtts:?}");
    assert!(median < 44.0, "median RTT {median} ms, want 40.0 (+10%): {rtts:?}");

    // Rate: UDP offered at 400 Mbit/s; the receiver sees the bottleneck.
    // wanemu counts whole frames (1514 B for 1472 B of UDP payload), so
    // 200 Mbit/s of frames is 194.5 Mbit/s of payload.
    // Up to five tries: right after other namespace tests the kernel is
    // still tearing their namespaces down on these two cores (a fresh-clone
    // CI run measured 173-181 Mbit/s then, 191 when quiet, and once a best
    // of 170 in three tries). Every try is printed. A busy machine only ever
    // loses datagrams (a workspace run measured 177, 188 and 186): no try
    // may pass the setting by more than 3%, and the best must reach 60% of
    // it; a limiter that leaks, or one that runs at half its rate, fails.
    let want = 200e6 * 1472.0 / 1514.0;
    let mut tries = Vec::new();
    for _ in 0..5 {
        bed.spawn_ready(&b, "iperf3", &["-s", "-1"], || b.listening(5201)).unwrap();
        let out = a.exec("iperf3", &["-c", "10.71.0.2", "-u", "-b", "400M", "-l", "1472", "-t", "3", "-J"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let received = report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .or_else(|| report["end"]["sum"]["bits_per_second"].as_f64())
            .unwrap();
        eprintln!(
            "wanemu 200 Mbit/s: iperf3 UDP received {:.1} Mbit/s of payload (want {:.1})",
            received / 1e6,
            want / 1e6
        );
        tries.push(received / 1e6);
        if (received / want - 1.0).abs() < 0.03 {
            break;
        }
        // Let the -1 server exit before the next one binds.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let best = tries.iter().copied().fold(0.0, f64::max) * 1e6;
    assert!(best <= want * 1.03, "received {tries:?} Mbit/s: more than the {:.1} the setting allows", want / 1e6);
    // The floor is loose: a fresh-clone CI run on a busy host got 139-154
    // of 194.5 in all five tries (the forwarder and both iperf3 ends share
    // two cores). A limiter at half its rate or worse still fails.
    assert!(best >= want * 0.6, "received {tries:?} Mbit/s, want {:.1}", want / 1e6);

    let counters = stop(&bed, pid);
    let ab = &counters["a_to_b"];
    assert!(ab["dropped_queue"].as_u64().unwrap() > 1000, "the 2x overload overflowed the queue: {counters}");
    let max_queue = ab["max_queue_bytes"].as_u64().unwrap();
    assert!((48_000..=50_000).contains(&max_queue), "queue filled to its limit and no further: {counters}");
    assert_eq!(ab["dropped_loss"].as_u64(), Some(0));
    // The emulator kept up with a 2x overload: its receive ring overflows
    // only when the scheduler takes its core away (a workspace loop, the
    // next test binary starting beside this one, measured 323 of 101,598
    // frames lost there once; idle, none). A forwarder that falls behind
    // loses far more.
    let kernel_dropped = counters["kernel_dropped_a"].as_u64().unwrap();
    assert!(kernel_dropped * 50 <= ab["frames_in"].as_u64().unwrap(), "the emulator kept up: {counters}");
    assert!(
        counters["offload"]["checksums_finished"].as_u64().unwrap() > 1000,
        "iperf3's UDP checksums arrived partial and were finished: {counters}"
    );
    assert!(!w.has_xdp("wa").unwrap() && !w.has_xdp("wb").unwrap(), "no program left behind");
}

#[test]
fn kernel_tcp_with_default_offloads_crosses_the_emulator() {
    require_root!();
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let (bed, a, w, b) = path("10.74.0");
    let pid = start(&bed, &w, &["--delay", "5ms", "--rate", "300mbit", "--buffer", "400KB"]);
    bed.spawn_ready(&b, "iperf3", &["-s", "-1"], || b.listening(5201)).unwrap();
    let out = a.exec("iperf3", &["-c", "10.74.0.2", "-t", "3", "-J"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e6;
    eprintln!("wanemu 300 Mbit/s, 10 ms RTT: kernel TCP (default offloads) received {got:.1} Mbit/s");
    let counters = stop(&bed, pid);
    eprintln!("{counters}");
    // Without the emulator's cutting, every segment over 1514 B would be
    // refused by the far veth and the transfer would crawl on retransmits.
    assert!(got > 100.0 && got < 300.0, "received {got:.1} Mbit/s of a 300 Mbit/s path: {counters}");
    let off = &counters["offload"];
    assert!(off["segments_cut"].as_u64().unwrap() > 100, "the sender's 64 KiB segments were cut: {counters}");
    assert_eq!(off["too_long"].as_u64(), Some(0));
    assert_eq!(counters["tx_errors"].as_u64(), Some(0), "no frame was too long for the far side: {counters}");
}

#[test]
fn random_loss_matches_the_setting() {
    require_root!();
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let (bed, a, w, _b) = path("10.72.0");
    let pid =
        start(&bed, &w, &["--delay", "1ms", "--rate", "1gbit", "--buffer", "1MB", "--loss", "10%", "--seed", "9"]);
    // Each echo crosses twice: 1 - 0.9^2 = 19% of pings fail.
    let (loss, _) = ping(&a, "10.72.0.2", 400, "0.005");
    eprintln!("wanemu 10% loss each way: ping lost {:.1}% (want 19%)", loss * 100.0);
    assert!((0.13..0.25).contains(&loss), "ping loss {loss}, want 0.19");
    let counters = stop(&bed, pid);
    for dir in ["a_to_b", "b_to_a"] {
        let d = &counters[dir];
        let frac = d["dropped_loss"].as_f64().unwrap() / d["frames_in"].as_f64().unwrap();
        assert!((0.06..0.14).contains(&frac), "{dir}: {frac} lost, want 0.10: {counters}");
    }
}

#[test]
fn bad_settings_are_one_clear_line() {
    require_root!();
    let (_bed, _a, w, _b) = path("10.73.0");
    let run = |args: &[&str]| {
        let out = w.command(XSOCK, args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let base = ["wanemu", "--a", "wa", "--b", "wb", "--delay", "10ms", "--buffer", "1MB"];
    let (code, err) = run(&[&base[..], &["--rate", "1gbps"]].concat());
    assert_eq!(code, Some(2));
    assert!(err.contains("ambiguous") && err.contains("1gbit"), "{err}");
    let (code, err) =
        run(&["wanemu", "--a", "wa", "--b", "wx", "--delay", "10ms", "--rate", "1gbit", "--buffer", "1MB"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("wx") && err.contains("wb"), "names the interfaces that exist: {err}");
    assert!(!w.has_xdp("wa").unwrap(), "the half-opened bridge left no program on wa");
    let (code, err) =
        run(&["wanemu", "--a", "wa", "--b", "wa", "--delay", "10ms", "--rate", "1gbit", "--buffer", "1MB"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("two interfaces"), "{err}");
}

/// The TCP mode's own congestion control (the default, no rate given) on
/// a long path with a buffer of a tenth of its BDP: the case where it used
/// to collapse (`--pace auto` gave 22 % of such a path). Bounds a shared
/// two-core machine keeps (a debug build; perf/RESULTS.md has the release
/// figures beside kernel Cubic and BBR).
#[test]
fn the_tcp_mode_fills_a_long_path_with_a_shallow_buffer_without_a_rate_given() {
    require_root!();
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let (bed, a, w, b) = path("10.75.0");
    // 200 Mbit/s, 40 ms: BDP 1 MB, buffer 100 KB.
    let pid = start(&bed, &w, &["--delay", "20ms", "--rate", "200mbit", "--buffer", "100KB"]);
    let listen = "10.75.0.2:7400";
    let srv = bed
        .spawn_ready(
            &b,
            XSOCK,
            &[
                "bw",
                "--iface",
                "eth0",
                "--transport",
                "tcp",
                "--listen",
                listen,
                "--buffer",
                "2000000",
                "--poll",
                "sleep",
            ],
            || b.has_xdp("eth0"),
        )
        .unwrap();
    let out = a
        .exec(
            XSOCK,
            &[
                "bw",
                "--iface",
                "eth0",
                "--transport",
                "tcp",
                "--connect",
                listen,
                "--seconds",
                "8",
                "--buffer",
                "2000000",
                "--poll",
                "sleep",
                "--json",
            ],
        )
        .unwrap_or_else(|e| {
            // Both ends' words and the emulator's counters: a stall is in
            // one of the three.
            bed.finish(srv).unwrap();
            let receiver = bed.log_tail(srv, 30);
            panic!("sender: {e}\nreceiver: {receiver}\nemulator: {}", stop(&bed, pid));
        });
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mbit = report["gbit_per_s"].as_f64().unwrap() * 1000.0;
    let (segments, retx) = (report["segments"].as_f64().unwrap(), report["retransmits"].as_f64().unwrap());
    eprintln!(
        "TCP mode, model, 200 Mbit/s 40 ms 10 % BDP buffer: {mbit:.1} Mbit/s, {retx} of {segments} segments sent again"
    );
    bed.finish(srv).unwrap();
    let counters = stop(&bed, pid);
    // Start-up takes about a second of the eight; the path carries about
    // 191 Mbit/s of payload (measured: 130-170 Mbit/s release, 112-167
    // debug idle, 88-123 debug with two `yes` loops on the 2 cores). The
    // failures this guards against sit far below: before the model,
    // `--pace auto` held a fifth of such a path (40 Mbit/s), and a receiver
    // SACKing data its window had dropped stalled the flow (33 Mbit/s).
    assert!(mbit > 60.0, "{mbit:.1} Mbit/s of a 200 Mbit/s path: {counters}");
    assert!(retx < segments * 0.03, "{retx} of {segments} segments sent again: {counters}");
}
