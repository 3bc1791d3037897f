//! `xsock ping`: message ping-pong over a transport, timed round trip by
//! round trip. This stage has the kernel TCP transport — the yardstick the
//! raw datapath and later the reliable-link transport are compared with.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};

use crate::{args::Poll, fail::Fail, latency::Latencies};

/// Transports `ping` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// The kernel's own TCP socket.
    Kernel,
}

/// Flags of `xsock ping`.
#[derive(Debug, Args)]
pub struct Ping {
    /// Interface xsock drives (not used by the kernel transport).
    #[arg(long)]
    iface: Option<String>,
    /// Serve echoes on this address (runs until killed).
    #[arg(long, conflicts_with = "connect")]
    listen: Option<SocketAddr>,
    /// Ping the echo server at this address.
    #[arg(long, required_unless_present = "listen")]
    connect: Option<SocketAddr>,
    /// Transport.
    #[arg(long, value_enum, default_value = "kernel")]
    transport: Transport,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Round trips to measure.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Busy-poll (non-blocking sockets, spinning) or sleep in the kernel.
    #[arg(long, value_enum, default_value = "busy")]
    poll: Poll,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Reads exactly `buf.len()` bytes, spinning on a non-blocking socket or
/// blocking, as configured. Ok(false) on a clean end of stream.
fn read_full(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "peer closed mid-message",
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock && spin => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_full(s: &mut TcpStream, mut buf: &[u8], spin: bool) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock && spin => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn configure(s: &TcpStream, spin: bool) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_nonblocking(spin)
}

fn serve(listen: SocketAddr, spin: bool) -> Result<(), Fail> {
    let l = TcpListener::bind(listen)
        .map_err(|e| Fail::msg(format!("cannot listen on {listen}: {e}")))?;
    log::info!("ping echo (kernel TCP) on {listen}");
    for conn in l.incoming() {
        let mut s = conn?;
        std::thread::spawn(move || {
            let mut run = || -> io::Result<()> {
                configure(&s, spin)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    // Echo whatever arrives, as it arrives.
                    let n = match s.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock && spin => {
                            std::hint::spin_loop();
                            continue;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    write_full(&mut s, &buf[..n], spin)?;
                }
            };
            if let Err(e) = run() {
                log::warn!("echo connection ended: {e}");
            }
        });
    }
    Ok(())
}

impl Ping {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        let spin = self.poll == Poll::Busy;
        let _ = &self.iface;
        if let Some(listen) = self.listen {
            return serve(listen, spin);
        }
        let addr = self
            .connect
            .expect("clap requires --connect without --listen");
        if self.size == 0 {
            return Err(Fail::msg("--size must be at least 1 byte"));
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
            Fail::msg(format!(
                "cannot connect to {addr}: {e} (is `xsock ping --listen {addr}` running?)"
            ))
        })?;
        configure(&s, spin)?;
        let msg: Vec<u8> = (0..self.size).map(|i| i as u8).collect();
        let mut back = vec![0u8; self.size];
        let mut lat = Latencies::new();
        for i in 0..self.warmup + self.count {
            let t = Instant::now();
            write_full(&mut s, &msg, spin)?;
            if !read_full(&mut s, &mut back, spin)? {
                return Err(Fail::msg(format!("{addr} closed the connection")));
            }
            let rtt = t.elapsed();
            if back != msg {
                return Err(Fail::msg("echo came back corrupted"));
            }
            if i >= self.warmup {
                lat.record(rtt);
            }
        }
        let summary = lat.summary("kernel", self.size);
        if self.json {
            println!("{}", serde_json::to_string(&summary).expect("serialisable"));
        } else {
            println!(
                "ping kernel TCP → {addr}: {} round trips after {} warm-up",
                summary.count, self.warmup
            );
            println!("{}", summary.table());
        }
        Ok(())
    }
}
