//! smoltcp's view of the datapath: a [`Device`] whose receive side is the
//! IPv4 frames the XDP filter steered to us, and whose transmit side builds
//! each frame in place in the NIC's transmit buffer.
//!
//! Three things happen here that smoltcp does not know about:
//! - **Checksums a kernel left unfinished.** A Linux peer on veth (every
//!   container's interface) leaves its TCP checksums to an offload that
//!   never runs for frames XDP hands to us; they are finished on receive
//!   ([`finish_checksum`]), and smoltcp then checks every frame.
//! - **ARP belongs to the kernel.** The interface is shared with it, and the
//!   XDP filter leaves ARP to it, so smoltcp's ARP requests never reach the
//!   wire: they are taken out of the transmit path and answered from the
//!   kernel's neighbour table ([`super::arp`]).
//! - **Pacing.** While smoltcp emits queued data, an aggregate
//!   [`GapPacer`] decides whether another frame may leave now; if not, the
//!   device reports itself exhausted and smoltcp tries again on a later pass.
//!   Responses produced while processing received frames are never held
//!   (smoltcp drops a response the device refuses).

use std::{collections::VecDeque, net::Ipv4Addr, time::Instant};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use xsock_nic::TxError;
use xsock_pacer::GapPacer;

use xsock_nic::offload::finish_checksum;

use super::{
    flows::FlowTracker,
    reorder::{Arrival, Reorder, Verdict},
    sack::SackRecovery,
    segment::Segment,
};

use crate::Context;

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// The frames between smoltcp and one pass of the poll loop.
pub(crate) struct FrameIo<'a, 'c> {
    pub rx: &'a mut VecDeque<Vec<u8>>,
    pub cx: &'a mut Context<'c>,
    /// Addresses smoltcp asked ARP for, to answer from the kernel's table.
    pub arp_asks: &'a mut Vec<Ipv4Addr>,
    /// The aggregate pacer, applied while `pacing` is on.
    pub pacer: Option<&'a mut GapPacer>,
    pub pacing: bool,
    /// Set when the pacer held a frame: when the next may leave.
    pub held_until: Option<Instant>,
    /// A paced burst has started in this pass (it runs while the pacer
    /// lets frames leave; a new one needs [`GapPacer::may_start_burst`]).
    pub burst_open: bool,
    /// Set when the transmit ring was full.
    pub ring_full: bool,
    pub mtu: usize,
    pub tracker: &'a mut FlowTracker,
    pub sack: &'a mut SackRecovery,
    pub reorder: &'a mut Reorder,
    /// Held frames put back in order, for smoltcp next (scratch).
    pub ready: Vec<Vec<u8>>,
}

pub(crate) struct Rx {
    frame: Vec<u8>,
}

pub(crate) struct Tx<'b, 'c> {
    cx: &'b mut Context<'c>,
    tracker: &'b mut FlowTracker,
    sack: &'b mut SackRecovery,
    reorder: &'b mut Reorder,
    arp_asks: &'b mut Vec<Ipv4Addr>,
    pacer: Option<&'b mut GapPacer>,
    ring_full: &'b mut bool,
}

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame)
    }
}

impl phy::TxToken for Tx<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let mut out = None;
        let now = self.cx.now();
        let r = self.cx.transmit_with(len, &mut |buf| {
            let Some(f) = f.take() else { return 0 };
            out = Some(f(&mut buf[..len]));
            if let Some(seg) = Segment::parse(&buf[..len]) {
                if self.sack.sends_only_sacked(&seg) {
                    self.sack.not_sent += 1;
                    return 0; // the peer has it all
                }
                self.tracker.on_sent(&seg, now);
                self.sack.on_sent(&seg, now);
                self.reorder.on_sent(&seg);
            }
            if u16::from_be_bytes([buf[12], buf[13]]) == ETHERTYPE_ARP {
                // Target protocol address of an ARP request: bytes 38..42.
                if len >= 42 && u16::from_be_bytes([buf[20], buf[21]]) == 1 {
                    self.arp_asks.push(Ipv4Addr::new(buf[38], buf[39], buf[40], buf[41]));
                }
                return 0; // not sent: the kernel owns ARP on this interface
            }
            len
        });
        match r {
            Ok(n) if n > 0 => {
                if let Some(p) = self.pacer {
                    p.on_sent(self.cx.now(), n as u64);
                }
            }
            Ok(_) => {}
            Err(TxError::RingFull) => *self.ring_full = true,
            Err(e) => log::warn!("TCP-mode frame not sent: {e}"),
        }
        match out {
            Some(o) => o,
            // The sink refused before building (ring full): smoltcp still
            // needs the closure run to keep its state consistent; build the
            // frame into scratch and drop it, as a lost frame.
            None => {
                let mut scratch = vec![0u8; len];
                f.take().expect("closure not run")(&mut scratch)
            }
        }
    }
}

