//! `xsock-perf relaysim [--only N,N,...]`: the relay control plane at scale,
//! as Overlay Weaver's emulator runs an overlay: N relay cores (the ones
//! `xsock relay` runs) in this one process, joined by in-memory links on
//! virtual time. Per N: the start (every link comes up, the overlay floods
//! and computes routes until quiet), one relay killed (the one with the
//! most links) until routes settle around it, and a steady 10 s of virtual
//! time. Reported: wall time of this process, frames and bytes moved, route
//! computations, and the flooding depth (rounds of delivery; times a link's
//! latency gives the convergence time on a real WAN).
//!
//! Topology: a ring (so it stays connected) plus two chords per relay to
//! relays drawn at random (seeded): about 6 links per relay.

use std::{
    io,
    time::{Duration, Instant},
};

use xsock_overlay::sim::Sim;

/// splitmix64, for a topology that is the same every run.
fn next(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Phase {
    rounds: u64,
    wall: Duration,
    frames: u64,
    bytes: u64,
    route_runs: u64,
}

fn route_runs(s: &Sim) -> u64 {
    s.relays.values().map(|c| c.counters().route_runs).sum()
}

fn phase(s: &mut Sim, f: impl FnOnce(&mut Sim)) -> Phase {
    let (f0, b0, r0, d0) = (s.delivered, s.delivered_bytes, route_runs(s), s.rounds);
    let t = Instant::now();
    f(s);
    Phase {
        rounds: s.rounds - d0,
        wall: t.elapsed(),
        frames: s.delivered - f0,
        bytes: s.delivered_bytes - b0,
        route_runs: route_runs(s) - r0,
    }
}

fn row(n: usize, what: &str, p: &Phase) -> String {
    format!(
        "| {n} | {what} | {:.2} | {} | {} | {:.1} | {} | {:.0} |\n",
        p.wall.as_secs_f64(),
        p.rounds,
        p.frames,
        p.bytes as f64 / 1e6,
        p.route_runs,
        p.frames as f64 / n as f64
    )
}

/// Every relay reaches every live relay (checked from a sample of 16).
fn check_routes(s: &Sim, dead: Option<u64>) -> Result<(), String> {
    let live = s.relays.len();
    for (&id, c) in s.relays.iter().step_by((live / 16).max(1)) {
        let routes = c.routes();
        if let Some(d) = dead
            && routes.iter().any(|(n, r)| n.0 == d || r.next_hop.0 == d)
        {
            return Err(format!("relay {id} still routes to or through the dead relay {d}"));
        }
        if routes.len() != live - 1 {
            return Err(format!("relay {id} has routes to {} of {} relays", routes.len(), live - 1));
        }
    }
    Ok(())
}

fn one(n: usize, out: &mut String) -> Result<(), String> {
    let ids: Vec<u64> = (1..=n as u64).collect();
    let mut s = Sim::routing_only(&ids);
    let mut seed = 42u64;
    let mut degree = vec![0usize; n + 1];
    let mut seen = std::collections::HashSet::new();
    let mut edges = Vec::new();
    for i in 1..=n as u64 {
        let ring = i % n as u64 + 1;
        edges.push((i, ring));
        for _ in 0..2 {
            edges.push((i, next(&mut seed) % n as u64 + 1));
        }
    }
    let start = phase(&mut s, |s| {
        for (a, b) in edges {
            if a != b && seen.insert((a.min(b), a.max(b))) {
                s.connect(a, b);
                degree[a as usize] += 1;
                degree[b as usize] += 1;
            }
        }
        s.settle();
    });
    check_routes(&s, None)?;
    *out += &row(n, "start: all links up, flood, routes", &start);
    let victim = (1..=n).max_by_key(|&i| degree[i]).unwrap_or(1) as u64;
    let kill = phase(&mut s, |s| {
        s.kill(victim);
        s.settle();
    });
    check_routes(&s, Some(victim))?;
    *out += &row(n, &format!("kill relay {victim} ({} links), until quiet", degree[victim as usize]), &kill);
    let steady = phase(&mut s, |s| s.advance(Duration::from_secs(10)));
    *out += &row(n, "steady: 10 s of virtual time", &steady);
    let per_relay_s = steady.frames as f64 / (n - 1) as f64 / 10.0;
    *out += &format!("| {n} | steady: frames per relay per second | | | {per_relay_s:.0} | | | |\n");
    eprintln!("relaysim {n}: done");
    Ok(())
}

/// Runs the sizes in `only` (default 100 and 1,000).
pub fn run(only: Option<&str>) -> io::Result<()> {
    let sizes: Vec<usize> = match only {
        Some(list) => list
            .split(',')
            .map(|v| v.trim().parse().map_err(|_| io::Error::other(format!("--only {v}: not a relay count"))))
            .collect::<Result<_, _>>()?,
        None => vec![100, 1000],
    };
    let mut out = String::from(
        "| relays | phase | wall s | flooding depth (hops) | frames moved | MB moved | route computations | frames per relay |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in sizes {
        if n < 3 {
            return Err(io::Error::other("--only: at least 3 relays"));
        }
        one(n, &mut out).map_err(io::Error::other)?;
    }
    println!("{out}");
    Ok(())
}
