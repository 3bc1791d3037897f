//! The userspace cost of a round trip, without the kernel: two runtimes on
//! in-memory ports, driven by hand on one thread. A 64-byte reliable-link
//! echo (both stacks, both directions) against a raw diagnostic ping-pong
//! on the same devices (the datapath alone). Run: `cargo bench -p xsock`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use xsock::{
    ConnectOptions, Datapath, Driving, Error, ListenOptions, Listener, PollMode, Runtime, Stream, Transport,
    diag::{
        self,
        ping::{EchoHandler, PingClient},
    },
};
use xsock_nic::{
    FrameDevice,
    mem::{MemConfig, MemDevice},
};
use xsock_reliable_link::LocalAddr;

fn runtimes() -> (Runtime, Runtime) {
    let (a, b) = MemDevice::pair(&MemConfig::default()).unwrap();
    let rt = |dev: MemDevice, ip| {
        Runtime::builder()
            .devices(vec![Box::new(dev)], vec![LocalAddr { ip, prefix: 24 }])
            .driving(Driving::Inline)
            .poll_mode(PollMode::Busy)
            .build()
            .unwrap()
    };
    (rt(a, Ipv4Addr::new(10, 0, 0, 1)), rt(b, Ipv4Addr::new(10, 0, 0, 2)))
}

fn until<T>(a: &Runtime, b: &Runtime, mut f: impl FnMut() -> Result<T, Error>) -> T {
    loop {
        match f() {
            Ok(v) => return v,
            Err(Error::WouldBlock) => {
                a.poll().unwrap();
                b.poll().unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn link_round_trip(c: &mut Criterion) {
    let (a, b) = runtimes();
    let server_addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7000);
    let l = Listener::bind_with(&b, server_addr, ListenOptions { transport: Transport::Link, ..Default::default() })
        .unwrap();
    let b2 = b.clone();
    let t = std::thread::spawn(move || {
        // Serve the accept while the client connects (blocking calls drive b).
        l.accept().unwrap()
    });
    let opts = ConnectOptions { transport: Transport::Link, timeout: Duration::from_secs(5), ..Default::default() };
    let mut client = Stream::connect_with(&a, server_addr, opts).unwrap();
    let mut server = t.join().unwrap();
    drop(b2);
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    c.bench_function("reliable-link 64 B round trip, in memory (both stacks)", |bench| {
        bench.iter(|| {
            until(&a, &b, || client.try_send(&msg));
            a.poll().unwrap();
            b.poll().unwrap();
            let n = until(&a, &b, || server.try_recv(&mut buf));
            until(&a, &b, || server.try_send(&buf[..n]));
            b.poll().unwrap();
            a.poll().unwrap();
            until(&a, &b, || client.try_recv(&mut buf))
        })
    });
}

fn raw_round_trip(c: &mut Criterion) {
    let (da, db) = MemDevice::pair(&MemConfig::default()).unwrap();
    let peer = db.info().mac;
    let mut a = Datapath::from_devices(vec![Box::new(da)], PollMode::Busy).unwrap();
    let mut b = Datapath::from_devices(vec![Box::new(db)], PollMode::Busy).unwrap();
    b.register(diag::ETHERTYPE, Box::new(EchoHandler::default())).unwrap();
    let id = a.register(diag::ETHERTYPE, Box::new(PingClient::new(peer, 64).unwrap())).unwrap();
    let mut seq = 0;
    c.bench_function("raw diag 64 B round trip, in memory (datapath only)", |bench| {
        bench.iter(|| {
            seq += 1;
            a.with_handler(id, 0, |p: &mut PingClient, cx| p.send(cx, seq)).unwrap().unwrap();
            a.flush().unwrap();
            b.poll().unwrap();
            a.poll().unwrap();
            assert_eq!(a.handler_mut::<PingClient>(id).unwrap().reply().map(|r| r.0), Some(seq));
        })
    });
}

criterion_group!(benches, raw_round_trip, link_round_trip);
criterion_main!(benches);
