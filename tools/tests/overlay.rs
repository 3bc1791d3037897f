//! The relay overlay in namespaces: seven LANs joined over a routed WAN,
//! with a firewall that blocks inbound connections, a group of LANs that
//! reach only the hub, and two LANs behind NAT on the same private subnet.
//! Every ordered pair of endpoints connects and exchanges data intact;
//! traffic inside a LAN never touches a relay; a killed relay's routes are
//! recomputed and new connections go around it while connections through it
//! fail with a clear error; a wrong key is refused; a file goes from one
//! LAN behind NAT to another with `xsock send`/`recv` (checked by
//! sha256sum, interrupted and resumed) and bytes with `xsock cat`; a
//! relay serves Prometheus metrics and drains on SIGTERM; traffic outlives
//! every bootstrap server, and new connections resume when one returns.

use std::time::{Duration, Instant};

use xsock_testbed::{
    Host,
    overlay::{Overlay, WAN_PORT},
    require_root,
    sites::{Policy, SiteSpec},
    strs,
};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

fn seven_lans() -> Vec<SiteSpec> {
    let s = |name, policy, relays| SiteSpec { name, policy, relays, hosts: 2 };
    vec![
        s("hub", Policy::Open, 2),
        s("open", Policy::Open, 1),
        s("fw", Policy::BlockInbound, 1),
        s("sp1", Policy::HubOnly, 1),
        s("sp2", Policy::HubOnly, 1),
        s("nat1", Policy::Nat, 1),
        s("nat2", Policy::Nat, 1),
    ]
}

#[test]
fn every_pair_of_endpoints_across_firewalls_and_nat_connects() {
    require_root!();
    let o = Overlay::start(XSOCK, "pairs", &seven_lans());
    let relays = o.relay_names();
    let refs: Vec<&str> = relays.iter().map(String::as_str).collect();
    let took = o.converge(&refs, Duration::from_secs(20));
    eprintln!("routes converged in {took:?}");
    // Before any endpoint traffic, one LAN's exchange: no relay is used.
    let eps = o.endpoints();
    let hub_pair: Vec<(String, Host)> = eps.iter().filter(|(n, _)| n.starts_with("hub")).cloned().collect();
    let reports = o.mesh(&hub_pair, &hub_pair, 256 * 1024);
    for r in &reports {
        assert_eq!((r["ok"].as_u64(), r["direct"].as_u64()), (Some(1), Some(1)), "{r}");
    }
    for relay in &refs {
        let c = &o.status(relay)["counters"];
        assert_eq!(c["vcs_opened"], 0, "{relay} saw a VC for traffic inside a LAN: {c}");
        assert_eq!(c["bytes_forwarded"], 0, "{relay} forwarded bytes inside a LAN: {c}");
    }
    // Every ordered pair of the 14 endpoints, 64 KiB each way, checked.
    let reports = o.mesh(&eps, &eps, 64 * 1024);
    let mut failed = Vec::new();
    let (mut ok, mut relayed, mut direct) = (0, 0, 0);
    for r in &reports {
        ok += r["ok"].as_u64().unwrap();
        relayed += r["relayed"].as_u64().unwrap();
        direct += r["direct"].as_u64().unwrap();
        failed.extend(r["failed"].as_array().unwrap().iter().cloned());
    }
    assert!(failed.is_empty(), "{} exchanges failed: {failed:?}\nrelay logs:{}", failed.len(), o.relay_logs());
    assert_eq!(ok, 14 * 13);
    assert_eq!(direct, 7 * 2, "only the two hosts of each LAN talk directly");
    assert_eq!(relayed, 14 * 13 - 14);
    let forwarded: u64 = refs.iter().map(|r| o.status(r)["counters"]["bytes_forwarded"].as_u64().unwrap_or(0)).sum();
    assert!(forwarded >= relayed * 2 * 64 * 1024, "relays forwarded {forwarded} bytes for {relayed} exchanges");
    // Every endpoint attached once; no virtual connection took a LAN
    // stream (and a handshake) of its own.
    let counter = |key: &str| -> u64 { refs.iter().map(|r| o.status(r)["counters"][key].as_u64().unwrap_or(0)).sum() };
    assert_eq!(counter("lan_streams"), 0, "VCs that opened a stream each instead of riding a session");
    assert!(counter("sessions_attached") >= 14, "{} sessions for 14 endpoints", counter("sessions_attached"));
}

