//! Attached endpoints on relay cores, in memory and on virtual time: a VC
//! opens with one message per hop carrying its first bytes, credit grows
//! while the reader keeps up and holds a slow reader's sender, sessions
//! that break abort their VCs with the reason.

use xsock_overlay::{
    NodeId,
    attach::{Event, VcId},
    relay::Action,
    sim::Sim,
    wire::Msg,
};

/// Relays 1-2-3 in a chain; h1-1 (101) attached to relay 1, h3-1 (301)
/// to relay 3.
fn chain() -> Sim {
    let mut s = Sim::new(&[1, 2, 3], 1 << 20);
    s.connect(1, 2);
    s.connect(2, 3);
    s.attach(1, 101);
    s.attach(3, 301);
    s.settle();
    s.msgs_by_type.clear();
    s
}

/// Opens 101 -> 301:80 with `first`, accepts it; returns (opener's vc,
/// acceptor's vc).
fn open_accepted(s: &mut Sim, first: &[u8]) -> (VcId, VcId) {
    let (vc, took) = s.endpoint(101).open(NodeId(301), 80, first);
    assert_eq!(took, first.len());
    s.settle();
    let events = s.take_events();
    let Some(&(_, Event::Incoming { vc: theirs, src, port })) = events.iter().find(|(n, _)| *n == 301) else {
        panic!("no Incoming at 301: {events:?}")
    };
    assert_eq!((src, port), (NodeId(101), 80));
    s.endpoint(301).accept(theirs);
    s.settle();
    assert!(s.take_events().contains(&(101, Event::Opened(vc))));
    (vc, theirs)
}

fn read_all(s: &mut Sim, node: u64, vc: VcId) -> Vec<u8> {
    let mut out = vec![0; s.endpoint(node).readable(vc)];
    let n = s.endpoint(node).read(vc, &mut out);
    out.truncate(n);
    out
}

fn every_relay_forgot_its_vcs(s: &mut Sim) {
    for r in [1, 2, 3] {
        assert_eq!(s.core(r).vc_count(), 0, "relay {r}");
    }
}

const OPEN: u8 = 30;
const ACCEPT: u8 = 31;

#[test]
fn an_attached_endpoint_opens_with_one_message_per_hop_carrying_its_first_bytes() {
    let mut s = chain();
    let (_, theirs) = open_accepted(&mut s, b"hello, rank 7");
    // Four hops (session, two relay links, session): one Open and one
    // Accept on each, and nothing else.
    let types: Vec<(u8, u64)> = s.msgs_by_type.iter().map(|(t, n)| (*t, *n)).collect();
    assert_eq!(types, vec![(OPEN, 4), (ACCEPT, 4)]);
    assert_eq!(read_all(&mut s, 301, theirs), b"hello, rank 7");
}

#[test]
fn data_flows_both_ways_and_the_window_grows_while_the_reader_keeps_up() {
    let mut s = chain();
    let (ours, theirs) = open_accepted(&mut s, b"");
    let total = 64u64 << 20;
    let pattern = |i: u64| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut rounds = 0;
    while got < total {
        rounds += 1;
        // The sender writes what its credit allows; the reader reads all.
        let space = s.endpoint(101).send_space(ours).min((total - sent) as usize);
        assert!(space <= 16 << 20, "credit beyond the largest window: {space}");
        let chunk: Vec<u8> = (sent..sent + space as u64).map(pattern).collect();
        assert_eq!(s.endpoint(101).write(ours, &chunk), space);
        sent += space as u64;
        s.settle();
        let data = read_all(&mut s, 301, theirs);
        assert!(data.iter().enumerate().all(|(i, b)| *b == pattern(got + i as u64)), "bytes out of order or changed");
        got += data.len() as u64;
        s.settle();
        assert!(rounds < 1000, "no progress: {got} of {total}");
    }
    // 256 KiB doubled six times to the 16 MiB cap, and stopped there.
    assert_eq!(s.endpoint(301).windows_grown, 6);
    assert!(rounds < 20, "{rounds} rounds for 64 MiB: the window did not grow");
    // And back the other way on the same VC.
    assert_eq!(s.endpoint(301).write(theirs, b"done"), 4);
    s.settle();
    assert_eq!(read_all(&mut s, 101, ours), b"done");
    assert!(s.take_events().iter().all(|(_, e)| !matches!(e, Event::Aborted { .. })));
}

