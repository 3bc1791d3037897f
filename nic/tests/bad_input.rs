//! Bad input gets a clear error that names the fix, and leaves nothing
//! behind: no XDP program on the interface, no namespace.
//!
//! Tests that need another process (kill -9, dropped capabilities, a low
//! memlock limit) re-run this test binary as a child: `child_holder` is a
//! no-op unless XSOCK_NIC_CHILD is set, in which case it opens a device,
//! prints READY or ERR <message>, and waits to be killed.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use xsock_nic::{
    BackendChoice, NicError,
    xdp::{AfXdpConfig, AfXdpDevice},
};
use xsock_testbed::{Host, LinkOpts, Testbed, require_root};

fn pair(opts: LinkOpts) -> (Testbed, Host, Host) {
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(opts, "10.78.0").unwrap();
    (bed, a, b)
}

fn small(iface: &str) -> AfXdpConfig {
    AfXdpConfig {
        frame_count: 256,
        ring_size: 128,
        ethertypes: vec![xsock_nic::ETHERTYPE_LOCAL_EXP2],
        ..AfXdpConfig::new(iface)
    }
}

fn open_err(host: &Host, cfg: AfXdpConfig) -> NicError {
    host.run(move || AfXdpDevice::open(&cfg)).unwrap().expect_err("open must fail")
}

#[test]
fn child_holder() {
    let Ok(backend) = std::env::var("XSOCK_NIC_CHILD") else {
        return;
    };
    let choice: BackendChoice = backend.parse().unwrap();
    match xsock_nic::open(&small("eth0"), choice) {
        Ok(dev) => {
            println!("READY {}", dev.info().backend);
            std::thread::sleep(Duration::from_secs(600));
        }
        Err(e) => {
            println!("ERR {e}");
            std::process::exit(3);
        }
    }
}

/// Starts this test binary as `child_holder` inside `host`, behind the
/// given wrapper command (setpriv, prlimit), and returns its pid and first
/// line of output.
fn spawn_child(bed: &Testbed, host: &Host, wrapper: &[&str], backend: &str) -> (u32, String) {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let mut args: Vec<&str> = wrapper.to_vec();
    args.extend_from_slice(&[exe, "--exact", "child_holder", "--nocapture", "--test-threads=1"]);
    let (prog, rest) = args.split_first().unwrap();
    let mut cmd = host.command(prog, rest);
    cmd.env("XSOCK_NIC_CHILD", backend).stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let pid = bed.adopt(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(out);
        // Skip the test harness's own output (which shares the marker's line).
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(at) = line.find("READY").or_else(|| line.find("ERR ")) {
                let _ = tx.send(line[at..].trim().to_owned());
                return;
            }
            line.clear();
        }
        let _ = tx.send(String::new());
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("child printed neither READY nor ERR in 30 s");
    (pid, line)
}

#[test]
fn missing_interface_names_the_ones_that_exist() {
    require_root!();
    let (_bed, a, _b) = pair(LinkOpts::default());
    let e = open_err(&a, small("eht0"));
    assert!(matches!(e, NicError::InterfaceNotFound { .. }), "{e:?}");
    let s = e.to_string();
    assert!(s.contains("\"eht0\" not found") && s.contains("eth0") && s.contains("ip netns exec"), "{s}");
}

