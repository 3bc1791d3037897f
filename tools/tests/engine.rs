//! The host engine (issue 12) in namespaces: unmodified tools attach to it
//! and move data over reliable-link through it; a killed client's peer is
//! reset with a reason at once while other clients go on; a killed engine
//! fails its clients at once, takes its XDP program with it, and a new
//! engine serves; SIGTERM leaves nothing behind.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

/// The engine's socket and lock in `host`'s namespace (default run dir).
fn engine_files(host: &Host) -> (PathBuf, PathBuf) {
    let out = host.exec("stat", &["-L", "-c", "%i", "/proc/self/ns/net"]).unwrap();
    let ino = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = PathBuf::from("/run/xsock");
    (dir.join(format!("eth0.{ino}.sock")), dir.join(format!("eth0.{ino}.lock")))
}

fn start_engine(bed: &Testbed, host: &Host) -> u32 {
    // Ready when it says it listens (a dead engine's socket file may still
    // be there until the new one replaces it).
    let pid = bed.spawn(host, XSOCK, &["engine", "--iface", "eth0"]).unwrap();
    wait_for("the engine to listen", Duration::from_secs(10), || bed.log_tail(pid, 20).contains("listening on"));
    pid
}

/// A bw receiver, once it listens on every path.
fn bw_server(bed: &Testbed, host: &Host, listen: &str) -> u32 {
    let pid = bed.spawn(host, XSOCK, &["bw", "--iface", "eth0", "--listen", listen, "--poll", "sleep"]).unwrap();
    wait_for("bw to listen", Duration::from_secs(10), || bed.log_tail(pid, 20).contains("bw receiver on"));
    pid
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    t0.elapsed()
}

