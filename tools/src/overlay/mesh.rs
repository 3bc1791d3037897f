//! `xsock mesh`: every endpoint connects to every peer at once and
//! exchanges one message (echoed back and checked byte for byte): the
//! all-to-all connect test and benchmark. Over the overlay (`--boot`,
//! names) or, as the baseline, plain kernel TCP by address (`--plain`).
//!
//! One process holds `--endpoints K` endpoints (`NAME-0`..`NAME-K-1`, ports
//! `--port`..`--port+K-1`), each with an acceptor thread and `--parallel`
//! connecting threads. `--start-at` (Unix ms) lines processes up.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use serde::Serialize;
use xsock::{
    Driving, Runtime, Stream,
    overlay::{Node, NodeListener, OverlayConfig},
};

use super::{JoinArgs, key_from, parse_name_port};
use crate::{args::parse_duration, fail::Fail};

/// Flags of `xsock mesh`.
#[derive(Debug, Args)]
pub struct Mesh {
    /// Interface xsock drives (the LAN the relays serve); not with --plain.
    #[arg(long)]
    iface: Option<String>,
    #[command(flatten)]
    join: JoinArgs,
    /// Endpoints in this process.
    #[arg(long, default_value_t = 1)]
    endpoints: usize,
    /// First endpoint's port (endpoint k listens on port + k).
    #[arg(long)]
    port: u16,
    /// Peers, comma separated: NAME:PORT (overlay) or IP:PORT (--plain).
    /// Our own endpoints are skipped.
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<String>,
    /// Plain kernel TCP by address (the baseline), listening on --listen-ip.
    #[arg(long)]
    plain: bool,
    /// With --plain: our address.
    #[arg(long)]
    listen_ip: Option<Ipv4Addr>,
    /// Bytes of the one message each connection exchanges.
    #[arg(long, default_value_t = 64)]
    bytes: usize,
    /// Connections each endpoint opens at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Start connecting at this Unix time in milliseconds.
    #[arg(long)]
    start_at: Option<u64>,
    /// Instead of one round: connect to the peers in turn, one at a time,
    /// for this long, printing one JSON line per attempt (time, ok, error):
    /// for measuring recovery after a relay dies.
    #[arg(long, value_parser = parse_duration)]
    probe: Option<Duration>,
    /// Keep serving this long after our own connections are done.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    linger: Duration,
    /// How the datapath thread waits when idle (sleep: kind to a host that
    /// runs more processes than it has cores).
    #[arg(long, value_enum, default_value = "adaptive")]
    poll: crate::args::Poll,
}

#[derive(Debug, Serialize)]
struct Failure {
    from: String,
    to: String,
    error: String,
}

#[derive(Debug, Serialize, Default)]
struct Report {
    endpoints: usize,
    pairs: usize,
    ok: usize,
    direct: usize,
    relayed: usize,
    start_unix_ns: u128,
    end_unix_ns: u128,
    connect_p50_us: u64,
    connect_max_us: u64,
    exchange_max_us: u64,
    failed: Vec<Failure>,
}

fn unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn message(bytes: usize, from: &str, to: &str) -> Vec<u8> {
    let mut x = from
        .bytes()
        .chain(to.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

enum Acceptor {
    Overlay(NodeListener),
    Plain(TcpListener),
}

/// Echoes one message per connection: small ones right away (one thread
/// per endpoint, few threads waiting on the runtime), large ones on their
/// own thread (a slow peer must not hold up the others).
fn serve(acc: Acceptor, bytes: usize) {
    fn echo(mut s: impl Read + Write, bytes: usize) {
        let mut buf = vec![0u8; bytes];
        if let Err(e) = s.read_exact(&mut buf).and_then(|_| s.write_all(&buf)) {
            log::warn!("echo: {e}");
        }
    }
    loop {
        match &acc {
            Acceptor::Overlay(l) => match l.accept() {
                Ok((s, _)) if bytes <= 4096 => echo(s, bytes),
                Ok((s, _)) => {
                    std::thread::spawn(move || echo(s, bytes));
                }
                Err(e) => log::warn!("accept: {e}"),
            },
            Acceptor::Plain(l) => match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    if bytes <= 4096 {
                        echo(s, bytes)
                    } else {
                        std::thread::spawn(move || echo(s, bytes));
                    }
                }
                Err(e) => log::warn!("accept: {e}"),
            },
        }
    }
}

