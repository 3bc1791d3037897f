//! The TCP mode over in-memory ports: two runtimes, each running smoltcp on
//! its datapath, talk plain TCP to each other. No kernel involved, so these
//! check the glue (device, ARP answers, listen/accept, the stream calls,
//! errors) and give the TCP mode's own ceiling.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use xsock::{ConnectOptions, Error, ListenOptions, Listener, Path, PollMode, Runtime, Stream, TcpConfig, Transport};
use xsock_nic::{
    FrameDevice,
    fault::{FaultConfig, FaultInjector},
    mem::{MemConfig, MemDevice},
};
use xsock_reliable_link::LocalAddr;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn runtime(
    dev: Box<dyn FrameDevice>,
    ip: Ipv4Addr,
    neighbors: HashMap<Ipv4Addr, xsock_nic::MacAddr>,
    dead_after: Duration,
) -> Runtime {
    Runtime::builder()
        .devices(vec![dev], vec![LocalAddr { ip, prefix: 24 }])
        .poll_mode(PollMode::Adaptive { spin: Duration::from_micros(50) })
        .dead_after(dead_after)
        .tcp(TcpConfig { send_buffer: 1 << 20, recv_buffer: 1 << 20, ..Default::default() })
        .tcp_neighbors(neighbors)
        .build()
        .unwrap()
}

fn pair_with(loss: f64) -> (Runtime, Runtime) {
    let (a, b) = MemDevice::pair(&MemConfig { inbox_frames: 1 << 14, ..Default::default() }).unwrap();
    let (ma, mb) = (a.info().mac, b.info().mac);
    let wrap = |d: MemDevice, seed| -> Box<dyn FrameDevice> {
        if loss > 0.0 {
            Box::new(FaultInjector::new(d, FaultConfig { loss, seed, ..Default::default() }))
        } else {
            Box::new(d)
        }
    };
    // smoltcp's retransmission timeout starts at 1 s and doubles: two losses
    // of one segment already take 3 s, so a lossy link gives up much later.
    let dead = Duration::from_secs(if loss > 0.0 { 20 } else { 2 });
    (runtime(wrap(a, 1), A, HashMap::from([(B, mb)]), dead), runtime(wrap(b, 2), B, HashMap::from([(A, ma)]), dead))
}

fn tcp() -> ConnectOptions {
    ConnectOptions { transport: Transport::Tcp, ..Default::default() }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 12) as u8)).collect()
}

/// Sends `len` bytes from A to B and echoes them back; returns the time.
fn round_trip_bulk(loss: f64, len: usize) -> Duration {
    let (ra, rb) = pair_with(loss);
    let l = Listener::bind_with(
        &rb,
        SocketAddrV4::new(B, 5000),
        ListenOptions { transport: Transport::Tcp, ..Default::default() },
    )
    .unwrap();
    let server = thread::spawn(move || {
        let mut s = l.accept().unwrap();
        assert_eq!(s.path(), Path::Tcp);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = s.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.send(&got).unwrap();
        s.close(Duration::from_secs(20)).unwrap();
        drop(rb);
    });
    let data = pattern(len);
    let t = Instant::now();
    let mut s = Stream::connect_with(&ra, SocketAddrV4::new(B, 5000), tcp()).unwrap();
    assert_eq!(s.path(), Path::Tcp);
    let mut w = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = thread::spawn(move || {
        w.send(&d2).unwrap();
        w.shutdown_write().unwrap();
    });
    let mut back = Vec::with_capacity(len);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = s.recv(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        back.extend_from_slice(&buf[..n]);
    }
    let took = t.elapsed();
    writer.join().unwrap();
    server.join().unwrap();
    assert!(back == data, "echoed bytes differ ({} of {})", back.len(), data.len());
    took
}

#[test]
fn bulk_echo_is_intact() {
    round_trip_bulk(0.0, 8 << 20);
}

#[test]
fn bulk_echo_is_intact_through_loss() {
    round_trip_bulk(0.01, 2 << 20);
}

