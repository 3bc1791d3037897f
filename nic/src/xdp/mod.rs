//! The AF_XDP backend: one socket per (interface, queue), with its own UMEM,
//! driven in batches over the fill, rx, tx and completion rings (xsk-rs).
//!
//! UMEM frames are split in two pools: receive frames live in the fill and
//! rx rings and go straight back to the fill ring after the receive
//! callback; transmit frames cycle free list → tx ring → completion ring →
//! free list. Binding tries zero-copy and falls back to copy mode (veth
//! supports only copy mode), logging which one it got.

pub mod filter;
mod rings;

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    sync::Arc,
    time::Duration,
};

use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

pub use filter::{FilterCounters, Ipv4Rule, XdpFilter, XdpMode};
use rings::{RxSide, TxSide};

use crate::{
    device::{Backend, DeviceInfo, DeviceStats, ETH_HEADER_LEN, FrameDevice, FrameSink, MacAddr, RxFrame},
    error::NicError,
    sys::{self, Capability},
};

/// XDP_PACKET_HEADROOM: the kernel reserves this much before the frame data
/// in every UMEM chunk it receives into.
pub const XDP_PACKET_HEADROOM: usize = 256;

/// `XDP_OPTIONS` getsockopt and its `XDP_OPTIONS_ZEROCOPY` bit (if_xdp.h).
const XDP_OPTIONS: i32 = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
/// `XDP_MAX_TX_SKB_BUDGET` (if_xdp.h, Linux 6.17+): descriptors one
/// copy-mode send call may process, 32 by default, "allowed range is
/// [32, xs->tx->nentries]".
const XDP_MAX_TX_SKB_BUDGET: i32 = 9;
/// Largest number of buffers in one multi-buffer frame the kernel accepts on
/// transmit (MAX_SKB_FRAGS + 1 with the default MAX_SKB_FRAGS of 17).
pub const MAX_SEGMENTS: usize = 18;

/// How to bind the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, else copy mode.
    #[default]
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only (fail where unsupported).
    ZeroCopy,
}

/// Configuration of one AF_XDP socket.
#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    /// Interface to bind.
    pub iface: String,
    /// Queue id to bind.
    pub queue: u32,
    /// UMEM chunk size: 2048 or 4096 bytes.
    pub frame_size: u32,
    /// UMEM chunks, split evenly between receive and transmit.
    pub frame_count: u32,
    /// Size of each of the four rings (power of two).
    pub ring_size: u32,
    /// Frames longer than one chunk (XDP_USE_SG and the `xdp.frags`
    /// program): `None` = automatic (on when the interface's MTU does not
    /// fit one chunk, with a log line saying so), `Some(true)` forces it on,
    /// `Some(false)` off (then an MTU over a chunk is an error).
    pub multi_buffer: Option<bool>,
    /// Zero-copy or copy mode.
    pub bind: BindMode,
    /// Native or generic XDP (for the interface's first socket; later
    /// sockets share its program).
    pub xdp_mode: XdpMode,
    /// EtherTypes the XDP filter steers to xsock on this interface.
    pub ethertypes: Vec<u16>,
    /// Transmit descriptors gathered before they are put on the tx ring.
    pub tx_batch: usize,
    /// Fewest receive buffers kept on the fill ring (the depth adapts
    /// between this and the ring size). The default, 256, keeps a
    /// latency-bound socket's buffers warm in cache; a bulk receiver that
    /// pauses (hashing, writing a file) wants the whole ring, or the kernel
    /// finds the fill ring empty and drops.
    pub fill_min: usize,
}

impl AfXdpConfig {
    /// Defaults for `iface` queue 0: 4 KiB chunks, 4096 of them (16 MiB),
    /// rings of 2048.
    pub fn new(iface: impl Into<String>) -> Self {
        Self {
            iface: iface.into(),
            queue: 0,
            frame_size: 4096,
            frame_count: 4096,
            ring_size: 2048,
            multi_buffer: None,
            bind: BindMode::Auto,
            xdp_mode: XdpMode::Auto,
            ethertypes: Vec::new(),
            tx_batch: 64,
            fill_min: rings::FILL_MIN_DEFAULT,
        }
    }

