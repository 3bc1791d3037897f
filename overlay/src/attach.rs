//! An attached endpoint's side of its session with a relay, sans-IO: the
//! virtual connections (VCs) of every process behind the endpoint,
//! multiplexed on one stream to a relay of its LAN.
//!
//! Opening a VC is one `Open` (with the connection's first bytes and the
//! credit we grant) answered by `Accept` or `Refuse`; no stream and no
//! handshake per VC. The relay delivers VCs for us the same way: an `Open`
//! we accept or refuse ([`Attachment::accept`]).
//!
//! Flow control is end to end: a sender sends only within the credit the
//! far end granted. A receiver starts each VC at
//! [`AttachConfig::initial_window`] and gives credit back as the
//! application reads; whenever the application has read everything while
//! the sender holds under a quarter window of credit, both wait on the
//! window, so it doubles, up to [`AttachConfig::max_window`]. A VC on a long fat path so grows to the
//! path's bandwidth-delay product, and an idle or slow one holds only what
//! it was given.
//!
//! Driven like the other cores: [`Attachment::handle_frame`] for each
//! frame from the relay, [`Attachment::poll_transmit`] for the bytes to
//! write, [`Attachment::poll_event`] for what the application must hear,
//! [`Attachment::handle_timeout`] at [`Attachment::poll_timeout`].

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use crate::{
    NodeId,
    linkq::LinkQueue,
    relay::{MAX_HOPS, PATH_LOST},
    wire::{MAX_DATA, Msg, OPEN_DATA, ParseError},
};

/// Credit smaller than this goes back only when it unblocks a sender that
/// has read everything (no message per tiny read).
const SMALL_CREDIT: u64 = 4096;

/// A VC's id on the session (even: ours; odd: the relay's).
pub type VcId = u32;

/// Tunables.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// This endpoint.
    pub me: NodeId,
    /// Credit a new VC's sender gets.
    pub initial_window: u32,
    /// The most a VC's window grows to.
    pub max_window: u32,
    /// A keepalive goes out after this long with nothing sent.
    pub keepalive: Duration,
    /// The session is dead after this long with nothing heard.
    pub timeout: Duration,
}