/// A server that closes with data still queued, to a reader whose window
/// is shut, must hear the window open again: smoltcp in LAST-ACK ignores
/// such window updates, so the FIN now waits for the queue to drain
/// (before, the rest of the data waited until the connection was given up
/// on after `dead_after`, 2 s here).
#[test]
fn a_close_behind_a_shut_window_still_delivers_everything() {
    let (ra, rb) = pair_with(0.0);
    let opts = ListenOptions { transport: Transport::Tcp, ..Default::default() };
    let l = Listener::bind_with(&rb, SocketAddrV4::new(B, 5002), opts).unwrap();
    // More than the reader's receive buffer, less than both buffers: the
    // send returns, and the close comes, while the reader's window is 0.
    let len = (3 << 20) / 2;
    let server = thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.recv(&mut buf).unwrap(), 0, "the client sends nothing");
        s.send(&pattern(len)).unwrap();
        s.close(Duration::from_secs(10)).unwrap();
    });
    let mut s = Stream::connect_with(&ra, SocketAddrV4::new(B, 5002), tcp()).unwrap();
    s.shutdown_write().unwrap();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = s.recv(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let took = t.elapsed();
    server.join().unwrap();
    assert!(got == pattern(len), "got {} of {len} bytes", got.len());
    // In memory this takes milliseconds; a stall waits for a 1 s probe.
    assert!(took < Duration::from_millis(900), "the rest took {took:?}: a stall behind the shut window");
}

#[test]
fn messages_keep_their_boundaries() {
    let (ra, rb) = pair_with(0.0);
    let opts = ListenOptions { transport: Transport::Tcp, mode: xsock::Mode::Message };
    let l = Listener::bind_with(&rb, SocketAddrV4::new(B, 5001), opts).unwrap();
    let server = thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut m = Vec::new();
        while s.recv_message(&mut m).unwrap().is_message() {
            s.send_message(&m).unwrap();
        }
    });
    let mut s =
        Stream::connect_with(&ra, SocketAddrV4::new(B, 5001), ConnectOptions { mode: xsock::Mode::Message, ..tcp() })
            .unwrap();
    for len in [1usize, 100, 1460, 1461, 70_000, 300_000] {
        let m = pattern(len);
        s.send_message(&m).unwrap();
        let mut back = Vec::new();
        assert!(s.recv_message(&mut back).unwrap().is_message());
        assert_eq!(back, m, "message of {len} bytes");
    }
    s.shutdown_write().unwrap();
    server.join().unwrap();
}

#[test]
fn nothing_listening_is_refused() {
    let (ra, _rb) = pair_with(0.0);
    let t = Instant::now();
    let e = Stream::connect_with(&ra, SocketAddrV4::new(B, 5999), tcp()).unwrap_err();
    assert!(matches!(e, Error::ConnectionRefused(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1), "a refusal is immediate, took {:?}", t.elapsed());
}

#[test]
fn abort_is_a_reset_at_the_peer() {
    let (ra, rb) = pair_with(0.0);
    let l = Listener::bind_with(
        &rb,
        SocketAddrV4::new(B, 5002),
        ListenOptions { transport: Transport::Tcp, ..Default::default() },
    )
    .unwrap();
    let c = Stream::connect_with(&ra, SocketAddrV4::new(B, 5002), tcp()).unwrap();
    let mut s = l.accept().unwrap();
    c.abort();
    let mut buf = [0u8; 16];
    let e = s.recv(&mut buf).unwrap_err();
    assert!(matches!(e, Error::ConnectionReset(_)), "{e}");
}

#[test]
fn vanished_peer_times_out_with_a_clear_error() {
    let (ra, rb) = pair_with(0.0);
    let l = Listener::bind_with(
        &rb,
        SocketAddrV4::new(B, 5003),
        ListenOptions { transport: Transport::Tcp, ..Default::default() },
    )
    .unwrap();
    let mut c = Stream::connect_with(&ra, SocketAddrV4::new(B, 5003), tcp()).unwrap();
    let s = l.accept().unwrap();
    // B vanishes without a word: its datapath stops, nothing is sent.
    std::mem::forget(s);
    std::mem::forget(l);
    std::mem::forget(rb);
    thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let data = vec![7u8; 4 << 20];
    let r = c.send(&data).and_then(|()| c.close(Duration::from_secs(10)));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::TimedOut(_) | Error::ConnectionReset(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(8), "gave up after {:?}", t.elapsed());
}
