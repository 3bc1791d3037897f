//! The C ABI from C: compiles examples/pingpong.c against libxsock.so and
//! libxsock.a and runs it between two namespaces, over reliable-link and
//! over kernel TCP. Needs root and a C compiler.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use xsock_testbed::{LinkOpts, Testbed, require_root};

/// Builds libxsock.{so,a} and returns their directory. `cargo test` builds
/// only the rlib, and the outer cargo holds its target directory's lock, so
/// this builds into a target directory of its own (incremental: after the
/// first run, only what changed).
fn lib_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // The test script builds the libraries into the workspace's
            // target first and says where (a second build of the whole
            // workspace into its own directory took CI 100 s).
            if let Some(dir) = std::env::var_os("XSOCK_CAPI_LIB_DIR") {
                let dir = PathBuf::from(dir);
                assert!(dir.join("libxsock.so").exists(), "XSOCK_CAPI_LIB_DIR has no libxsock.so: {}", dir.display());
                return dir;
            }
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let target = workspace.join("target/capi-c");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "--quiet", "-p", "xsock-capi", "--target-dir"])
                .arg(&target)
                .current_dir(&workspace)
                .output()
                .expect("cargo");
            assert!(out.status.success(), "building libxsock: {}", String::from_utf8_lossy(&out.stderr));
            target.join("debug")
        })
        .clone()
}

/// The flags that link an example against libxsock.so in `lib`.
fn dynamic_link(lib: &Path) -> Vec<String> {
    vec![format!("-L{}", lib.display()), "-lxsock".into(), format!("-Wl,-rpath,{}", lib.display())]
}

