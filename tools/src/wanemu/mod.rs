//! `xsock wanemu`: a userspace long-fat-network emulator. It bridges two
//! interfaces at L2 (every frame, whatever its EtherType: ARP, IPv4, xsock's
//! own) and gives each direction a one-way delay, a bottleneck rate, a
//! drop-tail buffer in bytes and random loss ([`hop`]). This kernel has no
//! netem; run it in a namespace between two hosts.
//!
//! Hosts keep their interfaces' default offloads. A Linux host on a veth
//! leaves its TCP and UDP checksums and the cutting of its TCP segments
//! into MTU-sized frames to an offload that a veth never runs (a physical
//! NIC runs them on the way to the wire). A bridge outside the kernel would
//! pass such frames on as they are, and the far host would drop them, so
//! the emulator does what a NIC would have done before a frame enters the
//! emulated path ([`xsock_nic::offload`]): it finishes partial checksums
//! and cuts segments of up to 64 KiB into frames that fit the far
//! interface. The bottleneck, the queue and the loss then see wire-sized
//! frames, as on a real path.
//!
//! One thread drives both interfaces, in ticks: while frames flow it wakes
//! once per `--tick` (100 µs by default), takes everything that arrived,
//! and sends everything whose delivery time has come, then sleeps again.
//! Delivery times are computed exactly (the bottleneck and the delay are a
//! virtual schedule, [`hop`]), so ticking only adds up to a tick of jitter;
//! it does not change the rate, and it lets a sender, a receiver and the
//! emulator share two cores instead of the emulator spinning on one. When
//! nothing is in flight it sleeps until the first frame arrives.
//! `--tick 0` spins whenever a frame is due within [`SPIN_BELOW`].

pub mod hop;

use std::{
    os::fd::BorrowedFd,
    time::{Duration, Instant},
};

use clap::Args;
use serde::Serialize;
use xsock_nic::{
    BackendChoice, ETHERTYPE_ALL, FrameDevice, RxFrame, TxError, offload,
    sys::{self, Interest},
    xdp::AfXdpConfig,
};
use xsock_pacer::{Rate, Wait, plan_wait};

use crate::{args::parse_duration, fail::Fail};
use hop::{Hop, HopConfig, HopStats};

/// Frames taken from one interface per receive call.
const RX_BATCH: usize = 256;

/// Below this wait a sleep is not trusted to wake in time: spin instead.
pub const SPIN_BELOW: Duration = Duration::from_micros(200);

/// Flags of `xsock wanemu` (CLI.md).
#[derive(Debug, Args)]
pub struct WanEmu {
    /// First interface of the bridge.
    #[arg(long)]
    a: String,
    /// Second interface of the bridge.
    #[arg(long)]
    b: String,
    /// One-way delay, each direction (e.g. 50ms; RTT is twice this).
    #[arg(long, value_parser = parse_duration)]
    delay: Duration,
    /// Bottleneck rate, each direction (e.g. 1gbit, 500mbit).
    #[arg(long)]
    rate: Rate,
    /// Drop-tail buffer in front of the bottleneck, bytes (e.g. 4375000, 4.4MB, 512KiB).
    #[arg(long, value_parser = parse_bytes)]
    buffer: u64,
    /// Random frame loss, each direction (e.g. 0.001 or 0.1%).
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    loss: f64,
    /// Seed of the loss draws (direction b→a uses seed + 1).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// While frames flow, wake this often (0 = spin near every due frame).
    /// Adds up to a tick of delay jitter, never changes the rate.
    #[arg(long, default_value = "100us", value_parser = parse_duration)]
    tick: Duration,
    /// Print the counters to stderr this often (and always on exit).
    #[arg(long, value_parser = parse_duration)]
    report: Option<Duration>,
    /// Frame backend for both interfaces.
    #[arg(long, value_enum, default_value = "auto")]
    backend: crate::args::BackendArg,
}

/// Counters printed on exit (JSON on stdout) and with `--report`.
#[derive(Debug, Serialize)]
struct Report {
    a_to_b: HopStats,
    b_to_a: HopStats,
    /// Frames the transmit side refused outright (too large for the far interface).
    tx_errors: u64,
    /// Work done for the hosts' offloads.
    offload: Offload,
    /// Frames the kernel dropped before the emulator saw them, per port
    /// (non-zero means the emulator did not keep up, not the emulated path).
    kernel_dropped_a: u64,
    kernel_dropped_b: u64,
}

