//! What a Strata server runs with, read as etcd reads its settings so that Strata can take etcd's
//! place in existing manifests, units and scripts: every etcd flag (see [`flags`]), in Go's flag
//! syntax, from `ETCD_*` variables, or from etcd's YAML `--config-file`.

pub mod bootstrap;
mod file;
pub mod flags;
pub mod parse;
mod settings;

use crate::compactor::Policy;
use flags::{Effect, FLAGS};
pub use parse::{Refusal, Request};
pub use settings::Settings;
use std::path::PathBuf;
use std::time::Duration;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What gRPC accepts above `--max-request-bytes` before refusing a message outright (as etcd).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's default quota when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's client URL when none is given; also what it advertises then.
pub const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's peer URL when none is given, as the member list shows it.
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";

/// Which metrics `/metrics` exports: etcd's `--metrics basic`, or `extensive` with the latency
/// histogram of every gRPC method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsLevel {
    Basic,
    Extensive,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    /// `embedded`, or a PostgreSQL connection string.
    pub backend: String,
    /// A hot standby of the PostgreSQL database, to read the log from (`--read-from`).
    pub read_from: Option<String>,
    /// Threads that serve requests (None: one a CPU this process may use).
    pub worker_threads: Option<u16>,
    pub listen_client_urls: Vec<String>,
    /// URLs that serve HTTP only: the JSON gateway, health, version and metrics, no gRPC.
    pub listen_client_http_urls: Vec<String>,
    /// URLs to tell clients; empty: the addresses bound.
    pub advertise_client_urls: Vec<String>,
    /// URLs that serve `/metrics` and the health probes only.
    pub listen_metrics_urls: Vec<String>,
    /// The member's peer URLs, as the member list shows them.
    pub peer_urls: Vec<String>,
    /// `--initial-cluster` as etcd completes it (see [`bootstrap::initial_cluster`]).
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    /// `--cors`: origins browsers may call from, `*` for any.
    pub cors: Vec<String>,
    /// `--host-whitelist`: the Host names plain HTTP requests may name, `*` for any.
    pub host_whitelist: Vec<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    /// A certificate revocation list (PEM) that client certificates are checked against.
    pub client_crl_file: Option<PathBuf>,
    /// Client certificates must be valid for one of these host names or addresses.
    pub client_cert_allowed_hostnames: Vec<String>,
    /// Make a self-signed server certificate when https:// URLs have none.
    pub auto_tls: bool,
    /// Years a self-signed certificate is valid.
    pub self_signed_cert_validity: u64,
    /// Go's names of the TLS 1.2 cipher suites to offer, in order (empty: the defaults).
    pub cipher_suites: Vec<String>,
    /// `TLS1.2` or `TLS1.3` (None: TLS 1.2 and up to TLS 1.3).
    pub tls_min_version: Option<String>,
    pub tls_max_version: Option<String>,
    pub auth_token: String,
    pub auth_token_ttl: u64,
    pub bcrypt_cost: u32,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub max_concurrent_streams: u32,
    /// How often a client may ping (0: grpc-go's default, 5 s); see `api::ping_policy`.
    pub grpc_keepalive_min_time: Duration,
    pub grpc_keepalive_interval: Duration,
    pub grpc_keepalive_timeout: Duration,
    /// The backend quota, etcd's 2 GiB when `--quota-backend-bytes` is 0 or unset.
    pub quota_backend_bytes: u64,
    pub watch_progress_notify_interval: Duration,
    pub auto_compaction: Option<Policy>,
    /// `json`, or anything else for text lines.
    pub log_format: String,
    pub log_level: String,
    /// `default`, `stderr`, `stdout`, `systemd/journal` or file paths.
    pub log_outputs: Vec<String>,
    /// `--enable-log-rotation` with `--log-rotation-config-json`: how the log file rotates.
    pub log_rotation: Option<crate::log_rotation::Rotation>,
    pub metrics: MetricsLevel,
    /// A unary request slower than this is logged and counted as etcd's slow applies.
    pub warning_apply_duration: Duration,
    /// `--warning-unary-request-duration` (3.6), or its `--experimental-` name.
    pub warning_unary_request_duration: Duration,
    /// Serve the JSON gateway (`/v3/...`) beside gRPC.
    pub enable_grpc_gateway: bool,
    /// Listen with SO_REUSEPORT, so that several processes may share a port.
    pub socket_reuse_port: bool,
    /// The embedded store acknowledges writes before they reach the disk.
    pub unsafe_no_fsync: bool,
    /// Check the embedded store's file before serving it (etcd's initial corruption check).
    pub initial_corrupt_check: bool,
    /// How often the embedded store records each long lease's remaining TTL, so that a restart
    /// goes on from it instead of a full TTL (etcd's persisted lease checkpoints); None: never.
    pub lease_checkpoints: Option<Duration>,
    /// What was read, for the start-up log lines.
    pub settings: Settings,
}

