//! Waiting on many streams at once (issue 11): non-blocking connects of
//! hundreds of streams, one poller for all of them (reliable-link and kernel
//! sockets mixed), per-connection wake-ups, listeners, and the poller as a
//! descriptor in the caller's own poll(2).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd,
    thread,
    time::{Duration, Instant},
};

use xsock::{
    ConnectOptions, Driving, Error, Events, Interest, ListenOptions, Listener, Mode, Path, PollMode, Poller, Runtime,
    Stream, Token, Transport,
};
use xsock_nic::mem::{MemConfig, MemDevice};
use xsock_reliable_link::LocalAddr;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn pair(driving: Driving, poll: PollMode) -> (Runtime, Runtime) {
    let (a, b) = MemDevice::pair(&MemConfig { inbox_frames: 1 << 16, ..Default::default() }).unwrap();
    let rt = |dev: MemDevice, ip, driving| {
        Runtime::builder()
            .devices(vec![Box::new(dev)], vec![LocalAddr { ip, prefix: 24 }])
            .driving(driving)
            .poll_mode(poll)
            .build()
            .unwrap()
    };
    (rt(a, A, driving), rt(b, B, Driving::Thread))
}

/// An echo server on B: one thread, one poller, any number of clients.
fn echo_server(rt: Runtime, port: u16) -> thread::JoinHandle<usize> {
    let l = Listener::bind_with(
        &rt,
        SocketAddrV4::new(B, port),
        ListenOptions { transport: Transport::Link, mode: Mode::Stream },
    )
    .unwrap();
    thread::spawn(move || {
        let mut poller = Poller::new(&rt).unwrap();
        poller.register_listener(&l, Token(0)).unwrap();
        let mut conns: HashMap<usize, Stream> = HashMap::new();
        let mut next = 1;
        let mut served = 0;
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            poller.poll(&mut events, Some(Duration::from_millis(200))).unwrap();
            for e in events.iter() {
                if e.token() == Token(0) {
                    while let Ok(s) = l.try_accept() {
                        poller.register(&s, Token(next), Interest::READABLE).unwrap();
                        conns.insert(next, s);
                        next += 1;
                    }
                    continue;
                }
                let t = e.token().0;
                let Some(s) = conns.get_mut(&t) else { continue };
                loop {
                    match s.try_recv(&mut buf) {
                        Ok(0) => {
                            poller.deregister(Token(t)).unwrap();
                            let s = conns.remove(&t).unwrap();
                            s.close(Duration::from_secs(5)).unwrap();
                            served += 1;
                            break;
                        }
                        Ok(n) => s.send(&buf[..n]).unwrap(),
                        Err(Error::WouldBlock) => break,
                        Err(e) => panic!("server stream {t}: {e}"),
                    }
                }
            }
            if served > 0 && conns.is_empty() && next > 1 && served == next - 1 && l.try_accept().is_err() {
                // Everyone who came has been served; wait a little for more.
                if poller.poll(&mut events, Some(Duration::from_millis(300))).unwrap() == 0 {
                    break;
                }
                for e in events.iter() {
                    if e.token() == Token(0) {
                        while let Ok(s) = l.try_accept() {
                            poller.register(&s, Token(next), Interest::READABLE).unwrap();
                            conns.insert(next, s);
                            next += 1;
                        }
                    }
                }
            }
        }
        served
    })
}

