//! The overlay in a cluster with node certificates (`xsock keys`): a CA,
//! a credentials file per node, a revocation list on every relay and
//! bootstrap server. Certified nodes connect across LANs; a revoked node,
//! one without a certificate, one with an expired certificate or one from
//! another CA is refused everywhere, hears why and does not retry; the
//! refusing node logs it with the address.

use std::time::{Duration, Instant};

use xsock::overlay::{Identity, Role, SecureTcp, load_key};
use xsock_overlay::cert::{CaKey, CertBody};
use xsock_overlay::secure::StaticKey;
use xsock_testbed::{
    overlay::{Overlay, WAN_PORT, issue},
    require_root,
    sites::{Policy, SiteSpec},
    strs,
};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

fn two_lans() -> Vec<SiteSpec> {
    vec![
        SiteSpec { name: "hub", policy: Policy::Open, relays: 1, hosts: 1 },
        SiteSpec { name: "sp1", policy: Policy::HubOnly, relays: 1, hosts: 2 },
    ]
}

/// Runs `xsock ARGS` on `host` to its end: (success, stderr), and how
/// long. One still running after 20 s (a node that was let in, or keeps
/// retrying) is killed and fails.
fn run(host: &xsock_testbed::Host, args: &[&str]) -> (bool, String, Duration) {
    let t = Instant::now();
    let mut child = host
        .command(XSOCK, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ok = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.success();
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return (false, format!("xsock {args:?} still ran after 20 s"), t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (ok, err, t.elapsed())
}

#[test]
fn certified_nodes_connect_and_revoked_expired_or_foreign_ones_are_refused_everywhere() {
    require_root!();
    let mut o = Overlay::start_certified(XSOCK, "certs", &two_lans(), &[("rogue", "relay"), ("rogue-ep", "endpoint")]);
    o.converge(&["hub-x0", "sp1-x0"], Duration::from_secs(20));
    let (hub, sp1) = (&o.sites.sites[0].clone(), &o.sites.sites[1].clone());
    let ca = o.ca.clone().unwrap();

    // Certified endpoints ping each other across the LANs.
    let echo_at = format!("{}:7600", hub.host_ip(0));
    let mut server = vec!["ping".to_owned()];
    server.extend(o.join_flags("hubh0"));
    server.extend(["--listen".to_owned(), echo_at]);
    o.bed.spawn_ready(&hub.hosts[0], XSOCK, &strs(&server), || hub.hosts[0].listening(7600)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut client = vec!["ping".to_owned()];
    client.extend(o.join_flags("sp1h0"));
    client.extend(["--connect", "hubh0:7600", "--count", "200"].map(String::from));
    let (ok, err, _) = run(&sp1.hosts[0], &strs(&client));
    assert!(ok, "a certified ping across LANs failed: {err}\n{}", o.relay_logs());

    // A revoked relay: the bootstrap server refuses it, it exits with the
    // reason at once (no retrying), and leaves no XDP program behind.
    let rogue = o.dir.join("rogue.node");
    let key_path = o.key.to_str().unwrap().to_owned();
    let key = key_path.as_str();
    let boot_addr = o.boot.clone();
    let relay_as = |cert: &str, name: &str| {
        [
            "relay",
            "--boot",
            &boot_addr,
            "--key-file",
            key,
            "--name",
            name,
            "--lan-iface",
            "eth0",
            "--cert",
            cert,
            "--drain-timeout",
            "100ms",
        ]
        .map(String::from)
    };
    let (ok, err, took) = run(&sp1.hosts[1], &strs(&relay_as(rogue.to_str().unwrap(), "rogue")));
    assert!(!ok && err.contains("revoked") && err.contains("refused us"), "{err}");
    assert!(took < Duration::from_secs(5), "the refused relay retried for {took:?}");
    assert!(!sp1.hosts[1].has_xdp("eth0").unwrap(), "the refused relay left its XDP program");
    // A revoked endpoint: the same.
    let mut ep = vec!["ping".to_owned()];
    ep.extend(
        ["--iface", "eth0", "--boot", &boot_addr, "--key-file", key, "--name", "rogue-ep", "--connect", "hubh0:7600"]
            .map(String::from),
    );
    ep.extend(["--cert".to_owned(), o.dir.join("rogue-ep.node").display().to_string()]);
    let (ok, err, _) = run(&sp1.hosts[1], &strs(&ep));
    assert!(!ok && err.contains("revoked"), "{err}");
    // A bootstrap server restarted without its list learns it back from
    // the relays that register again, and refuses the revoked endpoint.
    o.bed.kill9(o.boot_pid).unwrap();
    let boot_pid = o.restart_boot_with(0, true);
    let t = Instant::now();
    while !o.bed.log_tail(boot_pid, 50).contains("took a new revocation list from relay") {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no relay told the restarted server: {}",
            o.bed.log_tail(boot_pid, 50)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, err, _) = run(&sp1.hosts[1], &strs(&ep));
    assert!(!ok && err.contains("revoked"), "{err}");
    // An endpoint without a certificate: told how to get one.
    let bare =
        ["ping", "--iface", "eth0", "--boot", &o.boot, "--key-file", key, "--name", "bare", "--connect", "hubh0:7600"];
    let (ok, err, _) = run(&sp1.hosts[1], &bare);
    assert!(!ok && err.contains("xsock keys issue"), "{err}");
    // A file for another node or role is refused before anything is sent.
    let sp1h1 = issue(XSOCK, &ca, &o.dir, "sp1h1", "endpoint");
    let (ok, err, _) = run(&sp1.hosts[1], &strs(&relay_as(sp1h1.to_str().unwrap(), "sp1h1")));
    assert!(!ok && err.contains("not the Relay"), "{err}");
    // The (restarted) bootstrap server logged each refusal since, with the
    // address: the revoked endpoint and the one without a certificate.
    let log = o.bed.log_tail(o.boots[0].1, 80);
    let from = format!("refused {}", sp1.host_ip(1));
    assert!(log.matches(&from).count() >= 2 && log.contains("revoked"), "{log}");

    // Dialling a relay's WAN port: a revoked key, an expired certificate,
    // another CA's certificate, and none at all are refused there, and the
    // dialler hears why.
    let wan = format!("{}:{WAN_PORT}", hub.relay_ip(0));
    let dial = |who: Identity, name: &'static str| {
        let (wan, cluster) = (wan.clone(), load_key(&o.key).unwrap());
        sp1.hosts[1]
            .run(move || -> Result<(), String> {
                let s = std::net::TcpStream::connect(&wan).map_err(|e| e.to_string())?;
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut st =
                    SecureTcp::connect(s, &cluster, &who, Role::Relay, name, deadline).map_err(|e| e.to_string())?;
                // The relay's verdict on our certificate comes first.
                xsock::overlay::recv_frame(&mut st, deadline).map(|_| ()).map_err(|e| e.to_string())
            })
            .unwrap()
    };
    let revoked = xsock::overlay::load_identity(Some(&rogue), None, Role::Relay, Some("rogue")).unwrap();
    let e = dial(revoked.clone(), "rogue").unwrap_err();
    assert!(e.contains("refused us") && e.contains("revoked"), "{e}");
    let now = xsock::overlay::unix_now();
    let certify = |ca: &CaKey, until: u64| {
        let key = StaticKey::generate().unwrap();
        let body = CertBody {
            name: "stranger".into(),
            role: Role::Relay,
            key: key.public().try_into().unwrap(),
            serial: 1,
            not_before: 0,
            not_after: until,
        };
        Identity { key, cert: Some(ca.issue(body).unwrap()), trust: None }
    };
    let ours = xsock::overlay::keys::load_ca(&ca).unwrap();
    let e = dial(certify(&ours, now - 60), "stranger").unwrap_err();
    assert!(e.contains("expired"), "{e}");
    let e = dial(certify(&CaKey::generate().unwrap(), now + 3600), "stranger").unwrap_err();
    assert!(e.contains("another CA"), "{e}");
    let e = dial(Identity::plain(StaticKey::generate().unwrap()), "stranger").unwrap_err();
    assert!(e.contains("requires one"), "{e}");
    // A good certificate gets through the handshake (and is then only
    // unknown to the relay: it registered nowhere).
    let e = dial(certify(&ours, now + 3600), "stranger");
    assert!(!e.as_ref().is_err_and(|e| e.contains("certificate")), "{e:?}");
    let log = o.bed.log_tail(o.relays[0].2, 80);
    assert!(log.contains("revoked") && log.contains("expired") && log.contains(&sp1.host_ip(1).to_string()), "{log}");

    // Revoking a running relay: `xsock keys revoke` rewrites the server's
    // list; the server takes it, ends the relay's session and tells the
    // other relays, which close their links to it and refuse it when it
    // dials again.
    // (The server again with its list file, which it watches.)
    o.bed.kill9(o.boots[0].1).unwrap();
    o.restart_boot(0);
    let late_pid = o.start_relay("sp1-x1", &sp1.hosts[1], None);
    o.converge(&["hub-x0", "sp1-x0", "sp1-x1"], Duration::from_secs(20));
    let linked = |r: &str| {
        o.status(r)["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["relay"] == "sp1-x1" || l["name"] == "sp1-x1"))
    };
    assert!(linked("hub-x0"), "{}", o.status("hub-x0"));
    let late = o.dir.join("sp1-x1.node");
    let list = o.dir.join("revoked.list");
    xsock_testbed::overlay::keys(
        XSOCK,
        &["revoke", "--ca", ca.to_str().unwrap(), "--list", list.to_str().unwrap(), late.to_str().unwrap()],
    );
    let t = Instant::now();
    while linked("hub-x0") || linked("sp1-x0") {
        assert!(t.elapsed() < Duration::from_secs(10), "links to the revoked relay stay up:\n{}", o.relay_logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    // It stays out: its dials are refused for the revoked key.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!linked("hub-x0") && !linked("sp1-x0"), "the revoked relay came back");
    let log = o.relay_logs();
    assert!(log.contains("the CA revoked its key"), "{log}");
    // The revoked relay itself stops with the reason, and takes its XDP
    // program with it.
    let t = Instant::now();
    while o.bed.try_wait(late_pid).unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "the revoked relay runs on: {}", o.bed.log_tail(late_pid, 10));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(o.bed.log_tail(late_pid, 10).contains("revoked"), "{}", o.bed.log_tail(late_pid, 10));
    assert!(!sp1.hosts[1].has_xdp("eth0").unwrap(), "the revoked relay left its XDP program");
    eprintln!("links to a revoked relay closed {took:?} after `xsock keys revoke`");
}
