//! Maintenance operations against Strata: defragmentation gives the space of compacted history back
//! and keeps every answer the same; the backend quota and its alarm.

use crate::requests::*;
use crate::support::Strata;
use strata::proto::etcdserverpb::alarm_request::AlarmAction;
use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use strata::proto::etcdserverpb::{
    AlarmRequest, AlarmType, DefragmentRequest, HashKvRequest, StatusRequest,
};
use tonic::transport::Channel;

async fn db_size(m: &mut MaintenanceClient<Channel>) -> i64 {
    m.status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .db_size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_gives_space_back_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = Strata::start_in(dir.path(), &[]);
    let mut kv = server.kv().await;
    let mut maintenance = MaintenanceClient::new(server.channel().await);
    // Values that do not compress, so that PostgreSQL stores them at their size as well.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = || {
        (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect::<String>()
    };
    for i in 0..2000 {
        kv.put(put(&format!("big/{i:05}"), &noise())).await.unwrap();
    }
    kv.put(put("kept", "1")).await.unwrap();
    let deleted = kv
        .delete_range(del("big/", "big0"))
        .await
        .unwrap()
        .into_inner();
    let head = deleted.header.unwrap().revision;
    kv.compact(compact(head, true)).await.unwrap();
    let size = |m: &mut MaintenanceClient<_>| {
        let mut m = m.clone();
        async move {
            m.status(StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .db_size
        }
    };
    let before = size(&mut maintenance).await;
    let answer = maintenance
        .defragment(DefragmentRequest {})
        .await
        .unwrap()
        .into_inner();
    // As etcd's, the answer has no header.
    assert_eq!(answer.header, None);
    let after = db_size(&mut maintenance).await;
    assert!(after * 4 < before, "db size {before} before, {after} after");
    let all = kv
        .range(range("\u{0}", "\u{0}"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.kvs.len(), 1);
    assert_eq!(&all.kvs[0].key[..], b"kept");
    let next = kv.put(put("next", "x")).await.unwrap().into_inner();
    assert_eq!(next.header.unwrap().revision, head + 1);
}

/// Reaching --quota-backend-bytes raises NOSPACE: writes that add data are refused with etcd's error
/// until the alarm is disarmed; reads, deletes, compaction and defragmentation go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_raises_nospace_until_disarmed() {
    let server = Strata::start_with(&["--quota-backend-bytes", "2000000"]);
    let mut kv = server.kv().await;
    let mut maintenance = MaintenanceClient::new(server.channel().await);
    let value = "v".repeat(64 * 1024);
    let mut refused = None;
    for i in 0..200 {
        if let Err(status) = kv.put(put(&format!("k/{i:03}"), &value)).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("the quota is reached within 200 puts of 64 KiB");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "etcdserver: mvcc: database space exceeded"
    );
    let alarm = |action: AlarmAction, member_id: u64| AlarmRequest {
        action: action as i32,
        member_id,
        alarm: AlarmType::Nospace as i32,
    };
    let raised = maintenance
        .alarm(alarm(AlarmAction::Get, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.alarms.len(), 1);
    let member = raised.alarms[0].member_id;
    assert_eq!(member, raised.header.unwrap().member_id);
    let status = maintenance
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.errors,
        vec![format!("memberID:{member} alarm:NOSPACE ")]
    );

    // Small writes too are refused while the alarm is raised; reads and deletes are not.
    let small = kv.put(put("small", "x")).await.unwrap_err();
    assert_eq!(small.code(), tonic::Code::ResourceExhausted);
    assert!(kv.range(get("k/000")).await.is_ok());
    let deleted = kv.delete_range(del("k/", "k0")).await.unwrap().into_inner();
    let head = deleted.header.unwrap().revision;
    kv.compact(compact(head, true)).await.unwrap();
    maintenance.defragment(DefragmentRequest {}).await.unwrap();
    assert!(kv.put(put("small", "x")).await.is_err(), "still raised");

    let disarmed = maintenance
        .alarm(alarm(AlarmAction::Deactivate, member))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disarmed.alarms.len(), 1);
    kv.put(put("small", "x")).await.unwrap();
    let none = maintenance.alarm(alarm(AlarmAction::Get, 0)).await.unwrap();
    assert!(none.into_inner().alarms.is_empty());
}

