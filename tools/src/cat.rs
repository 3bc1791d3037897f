//! `xsock cat`: netcat over the socket API. Plain bytes, no framing, so with
//! the kernel transport any TCP program can be the other end. Standard input
//! goes to the peer (a half-close follows its end); what the peer sends goes
//! to standard output. Exits when both directions are done. With
//! `--boot/--name/--key-file` it joins the overlay, and `--connect NAME:PORT`
//! reaches a node in another LAN through the relays.

use std::{
    io::{Read, Write},
    net::SocketAddrV4,
    time::Duration,
};

use clap::Args;
use xsock::{ConnectOptions, Driving, Error, Mode};

use crate::{
    args::{Poll, RuntimeArgs},
    fail::Fail,
    overlay::{Accepting, Dest, JoinArgs},
};

/// Flags of `xsock cat`.
#[derive(Debug, Args)]
pub struct Cat {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Accept one connection on this address (like `nc -l`).
    #[arg(long, conflicts_with = "connect")]
    listen: Option<SocketAddrV4>,
    /// Connect to this address (like `nc`), or to NAME:PORT on the overlay
    /// (with --boot).
    #[arg(long, required_unless_present = "listen")]
    connect: Option<String>,
    #[command(flatten)]
    join: JoinArgs,
}

impl Cat {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Fail> {
        let rt = self.rt.build(Driving::Thread, Poll::Adaptive.into())?;
        let opts =
            ConnectOptions { transport: self.rt.transport(), mode: Mode::Stream, timeout: Duration::from_secs(10) };
        let node = if self.join.wanted() { Some(self.join.join(&rt)?) } else { None };
        let stream = match (self.listen, self.connect.as_deref()) {
            (Some(addr), _) => {
                let l = Accepting::bind(&rt, addr, self.rt.transport(), node.as_ref())?;
                log::info!("cat listening on {l}");
                l.accept()?
            }
            (None, Some(to)) => {
                let dest = Dest::parse(to, node.is_some())?;
                dest.connect(&rt, node.as_ref(), opts).map_err(|e| match e {
                    Error::ConnectionRefused(_) => Fail::msg(format!("{e}")),
                    e => Fail::from(e),
                })?
            }
            (None, None) => unreachable!("clap requires one"),
        };
        log::info!("connected to {} over {:?}", stream.peer_addr(), stream.path());
        let mut sender = stream.try_clone()?;
        let upload = std::thread::spawn(move || -> Result<(), Error> {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sender.send(&buf[..n])?,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::Io(e)),
                }
            }
            sender.shutdown_write()
        });
        let mut receiver = stream;
        let mut stdout = std::io::stdout().lock();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = receiver.recv(&mut buf)?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
        upload.join().map_err(|_| Fail::msg("the stdin thread panicked"))??;
        // Everything sent must be acknowledged before the process (and its
        // userspace stack) goes away.
        receiver.close(Duration::from_secs(10))?;
        Ok(())
    }
}
