//! The link-state database: every relay's latest advertisement (its
//! neighbours and link costs), newest sequence number wins, entries age
//! out when their origin stops refreshing them.

use std::{collections::HashMap, time::Duration};

use crate::NodeId;

/// One relay's advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lsa {
    /// Whose links these are.
    pub origin: NodeId,
    /// Larger is newer. An origin starts at its start time in µs, so a
    /// restarted relay's advertisements beat its old ones.
    pub seq: u64,
    /// Its live links and their costs.
    pub neighbors: Vec<(NodeId, u32)>,
}

/// What [`LinkStateDb::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Newer than what we had: flood it on.
    Updated,
    /// Same or older: drop it.
    Stale,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LinkStateDb {
    max_age: Duration,
    entries: HashMap<NodeId, (Lsa, Duration)>,
}

impl LinkStateDb {
    /// Entries not refreshed for `max_age` expire.
    pub fn new(max_age: Duration) -> Self {
        Self { max_age, entries: HashMap::new() }
    }

    /// Takes `lsa` if it is newer than what we hold for its origin.
    pub fn install(&mut self, lsa: Lsa, now: Duration) -> Install {
        match self.entries.get(&lsa.origin) {
            Some((old, _)) if old.seq >= lsa.seq => Install::Stale,
            _ => {
                self.entries.insert(lsa.origin, (lsa, now));
                Install::Updated
            }
        }
    }

    /// Drops entries older than the maximum age; returns their origins.
    pub fn expire(&mut self, now: Duration) -> Vec<NodeId> {
        let max_age = self.max_age;
        let old: Vec<NodeId> =
            self.entries.iter().filter(|(_, (_, t))| now.saturating_sub(*t) > max_age).map(|(id, _)| *id).collect();
        for id in &old {
            self.entries.remove(id);
        }
        old
    }

    /// The earliest time an entry may expire.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.entries.values().map(|(_, t)| *t + self.max_age).min()
    }

    /// Removes `origin`'s entry (it is known to be gone).
    pub fn remove(&mut self, origin: NodeId) -> bool {
        self.entries.remove(&origin).is_some()
    }

    /// Every advertisement held.
    pub fn iter(&self) -> impl Iterator<Item = &Lsa> {
        self.entries.values().map(|(l, _)| l)
    }

    /// `origin`'s advertisement.
    pub fn get(&self, origin: NodeId) -> Option<&Lsa> {
        self.entries.get(&origin).map(|(l, _)| l)
    }

    /// Number of origins known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Links both of whose ends advertise each other (a one-sided claim,
    /// such as a dead relay's last advertisement, is not a link), with the
    /// larger of the two costs.
    pub fn two_way_links(&self) -> HashMap<NodeId, Vec<(NodeId, u32)>> {
        let mut out: HashMap<NodeId, Vec<(NodeId, u32)>> = HashMap::new();
        for lsa in self.iter() {
            for &(n, cost) in &lsa.neighbors {
                let back = self.get(n).and_then(|o| o.neighbors.iter().find(|(m, _)| *m == lsa.origin));
                if let Some(&(_, back_cost)) = back {
                    out.entry(lsa.origin).or_default().push((n, cost.max(back_cost)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsa(o: u64, seq: u64, n: &[u64]) -> Lsa {
        Lsa { origin: NodeId(o), seq, neighbors: n.iter().map(|&x| (NodeId(x), 1)).collect() }
    }

    #[test]
    fn newer_wins_older_and_equal_are_stale() {
        let mut db = LinkStateDb::new(Duration::from_secs(3));
        let t = Duration::ZERO;
        assert_eq!(db.install(lsa(1, 5, &[2]), t), Install::Updated);
        assert_eq!(db.install(lsa(1, 5, &[]), t), Install::Stale);
        assert_eq!(db.install(lsa(1, 4, &[]), t), Install::Stale);
        assert_eq!(db.install(lsa(1, 6, &[]), t), Install::Updated);
        assert!(db.get(NodeId(1)).unwrap().neighbors.is_empty());
    }

    #[test]
    fn entries_age_out_unless_refreshed() {
        let mut db = LinkStateDb::new(Duration::from_secs(3));
        db.install(lsa(1, 1, &[]), Duration::ZERO);
        db.install(lsa(2, 1, &[]), Duration::from_secs(2));
        assert!(db.expire(Duration::from_secs(3)).is_empty());
        assert_eq!(db.expire(Duration::from_millis(3001)), vec![NodeId(1)]);
        assert_eq!(db.len(), 1);
        assert_eq!(db.next_expiry(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn one_sided_links_do_not_count() {
        let mut db = LinkStateDb::new(Duration::from_secs(3));
        db.install(lsa(1, 1, &[2, 3]), Duration::ZERO);
        db.install(lsa(2, 1, &[1]), Duration::ZERO);
        db.install(lsa(3, 1, &[]), Duration::ZERO); // 3 dropped its link to 1
        let g = db.two_way_links();
        assert_eq!(g[&NodeId(1)], vec![(NodeId(2), 1)]);
        assert!(!g.contains_key(&NodeId(3)));
    }
}
