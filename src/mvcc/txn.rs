//! Writes, as etcd applies them: each Put, DeleteRange or Txn takes the next revision if it changes
//! anything, its changes numbered by sub-revision; a Txn's compares (its nested txns' too) are all
//! evaluated against the state before it, and its reads see its own earlier writes.

use super::index::{Index, KeyRange, Live, Undo};
use super::lessor::Lessor;
use super::range::{self, PendingRange};
use super::Revision;
use crate::backend::{Backend, LogEntry};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// A write being applied at revision `rev`, collecting its changes.
struct TxnWrite<'a> {
    index: &'a mut Index,
    undo: &'a mut Undo,
    rev: i64,
    events: Vec<Event>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl<'a> TxnWrite<'a> {
    fn new(index: &'a mut Index, undo: &'a mut Undo) -> Self {
        let rev = index.current + 1;
        TxnWrite {
            index,
            undo,
            rev,
            events: Vec::new(),
        }
    }

    /// The revision this write's reads see: its own, once it has changed something.
    fn view(&self) -> i64 {
        if self.events.is_empty() {
            self.rev - 1
        } else {
            self.rev
        }
    }

    fn next_revision(&self) -> Revision {
        Revision {
            main: self.rev,
            sub: self.events.len() as i64,
        }
    }

    /// Applies a put whose preconditions (`check_put`) hold.
    fn put(&mut self, req: &PutRequest) -> PutResponse {
        crate::metrics::PUTS.inc();
        let prev_kv = req.prev_kv.then(|| self.index.get(&req.key)).flatten();
        let kept = self.index.live(&req.key);
        let live = Live {
            value: match (kept, req.ignore_value) {
                (Some(kept), true) => kept.value.clone(),
                // A copy: the request's buffer may be much larger than the value.
                _ => req.value[..].into(),
            },
            lease: match (kept, req.ignore_lease) {
                (Some(kept), true) => kept.lease,
                _ => req.lease,
            },
        };
        let key = bytes::Bytes::copy_from_slice(&req.key);
        let rev = self.next_revision();
        let kv = self.index.put(key, rev, live, self.undo);
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        PutResponse {
            header: header(self.rev),
            prev_kv,
        }
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        crate::metrics::DELETES.inc();
        let range = KeyRange::new(&req.key, &req.range_end);
        let doomed: Vec<KeyValue> = self
            .index
            .range_at(range, i64::MAX)
            .map(|(k, kr, newest)| self.index.found(k, kr, newest).kv)
            .collect();
        for kv in &doomed {
            let rev = self.next_revision();
            self.index.tombstone(&kv.key, rev, self.undo);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev.main,
                    ..Default::default()
                }),
                prev_kv: None,
            });
        }
        DeleteRangeResponse {
            header: header(self.view()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn range(&self, req: &RangeRequest) -> Result<PendingRange> {
        range::select(self.index, req, self.view())
    }

    /// Applies the branch that `path` chose for `txn` (and, recursively, for its nested txns).
    fn txn(
        &mut self,
        txn: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnOutcome> {
        let succeeded = path.next().expect("a path entry for every txn applied");
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(match &op.request {
                Some(Request::RequestRange(r)) => OpOutcome::Range(self.range(r)?),
                Some(Request::RequestPut(p)) => OpOutcome::Put(self.put(p)),
                Some(Request::RequestDeleteRange(d)) => OpOutcome::Delete(self.delete_range(d)),
                Some(Request::RequestTxn(t)) => OpOutcome::Txn(self.txn(t, path)?),
                None => OpOutcome::Empty,
            });
        }
        Ok(TxnOutcome {
            succeeded,
            revision: 0,
            ops: outcomes,
        })
    }

    fn into_entry(self) -> Option<LogEntry> {
        (!self.events.is_empty()).then(|| LogEntry {
            revision: self.rev,
            events: self.events,
        })
    }
}

/// What a txn did, with range results whose values may still have to be read from the backend.
pub struct TxnOutcome {
    succeeded: bool,
    /// The header revision; nested txns report none, as in etcd.
    revision: i64,
    ops: Vec<OpOutcome>,
}

enum OpOutcome {
    Range(PendingRange),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnOutcome),
    Empty,
}

impl TxnOutcome {
    fn pending_ranges<'s>(&'s mut self, out: &mut Vec<&'s mut PendingRange>) {
        for op in &mut self.ops {
            match op {
                OpOutcome::Range(r) if r.needs_backend() => out.push(r),
                OpOutcome::Txn(t) => t.pending_ranges(out),
                _ => {}
            }
        }
    }

    /// Reads from the backend the values the txn's ranges did not find in memory.
    pub async fn load(&mut self, backend: &dyn Backend) -> Result<()> {
        let mut pending = Vec::new();
        self.pending_ranges(&mut pending);
        for r in pending {
            r.load(backend).await?;
        }
        Ok(())
    }

    pub fn finish(self) -> TxnResponse {
        TxnResponse {
            header: Some(ResponseHeader {
                revision: self.revision,
                ..Default::default()
            }),
            succeeded: self.succeeded,
            responses: self
                .ops
                .into_iter()
                .map(|op| ResponseOp {
                    response: match op {
                        OpOutcome::Range(r) => Some(Response::ResponseRange(r.finish())),
                        OpOutcome::Put(p) => Some(Response::ResponsePut(p)),
                        OpOutcome::Delete(d) => Some(Response::ResponseDeleteRange(d)),
                        OpOutcome::Txn(t) => Some(Response::ResponseTxn(t.finish())),
                        OpOutcome::Empty => None,
                    },
                })
                .collect(),
        }
    }
}