impl FrameIo<'_, '_> {
    /// Whether the pacer (when pacing) lets a frame leave now; opens the
    /// burst if so, and notes when to come back if not.
    fn pace_permits(&mut self) -> bool {
        let now = self.cx.now();
        let (true, Some(p)) = (self.pacing, self.pacer.as_deref_mut()) else { return true };
        let go = if self.burst_open { p.poll_departure(now).is_none() } else { p.may_start_burst(now) };
        if !go {
            self.held_until = Some(p.wake_at(now).unwrap_or(now));
            return false;
        }
        self.burst_open = true;
        true
    }

    /// Sends a frame of our own in answer to one received (unpaced).
    fn send_response(&mut self, frame: &[u8]) {
        let len = frame.len();
        match self.cx.transmit_with(len, &mut |buf| {
            buf[..len].copy_from_slice(frame);
            len
        }) {
            Ok(_) => {}
            Err(TxError::RingFull) => self.ring_full = true,
            Err(e) => log::warn!("TCP-mode ACK not sent: {e}"),
        }
    }

    /// Sends again, paced, the segments the SACK scoreboard says are lost
    /// ([`SackRecovery`]). Returns how many.
    pub fn resend_lost(&mut self) -> usize {
        let mut n = 0;
        while self.sack.has_holes() {
            if self.ring_full || self.cx.tx_space() == 0 {
                self.ring_full = true;
                break;
            }
            if !self.pace_permits() {
                break;
            }
            let now = self.cx.now();
            let tracker = &*self.tracker;
            let Some(frame) = self.sack.poll_resend(now, &|port| tracker.srtt(port)) else { break };
            let len = frame.len();
            match self.cx.transmit_with(len, &mut |buf| {
                buf[..len].copy_from_slice(frame);
                len
            }) {
                Ok(k) if k > 0 => {
                    if let (true, Some(p)) = (self.pacing, self.pacer.as_deref_mut()) {
                        p.on_sent(now, k as u64);
                    }
                    if let Some(seg) = Segment::parse(frame) {
                        self.tracker.on_sent(&seg, now);
                    }
                    n += 1;
                }
                Ok(_) => {}
                Err(TxError::RingFull) => {
                    self.ring_full = true;
                    break;
                }
                Err(e) => log::warn!("TCP-mode retransmission not sent: {e}"),
            }
        }
        n
    }
}

impl<'a, 'c> Device for FrameIo<'a, 'c> {
    type RxToken<'t>
        = Rx
    where
        Self: 't;
    type TxToken<'t>
        = Tx<'t, 'c>
    where
        Self: 't;

    fn receive(&mut self, _ts: smoltcp::time::Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = loop {
            let mut frame = self.rx.pop_front()?;
            finish_checksum(&mut frame);
            let Some(seg) = Segment::parse(&frame) else { break frame };
            let now = self.cx.now();
            self.tracker.on_received(&seg, now);
            self.sack.on_received(&seg, now);
            let arrival = Arrival::of(&seg);
            match self.reorder.on_received(arrival, frame, &mut self.ready) {
                Verdict::Pass(f) => {
                    for f in self.ready.drain(..).rev() {
                        self.rx.push_front(f);
                    }
                    break f;
                }
                Verdict::Held(ack) => {
                    if let Some(a) = ack {
                        self.send_response(&a);
                    }
                }
            }
        };
        // Responses to received frames are never paced (smoltcp would drop them).
        let tx = Tx {
            cx: self.cx,
            tracker: self.tracker,
            sack: self.sack,
            reorder: self.reorder,
            arp_asks: self.arp_asks,
            pacer: None,
            ring_full: &mut self.ring_full,
        };
        Some((Rx { frame }, tx))
    }

    fn transmit(&mut self, _ts: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.ring_full || self.cx.tx_space() == 0 {
            self.ring_full = true;
            return None;
        }
        if !self.pace_permits() {
            return None;
        }
        let pacer = if self.pacing { self.pacer.as_deref_mut() } else { None };
        Some(Tx {
            cx: self.cx,
            tracker: self.tracker,
            sack: self.sack,
            reorder: self.reorder,
            arp_asks: self.arp_asks,
            pacer,
            ring_full: &mut self.ring_full,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = None;
        caps
    }
}
