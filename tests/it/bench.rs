//! The benchmark tool runs each workload correctly against a real server (not a timing test).

use crate::support::Strata;
use std::process::Command;

/// Runs `strata-bench` with `args` against `strata` and `--json`; returns what it printed on its
/// standard output and its standard error, having checked that it succeeded.
fn bench(strata: &Strata, args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .args(args)
        .args(["--endpoints", &strata.address.to_string(), "--json"])
        .output()
        .expect("strata-bench runs");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let told = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {printed} {told}");
    (printed, told)
}

#[test]
fn every_workload_runs_without_errors() {
    let strata = Strata::start();
    for workload in ["put", "range", "range-prefix", "txn-put", "kube"] {
        let (printed, _) = bench(
            &strata,
            &[
                workload,
                "--clients",
                "4",
                "--conns",
                "2",
                "--total",
                "40",
                "--key-space",
                "20",
                "--limit",
                "5",
                "--compact-every",
                "15",
            ],
        );
        assert!(
            printed.contains("\"requests\":40,\"errors\":0"),
            "{workload}: {printed}"
        );
    }
}

/// The kube workload makes each kind of call, compactions included, and its watches see every
/// write.
#[test]
fn kube_workload_reports_each_kind() {
    let strata = Strata::start();
    let (_, told) = bench(
        &strata,
        &[
            "kube",
            "--clients",
            "4",
            "--total",
            "200",
            "--key-space",
            "20",
            "--compact-every",
            "50",
        ],
    );
    for kind in ["update", "event", "create", "delete", "list", "count"] {
        assert!(told.contains(&format!("  {kind:8}")), "{kind}: {told}");
    }
    assert!(told.contains("compact        3 ops"), "{told}");
    assert!(told.contains("after the load ended"), "{told}");
}

/// `--duration` runs for that long instead of a number of requests.
#[test]
fn duration_bounds_a_run() {
    let strata = Strata::start();
    let (printed, _) = bench(&strata, &["put", "--duration", "1", "--total", "1"]);
    let report: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert!(report["requests"].as_u64().unwrap() > 1, "{printed}");
    assert!(report["seconds"].as_f64().unwrap() >= 1.0, "{printed}");
}

#[test]
fn watch_workload_delivers_every_event() {
    let strata = Strata::start();
    let (printed, told) = bench(
        &strata,
        &[
            "watch",
            "--watchers",
            "40",
            "--streams",
            "4",
            "--rate",
            "500",
            "--total",
            "50",
            "--key-space",
            "10",
        ],
    );
    assert!(printed.contains("\"errors\":0"), "{printed}");
    assert!(told.contains("50 puts at"), "{told}");
}

#[test]
fn lease_workload_keeps_leases_alive() {
    let strata = Strata::start();
    let (printed, told) = bench(
        &strata,
        &[
            "lease",
            "--leases",
            "20",
            "--clients",
            "4",
            "--streams",
            "3",
            "--total",
            "30",
        ],
    );
    assert!(
        printed.contains("\"requests\":30,\"errors\":0"),
        "{printed}"
    );
    assert!(told.contains("20 leases granted"), "{told}");
}

#[test]
fn lease_expiry_workload_sees_every_lease_expire() {
    let strata = Strata::start();
    let (printed, told) = bench(
        &strata,
        &[
            "lease-expiry",
            "--leases",
            "20",
            "--ttl",
            "2",
            "--clients",
            "4",
            "--rate",
            "50",
        ],
    );
    assert!(
        printed.contains("\"requests\":20,\"errors\":0"),
        "{printed}"
    );
    assert!(told.contains("20 leases of 2s expired"), "{told}");
}

/// leased-put puts a key on each lease it granted; lease-revoke revokes leases that each hold a
/// key, so their keys go with them.
#[tokio::test]
async fn lease_write_workloads_put_on_and_revoke_a_lease_each() {
    use strata::proto::etcdserverpb::lease_client::LeaseClient;
    use strata::proto::etcdserverpb::LeaseLeasesRequest;
    let strata = Strata::start();
    let run = |workload| {
        let args = [
            workload,
            "--clients",
            "2",
            "--total",
            "20",
            "--key-space",
            "20",
        ];
        bench(&strata, &args).0
    };
    let bench_keys = || async {
        let range = crate::requests::range("bench/", "bench0");
        strata.kv().await.range(range).await.unwrap().into_inner()
    };
    let printed = run("leased-put");
    assert!(
        printed.contains("\"requests\":20,\"errors\":0"),
        "{printed}"
    );
    let keys = bench_keys().await;
    assert_eq!(keys.count, 20);
    assert!(keys.kvs.iter().all(|kv| kv.lease != 0));
    let printed = run("lease-revoke");
    assert!(
        printed.contains("\"requests\":20,\"errors\":0"),
        "{printed}"
    );
    assert_eq!(bench_keys().await.count, 0);
    let mut leases = LeaseClient::new(strata.channel().await);
    let left = leases.lease_leases(LeaseLeasesRequest {}).await.unwrap();
    // The first workload's leases: the second moved their keys to its own, then revoked those.
    assert_eq!(left.into_inner().leases.len(), 20);
}
