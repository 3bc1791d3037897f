//! In-memory frame devices: a point-to-point wire and a learning L2 switch.
//!
//! Frames are copied into the receiver's bounded inbox (overflow is a drop,
//! as on a real ring). Each inbox has an eventfd, so an in-memory device can
//! be waited on with poll(2) exactly like a socket. Loss, reordering,
//! duplication, corruption and delay come from wrapping a device in
//! [`crate::fault::FaultInjector`].

use std::{
    collections::{HashMap, VecDeque},
    io,
    os::fd::BorrowedFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    device::{Backend, DeviceInfo, DeviceStats, ETH_HEADER_LEN, FrameDevice, FrameSink, MacAddr, RxFrame, TxError},
    sys::EventFd,
};

/// Settings of an in-memory port.
#[derive(Debug, Clone)]
pub struct MemConfig {
    /// MTU (IP payload bytes); frames up to MTU + 14 bytes pass.
    pub mtu: u32,
    /// Frames an inbox holds before it drops.
    pub inbox_frames: usize,
}

impl Default for MemConfig {
    fn default() -> Self {
        Self { mtu: 1500, inbox_frames: 4096 }
    }
}

struct Inbox {
    frames: Mutex<Queue>,
    doorbell: EventFd,
    capacity: usize,
    dropped: AtomicU64,
}

/// The frames, and whether the doorbell is rung (kept beside them, under
/// the same lock, so it is rung and cleared only on empty ↔ non-empty
/// transitions: no system call per frame, none on an empty poll).
#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    rung: bool,
}

impl Inbox {
    fn new(capacity: usize) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            frames: Mutex::new(Queue { frames: VecDeque::with_capacity(capacity.min(1024)), rung: false }),
            doorbell: EventFd::new()?,
            capacity,
            dropped: AtomicU64::new(0),
        }))
    }

    fn push(&self, frame: Vec<u8>) {
        let mut q = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if q.frames.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.frames.push_back(frame);
        if !q.rung {
            q.rung = true;
            self.doorbell.signal();
        }
    }
}

#[derive(Default)]
struct SwitchState {
    ports: Vec<Arc<Inbox>>,
    learned: HashMap<MacAddr, usize>,
}

enum Outlet {
    Peer(Arc<Inbox>),
    Switch { state: Arc<Mutex<SwitchState>>, port: usize },
}

impl Outlet {
    fn deliver(&self, frame: Vec<u8>) {
        match self {
            Outlet::Peer(inbox) => inbox.push(frame),
            Outlet::Switch { state, port } => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                let src = MacAddr(frame[6..12].try_into().expect("frame has a header"));
                let dst = MacAddr(frame[0..6].try_into().expect("frame has a header"));
                if !src.is_multicast() {
                    s.learned.insert(src, *port);
                }
                match s.learned.get(&dst).copied() {
                    Some(out) if !dst.is_multicast() => {
                        if out != *port {
                            s.ports[out].push(frame);
                        }
                    }
                    _ => {
                        let targets: Vec<Arc<Inbox>> =
                            s.ports.iter().enumerate().filter(|(i, _)| i != port).map(|(_, p)| p.clone()).collect();
                        drop(s);
                        if let Some((last, rest)) = targets.split_last() {
                            for t in rest {
                                t.push(frame.clone());
                            }
                            last.push(frame);
                        }
                    }
                }
            }
        }
    }
}

/// One end of an in-memory wire, or one port of an in-memory switch.
pub struct MemDevice {
    info: DeviceInfo,
    inbox: Arc<Inbox>,
    sink: MemSink,
    rx_frames: u64,
    rx_bytes: u64,
}

struct MemSink {
    outlet: Outlet,
    max_frame: usize,
    frames: u64,
    bytes: u64,
}

