//! The bootstrap server's directory, sans-IO: who is registered (relays
//! and endpoints), their sites, names, ranks and ports. Relays get the
//! whole directory pushed after changes, once per drain of
//! [`Registry::poll_transmit`] however many changes came before it (a
//! thousand nodes joining at once cost a few pushes, not a thousand
//! directories of a thousand entries to every relay); endpoints ask.
//!
//! Several servers may run side by side (no single point of failure):
//! every node registers with each of them under the id it drew for itself,
//! so they all hold the same ids, and sites are derived from what each
//! server sees, the same way everywhere.
//!
//! Endpoints get a virtual IPv4 address from the server's virtual network
//! (`xsock boot --vnet`, [`DEFAULT_VNET`] by default), independent of the
//! LANs' own addresses, so two sites may both use 10.0.0.0/24. An address
//! is leased to a name: the same name registering again gets it back (a
//! hostfile stays right across restarts). A node asks every other server
//! for the address the first one gave, so they agree.

use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
};

use crate::{
    NodeId, SiteId,
    wire::{Entry, Msg, Role},
};

/// A bootstrap session, named by the shell.
pub type SessionId = u64;

/// The virtual network when none is given: part of the shared address
/// space of RFC 6598, which no LAN routes to the internet.
pub const DEFAULT_VNET: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 16);

/// See the module documentation.
#[derive(Debug)]
pub struct Registry {
    vnet: (Ipv4Addr, u8),
    /// Virtual addresses by name, kept after a node leaves.
    leases: HashMap<String, Ipv4Addr>,
    leased: HashMap<Ipv4Addr, String>,
    /// A lease was made or moved since [`Registry::take_leases_changed`].
    leases_changed: bool,
    entries: HashMap<NodeId, Entry>,
    by_name: HashMap<String, NodeId>,
    session_node: HashMap<SessionId, NodeId>,
    relays: Vec<SessionId>,
    out: VecDeque<(SessionId, Vec<u8>)>,
    /// The directory changed since the relays were last sent it.
    directory_due: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_vnet(DEFAULT_VNET.0, DEFAULT_VNET.1).expect("the default is a valid network")
    }
}

