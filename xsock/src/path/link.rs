//! The reliable-link endpoint on the datapath: a [`FrameHandler`] for
//! EtherType 0x88B5 that feeds frames and time into the sans-IO
//! [`Endpoint`] and moves the frames it produces onto the wire, built in
//! place in the transmit buffer.
//!
//! The endpoint lives behind a mutex shared with application threads (the
//! socket API locks it to write, read, connect); every change the datapath
//! makes is announced through the runtime's [`Notifier`].

use std::{
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Instant,
};

use xsock_nic::{ETH_HEADER_LEN, MacAddr, RxFrame, TxError, wire::EthernetFrame};
use xsock_reliable_link::{CloseReason, Endpoint, EndpointEvent, Event, fasthash::FastMap, wire::ETHERTYPE};

use crate::{Context, FrameHandler, notify::Notifier};

/// Frames one pass moves from the endpoint to the wire, at most: bounds how
/// far a sender runs ahead of a NAK (go-back-N resends what follows a gap).
pub const TX_BATCH: usize = 64;

/// Chunks (16 KiB) given back in one aging for the heap to be trimmed too.
const TRIM_AFTER_CHUNKS: usize = 256;
/// How often the buffer pool is aged.
const AGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The endpoint and what waits on it.
#[derive(Debug)]
pub(crate) struct LinkShared {
    pub endpoint: Mutex<Endpoint>,
    /// The runtime's "anything changed" notifier ([`crate::Runtime::idle`]).
    pub notifier: Arc<Notifier>,
    /// Each held connection's notifier, by connection id: its events wake
    /// only who waits on that connection.
    pub signals: Mutex<FastMap<u64, Arc<Notifier>>>,
    /// Each listening port's notifier (a connection arrived).
    pub listeners: Mutex<FastMap<u16, Arc<Notifier>>>,
    /// Connects waiting on a discovery (woken, and forgotten, when any
    /// discovery concludes).
    pub discovery: Mutex<Vec<Weak<Notifier>>>,
}

impl LinkShared {
    pub fn new(endpoint: Endpoint, notifier: Arc<Notifier>) -> Self {
        Self {
            endpoint: Mutex::new(endpoint),
            notifier,
            signals: Mutex::new(FastMap::default()),
            listeners: Mutex::new(FastMap::default()),
            discovery: Mutex::new(Vec::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Endpoint> {
        self.endpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the waiters of connection `cid` from now on through `signal`.
    pub fn register(&self, cid: u64, signal: &Arc<Notifier>) {
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).insert(cid, signal.clone());
    }

    /// Forgets connection `cid`'s notifier.
    pub fn unregister(&self, cid: u64) {
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).remove(&cid);
    }

    /// Wakes `signal` when the next discovery concludes.
    pub fn await_discovery(&self, signal: &Arc<Notifier>) {
        let mut d = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        d.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(signal)));
        d.push(Arc::downgrade(signal));
    }

    /// Wakes whoever the endpoint's events concern.
    fn wake(&self, wake: &mut Wake) {
        if wake.cids.is_empty() && wake.ports.is_empty() && !wake.discovery {
            return;
        }
        {
            let signals = self.signals.lock().unwrap_or_else(|p| p.into_inner());
            for cid in wake.cids.drain(..) {
                if let Some(s) = signals.get(&cid) {
                    s.notify();
                }
            }
        }
        if !wake.ports.is_empty() {
            let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            for port in wake.ports.drain(..) {
                if let Some(s) = listeners.get(&port) {
                    s.notify();
                }
            }
        }
        if std::mem::take(&mut wake.discovery) {
            let waiters = std::mem::take(&mut *self.discovery.lock().unwrap_or_else(|p| p.into_inner()));
            for w in waiters {
                if let Some(s) = w.upgrade() {
                    s.notify();
                }
            }
        }
        self.notifier.notify();
    }
}

/// Who to wake after the endpoint ran (collected under its lock, woken
/// after).
#[derive(Debug, Default)]
struct Wake {
    cids: Vec<u64>,
    ports: Vec<u16>,
    discovery: bool,
}

/// The datapath side of the reliable-link path.
pub(crate) struct LinkHandler {
    shared: Arc<LinkShared>,
    mac: MacAddr,
    max_frame: usize,
    timer_armed: Option<Instant>,
    scratch: Vec<u8>,
    wake: Wake,
    /// When the pool was last aged.
    aged_at: Instant,
}

impl LinkHandler {
    pub fn new(shared: Arc<LinkShared>, mac: MacAddr, max_frame: usize) -> Self {
        Self {
            shared,
            mac,
            max_frame,
            timer_armed: None,
            scratch: Vec::new(),
            wake: Wake::default(),
            aged_at: Instant::now(),
        }
    }
}

/// Moves up to [`TX_BATCH`] frames from the endpoint to the wire. Returns how
/// many went.
fn transmit(ep: &mut Endpoint, cx: &mut Context<'_>, mac: MacAddr, max_frame: usize) -> usize {
    let now = cx.now();
    let mut sent = 0;
    while sent < TX_BATCH && ep.wants_transmit(now) {
        let r = cx.transmit_with(max_frame, &mut |buf| match ep.poll_transmit(now, &mut buf[ETH_HEADER_LEN..]) {
            Some(t) => {
                EthernetFrame::new_unchecked(&mut *buf).emit_header(MacAddr(t.dst_mac), mac, ETHERTYPE);
                ETH_HEADER_LEN + t.len
            }
            None => 0,
        });
        match r {
            Ok(0) => break,
            Ok(_) => sent += 1,
            Err(TxError::RingFull) => break,
            Err(e) => {
                log::warn!("reliable-link frame not sent: {e}");
                break;
            }
        }
    }
    sent
}

