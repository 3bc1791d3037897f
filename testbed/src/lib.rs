//! # xsock-testbed: a network on one machine
//!
//! Hosts are network namespaces, links are veth pairs (MTU and queue count
//! settable), L2 segments are Linux bridges in a switch namespace, routers
//! are namespaces with forwarding on and nftables rules. Used by tests, the
//! tools' demo and the perf suite.
//!
//! - Names are unique (`xst<pid>n<k><role>`), so tests run in parallel.
//! - Everything a [`Testbed`] made is removed when it drops — also while
//!   unwinding from a panic — and child processes it started are killed.
//! - A run that was killed outright (SIGKILL) leaves namespaces named for a
//!   dead pid; the next [`Testbed::new`] removes them.
//! - Tests that need root call [`require_root!`]: without root they print a
//!   loud SKIPPED line and return, unless `XSOCK_REQUIRE_ROOT=1` (set by CI),
//!   where they fail instead.
//!
//! Traffic stays inside the namespaces a test made; nothing here routes to
//! the outside.

#![forbid(unsafe_code)]

pub mod overlay;
pub mod sites;

use std::os::unix::process::CommandExt;
use std::{
    fs::File,
    io,
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// Prefix of every namespace a test bed creates.
pub const PREFIX: &str = "xst";

/// (VmRSS, VmHWM) of process `pid` in KiB, from /proc; zeros once it is
/// gone.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `args` as the `&str`s a command takes.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True if the caller may go on; false (after printing a loud SKIPPED line)
/// if it should return because it is not root. Panics instead of skipping
/// when `XSOCK_REQUIRE_ROOT=1`.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("XSOCK_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test} needs root and XSOCK_REQUIRE_ROOT=1 forbids skipping it");
    }
    eprintln!("\n*** SKIPPED {test}: needs root (network namespaces, AF_XDP). Run the tests as root. ***\n");
    false
}

/// Returns from the enclosing test unless running as root (see [`root_or_skip`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::root_or_skip(module_path!()) {
            return;
        }
    };
}

/// A host: one network namespace. Cheap to clone; the [`Testbed`] owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    ns: String,
}

/// Options of a veth link.
#[derive(Debug, Clone, Copy)]
pub struct LinkOpts {
    /// MTU of both ends.
    pub mtu: u32,
    /// Receive and transmit queues of each end.
    pub queues: u32,
}

impl Default for LinkOpts {
    fn default() -> Self {
        Self { mtu: 1500, queues: 1 }
    }
}

/// An L2 segment: a bridge in its own switch namespace.
#[derive(Debug, Clone)]
pub struct Segment {
    switch: Host,
    ports: std::sync::Arc<AtomicU32>,
}

impl Segment {
    /// The namespace holding the bridge (`br0`).
    pub fn switch(&self) -> &Host {
        &self.switch
    }
}

/// A set of namespaces and processes that are all removed together.
#[derive(Debug)]
pub struct Testbed {
    tag: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    logs: std::path::PathBuf,
}

static NEXT_BED: AtomicU32 = AtomicU32::new(0);
static NEXT_LOG: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