impl Config {
    /// Reads the command line (`args` without the program's name) and the process's environment.
    pub fn from_command_line(args: &[String]) -> Result<Request, Refusal> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        parse::read(args, &vars, &|path| std::fs::read_to_string(path))
    }

    /// The configuration `settings` describe, with etcd's defaults for what they leave unset.
    pub fn new(settings: Settings) -> Result<Config, String> {
        let s = &settings;
        let text = |name: &str, default: &str| s.get(name).unwrap_or(default).to_owned();
        let path = |name: &str| s.get(name).filter(|p| !p.is_empty()).map(PathBuf::from);
        let list = |name: &str| -> Vec<String> {
            s.get(name)
                .map(|v| {
                    v.split(',')
                        .map(|u| u.trim().to_owned())
                        .filter(|u| !u.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let number = |name: &str, default: u64| -> u64 {
            s.get(name).and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        let boolean = |name: &str| s.get(name) == Some("true");
        let gate = |name: &str| s.gate(name);
        let duration = |name: &str, default: Duration| -> Duration {
            s.get(name)
                .and_then(|v| crate::duration::parse(v).ok())
                .unwrap_or(default)
        };
        let name = text("name", "default");
        let data_dir = path("data-dir").unwrap_or_else(|| default_data_dir(&name));
        let listen_client_urls = match list("listen-client-urls") {
            urls if urls.is_empty() => vec![DEFAULT_CLIENT_URL.to_owned()],
            urls => urls,
        };
        // etcd advertises its default URL when the client URLs are its default too.
        let advertise_client_urls = match list("advertise-client-urls") {
            urls if urls.is_empty() && s.get("listen-client-urls").is_none() => {
                vec![DEFAULT_CLIENT_URL.to_owned()]
            }
            urls => urls,
        };
        let peer_urls = match list("initial-advertise-peer-urls") {
            urls if urls.is_empty() => vec![DEFAULT_PEER_URL.to_owned()],
            urls => urls,
        };
        let auth_token = text("auth-token", "simple");
        crate::auth::check_token_provider(&auth_token)?;
        let watch_progress_notify_interval = duration(
            "watch-progress-notify-interval",
            duration(
                "experimental-watch-progress-notify-interval",
                Duration::from_secs(600),
            ),
        );
        if watch_progress_notify_interval < Duration::from_millis(100) {
            return Err(format!(
                "--watch-progress-notify-interval {watch_progress_notify_interval:?} is below the \
                 minimum of 100ms"
            ));
        }
        check_after_parse(s)?;
        let auto_compaction = auto_compaction(
            s.get("auto-compaction-mode").unwrap_or("periodic"),
            s.get("auto-compaction-retention").unwrap_or("0"),
        )?;
        let worker_threads = match s.get("worker-threads") {
            Some("0") => return Err("--worker-threads must be at least 1".to_owned()),
            Some(n) => n.parse().ok(),
            None => None,
        };
        Ok(Config {
            data_dir,
            backend: text("backend", "embedded"),
            read_from: s.get("read-from").map(str::to_owned),
            worker_threads,
            listen_client_urls,
            listen_client_http_urls: list("listen-client-http-urls"),
            advertise_client_urls,
            listen_metrics_urls: list("listen-metrics-urls"),
            initial_cluster: bootstrap::initial_cluster(
                &name,
                s.get("initial-cluster"),
                &peer_urls,
            ),
            initial_cluster_token: text("initial-cluster-token", "etcd-cluster"),
            cors: text("cors", "*").split(',').map(str::to_owned).collect(),
            host_whitelist: text("host-whitelist", "*")
                .split(',')
                .map(str::to_owned)
                .collect(),
            peer_urls,
            cert_file: path("cert-file"),
            key_file: path("key-file"),
            trusted_ca_file: path("trusted-ca-file"),
            client_cert_auth: boolean("client-cert-auth"),
            client_crl_file: path("client-crl-file"),
            client_cert_allowed_hostnames: list("client-cert-allowed-hostname"),
            auto_tls: boolean("auto-tls"),
            self_signed_cert_validity: match number("self-signed-cert-validity", 1) {
                0 => 1,
                years => years,
            },
            cipher_suites: list("cipher-suites"),
            tls_min_version: s
                .get("tls-min-version")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            tls_max_version: s
                .get("tls-max-version")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            auth_token,
            auth_token_ttl: number("auth-token-ttl", 300),
            bcrypt_cost: number("bcrypt-cost", crate::auth::DEFAULT_BCRYPT_COST.into())
                .try_into()
                .unwrap_or(crate::auth::DEFAULT_BCRYPT_COST),
            max_request_bytes: number("max-request-bytes", DEFAULT_MAX_REQUEST_BYTES as u64)
                as usize,
            max_txn_ops: number("max-txn-ops", 128) as usize,
            max_concurrent_streams: number("max-concurrent-streams", u32::MAX.into()) as u32,
            grpc_keepalive_min_time: Some(duration("grpc-keepalive-min-time", Duration::ZERO))
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(5)),
            grpc_keepalive_interval: duration("grpc-keepalive-interval", Duration::from_secs(7200)),
            grpc_keepalive_timeout: duration("grpc-keepalive-timeout", Duration::from_secs(20)),
            quota_backend_bytes: s
                .get("quota-backend-bytes")
                .and_then(|q| q.parse::<i64>().ok())
                .filter(|q| *q > 0)
                .map_or(DEFAULT_QUOTA_BYTES, |q| q as u64),
            watch_progress_notify_interval,
            auto_compaction,
            log_format: text("log-format", "text"),
            // etcd's panic and fatal levels log errors and worse.
            log_level: match text("log-level", "info").as_str() {
                "panic" | "fatal" => "error".to_owned(),
                level => level.to_owned(),
            },
            log_rotation: match boolean("enable-log-rotation") {
                true => Some(crate::log_rotation::Rotation::parse(&text(
                    "log-rotation-config-json",
                    DEFAULT_LOG_ROTATION,
                ))?),
                false => None,
            },
            log_outputs: match list("log-outputs") {
                outputs if outputs.is_empty() => vec!["default".to_owned()],
                outputs => outputs,
            },
            warning_unary_request_duration: duration(
                "warning-unary-request-duration",
                duration(
                    "experimental-warning-unary-request-duration",
                    Duration::from_millis(300),
                ),
            ),
            warning_apply_duration: duration(
                "warning-apply-duration",
                duration(
                    "experimental-warning-apply-duration",
                    Duration::from_millis(100),
                ),
            ),
            enable_grpc_gateway: s.get("enable-grpc-gateway") != Some("false"),
            socket_reuse_port: boolean("socket-reuse-port"),
            unsafe_no_fsync: boolean("unsafe-no-fsync"),
            initial_corrupt_check: boolean("experimental-initial-corrupt-check")
                || gate("InitialCorruptCheck"),
            lease_checkpoints: (boolean("experimental-enable-lease-checkpoint-persist")
                || gate("LeaseCheckpointPersist"))
            .then(|| duration("lease-checkpoint-interval", Duration::from_secs(300))),
            metrics: match s.get("metrics") {
                Some("extensive") => MetricsLevel::Extensive,
                _ => MetricsLevel::Basic,
            },
            name,
            settings,
        })
    }

    /// The ids a new member takes, as etcd derives them at its first start, or etcd's reason to
    /// refuse that start.
    pub fn bootstrap_ids(&self) -> Result<bootstrap::Ids, String> {
        bootstrap::ids(
            &self.name,
            &self.initial_cluster,
            &self.peer_urls,
            &self.initial_cluster_token,
        )
    }

    /// One line for each flag set that has no effect here, with the reason: what an operator moving
    /// a manifest over should know.
    pub fn notices(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, value) in self.settings.iter() {
            if let Some(Effect::NoEffect(why)) = flags::lookup(name).map(|f| f.effect) {
                lines.push(format!("--{name}={value} has no effect in Strata: {why}"));
            }
        }
        if let Some(gates) = self.settings.get("feature-gates") {
            for (gate, on) in settings::feature_gates(gates).unwrap_or_default() {
                let why = match gate {
                    "InitialCorruptCheck" => continue,
                    "CompactHashCheck" => flags::ONE_COPY,
                    "LeaseCheckpointPersist" => continue,
                    "LeaseCheckpoint" => flags::LEASE_CHECKPOINT,
                    _ => "it changes raft or bbolt behaviour Strata does not have",
                };
                lines.push(format!(
                    "feature gate {gate}={on} has no effect in Strata: {why}"
                ));
            }
        }
        lines
    }
}

/// The data directory of a member named `name` when none is given, as etcd names it.
pub fn default_data_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("{name}.strata"))
}

