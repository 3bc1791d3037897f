//! The model-based controller ([`ModelCc`]) against a model bottleneck on
//! virtual time (`sim/`): long fat paths with a buffer of a tenth of their
//! BDP (what issue 15 measures), random loss, a rate that drops, and a
//! CUBIC flow beside it. Each run's trace of the controller is a snapshot
//! (`tests/snapshots/*.trace`; `UPDATE_SNAPSHOTS=1` rewrites them after a
//! deliberate change), and the figures that matter are asserted with
//! margins: a simulation has no noise, but the bounds are what the design
//! promises, not what one version happened to reach.

mod sim;

use std::time::{Duration, Instant};

use sim::{Cc, Cubic, MSS, Path, Sender, Sim, WIRE, render, snapshot};
use xsock_pacer::{GapPacer, ModelCc, Rate};

fn model(start: Duration) -> Sender {
    let m = ModelCc::new(MSS as u32, Instant::now(), None);
    let p = GapPacer::new(m.pacing_rate(), 2 * WIRE);
    Sender::new(Cc::Model(Box::new(m), p), start, u64::MAX)
}

fn cubic(start: Duration) -> Sender {
    Sender::new(Cc::Cubic(Cubic::new()), start, u64::MAX)
}

fn path(mbit: u64, rtt_ms: u64, loss_ppm: u64) -> Path {
    Path {
        rate: Rate::mbit(mbit),
        rtt: Duration::from_millis(rtt_ms),
        buffer_percent: 10,
        loss_ppm,
        rate_change: None,
        bursts: None,
    }
}

