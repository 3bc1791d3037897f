//! Frames that arrived beyond a hole, kept until the hole is filled.
//!
//! On a trusted link a frame goes missing only when a receive ring ran dry
//! (the kernel found no buffer for it). Dropping everything behind such a
//! hole and having the sender go back to it (go-back-N) cost a whole window
//! per lost frame: 512 streams resent 941 MB to deliver 990 MB. Kept here,
//! the frames behind the hole wait for the one resend of the hole itself
//! (the NAK names both ends of it).
//!
//! Everything kept lies inside the credit the receiver granted, so its
//! size is bounded by the window; [`Reorder::insert`] also takes a cap.

use std::collections::BTreeMap;

/// One kept frame: its payload and whether it ends a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Stream offset of the first byte.
    pub offset: u64,
    /// The payload.
    pub data: Vec<u8>,
    /// The frame ended a message (message mode).
    pub ends_message: bool,
}

impl Segment {
    /// Offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// Out-of-order frames of one connection, by offset.
#[derive(Debug, Default)]
pub struct Reorder {
    segs: BTreeMap<u64, Segment>,
    bytes: usize,
}

impl Reorder {
    /// Nothing kept.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Payload bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps a frame that starts beyond the expected offset, unless it adds
    /// nothing (a duplicate, or covered by what is kept) or would take the
    /// kept bytes over `cap`. Returns whether it was kept.
    pub fn insert(&mut self, offset: u64, data: &[u8], ends_message: bool, cap: usize) -> bool {
        let end = offset + data.len() as u64;
        if data.is_empty() || self.bytes + data.len() > cap {
            return false;
        }
        // Covered by a kept frame that starts at or before it?
        if let Some((_, s)) = self.segs.range(..=offset).next_back()
            && s.end() >= end
        {
            return false;
        }
        if let Some(old) = self.segs.get(&offset) {
            // The same start, longer now (the sender had more to send):
            // the longer one replaces it.
            self.bytes -= old.data.len();
        }
        self.bytes += data.len();
        self.segs.insert(offset, Segment { offset, data: data.to_vec(), ends_message });
        true
    }

    /// Where the first kept frame starts: the end of the hole before it.
    pub fn first_offset(&self) -> Option<u64> {
        self.segs.keys().next().copied()
    }

    /// Takes the first kept frame if it starts at or before `expected`
    /// (it continues the stream, perhaps overlapping what has arrived).
    pub fn pop_ready(&mut self, expected: u64) -> Option<Segment> {
        let (&offset, _) = self.segs.first_key_value()?;
        if offset > expected {
            return None;
        }
        let s = self.segs.remove(&offset).expect("present");
        self.bytes -= s.data.len();
        Some(s)
    }

    /// Forgets everything kept.
    pub fn clear(&mut self) {
        self.segs.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_frames_behind_a_hole_and_hands_them_over_in_order() {
        let mut r = Reorder::default();
        assert!(r.insert(200, &[2; 100], false, 1 << 20));
        assert!(r.insert(100, &[1; 100], true, 1 << 20));
        assert!(!r.insert(100, &[1; 100], true, 1 << 20), "a duplicate adds nothing");
        assert!(!r.insert(120, &[1; 50], false, 1 << 20), "covered by a kept frame");
        assert_eq!(r.first_offset(), Some(100));
        assert_eq!(r.bytes(), 200);
        assert_eq!(r.pop_ready(50), None, "the hole [50, 100) is still open");
        let a = r.pop_ready(100).unwrap();
        assert_eq!((a.offset, a.end(), a.ends_message), (100, 200, true));
        let b = r.pop_ready(200).unwrap();
        assert_eq!((b.offset, b.end()), (200, 300));
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn a_longer_frame_at_the_same_offset_replaces_the_shorter() {
        let mut r = Reorder::default();
        assert!(r.insert(100, &[1; 10], false, 1 << 20));
        assert!(r.insert(100, &[1; 30], false, 1 << 20));
        assert_eq!(r.bytes(), 30);
        assert_eq!(r.pop_ready(100).unwrap().end(), 130);
    }

    #[test]
    fn the_cap_bounds_what_is_kept() {
        let mut r = Reorder::default();
        assert!(r.insert(100, &[1; 60], false, 100));
        assert!(!r.insert(200, &[1; 60], false, 100));
        assert_eq!(r.bytes(), 60);
        r.clear();
        assert!(r.is_empty() && r.bytes() == 0);
    }
}
