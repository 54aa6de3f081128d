//! The `etcd-client` crate, a Rust client written against etcd, used as an application would use it:
//! KV with options, txn, watch, leases, locks, elections and maintenance.

use crate::support::Strata;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LockOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_using_etcd_client() {
    let strata = Strata::start();
    let mut client = Client::connect([strata.endpoint()], None).await.unwrap();

    let mut watch = client
        .watch(
            "app/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();

    client.put("app/a", "1", None).await.unwrap();
    let previous = client
        .put("app/a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(previous.prev_key().unwrap().value(), b"1");
    client.put("app/b", "1", None).await.unwrap();

    let page = client
        .get("app/", Some(GetOptions::new().with_prefix().with_limit(1)))
        .await
        .unwrap();
    assert_eq!((page.kvs().len(), page.more(), page.count()), (1, true, 2));

    let swapped = client
        .txn(
            Txn::new()
                .when([Compare::value("app/a", CompareOp::Equal, "2")])
                .and_then([TxnOp::put("app/a", "3", None)])
                .or_else([TxnOp::get("app/a", None)]),
        )
        .await
        .unwrap();
    assert!(swapped.succeeded());

    let lease = client.lease_grant(30, None).await.unwrap();
    client
        .put(
            "app/leased",
            "x",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .unwrap();
    let ttl = client.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    client.lease_revoke(lease.id()).await.unwrap();

    // Every change above, in order, through the watch: puts of a, a, b, a, leased; the delete.
    let mut seen = Vec::new();
    let mut watch_id = 0;
    while seen.len() < 6 {
        let response = watch.message().await.unwrap().unwrap();
        watch_id = response.watch_id();
        for e in response.events() {
            let kv = e.kv().unwrap();
            seen.push((e.event_type(), kv.key_str().unwrap().to_owned()));
        }
    }
    let put = |k: &str| (EventType::Put, k.to_owned());
    assert_eq!(
        seen,
        vec![
            put("app/a"),
            put("app/a"),
            put("app/b"),
            put("app/a"),
            put("app/leased"),
            (EventType::Delete, "app/leased".to_owned()),
        ]
    );
    watch.cancel(watch_id).await.unwrap();
    let canceled = watch.message().await.unwrap().unwrap();
    assert!(canceled.canceled());

    let locked = client
        .lock("app-lock", Some(LockOptions::new()))
        .await
        .unwrap();
    client.unlock(locked.key()).await.unwrap();

    let status = client.status().await.unwrap();
    assert!(status.version().starts_with("3.5."));
    let revision = status.header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    let hash = client.hash_kv(0).await.unwrap();
    assert_eq!(hash.compact_version(), revision);
}
