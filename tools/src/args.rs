//! Flag groups shared by several subcommands, and value parsers.

use std::time::Duration;

use clap::{Args, ValueEnum};
use xsock::{Datapath, PollMode};
use xsock_nic::{
    BackendChoice,
    xdp::{BindMode, XdpMode},
};

/// How the loop waits when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Poll {
    /// Spin on the rings (lowest latency; takes a core).
    Busy,
    /// Spin 50 µs after the last work, then sleep in poll(2).
    Adaptive,
    /// Sleep in poll(2) whenever idle.
    Sleep,
}

impl From<Poll> for PollMode {
    fn from(p: Poll) -> Self {
        match p {
            Poll::Busy => PollMode::Busy,
            Poll::Adaptive => PollMode::default(),
            Poll::Sleep => PollMode::Sleep,
        }
    }
}

/// Frame backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// AF_XDP, falling back to AF_PACKET where AF_XDP cannot be used.
    Auto,
    /// AF_XDP only.
    Xdp,
    /// AF_PACKET only.
    Packet,
}

/// AF_XDP bind mode.
impl From<BackendArg> for BackendChoice {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Xdp => BackendChoice::AfXdp,
            BackendArg::Packet => BackendChoice::AfPacket,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BindArg {
    /// Zero-copy where the driver supports it, else copy.
    Auto,
    /// Copy mode.
    Copy,
    /// Zero-copy (fails where unsupported).
    Zerocopy,
}

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native where the driver has it, else generic.
    Auto,
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Generic,
}

/// The datapath on one interface.
#[derive(Debug, Clone, Args)]
pub struct DatapathArgs {
    /// Interface xsock drives with AF_XDP.
    #[arg(long)]
    pub iface: String,
    /// Queue id to bind.
    #[arg(long, default_value_t = 0)]
    pub queue: u32,
    /// Frame backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// AF_XDP bind mode.
    #[arg(long, value_enum, default_value = "auto")]
    pub bind: BindArg,
    /// Native or generic XDP.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpModeArg,
    /// UMEM frame (chunk) size in bytes: 2048 or 4096.
    #[arg(long, default_value_t = 4096)]
    pub frame_size: u32,
    /// UMEM frames per queue (half receive, half transmit).
    #[arg(long, default_value_t = 4096)]
    pub frames: u32,
    /// Ring size (fill, rx, tx, completion); a power of two.
    #[arg(long, default_value_t = 2048)]
    pub ring: u32,
    /// Force frames longer than one UMEM frame (XDP multi-buffer) on; without
    /// it, multi-buffer is chosen automatically when the MTU needs it.
    #[arg(long)]
    pub multi_buffer: bool,
    /// What the loop does when idle.
    #[arg(long, value_enum, default_value = "busy")]
    pub poll: Poll,
}

impl DatapathArgs {
    /// Opens the datapath these flags describe.
    pub fn open(&self) -> Result<Datapath, xsock::Error> {
        let mut b = Datapath::builder(&self.iface);
        if self.multi_buffer {
            b = b.multi_buffer(true);
        }
        b.queues([self.queue])
            .backend(self.backend.into())
            .bind(match self.bind {
                BindArg::Auto => BindMode::Auto,
                BindArg::Copy => BindMode::Copy,
                BindArg::Zerocopy => BindMode::ZeroCopy,
            })
            .frame_size(self.frame_size)
            .frame_count(self.frames)
            .xdp_mode(match self.xdp_mode {
                XdpModeArg::Auto => XdpMode::Auto,
                XdpModeArg::Native => XdpMode::Native,
                XdpModeArg::Generic => XdpMode::Generic,
            })
            .ring_size(self.ring)
            .poll_mode(self.poll.into())
            .build()
    }
}

/// Transports of `ping`, `bw` and `cat` (CLI.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// reliable-link: xsock's own protocol on raw Ethernet frames.
    Link,
    /// The kernel's TCP socket.
    Kernel,
    /// The TCP mode: smoltcp on the datapath, plain TCP on the wire.
    Tcp,
}

