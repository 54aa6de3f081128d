//! etcd's concurrency recipes, run inside the server for the v3lock service as etcd runs them: a
//! lock is a key under the lock's name, owned by a lease; the waiter whose key was created first
//! holds the lock, and each other waiter waits for the deletion of the key created just before its
//! own.
//!
//! For lock `job` with waiters on leases 0x1a and 0x2b:
//!
//! ```text
//! job/1a   create_revision 7   ← holds the lock
//! job/2b   create_revision 9   ← waits for job/1a to be deleted
//! ```

use crate::error::{Error, Result};
use crate::mvcc::watch::{NoticeKind, WatchSpec};
use crate::mvcc::Store;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use crate::proto::mvccpb::event::EventType;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The TTL of the lease a lock request without one gets (etcd's default session TTL).
const SESSION_TTL: i64 = 60;

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bytes {
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

/// Deletes a waiter's key if its lock request ends before the lock is acquired (the client went
/// away, or an error), as etcd's mutex does.
struct Waiting {
    store: Arc<Store>,
    key: Option<Bytes>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let store = self.store.clone();
            tokio::spawn(async move {
                let _ = store
                    .delete_range(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await;
            });
        }
    }
}

/// Acquires lock `name` for `lease` (0: a new lease of 60 s), waiting as long as it takes; returns
/// the lock's key, which the lease owns, and the header of the read that saw it acquired.
pub async fn lock(store: &Arc<Store>, name: &[u8], lease: i64) -> Result<(Bytes, ResponseHeader)> {
    let lease = match lease {
        0 => store.lease_grant(0, SESSION_TTL).await?.0,
        id => id,
    };
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let prefix = Bytes::from(prefix);
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    let key = Bytes::from(key);
    let owner = op(Request::RequestRange(by_creation(&prefix, true, 0)));
    let acquire = TxnRequest {
        compare: vec![Compare {
            key: key.clone(),
            target: CompareTarget::Create as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: Bytes::new(),
        }],
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
    let answer = store.txn(acquire).await?;
    let header = answer.header.unwrap_or_default();
    let range = |i: usize| match answer.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    };
    let my_revision = if answer.succeeded {
        header.revision
    } else {
        range(0).first().map_or(0, |kv| kv.create_revision)
    };
    let holder = range(1);
    if holder
        .first()
        .is_none_or(|kv| kv.create_revision == my_revision)
    {
        return Ok((key, header));
    }
    let mut waiting = Waiting {
        store: store.clone(),
        key: Some(key.clone()),
    };
    wait_deletes(store, &prefix, my_revision - 1).await?;
    let mine = store
        .range(&RangeRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await?;
    waiting.key = None;
    if mine.kvs.is_empty() {
        // The lease expired while waiting.
        return Err(Error::SessionExpired);
    }
    Ok((key, mine.header.unwrap_or_default()))
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

/// Stops a watcher when dropped.
struct Watching<'s> {
    store: &'s Store,
    key: crate::mvcc::watch::WatcherKey,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.store.unwatch(self.key);
    }
}

/// Waits for `key` to be deleted, looking from `revision` on.
async fn wait_delete(store: &Store, key: Bytes, revision: i64) -> Result<()> {
    let (notices, mut heard) = mpsc::channel(16);
    let created = notices.reserve().await.map_err(|_| Error::Stopped)?;
    let spec = WatchSpec {
        key,
        start_revision: revision,
        no_put: true,
        ..Default::default()
    };
    let _watching = Watching {
        store,
        key: store.watch(spec, notices.clone(), created),
    };
    drop(notices);
    while let Some(notice) = heard.recv().await {
        match notice.kind {
            NoticeKind::Events(events)
                if events.iter().any(|e| e.r#type == EventType::Delete as i32) =>
            {
                return Ok(())
            }
            NoticeKind::Compacted(_) => return Err(Error::Compacted),
            _ => {}
        }
    }
    Err(Error::Stopped)
}

/// Releases a lock by deleting its key.
pub async fn unlock(store: &Store, key: Bytes) -> Result<ResponseHeader> {
    let deleted = store
        .delete_range(DeleteRangeRequest {
            key,
            ..Default::default()
        })
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
