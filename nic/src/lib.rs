//! # xsock-nic: frames in and out
//!
//! The only xsock crate that talks to the kernel for packets. Everything
//! above it sees one object-safe trait, [`FrameDevice`]: batch receive with
//! a callback that may answer in place, batch transmit through a
//! [`FrameSink`] that lends its buffer (frames are built where they will be
//! sent), completions reclaimed on `flush`, and a pollable readiness fd for
//! sleeping in poll(2) when idle.
//!
//! Backends:
//! - [`xdp::AfXdpDevice`]: AF_XDP on xsk-rs, one socket per (interface,
//!   queue), with xsock's own XDP filter program ([`xdp::XdpFilter`]) that
//!   steers only xsock's EtherTypes (and, configurable at run time, IPv4
//!   address/protocol/port rules for the TCP mode) to the sockets and passes
//!   everything else to the kernel. The program is attached through a
//!   bpf_link, so it disappears when the process does, even on `kill -9`.
//! - [`packet::AfPacketDevice`]: AF_PACKET through pnet, the automatic
//!   fallback where AF_XDP cannot be used ([`open`]).
//! - [`mem::MemDevice`]: an in-memory wire and learning switch for
//!   deterministic tests.
//!
//! Wrappers that compose over any backend: [`fault::FaultInjector`] (seeded
//! loss, duplication, reordering, corruption, delay) and
//! [`pcap::PcapWriter`].
//!
//! Between processes (the host engine and its clients): [`shm`] (sealed
//! shared-memory regions and byte rings with eventfd doorbells), [`unix`]
//! (descriptors over Unix sockets, the peer's kernel credentials) and
//! [`lockfile`] (one owner per resource, released when the owner dies).
//!
//! `unsafe` lives only in this crate, at the kernel interface: syscalls go
//! through [`sys`], ring accesses through xsk-rs, BPF through libbpf. Every
//! block carries a `// SAFETY:` comment.

pub mod clock;
mod device;
mod error;
pub mod fault;
pub mod filemap;
pub mod lockfile;
pub mod mem;
pub mod neigh;
pub mod offload;
pub mod packet;
pub mod pcap;
pub mod shm;
pub mod sys;
pub mod unix;
pub mod wire;
pub mod xdp;

pub use device::{
    Backend, DeviceInfo, DeviceStats, ETH_HEADER_LEN, FrameDevice, FrameSink, MacAddr, MacParseError, RxFrame, TxError,
};
pub use error::NicError;

/// IEEE 802 Local Experimental EtherType 1, carried by xsock's reliable-link.
pub const ETHERTYPE_LOCAL_EXP1: u16 = 0x88B5;
/// IEEE 802 Local Experimental EtherType 2, carried by xsock's diagnostics
/// (raw ping-pong and blast).
pub const ETHERTYPE_LOCAL_EXP2: u16 = 0x88B6;

/// In a device's EtherType list: every frame, whatever its EtherType (for an
/// L2 bridge such as `xsock wanemu`; the kernel then sees nothing on that
/// interface). No real EtherType is 0.
pub const ETHERTYPE_ALL: u16 = 0;

/// Which backend [`open`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// AF_XDP, falling back to AF_PACKET (with a log line saying why) where
    /// the kernel lacks AF_XDP or the process may open raw sockets but not
    /// load BPF.
    #[default]
    Auto,
    /// AF_XDP only.
    AfXdp,
    /// AF_PACKET only.
    AfPacket,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "xdp" | "af_xdp" => Ok(Self::AfXdp),
            "packet" | "af_packet" => Ok(Self::AfPacket),
            other => Err(format!("unknown backend {other:?}; use auto, xdp or packet")),
        }
    }
}

/// Opens a frame device on `config.iface` / `config.queue` with the chosen
/// backend.
pub fn open(config: &xdp::AfXdpConfig, choice: BackendChoice) -> Result<Box<dyn FrameDevice>, NicError> {
    let packet = || -> Result<Box<dyn FrameDevice>, NicError> {
        if config.queue != 0 {
            return Err(NicError::Config(format!(
                "the AF_PACKET backend serves the whole interface, not queue {}; use queue 0",
                config.queue
            )));
        }
        let pc = packet::PacketConfig::from(config);
        Ok(Box::new(packet::AfPacketDevice::open(&pc)?))
    };
    match choice {
        BackendChoice::AfXdp => Ok(Box::new(xdp::AfXdpDevice::open(config)?)),
        BackendChoice::AfPacket => packet(),
        BackendChoice::Auto => match xdp::AfXdpDevice::open(config) {
            Ok(dev) => Ok(Box::new(dev)),
            Err(e) if falls_back(&e) => {
                log::warn!("AF_XDP unavailable ({e}); falling back to AF_PACKET, which is much slower");
                packet()
            }
            Err(e) => Err(e),
        },
    }
}

/// Whether the automatic choice should try AF_PACKET after this AF_XDP error.
fn falls_back(e: &NicError) -> bool {
    match e {
        NicError::Unsupported { .. } => true,
        // Raw sockets allowed but BPF not: AF_PACKET still works.
        NicError::PermissionDenied { missing, .. } => !missing.contains(&sys::Capability::NetRaw),
        _ => false,
    }
}
