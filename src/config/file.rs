//! etcd's YAML configuration file (`--config-file`): the flags' names as keys, the client and peer
//! TLS settings nested under `client-transport-security` and `peer-transport-security`, and values
//! typed as etcd's Go structure takes them from JSON (durations in nanoseconds, lists as YAML
//! sequences, URL lists as one comma-separated string).

use super::flags::{self, Kind};
use super::settings::Settings;
use yaml_rust2::{Yaml, YamlLoader};

/// The keys under `client-transport-security`, and the flags they set.
const CLIENT_SECURITY: &[(&str, &str)] = &[
    ("cert-file", "cert-file"),
    ("key-file", "key-file"),
    ("client-cert-file", "client-cert-file"),
    ("client-key-file", "client-key-file"),
    ("client-cert-auth", "client-cert-auth"),
    ("trusted-ca-file", "trusted-ca-file"),
    ("auto-tls", "auto-tls"),
    ("allowed-hostname", "client-cert-allowed-hostname"),
];

/// The keys under `peer-transport-security`, and the flags they set.
const PEER_SECURITY: &[(&str, &str)] = &[
    ("cert-file", "peer-cert-file"),
    ("key-file", "peer-key-file"),
    ("client-cert-file", "peer-client-cert-file"),
    ("client-key-file", "peer-client-key-file"),
    ("client-cert-auth", "peer-client-cert-auth"),
    ("trusted-ca-file", "peer-trusted-ca-file"),
    ("auto-tls", "peer-auto-tls"),
    ("allowed-cn", "peer-cert-allowed-cn"),
    ("allowed-hostname", "peer-cert-allowed-hostname"),
    (
        "skip-client-san-verification",
        "peer-skip-client-san-verification",
    ),
];

/// The keys under `socket-options`, and the flags they set.
const SOCKET_OPTIONS: &[(&str, &str)] = &[
    ("reuse-port", "socket-reuse-port"),
    ("reuse-address", "socket-reuse-address"),
];

/// Top-level keys spelled otherwise than their flags.
const RENAMED: &[(&str, &str)] = &[(
    "experimental-snapshot-catch-up-entries",
    "experimental-snapshot-catchup-entries",
)];

/// Flags that etcd's file has no key for: a key of their name is skipped as unknown.
const NOT_IN_FILE: &[&str] = &[
    "experimental-snapshot-catchup-entries",
    "client-crl-file",
    "peer-crl-file",
    "raft-read-timeout",
    "raft-write-timeout",
    "socket-reuse-port",
    "socket-reuse-address",
];

/// The settings a configuration file gives; keys etcd does not know are skipped, as etcd skips
/// them, with a notice.
pub fn read(text: &str) -> Result<Settings, String> {
    let documents = YamlLoader::load_from_str(text)
        .map_err(|e| format!("error converting YAML to JSON: yaml: {e}"))?;
    let mut settings = Settings::default();
    let Some(root) = documents.into_iter().next() else {
        return Ok(settings);
    };
    let entries = match root {
        Yaml::Hash(entries) => entries,
        Yaml::Null => return Ok(settings),
        _ => {
            return Err(
                "error unmarshaling JSON: json: cannot unmarshal value into Go value of type \
                 embed.configYAML"
                    .to_owned(),
            )
        }
    };
    for (key, value) in entries {
        // Go's JSON decoder matches keys without regard to case.
        let Yaml::String(key) = key else {
            continue;
        };
        let key = key.to_lowercase();
        let nested = match key.as_str() {
            "client-transport-security" => Some(CLIENT_SECURITY),
            "peer-transport-security" => Some(PEER_SECURITY),
            "socket-options" => Some(SOCKET_OPTIONS),
            _ => None,
        };
        if let Some(names) = nested {
            let Yaml::Hash(inner) = value else {
                if value.is_null() {
                    continue;
                }
                return Err(type_error(&key, "embed.securityConfig"));
            };
            for (inner_key, inner_value) in inner {
                let Yaml::String(inner_key) = inner_key else {
                    continue;
                };
                let inner_key = inner_key.to_lowercase();
                match names.iter().find(|(k, _)| *k == inner_key) {
                    Some((_, flag)) => set(&mut settings, flag, &inner_key, &inner_value)?,
                    None => settings.notices.push(format!(
                        "key {key}.{inner_key} of the configuration file is not etcd's: ignored"
                    )),
                }
            }
            continue;
        }
        let flag = RENAMED
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(key.as_str(), |(_, flag)| flag);
        let known = flags::lookup(flag)
            .is_some_and(|f| f.kind != Kind::Ignored && f.env != flags::Env::None)
            && (flag != key || !NOT_IN_FILE.contains(&flag));
        if known {
            set(&mut settings, flag, &key, &value)?;
        } else {
            settings.notices.push(format!(
                "key {key} of the configuration file is not etcd's: ignored"
            ));
        }
    }
    Ok(settings)
}