/// Opens `n` streams at once with connect_start (`spacing` apart, with no
/// poll in between), waits for them all with one poller, then sends and
/// reads back a message on each.
fn many_at_once(driving: Driving, n: usize, spacing: Duration) {
    let (a, b) = pair(driving, PollMode::default());
    let server = echo_server(b, 7400);
    let opts = ConnectOptions { transport: Transport::Link, ..Default::default() };
    let mut poller = Poller::new(&a).unwrap();
    let t0 = Instant::now();
    let mut streams: Vec<Stream> = (0..n)
        .map(|i| {
            thread::sleep(spacing);
            let s = Stream::connect_start(&a, SocketAddrV4::new(B, 7400), opts)
                .unwrap_or_else(|e| panic!("connect {i} after {:?}: {e}", t0.elapsed()));
            assert_eq!(s.path(), Path::Connecting, "connect_start returns before the handshake");
            poller.register(&s, Token(i), Interest::WRITABLE).unwrap();
            s
        })
        .collect();
    let started = t0.elapsed();
    let mut connected = vec![false; n];
    let mut events = Events::with_capacity(n);
    while connected.iter().any(|c| !c) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{} of {n} connected",
            connected.iter().filter(|c| **c).count()
        );
        poller.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        for e in events.iter() {
            let i = e.token().0;
            if !connected[i] && streams[i].poll_connect().unwrap() {
                connected[i] = true;
                assert_eq!(streams[i].path(), Path::Link);
                poller.reregister(e.token(), Interest::READABLE).unwrap();
                let msg = format!("hello from {i}");
                streams[i].send(msg.as_bytes()).unwrap();
                streams[i].shutdown_write().unwrap();
            }
        }
    }
    eprintln!("{n} connects started in {started:?}, all connected after {:?}", t0.elapsed());
    let mut back: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut done = vec![false; n];
    let mut buf = [0u8; 256];
    while done.iter().any(|d| !d) {
        assert!(t0.elapsed() < Duration::from_secs(30));
        poller.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        for e in events.iter() {
            let i = e.token().0;
            loop {
                match streams[i].try_recv(&mut buf) {
                    Ok(0) => {
                        done[i] = true;
                        poller.deregister(e.token()).unwrap();
                        break;
                    }
                    Ok(k) => back[i].extend_from_slice(&buf[..k]),
                    Err(Error::WouldBlock) => break,
                    Err(err) => panic!("stream {i}: {err}"),
                }
            }
        }
    }
    for (i, b) in back.iter().enumerate() {
        assert_eq!(b, format!("hello from {i}").as_bytes());
    }
    drop(streams);
    assert_eq!(server.join().unwrap(), n);
}

#[test]
fn three_hundred_connects_at_once_with_one_poller_and_a_datapath_thread() {
    many_at_once(Driving::Thread, 300, Duration::ZERO);
}

#[test]
fn a_hundred_connects_at_once_driven_inline_by_the_poller() {
    many_at_once(Driving::Inline, 100, Duration::ZERO);
}

/// An inline runtime's connects only kick the datapath (send, receive
/// nothing): discovery must not conclude "no xsock peer" from them while
/// the answer waits unread. 10,000 connects at once took longer than the
/// 63 ms that discovery asks for, and the last ones failed.
#[test]
fn connects_spread_over_longer_than_discovery_asks_all_find_the_peer() {
    many_at_once(Driving::Inline, 150, Duration::from_millis(1));
}

#[test]
fn a_frame_for_one_stream_wakes_only_that_stream() {
    let (a, b) = pair(Driving::Thread, PollMode::Sleep);
    let l = Listener::bind_with(
        &b,
        SocketAddrV4::new(B, 7401),
        ListenOptions { transport: Transport::Link, mode: Mode::Stream },
    )
    .unwrap();
    let opts = ConnectOptions { transport: Transport::Link, ..Default::default() };
    let mut s1 = Stream::connect_with(&a, SocketAddrV4::new(B, 7401), opts).unwrap();
    let mut s2 = Stream::connect_with(&a, SocketAddrV4::new(B, 7401), opts).unwrap();
    let mut p1 = l.accept().unwrap();
    let p2 = l.accept().unwrap();
    // Match the accepted ends to the client ends by port.
    if p1.peer_addr().port() != s1.local_addr().port() {
        std::mem::swap(&mut s1, &mut s2);
    }
    let quiet = s2.wakeups();
    // A thread sleeps in recv on stream 2 the whole time.
    let mut s2b = s2.try_clone().unwrap();
    let sleeper = thread::spawn(move || {
        let mut buf = [0u8; 8];
        s2b.recv(&mut buf).map(|n| buf[..n].to_vec())
    });
    let mut buf = [0u8; 64];
    for i in 0..1000u32 {
        p1.send(&i.to_le_bytes()).unwrap();
        let mut got = 0;
        while got < 4 {
            got += s1.recv(&mut buf[got..4]).unwrap();
        }
        assert_eq!(&buf[..4], &i.to_le_bytes());
    }
    assert!(s1.wakeups() >= 1000, "stream 1 was woken for its frames: {}", s1.wakeups());
    assert_eq!(s2.wakeups(), quiet, "1000 frames for stream 1 woke stream 2's waiter");
    // And stream 2's own frame wakes it.
    let mut p2 = p2;
    p2.send(b"yours").unwrap();
    assert_eq!(sleeper.join().unwrap().unwrap(), b"yours");
}