impl WanEmu {
    /// Runs the emulator until SIGINT or SIGTERM.
    pub fn run(self) -> Result<(), Fail> {
        if self.a == self.b {
            return Err(Fail::msg(format!("--a and --b are both {}; a bridge needs two interfaces", self.a)));
        }
        let backend = self.backend.into();
        let mut dev_a = open_bridge_port(&self.a, backend)?;
        let mut dev_b = open_bridge_port(&self.b, backend)?;
        let config =
            |seed| HopConfig { delay: self.delay, rate: self.rate, buffer_bytes: self.buffer, loss: self.loss, seed };
        let mut ab = Hop::new(config(self.seed));
        let mut ba = Hop::new(config(self.seed.wrapping_add(1)));
        sys::catch_interrupts()?;
        if let Err(e) = sys::set_timer_slack(Duration::from_micros(5)) {
            log::warn!("timer slack stays at the kernel's default (ticks may run late): {e}");
        }
        log::info!(
            "wanemu {} <-> {} ({}): delay {:?} each way, rate {}, buffer {} B, loss {}",
            self.a,
            self.b,
            dev_a.info().backend,
            self.delay,
            self.rate,
            self.buffer,
            self.loss
        );
        let mut tx_errors = 0u64;
        let (max_a, max_b) = (dev_a.info().max_frame, dev_b.info().max_frame);
        let mut scratch = (Vec::new(), Vec::new());
        let mut offload = Offload::default();
        let mut next_report = self.report.map(|r| Instant::now() + r);
        while !sys::interrupted() {
            let now = Instant::now();
            let mut work = 0;
            // Everything that arrived since the last tick (bounded, so a
            // flood cannot starve transmission).
            for _ in 0..16 {
                let got = dev_a.receive(RX_BATCH, &mut |f, _| {
                    arrive(&mut ab, now, &f, max_b, &mut scratch, &mut offload);
                })? + dev_b.receive(RX_BATCH, &mut |f, _| {
                    arrive(&mut ba, now, &f, max_a, &mut scratch, &mut offload);
                })?;
                work += got;
                if got < RX_BATCH {
                    break;
                }
            }
            let now = Instant::now();
            work += ab.transmit_due(now, |frame| forward(&mut *dev_b, frame, &mut tx_errors));
            work += ba.transmit_due(now, |frame| forward(&mut *dev_a, frame, &mut tx_errors));
            dev_a.sink().flush()?;
            dev_b.sink().flush()?;
            if let Some(at) = next_report
                && now >= at
            {
                eprintln!("{}", report_json(&mut ab, &mut ba, tx_errors, offload, [&*dev_a, &*dev_b], now));
                next_report = self.report.map(|r| now + r);
            }
            let deadline = [ab.poll_timeout(), ba.poll_timeout()].into_iter().flatten().min();
            let flowing = work > 0 || deadline.is_some_and(|d| d <= now + self.tick);
            if flowing && !self.tick.is_zero() {
                // Frames keep arriving: a timer, not the descriptors, ends
                // this sleep, or every frame would wake us.
                sys::poll_fds(&[], Some(self.tick))?;
                continue;
            }
            if work > 0 {
                continue;
            }
            let sleep = match deadline.map(|d| plan_wait(now, d, SPIN_BELOW)) {
                Some(Wait::Ready | Wait::Spin) => continue,
                Some(Wait::Sleep(d)) => d,
                // Nothing on the wire: sleep until a frame arrives, waking
                // now and then to notice a signal.
                None => Duration::from_millis(100),
            };
            let sleep = next_report.map_or(sleep, |r| sleep.min(r.saturating_duration_since(now)));
            wait_either(dev_a.readiness_fd(), dev_b.readiness_fd(), sleep)?;
        }
        println!("{}", report_json(&mut ab, &mut ba, tx_errors, offload, [&*dev_a, &*dev_b], Instant::now()));
        Ok(())
    }
}

/// Frames from the hosts that needed a NIC's work done (see the module
/// documentation).
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Offload {
    /// Frames whose TCP or UDP checksum the sender left partial.
    checksums_finished: u64,
    /// TCP segments longer than the far interface's frames, cut to fit.
    segments_cut: u64,
    /// The frames they were cut into.
    frames_from_cuts: u64,
    /// Frames too long for the far interface that were not TCP (dropped,
    /// and counted in `tx_errors` as the far interface would refuse them).
    too_long: u64,
}

