//! The lessor's tasks: grants recorded and, on a shared backend, keep-alives renewed, each in
//! batches; and leases revoked as they expire, by this process's clock on a backend of its own or by
//! the keeper role on a shared one.
//!
//! Each is a task of its own that meets the store only through queues: expiry revokes through the
//! writer's queue like a client's revoke, so the writer stays the only one to delete keys.

use super::lessor::Lessor;
use super::queue::{Expire, Revoke, WriteQueue, MAX_BATCH};
use crate::backend::Backend;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

/// A keep-alive for a lease, answered with its TTL or None.
pub(super) type Renewal = (i64, oneshot::Sender<Result<Option<i64>>>);

/// A lease to grant, as (id, TTL), answered with whether it was (false: the id is taken).
pub(super) type Grant = ((i64, i64), oneshot::Sender<Result<bool>>);

/// How often the lease keeper of a shared backend looks for leases whose time is up.
const KEEPER_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// Expired leases revoked per look.
const EXPIRED_PER_LOOK: usize = 1000;

/// On a backend whose leases this process times: records the remaining TTL of the leases whose
/// checkpoint is due (see [`Lessor::due_checkpoints`]), every `every` or sooner, in one call.
pub(super) async fn checkpoint_leases(
    lessor: Arc<Mutex<Lessor>>,
    backend: Arc<dyn Backend>,
    every: std::time::Duration,
) {
    let Some(checkpoints) = backend.lease_checkpoints() else {
        return;
    };
    loop {
        let next = lessor.lock().expect("lessor lock").next_checkpoint();
        let soonest = Instant::now() + every;
        tokio::time::sleep_until(next.map_or(soonest, |at| at.min(soonest))).await;
        let due = lessor
            .lock()
            .expect("lessor lock")
            .due_checkpoints(Instant::now());
        if due.is_empty() {
            continue;
        }
        let recorded = checkpoints.checkpoint_leases(&due).await;
        if let Err(e) = &recorded {
            tracing::warn!(error = %e, "could not record the leases' remaining TTLs");
        }
        lessor
            .lock()
            .expect("lessor lock")
            .checkpointed(&due, recorded.is_ok(), Instant::now());
    }
}

/// On a shared backend: while this frontend holds the lease-keeper role, revokes the leases whose
/// time is up by the backend's clock, through the writer like a client's revoke.
pub(super) async fn keep_leases(backend: Arc<dyn Backend>, writes: WriteQueue) {
    let Some(shared) = backend.shared() else {
        return;
    };
    loop {
        tokio::time::sleep(KEEPER_INTERVAL).await;
        let expired = match shared.keep_leases().await {
            Ok(true) => shared.expired_leases(EXPIRED_PER_LOOK).await,
            Ok(false) => continue,
            Err(e) => Err(e),
        };
        let expired = match expired {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(error = %e, "lease keeper could not look for expired leases");
                continue;
            }
        };
        let mut answers = Vec::with_capacity(expired.len());
        for id in expired {
            tracing::debug!(lease = id, "lease expired: revoking it");
            let Ok(answer) = writes.enqueue(Expire(id), None).await else {
                return;
            };
            answers.push(answer);
        }
        // Revoked (or gone already) before the next look, which would find them again.
        for answer in answers {
            let _ = answer.await;
        }
    }
}

