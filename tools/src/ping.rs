//! `xsock ping`: message ping-pong over the socket API — reliable-link or
//! kernel TCP, same code — timed round trip by round trip.
//!
//! The protocol is a plain byte-stream echo (the client sends `size` bytes
//! and reads `size` back; the server echoes whatever arrives), so the
//! kernel-TCP figures carry no framing of ours. Both ends drive the runtime
//! inline and busy-poll by default: one core each.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use clap::Args;
use serde::Serialize;
use xsock::{ConnectOptions, Driving, Error, ListenOptions, Listener, Mode, Path, Runtime, Stream};

use crate::{
    args::{Poll, RuntimeArgs},
    fail::Fail,
    latency::{Latencies, Summary},
    overlay::{Dest, JoinArgs},
};
use xsock::overlay::Node;

/// Flags of `xsock ping`.
#[derive(Debug, Args)]
pub struct Ping {
    #[command(flatten)]
    rt: RuntimeArgs,
    #[command(flatten)]
    join: JoinArgs,
    /// Serve echoes on this address (runs until killed).
    #[arg(long, conflicts_with = "connect")]
    listen: Option<SocketAddrV4>,
    /// Ping the echo server at this address (IP:PORT), or the node NAME:PORT
    /// of the overlay with --boot.
    #[arg(long, required_unless_present = "listen")]
    connect: Option<String>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Round trips to measure (per size with --sweep, scaled down for large ones).
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Measure every power of two from 1 B to --max-size instead of one size.
    #[arg(long)]
    sweep: bool,
    /// Largest size of a sweep.
    #[arg(long, default_value_t = 1 << 20)]
    max_size: usize,
    /// Busy-poll (default) or sleep while waiting.
    #[arg(long, value_enum, default_value = "busy")]
    poll: Poll,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// The JSON of a sweep.
#[derive(Debug, Serialize)]
struct Sweep {
    transport: String,
    sweep: Vec<Summary>,
}

fn serve(rt: &Runtime, addr: SocketAddrV4, transport: xsock::Transport, node: Option<Node>) -> Result<(), Fail> {
    if let Some(node) = node {
        let l = node.listen(addr.port())?;
        log::info!("ping echo on the overlay as {}:{} ({})", node.name(), addr.port(), node.id());
        loop {
            let (s, from) = l.accept()?;
            log::info!("echoing for node {from} (via {})", s.peer_addr());
            echo(s);
        }
    }
    let l = Listener::bind_with(rt, addr, ListenOptions { transport, mode: Mode::Stream })?;
    log::info!(
        "ping echo on {} (link: {}, kernel: {})",
        l.local_addr(),
        rt.has_link(),
        transport != xsock::Transport::Link
    );
    loop {
        let s = l.accept()?;
        log::info!("echoing for {} over {:?}", s.peer_addr(), s.path());
        echo(s);
    }
}

/// Echoes until the peer ends the stream.
fn echo(mut s: Stream) {
    let mut buf = vec![0u8; 1 << 20];
    {
        loop {
            match s.recv(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = s.send(&buf[..n]) {
                        log::warn!("echo to {} ended: {e}", s.peer_addr());
                        break;
                    }
                }
                Err(e) => {
                    log::warn!("echo from {} ended: {e}", s.peer_addr());
                    break;
                }
            }
        }
    }
}

/// Messages up to this size go out with one blocking send before the echo
/// is read (they fit the buffers of both ends, so nobody waits on anybody);
/// larger ones are written and read at once, or a message longer than the
/// buffers of both ends together would deadlock: the echo cannot come back
/// while we still write, nor can we finish writing while it does not.
const WRITE_THEN_READ: usize = 64 << 10;

/// The largest `--size` (two buffers of it are allocated).
const MAX_SIZE: usize = 1 << 30;

/// Round trips of `size` bytes: `warmup` unmeasured, then `count` measured.
fn measure(rt: &Runtime, s: &mut Stream, size: usize, warmup: u64, count: u64) -> Result<Latencies, Fail> {
    let mut msg = Vec::new();
    let mut back = Vec::new();
    if msg.try_reserve_exact(size).is_err() || back.try_reserve_exact(size).is_err() {
        return Err(Fail::msg(format!(
            "--size {size}: cannot allocate the two {size}-byte buffers a round trip needs"
        )));
    }
    msg.extend((0..size).map(|i| (i * 7 + size) as u8));
    back.resize(size, 0);
    let mut lat = Latencies::new();
    for i in 0..warmup + count {
        let t = Instant::now();
        if size <= WRITE_THEN_READ {
            s.send(&msg)?;
            let mut got = 0;
            while got < size {
                let n = s.recv(&mut back[got..])?;
                if n == 0 {
                    return Err(Error::Closed.into());
                }
                got += n;
            }
        } else {
            write_and_read(rt, s, &msg, &mut back)?;
        }
        let rtt = t.elapsed();
        if back != msg {
            return Err(Fail::msg(format!("the echo of a {size}-byte message came back different")));
        }
        if i >= warmup {
            lat.record(rtt);
        }
    }
    Ok(lat)
}

