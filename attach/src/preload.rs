//! The settings of `libxsock_preload.so` (issue 13), read from the
//! environment: one list, printed by `xsock preload --help` and parsed by
//! the library, so the two never disagree.

use std::time::Duration;

/// Where a TCP connect to an address on the engine's subnet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreloadTransport {
    /// reliable-link if the peer runs xsock (and listens on it), else the
    /// kernel's TCP on the program's own socket.
    Auto,
    /// reliable-link only: a peer without xsock is an error.
    Link,
    /// The engine's TCP mode, for every IPv4 destination (also off the
    /// subnet).
    Tcp,
    /// Leave TCP to the kernel (the preload then only passes calls on).
    Kernel,
}

/// Every setting, read once when the library loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadSettings {
    /// `XSOCK_PRELOAD=off`: pass every call to libc.
    pub enabled: bool,
    /// `XSOCK_TRANSPORT`.
    pub transport: PreloadTransport,
    /// `XSOCK_STRICT=1`: without an engine, connect and listen fail
    /// (ENETDOWN) instead of staying on the kernel with a warning.
    pub strict: bool,
    /// `XSOCK_IFACE`: the engine to attach to (else the only one running
    /// in this network namespace).
    pub iface: Option<String>,
    /// `XSOCK_CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// `XSOCK_PRELOAD_LOG=1`: one line on stderr per decision.
    pub log: bool,
    /// `XSOCK_IFADDR=virtual`: getifaddrs shows the engine's interface
    /// with the host's virtual address on the overlay.
    pub virtual_ifaddr: bool,
}

/// The variables, with what each does (for `--help` and the README).
pub const VARIABLES: &[(&str, &str)] = &[
    ("XSOCK_PRELOAD", "on (default) or off: off passes every call to libc untouched"),
    (
        "XSOCK_TRANSPORT",
        "auto (default): reliable-link to an xsock peer on the engine's segment, the kernel's TCP for anything else; \
         link: reliable-link only (a peer without xsock is an error); tcp: the engine's TCP mode for every IPv4 \
         destination; kernel: leave TCP to the kernel",
    ),
    (
        "XSOCK_STRICT",
        "0 (default) or 1: with 1, connect and listen fail with ENETDOWN when no engine runs, instead of staying on \
         the kernel after one warning",
    ),
    ("XSOCK_IFACE", "the interface whose engine to use (default: the only engine running in this network namespace)"),
    ("XSOCK_CONNECT_TIMEOUT_MS", "how long a connect through the engine may take (default 10000)"),
    ("XSOCK_PRELOAD_LOG", "0 (default) or 1: one line on stderr for every socket the preload takes or leaves"),
    (
        "XSOCK_IFADDR",
        "lan (default) or virtual: with virtual, getifaddrs shows the engine's interface with this host's virtual \
         address and the virtual network's mask (an engine joined to an overlay), so programs that tell their peers \
         the interface's address (MPICH's launcher with -iface, UCX's TCP transport) tell them one they can reach \
         from other LANs",
    ),
    ("XSOCK_RUN_DIR", "where engines keep their sockets (default /run/xsock)"),
];

impl PreloadSettings {
    /// From the environment; `Err` names the variable and what it takes.
    pub fn from_env() -> Result<PreloadSettings, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From `get` (the environment, or a test's table).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<PreloadSettings, String> {
        let flag = |name: &str, default: bool| -> Result<bool, String> {
            match get(name).as_deref() {
                None | Some("") => Ok(default),
                Some("1" | "on" | "yes" | "true") => Ok(true),
                Some("0" | "off" | "no" | "false") => Ok(false),
                Some(v) => Err(format!("{name}={v} is not a setting: use 1 (on) or 0 (off)")),
            }
        };
        let transport = match get("XSOCK_TRANSPORT").as_deref() {
            None | Some("" | "auto") => PreloadTransport::Auto,
            Some("link") => PreloadTransport::Link,
            Some("tcp") => PreloadTransport::Tcp,
            Some("kernel") => PreloadTransport::Kernel,
            Some(v) => return Err(format!("XSOCK_TRANSPORT={v} is not a setting: use auto, link, tcp or kernel")),
        };
        let connect_timeout = match get("XSOCK_CONNECT_TIMEOUT_MS").as_deref() {
            None | Some("") => Duration::from_secs(10),
            Some(v) => match v.parse::<u32>() {
                Ok(ms) if ms > 0 => Duration::from_millis(u64::from(ms)),
                _ => {
                    return Err(format!(
                        "XSOCK_CONNECT_TIMEOUT_MS={v} is not a setting: use a whole number of milliseconds above 0"
                    ));
                }
            },
        };
        let virtual_ifaddr = match get("XSOCK_IFADDR").as_deref() {
            None | Some("" | "lan") => false,
            Some("virtual") => true,
            Some(v) => return Err(format!("XSOCK_IFADDR={v} is not a setting: use lan or virtual")),
        };
        Ok(PreloadSettings {
            enabled: flag("XSOCK_PRELOAD", true)?,
            transport,
            strict: flag("XSOCK_STRICT", false)?,
            iface: get("XSOCK_IFACE").filter(|v| !v.is_empty()),
            connect_timeout,
            log: flag("XSOCK_PRELOAD_LOG", false)?,
            virtual_ifaddr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<PreloadSettings, String> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PreloadSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_each_variable() {
        let d = with(&[]).unwrap();
        assert!(d.enabled && !d.strict && !d.log && d.iface.is_none() && !d.virtual_ifaddr);
        assert_eq!(d.transport, PreloadTransport::Auto);
        assert_eq!(d.connect_timeout, Duration::from_secs(10));
        let s = with(&[
            ("XSOCK_PRELOAD", "off"),
            ("XSOCK_TRANSPORT", "link"),
            ("XSOCK_STRICT", "1"),
            ("XSOCK_IFACE", "eth1"),
            ("XSOCK_CONNECT_TIMEOUT_MS", "250"),
            ("XSOCK_PRELOAD_LOG", "1"),
            ("XSOCK_IFADDR", "virtual"),
        ])
        .unwrap();
        assert!(!s.enabled && s.strict && s.log && s.virtual_ifaddr);
        assert_eq!(s.transport, PreloadTransport::Link);
        assert_eq!(s.iface.as_deref(), Some("eth1"));
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn a_typo_names_the_variable_and_the_choices() {
        let e = with(&[("XSOCK_TRANSPORT", "lnk")]).unwrap_err();
        assert!(e.contains("XSOCK_TRANSPORT=lnk") && e.contains("auto, link, tcp or kernel"), "{e}");
        assert!(with(&[("XSOCK_STRICT", "maybe")]).unwrap_err().contains("XSOCK_STRICT=maybe"));
        assert!(with(&[("XSOCK_CONNECT_TIMEOUT_MS", "0")]).is_err());
        assert!(with(&[("XSOCK_CONNECT_TIMEOUT_MS", "1s")]).is_err());
        assert!(with(&[("XSOCK_IFADDR", "vaddr")]).unwrap_err().contains("use lan or virtual"));
    }

    #[test]
    fn every_variable_read_is_listed() {
        for name in [
            "XSOCK_PRELOAD",
            "XSOCK_TRANSPORT",
            "XSOCK_STRICT",
            "XSOCK_IFACE",
            "XSOCK_CONNECT_TIMEOUT_MS",
            "XSOCK_IFADDR",
        ] {
            assert!(VARIABLES.iter().any(|(n, _)| *n == name), "{name}");
        }
    }
}
