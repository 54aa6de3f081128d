//! The benchmark tool runs each workload correctly against a real server (not a timing test).

use crate::support::Strata;
use std::process::Command;

#[test]
fn every_workload_runs_without_errors() {
    let strata = Strata::start();
    for workload in ["put", "range", "range-prefix", "txn-put"] {
        let out = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
            .arg(workload)
            .args(["--endpoints", &strata.address.to_string()])
            .args(["--clients", "4", "--conns", "2", "--total", "40"])
            .args(["--key-space", "20", "--limit", "5", "--json"])
            .output()
            .expect("strata-bench runs");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{workload}: {printed} {out:?}");
        assert!(
            printed.contains("\"requests\":40,\"errors\":0"),
            "{workload}: {printed}"
        );
    }
}

#[test]
fn watch_workload_delivers_every_event() {
    let strata = Strata::start();
    let out = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .arg("watch")
        .args(["--endpoints", &strata.address.to_string()])
        .args(["--watchers", "40", "--streams", "4", "--rate", "500"])
        .args(["--total", "50", "--key-space", "10", "--json"])
        .output()
        .expect("strata-bench runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed} {told}");
    assert!(printed.contains("\"errors\":0"), "{printed}");
    assert!(told.contains("50 puts at"), "{told}");
}

#[test]
fn lease_workload_keeps_leases_alive() {
    let strata = Strata::start();
    let out = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .arg("lease")
        .args(["--endpoints", &strata.address.to_string()])
        .args(["--leases", "20", "--clients", "4", "--streams", "3"])
        .args(["--total", "30", "--json"])
        .output()
        .expect("strata-bench runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed} {told}");
    assert!(
        printed.contains("\"requests\":30,\"errors\":0"),
        "{printed}"
    );
    assert!(told.contains("20 leases granted"), "{told}");
}

#[test]
fn lease_expiry_workload_sees_every_lease_expire() {
    let strata = Strata::start();
    let out = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .arg("lease-expiry")
        .args(["--endpoints", &strata.address.to_string()])
        .args(["--leases", "20", "--ttl", "2", "--clients", "4"])
        .args(["--rate", "50", "--json"])
        .output()
        .expect("strata-bench runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed} {told}");
    assert!(
        printed.contains("\"requests\":20,\"errors\":0"),
        "{printed}"
    );
    assert!(told.contains("20 leases of 2s expired"), "{told}");
}