impl Registry {
    /// An empty directory on [`DEFAULT_VNET`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty directory whose endpoints get addresses in `net`/`prefix`
    /// (8 to 30: room for at least two hosts).
    pub fn with_vnet(net: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(8..=30).contains(&prefix) {
            return Err(format!("virtual network {net}/{prefix}: give a prefix from /8 to /30"));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(net) & !mask != 0 {
            let base = Ipv4Addr::from(u32::from(net) & mask);
            return Err(format!("virtual network {net}/{prefix} has host bits set: did you mean {base}/{prefix}?"));
        }
        Ok(Registry {
            vnet: (net, prefix),
            leases: HashMap::new(),
            leased: HashMap::new(),
            leases_changed: false,
            entries: HashMap::new(),
            by_name: HashMap::new(),
            session_node: HashMap::new(),
            relays: Vec::new(),
            out: VecDeque::new(),
            directory_due: false,
        })
    }

    /// Every lease, by address: what a restarted server takes back
    /// ([`Registry::restore_leases`]; [`format_leases`] writes them).
    pub fn leases(&self) -> Vec<(Ipv4Addr, String)> {
        let mut v: Vec<(Ipv4Addr, String)> = self.leased.iter().map(|(a, n)| (*a, n.clone())).collect();
        v.sort();
        v
    }

    /// Takes back leases a previous run made. Those outside the virtual
    /// network, or whose name or address is taken already, are skipped and
    /// returned (to be logged).
    pub fn restore_leases(&mut self, leases: Vec<(Ipv4Addr, String)>) -> Vec<(Ipv4Addr, String)> {
        let mut skipped = Vec::new();
        for (ip, name) in leases {
            if !self.in_vnet(ip) || self.leased.contains_key(&ip) || self.leases.contains_key(&name) {
                skipped.push((ip, name));
                continue;
            }
            self.leases.insert(name.clone(), ip);
            self.leased.insert(ip, name);
        }
        skipped
    }

    /// Whether a lease was made or moved since the last call.
    pub fn take_leases_changed(&mut self) -> bool {
        std::mem::take(&mut self.leases_changed)
    }

    /// The virtual network.
    pub fn vnet(&self) -> (Ipv4Addr, u8) {
        self.vnet
    }

    /// Whether `ip` is a host address of the virtual network (not its
    /// network or broadcast address).
    pub fn in_vnet(&self, ip: Ipv4Addr) -> bool {
        in_net(self.vnet, ip)
    }

    /// `name`'s virtual address: its lease, else `asked` if free, else the
    /// lowest free one.
    fn lease(&mut self, name: &str, asked: Option<Ipv4Addr>) -> Result<Ipv4Addr, String> {
        let (net, prefix) = self.vnet;
        if let Some(ip) = asked {
            if !self.in_vnet(ip) {
                return Err(format!(
                    "virtual address {ip} is outside this server's network {net}/{prefix}: give every bootstrap \
                     server the same --vnet, or a --vaddr inside it"
                ));
            }
            match self.leased.get(&ip) {
                Some(holder) if holder != name => {
                    return Err(format!(
                        "virtual address {ip} is leased to {holder:?} at this server: give {name:?} another --vaddr \
                         (bootstrap servers that disagree were started with different histories)"
                    ));
                }
                _ => {}
            }
            if let Some(old) = self.leases.insert(name.to_owned(), ip)
                && old != ip
            {
                self.leased.remove(&old);
            }
            if self.leased.insert(ip, name.to_owned()).is_none() {
                self.leases_changed = true;
            }
            return Ok(ip);
        }
        if let Some(ip) = self.leases.get(name) {
            return Ok(*ip);
        }
        let base = u32::from(net);
        let hosts = (1u32 << (32 - prefix)) - 2;
        let free = (1..=hosts).map(|i| Ipv4Addr::from(base + i)).find(|ip| !self.leased.contains_key(ip));
        let Some(ip) = free else {
            return Err(format!(
                "the virtual network {net}/{prefix} is full ({hosts} names leased): start the bootstrap servers with \
                 a larger --vnet"
            ));
        };
        self.leases.insert(name.to_owned(), ip);
        self.leased.insert(ip, name.to_owned());
        self.leases_changed = true;
        Ok(ip)
    }

    /// A message (type + body) from an authenticated session whose TCP
    /// source address is `seen_from`. `Err` is a one-line reason to send
    /// back as `Refused` before closing the session.
    pub fn handle_message(&mut self, session: SessionId, seen_from: Ipv4Addr, frame: &[u8]) -> Result<(), String> {
        let msg = Msg::parse(frame).map_err(|e| e.to_string())?;
        match msg {
            Msg::Register { node, role, name, lan_ip, prefix, wan, serve_port, rank, vaddr } => {
                if self.session_node.contains_key(&session) {
                    return Err("this session has registered already".into());
                }
                if name.is_empty() {
                    return Err("an empty name: give each node a unique --name".into());
                }
                if let Some(id) = self.by_name.get(name) {
                    let other = &self.entries[id];
                    return Err(format!(
                        "the name {name:?} is taken by a live node at {} ({}): pick another --name, or stop that node",
                        other.lan_ip, other.node
                    ));
                }
                if role == Role::Boot {
                    return Err("a bootstrap server cannot register with another".into());
                }
                if let Some(other) = self.entries.get(&node) {
                    // 64 random bits: a second node drawing the same id is
                    // not worth planning for; a replayed registration is.
                    return Err(format!("node id {node} is taken by {} at {}", other.name, other.lan_ip));
                }
                let site = SiteId::derive(lan_ip, prefix, seen_from);
                let vaddr = match role {
                    Role::Endpoint => Some(self.lease(name, vaddr)?),
                    _ => None,
                };
                let entry = Entry {
                    node,
                    role,
                    name: name.to_owned(),
                    site,
                    lan_ip,
                    wan,
                    serve_port,
                    rank,
                    ports: Vec::new(),
                    vaddr,
                };
                self.entries.insert(node, entry);
                self.by_name.insert(name.to_owned(), node);
                self.session_node.insert(session, node);
                if role == Role::Relay {
                    self.relays.push(session);
                }
                let (vnet, vnet_prefix) = self.vnet;
                self.out.push_back((session, Msg::Registered { node, site, vaddr, vnet, vnet_prefix }.to_frame()));
                self.push_directory();
            }
            Msg::Ports { ports } => {
                let node = self.node_of(session)?;
                let e = self.entries.get_mut(&node).expect("registered");
                e.ports = ports;
                e.ports.sort_unstable();
                e.ports.dedup();
                self.push_directory();
            }
            Msg::Resolve { name } => {
                let node = self.node_of(session)?;
                let reply = match self.by_name.get(name) {
                    Some(id) => self.resolved(node, *id),
                    None => Msg::NotFound { what: name }.to_frame(),
                };
                self.out.push_back((session, reply));
            }
            Msg::ResolveRank { rank } => {
                self.resolve_where(session, &format!("rank {rank}"), |e| e.rank == Some(rank))?;
            }
            Msg::ResolveAddr { addr } => {
                self.resolve_where(session, &format!("virtual address {addr}"), |e| e.vaddr == Some(addr))?;
            }
            Msg::GetDirectory => {
                self.node_of(session)?;
                let f = self.directory_frame();
                self.out.push_back((session, f));
            }
            _ => return Err("unexpected message for the bootstrap server".into()),
        }
        Ok(())
    }

    /// The session ended: its node leaves the directory.
    pub fn handle_session_closed(&mut self, session: SessionId) -> Option<Entry> {
        self.relays.retain(|s| *s != session);
        let node = self.session_node.remove(&session)?;
        let e = self.entries.remove(&node)?;
        self.by_name.remove(&e.name);
        self.push_directory();
        Some(e)
    }

    /// The next frame to send, and to which session: the answers first,
    /// then the directory for the relays if it changed.
    pub fn poll_transmit(&mut self) -> Option<(SessionId, Vec<u8>)> {
        if self.out.is_empty() && std::mem::take(&mut self.directory_due) && !self.relays.is_empty() {
            let f = self.directory_frame();
            for &s in &self.relays {
                self.out.push_back((s, f.clone()));
            }
        }
        self.out.pop_front()
    }

    /// Registered nodes.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    fn node_of(&self, session: SessionId) -> Result<NodeId, String> {
        self.session_node.get(&session).copied().ok_or_else(|| "register first".to_owned())
    }

