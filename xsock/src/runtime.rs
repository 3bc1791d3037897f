//! The runtime an application builds once: the datapath on its interface
//! (if any), the reliable-link endpoint on it, and how both are driven.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use xsock_nic::{BackendChoice, FrameDevice, MacAddr, sys, xdp::BindMode, xdp::XdpMode};
use xsock_reliable_link::{Endpoint, EndpointConfig, LocalAddr, buffer::Budget, wire::ETHERTYPE};

use crate::{
    Datapath, DatapathThread, EngineUse, Error, PollMode, Waker,
    launch::Launch,
    notify::Notifier,
    path::link::{LinkHandler, LinkShared},
    path::tcp::{
        TcpConfig,
        core::{TcpCore, TcpSetup, TcpShared},
        handler::TcpHandler,
    },
};

/// Devices opened elsewhere and the addresses to use on them.
type TestDevices = (Vec<Box<dyn FrameDevice>>, Vec<LocalAddr>);

/// The default memory limit: an eighth of the machine's memory, at least
/// 256 MiB (1 GiB if the machine's memory cannot be read).
fn default_memory_limit() -> usize {
    let eighth = sys::physical_memory().map_or(1 << 30, |m| m / 8);
    usize::try_from(eighth).unwrap_or(usize::MAX).max(256 << 20)
}

/// Whether the runtime drives an interface, and if not, why not: a runtime
/// that fell back to kernel sockets says so here (not only in a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkStatus {
    /// AF_XDP on this interface: reliable-link and the TCP mode are there.
    Driven {
        /// The interface.
        iface: String,
    },
    /// Attached to the host engine that drives the interface: connections
    /// go through it (reliable-link and the TCP mode are its).
    Engine {
        /// The interface.
        iface: String,
        /// The engine's process id.
        pid: u32,
    },
    /// Kernel sockets only: every connection takes kernel TCP.
    KernelOnly {
        /// Why (no interface given, or what failed when opening it, with
        /// the fix).
        reason: String,
    },
}

/// The memory of connection buffers, as [`Runtime::memory`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// The limit connection buffers may reserve together.
    pub limit: usize,
    /// Reserved now (reliable-link windows and TCP-mode buffers).
    pub reserved: usize,
    /// reliable-link buffer chunks holding bytes now.
    pub chunks_in_use: usize,
    /// Released chunks kept warm for reuse.
    pub chunks_warm: usize,
    /// Bytes of one chunk.
    pub chunk_bytes: usize,
    /// reliable-link connections the endpoint holds.
    pub link_connections: usize,
}

/// Who runs the datapath's poll loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driving {
    /// A dedicated datapath thread; application threads block on a condvar
    /// (or spin, with [`PollMode::Busy`]).
    #[default]
    Thread,
    /// The application's own thread, inside every blocking call and in
    /// [`Runtime::poll`]: the lowest-latency way, one core per process.
    Inline,
    /// One application thread drives, by calling [`Runtime::poll`] and
    /// [`Runtime::idle`] in its own event loop (a relay's); blocking calls
    /// on other threads never drive, they wait to be notified. The driving
    /// thread must not make blocking calls itself.
    Loop,
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    iface: Option<String>,
    queues: u32,
    backend: BackendChoice,
    frame_size: u32,
    frame_count: u32,
    ring_size: u32,
    fill_min: u32,
    multi_buffer: Option<bool>,
    bind: BindMode,
    xdp_mode: XdpMode,
    poll: PollMode,
    driving: Driving,
    require_link: bool,
    endpoint: Option<EndpointConfig>,
    send_buffer: usize,
    recv_buffer: usize,
    dead_after: Duration,
    dead_after_set: bool,
    inject_loss: f64,
    devices: Option<TestDevices>,
    tcp: TcpConfig,
    tcp_fallback: bool,
    tcp_neighbors: Option<std::collections::HashMap<Ipv4Addr, MacAddr>>,
    max_message: usize,
    engine: Option<EngineUse>,
    memory_limit: Option<usize>,
    initial_window: Option<usize>,
    keepalive: Option<Option<Duration>>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("iface", &self.iface)
            .field("driving", &self.driving)
            .finish_non_exhaustive()
    }
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        let c = xsock_reliable_link::Config::default();
        Self {
            iface: None,
            queues: 1,
            backend: BackendChoice::Auto,
            frame_size: 4096,
            frame_count: 4096,
            ring_size: 2048,
            fill_min: xsock_nic::xdp::AfXdpConfig::new("").fill_min as u32,
            multi_buffer: None,
            bind: BindMode::Auto,
            xdp_mode: XdpMode::Auto,
            poll: PollMode::default(),
            driving: Driving::Thread,
            require_link: false,
            endpoint: None,
            send_buffer: c.send_buffer,
            recv_buffer: c.recv_buffer,
            dead_after: c.dead_after,
            dead_after_set: false,
            inject_loss: 0.0,
            devices: None,
            tcp: TcpConfig::default(),
            tcp_fallback: false,
            tcp_neighbors: None,
            max_message: crate::framing::DEFAULT_MAX_MESSAGE,
            engine: None,
            memory_limit: None,
            initial_window: None,
            keepalive: None,
        }
    }
}

