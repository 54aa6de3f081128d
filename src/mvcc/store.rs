//! The store: the index in memory over a backend's log, one writer task, any number of readers.
//!
//! The writer takes every write waiting in its queue as one batch: it applies them to the index one
//! after the other (each txn seeing the ones before it, each that changes something taking its own
//! revision), appends all their revisions to the backend in one durable commit, and only then makes
//! them visible to readers and answers. Readers read at the newest durable revision, so nothing they
//! see can be lost by a crash.

use super::hash::KvHasher;
use super::index::{Index, KeyRange, Undo};
use super::lessor::{self, Lease, Lessor};
use super::quota::Alarms;
use super::range;
use super::txn::{self, TxnOutcome};
use super::watch::{self, Notice, WatchHub, WatchSpec, WatcherKey};
use crate::backend::{Backend, BackendError, Identity, LogEntry, MemberRecord, Usage};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::Event;
use bytes::Bytes;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

/// The most writes one commit takes; more wait for the next.
const MAX_BATCH: usize = 1024;
/// Log events read per step at start-up, or when reading the whole history.
const RECOVERY_CHUNK: usize = 16 * 1024;

pub struct Store {
    index: Arc<RwLock<Index>>,
    backend: Arc<dyn Backend>,
    writes: mpsc::Sender<Queued>,
    /// Locked before the index whenever both are.
    hub: Arc<Mutex<WatchHub>>,
    /// Locked before the index whenever both are; never together with the hub.
    lessor: Arc<Mutex<Lessor>>,
    alarms: Mutex<Alarms>,
    /// Held by a compaction until its rows are removed, and by a hash while it reads the log.
    compacting: Arc<tokio::sync::RwLock<()>>,
    /// On a shared backend, keep-alives waiting to be renewed in the backend together.
    renewals: Option<mpsc::Sender<Renewal>>,
    /// Grants waiting to be recorded in the backend together.
    grants: mpsc::Sender<Grant>,
    /// The committed revision, as it moves.
    committed: tokio::sync::watch::Receiver<i64>,
    read_index: ReadIndex,
    /// On a shared backend, the newest generation of the auth state it has shown this process:
    /// read indexes and the writer's append right learn it.
    auth_seen: Arc<std::sync::atomic::AtomicU64>,
}

/// Linearizable reads on a shared backend learn the head from it, one query for every read that
/// arrived before the query was sent.
#[derive(Default)]
struct ReadIndex {
    /// Held while a query runs: the last ticket its answer covers, and the head it found.
    last: tokio::sync::Mutex<(u64, i64)>,
    /// Tickets handed to arriving reads, in order.
    tickets: std::sync::atomic::AtomicU64,
}

/// A keep-alive for a lease, answered with its TTL or None.
type Renewal = (i64, oneshot::Sender<Result<Option<i64>>>);

/// A lease to grant, as (id, TTL), answered with whether it was (false: the id is taken).
type Grant = ((i64, i64), oneshot::Sender<Result<bool>>);

/// The longest a linearizable read waits for this process to catch up with a shared backend.
const READ_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the follower waits before asking again for a catch-up that failed.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// How often the lease keeper of a shared backend looks for leases whose time is up.
const KEEPER_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// Expired leases revoked per look.
const EXPIRED_PER_LOOK: usize = 1000;

enum Write {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// Revoke lease: delete its keys, then forget it.
    Revoke(i64),
    /// Catch up with what other processes appended to a shared backend, as of now.
    CatchUp,
}

enum Written {
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    Revoke(LeaseRevokeResponse),
    CaughtUp,
}

struct Queued {
    write: Write,
    /// The generation of the auth state a client's write was allowed under (see [`Store::put`]);
    /// None for writes nobody's permissions govern.
    auth: Option<u64>,
    reply: oneshot::Sender<Result<Written>>,
}