#[test]
fn a_reader_that_does_not_read_holds_its_sender_to_the_first_window() {
    let mut s = chain();
    let (ours, theirs) = open_accepted(&mut s, b"");
    let big = vec![7u8; 4 << 20];
    let mut sent = 0;
    for _ in 0..10 {
        sent += s.endpoint(101).write(ours, &big);
        s.settle();
    }
    assert_eq!(sent, 256 << 10, "the sender got only the first window");
    assert_eq!(s.endpoint(301).readable(theirs), 256 << 10);
    assert_eq!(s.endpoint(301).windows_grown, 0);
    // Reading a little gives that much back once it is worth a message.
    let mut buf = vec![0; 100 << 10];
    s.endpoint(301).read(theirs, &mut buf);
    s.settle();
    assert_eq!(s.endpoint(101).send_space(ours), 100 << 10);
}

#[test]
fn both_halves_close_and_every_core_forgets_the_vc() {
    let mut s = chain();
    let (ours, theirs) = open_accepted(&mut s, b"x");
    s.endpoint(101).close(ours);
    s.settle();
    assert!(s.take_events().contains(&(301, Event::Finished(theirs))));
    assert_eq!(read_all(&mut s, 301, theirs), b"x");
    assert!(!s.endpoint(301).at_end(theirs) || s.endpoint(301).vc_count() == 1);
    s.endpoint(301).close(theirs);
    s.settle();
    assert!(s.take_events().contains(&(101, Event::Finished(ours))));
    every_relay_forgot_its_vcs(&mut s);
    assert_eq!((s.endpoint(101).vc_count(), s.endpoint(301).vc_count()), (0, 0));
}

#[test]
fn refusals_come_back_with_the_reason_from_the_endpoint() {
    let mut s = chain();
    // h3-1 listens on 80 only: 81 is refused (by the endpoint: relay 3
    // forwards to an attached endpoint whatever its copy of the directory
    // says, which may lag a listen).
    let (vc, _) = s.endpoint(101).open(NodeId(301), 81, b"");
    s.settle();
    let ev = s.take_events();
    assert!(
        ev.iter().any(|(n, e)| *n == 101
            && matches!(e, Event::Refused { vc: v, reason } if *v == vc && reason.contains("port 81"))),
        "{ev:?}"
    );
    // The endpoint itself stopped listening: it refuses.
    s.endpoint(301).unlisten(80);
    let (vc, _) = s.endpoint(101).open(NodeId(301), 80, b"");
    s.settle();
    let ev = s.take_events();
    assert!(
        ev.iter().any(|(n, e)| *n == 101
            && matches!(e, Event::Refused { vc: v, reason } if *v == vc && reason.contains("does not listen"))),
        "{ev:?}"
    );
    every_relay_forgot_its_vcs(&mut s);
}

#[test]
fn a_broken_session_aborts_its_vcs_at_the_far_end_with_the_reason() {
    let mut s = chain();
    let (ours, theirs) = open_accepted(&mut s, b"");
    s.detach(101);
    s.settle();
    let ev = s.take_events();
    assert!(ev.iter().any(|(n, e)| *n == 101 && matches!(e, Event::Aborted { vc, .. } if *vc == ours)), "{ev:?}");
    assert!(
        ev.iter().any(|(n, e)| *n == 301
            && matches!(e, Event::Aborted { vc, reason } if *vc == theirs && reason.starts_with("path lost"))),
        "{ev:?}"
    );
    every_relay_forgot_its_vcs(&mut s);
}

#[test]
fn an_endpoint_opens_only_as_itself() {
    let mut s = chain();
    let (_, link, _) = s.attached[&101];
    let forged = Msg::Open { vc: 2, src: NodeId(102), dst: NodeId(301), port: 80, ttl: 16, credit: 1, data: b"" };
    let now = s.now;
    assert!(s.core(1).handle_link_frame(now, link, &forged.to_frame()[4..]).is_err());
    let lsa = Msg::Lsa { origin: NodeId(101), seq: 1, neighbors: vec![(NodeId(3), 1)] };
    assert!(s.core(1).handle_link_frame(now, link, &lsa.to_frame()[4..]).is_err(), "no routing from a session");
}

