//! The poll loop over in-memory ports: demux, timers, counters, inline and
//! threaded driving, idle sleep and wake-up.

use std::time::{Duration, Instant};

use xsock_datapath::{
    ChannelHandler, Context, Datapath, FrameHandler, PollMode,
    diag::{
        self,
        blast::{BlastHandler, blast},
        ping::{EchoHandler, PingClient, round_trip},
    },
};
use xsock_nic::{
    FrameDevice, MacAddr, RxFrame,
    fault::{FaultConfig, FaultInjector},
    mem::{MemConfig, MemDevice},
};

fn mem_pair(mode: PollMode) -> (Datapath, Datapath) {
    let (a, b) = MemDevice::pair(&MemConfig::default()).unwrap();
    (Datapath::from_devices(vec![Box::new(a)], mode).unwrap(), Datapath::from_devices(vec![Box::new(b)], mode).unwrap())
}

#[test]
fn inline_ping_pong_through_two_loops() {
    let (mut a, b) = mem_pair(PollMode::Busy);
    let peer = b.device_info(0).mac;
    let mut b = b;
    b.register(diag::ETHERTYPE, Box::new(EchoHandler::default())).unwrap();
    let echo = b.spawn("echo").unwrap();
    let id = a.register(diag::ETHERTYPE, Box::new(PingClient::new(peer, 64).unwrap())).unwrap();
    for seq in 0..500 {
        let rtt = round_trip(&mut a, id, seq, Duration::from_secs(2)).unwrap();
        assert!(rtt.is_some(), "pong {seq} lost on a perfect wire");
    }
    let stats = a.stats();
    assert_eq!(stats[0].tx_frames, 500);
    assert_eq!(stats[0].rx_frames, 500);
    let b = echo.stop().unwrap();
    assert_eq!(b.counters().get(0).rx_frames, 500);
}

#[test]
fn ping_reports_loss_instead_of_hanging() {
    let (a, b) = MemDevice::pair(&MemConfig::default()).unwrap();
    let peer = b.info().mac;
    let lossy = FaultInjector::new(a, FaultConfig { seed: 5, loss: 0.3, ..Default::default() });
    let mut a = Datapath::from_devices(vec![Box::new(lossy)], PollMode::Busy).unwrap();
    let mut b = Datapath::from_devices(vec![Box::new(b)], PollMode::Sleep).unwrap();
    b.register(diag::ETHERTYPE, Box::new(EchoHandler::default())).unwrap();
    let echo = b.spawn("echo").unwrap();
    let id = a.register(diag::ETHERTYPE, Box::new(PingClient::new(peer, 64).unwrap())).unwrap();
    let lost =
        (0..100).filter(|&seq| round_trip(&mut a, id, seq, Duration::from_millis(20)).unwrap().is_none()).count();
    assert!((15..45).contains(&lost), "lost {lost} of 100 at 30% loss");
    drop(echo);
}

#[test]
fn blast_counts_every_frame_on_a_perfect_wire() {
    let (a, b) = MemDevice::pair(&MemConfig { inbox_frames: 1 << 20, ..Default::default() }).unwrap();
    let peer = b.info().mac;
    let mut a = Datapath::from_devices(vec![Box::new(a)], PollMode::Busy).unwrap();
    let mut b = Datapath::from_devices(vec![Box::new(b)], PollMode::Busy).unwrap();
    b.register(diag::ETHERTYPE, Box::new(BlastHandler::default())).unwrap();
    let rx = b.spawn("rx").unwrap();
    let id = a.register(diag::ETHERTYPE, Box::new(BlastHandler::default())).unwrap();
    let out = blast(&mut a, id, peer, 256, Duration::from_millis(100), Duration::from_secs(5)).unwrap();
    assert!(out.sent_frames > 100);
    assert_eq!(out.received.frames, out.sent_frames);
    assert_eq!(out.received.bytes, out.sent_bytes);
    drop(rx);
}

/// Echoes frames of its EtherType after a delay set by a timer.
#[derive(Default)]
struct Delayed {
    pending: Vec<(u64, Vec<u8>)>,
    next: u64,
    fired: u64,
}

impl FrameHandler for Delayed {
    fn on_frame(&mut self, frame: RxFrame<'_>, cx: &mut Context<'_>) {
        self.next += 1;
        self.pending.push((self.next, frame.to_vec()));
        cx.set_timer(cx.now() + Duration::from_millis(20), self.next);
    }
    fn on_timer(&mut self, token: u64, cx: &mut Context<'_>) {
        self.fired += 1;
        if let Some(i) = self.pending.iter().position(|(t, _)| *t == token) {
            let (_, f) = self.pending.swap_remove(i);
            cx.transmit(f.len(), |b| b.copy_from_slice(&f)).unwrap();
        }
    }
}

fn raw_frame(dst: MacAddr, ethertype: u16, tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&dst.0);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[14] = tag;
    f
}

