//! The v3lock service: the first waiter holds the lock, the next gets it when the key is deleted
//! (unlock or lease revoke), and a waiter that gives up leaves the queue. Also through etcdctl.

use crate::requests::*;
use crate::support::{etcdctl_binary, Strata};
use crate::watch::{create, Stream};
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use strata::proto::v3lockpb::lock_client::LockClient;
use strata::proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

async fn grant(lease: &mut LeaseClient<Channel>) -> i64 {
    lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

fn lock_request(lease: i64) -> LockRequest {
    LockRequest {
        name: b("job"),
        lease,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_take_the_lock_in_turn() {
    let strata = Strata::start();
    let channel = strata.channel().await;
    let mut lease = LeaseClient::new(channel.clone());
    let mut locks = LockClient::new(channel.clone());
    let mut queue = Stream::open(&strata).await;
    queue
        .send(RequestUnion::CreateRequest(create("job/", "job0", 0)))
        .await;
    assert!(queue.next(1).await[0].created);

    let first = grant(&mut lease).await;
    let held = locks.lock(lock_request(first)).await.unwrap().into_inner();
    assert_eq!(held.key, format!("job/{first:x}"));
    assert_eq!(queue.next(1).await[0].events.len(), 1, "the holder's key");

    let second = grant(&mut lease).await;
    let third = grant(&mut lease).await;
    let waiter = |id: i64| {
        let mut locks = LockClient::new(channel.clone());
        tokio::spawn(async move { locks.lock(lock_request(id)).await })
    };
    let second_waits = waiter(second);
    assert_eq!(
        queue.next(1).await[0].events.len(),
        1,
        "the second waiter's key"
    );
    let third_waits = waiter(third);
    assert_eq!(
        queue.next(1).await[0].events.len(),
        1,
        "the third waiter's key"
    );
    assert!(!second_waits.is_finished() && !third_waits.is_finished());

    locks.unlock(UnlockRequest { key: held.key }).await.unwrap();
    let got = second_waits.await.unwrap().unwrap().into_inner();
    assert_eq!(got.key, format!("job/{second:x}"));
    assert!(!third_waits.is_finished());

    // The holder's lease goes: its key with it, and the lock passes on.
    lease
        .lease_revoke(LeaseRevokeRequest { id: second })
        .await
        .unwrap();
    let got = third_waits.await.unwrap().unwrap().into_inner();
    assert_eq!(got.key, format!("job/{third:x}"));

    // A waiter that gives up leaves the queue: its key is deleted.
    let fourth = grant(&mut lease).await;
    let gives_up = waiter(fourth);
    let events = queue.next(3).await;
    let queued = events.last().unwrap().events[0]
        .kv
        .as_ref()
        .unwrap()
        .key
        .clone();
    assert_eq!(queued, format!("job/{fourth:x}"));
    gives_up.abort();
    let gone = queue.next(1).await.remove(0);
    assert_eq!(gone.events[0].r#type, 1, "deleted: {gone:?}");
    assert_eq!(gone.events[0].kv.as_ref().unwrap().key, queued);
}

#[test]
fn etcdctl_lock_runs_a_command_under_the_lock() {
    let strata = Strata::start();
    let out = std::process::Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(strata.address.to_string())
        .args(["lock", "job", "echo", "inside"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside\n");
}
