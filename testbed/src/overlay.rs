//! A running relay overlay on [`crate::sites`]: `xsock boot` on the WAN,
//! `xsock relay` on every relay host, status files to watch, and `xsock
//! mesh` runs on endpoint hosts. Used by the overlay tests and the relay
//! benchmarks.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Host, Testbed,
    sites::{BOOT_IP, Policy, SiteSpec, Sites},
};

/// Port of the bootstrap server.
pub const BOOT_PORT: u16 = 7400;
fn start_boot(bed: &Testbed, host: &Host, xsock: &str, addr: &str, key: &std::path::Path, extra: &[String]) -> u32 {
    let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("IP:PORT");
    let mut args = vec!["boot", "--listen", addr, "--key-file", key.to_str().unwrap()];
    args.extend(extra.iter().map(String::as_str));
    bed.spawn_ready(host, xsock, &args, || host.listening(port)).unwrap()
}

/// Bootstrap server `k`'s virtual address leases (`xsock boot --leases`).
pub fn leases_path(dir: &std::path::Path, k: usize) -> PathBuf {
    dir.join(format!("boot{k}.leases"))
}

fn with_leases(flags: &[String], dir: &std::path::Path, k: usize) -> Vec<String> {
    let mut f = flags.to_vec();
    f.extend(["--leases".to_owned(), leases_path(dir, k).display().to_string()]);
    f
}

/// Port relays accept relay links on.
pub const WAN_PORT: u16 = 7402;
/// First port of `xsock mesh` endpoints.
pub const MESH_PORT: u16 = 7500;

/// Running overlay: the sites, the bootstrap server and the relays.
pub struct Overlay {
    /// See the type.
    pub bed: Testbed,
    /// See the type.
    pub sites: Sites,
    /// See the type.
    pub dir: PathBuf,
    /// See the type.
    pub key: PathBuf,
    /// See the type.
    pub boot: String,
    /// See the type.
    pub boot_pid: u32,
    /// Every bootstrap server: address and pid (the first is `boot_pid`);
    /// `boot` lists them all, comma-separated.
    pub boots: Vec<(String, u32)>,
    /// The CA key file, in a cluster with node certificates (every node
    /// gets its own credentials file, `NAME.node` in `dir`).
    pub ca: Option<PathBuf>,
    /// The bootstrap server's `--cert` and `--revoked` flags, and the
    /// `--cert` flags alone.
    boot_flags: (Vec<String>, Vec<String>),
    xsock: String,
    relay_flags: Vec<String>,
    /// (relay name, host, pid)
    pub relays: Vec<(String, Host, u32)>,
}

