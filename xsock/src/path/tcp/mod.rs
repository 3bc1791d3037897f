//! The TCP mode: smoltcp's TCP/IP running on the datapath, so an xsock
//! process talks TCP to any peer (a kernel TCP program, a peer off the
//! segment) without the kernel's stack on our side.
//!
//! - [`device`]: smoltcp's `Device` over the datapath's frames; ARP is
//!   answered from the kernel's neighbour table ([`arp`]), because the
//!   kernel keeps owning ARP on the shared interface.
//! - [`core`]: the interface, the sockets and what the socket API asks of
//!   them (connect, listen/accept, read, write, close), plus the XDP filter
//!   rules that take our ports (and only those) away from the kernel, and
//!   kernel sockets bound to the same ports so the kernel never hands them
//!   to anyone else.
//! - [`handler`]: the datapath handler that runs smoltcp on every pass.
//!
//! Pacing is aggregate: every frame smoltcp emits from its send queues
//! leaves on one inter-packet-gap schedule ([`xsock_pacer::GapPacer`]) at
//! the configured rate, so bursts never exceed a couple of frames however
//! large the windows. Window caps ([`xsock_pacer::CapCoordinator`]) bound
//! each sending connection's unacknowledged bytes so parallel streams share.

mod arp;
pub(crate) mod conn;
pub(crate) mod core;
mod device;
mod flows;
pub(crate) mod handler;
pub(crate) mod hostile;
mod model;
mod reorder;
mod sack;
mod segment;

use std::time::Duration;

pub(crate) use arp::NeighborSource;
use xsock_pacer::Rate;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;

/// smoltcp's congestion controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (RFC 8312), smoltcp's.
    Cubic,
    /// NewReno-style additive increase.
    Reno,
    /// None: the window is the peer's receive window only (for a reserved
    /// path paced at its rate).
    None,
    /// The TCP mode's own model-based control (BBR-style, `xsock_pacer::ModelCc`,
    /// one model per destination host shared by its connections): paces at
    /// the measured bottleneck rate and caps in-flight near the path's BDP,
    /// so it needs no rate given and does not collapse on random loss. The default.
    #[default]
    Model,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "reno" => Ok(Congestion::Reno),
            "none" => Ok(Congestion::None),
            "model" => Ok(Congestion::Model),
            _ => Err(format!("unknown congestion control {s:?}: use model, cubic, reno or none")),
        }
    }
}

/// How the TCP mode paces what it sends (one aggregate inter-packet-gap
/// schedule over all its connections on the interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pace {
    /// Unpaced: frames leave as fast as the windows allow.
    #[default]
    Off,
    /// At a fixed rate: a reserved bandwidth, or the bottleneck's rate.
    Rate(Rate),
    /// At a rate derived from congestion state: the sum over sending
    /// connections of `gain × window / RTT` (gain 2 while the window grows
    /// fast, 1.25 after), the window read off the bytes in flight.
    Auto,
}

impl Pace {
    /// The fixed rate, if there is one.
    pub fn fixed(self) -> Option<Rate> {
        match self {
            Pace::Rate(r) => Some(r),
            _ => None,
        }
    }
}

/// Tuning of the TCP mode.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Bytes a connection may have written and not yet acknowledged.
    ///
    /// smoltcp gives a socket fixed-capacity buffers (and fixes the window
    /// scale from them at the SYN), with no way to grow or shrink them while
    /// the connection lives: so unlike reliable-link, a TCP-mode connection
    /// reserves `send_buffer + recv_buffer` from the runtime's memory limit
    /// for its whole life. The pages are allocated zeroed and faulted in as
    /// the ring is first written, and go back when the connection closes.
    pub send_buffer: usize,
    /// Bytes a connection buffers for reading; sets the advertised window
    /// (window scaling follows from it). See `send_buffer` for what it costs.
    pub recv_buffer: usize,
    /// Congestion control.
    pub congestion: Congestion,
    /// smoltcp's delayed ACK (`None` = acknowledge at once). See
    /// perf/RESULTS.md for what it costs.
    pub ack_delay: Option<Duration>,
    /// Aggregate pacing of everything the TCP mode sends.
    pub pace: Pace,
    /// How much the pacer lets leave per wake-up: the sender wakes about once
    /// per quantum and sends a quantum's worth back to back (bursts are at
    /// most two quanta), instead of waking for every frame. Zero = wake for
    /// every frame (spins at high rates).
    pub pace_quantum: Duration,
    /// Window caps across the sending connections (cooperative fairness).
    pub window_caps: bool,
    /// Give up on a peer after this long without an answer.
    pub dead_after: Duration,
    /// Listening sockets kept ready per port (SYNs beyond are refused).
    pub backlog: usize,
    /// Verify TCP checksums on receive (a checksum the sending kernel left
    /// to an offload, as on veth, is finished first). On by default.
    pub verify_checksum: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            // smoltcp's buffers are fixed for a socket's life and reserved
            // whole from the memory limit: 1 MiB each way carries a LAN at
            // full rate; long fat paths size them with `for_path`.
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            congestion: Congestion::Model,
            ack_delay: None,
            pace: Pace::Off,
            pace_quantum: Duration::from_micros(200),
            window_caps: false,
            dead_after: Duration::from_secs(10),
            backlog: 8,
            verify_checksum: true,
        }
    }
}

impl TcpConfig {
    /// Buffers sized for a path: `factor_percent`% of the bandwidth-delay
    /// product `rate × rtt` (at least 256 KiB).
    pub fn for_path(mut self, rate: Rate, rtt: Duration, factor_percent: u64) -> Self {
        let bdp = rate.bytes_in(rtt);
        let b = (bdp * factor_percent / 100).max(256 << 10) as usize;
        self.send_buffer = b;
        self.recv_buffer = b;
        self
    }
}
