//! A relay link's (or session's) output queue: messages that are not a
//! virtual connection's (advertisements, keepalives, revocation lists) go
//! first, then the virtual connections' messages round-robin, one frame
//! each per turn. Each VC keeps its own order (its `Close` never overtakes
//! its `Data`), and a VC with a window of bulk queued holds another's
//! message back by at most one frame (64 KiB) per busy VC: on a slow link,
//! a ping's round trip does not wait behind a bulk transfer's megabytes.
//! [`SendBuf`] is the shells' buffer between such a queue and the socket.

use std::collections::{HashMap, VecDeque};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LinkQueue {
    control: Vec<u8>,
    vcs: HashMap<u32, VecDeque<Vec<u8>>>,
    /// VCs with frames queued, in turn.
    order: VecDeque<u32>,
    /// Bytes queued per VC.
    vc_bytes: HashMap<u32, usize>,
    bytes: usize,
}

impl LinkQueue {
    /// Queues a message that belongs to no VC (whole frame, length prefix
    /// included).
    pub fn push_control(&mut self, frame: &[u8]) {
        self.control.extend_from_slice(frame);
        self.bytes += frame.len();
    }

    /// Queues a frame of VC `vc` (its id on this link).
    pub fn push_vc(&mut self, vc: u32, frame: Vec<u8>) {
        self.bytes += frame.len();
        *self.vc_bytes.entry(vc).or_default() += frame.len();
        let q = self.vcs.entry(vc).or_default();
        if q.is_empty() {
            self.order.push_back(vc);
        }
        q.push_back(frame);
    }

    /// Bytes queued in all.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Bytes queued for VC `vc`.
    pub fn vc_len(&self, vc: u32) -> usize {
        self.vc_bytes.get(&vc).copied().unwrap_or(0)
    }

    /// Whole frames, about `budget` bytes (at least one frame when any is
    /// queued): the control messages, then one frame per VC in turn while
    /// under `budget`.
    pub fn pop(&mut self, budget: usize) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.control);
        while out.len() < budget.max(1) {
            let Some(vc) = self.order.pop_front() else { break };
            let q = self.vcs.get_mut(&vc).expect("a VC in turn has frames");
            let f = q.pop_front().expect("a VC in turn has frames");
            if q.is_empty() {
                self.vcs.remove(&vc);
            } else {
                self.order.push_back(vc);
            }
            let left = self.vc_bytes.get_mut(&vc).expect("counted");
            *left -= f.len();
            if *left == 0 {
                self.vc_bytes.remove(&vc);
            }
            out.extend_from_slice(&f);
        }
        self.bytes -= out.len();
        out
    }
}

/// Bytes on their way to a socket that takes part of them at a time: what
/// was written is kept until the buffer empties or a quarter MiB of it
/// piles up, then dropped in one move (moving the rest down on every
/// partial write cost a relayed sender more than its copies).
#[derive(Debug, Default)]
pub struct SendBuf {
    buf: Vec<u8>,
    off: usize,
}

/// Written bytes dropped in one move once this many pile up.
const SEND_COMPACT: usize = 256 << 10;

impl SendBuf {
    /// The bytes not written yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.off..]
    }

    /// How many bytes are not written yet.
    pub fn len(&self) -> usize {
        self.buf.len() - self.off
    }

    /// Whether every byte was written.
    pub fn is_empty(&self) -> bool {
        self.off == self.buf.len()
    }

    /// `n` bytes of [`SendBuf::pending`] were written.
    pub fn advance(&mut self, n: usize) {
        self.off = (self.off + n).min(self.buf.len());
        if self.off == self.buf.len() {
            self.clear();
        }
    }

    /// Appends `bytes`, taking the vector itself when nothing is pending
    /// (no copy).
    pub fn push(&mut self, bytes: Vec<u8>) {
        if self.is_empty() {
            self.buf = bytes;
            self.off = 0;
        } else {
            self.tail().extend_from_slice(&bytes);
        }
    }

    /// Where more bytes go (after the pending ones).
    pub fn tail(&mut self) -> &mut Vec<u8> {
        if self.off >= SEND_COMPACT {
            self.buf.drain(..self.off);
            self.off = 0;
        }
        &mut self.buf
    }

    /// Forgets everything (the socket is gone).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.off = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FrameReader, Msg};

    fn frames(bytes: &[u8]) -> Vec<(u8, u32)> {
        let mut rd = FrameReader::default();
        rd.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = rd.next_frame().unwrap() {
            out.push(match Msg::parse(f).unwrap() {
                Msg::Data { vc, .. } => (b'd', vc),
                Msg::Close { vc } => (b'c', vc),
                Msg::Keepalive => (b'k', 0),
                m => panic!("{m:?}"),
            });
        }
        out
    }

    #[test]
    fn a_send_buffer_gives_back_what_was_not_written_in_order() {
        let mut b = SendBuf::default();
        let all: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let mut at = 0;
        while out.len() < all.len() {
            if at < all.len() && b.len() < 300_000 {
                let n = 70_001.min(all.len() - at);
                if at % 2 == 0 {
                    b.tail().extend_from_slice(&all[at..at + n]);
                } else {
                    b.push(all[at..at + n].to_vec());
                }
                at += n;
            }
            let n = b.pending().len().min(40_000);
            out.extend_from_slice(&b.pending()[..n]);
            b.advance(n);
        }
        assert!(out == all && b.is_empty());
    }

    #[test]
    fn a_small_message_waits_one_frame_behind_a_queued_window_and_each_vc_keeps_its_order() {
        let mut q = LinkQueue::default();
        let big = vec![0u8; 64 * 1024];
        for _ in 0..64 {
            q.push_vc(2, Msg::Data { vc: 2, bytes: &big }.to_frame());
        }
        q.push_vc(2, Msg::Close { vc: 2 }.to_frame());
        q.push_vc(4, Msg::Data { vc: 4, bytes: b"ping" }.to_frame());
        q.push_control(&Msg::Keepalive.to_frame());
        assert_eq!(q.vc_len(4), 13);
        // The keepalive first, then VC 2's first frame, then the ping.
        assert_eq!(frames(&q.pop(1)), vec![(b'k', 0)]);
        assert_eq!(frames(&q.pop(1)), vec![(b'd', 2)]);
        assert_eq!(frames(&q.pop(1)), vec![(b'd', 4)]);
        let mut rest = Vec::new();
        while !q.is_empty() {
            rest.extend(frames(&q.pop(256 * 1024)));
        }
        assert_eq!(rest.len(), 64, "63 more data frames and the close");
        assert_eq!(rest.last(), Some(&(b'c', 2)), "the close comes after all its data");
        assert_eq!((q.len(), q.vc_len(2)), (0, 0));
    }
}
