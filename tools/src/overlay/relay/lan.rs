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
    auth::{AuthError, Handshake},
    relay::LocalId,
    wire::{MAX_FRAME, Msg, Role},
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

/// Reads one frame exactly (length, then body), never past it: what
/// follows belongs to the virtual connection.
#[derive(Debug, Default)]
struct ExactFrame {
    buf: Vec<u8>,
    got: usize,
}

impl ExactFrame {
    /// Reads what is there; `Ok(Some(frame))` once complete.
    fn poll(&mut self, s: &mut Stream) -> Result<Option<Vec<u8>>, String> {
        loop {
            let need = if self.got < 4 {
                4
            } else {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if len == 0 || len > MAX_FRAME {
                    return Err(format!("a {len}-byte frame: not an xsock overlay peer"));
                }
                4 + len
            };
            if self.got == need && need > 4 {
                let frame = self.buf[4..need].to_vec();
                *self = ExactFrame::default();
                return Ok(Some(frame));
            }
            self.buf.resize(need, 0);
            match s.try_recv(&mut self.buf[self.got..need]) {
                Ok(0) => return Err("the peer closed the stream".into()),
                Ok(n) => self.got += n,
                Err(Error::WouldBlock) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// What a handshake is for.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// An endpoint's stream on the serve port: it will ask for a VC.
    Admit,
    /// Our stream to an endpoint, delivering VC `local` from `src`.
    Deliver { local: LocalId, src: NodeId, dst: NodeId, port: u16 },
}

#[derive(Debug)]
enum Stage {
    Hello,
    Proof,
    /// Admit: the endpoint's `Open`. Deliver: its `Accept`.
    Request,
}

/// How a handshake ended.
pub enum Outcome {
    /// Still going.
    Pending,
    /// An endpoint (by its proven name) asks for a VC.
    Open { stream: Stream, name: String, src: NodeId, dst: NodeId, port: u16 },
    /// The endpoint accepted our delivery.
    Accepted { stream: Stream, local: LocalId },
    /// It failed; the text says why (for Deliver, the VC is refused).
    Failed { purpose: Purpose, reason: String },
}

/// One stream's handshake, driven by [`Pending::poll`].
pub struct Pending {
    stream: Option<Stream>,
    hs: Handshake,
    rd: ExactFrame,
    stage: Stage,
    purpose: Purpose,
    peer: String,
    deadline: Instant,
}

impl Pending {
    /// Starts a handshake on `stream` (our hello goes out now).
    pub fn start(mut stream: Stream, key: &Key, name: &str, purpose: Purpose) -> Result<Pending, String> {
        let hs = Handshake::new(key.clone(), Role::Relay, name, xsock::overlay::fresh_nonce());
        if !send_now(&mut stream, hs.hello()) {
            return Err("could not send the hello".into());
        }
        Ok(Pending {
            stream: Some(stream),
            hs,
            rd: ExactFrame::default(),
            stage: Stage::Hello,
            purpose,
            peer: String::new(),
            deadline: Instant::now() + HANDSHAKE,
        })
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
            Err(reason) => Outcome::Failed { purpose: self.purpose, reason },
        }
    }

    fn step(&mut self, now: Instant) -> Result<Option<Outcome>, String> {
        if now > self.deadline {
            return Err(format!("no answer within {HANDSHAKE:?} (is it an xsock overlay node?)"));
        }
        let s = self.stream.as_mut().expect("pending until it ends");
        loop {
            let Some(frame) = self.rd.poll(s)? else { return Ok(None) };
            match self.stage {
                Stage::Hello => {
                    let proof = self.hs.on_hello(&frame).map_err(|e| e.to_string())?;
                    if !send_now(s, &proof) {
                        return Err("could not send the proof".into());
                    }
                    self.stage = Stage::Proof;
                }
                Stage::Proof => {
                    let peer = self.hs.on_proof(&frame).map_err(|e| {
                        if e == AuthError::WrongKey {
                            send_now(s, &Msg::Refused { reason: "wrong cluster key" }.to_frame());
                        }
                        e.to_string()
                    })?;
                    self.peer = peer.name;
                    if let Purpose::Deliver { src, dst, port, .. } = self.purpose
                        && !send_now(s, &Msg::Open { vc: 0, src, dst, port, ttl: 0, credit: 0 }.to_frame())
                    {
                        return Err("could not send Open".into());
                    }
                    self.stage = Stage::Request;
                }
                Stage::Request => {
                    let msg = Msg::parse(&frame).map_err(|e| e.to_string())?;
                    let stream = self.stream.take().expect("still pending");
                    return match (self.purpose, msg) {
                        (Purpose::Admit, Msg::Open { src, dst, port, .. }) => {
                            Ok(Some(Outcome::Open { stream, name: std::mem::take(&mut self.peer), src, dst, port }))
                        }
                        (Purpose::Deliver { local, .. }, Msg::Accept { .. }) => {
                            Ok(Some(Outcome::Accepted { stream, local }))
                        }
                        (_, Msg::Refuse { reason, .. } | Msg::Refused { reason }) => Err(reason.to_owned()),
                        _ => Err("unexpected message after the handshake".into()),
                    };
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
