//! Parallel Reno streams sharing one bottleneck, in a fluid model on virtual
//! time, with and without cooperative window caps. The table each case
//! prints is the simulation's snapshot; the asserts hold the properties the
//! caps exist for: a narrower per-stream spread at no real cost to the
//! aggregate.

use std::time::{Duration, Instant};

use xsock_pacer::{CapConfig, CapCoordinator, Rate, StreamSample};

const MSS: f64 = 1460.0;

/// A seeded xorshift64*: the simulation must be the same on every run.
struct Seeded(u64);

impl Seeded {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Outcome {
    /// Per-stream goodput over the second half of the run, bit/s.
    rates: Vec<f64>,
    utilization: f64,
    losses: u64,
}

impl Outcome {
    fn spread(&self) -> f64 {
        let max = self.rates.iter().cloned().fold(0.0, f64::max);
        let min = self.rates.iter().cloned().fold(f64::MAX, f64::min);
        max / min
    }

    fn jain(&self) -> f64 {
        let s: f64 = self.rates.iter().sum();
        let s2: f64 = self.rates.iter().map(|r| r * r).sum();
        s * s / (self.rates.len() as f64 * s2)
    }
}

/// Mean spread, mean Jain index, mean utilization and total losses over seeds 1..=5.
fn over_seeds(name: &str, run: impl Fn(u64) -> Outcome) -> (f64, f64, f64, u64) {
    let outs: Vec<Outcome> = (1..=5).map(&run).collect();
    for o in &outs {
        report(name, o);
    }
    let n = outs.len() as f64;
    (
        outs.iter().map(Outcome::spread).sum::<f64>() / n,
        outs.iter().map(Outcome::jain).sum::<f64>() / n,
        outs.iter().map(|o| o.utilization).sum::<f64>() / n,
        outs.iter().map(|o| o.losses).sum(),
    )
}

/// `rtts` streams through a `capacity` bottleneck with a drop-tail buffer of
/// `buffer_bytes`, for `seconds` in 1 ms steps. On overflow one stream takes
/// the loss, chosen in proportion to its share of the arrivals.
fn simulate(
    rtts_ms: &[u64],
    capacity: Rate,
    buffer_bytes: f64,
    seconds: u64,
    caps: Option<CapConfig>,
    seed: u64,
) -> Outcome {
    let mut rng = Seeded(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let c = capacity.bits_per_sec() as f64 / 8.0;
    let dt = 0.001;
    let t0 = Instant::now();
    let n = rtts_ms.len();
    let rtt: Vec<f64> = rtts_ms.iter().map(|&m| m as f64 / 1000.0).collect();
    let mut cwnd = vec![10.0 * MSS; n];
    let mut slow_start = vec![true; n];
    let mut delivered = vec![0.0f64; n];
    let mut delivered_at_half = vec![0.0f64; n];
    let mut queue = 0.0f64;
    let mut losses = 0;
    let mut coord = caps.map(CapCoordinator::new);
    let ids: Vec<_> = coord.as_mut().map(|c| (0..n).map(|_| c.add_stream()).collect()).unwrap_or_default();
    let steps = seconds * 1000;
    for step in 0..steps {
        let now = t0 + Duration::from_millis(step);
        if let Some(co) = coord.as_mut() {
            for (i, &id) in ids.iter().enumerate() {
                let srtt = Duration::from_secs_f64(rtt[i] + queue / c);
                co.observe(id, StreamSample { acked_bytes: delivered[i] as u64, srtt });
            }
            co.handle_timeout(now);
        }
        let window: Vec<f64> = (0..n)
            .map(|i| {
                let cap = coord.as_ref().and_then(|co| co.cap(ids[i])).map_or(f64::MAX, |b| b as f64);
                cwnd[i].min(cap)
            })
            .collect();
        let rate: Vec<f64> = (0..n).map(|i| window[i] / (rtt[i] + queue / c)).collect();
        let arriving: f64 = rate.iter().sum();
        let served = arriving.min(c + queue / dt);
        for i in 0..n {
            delivered[i] += rate[i] / arriving * served * dt;
        }
        queue = (queue + (arriving - c) * dt).max(0.0);
        if queue > buffer_bytes {
            queue = buffer_bytes;
            losses += 1;
            let mut pick = rng.unit() * arriving;
            let i = (0..n).find(|&i| {
                pick -= rate[i];
                pick <= 0.0
            });
            let i = i.unwrap_or(n - 1);
            cwnd[i] = (cwnd[i] / 2.0).max(2.0 * MSS);
            slow_start[i] = false;
        }
        for i in 0..n {
            // A capped stream is application-limited: its window does not grow.
            if window[i] < cwnd[i] {
                continue;
            }
            if slow_start[i] {
                cwnd[i] *= 2f64.powf(dt / rtt[i]);
            } else {
                cwnd[i] += MSS * dt / rtt[i];
            }
        }
        if step == steps / 2 {
            delivered_at_half.clone_from(&delivered);
        }
    }
    let half = (seconds / 2) as f64;
    let rates: Vec<f64> = (0..n).map(|i| (delivered[i] - delivered_at_half[i]) * 8.0 / half).collect();
    let utilization = rates.iter().sum::<f64>() / (c * 8.0);
    Outcome { rates, utilization, losses }
}

fn report(name: &str, o: &Outcome) {
    let per: Vec<String> = o.rates.iter().map(|r| format!("{:.0}", r / 1e6)).collect();
    println!(
        "{name:<22} utilization {:>5.1}%  spread {:>5.2}x  Jain {:.3}  losses {:>4}  per stream Mbit/s [{}]",
        o.utilization * 100.0,
        o.spread(),
        o.jain(),
        o.losses,
        per.join(" ")
    );
}

#[test]
fn a_target_evens_out_parallel_streams_at_350_ms() {
    // The Data Reservoir case: eight streams on one 350 ms, 1 Gbit/s path,
    // buffer at 10% of the bandwidth-delay product. Uncapped, whoever took
    // the last loss falls far behind; capped at an equal share of the
    // reservation, nobody runs ahead, the buffer rarely overflows, and the
    // path stays full.
    let rtts = [350; 8];
    let capacity = Rate::mbit(1000);
    let buffer = capacity.bytes_per_sec() as f64 * 0.35 * 0.1;
    let config = CapConfig { interval: Duration::from_millis(350), target: Some(capacity), ..CapConfig::default() };
    let plain = over_seeds("uncapped", |seed| simulate(&rtts, capacity, buffer, 120, None, seed));
    let capped = over_seeds("caps at the target", |seed| simulate(&rtts, capacity, buffer, 120, Some(config), seed));
    println!(
        "spread {:.2}x -> {:.2}x, Jain {:.3} -> {:.3}, utilization {:.3} -> {:.3}, losses {} -> {}",
        plain.0, capped.0, plain.1, capped.1, plain.2, capped.2, plain.3, capped.3
    );
    assert!(capped.0 < plain.0 * 0.5, "spread {:.2} vs {:.2}", capped.0, plain.0);
    assert!(capped.1 > plain.1 + 0.1, "Jain {:.3} vs {:.3}", capped.1, plain.1);
    assert!(capped.2 > 0.95 && capped.2 >= plain.2, "utilization {:.3} vs {:.3}", capped.2, plain.2);
    assert!(capped.3 * 2 < plain.3, "losses {} vs {}", capped.3, plain.3);
}

#[test]
fn without_a_target_caps_even_out_different_rtts_at_no_cost() {
    // Streams over different routes: Reno favours the short RTTs. Water
    // filling against the estimated capacity narrows that.
    let rtts = [100, 100, 150, 150, 200, 250, 300, 350];
    let capacity = Rate::mbit(1000);
    let buffer = capacity.bytes_per_sec() as f64 * 0.2 * 0.1;
    let config = CapConfig { interval: Duration::from_millis(350), ..CapConfig::default() };
    let plain = over_seeds("uncapped, mixed RTT", |seed| simulate(&rtts, capacity, buffer, 120, None, seed));
    let capped = over_seeds("caps, mixed RTT", |seed| simulate(&rtts, capacity, buffer, 120, Some(config), seed));
    println!("spread {:.2}x -> {:.2}x, Jain {:.3} -> {:.3}", plain.0, capped.0, plain.1, capped.1);
    assert!(capped.0 < plain.0 * 0.8, "spread {:.2} vs {:.2}", capped.0, plain.0);
    assert!(capped.1 > plain.1 + 0.05, "Jain {:.3} vs {:.3}", capped.1, plain.1);
    assert!(capped.2 > plain.2 - 0.01, "utilization {:.3} vs {:.3}", capped.2, plain.2);
}

#[test]
fn without_a_target_caps_never_cost_aggregate_rate_on_one_long_path() {
    // The limit of the estimated capacity, kept visible: on one 350 ms path
    // the streams stay uneven (a halved stream cannot take its share back
    // quickly), but capping never leaves the path emptier than no caps.
    let rtts = [350; 8];
    let capacity = Rate::mbit(1000);
    let buffer = capacity.bytes_per_sec() as f64 * 0.35 * 0.1;
    let config = CapConfig { interval: Duration::from_millis(350), ..CapConfig::default() };
    let plain = over_seeds("uncapped", |seed| simulate(&rtts, capacity, buffer, 120, None, seed));
    let capped = over_seeds("caps, estimated", |seed| simulate(&rtts, capacity, buffer, 120, Some(config), seed));
    println!("utilization {:.3} -> {:.3}, Jain {:.3} -> {:.3}", plain.2, capped.2, plain.1, capped.1);
    assert!(capped.2 > plain.2 - 0.01, "utilization {:.3} vs {:.3}", capped.2, plain.2);
}
