//! `xsock conns`: many connections between two hosts at once, what a rank
//! with a connection to every other rank does. The client opens `--count`
//! connections without blocking (all at once, or `--in-flight` at a time),
//! sends `--bytes` on each and reads the echo back, from one thread with one
//! poller; then holds them idle for `--hold` (so the memory an idle
//! connection costs can be read off both processes) and closes them. The
//! server echoes everything on any number of connections, also from one
//! thread.
//!
//! JSON: `transport`, `count`, `ok`, `failed`, `bytes`, `seconds`,
//! `gbit_per_s` (both directions' payload over the whole run),
//! `connect_p50_ns`, `connect_p99_ns`, `connect_max_ns`, `done_p50_ns`,
//! `done_p99_ns`, `done_max_ns` (from one connection's connect to the last
//! byte of its echo: the slow tail), `rss_kib` (after the exchange,
//! connections open and idle), `rss_peak_kib`, and the first error.

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use clap::Args;
use serde::Serialize;
use xsock::{
    ConnectOptions, Driving, Error, Events, Interest, ListenOptions, Listener, Mode, Poller, Runtime, Stream, Token,
};

use crate::{
    args::{Poll, RuntimeArgs, parse_duration},
    fail::Fail,
    latency::Latencies,
};

/// Flags of `xsock conns`.
#[derive(Debug, Args)]
pub struct Conns {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Echo on this address (runs until killed).
    #[arg(long, conflicts_with = "connect")]
    listen: Option<SocketAddrV4>,
    /// Open connections to the echo server at this address.
    #[arg(long, required_unless_present = "listen")]
    connect: Option<SocketAddrV4>,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Connects under way at once (0: all at once).
    #[arg(long, default_value_t = 0)]
    in_flight: usize,
    /// Bytes each connection sends (and reads back).
    #[arg(long, default_value_t = 64 << 10)]
    bytes: usize,
    /// Keep the connections open and idle this long after the exchange.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    hold: Duration,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// Busy-poll or sleep while waiting.
    #[arg(long, value_enum, default_value = "sleep")]
    poll: Poll,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ConnsResult {
    transport: String,
    count: usize,
    ok: usize,
    failed: usize,
    bytes: usize,
    seconds: f64,
    gbit_per_s: f64,
    connect_p50_ns: u64,
    connect_p99_ns: u64,
    connect_max_ns: u64,
    /// Per connection, from its connect to the last byte of its echo.
    done_p50_ns: u64,
    done_p99_ns: u64,
    done_max_ns: u64,
    rss_kib: u64,
    rss_peak_kib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

/// The most connections one run opens.
const MAX_COUNT: usize = 100_000;

/// Phases of one connection on the client.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Exchanging,
    Done,
    Failed,
}

struct Conn {
    s: Stream,
    phase: Phase,
    started: Instant,
    sent: usize,
    got: usize,
}

fn serve(rt: &Runtime, addr: SocketAddrV4, transport: xsock::Transport) -> Result<(), Fail> {
    let l = Listener::bind_with(rt, addr, ListenOptions { transport, mode: Mode::Stream })?;
    log::info!("conns echo on {}", l.local_addr());
    let mut poller = Poller::new(rt)?;
    const LISTENER: Token = Token(usize::MAX);
    poller.register_listener(&l, LISTENER)?;
    let mut conns: HashMap<usize, (Stream, Vec<u8>)> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 256 << 10];
    // Connections still open once every event has gone quiet for this
    // long are described (once per quiet stretch): the server's half of
    // a bug report when a client says it is stuck.
    const QUIET: Duration = Duration::from_secs(5);
    let mut told = false;
    let mut failures = 0u64;
    loop {
        poller.poll(&mut events, Some(QUIET))?;
        if events.is_empty() {
            if !told && !conns.is_empty() {
                told = true;
                log::info!(
                    "quiet for {QUIET:?} with {} connections open ({failures} failed); the link: {}",
                    conns.len(),
                    rt.describe_link()
                );
                for (t, (s, pending)) in conns.iter().take(4) {
                    log::info!(
                        "open {t}: {} bytes to echo, ready {:?}, {} -> {}: {}",
                        pending.len(),
                        s.ready_now(),
                        s.peer_addr(),
                        s.local_addr(),
                        s.describe()
                    );
                }
            }
            continue;
        }
        told = false;
        for e in events.iter() {
            if e.token() == LISTENER {
                loop {
                    match l.try_accept() {
                        Ok(s) => {
                            poller.register(&s, Token(next), Interest::READABLE)?;
                            conns.insert(next, (s, Vec::new()));
                            next += 1;
                        }
                        Err(Error::WouldBlock) => break,
                        Err(e) => {
                            log::warn!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let t = e.token();
            let Some((s, pending)) = conns.get_mut(&t.0) else { continue };
            // Echo what came; what does not fit the send buffer now waits
            // for the stream to be writable.
            let mut end = false;
            let mut failed: Option<Error> = None;
            if pending.is_empty() {
                loop {
                    match s.try_recv(&mut buf) {
                        Ok(0) => {
                            end = true;
                            break;
                        }
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                        Err(Error::WouldBlock) => break,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                    if pending.len() >= 1 << 20 {
                        break;
                    }
                }
            }
            while !pending.is_empty() && failed.is_none() {
                match s.try_send(pending) {
                    Ok(n) => {
                        pending.drain(..n);
                    }
                    Err(Error::WouldBlock) => break,
                    Err(e) => failed = Some(e),
                }
            }
            if pending.is_empty() && pending.capacity() > 0 {
                // An idle connection holds no buffer of this tool's either.
                *pending = Vec::new();
            }
            let want = if pending.is_empty() { Interest::READABLE } else { Interest::WRITABLE };
            if end && pending.is_empty() || failed.is_some() {
                poller.deregister(t)?;
                let (s, pending) = conns.remove(&t.0).expect("listed");
                match failed {
                    Some(e) => {
                        failures += 1;
                        if failures <= 4 {
                            log::warn!(
                                "connection {} from {} failed ({failures} so far), {} bytes not echoed: {e}; {}",
                                t.0,
                                s.peer_addr(),
                                pending.len(),
                                s.describe()
                            );
                        }
                    }
                    None => {
                        let _ = s.close(Duration::from_secs(5));
                    }
                }
            } else {
                poller.reregister(t, want)?;
            }
        }
    }
}

impl Conns {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        if let Err(e) = xsock_nic::sys::raise_fd_limit() {
            log::debug!("file descriptor limit stays: {e}");
        }
        let rt = self.rt.build(Driving::Inline, self.poll.into())?;
        if let Some(addr) = self.listen {
            return serve(&rt, addr, self.rt.transport());
        }
        let addr = self.connect.expect("clap requires --connect without --listen");
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(Fail::msg(format!("--count must be 1..={MAX_COUNT}")));
        }
        if self.bytes > 1 << 30 {
            return Err(Fail::msg("--bytes is at most 1 GiB"));
        }
        let opts = ConnectOptions { transport: self.rt.transport(), mode: Mode::Stream, timeout: self.timeout };
        let data: Vec<u8> = (0..self.bytes.max(1)).map(|i| (i % 251) as u8).collect();
        let mut poller = Poller::new(&rt)?;
        let mut conns: Vec<Conn> = Vec::with_capacity(self.count);
        let mut connect_times = Latencies::new();
        let mut done_times = Latencies::new();
        let mut first_error: Option<String> = None;
        let mut events = Events::with_capacity(4096);
        let mut buf = vec![0u8; 256 << 10];
        let in_flight = if self.in_flight == 0 { self.count } else { self.in_flight };
        let t0 = Instant::now();
        let deadline = t0 + self.timeout;
        let (mut opened, mut settled) = (0usize, 0usize);
        let fail = |c: &mut Conn, e: Error, first: &mut Option<String>| {
            c.phase = Phase::Failed;
            first.get_or_insert_with(|| e.to_string());
        };
        while settled < self.count {
            if Instant::now() > deadline {
                // What the stuck ones are doing: the line a bug report needs.
                for (i, c) in conns
                    .iter()
                    .filter(|c| matches!(c.phase, Phase::Connecting | Phase::Exchanging))
                    .take(4)
                    .enumerate()
                {
                    log::warn!(
                        "stuck {i}: {:?}, sent {} got {}, ready {:?}, {} -> {}: {}",
                        c.phase,
                        c.sent,
                        c.got,
                        c.s.ready_now(),
                        c.s.local_addr(),
                        c.s.peer_addr(),
                        c.s.describe()
                    );
                }
                log::warn!("the link: {}", rt.describe_link());
                return Err(Fail::msg(format!(
                    "timed out after {:?} with {settled} of {} connections done",
                    self.timeout, self.count
                )));
            }
            // Keep `in_flight` connects (and exchanges) under way.
            while opened < self.count && opened - settled < in_flight {
                match Stream::connect_start(&rt, addr, opts) {
                    Ok(s) => {
                        poller.register(&s, Token(conns.len()), Interest::WRITABLE)?;
                        conns.push(Conn { s, phase: Phase::Connecting, started: Instant::now(), sent: 0, got: 0 });
                    }
                    // Refused before it started (a memory limit, say):
                    // counted as failed, the run goes on.
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("connection {opened}: {e}"));
                        settled += 1;
                    }
                }
                opened += 1;
            }
            poller.poll(&mut events, Some(Duration::from_millis(100)))?;
            for e in events.iter() {
                let i = e.token().0;
                let c = &mut conns[i];
                if c.phase == Phase::Connecting {
                    match c.s.poll_connect() {
                        Ok(false) => continue,
                        Ok(true) => {
                            connect_times.record(c.started.elapsed());
                            c.phase = Phase::Exchanging;
                        }
                        Err(err) => {
                            fail(c, err, &mut first_error);
                            poller.deregister(Token(i))?;
                            settled += 1;
                            continue;
                        }
                    }
                }
                if c.phase != Phase::Exchanging {
                    continue;
                }
                let mut broke = None;
                while c.sent < self.bytes {
                    match c.s.try_send(&data[c.sent..]) {
                        Ok(n) => c.sent += n,
                        Err(Error::WouldBlock) => break,
                        Err(err) => {
                            broke = Some(err);
                            break;
                        }
                    }
                }
                if c.sent == self.bytes && broke.is_none() && c.got < self.bytes {
                    loop {
                        match c.s.try_recv(&mut buf) {
                            Ok(0) => {
                                broke = Some(Error::Protocol("the echo server closed early".into()));
                                break;
                            }
                            Ok(n) => {
                                if buf[..n].iter().enumerate().any(|(k, &b)| b != ((c.got + k) % 251) as u8) {
                                    broke = Some(Error::Protocol("the echo came back different".into()));
                                }
                                c.got += n;
                            }
                            Err(Error::WouldBlock) => break,
                            Err(err) => {
                                broke = Some(err);
                                break;
                            }
                        }
                    }
                }
                if let Some(err) = broke {
                    fail(c, err, &mut first_error);
                    poller.deregister(Token(i))?;
                    settled += 1;
                } else if c.got >= self.bytes {
                    c.phase = Phase::Done;
                    done_times.record(c.started.elapsed());
                    poller.deregister(Token(i))?;
                    settled += 1;
                } else {
                    let want = if c.sent < self.bytes { Interest::WRITABLE } else { Interest::READABLE };
                    poller.reregister(Token(i), want)?;
                }
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        let ok = conns.iter().filter(|c| c.phase == Phase::Done).count();
        // Frames lost and sent again on the way (RUST_LOG=xsock::conns=debug).
        log::debug!("the link: {}", rt.describe_link());
        // Idle, open: what they cost now (the line lets a harness read the
        // peer's memory meanwhile).
        if self.hold > Duration::ZERO {
            log::info!("idle: holding {ok} connections for {:?}", self.hold);
        }
        let hold_until = Instant::now() + self.hold;
        while Instant::now() < hold_until {
            rt.poll()?;
            rt.idle(Some(Duration::from_millis(20)))?;
        }
        let (rss_kib, rss_peak_kib) = xsock_testbed::rss_kib(std::process::id());
        if self.hold > Duration::ZERO {
            log::info!("held {ok} idle connections: RSS {rss_kib} KiB");
        }
        let transport = conns
            .iter()
            .find(|c| c.phase == Phase::Done)
            .map_or("none", |c| self.rt.transport_name(c.s.path()))
            .to_owned();
        for c in conns.drain(..) {
            if c.phase == Phase::Done {
                let _ = c.s.close(Duration::from_secs(5));
            }
        }
        let lat = connect_times.summary(&transport, 0);
        let done = done_times.summary(&transport, 0);
        let r = ConnsResult {
            transport,
            count: self.count,
            ok,
            failed: self.count - ok,
            bytes: self.bytes,
            seconds,
            gbit_per_s: (2 * self.bytes * ok) as f64 * 8.0 / seconds / 1e9,
            connect_p50_ns: lat.rtt_p50_ns,
            connect_p99_ns: lat.rtt_p99_ns,
            connect_max_ns: lat.rtt_max_ns,
            done_p50_ns: done.rtt_p50_ns,
            done_p99_ns: done.rtt_p99_ns,
            done_max_ns: done.rtt_max_ns,
            rss_kib,
            rss_peak_kib,
            first_error,
        };
        if self.json {
            println!("{}", serde_json::to_string(&r).expect("serialisable"));
        } else {
            println!(
                "{} of {} connections over {} exchanged {} B each way in {:.2} s ({:.2} Gbit/s); connect p50 {:.2} ms, \
                 p99 {:.2} ms; RSS {} KiB",
                r.ok,
                r.count,
                r.transport,
                r.bytes,
                r.seconds,
                r.gbit_per_s,
                r.connect_p50_ns as f64 / 1e6,
                r.connect_p99_ns as f64 / 1e6,
                r.rss_kib
            );
        }
        if r.failed > 0 {
            return Err(Fail::msg(format!(
                "{} of {} connections failed; the first: {}",
                r.failed,
                r.count,
                r.first_error.as_deref().unwrap_or("?")
            )));
        }
        Ok(())
    }
}
