//! AF_XDP backend in network namespaces (needs root; skips loudly otherwise).

use std::time::{Duration, Instant};

use xsock_nic::{
    Backend, BackendChoice, ETHERTYPE_LOCAL_EXP1, ETHERTYPE_LOCAL_EXP2, FrameDevice, MacAddr, NicError,
    xdp::{AfXdpConfig, AfXdpDevice},
};
use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

fn pair(opts: LinkOpts) -> (Testbed, Host, Host) {
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(opts, "10.77.0").unwrap();
    (bed, a, b)
}

fn config(queue: u32) -> AfXdpConfig {
    AfXdpConfig {
        queue,
        frame_count: 1024,
        ring_size: 512,
        ethertypes: vec![ETHERTYPE_LOCAL_EXP1, ETHERTYPE_LOCAL_EXP2],
        ..AfXdpConfig::new("eth0")
    }
}

fn open_in(host: &Host, cfg: AfXdpConfig) -> Result<AfXdpDevice, NicError> {
    host.run(move || AfXdpDevice::open(&cfg)).unwrap()
}

fn send(dev: &mut dyn FrameDevice, dst: MacAddr, len: usize, seq: u32) {
    let src = dev.info().mac;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = dev.sink().transmit(len, &mut |b| {
            b[0..6].copy_from_slice(&dst.0);
            b[6..12].copy_from_slice(&src.0);
            b[12..14].copy_from_slice(&ETHERTYPE_LOCAL_EXP2.to_be_bytes());
            b[14..18].copy_from_slice(&seq.to_be_bytes());
            for (i, x) in b[18..].iter_mut().enumerate() {
                *x = (i as u32).wrapping_add(seq) as u8;
            }
        });
        match r {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => dev.sink().flush().unwrap(),
            Err(e) => panic!("transmit: {e}"),
        }
    }
}

/// Receives until `n` frames arrived or 3 s passed; checks each frame's
/// payload pattern and returns the sequence numbers.
fn recv(dev: &mut dyn FrameDevice, n: usize, len: usize) -> Vec<u32> {
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while seqs.len() < n && Instant::now() < deadline {
        dev.sink().flush().unwrap();
        dev.receive(64, &mut |f, _| {
            let bytes = f.to_vec();
            assert_eq!(bytes.len(), len, "frame length");
            let seq = u32::from_be_bytes(bytes[14..18].try_into().unwrap());
            for (i, x) in bytes[18..].iter().enumerate() {
                assert_eq!(*x, (i as u32).wrapping_add(seq) as u8, "payload byte {i} of frame {seq}");
            }
            seqs.push(seq);
        })
        .unwrap();
        if seqs.len() < n {
            dev.wait(Some(Duration::from_millis(10))).unwrap();
        }
    }
    seqs
}

#[test]
fn frames_cross_and_kernel_traffic_still_flows() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts::default());
    let mut da = open_in(&a, config(0)).unwrap();
    let mut db = open_in(&b, config(0)).unwrap();
    // A single-queue veth: copy mode, generic XDP (faster there than veth's native mode).
    assert!(
        matches!(da.info().backend, Backend::AfXdp { zero_copy: false, native: false, .. }),
        "{:?}",
        da.info().backend
    );
    let dst = db.info().mac;
    for seq in 0..200 {
        send(&mut da, dst, 64 + (seq as usize % 1400), seq);
    }
    da.sink().flush().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < 200 && Instant::now() < deadline {
        da.sink().flush().unwrap();
        db.receive(64, &mut |f, _| got.push(u32::from_be_bytes(f.head()[14..18].try_into().unwrap()))).unwrap();
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    // ARP and ICMP are not ours: the filter passes them to the kernel.
    a.exec("ping", &["-c2", "-i0.2", "-W2", "10.77.0.2"]).unwrap();
    let counters = db.filter().counters();
    assert!(counters.matched >= 200 && counters.passed >= 2, "{counters:?}");
    assert_eq!(db.stats().rx_frames, 200);
}

