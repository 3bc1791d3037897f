//! Streams through host engines used by several threads of one process at
//! once: a writer thread and a reader thread on clones of one stream, on
//! both hosts, both blocking on the same descriptor while the bytes cross
//! the shared rings. Each side waits for the other (the echo only answers
//! what it read), so a doorbell one thread consumed for the other would
//! stall the transfer for good. Needs root (skips loudly otherwise).

use std::{
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xsock::{EngineUse, Listener, PollMode, Runtime, Stream};
use xsock_engine::{Engine, EngineConfig};
use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const NET: &str = "10.83.0";
const BYTES: u64 = 24 << 20;

fn in_host<R: Send + 'static>(host: &Host, f: impl FnOnce() -> R + Send + 'static) -> JoinHandle<R> {
    let host = host.clone();
    std::thread::spawn(move || {
        host.enter_this_thread().unwrap();
        f()
    })
}

fn builder() -> xsock::RuntimeBuilder {
    Runtime::builder().frame_count(1024).ring_size(512)
}

/// An engine for `host`'s eth0 on a thread of this process, until `stop`.
fn engine(host: &Host, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = in_host(host, move || {
        let cfg = EngineConfig { poll: PollMode::Sleep, ring_bytes: 16 * 1024, ..EngineConfig::new("eth0") };
        let mut e = Engine::open(cfg, builder()).unwrap();
        tx.send(()).unwrap();
        e.run(|| stop.load(Ordering::SeqCst)).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("the engine started");
    h
}

fn attached() -> Runtime {
    let rt = builder().interface("eth0").engine(EngineUse::Require).build().unwrap();
    assert!(rt.is_attached());
    rt
}

fn pattern(pos: u64) -> u8 {
    (pos.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Writes `BYTES` of the pattern in odd-sized pieces on one thread while
/// another reads and checks what comes back; returns the bytes read.
fn write_and_read(s: Stream) -> u64 {
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut buf = vec![0u8; 70_001];
        while pos < BYTES {
            let n = (buf.len() as u64).min(BYTES - pos) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(pos + i as u64);
            }
            w.send(&buf[..n]).unwrap();
            pos += n as u64;
        }
        w.shutdown_write().unwrap();
    });
    let mut r = s;
    let mut got = 0u64;
    let mut buf = vec![0u8; 33_333];
    loop {
        let n = r.recv(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, pattern(got + i as u64), "byte {}", got + i as u64);
        }
        got += n as u64;
    }
    writer.join().unwrap();
    got
}

#[test]
fn a_reader_and_a_writer_thread_share_one_engine_stream_both_ways() {
    require_root!();
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), NET).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let engines = [engine(&a, stop.clone()), engine(&b, stop.clone())];
    let listen: SocketAddrV4 = format!("{NET}.2:7300").parse().unwrap();

    // b: an echo whose reading and writing threads share the stream.
    let (ready_tx, ready_rx) = mpsc::channel();
    let echo = in_host(&b, move || {
        let rt = attached();
        let l = Listener::bind(&rt, listen).unwrap();
        ready_tx.send(()).unwrap();
        let s = l.accept().unwrap();
        let (to_reader, from_writer) = mpsc::sync_channel::<Vec<u8>>(4);
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            for chunk in from_writer {
                w.send(&chunk).unwrap();
            }
            w.shutdown_write().unwrap();
        });
        let mut r = s;
        let mut buf = vec![0u8; 50_000];
        loop {
            let n = r.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            to_reader.send(buf[..n].to_vec()).unwrap();
        }
        drop(to_reader);
        writer.join().unwrap();
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let client = in_host(&a, move || {
        let rt = attached();
        let s = Stream::connect(&rt, listen).unwrap();
        let t0 = Instant::now();
        let got = write_and_read(s);
        (got, t0.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "the transfer stalled (a lost doorbell?)");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (got, took) = client.join().unwrap();
    assert_eq!(got, BYTES);
    echo.join().unwrap();
    eprintln!("{BYTES} B each way through 16 KiB rings, two threads per stream on each side: {took:?}");
    stop.store(true, Ordering::SeqCst);
    for e in engines {
        e.join().unwrap();
    }
}
