//! Node identity: a `NodeId` is assigned by the bootstrap server at
//! registration and is independent of IP addresses (two sites may both use
//! 10.0.0.0/24). A `SiteId` names a LAN: nodes of one site reach each other
//! directly; between sites traffic goes through relays.

use std::{fmt, net::Ipv4Addr};

/// A node of the overlay (relay or endpoint). Never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A LAN. Derived by the bootstrap server from what a node reports (its LAN
/// address and prefix) and what the server sees (the source address of the
/// registration): behind NAT the source is the NAT's public address, so two
/// sites with the same private subnet get different ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId(pub u64);

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "site-{:08x}", self.0 & 0xffff_ffff)
    }
}

impl SiteId {
    /// The site of a node with LAN address `lan_ip`/`prefix`, seen by the
    /// bootstrap server as coming from `seen_from`. Without NAT the source
    /// is the node's own address and the subnet alone names the site; with
    /// NAT the public address is part of the name.
    pub fn derive(lan_ip: Ipv4Addr, prefix: u8, seen_from: Ipv4Addr) -> SiteId {
        let prefix = prefix.min(32);
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        let net = u32::from(lan_ip) & mask;
        let public = if seen_from == lan_ip { 0 } else { u32::from(seen_from) };
        // FNV-1a over (public, net, prefix): stable across runs and builds.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in public.to_be_bytes().into_iter().chain(net.to_be_bytes()).chain([prefix]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        SiteId(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_subnet_behind_two_nats_are_two_sites() {
        let lan = Ipv4Addr::new(10, 0, 0, 5);
        let a = SiteId::derive(lan, 24, Ipv4Addr::new(192, 0, 2, 1));
        let b = SiteId::derive(lan, 24, Ipv4Addr::new(192, 0, 2, 2));
        assert_ne!(a, b);
        // Hosts of one NATed LAN agree.
        assert_eq!(a, SiteId::derive(Ipv4Addr::new(10, 0, 0, 9), 24, Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn unnatted_hosts_of_one_subnet_agree() {
        let a = SiteId::derive(Ipv4Addr::new(10, 1, 0, 2), 24, Ipv4Addr::new(10, 1, 0, 2));
        let b = SiteId::derive(Ipv4Addr::new(10, 1, 0, 3), 24, Ipv4Addr::new(10, 1, 0, 3));
        assert_eq!(a, b);
        assert_ne!(a, SiteId::derive(Ipv4Addr::new(10, 2, 0, 3), 24, Ipv4Addr::new(10, 2, 0, 3)));
    }
}