impl AttachConfig {
    /// Defaults for endpoint `me`: 256 KiB windows growing to 16 MiB; a
    /// keepalive every 500 ms, and a session silent for 10 s is dead (the
    /// relay's `link_timeout` too). 2 s was too short for a loaded host: a
    /// 512-endpoint run on 2 vCPUs (about 800 threads) lost 641 relay
    /// links and 1,840 sessions to silence, and completed 25-74 % of its
    /// exchanges; with 10 s, none and 97.9 %. A relay that dies and stays
    /// away is noticed that much later (one that restarts answers the old
    /// session at once).
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            initial_window: 256 << 10,
            max_window: 16 << 20,
            keepalive: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What the application must hear about.
// Each variant's doc names its fields.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Our `Open` was accepted: the VC carries data both ways.
    Opened(VcId),
    /// Our `Open` was refused (by a relay or the far end), with the reason.
    Refused { vc: VcId, reason: String },
    /// A VC for us from `src` on `port`: [`Attachment::accept`] or
    /// [`Attachment::refuse`] it.
    Incoming { vc: VcId, src: NodeId, port: u16 },
    /// Bytes arrived on the VC.
    Readable(VcId),
    /// Credit arrived on a VC that had none.
    Writable(VcId),
    /// The far end sends nothing more (after what is unread).
    Finished(VcId),
    /// The VC is gone (the far end reset it, a relay on its path failed,
    /// the session died, or the peer broke the protocol), with the reason.
    Aborted { vc: VcId, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our `Open` waits for its answer.
    Opening,
    /// Their `Open` waits for the application.
    Incoming,
    Open,
}

#[derive(Debug)]
struct Vc {
    phase: Phase,
    /// Received, not yet read.
    rx: VecDeque<u8>,
    /// Bytes the far end may send us in all (its first bytes included).
    granted: u64,
    /// Bytes received in all.
    received: u64,
    /// Bytes the application has read in all.
    read: u64,
    window: u32,
    /// Bytes we may still send.
    credit: u64,
    peer_closed: bool,
    we_closed: bool,
}

impl Vc {
    fn new(phase: Phase, window: u32) -> Vc {
        Vc {
            phase,
            rx: VecDeque::new(),
            granted: 0,
            received: 0,
            read: 0,
            window,
            credit: 0,
            peer_closed: false,
            we_closed: false,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Attachment {
    cfg: AttachConfig,
    vcs: HashMap<VcId, Vc>,
    next_vc: VcId,
    ports: HashSet<u16>,
    out: LinkQueue,
    events: VecDeque<Event>,
    last_heard: Duration,
    last_sent: Duration,
    dead: Option<String>,
    /// Times a window grew (for the status report and the tests).
    pub windows_grown: u64,
}

impl Attachment {
    /// A session whose preamble has just ended at `now`.
    pub fn new(cfg: AttachConfig, now: Duration) -> Self {
        Self {
            cfg,
            vcs: HashMap::new(),
            next_vc: 2,
            ports: HashSet::new(),
            out: LinkQueue::default(),
            events: VecDeque::new(),
            last_heard: now,
            last_sent: now,
            dead: None,
            windows_grown: 0,
        }
    }

    /// VCs for `port` are offered to the application from now on (others
    /// are refused).
    pub fn listen(&mut self, port: u16) {
        self.ports.insert(port);
    }

    /// VCs for `port` are refused from now on.
    pub fn unlisten(&mut self, port: u16) {
        self.ports.remove(&port);
    }

    /// Opens a VC to `dst`:`port`; the `Open` carries as much of `first`
    /// as it may ([`OPEN_DATA`]): returns the VC and how many bytes of
    /// `first` it took. [`Event::Opened`] or [`Event::Refused`] follows.
    pub fn open(&mut self, dst: NodeId, port: u16, first: &[u8]) -> (VcId, usize) {
        let vc = self.next_vc;
        self.next_vc = self.next_vc.wrapping_add(2).max(2);
        let mut v = Vc::new(Phase::Opening, self.cfg.initial_window);
        v.granted = u64::from(v.window);
        let data = &first[..first.len().min(OPEN_DATA)];
        let credit = v.window;
        self.vcs.insert(vc, v);
        self.send(&Msg::Open { vc, src: self.cfg.me, dst, port, ttl: MAX_HOPS, credit, data });
        (vc, data.len())
    }

    /// Accepts the incoming VC `vc` ([`Event::Incoming`]).
    pub fn accept(&mut self, vc: VcId) {
        let Some(v) = self.vcs.get_mut(&vc).filter(|v| v.phase == Phase::Incoming) else { return };
        v.phase = Phase::Open;
        v.granted += u64::from(v.window);
        let (credit, writable) = (v.window, v.credit > 0);
        self.send(&Msg::Accept { vc, credit });
        if writable {
            self.events.push_back(Event::Writable(vc));
        }
    }

    /// Refuses the incoming VC `vc`, telling its opener `reason`.
    pub fn refuse(&mut self, vc: VcId, reason: &str) {
        if self.vcs.get(&vc).is_some_and(|v| v.phase == Phase::Incoming) {
            self.vcs.remove(&vc);
            self.send(&Msg::Refuse { vc, reason });
        }
    }

    /// Bytes `vc` may send now.
    pub fn send_space(&self, vc: VcId) -> usize {
        match self.vcs.get(&vc) {
            Some(v) if v.phase == Phase::Open && !v.we_closed => v.credit.min(usize::MAX as u64) as usize,
            _ => 0,
        }
    }

    /// Sends what the credit allows of `data` on `vc`: how many bytes.
    pub fn write(&mut self, vc: VcId, data: &[u8]) -> usize {
        let n = data.len().min(self.send_space(vc));
        if n == 0 {
            return 0;
        }
        self.vcs.get_mut(&vc).expect("has space").credit -= n as u64;
        for chunk in data[..n].chunks(MAX_DATA) {
            self.send(&Msg::Data { vc, bytes: chunk });
        }
        n
    }

    /// Bytes unread on `vc`.
    pub fn readable(&self, vc: VcId) -> usize {
        self.vcs.get(&vc).map_or(0, |v| v.rx.len())
    }

    /// Whether the far end of `vc` finished and everything it sent is read.
    pub fn at_end(&self, vc: VcId) -> bool {
        self.vcs.get(&vc).is_none_or(|v| v.peer_closed && v.rx.is_empty())
    }

    /// Reads from `vc` into `buf`; credit goes back as the window says.
    pub fn read(&mut self, vc: VcId, buf: &mut [u8]) -> usize {
        let Some(v) = self.vcs.get_mut(&vc) else { return 0 };
        let n = buf.len().min(v.rx.len());
        let (a, b) = v.rx.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        v.rx.drain(..n);
        v.read += n as u64;
        let drained = n > 0 && v.rx.is_empty();
        self.give_credit(vc, false, drained);
        self.reap(vc);
        n
    }

    /// We send nothing more on `vc` (what was written still goes).
    pub fn close(&mut self, vc: VcId) {
        let Some(v) = self.vcs.get_mut(&vc) else { return };
        if v.we_closed || v.phase != Phase::Open {
            return;
        }
        v.we_closed = true;
        self.send(&Msg::Close { vc });
        self.reap(vc);
    }

    /// Resets `vc`, telling the far end `reason`; it is forgotten.
    pub fn abort(&mut self, vc: VcId, reason: &str) {
        let Some(v) = self.vcs.remove(&vc) else { return };
        match v.phase {
            Phase::Incoming => self.send(&Msg::Refuse { vc, reason }),
            _ => self.send(&Msg::Abort { vc, reason }),
        }
    }

    /// VCs held now.
    pub fn vc_count(&self) -> usize {
        self.vcs.len()
    }

    /// Why the session is dead, once it is (every VC was aborted).
    pub fn dead(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    /// One frame (type + body) from the relay. An error means the relay
    /// broke the protocol: the caller ends the session
    /// ([`Attachment::handle_session_lost`]).
    pub fn handle_frame(&mut self, now: Duration, frame: &[u8]) -> Result<(), ParseError> {
        let msg = Msg::parse(frame)?;
        self.last_heard = now;
        match msg {
            Msg::Open { vc, src, dst, port, credit, data, .. } => {
                if vc % 2 == 0 {
                    return Err(ParseError::BadValue("even vc id from the relay"));
                }
                if self.vcs.contains_key(&vc) {
                    return Err(ParseError::BadValue("open of a vc id in use"));
                }
                if dst != self.cfg.me {
                    let reason = format!("this session is node {}, not {dst}", self.cfg.me);
                    self.send(&Msg::Refuse { vc, reason: &reason });
                } else if !self.ports.contains(&port) {
                    let reason = format!("node {dst} does not listen on port {port}");
                    self.send(&Msg::Refuse { vc, reason: &reason });
                } else {
                    let mut v = Vc::new(Phase::Incoming, self.cfg.initial_window);
                    v.credit = u64::from(credit);
                    v.rx.extend(data);
                    v.granted = data.len() as u64;
                    v.received = data.len() as u64;
                    self.vcs.insert(vc, v);
                    self.events.push_back(Event::Incoming { vc, src, port });
                }
            }
            Msg::Accept { vc, credit } => {
                if let Some(v) = self.vcs.get_mut(&vc).filter(|v| v.phase == Phase::Opening) {
                    v.phase = Phase::Open;
                    v.credit += u64::from(credit);
                    self.events.push_back(Event::Opened(vc));
                }
            }
            Msg::Refuse { vc, reason } => {
                if let Some(v) = self.vcs.remove(&vc) {
                    let reason = reason.to_owned();
                    self.events.push_back(match v.phase {
                        Phase::Opening => Event::Refused { vc, reason },
                        _ => Event::Aborted { vc, reason },
                    });
                }
            }
            Msg::Data { vc, bytes } => self.on_data(vc, bytes),
            Msg::Credit { vc, bytes } => {
                if let Some(v) = self.vcs.get_mut(&vc).filter(|v| v.phase == Phase::Open) {
                    let was = v.credit;
                    v.credit += u64::from(bytes);
                    if was == 0 && !v.we_closed {
                        self.events.push_back(Event::Writable(vc));
                    }
                }
            }
            Msg::Close { vc } => {
                if let Some(v) = self.vcs.get_mut(&vc).filter(|v| v.phase == Phase::Open && !v.peer_closed) {
                    v.peer_closed = true;
                    self.events.push_back(Event::Finished(vc));
                    self.reap(vc);
                }
            }
            Msg::Abort { vc, reason } => {
                if self.vcs.remove(&vc).is_some() {
                    self.events.push_back(Event::Aborted { vc, reason: reason.to_owned() });
                }
            }
            Msg::Keepalive => {}
            _ => return Err(ParseError::BadValue("message type on a session")),
        }
        Ok(())
    }

    fn on_data(&mut self, vc: VcId, bytes: &[u8]) {
        let Some(v) = self.vcs.get_mut(&vc) else { return };
        if v.phase != Phase::Open || v.peer_closed || v.received + bytes.len() as u64 > v.granted {
            let reason = "the far end sent data beyond its credit (a broken peer)";
            self.abort(vc, reason);
            self.events.push_back(Event::Aborted { vc, reason: reason.to_owned() });
            return;
        }
        let was_empty = v.rx.is_empty();
        v.rx.extend(bytes);
        v.received += bytes.len() as u64;
        if was_empty {
            self.events.push_back(Event::Readable(vc));
        }
        if v.received == v.granted {
            // The sender used every byte we granted: it waits on us now.
            self.give_credit(vc, true, false);
        }
    }

    /// Credit back for what the application read: once a quarter window
    /// is owed, or at once when the sender ran out (`exhausted`). When a
    /// read has `drained` everything while the sender holds under a quarter
    /// window of credit, the application waits on the sender and the
    /// sender on credit: the window held the VC back, and it doubles.
    fn give_credit(&mut self, vc: VcId, exhausted: bool, drained: bool) {
        let max = self.cfg.max_window;
        let Some(v) = self.vcs.get_mut(&vc).filter(|v| v.phase == Phase::Open && !v.peer_closed) else { return };
        if drained && v.granted - v.received < u64::from(v.window / 4) && v.window < max {
            v.window = v.window.saturating_mul(2).min(max);
            self.windows_grown += 1;
        }
        let target = v.read + u64::from(v.window);
        let owed = target.saturating_sub(v.granted);
        // A sender still holding credit hears in quarter windows; one that
        // waits, as soon as the read is worth a message.
        let waits = v.received >= v.granted;
        let worth = owed >= u64::from(v.window / 4) || (waits && (owed >= SMALL_CREDIT || v.rx.is_empty()));
        if owed == 0 || !(exhausted || worth) {
            return;
        }
        let bytes = owed.min(u64::from(u32::MAX)) as u32;
        v.granted += u64::from(bytes);
        self.send(&Msg::Credit { vc, bytes });
    }

    /// Forgets `vc` once both sides finished and everything is read.
    fn reap(&mut self, vc: VcId) {
        if self.vcs.get(&vc).is_some_and(|v| v.peer_closed && v.we_closed && v.rx.is_empty()) {
            self.vcs.remove(&vc);
        }
    }

    /// The stream to the relay broke or went silent: every VC is aborted
    /// with `why`.
    pub fn handle_session_lost(&mut self, why: &str) {
        if self.dead.is_some() {
            return;
        }
        let reason = format!("{PATH_LOST}{why}");
        let mut ids: Vec<VcId> = self.vcs.keys().copied().collect();
        ids.sort_unstable();
        for vc in ids {
            let v = self.vcs.remove(&vc).expect("listed");
            let reason = reason.clone();
            self.events.push_back(match v.phase {
                Phase::Opening => Event::Refused { vc, reason },
                _ => Event::Aborted { vc, reason },
            });
        }
        self.dead = Some(why.to_owned());
        self.out = LinkQueue::default();
    }

    /// Keepalives, and the session's death when the relay fell silent.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.dead.is_some() {
            return;
        }
        if now.saturating_sub(self.last_heard) > self.cfg.timeout {
            let why = format!("the relay was silent for {:?}", self.cfg.timeout);
            self.handle_session_lost(&why);
            return;
        }
        if now.saturating_sub(self.last_sent) >= self.cfg.keepalive {
            self.send(&Msg::Keepalive);
        }
    }

    /// When [`Attachment::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Duration {
        (self.last_sent + self.cfg.keepalive).min(self.last_heard + self.cfg.timeout + Duration::from_millis(1))
    }

    /// Bytes to write to the relay (whole frames), `None` when there are none.
    /// `now` is when they leave (the keepalive clock).
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        self.poll_transmit_some(now, usize::MAX)
    }

