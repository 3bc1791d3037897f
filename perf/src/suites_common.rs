//! Helpers shared by the suites: progress lines and table rows.

use xsock_perf::{
    Rate, Rtt,
    report::{Table, median, us},
};

pub fn progress(msg: &str) {
    eprintln!("[xsock-perf] {msg}");
}

pub fn rtt_row(t: &mut Table, name: &str, runs: &[Rtt], vs: Option<f64>) {
    let m = |f: fn(&Rtt) -> u64| median(runs.iter().map(|r| f(r) as f64).collect()) as u64;
    t.row([
        name.to_owned(),
        us(m(|r| r.rtt_p50_ns)),
        us(m(|r| r.rtt_p99_ns)),
        us(m(|r| r.rtt_p999_ns)),
        vs.map_or("1.00".into(), |v| format!("{v:.2}")),
        format!("{}", runs.len()),
    ]);
}

pub fn rate_row(t: &mut Table, name: &str, frame: &str, runs: &[Rate], vs: Option<f64>) {
    let g = median(runs.iter().map(|r| r.gbit_per_s).collect());
    let pps: Vec<f64> = runs.iter().filter_map(|r| r.pps).collect();
    let loss: Vec<f64> = runs.iter().filter_map(|r| r.loss).collect();
    t.row([
        name.to_owned(),
        frame.to_owned(),
        format!("{g:.2}"),
        if pps.is_empty() { "-".into() } else { format!("{:.3}", median(pps) / 1e6) },
        if loss.is_empty() { "-".into() } else { format!("{:.2}%", median(loss) * 100.0) },
        vs.map_or("1.00".into(), |v| format!("{v:.2}")),
    ]);
}