    /// Answers `session` with the node `is` picks, or that none is `what`.
    fn resolve_where(&mut self, session: SessionId, what: &str, is: impl Fn(&Entry) -> bool) -> Result<(), String> {
        let node = self.node_of(session)?;
        let reply = match self.entries.values().find(|e| is(e)).map(|e| e.node) {
            Some(id) => self.resolved(node, id),
            None => Msg::NotFound { what }.to_frame(),
        };
        self.out.push_back((session, reply));
        Ok(())
    }

    fn relays_of(&self, site: SiteId) -> Vec<Entry> {
        let mut v: Vec<Entry> =
            self.entries.values().filter(|e| e.role == Role::Relay && e.site == site).cloned().collect();
        v.sort_by_key(|e| e.node);
        v
    }

    fn resolved(&self, asker: NodeId, id: NodeId) -> Vec<u8> {
        let my_site = self.entries[&asker].site;
        Msg::Resolved { entry: self.entries[&id].clone(), my_relays: self.relays_of(my_site) }.to_frame()
    }

    fn directory_frame(&self) -> Vec<u8> {
        let mut entries: Vec<Entry> = self.entries.values().cloned().collect();
        entries.sort_by_key(|e| e.node);
        Msg::Directory { entries }.to_frame()
    }

    /// The relays are sent the directory at the end of the next drain.
    fn push_directory(&mut self) {
        self.directory_due = true;
    }
}

/// Leases as text: one `ADDRESS NAME` line each, as in /etc/hosts (so the
/// file a bootstrap server keeps is a hosts file too).
pub fn format_leases(leases: &[(Ipv4Addr, String)]) -> String {
    let mut s = String::from("# xsock bootstrap server: virtual address leases (ADDRESS NAME), as /etc/hosts\n");
    for (ip, name) in leases {
        s += &format!("{ip}\t{name}\n");
    }
    s
}

/// Reads [`format_leases`]'s text; blank lines and `#` comments are
/// skipped. The error names the line.
pub fn parse_leases(text: &str) -> Result<Vec<(Ipv4Addr, String)>, String> {
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(ip), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {}: {line:?} is not ADDRESS NAME", i + 1));
        };
        let ip = ip.parse().map_err(|e| format!("line {}: {ip:?}: {e}", i + 1))?;
        v.push((ip, name.to_owned()));
    }
    Ok(v)
}

