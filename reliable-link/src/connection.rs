//! One reliable-link connection: a sans-IO state machine.
//!
//! Driver surface (called by the [`crate::Endpoint`] that owns it):
//! - [`Connection::handle_input`] for every frame addressed to it;
//! - [`Connection::poll_transmit`] until it returns `None`, after any input,
//!   timeout or application call;
//! - [`Connection::poll_timeout`] for when to call
//!   [`Connection::handle_timeout`];
//! - [`Connection::poll_event`] for what the application should hear.
//!
//! Fast path: DATA frames carry the sender's receive state (`ack`, `limit`),
//! so a conversation needs no separate acknowledgements, and a one-way
//! stream sees one CREDIT frame per quarter of the receive window read.
//!
//! Buffers on demand: both directions live in [`ChunkRing`]s from the
//! endpoint's [`BufferPool`], so a connection holds memory only for bytes
//! it buffers. The receive window (the credit granted) starts at
//! [`Config::initial_window`] and is backed by a reservation in the pool's
//! budget; it doubles, up to [`Config::recv_buffer`], each time the sender
//! used up all the credit while the reader kept up (the window, not the
//! reader, was the bottleneck: the bandwidth-delay product of the credit
//! loop is larger than the window), and it falls back to the initial
//! window after [`Config::idle_shrink`] without traffic, giving the budget
//! back; it stops growing once a larger window stops making the transfer
//! faster (three credit cycles without a quarter more rate, as BBR leaves
//! start-up), so parallel streams that share a link keep small windows.
//! The send side may buffer twice the peer's window (at least 256 KiB, at
//! most [`Config::send_buffer`]), with memory reserved as bytes are written
//! and returned as they are acknowledged.
//! There is no checksum (the NIC checks the CRC) and no per-frame timer.
//!
//! Rare path: a receiver that sees a hole keeps the frames behind it
//! ([`crate::reorder`], inside the credit it granted) and sends one NAK
//! naming the hole's start (`ack`) and end (`seq`: the first frame it
//! holds); the sender resends just that, out of the bytes it keeps until
//! acknowledged, then carries on. A NAK with no end (a lost tail, or a FIN
//! ahead of missing data) sends it back to the first missing byte
//! (go-back-N). A single timer per connection, armed only while it waits
//! for the peer, resends SYN / SYN-ACK / FIN or probes for the receive
//! state (which repairs a lost tail), backing off; after `dead_after`
//! without hearing from the peer the connection fails.

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::{
    buffer::{BufferPool, ChunkRing},
    reorder::Reorder,
    wire::{
        Body, FLAG_BLOCKED, FLAG_END, FLAG_FIN_SEEN, FLAG_SHRINK, FLAG_SHRINK_ACK, HEADER_LEN, Packet, Repr, RstBody,
        RstReason, SynAckBody, SynBody,
    },
};

/// Bytes a connection may always buffer for sending, whatever the peer's
/// window (a request of this size is handed over without waiting for the
/// peer's reader).
pub const SEND_SLACK: usize = 256 << 10;

/// The largest window the protocol allows (4 GiB): a peer that advertises
/// credit further than this beyond what it has received is broken or
/// hostile, and is reset.
pub const MAX_WINDOW: u64 = 1 << 32;

/// Flag of a CREDIT frame: it answers a PROBE (so everything the prober
/// sent before it has arrived, or was lost).
pub const FLAG_PROBE_REPLY: u8 = 0x04;

/// How a connection delivers bytes to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A byte stream: reads ignore message boundaries.
    #[default]
    Stream = 0,
    /// Messages: each write is one message, each read stops at its end.
    Message = 1,
}

impl Mode {
    pub(crate) fn from_u8(v: u8) -> Mode {
        if v == 1 { Mode::Message } else { Mode::Stream }
    }
}

/// Tunables of a connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// The most bytes the application may have written but the peer not
    /// yet acknowledged (the send side grows toward this with the peer's
    /// window).
    pub send_buffer: usize,
    /// The largest receive window (bytes received in order but not yet
    /// read, plus credit outstanding) the connection grows to.
    pub recv_buffer: usize,
    /// The first receive window, and the send buffering every connection
    /// is guaranteed; both are reserved when the connection is made.
    pub initial_window: usize,
    /// After this long without data in either direction, a grown window
    /// shrinks back to the initial one and its reservation is given back.
    pub idle_shrink: Duration,
    /// First wait for an answer; later waits double (up to `max_rto`).
    pub initial_rto: Duration,
    /// Shortest wait for an answer.
    pub min_rto: Duration,
    /// Longest wait between retries.
    pub max_rto: Duration,
    /// Give up after hearing nothing from the peer for this long.
    pub dead_after: Duration,
    /// While the peer node is alive (other connections or keepalives hear
    /// from it), a connection waiting on it gives up only after this long
    /// without an answer of its own: a loaded peer is slow, not dead.
    pub stall_after: Duration,
}

impl Config {
    /// The receive window a connection starts with.
    pub fn first_window(&self) -> usize {
        self.initial_window.clamp(1, self.recv_buffer.max(1))
    }

    /// The send buffering a connection is guaranteed.
    pub fn first_send(&self) -> usize {
        self.initial_window.clamp(1, self.send_buffer.max(1))
    }

    /// Budget a new connection reserves: its first window and first send
    /// buffering.
    pub fn reservation(&self) -> usize {
        self.first_window() + self.first_send()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            send_buffer: 4 << 20,
            recv_buffer: 4 << 20,
            initial_window: 32 << 10,
            idle_shrink: Duration::from_secs(1),
            initial_rto: Duration::from_millis(1),
            min_rto: Duration::from_micros(200),
            max_rto: Duration::from_millis(250),
            dead_after: Duration::from_secs(3),
            stall_after: Duration::from_secs(30),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished their streams.
    Graceful,
    /// Nobody listens on the port.
    Refused,
    /// The peer reset the connection.
    Reset(RstReason),
    /// This side aborted it.
    Aborted,
    /// The peer stopped answering.
    TimedOut,
    /// The peer broke the protocol (this side reset the connection).
    Protocol(Violation),
}

/// How a peer broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// It sent data beyond the credit it was granted.
    CreditOverrun,
    /// It acknowledged bytes that were never sent.
    AckBeyondSent,
    /// It advertised credit more than [`MAX_WINDOW`] beyond what it received,
    /// or below it.
    AbsurdWindow,
    /// Its end of stream contradicts the bytes it sent.
    BadFin,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Violation::CreditOverrun => "it sent data beyond the credit it was granted",
            Violation::AckBeyondSent => "it acknowledged bytes that were never sent",
            Violation::AbsurdWindow => "it advertised an impossible window",
            Violation::BadFin => "its end of stream contradicts the bytes it sent",
        })
    }
}

/// What the application should hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// Bytes (or the end of the stream) can be read.
    Readable,
    /// Send-buffer space became free.
    Writable,
    /// The connection ended.
    Closed(CloseReason),
}

/// What a [`Connection::read`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes copied.
    pub len: usize,
    /// The copied bytes end a message (message reads only).
    pub end_of_message: bool,
}

