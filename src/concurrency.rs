//! etcd's concurrency recipes, run inside the server for the v3lock and v3election services as etcd
//! runs them: a lock (or an election) is a queue of keys under its name, each owned by a lease; the
//! key created first holds the lock (leads), and each other waiter waits for the deletion of the key
//! created just before its own.
//!
//! For lock `job` with waiters on leases 0x1a and 0x2b:
//!
//! ```text
//! job/1a   create_revision 7   ← holds the lock
//! job/2b   create_revision 9   ← waits for job/1a to be deleted
//! ```

use crate::error::{Error, Result};
use crate::mvcc::watch::{Notice, NoticeKind, WatchSpec, WatcherKey};
use crate::mvcc::Store;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::proto::v3electionpb::LeaderKey;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The TTL of the lease a lock request without one gets (etcd's default session TTL).
const SESSION_TTL: i64 = 60;

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// The first-created (`ascend`) or last-created key under `prefix`, created at or before
/// `max_create` if it is set.
fn by_creation(prefix: &Bytes, ascend: bool, max_create: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if ascend {
            SortOrder::Ascend
        } else {
            SortOrder::Descend
        } as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

/// A txn that deletes `key` if it is still the one created at `created`.
fn delete_if_created_at(key: &Bytes, created: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![create_is(key, created)],
        success: vec![op(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        }))],
        failure: Vec::new(),
    }
}

/// Takes a waiter's key out of the queue if its request ends before it is served (the client went
/// away, or an error), as etcd's mutex and election do.
struct Abandon {
    store: Arc<Store>,
    cleanup: Option<TxnRequest>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            let store = self.store.clone();
            tokio::spawn(async move {
                let _ = store.txn(cleanup, None).await;
            });
        }
    }
}

/// The key a lease queues under `prefix`: the prefix and the lease id in hex.
fn queue_key(prefix: &Bytes, lease: i64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(key)
}

fn queue_prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
}

/// The keys a lock or election named `name` queues under, as a range: `[name/, name0)`.
pub fn queue_range(name: &[u8]) -> (Bytes, Bytes) {
    let prefix = queue_prefix(name);
    let end = prefix_end(&prefix);
    (prefix, end)
}

/// `lease`, or a new lease of etcd's default session TTL for 0.
async fn session_lease(store: &Store, lease: i64) -> Result<i64> {
    match lease {
        0 => Ok(store.lease_grant(0, SESSION_TTL).await?.0),
        id => Ok(id),
    }
}

fn create_is(key: &Bytes, created: i64) -> Compare {
    Compare {
        key: key.clone(),
        target: CompareTarget::Create as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::CreateRevision(created)),
        range_end: Bytes::new(),
    }
}

fn range_of(answer: &TxnResponse, i: usize) -> Vec<KeyValue> {
    match answer.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

/// Acquires lock `name` for `lease` (0: a new lease of 60 s), waiting as long as it takes; returns
/// the lock's key, which the lease owns, and the header of the read that saw it acquired.
pub async fn lock(store: &Arc<Store>, name: &[u8], lease: i64) -> Result<(Bytes, ResponseHeader)> {
    let lease = session_lease(store, lease).await?;
    let prefix = queue_prefix(name);
    let key = queue_key(&prefix, lease);
    let owner = op(Request::RequestRange(by_creation(&prefix, true, 0)));
    let acquire = TxnRequest {
        compare: vec![create_is(&key, 0)],
        success: vec![
            op(Request::RequestPut(PutRequest {
                key: key.clone(),
                lease,
                ..Default::default()
            })),
            owner.clone(),
        ],
        // This lease already waits for or holds the lock: take its place again.
        failure: vec![
            op(Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })),
            owner,
        ],
    };
    let answer = store.txn(acquire, None).await?;
    let header = answer.header.unwrap_or_default();
    let my_revision = if answer.succeeded {
        header.revision
    } else {
        range_of(&answer, 0)
            .first()
            .map_or(0, |kv| kv.create_revision)
    };
    let holder = range_of(&answer, 1);
    if holder
        .first()
        .is_none_or(|kv| kv.create_revision == my_revision)
    {
        return Ok((key, header));
    }
    let mut waiting = Abandon {
        store: store.clone(),
        cleanup: Some(delete_if_created_at(&key, my_revision)),
    };
    wait_deletes(store, &prefix, my_revision - 1).await?;
    let mine = store
        .range(&RangeRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await?;
    waiting.cleanup = None;
    if mine.kvs.is_empty() {
        // The lease expired while waiting.
        return Err(Error::SessionExpired);
    }
    Ok((key, mine.header.unwrap_or_default()))
}