impl FrameSink for MemSink {
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError> {
        if max_len > self.max_frame {
            return Err(TxError::TooLong { len: max_len, max: self.max_frame });
        }
        let mut buf = vec![0u8; max_len];
        let len = fill(&mut buf).min(max_len);
        if len == 0 {
            return Ok(0);
        }
        if len < ETH_HEADER_LEN {
            // Not a frame: a real NIC would not send it either.
            return Err(TxError::TooLong { len, max: self.max_frame });
        }
        buf.truncate(len);
        self.frames += 1;
        self.bytes += len as u64;
        self.outlet.deliver(buf);
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn tx_space(&self) -> usize {
        usize::MAX
    }
}

static NEXT_MAC: AtomicU64 = AtomicU64::new(1);

/// A locally administered unicast MAC, unique within the process.
pub fn fresh_mac() -> MacAddr {
    let n = NEXT_MAC.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    MacAddr([0x02, 0x58, n[4], n[5], n[6], n[7]])
}

impl MemDevice {
    fn new(name: String, inbox: Arc<Inbox>, outlet: Outlet, config: &MemConfig) -> Self {
        let max_frame = config.mtu as usize + ETH_HEADER_LEN;
        Self {
            info: DeviceInfo {
                name,
                ifindex: 0,
                queue: 0,
                mac: fresh_mac(),
                mtu: config.mtu,
                max_frame,
                backend: Backend::Memory,
            },
            inbox,
            sink: MemSink { outlet, max_frame, frames: 0, bytes: 0 },
            rx_frames: 0,
            rx_bytes: 0,
        }
    }

    /// Two devices joined back to back.
    pub fn pair(config: &MemConfig) -> io::Result<(MemDevice, MemDevice)> {
        let a = Inbox::new(config.inbox_frames)?;
        let b = Inbox::new(config.inbox_frames)?;
        Ok((
            MemDevice::new("mem-a".into(), a.clone(), Outlet::Peer(b.clone()), config),
            MemDevice::new("mem-b".into(), b, Outlet::Peer(a), config),
        ))
    }

    /// Overrides the port's MAC address.
    pub fn with_mac(mut self, mac: MacAddr) -> Self {
        self.info.mac = mac;
        self
    }
}

/// A learning L2 switch joining any number of in-memory ports.
#[derive(Clone, Default)]
pub struct MemSwitch {
    state: Arc<Mutex<SwitchState>>,
}

impl MemSwitch {
    /// A switch with no ports.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a port and returns the device plugged into it.
    pub fn port(&self, config: &MemConfig) -> io::Result<MemDevice> {
        let inbox = Inbox::new(config.inbox_frames)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let port = s.ports.len();
        s.ports.push(inbox.clone());
        drop(s);
        let outlet = Outlet::Switch { state: self.state.clone(), port };
        Ok(MemDevice::new(format!("mem-sw{port}"), inbox, outlet, config))
    }
}

impl FrameDevice for MemDevice {
    fn receive(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < budget {
            let next = {
                let mut q = self.inbox.frames.lock().unwrap_or_else(|p| p.into_inner());
                let f = q.frames.pop_front();
                if q.frames.is_empty() && q.rung {
                    q.rung = false;
                    self.inbox.doorbell.clear();
                }
                f
            };
            let Some(frame) = next else { break };
            self.rx_frames += 1;
            self.rx_bytes += frame.len() as u64;
            on_frame(RxFrame::contiguous(&frame), &mut self.sink);
            n += 1;
        }
        Ok(n)
    }

    fn sink(&mut self) -> &mut dyn FrameSink {
        &mut self.sink
    }