/// Why a write or read was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The application already closed its side for writing.
    #[error("the stream was closed for writing")]
    WriteClosed,
    /// The connection has ended.
    #[error("the connection has ended ({0:?})")]
    Closed(CloseReason),
    /// The handshake has not completed.
    #[error("the connection is not established yet")]
    NotConnected,
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// DATA frames sent (first transmissions and resends).
    pub data_frames: u64,
    /// Payload bytes sent again after a NAK or a probe answer.
    pub resent_bytes: u64,
    /// NAKs sent (gaps seen).
    pub naks_sent: u64,
    /// NAKs received.
    pub naks_received: u64,
    /// Probes sent (the timer fired while waiting).
    pub probes: u64,
    /// DATA frames dropped: out of order or duplicate.
    pub dropped_frames: u64,
    /// DATA frames beyond the credit this side granted (a sender bug or a
    /// hostile peer); the connection is reset.
    pub overrun_frames: u64,
    /// Times the receive window doubled.
    pub window_grown: u64,
    /// CREDIT frames sent.
    pub credit_frames: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Initiator, SYN sent.
    SynSent,
    /// Responder, SYN-ACK sent, nothing heard since.
    SynReceived,
    Established,
    Closed(CloseReason),
}

/// Addressing of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    /// Our address.
    pub local_ip: Ipv4Addr,
    /// Our port.
    pub local_port: u16,
    /// The peer's address.
    pub remote_ip: Ipv4Addr,
    /// The peer's port.
    pub remote_port: u16,
    /// The peer's MAC.
    pub remote_mac: [u8; 6],
    /// Our endpoint's instance id (sent in SYN and SYN-ACK).
    pub local_instance: u64,
}

#[derive(Debug, Default)]
struct Pending {
    syn: bool,
    syn_ack: bool,
    nak: bool,
    probe: bool,
    fin: bool,
    credit: bool,
    probe_reply: bool,
    /// Confirm a window shrink: the limit we now keep to.
    shrink_ack: Option<u64>,
    rst: Option<RstReason>,
    /// The RST once more, at this time: a lone RST lost in a full receive
    /// ring left a passive peer (a receiver, with nothing to send) waiting
    /// on a connection that no longer existed.
    rst_again: Option<(RstReason, Instant)>,
    /// The RST went out twice (or needs not).
    rst_repeated: bool,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    state: State,
    mode: Mode,
    local_cid: u64,
    remote_cid: u64,
    addr: Addressing,
    local_max_payload: u16,
    max_payload: usize,
    config: Config,

    // Send direction. Bytes [send.start(), send.end()) are kept; `next` is
    // the next offset to send; `sent_hi` the highest offset ever sent.
    send: ChunkRing,
    /// Budget held for send buffering (at least `first_send`).
    send_reserved: usize,
    next: u64,
    sent_hi: u64,
    peer_limit: u64,
    /// How far new data may go by the endpoint's leave (its share of what
    /// one peer node may have in flight from us); no bound by default.
    node_limit: u64,
    write_closed: bool,
    fin_sent: bool,
    fin_acked: bool,
    was_full: bool,
    last_rewind: Option<(u64, Instant)>,
    /// A hole the peer reported, [from, to), being sent again before
    /// anything new (`next` stays where it was).
    repair: Option<(u64, u64)>,

    // Receive direction. `recv` holds [read offset, expected).
    recv: ChunkRing,
    /// The receive window now.
    window: usize,
    /// Budget held for receiving: never below `limit_hi - recv.start()`
    /// (the credit outstanding plus the bytes unread), so everything the
    /// peer may send has memory behind it.
    recv_reserved: usize,
    /// The sender used the last byte of credit we granted (it is waiting).
    credit_exhausted: bool,
    /// The current credit cycle (between two frames on which the sender ran
    /// out of credit): when it began, and the receive offset then.
    cycle: (Instant, u64),
    /// The best delivery rate of a cycle so far (bytes per second), and
    /// cycles since it last grew by a quarter: three such and the window
    /// has stopped being what limits the transfer (the path or the reader
    /// is), so it stops growing.
    best_rate: u64,
    plateau: u8,
    /// Last data in either direction (for shrinking an idle window).
    last_activity: Instant,
    /// The limit put on the last frame sent.
    limit_sent: u64,
    /// The most the peer may send up to: the highest limit advertised since
    /// the last window shrink the peer confirmed.
    limit_hi: u64,
    /// A shrink of the window to this limit awaits the peer's confirmation.
    shrink_to: Option<u64>,
    /// Our window epoch: shrinks started (mod 256), on every frame we send.
    epoch: u8,
    /// The peer's epoch of the last shrink we took: limits on its frames
    /// from before that are stale.
    peer_epoch: u8,
    peer_fin: Option<u64>,
    nak_at: Option<(u64, Instant)>,
    /// A hole seen, not yet NAKed: frames can arrive out of order (a veth
    /// delivers through per-CPU backlogs), so the NAK waits
    /// [`Connection::reorder_wait`] for the late frame first.
    hole_at: Option<Instant>,
    /// Frames that arrived beyond a hole, until it is filled.
    reorder: Reorder,

    // The rare-path timer.
    rto: Duration,
    srtt: Option<Duration>,
    /// The latest round-trip sample, until the endpoint takes it.
    rtt_sample: Option<Duration>,
    /// The shortest retry wait the endpoint sets from what all connections
    /// with this peer node measured (a loaded peer answers late for all).
    rto_floor: Duration,
    backoff: u32,
    /// Retries are timed from here: the last progress or the last retry.
    retry_base: Instant,
    last_heard: Instant,
    /// When the peer node was last heard from at all (the endpoint tells).
    peer_alive_at: Instant,
    closed_at: Option<Instant>,
    probe_sent_at: Option<Instant>,
    /// `sent_hi` when the first probe not yet answered went out: what its
    /// answer can say about (data sent since may still be on its way).
    probe_hi: Option<u64>,
    /// A probe's answer said bytes before it were missing: what it said
    /// had arrived. Frames can be overtaken, so one more probe confirms
    /// before they are sent again.
    tail_suspect: Option<u64>,
    handshake_sent_at: Option<Instant>,

    pending: Pending,
    events: VecDeque<Event>,
    stats: ConnStats,
}

