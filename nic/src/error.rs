//! Errors from opening and running a frame device. Each message says what
//! is wrong and what to do about it.

use std::{fmt, io};

use crate::sys::Capability;

/// An error opening or driving a frame device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NicError {
    /// The named interface does not exist in this network namespace.
    #[error("interface {iface:?} not found in this network namespace (interfaces here: {}); \
             check the name with `ip link`, or run inside the right namespace \
             (`ip netns exec NS ...`)", .available.join(", "))]
    InterfaceNotFound {
        /// The name asked for.
        iface: String,
        /// Interfaces that do exist.
        available: Vec<String>,
    },

    /// The process lacks capabilities the backend needs.
    #[error("{what} needs {}: run as root, or grant them with \
             `setcap {} <path-to-binary>`", names(.missing), setcap(.missing))]
    PermissionDenied {
        /// What was being attempted.
        what: &'static str,
        /// Capabilities missing from the effective set.
        missing: Vec<Capability>,
    },

    /// Another XDP program is attached to the interface.
    #[error(
        "interface {iface} already has an XDP program attached ({existing}); xsock needs the interface's XDP hook to itself: {fix}"
    )]
    XdpProgramPresent {
        /// Interface name.
        iface: String,
        /// Description of the program found (id, name).
        existing: String,
        /// What to do: stop the process that owns it (named, when a
        /// bpf_link is held by a process), or detach a program attached
        /// without one.
        fix: String,
    },

    /// The queue id is beyond the interface's receive queues.
    #[error("interface {iface} has {queues} receive queue(s) (ids 0..={}), so queue {queue} \
             does not exist; pick a queue below {queues} (`--queue`), or add queues with \
             `ethtool -L {iface} combined N`", .queues.saturating_sub(1))]
    QueueOutOfRange {
        /// Interface name.
        iface: String,
        /// Queue asked for.
        queue: u32,
        /// Queues the interface has.
        queues: u32,
    },

    /// Frames at the interface's MTU do not fit the configured buffers.
    #[error(
        "interface {iface} has MTU {mtu} (frames up to {frame} bytes), but one UMEM frame \
             holds {capacity} bytes; {hint}"
    )]
    MtuTooLarge {
        /// Interface name.
        iface: String,
        /// Interface MTU.
        mtu: u32,
        /// Largest frame at that MTU, Ethernet header included.
        frame: usize,
        /// Bytes a buffer can hold.
        capacity: usize,
        /// What to change.
        hint: String,
    },

    /// The kernel refused to pin the UMEM.
    #[error(
        "the kernel refused to register a UMEM of {bytes} bytes ({source}); \
             RLIMIT_MEMLOCK is {limit}: raise it (`ulimit -l unlimited`, or \
             LimitMEMLOCK=infinity in a systemd unit), grant CAP_IPC_LOCK, or use fewer/smaller \
             frames (--frames, --frame-size)"
    )]
    MemlockRefused {
        /// Size of the UMEM asked for.
        bytes: u64,
        /// The limit in force, as text.
        limit: String,
        /// The kernel's error.
        source: io::Error,
    },

    /// The backend cannot work here (kernel or driver lacks support). The
    /// automatic backend choice falls back to the next backend on this error.
    #[error("{backend} is not available on {iface}: {reason}")]
    Unsupported {
        /// The backend that was tried.
        backend: &'static str,
        /// Interface name.
        iface: String,
        /// Why.
        reason: String,
    },

    /// Any other system error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system error.
        source: io::Error,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl NicError {
    /// Wraps an `io::Error` with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        NicError::Io { context: context.into(), source }
    }
}

fn names(caps: &[Capability]) -> String {
    caps.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

fn setcap(caps: &[Capability]) -> impl fmt::Display + '_ {
    struct S<'a>(&'a [Capability]);
    impl fmt::Display for S<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let list: Vec<String> = self.0.iter().map(|c| c.name().trim_start_matches("CAP_").to_lowercase()).collect();
            write!(f, "cap_{}+ep", list.join(",cap_"))
        }
    }
    S(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_message_names_the_fix() {
        let e = NicError::PermissionDenied { what: "AF_XDP", missing: vec![Capability::NetRaw, Capability::Bpf] };
        let s = e.to_string();
        assert!(s.contains("CAP_NET_RAW, CAP_BPF"), "{s}");
        assert!(s.contains("setcap cap_net_raw,cap_bpf+ep"), "{s}");
        assert!(s.contains("run as root"), "{s}");
    }

    #[test]
    fn queue_message_names_the_range() {
        let e = NicError::QueueOutOfRange { iface: "eth0".into(), queue: 4, queues: 2 };
        let s = e.to_string();
        assert!(s.contains("ids 0..=1") && s.contains("queue 4"), "{s}");
    }
}
