//! Command-line flags, named as etcd's and read from `ETCD_*` variables as etcd reads them, so that
//! Strata can take etcd's place in existing manifests and scripts.

use crate::mvcc::compactor::Policy;
use clap::{CommandFactory, Parser};
use std::path::PathBuf;
use std::time::Duration;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What gRPC accepts above `--max-request-bytes` before refusing a message outright (as etcd).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "An etcd v3 API server, on an embedded store or on PostgreSQL.",
    long_about = "An etcd v3 API server, on an embedded store or on PostgreSQL.\n\n\
        Flags are etcd's and may be given with one dash or two (-name x, --name=x). Each may also be \
        set by an environment variable named as etcd names it: ETCD_ and the flag's name in capitals \
        with '-' as '_' (ETCD_DATA_DIR)."
)]
pub struct Config {
    /// Human-readable name for this member; also names the default data directory.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Directory of the embedded store [default: <name>.strata].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where the data lives: `embedded` (a local crash-safe store in --data-dir), or a PostgreSQL
    /// connection string (`postgres://user:pass@host:5432/db` or `host=… dbname=…`) shared by any
    /// number of frontends, each with its own --name.
    #[arg(long, env = "STRATA_BACKEND", default_value = "embedded")]
    pub backend: String,

    /// Threads that serve requests [default: the CPUs this process may use, after its CPU
    /// affinity and quota]. With 1, one thread runs everything on a single-threaded scheduler,
    /// which spends less CPU a request than a pool of one: no wake-ups between threads, and the
    /// answers due on a connection leave in one write. For frontends that share a machine.
    #[arg(long, env = "STRATA_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Comma-separated URLs to serve clients on (http://host:port).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// Comma-separated URLs to tell clients (member list) [default: the listen URLs].
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// Certificate chain (PEM) to serve https:// client URLs with.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates are verified against.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Require clients on https:// URLs to present a certificate signed by --trusted-ca-file.
    #[arg(
        long,
        env = "ETCD_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        default_value_t = false
    )]
    pub client_cert_auth: bool,

    /// Auth token provider: `simple` (etcd's default; tokens live in the frontend that issued them),
    /// or `jwt,priv-key=FILE,sign-method=METHOD[,ttl=DURATION]` (signed tokens any frontend checks).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple", value_parser = crate::auth::check_token_provider)]
    pub auth_token: String,

    /// Seconds a simple token stays valid after its last use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// bcrypt cost of stored password hashes (4 to 31; others mean etcd's default, 10).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,

    /// Largest request the server accepts, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,

    /// Most operations in one txn request.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Most concurrent streams (calls) one client connection may have open.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,

    /// How often the server pings an idle client connection to check that it is alive (a Go
    /// duration; 0 turns the pings off).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = parse_go_duration)]
    pub grpc_keepalive_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed (0: 20s, as etcd's gRPC
    /// layer takes it).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_go_duration)]
    pub grpc_keepalive_timeout: Duration,

    /// Backend size at which writes are refused with "database space exceeded" (0: 2 GiB, etcd's
    /// default).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,

    /// How often watchers that asked for progress notifications get one when idle (a Go duration:
    /// 10m, 30s, 500ms; at least 100ms).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_watch_progress_interval
    )]
    pub experimental_watch_progress_notify_interval: Duration,

    /// Automatic compaction: `periodic` keeps --auto-compaction-retention of time, `revision` keeps
    /// that many revisions.
    #[arg(
        long,
        env = "ETCD_AUTO_COMPACTION_MODE",
        default_value = "periodic",
        value_parser = ["periodic", "revision"]
    )]
    pub auto_compaction_mode: String,

    /// History automatic compaction keeps: a duration for periodic (1h, 30m; a bare number is
    /// hours), a number of revisions for revision. 0 turns it off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Log format: `text` (etcd's `console` is taken as text) or `json`, one object per line.
    #[arg(long, env = "ETCD_LOG_FORMAT", default_value = "text", value_parser = ["text", "console", "json"])]
    pub log_format: String,

    /// Log level: debug, info, warn or error.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// The data directory of a member named `name` when none is given, as etcd names it.
pub fn default_data_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("{name}.strata"))
}

/// etcd's default quota when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Parses a duration as Go's time.ParseDuration writes them: numbers with units, summed ("1m30s").
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".to_owned());
    }
    // Go takes a bare zero without a unit.
    if rest == "0" {
        return Ok(total);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            unit => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// etcd refuses progress intervals below 100 ms.
fn parse_watch_progress_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_go_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("{text} is below the minimum of 100ms"));
    }
    Ok(interval)
}

