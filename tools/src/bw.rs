//! `xsock bw`: one-way bulk throughput over the socket API, on one or more
//! streams, reliable-link or kernel TCP.
//!
//! Both ends run a single-threaded loop over non-blocking calls, driving the
//! runtime inline (no thread per stream spinning on a 2-core machine). The
//! receiver counts bytes from each stream's first byte to its end and, when
//! the sender half-closes, answers with 24 bytes — bytes received,
//! nanoseconds, and bytes that were not what the sender sent — so the rate
//! printed is the one the receiver saw, and the stream is checked byte for
//! byte: the sender sends a pattern fixed by position in the stream (byte i
//! is i mod 251), which the receiver compares against as it counts.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use clap::Args;
use serde::Serialize;
use std::collections::HashMap;

use xsock::{ConnectOptions, Driving, Error, Events, Interest, Mode, Poller, Runtime, Stream, Token};

use crate::{
    args::{Poll, RuntimeArgs, parse_duration},
    fail::Fail,
    overlay::{Accepting, Dest, JoinArgs},
};
use xsock::overlay::Node;

/// Flags of `xsock bw`.
#[derive(Debug, Args)]
pub struct Bw {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Receive and report (runs until killed).
    #[arg(long, conflicts_with = "connect")]
    listen: Option<SocketAddrV4>,
    /// Send to the receiver at this address.
    #[arg(long, required_unless_present = "listen")]
    connect: Option<String>,
    #[command(flatten)]
    join: JoinArgs,
    /// Bytes per send call.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// How long to send.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    seconds: Duration,
    /// Parallel streams.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Busy-poll (default) or sleep while waiting.
    #[arg(long, value_enum, default_value = "busy")]
    poll: Poll,
    /// Print one JSON object on stdout instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Write goodput over time to this CSV file: every 100 ms, per stream,
    /// the bytes the peer has acknowledged (TCP mode) or the bytes sent.
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
}

/// The `bw` JSON fields of CLI.md.
#[derive(Debug, Serialize)]
struct BwResult {
    transport: String,
    size: usize,
    seconds: f64,
    streams: usize,
    bytes: u64,
    gbit_per_s: f64,
    msgs_per_s: f64,
    /// Bytes the receiver found different from what was sent (always 0
    /// unless something is broken; then the command fails).
    corrupt_bytes: u64,
    /// TCP mode: data segments sent again, over all streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    retransmits: Option<u64>,
    /// TCP mode: data segments sent, over all streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    segments: Option<u64>,
    /// Bytes each stream delivered (the receiver's count), to show the spread.
    per_stream_bytes: Vec<u64>,
}

/// The largest `--size` (one send call's bytes, allocated once).
const MAX_SIZE: usize = 1 << 30;
/// The most `--streams`.
const MAX_STREAMS: usize = 100_000;

/// Period of the stream's byte pattern (a prime, so it never lines up with
/// buffer or frame sizes).
const PERIOD: usize = 251;

/// `len + PERIOD` bytes of the pattern: any window of it at offset
/// `pos % PERIOD` is the pattern at stream position `pos`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

/// Bytes of `got` (received at stream position `pos`) that differ from the
/// pattern.
fn corrupt_bytes(pattern: &[u8], pos: u64, got: &[u8]) -> u64 {
    let mut bad = 0;
    for (k, chunk) in got.chunks(pattern.len() - PERIOD).enumerate() {
        let at = pos as usize + k * (pattern.len() - PERIOD);
        let expect = &pattern[at % PERIOD..at % PERIOD + chunk.len()];
        if expect != chunk {
            bad += expect.iter().zip(chunk).filter(|(a, b)| a != b).count() as u64;
        }
    }
    bad
}

struct Incoming {
    s: Stream,
    bytes: u64,
    corrupt: u64,
    first: Option<Instant>,
}

