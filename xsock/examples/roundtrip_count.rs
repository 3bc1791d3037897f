//! Instruction counts of a 64-byte reliable-link round trip, without the
//! kernel (two inline runtimes on in-memory ports, one thread): run under
//! callgrind, where timing noise cannot hide a change.
//!
//! `cargo build --release -p xsock --example roundtrip_count &&
//!  valgrind --tool=callgrind target/release/examples/roundtrip_count 20000`
//! (instructions per round trip = total / count, minus the setup run with 0).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use xsock::{ConnectOptions, Driving, Error, ListenOptions, Listener, PollMode, Runtime, Stream, Transport};
use xsock_nic::mem::{MemConfig, MemDevice};
use xsock_reliable_link::LocalAddr;

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

fn main() {
    let count: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let (da, db) = MemDevice::pair(&MemConfig::default()).unwrap();
    let rt = |dev: MemDevice, ip| {
        Runtime::builder()
            .devices(vec![Box::new(dev)], vec![LocalAddr { ip, prefix: 24 }])
            .driving(Driving::Inline)
            .poll_mode(PollMode::Busy)
            .build()
            .unwrap()
    };
    let (a, b) = (rt(da, Ipv4Addr::new(10, 0, 0, 1)), rt(db, Ipv4Addr::new(10, 0, 0, 2)));
    let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7000);
    let l = Listener::bind_with(&b, addr, ListenOptions { transport: Transport::Link, ..Default::default() }).unwrap();
    let t = std::thread::spawn(move || l.accept().unwrap());
    let opts = ConnectOptions { transport: Transport::Link, timeout: Duration::from_secs(5), ..Default::default() };
    let mut client = Stream::connect_with(&a, addr, opts).unwrap();
    let mut server = t.join().unwrap();
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    for _ in 0..count {
        until(&a, &b, || client.try_send(&msg));
        a.poll().unwrap();
        b.poll().unwrap();
        let n = until(&a, &b, || server.try_recv(&mut buf));
        until(&a, &b, || server.try_send(&buf[..n]));
        b.poll().unwrap();
        a.poll().unwrap();
        until(&a, &b, || client.try_recv(&mut buf));
    }
    // Close cleanly so the runtimes' drop does not linger (and count).
    client.abort();
    server.abort();
    for _ in 0..10 {
        a.poll().unwrap();
        b.poll().unwrap();
    }
    println!("{count} round trips");
}