impl Connection {
    /// A connection whose reservation ([`Config::reservation`]) the caller
    /// has already taken from the pool.
    fn new(now: Instant, local_cid: u64, addr: Addressing, mode: Mode, max_payload: u16, config: Config) -> Self {
        let window = config.first_window();
        Self {
            state: State::SynSent,
            mode,
            local_cid,
            remote_cid: 0,
            addr,
            local_max_payload: max_payload,
            max_payload: max_payload as usize,
            send: ChunkRing::new(),
            send_reserved: config.first_send(),
            next: 0,
            sent_hi: 0,
            peer_limit: 0,
            node_limit: u64::MAX,
            write_closed: false,
            fin_sent: false,
            fin_acked: false,
            was_full: false,
            last_rewind: None,
            repair: None,
            recv: ChunkRing::new(),
            window,
            recv_reserved: window,
            credit_exhausted: false,
            cycle: (now, 0),
            best_rate: 0,
            plateau: 0,
            last_activity: now,
            limit_sent: window as u64,
            limit_hi: window as u64,
            shrink_to: None,
            epoch: 0,
            peer_epoch: 0,
            peer_fin: None,
            nak_at: None,
            hole_at: None,
            reorder: Reorder::default(),
            rto: config.initial_rto,
            srtt: None,
            rtt_sample: None,
            rto_floor: Duration::ZERO,
            backoff: 0,
            retry_base: now,
            last_heard: now,
            peer_alive_at: now,
            closed_at: None,
            probe_sent_at: None,
            probe_hi: None,
            tail_suspect: None,
            handshake_sent_at: None,
            config,
            pending: Pending::default(),
            events: VecDeque::new(),
            stats: ConnStats::default(),
        }
    }

    /// An initiator: sends SYN on the first [`Connection::poll_transmit`].
    pub fn connect(
        now: Instant,
        local_cid: u64,
        addr: Addressing,
        mode: Mode,
        max_payload: u16,
        config: Config,
    ) -> Self {
        let mut c = Self::new(now, local_cid, addr, mode, max_payload, config);
        c.pending.syn = true;
        c
    }

    /// A responder for a received SYN: answers with SYN-ACK.
    pub fn accept(
        now: Instant,
        local_cid: u64,
        addr: Addressing,
        syn: &SynBody,
        syn_header: &Repr,
        max_payload: u16,
        config: Config,
    ) -> Self {
        let mut c = Self::new(now, local_cid, addr, Mode::from_u8(syn.mode), max_payload, config);
        c.state = State::SynReceived;
        c.remote_cid = syn.src_cid;
        c.max_payload = max_payload.min(syn.max_payload).max(1) as usize;
        c.peer_limit = syn_header.limit;
        c.pending.syn_ack = true;
        c
    }

    /// Our connection id (what the peer puts in `dst_cid`).
    pub fn local_cid(&self) -> u64 {
        self.local_cid
    }

    /// The peer's connection id (0 before the handshake).
    pub fn remote_cid(&self) -> u64 {
        self.remote_cid
    }

    /// Addresses and ports of both ends.
    pub fn addressing(&self) -> &Addressing {
        &self.addr
    }

    /// Stream or message semantics.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// One line of the connection's inner state, for diagnosing a stall
    /// (the format is for people, not for parsing).
    pub fn describe(&self, now: Instant) -> String {
        let ago = |t: Option<Instant>| t.map(|t| format!("{:?} ago", now.saturating_duration_since(t)));
        format!(
            "{:?} cid {}/{}: send [{}, {}) next {} sent_hi {} peer_limit {} repair {:?} fin {}/{}; recv [{}, {}) \
             window {} limit_sent {} limit_hi {} shrink {:?} exhausted {} peer_fin {:?} hole {:?} reorder {}; rto {:?} \
             backoff {} retry {:?} heard {:?} probe {:?}/{:?} suspect {:?}; {:?}",
            self.state,
            self.local_cid,
            self.remote_cid,
            self.send.start(),
            self.send.end(),
            self.next,
            self.sent_hi,
            self.peer_limit,
            self.repair,
            self.fin_sent,
            self.fin_acked,
            self.recv.start(),
            self.recv.end(),
            self.window,
            self.limit_sent,
            self.limit_hi,
            self.shrink_to,
            self.credit_exhausted,
            self.peer_fin,
            ago(self.hole_at),
            self.reorder.bytes(),
            self.rto,
            self.backoff,
            ago(Some(self.retry_base)),
            ago(Some(self.last_heard)),
            ago(self.probe_sent_at),
            self.probe_hi,
            self.tail_suspect,
            self.stats,
        )
    }

