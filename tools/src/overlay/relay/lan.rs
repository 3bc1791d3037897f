//! The relay's LAN side, without a thread per stream: endpoints open
//! virtual connections on the serve port (key handshake, then `Open`), and
//! the relay opens streams to the endpoints it delivers to (handshake,
//! `Open`, then `Accept`). Both run as non-blocking state machines in the
//! core loop; only the connect itself (discovery and the reliable-link
//! handshake, which block) runs on a small pool of threads.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, unbounded};
use xsock::{ConnectOptions, Error, Runtime, Stream, Transport, overlay::Key};
use xsock_overlay::{
    NodeId,
    auth::Handshake,
    preamble::{Done, ExactReader, Preamble},
    relay::LocalId,
    wire::Role,
};

use super::shell::{Event, Notify};

/// How long a LAN handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(3);
/// Threads that open delivery streams.
const CONNECTORS: usize = 4;

/// A job for the connect pool.
pub struct ConnectJob {
    pub local: LocalId,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Starts the connect pool; jobs go into the returned sender.
pub fn spawn_connectors(rt: &Runtime, tx: &Notify) -> Sender<ConnectJob> {
    let (jobs, rx): (Sender<ConnectJob>, Receiver<ConnectJob>) = unbounded();
    for i in 0..CONNECTORS {
        let (rt, rx, tx) = (rt.clone(), rx.clone(), tx.clone());
        let _ = std::thread::Builder::new().name(format!("lan-conn{i}")).spawn(move || {
            for job in rx.iter() {
                let opts = ConnectOptions { transport: Transport::Link, timeout: HANDSHAKE, ..Default::default() };
                let r = Stream::connect_with(&rt, SocketAddrV4::new(job.ip, job.port), opts);
                tx.send(Event::Dialed { local: job.local, ip: job.ip, port: job.port, stream: r });
            }
        });
    }
    jobs
}

/// What a handshake is for.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// An endpoint's stream on the serve port: it will ask for a VC.
    Admit,
    /// Our stream to an endpoint, delivering VC `local` from `src`.
    Deliver { local: LocalId, src: NodeId, dst: NodeId, port: u16 },
}

/// How a handshake ended.
pub enum Outcome {
    /// Still going.
    Pending,
    /// An endpoint (by its proven name) asks for a VC.
    Open { stream: Stream, name: String, src: NodeId, dst: NodeId, port: u16 },
    /// An endpoint (by its proven name) attaches as `node`: the stream
    /// becomes its session.
    Attach { stream: Stream, name: String, node: NodeId },
    /// The endpoint accepted our delivery.
    Accepted { stream: Stream, local: LocalId },
    /// It failed; the text says why (for Deliver, the VC is refused).
    /// `auth`: the peer failed authentication (a wrong key, a stranger),
    /// not the stream or the clock.
    Failed { purpose: Purpose, reason: String, auth: bool },
}

/// One stream's preamble ([`xsock_overlay::preamble`]), driven by
/// [`Pending::poll`] without blocking.
pub struct Pending {
    stream: Option<Stream>,
    pre: Preamble,
    rd: ExactReader,
    purpose: Purpose,
    deadline: Instant,
}

impl Pending {
    /// Starts a handshake on `stream` (our hello goes out now).
    pub fn start(stream: Stream, key: &Key, name: &str, purpose: Purpose) -> Result<Pending, String> {
        let hs = Handshake::new(key.clone(), Role::Relay, name, xsock::overlay::fresh_nonce());
        let pre = match purpose {
            Purpose::Admit => Preamble::answer(hs),
            Purpose::Deliver { src, dst, port, .. } => Preamble::open(hs, src, dst, port),
        };
        let mut p = Pending {
            stream: Some(stream),
            pre,
            rd: ExactReader::default(),
            purpose,
            deadline: Instant::now() + HANDSHAKE,
        };
        if !p.flush() {
            return Err("could not send the hello".into());
        }
        Ok(p)
    }

    /// Sends what the preamble has to send; false if the stream took less.
    fn flush(&mut self) -> bool {
        let Some(s) = self.stream.as_mut() else { return false };
        while let Some(f) = self.pre.poll_transmit() {
            if !send_now(s, &f) {
                return false;
            }
        }
        true
    }

    /// Who is on the other side (the stream's address).
    pub fn from(&self) -> String {
        self.stream.as_ref().map(|s| s.peer_addr().to_string()).unwrap_or_default()
    }

    /// Moves the handshake on with what has arrived.
    pub fn poll(&mut self, now: Instant) -> Outcome {
        match self.step(now) {
            Ok(Some(o)) => o,
            Ok(None) => Outcome::Pending,
            Err((reason, auth)) => Outcome::Failed { purpose: self.purpose, reason, auth },
        }
    }

    /// `Err((why, auth))`, `auth` when the peer failed authentication.
    fn step(&mut self, now: Instant) -> Result<Option<Outcome>, (String, bool)> {
        let plain = |why: String| (why, false);
        loop {
            let s = self.stream.as_mut().expect("pending until it ends");
            let n = match s.try_recv(self.rd.space()) {
                Ok(0) => return Err(plain("the peer closed the stream".into())),
                Ok(n) => n,
                // What arrived is taken first, and only then the deadline
                // judged: a relay loop that came back late must not fail
                // a handshake whose answer waits in the stream.
                Err(Error::WouldBlock) if now > self.deadline => {
                    return Err(plain(format!("no answer within {HANDSHAKE:?} (is it an xsock overlay node?)")));
                }
                Err(Error::WouldBlock) => return Ok(None),
                Err(e) => return Err(plain(e.to_string())),
            };
            let Some(frame) = self.rd.filled(n).map_err(|e| plain(format!("{e}: not an xsock overlay peer?")))? else {
                continue;
            };
            let r = self.pre.handle_frame(&frame);
            let sent = self.flush();
            match r {
                Ok(None) if sent => {}
                Ok(None) => return Err(plain("could not send the next handshake step".into())),
                Ok(Some(done)) => {
                    let stream = self.stream.take().expect("still pending");
                    return match (self.purpose, done) {
                        (Purpose::Admit, Done::Asked { peer, src, dst, port }) => {
                            Ok(Some(Outcome::Open { stream, name: peer.name, src, dst, port }))
                        }
                        (Purpose::Admit, Done::Attaching { peer, node }) => {
                            Ok(Some(Outcome::Attach { stream, name: peer.name, node }))
                        }
                        (Purpose::Deliver { local, .. }, Done::Accepted(_)) => {
                            Ok(Some(Outcome::Accepted { stream, local }))
                        }
                        _ => Err(plain("the handshake ended in the wrong step".into())),
                    };
                }
                Err(e) => {
                    let auth = matches!(e, xsock_overlay::preamble::PreambleError::Auth(_));
                    return Err((e.to_string(), auth));
                }
            }
        }
    }
}

/// Sends a small control frame without waiting (the loop that drives the
/// datapath must not block on it).
pub fn send_now(s: &mut Stream, frame: &[u8]) -> bool {
    matches!(s.try_send(frame), Ok(n) if n == frame.len())
}