/// Runs `xsock keys ARGS`; panics with its error.
pub fn keys(xsock: &str, args: &[&str]) {
    let out = std::process::Command::new(xsock).arg("keys").args(args).output().unwrap();
    assert!(out.status.success(), "xsock keys {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `dir/NAME.node`, issued by `ca` for `role` unless it exists.
pub fn issue(xsock: &str, ca: &std::path::Path, dir: &std::path::Path, name: &str, role: &str) -> PathBuf {
    let out = dir.join(format!("{name}.node"));
    if !out.exists() {
        let (ca, o) = (ca.to_str().unwrap(), out.to_str().unwrap());
        keys(xsock, &["issue", "--ca", ca, "--name", name, "--role", role, "--out", o]);
    }
    out
}

/// A fresh scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xsock-overlay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Overlay {
    /// Builds `specs`, starts `xsock boot` and a relay per relay host
    /// (listening for relay links where the router lets them in).
    pub fn start(xsock: &str, name: &str, specs: &[SiteSpec]) -> Overlay {
        Self::start_with(xsock, name, specs, &[])
    }

    /// [`Overlay::start`] with extra flags for every relay.
    pub fn start_with(xsock: &str, name: &str, specs: &[SiteSpec], relay_flags: &[&str]) -> Overlay {
        Self::start_after(xsock, name, specs, relay_flags, |_| Ok(()))
    }

    /// [`Overlay::start_with`], running `prepare` on the built sites before
    /// any overlay process starts (to install counters, say).
    pub fn start_after(
        xsock: &str,
        name: &str,
        specs: &[SiteSpec],
        relay_flags: &[&str],
        prepare: impl FnOnce(&Sites) -> std::io::Result<()>,
    ) -> Overlay {
        Self::start_full(xsock, name, specs, relay_flags, 1, prepare)
    }

    /// [`Overlay::start_after`] with `servers` bootstrap servers (ports
    /// 7400, 7410, ... on the WAN's boot host); every node is given all.
    pub fn start_full(
        xsock: &str,
        name: &str,
        specs: &[SiteSpec],
        relay_flags: &[&str],
        servers: usize,
        prepare: impl FnOnce(&Sites) -> std::io::Result<()>,
    ) -> Overlay {
        Self::build(xsock, name, specs, relay_flags, servers, None, prepare)
    }

    /// [`Overlay::start`] in a cluster with node certificates: a CA made
    /// with `xsock keys ca`, a credentials file for every node, and the
    /// bootstrap server given the revocation list (`dir/revoked.list`) that
    /// names `revoked` (credentials issued for them first).
    pub fn start_certified(xsock: &str, name: &str, specs: &[SiteSpec], revoked: &[(&str, &str)]) -> Overlay {
        Self::build(xsock, name, specs, &[], 1, Some(revoked), |_| Ok(()))
    }

    fn build(
        xsock: &str,
        name: &str,
        specs: &[SiteSpec],
        relay_flags: &[&str],
        servers: usize,
        certified: Option<&[(&str, &str)]>,
        prepare: impl FnOnce(&Sites) -> std::io::Result<()>,
    ) -> Overlay {
        let bed = Testbed::new().unwrap();
        let sites = Sites::build(&bed, specs).unwrap();
        prepare(&sites).unwrap();
        let dir = scratch(name);
        let key = dir.join("cluster.key");
        std::fs::write(&key, "test-cluster-key-0123456789abcdef\n").unwrap();
        let ca = certified.map(|revoked| {
            let ca = dir.join("ca.key");
            keys(xsock, &["ca", "--out", ca.to_str().unwrap()]);
            let list = dir.join("revoked.list");
            for (n, role) in revoked {
                let node = issue(xsock, &ca, &dir, n, role);
                keys(
                    xsock,
                    &["revoke", "--ca", ca.to_str().unwrap(), "--list", list.to_str().unwrap(), node.to_str().unwrap()],
                );
            }
            ca
        });
        let relay_flags: Vec<String> = relay_flags.iter().map(|f| f.to_string()).collect();
        let mut boot_flags = Vec::new();
        let mut boot_cert = Vec::new();
        if let Some(ca) = &ca {
            let list = dir.join("revoked.list");
            boot_flags.extend(["--cert".to_owned(), issue(xsock, ca, &dir, "boot", "boot").display().to_string()]);
            boot_cert = boot_flags.clone();
            // Only the server reads the list: relays learn it from the
            // server when they register, and flood it on.
            if list.exists() {
                boot_flags.extend(["--revoked".to_owned(), list.display().to_string()]);
            }
        }
        let mut boots = Vec::new();
        for k in 0..servers.max(1) {
            let addr = format!("{BOOT_IP}:{}", BOOT_PORT + 10 * k as u16);
            let pid = start_boot(&bed, &sites.boot, xsock, &addr, &key, &with_leases(&boot_flags, &dir, k));
            boots.push((addr, pid));
        }
        let boot = boots.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>().join(",");
        let boot_pid = boots[0].1;
        let mut o = Overlay {
            bed,
            sites,
            dir,
            key,
            boot,
            boot_pid,
            boots,
            relays: Vec::new(),
            ca,
            boot_flags: (boot_flags, boot_cert),
            xsock: xsock.to_owned(),
            relay_flags,
        };
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

    /// Starts bootstrap server `k` again (after a test killed it), on its
    /// address, with the flags it started with; returns its new pid.
    pub fn restart_boot(&mut self, k: usize) -> u32 {
        self.restart_boot_with(k, false)
    }

    /// [`Overlay::restart_boot`], without its revocation list if
    /// `forget_list` (the relays hand it back).
    pub fn restart_boot_with(&mut self, k: usize, forget_list: bool) -> u32 {
        let addr = self.boots[k].0.clone();
        let flags = if forget_list { &self.boot_flags.1 } else { &self.boot_flags.0 };
        let flags = with_leases(flags, &self.dir, k);
        let pid = start_boot(&self.bed, &self.sites.boot, &self.xsock, &addr, &self.key, &flags);
        self.boots[k].1 = pid;
        pid
    }

    /// See the module documentation.
    pub fn status_path(&self, relay: &str) -> PathBuf {
        self.dir.join(format!("{relay}.json"))
    }

    /// See the module documentation.
    pub fn start_relay(&self, name: &str, host: &Host, wan: Option<&str>) -> u32 {
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
            "--status-interval",
            "20ms",
        ];
        if let Some(w) = wan {
            args.extend(["--wan-listen", w]);
        }
        // A relay drains its VCs on SIGTERM (30 s by default); the test bed's
        // clean-up signals every relay, and waits for none of that.
        if !self.relay_flags.iter().any(|f| f == "--drain-timeout") {
            args.extend(["--drain-timeout", "200ms"]);
        }
        let cache = self.dir.join(format!("{name}.dir"));
        args.extend(["--directory-cache", cache.to_str().unwrap()]);
        let cert = self.cert(name, "relay");
        if let Some(c) = &cert {
            args.extend(["--cert", c.to_str().unwrap()]);
        }
        args.extend(self.relay_flags.iter().map(String::as_str));
        self.bed.spawn_ready(host, &self.xsock, &args, || Ok(status.exists())).unwrap()
    }

    /// See the module documentation.
    pub fn status(&self, relay: &str) -> Value {
        let text = std::fs::read_to_string(self.status_path(relay)).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Waits until every live relay has a route to every other live relay;
    /// returns how long that took.
    /// See the module documentation.
    pub fn converge(&self, live: &[&str], within: Duration) -> Duration {
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

    /// See the module documentation.
    pub fn dump(&self, relays: &[&str]) -> String {
        relays.iter().map(|r| format!("\n{r}: {}", self.status(r))).collect()
    }

    /// See the module documentation.
    pub fn relay_logs(&self) -> String {
        self.relays.iter().map(|(n, _, pid)| format!("\n--- {n}:\n{}", self.bed.log_tail(*pid, 12))).collect()
    }

    /// See the module documentation.
    pub fn relay_names(&self) -> Vec<String> {
        self.relays.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Endpoint hosts with their names.
    /// See the module documentation.
    pub fn endpoints(&self) -> Vec<(String, Host)> {
        self.sites
            .sites
            .iter()
            .flat_map(|s| s.hosts.iter().enumerate().map(move |(k, h)| (format!("{}h{k}", s.spec.name), h.clone())))
            .collect()
    }

    /// Runs `xsock mesh` on every endpoint host at once against `peers`;
    /// returns each one's JSON report.
    /// The flags that join host `name` to this overlay (CLI.md's
    /// `--boot IP:PORT --name NAME --key-file F`, on `eth0`).
    pub fn join_flags(&self, name: &str) -> Vec<String> {
        let key = self.key.to_str().expect("utf-8 path");
        let mut f: Vec<String> =
            ["--iface", "eth0", "--boot", &self.boot, "--key-file", key, "--name", name].map(String::from).to_vec();
        if let Some(c) = self.cert(name, "endpoint") {
            f.extend(["--cert".to_owned(), c.display().to_string()]);
        }
        f
    }

    /// Node `name`'s credentials file as `role` (issued on first use), in
    /// a cluster with node certificates.
    pub fn cert(&self, name: &str, role: &str) -> Option<PathBuf> {
        self.ca.as_ref().map(|ca| issue(&self.xsock, ca, &self.dir, name, role))
    }

    /// Runs `xsock mesh` (one endpoint each) on `hosts` at once against
    /// `peers`; returns each one's JSON report.
    pub fn mesh(&self, hosts: &[(String, Host)], peers: &[(String, Host)], bytes: usize) -> Vec<Value> {
        let list: Vec<String> = peers.iter().map(|(n, _)| format!("{n}-0:{MESH_PORT}")).collect();
        let bytes = bytes.to_string();
        self.mesh_run(hosts, &list.join(","), |_, name| {
            let mut a = self.join_flags(name);
            a.extend(["--bytes".to_owned(), bytes.clone()]);
            a
        })
        .expect("mesh runs")
    }

    /// Runs `xsock mesh --port MESH_PORT --peers PEERS` plus
    /// `flags(index, name)` on every host at once, all starting together
    /// 3 s from now and 25 ms per endpoint more; returns each one's JSON
    /// report.
    pub fn mesh_run(
        &self,
        hosts: &[(String, Host)],
        peers: &str,
        flags: impl Fn(usize, &str) -> Vec<String>,
    ) -> std::io::Result<Vec<Value>> {
        // Every process must have joined all its endpoints by then: 3 s,
        // and 25 ms more per endpoint (256 endpoints' joins on 2 cores
        // outran a flat 3 s, and the late ones' peers found nothing there).
        let endpoints = peers.split(',').filter(|p| !p.is_empty()).count() as u128;
        let start_at =
            (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
                + 3000
                + 25 * endpoints)
                .to_string();
        let port = MESH_PORT.to_string();
        std::thread::scope(|sc| {
            let runs: Vec<_> = hosts
                .iter()
                .enumerate()
                .map(|(i, (n, h))| {
                    let extra = flags(i, n);
                    let mut args =
                        vec!["mesh", "--port", &port, "--peers", peers, "--start-at", &start_at, "--linger", "3s"];
                    args.extend(extra.iter().map(String::as_str));
                    let mut cmd = h.command(&self.xsock, &args);
                    sc.spawn(move || cmd.output())
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    let out = r.join().expect("no panic")?;
                    let text = String::from_utf8_lossy(&out.stdout).to_string();
                    serde_json::from_str(text.lines().next().unwrap_or("")).map_err(|_| {
                        std::io::Error::other(format!(
                            "mesh printed no report ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        ))
                    })
                })
                .collect()
        })
    }

    /// Starts `xsock mesh --probe DUR` on `me` (joined as its name) against
    /// `peer`, stdout piped: one JSON line per connection attempt.
    pub fn spawn_probe(&self, me: &(String, Host), peer: &str, dur: &str) -> std::io::Result<Probe> {
        let mut args = vec!["mesh".to_owned()];
        args.extend(self.join_flags(&me.0));
        args.extend(["--port", "7500", "--peers", peer, "--probe", dur, "--bytes", "64"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child =
            me.1.command(&self.xsock, &args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()?;
        // Read as it writes: a probe blocked on a full pipe (a line per
        // attempt, hundreds a second) would pause its attempts until the
        // caller reads, and show the pause as a slow recovery.
        let mut stdout = child.stdout.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
            v
        });
        Ok(Probe { child, out })
    }
}

/// A running `xsock mesh --probe` ([`Overlay::spawn_probe`]).
pub struct Probe {
    child: std::process::Child,
    out: std::thread::JoinHandle<Vec<u8>>,
}

impl Probe {
    /// Waits for the probe to end; its lines (one JSON object per attempt).
    pub fn finish(mut self) -> std::io::Result<String> {
        self.child.wait()?;
        let out = self.out.join().map_err(|_| std::io::Error::other("the probe's reader panicked"))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // XSOCK_OVERLAY_KEEP=1 keeps the relays' last status files (and
        // the rest) for a look after a run.
        if std::env::var_os("XSOCK_OVERLAY_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
