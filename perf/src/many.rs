//! Many connections between the two hosts: `xsock conns` (open, exchange,
//! hold idle, close) and `xsock bw --streams`, with the memory of both
//! processes read from /proc while they run.

use std::{
    io::{self, BufRead, BufReader, Read},
    process::Stdio,
    time::{Duration, Instant},
};

use serde::Deserialize;

use xsock_testbed::rss_kib;

use crate::{B_IP, Bench, Rate, io_err, stdout_json};

/// One `xsock conns` run, with the server's memory beside the client's.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnsRun {
    /// Connections asked for.
    pub count: usize,
    /// Connections that completed their exchange.
    pub ok: usize,
    /// Connections that failed.
    pub failed: usize,
    /// Client wall time from the first connect to the last echo.
    pub seconds: f64,
    /// Both directions' payload over `seconds`.
    pub gbit_per_s: f64,
    /// Connect time, median.
    pub connect_p50_ns: u64,
    /// Connect time, 99th percentile.
    pub connect_p99_ns: u64,
    /// Connect time, worst.
    pub connect_max_ns: u64,
    /// Client RSS with every connection open and idle.
    pub rss_kib: u64,
    /// Client peak RSS.
    pub rss_peak_kib: u64,
    /// The client's first error, if any connection failed.
    #[serde(default)]
    pub first_error: Option<String>,
    /// Server RSS with every connection open and idle (read when the
    /// client says it has held them).
    #[serde(skip)]
    pub server_idle_kib: u64,
    /// Server peak RSS.
    #[serde(skip)]
    pub server_peak_kib: u64,
    /// Kernel TCP memory (pages, /proc/net/sockstat `mem`) at the same
    /// moment: where kernel TCP keeps what RSS does not show.
    #[serde(skip)]
    pub kernel_tcp_pages: u64,
}

/// One `xsock bw --streams` run with both processes' peak RSS.
#[derive(Debug, Clone, Copy)]
pub struct BulkRun {
    /// Receiver goodput over all streams.
    pub rate: Rate,
    /// Streams that delivered no byte at all.
    pub starved: usize,
    /// Sender peak RSS.
    pub client_peak_kib: u64,
    /// Receiver peak RSS.
    pub server_peak_kib: u64,
}

/// `--iface eth0` for the transports that drive it.
fn iface_args(transport: &str) -> &'static [&'static str] {
    if transport == "kernel" { &[] } else { &["--iface", "eth0"] }
}

impl Bench {
    /// `xsock TOOL --listen B:port` on `transport` alone, ready: its XDP
    /// filter attached, or (kernel TCP) its port listening.
    fn start_server_of(&self, tool: &str, transport: &str, port: u16) -> io::Result<u32> {
        let listen = format!("{B_IP}:{port}");
        let mut server = vec![tool, "--listen", &listen, "--transport", transport];
        server.extend_from_slice(iface_args(transport));
        if transport == "kernel" {
            self.start_tcp_server(self.xsock(), &server, port)
        } else {
            self.start_xsock_server(&server)
        }
    }

    /// Kernel TCP memory in pages, as /proc/net/sockstat in `b` reports it.
    fn tcp_mem_pages(&self) -> u64 {
        let out = self.b.exec("cat", &["/proc/net/sockstat"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        out.unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("TCP:"))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// `xsock conns` over `transport` ("link" or "kernel"): `count`
    /// connections at once, `bytes` echoed on each, then held idle for
    /// `hold` seconds. The server runs the same transport only.
    pub fn conns(&self, transport: &str, count: usize, bytes: usize, hold: u32) -> io::Result<ConnsRun> {
        let (listen, iface) = (format!("{B_IP}:7010"), iface_args(transport));
        let pid = self.start_server_of("conns", transport, 7010)?;
        let (count_s, bytes_s, hold_s) = (count.to_string(), bytes.to_string(), format!("{hold}s"));
        let mut client = vec![
            "conns",
            "--connect",
            &listen,
            "--transport",
            transport,
            "--count",
            &count_s,
            "--bytes",
            &bytes_s,
            "--hold",
            &hold_s,
            "--json",
        ];
        client.extend_from_slice(iface);
        let mut child = self.a.command(self.xsock(), &client).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().expect("piped");
        // The client logs "held N idle connections" at the end of its hold,
        // before it closes anything: that is when the server is read.
        let watcher = std::thread::spawn(move || {
            let mut at_hold = None;
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if at_hold.is_none() && line.contains("held ") && line.contains("idle connections") {
                    at_hold = Some(rss_kib(pid).0);
                }
                log += &line;
                log.push('\n');
            }
            (at_hold, log)
        });
        let mut stdout = String::new();
        child.stdout.take().expect("piped").read_to_string(&mut stdout)?;
        let status = child.wait()?;
        let (at_hold, log) = watcher.join().map_err(|_| io_err("stderr reader panicked"))?;
        let kernel_tcp_pages = self.tcp_mem_pages();
        let server_peak_kib = rss_kib(pid).1;
        self.stop(pid);
        if !status.success() {
            return Err(io_err(format!("xsock conns failed ({status}): {}", log.trim())));
        }
        let mut run: ConnsRun = serde_json::from_str(stdout.trim())
            .map_err(|e| io_err(format!("xsock conns: bad JSON ({e}): {stdout}")))?;
        run.server_idle_kib = at_hold.ok_or_else(|| io_err(format!("xsock conns never said it held: {log}")))?;
        run.server_peak_kib = server_peak_kib;
        run.kernel_tcp_pages = kernel_tcp_pages;
        Ok(run)
    }

    /// `xsock bw --streams N` over `transport` with `size`-byte sends for
    /// `seconds`, both processes' memory sampled while it runs.
    pub fn bulk(&self, transport: &str, streams: usize, size: usize, seconds: u32) -> io::Result<BulkRun> {
        let (listen, iface) = (format!("{B_IP}:7011"), iface_args(transport));
        let pid = self.start_server_of("bw", transport, 7011)?;
        let (streams_s, size_s, secs) = (streams.to_string(), size.to_string(), format!("{seconds}s"));
        let mut client = vec![
            "bw",
            "--connect",
            &listen,
            "--transport",
            transport,
            "--streams",
            &streams_s,
            "--size",
            &size_s,
            "--seconds",
            &secs,
            "--json",
        ];
        client.extend_from_slice(iface);
        let mut child = self.a.command(self.xsock(), &client).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut client_peak_kib = 0;
        let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 120);
        while child.try_wait()?.is_none() {
            client_peak_kib = client_peak_kib.max(rss_kib(child.id()).1);
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output()?;
        let server_peak_kib = rss_kib(pid).1;
        self.stop(pid);
        #[derive(Deserialize)]
        struct R {
            gbit_per_s: f64,
            corrupt_bytes: u64,
            per_stream_bytes: Vec<u64>,
        }
        let r: R = stdout_json("xsock bw --streams", &out)?;
        if r.corrupt_bytes > 0 {
            return Err(io_err(format!("xsock bw: {} corrupt bytes", r.corrupt_bytes)));
        }
        Ok(BulkRun {
            rate: Rate { gbit_per_s: r.gbit_per_s, pps: None, loss: None },
            starved: r.per_stream_bytes.iter().filter(|&&b| b == 0).count(),
            client_peak_kib,
            server_peak_kib,
        })
    }
}
