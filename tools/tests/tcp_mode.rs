//! The TCP mode against real TCP peers, in namespaces: our client to kernel
//! servers and kernel clients to our server (nc, a plain Python socket),
//! 1 GiB each way with SHA-256 compared; refusal, reset and a peer that
//! vanishes mid-transfer, each a clear error.
//!
//! The kernel peers keep veth's default offloads, as every container has
//! them: their TCP checksums arrive unfinished and their bulk arrives in
//! segmentation-offload frames of up to 64 KiB (a real NIC would have
//! finished and cut them; a veth does neither). One test also runs with
//! `tx off` on both ends (finished checksums, MTU-sized frames).

use std::time::{Duration, Instant};

use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");
const GIB: u64 = 1 << 30;

/// Two hosts on a veth pair with its default offloads, which this checks
/// (so that no change to the test bed makes the kernel peers easier).
fn pair() -> (Testbed, Host, Host) {
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.68.0").unwrap();
    for h in [&a, &b] {
        let k = h.exec("ethtool", &["-k", "eth0"]).unwrap();
        let k = String::from_utf8_lossy(&k.stdout);
        for feature in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
            assert!(k.lines().any(|l| l.trim() == feature), "the veth has not {feature:?}: {k}");
        }
    }
    (bed, a, b)
}

