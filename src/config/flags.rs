//! Every flag of etcd 3.5's and 3.6's `etcd` command (3.6's names and 3.5's `--experimental-*`
//! names both), and Strata's own, with what each does here. A flag missing from this table is
//! refused, as etcd refuses a flag it does not have; `docs/etcd-flags.md` is written from it
//! (a unit test keeps the two the same).

/// How a flag's value is spelled and checked, as etcd's flag set checks it when it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Go's booleans: `-f`, `-f=true`, `-f=false`, `-f=0`, ...
    Bool,
    /// Any text.
    Text,
    /// An unsigned integer of this many bits, in Go's syntax (`0x10`, `1_000` after a prefix).
    Uint(u32),
    /// A signed integer of this many bits.
    Int(u32),
    /// A Go duration (`10s`, `1m30s`).
    Duration,
    /// Comma-separated URLs, checked as etcd checks them (scheme, `host:port`, no path).
    Urls,
    /// Comma-separated URLs, or `*` (CORS origins).
    UrlsOrStar,
    /// Comma-separated words.
    List,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// `Gate=true,Other=false` with etcd 3.6's gate names.
    FeatureGates,
    /// A flag etcd itself accepts and ignores (etcd 0.4's names, `-v`): a boolean in form.
    Ignored,
}