#[test]
fn queue_beyond_the_interface_is_refused_before_anything_attaches() {
    require_root!();
    let (_bed, a, _b) = pair(LinkOpts { mtu: 1500, queues: 2 });
    let e = open_err(&a, AfXdpConfig { queue: 2, ..small("eth0") });
    assert!(matches!(e, NicError::QueueOutOfRange { queue: 2, queues: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("ids 0..=1"), "{e}");
    assert!(!a.has_xdp("eth0").unwrap());
}

#[test]
fn mtu_beyond_one_frame_names_the_fix() {
    require_root!();
    let (_bed, a, _b) = pair(LinkOpts { mtu: 3000, queues: 1 });
    // With multi-buffer turned off, an MTU beyond one chunk is an error
    // that names the fixes (by default multi-buffer is chosen instead).
    let off = |frame_size| AfXdpConfig { frame_size, multi_buffer: Some(false), ..small("eth0") };
    let e = open_err(&a, off(2048));
    assert!(matches!(e, NicError::MtuTooLarge { mtu: 3000, capacity: 1792, .. }), "{e:?}");
    assert!(e.to_string().contains("--frame-size 4096"), "{e}");
    a.ip(&["link", "set", "eth0", "mtu", "9000"]).unwrap();
    let e = open_err(&a, off(4096));
    assert!(e.to_string().contains("leave multi-buffer on"), "{e}");
    assert!(!a.has_xdp("eth0").unwrap());
}

#[test]
fn bad_frame_size_is_a_config_error() {
    let e = AfXdpDevice::open(&AfXdpConfig { frame_size: 3000, ..small("lo") }).unwrap_err();
    assert!(matches!(e, NicError::Config(_)) && e.to_string().contains("2048 or 4096"), "{e}");
    let e = AfXdpDevice::open(&AfXdpConfig { ring_size: 100, ..small("lo") }).unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
}

#[test]
fn a_foreign_xdp_program_is_named_and_left_alone() {
    require_root!();
    let (_bed, a, _b) = pair(LinkOpts::default());
    let obj = concat!(env!("OUT_DIR"), "/xsock_filter.bpf.o");
    a.exec("ip", &["link", "set", "dev", "eth0", "xdpgeneric", "obj", obj, "sec", "xdp"]).unwrap();
    let e = open_err(&a, small("eth0"));
    assert!(matches!(e, NicError::XdpProgramPresent { .. }), "{e:?}");
    let s = e.to_string();
    assert!(s.contains("ip link set dev eth0 xdp off") && s.contains("name \"xsock_filter\""), "{s}");
    assert!(a.has_xdp("eth0").unwrap(), "the other program must stay attached");
}

#[test]
fn kill_9_leaves_no_program_behind() {
    require_root!();
    let (bed, a, _b) = pair(LinkOpts::default());
    let (pid, line) = spawn_child(&bed, &a, &[], "xdp");
    assert!(line.starts_with("READY af_xdp"), "{line}");
    assert!(a.has_xdp("eth0").unwrap(), "attached while the process lives");

    // A second runtime on the same interface is refused with a clear error.
    let e = open_err(&a, small("eth0"));
    assert!(matches!(e, NicError::XdpProgramPresent { .. }) && e.to_string().contains("xsock"), "{e}");
    // It names the process holding the bpf_link, not `xdp off` (which
    // cannot detach a link: regression, issue 11).
    let s = e.to_string();
    assert!(s.contains(&format!("pid {pid}")), "{s}");
    assert!(s.contains("cannot detach"), "{s}");

    bed.kill9(pid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.has_xdp("eth0").unwrap() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!a.has_xdp("eth0").unwrap(), "bpf_link must detach when the process dies");
    // And the interface is usable again by a new runtime.
    a.run(|| AfXdpDevice::open(&small("eth0"))).unwrap().unwrap();
}

#[test]
fn missing_capabilities_are_named_with_the_setcap_line() {
    require_root!();
    let (bed, a, _b) = pair(LinkOpts::default());
    let no_bpf = ["setpriv", "--bounding-set=-bpf,-sys_admin,-net_admin", "--inh-caps=-all"];
    let (_, line) = spawn_child(&bed, &a, &no_bpf, "xdp");
    assert!(line.starts_with("ERR"), "{line}");
    assert!(
        line.contains("CAP_NET_ADMIN, CAP_BPF") && line.contains("setcap") && line.contains("run as root"),
        "{line}"
    );
    assert!(!a.has_xdp("eth0").unwrap());

    // With CAP_NET_RAW but no BPF, the automatic choice falls back to AF_PACKET.
    let (_, line) = spawn_child(&bed, &a, &no_bpf, "auto");
    assert!(line.starts_with("READY af_packet"), "{line}");

    // An unprivileged user gets the same clear refusal, for either backend.
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"];
    let (_, line) = spawn_child(&bed, &a, &nobody, "auto");
    assert!(line.starts_with("ERR") && line.contains("CAP_NET_RAW"), "{line}");
}

#[test]
fn memlock_refusal_says_how_to_raise_it() {
    require_root!();
    let (bed, a, _b) = pair(LinkOpts::default());
    let limited =
        ["prlimit", "--memlock=65536:65536", "setpriv", "--bounding-set=-ipc_lock,-sys_resource", "--inh-caps=-all"];
    let (_, line) = spawn_child(&bed, &a, &limited, "xdp");
    assert!(line.starts_with("ERR"), "{line}");
    assert!(line.contains("RLIMIT_MEMLOCK is 64 KiB") && line.contains("ulimit -l"), "{line}");
    assert!(!a.has_xdp("eth0").unwrap());
}