fn serve(rt: &Runtime, addr: SocketAddrV4, transport: xsock::Transport, node: Option<Node>) -> Result<(), Fail> {
    let l = Accepting::bind(rt, addr, transport, node.as_ref())?;
    log::info!("bw receiver on {l}");
    let mut buf = vec![0u8; 1 << 20];
    let expect = pattern(buf.len());
    // One poller for the listener and every stream: kernel sockets and
    // xsock streams wake it alike, whether the loop busy-polls or sleeps.
    let mut poller = Poller::new(rt)?;
    const LISTENER: Token = Token(usize::MAX);
    if let Some(pl) = l.plain() {
        poller.register_listener(pl, LISTENER)?;
    }
    let mut conns: HashMap<usize, Incoming> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    loop {
        // An overlay listener has no poller registration: look every 10 ms.
        let wait = if l.plain().is_none() { Some(Duration::from_millis(10)) } else { None };
        poller.poll(&mut events, wait)?;
        loop {
            match l.try_accept() {
                Ok(s) => {
                    log::info!("receiving from {} over {:?}", s.peer_addr(), s.path());
                    poller.register(&s, Token(next), Interest::READABLE)?;
                    conns.insert(next, Incoming { s, bytes: 0, corrupt: 0, first: None });
                    next += 1;
                }
                Err(Error::WouldBlock) => break,
                Err(e) => {
                    log::warn!("accept: {e}");
                    break;
                }
            }
        }
        for e in events.iter() {
            let t = e.token();
            if t == LISTENER {
                continue;
            }
            let Some(c) = conns.get_mut(&t.0) else { continue };
            let done = loop {
                match c.s.try_recv(&mut buf) {
                    Ok(0) => {
                        let nanos = c.first.map_or(0, |f| f.elapsed().as_nanos() as u64);
                        let mut report = [0u8; 24];
                        report[..8].copy_from_slice(&c.bytes.to_le_bytes());
                        report[8..16].copy_from_slice(&nanos.to_le_bytes());
                        report[16..].copy_from_slice(&c.corrupt.to_le_bytes());
                        if c.corrupt > 0 {
                            log::error!("{} corrupt bytes from {}", c.corrupt, c.s.peer_addr());
                        }
                        if let Err(e) = c.s.send(&report).and_then(|()| c.s.shutdown_write()) {
                            log::warn!("report to {}: {e}", c.s.peer_addr());
                        }
                        break true;
                    }
                    Ok(n) => {
                        c.first.get_or_insert_with(Instant::now);
                        c.corrupt += corrupt_bytes(&expect, c.bytes, &buf[..n]);
                        c.bytes += n as u64;
                    }
                    Err(Error::WouldBlock) => break false,
                    Err(e) => {
                        log::warn!("stream from {} ended: {e}", c.s.peer_addr());
                        break true;
                    }
                }
            };
            if done {
                poller.deregister(t)?;
                conns.remove(&t.0);
                // What the interface lost before xsock saw it (a full ring
                // while the loop slept) is loss the sender has to repair.
                log::debug!("interface counters after a stream: {:?}", rt.queue_stats());
            }
        }
    }
}

