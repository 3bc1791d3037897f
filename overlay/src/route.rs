//! Routing over the link-state database, behind [`Routing`] so another
//! algorithm (widest path, load-aware costs) can be plugged in.

use std::collections::{BTreeSet, HashMap};

use crate::{NodeId, lsdb::LinkStateDb};

/// A route to a relay: the neighbour to hand traffic to, and the total cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// First hop (a direct neighbour of the computing relay).
    pub next_hop: NodeId,
    /// Sum of link costs.
    pub cost: u64,
    /// Number of relay-to-relay links on the path.
    pub hops: u32,
}

/// A routing algorithm: routes from `me` to every relay it can reach.
pub trait Routing: std::fmt::Debug + Send {
    /// Computes the table from the database as it stands.
    fn compute(&self, me: NodeId, db: &LinkStateDb) -> HashMap<NodeId, Route>;
}

/// Dijkstra over two-way links. Ties go to the smaller next-hop id, so two
/// runs over the same database agree.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShortestPath;

impl Routing for ShortestPath {
    fn compute(&self, me: NodeId, db: &LinkStateDb) -> HashMap<NodeId, Route> {
        let graph = db.two_way_links();
        let mut best: HashMap<NodeId, Route> = HashMap::new();
        // (cost, hops, next hop, node): ordered, so the first pop is final.
        let mut frontier: BTreeSet<(u64, u32, NodeId, NodeId)> = BTreeSet::new();
        for &(n, c) in graph.get(&me).into_iter().flatten() {
            frontier.insert((u64::from(c), 1, n, n));
        }
        while let Some((cost, hops, first, node)) = frontier.pop_first() {
            if node == me || best.contains_key(&node) {
                continue;
            }
            best.insert(node, Route { next_hop: first, cost, hops });
            for &(n, c) in graph.get(&node).into_iter().flatten() {
                if n != me && !best.contains_key(&n) {
                    frontier.insert((cost + u64::from(c), hops + 1, first, n));
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsdb::Lsa;
    use std::time::Duration;

    fn db(links: &[(u64, u64, u32)]) -> LinkStateDb {
        let mut adj: HashMap<u64, Vec<(NodeId, u32)>> = HashMap::new();
        for &(a, b, c) in links {
            adj.entry(a).or_default().push((NodeId(b), c));
            adj.entry(b).or_default().push((NodeId(a), c));
        }
        let mut db = LinkStateDb::new(Duration::from_secs(10));
        for (o, n) in adj {
            db.install(Lsa { origin: NodeId(o), seq: 1, neighbors: n }, Duration::ZERO);
        }
        db
    }

    #[test]
    fn takes_the_cheapest_path_not_the_fewest_hops() {
        // 1-2 costs 10; 1-3-2 costs 2.
        let r = ShortestPath.compute(NodeId(1), &db(&[(1, 2, 10), (1, 3, 1), (3, 2, 1)]));
        assert_eq!(r[&NodeId(2)], Route { next_hop: NodeId(3), cost: 2, hops: 2 });
        assert_eq!(r[&NodeId(3)].next_hop, NodeId(3));
    }

    #[test]
    fn a_hub_carries_the_spokes_and_unreachable_nodes_have_no_route() {
        let mut d = db(&[(1, 9, 1), (2, 9, 1), (3, 9, 1)]);
        d.install(Lsa { origin: NodeId(4), seq: 1, neighbors: vec![] }, Duration::ZERO);
        let r = ShortestPath.compute(NodeId(1), &d);
        assert_eq!(r[&NodeId(3)], Route { next_hop: NodeId(9), cost: 2, hops: 2 });
        assert!(!r.contains_key(&NodeId(4)));
        assert!(!r.contains_key(&NodeId(1)));
    }

    #[test]
    fn equal_costs_pick_the_smaller_next_hop() {
        let r = ShortestPath.compute(NodeId(1), &db(&[(1, 5, 1), (1, 4, 1), (5, 9, 1), (4, 9, 1)]));
        assert_eq!(r[&NodeId(9)].next_hop, NodeId(4));
    }
}