    /// Counters so far.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Whether the handshake has completed (and the connection not ended).
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established | State::SynReceived)
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.state {
            State::Closed(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the endpoint may forget the connection (once the
    /// application has let go): it failed and its RST went out, or it
    /// closed gracefully and has lingered long enough to answer a peer whose
    /// last acknowledgement was lost.
    pub fn is_finished(&self, now: Instant) -> bool {
        match (self.state, self.closed_at) {
            (State::Closed(CloseReason::Graceful), Some(at)) => now.duration_since(at) >= self.linger(),
            (State::Closed(_), _) => self.pending.rst.is_none() && self.pending.rst_again.is_none(),
            _ => false,
        }
    }

    /// When a gracefully closed connection stops lingering (the endpoint
    /// forgets it then, if the application has let go).
    pub fn forget_at(&self) -> Option<Instant> {
        match (self.state, self.closed_at) {
            (State::Closed(CloseReason::Graceful), Some(at)) => Some(at + self.linger()),
            _ => None,
        }
    }

    fn linger(&self) -> Duration {
        (self.config.max_rto * 4).min(self.config.dead_after)
    }

    /// Payload bytes per DATA frame (negotiated).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn push_event(&mut self, e: Event) {
        if self.events.back() != Some(&e) {
            self.events.push_back(e);
        }
    }

    // ---- application side ------------------------------------------------

    /// The most bytes the send side may hold: twice the peer's window (what
    /// can be in flight, and as much again ready to go), at least
    /// [`SEND_SLACK`] (a writer hands over a request without waiting for its
    /// peer's reader), at most [`Config::send_buffer`]. Memory behind it is
    /// reserved as bytes are written, and given back as they are
    /// acknowledged, so an idle connection holds none beyond its first
    /// reservation.
    fn send_allowance(&self) -> usize {
        let peer_window = self.peer_limit.saturating_sub(self.send.start()).min(MAX_WINDOW) as usize;
        (2 * peer_window).max(SEND_SLACK).min(self.config.send_buffer).max(self.config.first_send())
    }

    /// Bytes [`Connection::write`] would accept now (it may accept fewer if
    /// the endpoint's memory budget is spent: never fewer than the guaranteed
    /// first send buffering allows).
    pub fn send_space(&self) -> usize {
        if self.write_closed || matches!(self.state, State::Closed(_)) {
            0
        } else {
            self.send_allowance().saturating_sub(self.send.len())
        }
    }

    /// Queues bytes for sending, taking buffer chunks (and budget) from
    /// `pool`. With `end_of_message`, the last of them end a message (only
    /// if all were accepted). Returns the bytes accepted.
    pub fn write(&mut self, pool: &mut BufferPool, data: &[u8], end_of_message: bool) -> Result<usize, StreamError> {
        match self.state {
            State::Closed(r) => return Err(StreamError::Closed(r)),
            State::SynSent => return Err(StreamError::NotConnected),
            _ => {}
        }
        if self.write_closed {
            return Err(StreamError::WriteClosed);
        }
        let want = data.len().min(self.send_space());
        let need = self.send.len() + want;
        if need > self.send_reserved {
            // Grow the reservation as far as the budget allows.
            let more = (need - self.send_reserved).min(pool.available());
            if pool.reserve(more) {
                self.send_reserved += more;
            }
        }
        let n = want.min(self.send_reserved.saturating_sub(self.send.len()));
        self.send.push(pool, &data[..n], end_of_message && n == data.len());
        self.was_full = n < data.len();
        Ok(n)
    }

    /// Marks the end of a message whose bytes were all written already.
    pub fn end_message(&mut self) {
        self.send.mark_end();
    }

    /// Bytes written and not yet acknowledged by the peer.
    pub fn unacknowledged(&self) -> usize {
        self.send.len()
    }

    /// Whether the sending side is done: closed, every byte and the FIN
    /// acknowledged by the peer.
    pub fn send_finished(&self) -> bool {
        self.write_closed && self.fin_acked
    }

    /// Bytes ready to read.
    pub fn readable(&self) -> usize {
        self.recv.len()
    }

    /// Whether the peer has finished its stream and every byte was read.
    pub fn is_eof(&self) -> bool {
        self.peer_fin.is_some_and(|f| self.recv.start() >= f)
    }

    /// Reads in order into `out`, giving the chunks read back to `pool`. In
    /// message mode (or with `stop_at_message_end`) the read stops at the end
    /// of a message and says so.
    pub fn read(&mut self, pool: &mut BufferPool, out: &mut [u8], stop_at_message_end: bool) -> ReadOutcome {
        let start = self.recv.start();
        let mut want = out.len().min(self.recv.len());
        let boundary = self.recv.next_end_after(start);
        if stop_at_message_end && let Some(end) = boundary {
            want = want.min((end - start) as usize);
        }
        let n = self.recv.copy_out(start, &mut out[..want]);
        let new_start = start + n as u64;
        let end_of_message = n > 0 && self.recv.is_end(new_start);
        self.recv.release_to(pool, new_start);
        if n > 0 {
            self.after_read(pool);
        }
        ReadOutcome { len: n, end_of_message }
    }

    /// The receive buffer freed space: grow the window if the sender was
    /// held back by it, and grant credit when it is worth a frame (a
    /// quarter of the window), or at once if the peer may be blocked.
    fn after_read(&mut self, pool: &mut BufferPool) {
        // The sender ran out of credit, and the reader has since caught up
        // (all but a quarter of the window read): the window held the
        // transfer back, not the reader. A slow reader never catches up
        // while a sender waits, so its window stays small.
        if self.credit_exhausted && self.recv.len() <= self.window / 4 {
            self.credit_exhausted = false;
            self.grow_window(pool);
        }
        self.trim_recv_reservation(pool);
        let limit = self.current_limit();
        let grown = limit.saturating_sub(self.limit_hi);
        let peer_may_block = self.limit_hi.saturating_sub(self.recv.end()) < (self.max_payload as u64) * 2;
        if grown > 0 && (grown >= self.window as u64 / 4 || peer_may_block) {
            self.pending.credit = true;
        }
    }

    /// Doubles the receive window (up to [`Config::recv_buffer`]) if the
    /// budget has room.
    fn grow_window(&mut self, pool: &mut BufferPool) {
        let target = (self.window * 2).min(self.config.recv_buffer.max(self.config.first_window()));
        if target <= self.window {
            return;
        }
        // Every window's growth comes out of one allowance per endpoint:
        // 512 streams that each doubled their window sent bursts no
        // receive ring absorbs (2.2 Gbit/s; 5.2 with windows held small).
        if !pool.take_growth(target - self.window) {
            return;
        }
        if target > self.recv_reserved {
            if !pool.reserve(target - self.recv_reserved) {
                pool.give_growth(target - self.window);
                return;
            }
            self.recv_reserved = target;
        }
        self.window = target;
        self.stats.window_grown += 1;
    }

    /// After a shrink (or as the peer uses up credit granted before one),
    /// gives back receive budget beyond the window and the credit the peer
    /// may still use.
    fn trim_recv_reservation(&mut self, pool: &mut BufferPool) {
        let keep = (self.window as u64).max(self.limit_hi.saturating_sub(self.recv.start())) as usize;
        if self.recv_reserved > keep {
            pool.unreserve(self.recv_reserved - keep);
            self.recv_reserved = keep;
        }
    }

    /// An idle connection gives back what it grew: the window returns to the
    /// initial one, and credit granted beyond it is withdrawn (a CREDIT with
    /// [`FLAG_SHRINK`]; the budget behind it comes back when the peer
    /// confirms with [`FLAG_SHRINK_ACK`], since until then it may still send
    /// into it); the send reservation returns as far as the bytes buffered
    /// allow.
    fn shrink(&mut self, now: Instant, pool: &mut BufferPool) {
        self.last_activity = now;
        if self.shrink_to.is_some() {
            // One shrink at a time: while one waits for its confirmation the
            // limits we advertise must not fall again (a confirmation takes
            // the latest limit as what the peer may use, which is right only
            // if every limit still on its way to the peer is below it).
            // Ask again, in case the flagged credit was lost.
            self.pending.credit = true;
        } else {
            pool.give_growth(self.window.saturating_sub(self.config.first_window()));
            self.window = self.config.first_window();
            self.best_rate = 0;
            self.plateau = 0;
            let target = self.recv.end().max(self.recv.start() + self.window as u64);
            if self.limit_hi > target {
                self.epoch = self.epoch.wrapping_add(1);
                self.shrink_to = Some(target);
                self.pending.credit = true;
            }
            self.trim_recv_reservation(pool);
        }
        let keep = self.config.first_send().max(self.send.len());
        if self.send_reserved > keep {
            pool.unreserve(self.send_reserved - keep);
            self.send_reserved = keep;
        }
    }

    fn shrink_due(&self) -> Option<Instant> {
        let grown = self.recv_reserved > self.config.first_window() || self.send_reserved > self.config.first_send();
        (grown && !matches!(self.state, State::Closed(_))).then(|| self.last_activity + self.config.idle_shrink)
    }

    /// Gives every buffer chunk and the whole reservation back to `pool`
    /// (the endpoint calls this when it forgets the connection).
    pub fn free_buffers(&mut self, pool: &mut BufferPool) {
        pool.give_growth(self.window.saturating_sub(self.config.first_window()));
        self.window = self.config.first_window();
        self.send.clear(pool);
        self.recv.clear(pool);
        pool.unreserve(self.send_reserved + self.recv_reserved);
        self.send_reserved = 0;
        self.recv_reserved = 0;
    }

    /// Budget this connection holds (bytes reserved for both directions).
    pub fn reserved(&self) -> usize {
        self.send_reserved + self.recv_reserved
    }

    /// The receive window now.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Buffer chunks held (both directions).
    pub fn chunks_held(&self) -> usize {
        self.send.chunks() + self.recv.chunks()
    }

    /// Closes the sending side: a FIN follows the last byte.
    pub fn close(&mut self) {
        self.write_closed = true;
    }

    /// Aborts: sends RST and ends the connection at once.
    pub fn abort(&mut self) {
        self.abort_with(RstReason::Aborted);
    }

    /// Aborts, telling the peer why.
    pub fn abort_with(&mut self, reason: RstReason) {
        if !matches!(self.state, State::Closed(_)) {
            if self.remote_cid != 0 {
                self.pending.rst = Some(reason);
            }
            self.end(CloseReason::Aborted);
        }
    }

    fn end_at(&mut self, now: Instant, reason: CloseReason) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        self.state = State::Closed(reason);
        self.closed_at = Some(now);
        self.push_event(Event::Closed(reason));
    }

    fn end(&mut self, reason: CloseReason) {
        let at = self.last_heard.max(self.retry_base);
        self.end_at(at, reason);
    }

    // ---- input -------------------------------------------------------------

    /// The credit we may grant: what the receive reservation covers.
    fn current_limit(&self) -> u64 {
        self.recv.start() + self.window as u64
    }

    fn progress(&mut self, now: Instant) {
        self.retry_base = now;
        self.backoff = 0;
    }

    fn sample_rtt(&mut self, sample: Duration) {
        self.rtt_sample = Some(sample);
        let srtt = match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        };
        self.srtt = Some(srtt);
        self.rto = (srtt * 4 + Duration::from_micros(50)).clamp(self.config.min_rto, self.config.max_rto);
    }

    /// A frame for this connection arrived (`repr.dst_cid` is ours); bytes
    /// it delivers go into chunks from `pool`, bytes it acknowledges give
    /// theirs back.
    pub fn handle_input(&mut self, now: Instant, repr: &Repr, payload: &[u8], pool: &mut BufferPool) {
        match self.state {
            State::Closed(CloseReason::Graceful) => {
                // Lingering: the peer missed our last acknowledgement.
                if matches!(repr.body, Body::Fin | Body::Probe) {
                    self.pending.credit = true;
                    self.pending.probe_reply = matches!(repr.body, Body::Probe);
                }
                return;
            }
            State::Closed(_) => return,
            _ => {}
        }
        match repr.body {
            Body::SynAck(sa) => {
                if self.state == State::SynSent {
                    self.remote_cid = sa.src_cid;
                    self.max_payload = self.local_max_payload.min(sa.max_payload).max(1) as usize;
                    self.state = State::Established;
                    if let Some(t) = self.handshake_sent_at.take() {
                        self.sample_rtt(now - t);
                    }
                    self.push_event(Event::Connected);
                    if self.send_space() > 0 {
                        self.push_event(Event::Writable);
                    }
                    self.progress(now);
                }
                // Confirm (again): the responder waits for a frame from us.
                self.pending.credit = true;
            }
            Body::Syn(_) => {
                // A repeated SYN: our SYN-ACK was lost.
                if self.state == State::SynReceived {
                    self.pending.syn_ack = true;
                }
                return;
            }
            _ => {}
        }
        if self.state == State::SynSent {
            // Before the SYN-ACK we cannot address the peer: only a refusal
            // (an RST naming our id) means anything.
            if let Body::Rst(RstBody { reason }) = repr.body {
                let r = if reason == RstReason::Refused { CloseReason::Refused } else { CloseReason::Reset(reason) };
                self.end_at(now, r);
            }
            return;
        }
        self.last_heard = now;
        if self.state == State::SynReceived && !matches!(repr.body, Body::Syn(_)) {
            self.state = State::Established;
            if let Some(t) = self.handshake_sent_at.take() {
                self.sample_rtt(now - t);
            }
            self.progress(now);
        }
        if let Some(v) = self.check_receive_state(repr) {
            self.violated(now, v);
            return;
        }
        self.absorb_receive_state(now, repr, pool);
        match repr.body {
            Body::Data { .. } => self.on_data(now, repr, payload, pool),
            Body::Nak => {
                self.stats.naks_received += 1;
                // `seq` ends the hole (the peer holds what follows it); 0
                // or less than `ack`: the peer holds nothing beyond.
                if repr.seq > repr.ack && repr.seq <= self.sent_hi {
                    self.repair(now, repr.ack, repr.seq);
                } else {
                    self.rewind(now, repr.ack);
                }
            }
            Body::Probe => {
                self.pending.credit = true;
                self.pending.probe_reply = true;
                // Holding frames beyond a hole: name the hole first, so the
                // probe's answer does not send everything after it again.
                if !self.reorder.is_empty() {
                    self.pending.nak = true;
                }
            }
            Body::Credit => {
                if repr.flags & FLAG_PROBE_REPLY != 0 {
                    if let Some(t) = self.probe_sent_at.take() {
                        self.sample_rtt(now - t);
                    }
                    // Everything sent before the probe has arrived or is
                    // lost: send again what is missing of that, nothing
                    // sent since (comparing with today's `sent_hi` resent
                    // 1.2 GB of 0.9 GB delivered over 512 streams).
                    // The probe may have overtaken them, though: the first
                    // such answer only asks again (one more round trip
                    // for a lost tail); nothing more arrived by the second
                    // and it is sent again.
                    match self.probe_hi.take() {
                        Some(hi) if repr.ack < hi => {
                            if self.tail_suspect.is_some_and(|a| repr.ack <= a) {
                                self.tail_suspect = None;
                                self.repair(now, repr.ack, hi);
                            } else {
                                self.tail_suspect = Some(repr.ack);
                                self.pending.probe = true;
                            }
                        }
                        Some(_) => self.tail_suspect = None,
                        None => {}
                    }
                }
                if repr.flags & FLAG_FIN_SEEN != 0 && self.fin_sent && repr.ack >= self.send.end() && !self.fin_acked {
                    self.fin_acked = true;
                    self.progress(now);
                    self.maybe_finish(now);
                }
                if repr.flags & FLAG_SHRINK != 0 && !older(repr.epoch, self.peer_epoch) {
                    // The peer withdraws credit: keep to its new limit, or to
                    // what we already sent (that cannot be taken back). A
                    // repeat of the shrink we took is confirmed again but
                    // lowers nothing: limits of its epoch since then are
                    // good.
                    if repr.epoch != self.peer_epoch {
                        self.peer_epoch = repr.epoch;
                        self.peer_limit = repr.limit.max(self.sent_hi);
                    }
                    self.pending.shrink_ack = Some(self.peer_limit);
                    self.pending.credit = true;
                }
                // A confirmation of this shrink, not of an earlier one still
                // on its way: the peer keeps to `seq`, or to a limit we sent
                // since (all at most the last one).
                if repr.flags & FLAG_SHRINK_ACK != 0 && repr.epoch_seen == self.epoch && self.shrink_to.take().is_some()
                {
                    self.limit_hi = repr.seq.max(self.limit_sent).max(self.recv.end());
                    self.trim_recv_reservation(pool);
                }
            }
            Body::Fin => self.on_fin(now, repr.seq),
            Body::Rst(RstBody { reason }) => {
                let r = if reason == RstReason::Refused { CloseReason::Refused } else { CloseReason::Reset(reason) };
                self.end(r);
            }
            Body::Syn(_)
            | Body::SynAck(_)
            | Body::Discover(_)
            | Body::DiscoverReply(_)
            | Body::Keepalive(_)
            | Body::KeepaliveReply(_) => {}
        }
    }

    /// The peer's receive state must be possible: it cannot have received
    /// bytes we never sent, nor grant credit below what it received or more
    /// than [`MAX_WINDOW`] beyond it.
    fn check_receive_state(&self, repr: &Repr) -> Option<Violation> {
        if matches!(repr.body, Body::Rst(_)) {
            return None;
        }
        if repr.ack > self.sent_hi {
            return Some(Violation::AckBeyondSent);
        }
        if repr.limit < repr.ack || repr.limit - repr.ack > MAX_WINDOW {
            return Some(Violation::AbsurdWindow);
        }
        None
    }

    /// The peer broke the protocol: reset.
    fn violated(&mut self, now: Instant, v: Violation) {
        if v == Violation::CreditOverrun {
            self.stats.overrun_frames += 1;
        }
        self.pending.rst = Some(RstReason::Protocol);
        self.end_at(now, CloseReason::Protocol(v));
    }

    /// Every connection frame carries the peer's receive state.
    fn absorb_receive_state(&mut self, now: Instant, repr: &Repr, pool: &mut BufferPool) {
        let mut freed = false;
        if repr.ack > self.send.start() && repr.ack <= self.sent_hi {
            self.send.release_to(pool, repr.ack);
            if self.next < repr.ack {
                self.next = repr.ack;
            }
            self.progress(now);
            self.last_activity = now;
            freed = true;
        }
        if repr.limit > self.peer_limit && !older(repr.epoch, self.peer_epoch) {
            self.peer_limit = repr.limit;
            self.progress(now);
            freed = true;
        }
        // Said on every frame that frees space until the writer writes
        // again: a poller that looks later may find the space taken back
        // by an acknowledgement that came in the same batch (twice the
        // peer's window shrinks as it is acknowledged), and a writer told
        // once would then never be told again.
        if freed && self.was_full && self.send_space() > 0 {
            self.push_event(Event::Writable);
        }
    }

    fn on_data(&mut self, now: Instant, repr: &Repr, payload: &[u8], pool: &mut BufferPool) {
        let offset = repr.seq;
        let end = offset + payload.len() as u64;
        let expected = self.recv.end();
        if end > self.limit_hi {
            // Beyond the credit we granted: a broken or hostile sender.
            self.violated(now, Violation::CreditOverrun);
            return;
        }
        if self.peer_fin.is_some_and(|f| end > f) {
            self.violated(now, Violation::BadFin);
            return;
        }
        if offset > expected {
            // A hole: keep this frame (it is inside the credit we granted)
            // and ask once for the hole.
            let cap = (self.limit_hi - expected) as usize;
            if !self.reorder.insert(offset, payload, repr.flags & FLAG_END != 0, cap) {
                self.stats.dropped_frames += 1;
            }
            match self.nak_at {
                // Asked already, and not long ago: the resend is on its way.
                Some((at, t)) if at == expected && now.duration_since(t) < self.rto => {}
                // Asked long ago: ask again.
                Some((at, _)) if at == expected => self.send_nak(now),
                // A new hole: give a late frame its chance first.
                _ => {
                    self.nak_at = None;
                    self.hole_at.get_or_insert(now);
                }
            }
            return;
        }
        if end <= expected {
            self.stats.dropped_frames += 1;
            return;
        }
        // In order, possibly overlapping what we have: take the new tail.
        let skip = (expected - offset) as usize;
        let ends_message = repr.flags & FLAG_END != 0;
        self.recv.push(pool, &payload[skip..], ends_message);
        if repr.flags & FLAG_BLOCKED != 0 {
            // The sender used every byte of credit and has more: it waits.
            // A larger window helps only while it makes the transfer faster
            // (as BBR leaves start-up): measure each credit cycle's rate.
            let (since, at) = self.cycle;
            let elapsed = now.saturating_duration_since(since).as_nanos().max(1);
            let rate = ((self.recv.end() - at) as u128 * 1_000_000_000 / elapsed).min(u64::MAX as u128) as u64;
            if rate > self.best_rate + self.best_rate / 4 {
                self.best_rate = rate;
                self.plateau = 0;
            } else {
                self.plateau = self.plateau.saturating_add(1);
            }
            self.cycle = (now, self.recv.end());
            self.credit_exhausted = self.plateau < 3;
        }
        // What was kept beyond the hole follows it now.
        while let Some(seg) = self.reorder.pop_ready(self.recv.end()) {
            if seg.end() > self.recv.end() {
                let skip = (self.recv.end() - seg.offset) as usize;
                self.recv.push(pool, &seg.data[skip..], seg.ends_message);
            }
        }
        self.nak_at = None;
        // Another hole behind the one just filled, or none.
        self.hole_at = (!self.reorder.is_empty()).then_some(now);
        self.last_activity = now;
        self.progress(now);
        self.push_event(Event::Readable);
        if self.peer_fin == Some(self.recv.end()) {
            self.pending.credit = true;
            self.maybe_finish(now);
        }
    }

    fn on_fin(&mut self, now: Instant, final_len: u64) {
        if final_len < self.recv.end() || self.peer_fin.is_some_and(|f| f != final_len) {
            self.violated(now, Violation::BadFin);
            return;
        }
        self.peer_fin = Some(final_len);
        if self.recv.end() == final_len {
            self.pending.credit = true;
            self.push_event(Event::Readable);
            self.maybe_finish(now);
        } else if self.nak_at.is_none() {
            // The FIN may have overtaken the last frames: wait for them
            // before asking.
            self.hole_at.get_or_insert(now);
        }
    }

    /// How long a hole may be a reordering before it is NAKed.
    fn reorder_wait(&self) -> Duration {
        self.rto / 4
    }

    fn hole_due(&self) -> Option<Instant> {
        self.hole_at.map(|t| t + self.reorder_wait())
    }

    /// Asks the peer for the hole at `recv.end()`.
    fn send_nak(&mut self, now: Instant) {
        self.hole_at = None;
        self.nak_at = Some((self.recv.end(), now));
        self.pending.nak = true;
        self.stats.naks_sent += 1;
    }

    /// Go back to `offset` and resend from there.
    fn rewind(&mut self, now: Instant, offset: u64) {
        let offset = offset.max(self.send.start());
        if offset >= self.next {
            return;
        }
        if !self.fresh_resend(now, offset) {
            return;
        }
        self.next = offset;
        self.repair = None;
        if self.fin_sent && !self.fin_acked {
            self.fin_sent = false;
        }
    }

    /// Send [from, to) again (a hole the peer named), then carry on from
    /// `next`.
    fn repair(&mut self, now: Instant, from: u64, to: u64) {
        let from = from.max(self.send.start());
        let to = to.min(self.next);
        if from >= to {
            return;
        }
        if !self.fresh_resend(now, from) {
            return;
        }
        self.repair = Some((from, to));
    }

    /// Whether a resend from `offset` is new (and then notes it): the same
    /// request again within half an RTO is already being served.
    fn fresh_resend(&mut self, now: Instant, offset: u64) -> bool {
        if self.last_rewind.is_some_and(|(at, t)| at == offset && now.duration_since(t) < self.rto / 2) {
            return false;
        }
        self.last_rewind = Some((offset, now));
        true
    }

    // ---- timer -------------------------------------------------------------

    fn waiting_for_peer(&self) -> bool {
        match self.state {
            State::SynSent | State::SynReceived => true,
            State::Established => {
                self.send.start() < self.sent_hi
                    || (self.next < self.send.end() && self.next >= self.peer_limit)
                    || (self.fin_sent && !self.fin_acked)
                    || self.nak_at.is_some()
            }
            State::Closed(_) => false,
        }
    }

    fn retry_due(&self) -> Option<Instant> {
        if !self.waiting_for_peer() {
            return None;
        }
        let wait = self.rto.max(self.rto_floor).saturating_mul(1 << self.backoff.min(16)).min(self.config.max_rto);
        // Spread retries over [0.75 wait, 1.25 wait): connections whose
        // frames were lost in one burst would otherwise retry in step and
        // meet the same full ring every time (one of 10,000 starved for
        // 30 s so). The mean wait stays.
        let wait = wait.mul_f64(0.75 + self.retry_spread() / 2.0);
        Some((self.retry_base + wait).min(self.give_up_at()))
    }

    /// A fraction in [0, 1), fixed for one retry of this connection and
    /// different for the next (from the random connection id: no clock or
    /// generator in the sans-IO core).
    fn retry_spread(&self) -> f64 {
        let mut z = self.local_cid ^ (u64::from(self.backoff) << 48) ^ self.stats.probes.rotate_left(24);
        // splitmix64's finaliser.
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When [`Connection::handle_timeout`] must be called, if at all: a
    /// retry while waiting for the peer, or shrinking a grown window that
    /// has gone idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rst = self.pending.rst_again.map(|(_, at)| at);
        [self.retry_due(), self.shrink_due(), self.hole_due(), rst].into_iter().flatten().min()
    }

    /// The timer fired (at or after [`Connection::poll_timeout`]); a shrink
    /// gives budget back to `pool`.
    pub fn handle_timeout(&mut self, now: Instant, pool: &mut BufferPool) {
        if let Some((reason, at)) = self.pending.rst_again
            && at <= now
        {
            self.pending.rst_again = None;
            self.pending.rst = Some(reason);
        }
        if self.shrink_due().is_some_and(|t| t <= now) {
            self.shrink(now, pool);
        }
        if self.hole_due().is_some_and(|t| t <= now) {
            self.send_nak(now);
        }
        let Some(due) = self.retry_due() else {
            return;
        };
        if now < due {
            return;
        }
        if now >= self.give_up_at() {
            if self.remote_cid != 0 {
                self.pending.rst = Some(RstReason::TimedOut);
            }
            self.end_at(now, CloseReason::TimedOut);
            return;
        }
        self.backoff = (self.backoff + 1).min(16);
        self.retry_base = now;
        match self.state {
            State::SynSent => self.pending.syn = true,
            State::SynReceived => self.pending.syn_ack = true,
            State::Established => {
                if self.fin_sent && !self.fin_acked && self.next >= self.send.end() {
                    self.pending.fin = true;
                } else {
                    self.pending.probe = true;
                }
                if self.nak_at.is_some() {
                    self.pending.nak = true;
                }
            }
            State::Closed(_) => {}
        }
    }

    /// The peer was declared gone by the endpoint (it stopped answering
    /// keepalives, or it restarted): ends the connection with `reason`.
    pub fn peer_lost(&mut self, now: Instant, reason: CloseReason) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        if reason != CloseReason::TimedOut && self.remote_cid != 0 {
            self.pending.rst = Some(RstReason::Unknown);
        }
        self.end_at(now, reason);
    }

    /// When the peer was last heard from.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// The peer node (its endpoint) was heard from at `at`, by another
    /// connection or a keepalive: while it lives, this connection waits up
    /// to [`Config::stall_after`] for its own answer.
    pub fn peer_alive(&mut self, at: Instant) {
        self.peer_alive_at = self.peer_alive_at.max(at);
    }

    /// When the connection gives up waiting on its peer: `dead_after` after
    /// the last frame of its own or of its peer node (whichever is later),
    /// but no later than `stall_after` after its own.
    fn give_up_at(&self) -> Instant {
        let heard = self.last_heard.max(self.peer_alive_at);
        (heard + self.config.dead_after).min(self.last_heard + self.config.stall_after.max(self.config.dead_after))
    }

    fn maybe_finish(&mut self, now: Instant) {
        let both_done = self.write_closed && self.fin_acked && self.peer_fin.is_some_and(|f| self.recv.end() >= f);
        if both_done {
            self.end_at(now, CloseReason::Graceful);
        }
    }

    // ---- output ------------------------------------------------------------

    fn header(&mut self, flags: u8, seq: u64, body: Body) -> Repr {
        // Never below what we have received (the peer checks that), and
        // while a shrink is pending, the lower limit it withdraws to (a
        // peer only lowers its limit for a CREDIT flagged so).
        let limit = self.current_limit().max(self.recv.end());
        self.limit_sent = limit;
        self.limit_hi = self.limit_hi.max(limit);
        Repr {
            flags,
            epoch: self.epoch,
            epoch_seen: self.peer_epoch,
            dst_cid: self.remote_cid,
            seq,
            ack: self.recv.end(),
            limit,
            body,
        }
    }

    fn emit(repr: &Repr, buf: &mut [u8]) -> usize {
        let mut p = Packet::new_unchecked(&mut *buf);
        repr.emit(&mut p);
        repr.buffer_len()
    }

    /// Writes the next frame to send (without the Ethernet header) into
    /// `buf`, which must hold a header plus [`Connection::max_payload`].
    /// Returns its length, or `None` if there is nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if let Some(reason) = self.pending.rst.take() {
            if !std::mem::replace(&mut self.pending.rst_repeated, true) {
                self.pending.rst_again = Some((reason, now + self.config.max_rto / 2));
            }
            let r = self.header(0, 0, Body::Rst(RstBody { reason }));
            return Some(Self::emit(&r, buf));
        }
        match self.state {
            State::Closed(CloseReason::Graceful) => {
                if !std::mem::take(&mut self.pending.credit) {
                    return None;
                }
                let mut flags = FLAG_FIN_SEEN;
                if std::mem::take(&mut self.pending.probe_reply) {
                    flags |= FLAG_PROBE_REPLY;
                }
                let r = self.header(flags, 0, Body::Credit);
                return Some(Self::emit(&r, buf));
            }
            State::Closed(_) => return None,
            State::SynSent => {
                if !std::mem::take(&mut self.pending.syn) {
                    return None;
                }
                self.handshake_sent_at = if self.backoff == 0 { Some(now) } else { None };
                let body = SynBody {
                    src_cid: self.local_cid,
                    dst_ip: self.addr.remote_ip,
                    src_ip: self.addr.local_ip,
                    dst_port: self.addr.remote_port,
                    src_port: self.addr.local_port,
                    mode: self.mode as u8,
                    max_payload: self.local_max_payload,
                    instance: self.addr.local_instance,
                };
                let mut r = self.header(0, 0, Body::Syn(body));
                r.dst_cid = 0;
                return Some(Self::emit(&r, buf));
            }
            _ => {}
        }
        if std::mem::take(&mut self.pending.syn_ack) {
            self.handshake_sent_at = if self.backoff == 0 { Some(now) } else { None };
            let body = SynAckBody {
                src_cid: self.local_cid,
                max_payload: self.local_max_payload,
                mode: self.mode as u8,
                instance: self.addr.local_instance,
            };
            let r = self.header(0, 0, Body::SynAck(body));
            return Some(Self::emit(&r, buf));
        }
        if std::mem::take(&mut self.pending.nak) {
            // `seq`: where the hole ends (the first frame we hold past it).
            let hole_end = self.reorder.first_offset().unwrap_or(0);
            let r = self.header(0, hole_end, Body::Nak);
            return Some(Self::emit(&r, buf));
        }
        if let Some(n) = self.emit_data(buf) {
            return Some(n);
        }
        if !self.fin_sent && self.write_closed && self.next >= self.send.end() {
            self.fin_sent = true;
            self.pending.fin = true;
        }
        if std::mem::take(&mut self.pending.fin) {
            let r = self.header(0, self.send.end(), Body::Fin);
            return Some(Self::emit(&r, buf));
        }
        if std::mem::take(&mut self.pending.credit) {
            let mut flags = 0;
            let mut seq = 0;
            if std::mem::take(&mut self.pending.probe_reply) {
                flags |= FLAG_PROBE_REPLY;
            }
            if self.peer_fin.is_some_and(|f| self.recv.end() >= f) {
                flags |= FLAG_FIN_SEEN;
            }
            if let Some(e) = self.pending.shrink_ack.take() {
                flags |= FLAG_SHRINK_ACK;
                seq = e;
            }
            if self.shrink_to.is_some() {
                flags |= FLAG_SHRINK;
            }
            self.stats.credit_frames += 1;
            let r = self.header(flags, seq, Body::Credit);
            if self.shrink_to.is_some() {
                self.shrink_to = Some(r.limit);
            }
            return Some(Self::emit(&r, buf));
        }
        if std::mem::take(&mut self.pending.probe) {
            self.stats.probes += 1;
            self.probe_sent_at = Some(now);
            self.probe_hi.get_or_insert(self.sent_hi);
            let r = self.header(0, 0, Body::Probe);
            return Some(Self::emit(&r, buf));
        }
        None
    }

    fn emit_data(&mut self, buf: &mut [u8]) -> Option<usize> {
        // A hole the peer named goes first; it was sent once, so it is
        // within the credit and below `next`.
        let repair = match self.repair {
            Some((from, to)) => {
                let from = from.max(self.send.start());
                let to = to.min(self.next);
                if from < to { Some((from, to)) } else { None }
            }
            None => None,
        };
        self.repair = repair;
        let (offset, end) = repair.unwrap_or((self.next, self.send.end().min(self.data_limit())));
        if offset >= end {
            return None;
        }
        let mut len = ((end - offset) as usize).min(self.max_payload).min(buf.len() - HEADER_LEN);
        if let Some(message_end) = self.send.next_end_after(offset) {
            len = len.min((message_end - offset) as usize);
        }
        if len == 0 {
            return None;
        }
        let mut flags = if self.send.is_end(offset + len as u64) { FLAG_END } else { 0 };
        if repair.is_none() && offset + len as u64 == self.peer_limit && self.send.end() > self.peer_limit {
            flags |= FLAG_BLOCKED;
        }
        let r = self.header(flags, offset, Body::Data { len: len as u16 });
        let n = Self::emit(&r, buf);
        self.send.copy_out(offset, &mut buf[HEADER_LEN..HEADER_LEN + len]);
        if offset < self.sent_hi {
            self.stats.resent_bytes += self.sent_hi.min(offset + len as u64) - offset;
        }
        if let Some((_, to)) = repair {
            let done = offset + len as u64;
            self.repair = (done < to).then_some((done, to));
        } else {
            self.next = offset + len as u64;
            self.sent_hi = self.sent_hi.max(self.next);
        }
        self.stats.data_frames += 1;
        // Piggybacked: the frame carried our receive state (not a window
        // shrink or its confirmation: only a flagged CREDIT carries those).
        if self.pending.shrink_ack.is_none() && self.shrink_to.is_none() {
            self.pending.credit = false;
        }
        self.pending.probe_reply = false;
        Some(n)
    }

    /// How far data may be sent now: the peer's credit, and new data (past
    /// `sent_hi`) no further than the endpoint allows.
    fn data_limit(&self) -> u64 {
        self.peer_limit.min(self.node_limit.max(self.sent_hi))
    }

    /// The round-trip time measured since the last call, if any (the
    /// endpoint pools them per peer node).
    pub fn take_rtt_sample(&mut self) -> Option<Duration> {
        self.rtt_sample.take()
    }

    /// Retries wait at least `floor` (the endpoint's estimate from every
    /// connection with the same peer node: one whose own samples are old
    /// or few would otherwise probe a loaded peer every millisecond).
    pub fn set_rto_floor(&mut self, floor: Duration) {
        self.rto_floor = floor;
    }

    /// Lets new data go up to send offset `limit` (the endpoint's share of
    /// what its peer node may have in flight; see [`Connection::in_flight`]).
    pub fn set_node_limit(&mut self, limit: u64) {
        self.node_limit = limit;
    }

    /// The bound [`Connection::set_node_limit`] set (`u64::MAX`: none).
    pub fn node_limit(&self) -> u64 {
        self.node_limit
    }

    /// Bytes of new data (never sent before) the peer's credit lets go now,
    /// whatever the node limit.
    pub fn new_data_ready(&self) -> u64 {
        if !matches!(self.state, State::Established | State::SynReceived) {
            return 0;
        }
        self.send.end().min(self.peer_limit).saturating_sub(self.sent_hi)
    }

    /// The highest send offset sent so far: where a grant of new data
    /// starts ([`Connection::set_node_limit`]).
    pub fn sent_hi(&self) -> u64 {
        self.sent_hi
    }

    /// What this connection holds of its peer node's in-flight allowance:
    /// bytes sent and not yet acknowledged, and whatever more the node
    /// limit lets it send; nothing once it has ended.
    pub fn in_flight(&self) -> u64 {
        if matches!(self.state, State::Closed(_)) {
            return 0;
        }
        let granted = if self.node_limit == u64::MAX { self.sent_hi } else { self.node_limit };
        self.sent_hi.max(granted).saturating_sub(self.send.start())
    }

    /// Whether [`Connection::poll_transmit`] may have a frame now.
    pub fn wants_transmit(&self) -> bool {
        let p = &self.pending;
        p.rst.is_some()
            || (p.syn || p.syn_ack || p.nak || p.fin || p.credit || p.probe)
            || (matches!(self.state, State::Established | State::SynReceived)
                && (self.next < self.send.end().min(self.data_limit())
                    || (self.write_closed && !self.fin_sent && self.next >= self.send.end())))
    }
}

/// Whether window epoch `a` is before `b` (mod 256: at most 127 apart).
fn older(a: u8, b: u8) -> bool {
    (a.wrapping_sub(b) as i8) < 0
}
