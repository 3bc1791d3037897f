//! `xsock send FILE`: sends a file to `xsock recv` over parallel streams
//! (the TCP mode by default, paced as `--pace` says). The file is mapped;
//! its chunks go out of the map to whichever stream has room next, so fast
//! streams carry more; each chunk travels with its SHA-256, and the whole
//! file's SHA-256 is compared with the receiver's at the end. Chunks the
//! receiver already holds (an earlier, interrupted run) are not sent again.
//! With `--boot/--name/--key-file` the sender joins the overlay and
//! `--connect NAME:PORT` is a receiver in another LAN, through the relays.

use std::{
    collections::VecDeque,
    fs::File,
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant, UNIX_EPOCH},
};

use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};
use xsock::{ConnectOptions, Driving, Error, Mode, Runtime, Stream};
use xsock_nic::filemap::ReadMap;

use super::{
    default_transport,
    hasher::{Hasher, Job},
    hex, human,
    wire::{self, Hello, Msg},
};
use crate::{
    args::{Poll, RuntimeArgs},
    fail::Fail,
    overlay::{Dest, JoinArgs},
    wanemu::parse_bytes,
};

/// Flags of `xsock send`.
#[derive(Debug, Args)]
pub struct Send {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// The receiver (`xsock recv --listen` there): IP:PORT, or NAME:PORT on
    /// the overlay (with --boot).
    #[arg(long)]
    connect: String,
    #[command(flatten)]
    join: JoinArgs,
    /// The file to send.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Parallel streams.
    #[arg(long, default_value_t = 4)]
    streams: u16,
    /// Chunk size (the unit of striping, checking and resuming).
    #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
    chunk: u64,
    /// Name on the receiver (default: the file's own name).
    #[arg(long)]
    save_as: Option<String>,
    /// Busy-poll, or sleep (default) while waiting.
    #[arg(long, value_enum, default_value = "sleep")]
    poll: Poll,
    /// Print one JSON object on stdout when done.
    #[arg(long)]
    json: bool,
    /// Show progress on stderr even when it is not a terminal (one line per second).
    #[arg(long)]
    progress: bool,
}

/// `xsock send --json`.
#[derive(Debug, Serialize)]
struct SendResult {
    file: String,
    bytes: u64,
    sent_bytes: u64,
    resumed_chunks: usize,
    chunks: usize,
    streams: u16,
    seconds: f64,
    gbit_per_s: f64,
    sha256: String,
    retransmits: Option<u64>,
}

/// One stream's outgoing work.
struct Lane {
    s: Stream,
    out: Vec<u8>,
    data: Option<std::ops::Range<usize>>,
}

/// How long the receiver may take to answer (it re-checks resumed chunks).
const ANSWER_WAIT: Duration = Duration::from_secs(120);

impl Send {
    /// Runs the transfer.
    pub fn run(self) -> Result<(), Fail> {
        let path = &self.file;
        let file = File::open(path).map_err(|e| Fail::msg(format!("{}: {e}", path.display())))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(Fail::msg(format!("{} is not a regular file", path.display())));
        }
        let name = match &self.save_as {
            Some(n) => n.clone(),
            None => path.file_name().and_then(|n| n.to_str()).map(str::to_owned).unwrap_or_default(),
        };
        if !wire::valid_name(&name) {
            return Err(Fail::msg(format!("{name:?} is not a plain file name; give one with --save-as")));
        }
        let chunk_size = u32::try_from(self.chunk)
            .ok()
            .filter(|c| (wire::MIN_CHUNK..=wire::MAX_CHUNK).contains(c))
            .ok_or_else(|| Fail::msg("--chunk must be between 4KiB and 1GiB"))?;
        if self.streams == 0 || self.streams > wire::MAX_STREAMS {
            return Err(Fail::msg(format!("--streams must be 1 to {}", wire::MAX_STREAMS)));
        }
        let size = meta.len();
        let map = std::sync::Arc::new(ReadMap::new(&file)?);
        map.advise_sequential();
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
        let mut id = Sha256::new();
        id.update(name.as_bytes());
        id.update(size.to_le_bytes());
        id.update(mtime.as_nanos().to_le_bytes());
        let file_id = u64::from_le_bytes(id.finalize()[..8].try_into().expect("8"));

