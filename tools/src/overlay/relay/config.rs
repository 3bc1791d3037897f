//! Flags and the `--config` file merged into [`Settings`].

use std::{collections::HashMap, path::PathBuf};

use super::{Relay, Settings};
use crate::fail::Fail;

const KEYS: &[&str] = &[
    "boot",
    "key-file",
    "name",
    "lan-iface",
    "wan-listen",
    "wan-advertise",
    "serve-port",
    "status-file",
    "status-interval",
    "window",
];

/// Parses `key = value` lines (`#` starts a comment); an unknown key or a
/// line without `=` is an error naming the line and the valid keys.
pub fn parse(text: &str, file: &str) -> Result<HashMap<String, String>, Fail> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Fail::msg(format!("{file}:{}: expected `key = value`, found {line:?}", i + 1)));
        };
        let k = k.trim().replace('_', "-");
        if !KEYS.contains(&k.as_str()) {
            return Err(Fail::msg(format!("{file}:{}: unknown key {k:?} (valid: {})", i + 1, KEYS.join(", "))));
        }
        out.insert(k, v.trim().trim_matches('"').to_owned());
    }
    Ok(out)
}

fn value<T: std::str::FromStr>(file: &HashMap<String, String>, key: &str, flag: Option<T>) -> Result<Option<T>, Fail> {
    if flag.is_some() {
        return Ok(flag);
    }
    match file.get(key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| Fail::msg(format!("config key {key}: {v:?} is not a valid value"))),
    }
}

/// The relay's settings.
pub fn settings(r: &Relay) -> Result<Settings, Fail> {
    let file = match &r.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| Fail::msg(format!("cannot read {}: {e}", p.display())))?;
            parse(&text, &p.display().to_string())?
        }
        None => HashMap::new(),
    };
    let need = |what: &str| Fail::msg(format!("--{what} is needed (as a flag or `{what} = ...` in --config)"));
    Ok(Settings {
        boot: value(&file, "boot", r.boot)?.ok_or_else(|| need("boot"))?,
        key_file: value::<PathBuf>(&file, "key-file", r.key_file.clone())?.ok_or_else(|| need("key-file"))?,
        name: value(&file, "name", r.name.clone())?.ok_or_else(|| need("name"))?,
        lan_iface: value(&file, "lan-iface", r.lan_iface.clone())?.ok_or_else(|| need("lan-iface"))?,
        wan_listen: value(&file, "wan-listen", r.wan_listen)?,
        wan_advertise: value(&file, "wan-advertise", r.wan_advertise)?,
        serve_port: value(&file, "serve-port", r.serve_port)?.unwrap_or(7401),
        status_file: value(&file, "status-file", r.status_file.clone())?,
        status_interval: match (r.status_interval, file.get("status-interval")) {
            (Some(d), _) => d,
            (None, Some(v)) => {
                crate::args::parse_duration(v).map_err(|e| Fail::msg(format!("config key status-interval: {e}")))?
            }
            (None, None) => std::time::Duration::from_millis(500),
        },
        lan_buffer: value(&file, "lan-buffer", r.lan_buffer)?.unwrap_or(256 << 10),
        window: value(&file, "window", r.window)?.unwrap_or(1 << 20),
        spin: match (r.spin, file.get("spin")) {
            (Some(d), _) => d,
            (None, Some(v)) => {
                crate::args::parse_duration(v).map_err(|e| Fail::msg(format!("config key spin: {e}")))?
            }
            (None, None) => std::time::Duration::ZERO,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_refuses_typos_with_the_valid_list() {
        let m = parse("# relay a\nboot = 10.0.0.1:7400\nlan_iface = eth0 # the LAN\n", "r.conf").unwrap();
        assert_eq!(m["boot"], "10.0.0.1:7400");
        assert_eq!(m["lan-iface"], "eth0");
        let e = parse("bot = 1.2.3.4:5\n", "r.conf").unwrap_err().to_string();
        assert!(e.contains("r.conf:1") && e.contains("unknown key \"bot\"") && e.contains("valid: boot"), "{e}");
        assert!(parse("just words\n", "r.conf").is_err());
    }
}
