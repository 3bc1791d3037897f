//! `xsock preload [--] PROGRAM ARGS...`: runs an unmodified program with
//! its TCP sockets on xsock (LD_PRELOAD=libxsock_preload.so, through the
//! host engine). Without a program it lists the XSOCK_* settings.

use std::{os::unix::process::CommandExt, path::PathBuf};

use xsock_attach::preload::{PreloadSettings, VARIABLES};

use crate::fail::Fail;

/// Run a program with its TCP sockets on xsock (LD_PRELOAD=libxsock_preload.so through the host engine); with no
/// program, list the XSOCK_* settings the library reads.
#[derive(Debug, clap::Args)]
pub struct Preload {
    /// Print the library's path and exit (for LD_PRELOAD in a job script or mpiexec -genv).
    #[arg(long)]
    print_path: bool,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    program: Vec<String>,
}

/// Where the library is: XSOCK_PRELOAD_LIB, next to this binary (a cargo
/// build puts both in target/<profile>), or /usr/local/lib.
fn library() -> Result<PathBuf, Fail> {
    if let Some(p) = std::env::var_os("XSOCK_PRELOAD_LIB").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Fail::msg(format!("XSOCK_PRELOAD_LIB={}: no such file", p.display())))
        };
    }
    let mut tried = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)) {
        tried.push(dir.join("libxsock_preload.so"));
    }
    tried.push(PathBuf::from("/usr/local/lib/libxsock_preload.so"));
    for p in &tried {
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(Fail::msg(format!(
        "libxsock_preload.so is in none of {}: build it (`cargo build --release -p xsock-preload`) or point \
         XSOCK_PRELOAD_LIB at it",
        list.join(", ")
    )))
}

impl Preload {
    pub fn run(self) -> Result<(), Fail> {
        if self.print_path {
            println!("{}", library()?.display());
            return Ok(());
        }
        let Some((prog, args)) = self.program.split_first() else {
            println!("Settings of libxsock_preload.so (environment variables):");
            for (name, what) in VARIABLES {
                println!("  {name}\n      {what}");
            }
            return Ok(());
        };
        // A typo fails here, before the program starts.
        PreloadSettings::from_env().map_err(Fail::msg)?;
        let lib = library()?;
        let preload = match std::env::var("LD_PRELOAD") {
            Ok(v) if !v.is_empty() => format!("{}:{v}", lib.display()),
            _ => lib.display().to_string(),
        };
        let e = std::process::Command::new(prog).args(args).env("LD_PRELOAD", preload).exec();
        Err(Fail::msg(format!("cannot run {prog}: {e}")))
    }
}
