//! The metrics `/metrics` exports, under etcd's names, labels, types and buckets where etcd has the
//! metric (so that etcd's dashboards and alerts work unchanged) and under `strata_` where it does
//! not; built on prometheus-client. Counters and histograms here are process-wide, as Prometheus
//! clients keep them; what is read off the store at scrape time is added by the api layer
//! ([`Exposition`]).
//!
//! KV operations are counted one by one, a Txn's operations each as their kind, and every Txn
//! request once in `etcd_mvcc_txn_total` (etcd counts the reads a write makes for `prev_kv` and
//! compares as ranges too, and a txn only when it does more than one thing: close, not equal).

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;

/// etcd's buckets for backend commits and WAL syncs: 1 ms doubling to about 8 s.
fn commit_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

pub static PUTS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static DELETES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static RANGES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static TXNS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Backend appends: how long each took to be durable.
pub static COMMITS: LazyLock<Histogram> = LazyLock::new(commit_seconds);
/// The embedded store's write-ahead log: how long each record's sync took.
pub static WAL_SYNCS: LazyLock<Histogram> = LazyLock::new(commit_seconds);
/// Backend appends: how many revisions each carried (group commit), 1 doubling to 1,024.
pub static APPENDED: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(1.0, 2.0, 11)));
/// Backend appends that failed: no write of theirs was acknowledged (etcd's failed proposals).
pub static APPENDS_FAILED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Queries a shared backend answered for linearizable reads' read index (one serves every read
/// waiting when it goes out).
pub static READ_INDEX_QUERIES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Reads of the log or its values that a hot standby (`--read-from`) answered, and those that went
/// to the primary instead (the standby had not replayed them yet, or failed).
pub static STANDBY_READS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static STANDBY_FALLBACKS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// How many revisions the hot standby (`--read-from`) showed fewer than the primary's head, at the
/// last look (every second).
pub static STANDBY_LAG: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Appends to a shared backend made without taking the append right first, and those refused
/// because the store no longer stood as presumed (then made under the right).
pub static PRESUMED_APPENDS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static PRESUMED_REFUSED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static WATCHERS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static WATCH_STREAMS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Unary requests that took longer than [`slow_request`].
pub static SLOW_REQUESTS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static GRPC_RECEIVED_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static GRPC_SENT_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A request slower than this, in microseconds, is logged as etcd's "apply request took too long"
/// (`--warning-apply-duration`, 100 ms unless set).
static SLOW_REQUEST_MICROS: AtomicU64 = AtomicU64::new(100_000);

/// Sets the time past which a unary request is slow.
pub fn set_slow_request(after: std::time::Duration) {
    SLOW_REQUEST_MICROS.store(after.as_micros() as u64, Ordering::Relaxed);
}

/// The time past which a unary request is slow.
pub fn slow_request() -> std::time::Duration {
    std::time::Duration::from_micros(SLOW_REQUEST_MICROS.load(Ordering::Relaxed))
}

/// A unary request slower than this, in microseconds, is logged as etcd's "request stats"
/// (`--warning-unary-request-duration`; 300 ms, fixed in etcd 3.5).
static UNARY_WARNING_MICROS: AtomicU64 = AtomicU64::new(300_000);

/// Sets the time past which a unary request's stats are logged.
pub fn set_unary_request_warning(after: std::time::Duration) {
    UNARY_WARNING_MICROS.store(after.as_micros() as u64, Ordering::Relaxed);
}

/// The time past which a unary request's stats are logged.
pub fn unary_request_warning() -> std::time::Duration {
    std::time::Duration::from_micros(UNARY_WARNING_MICROS.load(Ordering::Relaxed))
}

/// Whether gRPC calls' latencies are kept and exported (`--metrics extensive`).
static EXTENSIVE: AtomicBool = AtomicBool::new(false);

/// Exports `grpc_server_handling_seconds` from now on, as etcd does with `--metrics extensive`.
pub fn export_handling_times() {
    EXTENSIVE.store(true, Ordering::Relaxed);
}