/// Takes the endpoint's events (the application reads connection state
/// directly; events only say that something changed), logging what an
/// operator should see: refusals for memory, peers lost, protocol
/// violations. A peer that stopped answering is forgotten by discovery, so
/// the next connect asks again.
fn take_events(ep: &mut Endpoint, wake: &mut Wake) -> bool {
    let mut any = false;
    while let Some(e) = ep.poll_event() {
        any = true;
        match e {
            EndpointEvent::Connection { cid, .. } if wake.cids.last() != Some(&cid) => wake.cids.push(cid),
            EndpointEvent::Incoming { port, .. } => wake.ports.push(port),
            EndpointEvent::Discovered { .. } => wake.discovery = true,
            _ => {}
        }
        match e {
            EndpointEvent::Connection { cid, event: Event::Closed(reason) } => {
                let conn = ep.connection(cid);
                if let Some(c) = conn {
                    log::debug!("reliable-link: connection {cid} closed ({reason:?}): {:?}", c.stats());
                }
                let who = conn.map(|c| *c.addressing());
                match (reason, who) {
                    (CloseReason::TimedOut, Some(a)) => ep.forget_peer(a.remote_ip),
                    (CloseReason::Protocol(v), Some(a)) => log::warn!(
                        "reliable-link: reset the connection from {}:{} because {v}",
                        a.remote_ip,
                        a.remote_port
                    ),
                    _ => {}
                }
            }
            EndpointEvent::RefusedForMemory { port, from } => {
                let p = ep.pool_stats();
                log::warn!(
                    "reliable-link: refused a connection from {from} to port {port}: the memory limit is reached \
                     ({} of {} bytes reserved by {} connections); raise RuntimeBuilder::memory_limit or close idle \
                     connections",
                    p.reserved,
                    p.limit,
                    ep.connections()
                );
            }
            EndpointEvent::PeerLost { mac, connections, restarted } => {
                let mac = MacAddr(mac);
                if restarted {
                    log::info!("reliable-link: peer {mac} restarted; its {connections} old connection(s) were reset");
                } else {
                    log::info!(
                        "reliable-link: peer {mac} stopped answering keepalives; its {connections} connection(s) \
                         timed out"
                    );
                }
            }
            _ => {}
        }
    }
    any
}

impl FrameHandler for LinkHandler {
    fn on_frame(&mut self, frame: RxFrame<'_>, cx: &mut Context<'_>) {
        let bytes = match frame.as_contiguous() {
            Some(b) => b,
            None => {
                self.scratch.resize(frame.len(), 0);
                frame.copy_out(0, &mut self.scratch);
                &self.scratch
            }
        };
        let Ok(eth) = EthernetFrame::new_checked(bytes) else {
            return;
        };
        let src = eth.src();
        let mut ep = self.shared.lock();
        ep.handle_input(cx.now(), src.0, eth.payload());
        transmit(&mut ep, cx, self.mac, self.max_frame);
        take_events(&mut ep, &mut self.wake);
        drop(ep);
        self.shared.wake(&mut self.wake);
    }

    fn on_poll(&mut self, cx: &mut Context<'_>) -> bool {
        let Ok(mut ep) = self.shared.endpoint.try_lock() else {
            return true; // the application holds it; come back next pass
        };
        let now = cx.now();
        // One deadline scan per pass: due timers run, and the next deadline
        // arms the loop's timer below.
        let mut next = ep.poll_timeout();
        if next.is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
            next = ep.poll_timeout();
        }
        let sent = transmit(&mut ep, cx, self.mac, self.max_frame);
        let changed = take_events(&mut ep, &mut self.wake);
        // Once a second the pool keeps what recent traffic used and gives
        // the rest back; a lot given back goes back to the system too.
        let aged = if now.duration_since(self.aged_at) >= AGE_EVERY {
            self.aged_at = now;
            ep.age_pool()
        } else {
            0
        };
        drop(ep);
        if aged >= TRIM_AFTER_CHUNKS {
            xsock_nic::sys::release_free_memory();
        }
        self.shared.wake(&mut self.wake);
        // Make the loop's sleep end in time for the endpoint's next deadline
        // (an armed earlier timer re-evaluates when it fires).
        if let Some(t) = next
            && self.timer_armed.is_none_or(|armed| t < armed)
        {
            cx.set_timer(t, 0);
            self.timer_armed = Some(t);
        }
        sent > 0 || changed
    }

    fn on_timer(&mut self, _token: u64, _cx: &mut Context<'_>) {
        self.timer_armed = None;
    }

    /// Sends what an application call queued, and nothing else: no timers
    /// here, as nothing was received first. An inline runtime's connects
    /// kick once each; with the timers run here, 10,000 connects at once
    /// sent all six discovery attempts and concluded "no xsock peer" in
    /// 63 ms while the answer sat unread in the receive ring.
    fn on_kick(&mut self, cx: &mut Context<'_>) -> bool {
        let Ok(mut ep) = self.shared.endpoint.try_lock() else {
            return true;
        };
        let sent = transmit(&mut ep, cx, self.mac, self.max_frame);
        let changed = take_events(&mut ep, &mut self.wake);
        drop(ep);
        self.shared.wake(&mut self.wake);
        sent > 0 || changed
    }
}
