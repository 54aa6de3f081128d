//! The counters, gauges and histograms that `/metrics` exports besides the gauges read at scrape
//! time: process-wide, as Prometheus clients keep them, under etcd's names where etcd has the
//! metric and under `strata_` where it does not.
//!
//! KV operations are counted one by one, a Txn's operations each as their kind, and every Txn
//! request once in `etcd_mvcc_txn_total` (etcd counts the reads a write makes for `prev_kv` and
//! compares as ranges too, and a txn only when it does more than one thing: close, not equal).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// One more until the guard is dropped.
    pub fn hold(&'static self) -> Held {
        self.inc();
        Held(self)
    }
}

/// What [`Gauge::hold`] counts.
pub struct Held(&'static Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Most buckets a histogram has, besides +Inf.
const BUCKETS: usize = 16;

/// A Prometheus histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    /// The sum of observations, in millionths of their unit.
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Histogram {
        assert!(bounds.len() <= BUCKETS);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// etcd's buckets for backend commits and WAL syncs: 1 ms doubling to about 8 s.
const COMMIT_SECONDS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];
/// Revisions per append: 1 doubling to 1,024.
const REVISIONS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub static PUTS: Counter = Counter::new();
pub static DELETES: Counter = Counter::new();
pub static RANGES: Counter = Counter::new();
pub static TXNS: Counter = Counter::new();
/// Backend appends: how long each took to be durable.
pub static COMMITS: Histogram = Histogram::new(&COMMIT_SECONDS);
/// The embedded store's write-ahead log: how long each record's sync took.
pub static WAL_SYNCS: Histogram = Histogram::new(&COMMIT_SECONDS);
/// Backend appends: how many revisions each carried (group commit).
pub static APPENDED: Histogram = Histogram::new(&REVISIONS);
/// Queries a shared backend answered for linearizable reads' read index (one serves every read
/// waiting when it goes out).
pub static READ_INDEX_QUERIES: Counter = Counter::new();
pub static WATCHERS: Gauge = Gauge::new();
pub static WATCH_STREAMS: Gauge = Gauge::new();
/// Unary requests that took longer than [`SLOW_REQUEST`].
pub static SLOW_REQUESTS: Counter = Counter::new();
pub static GRPC_RECEIVED_BYTES: Counter = Counter::new();
pub static GRPC_SENT_BYTES: Counter = Counter::new();
static GRPC: Mutex<BTreeMap<String, MethodCounts>> = Mutex::new(BTreeMap::new());

/// A request slower than this is logged, as etcd's "apply request took too long".
pub const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_millis(100);

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

#[derive(Default)]
struct MethodCounts {
    started: u64,
    handled: [u64; CODES.len()],
}

/// A gRPC call to `path` (`/package.Service/Method`) began.
pub fn grpc_started(path: &str) {
    let mut methods = GRPC.lock().expect("grpc metrics");
    match methods.get_mut(path) {
        Some(counts) => counts.started += 1,
        None => {
            methods.insert(
                path.to_owned(),
                MethodCounts {
                    started: 1,
                    ..Default::default()
                },
            );
        }
    }
}

/// A gRPC call to `path` ended with status `code`.
pub fn grpc_handled(path: &str, code: usize) {
    let mut methods = GRPC.lock().expect("grpc metrics");
    if let Some(counts) = methods.get_mut(path) {
        counts.handled[code.min(CODES.len() - 1)] += 1;
    }
}

/// How gRPC's Prometheus middleware names the shape of a method.
pub fn grpc_type(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("Watch" | "LeaseKeepAlive") => "bidi_stream",
        Some("Snapshot" | "Observe") => "server_stream",
        _ => "unary",
    }
}

/// The exposition of everything here.
pub fn render(out: &mut String) {
    let counters: [(&str, &str, &Counter); 8] = [
        (
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            &PUTS,
        ),
        (
            "etcd_mvcc_delete_total",
            "Total number of deletes seen by this member.",
            &DELETES,
        ),
        (
            "etcd_mvcc_range_total",
            "Total number of ranges seen by this member.",
            &RANGES,
        ),
        (
            "etcd_mvcc_txn_total",
            "Total number of txns seen by this member.",
            &TXNS,
        ),
        (
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            &SLOW_REQUESTS,
        ),
        (
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            &GRPC_RECEIVED_BYTES,
        ),
        (
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            &GRPC_SENT_BYTES,
        ),
        (
            "strata_backend_read_index_queries_total",
            "Queries of a shared backend's head for linearizable reads (each serves every read waiting).",
            &READ_INDEX_QUERIES,
        ),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            counter.get()
        );
    }
    for (name, help, gauge) in [
        (
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            &WATCHERS,
        ),
        (
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
            &WATCH_STREAMS,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            gauge.0.load(Ordering::Relaxed)
        );
    }
    COMMITS.render(
        out,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    );
    WAL_SYNCS.render(
        out,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
    );
    APPENDED.render(
        out,
        "strata_backend_append_revisions",
        "Revisions made durable by one backend append (group commit).",
    );

    let methods = GRPC.lock().expect("grpc metrics");
    let labels = |path: &str| {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        format!(
            "grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"",
            grpc_type(path)
        )
    };
    let _ = writeln!(
        out,
        "# HELP grpc_server_started_total Total number of RPCs started on the server.\n\
         # TYPE grpc_server_started_total counter"
    );
    for (path, counts) in methods.iter() {
        let _ = writeln!(
            out,
            "grpc_server_started_total{{{}}} {}",
            labels(path),
            counts.started
        );
    }
    let _ = writeln!(
        out,
        "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n\
         # TYPE grpc_server_handled_total counter"
    );
    for (path, counts) in methods.iter() {
        for (code, n) in counts.handled.iter().enumerate().filter(|(_, n)| **n > 0) {
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_code=\"{}\",{}}} {n}",
                CODES[code],
                labels(path)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        static H: Histogram = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            H.observe(v);
        }
        let mut out = String::new();
        H.render(&mut out, "h", "help");
        assert!(out.contains("h_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("h_sum 12.7\nh_count 4\n"), "{out}");
    }

    #[test]
    fn methods_are_labelled_as_grpc_prometheus_does() {
        grpc_started("/etcdserverpb.Watch/Watch");
        grpc_handled("/etcdserverpb.Watch/Watch", 1);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains(
            "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",\
             grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1"
        ));
    }
}
