//! etcd's way of reading its settings: Go's flag syntax on the command line, then an `ETCD_*`
//! variable for each flag the command line left unset, or else (`--config-file`,
//! `ETCD_CONFIG_FILE`) a YAML file alone, with the messages of Go's flag package.

use super::flags::{self, Kind};
use super::settings::Settings;

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
}
