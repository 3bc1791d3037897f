//! The poll loop: receive in batches on every queue, demultiplex by
//! EtherType to the registered handlers, run due timers, flush transmits.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use xsock_nic::{
    BackendChoice, DeviceInfo, FrameDevice,
    sys::{EventFd, Interest, poll_fds},
    xdp::{AfXdpConfig, BindMode, XdpMode},
};

use crate::{
    Error,
    counters::{Counters, KERNEL_REFRESH, QueueStats, Tally},
    handler::{Context, FrameHandler, HandlerId},
    timer::TimerQueue,
};

/// How the loop behaves when there is no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep: spin on the rings (lowest latency, one core per loop).
    Busy,
    /// Spin for `spin` after the last work, then sleep in poll(2) until a
    /// frame, a timer or a wake-up.
    Adaptive {
        /// How long to keep spinning after the last work.
        spin: Duration,
    },
    /// Sleep in poll(2) as soon as there is no work.
    Sleep,
}

impl Default for PollMode {
    fn default() -> Self {
        PollMode::Adaptive { spin: Duration::from_micros(50) }
    }
}

/// Frames taken from one queue per pass, at most.
pub const RX_BUDGET: usize = 64;

struct Port {
    device: Box<dyn FrameDevice>,
    info: DeviceInfo,
    tally: Tally,
}

struct Slot {
    ethertype: u16,
    handler: Box<dyn FrameHandler>,
}

/// Wakes a datapath that sleeps in poll(2). Cheap to clone; safe from any thread.
#[derive(Debug, Clone)]
pub struct Waker(Arc<EventFd>);

impl Waker {
    /// Makes the datapath's next (or current) sleep return at once.
    pub fn wake(&self) {
        self.0.signal();
    }
}

