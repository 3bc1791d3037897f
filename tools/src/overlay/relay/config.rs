//! Flags and the `--config` file merged into [`Settings`].
//!
//! A key of the file is a long flag without its dashes, and its value is
//! parsed by the flag's own parser (each line is handed to clap as
//! `--key value`), so every flag is a key, parses the same way and fails
//! with the same reason; nothing here lists the flags a second time.

use std::time::Duration;

use clap::{Args, Command, FromArgMatches};

use super::{Relay, Settings};
use crate::fail::Fail;

/// The relay's flags as clap knows them (no binary name: the argument list
/// is built from the file).
fn command() -> Command {
    Relay::augment_args(Command::new("relay").no_binary_name(true))
}

/// Every key a config file may hold: the long flags but `config` itself.
pub fn keys() -> Vec<String> {
    command().get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "config").map(str::to_owned).collect()
}

/// Parses `key = value` lines (`#` starts a comment, `_` may stand for
/// `-`) into the relay's flags. An unknown key, a line without `=`, a key
/// given twice or a value the flag refuses is an error naming the file,
/// the line and what to write instead.
pub fn parse(text: &str, file: &str) -> Result<Relay, Fail> {
    let keys = keys();
    let mut argv: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", i + 1);
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Fail::msg(format!("{at}: expected `key = value`, found {line:?}")));
        };
        let k = k.trim().replace('_', "-");
        if !keys.contains(&k) {
            return Err(Fail::msg(format!("{at}: unknown key {k:?} (valid: {})", keys.join(", "))));
        }
        let flag = format!("--{k}");
        if argv.contains(&flag) {
            return Err(Fail::msg(format!("{at}: {k} is set a second time in the file")));
        }
        let v = v.trim().trim_matches('"').to_owned();
        // The flag's own parser judges the value, one line at a time so the
        // error can name the line.
        if let Err(e) = command().try_get_matches_from([flag.clone(), v.clone()]) {
            let why = e.render().to_string();
            let why = why.lines().next().unwrap_or("").trim_start_matches("error: ");
            return Err(Fail::msg(format!("{at}: {k} = {v:?}: {why}")));
        }
        argv.extend([flag, v]);
    }
    let m = command().try_get_matches_from(argv).map_err(|e| Fail::msg(format!("{file}: {}", e.render())))?;
    Relay::from_arg_matches(&m).map_err(|e| Fail::msg(format!("{file}: {}", e.render())))
}

/// The flags given, each filled from `file` where the flag was not given.
fn merge(flags: &Relay, file: Relay) -> Relay {
    let f = flags.clone();
    Relay {
        config: f.config,
        boot: if f.boot.is_empty() { file.boot } else { f.boot },
        key_file: f.key_file.or(file.key_file),
        cert: f.cert.or(file.cert),
        revoked: f.revoked.or(file.revoked),
        name: f.name.or(file.name),
        lan_iface: f.lan_iface.or(file.lan_iface),
        wan_listen: f.wan_listen.or(file.wan_listen),
        wan_advertise: f.wan_advertise.or(file.wan_advertise),
        serve_port: f.serve_port.or(file.serve_port),
        status_file: f.status_file.or(file.status_file),
        lan_buffer: f.lan_buffer.or(file.lan_buffer),
        status_interval: f.status_interval.or(file.status_interval),
        window: f.window.or(file.window),
        spin: f.spin.or(file.spin),
        metrics_listen: f.metrics_listen.or(file.metrics_listen),
        drain_timeout: f.drain_timeout.or(file.drain_timeout),
        directory_cache: f.directory_cache.or(file.directory_cache),
    }
}