/// `xsock ping` joined to the overlay as `name`, then `rest`.
fn ping_as(o: &Overlay, name: &str, rest: &[&str]) -> Vec<String> {
    let mut a = vec!["ping".to_owned()];
    a.extend(o.join_flags(name));
    a.extend(rest.iter().map(|s| s.to_string()));
    a
}

fn three_lans() -> Vec<SiteSpec> {
    vec![
        SiteSpec { name: "hub", policy: Policy::Open, relays: 2, hosts: 1 },
        SiteSpec { name: "sp1", policy: Policy::HubOnly, relays: 1, hosts: 2 },
        SiteSpec { name: "sp2", policy: Policy::HubOnly, relays: 1, hosts: 1 },
    ]
}

/// The relay `from` hands traffic for relay `to` to, by its status.
fn next_hop(o: &Overlay, from: &str, to: &str) -> Option<String> {
    let st = o.status(from);
    st["routes"].as_array()?.iter().find(|r| r["relay"] == to).and_then(|r| r["next_hop"].as_str().map(String::from))
}

/// [`three_lans`] converged, and `xsock ping --listen` as sp2h0 on port
/// 7600 of sp2's host; the overlay and its relays' names.
fn three_lans_with_an_echo_server(tag: &str) -> (Overlay, Vec<String>) {
    let o = Overlay::start(XSOCK, tag, &three_lans());
    let relays = o.relay_names();
    let refs: Vec<&str> = relays.iter().map(String::as_str).collect();
    o.converge(&refs, Duration::from_secs(20));
    let sp2 = &o.sites.sites[2];
    let echo_at = format!("{}:7600", sp2.host_ip(0));
    let server = &sp2.hosts[0];
    o.bed
        .spawn_ready(server, XSOCK, &strs(&ping_as(&o, "sp2h0", &["--listen", &echo_at])), || server.listening(7600))
        .unwrap();
    (o, relays)
}

#[test]
fn a_killed_relay_is_routed_around_and_its_connections_fail_clearly() {
    require_root!();
    let (o, _) = three_lans_with_an_echo_server("kill");
    let sp1 = &o.sites.sites[1];
    std::thread::sleep(Duration::from_millis(300)); // its port reaches the relays' directory
    // A long ping through sp1-x0 -> hub-x? -> sp2-x0.
    let long = ["--connect", "sp2h0:7600", "--count", "100000000", "--warmup", "0", "--poll", "sleep"];
    let client = o.bed.spawn(&sp1.hosts[0], XSOCK, &strs(&ping_as(&o, "sp1h0", &long))).unwrap();
    let t = Instant::now();
    while o.status("sp1-x0")["counters"]["vcs_opened"].as_u64().unwrap_or(0) == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the ping never opened: {}", o.bed.log_tail(client, 5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let via = next_hop(&o, "sp1-x0", "sp2-x0").expect("a route to sp2-x0");
    let other = if via == "hub-x0" { "hub-x1" } else { "hub-x0" };
    let pid = o.relays.iter().find(|(n, _, _)| *n == via).unwrap().2;
    std::thread::sleep(Duration::from_millis(200));
    o.bed.kill9(pid).unwrap();
    let killed = Instant::now();
    // The connection through it fails with a clear error, no hang.
    let status = loop {
        if let Some(st) = o.bed.try_wait(client).unwrap() {
            break st;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "the ping through the dead relay hangs");
        std::thread::sleep(Duration::from_millis(10));
    };
    let failed_after = killed.elapsed();
    let log = o.bed.log_tail(client, 3);
    assert!(!status.success());
    assert!(log.contains("lost the path"), "unclear error: {log}");
    // Routes recompute around it.
    let recomputed = loop {
        if next_hop(&o, "sp1-x0", "sp2-x0").as_deref() == Some(other) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(5), "routes not recomputed: {}", o.dump(&["sp1-x0"]));
        std::thread::sleep(Duration::from_millis(5));
    };
    // New connections succeed through the remaining hub relay.
    let t = Instant::now();
    let new = ["--connect", "sp2h0:7600", "--count", "100", "--warmup", "10", "--json"];
    let out = sp1.hosts[1].command(XSOCK, &strs(&ping_as(&o, "sp1h1", &new))).output().unwrap();
    assert!(out.status.success(), "new connection failed: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "killed {via}: its ping failed after {failed_after:?}, sp1-x0 routed via {other} after {recomputed:?}, \
         a new ping took {:?} (process start included)",
        t.elapsed()
    );
    // A port nobody listens on is refused by the relays, with the reason.
    let unlistened = ["--connect", "sp2h0:7999", "--count", "10"];
    let out = sp1.hosts[1].command(XSOCK, &strs(&ping_as(&o, "sp1h1b", &unlistened))).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not listen on port 7999"), "{err}");
}