/// HashKV hashes the same bytes as etcd: the same history gives the same hash at every revision,
/// before and after a compaction.
#[tokio::test]
async fn hash_kv_agrees_with_etcd() {
    let (etcd, strata) = crate::support::start_both();
    let history: Vec<Op> = vec![
        put("a", "1").into(),
        put("b", "1").into(),
        put("a", "2").into(),
        del("b", "").into(),
        txn(vec![], vec![op::put("c", "1"), op::put("d", "1")], vec![]).into(),
        put("a", "3").into(),
        del("c", "e").into(),
        put("c", "again").into(),
        compact(5, true).into(),
        put("e", "1").into(),
    ];
    let mut hashes = Vec::new();
    for server in [&etcd.process, &strata.process] {
        let mut kv = server.kv().await;
        for op in &history {
            run(&mut kv, op).await;
        }
        let mut maintenance = MaintenanceClient::new(server.channel().await);
        let mut seen = Vec::new();
        // Not 5, the compaction revision: etcd 3.5 hashes at it, Debian's 3.4 refuses.
        for revision in [0, 4, 6, 8, 10, 11, 12] {
            let answer = maintenance.hash_kv(HashKvRequest { revision }).await;
            seen.push(match answer {
                Ok(r) => {
                    let r = r.into_inner();
                    let header = r.header.unwrap().revision;
                    format!(
                        "{revision}: hash {} compacted {} at {header}",
                        r.hash, r.compact_revision
                    )
                }
                Err(s) => format!("{revision}: {:?} {}", s.code(), s.message()),
            });
        }
        hashes.push(seen);
    }
    assert_eq!(hashes[1], hashes[0]);
    let mut maintenance = MaintenanceClient::new(strata.channel().await);
    let at_compaction = maintenance.hash_kv(HashKvRequest { revision: 5 }).await;
    assert_eq!(at_compaction.unwrap().into_inner().compact_revision, 5);
}

/// A single member already leads; membership changes are refused, saying how members join.
#[tokio::test]
async fn leadership_and_membership_as_one_member() {
    use strata::proto::etcdserverpb::cluster_client::ClusterClient;
    use strata::proto::etcdserverpb::{MemberAddRequest, MoveLeaderRequest};
    let strata = Strata::start();
    let mut maintenance = MaintenanceClient::new(strata.channel().await);
    let me = maintenance
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .leader;
    maintenance
        .move_leader(MoveLeaderRequest { target_id: me })
        .await
        .unwrap();
    let elsewhere = maintenance
        .move_leader(MoveLeaderRequest { target_id: me ^ 1 })
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), tonic::Code::FailedPrecondition);
    assert_eq!(elsewhere.message(), "etcdserver: bad leader transferee");
    let add = ClusterClient::new(strata.channel().await)
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:2380".to_owned()],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(add.code(), tonic::Code::FailedPrecondition);
    assert!(
        add.message().contains("joins by starting"),
        "{}",
        add.message()
    );
}

