//! Two endpoints on a simulated link: handshake, messages, streams, credits,
//! close, abort, loss recovery, stale and forged frames, and the property
//! that with seeded loss, reordering, duplication and corruption every
//! message arrives exactly once, in order, intact — or the connection fails
//! with an error. Never a wrong byte.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use xsock_reliable_link::{CloseReason, Config, EndpointEvent, Event, Lookup, Mode, Peer, wire::RstReason};

const PORT: u16 = 7000;

/// Discovers B from A, connects, accepts; returns (a_cid, b_cid).
fn connect(sim: &mut Sim, mode: Mode) -> (u64, u64) {
    sim.b.listen(None, PORT).unwrap();
    let now = sim.now;
    assert_eq!(sim.a.discover(now, B_IP), Lookup::Pending);
    assert!(sim.run_until(10_000, |s| { s.a_events.iter().any(|e| matches!(e, EndpointEvent::Discovered { .. })) }));
    let peer = match sim.a_events.iter().find_map(|e| match e {
        EndpointEvent::Discovered { ip, peer } if *ip == B_IP => Some(*peer),
        _ => None,
    }) {
        Some(Some(p)) => p,
        other => panic!("discovery failed: {other:?}"),
    };
    assert_eq!(peer.mac, B_MAC);
    let a = sim.a.connect(sim.now, B_IP, PORT, peer, mode).unwrap();
    let ok = sim.run_until(100_000, |s| {
        s.a_events.contains(&EndpointEvent::Connection { cid: a, event: Event::Connected })
            || s.a_events.iter().any(|e| matches!(e, EndpointEvent::Connection { event: Event::Closed(_), .. }))
    });
    assert!(ok, "no handshake outcome");
    assert!(
        sim.a_events.contains(&EndpointEvent::Connection { cid: a, event: Event::Connected }),
        "handshake failed: {:?}",
        sim.a_events
    );
    let b = sim.b.accept(PORT).expect("an incoming connection");
    (a, b)
}

