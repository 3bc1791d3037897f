//! `xsock-perf`: the benchmark suite. Each suite prints Markdown tables
//! (the ones in perf/RESULTS.md) on stdout and progress on stderr.
//!
//! Measurements run one at a time, in interleaved rounds (xsock, then its
//! kernel baseline, then the next round), and tables report the median over
//! rounds; ratios are taken within a round, then the median ratio reported,
//! so a machine whose speed drifts during the run still compares like with
//! like.
//!
//! ```text
//! xsock-perf foundation|link|relay|scale|engine [--rounds N] [--xsock PATH] [--out DIR] [--only PART]
//! xsock-perf relaysim [--only 100,1000,10000]      (no root, no xsock binary: cores in this process)
//! xsock-perf handshake [--rounds 2000]             (no root: what node certificates cost a Noise handshake)
//! ```

mod across;
mod engine;
mod foundation;
mod handshake;
mod link;
mod relay;
mod relaysim;
mod scale;
mod suites_common;

use std::{io, path::PathBuf};

const USAGE: &str =
    "usage: xsock-perf foundation|link|relay|scale|engine [--rounds N] [--xsock PATH] [--out DIR] [--only PART]";

struct Opts {
    suite: String,
    rounds: usize,
    xsock: PathBuf,
    out: PathBuf,
    only: Option<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let suite = args.next().ok_or(USAGE)?;
    let mut rounds = 5;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut xsock = exe.with_file_name("xsock");
    let mut out = PathBuf::from("perf");
    let mut only = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).ok_or("--rounds needs a number")?,
            "--xsock" => xsock = args.next().ok_or("--xsock needs a path")?.into(),
            "--out" => out = args.next().ok_or("--out needs a directory")?.into(),
            "--only" => {
                only =
                    Some(args.next().ok_or(
                        "--only needs a part (scale: conns, bulk, ping, one; engine: procs, one, ping, memory)",
                    )?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !xsock.exists() {
        return Err(format!(
            "no xsock binary at {} (build it with `cargo build --release -p xsock-tools`, or pass --xsock)",
            xsock.display()
        ));
    }
    Ok(Opts { suite, rounds, xsock, out, only })
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("handshake") {
        let rounds = std::env::args().skip(2).skip_while(|a| a != "--rounds").nth(1);
        let rounds = rounds.and_then(|r| r.parse().ok()).unwrap_or(2000);
        if let Err(e) = handshake::run(rounds) {
            eprintln!("xsock-perf: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("relaysim") {
        let only = std::env::args().skip(2).skip_while(|a| a != "--only").nth(1);
        if let Err(e) = relaysim::run(only.as_deref()) {
            eprintln!("xsock-perf: {e}");
            std::process::exit(1);
        }
        return;
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xsock-perf: {e}");
            std::process::exit(2);
        }
    };
    if !xsock_testbed::is_root() {
        eprintln!("xsock-perf: needs root (network namespaces, AF_XDP)");
        std::process::exit(2);
    }
    let r = match opts.suite.as_str() {
        "foundation" => foundation::run(&opts.xsock, opts.rounds),
        "link" => link::run(&opts.xsock, opts.rounds, &opts.out),
        "relay" => relay::run(&opts.xsock, opts.rounds),
        "scale" => scale::run(&opts.xsock, opts.rounds, opts.only.as_deref()),
        "engine" => engine::run(&opts.xsock, opts.rounds, opts.only.as_deref()),
        other => Err(io::Error::other(format!(
            "unknown suite {other}; suites: foundation, link, relay, relaysim, scale, engine"
        ))),
    };
    if let Err(e) = r {
        eprintln!("xsock-perf: {e}");
        std::process::exit(1);
    }
}
