//! `xsock-perf handshake [--rounds N]`: what node certificates cost the
//! encrypted handshake of every session that crosses a LAN boundary
//! (relay links, bootstrap sessions). Both sides run in this process as
//! the sans-IO cores the shells run, so the figure is CPU time and bytes:
//! certificates add no message (each rides in a message the handshake
//! sends anyway), so on a network the round trips are the same. Plain and
//! certified handshakes alternate, N of each.

use std::{io, time::Instant};

use xsock_overlay::{
    auth::Key,
    cert::{CaKey, CertBody, Trust},
    secure::{Identity, SecureHandshake, StaticKey},
    wire::Role,
};

const NOW: u64 = 1_800_000_000;

fn certified(ca: &CaKey, role: Role, name: &str) -> Identity {
    let key = StaticKey::generate().expect("a key pair");
    let body = CertBody {
        name: name.into(),
        role,
        key: key.public().try_into().expect("32 bytes"),
        serial: 1,
        not_before: 0,
        not_after: NOW + 3600,
    };
    Identity { key, cert: Some(ca.issue(body).expect("a certificate")), trust: Some(Trust::new(ca.public())) }
}

/// One handshake to its end: microseconds, bytes both ways.
fn once(key: &Key, a: &Identity, b: &Identity) -> io::Result<(f64, usize)> {
    let t = Instant::now();
    let e = |e: xsock_overlay::auth::AuthError| io::Error::other(e.to_string());
    let mut i = SecureHandshake::initiator(key, a, Role::Relay, "relay-a", NOW).map_err(e)?;
    let mut r = SecureHandshake::responder(key, b, Role::Relay, "relay-b", NOW).map_err(e)?;
    let mut bytes = 0;
    while !(i.is_finished() && r.is_finished()) {
        if let Some(out) = i.poll_transmit() {
            bytes += out.len();
            r.handle_bytes(&out).map_err(e)?;
        }
        if let Some(out) = r.poll_transmit() {
            bytes += out.len();
            i.handle_bytes(&out).map_err(e)?;
        }
    }
    let (x, y) = (i.finish().map_err(e)?, r.finish().map_err(e)?);
    let us = t.elapsed().as_secs_f64() * 1e6;
    drop((x, y));
    Ok((us, bytes))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison and prints a table.
pub fn run(rounds: usize) -> io::Result<()> {
    let key = Key::from_file_contents(b"perf-cluster-key-0123456789").map_err(io::Error::other)?;
    let ca = CaKey::generate().map_err(|e| io::Error::other(e.to_string()))?;
    let plain = (
        Identity::plain(StaticKey::generate().map_err(|e| io::Error::other(e.to_string()))?),
        Identity::plain(StaticKey::generate().map_err(|e| io::Error::other(e.to_string()))?),
    );
    let certs = (certified(&ca, Role::Relay, "relay-a"), certified(&ca, Role::Relay, "relay-b"));
    let (mut tp, mut tc) = (Vec::new(), Vec::new());
    let (mut bp, mut bc) = (0, 0);
    for _ in 0..rounds.max(10) {
        let (us, b) = once(&key, &plain.0, &plain.1)?;
        tp.push(us);
        bp = b;
        let (us, b) = once(&key, &certs.0, &certs.1)?;
        tc.push(us);
        bc = b;
    }
    let (mp, mc) = (median(&mut tp), median(&mut tc));
    println!("| handshake | median µs (both sides, one core) | bytes on the wire | messages |");
    println!("|---|---:|---:|---:|");
    println!("| cluster key only | {mp:.0} | {bp} | 3 |");
    println!("| with node certificates | {mc:.0} ({:.2}x) | {bc} (+{}) | 3 |", mc / mp, bc - bp);
    Ok(())
}
