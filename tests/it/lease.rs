//! Leases: the same grants, puts, revokes and queries against etcd and Strata; expiry seen by a
//! watcher; leases across a restart; etcdctl's lease commands.

use crate::requests::*;
use crate::support::{start_both, Process, Strata};
use crate::watch::{create, Stream};
use std::time::{Duration, Instant};
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// One lease call, or a KV call.
enum Call {
    Grant(i64, i64),
    Revoke(i64),
    TimeToLive(i64),
    Leases,
    KeepAlive(Vec<i64>),
    Kv(Op),
}

pub fn leased(key: &str, lease: i64) -> PutRequest {
    PutRequest {
        lease,
        ..put(key, "v")
    }
}

/// What a call answered, as text with ids and term blanked; a TTL left is shown as whether it lies
/// in (0, granted], as the two servers' clocks cannot agree to the second.
async fn answer(server: &Process, lease: &mut LeaseClient<Channel>, call: &Call) -> String {
    let header = |h: Option<ResponseHeader>| h.map(|h| h.revision);
    let status = |s: tonic::Status| format!("error {:?} {}", s.code(), s.message());
    match call {
        Call::Grant(id, ttl) => match lease
            .lease_grant(LeaseGrantRequest { id: *id, ttl: *ttl })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                format!(
                    "granted {} ttl {} at {:?} {:?}",
                    r.id,
                    r.ttl,
                    header(r.header),
                    r.error
                )
            }
            Err(s) => status(s),
        },
        Call::Revoke(id) => match lease.lease_revoke(LeaseRevokeRequest { id: *id }).await {
            Ok(r) => format!("revoked at {:?}", header(r.into_inner().header)),
            Err(s) => status(s),
        },
        Call::TimeToLive(id) => {
            let req = LeaseTimeToLiveRequest {
                id: *id,
                keys: true,
            };
            match lease.lease_time_to_live(req).await {
                Ok(r) => {
                    let mut r = r.into_inner();
                    // etcd lists a lease's keys in no set order.
                    r.keys.sort();
                    let ttl = if r.ttl == -1 {
                        "-1".to_owned()
                    } else {
                        format!(
                            "left in (0, granted]: {}",
                            r.ttl > 0 && r.ttl <= r.granted_ttl
                        )
                    };
                    format!(
                        "{} ttl {ttl} granted {} keys {:?} at {:?}",
                        r.id,
                        r.granted_ttl,
                        r.keys,
                        header(r.header)
                    )
                }
                Err(s) => status(s),
            }
        }
        Call::Leases => match lease.lease_leases(LeaseLeasesRequest {}).await {
            Ok(r) => {
                let mut ids: Vec<i64> = r.into_inner().leases.iter().map(|l| l.id).collect();
                ids.sort_unstable();
                format!("leases {ids:?}")
            }
            Err(s) => status(s),
        },
        Call::KeepAlive(ids) => {
            let requests: Vec<LeaseKeepAliveRequest> = ids
                .iter()
                .map(|id| LeaseKeepAliveRequest { id: *id })
                .collect();
            let mut answers = lease
                .lease_keep_alive(tokio_stream::iter(requests))
                .await
                .expect("keep-alive stream opens")
                .into_inner();
            let mut out = Vec::new();
            for _ in ids {
                let r = answers
                    .next()
                    .await
                    .expect("an answer per request")
                    .unwrap();
                out.push((r.id, r.ttl));
            }
            format!("kept alive {out:?}")
        }
        Call::Kv(op) => format!("{:?}", run(&mut server.kv().await, op).await),
    }
}

#[tokio::test]
async fn grant_attach_query_and_revoke() {
    let (etcd, strata) = start_both();
    let calls = vec![
        Call::Grant(100, 60),
        Call::Grant(100, 60),
        // Raised to the minimum TTL, 2 s: revoked at once, before it can expire on either server.
        Call::Grant(102, 1),
        Call::Revoke(102),
        Call::Grant(103, 9_000_000_001),
        Call::Grant(101, 60),
        Call::Kv(leased("a", 100).into()),
        Call::Kv(leased("b", 100).into()),
        Call::Kv(leased("c", 101).into()),
        Call::Kv(leased("d", 999).into()),
        Call::Kv(
            txn(
                vec![],
                vec![request_op::Request::RequestPut(leased("e", 100))],
                vec![],
            )
            .into(),
        ),
        Call::Kv(
            txn(
                vec![],
                vec![request_op::Request::RequestPut(leased("f", 999))],
                vec![],
            )
            .into(),
        ),
        // Re-put without a lease detaches; ignore_lease keeps it.
        Call::Kv(put("b", "plain").into()),
        Call::Kv(
            PutRequest {
                ignore_lease: true,
                ..put("a", "kept")
            }
            .into(),
        ),
        Call::TimeToLive(100),
        Call::TimeToLive(101),
        Call::TimeToLive(555),
        Call::Leases,
        Call::KeepAlive(vec![100, 555, 101]),
        Call::Revoke(100),
        Call::Kv(range("\u{0}", "\u{0}").into()),
        Call::Revoke(100),
        Call::TimeToLive(100),
        Call::Kv(leased("g", 100).into()),
        Call::KeepAlive(vec![100]),
        // A lease without keys: revoked without a new revision.
        Call::Grant(104, 30),
        Call::Revoke(104),
        Call::Revoke(101),
        Call::Leases,
        Call::Kv(range("\u{0}", "\u{0}").into()),
    ];
    let mut e = LeaseClient::new(etcd.channel().await);
    let mut s = LeaseClient::new(strata.channel().await);
    for (i, call) in calls.iter().enumerate() {
        let want = answer(&etcd, &mut e, call).await;
        let got = answer(&strata, &mut s, call).await;
        assert_eq!(got, want, "step {i}");
    }
}