    /// Bytes of frame data one chunk holds.
    pub fn chunk_capacity(&self) -> usize {
        self.frame_size as usize - XDP_PACKET_HEADROOM
    }

    fn validate(&self) -> Result<(), NicError> {
        if !matches!(self.frame_size, 2048 | 4096) {
            return Err(NicError::Config(format!(
                "UMEM frame size {} is not supported; use 2048 or 4096 (AF_XDP chunks are \
                 power-of-two sizes up to the page size)",
                self.frame_size
            )));
        }
        for (what, v) in [("frame count", self.frame_count), ("ring size", self.ring_size)] {
            if !v.is_power_of_two() || v < 64 {
                return Err(NicError::Config(format!("{what} {v} must be a power of two, at least 64")));
            }
        }
        if self.queue >= filter::MAX_QUEUES {
            return Err(NicError::Config(format!(
                "queue {} is beyond the {} queues xsock's XDP filter maps",
                self.queue,
                filter::MAX_QUEUES
            )));
        }
        Ok(())
    }
}

/// An AF_XDP socket bound to one queue of one interface.
pub struct AfXdpDevice {
    info: DeviceInfo,
    rx: RxSide,
    tx: TxSide,
    fd: RawFd,
    // Dropped after the socket (declaration order), so the program stays
    // attached while the socket exists.
    filter: Arc<XdpFilter>,
    _socket_umem: Umem,
}

impl std::fmt::Debug for AfXdpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpDevice").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Checks the privileges AF_XDP needs, naming what is missing.
pub fn check_privileges() -> Result<(), NicError> {
    let missing = sys::missing_capabilities(&[Capability::NetRaw, Capability::NetAdmin, Capability::Bpf]);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NicError::PermissionDenied { what: "AF_XDP (socket, XDP program and maps)", missing })
    }
}

/// Looks up an interface, or says which ones exist.
pub(crate) fn lookup_iface(iface: &str) -> Result<u32, NicError> {
    sys::if_index(iface)
        .map_err(|_| NicError::InterfaceNotFound { iface: iface.to_owned(), available: sys::if_names() })
}

