//! Many relay cores joined by in-memory links on virtual time: flooding,
//! routing, virtual connections, failures. The same cores run in
//! `xsock relay`.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use xsock_overlay::{NodeId, relay::Action, sim::Sim};

fn next_hop_path(sim: &Sim, from: u64, to: u64) -> Vec<u64> {
    let mut path = vec![from];
    let mut at = from;
    while at != to {
        let r = sim.relays[&at]
            .routes()
            .into_iter()
            .find(|(n, _)| n.0 == to)
            .unwrap_or_else(|| panic!("{at} has no route to {to}"))
            .1;
        at = r.next_hop.0;
        path.push(at);
        assert!(path.len() <= sim.relays.len(), "routing loop {path:?}");
    }
    path
}

/// 1 reaches 4 via 2 (the cheaper id breaks the tie) or via 3, settled.
fn diamond() -> Sim {
    let mut s = Sim::new(&[1, 2, 3, 4], 1 << 20);
    for (a, b) in [(1, 2), (2, 4), (1, 3), (3, 4)] {
        s.connect(a, b);
    }
    s.settle();
    assert_eq!(next_hop_path(&s, 1, 4), vec![1, 2, 4]);
    s
}

#[test]
fn a_hub_and_a_mesh_converge_to_shortest_paths() {
    // 1-2-3 meshed; 4, 5, 6 reach only the hub 1.
    let mut s = Sim::new(&[1, 2, 3, 4, 5, 6], 1 << 20);
    for (a, b) in [(1, 2), (2, 3), (1, 3), (4, 1), (5, 1), (6, 1)] {
        s.connect(a, b);
    }
    s.settle();
    for r in s.relays.values() {
        assert_eq!(r.known_relays(), 6);
    }
    assert_eq!(next_hop_path(&s, 4, 3), vec![4, 1, 3]);
    assert_eq!(next_hop_path(&s, 5, 6), vec![5, 1, 6]);
    assert_eq!(next_hop_path(&s, 2, 3), vec![2, 3]);
}

#[test]
fn a_vc_carries_data_both_ways_within_the_credit_and_closes() {
    let window = 64 * 1024;
    let mut s = Sim::new(&[1, 2, 3], window);
    s.connect(1, 2);
    s.connect(2, 3);
    s.settle();
    let (src, far, dst) = s.open(1, 3, 80).unwrap();
    assert_eq!(far, 3);
    assert_eq!(s.core(1).local_credit(src), window as usize);
    // Fill the window: nothing more may be read from the endpoint.
    let msg: Vec<u8> = (0..window).map(|i| i as u8).collect();
    s.core(1).handle_local_data(src, &msg);
    assert_eq!(s.core(1).local_credit(src), 0);
    let mut got = Vec::new();
    for (r, a) in s.settle() {
        if let Action::Write { local, bytes } = a {
            assert_eq!((r, local), (3, dst));
            got.extend(bytes);
        }
    }
    assert_eq!(got, msg, "every byte, in order, through the middle relay");
    // Delivering a quarter returns a quarter of the credit.
    s.core(3).handle_local_delivered(dst, window as usize / 4);
    s.settle();
    assert_eq!(s.core(1).local_credit(src), window as usize / 4);
    // The other way: the far end holds the opener's window.
    assert_eq!(s.core(3).local_credit(dst), window as usize);
    s.core(3).handle_local_data(dst, b"pong");
    assert!(s.settle().contains(&(1, Action::Write { local: src, bytes: b"pong".to_vec() })));
    // Half-close each way, then both are finished.
    s.core(1).handle_local_eof(src);
    assert!(s.settle().contains(&(3, Action::Shutdown { local: dst })));
    s.core(3).handle_local_eof(dst);
    let acts = s.settle();
    assert!(acts.contains(&(1, Action::Shutdown { local: src })));
    assert!(acts.contains(&(1, Action::Finished { local: src })));
    assert!(acts.contains(&(3, Action::Finished { local: dst })));
    for r in [1, 2, 3] {
        assert_eq!(s.core(r).vc_count(), 0, "relay {r} forgot the vc");
    }
}