/// Sends `messages` from `a` to `b` (message mode) while reading them at b.
/// Returns the messages b received, and the close reasons seen if the
/// connection failed.
fn transfer(
    sim: &mut Sim,
    from_a: bool,
    src: u64,
    dst: u64,
    messages: &[Vec<u8>],
    max_steps: usize,
) -> (Vec<Vec<u8>>, Option<CloseReason>) {
    let mut next_msg = 0usize;
    let mut offset_in_msg = 0usize;
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 100_000];
    let mut failure = None;
    sim.run_until(max_steps, |s| {
        let (tx, rx) = if from_a { (&mut s.a, &mut s.b) } else { (&mut s.b, &mut s.a) };
        // Writer: as much as the send buffer takes.
        while next_msg < messages.len() {
            let m = &messages[next_msg];
            match tx.write(src, &m[offset_in_msg..], true) {
                Ok(n) => {
                    offset_in_msg += n;
                    if offset_in_msg == m.len() {
                        next_msg += 1;
                        offset_in_msg = 0;
                    } else {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        // Reader: everything available, message by message.
        loop {
            match rx.read(dst, &mut buf, true) {
                Ok(r) if r.len > 0 => {
                    current.extend_from_slice(&buf[..r.len]);
                    if r.end_of_message {
                        got.push(std::mem::take(&mut current));
                    }
                }
                _ => break,
            }
        }
        for (events, cid) in
            [(&s.a_events, if from_a { src } else { dst }), (&s.b_events, if from_a { dst } else { src })]
        {
            for e in events {
                if let EndpointEvent::Connection { cid: c, event: Event::Closed(r) } = e
                    && *c == cid
                    && *r != CloseReason::Graceful
                {
                    failure = Some(*r);
                }
            }
        }
        got.len() == messages.len() || failure.is_some()
    });
    (got, failure)
}

#[test]
fn handshake_then_messages_both_ways() {
    let mut sim = Sim::pair(1, Faults::default());
    let (a, b) = connect(&mut sim, Mode::Message);
    let msgs: Vec<Vec<u8>> = (0..50).map(|i| message(i, 1 + (i as usize * 977) % 5000)).collect();
    let (got, fail) = transfer(&mut sim, true, a, b, &msgs, 200_000);
    assert_eq!(fail, None);
    assert_eq!(got, msgs);
    let (got, fail) = transfer(&mut sim, false, b, a, &msgs, 200_000);
    assert_eq!(fail, None);
    assert_eq!(got, msgs);
}

#[test]
fn discovery_of_an_address_nobody_runs_xsock_at_concludes_absent() {
    let mut sim = Sim::pair(2, Faults::default());
    let ghost = std::net::Ipv4Addr::new(10, 0, 0, 99);
    let t0 = sim.now;
    assert_eq!(sim.a.discover(t0, ghost), Lookup::Pending);
    assert!(sim.run_until(10_000, |s| s.a_events.contains(&EndpointEvent::Discovered { ip: ghost, peer: None })));
    let took = sim.now - t0;
    assert!(took < Duration::from_millis(70), "gave up after {took:?} (the schedule ends at 63 ms)");
    assert_eq!(sim.a.discover(sim.now, ghost), Lookup::Absent);
}

#[test]
fn a_port_without_listener_is_refused() {
    let mut sim = Sim::pair(3, Faults::default());
    let peer = Peer { mac: B_MAC, max_payload: 1460 };
    let a = sim.a.connect(sim.now, B_IP, 9999, peer, Mode::Stream).unwrap();
    assert!(sim.run_until(1000, |s| {
        s.a_events.contains(&EndpointEvent::Connection { cid: a, event: Event::Closed(CloseReason::Refused) })
    }));
    assert_eq!(sim.b.stats().refused, 1);
}

#[test]
fn a_vanished_peer_is_an_error_not_a_hang() {
    let mut sim = Sim::pair(4, Faults::default());
    let peer = Peer { mac: [2, 0, 0, 0, 0, 0xcc], max_payload: 1460 };
    let t0 = sim.now;
    let a = sim.a.connect(t0, B_IP, PORT, peer, Mode::Stream).unwrap();
    assert!(sim.run_until(100_000, |s| {
        s.a_events.contains(&EndpointEvent::Connection { cid: a, event: Event::Closed(CloseReason::TimedOut) })
    }));
    let took = sim.now - t0;
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(4), "{took:?}");

    // Mid-transfer: B disappears (every frame to it is lost).
    let mut sim = Sim::pair(5, Faults::default());
    let (a, b) = connect(&mut sim, Mode::Stream);
    let msgs = vec![message(1, 10_000)];
    let _ = transfer(&mut sim, true, a, b, &msgs, 100_000);
    sim.faults.loss = 1.0;
    sim.a.write(a, &message(2, 5000), true).unwrap();
    let t0 = sim.now;
    assert!(sim.run_until(1_000_000, |s| {
        s.a_events.contains(&EndpointEvent::Connection { cid: a, event: Event::Closed(CloseReason::TimedOut) })
    }));
    assert!(sim.now - t0 <= Duration::from_secs(4));
}

#[test]
fn graceful_close_both_ways_then_forgotten() {
    let mut sim = Sim::pair(6, Faults::default());
    let (a, b) = connect(&mut sim, Mode::Stream);
    sim.a.write(a, b"last words", false).unwrap();
    sim.a.close(a).unwrap();
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    assert!(sim.run_until(10_000, |s| {
        let r = s.b.read(b, &mut buf, false).unwrap();
        got.extend_from_slice(&buf[..r.len]);
        s.b.connection(b).unwrap().is_eof()
    }));
    assert_eq!(got, b"last words");
    sim.b.close(b).unwrap();
    let graceful = |s: &Sim, side_a: bool, cid| {
        let events = if side_a { &s.a_events } else { &s.b_events };
        events.contains(&EndpointEvent::Connection { cid, event: Event::Closed(CloseReason::Graceful) })
    };
    assert!(sim.run_until(10_000, |s| graceful(s, true, a) && graceful(s, false, b)));
    sim.a.release(a);
    sim.b.release(b);
    sim.run_until(100_000, |s| s.a.connection(a).is_none() && s.b.connection(b).is_none());
    assert!(sim.a.connection(a).is_none() && sim.b.connection(b).is_none(), "forgotten after lingering");
}

/// Connects A to B at a known MAC (no discovery), whatever the faults.
fn connect_known(sim: &mut Sim, mode: Mode) -> (u64, u64) {
    sim.b.listen(None, PORT).unwrap();
    let peer = Peer { mac: B_MAC, max_payload: 1460 };
    let a = sim.a.connect(sim.now, B_IP, PORT, peer, mode).unwrap();
    assert!(sim.run_until(1_000_000, |s| { s.a.connection(a).is_some_and(|c| c.is_established()) }));
    let b = sim.b.accept(PORT).expect("an incoming connection");
    (a, b)
}

#[test]
fn close_survives_lost_final_frames() {
    for seed in 0..20 {
        let mut sim = Sim::pair(100 + seed, Faults { loss: 0.3, ..Default::default() });
        let (a, b) = connect_known(&mut sim, Mode::Stream);
        sim.a.close(a).unwrap();
        sim.b.close(b).unwrap();
        let done = sim.run_until(1_000_000, |s| {
            let end = |c: Option<&xsock_reliable_link::Connection>| c.and_then(|c| c.close_reason());
            end(s.a.connection(a)).is_some() && end(s.b.connection(b)).is_some()
        });
        assert!(done);
        assert_eq!(sim.a.connection(a).unwrap().close_reason(), Some(CloseReason::Graceful), "seed {seed}");
        assert_eq!(sim.b.connection(b).unwrap().close_reason(), Some(CloseReason::Graceful), "seed {seed}");
    }
}

#[test]
fn abort_resets_the_peer() {
    let mut sim = Sim::pair(7, Faults::default());
    let (a, b) = connect(&mut sim, Mode::Stream);
    sim.a.abort(a);
    assert!(sim.run_until(1000, |s| s.b_events.contains(&EndpointEvent::Connection {
        cid: b,
        event: Event::Closed(CloseReason::Reset(RstReason::Aborted))
    })));
    assert!(sim.b.write(b, b"x", false).is_err());
}

/// A receiver has nothing to send, so nothing of its would ever draw an
/// answer from the aborted side: a lost RST must be sent again (a killed
/// process's peer in a loaded namespace test waited on for good).
#[test]
fn a_lost_rst_is_sent_again_and_a_passive_peer_still_learns() {
    let mut sim = Sim::pair(8, Faults::default());
    let (a, b) = connect(&mut sim, Mode::Stream);
    sim.faults.loss = 1.0;
    sim.a.abort(a);
    sim.flush();
    assert_eq!(sim.link_stats.lost, 1, "the first RST is lost");
    sim.faults.loss = 0.0;
    let t0 = sim.now;
    assert!(sim.run_until(1000, |s| s.b_events.contains(&EndpointEvent::Connection {
        cid: b,
        event: Event::Closed(CloseReason::Reset(RstReason::Aborted))
    })));
    assert!(sim.now - t0 <= Config::default().max_rto, "the second RST came {:?} later", sim.now - t0);
    sim.run_until(100, |_| false);
    assert!(sim.a.connection(a).is_none_or(|c| c.is_finished(sim.now)), "and then the aborted side is done with it");
}

#[test]
fn a_message_larger_than_both_buffers_streams_through_the_credit_window() {
    let mut a_cfg = endpoint_config(A_MAC, A_IP, 1514);
    let mut b_cfg = endpoint_config(B_MAC, B_IP, 1514);
    a_cfg.connection.send_buffer = 48 << 10;
    b_cfg.connection.recv_buffer = 64 << 10;
    let mut sim = Sim::new(8, Faults::default(), a_cfg, b_cfg);
    let (a, b) = connect(&mut sim, Mode::Message);
    let big = message(9, 8 << 20);
    let msgs = vec![big, message(10, 3)];
    let (got, fail) = transfer(&mut sim, true, a, b, &msgs, 10_000_000);
    assert_eq!(fail, None);
    assert!(got == msgs, "8 MiB message reassembled intact");
    let stats = sim.b.connection(b).unwrap().stats();
    assert_eq!(stats.dropped_frames + stats.overrun_frames, 0, "credit kept the sender within the receive buffer");
}

#[test]
fn the_fast_path_has_no_per_frame_acknowledgements() {
    let mut sim = Sim::pair(11, Faults::default());
    let (a, b) = connect(&mut sim, Mode::Stream);
    let msgs: Vec<Vec<u8>> = (0..200).map(|i| message(i, 64 << 10)).collect();
    let sent_before = sim.link_stats.sent;
    let (got, _) = transfer(&mut sim, true, a, b, &msgs, 10_000_000);
    assert_eq!(got.len(), 200);
    let a_stats = sim.a.connection(a).unwrap().stats();
    let b_stats = sim.b.connection(b).unwrap().stats();
    let frames = sim.link_stats.sent - sent_before;
    // 12.8 MB in ~8800 data frames; the receiver answers with a credit per
    // quarter of its 4 MiB buffer read, and the sender's probes are rare.
    assert!(b_stats.credit_frames < 40, "{b_stats:?}");
    assert!(
        frames - a_stats.data_frames < a_stats.data_frames / 100,
        "{frames} frames for {} data frames",
        a_stats.data_frames
    );
    assert_eq!(a_stats.resent_bytes, 0);
}

#[test]
fn a_lost_frame_is_repaired_by_a_nak_and_resent_alone() {
    let mut sim = Sim::pair(12, Faults { loss: 0.02, ..Default::default() });
    let (a, b) = connect(&mut sim, Mode::Message);
    let msgs: Vec<Vec<u8>> = (0..100).map(|i| message(i, 20_000)).collect();
    let (got, fail) = transfer(&mut sim, true, a, b, &msgs, 10_000_000);
    assert_eq!(fail, None);
    assert!(got == msgs);
    let a_stats = sim.a.connection(a).unwrap().stats();
    let b_stats = sim.b.connection(b).unwrap().stats();
    assert!(b_stats.naks_sent > 0 && a_stats.naks_received > 0 && a_stats.resent_bytes > 0, "{a_stats:?} {b_stats:?}");
    // The frames behind a hole are kept: what is sent again is about what
    // was lost (every frame on the link, both ways, at most 1460 bytes;
    // resends can be lost too). Going back to the hole (go-back-N) resent
    // 21 times as much here (1.2 MB for 39 lost frames).
    let lost_bytes = sim.link_stats.lost * 1460;
    assert!(
        a_stats.resent_bytes <= 2 * lost_bytes,
        "resent {} bytes for {} lost frames: {a_stats:?} {b_stats:?}",
        a_stats.resent_bytes,
        sim.link_stats.lost
    );
}

#[test]
fn a_frame_of_an_old_connection_is_dropped_not_delivered() {
    let mut sim = Sim::pair(13, Faults::default());
    let (a1, b1) = connect(&mut sim, Mode::Stream);
    // Capture a DATA frame of the first connection.
    sim.a.write(a1, b"OLD DATA", false).unwrap();
    let mut buf = vec![0u8; 2048];
    let t = sim.a.poll_transmit(sim.now, &mut buf).unwrap();
    let old_frame = buf[..t.len].to_vec();
    sim.b.handle_input(sim.now, A_MAC, &old_frame);
    sim.a.abort(a1);
    sim.run_until(1000, |s| s.b.connection(b1).and_then(|c| c.close_reason()).is_some());
    sim.b.release(b1);
    sim.a.release(a1);
    sim.run_until(100_000, |s| s.b.connection(b1).is_none());
    // A new connection between the same hosts and ports.
    let peer = Peer { mac: B_MAC, max_payload: 1460 };
    let a2 = sim.a.connect(sim.now, B_IP, PORT, peer, Mode::Stream).unwrap();
    sim.run_until(1000, |s| s.a.connection(a2).is_some_and(|c| c.is_established()));
    let b2 = sim.b.accept(PORT).unwrap();
    let unknown_before = sim.b.stats().unknown_cid;
    sim.b.handle_input(sim.now, A_MAC, &old_frame);
    assert_eq!(sim.b.stats().unknown_cid, unknown_before + 1);
    let r = sim.b.read(b2, &mut buf, false).unwrap();
    assert_eq!(r.len, 0, "the stale frame reached no one");
}

#[test]
fn a_frame_with_a_live_id_from_another_mac_is_dropped() {
    let mut sim = Sim::pair(14, Faults::default());
    let (a, b) = connect(&mut sim, Mode::Stream);
    sim.a.write(a, b"genuine", false).unwrap();
    let mut buf = vec![0u8; 2048];
    let t = sim.a.poll_transmit(sim.now, &mut buf).unwrap();
    let frame = buf[..t.len].to_vec();
    sim.b.handle_input(sim.now, [2, 6, 6, 6, 6, 6], &frame);
    assert_eq!(sim.b.stats().wrong_source, 1);
    let r = sim.b.read(b, &mut buf, false).unwrap();
    assert_eq!(r.len, 0);
}

#[test]
fn repeated_syns_find_the_same_connection() {
    // Every SYN-ACK lost for a while: the initiator repeats its SYN; the
    // responder must answer again, not open a second connection.
    let mut sim = Sim::pair(15, Faults::default());
    sim.b.listen(None, PORT).unwrap();
    let peer = Peer { mac: B_MAC, max_payload: 1460 };
    let a = sim.a.connect(sim.now, B_IP, PORT, peer, Mode::Stream).unwrap();
    sim.flush();
    sim.faults.loss = 1.0;
    for _ in 0..20 {
        sim.step();
    }
    sim.faults.loss = 0.0;
    assert!(sim.run_until(100_000, |s| { s.a.connection(a).is_some_and(|c| c.is_established()) }));
    assert!(sim.b.accept(PORT).is_some());
    assert!(sim.b.accept(PORT).is_none(), "exactly one connection");
}

/// What happened to one faulty run.
fn faulty_run(seed: u64, faults: Faults, sizes: &[usize], small_buffers: bool) -> Result<(), String> {
    let mut a_cfg = endpoint_config(A_MAC, A_IP, 1514);
    let mut b_cfg = endpoint_config(B_MAC, B_IP, 1514);
    if small_buffers {
        a_cfg.connection.send_buffer = 16 << 10;
        b_cfg.connection.recv_buffer = 12 << 10;
    }
    let mut sim = Sim::new(seed, faults, a_cfg, b_cfg);
    sim.b.listen(None, PORT).unwrap();
    let peer = Peer { mac: B_MAC, max_payload: 1460 };
    let a = sim.a.connect(sim.now, B_IP, PORT, peer, Mode::Message).unwrap();
    let est = sim
        .run_until(2_000_000, |s| s.a.connection(a).is_some_and(|c| c.is_established() || c.close_reason().is_some()));
    if !est || sim.a.connection(a).unwrap().close_reason().is_some() {
        return Ok(()); // the connection failed with an error: allowed
    }
    let Some(b) = sim.b.accept(PORT) else {
        return Ok(());
    };
    let msgs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| message(seed ^ i as u64, n)).collect();
    let (got, fail) = transfer(&mut sim, true, a, b, &msgs, 5_000_000);
    // Whatever arrived must be a prefix of what was sent, byte for byte.
    for (i, m) in got.iter().enumerate() {
        if *m != msgs[i] {
            return Err(format!("message {i} arrived wrong ({} bytes vs {})", m.len(), msgs[i].len()));
        }
    }
    match fail {
        Some(_) => Ok(()),
        None if got.len() == msgs.len() => {
            let stats = sim.b.connection(b).unwrap().stats();
            if stats.overrun_frames > 0 {
                return Err(format!("the sender overran the credit: {stats:?}"));
            }
            Ok(())
        }
        None => Err(format!("stalled: {} of {} messages, no error", got.len(), msgs.len())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every message arrives exactly once, in order, intact, or the
    /// connection fails with an error; never a wrong byte.
    #[test]
    fn messages_survive_loss_reordering_duplication_and_corruption(
        seed in any::<u64>(),
        loss in 0.0f64..0.15,
        reorder in 0.0f64..0.2,
        duplicate in 0.0f64..0.1,
        corrupt in 0.0f64..0.1,
        small_buffers in any::<bool>(),
        sizes in proptest::collection::vec(1usize..40_000, 1..25),
    ) {
        let faults = Faults { loss, reorder, duplicate, corrupt, ..Default::default() };
        if let Err(e) = faulty_run(seed, faults, &sizes, small_buffers) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Garbage that slips past the CRC never panics anything (it may break
    /// the connection, which must then end with an error).
    #[test]
    fn corruption_past_the_crc_never_panics(seed in any::<u64>(), sizes in proptest::collection::vec(1usize..5000, 1..10)) {
        let faults = Faults { corrupt: 0.05, crc_miss: 1.0, ..Default::default() };
        let _ = faulty_run(seed, faults, &sizes, true);
    }
}