impl RuntimeBuilder {
    /// The interface xsock drives (AF_XDP). Without one, every connection
    /// takes the kernel's TCP.
    pub fn interface(mut self, iface: impl Into<String>) -> Self {
        self.iface = Some(iface.into());
        self
    }

    /// Queues to drive on the interface (sockets 0..n).
    pub fn queues(mut self, n: u32) -> Self {
        self.queues = n.max(1);
        self
    }

    /// Frame backend (default: AF_XDP with AF_PACKET fallback).
    pub fn backend(mut self, b: BackendChoice) -> Self {
        self.backend = b;
        self
    }

    /// UMEM frame size (2048 or 4096).
    pub fn frame_size(mut self, bytes: u32) -> Self {
        self.frame_size = bytes;
        self
    }

    /// Fewest receive buffers kept on the fill ring: the default keeps a
    /// latency-bound process's buffers warm; `u32::MAX` posts the whole
    /// ring, which a bulk receiver that pauses (hashing, writing files)
    /// needs so the kernel never finds the ring empty and drops.
    pub fn fill_min(mut self, n: u32) -> Self {
        self.fill_min = n;
        self
    }

    /// UMEM frames per queue.
    pub fn frame_count(mut self, n: u32) -> Self {
        self.frame_count = n;
        self
    }

    /// Ring size.
    pub fn ring_size(mut self, n: u32) -> Self {
        self.ring_size = n;
        self
    }

    /// Frames longer than one UMEM frame (jumbo MTU). Without this call it
    /// is automatic: on when the interface's MTU does not fit one frame.
    pub fn multi_buffer(mut self, on: bool) -> Self {
        self.multi_buffer = Some(on);
        self
    }

    /// AF_XDP bind mode.
    pub fn bind(mut self, b: BindMode) -> Self {
        self.bind = b;
        self
    }

    /// Native or generic XDP.
    pub fn xdp_mode(mut self, m: XdpMode) -> Self {
        self.xdp_mode = m;
        self
    }

    /// Busy-poll, adaptive or sleeping, for the datapath and for waiting
    /// application calls.
    pub fn poll_mode(mut self, m: PollMode) -> Self {
        self.poll = m;
        self
    }

    /// Who runs the poll loop.
    pub fn driving(mut self, d: Driving) -> Self {
        self.driving = d;
        self
    }

    /// Fail if the interface cannot be driven (default: fall back to kernel
    /// sockets with a warning, as a plain socket would still work).
    pub fn require_link(mut self, on: bool) -> Self {
        self.require_link = on;
        self
    }