/// What a flag does in Strata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Honoured as etcd honours it.
    Honoured,
    /// Accepted and checked as etcd checks it, with no effect here, for the reason given; named once
    /// in a start-up log line when set.
    NoEffect(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    pub effect: Effect,
    /// The variable that sets it when neither the command line nor a config file does.
    pub env: Env,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    /// `ETCD_` and the name in capitals with `-` as `_`, as etcd reads it.
    Etcd,
    /// A variable of Strata's own.
    Named(&'static str),
    /// None (etcd reads no variable for `--config-file`'s own value but `ETCD_CONFIG_FILE`).
    None,
}

impl Flag {
    /// The environment variable that sets this flag.
    pub fn env_name(&self) -> Option<String> {
        match self.env {
            Env::Etcd => Some(format!(
                "ETCD_{}",
                self.name.to_uppercase().replace('-', "_")
            )),
            Env::Named(name) => Some(name.to_owned()),
            Env::None => None,
        }
    }
}

pub const ONE_COPY: &str = "compares raft members' hashes of their data after each compaction; a \
                        Strata cluster has one copy (the embedded file or the database), as a \
                        one-member etcd, whose check compares nothing";
const RAFT: &str = "Strata has no raft: one process on the embedded store, or stateless frontends \
                    over a database that replicates itself";
const PEERS: &str = "Strata members never talk to each other: there is no peer traffic to listen \
                     for, secure or bootstrap";
const STORAGE: &str = "tunes etcd's WAL, raft snapshots or bbolt file; Strata's store is its own";
const DISCOVERY: &str =
    "bootstraps a raft cluster through a discovery service; a Strata cluster is \
                         the frontends of one backend";
const V2: &str = "etcd's v2 API and its proxy are gone from etcd 3.6; Strata serves v3 only";
const TRACING: &str = "Strata exports no OpenTelemetry traces";
const ETCD_IGNORES: &str = "etcd itself ignores it";
/// Why lease checkpoints alone change nothing here.
pub const LEASE_CHECKPOINT: &str = "etcd's leader sends checkpoints so that a new leader goes on \
     from each lease's remaining TTL; Strata has no leader to change, and records them across \
     restarts with --experimental-enable-lease-checkpoint-persist";

const fn flag(name: &'static str, kind: Kind, effect: Effect) -> Flag {
    Flag {
        name,
        kind,
        effect,
        env: Env::Etcd,
    }
}

use Effect::{Honoured, NoEffect};
use Kind::{
    Bool, Choice, Duration, FeatureGates, Ignored, Int, List, Text, Uint, Urls, UrlsOrStar,
};

/// Feature gates of etcd 3.6, as `--feature-gates` takes them.
pub const FEATURE_GATES: &[&str] = &[
    "AllAlpha",
    "AllBeta",
    "CompactHashCheck",
    "InitialCorruptCheck",
    "LeaseCheckpoint",
    "LeaseCheckpointPersist",
    "SetMemberLocalAddr",
    "StopGRPCServiceOnDefrag",
    "TxnModeWriteWithSharedBuffer",
];

pub const FLAGS: &[Flag] = &[
    // Strata's own.
    Flag {
        name: "backend",
        kind: Text,
        effect: Honoured,
        env: Env::Named("STRATA_BACKEND"),
    },
    Flag {
        name: "read-from",
        kind: Text,
        effect: Honoured,
        env: Env::Named("STRATA_READ_FROM"),
    },
    Flag {
        name: "lease-checkpoint-interval",
        kind: Duration,
        effect: Honoured,
        env: Env::Named("STRATA_LEASE_CHECKPOINT_INTERVAL"),
    },
    Flag {
        name: "worker-threads",
        kind: Uint(16),
        effect: Honoured,
        env: Env::Named("STRATA_WORKER_THREADS"),
    },
    // Member and data.
    flag("name", Text, Honoured),
    flag("data-dir", Text, Honoured),
    Flag {
        name: "config-file",
        kind: Text,
        effect: Honoured,
        env: Env::None,
    },
    Flag {
        name: "version",
        kind: Bool,
        effect: Honoured,
        env: Env::None,
    },
    flag("wal-dir", Text, NoEffect(STORAGE)),
    flag("max-snapshots", Uint(64), NoEffect(STORAGE)),
    flag("max-wals", Uint(64), NoEffect(STORAGE)),
    flag("snapshot-count", Uint(64), NoEffect(RAFT)),
    flag("snapshot-catchup-entries", Uint(64), NoEffect(RAFT)),
    flag(
        "experimental-snapshot-catchup-entries",
        Uint(64),
        NoEffect(RAFT),
    ),
    flag("heartbeat-interval", Uint(64), NoEffect(RAFT)),
    flag("election-timeout", Uint(64), NoEffect(RAFT)),
    flag("initial-election-tick-advance", Bool, NoEffect(RAFT)),
    flag("pre-vote", Bool, NoEffect(RAFT)),
    flag("strict-reconfig-check", Bool, NoEffect(RAFT)),
    flag("max-learners", Int(64), NoEffect(RAFT)),
    flag("raft-read-timeout", Duration, NoEffect(RAFT)),
    flag("raft-write-timeout", Duration, NoEffect(RAFT)),
    flag(
        "force-new-cluster",
        Bool,
        NoEffect("a Strata cluster already has a single member or is its backend's frontends"),
    ),
    flag("quota-backend-bytes", Int(64), Honoured),
    flag("backend-bbolt-freelist-type", Text, NoEffect(STORAGE)),
    flag("backend-batch-interval", Duration, NoEffect(STORAGE)),
    flag("backend-batch-limit", Int(64), NoEffect(STORAGE)),
    flag(
        "bootstrap-defrag-threshold-megabytes",
        Uint(64),
        NoEffect(STORAGE),
    ),
    flag(
        "experimental-bootstrap-defrag-threshold-megabytes",
        Uint(64),
        NoEffect(STORAGE),
    ),
    flag("max-txn-ops", Uint(64), Honoured),
    flag("max-request-bytes", Uint(64), Honoured),
    flag("max-concurrent-streams", Uint(32), Honoured),
    flag("grpc-keepalive-min-time", Duration, Honoured),
    flag("grpc-keepalive-interval", Duration, Honoured),
    flag("grpc-keepalive-timeout", Duration, Honoured),
    flag("socket-reuse-port", Bool, Honoured),
    flag(
        "socket-reuse-address",
        Bool,
        NoEffect("Go's listeners, and Strata's, set SO_REUSEADDR on Linux whatever it says"),
    ),
    flag("unsafe-no-fsync", Bool, Honoured),
    // Client URLs and their security.
    flag("listen-client-urls", Urls, Honoured),
    flag("listen-client-http-urls", Urls, Honoured),
    flag("advertise-client-urls", Urls, Honoured),
    flag("listen-metrics-urls", Urls, Honoured),
    flag("cors", UrlsOrStar, Honoured),
    flag("host-whitelist", List, Honoured),
    flag("cert-file", Text, Honoured),
    flag("key-file", Text, Honoured),
    flag(
        "client-cert-file",
        Text,
        NoEffect("Strata's frontends make no client connections to members"),
    ),
    flag(
        "client-key-file",
        Text,
        NoEffect("Strata's frontends make no client connections to members"),
    ),
    flag("client-cert-auth", Bool, Honoured),
    flag("client-crl-file", Text, Honoured),
    flag("client-cert-allowed-hostname", List, Honoured),
    flag("trusted-ca-file", Text, Honoured),
    flag("auto-tls", Bool, Honoured),
    flag("self-signed-cert-validity", Uint(64), Honoured),
    flag("cipher-suites", List, Honoured),
    flag("tls-min-version", Text, Honoured),
    flag("tls-max-version", Text, Honoured),
    flag("enable-grpc-gateway", Bool, Honoured),
    // Peers and bootstrap.
    flag("listen-peer-urls", Urls, NoEffect(PEERS)),
    flag("initial-advertise-peer-urls", Urls, Honoured),
    flag("initial-cluster", Text, Honoured),
    flag(
        "initial-cluster-state",
        Choice(&["new", "existing"]),
        NoEffect(PEERS),
    ),
    flag("initial-cluster-token", Text, Honoured),
    flag("peer-cert-file", Text, NoEffect(PEERS)),
    flag("peer-key-file", Text, NoEffect(PEERS)),
    flag("peer-client-cert-file", Text, NoEffect(PEERS)),
    flag("peer-client-key-file", Text, NoEffect(PEERS)),
    flag("peer-client-cert-auth", Bool, NoEffect(PEERS)),
    flag("peer-trusted-ca-file", Text, NoEffect(PEERS)),
    flag("peer-auto-tls", Bool, NoEffect(PEERS)),
    flag("peer-crl-file", Text, NoEffect(PEERS)),
    flag("peer-cert-allowed-cn", List, NoEffect(PEERS)),
    flag("peer-cert-allowed-hostname", List, NoEffect(PEERS)),
    flag("peer-skip-client-san-verification", Bool, NoEffect(PEERS)),
    flag(
        "experimental-peer-skip-client-san-verification",
        Bool,
        NoEffect(PEERS),
    ),
    flag("discovery", Text, NoEffect(DISCOVERY)),
    flag(
        "discovery-fallback",
        Choice(&["exit", "proxy"]),
        NoEffect(DISCOVERY),
    ),
    flag("discovery-proxy", Text, NoEffect(DISCOVERY)),
    flag("discovery-srv", Text, NoEffect(DISCOVERY)),
    flag("discovery-srv-name", Text, NoEffect(DISCOVERY)),
    flag("discovery-endpoints", List, NoEffect(DISCOVERY)),
    flag("discovery-token", Text, NoEffect(DISCOVERY)),
    flag("discovery-dial-timeout", Duration, NoEffect(DISCOVERY)),
    flag("discovery-request-timeout", Duration, NoEffect(DISCOVERY)),
    flag("discovery-keepalive-time", Duration, NoEffect(DISCOVERY)),
    flag("discovery-keepalive-timeout", Duration, NoEffect(DISCOVERY)),
    flag("discovery-insecure-transport", Bool, NoEffect(DISCOVERY)),
    flag(
        "discovery-insecure-skip-tls-verify",
        Bool,
        NoEffect(DISCOVERY),
    ),
    flag("discovery-cert", Text, NoEffect(DISCOVERY)),
    flag("discovery-key", Text, NoEffect(DISCOVERY)),
    flag("discovery-cacert", Text, NoEffect(DISCOVERY)),
    flag("discovery-user", Text, NoEffect(DISCOVERY)),
    flag("discovery-password", Text, NoEffect(DISCOVERY)),
    // The v2 API and the proxy.
    flag("enable-v2", Bool, NoEffect(V2)),
    flag("experimental-enable-v2v3", Text, NoEffect(V2)),
    flag(
        "v2-deprecation",
        Choice(&["not-yet", "write-only", "write-only-drop-data", "gone"]),
        NoEffect(V2),
    ),
    flag("proxy", Choice(&["off", "readonly", "on"]), NoEffect(V2)),
    flag("proxy-failure-wait", Uint(64), NoEffect(V2)),
    flag("proxy-refresh-interval", Uint(64), NoEffect(V2)),
    flag("proxy-dial-timeout", Uint(64), NoEffect(V2)),
    flag("proxy-write-timeout", Uint(64), NoEffect(V2)),
    flag("proxy-read-timeout", Uint(64), NoEffect(V2)),
    // Auth.
    flag("auth-token", Text, Honoured),
    flag("auth-token-ttl", Uint(64), Honoured),
    flag("bcrypt-cost", Uint(64), Honoured),
    // Logging, metrics, profiling, tracing.
    flag("logger", Text, Honoured),
    flag("log-outputs", List, Honoured),
    flag(
        "log-level",
        Choice(&["debug", "info", "warn", "error", "panic", "fatal"]),
        Honoured,
    ),
    flag("log-format", Choice(&["json", "console", "text"]), Honoured),
    flag("enable-log-rotation", Bool, Honoured),
    flag("log-rotation-config-json", Text, Honoured),
    flag("metrics", Text, Honoured),
    flag(
        "enable-pprof",
        Bool,
        NoEffect("Go's profiler; Strata is not a Go program"),
    ),
    flag("enable-distributed-tracing", Bool, NoEffect(TRACING)),
    flag("distributed-tracing-address", Text, NoEffect(TRACING)),
    flag("distributed-tracing-service-name", Text, NoEffect(TRACING)),
    flag("distributed-tracing-instance-id", Text, NoEffect(TRACING)),
    flag(
        "distributed-tracing-sampling-rate",
        Int(64),
        NoEffect(TRACING),
    ),
    flag(
        "experimental-enable-distributed-tracing",
        Bool,
        NoEffect(TRACING),
    ),
    flag(
        "experimental-distributed-tracing-address",
        Text,
        NoEffect(TRACING),
    ),
    flag(
        "experimental-distributed-tracing-service-name",
        Text,
        NoEffect(TRACING),
    ),
    flag(
        "experimental-distributed-tracing-instance-id",
        Text,
        NoEffect(TRACING),
    ),
    flag(
        "experimental-distributed-tracing-sampling-rate",
        Int(64),
        NoEffect(TRACING),
    ),
    // Compaction and the checks of the store.
    flag("auto-compaction-mode", Text, Honoured),
    flag("auto-compaction-retention", Text, Honoured),
    flag("compaction-batch-limit", Int(64), NoEffect(STORAGE)),
    flag(
        "experimental-compaction-batch-limit",
        Int(64),
        NoEffect(STORAGE),
    ),
    flag("compaction-sleep-interval", Duration, NoEffect(STORAGE)),
    flag(
        "experimental-compaction-sleep-interval",
        Duration,
        NoEffect(STORAGE),
    ),
    flag("feature-gates", FeatureGates, Honoured),
    flag("experimental-initial-corrupt-check", Bool, Honoured),
    flag(
        "corrupt-check-time",
        Duration,
        NoEffect("compares the hashes of raft members; a Strata cluster has one store"),
    ),
    flag(
        "experimental-corrupt-check-time",
        Duration,
        NoEffect("compares the hashes of raft members; a Strata cluster has one store"),
    ),
    flag(
        "experimental-compact-hash-check-enabled",
        Bool,
        NoEffect(ONE_COPY),
    ),
    flag("compact-hash-check-time", Duration, NoEffect(ONE_COPY)),
    flag(
        "experimental-compact-hash-check-time",
        Duration,
        NoEffect(ONE_COPY),
    ),
    flag(
        "experimental-enable-lease-checkpoint",
        Bool,
        NoEffect(LEASE_CHECKPOINT),
    ),
    flag(
        "experimental-enable-lease-checkpoint-persist",
        Bool,
        Honoured,
    ),
    flag(
        "downgrade-check-time",
        Duration,
        NoEffect("a Strata cluster is never downgraded member by member"),
    ),
    flag(
        "experimental-downgrade-check-time",
        Duration,
        NoEffect("a Strata cluster is never downgraded member by member"),
    ),
    flag("warning-apply-duration", Duration, Honoured),
    flag("experimental-warning-apply-duration", Duration, Honoured),
    flag("warning-unary-request-duration", Duration, Honoured),
    flag(
        "experimental-warning-unary-request-duration",
        Duration,
        Honoured,
    ),
    flag("memory-mlock", Bool, NoEffect(STORAGE)),
    flag("experimental-memory-mlock", Bool, NoEffect(STORAGE)),
    flag(
        "experimental-txn-mode-write-with-shared-buffer",
        Bool,
        NoEffect(STORAGE),
    ),
    flag(
        "experimental-stop-grpc-service-on-defrag",
        Bool,
        NoEffect("defragmentation does not stop the gRPC service here"),
    ),
    flag("watch-progress-notify-interval", Duration, Honoured),
    flag(
        "experimental-watch-progress-notify-interval",
        Duration,
        Honoured,
    ),
    // etcd's own ignored flags (etcd 0.4's names and Go's test flags).
    flag("cluster-active-size", Ignored, NoEffect(ETCD_IGNORES)),
    flag("cluster-remove-delay", Ignored, NoEffect(ETCD_IGNORES)),
    flag("cluster-sync-interval", Ignored, NoEffect(ETCD_IGNORES)),
    flag("config", Ignored, NoEffect(ETCD_IGNORES)),
    flag("force", Ignored, NoEffect(ETCD_IGNORES)),
    flag("max-result-buffer", Ignored, NoEffect(ETCD_IGNORES)),
    flag("max-retry-attempts", Ignored, NoEffect(ETCD_IGNORES)),
    flag("peer-heartbeat-interval", Ignored, NoEffect(ETCD_IGNORES)),
    flag("peer-election-timeout", Ignored, NoEffect(ETCD_IGNORES)),
    flag("retry-interval", Ignored, NoEffect(ETCD_IGNORES)),
    flag("snapshot", Ignored, NoEffect(ETCD_IGNORES)),
    flag("v", Ignored, NoEffect(ETCD_IGNORES)),
    flag("vv", Ignored, NoEffect(ETCD_IGNORES)),
    flag("test.coverprofile", Ignored, NoEffect(ETCD_IGNORES)),
    flag("test.outputdir", Ignored, NoEffect(ETCD_IGNORES)),
];

/// The flag named `name`, if etcd (or Strata) has one.
pub fn lookup(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}