struct Job {
    from: String,
    to: String,
}

/// A finished job and how it went.
type Done = (Job, Result<Outcome, String>);

struct Outcome {
    connect: Duration,
    total: Duration,
    relayed: bool,
}

impl Mesh {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        if self.endpoints == 0 || self.parallel == 0 || self.bytes == 0 {
            return Err(Fail::msg("--endpoints, --parallel and --bytes must be at least 1"));
        }
        let base = self.join.name.clone().unwrap_or_else(|| "mesh".into());
        let names: Vec<String> = (0..self.endpoints).map(|k| format!("{base}-{k}")).collect();
        // Per endpoint: how it connects.
        let mut nodes: Vec<Option<Node>> = Vec::new();
        let _rt;
        if self.plain {
            let ip = self.listen_ip.ok_or_else(|| Fail::msg("--plain needs --listen-ip IP (this host's address)"))?;
            for k in 0..self.endpoints {
                let a = SocketAddrV4::new(ip, self.port + k as u16);
                let l = TcpListener::bind(a).map_err(|e| Fail::msg(format!("cannot listen on {a}: {e}")))?;
                let bytes = self.bytes;
                std::thread::spawn(move || serve(Acceptor::Plain(l), bytes));
                nodes.push(None);
            }
        } else {
            let iface =
                self.iface.clone().ok_or_else(|| Fail::msg("--iface IF is needed (the LAN the relays serve)"))?;
            if self.join.boot.is_empty() {
                return Err(Fail::msg("--boot IP:PORT is needed (or --plain)"));
            }
            let boots = self.join.boot.clone();
            let key = key_from(self.join.key_file.as_deref())?;
            let rt = Runtime::builder()
                .interface(&iface)
                .driving(Driving::Thread)
                .poll_mode(self.poll.into())
                // Many small connections: small (pre-faulted) buffers.
                .send_buffer((self.bytes.max(4096) * 2).min(1 << 20))
                .recv_buffer((self.bytes.max(4096) * 2).min(1 << 20))
                .build()?;
            for (k, name) in names.iter().enumerate() {
                let node = Node::join(&rt, OverlayConfig::with_boots(boots.clone(), name.clone(), key.clone()))?;
                let l = node.listen(self.port + k as u16)?;
                let bytes = self.bytes;
                std::thread::spawn(move || serve(Acceptor::Overlay(l), bytes));
                nodes.push(Some(node));
            }
            _rt = rt;
        }
        let own: Vec<String> = if self.plain {
            let ip = self.listen_ip.expect("checked");
            (0..self.endpoints).map(|k| format!("{ip}:{}", self.port + k as u16)).collect()
        } else {
            names.iter().enumerate().map(|(k, n)| format!("{n}:{}", self.port + k as u16)).collect()
        };
        let peers: Vec<String> = self.peers.iter().filter(|p| !own.contains(p)).cloned().collect();
        if let Some(at) = self.start_at {
            // Everyone has joined; fetch the directory once, then wait.
            for n in nodes.iter().flatten() {
                n.load_directory()?;
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            if at > now {
                std::thread::sleep(Duration::from_millis(at - now));
            } else {
                log::warn!("joined {} ms after the --start-at barrier: peers may not find our listeners", now - at);
            }
        }
        if let Some(d) = self.probe {
            return probe(nodes[0].as_ref(), &own[0], &peers, self.bytes, d);
        }
        let start_ns = unix_ns();
        let t0 = Instant::now();
        let results: Arc<Mutex<Vec<Done>>> = Arc::default();
        let mut threads = Vec::new();
        for (k, node) in nodes.iter().enumerate() {
            let queue: Arc<Mutex<Vec<Job>>> =
                Arc::new(Mutex::new(peers.iter().map(|p| Job { from: own[k].clone(), to: p.clone() }).rev().collect()));
            for _ in 0..self.parallel {
                let (queue, results, node, bytes) = (queue.clone(), results.clone(), node.clone(), self.bytes);
                threads.push(std::thread::spawn(move || {
                    loop {
                        let Some(job) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else { return };
                        let r = exchange(node.as_ref(), &job, bytes);
                        results.lock().unwrap_or_else(|p| p.into_inner()).push((job, r));
                    }
                }));
            }
        }
        for t in threads {
            let _ = t.join();
        }
        let end_ns = unix_ns();
        let elapsed = t0.elapsed();
        let results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
        let mut rep = Report {
            endpoints: self.endpoints,
            pairs: results.len(),
            start_unix_ns: start_ns,
            end_unix_ns: end_ns,
            ..Default::default()
        };
        let mut connects: Vec<u64> = Vec::new();
        for (job, r) in results {
            match r {
                Ok(o) => {
                    rep.ok += 1;
                    if o.relayed {
                        rep.relayed += 1
                    } else {
                        rep.direct += 1
                    }
                    connects.push(o.connect.as_micros() as u64);
                    rep.exchange_max_us = rep.exchange_max_us.max(o.total.as_micros() as u64);
                }
                Err(error) => rep.failed.push(Failure { from: job.from, to: job.to, error }),
            }
        }
        connects.sort_unstable();
        rep.connect_p50_us = connects.get(connects.len() / 2).copied().unwrap_or(0);
        rep.connect_max_us = connects.last().copied().unwrap_or(0);
        println!("{}", serde_json::to_string(&rep).expect("serialisable"));
        log::info!("{} of {} exchanges ok in {:.1} ms", rep.ok, rep.pairs, elapsed.as_secs_f64() * 1e3);
        let _ = std::io::stdout().flush();
        std::thread::sleep(self.linger);
        if rep.failed.is_empty() { Ok(()) } else { Err(Fail::msg(format!("{} exchanges failed", rep.failed.len()))) }
    }
}