/// Payload goodput as a share of the bottleneck's payload capacity.
fn share(s: &Sender, p: &Path, from: u64, to: u64) -> f64 {
    let capacity = p.rate.bytes_per_sec() as f64 * MSS as f64 / WIRE as f64;
    s.goodput(Duration::from_secs(from), Duration::from_secs(to)) / capacity
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

struct Outcome {
    whole: f64,
    steady: f64,
    /// Retransmitted share of what was sent once running (after start-up).
    retx_share: f64,
    /// Segments start-up's overshoot cost, in BDPs.
    startup_loss_bdp: f64,
    timeouts: u64,
}

/// One model flow alone on `p` for `len` seconds; its trace is snapshot `name`.
fn alone(name: &str, p: Path, len: u64) -> Outcome {
    let mut sim = Sim::new(p, vec![model(Duration::ZERO)], 7);
    sim.run(secs(len), Duration::from_millis(500));
    snapshot(name, &render(&sim.trace));
    let s = &sim.senders[0];
    let (from, to) = (secs(len / 3), secs(len));
    let steady_segments = s.goodput(from, to) * (to - from).as_secs_f64() / MSS as f64;
    let o = Outcome {
        whole: share(s, &p, 0, len),
        steady: share(s, &p, len / 3, len),
        retx_share: s.retransmitted_in(from, to) as f64 / steady_segments,
        startup_loss_bdp: s.retransmitted_in(Duration::ZERO, from) as f64 * WIRE as f64 / p.bdp() as f64,
        timeouts: s.timeouts,
    };
    eprintln!(
        "{name}: {:.1} % over the run, {:.1} % once running, retransmitted {:.3} % once running, start-up lost {:.2} BDP, {} retransmissions, {} timeouts, queue drops {}, random drops {}, burst drops {}",
        o.whole * 100.0,
        o.steady * 100.0,
        o.retx_share * 100.0,
        o.startup_loss_bdp,
        s.retransmitted,
        o.timeouts,
        sim.dropped_queue,
        sim.dropped_random,
        sim.dropped_burst,
    );
    o
}

#[test]
fn start_up_into_a_shallow_buffer_loses_about_one_bdp_then_the_path_is_held_at_500_mbit_and_100_ms() {
    let o = alone("500mbit-100ms", path(500, 100, 0), 30);
    assert!(o.whole >= 0.90, "{:.3} of the path over 30 s", o.whole);
    assert!(o.steady >= 0.95, "{:.3} once running", o.steady);
    assert!(o.retx_share < 0.002, "retransmitted {:.4} of what it sent", o.retx_share);
    // Kernel BBR's start-up at gain 2.89 loses two BDPs into such a buffer.
    assert!(o.startup_loss_bdp < 1.5, "start-up lost {:.2} BDP", o.startup_loss_bdp);
    assert_eq!(o.timeouts, 0);
}

#[test]
fn a_350_ms_gigabit_path_is_filled_without_a_rate_given() {
    let o = alone("1gbit-350ms", path(1000, 350, 0), 40);
    assert!(o.steady >= 0.92, "{:.3} once running", o.steady);
    assert!(o.retx_share < 0.002, "retransmitted {:.4}", o.retx_share);
    assert!(o.startup_loss_bdp < 1.5, "start-up lost {:.2} BDP", o.startup_loss_bdp);
    assert_eq!(o.timeouts, 0);
}

#[test]
fn random_loss_of_a_tenth_of_a_percent_does_not_collapse_the_rate() {
    let o = alone("1gbit-100ms-loss1e-3", path(1000, 100, 1000), 30);
    assert!(o.steady >= 0.90, "{:.3} once running", o.steady);
    // Little more than the loss itself is sent again.
    assert!(o.retx_share < 0.003, "retransmitted {:.4}", o.retx_share);
    let o = alone("500mbit-350ms-loss1e-4", path(500, 350, 100), 40);
    assert!(o.steady >= 0.85, "{:.3} once running", o.steady);
}

#[test]
fn bursts_of_loss_with_no_queue_standing_do_not_hold_the_cap_below_the_path() {
    // 150 segments lost in a row every 2 s, with the queue empty: a cap
    // cut below the BDP each time (to 90 % of it, as the model once did)
    // left a gigabit, 100 ms path 77 % used on wanemu, and 95 % here.
    let mut p = path(1000, 100, 0);
    p.bursts = Some((secs(2), 150));
    let o = alone("1gbit-100ms-bursts", p, 30);
    assert!(o.steady >= 0.97, "{:.3} once running", o.steady);
    assert_eq!(o.timeouts, 0);
}

#[test]
fn a_bottleneck_that_slows_down_is_followed_within_seconds() {
    let mut p = path(1000, 100, 0);
    p.rate_change = Some((secs(10), Rate::mbit(300)));
    let mut sim = Sim::new(p, vec![model(Duration::ZERO)], 7);
    sim.run(secs(25), Duration::from_millis(500));
    snapshot("1gbit-to-300mbit-100ms", &render(&sim.trace));
    let s = &sim.senders[0];
    let after = s.goodput(secs(14), secs(25)) / (Rate::mbit(300).bytes_per_sec() as f64 * MSS as f64 / WIRE as f64);
    eprintln!("after the drop: {:.1} %, retransmitted {}", after * 100.0, s.retransmitted);
    assert!(after >= 0.85, "{after:.3} of the slower path");
    assert_eq!(s.timeouts, 0);
}

#[test]
fn a_sender_that_falls_short_of_its_pacing_does_not_spiral_down() {
    // Pacing by a poll loop that sleeps: 70 % of the rate leaves. Pacing
    // at what was delivered would then slow down round after round.
    let p = path(1000, 100, 0);
    let mut s = model(Duration::ZERO);
    s.pacing_achieved_percent = 70;
    let mut sim = Sim::new(p, vec![s], 7);
    sim.run(secs(30), Duration::from_millis(500));
    let last = share(&sim.senders[0], &p, 20, 30);
    eprintln!("pacing achieved at 70 %: {:.1} % of the path over the last 10 s", last * 100.0);
    assert!(last >= 0.6, "{last:.3} of the path in the last 10 s");
    snapshot("1gbit-100ms-pacing-70", &render(&sim.trace));
}

#[test]
fn a_sender_that_sees_acks_in_batches_from_a_sleeping_poll_loop_still_fills_the_path() {
    // The TCP mode's default endpoints sleep between polls; on a busy host
    // their ACKs are read every few milliseconds, late by as much again:
    // RTT samples carry milliseconds of noise that is not a queue, and
    // deliveries come in bursts.
    let p = path(500, 100, 0);
    let mut s = model(Duration::ZERO);
    s.ack_batch = Some(Duration::from_millis(3));
    let mut sim = Sim::new(p, vec![s], 7);
    sim.run(secs(30), Duration::from_millis(500));
    let s = &sim.senders[0];
    let steady = share(s, &p, 10, 30);
    eprintln!(
        "ACKs in batches every 3-6 ms: {:.1} % of the path over the last 20 s, {} retransmissions, {} timeouts",
        steady * 100.0,
        s.retransmitted,
        s.timeouts
    );
    snapshot("500mbit-100ms-ack-batches", &render(&sim.trace));
    assert!(steady >= 0.85, "{steady:.3} of the path in the last 20 s");
}

/// Two flows on one bottleneck: (share of the first, of the second).
fn pair(name: &str, p: Path, first: Sender, second: Sender, len: u64) -> (f64, f64) {
    let mut sim = Sim::new(p, vec![first, second], 11);
    sim.run(secs(len), Duration::from_millis(500));
    snapshot(name, &render(&sim.trace));
    let a = share(&sim.senders[0], &p, len / 3, len);
    let b = share(&sim.senders[1], &p, len / 3, len);
    eprintln!("{name}: {:.1} % and {:.1} % of the path", a * 100.0, b * 100.0);
    (a, b)
}

#[test]
fn beside_a_cubic_flow_neither_starves() {
    let p = path(500, 100, 0);
    let (model_share, cubic_share) = pair("model-vs-cubic-500mbit-100ms", p, model(Duration::ZERO), cubic(secs(2)), 60);
    // Not an even split (see perf/RESULTS.md): CUBIC keeps a tenth.
    assert!(cubic_share >= 0.08, "CUBIC got {cubic_share:.3}");
    assert!(model_share >= 0.2, "the model got {model_share:.3}");
    assert!(model_share + cubic_share >= 0.9, "together {:.3}", model_share + cubic_share);
}