    fn readiness_fd(&self) -> BorrowedFd<'_> {
        self.inbox.doorbell.fd()
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn stats(&self) -> DeviceStats {
        DeviceStats {
            rx_frames: self.rx_frames,
            rx_bytes: self.rx_bytes,
            tx_frames: self.sink.frames,
            tx_bytes: self.sink.bytes,
            rx_dropped: self.inbox.dropped.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(dev: &mut MemDevice, dst: MacAddr, tag: u8) {
        let src = dev.info().mac;
        dev.sink()
            .transmit(60, &mut |b| {
                b[0..6].copy_from_slice(&dst.0);
                b[6..12].copy_from_slice(&src.0);
                b[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
                b[14] = tag;
            })
            .unwrap();
    }

    fn drain(dev: &mut MemDevice) -> Vec<u8> {
        let mut tags = Vec::new();
        dev.receive(64, &mut |f, _| tags.push(f.head()[14])).unwrap();
        tags
    }

    #[test]
    fn wire_delivers_in_order_and_wakes_poll() {
        let (mut a, mut b) = MemDevice::pair(&MemConfig::default()).unwrap();
        b.wait(Some(std::time::Duration::ZERO)).unwrap();
        for t in 0..5 {
            send(&mut a, b.info().mac, t);
        }
        let i = [crate::sys::Interest { fd: b.readiness_fd(), read: true, write: false }];
        assert!(crate::sys::poll_fds(&i, Some(std::time::Duration::ZERO)).unwrap()[0].readable);
        assert_eq!(drain(&mut b), vec![0, 1, 2, 3, 4]);
        let i = [crate::sys::Interest { fd: b.readiness_fd(), read: true, write: false }];
        assert!(!crate::sys::poll_fds(&i, Some(std::time::Duration::ZERO)).unwrap()[0].readable);
        assert_eq!(a.stats().tx_frames, 5);
        assert_eq!(b.stats().rx_frames, 5);
    }

    #[test]
    fn full_inbox_drops_and_counts() {
        let cfg = MemConfig { inbox_frames: 2, ..Default::default() };
        let (mut a, mut b) = MemDevice::pair(&cfg).unwrap();
        for t in 0..5 {
            send(&mut a, b.info().mac, t);
        }
        assert_eq!(drain(&mut b), vec![0, 1]);
        assert_eq!(b.stats().rx_dropped, 3);
    }

    #[test]
    fn variable_length_transmit_sends_what_was_built() {
        let (mut a, mut b) = MemDevice::pair(&MemConfig::default()).unwrap();
        assert_eq!(a.sink().transmit_with(1514, &mut |_| 0), Ok(0), "0 = nothing sent");
        assert_eq!(
            a.sink().transmit_with(1514, &mut |buf| {
                buf[14] = 9;
                60
            }),
            Ok(60)
        );
        let mut lens = Vec::new();
        b.receive(8, &mut |f, _| lens.push((f.len(), f.head()[14]))).unwrap();
        assert_eq!(lens, vec![(60, 9)]);
    }

    #[test]
    fn oversize_frames_are_refused() {
        let (mut a, _b) = MemDevice::pair(&MemConfig { mtu: 100, ..Default::default() }).unwrap();
        assert_eq!(a.sink().transmit(115, &mut |_| {}), Err(TxError::TooLong { len: 115, max: 114 }));
    }

    #[test]
    fn switch_floods_unknown_then_forwards_learned() {
        let sw = MemSwitch::new();
        let cfg = MemConfig::default();
        let (mut p0, mut p1, mut p2) = (sw.port(&cfg).unwrap(), sw.port(&cfg).unwrap(), sw.port(&cfg).unwrap());
        // p0 → p1 before anyone is learned: flooded to p1 and p2.
        send(&mut p0, p1.info().mac, 1);
        assert_eq!(drain(&mut p1), vec![1]);
        assert_eq!(drain(&mut p2), vec![1]);
        // p1 answers: p0 was learned, so only p0 gets it.
        send(&mut p1, p0.info().mac, 2);
        assert_eq!(drain(&mut p0), vec![2]);
        assert!(drain(&mut p2).is_empty());
        // Broadcast reaches everyone else, never the sender.
        send(&mut p2, MacAddr::BROADCAST, 3);
        assert_eq!(drain(&mut p0), vec![3]);
        assert_eq!(drain(&mut p1), vec![3]);
        assert!(drain(&mut p2).is_empty());
    }
}
