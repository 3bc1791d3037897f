//! Compiles the XDP filter program (bpf/xsock_filter.bpf.c) with clang for
//! the bpf target; the object is embedded in the crate with `include_bytes!`.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let src = "bpf/xsock_filter.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("xsock_filter.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-c", src, "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {src} ({s}); see the compiler output above"),
        Err(e) => panic!(
            "cannot run `{clang}` to build the XDP filter program ({e}): \
             install clang (apt-get install clang llvm) or point CLANG at one"
        ),
    }
}
