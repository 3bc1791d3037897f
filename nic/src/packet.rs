//! The AF_PACKET fallback, through pnet's datalink channel.
//!
//! Used where AF_XDP cannot be: a kernel without AF_XDP, or a process with
//! CAP_NET_RAW but not CAP_BPF. Slower (a syscall per frame each way, a copy
//! each way) but the same trait. xsock creates the socket itself so that,
//! before pnet binds it, a classic BPF filter admits only xsock's EtherTypes
//! and PACKET_IGNORE_OUTGOING keeps our own transmissions out of our
//! receive path; the kernel keeps its copy of every frame, as always with
//! AF_PACKET.

use std::{
    io,
    os::fd::{BorrowedFd, RawFd},
    time::Duration,
};

use pnet_datalink::{self as datalink, Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};

use crate::{
    device::{Backend, DeviceInfo, DeviceStats, ETH_HEADER_LEN, FrameDevice, FrameSink, MacAddr, RxFrame, TxError},
    error::NicError,
    sys::{self, Capability, syscall},
    xdp::lookup_iface,
};

/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, since 4.20).
const PACKET_IGNORE_OUTGOING: i32 = 23;
/// `PACKET_STATISTICS` (linux/if_packet.h).
const PACKET_STATISTICS: i32 = 6;

/// Configuration of an AF_PACKET device.
#[derive(Debug, Clone)]
pub struct PacketConfig {
    /// Interface to bind.
    pub iface: String,
    /// EtherTypes to receive (all others are filtered out in the kernel).
    pub ethertypes: Vec<u16>,
}

impl From<&crate::xdp::AfXdpConfig> for PacketConfig {
    fn from(c: &crate::xdp::AfXdpConfig) -> Self {
        Self { iface: c.iface.clone(), ethertypes: c.ethertypes.clone() }
    }
}

/// An AF_PACKET socket on one interface.
pub struct AfPacketDevice {
    info: DeviceInfo,
    rx: Box<dyn DataLinkReceiver>,
    tx: PacketSink,
    fd: RawFd,
    rx_frames: u64,
    rx_bytes: u64,
    /// Kernel drops so far (PACKET_STATISTICS resets on each read).
    drops: std::cell::Cell<u64>,
}

struct PacketSink {
    tx: Box<dyn DataLinkSender>,
    /// The frame being built (AF_PACKET copies it into the kernel anyway).
    staging: Vec<u8>,
    max_frame: usize,
    frames: u64,
    bytes: u64,
}

impl std::fmt::Debug for AfPacketDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacketDevice").field("info", &self.info).finish_non_exhaustive()
    }
}

/// A classic BPF program accepting frames whose EtherType is in `types`.
fn ethertype_filter(types: &[u16]) -> Vec<libc::sock_filter> {
    const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    if types.contains(&crate::ETHERTYPE_ALL) {
        return vec![libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: 0x0004_0000 }];
    }
    let n = types.len();
    let mut prog = vec![libc::sock_filter { code: LDH_ABS, jt: 0, jf: 0, k: 12 }];
    for (i, &t) in types.iter().enumerate() {
        prog.push(libc::sock_filter { code: JEQ_K, jt: (n - i) as u8, jf: 0, k: u32::from(t) });
    }
    prog.push(libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: 0 });
    prog.push(libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: 0x0004_0000 });
    prog
}

