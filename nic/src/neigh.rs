//! The kernel's neighbour (ARP) table, for a userspace stack that shares an
//! interface with the kernel.
//!
//! On an AF_XDP interface the kernel keeps answering ARP (our XDP filter
//! passes it), so the kernel's table is the one source of next-hop MAC
//! addresses. [`lookup`] reads it; [`resolve`] asks the kernel to resolve an
//! address it does not know yet (`ip neigh replace IP dev IF use`, through
//! rtnetlink), after which [`lookup`] finds it.

use std::{io, net::Ipv4Addr};

use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

use crate::MacAddr;

/// The MAC the kernel has resolved for `ip` on `iface`, if it has one
/// (complete entries only: `ATF_COM`).
pub fn lookup(iface: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp_table(&table, iface, ip)
}

/// Parses `/proc/net/arp` (header line, then `IP type flags MAC mask dev`).
pub fn parse_arp_table(table: &str, iface: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    const ATF_COM: u32 = 0x2;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[5] != iface || f[0].parse::<Ipv4Addr>().ok()? != ip {
            return None;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        let mac: MacAddr = f[3].parse().ok()?;
        (flags & ATF_COM != 0 && mac.0 != [0; 6]).then_some(mac)
    })
}

/// Asks the kernel to resolve `ip` on interface `ifindex` (it sends ARP
/// requests as it would for its own traffic). Returns once the request is
/// accepted; poll [`lookup`] for the answer.
pub fn resolve(ifindex: u32, ip: Ipv4Addr) -> io::Result<()> {
    const RTM_NEWNEIGH: u16 = 28;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_REPLACE: u16 = 0x100;
    const NLM_F_CREATE: u16 = 0x400;
    const NUD_PERMANENT: u16 = 0x80;
    const NTF_USE: u8 = 0x1;
    const NDA_DST: u16 = 1;
    let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
        .map_err(io::Error::from)?;
    let mut msg = Vec::with_capacity(36);
    msg.extend_from_slice(&36u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWNEIGH.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]); // ndm_family, pad
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&NUD_PERMANENT.to_ne_bytes()); // ignored with NTF_USE
    msg.extend_from_slice(&[NTF_USE, 0]); // ndm_flags, ndm_type
    msg.extend_from_slice(&8u16.to_ne_bytes()); // rta_len
    msg.extend_from_slice(&NDA_DST.to_ne_bytes());
    msg.extend_from_slice(&ip.octets());
    let kernel = NetlinkAddr::new(0, 0);
    socket::sendto(std::os::fd::AsRawFd::as_raw_fd(&fd), &msg, &kernel, MsgFlags::empty()).map_err(io::Error::from)?;
    let mut ack = [0u8; 256];
    let n = socket::recv(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut ack, MsgFlags::empty()).map_err(io::Error::from)?;
    // NLMSG_ERROR (2) carries the result: 0 = accepted, else -errno.
    if n >= 20 && u16::from_ne_bytes([ack[4], ack[5]]) == 2 {
        let err = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
        if err != 0 {
            return Err(io::Error::from_raw_os_error(-err));
        }
    }
    Ok(())
}

/// The kernel's default IPv4 gateway through `iface`, if it has one.
pub fn default_gateway(iface: &str) -> Option<Ipv4Addr> {
    parse_route_table(&std::fs::read_to_string("/proc/net/route").ok()?, iface)
}

/// Parses `/proc/net/route` (`Iface Destination Gateway Flags ...`, hex in
/// host byte order) for the default route through `iface`.
pub fn parse_route_table(table: &str, iface: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != iface || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        (gw != 0).then(|| Ipv4Addr::from(gw.to_ne_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "IP address       HW type     Flags       HW address            Mask     Device\n\
        10.0.0.2         0x1         0x2         76:3f:4f:3d:1d:3d     *        veth0\n\
        10.0.0.3         0x1         0x0         00:00:00:00:00:00     *        veth0\n\
        10.0.0.2         0x1         0x2         02:00:00:00:00:09     *        eth1\n";

    #[test]
    fn default_route_through_the_interface() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 veth0\t0000090A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 veth0\t00000000\t0100090A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(t, "veth0"), Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(parse_route_table(t, "eth1"), None);
    }

    #[test]
    fn finds_complete_entries_on_the_right_interface() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(parse_arp_table(TABLE, "veth0", ip("10.0.0.2")).unwrap().to_string(), "76:3f:4f:3d:1d:3d");
        assert_eq!(parse_arp_table(TABLE, "eth1", ip("10.0.0.2")).unwrap().to_string(), "02:00:00:00:00:09");
        assert!(parse_arp_table(TABLE, "veth0", ip("10.0.0.3")).is_none(), "incomplete entry");
        assert!(parse_arp_table(TABLE, "veth0", ip("10.0.0.4")).is_none());
        assert!(parse_arp_table("", "veth0", ip("10.0.0.2")).is_none());
    }
}