    /// About `budget` bytes of it, the VCs taking turns a frame at a time
    /// ([`LinkQueue`]): a shell that asks only while the stream has room
    /// keeps one VC's bulk from queueing in front of another's message.
    pub fn poll_transmit_some(&mut self, now: Duration, budget: usize) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            return None;
        }
        self.last_sent = now;
        Some(self.out.pop(budget))
    }

    /// Bytes waiting for [`Attachment::poll_transmit`].
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// The next thing the application must hear.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn send(&mut self, msg: &Msg<'_>) {
        if self.dead.is_some() {
            return;
        }
        match msg.vc() {
            Some(vc) => self.out.push_vc(vc, msg.to_frame()),
            None => self.out.push_control(&msg.to_frame()),
        }
    }
}

/// Feeds `data`, as a byte stream from a hostile peer, to an endpoint's
/// session core and to a relay's session with it: nothing may panic, and
/// what either answers parses (the `overlay_frame` fuzz target, whose
/// corpus the tests replay).
pub fn hostile_bytes(data: &[u8]) {
    use crate::{
        relay::{RelayConfig, RelayCore},
        route::ShortestPath,
        wire::FrameReader,
    };
    let me = NodeId(2);
    let mut a = Attachment::new(AttachConfig::new(me), Duration::ZERO);
    a.listen(80);
    let (vc, _) = a.open(NodeId(3), 80, b"first");
    let mut relay = RelayCore::new(RelayConfig::new(NodeId(1), 1), Box::new(ShortestPath), Duration::ZERO);
    relay.handle_session_up(Duration::ZERO, 9, me);
    let mut rd = FrameReader::default();
    rd.push(data);
    let (mut endpoint_ok, mut relay_ok) = (true, true);
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Some(f)) = rd.next_frame() {
        endpoint_ok = endpoint_ok && a.handle_frame(Duration::from_millis(1), f).is_ok();
        relay_ok = relay_ok && relay.handle_link_frame(Duration::from_millis(1), 9, f).is_ok();
        a.write(vc, &buf[..100]);
        a.read(vc, &mut buf);
        while let Some(Event::Incoming { vc, .. }) = a.poll_event() {
            a.accept(vc);
        }
    }
    a.handle_timeout(Duration::from_secs(10));
    if let Some(out) = a.poll_transmit(Duration::from_secs(10)) {
        let mut rd = FrameReader::default();
        rd.push(&out);
        while let Some(f) = rd.next_frame().expect("our frames are well formed") {
            assert!(Msg::parse(f).is_ok(), "the session core emitted a frame that does not parse");
        }
    }
    while relay.poll_transmit().is_some() {}
    while relay.poll_action().is_some() {}
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What a hostile relay or a confused application may do.
    #[derive(Debug, Clone)]
    enum Op {
        Open { vc: u32, port: u16, credit: u32, data: usize },
        Accept { vc: u32, credit: u32 },
        Refuse(u32),
        Data { vc: u32, len: usize },
        Credit { vc: u32, bytes: u32 },
        Close(u32),
        Abort(u32),
        Garbage(Vec<u8>),
        AppOpen(usize),
        AppAccept(u32),
        AppWrite { vc: u32, len: usize },
        AppRead { vc: u32, len: usize },
        AppClose(u32),
        AppAbort(u32),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let vc = 0u32..8;
        prop_oneof![
            (vc.clone(), 79u16..82, any::<u32>(), 0usize..OPEN_DATA + 2)
                .prop_map(|(vc, port, credit, data)| Op::Open { vc, port, credit, data }),
            (vc.clone(), any::<u32>()).prop_map(|(vc, credit)| Op::Accept { vc, credit }),
            vc.clone().prop_map(Op::Refuse),
            (vc.clone(), 0usize..300_000).prop_map(|(vc, len)| Op::Data { vc, len }),
            (vc.clone(), any::<u32>()).prop_map(|(vc, bytes)| Op::Credit { vc, bytes }),
            vc.clone().prop_map(Op::Close),
            vc.clone().prop_map(Op::Abort),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Garbage),
            (0usize..20_000).prop_map(Op::AppOpen),
            vc.clone().prop_map(Op::AppAccept),
            (vc.clone(), 0usize..600_000).prop_map(|(vc, len)| Op::AppWrite { vc, len }),
            (vc.clone(), 0usize..600_000).prop_map(|(vc, len)| Op::AppRead { vc, len }),
            vc.clone().prop_map(Op::AppClose),
            vc.prop_map(Op::AppAbort),
            (0u64..3000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Nothing a relay sends and nothing the application calls panics;
        /// a VC never holds more than it granted, nor sends beyond its
        /// credit, and what the core emits always parses.
        #[test]
        fn hostile_frames_and_calls_keep_the_books(ops in proptest::collection::vec(op(), 1..60)) {
            let me = NodeId(7);
            let mut a = Attachment::new(AttachConfig::new(me), Duration::ZERO);
            a.listen(80);
            let mut now = Duration::ZERO;
            let mut buf = vec![0u8; 600_000];
            for op in ops {
                let frame = |m: Msg<'_>| m.to_frame()[4..].to_vec();
                let f = match op {
                    Op::Open { vc, port, credit, data } => {
                        let d = vec![1u8; data];
                        Some(frame(Msg::Open { vc, src: NodeId(9), dst: me, port, ttl: 3, credit, data: &d }))
                    }
                    Op::Accept { vc, credit } => Some(frame(Msg::Accept { vc, credit })),
                    Op::Refuse(vc) => Some(frame(Msg::Refuse { vc, reason: "no" })),
                    Op::Data { vc, len } => {
                        // Longer than one message may carry: several.
                        let d = vec![2u8; len.min(MAX_DATA)];
                        Some(frame(Msg::Data { vc, bytes: &d }))
                    }
                    Op::Credit { vc, bytes } => Some(frame(Msg::Credit { vc, bytes })),
                    Op::Close(vc) => Some(frame(Msg::Close { vc })),
                    Op::Abort(vc) => Some(frame(Msg::Abort { vc, reason: "gone" })),
                    Op::Garbage(g) => Some(g),
                    Op::AppOpen(n) => {
                        let (_, took) = a.open(NodeId(3), 80, &vec![0u8; n]);
                        prop_assert!(took <= OPEN_DATA);
                        None
                    }
                    Op::AppAccept(vc) => { a.accept(vc); None }
                    Op::AppWrite { vc, len } => {
                        let space = a.send_space(vc);
                        let n = a.write(vc, &buf[..len]);
                        prop_assert!(n <= space && n <= len);
                        None
                    }
                    Op::AppRead { vc, len } => {
                        let had = a.readable(vc);
                        let n = a.read(vc, &mut buf[..len]);
                        prop_assert!(n <= had);
                        None
                    }
                    Op::AppClose(vc) => { a.close(vc); None }
                    Op::AppAbort(vc) => { a.abort(vc, "app"); None }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        a.handle_timeout(now);
                        None
                    }
                };
                if let Some(f) = f {
                    let _ = a.handle_frame(now, &f);
                }
                for v in a.vcs.values() {
                    prop_assert!(v.received <= v.granted, "received {} of {} granted", v.received, v.granted);
                    prop_assert!(v.rx.len() as u64 <= v.received - v.read.min(v.received));
                    prop_assert!(v.window <= a.cfg.max_window);
                }
                while a.poll_event().is_some() {}
                if let Some(out) = a.poll_transmit(now) {
                    let mut rd = crate::wire::FrameReader::default();
                    rd.push(&out);
                    while let Some(f) = rd.next_frame().expect("our frames are well formed") {
                        prop_assert!(Msg::parse(f).is_ok());
                    }
                }
            }
        }
    }
}
