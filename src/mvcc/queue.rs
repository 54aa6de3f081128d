//! The writer's queue: the writes it takes (a client's put, delete, txn, compaction or revoke; a
//! lease expiry; a catch-up with other processes' appends), each with the sender of its own kind of
//! answer, and the one way to queue one. Below the store, the writer and the tasks that make writes
//! of their own, which all share it.

use super::txn::TxnOutcome;
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use tokio::sync::{mpsc, oneshot};

/// The most writes one commit takes; more wait for the next.
pub(super) const MAX_BATCH: usize = 1024;

/// Where an answer goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// A request, where its answer goes, and what applying it to the index gave (`Applied`) until it
/// is durable and answered.
pub(super) struct Job<Request, Answer, Applied = Answer> {
    pub(super) request: Request,
    reply: Reply<Answer>,
    pub(super) applied: Option<Result<Applied>>,
}

impl<Request, Answer, Applied> Job<Request, Answer, Applied> {
    fn new(request: Request, reply: Reply<Answer>) -> Self {
        Job {
            request,
            reply,
            applied: None,
        }
    }

    /// Sends the answer (nobody may be waiting for it any more).
    pub(super) fn answer(self, answer: Result<Answer>) {
        let _ = self.reply.send(answer);
    }

    /// What applying the request gave, taken out to answer with.
    pub(super) fn take_applied(&mut self) -> Result<Applied> {
        self.applied
            .take()
            .expect("a write is applied before it is answered")
    }
}

impl<Request, Answer> Job<Request, Answer> {
    /// Answers with what applying the request gave.
    pub(super) fn answer_applied(mut self) {
        let applied = self.take_applied();
        self.answer(applied);
    }
}

/// A write that goes into a batch: applied to the index with the others, made durable in one
/// append, then answered.
pub(super) enum Write {
    Put(Job<PutRequest, PutResponse>),
    Delete(Job<DeleteRangeRequest, DeleteRangeResponse>),
    Txn(Job<TxnRequest, TxnResponse, TxnOutcome>),
    /// Revoke lease: delete its keys, then forget it.
    Revoke(Job<i64, LeaseRevokeResponse>),
    /// Revoke a lease the keeper of a shared backend found expired, if it still is by the
    /// backend's clock once the append right is held: the keeper may have read the leases from
    /// an old primary that woke up after a failover, which lacks the renewals made since.
    Expire(Job<i64, LeaseRevokeResponse>),
    /// Catch up with what other processes appended to a shared backend, as of now.
    CatchUp(Job<(), ()>),
}

/// What the queue holds.
pub(super) enum Queued {
    Batched(Batched),
    /// A compaction, which runs alone between the batches before and after it.
    Compact(Job<CompactionRequest, CompactionResponse>),
}

pub(super) struct Batched {
    pub(super) write: Write,
    /// The generation of the auth state a client's write was allowed under (see `Store::put`);
    /// None for writes nobody's permissions govern.
    pub(super) auth: Option<u64>,
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
            Write::Put(put) => ids.push(put.request.lease),
            Write::Txn(txn) => txn_leases(&txn.request, ids),
            Write::Revoke(job) | Write::Expire(job) => ids.push(job.request),
            Write::Delete(_) | Write::CatchUp(_) => {}
        }
    }

    /// Answers with `error`: the write was not made.
    pub(super) fn fail(self, error: Error) {
        match self {
            Write::Put(job) => job.answer(Err(error)),
            Write::Delete(job) => job.answer(Err(error)),
            Write::Txn(job) => job.answer(Err(error)),
            Write::Revoke(job) | Write::Expire(job) => job.answer(Err(error)),
            Write::CatchUp(job) => job.answer(Err(error)),
        }
    }
}

/// A request the writer takes, and the answer it gives.
pub(super) trait Queueable {
    type Answer;
    fn queued(self, reply: Reply<Self::Answer>, auth: Option<u64>) -> Queued;
}

fn batched(write: Write, auth: Option<u64>) -> Queued {
    Queued::Batched(Batched { write, auth })
}

impl Queueable for PutRequest {
    type Answer = PutResponse;
    fn queued(self, reply: Reply<PutResponse>, auth: Option<u64>) -> Queued {
        batched(Write::Put(Job::new(self, reply)), auth)
    }
}

impl Queueable for DeleteRangeRequest {
    type Answer = DeleteRangeResponse;
    fn queued(self, reply: Reply<DeleteRangeResponse>, auth: Option<u64>) -> Queued {
        batched(Write::Delete(Job::new(self, reply)), auth)
    }
}

impl Queueable for TxnRequest {
    type Answer = TxnResponse;
    fn queued(self, reply: Reply<TxnResponse>, auth: Option<u64>) -> Queued {
        batched(Write::Txn(Job::new(self, reply)), auth)
    }
}

impl Queueable for CompactionRequest {
    type Answer = CompactionResponse;
    fn queued(self, reply: Reply<CompactionResponse>, _: Option<u64>) -> Queued {
        Queued::Compact(Job::new(self, reply))
    }
}

/// A client's revoke of a lease, or the lessor's of one that expired.
pub(super) struct Revoke(pub(super) i64);

impl Queueable for Revoke {
    type Answer = LeaseRevokeResponse;
    fn queued(self, reply: Reply<LeaseRevokeResponse>, auth: Option<u64>) -> Queued {
        batched(Write::Revoke(Job::new(self.0, reply)), auth)
    }
}

/// The keeper's revoke of a lease it found expired on a shared backend (see [`Write::Expire`]).
pub(super) struct Expire(pub(super) i64);

impl Queueable for Expire {
    type Answer = LeaseRevokeResponse;
    fn queued(self, reply: Reply<LeaseRevokeResponse>, auth: Option<u64>) -> Queued {
        batched(Write::Expire(Job::new(self.0, reply)), auth)
    }
}

/// See [`Write::CatchUp`].
pub(super) struct CatchUp;

impl Queueable for CatchUp {
    type Answer = ();
    fn queued(self, reply: Reply<()>, auth: Option<u64>) -> Queued {
        batched(Write::CatchUp(Job::new((), reply)), auth)
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

    /// Queues `request`, allowed under the auth state of generation `auth` (see
    /// [`Batched::auth`]); its answer comes on the receiver returned.
    pub(super) async fn enqueue<Q: Queueable>(
        &self,
        request: Q,
        auth: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<Q::Answer>>> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(request.queued(reply, auth))
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(answer)
    }
}
