//! etcd's way of reading its settings: Go's flag syntax on the command line, then an `ETCD_*`
//! variable for each flag the command line left unset, or else (`--config-file`,
//! `ETCD_CONFIG_FILE`) a YAML file alone. Values are checked as each flag is set, with the
//! messages of Go's flag package and of etcd's flag types.

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

    /// The flags set, with their values.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// Sets `flag` from `value`, checked as etcd's flag set checks it; the error is the reason
    /// only, for the caller to place in its own message.
    pub(super) fn set(&mut self, flag: &'static Flag, value: &str) -> Result<(), String> {
        let checked = check(flag, value)?;
        self.values.insert(flag.name, checked);
        Ok(())
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Run(Settings),
    Help,
    Version,
}

/// A command line etcd would refuse: the message, and the exit status etcd gives it (2 when Go's
/// flag package refuses it, 1 when etcd does after parsing).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub status: i32,
}

impl Refusal {
    fn flag(message: String) -> Refusal {
        Refusal { message, status: 2 }
    }

    pub fn after_parse(message: String) -> Refusal {
        Refusal { message, status: 1 }
    }
}

/// Reads the command line (`args` without the program's name) and the environment (`vars`),
/// as etcd does.
pub fn read(
    args: &[String],
    vars: &[(String, String)],
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Request, Refusal> {
    let mut settings = Settings::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(body) = arg.strip_prefix('-').filter(|b| !b.is_empty()) else {
            return Err(Refusal::after_parse(format!("'{arg}' is not a valid flag")));
        };
        if body == "-" {
            // "--" ends the flags; anything after it is an argument etcd refuses.
            return match rest.next() {
                Some(next) => Err(Refusal::after_parse(format!(
                    "'{next}' is not a valid flag"
                ))),
                None => Ok(Request::Run(finish(settings, vars, read_file)?)),
            };
        }
        let body = body.strip_prefix('-').unwrap_or(body);
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(Refusal::flag(format!("bad flag syntax: {arg}")));
        }
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let Some(flag) = flags::lookup(name) else {
            if matches!(name, "h" | "help") {
                return Ok(Request::Help);
            }
            return Err(Refusal::flag(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        let boolean = matches!(flag.kind, Kind::Bool | Kind::Ignored);
        let value = match value {
            Some(value) => value,
            None if boolean => "true",
            None => match rest.next() {
                Some(value) => value.as_str(),
                None => {
                    return Err(Refusal::flag(format!("flag needs an argument: -{name}")));
                }
            },
        };
        if let Err(reason) = settings.set(flag, value) {
            return Err(Refusal::flag(if boolean {
                format!("invalid boolean value {value:?} for -{name}: {reason}")
            } else {
                format!("invalid value {value:?} for flag -{name}: {reason}")
            }));
        }
    }
    if settings.get("version") == Some("true") {
        return Ok(Request::Version);
    }
    Ok(Request::Run(finish(settings, vars, read_file)?))
}

/// The settings to run with: the config file's alone if one is named, or the command line's
/// with `ETCD_*` variables for the flags it left unset.
fn finish(
    command_line: Settings,
    vars: &[(String, String)],
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Settings, Refusal> {
    let var = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let file = command_line
        .get("config-file")
        .or_else(|| var("ETCD_CONFIG_FILE"))
        .filter(|f| !f.is_empty())
        .map(str::to_owned);
    if let Some(path) = file {
        let text = read_file(&path).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
                _ => e.to_string(),
            };
            Refusal::after_parse(format!("open {path}: {why}"))
        })?;
        let mut settings = super::file::read(&text).map_err(Refusal::after_parse)?;
        settings.notices.push(format!(
            "loaded server configuration, other configuration command line flags and environment \
             variables will be ignored if provided (path {path})"
        ));
        return Ok(settings);
    }
    let mut settings = command_line;
    let mut used = Vec::new();
    for flag in flags::FLAGS {
        let Some(name) = flag.env_name() else {
            continue;
        };
        let Some(value) = var(&name) else {
            continue;
        };
        let own = !name.starts_with("ETCD_");
        if settings.get(flag.name).is_some() {
            if own {
                continue;
            }
            return Err(Refusal::after_parse(format!(
                "conflicting environment variable is shadowed by corresponding command-line flag \
                 (either unset environment variable or disable flag)) (environment-variable {name})"
            )));
        }
        if value.is_empty() {
            continue;
        }
        settings.set(flag, value).map_err(|reason| {
            Refusal::after_parse(format!("invalid value {value:?} for {name}: {reason}"))
        })?;
        if own {
            continue;
        }
        used.push(name.clone());
        settings.notices.push(format!(
            "recognized and used environment variable {name}={value}"
        ));
    }
    for (name, value) in vars {
        if name.starts_with("ETCD_") && !used.contains(name) && name != "ETCD_CONFIG_FILE" {
            let known = flags::FLAGS
                .iter()
                .any(|f| f.env_name().as_deref() == Some(name.as_str()));
            if !known || value.is_empty() {
                settings
                    .notices
                    .push(format!("unrecognized environment variable {name}={value}"));
            }
        }
    }
    Ok(settings)
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

fn check_url(url: &str) -> Result<&str, String> {
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

    fn run(args: &[&str], vars: &[(&str, &str)]) -> Result<Request, Refusal> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        read(&args, &vars, &|_| Err(std::io::ErrorKind::NotFound.into()))
    }

    fn settings(args: &[&str], vars: &[(&str, &str)]) -> Settings {
        match run(args, vars) {
            Ok(Request::Run(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    fn refusal(args: &[&str], vars: &[(&str, &str)]) -> String {
        match run(args, vars) {
            Err(r) => r.message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_flag_syntax() {
        let s = settings(
            &[
                "-name",
                "a",
                "--data-dir=/d",
                "-client-cert-auth",
                "--snapshot-count",
                "10000",
            ],
            &[],
        );
        assert_eq!(s.get("name"), Some("a"));
        assert_eq!(s.get("data-dir"), Some("/d"));
        assert_eq!(s.get("client-cert-auth"), Some("true"));
        assert_eq!(s.get("snapshot-count"), Some("10000"));
        let s = settings(
            &["--client-cert-auth=false", "-v", "--max-txn-ops=0x10"],
            &[],
        );
        assert_eq!(s.get("client-cert-auth"), Some("false"));
        assert_eq!(s.get("max-txn-ops"), Some("16"));
        // A bare boolean does not take the next argument as its value.
        assert_eq!(
            refusal(&["--client-cert-auth", "false"], &[]),
            "'false' is not a valid flag"
        );
        assert_eq!(run(&["-h"], &[]), Ok(Request::Help));
        assert_eq!(run(&["--version"], &[]), Ok(Request::Version));
    }

    #[test]
    fn refusals_carry_go_and_etcd_messages() {
        assert_eq!(
            refusal(&["--no-such-flag"], &[]),
            "flag provided but not defined: -no-such-flag"
        );
        assert_eq!(refusal(&["--name"], &[]), "flag needs an argument: -name");
        assert_eq!(
            refusal(&["--max-txn-ops=abc"], &[]),
            "invalid value \"abc\" for flag -max-txn-ops: parse error"
        );
        assert_eq!(
            refusal(&["--max-txn-ops=-1"], &[]),
            "invalid value \"-1\" for flag -max-txn-ops: parse error"
        );
        assert_eq!(
            refusal(&["--client-cert-auth=maybe"], &[]),
            "invalid boolean value \"maybe\" for -client-cert-auth: parse error"
        );
        assert_eq!(
            refusal(&["--listen-peer-urls=foo"], &[]),
            "invalid value \"foo\" for flag -listen-peer-urls: URL scheme must be http, https, \
             unix, or unixs: foo"
        );
        assert_eq!(
            refusal(&["--listen-peer-urls=http://1.2.3.4"], &[]),
            "invalid value \"http://1.2.3.4\" for flag -listen-peer-urls: URL address does not \
             have the form \"host:port\": http://1.2.3.4"
        );
        assert_eq!(
            refusal(&["--listen-client-urls=http://1.2.3.4:2379/path"], &[]),
            "invalid value \"http://1.2.3.4:2379/path\" for flag -listen-client-urls: URL must \
             not contain a path: http://1.2.3.4:2379/path"
        );
        assert_eq!(
            refusal(&["--initial-cluster-state=bogus"], &[]),
            "invalid value \"bogus\" for flag -initial-cluster-state: invalid value"
        );
        assert_eq!(
            refusal(&["--max-concurrent-streams=x"], &[]),
            "invalid value \"x\" for flag -max-concurrent-streams: strconv.ParseUint: parsing \
             \"x\": invalid syntax"
        );
        assert_eq!(
            refusal(&["--grpc-keepalive-min-time=xyz"], &[]),
            "invalid value \"xyz\" for flag -grpc-keepalive-min-time: parse error"
        );
        assert_eq!(
            refusal(&["--feature-gates=Bogus=true"], &[]),
            "invalid value \"Bogus=true\" for flag -feature-gates: unrecognized feature gate: Bogus"
        );
        assert_eq!(refusal(&["---x"], &[]), "bad flag syntax: ---x");
        assert_eq!(refusal(&["x"], &[]), "'x' is not a valid flag");
    }

    #[test]
    fn url_lists_are_sorted_without_repeats() {
        let s = settings(
            &["--listen-client-urls=http://b:1, http://a:1,http://b:1,unix://sock"],
            &[],
        );
        assert_eq!(
            s.get("listen-client-urls"),
            Some("http://a:1,http://b:1,unix://sock")
        );
    }

    #[test]
    fn environment_fills_what_the_command_line_left() {
        let s = settings(
            &["--name", "n"],
            &[
                ("ETCD_DATA_DIR", "/e"),
                ("ETCD_SNAPSHOT_COUNT", "5"),
                ("ETCD_NO_SUCH", "1"),
            ],
        );
        assert_eq!(s.get("data-dir"), Some("/e"));
        assert_eq!(s.get("snapshot-count"), Some("5"));
        assert!(s
            .notices
            .iter()
            .any(|n| n == "unrecognized environment variable ETCD_NO_SUCH=1"));
        assert!(refusal(&["--name", "n"], &[("ETCD_NAME", "m")])
            .starts_with("conflicting environment variable is shadowed"));
        assert_eq!(
            refusal(&[], &[("ETCD_MAX_TXN_OPS", "abc")]),
            "invalid value \"abc\" for ETCD_MAX_TXN_OPS: parse error"
        );
        // Strata's own variables give way to the flag.
        let s = settings(
            &["--backend", "embedded"],
            &[("STRATA_BACKEND", "postgres://x")],
        );
        assert_eq!(s.get("backend"), Some("embedded"));
    }

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