/// Checks a put's preconditions against the state before it: ignore_value and ignore_lease need
/// the key to exist; a lease must exist.
fn check_put(index: &Index, leases: &Lessor, req: &PutRequest) -> Result<()> {
    if (req.ignore_value || req.ignore_lease) && index.get(&req.key).is_none() {
        return Err(Error::KeyNotFound);
    }
    check_lease(leases, req.lease)
}

fn check_lease(leases: &Lessor, lease: i64) -> Result<()> {
    if lease != 0 && !leases.contains(lease) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

pub fn put(
    index: &mut Index,
    undo: &mut Undo,
    leases: &Lessor,
    req: &PutRequest,
) -> Result<(PutResponse, Option<LogEntry>)> {
    // A plain Put checks its lease before its key, a Put in a txn the other way round (as etcd).
    check_lease(leases, req.lease)?;
    check_put(index, leases, req)?;
    let mut w = TxnWrite::new(index, undo);
    let resp = w.put(req);
    Ok((resp, w.into_entry()))
}

pub fn delete_range(
    index: &mut Index,
    undo: &mut Undo,
    req: &DeleteRangeRequest,
) -> (DeleteRangeResponse, Option<LogEntry>) {
    let mut w = TxnWrite::new(index, undo);
    let resp = w.delete_range(req);
    (resp, w.into_entry())
}

/// Deletes every key attached to lease `id`, in one revision if there are any; returns the
/// revision the response header reports.
pub fn revoke(index: &mut Index, undo: &mut Undo, id: i64) -> (i64, Option<LogEntry>) {
    let keys = index.lease_keys(id);
    let mut w = TxnWrite::new(index, undo);
    for key in keys {
        w.delete_range(&DeleteRangeRequest {
            key,
            ..Default::default()
        });
    }
    (w.view(), w.into_entry())
}

pub fn txn(
    index: &mut Index,
    undo: &mut Undo,
    leases: &Lessor,
    req: &TxnRequest,
) -> Result<(TxnOutcome, Option<LogEntry>)> {
    let mut path = Vec::new();
    compare_path(index, req, &mut path);
    let current = index.current;
    // etcd's first kept revision: -1 until the first compaction.
    let first = index.compacted;
    for_each_chosen_op(req, &mut path.iter().copied(), &mut |op| match op {
        Request::RequestPut(p) => check_put(index, leases, p),
        _ => Ok(()),
    })?;
    for_each_chosen_op(req, &mut path.iter().copied(), &mut |op| match op {
        Request::RequestRange(r) if r.revision != 0 && r.revision > current => {
            Err(Error::FutureRevision)
        }
        Request::RequestRange(r) if r.revision != 0 && r.revision < first => Err(Error::Compacted),
        _ => Ok(()),
    })?;
    crate::metrics::TXNS.inc();
    let mark = undo.mark();
    let mut w = TxnWrite::new(index, undo);
    let applied = w.txn(req, &mut path.iter().copied());
    let view = w.view();
    let entry = w.into_entry();
    match applied {
        Ok(mut outcome) => {
            outcome.revision = view;
            Ok((outcome, entry))
        }
        Err(e) => {
            index.rollback(undo, mark, current);
            Err(e)
        }
    }
}

/// Evaluates the compares of `txn` and of the nested txns on its chosen branches, depth first, all
/// against the state before the txn.
fn compare_path(index: &Index, txn: &TxnRequest, path: &mut Vec<bool>) {
    let succeeded = txn.compare.iter().all(|c| compare(index, c));
    path.push(succeeded);
    for op in if succeeded {
        &txn.success
    } else {
        &txn.failure
    } {
        if let Some(Request::RequestTxn(nested)) = &op.request {
            compare_path(index, nested, path);
        }
    }
}

fn for_each_chosen_op<'r>(
    txn: &'r TxnRequest,
    path: &mut impl Iterator<Item = bool>,
    f: &mut impl FnMut(&'r Request) -> Result<()>,
) -> Result<()> {
    let succeeded = path.next().expect("a path entry for every txn");
    for op in if succeeded {
        &txn.success
    } else {
        &txn.failure
    } {
        match &op.request {
            Some(Request::RequestTxn(nested)) => for_each_chosen_op(nested, path, f)?,
            Some(request) => f(request)?,
            None => {}
        }
    }
    Ok(())
}

/// A compare over a range holds if it holds for every key in it; over no key it compares a zero
/// key-value, except on VALUE, which then never holds.
fn compare(index: &Index, c: &Compare) -> bool {
    let mut any = false;
    for (key, kr, newest) in index.range_at(KeyRange::new(&c.key, &c.range_end), i64::MAX) {
        any = true;
        if !compare_kv(c, &index.found(key, kr, newest).kv) {
            return false;
        }
    }
    any || (c.target != CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default()))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use CompareTarget as T;
    // An operand of the wrong kind for the target counts as zero (or empty), as in etcd.
    let int = |have: i64| {
        let wanted = match (CompareTarget::try_from(c.target), &c.target_union) {
            (Ok(T::Version), Some(TargetUnion::Version(v)))
            | (Ok(T::Create), Some(TargetUnion::CreateRevision(v)))
            | (Ok(T::Mod), Some(TargetUnion::ModRevision(v)))
            | (Ok(T::Lease), Some(TargetUnion::Lease(v))) => *v,
            _ => 0,
        };
        have.cmp(&wanted)
    };
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(T::Value) => match &c.target_union {
            Some(TargetUnion::Value(v)) => kv.value[..].cmp(&v[..]),
            _ => kv.value[..].cmp(&[][..]),
        },
        Ok(T::Version) => int(kv.version),
        Ok(T::Create) => int(kv.create_revision),
        Ok(T::Mod) => int(kv.mod_revision),
        Ok(T::Lease) => int(kv.lease),
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}