impl Store {
    /// Rebuilds the index from the backend's log and starts the writer.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Arc<Store>> {
        let (index, progress) = load_index(backend.as_ref()).await?;
        // Finish a compaction a crash interrupted: rows it had not removed yet are still in the log.
        backend.remove(&index.leftover).await?;
        let index = index.index;
        tracing::info!(
            revision = progress.head,
            compacted = progress.compacted,
            keys = index.len(),
            "recovered the key index from the log"
        );
        // Every lease starts a full TTL again, as etcd renews them all under a new leader.
        let mut leases = Lessor::default();
        let now = Instant::now();
        for (id, ttl) in backend.leases().await? {
            leases.grant(id, ttl, now);
        }
        let alarms = Mutex::new(Alarms::from_records(backend.alarms().await?));
        let index = Arc::new(RwLock::new(index));
        let hub = Arc::new(Mutex::new(WatchHub::default()));
        let lessor = Arc::new(Mutex::new(leases));
        let lease_granted = Arc::new(Notify::new());
        let compacting = Arc::new(tokio::sync::RwLock::new(()));
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let tail = backend.shared().map(|s| s.tail());
        let shared = tail.is_some();
        let (committed_tx, committed) = tokio::sync::watch::channel(progress.head);
        let auth_seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = Writer {
            index: index.clone(),
            backend: backend.clone(),
            hub: hub.clone(),
            lessor: lessor.clone(),
            compacting: compacting.clone(),
            unresolved: None,
            committed: committed_tx,
            held: None,
            auth_seen: auth_seen.clone(),
        };
        tokio::spawn(writer.run(rx));
        let (grants, queue) = mpsc::channel(MAX_BATCH);
        tokio::spawn(record_grants(
            backend.clone(),
            (!shared).then(|| lessor.clone()),
            lease_granted.clone(),
            queue,
        ));
        let mut renewals = None;
        if let Some(tail) = tail {
            tokio::spawn(follow(tail, index.clone(), tx.clone()));
            // The backend's clock times leases, and one keeper among the frontends expires them.
            tokio::spawn(keep_leases(backend.clone(), tx.clone()));
            let (renew, queue) = mpsc::channel(MAX_BATCH);
            tokio::spawn(renew_leases(backend.clone(), queue));
            renewals = Some(renew);
        } else {
            tokio::spawn(expire_leases(lessor.clone(), lease_granted, tx.clone()));
        }
        tokio::spawn(watch::sync_unsynced(
            hub.clone(),
            index.clone(),
            backend.clone(),
        ));
        Ok(Arc::new(Store {
            index,
            backend,
            writes: tx,
            hub,
            lessor,
            alarms,
            compacting,
            renewals,
            grants,
            committed,
            read_index: ReadIndex::default(),
            auth_seen,
        }))
    }

    pub fn identity(&self) -> Identity {
        self.backend.identity()
    }

    /// Announces this frontend to the others sharing the backend.
    pub async fn heartbeat(&self, member: &MemberRecord) -> Result<()> {
        match self.backend.shared() {
            Some(shared) => Ok(shared.heartbeat(member).await?),
            None => Ok(()),
        }
    }

    /// The live frontends sharing the backend; empty when the backend is this process's alone.
    pub async fn members(&self) -> Result<Vec<MemberRecord>> {
        match self.backend.shared() {
            Some(shared) => Ok(shared.members().await?),
            None => Ok(Vec::new()),
        }
    }

    pub fn usage(&self) -> Usage {
        self.backend.usage()
    }

    /// The newest durable revision.
    pub fn revision(&self) -> i64 {
        self.index.read().expect("index lock").committed
    }

    /// Refuses a request that adds `cost` bytes (see [`super::quota`]) while NOSPACE is raised, and
    /// raises it for the request that would grow the store to `quota` bytes.
    pub async fn check_space(&self, cost: u64, quota: u64) -> Result<()> {
        if cost == 0 {
            return Ok(());
        }
        if self
            .alarms
            .lock()
            .expect("alarms lock")
            .is_raised(AlarmType::Nospace)
        {
            return Err(Error::NoSpace);
        }
        if self.usage().size as u64 + cost >= quota {
            let member = self.identity().member_id;
            tracing::warn!(quota, "backend quota reached: raising the NOSPACE alarm");
            self.raise_alarm(member, AlarmType::Nospace).await?;
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Raises an alarm (durably); returns the alarm, unless it is NONE.
    pub async fn raise_alarm(&self, member: u64, alarm: AlarmType) -> Result<Option<(u64, i32)>> {
        if alarm == AlarmType::None {
            return Ok(None);
        }
        let raised = self
            .alarms
            .lock()
            .expect("alarms lock")
            .raise(member, alarm);
        if raised {
            self.backend.put_alarm(member, alarm as i32).await?;
        }
        Ok(Some((member, alarm as i32)))
    }

    /// Disarms an alarm (durably); returns it if it was raised.
    pub async fn disarm_alarm(&self, member: u64, alarm: AlarmType) -> Result<Option<(u64, i32)>> {
        let disarmed = self
            .alarms
            .lock()
            .expect("alarms lock")
            .disarm(member, alarm);
        if !disarmed {
            return Ok(None);
        }
        self.backend.remove_alarm(member, alarm as i32).await?;
        tracing::warn!(?alarm, "alarm disarmed");
        Ok(Some((member, alarm as i32)))
    }

    /// The alarms raised of one type, or all for NONE.
    pub fn alarms(&self, alarm: AlarmType) -> Vec<(u64, i32)> {
        self.alarms.lock().expect("alarms lock").list(alarm)
    }

    /// etcd's HashKV at `revision` (0: the newest): the hash, the compaction revision it was taken
    /// over, and the current revision.
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let _compacting = self.compacting.read().await;
        let (compacted, current, at, keep) = {
            let index = self.index.read().expect("index lock");
            let (compacted, current) = (index.compacted, index.committed);
            // etcd allows a hash at the compaction revision itself.
            if revision > 0 && revision < compacted {
                return Err(Error::Compacted);
            }
            if revision > current {
                return Err(Error::FutureRevision);
            }
            let at = if revision > 0 { revision } else { current };
            (compacted, current, at, index.keep(at))
        };
        let mut hasher = KvHasher::new(compacted, keep);
        visit_log(self.backend.as_ref(), at, |entry| {
            hasher.write(&entry);
            Ok(())
        })
        .await?;
        Ok((hasher.sum(), compacted, current))
    }

    /// A hash of everything the backend holds for this store: every row of the log, compacted or
    /// not, then the leases. Two stores with the same contents hash the same; unlike HashKV it is
    /// not comparable with etcd's, which hashes etcd's own database file.
    pub async fn hash(&self) -> Result<u32> {
        let _compacting = self.compacting.read().await;
        let head = self.revision();
        let mut hasher = KvHasher::new(-1, Default::default());
        visit_log(self.backend.as_ref(), head, |entry| {
            hasher.write(&entry);
            Ok(())
        })
        .await?;
        for (id, ttl) in self.backend.leases().await? {
            hasher.write_lease(id, ttl);
        }
        Ok(hasher.sum())
    }

    /// Gives the space of compacted history back to the file system.
    pub async fn defragment(&self) -> Result<()> {
        Ok(self.backend.defragment().await?)
    }

    /// The revision history was last compacted at (-1: never).
    pub fn compacted(&self) -> i64 {
        self.index.read().expect("index lock").compacted
    }

    /// Keys with any history left in the key index.
    pub fn key_count(&self) -> usize {
        self.index.read().expect("index lock").len()
    }

    /// Answers a Range at the newest durable revision, or at the one it asks for. On a shared
    /// backend a linearizable Range first catches up with every write committed before it began.
    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        if !req.serializable {
            self.sync_with_head().await?;
        }
        let mut pending = {
            let index = self.index.read().expect("index lock");
            range::select(&index, req, index.committed)?
        };
        pending.load(self.backend.as_ref()).await?;
        Ok(pending.finish())
    }

    /// The newest generation of the auth state a shared backend has shown this process (0 on a
    /// backend of its own, whose auth state this process keeps): a linearizable read, or a write
    /// refused as [`Error::AuthStale`], must be allowed under a state at least as new.
    pub fn auth_seen(&self) -> u64 {
        self.auth_seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the index holds every revision committed in the backend before the call: on a
    /// shared backend the head it reads (shared with the calls that arrived before the query went
    /// out) moves this process's tailer, which catches the writer up. At once on a backend of this
    /// process's own.
    pub async fn sync_with_head(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let Some(shared) = self.backend.shared() else {
            return Ok(());
        };
        let mine = self.read_index.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let head = {
            let mut last = self.read_index.last.lock().await;
            if last.0 < mine {
                let covers = self.read_index.tickets.load(Ordering::SeqCst);
                let index = shared.read_index().await?;
                self.auth_seen.fetch_max(index.auth, Ordering::SeqCst);
                *last = (covers, index.head);
                crate::metrics::READ_INDEX_QUERIES.inc();
            }
            last.1
        };
        let mut committed = self.committed.clone();
        let caught_up = tokio::time::timeout(READ_INDEX_WAIT, committed.wait_for(|c| *c >= head))
            .await
            .map(|waited| waited.map(|_| ()));
        match caught_up {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Storage(format!(
                "could not catch up with revision {head} of the backend within {}s",
                READ_INDEX_WAIT.as_secs()
            ))),
        }
    }

    /// A put; `auth` is the generation of the auth state a client's put was allowed under (None:
    /// a put nobody's permissions govern). On a shared backend, if another frontend changed the
    /// auth state before the put could be appended, the put is not made and the answer is
    /// [`Error::AuthStale`]: check it again under the new state (as etcd checks a write when it
    /// applies it) and send it again. The same holds for the other writes.
    pub async fn put(&self, req: PutRequest, auth: Option<u64>) -> Result<PutResponse> {
        match self.write(Write::Put(req), auth).await? {
            Written::Put(r) => Ok(r),
            _ => unreachable!("a put is answered by a put"),
        }
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
        auth: Option<u64>,
    ) -> Result<DeleteRangeResponse> {
        match self.write(Write::Delete(req), auth).await? {
            Written::Delete(r) => Ok(r),
            _ => unreachable!("a delete is answered by a delete"),
        }
    }

    /// Every txn, read-only ones included, goes through the writer: its compares then see the
    /// newest state, and its answer waits until everything it saw is durable.
    pub async fn txn(&self, req: TxnRequest, auth: Option<u64>) -> Result<TxnResponse> {
        match self.write(Write::Txn(req), auth).await? {
            Written::Txn(r) => Ok(r),
            _ => unreachable!("a txn is answered by a txn"),
        }
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        match self.write(Write::Compact(req), None).await? {
            Written::Compact(r) => Ok(r),
            _ => unreachable!("a compaction is answered by a compaction"),
        }
    }

    /// Grants a lease (`id` 0: one the server picks) with `ttl` seconds, at least etcd's minimum;
    /// durable before it is answered. Returns the id and the TTL granted.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64)> {
        if ttl > lessor::MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let ttl = lessor::granted_ttl(ttl);
        // The backend refuses an id it holds (another frontend's, on a shared backend).
        loop {
            let candidate = match id {
                0 => crate::backend::random_id() as i64 & i64::MAX,
                id => id,
            };
            if candidate == 0 {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            self.grants
                .send(((candidate, ttl), reply))
                .await
                .map_err(|_| Error::Stopped)?;
            if answer.await.map_err(|_| Error::Stopped)?? {
                return Ok((candidate, ttl));
            }
            if id != 0 {
                return Err(Error::LeaseExists);
            }
        }
    }

    /// Revokes a lease: its keys are deleted in one revision, then the lease is forgotten. `auth`
    /// as for [`Store::put`].
    pub async fn lease_revoke(&self, id: i64, auth: Option<u64>) -> Result<LeaseRevokeResponse> {
        match self.write(Write::Revoke(id), auth).await? {
            Written::Revoke(r) => Ok(r),
            _ => unreachable!("a revoke is answered by a revoke"),
        }
    }

    /// Keeps a lease alive for another TTL; None if it does not exist or has expired. On a shared
    /// backend the renewal is durable there (with others waiting at the same moment) before it
    /// is answered.
    pub async fn lease_renew(&self, id: i64) -> Result<Option<i64>> {
        let Some(renewals) = &self.renewals else {
            return Ok(self
                .lessor
                .lock()
                .expect("lessor lock")
                .renew(id, Instant::now()));
        };
        let (reply, answer) = oneshot::channel();
        renewals
            .send((id, reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// A lease's seconds left and granted TTL, and its keys if asked for.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<(i64, i64, Vec<Bytes>)>> {
        let found = match self.backend.shared() {
            Some(shared) => shared.lease_time_to_live(id).await?,
            None => self
                .lessor
                .lock()
                .expect("lessor lock")
                .time_to_live(id, Instant::now()),
        };
        let Some((granted, left)) = found else {
            return Ok(None);
        };
        let keys = if keys {
            // Keys attached through other frontends too.
            self.sync_with_head().await?;
            self.lease_keys(id)
        } else {
            Vec::new()
        };
        Ok(Some((left, granted, keys)))
    }

    /// Readies a watch to start: one from "now" (`start_revision` 0) starts at the cluster's
    /// head, not at a frontend's lagging view of it. If the backend cannot say, it starts at this
    /// frontend's revision, as on an etcd follower.
    pub async fn prepare_watch(&self, start_revision: i64) {
        if start_revision == 0 {
            if let Err(e) = self.sync_with_head().await {
                tracing::debug!(error = %e, "watch starts without the backend's head");
            }
        }
    }

    /// Calls `visit` with each revision of the log kept, from the oldest to the head as of the
    /// call: what a snapshot holds of the key-value store, read a part at a time.
    pub async fn visit_history(&self, visit: impl FnMut(LogEntry) -> Result<()>) -> Result<()> {
        self.sync_with_head().await?;
        visit_log(self.backend.as_ref(), self.revision(), visit).await
    }

    /// The keys attached to a lease, as this frontend's index has them.
    pub fn lease_keys(&self, id: i64) -> Vec<Bytes> {
        self.index.read().expect("index lock").lease_keys(id)
    }

    /// Every live lease id, in id order.
    pub async fn lease_ids(&self) -> Result<Vec<i64>> {
        if self.backend.shared().is_some() {
            let leases = self.backend.leases().await?;
            return Ok(leases.into_iter().map(|(id, _)| id).collect());
        }
        Ok(self.lessor.lock().expect("lessor lock").ids())
    }

    /// Starts a watcher whose notices go to `stream`, announced through `created`. A start revision
    /// at or below the committed one replays history first.
    pub fn watch(
        &self,
        spec: WatchSpec,
        stream: mpsc::Sender<Notice>,
        created: mpsc::Permit<'_, Notice>,
    ) -> WatcherKey {
        let mut hub = self.hub.lock().expect("hub lock");
        let committed = self.index.read().expect("index lock").committed;
        hub.add(spec, stream, created, committed)
    }

    /// Stops a watcher; false if it was already gone.
    pub fn unwatch(&self, key: WatcherKey) -> bool {
        self.hub.lock().expect("hub lock").remove(key)
    }

    /// Tells `stream` that everything up to the committed revision has been sent to `keys`, if it
    /// has (see [`WatchHub::progress`]).
    pub fn watch_progress(
        &self,
        keys: &[WatcherKey],
        watch_id: i64,
        stream: &mpsc::Sender<Notice>,
    ) {
        let hub = self.hub.lock().expect("hub lock");
        let committed = self.index.read().expect("index lock").committed;
        hub.progress(keys, watch_id, stream, committed);
    }

    /// Fills each event's prev_kv with the key as it was just before the event, as etcd does for
    /// watchers that ask for it: nothing for a creation, or when that revision is compacted.
    pub async fn fill_prev_kvs(&self, events: &mut [Event]) {
        // Found in the index at once; the values no longer newest read in one backend call.
        let (mut owners, mut prevs, mut stored) = (Vec::new(), Vec::new(), Vec::new());
        {
            let index = self.index.read().expect("index lock");
            for (i, event) in events.iter().enumerate() {
                let Some(kv) = &event.kv else {
                    continue;
                };
                let created = event.r#type == EventType::Put as i32 && kv.version == 1;
                let before = kv.mod_revision - 1;
                if created || before < index.compacted {
                    continue;
                }
                let single = KeyRange::new(&kv.key, &[]);
                let Some((key, kr, newest)) = index.range_at(single, before).next() else {
                    continue;
                };
                let found = index.found(key, kr, newest);
                if let Some(revision) = found.stored {
                    stored.push((prevs.len(), revision));
                }
                owners.push(i);
                prevs.push(found.kv);
            }
        }
        // A value gone (compaction overtook the read) or unreadable: no previous key-value.
        let gone = range::load_stored(self.backend.as_ref(), &mut prevs, &stored)
            .await
            .unwrap_or_else(|_| stored.iter().map(|(n, _)| *n).collect());
        for (n, (owner, prev)) in owners.into_iter().zip(prevs).enumerate() {
            if !gone.contains(&n) {
                events[owner].prev_kv = Some(prev);
            }
        }
    }

    async fn write(&self, write: Write, auth: Option<u64>) -> Result<Written> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Queued { write, auth, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }
}

/// On a shared backend: while this frontend holds the lease-keeper role, revokes the leases whose
/// time is up by the backend's clock, through the writer like a client's revoke.
async fn keep_leases(backend: Arc<dyn Backend>, writes: mpsc::Sender<Queued>) {
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
            let (reply, answer) = oneshot::channel();
            let queued = Queued {
                write: Write::Revoke(id),
                auth: None,
                reply,
            };
            if writes.send(queued).await.is_err() {
                return;
            }
            answers.push(answer);
        }
        // Revoked (or gone already) before the next look, which would find them again.
        for answer in answers {
            let _ = answer.await;
        }
    }
}