        let rt_args = default_transport(&self.rt, self.join.wanted());
        let rt = rt_args.build(Driving::Inline, self.poll.into())?;
        let node = if self.join.wanted() { Some(self.join.join(&rt)?) } else { None };
        let addr = Dest::parse(&self.connect, node.is_some())?;
        let opts =
            ConnectOptions { transport: rt_args.transport(), mode: Mode::Stream, timeout: Duration::from_secs(10) };
        let mut lanes = Vec::new();
        for _ in 0..self.streams {
            let s = addr.connect(&rt, node.as_ref(), opts).map_err(|e| match e {
                Error::ConnectionRefused(_) => {
                    let start = match &addr {
                        Dest::Addr(a) => format!("xsock recv --listen {a} DIR"),
                        Dest::Node(n, p) => format!("xsock recv --listen ITS-IP:{p} DIR --boot ... --name {n}"),
                    };
                    Fail::msg(format!(
                        "connection refused by {addr}: nothing receives there; start `{start}` on the peer first"
                    ))
                }
                e => Fail::from(e),
            })?;
            lanes.push(Lane { s, out: Vec::new(), data: None });
        }
        let transfer = xsock_nic::sys::random_u64()?;
        let hello =
            |stream| Hello { transfer, stream, streams: self.streams, file_id, size, chunk_size, name: name.clone() };
        let h0 = hello(0);
        let chunks = h0.chunks() as usize;
        // Stream 0 first: the receiver opens the file on it and answers.
        wire::emit(&Msg::Hello(h0), &mut lanes[0].out);
        let mut inbox = Vec::new();
        let held = match wait_answer(&rt, &mut lanes, &mut inbox, ANSWER_WAIT)? {
            Msg::Ready { held } => held,
            Msg::Refuse(why) => return Err(Fail::msg(format!("the receiver refused {name}: {why}"))),
            other => return Err(Fail::msg(format!("the receiver answered {other:?} instead of Ready"))),
        };
        for (i, lane) in lanes.iter_mut().enumerate().skip(1) {
            wire::emit(&Msg::Hello(hello(i as u16)), &mut lane.out);
        }
        let is_held = |i: usize| held.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
        let missing: Vec<usize> = (0..chunks).filter(|&i| !is_held(i)).collect();
        let resumed = chunks - missing.len();
        let to_send: u64 = missing.iter().map(|&i| chunk_range(i, chunk_size, size).len() as u64).sum();
        // Digests are computed ahead on a worker thread (the loop must keep
        // running to keep the streams moving), chunks in sending order, then
        // the whole file.
        let hasher = Hasher::new()?;
        for &i in &missing {
            hasher.submit(Job { tag: (0, Some(i as u32)), map: map.clone(), range: chunk_range(i, chunk_size, size) });
        }
        hasher.submit(Job { tag: (0, None), map: map.clone(), range: 0..map.bytes().len() });
        let mut ready: VecDeque<(usize, [u8; 32])> = VecDeque::new();
        let mut whole: Option<[u8; 32]> = None;
        let mut handed = 0;
        if resumed > 0 {
            log::info!("resuming {name}: the receiver holds {resumed} of {chunks} chunks; {} to send", human(to_send));
        }
        let mut progress = Progress::new(&name, to_send, self.progress);
        let started = Instant::now();
        let mut sent = 0u64;
        let fail = |e: Error| {
            Fail::msg(format!(
                "the transfer of {name} stopped: {e}. The receiver keeps every chunk it verified: run the same command again to resume"
            ))
        };
        loop {
            let mut work = rt.poll()?;
            while let Some(((_, index), digest)) = hasher.try_result() {
                match index {
                    Some(i) => ready.push_back((i as usize, digest)),
                    None => whole = Some(digest),
                }
            }
            for lane in &mut lanes {
                work += lane.pump(map.bytes(), &mut ready, &mut handed, chunk_size, size, &mut sent).map_err(fail)?;
            }
            // A refusal can come at any time on stream 0.
            if let Some(m) = read_message(&mut lanes[0].s, &mut inbox).map_err(fail)? {
                return Err(Fail::msg(format!("the receiver stopped {name}: {m:?}")));
            }
            progress.show(sent);
            if handed == missing.len() && lanes.iter().all(|l| l.out.is_empty() && l.data.is_none()) {
                break;
            }
            if work == 0 {
                rt.idle(Some(Duration::from_millis(50)))?;
            }
        }
        // The data streams end here; stream 0 says so once they have.
        for lane in lanes.iter_mut().skip(1) {
            lane.s.shutdown_write().map_err(fail)?;
        }
        let sha = loop {
            if let Some(d) = whole.take() {
                break d;
            }
            match hasher.try_result() {
                Some(((_, None), d)) => break d,
                _ => {
                    rt.poll()?;
                    rt.idle(Some(Duration::from_millis(5)))?;
                }
            }
        };
        wire::emit(&Msg::End { sha256: sha }, &mut lanes[0].out);
        let answer = wait_answer(&rt, &mut lanes, &mut inbox, ANSWER_WAIT).map_err(|e| {
            Fail::msg(format!("{e} (after sending all of {name}: run the same command again to have it checked)"))
        })?;
        let secs = started.elapsed().as_secs_f64();
        progress.finish(sent, secs);
        match answer {
            Msg::Done { ok: true, sha256, .. } if sha256 == sha => {}
            Msg::Done { ok: true, sha256, .. } => {
                return Err(Fail::msg(format!(
                    "the receiver's copy of {name} has SHA-256 {} but the file sent has {}",
                    hex(&sha256),
                    hex(&sha)
                )));
            }
            Msg::Done { message, .. } => {
                return Err(Fail::msg(format!("the receiver could not complete {name}: {message}")));
            }
            other => return Err(Fail::msg(format!("the receiver answered {other:?} instead of Done"))),
        }
        for q in rt.queue_stats() {
            log::debug!("datapath queue {}: {q:?}", q.queue);
        }
        let retransmits = lanes.iter().filter_map(|l| l.s.tcp_stats()).map(|t| t.retransmits).reduce(|a, b| a + b);
        let _ = lanes[0].s.shutdown_write();
        let r = SendResult {
            file: name.clone(),
            bytes: size,
            sent_bytes: sent,
            resumed_chunks: resumed,
            chunks,
            streams: self.streams,
            seconds: secs,
            gbit_per_s: sent as f64 * 8.0 / secs.max(1e-9) / 1e9,
            sha256: hex(&sha),
            retransmits,
        };
        if self.json {
            println!("{}", serde_json::to_string(&r).expect("serialisable"));
        } else {
            println!(
                "sent {name} ({}) to {addr} over {} stream(s) in {secs:.2} s, {:.3} Gbit/s; SHA-256 {} matches on both ends",
                human(size),
                self.streams,
                r.gbit_per_s,
                r.sha256
            );
        }
        for lane in lanes {
            let _ = lane.s.close(Duration::from_secs(5));
        }
        Ok(())
    }
}

