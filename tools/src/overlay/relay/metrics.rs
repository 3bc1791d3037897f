//! `--metrics-listen IP:PORT`: the relay's figures in Prometheus's text
//! format over HTTP (`GET /metrics`), for the monitoring a site already
//! runs. The loop renders the text from its status (the same values as
//! the status file) every status interval and hands it over; one helper
//! thread answers scrapes with the latest text, so a slow or hostile client
//! never holds up forwarding.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use crate::fail::Fail;

/// The latest rendering, shared with the HTTP thread.
#[derive(Clone)]
pub struct Metrics {
    text: Arc<Mutex<String>>,
}

impl Metrics {
    /// Listens on `addr` and serves scrapes on a helper thread.
    pub fn serve(addr: SocketAddrV4) -> Result<Metrics, Fail> {
        let l = TcpListener::bind(addr).map_err(|e| {
            Fail::msg(format!("cannot listen for metrics on {addr}: {e} (is the address on this host, the port free?)"))
        })?;
        let m = Metrics { text: Arc::new(Mutex::new(String::new())) };
        let shared = m.clone();
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(s) => shared.answer(s),
                    // Out of descriptors, say: do not spin on it.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        log::info!("metrics on http://{addr}/metrics");
        Ok(m)
    }

    /// Replaces what scrapes get.
    pub fn publish(&self, text: String) {
        *self.text.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }

