//! etcd's monitoring works unchanged: every series that etcd's monitoring mixin (`contrib/mixin` in
//! etcd's repository: its alerts and its Grafana dashboard) reads of a one-member etcd is on
//! Strata's metrics URL, with etcd's type, labels and buckets; checked against etcd itself.

use crate::support::{etcdctl_binary, free_port, Etcd, Strata};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

/// The series the mixin's queries name (etcd 3.5.30's and main's), less those a one-member etcd
/// does not export (its peers' network metrics) and Prometheus's own `up`. The latency histogram
/// of gRPC calls is there with `--metrics extensive` only, as in etcd.
const MIXIN: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_failed_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_quota_backend_bytes",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_client_grpc_received_bytes_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "process_resident_memory_bytes",
    // What etcd's runbooks and kube-prometheus read besides.
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_virtual_memory_bytes",
];

/// One scrape: each series' type (from its family's TYPE line, whichever text format), and for
/// each sample name the label names of its samples and the `le` bounds of histogram buckets.
struct Scrape {
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<String>>,
    bounds: BTreeMap<String, BTreeSet<String>>,
}

impl Scrape {
    fn of(metrics: SocketAddr) -> Scrape {
        // HTTP/1.0, so that the body comes whole rather than in chunks.
        let mut stream = TcpStream::connect(metrics).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, text) = response.split_once("\r\n\r\n").expect("a body");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        let mut scrape = Scrape {
            types: BTreeMap::new(),
            labels: BTreeMap::new(),
            bounds: BTreeMap::new(),
        };
        for line in text.lines() {
            if let Some(family) = line.strip_prefix("# TYPE ") {
                let (name, kind) = family.split_once(' ').unwrap();
                scrape.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (name, labels) = match line.split_once('{') {
                Some((name, rest)) => (name, rest.split_once('}').unwrap().0),
                None => (line.split_once(' ').unwrap().0, ""),
            };
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (label, value) = pair.split_once('=').unwrap();
                scrape
                    .labels
                    .entry(name.to_owned())
                    .or_default()
                    .insert(label.to_owned());
                if label == "le" {
                    // "1" in Prometheus's text format is "1.0" in OpenMetrics'.
                    let bound = value.trim_matches('"');
                    let bound = bound
                        .parse::<f64>()
                        .map_or(bound.to_owned(), |b| b.to_string());
                    scrape
                        .bounds
                        .entry(name.to_owned())
                        .or_default()
                        .insert(bound);
                }
            }
            scrape.labels.entry(name.to_owned()).or_default();
        }
        scrape
    }

    /// The type of the family a sample name belongs to: OpenMetrics names a counter's family
    /// without `_total`, Prometheus's text format with it.
    fn type_of(&self, series: &str) -> Option<&str> {
        let family = [
            series,
            series.trim_end_matches("_total"),
            series.trim_end_matches("_bucket"),
        ];
        family
            .iter()
            .find_map(|f| self.types.get(*f))
            .map(String::as_str)
    }
}

fn put(endpoint: &str) {
    let out = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "put", "k", "v"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn etcds_monitoring_mixin_finds_every_series() {
    let (etcd_metrics, strata_metrics) = (free_port(), free_port());
    let metrics_url = |port: u16| format!("--listen-metrics-urls=http://127.0.0.1:{port}");
    let etcd = Etcd::start_with(&["--metrics=extensive", &metrics_url(etcd_metrics)]);
    let strata = Strata::start_with(&["--metrics=extensive", &metrics_url(strata_metrics)]);
    put(&etcd.endpoint());
    put(&strata.endpoint());
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (want, got) = (
        Scrape::of(local(etcd_metrics)),
        Scrape::of(local(strata_metrics)),
    );
    for series in MIXIN {
        assert!(want.labels.contains_key(*series), "etcd has no {series}");
        assert!(got.labels.contains_key(*series), "Strata has no {series}");
        assert_eq!(
            got.type_of(series),
            want.type_of(series),
            "type of {series}"
        );
        assert_eq!(
            got.labels[*series], want.labels[*series],
            "labels of {series}"
        );
        assert_eq!(
            got.bounds.get(*series),
            want.bounds.get(*series),
            "buckets of {series}"
        );
    }
}

#[test]
fn basic_metrics_leave_the_latency_histogram_out() {
    let port = free_port();
    let strata = Strata::start_with(&[&format!("--listen-metrics-urls=http://127.0.0.1:{port}")]);
    put(&strata.endpoint());
    let scrape = Scrape::of(SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(scrape.labels.contains_key("grpc_server_handled_total"));
    assert!(!scrape
        .labels
        .contains_key("grpc_server_handling_seconds_bucket"));
}