/// Removes namespaces left by test beds of processes that no longer exist.
pub fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            log::info!("removing stale test namespace {name} (its process {pid} is gone)");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Testbed {
    /// An empty test bed. Needs root (check with [`require_root!`] first).
    pub fn new() -> io::Result<Self> {
        sweep_stale();
        let tag = format!("{PREFIX}{}n{}", std::process::id(), NEXT_BED.fetch_add(1, Ordering::Relaxed));
        let logs = std::env::temp_dir().join(format!("xsock-testbed-{tag}"));
        std::fs::create_dir_all(&logs)?;
        Ok(Self { tag, namespaces: Mutex::new(Vec::new()), children: Mutex::new(Vec::new()), logs })
    }

    /// A new host named `role` (a namespace with loopback up).
    pub fn host(&self, role: &str) -> io::Result<Host> {
        let ns = format!("{}{}", self.tag, role);
        ip(&["netns", "add", &ns])?;
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).push(ns.clone());
        let host = Host { ns };
        host.ip(&["link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// A router: a host with IPv4 forwarding on.
    pub fn router(&self, role: &str) -> io::Result<Host> {
        let r = self.host(role)?;
        r.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(r)
    }

    /// A veth pair from `a`'s `a_if` to `b`'s `b_if`, both up.
    pub fn link(&self, a: &Host, a_if: &str, b: &Host, b_if: &str, opts: LinkOpts) -> io::Result<()> {
        let (mtu, q) = (opts.mtu.to_string(), opts.queues.to_string());
        ip(&[
            "-n",
            &a.ns,
            "link",
            "add",
            "name",
            a_if,
            "mtu",
            &mtu,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            &b.ns,
            "mtu",
            &mtu,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ])?;
        a.ip(&["link", "set", a_if, "up"])?;
        b.ip(&["link", "set", b_if, "up"])?;
        Ok(())
    }

    /// A new L2 segment (a bridge `br0` in a switch namespace).
    pub fn segment(&self, role: &str) -> io::Result<Segment> {
        let switch = self.host(role)?;
        switch.ip(&["link", "add", "name", "br0", "type", "bridge"])?;
        // Forward immediately (no STP listening delay).
        switch.ip(&["link", "set", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        Ok(Segment { switch, ports: Default::default() })
    }

    /// Plugs `host` into `segment` through a veth named `ifname` on the host side.
    pub fn attach(&self, host: &Host, ifname: &str, segment: &Segment, opts: LinkOpts) -> io::Result<()> {
        let port = format!("p{}", segment.ports.fetch_add(1, Ordering::Relaxed));
        self.link(host, ifname, &segment.switch, &port, opts)?;
        segment.switch.ip(&["link", "set", &port, "master", "br0"])?;
        if opts.mtu > 1500 {
            segment.switch.ip(&["link", "set", "br0", "mtu", &opts.mtu.to_string()])?;
        }
        Ok(())
    }

    /// Starts `program` inside `host`, its output going to a log file (see
    /// [`Testbed::log_tail`]); the process is killed when the test bed
    /// drops. Returns its pid.
    pub fn spawn(&self, host: &Host, program: &str, args: &[&str]) -> io::Result<u32> {
        let n = NEXT_LOG.fetch_add(1, Ordering::Relaxed);
        let path = self.logs.join(format!("{n}.log"));
        let out = File::create(&path)?;
        // Its own process group, so clean-up reaches what it started too
        // (`sh -c "xsock cat ... > file"` left the xsock cat running when a
        // test failed and only the shell was killed).
        let child = host
            .command(program, args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let pid = child.id();
        std::fs::rename(&path, self.logs.join(format!("{pid}.log")))?;
        self.children.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        Ok(pid)
    }

    /// Like [`Testbed::spawn`], then waits (up to 10 s) until `ready()`
    /// holds; an error, with the end of the child's output, if the child
    /// exits first or never gets ready.
    pub fn spawn_ready(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        mut ready: impl FnMut() -> io::Result<bool>,
    ) -> io::Result<u32> {
        let pid = self.spawn(host, program, args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready()? {
            if let Some(status) = self.try_wait(pid)? {
                return Err(io::Error::other(format!(
                    "{program} {args:?} exited early ({status}): {}",
                    self.log_tail(pid, 5)
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("{program} {args:?} was not ready within 10 s")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(pid)
    }

    /// Two hosts `a` and `b` joined by a veth pair (`eth0` on each side),
    /// addressed `<net>.1/24` and `<net>.2/24` (`net` like "10.77.0").
    pub fn pair(&self, opts: LinkOpts, net: &str) -> io::Result<(Host, Host)> {
        let a = self.host("a")?;
        let b = self.host("b")?;
        self.link(&a, "eth0", &b, "eth0", opts)?;
        a.addr("eth0", &format!("{net}.1/24"))?;
        b.addr("eth0", &format!("{net}.2/24"))?;
        Ok((a, b))
    }

    /// The last `lines` lines a child started by [`Testbed::spawn`] printed.
    pub fn log_tail(&self, pid: u32, lines: usize) -> String {
        let text = std::fs::read_to_string(self.logs.join(format!("{pid}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Takes over clean-up of a child started elsewhere (e.g. from
    /// [`Host::command`] with extra environment); returns its pid.
    pub fn adopt(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        pid
    }

    /// Kills the child `pid` (SIGTERM, then SIGKILL after a grace period)
    /// and returns its output.
    pub fn finish(&self, pid: u32) -> io::Result<Output> {
        let child = {
            let mut kids = self.children.lock().unwrap_or_else(|p| p.into_inner());
            let i =
                kids.iter().position(|c| c.id() == pid).ok_or_else(|| io::Error::other(format!("no child {pid}")))?;
            kids.swap_remove(i)
        };
        terminate(child)
    }

    /// Sends SIGKILL to child `pid` and reaps it (no clean-up runs in it).
    pub fn kill9(&self, pid: u32) -> io::Result<()> {
        let mut kids = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let i = kids.iter().position(|c| c.id() == pid).ok_or_else(|| io::Error::other(format!("no child {pid}")))?;
        let mut child = kids.swap_remove(i);
        let killed = child.kill();
        child.wait()?;
        killed
    }

    /// Waits up to `within` for child `pid` to exit by itself (reaping
    /// it); an error naming the child's last words if it does not.
    pub fn wait_exit(&self, pid: u32, within: Duration) -> io::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.try_wait(pid)? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "child {pid} still runs after {within:?}: {}",
                    self.log_tail(pid, 5)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether child `pid` has exited (reaping it if so), with its status.
    pub fn try_wait(&self, pid: u32) -> io::Result<Option<std::process::ExitStatus>> {
        let mut kids = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let c = kids.iter_mut().find(|c| c.id() == pid).ok_or_else(|| io::Error::other(format!("no child {pid}")))?;
        c.try_wait()
    }

    /// Names of the namespaces this test bed made.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn terminate(mut child: Child) -> io::Result<Output> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // The child leads its own process group (see Testbed::spawn): signal
    // the group, so what it started goes with it.
    // (An adopted child may lead no group: it is signalled itself too.)
    let group = Pid::from_raw(-(child.id() as i32));
    if child.try_wait()?.is_none() {
        let _ = kill(group, Signal::SIGTERM);
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Whatever of the group outlived its leader.
    let _ = kill(group, Signal::SIGKILL);
    if child.try_wait()?.is_none() {
        let _ = child.kill();
    }
    child.wait_with_output()
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let kids = std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for child in kids {
            let _ = terminate(child);
        }
        let _ = std::fs::remove_dir_all(&self.logs);
        let namespaces = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|p| p.into_inner()));
        for ns in namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("testbed: could not remove namespace {ns}: {e}");
            }
        }
    }
}

impl Host {
    /// The namespace name.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Runs `ip -n NS args...`, returning stdout.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        Ok(String::from_utf8_lossy(&ip(&all)?.stdout).into_owned())
    }

    /// Adds an address (CIDR) to `ifname`.
    pub fn addr(&self, ifname: &str, cidr: &str) -> io::Result<()> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(|_| ())
    }

    /// Adds a route: `ip route add DST via GW`.
    pub fn route(&self, dst: &str, via: &str) -> io::Result<()> {
        self.ip(&["route", "add", dst, "via", via]).map(|_| ())
    }

    /// Whether a TCP socket listens on `port` here.
    pub fn listening(&self, port: u16) -> io::Result<bool> {
        let out = self.exec("ss", &["-Hltn", &format!("sport = :{port}")])?;
        Ok(!out.stdout.is_empty())
    }

    /// Whether an XDP program is attached to `ifname` (any mode).
    pub fn has_xdp(&self, ifname: &str) -> io::Result<bool> {
        Ok(self.ip(&["-d", "link", "show", "dev", ifname])?.contains("prog/xdp"))
    }

    /// The MAC address of `ifname`.
    pub fn mac(&self, ifname: &str) -> io::Result<String> {
        let out = self.ip(&["-br", "link", "show", "dev", ifname])?;
        out.split_whitespace().nth(2).map(str::to_owned).ok_or_else(|| io::Error::other(format!("no MAC in {out:?}")))
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]).args(args);
        c
    }

    /// Runs `program args...` inside the namespace to completion; an error
    /// if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        run(&mut self.command(program, args))
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, ruleset: &str) -> io::Result<()> {
        use std::io::Write;
        let mut child = self.command("nft", &["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().expect("piped").write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("nft failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
        }
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its
    /// result. Sockets and devices opened by `f` live in the namespace.
    pub fn run<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            s.spawn(|| -> io::Result<R> {
                self.enter_this_thread_at(&path)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Moves the calling thread into this namespace for good. Use on a
    /// thread of your own (see [`Host::run`] for a scoped version).
    pub fn enter_this_thread(&self) -> io::Result<()> {
        self.enter_this_thread_at(&format!("/run/netns/{}", self.ns))
    }

    fn enter_this_thread_at(&self, path: &str) -> io::Result<()> {
        let f = File::open(path)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_made_linked_and_removed() {
        require_root!();
        let names;
        {
            let bed = Testbed::new().unwrap();
            let a = bed.host("a").unwrap();
            let b = bed.host("b").unwrap();
            bed.link(&a, "eth0", &b, "eth0", LinkOpts { mtu: 9000, queues: 2 }).unwrap();
            a.addr("eth0", "10.9.0.1/24").unwrap();
            b.addr("eth0", "10.9.0.2/24").unwrap();
            a.exec("ping", &["-c1", "-W2", "10.9.0.2"]).unwrap();
            assert!(a.ip(&["link", "show", "eth0"]).unwrap().contains("mtu 9000"));
            names = bed.namespaces();
            assert!(names.iter().all(|n| std::path::Path::new(&format!("/run/netns/{n}")).exists()));
        }
        assert!(names.iter().all(|n| !std::path::Path::new(&format!("/run/netns/{n}")).exists()));
    }

    #[test]
    fn cleanup_runs_on_panic() {
        require_root!();
        let names = std::sync::Arc::new(Mutex::new(Vec::new()));
        let n2 = names.clone();
        let r = std::panic::catch_unwind(move || {
            let bed = Testbed::new().unwrap();
            bed.host("x").unwrap();
            *n2.lock().unwrap() = bed.namespaces();
            panic!("test failure inside a test bed");
        });
        assert!(r.is_err());
        let names = names.lock().unwrap();
        assert_eq!(names.len(), 1);
        assert!(!std::path::Path::new(&format!("/run/netns/{}", names[0])).exists());
    }

    #[test]
    fn segment_joins_hosts_and_thread_runs_inside() {
        require_root!();
        let bed = Testbed::new().unwrap();
        let seg = bed.segment("sw").unwrap();
        let hosts: Vec<Host> = (0..3).map(|i| bed.host(&format!("h{i}")).unwrap()).collect();
        for (i, h) in hosts.iter().enumerate() {
            bed.attach(h, "eth0", &seg, LinkOpts::default()).unwrap();
            h.addr("eth0", &format!("10.9.1.{}/24", i + 1)).unwrap();
        }
        hosts[0].exec("ping", &["-c1", "-W2", "10.9.1.3"]).unwrap();
        // A thread inside host 1 sees its eth0, not the root namespace's.
        let names = hosts[1].run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()).unwrap();
        assert!(names.contains("eth0"));
    }

    #[test]
    fn router_forwards_filters_and_masquerades() {
        require_root!();
        let bed = Testbed::new().unwrap();
        let (left, right, r) = (bed.host("l").unwrap(), bed.host("r").unwrap(), bed.router("gw").unwrap());
        bed.link(&left, "eth0", &r, "l0", LinkOpts::default()).unwrap();
        bed.link(&right, "eth0", &r, "r0", LinkOpts::default()).unwrap();
        left.addr("eth0", "10.9.2.2/24").unwrap();
        r.addr("l0", "10.9.2.1/24").unwrap();
        right.addr("eth0", "10.9.3.2/24").unwrap();
        r.addr("r0", "10.9.3.1/24").unwrap();
        left.route("default", "10.9.2.1").unwrap();
        right.route("default", "10.9.3.1").unwrap();
        left.exec("ping", &["-c1", "-W2", "10.9.3.2"]).unwrap();
        // A firewall that drops what the right side starts toward the left.
        r.nft(
            "table inet fw {
                chain fw_forward {
                    type filter hook forward priority 0; policy accept;
                    iifname \"r0\" ct state new drop
                }
            }",
        )
        .unwrap();
        assert!(right.exec("ping", &["-c1", "-W1", "10.9.2.2"]).is_err());
        left.exec("ping", &["-c1", "-W2", "10.9.3.2"]).unwrap();
        // NAT: the left side appears to the right as the router's address.
        r.nft(
            "table ip nat {
                chain nat_post {
                    type nat hook postrouting priority 100;
                    oifname \"r0\" masquerade
                }
            }",
        )
        .unwrap();
        // The right host forgets its way back to the left subnet: replies
        // still arrive, because they are addressed to the router.
        right.ip(&["route", "del", "default"]).unwrap();
        left.exec("ping", &["-c1", "-W2", "10.9.3.2"]).unwrap();
        assert!(bed.namespaces().iter().any(|n| n.ends_with("gw")));
    }

    #[test]
    fn stale_namespaces_of_dead_processes_are_swept() {
        require_root!();
        // A pid that cannot exist (above pid_max's ceiling of 2^22).
        let stale = format!("{PREFIX}4999999n0zombie");
        ip(&["netns", "add", &stale]).unwrap();
        sweep_stale();
        assert!(!std::path::Path::new(&format!("/run/netns/{stale}")).exists());
    }
}