#[test]
fn kernel_sockets_and_link_streams_share_one_poller() {
    let (a, b) = pair(Driving::Thread, PollMode::default());
    let server = echo_server(b, 7402);
    // A plain kernel TCP echo server on loopback.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kport = plain.local_addr().unwrap().port();
    let kserver = thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = plain.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        c.write_all(&buf[..n]).unwrap();
    });
    let mut poller = Poller::new(&a).unwrap();
    let link = ConnectOptions { transport: Transport::Link, ..Default::default() };
    let kernel = ConnectOptions { transport: Transport::Kernel, ..Default::default() };
    let mut s = [
        Stream::connect_start(&a, SocketAddrV4::new(B, 7402), link).unwrap(),
        Stream::connect_start(&a, SocketAddrV4::new(Ipv4Addr::LOCALHOST, kport), kernel).unwrap(),
    ];
    for (i, st) in s.iter().enumerate() {
        poller.register(st, Token(i), Interest::WRITABLE).unwrap();
    }
    let mut events = Events::default();
    let mut sent = [false; 2];
    let mut got = [Vec::new(), Vec::new()];
    let t0 = Instant::now();
    while got.iter().any(|g| g.len() < 4) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{got:?}");
        poller.poll(&mut events, Some(Duration::from_millis(500))).unwrap();
        for e in events.iter() {
            let i = e.token().0;
            if !sent[i] && s[i].poll_connect().unwrap() {
                sent[i] = true;
                s[i].send(b"ping").unwrap();
                poller.reregister(e.token(), Interest::READABLE).unwrap();
            } else if e.is_readable() {
                let mut buf = [0u8; 16];
                if let Ok(n) = s[i].try_recv(&mut buf) {
                    got[i].extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    assert_eq!(s[0].path(), Path::Link);
    assert_eq!(s[1].path(), Path::Kernel);
    assert_eq!(got, [b"ping".to_vec(), b"ping".to_vec()]);
    kserver.join().unwrap();
    for st in s {
        st.close(Duration::from_secs(5)).unwrap();
    }
    let _ = server.join();
}

#[test]
fn a_refused_connect_is_reported_by_the_poller_and_poll_connect() {
    let (a, _b) = pair(Driving::Thread, PollMode::default());
    let mut poller = Poller::new(&a).unwrap();
    let opts = ConnectOptions { transport: Transport::Link, ..Default::default() };
    let mut s = Stream::connect_start(&a, SocketAddrV4::new(B, 7499), opts).unwrap();
    poller.register(&s, Token(7), Interest::WRITABLE).unwrap();
    let mut events = Events::default();
    let t0 = Instant::now();
    loop {
        poller.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        if let Some(e) = events.iter().find(|e| e.token() == Token(7)) {
            assert!(e.is_closed(), "{e:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
    assert!(matches!(s.poll_connect(), Err(Error::ConnectionRefused(_))));
    assert!(matches!(s.try_send(b"x"), Err(Error::ConnectionRefused(_)) | Err(Error::ConnectionReset(_))));
}

#[test]
fn the_poller_fd_works_in_the_callers_own_poll() {
    let (a, b) = pair(Driving::Thread, PollMode::Sleep);
    let l = Listener::bind_with(
        &b,
        SocketAddrV4::new(B, 7403),
        ListenOptions { transport: Transport::Link, mode: Mode::Stream },
    )
    .unwrap();
    let opts = ConnectOptions { transport: Transport::Link, ..Default::default() };
    let mut s = Stream::connect_with(&a, SocketAddrV4::new(B, 7403), opts).unwrap();
    let mut peer = l.accept().unwrap();
    let mut poller = Poller::new(&a).unwrap();
    poller.register(&s, Token(1), Interest::READABLE).unwrap();
    let mut events = Events::default();
    assert_eq!(poller.poll(&mut events, Some(Duration::ZERO)).unwrap(), 0, "nothing to read yet");
    let sender = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        peer.send(b"wake").unwrap();
        peer
    });
    // The application's own poll(2) on the poller's descriptor. As with
    // epoll, a wake-up may find nothing (the stream's own credit frames
    // wake it too): the loop polls again.
    let t0 = Instant::now();
    loop {
        let fd = poller.as_fd();
        let ready = xsock_nic::sys::poll_fds(
            &[xsock_nic::sys::Interest { fd, read: true, write: false }],
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        assert!(ready[0].readable, "the descriptor turned readable when data arrived");
        if poller.poll(&mut events, Some(Duration::ZERO)).unwrap() == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "readable descriptor, no event");
    }
    assert!(events.iter().next().unwrap().is_readable());
    let mut buf = [0u8; 8];
    assert_eq!(s.try_recv(&mut buf).unwrap(), 4);
    let _ = sender.join();
}
