//! The endpoint fuzz harness (feature `fuzzing`): an endpoint with a live
//! connection takes arbitrary frames (raw bytes, and well-formed frames
//! with arbitrary fields addressed to the live connection), timeouts and
//! application calls in any order. Nothing may panic or loop forever, and
//! the connection's accounting must stay consistent. `fuzz/` drives it with
//! libFuzzer; `tests/fuzz_corpus.rs` replays the committed corpus.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use arbitrary::{Arbitrary, Unstructured};

use crate::{
    Endpoint, EndpointConfig, LocalAddr, Mode, Peer,
    wire::{Body, KeepaliveBody, Packet, Repr, RstBody, RstReason},
};

/// One step of a fuzz input.
#[allow(missing_docs)]
#[derive(Arbitrary, Debug)]
pub enum Op {
    Raw(Vec<u8>),
    Data { seq: u32, len: u16, end: bool, ack: u32, limit: u32 },
    Control { kind: u8, flags: u8, epochs: (u8, u8), seq: u32, ack: u32, limit: u32 },
    Keepalive { reply: bool, instance: u64 },
    Advance(u16),
    Write { len: u16, end: bool },
    Read { len: u16, stop: bool },
    Close,
    Abort,
}

const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// Runs one fuzz input: `data` decoded as a sequence of operations the way
/// libFuzzer's typed targets decode it, so the committed corpus replays
/// the same in the fuzzer and in the tests.
/// Returns the number of operations run.
pub fn run_endpoint_ops(data: &[u8]) -> usize {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else { return 0 };
    let n = ops.len();
    run(ops);
    n
}

fn run(ops: Vec<Op>) {
    let cfg = |mac, ip| {
        let mut c = EndpointConfig::new(mac, vec![LocalAddr { ip, prefix: 24 }], 1514);
        c.connection.send_buffer = 8192;
        c.connection.recv_buffer = 8192;
        c.connection.initial_window = 2048;
        c
    };
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let mut a = Endpoint::new(cfg(A_MAC, a_ip), 1);
    let mut b = Endpoint::new(cfg(B_MAC, b_ip), 2);
    let mut now = Instant::now();
    let mut buf = vec![0u8; 4096];
    b.listen(None, 80).unwrap();
    let a_cid = a.connect(now, b_ip, 80, Peer { mac: B_MAC, max_payload: 1460 }, Mode::Message).unwrap();
    // A real handshake first, so the fuzzed input reaches a live connection.
    for _ in 0..4 {
        while let Some(t) = a.poll_transmit(now, &mut buf) {
            let f = buf[..t.len].to_vec();
            b.handle_input(now, A_MAC, &f);
        }
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            let f = buf[..t.len].to_vec();
            a.handle_input(now, B_MAC, &f);
        }
    }
    let Some(b_cid) = b.accept(80) else { return };
    let data = vec![0x5au8; 70_000];
    let mut out = vec![0u8; 70_000];
    for op in ops {
        match op {
            Op::Raw(bytes) => b.handle_input(now, A_MAC, &bytes),
            Op::Data { seq, len, end, ack, limit } => {
                let len = len.clamp(1, 1460);
                let r = Repr {
                    flags: u8::from(end),
                    epoch: 0,
                    epoch_seen: 0,
                    dst_cid: b_cid,
                    seq: u64::from(seq),
                    ack: u64::from(ack),
                    limit: u64::from(limit),
                    body: Body::Data { len },
                };
                let mut f = vec![0u8; r.buffer_len()];
                r.emit(&mut Packet::new_unchecked(&mut f[..]));
                b.handle_input(now, A_MAC, &f);
            }
            Op::Control { kind, flags, epochs, seq, ack, limit } => {
                let body = match kind % 6 {
                    0 => Body::Credit,
                    1 => Body::Nak,
                    2 => Body::Probe,
                    3 => Body::Fin,
                    4 => Body::Rst(RstBody { reason: RstReason::Aborted }),
                    // Flags cover window shrinks and their confirmations.
                    _ => Body::Credit,
                };
                let r = Repr {
                    flags,
                    epoch: epochs.0,
                    epoch_seen: epochs.1,
                    dst_cid: b_cid,
                    seq: u64::from(seq),
                    ack: u64::from(ack),
                    limit: u64::from(limit),
                    body,
                };
                let mut f = vec![0u8; r.buffer_len()];
                r.emit(&mut Packet::new_unchecked(&mut f[..]));
                b.handle_input(now, A_MAC, &f);
            }
            Op::Keepalive { reply, instance } => {
                let k = KeepaliveBody { instance };
                let body = if reply { Body::KeepaliveReply(k) } else { Body::Keepalive(k) };
                let r = Repr { flags: 0, epoch: 0, epoch_seen: 0, dst_cid: 0, seq: 0, ack: 0, limit: 0, body };
                let mut f = vec![0u8; r.buffer_len()];
                r.emit(&mut Packet::new_unchecked(&mut f[..]));
                b.handle_input(now, A_MAC, &f);
            }
            Op::Advance(us) => {
                now += Duration::from_micros(u64::from(us) * 16);
                b.handle_timeout(now);
            }
            Op::Write { len, end } => {
                let _ = b.write(b_cid, &data[..len as usize % data.len()], end);
            }
            Op::Read { len, stop } => {
                let n = len as usize % out.len();
                if let Ok(r) = b.read(b_cid, &mut out[..n], stop) {
                    assert!(r.len <= n);
                }
            }
            Op::Close => {
                let _ = b.close(b_cid);
            }
            Op::Abort => b.abort(b_cid),
        }
        let mut frames = 0;
        while b.poll_transmit(now, &mut buf).is_some() {
            frames += 1;
            assert!(frames < 100_000, "an endpoint that never stops sending");
        }
        while b.poll_event().is_some() {}
        if let Some(c) = b.connection(b_cid) {
            assert!(c.readable() <= 8192, "the receive buffer never exceeds its capacity");
            assert!(c.window() <= 8192, "the window never grows past its cap");
        }
        let p = b.pool_stats();
        assert!(p.reserved <= p.limit, "the budget is never passed");
        let _ = a_cid;
    }
}