impl AfXdpDevice {
    /// Opens an AF_XDP socket as configured, attaching xsock's XDP filter
    /// to the interface if this process has not already.
    pub fn open(config: &AfXdpConfig) -> Result<Self, NicError> {
        config.validate()?;
        check_privileges()?;
        let iface = config.iface.as_str();
        let ifindex = lookup_iface(iface)?;
        if let Some(queues) =
            sys::if_rx_queues(iface).map_err(|e| NicError::io(format!("querying queues of {iface}"), e))?
            && config.queue >= queues
        {
            return Err(NicError::QueueOutOfRange { iface: iface.to_owned(), queue: config.queue, queues });
        }
        let mtu = sys::if_mtu(iface).map_err(|e| NicError::io(format!("reading the MTU of {iface}"), e))?;
        let mac = MacAddr(sys::if_mac(iface).map_err(|e| NicError::io(format!("reading the MAC of {iface}"), e))?);
        let frame = mtu as usize + ETH_HEADER_LEN;
        let capacity = config.chunk_capacity();
        let multi_buffer = match config.multi_buffer {
            Some(on) => on,
            None if frame > capacity => {
                log::info!(
                    "{iface}: MTU {mtu} frames ({frame} B) do not fit one {}-byte UMEM chunk: using multi-buffer \
                     AF_XDP (XDP_USE_SG), chosen automatically",
                    config.frame_size
                );
                true
            }
            None if veth_takes_whole_segments(iface) => {
                log::info!(
                    "{iface} is a veth: kernel TCP peers on it hand over segmentation-offload frames of up to 64 KiB \
                     whole (a veth does not segment them), so multi-buffer AF_XDP (XDP_USE_SG) is on, chosen \
                     automatically"
                );
                true
            }
            None => false,
        };
        if !multi_buffer && sys::if_driver(iface).ok().flatten().as_deref() == Some("veth") {
            log::warn!(
                "{iface} is a veth and this socket is single-buffer ({}): a kernel TCP peer's bulk to the TCP mode \
                 arrives in 64 KiB segmentation-offload frames that it cannot take, and stalls. Run on Linux 6.6 or \
                 newer with multi-buffer on, or have the peer run `ethtool -K <its interface> tso off gso off`",
                if sys::kernel_at_least(6, 6) {
                    "multi-buffer was turned off"
                } else {
                    "this kernel is older than 6.6"
                }
            );
        }
        let config = &AfXdpConfig { multi_buffer: Some(multi_buffer), ..config.clone() };
        let max_frame = if multi_buffer { frame.min(capacity * MAX_SEGMENTS) } else { capacity.min(frame) };
        if frame > capacity && !multi_buffer {
            let hint = if config.frame_size < 4096 && frame <= 4096 - XDP_PACKET_HEADROOM {
                "use 4096-byte frames (--frame-size 4096), or leave multi-buffer on (it was turned off)".to_owned()
            } else {
                format!(
                    "leave multi-buffer on (it was turned off), or lower the MTU (`ip link set dev {iface} mtu {}`)",
                    capacity - ETH_HEADER_LEN
                )
            };
            return Err(NicError::MtuTooLarge { iface: iface.to_owned(), mtu, frame, capacity, hint });
        }

        let umem_bytes = u64::from(config.frame_size) * u64::from(config.frame_count);
        // Best effort: kernels account UMEM pages against RLIMIT_MEMLOCK
        // unless the process has CAP_IPC_LOCK.
        let _ = sys::raise_memlock(umem_bytes + (1 << 20));

        // The filter first: a foreign program (or another xsock runtime) on
        // the interface is reported as such rather than as a busy queue.
        let filter = XdpFilter::acquire(iface, ifindex, multi_buffer, config.xdp_mode)?;
        for &et in &config.ethertypes {
            filter.add_ethertype(et)?;
        }

        let (umem, descs, socket, zero_copy) = bind_socket(config, umem_bytes)?;
        let (tx_q, rx_q, fq_cq) = socket;
        let (fill_q, comp_q) = fq_cq.ok_or_else(|| {
            NicError::io(
                "creating the AF_XDP socket",
                io::Error::other("libxdp returned no fill/completion rings for a fresh UMEM"),
            )
        })?;
        let fd = rx_q.fd().as_raw_fd();
        if !zero_copy {
            // One kick sends the whole ring rather than 32 frames of it.
            if let Err(e) = sys::set_sockopt_int(fd, libc::SOL_XDP, XDP_MAX_TX_SKB_BUDGET, config.ring_size as i32) {
                log::debug!("{iface}: XDP_MAX_TX_SKB_BUDGET not available ({e}); each kick sends up to 32 frames");
            }
        }

        let rx_count = config.frame_count as usize / 2;
        let (rx_descs, tx_descs) = descs.split_at(rx_count);
        let mut rx = RxSide::new(umem.clone(), rx_q, fill_q, config.ring_size as usize, config.fill_min, fd);
        rx.prime(rx_descs).map_err(|e| NicError::io("filling the fill ring", e))?;
        let tx = TxSide::new(
            umem.clone(),
            tx_q,
            comp_q,
            tx_descs.to_vec(),
            rings::TxLimits {
                chunk_capacity: capacity,
                max_frame,
                batch: config.tx_batch.max(1),
                ring_size: config.ring_size as usize,
            },
            fd,
        );
        filter.bind_queue(config.queue, fd)?;
        log::info!(
            "AF_XDP socket on {iface} queue {}: {} ({} MTU {mtu}, frames up to {max_frame} B, UMEM {} x {} B)",
            config.queue,
            if zero_copy { "zero-copy" } else { "copy mode (the driver has no zero-copy support)" },
            if filter.is_native() { "native XDP," } else { "generic XDP," },
            config.frame_count,
            config.frame_size,
        );
        let info = DeviceInfo {
            name: iface.to_owned(),
            ifindex,
            queue: config.queue,
            mac,
            mtu,
            max_frame,
            backend: Backend::AfXdp { zero_copy, native: filter.is_native(), multi_buffer },
        };
        Ok(Self { info, rx, tx, fd, filter, _socket_umem: umem })
    }