/// A lease left alone expires one TTL after its grant, and a watcher sees its keys deleted in one
/// revision.
#[tokio::test]
async fn expiry_deletes_the_keys_and_watchers_see_it() {
    let strata = Strata::start();
    let mut lease = LeaseClient::new(strata.channel().await);
    let mut kv = strata.kv().await;
    let granted = Instant::now();
    let id = lease
        .lease_grant(LeaseGrantRequest { id: 0, ttl: 2 })
        .await
        .unwrap()
        .into_inner()
        .id;
    kv.put(leased("x/1", id)).await.unwrap();
    kv.put(leased("x/2", id)).await.unwrap();
    kv.put(put("x/3", "stays")).await.unwrap();
    let mut watch = Stream::open(&strata).await;
    watch
        .send(RequestUnion::CreateRequest(create("x/", "x0", 0)))
        .await;
    assert!(watch.next(1).await[0].created);
    let deleted = watch.next(1).await.remove(0);
    let expired_after = granted.elapsed();
    assert!(expired_after >= Duration::from_secs(2), "{expired_after:?}");
    // The bound: no more than half a second late (generous here: a busy CI machine).
    assert!(expired_after < Duration::from_secs(4), "{expired_after:?}");
    let events: Vec<(i32, &[u8], i64)> = deleted
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (e.r#type, &kv.key[..], kv.mod_revision)
        })
        .collect();
    assert_eq!(events, vec![(1, &b"x/1"[..], 5), (1, &b"x/2"[..], 5)]);
    let left = kv.range(range("x/", "x0")).await.unwrap().into_inner();
    assert_eq!(left.kvs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Strata::start_in(dir.path(), &[]);
    let mut lease = LeaseClient::new(server.channel().await);
    lease
        .lease_grant(LeaseGrantRequest { id: 200, ttl: 60 })
        .await
        .unwrap();
    server.kv().await.put(leased("held", 200)).await.unwrap();
    drop(lease);
    server.kill();
    drop(server);

    let server = Strata::start_in(dir.path(), &[]);
    let mut lease = LeaseClient::new(server.channel().await);
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 200,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys.len()), (60, 1));
    assert!(ttl.ttl > 50, "a restart starts the TTL afresh: {}", ttl.ttl);
    lease
        .lease_revoke(LeaseRevokeRequest { id: 200 })
        .await
        .unwrap();
    let left = server
        .kv()
        .await
        .range(get("held"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.count, 0);
}

/// Persisted lease checkpoints (etcd's two flags; Strata's own `--lease-checkpoint-interval`
/// shortens etcd's fixed five minutes to two seconds): a restart gives a lease what was left of it
/// at its last checkpoint instead of a full TTL, and a keep-alive clears the record, so a lease
/// kept alive gets its full TTL again. (Without the flags every lease gets a full TTL, as in
/// `leases_survive_a_restart_with_their_keys`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_checkpoints_carry_what_is_left_of_a_lease_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--experimental-enable-lease-checkpoint",
                "--experimental-enable-lease-checkpoint-persist",
                "--lease-checkpoint-interval=2s",
            ]);
        Strata::start_command(command)
    };
    let mut server = start();
    let mut lease = LeaseClient::new(server.channel().await);
    for id in [1, 2] {
        lease
            .lease_grant(LeaseGrantRequest { id, ttl: 60 })
            .await
            .unwrap();
    }
    // The leases' time passing is what is tested: checkpoints at 2 s and 4 s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let mut answers = lease
        .lease_keep_alive(tokio_stream::iter([LeaseKeepAliveRequest { id: 2 }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.next().await.unwrap().unwrap().ttl, 60);
    // Within the interval after the keep-alive, before lease 2's next checkpoint.
    server.kill();
    drop(server);
    let server = start();
    let mut lease = LeaseClient::new(server.channel().await);
    let mut left = Vec::new();
    for id in [1, 2] {
        let ttl = lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await
            .unwrap()
            .into_inner();
        left.push(ttl.ttl);
    }
    assert!(
        (50..=56).contains(&left[0]),
        "lease 1 has {} s left",
        left[0]
    );
    assert!(left[1] >= 58, "lease 2, kept alive, has {} s left", left[1]);
}

#[test]
fn etcdctl_lease_commands() {
    let strata = Strata::start();
    let etcdctl = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(strata.address.to_string())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let granted = etcdctl(&["lease", "grant", "100"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_owned();
    assert!(granted.ends_with("granted with TTL(100s)\n"), "{granted}");
    etcdctl(&["put", "k", "v", "--lease", &id]);
    let ttl = etcdctl(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(100s)") && ttl.contains("attached keys([k])"),
        "{ttl}"
    );
    assert!(etcdctl(&["lease", "list"]).contains(&id));
    let kept = etcdctl(&["lease", "keep-alive", "--once", &id]);
    assert_eq!(kept, format!("lease {id} keepalived with TTL(100)\n"));
    assert_eq!(
        etcdctl(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(etcdctl(&["get", "k"]), "");
}