/// The runtime behind `ping`, `bw` and `cat`.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Interface xsock drives with AF_XDP (not needed with --transport kernel).
    #[arg(long)]
    pub iface: Option<String>,
    /// Transport; without it, reliable-link for an xsock peer on the segment
    /// and kernel TCP otherwise.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// Frame backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Native or generic XDP.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpModeArg,
    /// Force frames longer than one UMEM frame (XDP multi-buffer) on; without
    /// it, multi-buffer is chosen automatically when the MTU needs it.
    #[arg(long)]
    pub multi_buffer: bool,
    /// Bytes each connection may buffer for sending and receiving: the cap
    /// reliable-link windows grow to (default 4 MiB), and the fixed buffers
    /// of a TCP-mode connection (default 1 MiB).
    #[arg(long)]
    pub buffer: Option<usize>,
    /// The most bytes all connection buffers of the process may reserve
    /// together (default: an eighth of the machine's memory); connections
    /// beyond it are refused with a clear error.
    #[arg(long)]
    pub memory_limit: Option<usize>,
    /// Drop this fraction of transmitted reliable-link frames (a lossy link,
    /// for testing recovery); e.g. 0.01.
    #[arg(long, default_value_t = 0.0)]
    pub inject_loss: f64,
    /// Ring size of the AF_XDP socket (fill, rx, tx, completion; a power of
    /// two): deeper rings ride out longer pauses of a busy receiver.
    #[arg(long, default_value_t = 2048)]
    pub ring: u32,
    /// Keep the whole ring of receive buffers posted (bulk receivers that
    /// pause; the default keeps 256 warm and deepens under load).
    #[arg(long)]
    pub deep_fill: bool,
    /// TCP mode: congestion control: model (the default: BBR-style, paces at
    /// the measured bottleneck rate; no rate needed), cubic, reno, or none
    /// (for a reserved path with --pace RATE).
    #[arg(long, default_value = "model")]
    pub cc: xsock::Congestion,
    /// TCP mode: aggregate pacing rate (e.g. 950mbit), auto (from the
    /// congestion window: gain × window / RTT), or off.
    #[arg(long, default_value = "off")]
    pub pace: PaceArg,
    /// TCP mode: cap the windows of the fastest streams so parallel streams
    /// share (cooperative window caps).
    #[arg(long)]
    pub window_caps: bool,
    /// TCP mode: smoltcp's delayed ACK (e.g. 10ms); acknowledges at once
    /// without it.
    #[arg(long, value_parser = parse_duration)]
    pub ack_delay: Option<Duration>,
}

/// `--pace RATE|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceArg {
    /// Unpaced.
    Off,
    /// A fixed rate (a reserved bandwidth).
    Rate(xsock_pacer::Rate),
    /// Derived from congestion state (gain × window / RTT).
    Auto,
}

impl std::str::FromStr for PaceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(PaceArg::Off),
            "auto" => Ok(PaceArg::Auto),
            r => r.parse().map(PaceArg::Rate).map_err(|e| format!("--pace {r}: {e}")),
        }
    }
}

impl RuntimeArgs {
    /// The transport to request.
    pub fn transport(&self) -> xsock::Transport {
        match self.transport {
            None => xsock::Transport::Auto,
            Some(TransportArg::Link) => xsock::Transport::Link,
            Some(TransportArg::Kernel) => xsock::Transport::Kernel,
            Some(TransportArg::Tcp) => xsock::Transport::Tcp,
        }
    }

