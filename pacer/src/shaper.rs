//! Aggregate shaping over the flows of one interface: each flow keeps its own
//! gap, the interface as a whole keeps an aggregate rate, and among the
//! flows that may send, the one that has sent the fewest bytes goes first
//! (start-time fair queueing), so a reserved path is shared evenly.

use std::time::Instant;

use crate::{GapPacer, Rate};

/// Names a flow in a [`Shaper`]. Handed out by [`Shaper::add_flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(usize);

#[derive(Debug)]
struct Flow {
    pacer: Option<GapPacer>,
    /// Bytes of the frame this flow would send next, if it has one.
    head: Option<u64>,
    /// Bytes sent, in the fair-queueing virtual time.
    vtime: u64,
}

/// Shapes the flows of one interface. Sans-IO: the caller reports which
/// flows have a frame waiting and which frames left, and asks who may send.
#[derive(Debug)]
pub struct Shaper {
    aggregate: Option<GapPacer>,
    burst_bytes: u64,
    flows: Vec<Option<Flow>>,
}

impl Shaper {
    /// A shaper whose flows together stay under `aggregate` (unlimited if
    /// `None`), each pacer allowing `burst_bytes` back to back.
    pub fn new(aggregate: Option<Rate>, burst_bytes: u64) -> Shaper {
        Shaper { aggregate: aggregate.map(|r| GapPacer::new(r, burst_bytes)), burst_bytes, flows: Vec::new() }
    }

    /// Adds a flow with its own rate (`None`: only the aggregate limits it).
    pub fn add_flow(&mut self, rate: Option<Rate>) -> FlowId {
        // A newcomer starts level with the flows already there, so it neither
        // waits for them to catch up nor starves them.
        let vtime = self.min_active_vtime().unwrap_or(0);
        let flow = Flow { pacer: rate.map(|r| GapPacer::new(r, self.burst_bytes)), head: None, vtime };
        match self.flows.iter().position(Option::is_none) {
            Some(i) => {
                self.flows[i] = Some(flow);
                FlowId(i)
            }
            None => {
                self.flows.push(Some(flow));
                FlowId(self.flows.len() - 1)
            }
        }
    }

    /// Removes a flow; its id may be handed out again.
    pub fn remove_flow(&mut self, id: FlowId) {
        if let Some(slot) = self.flows.get_mut(id.0) {
            *slot = None;
        }
    }

    /// Sets (or, with `None`, lifts) a flow's own rate from `now` on.
    pub fn set_flow_rate(&mut self, id: FlowId, now: Instant, rate: Option<Rate>) {
        let burst = self.burst_bytes;
        let flow = self.flow_mut(id);
        match (&mut flow.pacer, rate) {
            (Some(p), Some(r)) => p.set_rate(now, r),
            (slot, r) => *slot = r.map(|r| GapPacer::new(r, burst)),
        }
    }

    /// Sets the aggregate rate from `now` on (`None`: unlimited).
    pub fn set_aggregate_rate(&mut self, now: Instant, rate: Option<Rate>) {
        match (&mut self.aggregate, rate) {
            (Some(p), Some(r)) => p.set_rate(now, r),
            (slot, r) => *slot = r.map(|r| GapPacer::new(r, self.burst_bytes)),
        }
    }

    /// Tells the shaper the size of the frame `id` would send next, or that
    /// it has nothing to send (`None`). Call whenever that changes.
    pub fn set_backlog(&mut self, id: FlowId, head_bytes: Option<u64>) {
        let floor = self.min_active_vtime();
        let flow = self.flow_mut(id);
        if flow.head.is_none() && head_bytes.is_some() {
            // Back from idle: no credit for the time it was quiet.
            flow.vtime = flow.vtime.max(floor.unwrap_or(0));
        }
        flow.head = head_bytes;
    }

