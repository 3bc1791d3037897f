//! One-way raw blast: a sender transmits frames as fast as the device takes
//! them for a fixed time; the receiver counts what arrives and reports back.
//!
//! The sender writes only the headers of each frame (the rest of the UMEM
//! chunk keeps whatever it held): this measures the datapath's frame rate,
//! not a copy of application data. Transports above it (issue: reliable-link
//! `bw`) include that copy.

use std::time::{Duration, Instant};

use xsock_nic::{MacAddr, RxFrame, TxError};

use super::{DiagPacket, DiagRepr, Kind, MIN_FRAME, emit_frame, parse_frame};
use crate::{
    Datapath, Error,
    handler::{Context, FrameHandler, HandlerId},
};

/// What a receiver counted in one blast run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlastTally {
    /// Run id.
    pub run: u64,
    /// Frames received.
    pub frames: u64,
    /// Bytes received (whole frames, Ethernet header included).
    pub bytes: u64,
    /// Time from the first frame to the last.
    pub span: Duration,
}

/// Both roles of the blast: as receiver it counts blast frames and answers
/// an end marker with its tally; as sender it keeps the tally the receiver
/// reports.
#[derive(Debug, Default)]
pub struct BlastHandler {
    counting: BlastTally,
    first: Option<Instant>,
    last: Option<Instant>,
    report: Option<BlastTally>,
}

impl BlastHandler {
    /// The receiver's report for the current run, once it has arrived.
    pub fn report(&self) -> Option<BlastTally> {
        self.report
    }
}

impl FrameHandler for BlastHandler {
    fn on_frame(&mut self, frame: RxFrame<'_>, cx: &mut Context<'_>) {
        let Some((src, repr)) = parse_frame(frame.head()) else {
            return;
        };
        match repr.kind {
            Kind::Blast => {
                let now = Instant::now();
                if repr.extra != self.counting.run || self.first.is_none() {
                    self.counting = BlastTally { run: repr.extra, ..Default::default() };
                    self.first = Some(now);
                }
                self.counting.frames += 1;
                self.counting.bytes += frame.len() as u64;
                self.last = Some(now);
            }
            Kind::BlastEnd => {
                let tally = if repr.extra == self.counting.run {
                    BlastTally {
                        span: match (self.first, self.last) {
                            (Some(f), Some(l)) => l - f,
                            _ => Duration::ZERO,
                        },
                        ..self.counting
                    }
                } else {
                    BlastTally { run: repr.extra, ..Default::default() }
                };
                let me = cx.local_mac();
                let _ = cx.transmit(MIN_FRAME + 8, |out| {
                    let r =
                        DiagRepr { kind: Kind::BlastReport, seq: tally.frames, value: tally.bytes, extra: tally.run };
                    emit_frame(out, src, me, &r);
                    out[MIN_FRAME..].copy_from_slice(&(tally.span.as_nanos() as u64).to_be_bytes());
                });
            }
            Kind::BlastReport => {
                let body = &frame.head()[xsock_nic::ETH_HEADER_LEN..];
                let span = DiagPacket::new_checked(body)
                    .ok()
                    .and_then(|p| p.body().get(..8).map(|b| u64::from_be_bytes(b.try_into().expect("eight"))))
                    .unwrap_or(0);
                self.report = Some(BlastTally {
                    run: repr.extra,
                    frames: repr.seq,
                    bytes: repr.value,
                    span: Duration::from_nanos(span),
                });
            }
            _ => {}
        }
    }
}

/// The outcome of a blast, from both ends.
#[derive(Debug, Clone, Copy)]
pub struct BlastOutcome {
    /// Frames the sender queued.
    pub sent_frames: u64,
    /// Bytes the sender queued.
    pub sent_bytes: u64,
    /// How long the sender sent.
    pub sent_for: Duration,
    /// What the receiver counted.
    pub received: BlastTally,
}

/// Sends `size`-byte frames to `peer` through handler `id` (a
/// [`BlastHandler`]) on queue 0 for `duration`, then collects the receiver's
/// report (waiting up to `report_timeout`).
pub fn blast(
    dp: &mut Datapath,
    id: HandlerId,
    peer: MacAddr,
    size: usize,
    duration: Duration,
    report_timeout: Duration,
) -> Result<BlastOutcome, Error> {
    if size < MIN_FRAME {
        return Err(Error::Config(format!("blast frames need at least {MIN_FRAME} bytes, not {size}")));
    }
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    let me = dp.device_info(0).mac;
    let start = Instant::now();
    let end = start + duration;
    let (mut frames, mut bytes) = (0u64, 0u64);
    while Instant::now() < end {
        for _ in 0..256 {
            let seq = frames;
            let r = dp.transmit(0, size, |out| {
                emit_frame(out, peer, me, &DiagRepr { kind: Kind::Blast, seq, value: 0, extra: run });
            });
            match r {
                Ok(()) => {
                    frames += 1;
                    bytes += size as u64;
                }
                Err(Error::Tx(TxError::RingFull)) => break,
                Err(e) => return Err(e),
            }
        }
        dp.poll().map_err(Error::Io)?;
    }
    let sent_for = start.elapsed();
    // Let the ring drain, then ask for the tally until it comes.
    let deadline = Instant::now() + report_timeout;
    let mut next_end = Instant::now();
    loop {
        dp.poll().map_err(Error::Io)?;
        if let Some(rep) = dp.handler_mut::<BlastHandler>(id).and_then(|h| h.report())
            && rep.run == run
        {
            return Ok(BlastOutcome { sent_frames: frames, sent_bytes: bytes, sent_for, received: rep });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Config(format!(
                "the receiver did not report within {report_timeout:?}: is `xsock rawbw --listen` running on the peer?"
            )));
        }
        if now >= next_end {
            dp.transmit(0, MIN_FRAME, |out| {
                emit_frame(out, peer, me, &DiagRepr { kind: Kind::BlastEnd, seq: frames, value: bytes, extra: run });
            })
            .or_else(|e| if matches!(e, Error::Tx(TxError::RingFull)) { Ok(()) } else { Err(e) })?;
            next_end = now + Duration::from_millis(20);
        }
    }
}