    /// The most bytes a reliable-link connection may have written but not
    /// yet acknowledged (default 4 MiB). Its send buffering starts at the
    /// initial window and grows with the peer's window up to this.
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes;
        self
    }

    /// The largest receive window a reliable-link connection grows to
    /// (default 4 MiB; the credit it grants). It starts at the initial
    /// window and doubles while the sender is held back by it.
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = bytes;
        self
    }

    /// The first receive window of a reliable-link connection, and the send
    /// buffering it is guaranteed (default 32 KiB); reserved from the
    /// memory limit when the connection is made.
    pub fn initial_window(mut self, bytes: usize) -> Self {
        self.initial_window = Some(bytes);
        self
    }

    /// The most memory all connection buffers of this runtime may reserve
    /// together (reliable-link windows and TCP-mode buffers; default: an
    /// eighth of the machine's memory, at least 256 MiB). A connection that
    /// would pass it is refused with [`Error::MemoryLimit`]; connections
    /// that exist keep their first window, so they never stall.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Probe a peer node after this long without hearing from it (default
    /// 1 s; `None` turns liveness off): an idle connection to a peer that
    /// died ends with [`Error::TimedOut`] after `dead_after` (3 s) of
    /// silence, and its memory is returned. One probe per peer node, however
    /// many connections. An inline-driven runtime must be polled at least
    /// that often, or its peers take it for dead.
    pub fn keepalive(mut self, every: Option<Duration>) -> Self {
        self.keepalive = Some(every);
        self
    }

    /// Give up on a peer after this long without hearing it (reliable-link;
    /// also the TCP mode, which otherwise keeps its own `TcpConfig::dead_after`).
    pub fn dead_after(mut self, d: Duration) -> Self {
        self.dead_after = d;
        self.dead_after_set = true;
        self
    }

    /// Drops this fraction of transmitted frames at random (a lossy link, to
    /// test and measure recovery).
    pub fn inject_loss(mut self, fraction: f64) -> Self {
        self.inject_loss = fraction;
        self
    }

    /// Runs on devices opened elsewhere (in-memory ports, for tests) with
    /// these addresses, instead of an interface.
    pub fn devices(mut self, devices: Vec<Box<dyn FrameDevice>>, addrs: Vec<LocalAddr>) -> Self {
        self.devices = Some((devices, addrs));
        self
    }

    /// Tuning of the TCP mode (smoltcp on the datapath).
    pub fn tcp(mut self, c: TcpConfig) -> Self {
        self.tcp = c;
        self
    }

    /// With the automatic transport, reach peers that are off the segment or
    /// do not run xsock over the TCP mode instead of the kernel's TCP socket.
    pub fn prefer_tcp_mode(mut self, on: bool) -> Self {
        self.tcp_fallback = on;
        self
    }

    /// Next-hop MACs for the TCP mode on in-memory test devices (there is no
    /// kernel neighbour table to ask).
    pub fn tcp_neighbors(mut self, table: std::collections::HashMap<Ipv4Addr, MacAddr>) -> Self {
        self.tcp_neighbors = Some(table);
        self
    }

    /// Whether to go through a host engine (`xsock engine`) for the
    /// interface. Default: `XSOCK_ENGINE` (auto, off, require), else
    /// attach when one runs and drive the interface here when none does.
    pub fn engine(mut self, choice: EngineUse) -> Self {
        self.engine = Some(choice);
        self
    }

    /// The largest message [`crate::Stream::recv_message`] accepts from a
    /// peer (default 1 GiB): a longer one is refused with
    /// [`Error::MessageTooLarge`] and its connection reset, so a peer cannot
    /// make the process buffer (or try to allocate) more.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Overrides the whole reliable-link endpoint configuration.
    pub fn endpoint_config(mut self, c: EndpointConfig) -> Self {
        self.endpoint = Some(c);
        self
    }

    /// Opens the interface (if any) and starts the datapath.
    pub fn build(mut self) -> Result<Runtime, Error> {
        let notifier = Arc::new(Notifier::default());
        let devices = self.devices.take();
        let testing = devices.is_some();
        let budget = Budget::new(self.memory_limit.unwrap_or_else(default_memory_limit));
        if !testing && let Some(client) = self.attach()? {
            let s = &client.shared;
            let status = LinkStatus::Engine { iface: s.iface.clone(), pid: s.engine_pid };
            return Ok(self.runtime(None, Some(client), status, notifier, budget));
        }
        let (link, status) = match self.open_link(&notifier, devices, &budget) {
            Ok(Some(l)) => {
                let status = LinkStatus::Driven { iface: l.iface.clone() };
                (Some(l), status)
            }
            Ok(None) => {
                (None, LinkStatus::KernelOnly { reason: "no interface was given (RuntimeBuilder::interface)".into() })
            }
            Err(e) if !self.require_link && !testing => {
                let iface = self.iface.as_deref().unwrap_or("?");
                let reason = format!("{iface} could not be driven: {e}");
                log::warn!(
                    "xsock runs on kernel sockets only: {reason}. Every connection of this runtime takes kernel TCP \
                     for as long as it lives (it does not take the interface over later: build a new runtime once \
                     the interface is free); RuntimeBuilder::require_link(true) makes this an error instead, and \
                     Runtime::link_status() says why"
                );
                (None, LinkStatus::KernelOnly { reason })
            }
            Err(e) => return Err(e),
        };
        Ok(self.runtime(link, None, status, notifier, budget))
    }

    fn runtime(
        &self,
        link: Option<LinkCore>,
        client: Option<crate::engine_client::Client>,
        status: LinkStatus,
        notifier: Arc<Notifier>,
        budget: Arc<Budget>,
    ) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                link,
                client,
                status,
                notifier,
                poll: self.poll,
                launch: crate::launch::from_env(),
                max_message: self.max_message,
                budget,
            }),
        }
    }

    /// Attaches to the host engine of the interface, as [`EngineUse`]
    /// (builder, else `XSOCK_ENGINE`) says; `None`: drive it here.
    fn attach(&self) -> Result<Option<crate::engine_client::Client>, Error> {
        let Some(iface) = &self.iface else { return Ok(None) };
        let choice = match self.engine {
            Some(c) => c,
            None => EngineUse::from_env()?.unwrap_or_default(),
        };
        if choice == EngineUse::Never {
            if self.engine.is_none() {
                log::info!("xsock drives {iface} in this process (the host engine is turned off: XSOCK_ENGINE=off)");
            }
            return Ok(None);
        }
        let place = crate::engine_client::place(iface);
        match crate::engine_client::Client::attach(&place)? {
            Some(c) => {
                log::info!(
                    "xsock attached to the host engine for {iface} (pid {}, {}): connections go through it \
                     (XSOCK_ENGINE=off drives the interface in this process instead)",
                    c.shared.engine_pid,
                    c.shared.socket.display()
                );
                Ok(Some(c))
            }
            None if choice == EngineUse::Require => Err(Error::Config(format!(
                "no host engine runs for {iface} (no one listens on {}): start one (`xsock engine --iface {iface}`), \
                 or unset XSOCK_ENGINE=require to drive the interface in this process",
                place.socket().display()
            ))),
            None => {
                log::info!(
                    "xsock drives {iface} in this process (no host engine runs for it: nothing listens on {})",
                    place.socket().display()
                );
                Ok(None)
            }
        }
    }

    /// The datapath over the interface, or over the given test devices.
    fn open_datapath(&self, devices: Option<TestDevices>) -> Result<Option<(Datapath, Vec<LocalAddr>)>, Error> {
        if let Some((devices, addrs)) = devices {
            return Ok(Some((Datapath::from_devices(devices, self.poll)?, addrs)));
        }
        let Some(iface) = &self.iface else {
            return Ok(None);
        };
        let addrs: Vec<LocalAddr> = sys::if_ipv4_addrs(iface)
            .map_err(Error::Io)?
            .into_iter()
            .map(|(ip, prefix)| LocalAddr { ip, prefix })
            .collect();
        if addrs.is_empty() && sys::if_index(iface).is_ok() {
            return Err(Error::Config(format!(
                "interface {iface} has no IPv4 address; xsock names peers by IPv4 (add one: \
                 `ip addr add 10.0.0.1/24 dev {iface}`)"
            )));
        }
        let mut dp = Datapath::builder(iface);
        if let Some(on) = self.multi_buffer {
            dp = dp.multi_buffer(on);
        }
        let dp = dp
            .queues(0..self.queues)
            .backend(self.backend)
            .frame_size(self.frame_size)
            .frame_count(self.frame_count)
            .ring_size(self.ring_size)
            .fill_min(self.fill_min)
            .bind(self.bind)
            .xdp_mode(self.xdp_mode)
            .poll_mode(self.poll)
            .ethertypes([ETHERTYPE, crate::diag::ETHERTYPE])
            .inject_loss(self.inject_loss)
            .build()?;
        Ok(Some((dp, addrs)))
    }

    fn open_link(
        &self,
        notifier: &Arc<Notifier>,
        devices: Option<TestDevices>,
        budget: &Arc<Budget>,
    ) -> Result<Option<LinkCore>, Error> {
        let Some((mut dp, addrs)) = self.open_datapath(devices)? else {
            return Ok(None);
        };
        let info = dp.device_info(0).clone();
        let mut cfg =
            self.endpoint.clone().unwrap_or_else(|| EndpointConfig::new(info.mac.0, addrs.clone(), info.max_frame));
        cfg.addrs = addrs.clone();
        cfg.connection.send_buffer = self.send_buffer;
        cfg.connection.recv_buffer = self.recv_buffer;
        cfg.connection.dead_after = self.dead_after;
        if let Some(w) = self.initial_window {
            cfg.connection.initial_window = w;
        }
        if let Some(k) = self.keepalive {
            cfg.keepalive = k;
        }
        cfg.budget = Some(budget.clone());
        let seed = sys::random_u64().map_err(Error::Io)?;
        let shared = Arc::new(LinkShared::new(Endpoint::new(cfg, seed), notifier.clone()));
        let handler = dp.register(ETHERTYPE, Box::new(LinkHandler::new(shared.clone(), info.mac, info.max_frame)))?;
        let tcp = self.open_tcp(&mut dp, &addrs, notifier, budget)?;
        let waker = dp.waker();
        let engine = match self.driving {
            Driving::Thread => Engine::Thread(dp.spawn("xsock-datapath")?),
            Driving::Inline => Engine::Inline(Mutex::new(dp)),
            Driving::Loop => Engine::Loop(Mutex::new(dp)),
        };
        Ok(Some(LinkCore {
            shared,
            engine,
            handler,
            waker,
            addrs,
            mac: info.mac,
            iface: info.name,
            tcp,
            tcp_fallback: self.tcp_fallback,
        }))
    }

    /// The TCP mode on the datapath, where the backend lets us take IPv4
    /// ports from the kernel (AF_XDP) or there is no kernel (memory).
    fn open_tcp(
        &self,
        dp: &mut Datapath,
        addrs: &[LocalAddr],
        notifier: &Arc<Notifier>,
        budget: &Arc<Budget>,
    ) -> Result<Option<(Arc<TcpShared>, crate::HandlerId)>, Error> {
        use xsock_nic::{Backend, neigh};
        let info = dp.device_info(0).clone();
        let Some(addr) = addrs.first() else { return Ok(None) };
        let filter = dp.ipv4_filter();
        let (neighbors, gateway) = match info.backend {
            Backend::AfXdp { .. } if filter.is_some() => (
                crate::path::tcp::NeighborSource::Kernel { iface: info.name.clone(), ifindex: info.ifindex },
                neigh::default_gateway(&info.name),
            ),
            Backend::Memory => {
                (crate::path::tcp::NeighborSource::Static(self.tcp_neighbors.clone().unwrap_or_default()), None)
            }
            _ => {
                log::info!("TCP mode unavailable on {}: needs AF_XDP to take ports from the kernel", info.backend);
                return Ok(None);
            }
        };
        let setup = TcpSetup {
            mac: info.mac,
            ip: addr.ip,
            prefix: addr.prefix,
            gateway,
            neighbors,
            filter,
            mtu: (info.mtu as usize + xsock_nic::ETH_HEADER_LEN).min(info.max_frame),
            seed: sys::random_u64().map_err(Error::Io)?,
            budget: budget.clone(),
        };
        let mut cfg = self.tcp.clone();
        // Unless the application chose one, the TCP mode keeps its own,
        // longer deadline: one lost retransmission on a 350 ms path is 3 s
        // of silence (RTO 1 s, doubled), the link's default.
        if self.dead_after_set {
            cfg.dead_after = self.dead_after;
        }
        let shared = Arc::new(TcpShared::new(TcpCore::new(setup, cfg)?, notifier.clone()));
        let id = dp.register(crate::path::tcp::ETHERTYPE_IPV4, Box::new(TcpHandler::new(shared.clone())))?;
        Ok(Some((shared, id)))
    }
}

