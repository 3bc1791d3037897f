//! A handler that moves whole frames of one EtherType between the datapath
//! and application threads over crossbeam channels.

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
use xsock_nic::{RxFrame, TxError};

use crate::{
    handler::{Context, FrameHandler},
    poll::Waker,
};

/// The application's end: received frames come out of `rx`; frames put in
/// with [`ChannelEndpoint::send`] are transmitted (on queue 0).
#[derive(Debug)]
pub struct ChannelEndpoint {
    /// Frames received, whole, Ethernet header included.
    pub rx: Receiver<Vec<u8>>,
    tx: Sender<Vec<u8>>,
    waker: Waker,
}

impl ChannelEndpoint {
    /// Queues a whole frame (Ethernet header included) for transmission and
    /// wakes the datapath. Blocks while the channel is full.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), crate::Error> {
        self.tx.send(frame).map_err(|_| crate::Error::Stopped)?;
        self.waker.wake();
        Ok(())
    }
}

/// The datapath's end; register it for an EtherType.
#[derive(Debug)]
pub struct ChannelHandler {
    to_app: Sender<Vec<u8>>,
    from_app: Receiver<Vec<u8>>,
    stalled: Option<Vec<u8>>,
    /// Frames dropped because the application did not keep up.
    pub dropped: u64,
}

impl ChannelHandler {
    /// A handler and its application endpoint, each direction holding at
    /// most `capacity` frames.
    pub fn new(capacity: usize, waker: Waker) -> (ChannelHandler, ChannelEndpoint) {
        let (to_app, rx) = bounded(capacity);
        let (tx, from_app) = bounded(capacity);
        (ChannelHandler { to_app, from_app, stalled: None, dropped: 0 }, ChannelEndpoint { rx, tx, waker })
    }
}

impl FrameHandler for ChannelHandler {
    fn on_frame(&mut self, frame: RxFrame<'_>, _cx: &mut Context<'_>) {
        match self.to_app.try_send(frame.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }

    fn on_poll(&mut self, cx: &mut Context<'_>) -> bool {
        if cx.queue() != 0 {
            return false;
        }
        let mut work = false;
        loop {
            let frame = match self.stalled.take() {
                Some(f) => f,
                None => match self.from_app.try_recv() {
                    Ok(f) => f,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return work,
                },
            };
            match cx.transmit(frame.len(), |b| b.copy_from_slice(&frame)) {
                Ok(()) => work = true,
                Err(TxError::RingFull) => {
                    self.stalled = Some(frame);
                    return work;
                }
                Err(e) => {
                    log::warn!("dropping an application frame: {e}");
                    work = true;
                }
            }
        }
    }
}