    /// One request: `GET /metrics` gets the text, anything else an error
    /// status. Reads at most 8 KiB for at most 2 s.
    fn answer(&self, mut s: TcpStream) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(req.split(|b| *b == b'\r').next().unwrap_or(&[])).to_string();
        let mut parts = line.split_whitespace();
        let (status, body) = match (parts.next(), parts.next()) {
            (Some("GET"), Some("/metrics")) => ("200 OK", self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            (Some("GET"), Some(_)) => ("404 Not Found", "the relay's metrics are at /metrics\n".to_owned()),
            _ => ("405 Method Not Allowed", "GET /metrics\n".to_owned()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes()));
    }
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric's HELP/TYPE lines and samples `(labels, value)`.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The text for `status` (the status file's JSON).
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let relay = format!("relay=\"{}\"", label(status["name"].as_str().unwrap_or("")));
    let one = |v: &Value| vec![(relay.clone(), num(v))];
    let c = &status["counters"];
    let links = status["links"].as_array().cloned().unwrap_or_default();
    let routes = status["routes"].as_array().cloned().unwrap_or_default();
    let queues = status["lan_queues"].as_array().cloned().unwrap_or_default();
    family(
        &mut out,
        "xsock_relay_up",
        "gauge",
        "1 while the relay runs (0.5 while it drains)",
        &[(relay.clone(), if status["draining"] == true { 0.5 } else { 1.0 })],
    );
    let servers: Vec<(String, f64)> = status["boot_servers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                format!("{relay},server=\"{}\"", label(b["addr"].as_str().unwrap_or(""))),
                f64::from(u8::from(b["up"] == true)),
            )
        })
        .collect();
    family(
        &mut out,
        "xsock_relay_boot_server_up",
        "gauge",
        "1 while the session with a bootstrap server is up",
        &servers,
    );
    family(&mut out, "xsock_relay_links", "gauge", "Relay links up", &[(relay.clone(), links.len() as f64)]);
    let sessions = status["sessions"].as_array().map_or(0, Vec::len);
    family(&mut out, "xsock_relay_sessions", "gauge", "Endpoints attached now", &[(relay.clone(), sessions as f64)]);
    family(
        &mut out,
        "xsock_relay_sessions_attached_total",
        "counter",
        "Endpoint sessions taken (each carries all of its endpoint's virtual connections)",
        &one(&c["sessions_attached"]),
    );
    family(
        &mut out,
        "xsock_relay_lan_streams_total",
        "counter",
        "Virtual connections that took a LAN stream of their own (an endpoint that did not attach)",
        &one(&c["lan_streams"]),
    );
    let per_link = |key: &str| -> Vec<(String, f64)> {
        links
            .iter()
            .map(|l| (format!("{relay},peer=\"{}\"", label(l["name"].as_str().unwrap_or(""))), num(&l[key])))
            .collect()
    };
    family(&mut out, "xsock_relay_link_rx_bytes_total", "counter", "Bytes read on a relay link", &per_link("bytes_in"));
    family(
        &mut out,
        "xsock_relay_link_tx_bytes_total",
        "counter",
        "Bytes written on a relay link",
        &per_link("bytes_out"),
    );
    family(
        &mut out,
        "xsock_relay_link_queued_bytes",
        "gauge",
        "Bytes waiting for a relay link's socket",
        &per_link("queued"),
    );
    family(
        &mut out,
        "xsock_relay_routes",
        "gauge",
        "Relays this relay has a route to",
        &[(relay.clone(), routes.len() as f64)],
    );
    let hops: Vec<(String, f64)> = routes
        .iter()
        .map(|r| (format!("{relay},to=\"{}\"", label(r["relay"].as_str().unwrap_or(""))), num(&r["hops"])))
        .collect();
    family(&mut out, "xsock_relay_route_hops", "gauge", "Hops of the route to a relay", &hops);
    family(&mut out, "xsock_relay_vcs", "gauge", "Virtual connections open through this relay", &one(&status["vcs"]));
    family(
        &mut out,
        "xsock_relay_endpoint_streams",
        "gauge",
        "Streams to endpoints of this LAN",
        &one(&status["endpoint_streams"]),
    );
    for (key, help) in [
        ("vcs_opened", "Virtual connections opened through this relay"),
        ("vcs_closed", "Virtual connections that ended normally"),
        ("bytes_forwarded", "Data bytes forwarded"),
        ("lsas_in", "Link-state advertisements received"),
        ("lsas_originated", "Link-state advertisements of this relay sent (changes and refreshes)"),
        ("sessions_ended", "Endpoint sessions that ended"),
        (
            "lan_handshakes_failed",
            "Endpoints' LAN handshakes that failed other than by authentication (timed out, closed)",
        ),
        ("route_runs", "Route computations"),
        ("revocations_refused", "Revocation lists from links not taken (another CA, bad signature)"),
    ] {
        family(&mut out, &format!("xsock_relay_{key}_total"), "counter", help, &one(&c[key]));
    }
    family(
        &mut out,
        "xsock_relay_vcs_dropped_total",
        "counter",
        "Virtual connections that did not open or did not end normally, by reason",
        &[
            (format!("{relay},reason=\"refused\""), num(&c["vcs_refused"])),
            (format!("{relay},reason=\"aborted\""), num(&c["vcs_aborted"])),
        ],
    );
    family(
        &mut out,
        "xsock_relay_links_dropped_total",
        "counter",
        "Relay links closed, by reason",
        &[
            (format!("{relay},reason=\"silent\""), num(&c["links_silent"])),
            (format!("{relay},reason=\"down\""), num(&c["links_down"])),
            (format!("{relay},reason=\"replaced\""), num(&c["links_replaced"])),
        ],
    );
    family(
        &mut out,
        "xsock_relay_auth_refused_total",
        "counter",
        "Handshakes refused (wrong key, stranger, old protocol), by side",
        &[
            (format!("{relay},side=\"wan\""), num(&c["auth_refused_wan"])),
            (format!("{relay},side=\"lan\""), num(&c["auth_refused_lan"])),
        ],
    );
    let per_queue = |key: &str, what: &str| -> Vec<(String, f64)> {
        queues.iter().map(|q| (format!("{relay},queue=\"{}\"{what}", q["queue"]), num(&q[key]))).collect()
    };
    family(
        &mut out,
        "xsock_relay_lan_rx_frames_total",
        "counter",
        "Frames received on the LAN interface",
        &per_queue("rx_frames", ""),
    );
    family(
        &mut out,
        "xsock_relay_lan_tx_frames_total",
        "counter",
        "Frames sent on the LAN interface",
        &per_queue("tx_frames", ""),
    );
    let mut drops = per_queue("rx_dropped", ",reason=\"rx_ring_full\"");
    drops.extend(per_queue("fill_ring_empty", ",reason=\"fill_ring_empty\""));
    drops.extend(per_queue("tx_ring_full", ",reason=\"tx_ring_full\""));
    family(
        &mut out,
        "xsock_relay_lan_drops_total",
        "counter",
        "LAN frames dropped or delayed by the AF_XDP rings, by reason",
        &drops,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let st = serde_json::json!({
            "name": "site-\"a\"", "vcs": 3, "endpoint_streams": 2, "draining": false,
            "links": [{"name": "hub", "bytes_in": 10, "bytes_out": 20, "queued": 0}],
            "routes": [{"relay": "hub", "hops": 1}],
            "lan_queues": [{"queue": 0, "rx_frames": 5, "tx_frames": 6, "rx_dropped": 1, "fill_ring_empty": 0, "tx_ring_full": 0}],
            "counters": {"vcs_opened": 4, "vcs_refused": 1, "vcs_aborted": 0, "vcs_closed": 3, "bytes_forwarded": 99,
                "lsas_in": 7, "route_runs": 2, "auth_refused_wan": 1, "auth_refused_lan": 0, "revocations_refused": 0,
                "lsas_originated": 3, "sessions_ended": 1, "lan_handshakes_failed": 2, "links_silent": 1,
                "links_down": 0, "links_replaced": 0},
        });
        let t = render(&st);
        assert!(t.contains("xsock_relay_vcs{relay=\"site-\\\"a\\\"\"} 3"), "{t}");
        assert!(t.contains("xsock_relay_link_tx_bytes_total{relay=\"site-\\\"a\\\"\",peer=\"hub\"} 20"), "{t}");
        assert!(t.contains("reason=\"refused\"} 1"), "{t}");
        assert!(t.contains("side=\"wan\"} 1"), "{t}");
        assert!(t.contains("xsock_relay_links_dropped_total{relay=\"site-\\\"a\\\"\",reason=\"silent\"} 1"), "{t}");
        // Every sample line is `name{labels} value` or `name value`.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
            assert!(l.starts_with("xsock_relay_"), "{l}");
        }
        assert_eq!(t.matches("# TYPE").count(), t.matches("# HELP").count());
    }
}