    /// The XDP filter this socket is registered with (shared per interface).
    pub fn filter(&self) -> &Arc<XdpFilter> {
        &self.filter
    }
}

type SocketParts = (TxQueue, RxQueue, Option<(FillQueue, CompQueue)>);

/// Whether `iface` is a veth on a kernel with multi-buffer AF_XDP (6.6).
///
/// A Linux sender whose interface offers TCP segmentation offload (a veth
/// does, by default) passes segments of up to 64 KiB down whole, and a veth
/// hands them to its peer as they are: on a real NIC the hardware cuts them
/// into MTU-sized frames before XDP sees anything, on a veth nothing does.
/// A single-buffer socket cannot take such a frame, and the kernel drops it
/// where XDP redirects it to us, so a kernel peer's bulk TCP to the TCP
/// mode would stall. A multi-buffer socket takes it in chunks.
fn veth_takes_whole_segments(iface: &str) -> bool {
    sys::if_driver(iface).ok().flatten().as_deref() == Some("veth") && sys::kernel_at_least(6, 6)
}

/// Creates a UMEM and binds a socket to it, trying zero-copy first in Auto
/// mode. A failed bind poisons libxdp's UMEM state, so each attempt gets a
/// fresh UMEM.
fn bind_socket(config: &AfXdpConfig, umem_bytes: u64) -> Result<(Umem, Vec<FrameDesc>, SocketParts, bool), NicError> {
    let attempts: &[bool] = match config.bind {
        BindMode::Auto => &[true, false],
        BindMode::Copy => &[false],
        BindMode::ZeroCopy => &[true],
    };
    let mut last_err = None;
    for &zc in attempts {
        let (umem, descs) = create_umem(config, umem_bytes)?;
        let mut flags = BindFlags::XDP_USE_NEED_WAKEUP | if zc { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
        if config.multi_buffer == Some(true) {
            flags |= BindFlags::XDP_USE_SG;
        }
        let ring = QueueSize::new(config.ring_size).map_err(|e| NicError::Config(e.to_string()))?;
        let sc = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(flags)
            .build();
        let ifname: Interface =
            config.iface.parse().map_err(|_| NicError::Config("interface name contains NUL".into()))?;
        // SAFETY: the UMEM was created just above and is used by this one
        // socket only, so no other socket shares its fill/completion rings
        // for this (interface, queue) — the contract xsk-rs asks for.
        match unsafe { Socket::new(sc, &umem, &ifname, config.queue) } {
            Ok(parts) => {
                let fd = parts.1.fd().as_raw_fd();
                let zero_copy = sys::get_sockopt_u32(fd, libc::SOL_XDP, XDP_OPTIONS)
                    .map(|o| o & XDP_OPTIONS_ZEROCOPY != 0)
                    .unwrap_or(zc);
                return Ok((umem, descs, parts, zero_copy));
            }
            Err(e) => {
                let errno = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .and_then(|io| io.raw_os_error());
                if zc
                    && config.bind == BindMode::Auto
                    && matches!(errno, Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EPROTONOSUPPORT))
                {
                    log::debug!("{}: zero-copy bind refused ({e}); trying copy mode", config.iface);
                    last_err = Some((e, errno));
                    continue;
                }
                return Err(bind_error(config, e, errno));
            }
        }
    }
    let (e, errno) = last_err.expect("at least one bind attempt");
    Err(bind_error(config, e, errno))
}