fn chunk_range(i: usize, chunk_size: u32, size: u64) -> std::ops::Range<usize> {
    let start = i as u64 * u64::from(chunk_size);
    start as usize..(start + u64::from(chunk_size)).min(size) as usize
}

impl Lane {
    /// Sends what this stream has room for, taking the next chunk whose
    /// digest is ready when it is free. Returns how much it did.
    fn pump(
        &mut self,
        file: &[u8],
        ready: &mut VecDeque<(usize, [u8; 32])>,
        handed: &mut usize,
        chunk_size: u32,
        size: u64,
        sent: &mut u64,
    ) -> Result<usize, Error> {
        let mut work = 0;
        loop {
            if !self.out.is_empty() {
                let n = match self.s.try_send(&self.out) {
                    Ok(n) => n,
                    Err(Error::WouldBlock) => return Ok(work),
                    Err(e) => return Err(e),
                };
                self.out.drain(..n);
                work += 1;
                continue;
            }
            if let Some(r) = &mut self.data {
                let n = match self.s.try_send(&file[r.clone()]) {
                    Ok(n) => n,
                    Err(Error::WouldBlock) => return Ok(work),
                    Err(e) => return Err(e),
                };
                r.start += n;
                *sent += n as u64;
                if r.start == r.end {
                    self.data = None;
                }
                work += 1;
                continue;
            }
            let Some((i, digest)) = ready.pop_front() else { return Ok(work) };
            *handed += 1;
            let range = chunk_range(i, chunk_size, size);
            wire::emit(&Msg::Chunk { index: i as u32, len: range.len() as u32, digest }, &mut self.out);
            self.data = Some(range);
        }
    }
}