impl Bw {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        // The TCP mode keeps every receive buffer posted (its loss recovery
        // is slow, and a burst finding the fill ring empty costs it dearly);
        // reliable-link lets the fill depth adapt (a shallow ring keeps the
        // buffers the kernel writes into warm; it deepens on a drop).
        let mut rt_args = self.rt.clone();
        rt_args.deep_fill |= self.rt.transport() == xsock::Transport::Tcp;
        let rt = rt_args.build(Driving::Inline, self.poll.into())?;
        let node = if self.join.wanted() { Some(self.join.join(&rt)?) } else { None };
        if let Some(addr) = self.listen {
            return serve(&rt, addr, self.rt.transport(), node);
        }
        let addr =
            Dest::parse(self.connect.as_deref().expect("clap requires --connect without --listen"), node.is_some())?;
        if self.size == 0 || self.streams == 0 {
            return Err(Fail::msg("--size and --streams must be at least 1"));
        }
        if self.size > MAX_SIZE {
            return Err(Fail::msg(format!(
                "--size {} is over the {MAX_SIZE}-byte (1 GiB) most one send call may be",
                self.size
            )));
        }
        if self.streams > MAX_STREAMS {
            return Err(Fail::msg(format!("--streams {} is over {MAX_STREAMS}", self.streams)));
        }
        let opts =
            ConnectOptions { transport: self.rt.transport(), mode: Mode::Stream, timeout: Duration::from_secs(10) };
        let mut streams = Vec::with_capacity(self.streams);
        for _ in 0..self.streams {
            streams.push(addr.connect(&rt, node.as_ref(), opts).map_err(|e| match e {
                Error::ConnectionRefused(_) => {
                    Fail::msg(format!("connection refused by {addr}: nothing listens there; start `xsock bw --listen {addr}` on the peer first"))
                }
                e => Fail::from(e),
            })?);
        }
        let transport = self.rt.transport_name(streams[0].path()).to_owned();
        let pat = pattern(self.size);
        // Per stream: bytes sent, and how far into the current send call.
        let mut sent = vec![0u64; self.streams];
        let mut in_call = vec![0usize; self.streams];
        let window = |pos: u64, from: usize| {
            let at = (pos % PERIOD as u64) as usize;
            &pat[at..at + self.size - from]
        };
        let mut poller = Poller::new(&rt)?;
        for (i, s) in streams.iter().enumerate() {
            poller.register(s, Token(i), Interest::WRITABLE)?;
        }
        let mut events = Events::with_capacity(streams.len());
        let start = Instant::now();
        let end = start + self.seconds;
        let mut timeline: Vec<(f64, usize, u64)> = Vec::new();
        let mut next_sample = start;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if self.timeline.is_some() && now >= next_sample {
                let t = start.elapsed().as_secs_f64();
                for (i, (s, pos)) in streams.iter().zip(&sent).enumerate() {
                    timeline.push((t, i, s.tcp_stats().map_or(*pos, |st| st.acked_bytes)));
                }
                next_sample += Duration::from_millis(100);
            }
            let wake = if self.timeline.is_some() { end.min(next_sample) } else { end };
            poller.poll(&mut events, Some(wake.saturating_duration_since(now)))?;
            for e in events.iter() {
                let i = e.token().0;
                let (s, pos, from) = (&mut streams[i], &mut sent[i], &mut in_call[i]);
                loop {
                    match s.try_send(window(*pos, *from)) {
                        Ok(n) => {
                            *pos += n as u64;
                            *from = (*from + n) % self.size;
                        }
                        Err(Error::WouldBlock) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        for i in 0..streams.len() {
            poller.deregister(Token(i))?;
        }
        // Finish the send call in progress, end each stream, collect reports.
        let tcp: Vec<xsock::TcpStats> = streams.iter().filter_map(|s| s.tcp_stats()).collect();
        if let Some(path) = &self.timeline {
            // Written before the streams drain: a path that collapsed may take
            // long to deliver the rest, and what was acknowledged within
            // --seconds is the figure that compares with other senders.
            write_timeline(path, &timeline, &tcp, start.elapsed().as_secs_f64())?;
        }
        let (mut bytes, mut nanos, mut corrupt) = (0u64, 0u64, 0u64);
        let mut per_stream_bytes = Vec::new();
        for ((s, pos), from) in streams.iter_mut().zip(&sent).zip(&in_call) {
            if *from > 0 {
                s.send(window(*pos, *from))?;
            }
            s.shutdown_write()?;
        }
        for s in &mut streams {
            let mut report = [0u8; 24];
            let mut got = 0;
            while got < 24 {
                match s.recv(&mut report[got..])? {
                    0 => return Err(Fail::msg("the receiver closed without reporting")),
                    n => got += n,
                }
            }
            let b = u64::from_le_bytes(report[..8].try_into().expect("8"));
            per_stream_bytes.push(b);
            bytes += b;
            nanos = nanos.max(u64::from_le_bytes(report[8..16].try_into().expect("8")));
            corrupt += u64::from_le_bytes(report[16..].try_into().expect("8"));
        }
        let secs = (nanos as f64 / 1e9).max(1e-9);
        let r = BwResult {
            transport,
            size: self.size,
            seconds: secs,
            streams: self.streams,
            bytes,
            gbit_per_s: bytes as f64 * 8.0 / secs / 1e9,
            msgs_per_s: bytes as f64 / self.size as f64 / secs,
            corrupt_bytes: corrupt,
            retransmits: (!tcp.is_empty()).then(|| tcp.iter().map(|t| t.retransmits).sum()),
            segments: (!tcp.is_empty()).then(|| tcp.iter().map(|t| t.segments_sent).sum()),
            per_stream_bytes,
        };
        if corrupt > 0 {
            return Err(Fail::msg(format!("{corrupt} of {bytes} bytes arrived corrupted")));
        }
        if self.json {
            println!("{}", serde_json::to_string(&r).expect("serialisable"));
        } else {
            println!(
                "bw over {} to {addr}: {} stream(s) of {}-byte sends: {:.2} Gbit/s ({} bytes in {:.2} s, receiver's count)",
                r.transport, r.streams, r.size, r.gbit_per_s, r.bytes, r.seconds
            );
        }
        Ok(())
    }
}

/// The goodput timeline (CSV) and, beside it, what the
/// sender knew when it stopped sending (`PATH.sender.json`): per stream, bytes acknowledged,
/// segments and retransmissions (TCP mode).
fn write_timeline(
    path: &std::path::Path,
    timeline: &[(f64, usize, u64)],
    tcp: &[xsock::TcpStats],
    seconds: f64,
) -> Result<(), Fail> {
    let mut csv = String::from("t_s,stream,bytes\n");
    for (t, i, b) in timeline {
        csv.push_str(&format!("{t:.3},{i},{b}\n"));
    }
    std::fs::write(path, csv).map_err(|e| Fail::msg(format!("writing {}: {e}", path.display())))?;
    let summary = serde_json::json!({
        "seconds": seconds,
        "acked_bytes": tcp.iter().map(|t| t.acked_bytes).collect::<Vec<_>>(),
        "segments": tcp.iter().map(|t| t.segments_sent).sum::<u64>(),
        "retransmits": tcp.iter().map(|t| t.retransmits).sum::<u64>(),
    });
    let side = std::path::PathBuf::from(format!("{}.sender.json", path.display()));
    std::fs::write(&side, summary.to_string()).map_err(|e| Fail::msg(format!("writing {}: {e}", side.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_checks_any_window_at_any_position() {
        let p = pattern(1000);
        let stream: Vec<u8> = (0..5000usize).map(|i| (i % PERIOD) as u8).collect();
        for (pos, len) in [(0usize, 1000usize), (17, 999), (250, 1), (3000, 2000)] {
            assert_eq!(corrupt_bytes(&p, pos as u64, &stream[pos..pos + len]), 0);
        }
        let mut bad = stream[100..700].to_vec();
        bad[5] ^= 1;
        bad[599] ^= 0x80;
        assert_eq!(corrupt_bytes(&p, 100, &bad), 2);
    }
}