/// Campaigns in election `name` with `value` for `lease` (0: a new lease of 60 s), waiting until
/// this campaign leads; returns the header of the campaign's txn and the leader key.
pub async fn campaign(
    store: &Arc<Store>,
    name: &[u8],
    lease: i64,
    value: Bytes,
) -> Result<(ResponseHeader, LeaderKey)> {
    let lease = session_lease(store, lease).await?;
    let prefix = queue_prefix(name);
    let key = queue_key(&prefix, lease);
    let enter = TxnRequest {
        compare: vec![create_is(&key, 0)],
        success: vec![op(Request::RequestPut(PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease,
            ..Default::default()
        }))],
        failure: vec![op(Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        }))],
    };
    let answer = store.txn(enter, None).await?;
    let header = answer.header.unwrap_or_default();
    let mut leader = LeaderKey {
        name: Bytes::copy_from_slice(name),
        key: key.clone(),
        rev: header.revision,
        lease,
    };
    if !answer.succeeded {
        let entered = range_of(&answer, 0);
        let kv = entered.first().ok_or(Error::ElectionNotLeader)?;
        leader.rev = kv.create_revision;
        if kv.value != value {
            if let Err(e) = proclaim(store, &leader, value).await {
                let _ = resign(store, &leader).await;
                return Err(e);
            }
        }
    }
    let mut waiting = Abandon {
        store: store.clone(),
        cleanup: Some(delete_if_created_at(&key, leader.rev)),
    };
    wait_deletes(store, &prefix, leader.rev - 1).await?;
    waiting.cleanup = None;
    Ok((header, leader))
}

/// Puts a new value under the leader key, if it still leads.
pub async fn proclaim(store: &Store, leader: &LeaderKey, value: Bytes) -> Result<ResponseHeader> {
    let answer = store
        .txn(
            TxnRequest {
                compare: vec![create_is(&leader.key, leader.rev)],
                success: vec![op(Request::RequestPut(PutRequest {
                    key: leader.key.clone(),
                    value,
                    lease: leader.lease,
                    ..Default::default()
                }))],
                failure: Vec::new(),
            },
            None,
        )
        .await?;
    if !answer.succeeded {
        return Err(Error::ElectionNotLeader);
    }
    Ok(answer.header.unwrap_or_default())
}

/// Gives up leadership (or a place in the queue): deletes the leader key if it is still this one.
pub async fn resign(store: &Store, leader: &LeaderKey) -> Result<ResponseHeader> {
    let answer = store
        .txn(delete_if_created_at(&leader.key, leader.rev), None)
        .await?;
    Ok(answer.header.unwrap_or_default())
}

/// The current leader of election `name`: the key created first under it.
pub async fn leader(store: &Store, name: &[u8]) -> Result<(ResponseHeader, KeyValue)> {
    let first = store
        .range(&by_creation(&queue_prefix(name), true, 0))
        .await?;
    let kv = first
        .kvs
        .into_iter()
        .next()
        .ok_or(Error::ElectionNoLeader)?;
    Ok((first.header.unwrap_or_default(), kv))
}

