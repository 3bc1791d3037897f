//! The engine's status: what `xsock engine --status` prints.

use serde_json::{Value, json};

use crate::Engine;

impl Engine {
    /// Processes, streams, bytes and queue counters, as JSON.
    pub fn status_json(&self) -> Value {
        let mut to_net = self.totals.moved.to_net;
        let mut to_app = self.totals.moved.to_app;
        let mut buffered = 0;
        let (mut ring_streams, mut bells) = (0usize, self.totals.bells);
        for c in self.carried.values() {
            to_net += c.bridge.moved.to_net;
            to_app += c.bridge.moved.to_app;
            buffered += c.bridge.buffered();
            ring_streams += usize::from(c.bridge.has_rings());
            bells += c.bridge.bells;
        }
        for d in self.direct.values() {
            let (n, a) = d.end.moved();
            to_net += n;
            to_app += a;
        }
        let mem = self.rt.memory();
        let queues: Vec<Value> = self
            .rt
            .queue_stats()
            .iter()
            .map(|q| {
                json!({
                    "queue": q.queue, "rx_frames": q.rx_frames, "tx_frames": q.tx_frames,
                    "rx_dropped": q.rx_dropped, "rx_ring_full": q.rx_ring_full, "tx_ring_full": q.tx_ring_full,
                    "fill_ring_empty": q.fill_ring_empty,
                })
            })
            .collect();
        let detail: Vec<Value> = self
            .carried
            .iter()
            .take(64)
            .map(|(id, c)| {
                json!({
                    "id": id, "pid": c.pid, "peer": c.bridge.stream.peer_addr().to_string(),
                    "state": c.bridge.describe(),
                    "watch_pair": format!("{:?}", self.watched.get(&crate::token(*id, crate::kind::PAIR).0)),
                    "watch_stream": format!("{:?}", self.watched.get(&crate::token(*id, crate::kind::STREAM).0)),
                })
            })
            .collect();
        let overlay = self.overlay.as_ref().map(|o| {
            let (net, prefix) = o.node.vnet();
            // The directory, fresh (one round trip to a bootstrap server):
            // what `xsock engine --hosts` prints.
            let hosts: Vec<Value> = match o.node.directory() {
                Ok(mut entries) => {
                    entries.sort_by_key(|e| e.vaddr);
                    entries
                    .iter()
                    .filter_map(|e| e.vaddr.map(|a| json!({"vaddr": a.to_string(), "name": e.name, "site": e.site.0})))
                    .collect()
                }
                Err(e) => vec![json!({"error": e.to_string()})],
            };
            json!({
                "name": o.node.name(), "node": o.node.id().0, "site": o.node.site().0,
                "vaddr": o.vaddr().to_string(), "vnet": format!("{net}/{prefix}"), "opening": o.pending,
                "boot_servers": o.node.boot_servers().iter().map(|(a, up)| json!({"addr": a.to_string(), "up": up})).collect::<Vec<_>>(),
                "hosts": hosts,
            })
        });
        json!({
            "overlay": overlay,
            "stream_detail": detail,
            "iface": self.cfg.iface,
            "pid": std::process::id(),
            "socket": self.place.socket().display().to_string(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "clients": self.clients.len(),
            "streams": self.carried.len() + self.direct.len(),
            "vcs_handed_over": self.direct.len(),
            "vcs_handed_over_total": self.totals.vcs_handed,
            "connecting": self.connecting.len(),
            "listeners": self.listens.len(),
            "attached_total": self.totals.attached,
            "refused_total": self.totals.refused,
            "streams_total": self.totals.streams,
            "kernel_handed_total": self.totals.kernel_handed,
            "failed_connects_total": self.totals.failed_connects,
            "process_gone_resets_total": self.totals.process_gone_resets,
            "bytes_to_net": to_net,
            "bytes_to_app": to_app,
            "bridge_buffered_bytes": buffered,
            "bridge_buffers_kept": self.pool.kept(),
            "ring_streams": ring_streams,
            "ring_bytes_each": self.cfg.ring_bytes,
            "ring_memory_bytes": ring_streams * crate::bridge::ring_layout(self.cfg.ring_bytes).2,
            "doorbells_to_clients_total": bells,
            "link_connections": mem.link_connections,
            "memory_reserved": mem.reserved,
            "memory_limit": mem.limit,
            "queues": queues,
        })
    }
}