/// The checks etcd makes of its flags once they are all read, with its messages.
/// etcd's `--log-rotation-config-json` when none is given.
const DEFAULT_LOG_ROTATION: &str =
    r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#;

fn check_after_parse(s: &Settings) -> Result<(), String> {
    let outputs: Vec<&str> = s
        .get("log-outputs")
        .map_or_else(|| vec!["default"], |o| o.split(',').collect());
    if outputs.len() > 1 && outputs.contains(&"default") {
        return Err("multi logoutput for \"default\" is not supported yet".to_owned());
    }
    let files = outputs
        .iter()
        .filter(|o| !matches!(**o, "default" | "stderr" | "stdout"))
        .count();
    if s.get("enable-log-rotation").is_some_and(|v| v != "false")
        && ((outputs.len() == 1 && files == 0) || files > 1)
    {
        // etcd's words, "rotate" and all.
        return Err(
            "--log-outputs requires a single file path when --log-rotate-config-json is defined"
                .to_owned(),
        );
    }
    if let Some(logger) = s.get("logger").filter(|l| *l != "zap") {
        return Err(format!("unknown logger option {logger:?}"));
    }
    if let Some(mode) = s
        .get("auto-compaction-mode")
        .filter(|m| !matches!(*m, "periodic" | "revision"))
    {
        return Err(format!("unknown auto-compaction-mode {mode:?}"));
    }
    for name in ["tls-min-version", "tls-max-version"] {
        if let Some(version) = s
            .get(name)
            .filter(|v| !matches!(*v, "" | "TLS1.2" | "TLS1.3"))
        {
            return Err(format!(
                "unexpected TLS version {version:?} (must be one of: TLS1.2, TLS1.3)"
            ));
        }
    }
    let (min, max) = (
        s.get("tls-min-version").unwrap_or(""),
        s.get("tls-max-version").unwrap_or(""),
    );
    if min == "TLS1.3" && max == "TLS1.2" {
        return Err(format!(
            "min version ({min}) is greater than max version ({max})"
        ));
    }
    let ciphers = s.get("cipher-suites").filter(|c| !c.is_empty());
    if min == "TLS1.3" && ciphers.is_some() {
        return Err("cipher suites cannot be configured when only TLS1.3 is enabled".to_owned());
    }
    for suite in ciphers.unwrap_or("").split(',').filter(|c| !c.is_empty()) {
        cipher_suite(suite)?;
    }
    let on = |name: &str| s.get(name).is_some_and(|v| v != "false");
    if on("experimental-enable-lease-checkpoint-persist")
        && !on("experimental-enable-lease-checkpoint")
    {
        return Err(
            "setting experimental-enable-lease-checkpoint-persist requires \
                    experimental-enable-lease-checkpoint"
                .to_owned(),
        );
    }
    if s.gate("LeaseCheckpointPersist") && !s.gate("LeaseCheckpoint") {
        return Err(
            "enabling feature gate LeaseCheckpointPersist requires enabling feature gate \
                    LeaseCheckpoint"
                .to_owned(),
        );
    }
    let milliseconds =
        |name: &str, default: u64| s.get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (heartbeat, election) = (
        milliseconds("heartbeat-interval", 100),
        milliseconds("election-timeout", 1000),
    );
    if 5 * heartbeat > election {
        return Err(format!(
            "--election-timeout[{}] should be at least as 5 times as --heartbeat-interval[{}]",
            go_milliseconds(election),
            go_milliseconds(heartbeat)
        ));
    }
    if let Some(cluster) = s.get("initial-cluster").filter(|c| !c.is_empty()) {
        for member in cluster.split(',') {
            let Some((_, url)) = member.split_once('=') else {
                return Err(format!(
                    "error setting up initial cluster: parse {member:?}: missing '=' in member"
                ));
            };
            settings::check_url(url)
                .map_err(|e| format!("error setting up initial cluster: {e}"))?;
        }
    }
    Ok(())
}

