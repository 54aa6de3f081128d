//! The store: the index in memory over a backend's log, one writer task, any number of readers.
//!
//! The writer takes every write waiting in its queue as one batch: it applies them to the index one
//! after the other (each txn seeing the ones before it, each that changes something taking its own
//! revision), appends all their revisions to the backend in one durable commit, and only then makes
//! them visible to readers and answers. Readers read at the newest durable revision, so nothing they
//! see can be lost by a crash.
//!
//! This file holds the public calls and the queue they hand writes to. The writer task is in
//! [`super::writer`], the lease tasks in [`super::lease_keeper`], and rebuilding the index from the
//! log (at start-up, or following other frontends) in [`super::recovery`].

use super::hash::KvHasher;
use super::index::{Index, KeyRange};
use super::lease_keeper::{self, Grant, Renewal};
use super::lessor::{self, Lessor};
use super::queue::{Queueable, Revoke, WriteQueue, MAX_BATCH};
use super::quota::Alarms;
use super::range;
use super::recovery::{self, load_index, visit_log};
use super::watch::{self, Notice, WatchHub, WatchSpec, WatcherKey};
use super::writer::Writer;
use crate::backend::{Backend, Identity, LogEntry, MemberRecord, Usage};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::Event;
use crate::tasks::Tasks;
use bytes::Bytes;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

