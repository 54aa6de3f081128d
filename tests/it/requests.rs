//! Short builders for KV requests, and a runner that turns any KV call into a comparable outcome.

use bytes::Bytes;
use strata::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::request_op::Request;
use strata::proto::etcdserverpb::response_op::Response;
use strata::proto::etcdserverpb::*;
use tonic::transport::Channel;

pub fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

pub fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        ..Default::default()
    }
}

pub fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

pub fn del(key: &str, end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

pub fn compact(revision: i64, physical: bool) -> CompactionRequest {
    CompactionRequest { revision, physical }
}

pub fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        key: b(key),
        target: target as i32,
        result: result as i32,
        target_union: Some(union),
        range_end: Bytes::new(),
    }
}

pub fn txn(compare: Vec<Compare>, success: Vec<Request>, failure: Vec<Request>) -> TxnRequest {
    let ops = |v: Vec<Request>| {
        v.into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect()
    };
    TxnRequest {
        compare,
        success: ops(success),
        failure: ops(failure),
    }
}

/// One KV call.
#[derive(Clone, Debug)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

/// What a call returned, with the fields that differ between servers (ids, term) cleared.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    Error(tonic::Code, String),
}

pub fn clear(header: &mut Option<ResponseHeader>) {
    if let Some(h) = header {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

pub fn clear_txn(t: &mut TxnResponse) {
    clear(&mut t.header);
    for op in &mut t.responses {
        match &mut op.response {
            Some(Response::ResponseRange(r)) => clear(&mut r.header),
            Some(Response::ResponsePut(r)) => clear(&mut r.header),
            Some(Response::ResponseDeleteRange(r)) => clear(&mut r.header),
            Some(Response::ResponseTxn(t)) => clear_txn(t),
            None => {}
        }
    }
}

pub async fn run(kv: &mut KvClient<Channel>, op: &Op) -> Outcome {
    fn done<T>(
        r: Result<tonic::Response<T>, tonic::Status>,
        f: impl FnOnce(T) -> Outcome,
    ) -> Outcome {
        match r {
            Ok(r) => f(r.into_inner()),
            Err(s) => Outcome::Error(s.code(), s.message().to_owned()),
        }
    }
    match op.clone() {
        Op::Range(r) => done(kv.range(r).await, |mut r| {
            clear(&mut r.header);
            Outcome::Range(r)
        }),
        Op::Put(r) => done(kv.put(r).await, |mut r| {
            clear(&mut r.header);
            Outcome::Put(r)
        }),
        Op::Delete(r) => done(kv.delete_range(r).await, |mut r| {
            clear(&mut r.header);
            Outcome::Delete(r)
        }),
        Op::Txn(r) => done(kv.txn(r).await, |mut r| {
            clear_txn(&mut r);
            Outcome::Txn(r)
        }),
        Op::Compact(r) => done(kv.compact(r).await, |mut r| {
            clear(&mut r.header);
            Outcome::Compact(r)
        }),
    }
}

impl From<RangeRequest> for Op {
    fn from(r: RangeRequest) -> Op {
        Op::Range(r)
    }
}
impl From<PutRequest> for Op {
    fn from(r: PutRequest) -> Op {
        Op::Put(r)
    }
}
impl From<DeleteRangeRequest> for Op {
    fn from(r: DeleteRangeRequest) -> Op {
        Op::Delete(r)
    }
}
impl From<TxnRequest> for Op {
    fn from(r: TxnRequest) -> Op {
        Op::Txn(r)
    }
}
impl From<CompactionRequest> for Op {
    fn from(r: CompactionRequest) -> Op {
        Op::Compact(r)
    }
}

/// Shorthands for ops inside a txn.
pub mod op {
    use super::*;

    pub fn get(key: &str) -> Request {
        Request::RequestRange(super::get(key))
    }
    pub fn range(r: RangeRequest) -> Request {
        Request::RequestRange(r)
    }
    pub fn put(key: &str, value: &str) -> Request {
        Request::RequestPut(super::put(key, value))
    }
    pub fn del(key: &str, end: &str) -> Request {
        Request::RequestDeleteRange(super::del(key, end))
    }
    pub fn txn(t: TxnRequest) -> Request {
        Request::RequestTxn(t)
    }
}