#[test]
fn fill_ring_deepens_after_bursts_overflow_it() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts::default());
    let mut da = open_in(&a, config(0)).unwrap();
    let mut db = open_in(&b, AfXdpConfig { frame_count: 4096, ring_size: 2048, ..config(0) }).unwrap();
    let dst = db.info().mac;
    // Bursts of 1500 frames while the receiver does not poll: the first
    // overflows the shallow fill ring; the ring deepens; a later burst fits.
    let mut counts = Vec::new();
    for round in 0..4u32 {
        for seq in 0..1500 {
            send(&mut da, dst, 64, round * 10_000 + seq);
        }
        da.sink().flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut n = 0;
        while db.receive(64, &mut |_, _| n += 1).unwrap() > 0 {}
        counts.push(n);
    }
    assert!(counts[0] < 1500, "the first burst overflows a fresh fill ring: {counts:?}");
    assert_eq!(*counts.last().unwrap(), 1500, "a later burst arrives whole: {counts:?}");
    assert!(db.stats().fill_ring_empty > 0);
}

#[test]
fn echo_answers_inside_the_receive_callback() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts::default());
    let mut da = open_in(&a, config(0)).unwrap();
    let mut db = open_in(&b, config(0)).unwrap();
    let dst = db.info().mac;
    let echo = std::thread::spawn(move || {
        let mut echoed = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while echoed < 100 && Instant::now() < deadline {
            db.receive(64, &mut |f, sink| {
                let frame = f.to_vec();
                sink.transmit(frame.len(), &mut |out| {
                    out.copy_from_slice(&frame);
                    out[0..6].copy_from_slice(&frame[6..12]);
                    out[6..12].copy_from_slice(&frame[0..6]);
                })
                .unwrap();
                echoed += 1;
            })
            .unwrap();
            db.sink().flush().unwrap();
        }
        echoed
    });
    let mut back = Vec::new();
    for seq in 0..100 {
        send(&mut da, dst, 128, seq);
        da.sink().flush().unwrap();
        back.extend(recv(&mut da, 1, 128));
    }
    assert_eq!(echo.join().unwrap(), 100);
    assert_eq!(back, (0..100).collect::<Vec<_>>());
}

#[test]
fn two_queues_in_one_process_share_the_filter() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts { mtu: 1500, queues: 2 });
    let mut a0 = open_in(&a, config(0)).unwrap();
    let mut a1 = open_in(&a, config(1)).unwrap();
    let mut b0 = open_in(&b, config(0)).unwrap();
    let mut b1 = open_in(&b, config(1)).unwrap();
    assert!(std::sync::Arc::ptr_eq(b0.filter(), b1.filter()), "one program per interface");
    // A frame sent on queue q arrives on the peer's queue q (veth keeps the
    // queue mapping).
    let dst = b0.info().mac;
    for seq in 0..20 {
        send(&mut a0, dst, 100, seq);
        send(&mut a1, dst, 100, 1000 + seq);
    }
    a0.sink().flush().unwrap();
    a1.sink().flush().unwrap();
    let q0 = recv(&mut b0, 20, 100);
    let q1 = recv(&mut b1, 20, 100);
    assert_eq!(q0, (0..20).collect::<Vec<_>>());
    assert_eq!(q1, (1000..1020).collect::<Vec<_>>());
}

#[test]
fn jumbo_frames_cross_as_multi_buffer() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts { mtu: 9000, queues: 1 });
    let cfg = AfXdpConfig { multi_buffer: Some(true), ..config(0) };
    let mut da = open_in(&a, cfg.clone()).unwrap();
    let mut db = open_in(&b, cfg).unwrap();
    assert_eq!(da.info().max_frame, 9014);
    let dst = db.info().mac;
    for (seq, len) in [(0u32, 9014usize), (1, 3841), (2, 64), (3, 7000)] {
        send(&mut da, dst, len, seq);
        da.sink().flush().unwrap();
        assert_eq!(recv(&mut db, 1, len), vec![seq]);
    }
}