#[test]
fn opens_are_refused_with_reasons() {
    let mut s = Sim::new(&[1, 2, 3], 1 << 20);
    s.connect(1, 2);
    s.settle();
    let e = s.open(1, 2, 22).unwrap_err();
    assert!(e.contains("does not listen on port 22"), "{e}");
    let e = s.open(1, 3, 80).unwrap_err();
    assert!(e.contains("unreachable"), "{e}");
    let now = s.now;
    let l = s.core(1).handle_local_open(now, NodeId(101), NodeId(999), 80);
    let acts = s.settle();
    assert!(
        matches!(&acts[..], [(1, Action::Failed { local, reason })] if *local == l && reason.contains("not registered"))
    );
    assert_eq!(s.core(2).vc_count(), 0);
}

#[test]
fn a_draining_relay_refuses_new_vcs_and_keeps_the_open_ones_to_their_end() {
    let mut s = Sim::new(&[1, 2, 3], 1 << 20);
    s.connect(1, 2);
    s.connect(2, 3);
    s.settle();
    let (src, _, dst) = s.open(1, 3, 80).unwrap();
    let now = s.now;
    s.core(2).set_draining(now, "relay-2 is shutting down (draining): connect again");
    s.settle();
    // The only way from 1 to 3 is gone: new VCs fail, the open one runs on.
    assert!(s.open(1, 3, 80).is_err());
    let e = s.open(2, 1, 80).unwrap_err();
    assert!(e.contains("shutting down"), "its own LAN's opens: {e}");
    s.core(1).handle_local_data(src, b"still here");
    assert!(s.settle().contains(&(3, Action::Write { local: dst, bytes: b"still here".to_vec() })));
    s.core(1).handle_local_eof(src);
    s.settle();
    s.core(3).handle_local_eof(dst);
    s.settle();
    assert_eq!(s.core(2).vc_count(), 0, "nothing left: the relay may exit");
}

#[test]
fn new_vcs_go_around_a_draining_relay_while_its_own_keep_running() {
    // 1 reaches 3 via 2 (smaller id) or via 4.
    let mut s = Sim::new(&[1, 2, 3, 4], 1 << 20);
    for (a, b) in [(1, 2), (2, 3), (1, 4), (4, 3)] {
        s.connect(a, b);
    }
    s.settle();
    assert_eq!(next_hop_path(&s, 1, 3), vec![1, 2, 3]);
    let (src, _, dst) = s.open(1, 3, 80).unwrap();
    let now = s.now;
    s.core(2).set_draining(now, "relay-2 is shutting down (draining): connect again");
    s.settle();
    assert_eq!(next_hop_path(&s, 1, 3), vec![1, 4, 3], "routes leave the draining relay");
    s.open(1, 3, 80).expect("a new VC goes around it, not refused");
    assert!(s.core(2).counters().vcs_refused == 0, "nothing was sent its way");
    s.core(1).handle_local_data(src, b"via 2");
    assert!(s.settle().contains(&(3, Action::Write { local: dst, bytes: b"via 2".to_vec() })));
    assert_eq!(s.core(2).vc_count(), 1, "the old VC still runs through the draining relay");
}

#[test]
fn killing_the_middle_relay_aborts_its_vcs_and_reroutes_new_ones() {
    let mut s = diamond();
    let (src, _, dst) = s.open(1, 4, 80).unwrap();
    s.kill(2);
    let acts = s.settle();
    let failed: Vec<_> = acts.iter().filter(|(_, a)| matches!(a, Action::Failed { .. })).collect();
    assert_eq!(failed.len(), 2, "{acts:?}");
    for (r, a) in failed {
        let Action::Failed { local, reason } = a else { unreachable!() };
        assert_eq!(*local, if *r == 1 { src } else { dst });
        assert!(reason.contains("went down"), "{reason}");
    }
    assert_eq!(next_hop_path(&s, 1, 4), vec![1, 3, 4]);
    s.open(1, 4, 80).unwrap();
}

#[test]
fn a_relay_that_loses_a_link_routes_around_it_at_once_even_while_its_advertisement_waits() {
    // 1 advertised its links a moment ago, so the advertisement of the
    // lost one is held back (min_originate).
    let mut s = diamond();
    s.kill(2);
    // No frame moved, no timer fired: 1's own table already goes around.
    let hop = s.relays[&1].routes().into_iter().find(|(n, _)| n.0 == 4).map(|(_, r)| r.next_hop.0);
    assert_eq!(hop, Some(3));
    s.settle();
    assert_eq!(next_hop_path(&s, 1, 4), vec![1, 3, 4]);
    assert_eq!(next_hop_path(&s, 4, 1), vec![4, 3, 1]);
}

