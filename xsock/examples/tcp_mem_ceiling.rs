//! The TCP mode's own ceiling: two runtimes on an in-memory wire (no kernel,
//! no NIC), one stream of BYTES one way, smoltcp on both ends. Prints Gbit/s
//! for each delayed-ACK setting and buffer size, beside reliable-link on the
//! same wire, so the per-byte cost of the TCP mode is visible on its own.
//!
//! usage: cargo run --release -p xsock --example tcp_mem_ceiling [MiB]

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use xsock::{ConnectOptions, ListenOptions, Listener, PollMode, Runtime, Stream, TcpConfig, Transport};
use xsock_nic::{
    FrameDevice,
    mem::{MemConfig, MemDevice},
};
use xsock_reliable_link::LocalAddr;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn run(transport: Transport, cfg: TcpConfig, bytes: usize) -> f64 {
    let (a, b) = MemDevice::pair(&MemConfig { inbox_frames: 1 << 14, ..Default::default() }).unwrap();
    let (ma, mb) = (a.info().mac, b.info().mac);
    let rt = |d: MemDevice, ip, n: HashMap<Ipv4Addr, xsock_nic::MacAddr>| {
        Runtime::builder()
            .devices(vec![Box::new(d)], vec![LocalAddr { ip, prefix: 24 }])
            .poll_mode(PollMode::Busy)
            .send_buffer(cfg.send_buffer)
            .recv_buffer(cfg.recv_buffer)
            .tcp(cfg.clone())
            .tcp_neighbors(n)
            .build()
            .unwrap()
    };
    let ra = rt(a, A, HashMap::from([(B, mb)]));
    let rb = rt(b, B, HashMap::from([(A, ma)]));
    let l = Listener::bind_with(&rb, SocketAddrV4::new(B, 9000), ListenOptions { transport, ..Default::default() })
        .unwrap();
    let rx = thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        let t = Instant::now();
        loop {
            let k = s.recv(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        (n, t.elapsed())
    });
    let mut s =
        Stream::connect_with(&ra, SocketAddrV4::new(B, 9000), ConnectOptions { transport, ..Default::default() })
            .unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len());
        s.send(&chunk[..k]).unwrap();
        left -= k;
    }
    s.close(Duration::from_secs(30)).unwrap();
    let (n, took) = rx.join().unwrap();
    assert_eq!(n, bytes);
    n as f64 * 8.0 / took.as_secs_f64() / 1e9
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let bytes = mib << 20;
    println!("one stream of {mib} MiB over an in-memory wire, both ends on this machine (busy-poll threads)");
    for (label, delay, buf) in [
        ("TCP mode, ACK at once, 4 MiB buffers", None, 4usize << 20),
        ("TCP mode, delayed ACK 10 ms, 4 MiB buffers", Some(Duration::from_millis(10)), 4 << 20),
        ("TCP mode, ACK at once, 64 MiB buffers", None, 64 << 20),
        ("TCP mode, delayed ACK 10 ms, 64 MiB buffers", Some(Duration::from_millis(10)), 64 << 20),
    ] {
        let cfg = TcpConfig { send_buffer: buf, recv_buffer: buf, ack_delay: delay, ..Default::default() };
        println!("{label}: {:.2} Gbit/s", run(Transport::Tcp, cfg, bytes));
    }
    let cfg = TcpConfig { send_buffer: 4 << 20, recv_buffer: 4 << 20, ..Default::default() };
    println!("reliable-link, 4 MiB buffers: {:.2} Gbit/s", run(Transport::Link, cfg, bytes));
}