#[test]
fn an_mtu_9000_interface_gets_multi_buffer_without_being_asked() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts { mtu: 9000, queues: 1 });
    // No multi_buffer setting at all: what a new user does.
    let mut da = open_in(&a, config(0)).unwrap();
    let mut db = open_in(&b, config(0)).unwrap();
    assert!(matches!(db.info().backend, Backend::AfXdp { multi_buffer: true, .. }), "{}", db.info().backend);
    assert_eq!(da.info().max_frame, 9014);
    let dst = db.info().mac;
    send(&mut da, dst, 9014, 7);
    da.sink().flush().unwrap();
    assert_eq!(recv(&mut db, 1, 9014), vec![7]);
    // Turned off explicitly, the same MTU is refused with a fix named.
    let e = open_in(&a, AfXdpConfig { multi_buffer: Some(false), queue: 0, ..config(0) }).unwrap_err();
    assert!(e.to_string().contains("multi-buffer"), "{e}");
}

#[test]
fn a_veth_at_mtu_1500_gets_multi_buffer_for_its_peers_64k_segments() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts::default());
    // A kernel peer on a veth hands over TSO segments of up to 64 KiB whole:
    // only a multi-buffer socket takes them. Frames sent stay MTU-sized.
    let da = open_in(&a, config(0)).unwrap();
    assert!(matches!(da.info().backend, Backend::AfXdp { multi_buffer: true, .. }), "{}", da.info().backend);
    assert_eq!(da.info().max_frame, 1514);
    // The other end (a socket's queue is released asynchronously after a
    // close, so the same queue may still be busy).
    let off = open_in(&b, AfXdpConfig { multi_buffer: Some(false), ..config(0) }).unwrap();
    assert!(matches!(off.info().backend, Backend::AfXdp { multi_buffer: false, .. }), "{}", off.info().backend);
}

#[test]
fn native_mode_can_be_forced_and_carries_frames() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts::default());
    let cfg = AfXdpConfig { xdp_mode: xsock_nic::xdp::XdpMode::Native, ..config(0) };
    let mut da = open_in(&a, cfg.clone()).unwrap();
    let mut db = open_in(&b, cfg).unwrap();
    assert!(db.filter().is_native());
    let dst = db.info().mac;
    for seq in 0..10 {
        send(&mut da, dst, 300, seq);
    }
    da.sink().flush().unwrap();
    assert_eq!(recv(&mut db, 10, 300), (0..10).collect::<Vec<_>>());
}

#[test]
fn auto_backend_picks_af_xdp_here() {
    require_root!();
    let (_bed, a, _b) = pair(LinkOpts::default());
    let dev = a.run(|| xsock_nic::open(&config(0), BackendChoice::Auto)).unwrap().unwrap();
    assert!(matches!(dev.info().backend, Backend::AfXdp { .. }));
}

#[test]
fn af_packet_backend_carries_our_frames_only() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts::default());
    let mut da = a.run(|| xsock_nic::open(&config(0), BackendChoice::AfPacket)).unwrap().unwrap();
    let mut db = b.run(|| xsock_nic::open(&config(0), BackendChoice::AfPacket)).unwrap().unwrap();
    assert_eq!(db.info().backend, Backend::AfPacket);
    // Kernel chatter (ICMP, ARP) must not reach us through the socket filter.
    a.exec("ping", &["-c2", "-i0.2", "-W2", "10.77.0.2"]).unwrap();
    let dst = db.info().mac;
    for seq in 0..50 {
        send(&mut *da, dst, 200, seq);
    }
    assert_eq!(recv(&mut *db, 50, 200), (0..50).collect::<Vec<_>>());
    // And our own transmissions never loop back to us.
    assert!(recv(&mut *da, 1, 200).is_empty());
}

