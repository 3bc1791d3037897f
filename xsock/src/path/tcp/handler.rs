//! Runs smoltcp on the datapath: received IPv4 frames are queued by
//! `on_frame` and fed to smoltcp in `on_poll`, which then lets it transmit
//! (paced), answers its ARP questions, and does the per-connection
//! bookkeeping the socket API reads.

use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use xsock_nic::RxFrame;

use super::{core::TcpShared, device::FrameIo};
use crate::{Context, FrameHandler};

/// Frames moved per pass at most, so one busy connection cannot starve the
/// rest of the loop.
const EGRESS_BUDGET: usize = 128;

pub(crate) struct TcpHandler {
    shared: Arc<TcpShared>,
    rx: VecDeque<Vec<u8>>,
    asks: Vec<Ipv4Addr>,
    timer_armed: Option<Instant>,
    /// Senders smoltcp has been told about (their MAC, and when), so that
    /// its first answer to a new peer (a SYN-ACK, a RST) does not wait on
    /// an ARP round.
    told: HashMap<Ipv4Addr, ([u8; 6], Instant)>,
    /// Buffers the core's changed-connection lists are swapped into.
    wake_handles: Vec<smoltcp::iface::SocketHandle>,
    wake_ports: Vec<u16>,
}

/// smoltcp forgets a neighbour after a minute; tell it again before then.
const RETELL: Duration = Duration::from_secs(30);

impl TcpHandler {
    pub fn new(shared: Arc<TcpShared>) -> Self {
        Self {
            shared,
            rx: VecDeque::new(),
            asks: Vec::new(),
            timer_armed: None,
            told: HashMap::new(),
            wake_handles: Vec::new(),
            wake_ports: Vec::new(),
        }
    }
}

impl FrameHandler for TcpHandler {
    fn on_frame(&mut self, frame: RxFrame<'_>, cx: &mut Context<'_>) {
        let f = frame.to_vec();
        if f.len() >= 34 {
            let ip = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
            let mac: [u8; 6] = f[6..12].try_into().expect("six bytes");
            let now = cx.now();
            let stale = self.told.get(&ip).is_none_or(|(m, at)| *m != mac || now.duration_since(*at) > RETELL);
            if stale {
                self.told.insert(ip, (mac, now));
                // Dropped by smoltcp unless the sender is on our subnet (then
                // the gateway's MAC comes from the kernel's table instead).
                self.rx.push_back(arp_reply_from_frame(&f));
            }
        }
        self.rx.push_back(f);
    }

    fn on_poll(&mut self, cx: &mut Context<'_>) -> bool {
        let Ok(mut guard) = self.shared.core.try_lock() else {
            return true; // the application holds it; next pass
        };
        let core = &mut *guard;
        // No TCP-mode socket, nothing received, nothing to answer: nothing
        // to do (this runs on every pass of the loop, in the latency path
        // of the other protocols).
        if self.rx.is_empty() && core.injected.is_empty() && core.is_idle() {
            return false;
        }
        let now = cx.now();
        let snow = core.smol_now(now);
        self.rx.extend(core.injected.drain(..));
        // Held segments smoltcp's window had no room for, now that it has
        // (its application read): before what arrived since, in order.
        let mut opened = Vec::new();
        core.reorder.release_open(&mut opened);
        for f in opened.into_iter().rev() {
            self.rx.push_front(f);
        }
        let had_input = !self.rx.is_empty();
        let mtu = core.mtu;
        let mut io = FrameIo {
            rx: &mut self.rx,
            cx,
            arp_asks: &mut self.asks,
            pacer: core.pacer.as_mut(),
            pacing: false,
            held_until: None,
            burst_open: false,
            ring_full: false,
            mtu,
            tracker: &mut core.tracker,
            sack: &mut core.sack,
            reorder: &mut core.reorder,
            ready: Vec::new(),
        };
        let mut work = had_input;
        core.iface.poll_maintenance(snow);
        // Egress after every second received frame: smoltcp acknowledges in
        // egress, and its congestion control grows the window by at most one
        // segment per ACK, so one cumulative ACK per receive batch (64
        // frames) would make slow start crawl (measured: ~1 Mbit/s after 1 s
        // on a 100 ms path). Every second segment is what the kernel does.
        let mut since_egress = 0;
        while !io.rx.is_empty() {
            core.iface.poll_ingress_single(snow, &mut io, &mut core.sockets);
            since_egress += 1;
            if since_egress == 2 || io.rx.is_empty() {
                since_egress = 0;
                io.pacing = true;
                core.iface.poll_egress(snow, &mut io, &mut core.sockets);
                io.pacing = false;
            }
        }
        // Holes the peer's SACK blocks show go first (smoltcp's own sender
        // would repair one per round trip).
        io.pacing = true;
        work |= io.resend_lost() > 0;
        for _ in 0..EGRESS_BUDGET {
            match core.iface.poll_egress(snow, &mut io, &mut core.sockets) {
                smoltcp::iface::PollResult::None => break,
                smoltcp::iface::PollResult::SocketStateChanged => work = true,
            }
            if io.held_until.is_some() || io.ring_full {
                break;
            }
        }
        let held = io.held_until;
        // smoltcp acknowledged or opened its window where segments wait:
        // another pass gives them.
        work |= core.reorder.is_due();
        if had_input {
            core.replenish(now);
        }
        if !self.asks.is_empty() {
            core.arp.asked(now, self.asks.drain(..));
        }
        if core.arp.busy() {
            core.arp.poll_replies(now, |f| core.injected.push_back(f));
            work |= !core.injected.is_empty();
        }
        let changed = core.housekeeping(now);
        // The next deadline: smoltcp's timers, the pacer, open ARP
        // questions, the window caps.
        let mut next = match core.iface.poll_at(snow, &core.sockets).map(|t| core.std_time(t)) {
            // smoltcp wants to send now, but the pacer held the frame: its
            // "now" is the pacer's departure (else a sleeping driver would
            // wake only for the next ACK and pacing would be ACK-clocked).
            Some(t) if t <= now && held.is_some() => held,
            t => t,
        };
        for t in [held, core.next_housekeeping()].into_iter().flatten() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        if core.arp.busy() {
            let t = now + std::time::Duration::from_millis(2);
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        std::mem::swap(&mut self.wake_handles, &mut core.changed);
        std::mem::swap(&mut self.wake_ports, &mut core.acceptable);
        drop(guard);
        self.shared.wake(&mut self.wake_handles, &mut self.wake_ports);
        if changed || work {
            self.shared.notifier.notify();
        }
        if let Some(t) = next
            && t > now
            && self.timer_armed.is_none_or(|armed| t < armed || armed <= now)
        {
            cx.set_timer(t, 0);
            self.timer_armed = Some(t);
        }
        work || changed
    }

    fn on_timer(&mut self, _token: u64, _cx: &mut Context<'_>) {
        self.timer_armed = None;
    }
}

/// An ARP reply telling us the sender of IPv4 frame `f` is at its source MAC.
fn arp_reply_from_frame(f: &[u8]) -> Vec<u8> {
    let octets = |r: std::ops::Range<usize>| -> [u8; 4] { f[r].try_into().expect("four bytes") };
    let mac = |r: std::ops::Range<usize>| xsock_nic::MacAddr(f[r].try_into().expect("six bytes"));
    super::arp::arp_reply(octets(26..30).into(), mac(6..12), octets(30..34).into(), mac(0..6))
}
