//! Regressions found when xsock was tried as a new user would (issue 11):
//! each test is named for what broke, with the input that broke it.

use std::time::{Duration, Instant};

use serde_json::Value;
use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

fn pair(net: &str, mtu: u32) -> (Testbed, Host, Host) {
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts { mtu, queues: 1 }, net).unwrap();
    (bed, a, b)
}

fn run(host: &Host, args: &[&str]) -> (i32, String, String) {
    let out = host.command(XSOCK, args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A one-line error: non-zero exit, the last line starting "xsock:", no
/// panic or backtrace.
fn one_line_error(code: i32, err: &str) -> String {
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace") && !err.contains("memory allocation"), "{err}");
    let last = err.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("xsock: "), "{err}");
    last
}

#[test]
fn ping_with_a_20_mb_message_does_not_deadlock() {
    require_root!();
    let (bed, a, b) = pair("10.61.0", 1500);
    for (port, transport) in [(7700, "link"), (7701, "kernel")] {
        let listen = format!("10.61.0.2:{port}");
        bed.spawn_ready(&b, XSOCK, &["ping", "--iface", "eth0", "--listen", &listen, "--poll", "sleep"], || {
            b.listening(port)
        })
        .unwrap();
        let t0 = Instant::now();
        let mut cmd = a.command(
            XSOCK,
            &[
                "ping",
                "--iface",
                "eth0",
                "--connect",
                &listen,
                "--transport",
                transport,
                "--size",
                "20000000",
                "--count",
                "2",
                "--warmup",
                "0",
                "--poll",
                "sleep",
                "--json",
            ],
        );
        let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        let pid = bed.adopt(child);
        let out = loop {
            if let Some(status) = bed.try_wait(pid).unwrap() {
                break status;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{transport}: a 20 MB ping-pong hangs");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(out.success(), "{transport}: {out}");
    }
}

#[test]
fn absurd_sizes_and_counts_are_one_clear_line() {
    require_root!();
    let (_bed, a, _b) = pair("10.62.0", 1500);
    let base = ["ping", "--iface", "eth0", "--connect", "10.62.0.2:7702", "--transport", "kernel"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { [&base[..], extra].concat() };
    // Was: an abort with a backtrace (the allocation failed).
    let (code, _, err) = run(&a, &with(&["--size", "100000000000"]));
    assert!(one_line_error(code, &err).contains("--size"), "{err}");
    // Was: a table of zeros and exit 0.
    let (code, _, err) = run(&a, &with(&["--count", "0"]));
    assert!(one_line_error(code, &err).contains("--count"), "{err}");
    let (code, _, err) =
        run(&a, &["bw", "--connect", "10.62.0.2:7702", "--transport", "kernel", "--size", "9999999999999"]);
    assert!(one_line_error(code, &err).contains("--size"), "{err}");
    let (code, _, err) =
        run(&a, &["bw", "--connect", "10.62.0.2:7702", "--transport", "kernel", "--streams", "99999999999999"]);
    assert!(one_line_error(code, &err).contains("--streams"), "{err}");
}

#[test]
fn listening_on_port_0_reports_and_serves_the_port_the_kernel_chose() {
    require_root!();
    let (bed, a, b) = pair("10.63.0", 1500);
    let pid = bed.spawn(&b, XSOCK, &["ping", "--iface", "eth0", "--listen", "10.63.0.2:0", "--poll", "sleep"]).unwrap();
    let t0 = Instant::now();
    let port = loop {
        let log = bed.log_tail(pid, 20);
        if let Some(p) = log.lines().find_map(|l| l.split("ping echo on 10.63.0.2:").nth(1)) {
            break p.split_whitespace().next().unwrap().parse::<u16>().unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no listen line: {log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(port, 0, "was: port 0 printed");
    let addr = format!("10.63.0.2:{port}");
    // Reliable-link and kernel clients both find it on that port.
    for transport in ["link", "kernel"] {
        let (code, out, err) = run(
            &a,
            &["ping", "--iface", "eth0", "--connect", &addr, "--transport", transport, "--count", "50", "--json"],
        );
        assert_eq!(code, 0, "{transport}: {err}");
        assert_eq!(json(&out)["transport"], transport);
    }
}

#[test]
fn bw_with_a_sleeping_receiver_on_the_kernel_path_measures_the_transfer() {
    require_root!();
    let (bed, a, b) = pair("10.64.0", 1500);
    let listen = "10.64.0.2:7703";
    bed.spawn_ready(&b, XSOCK, &["bw", "--listen", listen, "--transport", "kernel", "--poll", "sleep"], || {
        b.listening(7703)
    })
    .unwrap();
    let (code, out, err) =
        run(&a, &["bw", "--connect", listen, "--transport", "kernel", "--poll", "sleep", "--seconds", "1s", "--json"]);
    assert_eq!(code, 0, "{err}");
    let g = json(&out)["gbit_per_s"].as_f64().unwrap();
    // Was 0.00: the receiver slept 100 ms per pass, never woken by kernel
    // sockets. A sleeping kernel receiver moves gigabits here.
    assert!(g > 0.3, "{g} Gbit/s");
}

#[test]
fn bw_at_mtu_9000_needs_no_flag() {
    require_root!();
    let (bed, a, b) = pair("10.65.0", 9000);
    let listen = "10.65.0.2:7704";
    let pid = bed.spawn_ready(&b, XSOCK, &["bw", "--iface", "eth0", "--listen", listen], || b.has_xdp("eth0")).unwrap();
    let (code, out, err) =
        run(&a, &["bw", "--iface", "eth0", "--connect", listen, "--transport", "link", "--seconds", "500ms", "--json"]);
    assert_eq!(code, 0, "was: refused to start without --multi-buffer: {err}");
    assert!(json(&out)["gbit_per_s"].as_f64().unwrap() > 0.1);
    assert!(err.contains("multi-buffer") && err.contains("automatically"), "a log line says what was chosen: {err}");
    assert!(bed.log_tail(pid, 50).contains("automatically"));
}

#[test]
fn a_second_runtime_on_the_interface_names_the_owner_and_says_it_stays_on_kernel_tcp() {
    require_root!();
    let (bed, a, _b) = pair("10.66.1", 1500);
    let owner = bed
        .spawn_ready(&a, XSOCK, &["ping", "--iface", "eth0", "--listen", "10.66.1.1:7705"], || a.has_xdp("eth0"))
        .unwrap();
    // Forced reliable-link: an error naming the process that holds the hook.
    let (code, _, err) = run(&a, &["ping", "--iface", "eth0", "--connect", "10.66.1.2:7706", "--transport", "link"]);
    let line = one_line_error(code, &err);
    assert!(line.contains(&format!("pid {owner}")) && !line.contains("xdp off` (or"), "{line}");
    // Automatic: the warning says the fallback and that it lasts.
    let (_, _, err) = run(&a, &["ping", "--iface", "eth0", "--connect", "10.66.1.2:7706", "--count", "1"]);
    assert!(err.contains("kernel sockets only") && err.contains(&format!("pid {owner}")), "{err}");
    assert!(err.contains("for as long as it lives"), "{err}");
}