/// One more on `gauge` until the guard is dropped.
pub fn hold(gauge: &'static Gauge) -> Held {
    gauge.inc();
    Held(gauge)
}

/// What [`hold`] counts.
pub struct Held(&'static Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// gRPC status codes, by number, as the `grpc_code` label spells them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Every method of etcd's gRPC API, by service, with how gRPC's Prometheus middleware names its
/// shape.
const METHODS: &[(&str, &[(&str, &str)])] = &[
    (
        "etcdserverpb.KV",
        &[
            ("Range", "unary"),
            ("Put", "unary"),
            ("DeleteRange", "unary"),
            ("Txn", "unary"),
            ("Compact", "unary"),
        ],
    ),
    ("etcdserverpb.Watch", &[("Watch", "bidi_stream")]),
    (
        "etcdserverpb.Lease",
        &[
            ("LeaseGrant", "unary"),
            ("LeaseRevoke", "unary"),
            ("LeaseKeepAlive", "bidi_stream"),
            ("LeaseTimeToLive", "unary"),
            ("LeaseLeases", "unary"),
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            ("MemberAdd", "unary"),
            ("MemberRemove", "unary"),
            ("MemberUpdate", "unary"),
            ("MemberList", "unary"),
            ("MemberPromote", "unary"),
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            ("Alarm", "unary"),
            ("Status", "unary"),
            ("Defragment", "unary"),
            ("Hash", "unary"),
            ("HashKV", "unary"),
            ("Snapshot", "server_stream"),
            ("MoveLeader", "unary"),
            ("Downgrade", "unary"),
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            ("AuthEnable", "unary"),
            ("AuthDisable", "unary"),
            ("AuthStatus", "unary"),
            ("Authenticate", "unary"),
            ("UserAdd", "unary"),
            ("UserGet", "unary"),
            ("UserList", "unary"),
            ("UserDelete", "unary"),
            ("UserChangePassword", "unary"),
            ("UserGrantRole", "unary"),
            ("UserRevokeRole", "unary"),
            ("RoleAdd", "unary"),
            ("RoleGet", "unary"),
            ("RoleList", "unary"),
            ("RoleDelete", "unary"),
            ("RoleGrantPermission", "unary"),
            ("RoleRevokePermission", "unary"),
        ],
    ),
    ("v3lockpb.Lock", &[("Lock", "unary"), ("Unlock", "unary")]),
    (
        "v3electionpb.Election",
        &[
            ("Campaign", "unary"),
            ("Proclaim", "unary"),
            ("Leader", "unary"),
            ("Observe", "server_stream"),
            ("Resign", "unary"),
        ],
    ),
];

/// The labels of a method, in the order etcd's exposition writes them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_method: &'static str,
    grpc_service: &'static str,
    grpc_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_code: &'static str,
    #[prometheus(flatten)]
    method: MethodLabels,
}

type Handling = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// gRPC's Prometheus metrics, and each method's series resolved once, so that a call counts
/// itself without a lock or a lookup by labels.
struct Grpc {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Handling,
    methods: HashMap<String, Method>,
}

/// The series of one method.
pub struct Method {
    /// `/package.Service/Method`.
    pub path: String,
    pub unary: bool,
    started: Counter,
    handled: Vec<Counter>,
    handling: Histogram,
}

impl Method {
    /// A call began.
    pub fn started(&self) {
        self.started.inc();
    }

    /// A call ended with status `code` after `took`.
    pub fn handled(&self, code: usize, took: std::time::Duration) {
        self.handled[code.min(CODES.len() - 1)].inc();
        if EXTENSIVE.load(Ordering::Relaxed) {
            self.handling.observe(took.as_secs_f64());
        }
    }
}