/// Reads whatever stream 0 has and parses one message, if complete.
fn read_message(s: &mut Stream, inbox: &mut Vec<u8>) -> Result<Option<Msg>, Error> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some((m, used)) = wire::parse(inbox).map_err(|e| Error::Config(format!("from the receiver: {e}")))? {
            inbox.drain(..used);
            return Ok(Some(m));
        }
        match s.try_recv(&mut buf) {
            Ok(0) => return Err(Error::Closed),
            Ok(n) => inbox.extend_from_slice(&buf[..n]),
            Err(Error::WouldBlock) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Sends what is queued on the streams and waits for stream 0's answer.
fn wait_answer(rt: &Runtime, lanes: &mut [Lane], inbox: &mut Vec<u8>, wait: Duration) -> Result<Msg, Fail> {
    let deadline = Instant::now() + wait;
    loop {
        let mut work = rt.poll()?;
        for lane in lanes.iter_mut().filter(|l| !l.out.is_empty()) {
            match lane.s.try_send(&lane.out) {
                Ok(n) => {
                    lane.out.drain(..n);
                    work += 1;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match read_message(&mut lanes[0].s, inbox) {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            Err(Error::Closed) => return Err(Fail::msg("the receiver closed the connection without answering")),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(Fail::msg(format!("the receiver did not answer within {wait:?}")));
        }
        if work == 0 {
            rt.idle(Some(Duration::from_millis(50)))?;
        }
    }
}

/// A progress bar on stderr (redrawn in place on a terminal; a line per
/// second with `--progress` otherwise).
struct Progress {
    name: String,
    total: u64,
    tty: bool,
    on: bool,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(name: &str, total: u64, forced: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let now = Instant::now();
        Progress { name: name.to_owned(), total, tty, on: tty || forced, start: now, last: now }
    }

    fn show(&mut self, done: u64) {
        let every = if self.tty { Duration::from_millis(200) } else { Duration::from_secs(1) };
        if !self.on || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let frac = if self.total == 0 { 1.0 } else { done as f64 / self.total as f64 };
        let rate = done as f64 * 8.0 / secs;
        let eta = if rate > 0.0 { (self.total - done.min(self.total)) as f64 * 8.0 / rate } else { f64::NAN };
        let bar: String = (0..30).map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' }).collect();
        let line = format!(
            "{} [{bar}] {:5.1}% {}/{} {:.3} Gbit/s ETA {:.0} s",
            self.name,
            frac * 100.0,
            human(done),
            human(self.total),
            rate / 1e9,
            eta
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
    }

    fn finish(&mut self, done: u64, secs: f64) {
        if self.on {
            self.last = self.start;
            self.show(done);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{}", if self.tty { format!("  done in {secs:.1} s") } else { String::new() });
        }
    }
}