/// Downgrade as a one-member etcd 3.5 with no downgrade under way answers it (Debian's etcd 3.4
/// has no Downgrade to compare with): the target must be the previous minor version; there is
/// nothing to cancel; enabling is refused with the way back that works, a snapshot.
#[tokio::test]
async fn downgrade_validates_and_refuses_to_enable() {
    use strata::proto::etcdserverpb::downgrade_request::DowngradeAction;
    use strata::proto::etcdserverpb::DowngradeRequest;
    let strata = Strata::start();
    let mut maintenance = MaintenanceClient::new(strata.channel().await);
    let downgrade = |action: DowngradeAction, version: &str| {
        let request = DowngradeRequest {
            action: action as i32,
            version: version.to_owned(),
        };
        let mut client = maintenance.clone();
        async move { client.downgrade(request).await }
    };
    for target in ["3.4", "3.4.0"] {
        let valid = downgrade(DowngradeAction::Validate, target).await.unwrap();
        assert_eq!(valid.into_inner().version, "3.5.0");
    }
    let refusals = [
        (
            DowngradeAction::Validate,
            "3.3",
            "invalid downgrade target version",
        ),
        (
            DowngradeAction::Validate,
            "three",
            "wrong downgrade target version format",
        ),
        (DowngradeAction::Cancel, "", "no inflight downgrade job"),
        (DowngradeAction::Enable, "3.4", "snapshot"),
    ];
    for (action, version, said) in refusals {
        let refused = downgrade(action, version).await.unwrap_err();
        assert!(
            refused.message().contains(said),
            "{action:?} {version}: {refused:?}"
        );
    }
    let wrong = downgrade(DowngradeAction::Enable, "3.3").await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
    let unknown = maintenance
        .downgrade(DowngradeRequest {
            action: 9,
            version: "3.4".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (tonic::Code::Unknown, "etcdserver: unknown method")
    );
}

/// Every Maintenance and Cluster answer of a fresh one-member etcd 3.5 and a fresh Strata, whole,
/// headers included (etcd leaves Defragment's and MoveLeader's without one). Only what names the
/// server apart is set aside: ids, sizes, raft indexes, the release, the URLs.
#[tokio::test]
async fn maintenance_and_cluster_answers_are_etcds() {
    use strata::proto::etcdserverpb::cluster_client::ClusterClient;
    use strata::proto::etcdserverpb::downgrade_request::DowngradeAction;
    use strata::proto::etcdserverpb::{
        DowngradeRequest, HashRequest, MemberListRequest, MoveLeaderRequest, ResponseHeader,
    };
    let (etcd, strata) = crate::support::start_both();
    fn anonymous(header: &mut Option<ResponseHeader>) {
        if let Some(h) = header {
            h.cluster_id = 0;
            h.member_id = 0;
        }
    }
    let mut answers = Vec::new();
    for server in [&*etcd, &*strata] {
        let mut maintenance = MaintenanceClient::new(server.channel().await);
        let mut cluster = ClusterClient::new(server.channel().await);
        let mut status = maintenance
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let me = status.leader;
        anonymous(&mut status.header);
        (status.version, status.db_size, status.db_size_in_use) = (String::new(), 0, 0);
        (status.leader, status.raft_index, status.raft_applied_index) = (0, 0, 0);
        let defragment = maintenance
            .defragment(DefragmentRequest {})
            .await
            .unwrap()
            .into_inner();
        let moved = maintenance
            .move_leader(MoveLeaderRequest { target_id: me })
            .await
            .unwrap()
            .into_inner();
        let mut alarms = maintenance
            .alarm(AlarmRequest::default())
            .await
            .unwrap()
            .into_inner();
        anonymous(&mut alarms.header);
        let mut hash = maintenance.hash(HashRequest {}).await.unwrap().into_inner();
        anonymous(&mut hash.header);
        hash.hash = 0;
        let mut downgrade = maintenance
            .downgrade(DowngradeRequest {
                action: DowngradeAction::Validate as i32,
                version: "3.4".to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        anonymous(&mut downgrade.header);
        let mut members = cluster
            .member_list(MemberListRequest { linearizable: true })
            .await
            .unwrap()
            .into_inner();
        anonymous(&mut members.header);
        for member in &mut members.members {
            assert_eq!(member.peer_ur_ls.len(), 1, "{member:?}");
            assert_eq!(member.client_ur_ls, vec![server.endpoint()]);
            (member.id, member.peer_ur_ls, member.client_ur_ls) = (0, Vec::new(), Vec::new());
            member.name = String::new();
        }
        answers.push(format!(
            "{status:?}\n{defragment:?}\n{moved:?}\n{alarms:?}\n{hash:?}\n{downgrade:?}\n{members:?}"
        ));
    }
    assert_eq!(answers[1], answers[0]);
}