/// prometheus's default buckets, which gRPC's middleware uses for handling times.
fn handling_seconds() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every method's series exist from the start, at zero, as etcd's middleware creates them.
static GRPC: LazyLock<Grpc> = LazyLock::new(|| {
    let started = Family::<MethodLabels, Counter>::default();
    let handled = Family::<HandledLabels, Counter>::default();
    let handling: Handling = Family::new_with_constructor(handling_seconds);
    let mut methods = HashMap::new();
    for (service, calls) in METHODS {
        for (method, kind) in *calls {
            let labels = MethodLabels {
                grpc_method: method,
                grpc_service: service,
                grpc_type: kind,
            };
            let path = format!("/{service}/{method}");
            let series = Method {
                path: path.clone(),
                unary: *kind == "unary",
                started: started.get_or_create_owned(&labels),
                handled: CODES
                    .iter()
                    .map(|code| {
                        handled.get_or_create_owned(&HandledLabels {
                            grpc_code: code,
                            method: labels.clone(),
                        })
                    })
                    .collect(),
                handling: handling.get_or_create_owned(&labels),
            };
            methods.insert(path, series);
        }
    }
    Grpc {
        started,
        handled,
        handling,
        methods,
    }
});

/// The series of the method at `path` (`/package.Service/Method`), if etcd has it: calls to
/// other paths are not counted, so that no client can add series without end.
pub fn method(path: &str) -> Option<&'static Method> {
    GRPC.methods.get(path)
}

/// The process-wide metrics, registered once.
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut r = Registry::default();
    let counters: [(&str, &str, &Counter); 13] = [
        ("etcd_mvcc_put", "Total number of puts seen by this member", &PUTS),
        ("etcd_mvcc_delete", "Total number of deletes seen by this member", &DELETES),
        ("etcd_mvcc_range", "Total number of ranges seen by this member", &RANGES),
        ("etcd_mvcc_txn", "Total number of txns seen by this member", &TXNS),
        (
            "etcd_server_slow_apply",
            "The total number of slow apply requests (likely overloaded from slow disk)",
            &SLOW_REQUESTS,
        ),
        (
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen",
            &APPENDS_FAILED,
        ),
        (
            "etcd_network_client_grpc_received_bytes",
            "The total number of bytes received from grpc clients",
            &GRPC_RECEIVED_BYTES,
        ),
        (
            "etcd_network_client_grpc_sent_bytes",
            "The total number of bytes sent to grpc clients",
            &GRPC_SENT_BYTES,
        ),
        (
            "strata_backend_standby_reads",
            "Reads of the log or its values that the hot standby (--read-from) answered",
            &STANDBY_READS,
        ),
        (
            "strata_backend_standby_fallbacks",
            "Reads of the log or its values that went to the primary: the standby had not replayed them yet, or failed",
            &STANDBY_FALLBACKS,
        ),
        (
            "strata_backend_presumed_appends",
            "Batches appended to a shared backend in one round trip, without taking the append right first",
            &PRESUMED_APPENDS,
        ),
        (
            "strata_backend_presumed_refused",
            "Batches not appended as presumed (another frontend got in first), then appended under the append right",
            &PRESUMED_REFUSED,
        ),
        (
            "strata_backend_read_index_queries",
            "Queries of a shared backend's head for linearizable reads (each serves every read waiting)",
            &READ_INDEX_QUERIES,
        ),
    ];
    for (name, help, counter) in counters {
        r.register(name, help, counter.clone());
    }
    for (name, help, gauge) in [
        (
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers",
            &WATCHERS,
        ),
        (
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams",
            &WATCH_STREAMS,
        ),
        (
            "strata_backend_standby_lag_revisions",
            "Revisions the hot standby (--read-from) lacked of the primary's head at the last look",
            &STANDBY_LAG,
        ),
    ] {
        r.register(name, help, (*gauge).clone());
    }
    for (name, help, histogram) in [
        (
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend",
            &COMMITS,
        ),
        (
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL",
            &WAL_SYNCS,
        ),
        (
            "strata_backend_append_revisions",
            "Revisions made durable by one backend append (group commit)",
            &APPENDED,
        ),
    ] {
        r.register(name, help, (*histogram).clone());
    }
    r.register(
        "grpc_server_started",
        "Total number of RPCs started on the server",
        GRPC.started.clone(),
    );
    r.register(
        "grpc_server_handled",
        "Total number of RPCs completed on the server, regardless of success or failure",
        GRPC.handled.clone(),
    );
    r
});