/// Writes `msg` and reads its echo into `back` at the same time.
fn write_and_read(rt: &Runtime, s: &mut Stream, msg: &[u8], back: &mut [u8]) -> Result<(), Error> {
    let (mut sent, mut got) = (0, 0);
    while got < back.len() {
        let mut moved = false;
        if sent < msg.len() {
            match s.try_send(&msg[sent..]) {
                Ok(n) => {
                    sent += n;
                    moved |= n > 0;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        }
        match s.try_recv(&mut back[got..]) {
            Ok(0) => return Err(Error::Closed),
            Ok(n) => {
                got += n;
                moved = true;
            }
            Err(Error::WouldBlock) => {}
            Err(e) => return Err(e),
        }
        if !moved && rt.poll()? == 0 {
            rt.idle(Some(Duration::from_millis(1)))?;
        }
    }
    Ok(())
}

/// Round trips to measure at `size` in a sweep: fewer for large messages,
/// at least 50.
fn sweep_count(count: u64, size: usize) -> u64 {
    (count * 1024 / size.max(1024) as u64).max(50).min(count)
}

impl Ping {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        let rt = self.rt.build(Driving::Inline, self.poll.into())?;
        let node = if self.join.wanted() { Some(self.join.join(&rt)?) } else { None };
        if let Some(addr) = self.listen {
            return serve(&rt, addr, self.rt.transport(), node);
        }
        let addr =
            Dest::parse(self.connect.as_deref().expect("clap requires --connect without --listen"), node.is_some())?;
        if self.size == 0 || (self.sweep && self.max_size == 0) {
            return Err(Fail::msg("--size and --max-size must be at least 1 byte"));
        }
        if self.size.max(if self.sweep { self.max_size } else { 0 }) > MAX_SIZE {
            return Err(Fail::msg(format!(
                "--size and --max-size are at most {MAX_SIZE} bytes (1 GiB): a round trip holds two buffers of it"
            )));
        }
        if self.count == 0 {
            return Err(Fail::msg("--count must be at least 1: nothing would be measured"));
        }
        let opts =
            ConnectOptions { transport: self.rt.transport(), mode: Mode::Stream, timeout: Duration::from_secs(10) };
        let mut s = addr.connect(&rt, node.as_ref(), opts).map_err(|e| match e {
            Error::ConnectionRefused(_) => {
                Fail::msg(format!("connection refused by {addr}: nothing listens there; start `xsock ping --listen {addr}` on the peer first"))
            }
            e => Fail::from(e),
        })?;
        let transport = match node {
            Some(_) => format!("overlay-{}", self.rt.transport_name(s.path())),
            None => self.rt.transport_name(s.path()).to_owned(),
        };
        if s.path() == Path::Kernel && self.rt.transport.is_none() && self.rt.iface.is_some() {
            log::info!("{addr} is not an xsock peer on this segment: measuring kernel TCP");
        }
        let sizes: Vec<usize> = if self.sweep {
            std::iter::successors(Some(1usize), |&s| (s < self.max_size).then_some((s * 2).min(self.max_size)))
                .collect()
        } else {
            vec![self.size]
        };
        let mut results = Vec::new();
        for &size in &sizes {
            let (count, warmup) = if self.sweep {
                (sweep_count(self.count, size), sweep_count(self.warmup, size))
            } else {
                (self.count, self.warmup)
            };
            let lat = measure(&rt, &mut s, size, warmup, count)?;
            results.push(lat.summary(&transport, size));
        }
        s.shutdown_write()?;
        if self.json {
            if self.sweep {
                println!("{}", serde_json::to_string(&Sweep { transport, sweep: results }).expect("serialisable"));
            } else {
                println!("{}", serde_json::to_string(&results[0]).expect("serialisable"));
            }
        } else {
            println!("ping over {transport} to {addr}:");
            for (i, r) in results.iter().enumerate() {
                let t = r.table();
                let mut lines = t.lines();
                let header = lines.next().unwrap_or_default();
                if i == 0 {
                    println!("{header}");
                }
                for l in lines {
                    println!("{l}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_counts_shrink_with_size_but_not_below_50() {
        assert_eq!(sweep_count(10_000, 1), 10_000);
        assert_eq!(sweep_count(10_000, 64 << 10), 156);
        assert_eq!(sweep_count(10_000, 1 << 20), 50);
        assert_eq!(sweep_count(20, 1), 20);
    }
}