/// Go's cipher suites that rustls also has, by Go's name (and Go's aliases), with rustls's name.
const CIPHER_SUITES: &[(&str, &str)] = &[
    ("TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"),
    ("TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS13_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// Go's cipher suites that rustls does not have: without forward secrecy, or not AEAD.
const CIPHER_SUITES_NOT_OFFERED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// rustls's name of the cipher suite Go calls `name`, None for one of Go's that rustls does not
/// offer (a list that names it offers the others only), or etcd's refusal of a name Go does not
/// know.
pub fn cipher_suite(name: &str) -> Result<Option<&'static str>, String> {
    if let Some((_, rustls)) = CIPHER_SUITES.iter().find(|(go, _)| *go == name) {
        return Ok(Some(rustls));
    }
    if CIPHER_SUITES_NOT_OFFERED.contains(&name) {
        return Ok(None);
    }
    Err(format!("unexpected TLS cipher suite {name:?}"))
}

/// A number of milliseconds as Go prints a duration: `100ms`, `1s`, `1.5s`, `1m0s`.
fn go_milliseconds(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, ms) = (ms / 60_000, ms % 60_000);
    let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    let hours = minutes / 60;
    match (hours, minutes % 60) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// The automatic compaction asked for, if any, as etcd reads its two flags.
fn auto_compaction(mode: &str, retention: &str) -> Result<Option<Policy>, String> {
    let retention = retention.trim();
    let policy = if mode == "revision" {
        let revisions: i64 = retention.parse().map_err(|_| {
            format!("--auto-compaction-retention {retention:?} is not a number of revisions")
        })?;
        (revisions > 0).then_some(Policy::Revision(revisions))
    } else {
        let period = match retention.parse::<u64>() {
            Ok(hours) => Duration::from_secs(hours * 3600),
            Err(_) => crate::duration::parse(retention)?,
        };
        (!period.is_zero()).then_some(Policy::Periodic(period))
    };
    Ok(policy)
}

/// A list of every flag, for `strata --help`.
pub fn help() -> String {
    let mut text = String::from(
        "Usage: strata [flags]\n       strata snapshot (save|restore) ...\n       strata migrate ...\n\n\
         An etcd v3 API server, on an embedded store or on PostgreSQL. Flags are etcd's, in Go's \
         syntax (-name x, --name=x, -flag for true); each may also be set by ETCD_ and its name in \
         capitals with '-' as '_' (ETCD_DATA_DIR), or all at once by etcd's --config-file.\n\
         docs/etcd-flags.md says what each does here.\n\n",
    );
    for flag in FLAGS {
        let effect = match flag.effect {
            Effect::Honoured => "",
            Effect::NoEffect(_) => " (accepted, no effect)",
        };
        text.push_str(&format!("  --{}{effect}\n", flag.name));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a command line (without variables or a file) makes of a configuration.
    fn configured(args: &[&str]) -> Result<Config, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        match parse::read(&args, &[], &|_| Err(std::io::ErrorKind::NotFound.into())) {
            Ok(Request::Run(settings)) => Config::new(settings),
            other => panic!("{other:?}"),
        }
    }

    fn config(args: &[&str]) -> Config {
        configured(args).unwrap()
    }

    fn refusal(args: &[&str]) -> String {
        configured(args).unwrap_err()
    }

    #[test]
    fn defaults_follow_etcd() {
        let c = config(&["--name", "m"]);
        assert_eq!(c.data_dir, PathBuf::from("m.strata"));
        assert_eq!(c.max_request_bytes, 1572864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.advertise_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.peer_urls, vec!["http://localhost:2380"]);
        assert_eq!(c.quota_backend_bytes, 2 << 30);
        assert_eq!(c.auth_token, "simple");
        assert_eq!(c.metrics, MetricsLevel::Basic);
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(600));
        // Client URLs of its own and no advertised ones: the addresses bound are advertised.
        let c = config(&["--listen-client-urls", "http://127.0.0.1:0"]);
        assert!(c.advertise_client_urls.is_empty());
    }

    #[test]
    fn watch_progress_interval_by_either_name() {
        let c = config(&["-experimental-watch-progress-notify-interval=2s"]);
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(2));
        let c = config(&["--watch-progress-notify-interval=5s"]);
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5));
        assert!(configured(&["--watch-progress-notify-interval=50ms"]).is_err());
    }

    #[test]
    fn auto_compaction_flags() {
        assert_eq!(config(&[]).auto_compaction, None);
        let hours = config(&["--auto-compaction-retention", "1"]).auto_compaction;
        assert_eq!(hours, Some(Policy::Periodic(Duration::from_secs(3600))));
        let minutes = config(&["--auto-compaction-retention=30m"]).auto_compaction;
        assert_eq!(minutes, Some(Policy::Periodic(Duration::from_secs(1800))));
        let revisions = config(&[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
        ]);
        assert_eq!(revisions.auto_compaction, Some(Policy::Revision(1000)));
        assert!(auto_compaction("revision", "1h").is_err());
    }

    #[test]
    fn persisted_lease_checkpoints_need_checkpoints() {
        assert_eq!(
            refusal(&["--feature-gates=LeaseCheckpointPersist=true"]),
            "enabling feature gate LeaseCheckpointPersist requires enabling feature gate \
             LeaseCheckpoint"
        );
        config(&["--feature-gates=LeaseCheckpoint=true,LeaseCheckpointPersist=true"]);
        config(&[
            "--experimental-enable-lease-checkpoint",
            "--experimental-enable-lease-checkpoint-persist",
        ]);
    }

    #[test]
    fn flags_of_raft_and_peers_are_named_as_without_effect() {
        let c = config(&[
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--snapshot-count=10000",
            "--feature-gates=InitialCorruptCheck=true",
            "--initial-advertise-peer-urls=https://10.0.0.1:2380",
        ]);
        assert_eq!(c.peer_urls, vec!["https://10.0.0.1:2380"]);
        let notices = c.notices();
        assert!(notices
            .iter()
            .any(|n| n.starts_with("--listen-peer-urls=http://127.0.0.1:2380 has no effect")));
        assert!(notices
            .iter()
            .any(|n| n.starts_with("--snapshot-count=10000 has no effect")));
        assert!(!notices.iter().any(|n| n.contains("InitialCorruptCheck")));
        assert!(c.initial_corrupt_check);
        assert!(!notices
            .iter()
            .any(|n| n.contains("initial-advertise-peer-urls")));
    }

    #[test]
    fn cors_and_the_host_whitelist_are_read_as_etcd_reads_them() {
        let c = config(&[]);
        assert_eq!(
            (c.cors, c.host_whitelist),
            (vec!["*".to_owned()], vec!["*".to_owned()])
        );
        let c = config(&[
            "--cors=http://a.example:80,http://b.example:8080",
            "--host-whitelist=",
        ]);
        assert_eq!(c.cors, ["http://a.example:80", "http://b.example:8080"]);
        assert_eq!(c.host_whitelist, [""], "empty allows no Host, as in etcd");
    }

    #[test]
    fn checks_after_parsing_give_etcd_messages() {
        assert_eq!(
            refusal(&["--logger=bogus"]),
            "unknown logger option \"bogus\""
        );
        assert_eq!(
            refusal(&["--auto-compaction-mode=bogus"]),
            "unknown auto-compaction-mode \"bogus\""
        );
        assert_eq!(
            refusal(&["--tls-min-version=TLS1.0"]),
            "unexpected TLS version \"TLS1.0\" (must be one of: TLS1.2, TLS1.3)"
        );
        assert_eq!(
            refusal(&["--election-timeout=1"]),
            "--election-timeout[1ms] should be at least as 5 times as --heartbeat-interval[100ms]"
        );
        assert_eq!(
            refusal(&["--heartbeat-interval=500", "--election-timeout=1500"]),
            "--election-timeout[1.5s] should be at least as 5 times as --heartbeat-interval[500ms]"
        );
        assert_eq!(
            refusal(&["--initial-cluster=default=foo"]),
            "error setting up initial cluster: URL scheme must be http, https, unix, or unixs: foo"
        );
        assert_eq!(go_milliseconds(60_000), "1m0s");
        assert_eq!(
            refusal(&["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"]),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert_eq!(
            refusal(&[
                "--tls-min-version=TLS1.3",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
        assert_eq!(
            refusal(&["--cipher-suites=BOGUS"]),
            "unexpected TLS cipher suite \"BOGUS\""
        );
        let cis = config(&[
            "--cipher-suites=TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,TLS_RSA_WITH_AES_256_GCM_SHA384",
        ]);
        assert_eq!(cis.cipher_suites.len(), 2);
        assert_eq!(
            cipher_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"),
            Ok(Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"))
        );
        assert_eq!(cipher_suite("TLS_RSA_WITH_AES_256_GCM_SHA384"), Ok(None));
        // etcd takes any --metrics value; only `extensive` changes anything.
        assert_eq!(config(&["--metrics=bogus"]).metrics, MetricsLevel::Basic);
        assert_eq!(
            config(&["--metrics=extensive"]).metrics,
            MetricsLevel::Extensive
        );
    }

    #[test]
    fn docs_list_every_flag() {
        let docs = include_str!("../../docs/etcd-flags.md");
        for flag in FLAGS {
            assert!(
                docs.contains(&format!("`--{}`", flag.name)),
                "docs/etcd-flags.md does not list --{}",
                flag.name
            );
        }
    }
}