pub(crate) enum Engine {
    Thread(DatapathThread),
    Inline(Mutex<Datapath>),
    /// Driven by one application loop ([`Driving::Loop`]).
    Loop(Mutex<Datapath>),
}

pub(crate) struct LinkCore {
    pub shared: Arc<LinkShared>,
    pub engine: Engine,
    /// The link handler's id in the datapath.
    pub handler: crate::HandlerId,
    pub waker: Waker,
    pub addrs: Vec<LocalAddr>,
    pub mac: MacAddr,
    pub iface: String,
    /// The TCP mode and its handler's id, where available.
    pub tcp: Option<(Arc<TcpShared>, crate::HandlerId)>,
    /// Auto transport falls back to the TCP mode instead of kernel TCP.
    pub tcp_fallback: bool,
}

pub(crate) struct Inner {
    pub link: Option<LinkCore>,
    /// Attached to a host engine (then `link` is `None`).
    pub client: Option<crate::engine_client::Client>,
    pub status: LinkStatus,
    pub budget: Arc<Budget>,
    pub notifier: Arc<Notifier>,
    pub poll: PollMode,
    pub launch: Option<Launch>,
    pub max_message: usize,
}

/// How long a dropped runtime lets open reliable-link connections finish
/// gracefully before resetting them (peers then see a reset at once, not a
/// silence they must time out on).
pub const LINGER_ON_DROP: Duration = Duration::from_secs(1);

