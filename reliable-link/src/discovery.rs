//! Peer discovery: how a node learns the MAC address of an IPv4 peer that
//! runs xsock on the same segment.
//!
//! Like ARP, but on our own EtherType, so only xsock nodes answer: a
//! DISCOVER frame is broadcast ("who runs xsock at 10.0.0.7?"), retried a
//! few times with doubling intervals, and the node that owns the address
//! answers DISCOVER-REPLY from its own MAC. A node that hears a DISCOVER
//! also learns that the asker runs xsock. Answers are cached (positively for
//! [`DiscoveryConfig::present_ttl`], negatively for
//! [`DiscoveryConfig::absent_ttl`]): an address nobody answers for is not an
//! xsock peer on this segment, and connections to it take another path.
//!
//! On a trusted link any node could answer for any address (as with ARP);
//! connection ids still keep one connection's frames from being taken for
//! another's.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

/// Discovery tunables.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Wait before the first retry; each retry doubles it.
    pub first_retry: Duration,
    /// DISCOVER frames sent before concluding nobody answers.
    pub attempts: u32,
    /// How long an answer is trusted.
    pub present_ttl: Duration,
    /// How long a non-answer is trusted.
    pub absent_ttl: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            // 1+2+4+8+16+32 ms: a non-xsock peer costs 63 ms once per
            // `absent_ttl`. Four attempts (15 ms) were too few: on a loaded
            // 2-core machine a sleeping peer runtime sometimes answered
            // later, and the connection silently took kernel TCP.
            first_retry: Duration::from_millis(1),
            attempts: 6,
            present_ttl: Duration::from_secs(60),
            absent_ttl: Duration::from_secs(10),
        }
    }
}

/// A discovered xsock peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Largest DATA payload it can receive.
    pub max_payload: u16,
}

/// What is known about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// An xsock peer answers for it.
    Present(Peer),
    /// Nobody running xsock answered.
    Absent,
    /// Still asking.
    Pending,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Present { peer: Peer, expires: Instant },
    Absent { expires: Instant },
    Asking { sent: u32, next: Instant },
}

/// The discovery state of one endpoint.
#[derive(Debug, Default)]
pub struct Discovery {
    config: DiscoveryConfig,
    /// Entries still asking: with none, the polls return at once.
    asking: usize,
    entries: crate::fasthash::FastMap<Ipv4Addr, Entry>,
    finished: Vec<(Ipv4Addr, Lookup)>,
}

impl Discovery {
    /// Discovery with `config`.
    pub fn new(config: DiscoveryConfig) -> Self {
        Self { config, ..Default::default() }
    }

    /// What is known about `ip`, starting to ask if nothing (fresh) is.
    pub fn lookup(&mut self, now: Instant, ip: Ipv4Addr) -> Lookup {
        match self.entries.get(&ip) {
            Some(Entry::Present { peer, expires }) if *expires > now => Lookup::Present(*peer),
            Some(Entry::Absent { expires }) if *expires > now => Lookup::Absent,
            Some(Entry::Asking { .. }) => Lookup::Pending,
            _ => {
                self.entries.insert(ip, Entry::Asking { sent: 0, next: now });
                self.asking += 1;
                Lookup::Pending
            }
        }
    }

    /// Forgets what is known about `ip` (after a connection to it failed).
    pub fn forget(&mut self, ip: Ipv4Addr) {
        if let Some(Entry::Asking { .. }) = self.entries.remove(&ip) {
            self.asking -= 1;
        }
    }

    /// An answer arrived.
    pub fn on_reply(&mut self, now: Instant, ip: Ipv4Addr, peer: Peer) {
        self.learn(now, ip, peer);
    }

    /// `ip` is known to run xsock at `peer` (it answered, or it asked).
    pub fn learn(&mut self, now: Instant, ip: Ipv4Addr, peer: Peer) {
        let was_asking = matches!(self.entries.get(&ip), Some(Entry::Asking { .. }));
        self.entries.insert(ip, Entry::Present { peer, expires: now + self.config.present_ttl });
        if was_asking {
            self.asking -= 1;
            self.finished.push((ip, Lookup::Present(peer)));
        }
    }

    /// The next address to send a DISCOVER for now, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Ipv4Addr> {
        if self.asking == 0 {
            return None;
        }
        let first_retry = self.config.first_retry;
        let attempts = self.config.attempts;
        for (ip, e) in self.entries.iter_mut() {
            if let Entry::Asking { sent, next } = e
                && *next <= now
                && *sent < attempts
            {
                *next = now + first_retry * (1 << (*sent).min(16));
                *sent += 1;
                return Some(*ip);
            }
        }
        None
    }

    /// Concludes lookups whose attempts are used up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (attempts, ttl) = (self.config.attempts, self.config.absent_ttl);
        let asking = &mut self.asking;
        for (ip, e) in self.entries.iter_mut() {
            if let Entry::Asking { sent, next } = *e
                && sent >= attempts
                && next <= now
            {
                *e = Entry::Absent { expires: now + ttl };
                *asking -= 1;
                self.finished.push((*ip, Lookup::Absent));
            }
        }
        self.entries.retain(|_, e| match e {
            Entry::Present { expires, .. } | Entry::Absent { expires } => *expires > now,
            Entry::Asking { .. } => true,
        });
    }

    /// When to call [`Discovery::poll_transmit`] / [`Discovery::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.asking == 0 {
            return None;
        }
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Asking { next, .. } => Some(*next),
                _ => None,
            })
            .min()
    }

    /// A lookup that has concluded since the last call.
    pub fn poll_finished(&mut self) -> Option<(Ipv4Addr, Lookup)> {
        self.finished.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_with_doubling_retries_then_concludes_absent() {
        let t0 = Instant::now();
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        let mut d = Discovery::new(DiscoveryConfig::default());
        assert_eq!(d.lookup(t0, ip), Lookup::Pending);
        let mut sends = vec![];
        let mut now = t0;
        while now < t0 + Duration::from_millis(100) {
            if d.poll_transmit(now).is_some() {
                sends.push(now - t0);
            }
            d.handle_timeout(now);
            now += Duration::from_micros(100);
        }
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 1, 3, 7, 15, 31], "retries at 1, 2, 4, 8, 16 ms intervals");
        assert_eq!(d.poll_finished(), Some((ip, Lookup::Absent)));
        assert_eq!(d.lookup(now, ip), Lookup::Absent, "cached negatively");
        assert_eq!(d.lookup(now + Duration::from_secs(11), ip), Lookup::Pending, "until the TTL expires");
    }

    #[test]
    fn an_answer_is_cached() {
        let t0 = Instant::now();
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        let peer = Peer { mac: [2, 0, 0, 0, 0, 9], max_payload: 1460 };
        let mut d = Discovery::new(DiscoveryConfig::default());
        d.lookup(t0, ip);
        d.poll_transmit(t0);
        d.on_reply(t0, ip, peer);
        assert_eq!(d.poll_finished(), Some((ip, Lookup::Present(peer))));
        assert_eq!(d.lookup(t0, ip), Lookup::Present(peer));
        assert_eq!(d.poll_transmit(t0 + Duration::from_secs(1)), None, "nothing more to ask");
    }
}
