//! Several LANs joined over a routed "WAN", with the firewalls and NAT
//! real sites have: the topology the relay overlay is tested and measured
//! on.
//!
//! ```text
//!   boot (198.18.0.2) --+-- WAN bridge 198.18.0.0/24 --+-- router of site i (198.18.0.<10+i>)
//!                                                       |      lan0 10.<i>.0.1/24 (NAT sites: 10.99.0.1)
//!                                                       |        LAN bridge: relays 10.<i>.0.<2+r>, hosts 10.<i>.0.<10+k>
//! ```
//!
//! 198.18.0.0/15 is the range set aside for benchmarking (RFC 2544): no
//! address here belongs to anyone. Each site's router applies its
//! [`Policy`] with nftables in its forward chain.

use std::{io, net::Ipv4Addr};

use crate::{Host, LinkOpts, Segment, Testbed};

/// What a site's router lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Everything, both ways.
    Open,
    /// Outbound connections and their replies only (inbound SYNs dropped).
    BlockInbound,
    /// Only to and from the hub site (and the bootstrap server).
    HubOnly,
    /// Masquerades outbound connections; nothing comes in. NAT sites share
    /// the private subnet 10.99.0.0/24.
    Nat,
}

/// A site to build.
#[derive(Debug, Clone, Copy)]
pub struct SiteSpec {
    /// Short name (namespace role, relay and host names derive from it).
    pub name: &'static str,
    /// Its router's policy.
    pub policy: Policy,
    /// Relays on its LAN.
    pub relays: usize,
    /// Endpoint hosts on its LAN.
    pub hosts: usize,
}

/// A built site.
#[derive(Debug, Clone)]
pub struct Site {
    /// As specified.
    pub spec: SiteSpec,
    /// Index (addresses derive from it).
    pub index: usize,
    /// The router.
    pub router: Host,
    /// The LAN.
    pub lan: Segment,
    /// Relay hosts.
    pub relays: Vec<Host>,
    /// Endpoint hosts.
    pub hosts: Vec<Host>,
}

impl Site {
    /// The LAN's first three octets ("10.3.0"; "10.99.0" behind NAT).
    pub fn net(&self) -> String {
        if self.spec.policy == Policy::Nat { "10.99.0".into() } else { format!("10.{}.0", self.index) }
    }
    /// Address of relay `r`.
    pub fn relay_ip(&self, r: usize) -> Ipv4Addr {
        format!("{}.{}", self.net(), 2 + r).parse().expect("valid")
    }
    /// Address of host `k`.
    pub fn host_ip(&self, k: usize) -> Ipv4Addr {
        format!("{}.{}", self.net(), 10 + k).parse().expect("valid")
    }
    /// The router's WAN address.
    pub fn wan_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 10 + self.index as u8)
    }
}

/// The bootstrap server's host address on the WAN.
pub const BOOT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The whole topology.
#[derive(Debug)]
pub struct Sites {
    /// The host on the WAN for `xsock boot`.
    pub boot: Host,
    /// The sites, in spec order.
    pub sites: Vec<Site>,
}

impl Sites {
    /// Builds `specs` in `bed`. The first [`Policy::Open`] site is the hub
    /// that [`Policy::HubOnly`] sites reach.
    pub fn build(bed: &Testbed, specs: &[SiteSpec]) -> io::Result<Sites> {
        let wan = bed.segment("wan")?;
        let boot = bed.host("boot")?;
        bed.attach(&boot, "eth0", &wan, LinkOpts::default())?;
        boot.addr("eth0", &format!("{BOOT_IP}/24"))?;
        let mut sites = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let index = i + 1;
            let router = bed.router(&format!("{}r", spec.name))?;
            let lan = bed.segment(&format!("{}s", spec.name))?;
            let mut site = Site { spec: *spec, index, router, lan, relays: Vec::new(), hosts: Vec::new() };
            bed.attach(&site.router, "wan0", &wan, LinkOpts::default())?;
            bed.attach(&site.router, "lan0", &site.lan, LinkOpts::default())?;
            site.router.addr("wan0", &format!("{}/24", site.wan_ip()))?;
            site.router.addr("lan0", &format!("{}.1/24", site.net()))?;
            for (role, n, ip) in [("x", spec.relays, 2usize), ("h", spec.hosts, 10)] {
                for k in 0..n {
                    let h = bed.host(&format!("{}{role}{k}", spec.name))?;
                    bed.attach(&h, "eth0", &site.lan, LinkOpts::default())?;
                    h.addr("eth0", &format!("{}.{}/24", site.net(), ip + k))?;
                    h.ip(&["route", "add", "default", "via", &format!("{}.1", site.net())])?;
                    if role == "x" { site.relays.push(h) } else { site.hosts.push(h) }
                }
            }
            sites.push(site);
        }
        let hub = sites.iter().find(|s| s.spec.policy == Policy::Open).map(|s| format!("{}.0/24", s.net()));
        for s in &sites {
            // Routes to every routable LAN (NAT LANs are not routable).
            for o in sites.iter().filter(|o| o.index != s.index && o.spec.policy != Policy::Nat) {
                s.router.route(&format!("{}.0/24", o.net()), &o.wan_ip().to_string())?;
            }
            let rules = ruleset(s, hub.as_deref());
            if !rules.is_empty() {
                s.router.nft(&rules)?;
            }
        }
        for o in sites.iter().filter(|o| o.spec.policy != Policy::Nat) {
            boot.route(&format!("{}.0/24", o.net()), &o.wan_ip().to_string())?;
        }
        Ok(Sites { boot, sites })
    }
}

fn ruleset(s: &Site, hub: Option<&str>) -> String {
    let lan = format!("{}.0/24", s.net());
    match s.spec.policy {
        Policy::Open => String::new(),
        Policy::BlockInbound => {
            "table inet xsock_fw { chain filter_forward { type filter hook forward priority 0; policy accept;
                ct state established,related accept
                iifname \"wan0\" ct state new drop
            }
        }"
            .into()
        }
        Policy::HubOnly => {
            let hub = hub.unwrap_or("127.0.0.0/8");
            format!(
                "table inet xsock_fw {{ chain filter_forward {{ type filter hook forward priority 0; policy drop;
                ip saddr {lan} ip daddr {{ {hub}, {BOOT_IP} }} accept
                ip saddr {{ {hub}, {BOOT_IP} }} ip daddr {lan} accept
            }}
        }}"
            )
        }
        Policy::Nat => "table ip xsock_nat { chain masquerade_out { type nat hook postrouting priority 100;
                oifname \"wan0\" masquerade
            }
        }
            table inet xsock_fw { chain filter_forward { type filter hook forward priority 0; policy accept;
                ct state established,related accept
                iifname \"wan0\" drop
            }
        }"
        .into(),
    }
}
