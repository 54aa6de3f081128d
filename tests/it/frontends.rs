//! Several Strata frontends on one PostgreSQL database serve one etcd cluster: a write through one
//! is read and watched through the others, concurrent writes through all get one revision sequence,
//! and a frontend killed with SIGKILL loses nothing and comes back up to date.

use crate::requests::*;
use crate::support::Strata;
use crate::watch::{create, Stream};
use strata::proto::etcdserverpb::cluster_client::ClusterClient;
use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::{MemberListRequest, StatusRequest};

async fn status(s: &Strata) -> strata::proto::etcdserverpb::StatusResponse {
    let mut m = MaintenanceClient::new(s.channel().await);
    m.status(StatusRequest {}).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontends_share_writes_reads_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    let (sa, sb) = (status(&a).await, status(&b).await);
    let (ha, hb) = (sa.header.unwrap(), sb.header.unwrap());
    assert_eq!(ha.cluster_id, hb.cluster_id);
    assert_ne!(ha.member_id, hb.member_id);
    // Each lists both, by id, with its client URL; clients that sync endpoints find them all.
    for s in [&a, &b] {
        let mut cluster = ClusterClient::new(s.channel().await);
        let list = cluster.member_list(MemberListRequest::default()).await;
        let members = list.unwrap().into_inner().members;
        let mut expected = vec![
            (ha.member_id, "a", a.endpoint()),
            (hb.member_id, "b", b.endpoint()),
        ];
        expected.sort();
        let listed: Vec<(u64, &str, String)> = members
            .iter()
            .map(|m| (m.id, m.name.as_str(), m.client_ur_ls.join(",")))
            .collect();
        assert_eq!(listed, expected);
    }

    let mut watch = Stream::open(&b).await;
    watch
        .send(RequestUnion::CreateRequest(create("k/", "k0", 0)))
        .await;
    assert!(watch.next(1).await[0].created);

    let (mut kv_a, mut kv_b) = (a.kv().await, b.kv().await);
    let first = kv_a.put(put("k/1", "from a")).await.unwrap().into_inner();
    assert_eq!(first.header.unwrap().revision, 2);
    let read = kv_b.range(get("k/1")).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].value, &b"from a"[..]);
    assert_eq!(read.header.unwrap().revision, 2);
    let seen = watch.next(1).await;
    assert_eq!(seen[0].events[0].kv.as_ref().unwrap().mod_revision, 2);

    // Writers on both at once: one revision sequence, every write seen once by the watcher.
    let writers: Vec<_> = [kv_a.clone(), kv_b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, mut kv)| {
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..50 {
                    let r = kv.put(put(&format!("k/{w}/{i}"), "v")).await.unwrap();
                    revisions.push(r.into_inner().header.unwrap().revision);
                }
                revisions
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for w in writers {
        revisions.extend(w.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (3..103).collect::<Vec<i64>>());
    let mut watched = Vec::new();
    while watched.len() < 100 {
        for response in watch.next(1).await {
            watched.extend(
                response
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision),
            );
        }
    }
    assert_eq!(watched, (3..103).collect::<Vec<i64>>());

    // A frontend killed mid-flight loses nothing acknowledged; restarted, it is up to date.
    a.kill();
    let after = kv_b.put(put("k/after", "b")).await.unwrap().into_inner();
    assert_eq!(after.header.unwrap().revision, 103);
    let a = Strata::frontend(dir.path(), "a");
    let all = a
        .kv()
        .await
        .range(range("k/", "k0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.kvs.len(), 102);
    assert_eq!(all.header.unwrap().revision, 103);
    assert_eq!(status(&a).await.header.unwrap().member_id, ha.member_id);
}