/// Records the grants waiting at one moment in one backend commit. On a backend of this process's
/// own the lessor has those recorded before they are answered; on a shared one the writer learns
/// of them from the backend (see `Writer::sync_leases`).
async fn record_grants(
    backend: Arc<dyn Backend>,
    lessor: Option<Arc<Mutex<Lessor>>>,
    granted: Arc<Notify>,
    mut queue: mpsc::Receiver<Grant>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let leases: Vec<(i64, i64)> = batch.iter().map(|(lease, _)| *lease).collect();
        match backend.put_leases(&leases).await {
            Ok(recorded) => {
                if let Some(lessor) = &lessor {
                    let now = Instant::now();
                    let mut lessor = lessor.lock().expect("lessor lock");
                    for (&(id, ttl), _) in leases.iter().zip(&recorded).filter(|(_, r)| **r) {
                        lessor.grant(id, ttl, now);
                    }
                    drop(lessor);
                    granted.notify_one();
                }
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

/// On a shared backend: renews the keep-alives waiting at one moment in one backend call. The
/// lessor is left alone: there it only mirrors, for the writer, what the backend said under the
/// append right (see `Writer::sync_leases`), and an answer read without it may be stale.
async fn renew_leases(backend: Arc<dyn Backend>, mut queue: mpsc::Receiver<Renewal>) {
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
async fn expire_leases(
    lessor: Arc<Mutex<Lessor>>,
    granted: Arc<Notify>,
    writes: mpsc::Sender<Queued>,
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
            let (reply, _) = oneshot::channel();
            let queued = Queued {
                write: Write::Revoke(id),
                auth: None,
                reply,
            };
            if writes.send(queued).await.is_err() {
                return;
            }
        }
    }
}

/// Asks the writer to catch up whenever the shared backend's head moves past the committed revision.
async fn follow(
    mut tail: tokio::sync::watch::Receiver<i64>,
    index: Arc<RwLock<Index>>,
    writes: mpsc::Sender<Queued>,
) {
    loop {
        let head = *tail.borrow_and_update();
        if head > index.read().expect("index lock").committed {
            let (reply, answer) = oneshot::channel();
            let queued = Queued {
                write: Write::CatchUp,
                auth: None,
                reply,
            };
            if writes.send(queued).await.is_err() {
                return;
            }
            // One at a time: a burst of notifications needs one catch-up, not one each. One that
            // failed (the backend unreachable for a moment) is asked for again, as nothing else
            // may come to wake this task while readers wait for that head.
            if !matches!(answer.await, Ok(Ok(_))) {
                tokio::time::sleep(CATCH_UP_RETRY).await;
                continue;
            }
        }
        if tail.changed().await.is_err() {
            return;
        }
    }
}

/// Hands each revision the log keeps, oldest first, up to `upto`, to `visit`.
async fn visit_log(
    backend: &dyn Backend,
    upto: i64,
    mut visit: impl FnMut(LogEntry) -> Result<()>,
) -> Result<()> {
    let mut from = 1;
    while from <= upto {
        let entries = backend.read_log(from, RECOVERY_CHUNK).await?;
        let Some(last) = entries.last() else {
            break;
        };
        from = last.revision + 1;
        for entry in entries.into_iter().filter(|e| e.revision <= upto) {
            visit(entry)?;
        }
    }
    Ok(())
}

/// An index rebuilt from the whole log.
struct Loaded {
    index: Index,
    /// Rows a compaction had still to remove when it was interrupted.
    leftover: Vec<super::Revision>,
}

async fn load_index(backend: &dyn Backend) -> Result<(Loaded, crate::backend::Progress)> {
    let progress = backend.progress().await?;
    if progress.head == crate::backend::Progress::RESTORING {
        return Err(Error::Storage(
            "the store holds a restore that did not finish: delete it and restore again".into(),
        ));
    }
    let mut index = Index::default();
    // Whatever another process appended meanwhile is caught up with later.
    visit_log(backend, progress.head, |e| {
        restore(&mut index, e);
        Ok(())
    })
    .await?;
    index.current = progress.head;
    index.committed = progress.head;
    let leftover = index.compact(progress.compacted);
    Ok((Loaded { index, leftover }, progress))
}

fn restore(index: &mut Index, entry: LogEntry) {
    for (sub, event) in entry.events.into_iter().enumerate() {
        let rev = super::Revision {
            main: entry.revision,
            sub: sub as i64,
        };
        let is_put = event.r#type == EventType::Put as i32;
        if let Some(kv) = event.kv {
            index.restore(rev, kv, is_put);
        }
    }
}

struct Writer {
    index: Arc<RwLock<Index>>,
    backend: Arc<dyn Backend>,
    hub: Arc<Mutex<WatchHub>>,
    lessor: Arc<Mutex<Lessor>>,
    compacting: Arc<tokio::sync::RwLock<()>>,
    /// A batch whose append failed and whose fate the backend has not told yet.
    unresolved: Option<Unresolved>,
    /// Tells readers waiting for a revision that it is committed.
    committed: tokio::sync::watch::Sender<i64>,
    /// A compaction taken from the queue while gathering a batch's writes, to run after it.
    held: Option<Queued>,
    /// See [`Store::auth_seen`].
    auth_seen: Arc<std::sync::atomic::AtomicU64>,
}

struct Unresolved {
    undo: Undo,
    entries: Vec<LogEntry>,
}

impl Write {
    /// Adds the leases this write attaches keys to or revokes to `ids`.
    fn leases(&self, ids: &mut Vec<i64>) {
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
            Write::Revoke(id) => ids.push(*id),
            Write::Delete(_) | Write::Compact(_) | Write::CatchUp => {}
        }
    }
}

/// A write applied to the index, waiting for its batch to become durable.
enum Applied {
    Done(Result<Written>),
    Txn(TxnOutcome),
}

/// A group applied to the index: what to append, the answers, and how to take it back.
struct AppliedGroup {
    entries: Vec<LogEntry>,
    applied: Vec<Applied>,
    revoked: Vec<(i64, Lease)>,
    undo: Undo,
}

/// Answers the writes of `group` allowed under an auth state older than generation `auth` with
/// [`Error::AuthStale`] and leaves them out: another frontend changed the state before they could
/// be appended, and they must be allowed again under the new one.
fn refuse_stale(group: &mut Vec<Queued>, auth: u64) {
    if group.iter().all(|q| q.auth.is_none_or(|a| a >= auth)) {
        return;
    }
    let (stale, current) = std::mem::take(group)
        .into_iter()
        .partition(|q| q.auth.is_some_and(|a| a < auth));
    *group = current;
    for q in stale {
        let _ = q.reply.send(Err(Error::AuthStale));
    }
}

/// Whether `group` holds anything but catch-ups.
fn may_write(group: &[Queued]) -> bool {
    group.iter().any(|q| !matches!(q.write, Write::CatchUp))
}

/// How often a batch is applied again after another process's append got in before it.
const MAX_ATTEMPTS: usize = 16;

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Queued>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while !batch.is_empty() || queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // A compaction runs alone, between the batches before and after it.
            let mut rest = batch.drain(..).peekable();
            while rest.peek().is_some() {
                let mut group = Vec::new();
                while let Some(q) = rest.next_if(|q| !matches!(q.write, Write::Compact(_))) {
                    group.push(q);
                }
                if !group.is_empty() {
                    // Only the last group may take in what arrived since, so that writes keep
                    // their order in the queue.
                    let last = rest.peek().is_none();
                    self.commit(group, last.then_some(&mut queue)).await;
                }
                if let Some(Queued {
                    write: Write::Compact(req),
                    reply,
                    ..
                }) = rest.next()
                {
                    let _ = reply.send(self.compact(req).await.map(Written::Compact));
                }
            }
            drop(rest);
            batch.extend(self.held.take());
        }
    }

    /// Applies `group` to the index, makes it durable in one append, then answers each write. On a
    /// shared backend the writes that arrive in `queue` while the append right is awaited join the
    /// group once it is held.
    async fn commit(
        &mut self,
        mut group: Vec<Queued>,
        mut queue: Option<&mut mpsc::Receiver<Queued>>,
    ) {
        let mut attempt = 0;
        // On a shared backend a batch that may write holds the append right from here on.
        let locked = may_write(&group) && self.backend.shared().is_some();
        let done = loop {
            attempt += 1;
            if let Err(e) = self.prepare(&mut group, queue.take()).await {
                break Err(e);
            }
            let g = self.apply_group(&group);
            if locked {
                // A revoke forgets its lease in the same transaction as its deletes.
                if let Err(e) = self.forget_revoked(&g.revoked).await {
                    self.take_back(g).await;
                    break Err(e);
                }
            }
            let Some(last) = g.entries.last() else {
                if locked {
                    if let Err(e) = self.unlock().await {
                        self.take_back(g).await;
                        break Err(e);
                    }
                }
                self.settle_revokes(g.revoked, true).await;
                break Ok(g.applied);
            };
            let head = last.revision;
            let start = std::time::Instant::now();
            let appended = self.backend.append(&g.entries).await;
            crate::metrics::COMMITS.observe(start.elapsed().as_secs_f64());
            crate::metrics::APPENDED.observe(g.entries.len() as f64);
            match appended {
                Ok(()) => {
                    self.publish(&g.entries);
                    self.settle_revokes(g.revoked, true).await;
                    break Ok(g.applied);
                }
                Err(BackendError::OutOfOrder { .. })
                    if self.backend.shared().is_some() && attempt < MAX_ATTEMPTS =>
                {
                    // Another process appended first and nothing of this batch was written: take
                    // it back and apply it again on top of theirs.
                    self.take_back(g).await;
                }
                Err(e) => {
                    crate::metrics::APPENDS_FAILED.inc();
                    tracing::error!(error = %e, "append failed; no write of the batch is acknowledged");
                    self.unresolved = Some(Unresolved {
                        undo: g.undo,
                        entries: g.entries,
                    });
                    let _ = self.resolve().await;
                    let durable = self.index.read().expect("index lock").committed >= head
                        && self.unresolved.is_none();
                    self.settle_revokes(g.revoked, durable).await;
                    break Err(Error::from(e));
                }
            }
        };
        let applied = match done {
            Ok(applied) => applied,
            Err(e) => {
                for q in group {
                    let _ = q.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        for (q, result) in group.into_iter().zip(applied) {
            let result = match result {
                Applied::Done(r) => r,
                Applied::Txn(mut outcome) => outcome
                    .load(self.backend.as_ref())
                    .await
                    .map(|()| Written::Txn(outcome.finish())),
            };
            let _ = q.reply.send(result);
        }
    }

    /// Before a batch: settles an earlier failed append and, on a shared backend, catches up with
    /// everything committed before the batch's requests arrived. A batch that may write takes the
    /// append right first, so that its compares see the head and nothing gets in before its append,
    /// and learns which of the leases it names are live (another frontend may have granted or
    /// revoked them). Writes that arrive in `queue` meanwhile join the group once the append right
    /// is held (see [`Writer::gather`]).
    async fn prepare(
        &mut self,
        group: &mut Vec<Queued>,
        queue: Option<&mut mpsc::Receiver<Queued>>,
    ) -> Result<()> {
        self.resolve().await?;
        let backend = self.backend.clone();
        let Some(shared) = backend.shared() else {
            return Ok(());
        };
        if !may_write(group) {
            let progress = self.backend.progress().await?;
            return self.catch_up(progress, Vec::new()).await;
        }
        let committed = self.index.read().expect("index lock").committed;
        let locked = shared.lock(committed).await?;
        if let Some(queue) = queue {
            self.gather(group, queue);
        }
        self.auth_seen
            .fetch_max(locked.auth, std::sync::atomic::Ordering::SeqCst);
        refuse_stale(group, locked.auth);
        let ready = match self.catch_up(locked.progress, locked.entries).await {
            Ok(()) => self.sync_leases(shared, group).await,
            Err(e) => Err(e),
        };
        if ready.is_err() {
            if let Err(e) = self.unlock().await {
                tracing::warn!(error = %e, "could not give back the append right");
            }
        }
        ready
    }

    /// Takes into `group` the writes that arrived while its append right was awaited: they share its
    /// append instead of waiting for this frontend's next turn at the lock. A compaction is held
    /// back, to run alone after the group.
    fn gather(&mut self, group: &mut Vec<Queued>, queue: &mut mpsc::Receiver<Queued>) {
        while group.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(q) if matches!(q.write, Write::Compact(_)) => {
                    self.held = Some(q);
                    return;
                }
                Ok(q) => group.push(q),
                Err(_) => return,
            }
        }
    }

    /// Gives back the append right of a shared backend (nothing to give back otherwise).
    async fn unlock(&self) -> Result<()> {
        match self.backend.shared() {
            Some(shared) => Ok(shared.unlock().await?),
            None => Ok(()),
        }
    }

    /// Brings the lessor's view of the leases `group` names up to date with the backend.
    async fn sync_leases(
        &self,
        shared: &dyn crate::backend::Shared,
        group: &[Queued],
    ) -> Result<()> {
        let mut ids = Vec::new();
        for q in group {
            q.write.leases(&mut ids);
        }
        ids.retain(|id| *id != 0);
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let live: std::collections::HashMap<i64, i64> =
            shared.leases_among(&ids).await?.into_iter().collect();
        let now = Instant::now();
        let mut leases = self.lessor.lock().expect("lessor lock");
        for id in ids {
            match live.get(&id) {
                Some(&ttl) if !leases.contains(id) => leases.grant(id, ttl, now),
                Some(_) => {}
                None => {
                    leases.remove(id);
                }
            }
        }
        Ok(())
    }

    /// Under the append right: forgets the revoked leases in the transaction the append commits.
    async fn forget_revoked(&self, revoked: &[(i64, Lease)]) -> Result<()> {
        for (id, _) in revoked {
            self.backend.remove_lease(*id).await?;
        }
        Ok(())
    }

    /// Takes back a group applied to the index whose append did not happen.
    async fn take_back(&self, g: AppliedGroup) {
        let mut undo = g.undo;
        {
            let mut index = self.index.write().expect("index lock");
            let committed = index.committed;
            index.rollback(&mut undo, 0, committed);
        }
        self.settle_revokes(g.revoked, false).await;
    }

    fn apply_group(&self, group: &[Queued]) -> AppliedGroup {
        let mut g = AppliedGroup {
            entries: Vec::new(),
            applied: Vec::with_capacity(group.len()),
            revoked: Vec::new(),
            undo: Undo::default(),
        };
        let mut leases = self.lessor.lock().expect("lessor lock");
        let mut index = self.index.write().expect("index lock");
        for q in group {
            let (result, entry) = apply(
                &mut index,
                &mut g.undo,
                &mut leases,
                &mut g.revoked,
                &q.write,
            );
            g.entries.extend(entry);
            g.applied.push(result);
        }
        g
    }

    /// Makes durable revisions visible: to readers, and to watchers in the same step.
    fn publish(&self, entries: &[LogEntry]) {
        let Some(last) = entries.last() else {
            return;
        };
        // Under the hub lock, so that a watcher catching up from the log cannot miss them; the
        // revisions are readable first, as a watcher asking for prev_kv reads the one before.
        let mut hub = self.hub.lock().expect("hub lock");
        {
            let mut index = self.index.write().expect("index lock");
            index.committed = last.revision;
            index.current = index.current.max(last.revision);
        }
        hub.notify(entries);
        self.committed.send_replace(last.revision);
    }

    /// Forgets the leases whose keys' deletion is durable (a shared backend forgot them with it);
    /// takes back the others, still recorded.
    async fn settle_revokes(&self, revoked: Vec<(i64, Lease)>, durable: bool) {
        for (id, lease) in revoked {
            if !durable {
                self.lessor.lock().expect("lessor lock").restore(id, lease);
            } else if self.backend.shared().is_some() {
                continue;
            } else if let Err(e) = self.backend.remove_lease(id).await {
                // Its keys are gone; the record brings back an empty lease at restart, which
                // then expires.
                tracing::warn!(lease = id, error = %e, "could not forget a revoked lease");
            }
        }
    }

    /// After a failed append, reads the log to learn whether the batch became durable after all,
    /// and keeps it or undoes it accordingly. Until then no write can be applied on top of it.
    async fn resolve(&mut self) -> Result<()> {
        let Some(unresolved) = self.unresolved.as_ref() else {
            return Ok(());
        };
        let committed = self.index.read().expect("index lock").committed;
        let progress = self.backend.progress().await?;
        let head = progress.head;
        let last = unresolved.entries.last().map_or(committed, |e| e.revision);
        let durable = head >= last && {
            let events = unresolved.entries.iter().map(|e| e.events.len()).sum();
            self.backend.read_log(committed + 1, events).await? == unresolved.entries
        };
        let Unresolved { mut undo, entries } = self.unresolved.take().expect("checked above");
        if durable {
            self.publish(&entries);
        } else {
            self.index
                .write()
                .expect("index lock")
                .rollback(&mut undo, 0, committed);
        }
        if head > self.index.read().expect("index lock").committed {
            // Only another process can have appended: catch up with it.
            self.catch_up(progress, Vec::new()).await?;
        }
        Ok(())
    }

    /// Applies what other processes appended to the backend since the committed revision, and
    /// their compactions. If a compaction removed history this process had not read yet, the index
    /// is rebuilt and every watcher replays from the log (those that needed the removed history are
    /// told it was compacted, as etcd tells a watcher that fell behind a compaction).
    /// `read` is the start of what is to be applied, if the caller read it already.
    async fn catch_up(
        &mut self,
        progress: crate::backend::Progress,
        mut read: Vec<LogEntry>,
    ) -> Result<()> {
        let mut from = self.index.read().expect("index lock").committed + 1;
        if progress.compacted > from {
            tracing::warn!(
                revision = from - 1,
                compacted = progress.compacted,
                "another frontend compacted history this one had not read: reloading the index"
            );
            let (loaded, progress) = load_index(self.backend.as_ref()).await?;
            let mut hub = self.hub.lock().expect("hub lock");
            *self.index.write().expect("index lock") = loaded.index;
            hub.unsync_all();
            self.committed.send_replace(progress.head);
            return Ok(());
        }
        while from <= progress.head {
            let entries = match std::mem::take(&mut read) {
                read if !read.is_empty() => read,
                _ => self.backend.read_log(from, RECOVERY_CHUNK).await?,
            };
            let contiguous = entries
                .iter()
                .zip(from..)
                .all(|(e, expected)| e.revision == expected);
            if entries.is_empty() || !contiguous {
                return Err(Error::Storage(format!(
                    "the log's head is {} but revision {from} cannot be read",
                    progress.head
                )));
            }
            {
                let mut index = self.index.write().expect("index lock");
                for entry in entries.iter().cloned() {
                    restore(&mut index, entry);
                }
            }
            self.publish(&entries);
            from = entries.last().expect("not empty").revision + 1;
        }
        let mut index = self.index.write().expect("index lock");
        if progress.compacted > index.compacted {
            // The compacting process removes the rows; this one only forgets them.
            index.compact(progress.compacted);
        }
        Ok(())
    }

    async fn compact(&mut self, req: CompactionRequest) -> Result<CompactionResponse> {
        self.prepare(&mut Vec::new(), None).await?;
        let current = {
            let index = self.index.read().expect("index lock");
            if req.revision <= index.compacted {
                return Err(Error::Compacted);
            }
            if req.revision > index.current {
                return Err(Error::FutureRevision);
            }
            index.current
        };
        let compacting = self.compacting.clone().write_owned().await;
        self.backend.set_compacted(req.revision).await?;
        let removed = self
            .index
            .write()
            .expect("index lock")
            .compact(req.revision);
        let backend = self.backend.clone();
        let removal = tokio::spawn(async move {
            let _compacting = compacting;
            if let Err(e) = backend.remove(&removed).await {
                // The log still holds the rows; the next start-up removes them.
                tracing::warn!(error = %e, "physical compaction failed");
                return Err(Error::from(e));
            }
            Ok(())
        });
        if req.physical {
            removal.await.map_err(|e| Error::Storage(e.to_string()))??;
        }
        Ok(CompactionResponse {
            header: Some(ResponseHeader {
                revision: current,
                ..Default::default()
            }),
        })
    }
}