#[test]
fn timers_fire_when_due_and_the_loop_sleeps_until_then() {
    let (mut a, mut b) = mem_pair(PollMode::Sleep);
    let id = b.register(0x88b5, Box::new(Delayed::default())).unwrap();
    let (h, ep) = ChannelHandler::new(16, a.waker());
    a.register(0x88b5, Box::new(h)).unwrap();
    let b_mac = b.device_info(0).mac;
    let a = a.spawn("a").unwrap();
    ep.send(raw_frame(b_mac, 0x88b5, 7)).unwrap();
    let start = Instant::now();
    // b receives, and 20 ms later its timer sends the frame back to a.
    b.run_until(Duration::from_secs(2), |dp| dp.handler_mut::<Delayed>(id).unwrap().fired == 1).unwrap();
    let back = ep.rx.recv_timeout(Duration::from_secs(2)).expect("delayed echo");
    let waited = start.elapsed();
    assert_eq!(back[14], 7);
    assert!(waited >= Duration::from_millis(20), "timer fired early: {waited:?}");
    // b slept in poll(2) rather than spinning for those 20 ms.
    let stats = b.stats();
    assert!(stats[0].sleeps >= 1 && stats[0].polls < 1000, "{:?}", stats[0]);
    drop(a);
}

#[test]
fn unclaimed_ethertypes_are_counted_and_dropped() {
    let (mut a, mut b) = mem_pair(PollMode::Busy);
    let dst = b.device_info(0).mac;
    for t in 0..3 {
        a.transmit(0, 60, |f| f.copy_from_slice(&raw_frame(dst, 0x1234, t))).unwrap();
    }
    a.flush().unwrap();
    b.poll().unwrap();
    let s = b.stats();
    assert_eq!((s[0].rx_frames, s[0].rx_unclaimed), (3, 3));
}

#[test]
fn duplicate_registration_is_refused() {
    let (mut a, _) = mem_pair(PollMode::Busy);
    a.register(0x88b5, Box::new(EchoHandler::default())).unwrap();
    let e = a.register(0x88b5, Box::new(EchoHandler::default())).unwrap_err();
    assert!(e.to_string().contains("0x88b5"), "{e}");
}

#[test]
fn threaded_datapath_wakes_for_channel_frames_and_calls() {
    let (a, b) = mem_pair(PollMode::Sleep);
    let (mut a, mut b) = (a, b);
    let (ha, ea) = ChannelHandler::new(64, a.waker());
    let (hb, eb) = ChannelHandler::new(64, b.waker());
    a.register(0x88b5, Box::new(ha)).unwrap();
    b.register(0x88b5, Box::new(hb)).unwrap();
    let b_mac = b.device_info(0).mac;
    let (ta, tb) = (a.spawn("a").unwrap(), b.spawn("b").unwrap());
    // Both loops sleep in poll(2); a frame from the application wakes a,
    // which sends it; its arrival wakes b.
    std::thread::sleep(Duration::from_millis(20));
    for tag in 0..10 {
        ea.send(raw_frame(b_mac, 0x88b5, tag)).unwrap();
    }
    let tags: Vec<u8> = (0..10).map(|_| eb.rx.recv_timeout(Duration::from_secs(2)).unwrap()[14]).collect();
    assert_eq!(tags, (0..10).collect::<Vec<_>>());
    // A call runs on the loop's thread and returns its result.
    let queues = tb.call(|dp| dp.queues()).unwrap();
    assert_eq!(queues, 1);
    assert_eq!(tb.counters().get(0).rx_frames, 10);
    assert!(ta.counters().get(0).sleeps > 0, "an idle sleeping loop counts its sleeps");
    let a = ta.stop().unwrap();
    assert_eq!(a.counters().get(0).tx_frames, 10);
    drop(tb);
}

#[test]
fn several_queues_are_polled_and_counted_apart() {
    let (a0, b0) = MemDevice::pair(&MemConfig::default()).unwrap();
    let (a1, b1) = MemDevice::pair(&MemConfig::default()).unwrap();
    let (m0, m1) = (b0.info().mac, b1.info().mac);
    let mut a = Datapath::from_devices(vec![Box::new(a0), Box::new(a1)], PollMode::Busy).unwrap();
    let mut b = Datapath::from_devices(vec![Box::new(b0), Box::new(b1)], PollMode::Busy).unwrap();
    let (hb, eb) = ChannelHandler::new(64, b.waker());
    b.register(0x88b5, Box::new(hb)).unwrap();
    a.transmit(0, 60, |f| f.copy_from_slice(&raw_frame(m0, 0x88b5, 1))).unwrap();
    for _ in 0..3 {
        a.transmit(1, 60, |f| f.copy_from_slice(&raw_frame(m1, 0x88b5, 2))).unwrap();
    }
    a.flush().unwrap();
    b.poll().unwrap();
    assert_eq!(eb.rx.len(), 4);
    let s = b.stats();
    assert_eq!((s[0].rx_frames, s[1].rx_frames), (1, 3));
}
