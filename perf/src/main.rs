//! The xsock perf suite (being built).
fn main() {}