/// Compiles examples/`name` to `out`, linked with `link`.
fn compile_example(name: &str, out: &Path, link: &[String]) {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let mut args = vec![
        "-O2".to_owned(),
        "-Wall".to_owned(),
        "-Werror".to_owned(),
        format!("-I{crate_dir}/include"),
        format!("{crate_dir}/examples/{name}"),
        "-o".to_owned(),
        out.display().to_string(),
    ];
    args.extend(link.iter().cloned());
    let r = Command::new("cc").args(&args).output().expect("a C compiler (cc)");
    assert!(r.status.success(), "cc {args:?}:\n{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn the_c_ping_pong_runs_over_link_and_kernel_with_both_libraries() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("xsock-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = lib_dir();
    let dynamic = dir.join("pingpong_dynamic");
    compile_example("pingpong.c", &dynamic, &dynamic_link(&lib));
    let stat = dir.join("pingpong_static");
    let archive = lib.join("libxsock.a");
    let static_link: Vec<String> =
        [&archive.display().to_string()[..], "-lelf", "-lz", "-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    compile_example("pingpong.c", &stat, &static_link);

    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.82.0").unwrap();
    for (bin, port, iface, want) in
        [(&dynamic, 7600, "eth0", "link"), (&stat, 7601, "eth0", "link"), (&dynamic, 7602, "-", "kernel")]
    {
        let addr = format!("10.82.0.2:{port}");
        let bin = bin.display().to_string();
        bed.spawn_ready(&b, &bin, &["server", "eth0", &addr], || b.listening(port)).unwrap();
        let out = a.command(&bin, &["client", iface, &addr, "2000", "200"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.starts_with(&format!("path={want} count=2000 size=200 rtt_p50_ns=")), "{stdout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_come_back_as_codes_with_a_description() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("xsock-capi-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = lib_dir();
    let bin = dir.join("pingpong");
    compile_example("pingpong.c", &bin, &dynamic_link(&lib));
    let bed = Testbed::new().unwrap();
    let (a, _b) = bed.pair(LinkOpts::default(), "10.82.1").unwrap();
    let bin = bin.display().to_string();
    let out = a.command(&bin, &["client", "eth0", "10.82.1.2:7999", "1", "8"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("pingpong: connect: connection refused") && err.contains("10.82.1.2:7999"), "{err}");
    let out = a.command(&bin, &["client", "eth0", "not-an-address", "1", "8"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid argument") && err.contains("is not an IPv4 address and port"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_c_program_opens_hundreds_of_connections_at_once_with_a_poller() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("xsock-capi-many-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = lib_dir();
    let bin = dir.join("manyconn");
    compile_example("manyconn.c", &bin, &dynamic_link(&lib));
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.83.0").unwrap();
    let bin = bin.display().to_string();
    for (port, iface, want) in [(7610, "eth0", "link"), (7611, "-", "kernel")] {
        let addr = format!("10.83.0.2:{port}");
        bed.spawn_ready(&b, &bin, &["server", iface, &addr], || b.listening(port)).unwrap();
        let out = a.command(&bin, &["client", iface, &addr, "300"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.starts_with("connected=300 echoed=300 "), "{stdout}");
        assert!(stdout.trim_end().ends_with(&format!("path={want}")), "{stdout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `xsock` binary of this workspace (built by `cargo test --workspace`
/// for the tools' own tests before any test runs).
fn xsock_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xsock");
    assert!(p.exists(), "{} is missing: build it first (`cargo build -p xsock-tools`)", p.display());
    p
}

#[test]
fn the_c_programs_run_unchanged_through_host_engines() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("xsock-capi-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = lib_dir();
    let ping = dir.join("pingpong");
    compile_example("pingpong.c", &ping, &dynamic_link(&lib));
    let many = dir.join("manyconn");
    compile_example("manyconn.c", &many, &dynamic_link(&lib));
    let fork = dir.join("fork");
    compile_example("../tests/fork.c", &fork, &dynamic_link(&lib));
    let bed = Testbed::new().unwrap();
    let (a, b) = bed.pair(LinkOpts::default(), "10.84.0").unwrap();
    let xsock = xsock_bin().display().to_string();
    for host in [&a, &b] {
        let pid = bed.spawn(host, &xsock, &["engine", "--iface", "eth0"]).unwrap();
        let t0 = std::time::Instant::now();
        while !bed.log_tail(pid, 20).contains("listening on") {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "engine: {}", bed.log_tail(pid, 5));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    // Message mode both programs use; each is one process of many on its
    // host's engine (two servers on b at once).
    let (ping, many) = (ping.display().to_string(), many.display().to_string());
    let s1 = bed.spawn(&b, &ping, &["server", "eth0", "10.84.0.2:7620"]).unwrap();
    let s2 = bed.spawn(&b, &many, &["server", "eth0", "10.84.0.2:7621"]).unwrap();
    let t0 = std::time::Instant::now();
    while !(b.listening(7620).unwrap() && b.listening(7621).unwrap()) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{} {}", bed.log_tail(s1, 5), bed.log_tail(s2, 5));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = a.command(&ping, &["client", "eth0", "10.84.0.2:7620", "2000", "3000"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("path=link"), "{stdout}");
    // Messages larger than the engine's 64 KiB buffers cross in chunks (the
    // server serves one client: a second one).
    let s3 = bed.spawn(&b, &ping, &["server", "eth0", "10.84.0.2:7622"]).unwrap();
    let t0 = std::time::Instant::now();
    while !b.listening(7622).unwrap() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{}", bed.log_tail(s3, 5));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = a.command(&ping, &["client", "eth0", "10.84.0.2:7622", "40", "300000"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("path=link count=40 size=300000"), "{stdout}");
    let out = a.command(&many, &["client", "eth0", "10.84.0.2:7621", "300"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("connected=300 echoed=300 "), "{stdout}");
    assert!(stdout.trim_end().ends_with("path=link"), "{stdout}");
    // A forked child of an attached process: its new connect fails at once
    // and says why; the parent's still connects.
    let out = a.command(&fork.display().to_string(), &["eth0", "10.84.0.2:7621"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("is a fork of pid") && stdout.contains("parent: connected"), "{stdout}");
    // Both programs' streams went through a's engine.
    let st = a.exec(&xsock, &["engine", "--iface", "eth0", "--status"]).unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["streams_total"].as_u64().unwrap() >= 301, "{st}");
    std::fs::remove_dir_all(&dir).unwrap();
}