/// How long a thread waits on its notifiers while another thread drives
/// the inline datapath, before it looks whether it must drive itself.
pub(crate) const OTHER_DRIVER: Duration = Duration::from_millis(2);

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(link) = &self.link else { return };
        let open = |ep: &Endpoint| {
            ep.connection_ids().filter(|&c| ep.connection(c).is_some_and(|c| c.close_reason().is_none())).count()
        };
        let drive = || match &link.engine {
            Engine::Inline(dp) | Engine::Loop(dp) => {
                let _ = dp.lock().unwrap_or_else(|p| p.into_inner()).poll();
            }
            Engine::Thread(_) => {
                link.waker.wake();
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        let deadline = Instant::now() + LINGER_ON_DROP;
        while open(&link.shared.lock()) > 0 && Instant::now() < deadline {
            drive();
        }
        let mut ep = link.shared.lock();
        let left: Vec<u64> = ep.connection_ids().collect();
        for cid in left {
            ep.abort(cid);
        }
        drop(ep);
        for _ in 0..10 {
            drive();
        }
    }
}

/// The xsock runtime: one per process and interface. Cheap to clone
/// (streams and listeners hold a clone).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("iface", &self.inner.link.as_ref().map(|l| &l.iface))
            .field("poll", &self.inner.poll)
            .finish_non_exhaustive()
    }
}

