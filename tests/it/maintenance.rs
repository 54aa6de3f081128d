//! Maintenance operations against Strata: defragmentation gives the space of compacted history back
//! and keeps every answer the same.

use crate::requests::*;
use crate::support::Strata;
use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use strata::proto::etcdserverpb::{DefragmentRequest, StatusRequest};
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
    let value = "v".repeat(4096);
    for i in 0..2000 {
        kv.put(put(&format!("big/{i:05}"), &value)).await.unwrap();
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
    assert_eq!(answer.header.unwrap().revision, head);
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
