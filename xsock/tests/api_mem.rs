//! The socket API over in-memory ports: two runtimes on one simulated
//! segment, each driven on its own thread or inline.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::Duration,
};

use xsock::{
    ConnectOptions, Driving, Error, ListenOptions, Listener, Mode, Path, PollMode, Received, Runtime, Stream, Transport,
};
use xsock_nic::mem::{MemConfig, MemDevice};
use xsock_reliable_link::LocalAddr;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn pair(driving: Driving, poll: PollMode) -> (Runtime, Runtime) {
    let (a, b) = MemDevice::pair(&MemConfig { inbox_frames: 1 << 16, ..Default::default() }).unwrap();
    let rt = |dev: MemDevice, ip| {
        Runtime::builder()
            .devices(vec![Box::new(dev)], vec![LocalAddr { ip, prefix: 24 }])
            .driving(driving)
            .poll_mode(poll)
            .send_buffer(256 << 10)
            .recv_buffer(256 << 10)
            .build()
            .unwrap()
    };
    (rt(a, A), rt(b, B))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn echo_server(rt: Runtime, port: u16, mode: Mode) -> thread::JoinHandle<Result<u64, Error>> {
    let l = Listener::bind_with(&rt, SocketAddrV4::new(B, port), ListenOptions { transport: Transport::Link, mode })
        .unwrap();
    thread::spawn(move || {
        let mut s = l.accept()?;
        assert_eq!(s.path(), Path::Link);
        let mut total = 0u64;
        match mode {
            Mode::Message => {
                let mut m = Vec::new();
                while s.recv_message(&mut m)?.is_message() {
                    total += m.len() as u64;
                    s.send_message(&m)?;
                }
            }
            Mode::Stream => {
                let mut buf = vec![0u8; 100_000];
                loop {
                    let n = s.recv(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    s.send(&buf[..n])?;
                }
            }
        }
        s.close(Duration::from_secs(5))?;
        Ok(total)
    })
}

fn round_trips(driving: Driving, poll: PollMode) {
    let (a, b) = pair(driving, poll);
    let server = echo_server(b, 7000, Mode::Message);
    let opts = ConnectOptions { transport: Transport::Link, mode: Mode::Message, ..Default::default() };
    let mut s = Stream::connect_with(&a, SocketAddrV4::new(B, 7000), opts).unwrap();
    assert_eq!(s.path(), Path::Link);
    assert_eq!(s.peer_addr(), SocketAddrV4::new(B, 7000));
    assert_eq!(s.local_addr().ip(), &A);
    let mut back = Vec::new();
    let mut sent = 0;
    for (i, len) in [1usize, 64, 1460, 1461, 65_536, 1 << 20, 3, (1 << 20) + 17].into_iter().enumerate() {
        let m = pattern(len, i as u8);
        s.send_message(&m).unwrap();
        assert!(s.recv_message(&mut back).unwrap().is_message());
        assert!(back == m, "message {i} of {len} bytes came back intact");
        sent += len as u64;
    }
    s.shutdown_write().unwrap();
    assert_eq!(s.recv_message(&mut back).unwrap(), Received::End, "the server's end of stream");
    assert_eq!(server.join().unwrap().unwrap(), sent);
}

#[test]
fn messages_round_trip_with_a_datapath_thread() {
    round_trips(Driving::Thread, PollMode::default());
}

#[test]
fn messages_round_trip_driven_inline() {
    round_trips(Driving::Inline, PollMode::Busy);
}

#[test]
fn messages_round_trip_with_a_sleeping_datapath() {
    round_trips(Driving::Thread, PollMode::Sleep);
}

#[test]
fn a_byte_stream_through_read_and_write() {
    let (a, b) = pair(Driving::Thread, PollMode::default());
    let server = echo_server(b, 7001, Mode::Stream);
    let mut s = Stream::connect(&a, SocketAddrV4::new(B, 7001)).unwrap();
    assert_eq!(s.path(), Path::Link, "an xsock peer on the segment is reached over reliable-link");
    let data = pattern(3 << 20, 9);
    let mut got = Vec::new();
    thread::scope(|scope| {
        let mut reader = s.try_clone().unwrap();
        let r = scope.spawn(move || {
            let mut buf = vec![0u8; 50_000];
            let mut got = Vec::new();
            while got.len() < 3 << 20 {
                let n = reader.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        for chunk in data.chunks(100_000) {
            s.write_all(chunk).unwrap();
        }
        got = r.join().unwrap();
    });
    assert!(got == data);
    s.shutdown_write().unwrap();
    let mut rest = [0u8; 10];
    assert_eq!(s.read(&mut rest).unwrap(), 0);
    assert_eq!(server.join().unwrap().unwrap(), 3 << 20);
}

#[test]
fn non_blocking_calls_say_would_block() {
    let (a, b) = pair(Driving::Inline, PollMode::Busy);
    let l = Listener::bind_with(
        &b,
        SocketAddrV4::new(B, 7002),
        ListenOptions { transport: Transport::Link, ..Default::default() },
    )
    .unwrap();
    assert!(matches!(l.try_accept(), Err(Error::WouldBlock)));
    let t = thread::spawn(move || Stream::connect(&a, SocketAddrV4::new(B, 7002)).map(|s| (a, s)));
    let mut server = loop {
        b.poll().unwrap();
        match l.try_accept() {
            Ok(s) => break s,
            Err(Error::WouldBlock) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let (a, mut client) = t.join().unwrap().unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(server.try_recv(&mut buf), Err(Error::WouldBlock)));
    assert_eq!(client.try_send(b"hello").unwrap(), 5);
    // Inline style: drive both runtimes by hand until the bytes arrive.
    let n = loop {
        a.poll().unwrap();
        b.poll().unwrap();
        match server.try_recv(&mut buf) {
            Ok(n) => break n,
            Err(Error::WouldBlock) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(&buf[..n], b"hello");
}

#[test]
fn a_port_nobody_listens_on_is_refused_clearly() {
    let (a, _b) = pair(Driving::Thread, PollMode::default());
    let opts = ConnectOptions { transport: Transport::Link, ..Default::default() };
    let e = Stream::connect_with(&a, SocketAddrV4::new(B, 7999), opts).unwrap_err();
    assert!(matches!(e, Error::ConnectionRefused(_)), "{e:?}");
    assert!(e.to_string().contains("nothing listens there"), "{e}");
}

#[test]
fn an_address_without_an_xsock_peer_is_named_when_link_is_forced() {
    let (a, _b) = pair(Driving::Thread, PollMode::default());
    let opts = ConnectOptions { transport: Transport::Link, timeout: Duration::from_secs(2), ..Default::default() };
    let e = Stream::connect_with(&a, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 7000), opts).unwrap_err();
    assert!(matches!(e, Error::NotXsockPeer(ip) if ip == Ipv4Addr::new(10, 0, 0, 77)), "{e:?}");
}

#[test]
fn off_segment_peers_go_over_kernel_tcp() {
    let (a, _b) = pair(Driving::Thread, PollMode::default());
    // 127.0.0.1 is not on the segment: the kernel path, to a plain TCP server.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let (mut c, _) = plain.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    let mut s = Stream::connect(&a, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).unwrap();
    assert_eq!(s.path(), Path::Kernel);
    s.send(b"plain").unwrap();
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < 5 {
        got += s.recv(&mut buf[got..]).unwrap();
    }
    assert_eq!(&buf, b"plain");
    t.join().unwrap();
}

#[test]
fn messages_over_kernel_tcp_keep_their_boundaries() {
    let (a, _b) = pair(Driving::Thread, PollMode::default());
    let l = Listener::bind_with(
        &a,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7010),
        ListenOptions { transport: Transport::Kernel, mode: Mode::Message },
    )
    .unwrap();
    let a2 = a.clone();
    let t = thread::spawn(move || {
        let opts = ConnectOptions { transport: Transport::Kernel, mode: Mode::Message, ..Default::default() };
        let mut s = Stream::connect_with(&a2, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7010), opts).unwrap();
        for len in [1usize, 100, 70_000] {
            s.send_message(&pattern(len, 1)).unwrap();
        }
    });
    let mut s = l.accept().unwrap();
    assert_eq!(s.path(), Path::Kernel);
    let mut m = Vec::new();
    for len in [1usize, 100, 70_000] {
        assert!(s.recv_message(&mut m).unwrap().is_message());
        assert_eq!(m, pattern(len, 1));
    }
    assert_eq!(s.recv_message(&mut m).unwrap(), Received::End);
    t.join().unwrap();
}

#[test]
fn the_peer_vanishing_is_an_error_not_a_hang() {
    let (a, b) = MemDevice::pair(&MemConfig::default()).unwrap();
    let a = Runtime::builder()
        .devices(vec![Box::new(a)], vec![LocalAddr { ip: A, prefix: 24 }])
        .dead_after(Duration::from_millis(500))
        .build()
        .unwrap();
    let b_rt = Runtime::builder().devices(vec![Box::new(b)], vec![LocalAddr { ip: B, prefix: 24 }]).build().unwrap();
    let link_only = ListenOptions { transport: Transport::Link, ..Default::default() };
    let l = Listener::bind_with(&b_rt, SocketAddrV4::new(B, 7020), link_only).unwrap();
    let mut s = Stream::connect(&a, SocketAddrV4::new(B, 7020)).unwrap();
    let _server_side = l.accept().unwrap();
    // B's datapath and everything on it goes away.
    drop(_server_side);
    drop(l);
    drop(b_rt);
    let t0 = std::time::Instant::now();
    let err = loop {
        if let Err(e) = s.send(&[0u8; 10_000]) {
            break e;
        }
        let mut buf = [0u8; 10];
        if let Err(e) = s.try_recv(&mut buf)
            && !matches!(e, Error::WouldBlock)
        {
            break e;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no error after 10 s");
    };
    assert!(matches!(err, Error::TimedOut(_) | Error::ConnectionReset(_)), "{err:?}");
}

#[test]
fn a_one_gib_message_arrives_whole() {
    // Jumbo in-memory frames keep the frame count (and so a debug build's
    // time) down; the message still crosses ~16,500 frames and hundreds of
    // credit windows.
    let (a, b) = MemDevice::pair(&MemConfig { mtu: 65_000, inbox_frames: 1 << 12 }).unwrap();
    let rt = |dev: MemDevice, ip| {
        Runtime::builder()
            .devices(vec![Box::new(dev)], vec![LocalAddr { ip, prefix: 24 }])
            .send_buffer(8 << 20)
            .recv_buffer(8 << 20)
            .build()
            .unwrap()
    };
    let (a, b) = (rt(a, A), rt(b, B));
    // 1 GiB built by repeating a block whose length is not a power of two, so
    // a misplaced chunk shows up as a mismatch.
    let block = pattern((1 << 20) + 7, 5);
    let mut message = Vec::with_capacity(1 << 30);
    while message.len() < 1 << 30 {
        let take = block.len().min((1 << 30) - message.len());
        message.extend_from_slice(&block[..take]);
    }
    let message = std::sync::Arc::new(message);
    let l = Listener::bind_with(
        &b,
        SocketAddrV4::new(B, 7100),
        ListenOptions { transport: Transport::Link, mode: Mode::Message },
    )
    .unwrap();
    let expected = message.clone();
    let server = thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut got = Vec::new();
        assert!(s.recv_message(&mut got).unwrap().is_message());
        let intact = got.len() == expected.len() && got == *expected;
        assert!(s.recv_message(&mut got).unwrap().is_message() && got == b"after");
        intact
    });
    let opts = ConnectOptions { transport: Transport::Link, mode: Mode::Message, ..Default::default() };
    let mut s = Stream::connect_with(&a, SocketAddrV4::new(B, 7100), opts).unwrap();
    s.send_message(&message).unwrap();
    s.send_message(b"after").unwrap();
    assert!(server.join().unwrap(), "the 1 GiB message arrived intact, as one message");
    s.close(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_runtime_that_falls_back_says_so_without_a_logger() {
    // A misspelled interface: no logger is installed here, so only the API
    // can tell the application (was: a silent fallback).
    let rt = Runtime::builder().interface("eht0").build().unwrap();
    match rt.link_status() {
        xsock::LinkStatus::KernelOnly { reason } => assert!(reason.contains("eht0"), "{reason}"),
        s => panic!("{s:?}"),
    }
    assert!(!rt.has_link());
    let rt = Runtime::builder().build().unwrap();
    assert!(matches!(rt.link_status(), xsock::LinkStatus::KernelOnly { reason } if reason.contains("no interface")));
    // require_link turns the fallback into an error naming the cause.
    let e = Runtime::builder().interface("eht0").require_link(true).build().unwrap_err();
    assert!(e.to_string().contains("eht0"), "{e}");
}