fn apply(
    index: &mut Index,
    undo: &mut Undo,
    leases: &mut Lessor,
    revoked: &mut Vec<(i64, Lease)>,
    write: &Write,
) -> (Applied, Option<LogEntry>) {
    match write {
        Write::Put(req) => match txn::put(index, undo, leases, req) {
            Ok((resp, entry)) => (Applied::Done(Ok(Written::Put(resp))), entry),
            Err(e) => (Applied::Done(Err(e)), None),
        },
        Write::Delete(req) => {
            let (resp, entry) = txn::delete_range(index, undo, req);
            (Applied::Done(Ok(Written::Delete(resp))), entry)
        }
        Write::Txn(req) => match txn::txn(index, undo, leases, req) {
            Ok((outcome, entry)) => (Applied::Txn(outcome), entry),
            Err(e) => (Applied::Done(Err(e)), None),
        },
        &Write::Revoke(id) => {
            // Gone from the lessor at once, so that no later write of the batch attaches to it.
            let Some(lease) = leases.remove(id) else {
                return (Applied::Done(Err(Error::LeaseNotFound)), None);
            };
            revoked.push((id, lease));
            let (revision, entry) = txn::revoke(index, undo, id);
            let resp = LeaseRevokeResponse {
                header: Some(ResponseHeader {
                    revision,
                    ..Default::default()
                }),
            };
            (Applied::Done(Ok(Written::Revoke(resp))), entry)
        }
        Write::CatchUp => (Applied::Done(Ok(Written::CaughtUp)), None),
        Write::Compact(_) => unreachable!("compactions are run apart from batches"),
    }
}