#[test]
fn a_listening_endpoint_attaches_again_when_its_relay_restarts() {
    require_root!();
    let (o, refs) = three_lans_with_an_echo_server("again");
    let (sp1, sp2) = (&o.sites.sites[1], &o.sites.sites[2]);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let attached = |o: &Overlay| {
        o.status("sp2-x0")["sessions"].as_array().is_some_and(|a| a.iter().any(|s| s["endpoint"] == "sp2h0"))
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < Duration::from_secs(15), "{what}: {}", o.dump(&["sp2-x0"]));
            std::thread::sleep(Duration::from_millis(50));
        }
        t.elapsed()
    };
    wait("the server never attached", &|| attached(&o));
    let ping = |name: &str| {
        let args = ping_as(&o, name, &["--connect", "sp2h0:7600", "--count", "20", "--json"]);
        sp1.hosts[0].command(XSOCK, &strs(&args)).output().unwrap()
    };
    let out = ping("sp1h0a");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The server's relay dies and comes back: the server, which only
    // listens, attaches again by itself, and new connections reach it
    // through its new session (no stream per connection).
    let i = o.relays.iter().position(|(n, _, _)| n == "sp2-x0").unwrap();
    let (name, host, pid) = o.relays[i].clone();
    o.bed.kill9(pid).unwrap();
    let _ = std::fs::remove_file(o.status_path(&name));
    let wan = format!("{}:{}", sp2.relay_ip(0), xsock_testbed::overlay::WAN_PORT);
    o.start_relay(&name, &host, Some(&wan));
    o.converge(&refs, Duration::from_secs(20));
    let took = wait("the server did not attach again", &|| attached(&o));
    let out = ping("sp1h0b");
    assert!(out.status.success(), "after the restart: {}", String::from_utf8_lossy(&out.stderr));
    let c = &o.status("sp2-x0")["counters"];
    assert_eq!(c["lan_streams"], 0, "the restarted relay delivered by a stream: {c}");
    eprintln!("the server attached again {took:?} after its relay was back");
}