    /// The flow that may send its next frame at `now`, if any. Call before
    /// each frame; send exactly one frame of that flow, then call
    /// [`on_sent`](Self::on_sent).
    pub fn poll_transmit(&self, now: Instant) -> Option<FlowId> {
        if self.aggregate.as_ref().is_some_and(|p| p.poll_departure(now).is_some()) {
            return None;
        }
        self.flows
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (i, f)))
            .filter(|(_, f)| f.head.is_some() && f.pacer.as_ref().is_none_or(|p| p.poll_departure(now).is_none()))
            .min_by_key(|(i, f)| (f.vtime, *i))
            .map(|(i, _)| FlowId(i))
    }

    /// Records that `id` sent a frame of `bytes` at `now`.
    pub fn on_sent(&mut self, id: FlowId, now: Instant, bytes: u64) {
        if let Some(p) = &mut self.aggregate {
            p.on_sent(now, bytes);
        }
        let flow = self.flow_mut(id);
        if let Some(p) = &mut flow.pacer {
            p.on_sent(now, bytes);
        }
        flow.vtime += bytes;
    }

    /// When some waiting flow may next send (`None`: nobody waits, or
    /// someone may send now). Arm a timer for it.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let waiting = self.flows.iter().flatten().filter(|f| f.head.is_some());
        let flow_ready = waiting.map(|f| f.pacer.as_ref().and_then(|p| p.poll_departure(now))).try_fold(
            None::<Instant>,
            |acc, t| match t {
                None => Err(()),
                Some(t) => Ok(Some(acc.map_or(t, |a| a.min(t)))),
            },
        );
        let aggregate = self.aggregate.as_ref().and_then(|p| p.poll_departure(now));
        match flow_ready {
            // Some flow is ready: only the aggregate can hold it back.
            Err(()) => aggregate,
            Ok(None) => None,
            Ok(Some(t)) => Some(aggregate.map_or(t, |a| a.max(t))),
        }
    }

    fn min_active_vtime(&self) -> Option<u64> {
        self.flows.iter().flatten().filter(|f| f.head.is_some()).map(|f| f.vtime).min()
    }

    fn flow_mut(&mut self, id: FlowId) -> &mut Flow {
        self.flows.get_mut(id.0).and_then(Option::as_mut).expect("FlowId used after remove_flow")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Runs every backlogged flow for `span` of virtual time, jumping to each
    /// deadline, and returns bytes sent per flow.
    fn drive(s: &mut Shaper, flows: &[FlowId], t0: Instant, span: Duration, bytes: u64) -> Vec<u64> {
        for &f in flows {
            s.set_backlog(f, Some(bytes));
        }
        let mut sent = vec![0u64; flows.len()];
        let mut now = t0;
        let mut steps = 0;
        while now < t0 + span {
            steps += 1;
            assert!(steps < 10_000_000, "shaper stalled");
            match s.poll_transmit(now) {
                Some(f) => {
                    s.on_sent(f, now, bytes);
                    sent[flows.iter().position(|&x| x == f).unwrap()] += bytes;
                }
                None => now = s.poll_timeout(now).expect("backlogged flows but no deadline"),
            }
        }
        sent
    }

    fn gbit(bytes: u64, span: Duration) -> f64 {
        bytes as f64 * 8.0 / span.as_secs_f64() / 1e9
    }

    #[test]
    fn the_aggregate_holds_and_is_split_evenly() {
        let t0 = Instant::now();
        let mut s = Shaper::new(Some(Rate::gbit(1)), 0);
        let flows: Vec<_> = (0..8).map(|_| s.add_flow(None)).collect();
        let span = Duration::from_millis(100);
        let sent = drive(&mut s, &flows, t0, span, 1514);
        let total = gbit(sent.iter().sum(), span);
        assert!((total - 1.0).abs() < 0.002, "aggregate {total:.4} Gbit/s");
        let (lo, hi) = (sent.iter().min().unwrap(), sent.iter().max().unwrap());
        assert!(hi - lo <= 1514, "uneven split: {sent:?}");
    }

    #[test]
    fn a_flow_limit_below_its_share_leaves_the_rest_to_others() {
        let t0 = Instant::now();
        let mut s = Shaper::new(Some(Rate::gbit(1)), 0);
        let slow = s.add_flow(Some(Rate::mbit(100)));
        let a = s.add_flow(None);
        let b = s.add_flow(None);
        let span = Duration::from_millis(200);
        let sent = drive(&mut s, &[slow, a, b], t0, span, 1514);
        let r: Vec<f64> = sent.iter().map(|&x| gbit(x, span)).collect();
        assert!((r[0] - 0.1).abs() < 0.002, "{r:?}");
        assert!((r[1] - 0.45).abs() < 0.005 && (r[2] - 0.45).abs() < 0.005, "{r:?}");
    }

    #[test]
    fn without_an_aggregate_each_flow_keeps_its_own_rate() {
        let t0 = Instant::now();
        let mut s = Shaper::new(None, 0);
        let flows = [s.add_flow(Some(Rate::mbit(300))), s.add_flow(Some(Rate::mbit(700)))];
        let span = Duration::from_millis(100);
        let sent = drive(&mut s, &flows, t0, span, 9014);
        assert!((gbit(sent[0], span) - 0.3).abs() < 0.003, "{sent:?}");
        assert!((gbit(sent[1], span) - 0.7).abs() < 0.003, "{sent:?}");
    }

    #[test]
    fn a_flow_back_from_idle_gets_no_banked_share() {
        let t0 = Instant::now();
        let mut s = Shaper::new(Some(Rate::gbit(1)), 0);
        let busy = s.add_flow(None);
        let late = s.add_flow(None);
        drive(&mut s, &[busy], t0, Duration::from_millis(50), 1514);
        // `late` now joins; over the next 10 ms the two split evenly rather
        // than `late` taking everything to make up 50 ms.
        let t1 = t0 + Duration::from_millis(50);
        let sent = drive(&mut s, &[busy, late], t1, Duration::from_millis(10), 1514);
        let ratio = sent[1] as f64 / sent[0] as f64;
        assert!((0.9..1.1).contains(&ratio), "{sent:?}");
    }

    #[test]
    fn nobody_waiting_means_no_timer() {
        let t0 = Instant::now();
        let mut s = Shaper::new(Some(Rate::gbit(1)), 0);
        let f = s.add_flow(None);
        assert_eq!(s.poll_timeout(t0), None);
        assert_eq!(s.poll_transmit(t0), None);
        s.set_backlog(f, Some(64));
        assert_eq!(s.poll_transmit(t0), Some(f));
        s.remove_flow(f);
        assert_eq!(s.poll_transmit(t0), None);
    }
}