/// One scrape's exposition: the process-wide metrics, and what the caller read at scrape time.
pub struct Exposition {
    now: Registry,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        let mut now = Registry::default();
        if EXTENSIVE.load(Ordering::Relaxed) {
            now.register(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
                GRPC.handling.clone(),
            );
        }
        process(&mut now);
        Exposition { now }
    }

    /// A gauge read now.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.now.register(name, help, ConstGauge::new(value));
    }

    /// A counter read now.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.now.register(name, help, ConstCounter::new(value));
    }

    /// A gauge of 1 whose label says something (etcd's `etcd_server_version{server_version=...}`).
    pub fn labelled(&mut self, name: &str, help: &str, label: &'static str, value: String) {
        let family = Family::<Vec<(&'static str, String)>, Gauge>::default();
        family.get_or_create(&vec![(label, value)]).set(1);
        self.now.register(name, help, family);
    }

    /// The text, in OpenMetrics' format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode_registry(&mut out, &REGISTRY).expect("writing to a String");
        encode_registry(&mut out, &self.now).expect("writing to a String");
        encode_eof(&mut out).expect("writing to a String");
        out
    }
}

/// The process metrics Prometheus's clients export (`process_*`), read from /proc as theirs are.
fn process(r: &mut Registry) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // The fields after the command's name, which may hold spaces, start at the state (field 3).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // /proc counts CPU time and start time in USER_HZ, which Linux fixes at 100 for user space.
    const TICKS: f64 = 100.0;
    let cpu = (field(14) + field(15)) / TICKS;
    r.register(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        ConstCounter::new(cpu),
    );
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let gauges: [(&str, &str, f64); 3] = [
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            boot + field(22) / TICKS,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            field(23),
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            field(24) * page_size(),
        ),
    ];
    for (name, help, value) in gauges {
        r.register(name, help, ConstGauge::new(value));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            ConstGauge::new(fds.count() as f64),
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft_limit = |name: &str| -> Option<f64> {
        let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
        match rest.split_whitespace().next()? {
            "unlimited" => Some(u64::MAX as f64),
            n => n.parse().ok(),
        }
    };
    if let Some(max) = soft_limit("Max open files") {
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            ConstGauge::new(max),
        );
    }
    if let Some(max) = soft_limit("Max address space") {
        r.register(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes",
            ConstGauge::new(max),
        );
    }
}

/// The size of a memory page, for /proc's resident set in pages: from the kernel's own figures
/// (resident kB over resident pages), 4 KiB when they cannot be read.
fn page_size() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let kib: Option<f64> = status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    });
    let pages: Option<f64> = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok());
    match (kib, pages) {
        (Some(kib), Some(pages)) if pages > 0.0 => {
            let size = kib * 1024.0 / pages;
            // Round to a power of two: the two readings are taken a moment apart.
            2f64.powf(size.log2().round())
        }
        _ => 4096.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_as_grpc_prometheus_does() {
        let watch = method("/etcdserverpb.Watch/Watch").expect("etcd's method");
        watch.started();
        watch.handled(1, std::time::Duration::from_millis(3));
        assert!(method("/no.Such/Method").is_none());
        let out = Exposition::new().render();
        assert!(
            out.contains(
                "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",\
                 grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1\n"
            ),
            "{out}"
        );
        // Every method's series is there from the start.
        assert!(out.contains(
            "grpc_server_handled_total{grpc_code=\"DataLoss\",grpc_method=\"Campaign\",\
             grpc_service=\"v3electionpb.Election\",grpc_type=\"unary\"} 0\n"
        ));
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn histograms_have_etcds_buckets() {
        let out = Exposition::new().render();
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}"));
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}"));
        assert!(out.contains("# TYPE etcd_disk_backend_commit_duration_seconds histogram"));
    }

    #[test]
    fn the_process_is_described() {
        let out = Exposition::new().render();
        for series in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "process_virtual_memory_bytes ",
        ] {
            assert!(out.contains(series), "{series} in {out}");
        }
    }
}