/// The relay's settings: flags over the config file over defaults.
pub fn settings(r: &Relay) -> Result<Settings, Fail> {
    let r = match &r.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| Fail::msg(format!("cannot read {}: {e}", p.display())))?;
            merge(r, parse(&text, &p.display().to_string())?)
        }
        None => r.clone(),
    };
    let need = |what: &str| Fail::msg(format!("--{what} is needed (as a flag or `{what} = ...` in --config)"));
    Ok(Settings {
        boot: if r.boot.is_empty() { return Err(need("boot")) } else { r.boot },
        key_file: r.key_file.ok_or_else(|| need("key-file"))?,
        cert: r.cert,
        revoked: r.revoked,
        name: r.name.ok_or_else(|| need("name"))?,
        lan_iface: r.lan_iface.ok_or_else(|| need("lan-iface"))?,
        wan_listen: r.wan_listen,
        wan_advertise: r.wan_advertise,
        serve_port: r.serve_port.unwrap_or(7401),
        status_file: r.status_file,
        status_interval: r.status_interval.unwrap_or(Duration::from_millis(500)),
        lan_buffer: usize::try_from(r.lan_buffer.unwrap_or(256 << 10))
            .map_err(|_| Fail::msg("--lan-buffer is larger than this machine's memory"))?,
        window: u32::try_from(r.window.unwrap_or(1 << 20))
            .map_err(|_| Fail::msg("--window must be below 4GiB (a virtual connection's credit is 32 bits)"))?,
        spin: r.spin.unwrap_or(Duration::ZERO),
        metrics_listen: r.metrics_listen,
        drain_timeout: r.drain_timeout.unwrap_or(Duration::from_secs(30)),
        directory_cache: r.directory_cache,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn flags(argv: &[&str]) -> Relay {
        Relay::from_arg_matches(&command().try_get_matches_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn parses_keys_and_refuses_typos_with_the_valid_list() {
        let r = parse("# relay a\nboot = 10.0.0.1:7400\nlan_iface = eth0 # the LAN\n", "r.conf").unwrap();
        assert_eq!(r.boot, vec!["10.0.0.1:7400".parse().unwrap()]);
        assert_eq!(r.lan_iface.as_deref(), Some("eth0"));
        let e = parse("bot = 1.2.3.4:5\n", "r.conf").unwrap_err().to_string();
        assert!(e.contains("r.conf:1") && e.contains("unknown key \"bot\"") && e.contains("valid: boot"), "{e}");
        assert!(parse("just words\n", "r.conf").is_err());
        let e = parse("name = a\nname = b\n", "r.conf").unwrap_err().to_string();
        assert!(e.contains("r.conf:2") && e.contains("second time"), "{e}");
        assert!(parse("config = other.conf\n", "r.conf").is_err(), "a config file names no other");
    }

    /// Every flag of `xsock relay` (but --config) is a key of the file,
    /// parsed as the flag is: a value for each, different from its
    /// default, comes out in the settings. A new flag fails this test
    /// until it has a line here.
    #[test]
    fn every_flag_parses_from_the_file() {
        let lines = [
            ("boot", "10.0.0.1:7400,10.0.0.9:7400"),
            ("key-file", "/etc/xsock/cluster.key"),
            ("cert", "/etc/xsock/site-a.node"),
            ("revoked", "/etc/xsock/revoked.list"),
            ("name", "site-a"),
            ("lan-iface", "eth1"),
            ("wan-listen", "198.18.0.5:7402"),
            ("wan-advertise", "203.0.113.7:17402"),
            ("serve-port", "7411"),
            ("status-file", "/run/xsock-relay.json"),
            ("lan-buffer", "128KiB"),
            ("status-interval", "2s"),
            ("window", "4194304"),
            ("spin", "1ms"),
            ("metrics-listen", "10.1.0.2:9401"),
            ("drain-timeout", "5s"),
            ("directory-cache", "/var/lib/xsock/site-a.dir"),
        ];
        let mut covered: Vec<&str> = lines.iter().map(|(k, _)| *k).collect();
        covered.sort_unstable();
        let mut all = keys();
        all.sort_unstable();
        assert_eq!(covered, all, "every relay flag needs a line in this test");
        let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let s = settings(&merge(&flags(&[]), parse(&text, "all.conf").unwrap())).unwrap();
        assert_eq!(s.boot, ["10.0.0.1:7400".parse().unwrap(), "10.0.0.9:7400".parse().unwrap()]);
        assert_eq!(s.key_file, PathBuf::from("/etc/xsock/cluster.key"));
        assert_eq!(s.cert, Some(PathBuf::from("/etc/xsock/site-a.node")));
        assert_eq!(s.revoked, Some(PathBuf::from("/etc/xsock/revoked.list")));
        assert_eq!(s.name, "site-a");
        assert_eq!(s.lan_iface, "eth1");
        assert_eq!(s.wan_listen, Some("198.18.0.5:7402".parse().unwrap()));
        assert_eq!(s.wan_advertise, Some("203.0.113.7:17402".parse().unwrap()));
        assert_eq!(s.serve_port, 7411);
        assert_eq!(s.status_file, Some(PathBuf::from("/run/xsock-relay.json")));
        assert_eq!(s.lan_buffer, 131072);
        assert_eq!(s.status_interval, Duration::from_secs(2));
        assert_eq!(s.window, 4 << 20);
        assert_eq!(s.spin, Duration::from_millis(1));
        assert_eq!(s.metrics_listen, Some("10.1.0.2:9401".parse().unwrap()));
        assert_eq!(s.drain_timeout, Duration::from_secs(5));
        assert_eq!(s.directory_cache, Some(PathBuf::from("/var/lib/xsock/site-a.dir")));
    }

    #[test]
    fn flags_win_over_the_file_and_bad_values_name_the_line() {
        let file = parse("name = from-file\nspin = 1ms\nwindow = 65536\n", "r.conf").unwrap();
        let r = merge(
            &flags(&["--name", "from-flag", "--boot", "10.0.0.1:1", "--key-file", "k", "--lan-iface", "e"]),
            file,
        );
        let s = settings(&r).unwrap();
        assert_eq!((s.name.as_str(), s.spin, s.window), ("from-flag", Duration::from_millis(1), 65536));
        let e = parse("boot = 10.0.0.1\n", "r.conf").unwrap_err().to_string();
        assert!(e.contains("r.conf:1") && e.contains("boot = \"10.0.0.1\""), "{e}");
        let e = parse("\nspin = fast\n", "r.conf").unwrap_err().to_string();
        assert!(e.contains("r.conf:2") && e.contains("spin"), "{e}");
        let e = settings(&flags(&["--name", "x"])).unwrap_err().to_string();
        assert!(e.contains("--boot is needed"), "{e}");
    }

    /// The example config and the systemd unit shipped in tools/systemd
    /// stay in step with the flags.
    #[test]
    fn the_shipped_example_config_and_unit_parse() {
        let text = include_str!("../../../systemd/relay-example.conf");
        let r = parse(text, "relay-example.conf").unwrap();
        let s = settings(&r).unwrap();
        assert_eq!((s.name.as_str(), s.drain_timeout), ("site-a", Duration::from_secs(30)));
        assert!(s.metrics_listen.is_some());
        let unit = include_str!("../../../systemd/xsock-relay@.service");
        let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        let argv: Vec<&str> = exec.trim_start_matches("ExecStart=").split_whitespace().skip(1).collect();
        assert_eq!(&argv[..2], ["relay", "--config"], "{exec}");
        // The stop timeout leaves room for the default drain.
        let stop = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap();
        let stop = crate::args::parse_duration(stop).unwrap();
        assert!(stop > Duration::from_secs(30), "{stop:?}");
    }
}
