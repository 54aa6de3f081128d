//! The way out of Strata: `etcdctl snapshot save` against Strata writes a file that `etcdctl
//! snapshot status` reads and `etcdctl snapshot restore` turns into an etcd data directory; the
//! etcd started on it answers every read at every kept revision as Strata did.

use crate::requests::*;
use crate::support::{etcdctl_binary, Etcd, Process, Strata};
use std::path::Path;
use std::process::Command;
use strata::proto::etcdserverpb::auth_client::AuthClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::request_op::Request;
use strata::proto::etcdserverpb::*;

fn etcdctl(server: &Process, args: &[&str]) -> std::process::Output {
    Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(server.address.to_string())
        .args(args)
        .output()
        .expect("etcdctl runs")
}

/// Every key at `revision`, or the error, without the header (ids and term differ by nature).
async fn everything_at(server: &Process, revision: i64) -> Result<Vec<String>, String> {
    let request = RangeRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        revision,
        ..Default::default()
    };
    match server.kv().await.range(request).await {
        Ok(r) => {
            let r = r.into_inner();
            Ok(r.kvs.iter().map(|kv| format!("{kv:?}")).collect())
        }
        Err(s) => Err(format!("{:?} {}", s.code(), s.message())),
    }
}

async fn history(strata: &Strata) -> i64 {
    let mut kv = strata.kv().await;
    let mut lease = LeaseClient::new(strata.channel().await);
    let mut auth = AuthClient::new(strata.channel().await);
    for i in 0..20 {
        kv.put(put(&format!("k{}", i % 7), &format!("v{i}")))
            .await
            .unwrap();
    }
    kv.delete_range(DeleteRangeRequest {
        key: "k3".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    lease
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 42 })
        .await
        .unwrap();
    kv.put(PutRequest {
        lease: 42,
        ..put("leased", "x")
    })
    .await
    .unwrap();
    kv.txn(txn(
        Vec::new(),
        vec![
            Request::RequestPut(put("t1", "a")),
            Request::RequestPut(put("t2", "b")),
        ],
        Vec::new(),
    ))
    .await
    .unwrap();
    kv.compact(CompactionRequest {
        revision: 10,
        physical: true,
    })
    .await
    .unwrap();
    for i in 0..5 {
        kv.put(put("after", &i.to_string())).await.unwrap();
    }
    auth.user_add(AuthUserAddRequest {
        name: "alice".into(),
        password: "pw".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    auth.role_add(AuthRoleAddRequest { name: "r".into() })
        .await
        .unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "alice".into(),
        role: "r".into(),
    })
    .await
    .unwrap();
    kv.range(get("after"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
}

#[tokio::test]
async fn etcd_restores_what_strata_saves() {
    let strata = Strata::start();
    let head = history(&strata).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.db");
    let saved = etcdctl(&strata, &["snapshot", "save", &file.display().to_string()]);
    assert!(saved.status.success(), "{saved:?}");

    let status = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["revision"], head);

    let etcd = Etcd::restored(&file);
    for revision in [0, 1, 9, 10, 11, head - 1, head, head + 1] {
        assert_eq!(
            everything_at(&etcd, revision).await,
            everything_at(&strata, revision).await,
            "at revision {revision}"
        );
    }
    let leases = |server: &Process| {
        let endpoint = server.endpoint();
        async move {
            let mut lease = LeaseClient::connect(endpoint).await.unwrap();
            let ttl = lease
                .lease_time_to_live(LeaseTimeToLiveRequest { id: 42, keys: true })
                .await
                .unwrap()
                .into_inner();
            (ttl.granted_ttl, ttl.keys)
        }
    };
    assert_eq!(leases(&etcd).await, leases(&strata).await);
    let users = |server: &Process| {
        let endpoint = server.endpoint();
        async move {
            let mut auth = AuthClient::connect(endpoint).await.unwrap();
            let alice = auth
                .user_get(AuthUserGetRequest {
                    name: "alice".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let status = auth.auth_status(AuthStatusRequest {}).await;
            (
                alice.roles,
                status.map(|s| s.into_inner().auth_revision).ok(),
            )
        }
    };
    let (etcd_users, etcd_revision) = users(&etcd).await;
    let (strata_users, strata_revision) = users(&strata).await;
    assert_eq!(etcd_users, strata_users);
    // Debian's etcd 3.4 has no AuthStatus; the revision is compared where it answers.
    if etcd_revision.is_some() {
        assert_eq!(etcd_revision, strata_revision);
    }
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused() {
    let strata = Strata::start();
    history(&strata).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.db");
    let saved = etcdctl(&strata, &["snapshot", "save", &file.display().to_string()]);
    assert!(saved.status.success(), "{saved:?}");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, bytes).unwrap();
    let restore = restore_into(&damaged, &dir.path().join("etcd"));
    assert!(!restore.status.success());
    let said = String::from_utf8_lossy(&restore.stderr);
    assert!(said.contains("sha256"), "{said}");
}

fn restore_into(snapshot: &Path, data_dir: &Path) -> std::process::Output {
    Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}
