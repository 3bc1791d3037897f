//! A transmission rate, and the serialization time of a frame at that rate.

use std::{fmt, str::FromStr, time::Duration};

/// A rate in bits per second. Never zero: a zero rate would mean "never send",
/// which callers express by not asking the pacer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate {
    bits_per_sec: u64,
}

impl Rate {
    /// A rate of `bits_per_sec`; `None` for zero.
    pub const fn from_bits_per_sec(bits_per_sec: u64) -> Option<Rate> {
        if bits_per_sec == 0 { None } else { Some(Rate { bits_per_sec }) }
    }

    /// `n` Mbit/s (10^6 bits per second).
    pub const fn mbit(n: u64) -> Rate {
        assert!(n > 0, "a rate must be positive");
        Rate { bits_per_sec: n * 1_000_000 }
    }

    /// `n` Gbit/s (10^9 bits per second).
    pub const fn gbit(n: u64) -> Rate {
        assert!(n > 0, "a rate must be positive");
        Rate { bits_per_sec: n * 1_000_000_000 }
    }

    /// The rate that moves `bytes` in `over`, times `gain_percent / 100`:
    /// the congestion-derived pacing rate `gain × cwnd / RTT`. `over` below
    /// one microsecond is treated as one microsecond, so a bogus RTT sample
    /// cannot ask for an infinite rate.
    pub fn from_window(bytes: u64, over: Duration, gain_percent: u32) -> Option<Rate> {
        let nanos = over.as_nanos().max(1_000);
        let bps = u128::from(bytes) * 8 * 1_000_000_000 * u128::from(gain_percent) / 100 / nanos;
        Rate::from_bits_per_sec(u64::try_from(bps).unwrap_or(u64::MAX))
    }

    /// Bits per second.
    pub const fn bits_per_sec(self) -> u64 {
        self.bits_per_sec
    }

    /// Bytes per second, rounded down.
    pub const fn bytes_per_sec(self) -> u64 {
        self.bits_per_sec / 8
    }

    /// How long `bytes` take to serialize at this rate, rounded up to the
    /// nanosecond.
    pub fn time_for(self, bytes: u64) -> Duration {
        let num = u128::from(bytes) * 8 * 1_000_000_000;
        let nanos = num.div_ceil(u128::from(self.bits_per_sec));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many bytes this rate moves in `d`, rounded down.
    pub fn bytes_in(self, d: Duration) -> u64 {
        let b = d.as_nanos() * u128::from(self.bits_per_sec) / 8 / 1_000_000_000;
        u64::try_from(b).unwrap_or(u64::MAX)
    }

    /// This rate scaled by `num / den` (`None` if that rounds to zero).
    pub fn scaled(self, num: u64, den: u64) -> Option<Rate> {
        let v = u128::from(self.bits_per_sec) * u128::from(num) / u128::from(den.max(1));
        Rate::from_bits_per_sec(u64::try_from(v).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bits_per_sec;
        let (v, unit) = if b >= 1_000_000_000 {
            (b as f64 / 1e9, "gbit")
        } else if b >= 1_000_000 {
            (b as f64 / 1e6, "mbit")
        } else if b >= 1_000 {
            (b as f64 / 1e3, "kbit")
        } else {
            (b as f64, "bit")
        };
        write!(f, "{}{unit}", trim(v))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Why a rate string was refused; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rate {input:?}: {why}; write a number and a unit: bit, kbit, mbit, gbit or tbit (e.g. 1gbit, 500mbit)")]
pub struct ParseRateError {
    input: String,
    why: &'static str,
}

impl FromStr for Rate {
    type Err = ParseRateError;

    /// Parses `1gbit`, `500mbit`, `2.5gbit`, `64kbit`, `1000bit` (decimal
    /// units, as tc and iperf3 use). `bps`-style units are refused because
    /// tc reads `mbps` as megabytes per second and iperf3 as megabits.
    fn from_str(s: &str) -> Result<Rate, ParseRateError> {
        let err = |why| ParseRateError { input: s.to_string(), why };
        let t = s.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| err("no unit"))?;
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| err("not a number"))?;
        let mult: f64 = match unit.trim() {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "tbit" => 1e12,
            u if u.ends_with("bps") => return Err(err("'bps' units are ambiguous (bytes in tc, bits in iperf3)")),
            _ => return Err(err("unknown unit")),
        };
        let bps = value * mult;
        if !bps.is_finite() || bps < 1.0 {
            return Err(err("rate must be at least 1 bit per second"));
        }
        if bps > u64::MAX as f64 {
            return Err(err("rate too large"));
        }
        Ok(Rate { bits_per_sec: bps.round() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_forms() {
        assert_eq!("1gbit".parse::<Rate>().unwrap(), Rate::gbit(1));
        assert_eq!("500mbit".parse::<Rate>().unwrap(), Rate::mbit(500));
        assert_eq!("2.5Gbit".parse::<Rate>().unwrap().bits_per_sec(), 2_500_000_000);
        assert_eq!("64kbit".parse::<Rate>().unwrap().bits_per_sec(), 64_000);
        assert_eq!(" 1000bit ".parse::<Rate>().unwrap().bits_per_sec(), 1000);
    }

    #[test]
    fn refuses_ambiguous_or_broken_input_with_a_hint() {
        for bad in ["1mbps", "1gb", "fast", "0mbit", "mbit", "1.2.3mbit", "100"] {
            let e = bad.parse::<Rate>().unwrap_err().to_string();
            assert!(e.contains("e.g. 1gbit"), "{bad}: {e}");
        }
        assert!("1mbps".parse::<Rate>().unwrap_err().to_string().contains("ambiguous"));
    }

    #[test]
    fn serialization_time_is_exact_at_round_rates() {
        assert_eq!(Rate::gbit(1).time_for(1514), Duration::from_nanos(12_112));
        assert_eq!(Rate::gbit(10).time_for(1500), Duration::from_nanos(1_200));
        // Rounded up: 1 byte at 3 bit/s is 2.67 s.
        assert_eq!(Rate::from_bits_per_sec(3).unwrap().time_for(1), Duration::from_nanos(2_666_666_667));
        assert_eq!(Rate::gbit(1).bytes_in(Duration::from_millis(100)), 12_500_000);
    }

    #[test]
    fn window_rate_is_gain_times_cwnd_over_rtt() {
        // 12.5 MB per 100 ms = 1 Gbit/s; gain 125% = 1.25 Gbit/s.
        let r = Rate::from_window(12_500_000, Duration::from_millis(100), 125).unwrap();
        assert_eq!(r.bits_per_sec(), 1_250_000_000);
        assert!(Rate::from_window(0, Duration::from_millis(1), 100).is_none());
        // A zero RTT sample is clamped, not divided by.
        assert!(Rate::from_window(1500, Duration::ZERO, 100).is_some());
    }

    #[test]
    fn displays_in_the_unit_it_parses() {
        for s in ["1gbit", "500mbit", "2.5gbit", "64kbit", "7bit"] {
            let r: Rate = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(r.to_string().parse::<Rate>().unwrap(), r);
        }
    }
}