/// A frame arrives at one direction's hop: finished and, if it is a TCP
/// segment longer than the far side takes, cut first.
fn arrive(
    hop: &mut Hop,
    now: Instant,
    f: &RxFrame<'_>,
    max_out: usize,
    scratch: &mut (Vec<u8>, Vec<u8>),
    n: &mut Offload,
) {
    if f.len() <= max_out {
        hop.handle_frame(now, f.len(), |buf| {
            f.copy_out(0, buf);
            n.checksums_finished += u64::from(offload::finish_checksum(buf));
        });
        return;
    }
    let (whole, piece) = scratch;
    whole.resize(f.len(), 0);
    f.copy_out(0, whole);
    match offload::segment_tcp(whole, max_out, piece, |p| {
        n.frames_from_cuts += 1;
        hop.handle_frame(now, p.len(), |buf| buf.copy_from_slice(p));
    }) {
        Ok(_) => n.segments_cut += 1,
        Err(_) => {
            n.too_long += 1;
            hop.handle_frame(now, whole.len(), |buf| buf.copy_from_slice(whole));
        }
    }
}

fn report_json(
    ab: &mut Hop,
    ba: &mut Hop,
    tx_errors: u64,
    offload: Offload,
    ports: [&dyn FrameDevice; 2],
    now: Instant,
) -> String {
    let r = Report {
        a_to_b: ab.stats(now),
        b_to_a: ba.stats(now),
        tx_errors,
        offload,
        kernel_dropped_a: ports[0].stats().rx_dropped,
        kernel_dropped_b: ports[1].stats().rx_dropped,
    };
    serde_json::to_string(&r).expect("serialisable")
}

/// Opens `iface` as a bridge port: every frame comes to us, none to the
/// kernel; jumbo MTUs get multi-buffer frames.
fn open_bridge_port(iface: &str, backend: BackendChoice) -> Result<Box<dyn FrameDevice>, Fail> {
    let mut config = AfXdpConfig::new(iface);
    config.ethertypes = vec![ETHERTYPE_ALL];
    // Deep rings: on a loaded 2-core machine the emulator is descheduled
    // now and then while senders burst at veth speed; 8192 frames absorb
    // ~12 ms of 1 Gbit/s. (Measured at 350 ms and 1 Gbit/s, rings of 2048
    // let the kernel drop 2.7% of the frames before the emulator saw them.)
    config.ring_size = 8192;
    config.frame_count = 16384;
    // Multi-buffer is chosen automatically: where the MTU needs it, and on
    // a veth, whose hosts hand over 64 KiB segments whole.
    sys::if_mtu(iface).map_err(|e| {
        let known = sys::if_names().join(", ");
        Fail::msg(format!("interface {iface}: {e}; interfaces here: {known}"))
    })?;
    Ok(xsock_nic::open(&config, backend)?)
}

/// Sends one frame; false if the ring is full (try again later). A frame
/// the device refuses for good is counted and dropped.
fn forward(dev: &mut dyn FrameDevice, frame: &[u8], errors: &mut u64) -> bool {
    match dev.sink().transmit(frame.len(), &mut |buf| buf.copy_from_slice(frame)) {
        Ok(()) => true,
        Err(TxError::RingFull) => false,
        Err(e) => {
            *errors += 1;
            log::warn!("dropped a {} B frame the far interface refused: {e}", frame.len());
            true
        }
    }
}

fn wait_either(a: BorrowedFd<'_>, b: BorrowedFd<'_>, timeout: Duration) -> Result<(), Fail> {
    let interest = [Interest { fd: a, read: true, write: false }, Interest { fd: b, read: true, write: false }];
    match sys::poll_fds(&interest, Some(timeout)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Parses a byte count: `4375000`, `64k`/`64KB` (10^3), `512KiB` (2^10),
/// `4.4MB`, `1MiB`, `1GB`, `1GiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a byte count; write e.g. 4375000, 512KiB, 4.4MB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        other => return Err(format!("unknown unit {other:?} in {s:?}; use B, KB, KiB, MB, MiB, GB or GiB")),
    };
    let bytes = (v * mult).round();
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{s:?}: a buffer must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Parses a probability: `0.001` or `0.1%`.
pub fn parse_probability(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (t, 1.0),
    };
    let p =
        num.trim().parse::<f64>().map_err(|_| format!("{s:?} is not a probability; write e.g. 0.001 or 0.1%"))? * scale;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{s:?} is outside 0..1 (0%..100%)"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_and_probabilities_parse_as_written() {
        assert_eq!(parse_bytes("4375000").unwrap(), 4_375_000);
        assert_eq!(parse_bytes("4.4MB").unwrap(), 4_400_000);
        assert_eq!(parse_bytes("512KiB").unwrap(), 524_288);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert!(parse_bytes("lots").unwrap_err().contains("e.g."));
        assert!(parse_bytes("3 furlongs").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("0").is_err());
        assert_eq!(parse_probability("0.001").unwrap(), 0.001);
        assert!((parse_probability("0.1%").unwrap() - 0.001).abs() < 1e-12);
        assert!(parse_probability("150%").is_err());
        assert!(parse_probability("-0.1").is_err());
    }
}