/// A poll-mode datapath over one or more queues.
pub struct Datapath {
    ports: Vec<Port>,
    slots: Vec<Slot>,
    timers: TimerQueue,
    mode: PollMode,
    waker: Arc<EventFd>,
    counters: Counters,
    last_work: Instant,
    /// The last pass took a full [`RX_BUDGET`] from some queue: more waits.
    rx_full: bool,
    last_kernel_refresh: Instant,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("queues", &self.ports.iter().map(|p| &p.info).collect::<Vec<_>>())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Datapath`] on an interface.
#[derive(Debug, Clone)]
pub struct DatapathBuilder {
    iface: String,
    queues: Vec<u32>,
    backend: BackendChoice,
    frame_size: u32,
    frame_count: u32,
    ring_size: u32,
    fill_min: usize,
    multi_buffer: Option<bool>,
    bind: BindMode,
    xdp_mode: XdpMode,
    mode: PollMode,
    ethertypes: Vec<u16>,
    inject_loss: f64,
}

impl DatapathBuilder {
    /// Queue 0 of `iface`, automatic backend, xsock's two EtherTypes.
    pub fn new(iface: impl Into<String>) -> Self {
        let d = AfXdpConfig::new("");
        Self {
            iface: iface.into(),
            queues: vec![0],
            backend: BackendChoice::Auto,
            frame_size: d.frame_size,
            frame_count: d.frame_count,
            ring_size: d.ring_size,
            fill_min: d.fill_min,
            multi_buffer: None,
            bind: BindMode::Auto,
            xdp_mode: XdpMode::Auto,
            mode: PollMode::default(),
            ethertypes: vec![xsock_nic::ETHERTYPE_LOCAL_EXP1, xsock_nic::ETHERTYPE_LOCAL_EXP2],
            inject_loss: 0.0,
        }
    }

    /// Drops this fraction of transmitted frames, at random (seeded from the
    /// OS): a lossy link, for testing and measuring recovery.
    pub fn inject_loss(mut self, fraction: f64) -> Self {
        self.inject_loss = fraction.clamp(0.0, 1.0);
        self
    }

    /// Queues to drive (one socket each).
    pub fn queues(mut self, queues: impl IntoIterator<Item = u32>) -> Self {
        self.queues = queues.into_iter().collect();
        self
    }

    /// Backend choice (default: AF_XDP with automatic AF_PACKET fallback).
    pub fn backend(mut self, b: BackendChoice) -> Self {
        self.backend = b;
        self
    }

    /// UMEM chunk size, 2048 or 4096.
    pub fn frame_size(mut self, bytes: u32) -> Self {
        self.frame_size = bytes;
        self
    }

    /// UMEM chunks per queue (half receive, half transmit).
    pub fn frame_count(mut self, n: u32) -> Self {
        self.frame_count = n;
        self
    }

    /// Fewest receive buffers kept on the fill ring (see
    /// [`AfXdpConfig::fill_min`]; `u32::MAX` = the whole ring, for bulk
    /// receivers).
    pub fn fill_min(mut self, n: u32) -> Self {
        self.fill_min = n as usize;
        self
    }

    /// Ring sizes.
    pub fn ring_size(mut self, n: u32) -> Self {
        self.ring_size = n;
        self
    }

    /// Frames longer than one chunk (jumbo MTU); automatic (on when the MTU
    /// does not fit a chunk) unless set.
    pub fn multi_buffer(mut self, on: bool) -> Self {
        self.multi_buffer = Some(on);
        self
    }

    /// Zero-copy / copy bind.
    pub fn bind(mut self, b: BindMode) -> Self {
        self.bind = b;
        self
    }

    /// Native or generic XDP.
    pub fn xdp_mode(mut self, m: XdpMode) -> Self {
        self.xdp_mode = m;
        self
    }

    /// What the loop does when idle.
    pub fn poll_mode(mut self, m: PollMode) -> Self {
        self.mode = m;
        self
    }

    /// EtherTypes the XDP filter steers to this datapath.
    pub fn ethertypes(mut self, types: impl IntoIterator<Item = u16>) -> Self {
        self.ethertypes = types.into_iter().collect();
        self
    }

    /// Opens every queue. On error, queues already opened are closed again
    /// (and the XDP filter detached if nothing else uses it).
    pub fn build(self) -> Result<Datapath, Error> {
        if self.queues.is_empty() {
            return Err(Error::Config("a datapath needs at least one queue".into()));
        }
        let mut devices: Vec<Box<dyn FrameDevice>> = Vec::with_capacity(self.queues.len());
        for &queue in &self.queues {
            let cfg = AfXdpConfig {
                iface: self.iface.clone(),
                queue,
                frame_size: self.frame_size,
                frame_count: self.frame_count,
                ring_size: self.ring_size,
                multi_buffer: self.multi_buffer,
                bind: self.bind,
                xdp_mode: self.xdp_mode,
                ethertypes: self.ethertypes.clone(),
                tx_batch: 64,
                fill_min: self.fill_min,
            };
            let dev = xsock_nic::open(&cfg, self.backend)?;
            if self.inject_loss > 0.0 {
                let seed = xsock_nic::sys::random_u64().map_err(Error::Io)?;
                log::warn!(
                    "dropping {:.3}% of transmitted frames on queue {queue} (--inject-loss)",
                    self.inject_loss * 100.0
                );
                let faults = xsock_nic::fault::FaultConfig { seed, loss: self.inject_loss, ..Default::default() };
                devices.push(Box::new(xsock_nic::fault::FaultInjector::new(dev, faults)));
            } else {
                devices.push(dev);
            }
        }
        Datapath::from_devices(devices, self.mode)
    }
}

impl Datapath {
    /// A builder for a datapath on `iface`.
    pub fn builder(iface: impl Into<String>) -> DatapathBuilder {
        DatapathBuilder::new(iface)
    }

    /// A datapath over devices opened elsewhere (in-memory ports in tests,
    /// for instance); queue `i` is `devices[i]`.
    pub fn from_devices(devices: Vec<Box<dyn FrameDevice>>, mode: PollMode) -> Result<Self, Error> {
        if devices.is_empty() {
            return Err(Error::Config("a datapath needs at least one device".into()));
        }
        let counters = Counters::new(devices.len());
        let now = Instant::now();
        Ok(Self {
            ports: devices
                .into_iter()
                .map(|device| Port { info: device.info().clone(), device, tally: Tally::default() })
                .collect(),
            slots: Vec::new(),
            timers: TimerQueue::default(),
            mode,
            waker: Arc::new(EventFd::new().map_err(Error::Io)?),
            counters,
            last_work: now,
            rx_full: false,
            last_kernel_refresh: now - KERNEL_REFRESH,
        })
    }

    /// Registers `handler` for frames of `ethertype`.
    pub fn register(&mut self, ethertype: u16, handler: Box<dyn FrameHandler>) -> Result<HandlerId, Error> {
        if self.slots.iter().any(|s| s.ethertype == ethertype) {
            return Err(Error::HandlerExists(ethertype));
        }
        self.slots.push(Slot { ethertype, handler });
        Ok(HandlerId(self.slots.len() - 1))
    }

    /// The handler registered as `id`, if it is a `T`.
    pub fn handler_mut<T: FrameHandler>(&mut self, id: HandlerId) -> Option<&mut T> {
        let h: &mut dyn std::any::Any = self.slots.get_mut(id.0)?.handler.as_mut();
        h.downcast_mut::<T>()
    }

    /// The XDP filter of queue 0's interface (AF_XDP only).
    pub fn ipv4_filter(&self) -> Option<std::sync::Arc<xsock_nic::xdp::XdpFilter>> {
        self.ports.first().and_then(|p| p.device.ipv4_filter())
    }

    /// Facts about queue `queue`'s device.
    pub fn device_info(&self, queue: usize) -> &DeviceInfo {
        &self.ports[queue].info
    }

    /// Number of queues.
    pub fn queues(&self) -> usize {
        self.ports.len()
    }

    /// A handle on the counters, readable from any thread.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Fresh counters of every queue (re-reads the kernel's figures).
    pub fn stats(&mut self) -> Vec<QueueStats> {
        for (q, port) in self.ports.iter().enumerate() {
            self.counters.publish(q, &port.tally);
            self.counters.publish_kernel(q, &port.device.stats());
        }
        self.last_kernel_refresh = Instant::now();
        self.counters.all()
    }

    /// A waker for this datapath's sleeps.
    pub fn waker(&self) -> Waker {
        Waker(self.waker.clone())
    }

    /// The poll mode.
    pub fn poll_mode(&self) -> PollMode {
        self.mode
    }

    /// Sets the poll mode.
    pub fn set_poll_mode(&mut self, mode: PollMode) {
        self.mode = mode;
    }

    /// Runs `f` as handler `id` on `queue`, with a context that can transmit
    /// and set timers — how code outside the loop (an application call on
    /// the inline path) drives a protocol.
    pub fn with_handler<T: FrameHandler, R>(
        &mut self,
        id: HandlerId,
        queue: usize,
        f: impl FnOnce(&mut T, &mut Context<'_>) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        let port = self.ports.get_mut(queue)?;
        let slot = self.slots.get_mut(id.0)?;
        let h: &mut dyn std::any::Any = slot.handler.as_mut();
        let handler = h.downcast_mut::<T>()?;
        let mut cx = Context {
            now,
            queue,
            handler: id,
            sink: port.device.sink(),
            timers: &mut self.timers,
            info: &port.info,
            tally: &mut port.tally,
        };
        Some(f(handler, &mut cx))
    }

    /// Transmits a frame on `queue` outside any handler.
    pub fn transmit(&mut self, queue: usize, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), Error> {
        let port = self.ports.get_mut(queue).ok_or(Error::Config(format!("no queue {queue}")))?;
        let mut fill = Some(fill);
        let r = port.device.sink().transmit(len, &mut |b| {
            if let Some(f) = fill.take() {
                f(b)
            }
        });
        match r {
            Ok(()) => {
                port.tally.tx_frames += 1;
                port.tally.tx_bytes += len as u64;
                Ok(())
            }
            Err(e) => {
                if e == xsock_nic::TxError::RingFull {
                    port.tally.tx_ring_full += 1;
                }
                Err(Error::Tx(e))
            }
        }
    }

    /// Flushes pending transmissions on every queue.
    pub fn flush(&mut self) -> io::Result<()> {
        for port in &mut self.ports {
            port.device.sink().flush()?;
        }
        Ok(())
    }

    /// Runs only handler `id`'s `on_kick` on every queue and flushes: a
    /// transmit-only pass, for getting frames an application call just
    /// queued onto the wire without a whole pass of the loop.
    pub fn poll_handler(&mut self, id: HandlerId) -> io::Result<usize> {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(id.0) else { return Ok(0) };
        let mut work = 0;
        for port in &mut self.ports {
            let Port { device, info, tally } = port;
            let mut cx =
                Context { now, queue: 0, handler: id, sink: device.sink(), timers: &mut self.timers, info, tally };
            if slot.handler.on_kick(&mut cx) {
                work += 1;
            }
            device.sink().flush()?;
        }
        Ok(work)
    }

    /// One pass: receive up to [`RX_BUDGET`] frames per queue and hand them
    /// to their handlers, give every handler its `on_poll`, fire due timers,
    /// flush. Returns how much work was done (0 = idle).
    pub fn poll(&mut self) -> io::Result<usize> {
        let now = Instant::now();
        let mut work = 0;
        let slots = &mut self.slots;
        let timers = &mut self.timers;
        self.rx_full = false;
        for (q, port) in self.ports.iter_mut().enumerate() {
            let Port { device, info, tally } = port;
            tally.polls += 1;
            let got = device.receive(RX_BUDGET, &mut |frame, sink| {
                tally.rx_frames += 1;
                tally.rx_bytes += frame.len() as u64;
                let et = frame.ethertype();
                match slots.iter_mut().enumerate().find(|(_, s)| Some(s.ethertype) == et) {
                    Some((i, slot)) => {
                        let mut cx = Context {
                            now,
                            queue: q,
                            handler: HandlerId(i),
                            sink,
                            timers: &mut *timers,
                            info,
                            tally: &mut *tally,
                        };
                        slot.handler.on_frame(frame, &mut cx);
                    }
                    None => tally.rx_unclaimed += 1,
                }
            })?;
            self.rx_full |= got >= RX_BUDGET;
            work += got;
            for (i, slot) in slots.iter_mut().enumerate() {
                let mut cx = Context {
                    now,
                    queue: q,
                    handler: HandlerId(i),
                    sink: device.sink(),
                    timers: &mut *timers,
                    info,
                    tally: &mut *tally,
                };
                if slot.handler.on_poll(&mut cx) {
                    work += 1;
                }
            }
        }
        while let Some(due) = self.timers.pop_due(now) {
            work += 1;
            let (Some(port), Some(slot)) = (self.ports.get_mut(due.queue), self.slots.get_mut(due.handler.0)) else {
                continue;
            };
            let mut cx = Context {
                now,
                queue: due.queue,
                handler: due.handler,
                sink: port.device.sink(),
                timers: &mut self.timers,
                info: &port.info,
                tally: &mut port.tally,
            };
            slot.handler.on_timer(due.token, &mut cx);
        }
        for (q, port) in self.ports.iter_mut().enumerate() {
            port.device.sink().flush()?;
            self.counters.publish(q, &port.tally);
        }
        if now.duration_since(self.last_kernel_refresh) >= KERNEL_REFRESH {
            self.last_kernel_refresh = now;
            for (q, port) in self.ports.iter().enumerate() {
                self.counters.publish_kernel(q, &port.device.stats());
            }
        }
        if work > 0 {
            self.last_work = now;
        }
        Ok(work)
    }

    /// Passes until the receive rings are drained (a pass takes less than
    /// [`RX_BUDGET`] from every queue), at most `max_passes`. For a caller
    /// that drives the datapath between long stretches of its own work: one
    /// pass per stretch takes 64 frames while 128 streams each deliver a
    /// window, and the ring overflows.
    pub fn poll_drain(&mut self, max_passes: usize) -> io::Result<usize> {
        let mut work = 0;
        for _ in 0..max_passes.max(1) {
            work += self.poll()?;
            if !self.rx_full {
                break;
            }
        }
        Ok(work)
    }

    /// What to do after a pass with no work, per the poll mode: spin (return
    /// at once) or sleep in poll(2) over every queue and the waker until a
    /// frame, a wake-up, the next timer, or `max` — whichever is first.
    pub fn idle(&mut self, max: Option<Duration>) -> io::Result<()> {
        self.idle_with(max, &[])
    }

    /// [`Datapath::idle`] that also ends when one of `extra` is readable
    /// (an event loop's other sockets).
    pub fn idle_with(&mut self, max: Option<Duration>, extra: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
        self.idle_as(self.mode, max, extra)
    }

    /// [`Datapath::idle_with`] as poll mode `mode` says, whatever the
    /// datapath's own (a helper thread that must never spin sleeps).
    pub fn idle_as(
        &mut self,
        mode: PollMode,
        max: Option<Duration>,
        extra: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        let spin = match mode {
            PollMode::Busy => {
                std::hint::spin_loop();
                return Ok(());
            }
            PollMode::Adaptive { spin } => spin,
            PollMode::Sleep => Duration::ZERO,
        };
        let now = Instant::now();
        if now.duration_since(self.last_work) < spin {
            std::hint::spin_loop();
            return Ok(());
        }
        let mut timeout = max;
        if let Some(t) = self.timers.next_deadline() {
            let until = t.saturating_duration_since(now);
            timeout = Some(timeout.map_or(until, |m| m.min(until)));
        }
        for port in &mut self.ports {
            port.device.sink().flush()?;
            port.tally.sleeps += 1;
        }
        use_fine_timer_slack();
        let mut interests: Vec<Interest<'_>> =
            self.ports.iter().map(|p| Interest { fd: p.device.readiness_fd(), read: true, write: false }).collect();
        interests.push(Interest { fd: self.waker.fd(), read: true, write: false });
        interests.extend(extra.iter().map(|&fd| Interest { fd, read: true, write: false }));
        poll_fds(&interests, timeout)?;
        self.waker.clear();
        Ok(())
    }

    /// Polls (and idles per the poll mode) until `done()` holds or `timeout`
    /// passes. Returns whether `done()` held.
    pub fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&mut Datapath) -> bool) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let work = self.poll()?;
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if work == 0 {
                self.idle(Some(deadline - now))?;
            }
        }
    }
}

/// How late a sleep in [`Datapath::idle`] may end. The kernel's default is
/// 50 µs, which is four frame gaps at 1 Gbit/s: a pacer that sleeps between
/// bursts would lose its schedule.
pub const TIMER_SLACK: Duration = Duration::from_micros(5);

/// Sets [`TIMER_SLACK`] on this thread, once.
fn use_fine_timer_slack() {
    thread_local! {
        static SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    SET.with(|set| {
        if !set.replace(true)
            && let Err(e) = xsock_nic::sys::set_timer_slack(TIMER_SLACK)
        {
            log::debug!("timer slack stays at the kernel's default: {e}");
        }
    });
}
