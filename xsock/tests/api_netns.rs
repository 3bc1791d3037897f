//! The socket API on real interfaces: two hosts in namespaces, AF_XDP,
//! path selection against kernel peers. Needs root (skips loudly otherwise).

use std::{
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use xsock::{ConnectOptions, Driving, Listener, Mode, Path, PollMode, Received, Runtime, Stream, Transport};
use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const NET: &str = "10.81.0";

fn addr(host: u8, port: u16) -> SocketAddrV4 {
    format!("{NET}.{host}:{port}").parse().unwrap()
}

fn bed() -> (Testbed, Host, Host) {
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), NET).unwrap();
    (bed, a, b)
}

fn runtime(driving: Driving) -> Runtime {
    Runtime::builder()
        .interface("eth0")
        .driving(driving)
        .poll_mode(PollMode::default())
        .frame_count(1024)
        .ring_size(512)
        .require_link(true)
        .build()
        .unwrap()
}

/// Runs `f` on a thread inside `host` (sockets and runtimes it makes live
/// in the host's namespace); returns a handle to its result.
fn in_host<R: Send + 'static>(host: &Host, f: impl FnOnce() -> R + Send + 'static) -> std::thread::JoinHandle<R> {
    let host = host.clone();
    std::thread::spawn(move || {
        host.enter_this_thread().unwrap();
        f()
    })
}

#[test]
fn xsock_peers_talk_over_reliable_link_on_af_xdp() {
    require_root!();
    let (_bed, a, b) = bed();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_host(&b, move || {
        let rt = runtime(Driving::Thread);
        let l = Listener::bind(&rt, addr(2, 7100)).unwrap();
        ready_tx.send(()).unwrap();
        let mut s = l.accept().unwrap();
        let path = s.path();
        let mut m = Vec::new();
        let mut n = 0;
        while s.recv_message(&mut m).unwrap().is_message() {
            s.send_message(&m).unwrap();
            n += 1;
        }
        s.close(Duration::from_secs(5)).unwrap();
        (path, n)
    });
    ready_rx.recv().unwrap();
    let client = in_host(&a, move || {
        let rt = runtime(Driving::Inline);
        let opts = ConnectOptions { mode: Mode::Message, ..Default::default() };
        let mut s = Stream::connect_with(&rt, addr(2, 7100), opts).unwrap();
        let mut back = Vec::new();
        for len in [1usize, 1460, 100_000, 4 << 20] {
            let m: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            s.send_message(&m).unwrap();
            assert!(s.recv_message(&mut back).unwrap().is_message());
            assert!(back == m, "{len}-byte message intact");
        }
        let path = s.path();
        s.shutdown_write().unwrap();
        assert_eq!(s.recv_message(&mut back).unwrap(), Received::End);
        path
    });
    assert_eq!(client.join().unwrap(), Path::Link);
    assert_eq!(server.join().unwrap(), (Path::Link, 4));
}

#[test]
fn a_peer_without_xsock_is_reached_over_kernel_tcp() {
    require_root!();
    let (_bed, a, b) = bed();
    let (ready_tx, ready_rx) = mpsc::channel();
    // B runs no xsock at all: a plain kernel TCP echo.
    let server = in_host(&b, move || {
        let l = TcpListener::bind(addr(2, 7200)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; 11];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    ready_rx.recv().unwrap();
    let client = in_host(&a, move || {
        let rt = runtime(Driving::Thread);
        let t0 = std::time::Instant::now();
        let mut s = Stream::connect(&rt, addr(2, 7200)).unwrap();
        let took = t0.elapsed();
        assert_eq!(s.path(), Path::Kernel);
        s.send(b"hello plain").unwrap();
        let mut buf = [0u8; 11];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello plain");
        took
    });
    let took = client.join().unwrap();
    assert!(took < Duration::from_millis(200), "discovery gave up quickly: {took:?}");
    server.join().unwrap();
}

#[test]
fn an_xsock_peer_whose_port_is_a_plain_tcp_server_falls_back_to_kernel() {
    require_root!();
    let (_bed, a, b) = bed();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_host(&b, move || {
        // B runs xsock (so discovery finds it), but port 7300 belongs to a
        // plain kernel TCP server: the link refuses, the kernel path works.
        let _rt = runtime(Driving::Thread);
        let l = TcpListener::bind(addr(2, 7300)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"kernel here").unwrap();
    });
    ready_rx.recv().unwrap();
    let client = in_host(&a, move || {
        let rt = runtime(Driving::Thread);
        let mut s = Stream::connect(&rt, addr(2, 7300)).unwrap();
        let mut buf = [0u8; 11];
        s.read_exact(&mut buf).unwrap();
        (s.path(), buf)
    });
    assert_eq!(client.join().unwrap(), (Path::Kernel, *b"kernel here"));
    server.join().unwrap();
}

#[test]
fn a_listener_serves_xsock_and_plain_tcp_clients_alike() {
    require_root!();
    let (_bed, a, b) = bed();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_host(&b, move || {
        let rt = runtime(Driving::Thread);
        let l = Listener::bind(&rt, addr(2, 7400)).unwrap();
        ready_tx.send(()).unwrap();
        let mut paths = Vec::new();
        for _ in 0..2 {
            let mut s = l.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
            paths.push(s.path());
            s.close(Duration::from_secs(5)).unwrap();
        }
        paths
    });
    ready_rx.recv().unwrap();
    let client = in_host(&a, move || {
        // A plain kernel client first, then an xsock one.
        let mut k = TcpStream::connect(addr(2, 7400)).unwrap();
        k.write_all(b"tcp!").unwrap();
        let mut buf = [0u8; 4];
        k.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"tcp!");
        let rt = runtime(Driving::Thread);
        let opts = ConnectOptions { transport: Transport::Link, ..Default::default() };
        let mut x = Stream::connect_with(&rt, addr(2, 7400), opts).unwrap();
        x.write_all(b"xsk!").unwrap();
        x.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"xsk!");
    });
    client.join().unwrap();
    assert_eq!(server.join().unwrap(), vec![Path::Kernel, Path::Link]);
}

#[test]
fn forcing_kernel_transport_uses_the_kernel_even_between_xsock_peers() {
    require_root!();
    let (_bed, a, b) = bed();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_host(&b, move || {
        let rt = runtime(Driving::Thread);
        let l = Listener::bind(&rt, addr(2, 7500)).unwrap();
        ready_tx.send(()).unwrap();
        l.accept().unwrap().path()
    });
    ready_rx.recv().unwrap();
    let client = in_host(&a, move || {
        let rt = runtime(Driving::Thread);
        let opts = ConnectOptions { transport: Transport::Kernel, ..Default::default() };
        Stream::connect_with(&rt, addr(2, 7500), opts).unwrap().path()
    });
    assert_eq!(client.join().unwrap(), Path::Kernel);
    assert_eq!(server.join().unwrap(), Path::Kernel);
}