#[test]
fn ipv4_rules_steer_chosen_ports_at_run_time() {
    require_root!();
    use std::net::{Ipv4Addr, UdpSocket};
    use xsock_nic::xdp::Ipv4Rule;
    let (_bed, a, b) = pair(LinkOpts::default());
    let mut db = open_in(&b, config(0)).unwrap();
    // The kernel's own socket on port 5001 in b must keep working.
    let kernel_sock = b.run(|| UdpSocket::bind("10.77.0.2:5001").unwrap()).unwrap();
    kernel_sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let send_udp = |port: u16, tag: u8| {
        a.run(move || UdpSocket::bind("10.77.0.1:0").unwrap().send_to(&[tag; 32], ("10.77.0.2", port)).unwrap())
            .unwrap();
    };
    let rule = Ipv4Rule { addr: Ipv4Addr::new(10, 77, 0, 2), proto: 17, port: 5000 };
    db.filter().add_ipv4_rule(rule).unwrap();
    send_udp(5000, 1);
    send_udp(5001, 2);
    // Port 5000 reaches the AF_XDP socket as a whole IPv4 frame...
    let mut ours = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while ours.is_empty() && Instant::now() < deadline {
        db.receive(8, &mut |f, _| ours.push(f.to_vec())).unwrap();
    }
    assert_eq!(ours.len(), 1, "the steered datagram");
    let f = &ours[0];
    assert_eq!(u16::from_be_bytes([f[12], f[13]]), 0x0800);
    assert_eq!(u16::from_be_bytes([f[36], f[37]]), 5000, "UDP destination port");
    assert_eq!(f[f.len() - 1], 1);
    // ...port 5001 still reaches the kernel's socket.
    let mut buf = [0u8; 64];
    let (n, _) = kernel_sock.recv_from(&mut buf).unwrap();
    assert_eq!((n, buf[0]), (32, 2));
    // Removing the rule hands port 5000 back to the kernel.
    db.filter().remove_ipv4_rule(rule);
    let k5000 = b.run(|| UdpSocket::bind("10.77.0.2:5000").unwrap()).unwrap();
    k5000.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    send_udp(5000, 3);
    let (n, _) = k5000.recv_from(&mut buf).unwrap();
    assert_eq!((n, buf[0]), (32, 3));
    let mut late = 0;
    db.receive(8, &mut |_, _| late += 1).unwrap();
    assert_eq!(late, 0);
}

#[test]
fn variable_length_frames_are_built_in_place() {
    require_root!();
    let (_bed, a, b) = pair(LinkOpts { mtu: 9000, queues: 1 });
    let cfg = AfXdpConfig { multi_buffer: Some(true), ..config(0) };
    let mut da = open_in(&a, cfg.clone()).unwrap();
    let mut db = open_in(&b, cfg).unwrap();
    let (src, dst) = (da.info().mac, db.info().mac);
    let build = |len: usize| {
        move |buf: &mut [u8]| {
            buf[0..6].copy_from_slice(&dst.0);
            buf[6..12].copy_from_slice(&src.0);
            buf[12..14].copy_from_slice(&ETHERTYPE_LOCAL_EXP2.to_be_bytes());
            buf[14..18].copy_from_slice(&(len as u32).to_be_bytes());
            len
        }
    };
    // Nothing built: the buffer goes back and nothing is sent.
    assert_eq!(da.sink().transmit_with(9014, &mut |_| 0), Ok(0));
    // A short frame in a jumbo-sized reservation, and a long one scattered.
    for len in [100usize, 7000] {
        assert_eq!(da.sink().transmit_with(9014, &mut build(len)), Ok(len));
    }
    da.sink().flush().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < 2 && Instant::now() < deadline {
        db.receive(8, &mut |f, _| got.push(f.len())).unwrap();
    }
    assert_eq!(got, vec![100, 7000]);
}