fn probe(node: Option<&Node>, me: &str, peers: &[String], bytes: usize, d: Duration) -> Result<(), Fail> {
    if peers.is_empty() {
        return Err(Fail::msg("--probe needs at least one peer"));
    }
    let end = Instant::now() + d;
    let mut out = std::io::stdout().lock();
    for to in peers.iter().cycle() {
        if Instant::now() >= end {
            break;
        }
        let t = unix_ns();
        let r = exchange(node, &Job { from: me.to_owned(), to: to.clone() }, bytes);
        let line = match r {
            Ok(o) => serde_json::json!({"t_ns": t, "to": to, "ok": true, "us": o.total.as_micros() as u64,
                "connect_us": o.connect.as_micros() as u64}),
            Err(e) => serde_json::json!({"t_ns": t, "to": to, "ok": false, "error": e,
                "us": ((unix_ns() - t) / 1000) as u64}),
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        // One attempt per millisecond at most: a failing connect is quick.
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn exchange(node: Option<&Node>, job: &Job, bytes: usize) -> Result<Outcome, String> {
    let msg = message(bytes, &job.from, &job.to);
    let mut back = vec![0u8; bytes];
    let t = Instant::now();
    let (connect, relayed) = match node {
        Some(node) => {
            let (name, port) = parse_name_port(&job.to).map_err(|e| e.to_string())?;
            let relayed = node.lookup(&name).map(|e| e.site != node.site()).map_err(|e| e.to_string())?;
            // The message rides the open (through a relay session, in the
            // virtual connection's one Open per hop).
            let mut s: Stream = node.open(&name, port, &msg).map_err(|e| e.to_string())?;
            let c = t.elapsed();
            s.read_exact(&mut back).map_err(|e| e.to_string())?;
            (c, relayed)
        }
        None => {
            let a: SocketAddrV4 = job.to.parse().map_err(|_| format!("{}: not IP:PORT", job.to))?;
            let mut s = TcpStream::connect_timeout(&a.into(), Duration::from_secs(10)).map_err(|e| e.to_string())?;
            let c = t.elapsed();
            let _ = s.set_nodelay(true);
            s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            s.write_all(&msg).and_then(|_| s.read_exact(&mut back)).map_err(|e| e.to_string())?;
            (c, false)
        }
    };
    if back != msg {
        return Err("the echo came back different".into());
    }
    Ok(Outcome { connect, total: t.elapsed(), relayed })
}