#[cfg(test)]
mod tests {
    //! The store against a model that keeps the whole state at every revision, over random histories
    //! of puts, deletes, txns, compactions and restarts.
    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::backend::testing::Faulty;
    use crate::proto::etcdserverpb::request_op::Request;
    use crate::proto::etcdserverpb::RequestOp;
    use crate::proto::mvccpb::KeyValue;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[derive(Clone, Debug)]
    enum Step {
        Put(u8, u8),
        Delete(u8, u8),
        /// Puts the first key and deletes the range in one txn.
        PutAndDelete(u8, u8, u8),
        Compact(u8),
        Restart,
    }

    fn key(k: u8) -> bytes::Bytes {
        bytes::Bytes::from(vec![b'a' + k])
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0..5u8, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
            2 => (0..5u8, 0..6u8).prop_map(|(k, e)| Step::Delete(k, e)),
            2 => (0..5u8, 0..5u8, 0..6u8).prop_map(|(p, k, e)| Step::PutAndDelete(p, k, e)),
            1 => any::<u8>().prop_map(Step::Compact),
            1 => Just(Step::Restart),
        ]
    }

    /// The state at each revision; `states[r]` is the state at revision r (0 unused, 1 empty).
    struct Model {
        states: Vec<BTreeMap<bytes::Bytes, KeyValue>>,
        compacted: i64,
    }

    impl Model {
        fn head(&self) -> i64 {
            self.states.len() as i64 - 1
        }

        /// Applies the changes of one txn; a txn that changes nothing takes no revision.
        fn apply(&mut self, put: Option<(u8, u8)>, delete: Option<(u8, u8)>) {
            let rev = self.head() + 1;
            let mut state = self.states.last().unwrap().clone();
            let mut changed = false;
            if let Some((k, v)) = put {
                let old = state.get(&key(k));
                let kv = KeyValue {
                    key: key(k),
                    create_revision: old.map_or(rev, |o| o.create_revision),
                    mod_revision: rev,
                    version: old.map_or(1, |o| o.version + 1),
                    value: bytes::Bytes::from(vec![v]),
                    lease: 0,
                };
                state.insert(key(k), kv);
                changed = true;
            }
            if let Some((k, end)) = delete {
                let before = state.len();
                state.retain(|kk, _| !(key(k) <= *kk && *kk < key(end.max(k + 1))));
                changed |= state.len() != before;
            }
            if changed {
                self.states.push(state);
            }
        }
    }

    fn delete_request(k: u8, end: u8) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key(k),
            range_end: key(end.max(k + 1)),
            prev_kv: false,
        }
    }

    fn put_request(k: u8, v: u8) -> PutRequest {
        PutRequest {
            key: key(k),
            value: bytes::Bytes::from(vec![v]),
            ..Default::default()
        }
    }

    async fn check(store: &Store, model: &Model) {
        assert_eq!(store.revision(), model.head());
        for rev in 1..=model.head() {
            let read = store
                .range(&RangeRequest {
                    key: bytes::Bytes::from_static(b"\0"),
                    range_end: bytes::Bytes::from_static(b"\0"),
                    revision: rev,
                    ..Default::default()
                })
                .await;
            if rev < model.compacted {
                assert_eq!(read.unwrap_err(), Error::Compacted, "at {rev}");
                continue;
            }
            let kvs = read.unwrap().kvs;
            let want: Vec<KeyValue> = model.states[rev as usize].values().cloned().collect();
            assert_eq!(kvs, want, "at {rev}");
        }
    }

    async fn run(steps: Vec<Step>) {
        let backend: Arc<dyn Backend> = Arc::new(Embedded::in_memory().unwrap());
        let mut store = Store::open(backend.clone()).await.unwrap();
        let mut model = Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: -1,
        };
        for step in steps {
            match step {
                Step::Put(k, v) => {
                    store.put(put_request(k, v), None).await.unwrap();
                    model.apply(Some((k, v)), None);
                }
                Step::Delete(k, end) => {
                    store
                        .delete_range(delete_request(k, end), None)
                        .await
                        .unwrap();
                    model.apply(None, Some((k, end)));
                }
                Step::PutAndDelete(p, k, end) => {
                    let result = store
                        .txn(
                            TxnRequest {
                                compare: Vec::new(),
                                success: vec![
                                    RequestOp {
                                        request: Some(Request::RequestPut(put_request(p, p))),
                                    },
                                    RequestOp {
                                        request: Some(Request::RequestDeleteRange(delete_request(
                                            k, end,
                                        ))),
                                    },
                                ],
                                failure: Vec::new(),
                            },
                            None,
                        )
                        .await;
                    // The store applies what validation (in the api layer) would have refused as a
                    // duplicate key: the delete then removes the key just put.
                    assert!(result.unwrap().succeeded);
                    model.apply(Some((p, p)), Some((k, end)));
                }
                Step::Compact(r) => {
                    let r = i64::from(r) % (model.head() + 2);
                    let result = store
                        .compact(CompactionRequest {
                            revision: r,
                            physical: true,
                        })
                        .await;
                    if r <= model.compacted {
                        assert_eq!(result.unwrap_err(), Error::Compacted);
                    } else if r > model.head() {
                        assert_eq!(result.unwrap_err(), Error::FutureRevision);
                    } else {
                        result.unwrap();
                        model.compacted = r;
                    }
                }
                Step::Restart => store = Store::open(backend.clone()).await.unwrap(),
            }
            check(&store, &model).await;
        }
    }

    async fn keys_and_revision(store: &Store) -> (Vec<bytes::Bytes>, i64) {
        let all = store
            .range(&RangeRequest {
                key: bytes::Bytes::from_static(b"\0"),
                range_end: bytes::Bytes::from_static(b"\0"),
                ..Default::default()
            })
            .await
            .unwrap();
        let keys = all.kvs.into_iter().map(|kv| kv.key).collect();
        (keys, all.header.unwrap().revision)
    }

    /// A failed append is never acknowledged; the store then carries on from whatever the backend
    /// holds: without the batch if it was lost, with it if it became durable after all.
    #[tokio::test]
    async fn failed_append_is_not_acknowledged_and_the_store_carries_on() {
        let faulty = Arc::new(Faulty {
            inner: Embedded::in_memory().unwrap(),
            fail_next: Mutex::new(None),
        });
        let store = Store::open(faulty.clone()).await.unwrap();
        store.put(put_request(0, 0), None).await.unwrap();

        *faulty.fail_next.lock().unwrap() = Some(false);
        let lost = store.put(put_request(1, 1), None).await;
        assert!(matches!(lost, Err(Error::Storage(_))), "{lost:?}");
        assert_eq!(keys_and_revision(&store).await, (vec![key(0)], 2));
        let next = store.put(put_request(2, 2), None).await.unwrap();
        assert_eq!(
            next.header.unwrap().revision,
            3,
            "no gap where the lost write was"
        );

        *faulty.fail_next.lock().unwrap() = Some(true);
        let unacknowledged = store.put(put_request(3, 3), None).await;
        assert!(matches!(unacknowledged, Err(Error::Storage(_))));
        let held = (vec![key(0), key(2), key(3)], 4);
        assert_eq!(keys_and_revision(&store).await, held);
        let next = store.put(put_request(4, 4), None).await.unwrap();
        assert_eq!(next.header.unwrap().revision, 5);

        let reopened = Store::open(faulty).await.unwrap();
        assert_eq!(
            keys_and_revision(&reopened).await,
            (vec![key(0), key(2), key(3), key(4)], 5)
        );
    }

    /// With the clock paused, a lease expires exactly one TTL after its grant (or last renewal),
    /// and its keys are deleted in one revision that watchers see.
    #[tokio::test(start_paused = true)]
    async fn expired_lease_deletes_its_keys_in_one_revision() {
        use super::watch::NoticeKind;
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

    /// Two stores over one PostgreSQL database, as two frontends: each reads the other's writes in
    /// linearizable reads and sees them in its watches, and compare-and-swap increments through both
    /// at once never lose an update.
    #[tokio::test]
    async fn two_frontends_share_one_database() {
        use super::watch::NoticeKind;
        use crate::backend::postgres::{tests::fresh_database, Postgres};
        use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
        use crate::proto::etcdserverpb::{Compare, ResponseOp};
        let config = fresh_database().await;
        let open = |name: &'static str| {
            let config = config.clone();
            async move {
                let backend = Postgres::open(config, name).await.unwrap();
                Store::open(Arc::new(backend)).await.unwrap()
            }
        };
        let (a, b) = (open("a").await, open("b").await);
        let (notices, mut heard) = mpsc::channel(64);
        let spec = WatchSpec {
            key: key(0),
            range_end: key(9),
            ..Default::default()
        };
        b.watch(spec, notices.clone(), notices.reserve().await.unwrap());
        assert_eq!(heard.recv().await.unwrap().kind, NoticeKind::Created);

        a.put(put_request(0, 7), None).await.unwrap();
        let (keys, revision) = keys_and_revision(&b).await;
        assert_eq!((keys, revision), (vec![key(0)], 2));
        // b's writer caught up before its own write: the next revision, not a second 2.
        let put = b.put(put_request(1, 1), None).await.unwrap();
        assert_eq!(put.header.unwrap().revision, 3);
        for expected in [2, 3] {
            let notice = heard.recv().await.unwrap();
            assert_eq!(notice.revision, expected);
            assert!(matches!(notice.kind, NoticeKind::Events(_)), "{notice:?}");
        }

        // Counter increments by compare-and-swap, half through each frontend.
        let counter = key(5);
        a.put(
            PutRequest {
                key: counter.clone(),
                value: bytes::Bytes::from_static(b"0"),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        let increment = |store: Arc<Store>| {
            let counter = counter.clone();
            async move {
                loop {
                    let read = RangeRequest {
                        key: counter.clone(),
                        ..Default::default()
                    };
                    let kv = store.range(&read).await.unwrap().kvs.remove(0);
                    let n: u32 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    let swap = TxnRequest {
                        compare: vec![Compare {
                            result: CompareResult::Equal as i32,
                            target: CompareTarget::Mod as i32,
                            key: counter.clone(),
                            target_union: Some(TargetUnion::ModRevision(kv.mod_revision)),
                            ..Default::default()
                        }],
                        success: vec![crate::proto::etcdserverpb::RequestOp {
                            request: Some(Request::RequestPut(PutRequest {
                                key: counter.clone(),
                                value: bytes::Bytes::from((n + 1).to_string()),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                    };
                    let done = store.txn(swap, None).await.unwrap();
                    if done.succeeded {
                        assert!(matches!(
                            done.responses[0].response,
                            Some(crate::proto::etcdserverpb::response_op::Response::ResponsePut(_))
                        ));
                        return;
                    }
                    let _: &[ResponseOp] = &done.responses;
                }
            }
        };
        let tasks: Vec<_> = (0..16)
            .map(|i| tokio::spawn(increment(if i % 2 == 0 { a.clone() } else { b.clone() })))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let read = RangeRequest {
            key: counter.clone(),
            ..Default::default()
        };
        for store in [&a, &b] {
            let r = store.range(&read).await.unwrap();
            assert_eq!(r.kvs[0].value, &b"16"[..]);
            assert_eq!(r.kvs[0].version, 17);
            assert_eq!(r.header.unwrap().revision, 4 + 16);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn store_matches_model(steps in prop::collection::vec(step(), 1..40)) {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(run(steps));
        }
    }
}
