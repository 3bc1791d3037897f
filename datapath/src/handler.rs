//! Protocol handlers and the context the poll loop gives them.

use std::{any::Any, time::Instant};

use xsock_nic::{DeviceInfo, FrameSink, MacAddr, RxFrame, TxError};

use crate::{counters::Tally, timer::TimerQueue};

/// Identifies a registered handler within one datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandlerId(pub(crate) usize);

/// A protocol that runs on the datapath: it receives the frames of its
/// EtherType, may set timers, and may do work on every pass of the poll
/// loop. All three callbacks run on the datapath's thread, one at a time.
pub trait FrameHandler: Any + Send {
    /// A frame of this handler's EtherType arrived on `cx.queue()`. The frame
    /// is borrowed from the device; copy what must outlive the call.
    fn on_frame(&mut self, frame: RxFrame<'_>, cx: &mut Context<'_>);

    /// A timer this handler set (with `token`) is due.
    fn on_timer(&mut self, token: u64, cx: &mut Context<'_>) {
        let _ = (token, cx);
    }

    /// Called once per queue on every pass of the poll loop, after receive:
    /// the place for work that does not start with a frame (draining an
    /// application's send queue, for instance). Returns whether it did any
    /// work, so an idle loop can go to sleep.
    fn on_poll(&mut self, cx: &mut Context<'_>) -> bool {
        let _ = cx;
        false
    }

    /// A transmit-only pass between passes of the loop (an application
    /// call queued frames and wants them on the wire now). Nothing was
    /// received first, so a handler must not conclude here that its peer
    /// is silent (a reply may be waiting in the receive ring). By default
    /// the same as [`FrameHandler::on_poll`].
    fn on_kick(&mut self, cx: &mut Context<'_>) -> bool {
        self.on_poll(cx)
    }
}

/// What a handler may do while it runs: transmit on the queue it was called
/// for, set timers, and read the time and the device's facts.
pub struct Context<'a> {
    pub(crate) now: Instant,
    pub(crate) queue: usize,
    pub(crate) handler: HandlerId,
    pub(crate) sink: &'a mut dyn FrameSink,
    pub(crate) timers: &'a mut TimerQueue,
    pub(crate) info: &'a DeviceInfo,
    pub(crate) tally: &'a mut Tally,
}

impl Context<'_> {
    /// The time this pass of the poll loop started.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The queue this call is for.
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Our MAC address on this queue's interface.
    pub fn local_mac(&self) -> MacAddr {
        self.info.mac
    }

    /// The largest frame this queue can send.
    pub fn max_frame(&self) -> usize {
        self.info.max_frame
    }

    /// Facts about this queue's device.
    pub fn device(&self) -> &DeviceInfo {
        self.info
    }

    /// Frames that can be queued for transmission now.
    pub fn tx_space(&self) -> usize {
        self.sink.tx_space()
    }

    /// Queues a frame of `len` bytes, built in place by `fill`. It leaves at
    /// the end of this pass at the latest.
    pub fn transmit(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), TxError> {
        let mut fill = Some(fill);
        let r = self.sink.transmit(len, &mut |buf| {
            if let Some(f) = fill.take() {
                f(buf)
            }
        });
        match r {
            Ok(()) => {
                self.tally.tx_frames += 1;
                self.tally.tx_bytes += len as u64;
            }
            Err(TxError::RingFull) => self.tally.tx_ring_full += 1,
            Err(_) => {}
        }
        r
    }

    /// Queues a frame built in place by `fill` in a buffer of `max_len`
    /// bytes; `fill` returns the length used (0 = nothing). Returns it.
    pub fn transmit_with(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<usize, TxError> {
        let r = self.sink.transmit_with(max_len, fill);
        match r {
            Ok(0) => {}
            Ok(len) => {
                self.tally.tx_frames += 1;
                self.tally.tx_bytes += len as u64;
            }
            Err(TxError::RingFull) => self.tally.tx_ring_full += 1,
            Err(_) => {}
        }
        r
    }

    /// Asks for `on_timer(token)` at (or soon after) `at`, on this queue.
    pub fn set_timer(&mut self, at: Instant, token: u64) {
        self.timers.set(at, self.handler, self.queue, token);
    }
}
