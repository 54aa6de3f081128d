//! etcd snapshots both ways. Out: `etcdctl snapshot save` against Strata writes a file that
//! `etcdctl snapshot status` reads and `etcdctl snapshot restore` turns into an etcd data
//! directory; the etcd started on it answers every read at every kept revision as Strata did.
//! In: `strata snapshot restore` of a snapshot of etcd gives a Strata that answers as that etcd.

use crate::requests::*;
use crate::support::{etcdctl_binary, on_postgres, postgres_database, Etcd, Process, Strata};
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

/// Writes a history with every kind of change to `server`: puts, a delete, lease 42 with a key,
/// a txn, a compaction at 10, user alice with role r. Returns its last revision.
pub(crate) async fn history(server: &Process) -> i64 {
    let mut kv = server.kv().await;
    let mut lease = LeaseClient::new(server.channel().await);
    let mut auth = AuthClient::new(server.channel().await);
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

/// Writes the history to `server`, then `etcdctl snapshot save`s it into `dir`; returns the
/// history's last revision and the file.
async fn saved_history(server: &Process, dir: &Path) -> (i64, std::path::PathBuf) {
    let head = history(server).await;
    let file = dir.join("snapshot.db");
    let saved = etcdctl(server, &["snapshot", "save", &file.display().to_string()]);
    assert!(saved.status.success(), "{saved:?}");
    (head, file)
}

#[tokio::test]
async fn etcd_restores_what_strata_saves() {
    let strata = Strata::start();
    let dir = tempfile::tempdir().unwrap();
    let (head, file) = saved_history(&strata, dir.path()).await;

    assert_eq!(status_of(&file)["revision"], head);

    let etcd = Etcd::restored(&file);
    same_answers(&etcd, &strata, head).await;
}

/// `want` and `got` answer alike: reads at every revision, the lease and its keys, the users.
pub(crate) async fn same_answers(want: &Process, got: &Process, head: i64) {
    for revision in (0..=head + 1).chain([-1]) {
        assert_eq!(
            everything_at(got, revision).await,
            everything_at(want, revision).await,
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
    assert_eq!(leases(got).await, leases(want).await);
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
    let (want_users, want_revision) = users(want).await;
    let (got_users, got_revision) = users(got).await;
    assert_eq!(got_users, want_users);
    // Debian's etcd 3.4 has no AuthStatus; the revision is compared where it answers.
    if want_revision.is_some() {
        assert_eq!(got_revision, want_revision);
    }
}

#[tokio::test]
async fn strata_restores_what_etcd_saves() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (head, file) = saved_history(&etcd, dir.path()).await;

    let mut restore = Command::new(env!("CARGO_BIN_EXE_strata"));
    restore.args(["snapshot", "restore"]).arg(&file);
    if on_postgres() {
        restore.args(["--backend", &postgres_database(dir.path())]);
    } else {
        restore.arg("--data-dir").arg(dir.path().join("data"));
    }
    let restored = restore.output().unwrap();
    assert!(restored.status.success(), "{restored:?}");
    let said = String::from_utf8_lossy(&restored.stdout);
    assert!(said.contains(&format!("up to {head}")), "{said}");
    // A second restore into the same store is refused.
    let again = restore.output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds data"));

    let strata = Strata::start_in(dir.path(), &[]);
    same_answers(&etcd, &strata, head).await;
    // And it goes on from etcd's revision.
    let next = strata.kv().await.put(put("new", "1")).await.unwrap();
    assert_eq!(next.into_inner().header.unwrap().revision, head + 1);
}

/// `strata snapshot save` writes what `etcdctl snapshot save` would.
#[tokio::test]
async fn strata_saves_snapshots_too() {
    let etcd = Etcd::start();
    let head = history(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("saved.db");
    let saved = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["snapshot", "save"])
        .arg(&file)
        .args(["--endpoints", &etcd.endpoint()])
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    assert_eq!(status_of(&file)["revision"], head);
}

/// What `etcdctl snapshot status -w json` says of a snapshot file.
fn status_of(file: &Path) -> serde_json::Value {
    let status = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    serde_json::from_slice(&status.stdout).unwrap()
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused() {
    let strata = Strata::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, file) = saved_history(&strata, dir.path()).await;
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