#[test]
fn a_node_with_a_wrong_key_is_refused() {
    require_root!();
    let o = Overlay::start(XSOCK, "key", &three_lans()[..2]);
    let wrong = o.dir.join("wrong.key");
    std::fs::write(&wrong, "not-the-cluster-key-0123456789").unwrap();
    let sp1 = &o.sites.sites[1];
    // A relay with the wrong key: refused by the bootstrap server, exits with the reason.
    let status = o.dir.join("bad.json");
    let out = sp1.hosts[0]
        .command(
            XSOCK,
            &[
                "relay",
                "--boot",
                &o.boot,
                "--key-file",
                wrong.to_str().unwrap(),
                "--name",
                "bad",
                "--lan-iface",
                "eth0",
                "--status-file",
                status.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another cluster key"), "{err}");
    assert!(!sp1.hosts[0].has_xdp("eth0").unwrap(), "the refused relay left its XDP program");
    // An endpoint with the wrong key: the same.
    let out = sp1.hosts[1]
        .command(
            XSOCK,
            &[
                "ping",
                "--iface",
                "eth0",
                "--connect",
                "hubh0:7600",
                "--boot",
                &o.boot,
                "--name",
                "sp1h1",
                "--key-file",
                wrong.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another cluster key"), "{err}");
    // The server logged both refusals, naming the address.
    let log = o.bed.log_tail(o.boot_pid, 50);
    assert_eq!(log.matches("another cluster key").count(), 2, "{log}");
    assert!(log.contains(&format!("refused {}", sp1.host_ip(0))), "{log}");
    // Someone dialling a relay's WAN port with the wrong key: refused there.
    let wan = format!("{}:{WAN_PORT}", o.sites.sites[0].relay_ip(0));
    let key = xsock::overlay::load_key(&wrong).unwrap();
    let r = sp1.hosts[0]
        .run(move || {
            let s = std::net::TcpStream::connect(&wan).unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            let me = xsock::overlay::Identity::plain(xsock::overlay::process_key().clone());
            xsock::overlay::SecureTcp::connect(s, &key, &me, xsock::overlay::Role::Relay, "intruder", deadline)
                .map(|_| ())
        })
        .unwrap();
    assert!(r.unwrap_err().to_string().contains("another cluster key"));
    // And one speaking the old plaintext handshake is told to upgrade.
    let wan = format!("{}:{WAN_PORT}", o.sites.sites[0].relay_ip(0));
    let key = xsock::overlay::load_key(&o.key).unwrap();
    let r = sp1.hosts[0]
        .run(move || {
            let mut s = std::net::TcpStream::connect(&wan).unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            xsock::overlay::authenticate(&mut s, &key, xsock::overlay::Role::Relay, "old", deadline)
        })
        .unwrap();
    assert!(r.is_err(), "a plaintext handshake was taken on a WAN port");
    let relay = o.relays.iter().find(|(n, _, _)| n == "hub-x0").unwrap();
    let t = Instant::now();
    while !o.bed.log_tail(relay.2, 20).contains("refused a relay link from") {
        assert!(t.elapsed() < Duration::from_secs(3), "{}", o.bed.log_tail(relay.2, 20));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A packet capture (AF_PACKET) on the interface `argv[1]`, until SIGTERM:
/// prints {"packets", "bytes", "hits"}, hits = packets holding `argv[2]`.
const CAPTURE: &str = r#"
import json, signal, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], 0))
s.settimeout(0.1)
want = sys.argv[2].encode()
seen = {"packets": 0, "bytes": 0, "hits": 0}
def stop(*_):
    print(json.dumps(seen), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    try:
        p = s.recv(262144)
    except socket.timeout:
        continue
    seen["packets"] += 1
    seen["bytes"] += len(p)
    if want in p:
        seen["hits"] += 1
"#;

/// Pseudo-random bytes (xorshift), for files whose damage would show.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn sha256sum(host: &Host, path: &std::path::Path) -> String {
    let o = host.exec("sha256sum", &[path.to_str().unwrap()]).unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_owned()
}

#[test]
fn a_file_and_a_byte_stream_cross_between_two_lans_behind_nat() {
    require_root!();
    let specs = [
        SiteSpec { name: "hub", policy: Policy::Open, relays: 1, hosts: 0 },
        SiteSpec { name: "nat1", policy: Policy::Nat, relays: 1, hosts: 1 },
        SiteSpec { name: "nat2", policy: Policy::Nat, relays: 1, hosts: 1 },
    ];
    let o = Overlay::start(XSOCK, "files", &specs);
    let relays = o.relay_names();
    let refs: Vec<&str> = relays.iter().map(String::as_str).collect();
    o.converge(&refs, Duration::from_secs(20));
    let (nat1, nat2) = (&o.sites.sites[1], &o.sites.sites[2]);
    assert_eq!(nat1.host_ip(0), nat2.host_ip(0), "both LANs use one private subnet");
    let (tx, rx) = (&nat1.hosts[0], &nat2.hosts[0]);
    let rx_dir = o.dir.join("rx");
    std::fs::create_dir_all(&rx_dir).unwrap();
    let listen = format!("{}:7100", nat2.host_ip(0));
    let mut args = vec!["recv".to_owned()];
    args.extend(o.join_flags("nat2h0"));
    args.extend(["--listen", &listen, rx_dir.to_str().unwrap()].map(String::from));
    let recv = o.bed.spawn_ready(rx, XSOCK, &strs(&args), || rx.listening(7100)).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // its port reaches the relays' directory
    let send = |file: &std::path::Path, name: &str, extra: &[&str]| {
        let mut a = vec!["send".to_owned()];
        a.extend(o.join_flags(name));
        a.extend(["--connect", "nat2h0:7100", file.to_str().unwrap(), "--chunk", "1MiB"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        tx.command(XSOCK, &strs(&a))
    };
    let json = |out: std::process::Output| -> serde_json::Value {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "send failed: {err}\nreceiver: {}", o.bed.log_tail(recv, 10));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
    };

    // A whole file, over 2 streams through nat1-x0 -> hub-x0 -> nat2-x0.
    let small = o.dir.join("small.bin");
    std::fs::write(&small, noise(8 << 20, 7)).unwrap();
    let r = json(send(&small, "nat1h0", &["--streams", "2", "--json"]).output().unwrap());
    assert_eq!(sha256sum(rx, &rx_dir.join("small.bin")), sha256sum(tx, &small));
    let rate = r["gbit_per_s"].as_f64().unwrap();
    let forwarded: u64 = refs.iter().map(|r| o.status(r)["counters"]["bytes_forwarded"].as_u64().unwrap_or(0)).sum();
    assert!(forwarded >= 2 * (8 << 20), "the file did not go through the relays ({forwarded} bytes forwarded)");

    // Nothing of it crosses the WAN in plaintext: a file of one repeated
    // line, sent while a capture on nat1's router reads every packet on its
    // WAN side, and no packet holds the line.
    let marker = b"xsock-plaintext-marker-0123456789\n";
    let lined = o.dir.join("lined.bin");
    std::fs::write(&lined, marker.repeat((4 << 20) / marker.len())).unwrap();
    let cap = o.bed.spawn(&nat1.router, "python3", &["-c", CAPTURE, "wan0", "xsock-plaintext-marker"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    json(send(&lined, "nat1h0", &["--json"]).output().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let _ = o.bed.finish(cap);
    let seen: serde_json::Value = serde_json::from_str(&o.bed.log_tail(cap, 1)).expect("the capture's report");
    assert!(seen["bytes"].as_u64().unwrap() >= 2 << 20, "the capture saw too little to judge: {seen}");
    assert_eq!(seen["hits"], 0, "plaintext on the WAN: {seen}");
    eprintln!("WAN capture during a 4 MiB send: {seen}");

    // Interrupted: a file that takes ~4 s at the rate just seen, the sender
    // killed once the receiver has saved its first resume state, then the
    // same command again.
    // At least 256 MiB: the 8 MiB send's rate is mostly its start-up, and a
    // CI run once finished the whole file before the receiver's first
    // save (after 1 s).
    let len = ((rate * 1e9 / 8.0 * 4.0) as usize).clamp(256 << 20, 768 << 20);
    let big = o.dir.join("big.bin");
    std::fs::write(&big, noise(len, 11)).unwrap();
    let err_log = o.dir.join("interrupted-send.err");
    let mut child = send(&big, "nat1h0", &["--streams", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_log).unwrap())
        .spawn()
        .unwrap();
    let state = rx_dir.join(".xsock-big.bin.state");
    let t = Instant::now();
    while !state.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "no resume state: {}", o.bed.log_tail(recv, 10));
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "the transfer of {len} bytes ended ({st}) before it could be interrupted: {}",
                std::fs::read_to_string(&err_log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = json(send(&big, "nat1h0b", &["--streams", "2", "--json"]).output().unwrap());
    let (resumed, chunks) = (r["resumed_chunks"].as_u64().unwrap(), r["chunks"].as_u64().unwrap());
    assert!(resumed > 0 && resumed < chunks, "resumed {resumed} of {chunks}");
    assert!(r["sent_bytes"].as_u64().unwrap() < len as u64, "everything was sent again");
    assert_eq!(sha256sum(rx, &rx_dir.join("big.bin")), sha256sum(tx, &big), "sha256sum after the resume");
    eprintln!("8 MiB at {rate:.2} Gbit/s; {len} bytes interrupted and resumed ({resumed} of {chunks} chunks kept)");
    // The receiver holds nat2h0's interface; the cat client needs it.
    let _ = o.bed.finish(recv);

    // `xsock cat` the other way: a listener in nat1 sends a file to a
    // client in nat2, which prints it.
    let text = o.dir.join("cat.bin");
    std::fs::write(&text, noise(1 << 20, 13)).unwrap();
    let at = format!("{}:7002", nat1.host_ip(0));
    let mut args = vec!["cat".to_owned()];
    args.extend(o.join_flags("nat1h0c"));
    args.extend(["--listen", &at].map(String::from));
    let server = o.bed.adopt(
        tx.command(XSOCK, &strs(&args))
            .stdin(std::fs::File::open(&text).unwrap())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !tx.listening(7002).unwrap() {
        assert!(t.elapsed() < Duration::from_secs(10), "cat --listen never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec!["cat".to_owned()];
    args.extend(o.join_flags("nat2h0c"));
    args.extend(["--connect", "nat1h0c:7002"].map(String::from));
    let out = rx.command(XSOCK, &strs(&args)).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(out.status.success(), "cat failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == std::fs::read(&text).unwrap(), "cat delivered {} bytes, not the file", out.stdout.len());
    assert!(o.bed.wait_exit(server, Duration::from_secs(10)).unwrap().success(), "cat --listen failed");
}

#[test]
fn a_relay_serves_metrics_and_drains_its_connections_on_sigterm() {
    require_root!();
    let specs = [
        SiteSpec { name: "hub", policy: Policy::Open, relays: 1, hosts: 0 },
        SiteSpec { name: "a", policy: Policy::HubOnly, relays: 1, hosts: 2 },
        SiteSpec { name: "b", policy: Policy::HubOnly, relays: 1, hosts: 1 },
    ];
    // Every relay in its own namespace: one address for all of them.
    let o =
        Overlay::start_with(XSOCK, "drain", &specs, &["--metrics-listen", "0.0.0.0:9401", "--drain-timeout", "20s"]);
    let relays = o.relay_names();
    let refs: Vec<&str> = relays.iter().map(String::as_str).collect();
    o.converge(&refs, Duration::from_secs(20));
    let (a, b) = (&o.sites.sites[1], &o.sites.sites[2]);
    // A cat session a -> hub-x0 -> b, held open from here.
    let at = format!("{}:7002", b.host_ip(0));
    let mut args = vec!["cat".to_owned()];
    args.extend(o.join_flags("bh0"));
    args.extend(["--listen", &at].map(String::from));
    let server = o.bed.spawn_ready(&b.hosts[0], XSOCK, &strs(&args), || b.hosts[0].listening(7002)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec!["cat".to_owned()];
    args.extend(o.join_flags("ah0"));
    args.extend(["--connect", "bh0:7002"].map(String::from));
    let mut client = a.hosts[0]
        .command(XSOCK, &strs(&args))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = client.stdin.take().unwrap();
    use std::io::Write;
    pipe.write_all(b"before the drain\n").unwrap();
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("the first line never arrived", &|| o.bed.log_tail(server, 5).contains("before the drain"));

    // Metrics, scraped as Prometheus would.
    let scrape = |path: &str| {
        let url = format!("http://{}:9401{path}", a.relay_ip(0));
        let out = a.relays[0].exec("curl", &["-s", "-w", "\n%{http_code}", &url]).unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_for("a-x0 never counted the VC", &|| scrape("/metrics").contains("xsock_relay_vcs{relay=\"a-x0\"} 1"));
    let text = scrape("/metrics");
    assert!(text.ends_with("\n200"), "{text}");
    for want in [
        "xsock_relay_up{relay=\"a-x0\"} 1",
        "xsock_relay_links{relay=\"a-x0\"} 1",
        "# TYPE xsock_relay_bytes_forwarded_total counter",
        "xsock_relay_link_tx_bytes_total{relay=\"a-x0\",peer=\"hub-x0\"}",
        "xsock_relay_auth_refused_total{relay=\"a-x0\",side=\"wan\"} 0",
        "xsock_relay_lan_drops_total{relay=\"a-x0\",queue=\"0\",reason=\"rx_ring_full\"}",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert!(scrape("/").ends_with("\n404"));

    // SIGTERM to the hub relay, the only way from a to b: it drains.
    let hub = o.relays.iter().find(|(n, _, _)| n == "hub-x0").unwrap().2;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(hub as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("hub-x0 never said it drains", &|| o.status("hub-x0")["draining"] == true);
    // New connections through it fail, with the reason.
    let mut args = vec!["ping".to_owned()];
    args.extend(o.join_flags("ah1"));
    args.extend(["--connect", "bh0:7002", "--count", "10"].map(String::from));
    let out = a.hosts[1].command(XSOCK, &strs(&args)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // The hub advertises no links while it drains, so the source relay
    // already knows there is no way (an open that raced the advertisement
    // is refused by the hub itself).
    let clear = err.contains("unreachable from here") || err.contains("shutting down (draining)");
    assert!(!out.status.success() && clear, "{err}");
    // The open one still carries bytes.
    pipe.write_all(b"during the drain\n").unwrap();
    wait_for("the open VC stopped during the drain", &|| o.bed.log_tail(server, 5).contains("during the drain"));
    assert!(o.bed.try_wait(hub).unwrap().is_none(), "hub-x0 exited with a VC open");
    // It ends normally; then the hub relay exits by itself, long before
    // its 20 s drain timeout, and leaves no XDP program.
    drop(pipe);
    let t = Instant::now();
    let st = o.bed.wait_exit(hub, Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{st}: {}", o.bed.log_tail(hub, 5));
    assert!(o.bed.log_tail(hub, 5).contains("drained"), "{}", o.bed.log_tail(hub, 5));
    assert!(!o.sites.sites[0].relays[0].has_xdp("eth0").unwrap(), "the drained relay left its XDP program");
    assert!(client.wait().unwrap().success(), "cat through the drained relay failed");
    eprintln!("hub-x0 exited {:?} after its last VC ended", t.elapsed());
}

#[test]
fn traffic_outlives_every_bootstrap_server_and_new_connections_resume_when_one_returns() {
    require_root!();
    let specs = [
        SiteSpec { name: "hub", policy: Policy::Open, relays: 1, hosts: 0 },
        SiteSpec { name: "a", policy: Policy::HubOnly, relays: 1, hosts: 2 },
        SiteSpec { name: "b", policy: Policy::HubOnly, relays: 1, hosts: 2 },
    ];
    let mut o = Overlay::start_full(XSOCK, "boots", &specs, &[], 2, |_| Ok(()));
    assert!(o.boot.contains(','), "two servers: {}", o.boot);
    let relays = o.relay_names();
    let refs: Vec<&str> = relays.iter().map(String::as_str).collect();
    o.converge(&refs, Duration::from_secs(20));
    let (a, b) = (o.sites.sites[1].clone(), o.sites.sites[2].clone());
    let echo_at = format!("{}:7600", b.host_ip(0));
    let server = &b.hosts[0];
    o.bed
        .spawn_ready(server, XSOCK, &strs(&ping_as(&o, "bh0", &["--listen", &echo_at])), || server.listening(7600))
        .unwrap();
    // A second echo server (an echo serves one client at a time), for the
    // connections made after the servers die.
    let echo2 = format!("{}:7600", b.host_ip(1));
    let server2 = &b.hosts[1];
    o.bed
        .spawn_ready(server2, XSOCK, &strs(&ping_as(&o, "bh1", &["--listen", &echo2])), || server2.listening(7600))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let long = ["--connect", "bh0:7600", "--count", "100000000", "--warmup", "0", "--poll", "sleep"];
    let client = o.bed.spawn(&a.hosts[0], XSOCK, &strs(&ping_as(&o, "ah0", &long))).unwrap();
    let forwarded = |o: &Overlay| o.status("hub-x0")["counters"]["bytes_forwarded"].as_u64().unwrap_or(0);
    let t = Instant::now();
    while forwarded(&o) == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the ping never ran: {}", o.bed.log_tail(client, 5));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every bootstrap server dies.
    for (_, pid) in o.boots.clone() {
        o.bed.kill9(pid).unwrap();
    }
    let before = forwarded(&o);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(o.bed.try_wait(client).unwrap().is_none(), "the ping died with the servers: {}", o.bed.log_tail(client, 5));
    assert!(forwarded(&o) > before, "the running VC stopped carrying bytes");
    for r in &refs {
        assert!(o.status(r)["boot_servers"].as_array().unwrap().iter().all(|s| s["up"] == false), "{r}");
    }
    // Nobody new can join meanwhile: a clear error, at once.
    let probe = ["--connect", "bh1:7600", "--count", "20", "--warmup", "0"];
    let t = Instant::now();
    let out = a.hosts[1].command(XSOCK, &strs(&ping_as(&o, "ah1", &probe))).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no bootstrap server took us"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "joining with no server took {:?}", t.elapsed());
    // One server comes back (empty: it knows nobody): relays and endpoints
    // register with it again, and new connections work.
    o.restart_boot(1);
    let t = Instant::now();
    while !refs.iter().all(|r| o.status(r)["boot_servers"][1]["up"] == true) {
        assert!(t.elapsed() < Duration::from_secs(15), "relays did not register again: {}", o.relay_logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let relays_back = t.elapsed();
    let out = loop {
        let out = a.hosts[1].command(XSOCK, &strs(&ping_as(&o, "ah1", &probe))).output().unwrap();
        if out.status.success() || t.elapsed() > Duration::from_secs(15) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.status.success(),
        "no new connection after a server returned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "relays registered again {relays_back:?} after the restart; a new connection worked after {:?}",
        t.elapsed()
    );
    assert!(o.bed.try_wait(client).unwrap().is_none(), "the long ping ended");

    // A relay restarted while every server is down starts from its
    // directory cache: it links to the hub again.
    let _ = o.bed.finish(client);
    for (_, pid) in o.boots.clone() {
        let _ = o.bed.kill9(pid);
    }
    let (name, host, pid) = o.relays.iter().find(|(n, _, _)| n == "b-x0").cloned().unwrap();
    o.bed.kill9(pid).unwrap();
    std::fs::remove_file(o.status_path(&name)).unwrap();
    let pid = o.start_relay(&name, &host, None);
    assert!(o.bed.log_tail(pid, 20).contains("starting from the directory cache"), "{}", o.bed.log_tail(pid, 20));
    let t = Instant::now();
    while o.status(&name)["links"].as_array().is_none_or(|l| l.is_empty()) {
        assert!(t.elapsed() < Duration::from_secs(10), "no link from the cache: {}", o.bed.log_tail(pid, 20));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("b-x0 restarted with no bootstrap server: linked to the hub after {:?}", t.elapsed());
}
