//! The relay overlay in namespaces: seven LANs joined over a routed WAN,
//! with a firewall that blocks inbound connections, a group of LANs that
//! reach only the hub, and two LANs behind NAT on the same private subnet.
//! Every ordered pair of endpoints connects and exchanges data intact;
//! traffic inside a LAN never touches a relay; a killed relay's routes are
//! recomputed and new connections go around it while connections through it
//! fail with a clear error; a wrong key is refused.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use xsock_testbed::{
    Host, Testbed, require_root,
    sites::{BOOT_IP, Policy, SiteSpec, Sites},
};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");
const BOOT_PORT: u16 = 7400;
const WAN_PORT: u16 = 7402;
const MESH_PORT: u16 = 7500;

struct Overlay {
    bed: Testbed,
    sites: Sites,
    dir: PathBuf,
    key: PathBuf,
    boot: String,
    /// (relay name, host, pid)
    relays: Vec<(String, Host, u32)>,
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xsock-overlay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Overlay {
    fn start(name: &str, specs: &[SiteSpec]) -> Overlay {
        let bed = Testbed::new().unwrap();
        let sites = Sites::build(&bed, specs).unwrap();
        let dir = scratch(name);
        let key = dir.join("cluster.key");
        std::fs::write(&key, "test-cluster-key-0123456789abcdef\n").unwrap();
        let boot = format!("{BOOT_IP}:{BOOT_PORT}");
        let b = sites.boot.clone();
        bed.spawn_ready(&b, XSOCK, &["boot", "--listen", &boot, "--key-file", key.to_str().unwrap()], || {
            b.listening(BOOT_PORT)
        })
        .unwrap();
        let mut o = Overlay { bed, sites, dir, key, boot, relays: Vec::new() };
        let all: Vec<(String, Host, Option<String>)> = o
            .sites
            .sites
            .iter()
            .flat_map(|s| {
                s.relays.iter().enumerate().map(move |(r, h)| {
                    let listens = matches!(s.spec.policy, Policy::Open | Policy::HubOnly);
                    (
                        format!("{}-x{r}", s.spec.name),
                        h.clone(),
                        listens.then(|| format!("{}:{WAN_PORT}", s.relay_ip(r))),
                    )
                })
            })
            .collect();
        for (name, host, wan) in all {
            let pid = o.start_relay(&name, &host, wan.as_deref());
            o.relays.push((name, host, pid));
        }
        o
    }

    fn status_path(&self, relay: &str) -> PathBuf {
        self.dir.join(format!("{relay}.json"))
    }

    fn start_relay(&self, name: &str, host: &Host, wan: Option<&str>) -> u32 {
        let status = self.status_path(name);
        let mut args = vec![
            "relay",
            "--boot",
            &self.boot,
            "--key-file",
            self.key.to_str().unwrap(),
            "--name",
            name,
            "--lan-iface",
            "eth0",
            "--status-file",
            status.to_str().unwrap(),
        ];
        if let Some(w) = wan {
            args.extend(["--wan-listen", w]);
        }
        self.bed.spawn_ready(host, XSOCK, &args, || Ok(status.exists())).unwrap()
    }

    fn status(&self, relay: &str) -> Value {
        let text = std::fs::read_to_string(self.status_path(relay)).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Waits until every live relay has a route to every other live relay;
    /// returns how long that took.
    fn converge(&self, live: &[&str], within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let done = live.iter().all(|r| {
                let st = self.status(r);
                let routes: Vec<&str> = st["routes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x["relay"].as_str()).collect())
                    .unwrap_or_default();
                live.iter().filter(|o| *o != r).all(|o| routes.contains(o))
            });
            if done {
                return t.elapsed();
            }
            assert!(t.elapsed() < within, "routes did not converge in {within:?}: {}", self.dump(live));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dump(&self, relays: &[&str]) -> String {
        relays.iter().map(|r| format!("\n{r}: {}", self.status(r))).collect()
    }

    fn relay_logs(&self) -> String {
        self.relays.iter().map(|(n, _, pid)| format!("\n--- {n}:\n{}", self.bed.log_tail(*pid, 12))).collect()
    }

    fn relay_names(&self) -> Vec<String> {
        self.relays.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Endpoint hosts with their names.
    fn endpoints(&self) -> Vec<(String, Host)> {
        self.sites
            .sites
            .iter()
            .flat_map(|s| s.hosts.iter().enumerate().map(move |(k, h)| (format!("{}h{k}", s.spec.name), h.clone())))
            .collect()
    }

    /// Runs `xsock mesh` on every endpoint host at once against `peers`;
    /// returns each one's JSON report.
    fn mesh(&self, hosts: &[(String, Host)], peers: &[(String, Host)], bytes: usize) -> Vec<Value> {
        let list: Vec<String> = peers.iter().map(|(n, _)| format!("{n}-0:{MESH_PORT}")).collect();
        let list = list.join(",");
        let start_at = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 3000)
            .to_string();
        let (port, bytes) = (MESH_PORT.to_string(), bytes.to_string());
        let key = self.key.to_str().unwrap();
        std::thread::scope(|sc| {
            let runs: Vec<_> = hosts
                .iter()
                .map(|(n, h)| {
                    let args = [
                        "mesh",
                        "--iface",
                        "eth0",
                        "--boot",
                        &self.boot,
                        "--key-file",
                        key,
                        "--name",
                        n,
                        "--port",
                        &port,
                        "--peers",
                        &list,
                        "--bytes",
                        &bytes,
                        "--start-at",
                        &start_at,
                        "--linger",
                        "3s",
                    ];
                    let mut cmd = h.command(XSOCK, &args);
                    sc.spawn(move || cmd.output().unwrap())
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    let out = r.join().unwrap();
                    let text = String::from_utf8_lossy(&out.stdout).to_string();
                    serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or_else(|_| {
                        panic!("mesh printed no report ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
                    })
                })
                .collect()
        })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
    let o = Overlay::start("pairs", &seven_lans());
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
}