/// Passes of [`Runtime::poll_drain`] at most: 64 frames each, a 2048-frame
/// receive ring.
const DRAIN_PASSES: usize = 32;

impl Runtime {
    /// A builder.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Whether the reliable-link path is up (an interface is driven here
    /// or by the host engine this runtime is attached to).
    pub fn has_link(&self) -> bool {
        self.inner.link.is_some() || self.inner.client.is_some()
    }

    /// Attached to a host engine (then connections go through it).
    pub fn is_attached(&self) -> bool {
        self.inner.client.is_some()
    }

    /// The attached host engine's status as JSON text (`None`: this
    /// runtime drives its interface itself, or none).
    pub fn engine_status(&self) -> Option<Result<String, Error>> {
        self.client().map(|c| c.status())
    }

    pub(crate) fn client(&self) -> Option<&Arc<crate::engine_client::ClientShared>> {
        self.inner.client.as_ref().map(|c| &c.shared)
    }

    /// Whether an interface is driven, or why the runtime fell back to
    /// kernel sockets.
    pub fn link_status(&self) -> &LinkStatus {
        &self.inner.status
    }

    /// Connection-buffer memory: the limit, what is reserved, the chunks in
    /// use.
    pub fn memory(&self) -> MemoryStats {
        let mut m = MemoryStats {
            limit: self.inner.budget.limit(),
            reserved: self.inner.budget.reserved(),
            chunks_in_use: 0,
            chunks_warm: 0,
            chunk_bytes: xsock_reliable_link::buffer::CHUNK,
            link_connections: 0,
        };
        if let Some(l) = &self.inner.link {
            let ep = l.shared.lock();
            let p = ep.pool_stats();
            m.chunks_in_use = p.chunks_in_use;
            m.chunks_warm = p.chunks_warm;
            m.link_connections = ep.connections();
        }
        m
    }

    /// One line of the reliable-link endpoint's and the queues' counters,
    /// with what all its connections sent (for diagnosing a stall: for
    /// people, not for parsing).
    pub fn describe_link(&self) -> String {
        let Some(l) = &self.inner.link else { return "no link runtime".into() };
        let (stats, conns, pool, sent) = {
            let ep = l.shared.lock();
            let mut sent = xsock_reliable_link::connection::ConnStats::default();
            for c in ep.connection_ids().filter_map(|id| ep.connection(id)) {
                let s = c.stats();
                sent.data_frames += s.data_frames;
                sent.resent_bytes += s.resent_bytes;
                sent.probes += s.probes;
                sent.naks_sent += s.naks_sent;
                sent.credit_frames += s.credit_frames;
            }
            (ep.stats(), ep.connections(), ep.pool_stats(), sent)
        };
        format!(
            "{conns} connections, {stats:?}, {pool:?}; their data frames {}, resent bytes {}, probes {}, NAKs {}, credit \
             frames {}; queues {:?}",
            sent.data_frames,
            sent.resent_bytes,
            sent.probes,
            sent.naks_sent,
            sent.credit_frames,
            self.queue_stats()
        )
    }

    /// Our IPv4 addresses on the driven interface.
    pub fn local_addrs(&self) -> Vec<Ipv4Addr> {
        if let Some(c) = self.client() {
            return vec![c.addr];
        }
        self.inner.link.as_ref().map(|l| l.addrs.iter().map(|a| a.ip).collect()).unwrap_or_default()
    }

