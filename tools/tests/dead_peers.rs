//! Regression (issue 11): after `kill -9` of an `xsock bw` client the
//! server stayed silent for over a minute and kept the connection, and six
//! killed clients added ~49 MB that was never freed. Now the server's idle
//! connection to a dead peer ends within dead_after (3 s) of its last frame,
//! with an error that says so, and its memory comes back.

use std::time::{Duration, Instant};

use xsock_testbed::{LinkOpts, Testbed, require_root, rss_kib};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

#[test]
fn killed_clients_are_noticed_within_seconds_and_their_memory_returns() {
    require_root!();
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.67.0").unwrap();
    let listen = "10.67.0.2:7710";
    let server = bed
        .spawn_ready(&b, XSOCK, &["bw", "--iface", "eth0", "--listen", listen, "--poll", "sleep"], || b.has_xdp("eth0"))
        .unwrap();
    let mut baseline = None;
    for round in 1..=4 {
        let client = bed
            .spawn(
                &a,
                XSOCK,
                &["bw", "--iface", "eth0", "--connect", listen, "--transport", "link", "--seconds", "60s"],
            )
            .unwrap();
        // Let the transfer run (and the windows grow) for a moment.
        let t0 = Instant::now();
        while !bed.log_tail(server, 200).matches("receiving from").count().eq(&round) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "round {round}: no connection: {}",
                bed.log_tail(server, 5)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        bed.kill9(client).unwrap();
        let killed = Instant::now();
        while bed.log_tail(server, 400).matches("ended: timed out").count() < round {
            assert!(
                killed.elapsed() < Duration::from_secs(6),
                "round {round}: the server did not notice the dead client: {}",
                bed.log_tail(server, 5)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let noticed = killed.elapsed();
        eprintln!("round {round}: the dead client's connection ended {noticed:?} after kill -9");
        // Give the reaping and the heap trim a second.
        std::thread::sleep(Duration::from_millis(1500));
        let rss = rss_kib(server).0;
        eprintln!("round {round}: server RSS {rss} KiB");
        assert!(rss > 0, "round {round}: the server is gone: {}", bed.log_tail(server, 5));
        match baseline {
            None => baseline = Some(rss),
            Some(b) => assert!(
                rss <= b + 16 * 1024,
                "round {round}: RSS grew from {b} to {rss} KiB: the dead clients' memory was not returned"
            ),
        }
    }
}
