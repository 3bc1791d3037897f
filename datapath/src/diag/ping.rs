//! Raw frame ping-pong: an echo handler and a client that times round trips.

use std::time::{Duration, Instant};

use xsock_nic::{MacAddr, RxFrame, TxError};

use super::{DiagRepr, Kind, MIN_FRAME, emit_frame, parse_frame};
use crate::{
    Datapath, Error,
    handler::{Context, FrameHandler, HandlerId},
};

/// Answers every ping with a pong of the same length and content, swapping
/// the MAC addresses.
#[derive(Debug, Default)]
pub struct EchoHandler {
    /// Pings answered.
    pub echoed: u64,
    /// Pongs that could not be queued (ring full).
    pub dropped: u64,
}

impl FrameHandler for EchoHandler {
    fn on_frame(&mut self, frame: RxFrame<'_>, cx: &mut Context<'_>) {
        let Some((src, repr)) = parse_frame(frame.head()) else {
            return;
        };
        if repr.kind != Kind::Ping {
            return;
        }
        let me = cx.local_mac();
        let reply = DiagRepr { kind: Kind::Pong, ..repr };
        let r = cx.transmit(frame.len(), |out| {
            frame.copy_out(0, out);
            emit_frame(out, src, me, &reply);
        });
        match r {
            Ok(()) => self.echoed += 1,
            Err(_) => self.dropped += 1,
        }
    }
}

/// The client side: sends numbered pings to one peer and notes when each
/// pong arrives.
#[derive(Debug)]
pub struct PingClient {
    peer: MacAddr,
    size: usize,
    reply: Option<(u64, Instant)>,
    /// Pongs that arrived for a sequence number no longer awaited.
    pub stale: u64,
}

impl PingClient {
    /// A client for `peer`, sending frames of `size` bytes (Ethernet header
    /// included; at least [`MIN_FRAME`]).
    pub fn new(peer: MacAddr, size: usize) -> Result<Self, Error> {
        if size < MIN_FRAME {
            return Err(Error::Config(format!("ping frames need at least {MIN_FRAME} bytes, not {size}")));
        }
        Ok(Self { peer, size, reply: None, stale: 0 })
    }

    /// Queues ping `seq`.
    pub fn send(&mut self, cx: &mut Context<'_>, seq: u64) -> Result<(), TxError> {
        self.reply = None;
        let (peer, me) = (self.peer, cx.local_mac());
        cx.transmit(self.size, |out| {
            emit_frame(out, peer, me, &DiagRepr { kind: Kind::Ping, seq, value: 0, extra: 0 });
        })
    }

    /// The pong received since the last `send`, with its arrival time.
    pub fn reply(&self) -> Option<(u64, Instant)> {
        self.reply
    }
}

impl FrameHandler for PingClient {
    fn on_frame(&mut self, frame: RxFrame<'_>, _cx: &mut Context<'_>) {
        let at = Instant::now();
        let Some((_, repr)) = parse_frame(frame.head()) else {
            return;
        };
        if repr.kind == Kind::Pong && frame.len() == self.size {
            if self.reply.is_none() {
                self.reply = Some((repr.seq, at));
            } else {
                self.stale += 1;
            }
        }
    }
}

/// One round trip: sends ping `seq` through handler `id` on queue 0 and
/// polls until its pong arrives. Returns the round-trip time, or `None` if
/// no pong came within `timeout` (a lost frame).
pub fn round_trip(dp: &mut Datapath, id: HandlerId, seq: u64, timeout: Duration) -> Result<Option<Duration>, Error> {
    let sent = Instant::now();
    loop {
        match dp.with_handler(id, 0, |c: &mut PingClient, cx| c.send(cx, seq)) {
            Some(Ok(())) => break,
            Some(Err(TxError::RingFull)) => {
                dp.poll().map_err(Error::Io)?;
                if sent.elapsed() > timeout {
                    return Ok(None);
                }
            }
            Some(Err(e)) => return Err(Error::Tx(e)),
            None => return Err(Error::Config("handler is not a PingClient".into())),
        }
    }
    // Timed from before the transmit call, as a socket ping-pong is timed
    // from before send().
    dp.flush().map_err(Error::Io)?;
    let deadline = sent + timeout;
    loop {
        let work = dp.poll().map_err(Error::Io)?;
        if let Some((got, at)) = dp.handler_mut::<PingClient>(id).and_then(|c| c.reply())
            && got == seq
        {
            return Ok(Some(at.saturating_duration_since(sent)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        if work == 0 {
            dp.idle(Some(deadline - now)).map_err(Error::Io)?;
        }
    }
}