    /// Our IPv4 addresses on the driven interface with their prefix lengths.
    pub fn local_subnets(&self) -> Vec<(Ipv4Addr, u8)> {
        if let Some(c) = self.client() {
            return vec![(c.addr, c.prefix)];
        }
        self.inner.link.as_ref().map(|l| l.addrs.iter().map(|a| (a.ip, a.prefix)).collect()).unwrap_or_default()
    }

    /// Wakes whoever sleeps in [`Runtime::idle`] (another thread has work
    /// for the loop: a frame on a kernel socket, a message on a channel).
    pub fn wake(&self) {
        self.inner.notifier.notify();
        if let Some(l) = &self.inner.link {
            l.waker.wake();
        }
    }

    /// Our MAC on the driven interface.
    pub fn local_mac(&self) -> Option<MacAddr> {
        self.inner.link.as_ref().map(|l| l.mac)
    }

    /// Rank and size when started by Slurm or an MPI launcher.
    pub fn launch(&self) -> Option<Launch> {
        self.inner.launch
    }

    /// The largest message a stream's `recv_message` accepts by default.
    pub fn max_message(&self) -> usize {
        self.inner.max_message
    }

    /// The poll mode.
    pub fn poll_mode(&self) -> PollMode {
        self.inner.poll
    }

    /// Inline driving: runs one pass of the poll loop on this thread and
    /// returns how much work it did. With a datapath thread: returns 0.
    pub fn poll(&self) -> Result<usize, Error> {
        match self.inner.link.as_ref().map(|l| &l.engine) {
            Some(Engine::Inline(dp) | Engine::Loop(dp)) => {
                dp.lock().unwrap_or_else(|p| p.into_inner()).poll().map_err(Error::Io)
            }
            _ => Ok(0),
        }
    }

    /// Inline driving: passes until the receive rings are drained (at most
    /// a ring's worth), for callers that do a lot between polls; `None`
    /// when another thread drives the inline datapath now (its passes
    /// notify the waiters).
    pub(crate) fn try_poll_drain(&self) -> Result<Option<usize>, Error> {
        match self.inner.link.as_ref().map(|l| &l.engine) {
            Some(Engine::Inline(dp) | Engine::Loop(dp)) => match dp.try_lock() {
                Ok(mut dp) => dp.poll_drain(DRAIN_PASSES).map(Some).map_err(Error::Io),
                Err(_) => Ok(None),
            },
            _ => Ok(Some(0)),
        }
    }

