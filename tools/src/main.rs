//! The xsock command (being built).
fn main() {}
