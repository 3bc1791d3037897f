//! The `xsock` binary end to end, in namespaces: the flags and JSON fields
//! of CLI.md, one-line errors with a non-zero exit, and the demo.

use std::process::Command;

use serde_json::Value;
use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

fn pair() -> (Testbed, Host, Host) {
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.66.0").unwrap();
    (bed, a, b)
}

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "--json prints one object and nothing else: {stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn rawping_prints_the_cli_md_fields() {
    require_root!();
    let (bed, a, b) = pair();
    let server = ["rawping", "--iface", "eth0", "--echo", "--poll", "adaptive"];
    bed.spawn_ready(&b, XSOCK, &server, || b.has_xdp("eth0"))
        .unwrap();
    let mac = b.mac("eth0").unwrap();
    let out = a
        .command(
            XSOCK,
            &[
                "rawping",
                "--iface",
                "eth0",
                "--peer-mac",
                &mac,
                "--count",
                "500",
                "--warmup",
                "50",
                "--size",
                "128",
                "--json",
            ],
        )
        .output()
        .unwrap();
    let v = json(&out);
    for k in [
        "transport",
        "size",
        "count",
        "rtt_p50_ns",
        "rtt_p99_ns",
        "rtt_p999_ns",
        "rtt_max_ns",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(v["size"], 128);
    assert_eq!(v["count"], 500);
    assert_eq!(v["lost"], 0);
    let p50 = v["rtt_p50_ns"].as_u64().unwrap();
    assert!(p50 > 0 && p50 <= v["rtt_p99_ns"].as_u64().unwrap());
}

#[test]
fn rawbw_reports_what_the_receiver_counted() {
    require_root!();
    let (bed, a, b) = pair();
    let server = ["rawbw", "--iface", "eth0", "--listen"];
    bed.spawn_ready(&b, XSOCK, &server, || b.has_xdp("eth0"))
        .unwrap();
    let mac = b.mac("eth0").unwrap();
    let out = a
        .command(
            XSOCK,
            &[
                "rawbw",
                "--iface",
                "eth0",
                "--peer-mac",
                &mac,
                "--size",
                "1000",
                "--seconds",
                "500ms",
                "--json",
            ],
        )
        .output()
        .unwrap();
    let v = json(&out);
    for k in [
        "transport",
        "size",
        "seconds",
        "streams",
        "bytes",
        "gbit_per_s",
        "msgs_per_s",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    let received = v["frames_received"].as_u64().unwrap();
    assert!(received > 1000, "{v}");
    assert_eq!(v["bytes"].as_u64().unwrap(), received * 1000);
    assert!(received <= v["frames_sent"].as_u64().unwrap());
}

#[test]
fn kernel_ping_round_trips_over_tcp() {
    require_root!();
    let (bed, a, b) = pair();
    let server = [
        "ping",
        "--listen",
        "10.66.0.2:7100",
        "--transport",
        "kernel",
        "--poll",
        "sleep",
    ];
    bed.spawn_ready(&b, XSOCK, &server, || b.listening(7100))
        .unwrap();
    let client = [
        "ping",
        "--connect",
        "10.66.0.2:7100",
        "--transport",
        "kernel",
        "--count",
        "300",
        "--size",
        "1000",
        "--json",
    ];
    let out = a.command(XSOCK, &client).output().unwrap();
    let v = json(&out);
    assert_eq!(v["transport"], "kernel");
    assert_eq!(v["count"], 300);
}

/// Runs xsock with `args` in `host` and returns (exit code, stderr).
fn fails(host: &Host, args: &[&str]) -> (i32, String) {
    let out = host.command(XSOCK, args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn bad_input_is_one_clear_line_and_a_nonzero_exit() {
    require_root!();
    let (_bed, a, _b) = pair();
    let (code, err) = fails(
        &a,
        &[
            "rawping",
            "--iface",
            "eht0",
            "--peer-mac",
            "02:00:00:00:00:01",
        ],
    );
    assert_eq!(code, 1);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("xsock: interface \"eht0\" not found") && last.contains("eth0"),
        "{err}"
    );
    let (code, err) = fails(
        &a,
        &["rawping", "--iface", "eth0", "--peer-mac", "not-a-mac"],
    );
    assert_eq!(code, 2, "clap refuses bad values");
    assert!(err.contains("six hex bytes"), "{err}");
    let (code, err) = fails(
        &a,
        &[
            "rawping",
            "--iface",
            "eth0",
            "--queue",
            "5",
            "--peer-mac",
            "02:00:00:00:00:01",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("queue 5 does not exist"), "{err}");
    let (code, err) = fails(
        &a,
        &[
            "rawping",
            "--iface",
            "eth0",
            "--peer-mac",
            "02:00:00:00:00:01",
            "--size",
            "20",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--size 20 is outside"), "{err}");
    // Nobody answers: a clear reason, not a hang.
    let (code, err) = fails(
        &a,
        &[
            "rawping",
            "--iface",
            "eth0",
            "--peer-mac",
            "02:00:00:00:00:01",
            "--warmup",
            "3",
            "--timeout",
            "50ms",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no answer") && err.contains("--echo"), "{err}");
    let (code, err) = fails(
        &a,
        &[
            "ping",
            "--connect",
            "10.66.0.2:7999",
            "--transport",
            "kernel",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to 10.66.0.2:7999"), "{err}");
    // None of the failures left a program on the interface.
    assert!(!a.has_xdp("eth0").unwrap());
}

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    require_root!();
    let out = Command::new(XSOCK)
        .args(["demo", "--count", "2000", "--seconds", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "xsock rawping",
        "kernel TCP (xsock ping",
        "xsock rawbw",
        "kernel UDP (iperf3)",
        "kernel TCP (iperf3",
    ] {
        assert!(stdout.contains(row), "missing {row}:\n{stdout}");
    }
    // The demo has exited: any test namespace named for a dead process
    // would be its leftover.
    let ns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let orphans: Vec<&str> = ns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix(xsock_testbed::PREFIX)
                .and_then(|r| r.split('n').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "the demo left namespaces behind: {orphans:?}"
    );
}