/// Whether `ip` is a host address of `net` (neither its network nor its
/// broadcast address).
pub fn in_net((net, prefix): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    if prefix == 0 || prefix > 30 {
        return false;
    }
    let mask = u32::MAX << (32 - prefix);
    let (n, i) = (u32::from(net) & mask, u32::from(ip));
    i & mask == n && i != n && i != n | !mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(r: &mut Registry, s: SessionId, role: Role, name: &str, lan: [u8; 4], seen: [u8; 4]) -> Result<(), String> {
        let f = Msg::Register {
            node: NodeId(1000 + s),
            role,
            name,
            lan_ip: lan.into(),
            prefix: 24,
            wan: None,
            serve_port: 7,
            rank: Some(s as u32),
            vaddr: None,
        }
        .to_frame();
        r.handle_message(s, seen.into(), &f[4..])
    }

    fn drain(r: &mut Registry) -> Vec<(SessionId, Vec<u8>)> {
        std::iter::from_fn(|| r.poll_transmit()).collect()
    }

    #[test]
    fn resolves_names_and_ranks_with_the_askers_relays() {
        let mut r = Registry::new();
        reg(&mut r, 1, Role::Relay, "relay-a", [10, 0, 0, 1], [192, 0, 2, 1]).unwrap();
        reg(&mut r, 2, Role::Endpoint, "h1", [10, 0, 0, 2], [192, 0, 2, 1]).unwrap();
        reg(&mut r, 3, Role::Endpoint, "h2", [10, 0, 0, 2], [192, 0, 2, 9]).unwrap(); // same subnet, other NAT
        drain(&mut r);
        r.handle_message(2, [192, 0, 2, 1].into(), &Msg::Resolve { name: "h2" }.to_frame()[4..]).unwrap();
        r.handle_message(2, [192, 0, 2, 1].into(), &Msg::ResolveRank { rank: 9 }.to_frame()[4..]).unwrap();
        let out = drain(&mut r);
        let Msg::Resolved { entry, my_relays } = Msg::parse(&out[0].1[4..]).unwrap() else { panic!() };
        assert_eq!(entry.name, "h2");
        assert_eq!(my_relays.len(), 1);
        assert_eq!(my_relays[0].name, "relay-a");
        assert_ne!(entry.site, my_relays[0].site, "same subnet behind another NAT is another site");
        assert!(matches!(Msg::parse(&out[1].1[4..]).unwrap(), Msg::NotFound { .. }));
    }

    #[test]
    fn a_taken_name_is_refused_until_its_session_ends() {
        let mut r = Registry::new();
        reg(&mut r, 1, Role::Endpoint, "h1", [10, 0, 0, 2], [10, 0, 0, 2]).unwrap();
        let e = reg(&mut r, 2, Role::Endpoint, "h1", [10, 0, 0, 3], [10, 0, 0, 3]).unwrap_err();
        assert!(e.contains("taken"), "{e}");
        r.handle_session_closed(1);
        reg(&mut r, 2, Role::Endpoint, "h1", [10, 0, 0, 3], [10, 0, 0, 3]).unwrap();
    }

    #[test]
    fn relays_get_the_directory_after_changes_once_per_drain() {
        let mut r = Registry::new();
        reg(&mut r, 1, Role::Relay, "relay-a", [10, 0, 0, 1], [10, 0, 0, 1]).unwrap();
        drain(&mut r);
        // Two changes before the drain: one push, the newest directory.
        reg(&mut r, 2, Role::Endpoint, "h1", [10, 0, 0, 2], [10, 0, 0, 2]).unwrap();
        r.handle_message(2, [10, 0, 0, 2].into(), &Msg::Ports { ports: vec![80, 80, 22] }.to_frame()[4..]).unwrap();
        let out = drain(&mut r);
        assert!(matches!(Msg::parse(&out[0].1[4..]), Ok(Msg::Registered { .. })), "the answer goes first");
        let pushes: Vec<_> = out.into_iter().filter(|(s, _)| *s == 1).collect();
        assert_eq!(pushes.len(), 1);
        let Msg::Directory { entries } = Msg::parse(&pushes[0].1[4..]).unwrap() else { panic!() };
        assert_eq!(entries.iter().find(|e| e.name == "h1").unwrap().ports, vec![22, 80]);
        assert!(drain(&mut r).is_empty(), "no change, no push");
        r.handle_session_closed(2);
        let Msg::Directory { entries } = Msg::parse(&drain(&mut r)[0].1[4..]).unwrap() else { panic!() };
        assert_eq!(entries.len(), 1);
    }

    /// A thousand endpoints joining (and listening) between two drains cost
    /// each relay one directory, not two thousand.
    #[test]
    fn a_join_storm_costs_each_relay_one_directory_per_drain() {
        let mut r = Registry::new();
        for s in 1..=4 {
            reg(&mut r, s, Role::Relay, &format!("relay-{s}"), [10, 0, s as u8, 1], [10, 0, s as u8, 1]).unwrap();
        }
        drain(&mut r);
        for s in 10..1010u64 {
            let lan = [10, 0, (s % 4 + 1) as u8, (s % 200 + 2) as u8];
            reg(&mut r, s, Role::Endpoint, &format!("h{s}"), lan, lan).unwrap();
            r.handle_message(s, lan.into(), &Msg::Ports { ports: vec![7500] }.to_frame()[4..]).unwrap();
        }
        let out = drain(&mut r);
        let (pushes, answers): (Vec<_>, Vec<_>) = out.iter().partition(|(s, _)| *s <= 4);
        assert_eq!(answers.len(), 1000, "every endpoint is answered");
        assert_eq!(pushes.len(), 4, "one directory per relay");
        for (_, f) in pushes {
            let Msg::Directory { entries } = Msg::parse(&f[4..]).unwrap() else { panic!() };
            assert_eq!(entries.len(), 1004);
            assert!(entries.iter().filter(|e| e.role == Role::Endpoint).all(|e| e.ports == [7500]));
        }
    }

    fn register_as(node: u64, name: &str) -> Vec<u8> {
        register_asking(node, name, None)
    }

    fn register_asking(node: u64, name: &str, vaddr: Option<[u8; 4]>) -> Vec<u8> {
        Msg::Register {
            node: NodeId(node),
            role: Role::Endpoint,
            name,
            lan_ip: [10, 0, 0, 2].into(),
            prefix: 24,
            wan: None,
            serve_port: 0,
            rank: None,
            vaddr: vaddr.map(Ipv4Addr::from),
        }
        .to_frame()
    }

    fn vaddr_of(frame: &[u8]) -> Ipv4Addr {
        let Msg::Registered { vaddr: Some(ip), .. } = Msg::parse(&frame[4..]).unwrap() else { panic!("no address") };
        ip
    }

    #[test]
    fn endpoints_lease_virtual_addresses_that_outlive_their_sessions() {
        let mut r = Registry::with_vnet([10, 0, 0, 0].into(), 30).unwrap();
        reg(&mut r, 1, Role::Relay, "relay-a", [10, 0, 0, 1], [10, 0, 0, 1]).unwrap();
        let Msg::Registered { vaddr: None, .. } = Msg::parse(&drain(&mut r)[0].1[4..]).unwrap() else { panic!() };
        r.handle_message(2, [10, 0, 0, 2].into(), &register_as(2, "h1")[4..]).unwrap();
        r.handle_message(3, [10, 0, 0, 3].into(), &register_as(3, "h2")[4..]).unwrap();
        let out = drain(&mut r);
        let got: Vec<Ipv4Addr> = out.iter().filter(|(s, _)| *s != 1).map(|(_, f)| vaddr_of(f)).collect();
        assert_eq!(got, [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)], "relays take none; .0 and .3 never");
        // Resolving by address.
        r.handle_message(2, [10, 0, 0, 2].into(), &Msg::ResolveAddr { addr: got[1] }.to_frame()[4..]).unwrap();
        let Msg::Resolved { entry, .. } = Msg::parse(&drain(&mut r)[0].1[4..]).unwrap() else { panic!() };
        assert_eq!((entry.name.as_str(), entry.vaddr), ("h2", Some(got[1])));
        // The network is full; a leaver keeps its address for its name.
        let e = r.handle_message(4, [10, 0, 0, 4].into(), &register_as(4, "h3")[4..]).unwrap_err();
        assert!(e.contains("is full") && e.contains("--vnet"), "{e}");
        r.handle_session_closed(2);
        assert!(r.handle_message(4, [10, 0, 0, 4].into(), &register_as(4, "h3")[4..]).is_err());
        r.handle_message(5, [10, 0, 0, 2].into(), &register_as(5, "h1")[4..]).unwrap();
        let back = drain(&mut r).into_iter().find(|(s, _)| *s == 5).unwrap();
        assert_eq!(vaddr_of(&back.1), got[0]);
    }

    #[test]
    fn leases_survive_a_restart_through_their_text() {
        let mut r = Registry::with_vnet([100, 64, 0, 0].into(), 16).unwrap();
        assert!(!r.take_leases_changed());
        r.handle_message(1, [10, 0, 0, 2].into(), &register_as(1, "h1")[4..]).unwrap();
        r.handle_message(2, [10, 0, 0, 3].into(), &register_asking(2, "h2", Some([100, 64, 9, 9]))[4..]).unwrap();
        assert!(r.take_leases_changed());
        assert!(!r.take_leases_changed(), "taken");
        let text = format_leases(&r.leases());
        // A new server, its file read back: the names keep their addresses
        // whatever order they come back in.
        let mut again = Registry::with_vnet([100, 64, 0, 0].into(), 16).unwrap();
        let mut back = parse_leases(&text).unwrap();
        back.push((Ipv4Addr::new(10, 0, 0, 1), "outside".into()));
        back.push((Ipv4Addr::new(100, 64, 9, 9), "dup".into()));
        let skipped = again.restore_leases(back);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        again.handle_message(7, [10, 0, 0, 3].into(), &register_as(7, "h2")[4..]).unwrap();
        again.handle_message(8, [10, 0, 0, 4].into(), &register_as(8, "h9")[4..]).unwrap();
        again.handle_message(9, [10, 0, 0, 2].into(), &register_as(9, "h1")[4..]).unwrap();
        let out = drain(&mut again);
        let of = |s: SessionId| vaddr_of(&out.iter().find(|(x, _)| *x == s).unwrap().1);
        assert_eq!((of(7), of(9)), (Ipv4Addr::new(100, 64, 9, 9), Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(of(8), Ipv4Addr::new(100, 64, 0, 2), "a new name takes a free address");
        assert!(parse_leases("100.64.0.1 a b\n").unwrap_err().starts_with("line 1"));
        assert!(parse_leases("# c\n\nx a\n").unwrap_err().starts_with("line 3"));
    }

    #[test]
    fn an_asked_address_is_granted_once_and_checked() {
        let mut r = Registry::with_vnet([100, 64, 0, 0].into(), 16).unwrap();
        r.handle_message(1, [10, 0, 0, 2].into(), &register_asking(1, "h1", Some([100, 64, 7, 7]))[4..]).unwrap();
        assert_eq!(vaddr_of(&drain(&mut r).remove(0).1), Ipv4Addr::new(100, 64, 7, 7));
        let e = r.handle_message(2, [10, 0, 0, 3].into(), &register_asking(2, "h2", Some([100, 64, 7, 7]))[4..]);
        assert!(e.unwrap_err().contains("leased to \"h1\""));
        let e = r.handle_message(3, [10, 0, 0, 3].into(), &register_asking(3, "h3", Some([10, 1, 0, 1]))[4..]);
        assert!(e.unwrap_err().contains("outside this server's network 100.64.0.0/16"));
        let e = r.handle_message(3, [10, 0, 0, 3].into(), &register_asking(3, "h3", Some([100, 64, 255, 255]))[4..]);
        assert!(e.is_err(), "the broadcast address is no host's");
        assert!(Registry::with_vnet([100, 64, 0, 1].into(), 16).unwrap_err().contains("did you mean 100.64.0.0/16"));
        assert!(Registry::with_vnet([100, 64, 0, 0].into(), 31).is_err());
        assert!(in_net((Ipv4Addr::new(100, 64, 0, 0), 16), Ipv4Addr::new(100, 64, 3, 4)));
    }

    #[test]
    fn two_servers_give_a_node_the_same_id_and_site() {
        let (mut a, mut b) = (Registry::new(), Registry::new());
        // Different sessions at each server; one node.
        a.handle_message(1, [192, 0, 2, 1].into(), &register_as(77, "h1")[4..]).unwrap();
        b.handle_message(9, [192, 0, 2, 1].into(), &register_as(77, "h1")[4..]).unwrap();
        let (fa, fb) = (drain(&mut a).remove(0).1, drain(&mut b).remove(0).1);
        assert_eq!(Msg::parse(&fa[4..]).unwrap(), Msg::parse(&fb[4..]).unwrap());
        assert!(matches!(Msg::parse(&fa[4..]).unwrap(), Msg::Registered { node: NodeId(77), .. }));
    }

    #[test]
    fn a_second_registration_under_a_live_id_is_refused() {
        let mut r = Registry::new();
        r.handle_message(1, [10, 0, 0, 2].into(), &register_as(42, "h1")[4..]).unwrap();
        let e = r.handle_message(2, [10, 0, 0, 3].into(), &register_as(42, "h2")[4..]).unwrap_err();
        assert!(e.contains("taken by h1"), "{e}");
    }

    #[test]
    fn nothing_before_registering() {
        let mut r = Registry::new();
        assert!(r.handle_message(5, Ipv4Addr::LOCALHOST, &Msg::GetDirectory.to_frame()[4..]).is_err());
    }
}