fn create_umem(config: &AfXdpConfig, umem_bytes: u64) -> Result<(Umem, Vec<FrameDesc>), NicError> {
    let ring = QueueSize::new(config.ring_size).map_err(|e| NicError::Config(e.to_string()))?;
    let uc = UmemConfig::builder()
        .frame_size(FrameSize::new(config.frame_size).map_err(|e| NicError::Config(e.to_string()))?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| NicError::Config(e.to_string()))?;
    let count =
        std::num::NonZeroU32::new(config.frame_count).ok_or_else(|| NicError::Config("frame count 0".into()))?;
    Umem::new(uc, count, false).map_err(|e| {
        let errno =
            std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>()).and_then(|io| io.raw_os_error());
        match errno {
            Some(libc::ENOBUFS | libc::ENOMEM | libc::EPERM | libc::EAGAIN) => NicError::MemlockRefused {
                bytes: umem_bytes,
                limit: match sys::memlock_limit() {
                    Ok(None) => "unlimited".to_owned(),
                    Ok(Some(b)) => format!("{} KiB", b / 1024),
                    Err(_) => "unknown".to_owned(),
                },
                source: io::Error::from_raw_os_error(errno.unwrap_or(libc::ENOBUFS)),
            },
            Some(libc::EAFNOSUPPORT) => NicError::Unsupported {
                backend: "AF_XDP",
                iface: config.iface.clone(),
                reason: "this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)".to_owned(),
            },
            Some(errno) => NicError::io("creating the UMEM", io::Error::from_raw_os_error(errno)),
            None => NicError::io("creating the UMEM", io::Error::other(e.to_string())),
        }
    })
}

fn bind_error(config: &AfXdpConfig, e: xsk_rs::socket::SocketCreateError, errno: Option<i32>) -> NicError {
    let iface = &config.iface;
    match errno {
        Some(libc::EBUSY) => NicError::io(
            format!(
                "queue {} of {iface} is already bound by another AF_XDP socket (another xsock runtime \
                 or AF_XDP program); pick another --queue or stop the other process",
                config.queue
            ),
            io::Error::from_raw_os_error(libc::EBUSY),
        ),
        Some(libc::EPERM | libc::EACCES) => NicError::PermissionDenied {
            what: "binding an AF_XDP socket",
            missing: vec![Capability::NetRaw, Capability::NetAdmin],
        },
        Some(libc::EAFNOSUPPORT) => NicError::Unsupported {
            backend: "AF_XDP",
            iface: iface.clone(),
            reason: "this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)".to_owned(),
        },
        Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT) if config.bind == BindMode::ZeroCopy => NicError::Unsupported {
            backend: "AF_XDP zero-copy",
            iface: iface.clone(),
            reason: "the driver does not support zero-copy; use copy mode (--bind copy or auto)".to_owned(),
        },
        Some(libc::EOPNOTSUPP | libc::EINVAL) if config.multi_buffer == Some(true) => NicError::Unsupported {
            backend: "AF_XDP multi-buffer",
            iface: iface.clone(),
            reason: "the kernel or driver refused XDP_USE_SG; drop --multi-buffer and keep the MTU within one frame"
                .to_owned(),
        },
        Some(errno) => NicError::io(
            format!("binding an AF_XDP socket to {iface} queue {}", config.queue),
            io::Error::from_raw_os_error(errno),
        ),
        None => NicError::io(
            format!("binding an AF_XDP socket to {iface} queue {}", config.queue),
            io::Error::other(e.to_string()),
        ),
    }
}

impl Drop for AfXdpDevice {
    fn drop(&mut self) {
        // Stop steering this queue to a socket that is about to close.
        self.filter.unbind_queue(self.info.queue);
    }
}

impl FrameDevice for AfXdpDevice {
    fn ipv4_filter(&self) -> Option<Arc<XdpFilter>> {
        Some(self.filter.clone())
    }

    fn receive(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize> {
        self.rx.receive(budget, &mut self.tx, on_frame)
    }

    fn sink(&mut self) -> &mut dyn FrameSink {
        &mut self.tx
    }

    fn readiness_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` belongs to the socket owned by `self.rx`/`self.tx`,
        // which live as long as `self`, and so outlive the borrow.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.tx.flush()?;
        let interest = [sys::Interest { fd: self.readiness_fd(), read: true, write: false }];
        sys::poll_fds(&interest, timeout).map(|_| ())
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn stats(&self) -> DeviceStats {
        let mut s = DeviceStats::default();
        self.rx.add_stats(&mut s);
        self.tx.add_stats(&mut s);
        if let Ok(k) = self.rx.kernel_stats() {
            s.rx_dropped = k.rx_dropped() + k.rx_ring_full();
            s.rx_ring_full = k.rx_ring_full();
            s.fill_ring_empty = k.rx_fill_ring_empty_descs();
            s.invalid_descs = k.rx_invalid_descs() + k.tx_invalid_descs();
        }
        s
    }
}