    /// The transport's name in JSON output.
    pub fn transport_name(&self, path: xsock::Path) -> &'static str {
        match path {
            xsock::Path::Link => "link",
            xsock::Path::Kernel => "kernel",
            xsock::Path::Tcp => "tcp",
            xsock::Path::Connecting => "connecting",
        }
    }

    /// A runtime builder with every flag but the interface and transport
    /// applied (the engine takes it as it is).
    pub fn builder(&self, driving: xsock::Driving, poll: PollMode) -> xsock::RuntimeBuilder {
        let mut b = xsock::Runtime::builder();
        if self.multi_buffer {
            b = b.multi_buffer(true);
        }
        let tcp_defaults = xsock::TcpConfig::default();
        if let Some(bytes) = self.buffer {
            b = b.send_buffer(bytes).recv_buffer(bytes);
        }
        if let Some(bytes) = self.memory_limit {
            b = b.memory_limit(bytes);
        }
        b.driving(driving)
            .poll_mode(poll)
            .backend(self.backend.into())
            .xdp_mode(match self.xdp_mode {
                XdpModeArg::Auto => XdpMode::Auto,
                XdpModeArg::Native => XdpMode::Native,
                XdpModeArg::Generic => XdpMode::Generic,
            })
            .ring_size(self.ring)
            .frame_count(self.ring.saturating_mul(2))
            .fill_min(if self.deep_fill { u32::MAX } else { 256 })
            .inject_loss(self.inject_loss)
            .tcp(xsock::TcpConfig {
                send_buffer: self.buffer.unwrap_or(tcp_defaults.send_buffer),
                recv_buffer: self.buffer.unwrap_or(tcp_defaults.recv_buffer),
                congestion: self.cc,
                ack_delay: self.ack_delay,
                pace: match self.pace {
                    PaceArg::Off => xsock::Pace::Off,
                    PaceArg::Rate(r) => xsock::Pace::Rate(r),
                    PaceArg::Auto => xsock::Pace::Auto,
                },
                window_caps: self.window_caps,
                ..Default::default()
            })
    }

    /// Builds the runtime: no interface for the kernel transport; the
    /// interface (required) for reliable-link.
    pub fn build(&self, driving: xsock::Driving, poll: PollMode) -> Result<xsock::Runtime, crate::fail::Fail> {
        use crate::fail::Fail;
        let mut b = self.builder(driving, poll);
        match (self.transport, &self.iface) {
            (Some(TransportArg::Kernel), _) => {}
            (Some(TransportArg::Link), None) => {
                return Err(Fail::msg("--transport link needs --iface: the interface xsock drives"));
            }
            (Some(TransportArg::Link), Some(i)) => b = b.interface(i).require_link(true),
            (Some(TransportArg::Tcp), None) => {
                return Err(Fail::msg("--transport tcp needs --iface: the interface xsock drives"));
            }
            (Some(TransportArg::Tcp), Some(i)) => {
                let rt = b.interface(i).require_link(true).build()?;
                if !rt.has_tcp_mode() {
                    return Err(Fail::msg(format!(
                        "the TCP mode needs AF_XDP on {i} (it takes its ports from the kernel with the XDP filter); \
                         AF_PACKET cannot: drop --backend packet, or grant CAP_BPF"
                    )));
                }
                return Ok(rt);
            }
            (None, Some(i)) => b = b.interface(i),
            (None, None) => {}
        }
        Ok(b.build()?)
    }
}

/// Runs the datapath's loop until the process is killed (the server side
/// of a tool), after saying what serves where.
pub fn serve_forever(dp: &mut Datapath, what: &str) -> Result<(), xsock::Error> {
    let info = dp.device_info(0);
    log::info!("{what} on {} ({}), MAC {}", info.name, info.backend, info.mac);
    loop {
        if dp.poll().map_err(xsock::Error::Io)? == 0 {
            dp.idle(None).map_err(xsock::Error::Io)?;
        }
    }
}

/// Checks a `--size` of a diagnostic frame against what the device carries.
pub fn check_frame_size(size: usize, info: &xsock_nic::DeviceInfo) -> Result<(), String> {
    let min = xsock::diag::MIN_FRAME;
    if size < min || size > info.max_frame {
        return Err(format!(
            "--size {size} is outside {min}..={} (the diagnostic header, up to the largest frame {} carries at MTU {})",
            info.max_frame, info.name, info.mtu
        ));
    }
    Ok(())
}

/// Parses durations like `50ms`, `2s`, `1.5s`, `100us`, `3m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration; write e.g. 50ms, 2s, 100us"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        other => {
            return Err(format!("unknown duration unit {other:?} in {s:?}; use ns, us, ms, s or m"));
        }
    };
    if !(v * scale).is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
