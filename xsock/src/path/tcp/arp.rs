//! Answers smoltcp's ARP requests from the kernel's neighbour table.
//!
//! The kernel owns ARP on a shared interface (our XDP filter passes ARP to
//! it). When smoltcp asks for an address, we look it up in the kernel's
//! table; if the kernel does not know it yet we ask the kernel to resolve it
//! and look again on later passes. The answer goes back to smoltcp as a
//! synthesized ARP reply, which fills its neighbour cache.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use xsock_nic::{MacAddr, neigh};

/// How often to look again for an address the kernel is resolving.
const RECHECK: Duration = Duration::from_millis(2);
/// Give up on an address after this long (smoltcp will ask again).
const GIVE_UP: Duration = Duration::from_secs(3);

/// Where next-hop MACs come from.
pub(crate) enum NeighborSource {
    /// The kernel's table for this interface.
    Kernel { iface: String, ifindex: u32 },
    /// A fixed table (in-memory test devices, where there is no kernel).
    Static(HashMap<Ipv4Addr, MacAddr>),
}

impl NeighborSource {
    fn lookup(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        match self {
            NeighborSource::Kernel { iface, .. } => neigh::lookup(iface, ip),
            NeighborSource::Static(t) => t.get(&ip).copied(),
        }
    }

    /// Looks `ip` up now.
    pub fn known(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.lookup(ip)
    }

    /// Asks the kernel to resolve `ip` (an ARP request goes out if it does
    /// not know it); [`NeighborSource::known`] says when it has an answer.
    pub fn ask(&self, ip: Ipv4Addr) {
        if let NeighborSource::Kernel { ifindex, .. } = self
            && let Err(e) = neigh::resolve(*ifindex, ip)
        {
            log::warn!("asking the kernel to resolve {ip}: {e}");
        }
    }
}

/// Pending questions and the replies to hand smoltcp.
pub(crate) struct ArpProxy {
    source: NeighborSource,
    mac: MacAddr,
    ip: Ipv4Addr,
    /// Addresses asked for, with when we asked the kernel and when we last looked.
    pending: HashMap<Ipv4Addr, (Instant, Instant)>,
}

impl ArpProxy {
    pub fn new(source: NeighborSource, mac: MacAddr, ip: Ipv4Addr) -> Self {
        Self { source, mac, ip, pending: HashMap::new() }
    }

    pub fn source(&self) -> &NeighborSource {
        &self.source
    }

    /// smoltcp asked for these addresses.
    pub fn asked(&mut self, now: Instant, ips: impl IntoIterator<Item = Ipv4Addr>) {
        for ip in ips {
            self.pending.entry(ip).or_insert_with(|| {
                if let NeighborSource::Kernel { ifindex, .. } = &self.source
                    && self.source.lookup(ip).is_none()
                    && let Err(e) = neigh::resolve(*ifindex, ip)
                {
                    log::warn!("asking the kernel to resolve {ip}: {e}");
                }
                (now, now - RECHECK)
            });
        }
    }

    /// Whether questions are open (the caller should come back soon).
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Replies (whole Ethernet frames) for the addresses now known.
    pub fn poll_replies(&mut self, now: Instant, mut emit: impl FnMut(Vec<u8>)) {
        let (source, mac, ip) = (&self.source, self.mac, self.ip);
        self.pending.retain(|&peer, (asked, looked)| {
            if now.duration_since(*looked) < RECHECK {
                return true;
            }
            *looked = now;
            match source.lookup(peer) {
                Some(peer_mac) => {
                    emit(arp_reply(peer, peer_mac, ip, mac));
                    false
                }
                None => {
                    if now.duration_since(*asked) > GIVE_UP {
                        log::warn!("the kernel could not resolve {peer} (no ARP answer); is the peer up?");
                        false
                    } else {
                        true
                    }
                }
            }
        });
    }
}

/// An ARP reply from `peer` (at `peer_mac`) to us.
pub(crate) fn arp_reply(peer: Ipv4Addr, peer_mac: MacAddr, ip: Ipv4Addr, mac: MacAddr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&peer_mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // Ethernet/IPv4, reply
    f.extend_from_slice(&peer_mac.0);
    f.extend_from_slice(&peer.octets());
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame};

    use super::*;

    #[test]
    fn reply_parses_as_arp_from_the_peer() {
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let me = Ipv4Addr::new(10, 0, 0, 1);
        let f = arp_reply(peer, MacAddr([2, 0, 0, 0, 0, 2]), me, MacAddr([2, 0, 0, 0, 0, 1]));
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let repr = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation, source_protocol_addr, target_protocol_addr, source_hardware_addr, ..
        } = repr
        else {
            panic!("not IPv4 ARP")
        };
        assert_eq!(operation, ArpOperation::Reply);
        assert_eq!(source_protocol_addr, peer);
        assert_eq!(target_protocol_addr, me);
        assert_eq!(source_hardware_addr.0, [2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn static_source_answers_known_and_drops_unknown_after_give_up() {
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let table = HashMap::from([(peer, MacAddr([2, 0, 0, 0, 0, 2]))]);
        let mut p = ArpProxy::new(NeighborSource::Static(table), MacAddr([2; 6]), Ipv4Addr::new(10, 0, 0, 1));
        let t0 = Instant::now();
        p.asked(t0, [peer, Ipv4Addr::new(10, 0, 0, 9)]);
        let mut got = Vec::new();
        p.poll_replies(t0, |f| got.push(f));
        assert_eq!(got.len(), 1);
        assert!(p.busy(), "the unknown address is still pending");
        p.poll_replies(t0 + GIVE_UP + Duration::from_millis(10), |f| got.push(f));
        assert!(!p.busy());
        assert_eq!(got.len(), 1);
    }
}
