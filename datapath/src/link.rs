//! The reliable-link endpoint on the datapath: a [`FrameHandler`] for
//! EtherType 0x88B5 that feeds frames and time into the sans-IO
//! [`Endpoint`] and moves the frames it produces onto the wire, built in
//! place in the transmit buffer.
//!
//! The endpoint lives behind a mutex shared with application threads (the
//! socket API locks it to write, read, connect); every change the datapath
//! makes is announced through the runtime's [`Notifier`].

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use xsock_nic::{ETH_HEADER_LEN, MacAddr, RxFrame, TxError, wire::EthernetFrame};
use xsock_reliable_link::{CloseReason, Endpoint, EndpointEvent, Event, wire::ETHERTYPE};

use crate::{
    handler::{Context, FrameHandler},
    notify::Notifier,
};

/// Frames one pass moves from the endpoint to the wire, at most: bounds how
/// far a sender runs ahead of a NAK (go-back-N resends what follows a gap).
pub const TX_BATCH: usize = 64;

/// The endpoint and what waits on it.
#[derive(Debug)]
pub(crate) struct LinkShared {
    pub endpoint: Mutex<Endpoint>,
    pub notifier: Arc<Notifier>,
}

impl LinkShared {
    pub fn lock(&self) -> MutexGuard<'_, Endpoint> {
        self.endpoint.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The datapath side of the reliable-link path.
pub(crate) struct LinkHandler {
    shared: Arc<LinkShared>,
    mac: MacAddr,
    max_frame: usize,
    timer_armed: Option<Instant>,
    scratch: Vec<u8>,
}

impl LinkHandler {
    pub fn new(shared: Arc<LinkShared>, mac: MacAddr, max_frame: usize) -> Self {
        Self { shared, mac, max_frame, timer_armed: None, scratch: Vec::new() }
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
fn take_events(ep: &mut Endpoint) -> bool {
    let mut any = false;
    while let Some(e) = ep.poll_event() {
        any = true;
        match e {
            EndpointEvent::Connection { cid, event: Event::Closed(reason) } => {
                let who = ep.connection(cid).map(|c| *c.addressing());
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
        let changed = take_events(&mut ep);
        drop(ep);
        if changed {
            self.shared.notifier.notify();
        }
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
        let changed = take_events(&mut ep);
        drop(ep);
        if changed {
            self.shared.notifier.notify();
        }
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
}
