//! File transfer over parallel streams: `xsock send FILE` and
//! `xsock recv DIR` ([`wire`] is the protocol, [`state`] what makes a
//! transfer resumable).

pub mod hasher;
pub mod recv;
pub mod send;
pub mod state;
pub mod wire;

use crate::args::{RuntimeArgs, TransportArg};

/// Transfers default to the TCP mode where an interface is given (paced
/// parallel streams are what they are for), else to kernel TCP; on the
/// overlay (`overlay`), to what the overlay picks (reliable-link to the
/// relays, whatever inside the LAN).
fn default_transport(rt: &RuntimeArgs, overlay: bool) -> RuntimeArgs {
    let mut rt = rt.clone();
    // Bulk: the receiver pauses to hash and write; keep every buffer posted.
    rt.deep_fill = true;
    if rt.transport.is_none() && !overlay {
        rt.transport = Some(if rt.iface.is_some() { TransportArg::Tcp } else { TransportArg::Kernel });
    }
    rt
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes for a human: 1.5 GiB.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
