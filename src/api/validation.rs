//! Request checks made before a request reaches mvcc, as etcd's gRPC layer makes them: they need no
//! state, only the request and the configured limits.

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::Bytes;
use prost::Message;
use std::collections::HashSet;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

pub fn range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    // etcd 3.5 crashes on an unknown sort target with an order set; 3.6 refuses unknown sort options
    // with this error, and so do we.
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn txn(r: &TxnRequest, limits: &Limits) -> Result<()> {
    check_txn(r, limits.max_txn_ops)?;
    check_duplicates(&r.success)?;
    check_duplicates(&r.failure)?;
    Ok(())
}

/// Requests that etcd proposes through raft are refused above `--max-request-bytes` (reads and
/// read-only txns are not).
pub fn size(request: &impl Message, limits: &Limits) -> Result<()> {
    if request.encoded_len() > limits.max_request_bytes {
        return Err(Error::RequestTooLarge);
    }
    Ok(())
}

/// etcd's notion of a read-only txn, which decides whether the size limit applies: nothing but
/// ranges on either branch.
pub fn is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// A nested txn may use what its parent's widest part leaves of the op budget.
fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<()> {
    match &op.request {
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(p)) => put(p),
        Some(Request::RequestDeleteRange(d)) => delete_range(d),
        Some(Request::RequestTxn(t)) => check_txn(t, max_ops),
        None => Err(Error::KeyNotFound),
    }
}

/// A delete's keys as etcd's duplicate check sees them: one key, or `[key, range_end)` compared as
/// plain bytes (so a range_end of "\0" covers nothing here).
struct Deleted {
    key: Bytes,
    range_end: Bytes,
}

impl Deleted {
    fn hits(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            self.key == k
        } else {
            &self.key[..] <= k && k < &self.range_end[..]
        }
    }
}

/// One branch's puts and deletes, nested txns included. A key put twice, or put and deleted, is a
/// duplicate, except a put on both branches of one nested txn; deletes may overlap each other.
fn check_duplicates(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<Deleted>)> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                key: d.key.clone(),
                range_end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Deleted], k: &[u8]| dels.iter().any(|d| d.hits(k));
    let mut puts = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_duplicates(&nested.success)?;
        let (puts_else, dels_else) = check_duplicates(&nested.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::from(k.to_owned()),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from(k.to_owned()),
                range_end: Bytes::from(end.to_owned()),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    fn dup(ops: Vec<RequestOp>) -> bool {
        check_duplicates(&ops).is_err()
    }

    #[test]
    fn duplicate_rules_follow_etcd() {
        assert!(dup(vec![put_op("a"), put_op("a")]));
        assert!(dup(vec![put_op("b"), del_op("a", "c")]));
        assert!(!dup(vec![put_op("c"), del_op("a", "c")]));
        assert!(!dup(vec![del_op("a", "c"), del_op("b", "d")]));
        // "\0" as range_end is not "to the end" for this check.
        assert!(!dup(vec![put_op("b"), del_op("a", "\0")]));
        assert!(dup(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]));
        assert!(dup(vec![
            del_op("a", ""),
            txn_op(vec![], vec![put_op("a")])
        ]));
        assert!(dup(vec![
            put_op("a"),
            txn_op(vec![del_op("a", "")], vec![])
        ]));
        assert!(!dup(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]));
        assert!(dup(vec![
            txn_op(vec![put_op("a")], vec![]),
            txn_op(vec![put_op("a")], vec![])
        ]));
    }

    #[test]
    fn op_budget_shrinks_with_nesting() {
        let limits = Limits {
            max_request_bytes: 1 << 20,
            max_txn_ops: 4,
        };
        let inner = |n: usize| txn_op((0..n).map(|i| put_op(&i.to_string())).collect(), vec![]);
        let outer = |n: usize| TxnRequest {
            success: vec![inner(n), put_op("x")],
            ..Default::default()
        };
        assert!(txn(&outer(2), &limits).is_ok());
        assert_eq!(txn(&outer(3), &limits), Err(Error::TooManyOps));
        let empty_op = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(txn(&empty_op, &limits), Err(Error::KeyNotFound));
    }
}
