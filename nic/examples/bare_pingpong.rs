//! A bare AF_XDP frame ping-pong on the nic layer alone (no datapath, no
//! handlers): the floor the datapath's `rawping` is compared against.
//!
//! echo:   bare_pingpong IFACE echo
//! client: bare_pingpong IFACE PEER_MAC [COUNT]

use std::time::Instant;

use xsock_nic::{
    FrameDevice, MacAddr,
    xdp::{AfXdpConfig, AfXdpDevice},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let frames: u32 = std::env::var("FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096);
    let cfg = AfXdpConfig {
        ethertypes: vec![xsock_nic::ETHERTYPE_LOCAL_EXP2],
        frame_count: frames,
        ring_size: (frames / 2).max(64),
        xdp_mode: match std::env::var("XDP_MODE").as_deref() {
            Ok("generic") => xsock_nic::xdp::XdpMode::Generic,
            _ => xsock_nic::xdp::XdpMode::Auto,
        },
        ..AfXdpConfig::new(&args[1])
    };
    let mut dev = AfXdpDevice::open(&cfg).expect("open");
    if std::env::var("PROBE_BATCH").is_ok() {
        use std::os::fd::AsRawFd;
        let fd = dev.readiness_fd().as_raw_fd();
        for opt in 9..12 {
            let r = xsock_nic::sys::set_sockopt_int(fd, libc_sol_xdp(), opt, 32);
            eprintln!("setsockopt(SOL_XDP, {opt}, 32) = {r:?}");
        }
        return;
    }
    if args[2] == "echo" {
        loop {
            dev.receive(64, &mut |f, sink| {
                let v = f.to_vec();
                let _ = sink.transmit(v.len(), &mut |o| {
                    o.copy_from_slice(&v);
                    o[0..6].copy_from_slice(&v[6..12]);
                    o[6..12].copy_from_slice(&v[0..6]);
                });
            })
            .unwrap();
            dev.sink().flush().unwrap();
        }
    }
    let peer: MacAddr = args[2].parse().unwrap();
    let count: usize = args.get(3).map_or(20_000, |c| c.parse().unwrap());
    let me = dev.info().mac;
    let mut rtts = Vec::with_capacity(count);
    let mut send_ns = Vec::with_capacity(count);
    for i in 0..count + 1000 {
        let t = Instant::now();
        dev.sink()
            .transmit(64, &mut |o| {
                o[0..6].copy_from_slice(&peer.0);
                o[6..12].copy_from_slice(&me.0);
                o[12..14].copy_from_slice(&xsock_nic::ETHERTYPE_LOCAL_EXP2.to_be_bytes());
            })
            .unwrap();
        let t1 = Instant::now();
        dev.sink().flush().unwrap();
        let t2 = Instant::now();
        if i >= 1000 {
            send_ns.push((t2 - t1).as_nanos() as u64);
        }
        let mut got = false;
        while !got {
            dev.receive(64, &mut |_, _| got = true).unwrap();
        }
        if i >= 1000 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    rtts.sort();
    send_ns.sort();
    println!(
        "bare p50 {} ns p99 {} ns (flush/sendto p50 {} ns)",
        rtts[count / 2],
        rtts[count * 99 / 100],
        send_ns[count / 2]
    );
}

fn libc_sol_xdp() -> i32 {
    283
}
