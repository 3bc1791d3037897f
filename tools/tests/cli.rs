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
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "--json prints one object and nothing else: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn rawping_prints_the_cli_md_fields() {
    require_root!();
    let (bed, a, b) = pair();
    let server = ["rawping", "--iface", "eth0", "--echo", "--poll", "adaptive"];
    bed.spawn_ready(&b, XSOCK, &server, || b.has_xdp("eth0")).unwrap();
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
    for k in ["transport", "size", "count", "rtt_p50_ns", "rtt_p99_ns", "rtt_p999_ns", "rtt_max_ns"] {
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
    bed.spawn_ready(&b, XSOCK, &server, || b.has_xdp("eth0")).unwrap();
    let mac = b.mac("eth0").unwrap();
    let out = a
        .command(
            XSOCK,
            &["rawbw", "--iface", "eth0", "--peer-mac", &mac, "--size", "1000", "--seconds", "500ms", "--json"],
        )
        .output()
        .unwrap();
    let v = json(&out);
    for k in ["transport", "size", "seconds", "streams", "bytes", "gbit_per_s", "msgs_per_s"] {
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
    let server = ["ping", "--listen", "10.66.0.2:7100", "--transport", "kernel", "--poll", "sleep"];
    bed.spawn_ready(&b, XSOCK, &server, || b.listening(7100)).unwrap();
    let client =
        ["ping", "--connect", "10.66.0.2:7100", "--transport", "kernel", "--count", "300", "--size", "1000", "--json"];
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
    let (code, err) = fails(&a, &["rawping", "--iface", "eht0", "--peer-mac", "02:00:00:00:00:01"]);
    assert_eq!(code, 1);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("xsock: interface \"eht0\" not found") && last.contains("eth0"), "{err}");
    let (code, err) = fails(&a, &["rawping", "--iface", "eth0", "--peer-mac", "not-a-mac"]);
    assert_eq!(code, 2, "clap refuses bad values");
    assert!(err.contains("six hex bytes"), "{err}");
    let (code, err) = fails(&a, &["rawping", "--iface", "eth0", "--queue", "5", "--peer-mac", "02:00:00:00:00:01"]);
    assert_eq!(code, 1);
    assert!(err.contains("queue 5 does not exist"), "{err}");
    let (code, err) = fails(&a, &["rawping", "--iface", "eth0", "--peer-mac", "02:00:00:00:00:01", "--size", "20"]);
    assert_eq!(code, 1);
    assert!(err.contains("--size 20 is outside"), "{err}");
    // Nobody answers: a clear reason, not a hang.
    let (code, err) = fails(
        &a,
        &["rawping", "--iface", "eth0", "--peer-mac", "02:00:00:00:00:01", "--warmup", "3", "--timeout", "50ms"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no answer") && err.contains("--echo"), "{err}");
    let (code, err) = fails(&a, &["ping", "--connect", "10.66.0.2:7999", "--transport", "kernel"]);
    assert_eq!(code, 1);
    assert!(err.contains("connection refused by 10.66.0.2:7999") && err.contains("--listen"), "{err}");
    // The adaptive window given to a mode that has none: refused, and the
    // engine never took the interface.
    let (code, err) = fails(&a, &["engine", "--iface", "eth0", "--poll", "busy", "--spin", "1ms"]);
    assert_eq!(code, 1);
    assert!(err.contains("--spin") && err.contains("--poll adaptive"), "{err}");
    // None of the failures left a program on the interface.
    assert!(!a.has_xdp("eth0").unwrap());
}

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    require_root!();
    let out = Command::new(XSOCK).args(["demo", "--count", "2000", "--seconds", "1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for row in [
        "xsock ping --transport link (reliable-link)",
        "xsock ping --transport kernel (kernel TCP)",
        "sockperf ping-pong",
        "xsock rawping",
        "xsock bw --transport link (reliable-link, bytes checked)",
        "xsock bw --transport kernel (kernel TCP, bytes checked)",
        "iperf3 (kernel TCP)",
        "xsock rawbw",
    ] {
        assert!(stdout.contains(row), "missing {row}:\n{stdout}");
    }
    // The demo has exited: any test namespace named for a dead process
    // would be its leftover.
    let ns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
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
    assert!(orphans.is_empty(), "the demo left namespaces behind: {orphans:?}");
}

/// Starts an xsock server in `b` and waits until it listens on `port`.
fn server(bed: &Testbed, b: &Host, args: &[&str], port: u16) {
    bed.spawn_ready(b, XSOCK, args, || b.listening(port)).unwrap();
}

#[test]
fn ping_over_link_and_kernel_and_a_sweep() {
    require_root!();
    let (bed, a, b) = pair();
    server(&bed, &b, &["ping", "--iface", "eth0", "--listen", "10.66.0.2:7200"], 7200);
    for transport in ["link", "kernel"] {
        let out = a
            .command(
                XSOCK,
                &[
                    "ping",
                    "--iface",
                    "eth0",
                    "--connect",
                    "10.66.0.2:7200",
                    "--transport",
                    transport,
                    "--count",
                    "300",
                    "--warmup",
                    "20",
                    "--json",
                ],
            )
            .output()
            .unwrap();
        let v = json(&out);
        assert_eq!(v["transport"], transport);
        assert_eq!(v["count"], 300);
        assert!(v["rtt_p50_ns"].as_u64().unwrap() > 0);
    }
    // Automatic: an xsock peer on the segment is reached over reliable-link.
    let out = a
        .command(XSOCK, &["ping", "--iface", "eth0", "--connect", "10.66.0.2:7200", "--count", "50", "--json"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["transport"], "link");
    let out = a
        .command(
            XSOCK,
            &[
                "ping",
                "--iface",
                "eth0",
                "--connect",
                "10.66.0.2:7200",
                "--sweep",
                "--max-size",
                "65536",
                "--count",
                "100",
                "--warmup",
                "10",
                "--json",
            ],
        )
        .output()
        .unwrap();
    let v = json(&out);
    let sizes: Vec<u64> = v["sweep"].as_array().unwrap().iter().map(|r| r["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, (0..=16).map(|k| 1u64 << k).collect::<Vec<_>>());
}

#[test]
fn bw_reports_the_cli_md_fields_on_both_transports() {
    require_root!();
    let (bed, a, b) = pair();
    server(&bed, &b, &["bw", "--iface", "eth0", "--listen", "10.66.0.2:7300"], 7300);
    for (transport, streams) in [("link", "1"), ("kernel", "1"), ("link", "3")] {
        let out = a
            .command(
                XSOCK,
                &[
                    "bw",
                    "--iface",
                    "eth0",
                    "--connect",
                    "10.66.0.2:7300",
                    "--transport",
                    transport,
                    "--seconds",
                    "300ms",
                    "--streams",
                    streams,
                    "--size",
                    "65536",
                    "--json",
                ],
            )
            .output()
            .unwrap();
        let v = json(&out);
        for k in ["transport", "size", "seconds", "streams", "bytes", "gbit_per_s", "msgs_per_s"] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["transport"], transport);
        assert_eq!(v["streams"].as_u64().unwrap().to_string(), streams);
        assert!(v["bytes"].as_u64().unwrap() >= 65536, "{v}");
    }
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    out.stdout[..64].to_vec()
}

#[test]
fn cat_interoperates_with_nc_python_and_itself() {
    require_root!();
    let (bed, a, b) = pair();
    let dir = std::env::temp_dir().join(format!("xsock-cat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.bin");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let sh = |host: &Host, cmd: String| host.command("sh", &["-c", &cmd]).output().unwrap();

    // xsock client (kernel transport) → nc server.
    let out1 = dir.join("out1.bin");
    bed.spawn_ready(&b, "sh", &["-c", &format!("nc -l -N 10.66.0.2 7401 > {}", out1.display())], || b.listening(7401))
        .unwrap();
    let r =
        sh(&a, format!("{XSOCK} cat --transport kernel --connect 10.66.0.2:7401 < {} > /dev/null", input.display()));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // A Python client → xsock server (automatic: the kernel side takes it), both directions.
    let out2 = dir.join("out2.bin");
    let pid = bed
        .spawn_ready(
            &b,
            "sh",
            &["-c", &format!("echo -n pong | {XSOCK} cat --iface eth0 --listen 10.66.0.2:7402 > {}", out2.display())],
            || b.listening(7402),
        )
        .unwrap();
    let py = format!(
        "import socket,sys\ns=socket.create_connection(('10.66.0.2',7402))\ns.sendall(open('{}','rb').read())\ns.shutdown(socket.SHUT_WR)\nb=b''\nwhile True:\n    c=s.recv(65536)\n    if not c: break\n    b+=c\nsys.stdout.write(b.decode())\n",
        input.display()
    );
    let r = a.command("python3", &["-c", &py]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "pong");
    let _ = bed.finish(pid);
    // xsock → xsock over reliable-link. The previous server (behind sh)
    // may still hold eth0 for a moment: a server started then falls back
    // to kernel sockets (a CI run under load failed so).
    let t0 = std::time::Instant::now();
    while b.has_xdp("eth0").unwrap() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the previous cat still holds eth0");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out3 = dir.join("out3.bin");
    let server = bed
        .spawn(&b, "sh", &["-c", &format!("{XSOCK} cat --iface eth0 --listen 10.66.0.2:7403 > {}", out3.display())])
        .unwrap();
    // Listening on both paths once it says so.
    let t0 = std::time::Instant::now();
    while !bed.log_tail(server, 20).contains("cat listening on") {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{}", bed.log_tail(server, 5));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = sh(&a, format!("{XSOCK} cat --iface eth0 --transport link --connect 10.66.0.2:7403 < {}", input.display()));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let want = sha(&input);
    for out in [&out1, &out2, &out3] {
        assert_eq!(sha(out), want, "{} differs", out.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ping_to_nobody_is_one_clear_line() {
    require_root!();
    let (_bed, a, _b) = pair();
    let (code, err) = fails(&a, &["ping", "--iface", "eth0", "--connect", "10.66.0.2:7999", "--transport", "link"]);
    assert_eq!(code, 1);
    assert!(err.lines().last().unwrap().contains("does not answer reliable-link discovery"), "{err}");
    let (code, err) = fails(&a, &["ping", "--connect", "10.66.0.2:7999", "--transport", "link"]);
    assert_eq!(code, 1);
    assert!(err.contains("--transport link needs --iface"), "{err}");
}