/// The same with `tx off` on both ends.
fn pair_tx_off() -> (Testbed, Host, Host) {
    let (bed, a, b) = pair();
    for h in [&a, &b] {
        let out = h.exec("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
        assert!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
    }
    (bed, a, b)
}

fn bash(host: &Host, cmd: &str) -> std::process::Output {
    host.command("bash", &["-c", cmd]).output().unwrap()
}

fn read_sha(path: &std::path::Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    s.split_whitespace().next().unwrap_or("").to_owned()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xsock-tcpmode-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn one_gib_to_a_kernel_server_and_from_a_kernel_client_with_matching_sha256() {
    require_root!();
    let (bed, a, b) = pair();
    let dir = scratch("gib");
    let (sent, got) = (dir.join("sent.sha"), dir.join("got.sha"));
    // Our client -> nc (kernel) server.
    let srv = format!("nc -l -N 10.68.0.2 7601 | sha256sum > {}", got.display());
    let pid = bed.spawn_ready(&b, "sh", &["-c", &srv], || b.listening(7601)).unwrap();
    let t = Instant::now();
    let r = bash(
        &a,
        &format!(
            "set -o pipefail; head -c {GIB} /dev/urandom | tee >(sha256sum > {}) | \
             {XSOCK} cat --iface eth0 --transport tcp --connect 10.68.0.2:7601 > /dev/null",
            sent.display()
        ),
    );
    assert!(r.status.success(), "xsock -> nc: {}", String::from_utf8_lossy(&r.stderr));
    let _ = bed.finish(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_sha(&sent).len(), 64);
    assert_eq!(read_sha(&sent), read_sha(&got), "1 GiB xsock TCP mode -> nc differs");
    eprintln!("1 GiB xsock -> nc in {:?}", t.elapsed());

    // nc (kernel) client -> our server.
    let srv =
        format!("{XSOCK} cat --iface eth0 --transport tcp --listen 10.68.0.2:7602 | sha256sum > {}", got.display());
    let pid = bed.spawn_ready(&b, "sh", &["-c", &srv], || b.listening(7602)).unwrap();
    let t = Instant::now();
    let r = bash(
        &a,
        &format!(
            "set -o pipefail; head -c {GIB} /dev/urandom | tee >(sha256sum > {}) | nc -N 10.68.0.2 7602 > /dev/null",
            sent.display()
        ),
    );
    assert!(r.status.success(), "nc -> xsock: {}", String::from_utf8_lossy(&r.stderr));
    let done = Instant::now() + Duration::from_secs(20);
    while bed.try_wait(pid).unwrap().is_none() && Instant::now() < done {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_sha(&sent), read_sha(&got), "1 GiB nc -> xsock TCP mode differs");
    eprintln!("1 GiB nc -> xsock in {:?}", t.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn python_client_and_server_both_directions() {
    require_root!();
    let (bed, a, b) = pair();
    python_both_ways(&bed, &a, &b, "py");
}

#[test]
fn python_client_and_server_both_directions_with_tx_offloads_off() {
    require_root!();
    let (bed, a, b) = pair_tx_off();
    python_both_ways(&bed, &a, &b, "py-tx-off");
}

fn python_both_ways(bed: &Testbed, a: &Host, b: &Host, name: &str) {
    let dir = scratch(name);
    let input = dir.join("in.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    // Python client -> our server, which answers "pong".
    let out = dir.join("out.bin");
    let srv =
        format!("echo -n pong | {XSOCK} cat --iface eth0 --transport tcp --listen 10.68.0.2:7603 > {}", out.display());
    let pid = bed.spawn_ready(b, "sh", &["-c", &srv], || b.listening(7603)).unwrap();
    let py = format!(
        "import socket,sys\ns=socket.create_connection(('10.68.0.2',7603))\ns.sendall(open('{}','rb').read())\n\
         s.shutdown(socket.SHUT_WR)\nb=b''\nwhile True:\n    c=s.recv(65536)\n    if not c: break\n    b+=c\nsys.stdout.write(b.decode())\n",
        input.display()
    );
    let r = a.command("python3", &["-c", &py]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "pong");
    let done = Instant::now() + Duration::from_secs(15);
    while bed.try_wait(pid).unwrap().is_none() && Instant::now() < done {
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = std::fs::read(&out).unwrap();
    assert!(got == data, "python -> xsock differs ({} of {} bytes)", got.len(), data.len());
    // Our client -> Python server that echoes everything back.
    let py_srv = "import socket\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                  l.bind(('10.68.0.2',7604))\nl.listen()\nc,_=l.accept()\nwhile True:\n    d=c.recv(65536)\n    if not d: break\n    c.sendall(d)\nc.close()\n";
    let pid = bed.spawn_ready(b, "python3", &["-c", py_srv], || b.listening(7604)).unwrap();
    let echoed = dir.join("echoed.bin");
    let r = bash(
        a,
        &format!(
            "{XSOCK} cat --iface eth0 --transport tcp --connect 10.68.0.2:7604 < {} > {}",
            input.display(),
            echoed.display()
        ),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let _ = bed.finish(pid);
    let got = std::fs::read(&echoed).unwrap();
    assert!(got == data, "xsock -> python echo differs ({} of {} bytes)", got.len(), data.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fails(host: &Host, cmd: &str, within: Duration) -> String {
    let t = Instant::now();
    let r = bash(host, cmd);
    assert!(!r.status.success(), "{cmd} should fail");
    assert!(t.elapsed() < within, "{cmd} took {:?}", t.elapsed());
    let err = String::from_utf8_lossy(&r.stderr).trim().to_owned();
    let last = err.lines().last().unwrap_or("").to_owned();
    assert!(last.starts_with("xsock:"), "one clear line expected, got {err:?}");
    last
}

#[test]
fn refusal_and_reset_are_clear_errors() {
    require_root!();
    let (bed, a, b) = pair();
    // Nothing listens.
    let e = fails(
        &a,
        &format!("echo hi | {XSOCK} cat --iface eth0 --transport tcp --connect 10.68.0.2:7609"),
        Duration::from_secs(3),
    );
    assert!(e.contains("refused"), "{e}");
    // A server that resets (SO_LINGER 0, then close).
    let py = "import socket,struct,time\nl=socket.socket()\nl.bind(('10.68.0.2',7605))\nl.listen()\nc,_=l.accept()\n\
              c.recv(10)\nc.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\nc.close()\ntime.sleep(5)\n";
    bed.spawn_ready(&b, "python3", &["-c", py], || b.listening(7605)).unwrap();
    let e = fails(
        &a,
        &format!("head -c 50000000 /dev/zero | {XSOCK} cat --iface eth0 --transport tcp --connect 10.68.0.2:7605"),
        Duration::from_secs(5),
    );
    assert!(e.contains("reset"), "{e}");
}

/// Regression (issue 4): with the peer's link taken down mid-upload the
/// sender hung for good. smoltcp checks its timeout only when it transmits,
/// and it stops transmitting to a neighbour that no longer answers ARP; the
/// TCP mode now keeps the deadline itself.
#[test]
fn a_peer_that_vanishes_mid_transfer_is_a_clear_error() {
    require_root!();
    let (bed, a, b) = pair();
    // A peer that vanishes mid-transfer: its link goes down under a 1 GiB upload.
    let pid = bed.spawn_ready(&b, "sh", &["-c", "nc -l -N 10.68.0.2 7606 > /dev/null"], || b.listening(7606)).unwrap();
    let bb = b.clone();
    let cut = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        bb.exec("ip", &["link", "set", "eth0", "down"]).unwrap();
    });
    let e = fails(
        &a,
        &format!("head -c {GIB} /dev/zero | {XSOCK} cat --iface eth0 --transport tcp --connect 10.68.0.2:7606"),
        Duration::from_secs(30),
    );
    cut.join().unwrap();
    assert!(e.contains("stopped answering") || e.contains("timed out"), "{e}");
    let _ = bed.finish(pid);
    // Nothing left behind on our side.
    assert!(!a.has_xdp("eth0").unwrap(), "XDP program left attached");
}