fn status(host: &Host) -> serde_json::Value {
    let out = host.exec(XSOCK, &["engine", "--iface", "eth0", "--status"]).unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn tool_processes_share_one_engine_per_host_and_sigterm_leaves_nothing() {
    require_root!();
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.68.0").unwrap();
    // An engine on each host: the servers on b (a bw receiver and a cat
    // listener, two processes on one interface) attach to b's.
    let engine = start_engine(&bed, &a);
    let engine_b = start_engine(&bed, &b);
    let listen = "10.68.0.2:7720";
    let bw_b = bw_server(&bed, &b, listen);
    assert!(bed.log_tail(bw_b, 20).contains("attached to the host engine"), "{}", bed.log_tail(bw_b, 5));
    // Eight bw clients at once, each its own process on the engine's host.
    let clients: Vec<u32> = (0..8)
        .map(|_| {
            bed.spawn(
                &a,
                XSOCK,
                &["bw", "--iface", "eth0", "--connect", listen, "--seconds", "1s", "--json", "--poll", "sleep"],
            )
            .unwrap()
        })
        .collect();
    for c in clients {
        let st = bed.wait_exit(c, Duration::from_secs(30)).unwrap();
        let text = bed.log_tail(c, 20);
        assert!(st.success(), "a client failed: {text}");
        let json = text.lines().rfind(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON: {text}"));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["transport"], "link", "{v}");
        assert!(v["bytes"].as_u64().unwrap() > 0, "{v}");
        assert!(bed.log_tail(c, 20).contains("attached to the host engine"), "{}", bed.log_tail(c, 5));
    }
    let st = status(&a);
    assert!(st["streams_total"].as_u64().unwrap() >= 8, "{st}");
    assert_eq!(st["process_gone_resets_total"], 0, "{st}");
    // The receiving side's bytes crossed the shared rings: the engine rang
    // its sleeping receiver's doorbell.
    let st = status(&b);
    assert!(st["doorbells_to_clients_total"].as_u64().unwrap() > 0, "{st}");

    // The file below: the server moves its bytes through the socketpair
    // itself (XSOCK_ENGINE_RINGS=off), the client through rings.
    // A file both ways through the engine (cat on a), checked.
    let dir = xsock_testbed::overlay::scratch("engine-cat");
    let src = dir.join("src");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let got_b = dir.join("got_b");
    let got_a = dir.join("got_a");
    let cat_listen = "10.68.0.2:7721";
    let server = bed
        .spawn(
            &b,
            "sh",
            &[
                "-c",
                &format!(
                    "XSOCK_ENGINE_RINGS=off {XSOCK} cat --iface eth0 --listen {cat_listen} < {} > {}",
                    src.display(),
                    got_b.display()
                ),
            ],
        )
        .unwrap();
    // Listening on both paths once it says so.
    wait_for("cat to listen", Duration::from_secs(10), || bed.log_tail(server, 20).contains("cat listening on"));
    let client = bed
        .spawn(
            &a,
            "sh",
            &[
                "-c",
                &format!("{XSOCK} cat --iface eth0 --connect {cat_listen} < {} > {}", src.display(), got_a.display()),
            ],
        )
        .unwrap();
    assert!(bed.wait_exit(client, Duration::from_secs(30)).unwrap().success(), "{}", bed.log_tail(client, 5));
    assert!(bed.wait_exit(server, Duration::from_secs(10)).unwrap().success(), "{}", bed.log_tail(server, 5));
    assert!(std::fs::read(&got_b).unwrap() == data, "b received a different file");
    assert!(std::fs::read(&got_a).unwrap() == data, "a received a different file");
    assert!(
        bed.log_tail(client, 20).contains("over Link"),
        "{}\nengine: {}",
        bed.log_tail(client, 5),
        bed.log_tail(engine, 10)
    );

    assert!(status(&b)["streams_total"].as_u64().unwrap() >= 9, "{}", status(&b));

    // SIGTERM: exits cleanly, the XDP program, socket and lock go.
    b.exec("kill", &["-TERM", &engine_b.to_string()]).unwrap();
    bed.wait_exit(engine_b, Duration::from_secs(5)).unwrap();
    let (sock, lock) = engine_files(&a);
    a.exec("kill", &["-TERM", &engine.to_string()]).unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = bed.try_wait(engine).unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the engine did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(st.success(), "engine exit: {st}: {}", bed.log_tail(engine, 5));
    assert!(!a.has_xdp("eth0").unwrap(), "the engine left its XDP program");
    assert!(!sock.exists() && !lock.exists(), "the engine left {} or {}", sock.display(), lock.display());
}

#[test]
fn a_killed_client_is_reset_to_its_peer_at_once_and_the_others_go_on() {
    require_root!();
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.69.0").unwrap();
    let engine = start_engine(&bed, &a);
    let listen = "10.69.0.2:7730";
    let server = bw_server(&bed, &b, listen);
    let long = ["bw", "--iface", "eth0", "--connect", listen, "--seconds", "20s", "--poll", "sleep"];
    let victim = bed.spawn(&a, XSOCK, &long).unwrap();
    let bystander = bed.spawn(&a, XSOCK, &long).unwrap();
    wait_for("two transfers", Duration::from_secs(10), || {
        bed.log_tail(server, 50).matches("receiving from").count() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    bed.kill9(victim).unwrap();
    let took =
        wait_for("the peer's reset", Duration::from_secs(2), || bed.log_tail(server, 50).contains("process went away"));
    eprintln!("the killed client's peer was reset {took:?} after kill -9");
    // The bystander still moves data; the engine dropped the victim's stream.
    let before = status(&a)["bytes_to_net"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let st = status(&a);
    assert!(st["bytes_to_net"].as_u64().unwrap() > before, "the other client stalled: {st}");
    assert_eq!(st["streams"], 1, "{st}");
    assert_eq!(st["process_gone_resets_total"], 1, "{st}");
    assert!(bed.try_wait(bystander).unwrap().is_none(), "the other client ended: {}", bed.log_tail(bystander, 5));
    assert_eq!(bed.log_tail(server, 50).matches("ended").count(), 1, "{}", bed.log_tail(server, 5));
    bed.kill9(bystander).unwrap();
    let _ = engine;
}

#[test]
fn a_killed_engine_fails_its_clients_at_once_and_a_new_one_serves() {
    require_root!();
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.70.0").unwrap();
    let engine = start_engine(&bed, &a);
    let listen = "10.70.0.2:7740";
    let server = bw_server(&bed, &b, listen);
    let client = bed
        .spawn(&a, XSOCK, &["bw", "--iface", "eth0", "--connect", listen, "--seconds", "20s", "--poll", "sleep"])
        .unwrap();
    wait_for("the transfer", Duration::from_secs(10), || bed.log_tail(server, 50).contains("receiving from"));
    bed.kill9(engine).unwrap();
    let t0 = Instant::now();
    bed.wait_exit(client, Duration::from_secs(2)).unwrap();
    let took = t0.elapsed();
    eprintln!("the client failed {took:?} after the engine's kill -9");
    let out = bed.log_tail(client, 5);
    assert!(out.contains("host engine for eth0") && out.contains("went away"), "{out}");
    wait_for("the XDP program to go", Duration::from_secs(5), || !a.has_xdp("eth0").unwrap());
    // A new engine takes over (the dead one's lock and socket are stale).
    let engine = start_engine(&bed, &a);
    let c = bed.spawn(&a, XSOCK, &["bw", "--iface", "eth0", "--connect", listen, "--seconds", "1s"]).unwrap();
    assert!(bed.wait_exit(c, Duration::from_secs(20)).unwrap().success(), "{}", bed.log_tail(c, 5));
    assert!(bed.log_tail(c, 20).contains("attached to the host engine"), "{}", bed.log_tail(c, 5));
    a.exec("kill", &["-TERM", &engine.to_string()]).unwrap();
    wait_for("the engine to stop", Duration::from_secs(5), || bed.try_wait(engine).unwrap().is_some());
}

#[test]
fn a_client_that_stops_reading_holds_a_bounded_amount_and_stalls_no_one_else() {
    require_root!();
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.71.0").unwrap();
    let engine = start_engine(&bed, &a);
    let engine_b = start_engine(&bed, &b);
    // b pours zeros into a cat on a whose stdout nobody reads: the cat
    // stops reading its stream once the pipe is full.
    let pour =
        bed.spawn(&b, "sh", &["-c", &format!("{XSOCK} cat --iface eth0 --listen 10.71.0.2:7750 < /dev/zero")]).unwrap();
    wait_for("cat to listen", Duration::from_secs(10), || bed.log_tail(pour, 20).contains("cat listening on"));
    let stuck = bed
        .spawn(&a, "sh", &["-c", &format!("{XSOCK} cat --iface eth0 --connect 10.71.0.2:7750 < /dev/null | sleep 60")])
        .unwrap();
    wait_for("the stream", Duration::from_secs(10), || status(&a)["streams"] == 1);
    std::thread::sleep(Duration::from_millis(1500));
    let st = status(&a);
    let held = st["bridge_buffered_bytes"].as_u64().unwrap();
    let moved = st["bytes_to_app"].as_u64().unwrap();
    eprintln!("a non-reading client: the engine holds {held} B for it; {moved} B reached its socket");
    assert!(held <= 64 << 10, "{st}");
    // What reached the client's socket is its socket buffers' worth, not
    // what b would send (b sends as fast as the link goes).
    assert!(moved < 8 << 20, "{st}");
    // Another client on the same engine still moves data.
    let listen = "10.71.0.2:7751";
    bw_server(&bed, &b, listen);
    let c = bed
        .spawn(
            &a,
            XSOCK,
            &["bw", "--iface", "eth0", "--connect", listen, "--seconds", "1s", "--json", "--poll", "sleep"],
        )
        .unwrap();
    assert!(bed.wait_exit(c, Duration::from_secs(20)).unwrap().success(), "{}", bed.log_tail(c, 5));
    assert!(bed.log_tail(c, 5).contains("\"transport\":\"link\""), "{}", bed.log_tail(c, 5));
    let _ = (engine, engine_b, stuck);
}

/// Regression: a thousand connects answered at once filled the client's
/// control socket and the engine dropped the answers it could not send
/// (45 of 1,000 connects never finished); they now wait in a queue. The
/// connects are non-blocking through the engine too.
#[test]
fn two_thousand_connects_at_once_from_one_process_through_engines() {
    require_root!();
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.72.0").unwrap();
    start_engine(&bed, &a);
    start_engine(&bed, &b);
    let server = bed.spawn(&b, XSOCK, &["conns", "--iface", "eth0", "--listen", "10.72.0.2:7760"]).unwrap();
    wait_for("conns to listen", Duration::from_secs(10), || bed.log_tail(server, 20).contains("conns echo on"));
    let out = a
        .exec(
            XSOCK,
            &[
                "conns",
                "--iface",
                "eth0",
                "--connect",
                "10.72.0.2:7760",
                "--count",
                "2000",
                "--json",
                "--timeout",
                "60s",
            ],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("2,000 connects through engines: {v}");
    assert_eq!(v["ok"], 2000, "{v}");
    assert_eq!(v["transport"], "link", "{v}");
    assert!(status(&a)["streams_total"].as_u64().unwrap() >= 2000);
}

/// Overlay endpoints (`xsock mesh` joined by --boot/--name) on hosts whose
/// interface a host engine owns: they attach to it, and every exchange
/// across the LANs (through relays) and inside one completes intact.
#[test]
fn overlay_endpoints_work_through_host_engines() {
    use xsock_testbed::{
        overlay::Overlay,
        sites::{Policy, SiteSpec},
    };
    require_root!();
    let specs = [
        SiteSpec { name: "hub", policy: Policy::Open, relays: 1, hosts: 1 },
        SiteSpec { name: "sp1", policy: Policy::HubOnly, relays: 1, hosts: 2 },
    ];
    let o = Overlay::start(XSOCK, "engine-ovl", &specs);
    let relays = o.relay_names();
    let refs: Vec<&str> = relays.iter().map(String::as_str).collect();
    o.converge(&refs, Duration::from_secs(20));
    let eps = o.endpoints();
    let engines: Vec<u32> = eps.iter().map(|(_, h)| start_engine(&o.bed, h)).collect();
    let reports = o.mesh(&eps, &eps, 64 * 1024);
    let (mut ok, mut relayed) = (0, 0);
    for r in &reports {
        assert!(r["failed"].as_array().unwrap().is_empty(), "{r}\nrelays: {}", o.relay_logs());
        ok += r["ok"].as_u64().unwrap();
        relayed += r["relayed"].as_u64().unwrap();
    }
    assert_eq!(ok, 3 * 2, "{reports:?}");
    assert_eq!(relayed, 4, "the hub host and each sp1 host talk through relays");
    for (name, h) in &eps {
        let st = status(h);
        assert!(st["streams_total"].as_u64().unwrap() > 0, "{name}'s endpoint did not go through its engine: {st}");
    }
    for (pid, (_, h)) in engines.iter().zip(&eps) {
        h.exec("kill", &["-TERM", &pid.to_string()]).unwrap();
        o.bed.wait_exit(*pid, Duration::from_secs(5)).unwrap();
    }
}
