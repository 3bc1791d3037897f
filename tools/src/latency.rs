//! Round-trip statistics: an hdrhistogram, its percentiles as a table and as
//! the JSON fields scripts read (see CLI.md).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Recorded round-trip times, in nanoseconds.
pub struct Latencies {
    hist: Histogram<u64>,
    /// Round trips that got no answer in time.
    pub lost: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty record (1 ns to 100 s, 3 significant digits).
    pub fn new() -> Self {
        Self { hist: Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"), lost: 0 }
    }

    /// Adds one round trip.
    pub fn record(&mut self, rtt: Duration) {
        let ns = (rtt.as_nanos() as u64).clamp(1, 100_000_000_000);
        self.hist.record(ns).expect("value within bounds");
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The summary scripts read.
    pub fn summary(&self, transport: &str, size: usize) -> Summary {
        let q = |p: f64| self.hist.value_at_quantile(p);
        Summary {
            transport: transport.to_owned(),
            size,
            count: self.hist.len(),
            lost: self.lost,
            rtt_p50_ns: q(0.50),
            rtt_p99_ns: q(0.99),
            rtt_p999_ns: q(0.999),
            rtt_max_ns: self.hist.max(),
            rtt_min_ns: self.hist.min(),
            rtt_mean_ns: self.hist.mean().round() as u64,
        }
    }
}

/// Percentiles of one run (JSON field names fixed by CLI.md).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Transport measured.
    pub transport: String,
    /// Message (or frame) size in bytes.
    pub size: usize,
    /// Round trips measured (warm-up excluded).
    pub count: u64,
    /// Round trips with no answer within the timeout.
    pub lost: u64,
    /// Median round trip, ns.
    pub rtt_p50_ns: u64,
    /// 99th percentile, ns.
    pub rtt_p99_ns: u64,
    /// 99.9th percentile, ns.
    pub rtt_p999_ns: u64,
    /// Maximum, ns.
    pub rtt_max_ns: u64,
    /// Minimum, ns.
    pub rtt_min_ns: u64,
    /// Mean, ns.
    pub rtt_mean_ns: u64,
}

/// Formats nanoseconds with a readable unit.
pub fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

impl Summary {
    /// A one-screen human table.
    pub fn table(&self) -> String {
        format!(
            "{:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}\n{:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "size",
            "p50",
            "p99",
            "p99.9",
            "max",
            "mean",
            "lost",
            self.size,
            fmt_ns(self.rtt_p50_ns),
            fmt_ns(self.rtt_p99_ns),
            fmt_ns(self.rtt_p999_ns),
            fmt_ns(self.rtt_max_ns),
            fmt_ns(self.rtt_mean_ns),
            self.lost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary("raw", 64);
        assert_eq!(s.count, 1000);
        assert!((499_000..=501_000).contains(&s.rtt_p50_ns), "{}", s.rtt_p50_ns);
        assert!((989_000..=991_000).contains(&s.rtt_p99_ns), "{}", s.rtt_p99_ns);
        assert!((999_000..=1_001_000).contains(&s.rtt_max_ns));
        let j = serde_json::to_value(&s).unwrap();
        for k in ["transport", "size", "count", "rtt_p50_ns", "rtt_p99_ns", "rtt_p999_ns", "rtt_max_ns"] {
            assert!(j.get(k).is_some(), "JSON field {k} (CLI.md)");
        }
    }
}