#[test]
fn an_attached_endpoint_reaches_one_that_is_not_attached_first_bytes_included() {
    let mut s = chain();
    // h3-2 (302) is registered but not attached: relay 3 connects a stream.
    let (vc, _) = s.endpoint(101).open(NodeId(302), 80, b"first");
    let acts = s.settle();
    let Some(&(3, Action::Connect { local, .. })) = acts.iter().find(|(_, a)| matches!(a, Action::Connect { .. }))
    else {
        panic!("{acts:?}")
    };
    s.core(3).handle_local_connected(local);
    let acts = s.settle();
    assert!(acts.contains(&(3, Action::Write { local, bytes: b"first".to_vec() })), "{acts:?}");
    assert!(s.take_events().contains(&(101, Event::Opened(vc))));
    // The first bytes needed no credit: delivering them gives none back.
    let before = s.endpoint(101).send_space(vc);
    s.core(3).handle_local_delivered(local, 5);
    s.settle();
    assert_eq!(s.endpoint(101).send_space(vc), before);
}

#[test]
fn idle_sessions_live_on_keepalives() {
    let mut s = chain();
    let (ours, _) = open_accepted(&mut s, b"");
    s.advance(std::time::Duration::from_secs(10));
    assert!(s.take_events().is_empty());
    assert_eq!(s.core(1).session_count(), 1);
    assert_eq!(s.endpoint(101).send_space(ours), 256 << 10);
    assert!(s.endpoint(101).dead().is_none());
}

#[test]
fn an_endpoint_that_closes_and_leaves_ends_well_and_a_later_write_is_told() {
    let mut s = chain();
    let (ours, theirs) = open_accepted(&mut s, b"");
    // 301 sends its answer, closes its half, and exits at once.
    assert_eq!(s.endpoint(301).write(theirs, b"the answer"), 10);
    s.endpoint(301).close(theirs);
    s.settle();
    s.detach(301);
    s.settle();
    let ev = s.take_events();
    assert!(ev.iter().all(|(n, e)| *n != 101 || !matches!(e, Event::Aborted { .. })), "{ev:?}");
    assert!(ev.contains(&(101, Event::Finished(ours))), "{ev:?}");
    assert_eq!(read_all(&mut s, 101, ours), b"the answer");
    // Writing to it now is answered: the far end is gone.
    s.endpoint(101).write(ours, b"more?");
    s.settle();
    let ev = s.take_events();
    assert!(
        ev.iter()
            .any(|(n, e)| *n == 101
                && matches!(e, Event::Aborted { vc, reason } if *vc == ours && reason.contains("left"))),
        "{ev:?}"
    );
    every_relay_forgot_its_vcs(&mut s);
}

#[test]
fn a_ping_is_not_queued_behind_a_bulk_window_on_the_session_or_the_link() {
    let mut s = chain();
    let (bulk, _) = open_accepted(&mut s, b"");
    let (ping, _) = open_accepted(&mut s, b"");
    s.settle();
    // The bulk VC writes its whole window, then the ping VC four bytes.
    assert_eq!(s.endpoint(101).write(bulk, &vec![1u8; 256 << 10]), 256 << 10);
    assert_eq!(s.endpoint(101).write(ping, b"ping"), 4);
    let now = s.now;
    // What the endpoint sends first: one bulk frame, then the ping.
    let first = s.endpoint(101).poll_transmit_some(now, 1).unwrap();
    let second = s.endpoint(101).poll_transmit_some(now, 1).unwrap();
    let vc_of = |f: &[u8]| Msg::parse(&f[4..]).unwrap().vc();
    assert_eq!((vc_of(&first), vc_of(&second)), (Some(bulk), Some(ping)));
    // Relay 1 takes everything at once; toward relay 2 the VCs again take
    // turns: the ping leaves second, not after 256 KiB.
    let (_, session, _) = s.attached[&101];
    let rest = s.endpoint(101).poll_transmit(now).unwrap();
    let mut rd = xsock_overlay::wire::FrameReader::default();
    for bytes in [&first, &second, &rest] {
        rd.push(bytes);
        while let Some(f) = rd.next_frame().unwrap() {
            s.core(1).handle_link_frame(now, session, f).unwrap();
        }
    }
    let link = *s.links.iter().find(|(_, ends)| **ends == (1, 2)).unwrap().0;
    let a = s.core(1).poll_transmit_link(link, 1).unwrap();
    let b = s.core(1).poll_transmit_link(link, 1).unwrap();
    let (va, vb) = (vc_of(&a), vc_of(&b));
    assert!(va.is_some() && vb.is_some() && va != vb, "the second frame on the link is the other VC's");
    assert!(s.core(1).queued(link) > 128 << 10, "the bulk window waits in the relay, in turn");
}