#[test]
fn a_relay_that_vanishes_silently_ages_out() {
    let mut s = Sim::new(&[1, 2, 3], 1 << 20);
    s.connect(1, 2);
    s.connect(2, 3);
    s.settle();
    // 3 stops answering without closing its link: 2 notices by silence
    // (after link_timeout, 10 s).
    s.relays.remove(&3);
    s.advance(Duration::from_secs(9));
    assert!(s.core(2).links().iter().any(|(n, _)| n.0 == 3), "closed before its timeout");
    s.advance(Duration::from_secs(2));
    assert!(s.core(2).links().iter().all(|(n, _)| n.0 != 3));
    assert!(s.core(1).routes().iter().all(|(n, _)| n.0 != 3));
    // The live link stayed up: refreshes kept it heard.
    assert_eq!(s.core(1).links().len(), 1);
}

#[test]
fn duplicate_links_collapse_to_one_both_sides_agree_on() {
    let mut s = Sim::new(&[1, 2], 1 << 20);
    let a = s.connect(1, 2);
    // 2 also dials 1 (both knew of each other at once).
    let l = s.next_link;
    s.next_link += 1;
    s.links.insert(l, (2, 1));
    let now = s.now;
    s.core(2).handle_link_up(now, l, NodeId(1), true);
    s.core(1).handle_link_up(now, l, NodeId(2), false);
    let acts = s.settle();
    // The link opened by the smaller id (1) is kept, on both sides.
    let closes: Vec<_> = acts.iter().filter(|(_, a)| matches!(a, Action::CloseLink { .. })).collect();
    assert_eq!(closes.len(), 2);
    assert!(closes.iter().all(|(_, a)| *a == Action::CloseLink { link: l }));
    assert_eq!(s.core(1).links(), vec![(NodeId(2), a)]);
    assert_eq!(s.core(2).links(), vec![(NodeId(1), a)]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Random graphs, random link cuts: once quiet, following next hops
    /// from any relay reaches every relay its component holds, without a
    /// loop, along a shortest path.
    #[test]
    fn routes_follow_shortest_paths_after_random_failures(
        edges in proptest::collection::vec((1u64..9, 1u64..9), 4..20),
        cuts in proptest::collection::vec(0usize..20, 0..5),
    ) {
        let ids: Vec<u64> = (1..9).collect();
        let mut s = Sim::new(&ids, 1 << 20);
        let mut made = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (a, b) in edges {
            if a != b && seen.insert((a.min(b), a.max(b))) {
                made.push((s.connect(a, b), a, b));
            }
        }
        s.settle();
        for c in cuts {
            if let Some((l, _, _)) = made.get(c).copied()
                && s.links.contains_key(&l)
            {
                s.cut(l);
            }
        }
        s.settle();
        // BFS distances on the true graph.
        let mut adj: HashMap<u64, Vec<u64>> = HashMap::new();
        for (a, b) in s.links.values() { adj.entry(*a).or_default().push(*b); adj.entry(*b).or_default().push(*a); }
        for &from in &ids {
            let mut dist = HashMap::from([(from, 0u32)]);
            let mut q = VecDeque::from([from]);
            while let Some(x) = q.pop_front() {
                for &y in adj.get(&x).into_iter().flatten() {
                    if !dist.contains_key(&y) { dist.insert(y, dist[&x] + 1); q.push_back(y); }
                }
            }
            let routes: HashMap<u64, u32> = s.relays[&from].routes().into_iter().map(|(n, r)| (n.0, r.hops)).collect();
            for &to in &ids {
                if to == from { continue; }
                proptest::prop_assert_eq!(routes.get(&to).copied(), dist.get(&to).copied(), "{} -> {}", from, to);
                if dist.contains_key(&to) {
                    proptest::prop_assert_eq!(next_hop_path(&s, from, to).len() as u32 - 1, dist[&to]);
                }
            }
        }
    }
}

#[test]
fn idle_links_live_on_keepalives_and_a_burst_computes_routes_once() {
    let ids: Vec<u64> = (1..=12).collect();
    let mut s = Sim::new(&ids, 1 << 20);
    for i in 1..=12u64 {
        s.connect(i, i % 12 + 1);
    }
    s.settle();
    for r in s.relays.values() {
        // 12 advertisements reached every relay; one computation for them.
        assert!(r.counters().route_runs <= 2, "{} route runs", r.counters().route_runs);
        assert_eq!(r.routes().len(), 11);
    }
    let lsas: u64 = s.relays.values().map(|r| r.counters().lsas_in).sum();
    // Ten idle seconds: keepalives hold every link, no advertisement floods.
    s.advance(Duration::from_secs(10));
    for r in s.relays.values() {
        assert_eq!(r.links().len(), 2, "an idle link was taken for dead");
    }
    let after: u64 = s.relays.values().map(|r| r.counters().lsas_in).sum();
    assert_eq!(after, lsas, "idle seconds flooded advertisements");
}

#[test]
fn a_revocation_list_floods_to_every_relay_once_and_reaches_a_relay_that_joins_later() {
    use xsock_overlay::cert::{CaKey, Trust};
    let ca = CaKey::generate().unwrap();
    let mut s = Sim::new(&[1, 2, 3, 4, 5], 1 << 20);
    for r in 1..=5 {
        s.core(r).set_trust(Trust::new(ca.public()));
    }
    for (a, b) in [(1, 2), (2, 3), (3, 4), (1, 3)] {
        s.connect(a, b);
    }
    s.settle();
    let list = ca.revoke(None, &[[9; 32]], 0).unwrap();
    assert_eq!(s.core(1).handle_revocations(&list.to_bytes()), Ok(true));
    let revoked = |acts: &[(u64, Action)]| {
        let mut who: Vec<u64> =
            acts.iter().filter(|(_, a)| matches!(a, Action::Revoked { .. })).map(|(r, _)| *r).collect();
        who.sort_unstable();
        who
    };
    // Each relay takes it once (relay 3 hears it from 1 and from 2).
    assert_eq!(revoked(&s.settle()), vec![1, 2, 3, 4]);
    for r in 1..=4 {
        assert!(s.core(r).trust().unwrap().is_revoked(&[9; 32]), "relay {r}");
    }
    // A relay linked later gets it in the link's first sync.
    s.connect(4, 5);
    assert_eq!(revoked(&s.settle()), vec![5]);
    // A list of another CA, or an older one, is not taken nor flooded on.
    let other = CaKey::generate().unwrap().revoke(None, &[[8; 32]], 0).unwrap();
    assert!(s.core(1).handle_revocations(&other.to_bytes()).is_err());
    assert!(s.core(1).handle_revocations(&list.to_bytes()) == Ok(false));
    assert_eq!(revoked(&s.settle()), Vec::<u64>::new());
    assert!(!s.core(5).trust().unwrap().is_revoked(&[8; 32]));
}

#[test]
fn a_flapping_link_floods_fewer_and_fewer_advertisements_and_a_quiet_one_goes_out_at_once() {
    let mut s = Sim::new(&[1, 2, 3], 1 << 20);
    s.connect(1, 2);
    s.connect(2, 3);
    s.settle();
    s.advance(Duration::from_secs(5));
    // Time, not the harness, releases held advertisements (as in a relay).
    s.flush_bursts = false;
    let before = s.core(1).counters().lsas_originated;
    // The 1-3 link made and lost every 20 ms for 10 s (500 changes on
    // each side): at most one advertisement per 50 ms would be 200.
    for _ in 0..250 {
        let l = s.connect(1, 3);
        s.advance(Duration::from_millis(20));
        s.cut(l);
        s.advance(Duration::from_millis(20));
    }
    let flapping = s.core(1).counters().lsas_originated - before;
    assert!(flapping <= 12, "{flapping} advertisements for 500 changes in 10 s");
    // Quiet again: the next change goes out at once, and every relay's
    // routes follow it.
    s.advance(Duration::from_secs(5));
    let quiet = s.core(1).counters().lsas_originated;
    s.connect(1, 3);
    assert_eq!(s.core(1).counters().lsas_originated, quiet + 1, "a change after a quiet spell waits for nothing");
    // Within the route computation's burst delay (2 ms), everyone follows.
    s.advance(Duration::from_millis(5));
    assert_eq!(next_hop_path(&s, 3, 1), vec![3, 1]);
    assert_eq!(next_hop_path(&s, 2, 3), vec![2, 3]);
}
