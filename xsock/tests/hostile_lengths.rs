//! Regression: `recv_message` on the kernel and TCP-mode paths resized its
//! buffer to the 8-byte length the peer sent, so any plain TCP client of a
//! `Listener` could make it allocate 2^64 bytes (issue 11). Now a length
//! over the stream's limit is refused before any allocation, the
//! connection is reset, and the process goes on serving.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    thread,
    time::{Duration, Instant},
};

use xsock::{ConnectOptions, Error, ListenOptions, Listener, Mode, PollMode, Received, Runtime, Stream, Transport};
use xsock_nic::{
    FrameDevice,
    mem::{MemConfig, MemDevice},
};
use xsock_reliable_link::LocalAddr;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// The input that broke it: a length of 2^64 - 1.
const HOSTILE: [u8; 8] = [0xff; 8];

fn mem_pair() -> (Runtime, Runtime) {
    let (a, b) = MemDevice::pair(&MemConfig { inbox_frames: 1 << 14, ..Default::default() }).unwrap();
    let (ma, mb) = (a.info().mac, b.info().mac);
    let rt = |dev: MemDevice, ip, peer, mac| {
        Runtime::builder()
            .devices(vec![Box::new(dev) as Box<dyn FrameDevice>], vec![LocalAddr { ip, prefix: 24 }])
            .poll_mode(PollMode::Adaptive { spin: Duration::from_micros(50) })
            .tcp_neighbors(HashMap::from([(peer, mac)]))
            .build()
            .unwrap()
    };
    (rt(a, A, B, mb), rt(b, B, A, ma))
}

#[test]
fn a_plain_tcp_client_announcing_2_pow_64_bytes_is_reset_and_the_server_goes_on() {
    let (rt, _) = mem_pair();
    let l = Listener::bind_with(
        &rt,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7310),
        ListenOptions { transport: Transport::Kernel, mode: Mode::Message },
    )
    .unwrap();
    let hostile = thread::spawn(|| {
        let mut c = TcpStream::connect("127.0.0.1:7310").unwrap();
        c.write_all(&HOSTILE).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        // The server resets: the client reads an error (or, at worst, the end).
        c.read(&mut buf)
    });
    let mut s = l.accept().unwrap();
    let mut out = Vec::new();
    let e = s.recv_message(&mut out).unwrap_err();
    assert!(matches!(e, Error::MessageTooLarge { len: u64::MAX, .. }), "{e}");
    assert!(out.capacity() < 1 << 20, "nothing near the announced length was allocated");
    // Every later call says why the stream is dead.
    assert!(matches!(s.recv(&mut [0u8; 4]), Err(Error::ConnectionReset(_))));
    match hostile.join().unwrap() {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("the hostile client read {n} bytes instead of a reset"),
    }
    // The process is unharmed: the same listener serves a well-behaved client.
    let good = thread::spawn(|| {
        let mut c = TcpStream::connect("127.0.0.1:7310").unwrap();
        c.write_all(&5u64.to_le_bytes()).unwrap();
        c.write_all(b"hello").unwrap();
    });
    let mut s = l.accept().unwrap();
    assert_eq!(s.recv_message(&mut out).unwrap(), Received::Message);
    assert_eq!(out, b"hello");
    good.join().unwrap();
}

#[test]
fn a_tcp_mode_peer_announcing_2_pow_64_bytes_is_reset() {
    let (a, b) = mem_pair();
    let l = Listener::bind_with(
        &b,
        SocketAddrV4::new(B, 7311),
        ListenOptions { transport: Transport::Tcp, mode: Mode::Message },
    )
    .unwrap();
    let opts = ConnectOptions { transport: Transport::Tcp, mode: Mode::Stream, ..Default::default() };
    let mut c = Stream::connect_with(&a, SocketAddrV4::new(B, 7311), opts).unwrap();
    c.send(&HOSTILE).unwrap();
    let mut s = l.accept().unwrap();
    let mut out = Vec::new();
    let e = s.recv_message(&mut out).unwrap_err();
    assert!(matches!(e, Error::MessageTooLarge { len: u64::MAX, .. }), "{e}");
    // The client learns of the reset.
    let t0 = Instant::now();
    let err = loop {
        match c.try_recv(&mut [0u8; 16]) {
            Err(Error::WouldBlock) if t0.elapsed() < Duration::from_secs(5) => thread::sleep(Duration::from_millis(5)),
            other => break other,
        }
    };
    assert!(matches!(err, Err(Error::ConnectionReset(_)) | Err(Error::Closed)), "{err:?}");
}

#[test]
fn a_link_message_over_the_limit_resets_the_connection() {
    let (a, b) = mem_pair();
    let l = Listener::bind_with(
        &b,
        SocketAddrV4::new(B, 7312),
        ListenOptions { transport: Transport::Link, mode: Mode::Message },
    )
    .unwrap();
    let opts = ConnectOptions { transport: Transport::Link, mode: Mode::Message, ..Default::default() };
    let mut c = Stream::connect_with(&a, SocketAddrV4::new(B, 7312), opts).unwrap();
    let mut s = l.accept().unwrap();
    s.set_max_message(100_000);
    let mut out = Vec::new();
    c.send_message(&[1u8; 100_000]).unwrap();
    assert_eq!(s.recv_message(&mut out).unwrap(), Received::Message, "the limit is inclusive");
    let big = thread::spawn(move || {
        let r = c.send_message(&vec![2u8; 300_000]);
        (c, r)
    });
    let e = s.recv_message(&mut out).unwrap_err();
    assert!(matches!(e, Error::MessageTooLarge { max: 100_000, .. }), "{e}");
    let (mut c, _) = big.join().unwrap();
    let t0 = Instant::now();
    let err = loop {
        match c.try_recv(&mut [0u8; 16]) {
            Err(Error::WouldBlock) if t0.elapsed() < Duration::from_secs(5) => thread::sleep(Duration::from_millis(5)),
            other => break other,
        }
    };
    assert!(matches!(err, Err(Error::ConnectionReset(_))), "{err:?}");
}