    /// Like [`Runtime::idle_with`] for an inline datapath, unless another
    /// thread holds it (false: nothing was waited for).
    /// `sleep`: in poll(2) at once, whatever the poll mode (a helper
    /// thread must not spin beside the application's).
    pub(crate) fn try_idle_with(
        &self,
        max: Option<Duration>,
        extra: &[std::os::fd::BorrowedFd<'_>],
        sleep: bool,
    ) -> Result<bool, Error> {
        let mode = if sleep { PollMode::Sleep } else { self.inner.poll };
        match self.inner.link.as_ref().map(|l| &l.engine) {
            Some(Engine::Inline(dp) | Engine::Loop(dp)) => match dp.try_lock() {
                Ok(mut dp) => dp.idle_as(mode, max, extra).map(|()| true).map_err(Error::Io),
                Err(_) => Ok(false),
            },
            _ => Ok(false),
        }
    }

    /// Inline driving, after a [`Runtime::poll`] that found nothing to do:
    /// waits as the poll mode says. Busy returns at once; adaptive spins a
    /// while after the last work, then sleeps; sleep sleeps at once. A sleep
    /// ends at the first frame, a wake-up from another thread, the next
    /// timer (a pacing departure, a retransmission) or `max`. With a
    /// datapath thread (or no interface) it sleeps for `max` at most, or
    /// returns at once when busy-polling.
    pub fn idle(&self, max: Option<Duration>) -> Result<(), Error> {
        match self.inner.link.as_ref().map(|l| &l.engine) {
            Some(Engine::Inline(dp) | Engine::Loop(dp)) => {
                dp.lock().unwrap_or_else(|p| p.into_inner()).idle(max).map_err(Error::Io)
            }
            _ if self.inner.poll == PollMode::Busy => Ok(()),
            _ => {
                let seen = self.inner.notifier.generation();
                self.inner.notifier.wait_past(seen, max.unwrap_or(Duration::from_millis(100)));
                Ok(())
            }
        }
    }

    /// For the driving loop of [`Driving::Loop`] (or inline): like
    /// [`Runtime::idle`], also ending when one of `extra` is readable.
    pub fn idle_with(&self, max: Option<Duration>, extra: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), Error> {
        match self.inner.link.as_ref().map(|l| &l.engine) {
            Some(Engine::Inline(dp) | Engine::Loop(dp)) => {
                dp.lock().unwrap_or_else(|p| p.into_inner()).idle_with(max, extra).map_err(Error::Io)
            }
            _ => self.idle(max),
        }
    }

    /// Counters of the datapath's queues (empty without an interface).
    pub fn queue_stats(&self) -> Vec<crate::QueueStats> {
        match self.inner.link.as_ref().map(|l| &l.engine) {
            Some(Engine::Inline(dp) | Engine::Loop(dp)) => dp.lock().unwrap_or_else(|p| p.into_inner()).stats(),
            Some(Engine::Thread(t)) => t.call(|dp| dp.stats()).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    pub(crate) fn link(&self) -> Option<&LinkCore> {
        self.inner.link.as_ref()
    }

    /// Announces a change to every waiter (and wakes an inline datapath
    /// sleeping in poll(2)).
    pub(crate) fn notify(&self) {
        self.inner.notifier.notify();
        if let Some(l) = &self.inner.link {
            l.waker.wake();
        }
    }

    /// Gets the TCP mode's frames moving (as [`Runtime::kick`] for the link).
    pub(crate) fn kick_tcp(&self) {
        let Some(l) = &self.inner.link else { return };
        let Some((_, id)) = &l.tcp else { return };
        match &l.engine {
            Engine::Inline(dp) | Engine::Loop(dp) => match dp.try_lock() {
                Ok(mut dp) => {
                    let _ = dp.poll_handler(*id);
                }
                // The driver holds it (perhaps asleep): wake it to send.
                Err(_) => l.waker.wake(),
            },
            Engine::Thread(_) => {
                if self.inner.poll != PollMode::Busy {
                    l.waker.wake();
                }
            }
        }
    }

    pub(crate) fn tcp(&self) -> Option<&Arc<TcpShared>> {
        self.inner.link.as_ref()?.tcp.as_ref().map(|(s, _)| s)
    }

    /// Whether the TCP mode is up (attached to a host engine: the engine
    /// has it when it drives AF_XDP; a connect says if not).
    pub fn has_tcp_mode(&self) -> bool {
        self.tcp().is_some() || self.inner.client.is_some()
    }

    /// Gets frames the application just queued moving: an inline datapath
    /// runs a pass now; a sleeping datapath thread is woken.
    pub(crate) fn kick(&self) {
        let Some(l) = &self.inner.link else { return };
        match &l.engine {
            Engine::Inline(dp) | Engine::Loop(dp) => match dp.try_lock() {
                // Only the link's transmissions: a whole pass would also
                // receive, run timers and publish counters.
                Ok(mut dp) => {
                    let _ = dp.poll_handler(l.handler);
                }
                // The driver holds it (perhaps asleep): wake it to send.
                Err(_) => l.waker.wake(),
            },
            Engine::Thread(_) => {
                if self.inner.poll != PollMode::Busy {
                    l.waker.wake();
                }
            }
        }
    }

    /// Waits until `check` returns `Some`, or `deadline` passes (`None`),
    /// looking again whenever `signal` is bumped (the notifier of what is
    /// waited on: a connection, a listener, a connect). With inline
    /// driving, runs the poll loop while waiting.
    pub(crate) fn wait_on<R>(
        &self,
        signal: &Notifier,
        deadline: Option<Instant>,
        mut check: impl FnMut() -> Result<Option<R>, Error>,
    ) -> Result<Option<R>, Error> {
        loop {
            let seen = signal.generation();
            if let Some(r) = check()? {
                return Ok(Some(r));
            }
            // The clock only when there is a deadline: this loop spins.
            let cap = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    (d - now).min(Duration::from_millis(100))
                }
                None => Duration::from_millis(100),
            };
            match self.inner.link.as_ref().map(|l| &l.engine) {
                Some(Engine::Inline(dp)) => match dp.try_lock() {
                    Ok(mut dp) => {
                        let work = dp.poll().map_err(Error::Io)?;
                        if work == 0 && signal.generation() == seen {
                            dp.idle(Some(cap)).map_err(Error::Io)?;
                        }
                    }
                    // Another thread of ours drives it (an overlay session's
                    // pump, asleep in poll(2) with it): its passes notify
                    // us; look again soon in case it stops driving.
                    Err(_) => signal.wait_past(seen, cap.min(OTHER_DRIVER)),
                },
                _ if self.inner.poll == PollMode::Busy => signal.spin_past(seen, deadline),
                _ => signal.wait_past(seen, cap),
            }
        }
    }
}
