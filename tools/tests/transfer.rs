//! `xsock send` / `xsock recv` in namespaces, over the TCP mode: a file
//! arrives intact (SHA-256 compared by sha256sum, not by the tools), an
//! interrupted transfer resumes without sending again what arrived, and a
//! full disk, a vanished receiver, a missing receiver and an existing
//! target name are each one clear line, with nothing left behind.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

const XSOCK: &str = env!("CARGO_BIN_EXE_xsock");

fn pair() -> (Testbed, Host, Host) {
    let bed = Testbed::new().unwrap();
    // veth's default offloads: a kernel sender's checksums arrive
    // unfinished and its bulk in 64 KiB segmentation-offload frames.
    let (a, b) = bed.pair(LinkOpts::default(), "10.69.0").unwrap();
    (bed, a, b)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xsock-transfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("rx")).unwrap();
    d
}

/// A file of `len` pseudo-random bytes.
fn source(dir: &Path, len: usize) -> PathBuf {
    let p = dir.join("src.bin");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(&p, data).unwrap();
    p
}

fn sha(host: &Host, path: &Path) -> String {
    let o = host.exec("sha256sum", &[path.to_str().unwrap()]).unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_owned()
}

fn receiver(bed: &Testbed, b: &Host, dir: &Path, port: u16, extra: &[&str]) -> u32 {
    let listen = format!("10.69.0.2:{port}");
    let rx = dir.join("rx");
    let mut args = vec!["recv", "--iface", "eth0", "--listen", &listen, rx.to_str().unwrap()];
    args.extend_from_slice(extra);
    bed.spawn_ready(b, XSOCK, &args, || b.listening(port)).unwrap()
}

fn send(a: &Host, file: &Path, port: u16, extra: &[&str]) -> std::process::Output {
    let connect = format!("10.69.0.2:{port}");
    let mut args = vec!["send", "--iface", "eth0", "--connect", &connect, file.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    a.command(XSOCK, &args).output().unwrap()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "send failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn last_line(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("").to_owned()
}

#[test]
fn a_file_arrives_intact_over_parallel_streams_and_an_interrupted_one_resumes() {
    require_root!();
    let (bed, a, b) = pair();
    let dir = scratch("resume");
    let src = source(&dir, 96 << 20);
    let pid = receiver(&bed, &b, &dir, 7701, &[]);
    let want = sha(&a, &src);

    // Whole, over 4 streams, odd chunk size so the last chunk is short.
    let r = json(&send(&a, &src, 7701, &["--streams", "4", "--chunk", "3MiB", "--save-as", "whole.bin"]));
    assert_eq!(r["resumed_chunks"], 0);
    assert_eq!(r["sha256"], want.as_str());
    assert_eq!(sha(&b, &dir.join("rx/whole.bin")), want, "sha256sum of the received file");

    // A kernel TCP sender (default offloads) into the same receiver.
    let r = json(&send(&a, &src, 7701, &["--transport", "kernel", "--streams", "2", "--save-as", "kernel.bin"]));
    assert_eq!(r["sha256"], want.as_str());
    assert_eq!(sha(&b, &dir.join("rx/kernel.bin")), want, "sha256sum of the file a kernel sender sent");

    // Interrupted: the sender is killed part-way, then run again.
    let connect = "10.69.0.2:7701";
    let mut child = a
        .command(XSOCK, &["send", "--iface", "eth0", "--connect", connect, src.to_str().unwrap(), "--pace", "300mbit"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = dir.join("rx/.xsock-src.bin.state");
    let t = Instant::now();
    while !state.exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(state.exists(), "the receiver kept no resume state");
    std::thread::sleep(Duration::from_secs(1));
    let r = json(&send(&a, &src, 7701, &["--streams", "2"]));
    let resumed = r["resumed_chunks"].as_u64().unwrap();
    let chunks = r["chunks"].as_u64().unwrap();
    assert!(resumed > 0 && resumed < chunks, "resumed {resumed} of {chunks}");
    assert!(r["sent_bytes"].as_u64().unwrap() < 96 << 20, "everything was sent again");
    assert_eq!(sha(&b, &dir.join("rx/src.bin")), want);
    // Nothing but the two files is left in the directory.
    let mut names: Vec<String> =
        std::fs::read_dir(dir.join("rx")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["kernel.bin", "src.bin", "whole.bin"]);

    // Sending a name that exists is refused, clearly, and changes nothing.
    let o = send(&a, &src, 7701, &["--save-as", "whole.bin"]);
    assert!(!o.status.success());
    assert!(last_line(&o).contains("already exists") && last_line(&o).contains("--overwrite"), "{}", last_line(&o));
    let _ = bed.finish(pid);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_disk_a_missing_receiver_and_a_vanished_one_are_clear_errors() {
    require_root!();
    let (bed, a, b) = pair();
    let dir = scratch("errors");
    let src = source(&dir, 48 << 20);

    // Nothing listens.
    let o = send(&a, &src, 7709, &[]);
    assert!(!o.status.success());
    assert!(last_line(&o).contains("xsock recv --listen"), "{}", last_line(&o));

    // A receiver whose disk holds 16 MiB.
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    // Mounted here, not through `ip netns exec` (which gives each command a
    // mount namespace of its own): the receiver started next inherits it.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs", small.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(mounted.status.success(), "{}", String::from_utf8_lossy(&mounted.stderr));
    let listen = "10.69.0.2:7702";
    let pid =
        bed.spawn_ready(&b, XSOCK, &["recv", "--iface", "eth0", "--listen", listen, small.to_str().unwrap()], || {
            b.listening(7702)
        });
    let o = send(&a, &src, 7702, &[]);
    let _ = pid.map(|p| bed.finish(p));
    let _ = std::process::Command::new("umount").arg(&small).output();
    assert!(!o.status.success());
    let e = last_line(&o);
    assert!(e.contains("too small") && e.contains("free space"), "{e}");

    // A receiver that vanishes mid-transfer (its link goes down).
    let pid = receiver(&bed, &b, &dir, 7703, &[]);
    let bb = b.clone();
    let cut = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        bb.exec("ip", &["link", "set", "eth0", "down"]).unwrap();
    });
    let t = Instant::now();
    let o = send(&a, &src, 7703, &["--pace", "100mbit"]);
    cut.join().unwrap();
    assert!(!o.status.success());
    let e = last_line(&o);
    assert!(e.contains("stopped answering") && e.contains("resume"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30), "gave up after {:?}", t.elapsed());
    assert!(!a.has_xdp("eth0").unwrap(), "XDP program left attached");
    let _ = bed.finish(pid);
    std::fs::remove_dir_all(&dir).unwrap();
}