/// Sends `to` every leader of election `name` and every value it proclaims, in order, for as long
/// as `to` is open.
pub async fn observe(
    store: &Store,
    name: &[u8],
    to: mpsc::Sender<(ResponseHeader, KeyValue)>,
) -> Result<()> {
    let prefix = queue_prefix(name);
    loop {
        let first = store.range(&by_creation(&prefix, true, 0)).await?;
        let revision = first.header.map_or(0, |h| h.revision);
        let (header, kv) = match first.kvs.into_iter().next() {
            Some(kv) => (first.header.unwrap_or_default(), kv),
            None => {
                // Wait for the first key put under the election.
                let spec = WatchSpec {
                    key: prefix.clone(),
                    range_end: prefix_end(&prefix),
                    start_revision: revision,
                    no_delete: true,
                    ..Default::default()
                };
                let mut watching = Watching::start(store, spec).await?;
                let kv = loop {
                    let (_, events) = watching.next_events().await?;
                    if let Some(kv) = events.into_iter().find_map(|e| e.kv) {
                        break kv;
                    }
                };
                let header = ResponseHeader {
                    revision: kv.mod_revision,
                    ..Default::default()
                };
                (header, kv)
            }
        };
        let spec = WatchSpec {
            key: kv.key.clone(),
            start_revision: header.revision + 1,
            ..Default::default()
        };
        if to.send((header, kv)).await.is_err() {
            return Ok(());
        }
        let mut watching = Watching::start(store, spec).await?;
        'leading: loop {
            let (revision, events) = watching.next_events().await?;
            for event in events {
                if event.r#type == EventType::Delete as i32 {
                    break 'leading;
                }
                let header = ResponseHeader {
                    revision,
                    ..Default::default()
                };
                let Some(kv) = event.kv else { continue };
                if to.send((header, kv)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Waits until no key under `prefix` created at or before `max_create` is left.
async fn wait_deletes(store: &Store, prefix: &Bytes, max_create: i64) -> Result<()> {
    loop {
        let last = store.range(&by_creation(prefix, false, max_create)).await?;
        let Some(kv) = last.kvs.first() else {
            return Ok(());
        };
        let revision = last.header.map_or(0, |h| h.revision);
        wait_delete(store, kv.key.clone(), revision).await?;
    }
}

/// A watcher of the store for a recipe's own use, stopped when dropped.
struct Watching<'s> {
    store: &'s Store,
    key: WatcherKey,
    heard: mpsc::Receiver<Notice>,
}

impl<'s> Watching<'s> {
    async fn start(store: &'s Store, spec: WatchSpec) -> Result<Watching<'s>> {
        let (notices, heard) = mpsc::channel(16);
        let created = notices.reserve().await.map_err(|_| Error::Stopped)?;
        let key = store.watch(spec, notices.clone(), created);
        Ok(Watching { store, key, heard })
    }

    /// The next events, with the revision their response reports.
    async fn next_events(&mut self) -> Result<(i64, Vec<Event>)> {
        while let Some(notice) = self.heard.recv().await {
            match notice.kind {
                NoticeKind::Events(events) => return Ok((notice.revision, events)),
                NoticeKind::Compacted(_) => return Err(Error::Compacted),
                _ => {}
            }
        }
        Err(Error::Stopped)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.store.unwatch(self.key);
    }
}

/// Waits for `key` to be deleted, looking from `revision` on.
async fn wait_delete(store: &Store, key: Bytes, revision: i64) -> Result<()> {
    let spec = WatchSpec {
        key,
        start_revision: revision,
        no_put: true,
        ..Default::default()
    };
    let mut watching = Watching::start(store, spec).await?;
    loop {
        let (_, events) = watching.next_events().await?;
        if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
            return Ok(());
        }
    }
}

/// Releases a lock by deleting its key.
pub async fn unlock(store: &Store, key: Bytes) -> Result<ResponseHeader> {
    let deleted = store
        .delete_range(
            DeleteRangeRequest {
                key,
                ..Default::default()
            },
            None,
        )
        .await?;
    Ok(deleted.header.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"job/"), Bytes::from_static(b"job0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }
}