/// Records the grants waiting at one moment in one backend commit; the lessor has those recorded
/// before they are answered. On a shared backend, where it remembers the leases seen lately (see
/// the lessor's module), it forgets those not seen lately first.
pub(super) async fn record_grants(
    backend: Arc<dyn Backend>,
    lessor: Arc<Mutex<Lessor>>,
    granted: Arc<Notify>,
    mut queue: mpsc::Receiver<Grant>,
) {
    let shared = backend.shared().is_some();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let leases: Vec<(i64, i64)> = batch.iter().map(|(lease, _)| *lease).collect();
        match backend.put_leases(&leases).await {
            Ok(recorded) => {
                let now = Instant::now();
                let mut lessor = lessor.lock().expect("lessor lock");
                if shared {
                    lessor.forget_unseen(now);
                }
                for (&(id, ttl), _) in leases.iter().zip(&recorded).filter(|(_, r)| **r) {
                    lessor.grant(id, ttl, now);
                }
                drop(lessor);
                granted.notify_one();
                for ((_, reply), recorded) in batch.drain(..).zip(recorded) {
                    let _ = reply.send(Ok(recorded));
                }
            }
            Err(e) => {
                let e = Error::from(e);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// On a shared backend: renews the keep-alives waiting at one moment in one backend call; the
/// lessor remembers the leases renewed as seen now.
pub(super) async fn renew_leases(
    backend: Arc<dyn Backend>,
    lessor: Arc<Mutex<Lessor>>,
    mut queue: mpsc::Receiver<Renewal>,
) {
    let Some(shared) = backend.shared() else {
        return;
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        match shared.renew_leases(&ids).await {
            Ok(renewed) => {
                let renewed: std::collections::HashMap<i64, i64> = renewed.into_iter().collect();
                let now = Instant::now();
                let mut seen = lessor.lock().expect("lessor lock");
                for (&id, &ttl) in &renewed {
                    seen.grant(id, ttl, now);
                }
                drop(seen);
                for (id, reply) in batch.drain(..) {
                    let _ = reply.send(Ok(renewed.get(&id).copied()));
                }
            }
            Err(e) => {
                let e = Error::from(e);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Revokes leases as they expire, through the writer like a client's revoke.
pub(super) async fn expire_leases(
    lessor: Arc<Mutex<Lessor>>,
    granted: Arc<Notify>,
    writes: WriteQueue,
) {
    loop {
        let next = lessor.lock().expect("lessor lock").next_deadline();
        match next {
            Some(deadline) => tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = granted.notified() => continue,
            },
            None => {
                granted.notified().await;
                continue;
            }
        }
        let expired = lessor
            .lock()
            .expect("lessor lock")
            .take_expired(Instant::now());
        for id in expired {
            // The answer is not awaited: a revoke that fails is retried when the lease comes due
            // again.
            if writes.enqueue(Revoke(id), None).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::mvcc::lessor;
    use crate::mvcc::store::tests::{key, put_request};
    use crate::mvcc::watch::WatchSpec;
    use crate::mvcc::Store;
    use crate::proto::etcdserverpb::{PutRequest, RangeRequest};
    use crate::proto::mvccpb::event::EventType;
    use std::time::Duration;

    /// With the clock paused, a lease expires exactly one TTL after its grant (or last renewal),
    /// and its keys are deleted in one revision that watchers see.
    #[tokio::test(start_paused = true)]
    async fn expired_lease_deletes_its_keys_in_one_revision() {
        use crate::mvcc::watch::NoticeKind;
        let backend: Arc<dyn Backend> = Arc::new(Embedded::in_memory().unwrap());
        let store = Store::open(backend).await.unwrap();
        let start = Instant::now();
        let (id, ttl) = store.lease_grant(0, 1).await.unwrap();
        assert_eq!(ttl, lessor::MIN_LEASE_TTL);
        for k in [0, 1] {
            store
                .put(
                    PutRequest {
                        lease: id,
                        ..put_request(k, k)
                    },
                    None,
                )
                .await
                .unwrap();
        }
        store.put(put_request(2, 2), None).await.unwrap();
        let (notices, mut heard) = mpsc::channel(16);
        let spec = WatchSpec {
            key: key(0),
            range_end: key(9),
            ..Default::default()
        };
        store.watch(spec, notices.clone(), notices.reserve().await.unwrap());
        assert_eq!(heard.recv().await.unwrap().kind, NoticeKind::Created);
        // Kept alive after one second: due at three.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(store.lease_renew(id).await.unwrap(), Some(2));
        let deleted = heard.recv().await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        let NoticeKind::Events(events) = deleted.kind else {
            panic!("expected the deletes, got {deleted:?}");
        };
        let deletes: Vec<(bytes::Bytes, i64)> = events
            .iter()
            .map(|e| {
                (
                    e.kv.as_ref().unwrap().key.clone(),
                    e.kv.as_ref().unwrap().mod_revision,
                )
            })
            .collect();
        assert_eq!(deletes, vec![(key(0), 5), (key(1), 5)]);
        assert!(events.iter().all(|e| e.r#type == EventType::Delete as i32));
        assert_eq!(store.lease_time_to_live(id, false).await.unwrap(), None);
        assert_eq!(
            store.lease_revoke(id, None).await.unwrap_err(),
            Error::LeaseNotFound
        );
        let all = RangeRequest {
            key: key(0),
            range_end: key(9),
            ..Default::default()
        };
        assert_eq!(store.range(&all).await.unwrap().kvs.len(), 1);
    }
}
