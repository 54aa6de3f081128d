//! The flags set, each value checked as it is set, as etcd's flag set checks it (Go's booleans,
//! integers and durations; etcd's URL lists, choices and feature gates), with their messages.
//! The command line, the environment and the config file all set flags through [`Settings`].

use super::flags::{self, Flag, Kind};
use std::collections::BTreeMap;

/// The flags set, by name, each in a checked, canonical spelling (booleans as `true`/`false`,
/// URL lists sorted and without repeats, as etcd keeps them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    values: BTreeMap<&'static str, String>,
    /// What to log once logging is set up: variables used or not recognised, the file read.
    pub notices: Vec<String>,
}

impl Settings {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Whether `--feature-gates` turns the gate `name` on.
    pub fn gate(&self, name: &str) -> bool {
        feature_gates(self.get("feature-gates").unwrap_or(""))
            .unwrap_or_default()
            .contains(&(name, true))
    }

    /// The flags set, with their values.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// Sets `flag` from `value`, checked as etcd's flag set checks it; the error is the reason
    /// only, for the caller to place in its own message.
    pub fn set(&mut self, flag: &'static Flag, value: &str) -> Result<(), String> {
        let checked = check(flag, value)?;
        self.values.insert(flag.name, checked);
        Ok(())
    }
}

/// `value` as `flag` keeps it, or why etcd refuses it.
fn check(flag: &Flag, value: &str) -> Result<String, String> {
    const PARSE: &str = "parse error";
    const RANGE: &str = "value out of range";
    match flag.kind {
        Kind::Text => Ok(value.to_owned()),
        Kind::Bool | Kind::Ignored => parse_bool(value)
            .map(|b| b.to_string())
            .ok_or_else(|| PARSE.to_owned()),
        Kind::Uint(32) => parse_uint(value, 32).map(|n| n.to_string()).map_err(|e| {
            // etcd's own uint32 flag type passes strconv's error through.
            let why = if e == RANGE {
                "value out of range"
            } else {
                "invalid syntax"
            };
            format!("strconv.ParseUint: parsing {value:?}: {why}")
        }),
        Kind::Uint(bits) => parse_uint(value, bits).map(|n| n.to_string()),
        Kind::Int(bits) => parse_int(value, bits).map(|n| n.to_string()),
        Kind::Duration => crate::duration::parse(value)
            .map(|_| value.to_owned())
            .map_err(|_| PARSE.to_owned()),
        Kind::Urls => urls(value),
        Kind::UrlsOrStar if value == "*" => Ok(value.to_owned()),
        Kind::UrlsOrStar => urls(value),
        Kind::List => Ok(value.to_owned()),
        Kind::Choice(choices) => {
            if choices.contains(&value) {
                Ok(value.to_owned())
            } else {
                Err("invalid value".to_owned())
            }
        }
        Kind::FeatureGates => feature_gates(value).map(|_| value.to_owned()),
    }
}

/// Go's strconv.ParseBool.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's strconv.ParseUint with base 0: `0x`, `0o`, `0b` and a leading `0` (octal) prefixes, and
/// underscores between digits after a prefix.
fn parse_uint(value: &str, bits: u32) -> Result<u64, String> {
    let parse_error = || "parse error".to_owned();
    let lower = value.to_ascii_lowercase();
    let (digits, radix, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8, true)
    } else {
        (lower.as_str(), 10, false)
    };
    if digits.is_empty()
        || (digits.contains('_')
            && (!prefixed
                || digits.starts_with('_')
                || digits.ends_with('_')
                || digits.contains("__")))
    {
        return Err(parse_error());
    }
    let cleaned: String = digits.chars().filter(|&c| c != '_').collect();
    if !cleaned.chars().all(|c| c.is_digit(radix)) {
        return Err(parse_error());
    }
    let n = u64::from_str_radix(&cleaned, radix).map_err(|_| "value out of range".to_owned())?;
    if bits < 64 && n >> bits != 0 {
        return Err("value out of range".to_owned());
    }
    Ok(n)
}

/// Go's strconv.ParseInt with base 0.
fn parse_int(value: &str, bits: u32) -> Result<i64, String> {
    let (negative, magnitude) = match value.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let n = parse_uint(magnitude, 64)?;
    let limit = 1u64 << (bits - 1);
    if (negative && n > limit) || (!negative && n >= limit) {
        return Err("value out of range".to_owned());
    }
    Ok(if negative {
        (n as i64).wrapping_neg()
    } else {
        n as i64
    })
}

/// A comma-separated URL list, checked as etcd's types.NewURLs checks it, sorted and without
/// repeats.
fn urls(value: &str) -> Result<String, String> {
    let mut all: Vec<String> = value
        .split(',')
        .map(|u| check_url(u.trim()).map(str::to_owned))
        .collect::<Result<_, _>>()?;
    all.sort();
    all.dedup();
    Ok(all.join(","))
}

/// One URL, checked as etcd's types.NewURLs checks each of a list.
pub(super) fn check_url(url: &str) -> Result<&str, String> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match scheme {
        "http" | "https" => {
            let (authority, path) = match rest.find(['/', '?', '#']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if split_host_port(host_port).is_none() {
                return Err(format!(
                    "URL address does not have the form \"host:port\": {url}"
                ));
            }
            if !path.is_empty() && !path.starts_with('?') && !path.starts_with('#') {
                return Err(format!("URL must not contain a path: {url}"));
            }
            Ok(url)
        }
        "unix" | "unixs" => Ok(url),
        _ => Err(format!(
            "URL scheme must be http, https, unix, or unixs: {url}"
        )),
    }
}

/// Go's net.SplitHostPort: `host:port` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return (!port.contains(':')).then_some((host, port));
    }
    let (host, port) = text.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// `Gate=bool,...` with etcd 3.6's gate names, as etcd's feature gate flag takes it.
pub fn feature_gates(value: &str) -> Result<Vec<(&str, bool)>, String> {
    let mut gates = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, setting)) = pair.split_once('=') else {
            return Err(format!("missing bool value for {pair}"));
        };
        let (name, setting) = (name.trim(), setting.trim());
        let Some(on) = parse_bool(setting) else {
            return Err(format!(
                "invalid value of {name}={setting}, err: strconv.ParseBool: parsing {setting:?}: invalid syntax"
            ));
        };
        if !flags::FEATURE_GATES.contains(&name) {
            return Err(format!("unrecognized feature gate: {name}"));
        }
        gates.push((name, on));
    }
    Ok(gates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_integers() {
        assert_eq!(parse_uint("017", 64), Ok(15));
        assert_eq!(parse_uint("0b101", 64), Ok(5));
        assert_eq!(parse_uint("0x1_0", 64), Ok(16));
        assert!(parse_uint("1_0", 64).is_err());
        assert_eq!(
            parse_uint("70000", 16),
            Err("value out of range".to_owned())
        );
        assert_eq!(parse_int("-5", 64), Ok(-5));
        assert_eq!(parse_int("-9223372036854775808", 64), Ok(i64::MIN));
        assert!(parse_int("9223372036854775808", 64).is_err());
    }
}
