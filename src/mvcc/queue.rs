//! The writer's queue: the writes it takes (a client's put, delete, txn, compaction or revoke; a
//! catch-up with other processes' appends), their answers, and the one way to queue one. Below the
//! store, the writer and the tasks that make writes of their own, which all share it.

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use tokio::sync::{mpsc, oneshot};

/// The most writes one commit takes; more wait for the next.
pub(super) const MAX_BATCH: usize = 1024;

pub(super) enum Write {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// Revoke lease: delete its keys, then forget it.
    Revoke(i64),
    /// Revoke a lease the keeper of a shared backend found expired, if it still is by the
    /// backend's clock once the append right is held: the keeper may have read the leases from
    /// an old primary that woke up after a failover, which lacks the renewals made since.
    Expire(i64),
    /// Catch up with what other processes appended to a shared backend, as of now.
    CatchUp,
}

pub(super) enum Written {
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    Revoke(LeaseRevokeResponse),
    CaughtUp,
}

pub(super) struct Queued {
    pub(super) write: Write,
    /// The generation of the auth state a client's write was allowed under (see `Store::put`);
    /// None for writes nobody's permissions govern.
    pub(super) auth: Option<u64>,
    pub(super) reply: oneshot::Sender<Result<Written>>,
}

impl Write {
    /// Adds the leases this write attaches keys to or revokes to `ids`.
    pub(super) fn leases(&self, ids: &mut Vec<i64>) {
        fn txn_leases(txn: &TxnRequest, ids: &mut Vec<i64>) {
            use crate::proto::etcdserverpb::request_op::Request;
            for op in txn.success.iter().chain(&txn.failure) {
                match &op.request {
                    Some(Request::RequestPut(put)) => ids.push(put.lease),
                    Some(Request::RequestTxn(txn)) => txn_leases(txn, ids),
                    _ => {}
                }
            }
        }
        match self {
            Write::Put(put) => ids.push(put.lease),
            Write::Txn(txn) => txn_leases(txn, ids),
            Write::Revoke(id) | Write::Expire(id) => ids.push(*id),
            Write::Delete(_) | Write::Compact(_) | Write::CatchUp => {}
        }
    }
}

/// The writer's queue. Every write reaches the writer through [`WriteQueue::enqueue`]: clients'
/// through the `Store`, the server's own (expiries, catch-ups) from the tasks that make them.
#[derive(Clone)]
pub(super) struct WriteQueue(mpsc::Sender<Queued>);

impl WriteQueue {
    /// A queue, and the writer's end of it.
    pub(super) fn new() -> (WriteQueue, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        (WriteQueue(tx), rx)
    }

    /// Queues `write`, allowed under the auth state of generation `auth` (see [`Queued::auth`]);
    /// its answer comes on the receiver returned.
    pub(super) async fn enqueue(
        &self,
        write: Write,
        auth: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<Written>>> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Queued { write, auth, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(answer)
    }
}