impl AfPacketDevice {
    /// Opens an AF_PACKET socket on `config.iface`.
    pub fn open(config: &PacketConfig) -> Result<Self, NicError> {
        let missing = sys::missing_capabilities(&[Capability::NetRaw]);
        if !missing.is_empty() {
            return Err(NicError::PermissionDenied { what: "AF_PACKET", missing });
        }
        if config.ethertypes.is_empty() || config.ethertypes.len() > 32 {
            return Err(NicError::Config("AF_PACKET needs 1 to 32 EtherTypes to receive".into()));
        }
        let iface = config.iface.as_str();
        let ifindex = lookup_iface(iface)?;
        let mtu = sys::if_mtu(iface).map_err(|e| NicError::io(format!("reading the MTU of {iface}"), e))?;
        let mac = MacAddr(sys::if_mac(iface).map_err(|e| NicError::io(format!("reading the MAC of {iface}"), e))?);
        let max_frame = mtu as usize + ETH_HEADER_LEN;

        // Protocol 0: the socket receives nothing until pnet binds it, by
        // which time the filter is in place.
        // SAFETY: socket takes no pointers.
        let fd = syscall!(socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => {
                    NicError::PermissionDenied { what: "AF_PACKET", missing: vec![Capability::NetRaw] }
                }
                _ => NicError::io("creating an AF_PACKET socket", e),
            }
        })?;
        let setup = || -> io::Result<()> {
            let prog = ethertype_filter(&config.ethertypes);
            let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
            // SAFETY: fprog points at `prog`, alive for the call; the kernel copies it.
            syscall!(setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t
            ))?;
            sys::set_sockopt_int(fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        };
        if let Err(e) = setup() {
            // SAFETY: fd is ours and not yet handed to pnet.
            unsafe { libc::close(fd) };
            return Err(NicError::io(format!("configuring the AF_PACKET socket on {iface}"), e));
        }

        let ni = NetworkInterface {
            name: iface.to_owned(),
            description: String::new(),
            index: ifindex,
            mac: Some(datalink::MacAddr::from(mac.0)),
            ips: Vec::new(),
            flags: 0,
        };
        let cfg = datalink::Config {
            read_buffer_size: max_frame,
            write_buffer_size: max_frame,
            read_timeout: Some(Duration::ZERO),
            write_timeout: None,
            // A bridge takes frames addressed to other hosts too.
            promiscuous: config.ethertypes.contains(&crate::ETHERTYPE_ALL),
            socket_fd: Some(fd),
            ..Default::default()
        };
        // pnet owns (and closes) fd from here, on success and on failure.
        let (tx, rx) = match datalink::channel(&ni, cfg) {
            Ok(Channel::Ethernet(tx, rx)) => (tx, rx),
            Ok(_) => {
                return Err(NicError::io("opening the AF_PACKET channel", io::Error::other("not an Ethernet channel")));
            }
            Err(e) => {
                return Err(NicError::io(format!("binding the AF_PACKET socket to {iface}"), e));
            }
        };
        log::info!("AF_PACKET socket on {iface}: frames up to {max_frame} B (the slow fallback path)");
        let info =
            DeviceInfo { name: iface.to_owned(), ifindex, queue: 0, mac, mtu, max_frame, backend: Backend::AfPacket };
        Ok(Self {
            info,
            rx,
            tx: PacketSink { tx, staging: Vec::new(), max_frame, frames: 0, bytes: 0 },
            fd,
            rx_frames: 0,
            rx_bytes: 0,
            drops: Default::default(),
        })
    }
}

impl FrameSink for PacketSink {
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError> {
        if max_len > self.max_frame {
            return Err(TxError::TooLong { len: max_len, max: self.max_frame });
        }
        self.staging.resize(max_len, 0);
        let len = fill(&mut self.staging[..max_len]).min(max_len);
        if len == 0 {
            return Ok(0);
        }
        match self.tx.send_to(&self.staging[..len], None) {
            Some(Ok(())) => {
                self.frames += 1;
                self.bytes += len as u64;
                Ok(len)
            }
            Some(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(TxError::RingFull),
            Some(Err(e)) => {
                log::warn!("AF_PACKET send failed: {e}");
                Err(TxError::RingFull)
            }
            None => Err(TxError::TooLong { len, max: self.max_frame }),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn tx_space(&self) -> usize {
        1
    }
}

impl FrameDevice for AfPacketDevice {
    fn receive(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < budget {
            match self.rx.next() {
                Ok(frame) => {
                    self.rx_frames += 1;
                    self.rx_bytes += frame.len() as u64;
                    on_frame(RxFrame::contiguous(frame), &mut self.tx);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn sink(&mut self) -> &mut dyn FrameSink {
        &mut self.tx
    }

    fn readiness_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: pnet keeps the socket open for as long as its channel
        // halves, owned by `self`, live.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn stats(&self) -> DeviceStats {
        let mut s = DeviceStats {
            rx_frames: self.rx_frames,
            rx_bytes: self.rx_bytes,
            tx_frames: self.tx.frames,
            tx_bytes: self.tx.bytes,
            ..Default::default()
        };
        // struct tpacket_stats { tp_packets, tp_drops }; reading resets it.
        let mut st = [0u32; 2];
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: st is a live buffer of `len` bytes.
        if syscall!(getsockopt(self.fd, libc::SOL_PACKET, PACKET_STATISTICS, st.as_mut_ptr().cast(), &mut len)).is_ok()
        {
            self.drops.set(self.drops.get() + u64::from(st[1]));
        }
        s.rx_dropped = self.drops.get();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_land_on_accept() {
        let p = ethertype_filter(&[0x88b5, 0x88b6, 0x0800]);
        assert_eq!(p.len(), 6);
        let accept = p.len() - 1;
        for (i, ins) in p.iter().enumerate().skip(1).take(3) {
            assert_eq!(i + 1 + ins.jt as usize, accept, "jeq at {i} must jump to accept");
            assert_eq!(ins.jf, 0);
        }
        assert_eq!(p[accept - 1].k, 0, "fall-through rejects");
    }
}