/// Sets `flag` from the file's `value` under `key`, refusing a value of the wrong type as Go's
/// JSON decoder refuses it.
fn set(settings: &mut Settings, flag: &str, key: &str, value: &Yaml) -> Result<(), String> {
    let Some(flag) = flags::lookup(flag) else {
        return Ok(());
    };
    let text = match (flag.kind, value) {
        (_, Yaml::Null) => return Ok(()),
        (Kind::Bool, Yaml::Boolean(b)) => b.to_string(),
        // YAML 1.1's booleans, which etcd's YAML reader still takes.
        (Kind::Bool, Yaml::String(s)) => match s.as_str() {
            "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" => "true".to_owned(),
            "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n" | "N" => "false".to_owned(),
            _ => return Err(type_error(key, "bool")),
        },
        (Kind::Bool, _) => return Err(type_error(key, "bool")),
        (Kind::Uint(_), Yaml::Integer(n)) if *n >= 0 => n.to_string(),
        (Kind::Uint(bits), _) => return Err(type_error(key, &format!("uint{bits}"))),
        (Kind::Int(_), Yaml::Integer(n)) => n.to_string(),
        (Kind::Int(bits), _) => return Err(type_error(key, &format!("int{bits}"))),
        // time.Duration decodes from JSON as a number of nanoseconds.
        (Kind::Duration, Yaml::Integer(n)) if *n >= 0 => format!("{n}ns"),
        (Kind::Duration, _) => return Err(type_error(key, "time.Duration")),
        (Kind::List, Yaml::Array(items)) => {
            let mut words = Vec::new();
            for item in items {
                match item {
                    Yaml::String(s) => words.push(s.clone()),
                    _ => return Err(type_error(key, "[]string")),
                }
            }
            words.join(",")
        }
        // etcd's file takes the allowed Host headers as one string.
        (Kind::List, Yaml::String(s)) if key == "host-whitelist" => s.clone(),
        (Kind::List, _) => return Err(type_error(key, "[]string")),
        (_, Yaml::String(s)) => s.clone(),
        _ => return Err(type_error(key, "string")),
    };
    settings.set(flag, &text).map_err(|reason| {
        format!("invalid value {text:?} for {key} in the configuration file: {reason}")
    })
}

fn type_error(key: &str, go_type: &str) -> String {
    format!(
        "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal value into Go struct \
         field configYAML.{key} of type {go_type}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nesting_and_types_as_etcd_takes_them() {
        let s = read(
            "name: infra1\n\
             data-dir: /var/lib/etcd\n\
             listen-client-urls: https://127.0.0.1:2379,https://10.0.0.1:2379\n\
             max-txn-ops: 256\n\
             grpc-keepalive-interval: 5000000000\n\
             log-outputs: [stderr]\n\
             auto-compaction-retention: \"1\"\n\
             Initial-Cluster-Token: t\n\
             experimental-snapshot-catch-up-entries: 5\n\
             enable-v2: false\n\
             no-such-key: 1\n\
             client-transport-security:\n\
             \x20 cert-file: /pki/server.crt\n\
             \x20 key-file: /pki/server.key\n\
             \x20 client-cert-auth: true\n\
             \x20 trusted-ca-file: /pki/ca.crt\n\
             peer-transport-security:\n\
             \x20 cert-file: /pki/peer.crt\n",
        )
        .unwrap();
        assert_eq!(s.get("name"), Some("infra1"));
        assert_eq!(
            s.get("listen-client-urls"),
            Some("https://10.0.0.1:2379,https://127.0.0.1:2379")
        );
        assert_eq!(s.get("max-txn-ops"), Some("256"));
        assert_eq!(s.get("grpc-keepalive-interval"), Some("5000000000ns"));
        assert_eq!(s.get("log-outputs"), Some("stderr"));
        assert_eq!(s.get("auto-compaction-retention"), Some("1"));
        assert_eq!(s.get("initial-cluster-token"), Some("t"));
        assert_eq!(s.get("experimental-snapshot-catchup-entries"), Some("5"));
        assert_eq!(s.get("cert-file"), Some("/pki/server.crt"));
        assert_eq!(s.get("client-cert-auth"), Some("true"));
        assert_eq!(s.get("peer-cert-file"), Some("/pki/peer.crt"));
        assert!(s.notices.iter().any(|n| n.contains("no-such-key")));
    }

    #[test]
    fn wrong_types_and_bad_values_are_refused() {
        assert!(read("max-txn-ops: abc\n")
            .unwrap_err()
            .contains("configYAML.max-txn-ops"));
        assert!(read("client-cert-auth: 3\n").is_err());
        assert!(read("name: 123\n").is_err());
        assert!(read("auto-compaction-retention: 1\n").is_err());
        assert!(read("log-outputs: stderr\n").is_err());
        assert!(read("listen-client-urls: [http://a:1]\n").is_err());
        assert!(read("grpc-keepalive-interval: 5s\n").is_err());
        assert!(read("listen-client-urls: foo\n")
            .unwrap_err()
            .contains("URL scheme must be http, https, unix, or unixs: foo"));
        assert!(read("name: [unclosed\n").is_err());
        assert_eq!(read("").unwrap(), Settings::default());
    }
}