impl Config {
    /// The automatic compaction asked for, if any, as etcd reads its two flags.
    pub fn auto_compaction(&self) -> Result<Option<Policy>, String> {
        let retention = self.auto_compaction_retention.trim();
        let policy = if self.auto_compaction_mode == "revision" {
            let revisions: i64 = retention.parse().map_err(|_| {
                format!("--auto-compaction-retention {retention:?} is not a number of revisions")
            })?;
            (revisions > 0).then_some(Policy::Revision(revisions))
        } else {
            let period = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => parse_go_duration(retention)?,
            };
            (!period.is_zero()).then_some(Policy::Periodic(period))
        };
        Ok(policy)
    }

    /// Parses etcd-style arguments: Go's flag package takes `-name` as well as `--name`.
    pub fn parse_etcd_style<I: IntoIterator<Item = String>>(args: I) -> Config {
        let command = Config::command();
        let long_names: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .chain(["help".to_owned(), "version".to_owned()])
            .collect();
        let args = args.into_iter().enumerate().map(|(i, arg)| {
            let single_dash_long = i > 0
                && arg.starts_with('-')
                && !arg.starts_with("--")
                && long_names
                    .iter()
                    .any(|n| arg[1..].split('=').next() == Some(n.as_str()));
            if single_dash_long {
                format!("-{arg}")
            } else {
                arg
            }
        });
        Config::parse_from(args)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir(&self.name))
    }

    pub fn quota_bytes(&self) -> u64 {
        match self.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            q => q,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::parse_etcd_style(
            std::iter::once("strata")
                .chain(args.iter().copied())
                .map(String::from),
        )
    }

    #[test]
    fn auth_token_providers() {
        assert_eq!(parse(&[]).auth_token, "simple");
        assert_eq!(parse(&["--auth-token", "simple"]).auth_token, "simple");
        let jwt = "jwt,pub-key=k,priv-key=k,sign-method=RS256";
        assert_eq!(crate::auth::check_token_provider(jwt).unwrap(), jwt);
        assert!(crate::auth::check_token_provider("nonsense").is_err());
    }

    #[test]
    fn go_style_single_dash_flags() {
        let c = parse(&["-name", "n1", "-max-txn-ops=7", "--data-dir", "/tmp/x"]);
        assert_eq!(c.name, "n1");
        assert_eq!(c.max_txn_ops, 7);
        assert_eq!(c.data_dir(), PathBuf::from("/tmp/x"));
    }

    #[test]
    fn defaults_follow_etcd() {
        let c = parse(&["--name", "m"]);
        assert_eq!(c.data_dir(), PathBuf::from("m.strata"));
        assert_eq!(c.max_request_bytes, 1572864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.quota_bytes(), 2 << 30);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("5d").is_err());
        assert!(parse_watch_progress_interval("50ms").is_err());
        let c = parse(&["-experimental-watch-progress-notify-interval=2s"]);
        assert_eq!(
            c.experimental_watch_progress_notify_interval,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn auto_compaction_flags() {
        assert_eq!(parse(&[]).auto_compaction(), Ok(None));
        let hours = parse(&["--auto-compaction-retention", "1"]).auto_compaction();
        assert_eq!(hours, Ok(Some(Policy::Periodic(Duration::from_secs(3600)))));
        let minutes = parse(&["--auto-compaction-retention=30m"]).auto_compaction();
        assert_eq!(
            minutes,
            Ok(Some(Policy::Periodic(Duration::from_secs(1800))))
        );
        let revisions = parse(&[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
        ]);
        assert_eq!(
            revisions.auto_compaction(),
            Ok(Some(Policy::Revision(1000)))
        );
        let bad = parse(&[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1h",
        ]);
        assert!(bad.auto_compaction().is_err());
    }

    #[test]
    fn bool_flags_take_go_forms() {
        assert!(parse(&["-client-cert-auth"]).client_cert_auth);
        assert!(parse(&["--client-cert-auth=true"]).client_cert_auth);
        assert!(!parse(&["--client-cert-auth=false"]).client_cert_auth);
        assert!(!parse(&[]).client_cert_auth);
    }

    #[test]
    fn list_flags_split_on_commas() {
        let c = parse(&[
            "-listen-client-urls",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ]);
        assert_eq!(c.listen_client_urls.len(), 2);
    }
}