pub struct Store {
    index: Arc<RwLock<Index>>,
    backend: Arc<dyn Backend>,
    writes: WriteQueue,
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
    /// The newest generation of the auth state this process has seen: its auth store's
    /// ([`Store::auth_installed`]), and on a shared backend read indexes and the append right.
    auth_seen: Arc<std::sync::atomic::AtomicU64>,
    /// The writer and the store's background tasks.
    tasks: Tasks,
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

/// The longest a linearizable read waits for this process to catch up with a shared backend.
const READ_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
        // Every lease starts a full TTL again, as etcd renews them all under a new leader, or
        // what its checkpoint recorded.
        let recorded: std::collections::HashMap<i64, i64> = match backend.lease_checkpoints() {
            Some(checkpoints) => checkpoints.recorded().await?.into_iter().collect(),
            None => Default::default(),
        };
        let mut leases = Lessor::default();
        let now = Instant::now();
        for (id, ttl) in backend.leases().await? {
            leases.resume(id, ttl, recorded.get(&id).copied().unwrap_or(0), now);
        }
        let alarms = Mutex::new(Alarms::from_records(backend.alarms().await?));
        let index = Arc::new(RwLock::new(index));
        let hub = Arc::new(Mutex::new(WatchHub::default()));
        let lessor = Arc::new(Mutex::new(leases));
        let lease_granted = Arc::new(Notify::new());
        let compacting = Arc::new(tokio::sync::RwLock::new(()));
        let (tx, rx) = WriteQueue::new();
        let tail = backend.shared().map(|s| s.tail());
        let (committed_tx, committed) = tokio::sync::watch::channel(progress.head);
        let auth_seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = Writer::new(
            index.clone(),
            backend.clone(),
            hub.clone(),
            lessor.clone(),
            compacting.clone(),
            committed_tx,
            auth_seen.clone(),
        );
        let tasks = Tasks::default();
        tasks.spawn_finishing(|stop| writer.run(rx, stop));
        let (grants, queue) = mpsc::channel(MAX_BATCH);
        tasks.spawn(lease_keeper::record_grants(
            backend.clone(),
            lessor.clone(),
            lease_granted.clone(),
            queue,
        ));
        let mut renewals = None;
        if let Some(tail) = tail {
            tasks.spawn(recovery::follow(tail, index.clone(), tx.clone()));
            // The backend's clock times leases, and one keeper among the frontends expires them.
            tasks.spawn(lease_keeper::keep_leases(backend.clone(), tx.clone()));
            let (renew, queue) = mpsc::channel(MAX_BATCH);
            tasks.spawn(lease_keeper::renew_leases(
                backend.clone(),
                lessor.clone(),
                queue,
            ));
            renewals = Some(renew);
        } else {
            tasks.spawn(lease_keeper::expire_leases(
                lessor.clone(),
                lease_granted,
                tx.clone(),
            ));
        }
        tasks.spawn(watch::sync_unsynced(
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
            tasks,
        }))
    }

    /// Stops the store: the writer answers the writes queued so far and takes no more (later ones
    /// fail with etcd's "server stopped"), every task of the store ends, and the backend closes.
    pub async fn close(&self) {
        self.tasks.stop().await;
        match self.backend.close().await {
            Ok(()) => tracing::info!("closed the store"),
            // Everything acknowledged is durable already (in the write-ahead log, say).
            Err(e) => tracing::warn!(
                error = %e,
                "the store could not be closed cleanly; the next start recovers it"
            ),
        }
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

    /// Where this process's auth store raises the generation of each auth state it installs
    /// (`AuthStore::open`): a write allowed under an older one is refused with
    /// [`Error::AuthStale`] from then on, as etcd refuses a request whose auth revision is older
    /// than the one it applies under.
    pub fn auth_installed(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.auth_seen.clone()
    }

    /// The newest generation of the auth state this process has seen (its own changes', and on a
    /// shared backend what the backend showed): a linearizable read, or a write refused as
    /// [`Error::AuthStale`], must be allowed under a state at least as new.
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
            Err(_) => Err(Error::storage(format!(
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
        self.write(req, auth).await
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
        auth: Option<u64>,
    ) -> Result<DeleteRangeResponse> {
        self.write(req, auth).await
    }

    /// Every txn, read-only ones included, goes through the writer: its compares then see the
    /// newest state, and its answer waits until everything it saw is durable.
    pub async fn txn(&self, req: TxnRequest, auth: Option<u64>) -> Result<TxnResponse> {
        self.write(req, auth).await
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        self.write(req, None).await
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

    /// Records each long lease's remaining TTL every `every` (etcd's persisted lease checkpoints),
    /// on a backend whose leases this process times; a shared backend's clock times them there.
    pub fn checkpoint_leases(&self, every: std::time::Duration) {
        if self.backend.lease_checkpoints().is_none() {
            return;
        }
        self.lessor
            .lock()
            .expect("lessor lock")
            .checkpoint_every(every, Instant::now());
        self.tasks.spawn(lease_keeper::checkpoint_leases(
            self.lessor.clone(),
            self.backend.clone(),
            every,
        ));
    }

    /// Revokes a lease: its keys are deleted in one revision, then the lease is forgotten. `auth`
    /// as for [`Store::put`].
    pub async fn lease_revoke(&self, id: i64, auth: Option<u64>) -> Result<LeaseRevokeResponse> {
        self.write(Revoke(id), auth).await
    }

    /// Keeps a lease alive for another TTL; None if it does not exist or has expired. On a shared
    /// backend the renewal is durable there (with others waiting at the same moment) before it
    /// is answered.
    pub async fn lease_renew(&self, id: i64) -> Result<Option<i64>> {
        let Some(renewals) = &self.renewals else {
            let (renewed, recorded) = {
                let mut lessor = self.lessor.lock().expect("lessor lock");
                (lessor.renew(id, Instant::now()), lessor.clear_recorded(id))
            };
            // A lease kept alive gets a full TTL at a restart again.
            if let (true, Some(checkpoints)) = (recorded, self.backend.lease_checkpoints()) {
                checkpoints.checkpoint_leases(&[(id, 0)]).await?;
            }
            return Ok(renewed);
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

    async fn write<Q: Queueable>(&self, request: Q, auth: Option<u64>) -> Result<Q::Answer> {
        let answer = self.writes.enqueue(request, auth).await?;
        let written = answer.await.map_err(|_| Error::Stopped)?;
        if let Err(Error::Storage(failure)) = &written {
            if failure.is_out_of_space() {
                self.out_of_space().await;
            }
        }
        written
    }

    /// The medium is full: raises NOSPACE, as etcd does when its quota is reached, so that writes
    /// are refused at once with etcd's "database space exceeded" until the operator has freed
    /// space and disarmed the alarm. Reads go on.
    async fn out_of_space(&self) {
        let member = self.identity().member_id;
        if self
            .alarms(AlarmType::Nospace)
            .contains(&(member, AlarmType::Nospace as i32))
        {
            return;
        }
        tracing::error!(
            "the store's medium is full: NOSPACE raised; free space, then disarm the alarm \
             (etcdctl alarm disarm)"
        );
        if let Err(e) = self.raise_alarm(member, AlarmType::Nospace).await {
            tracing::warn!(error = %e, "NOSPACE is raised in memory only: recording it failed");
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
