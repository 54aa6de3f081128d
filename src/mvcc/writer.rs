//! The writer: the one task that applies writes, in the order of its queue.
//!
//! What the store promises about writes is decided here and nowhere else: one total order of
//! revisions, durable before acknowledged (a batch is one append), compares evaluated under the
//! append right, and a failed append never acknowledged and settled before anything is applied on
//! top of it. Kept apart from the public calls so that this reasoning reads in one place.

use super::index::{Index, Undo};
use super::lessor::{Lease, Lessor};
use super::queue::{Batched, Job, Queued, Write, MAX_BATCH};
use super::recovery::{load_index, restore, RECOVERY_CHUNK};
use super::txn;
use super::watch::WatchHub;
use crate::backend::{Backend, BackendError, LogEntry, Presumed, Shared};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, LeaseRevokeResponse, ResponseHeader,
};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(super) struct Writer {
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
    held: Option<Job<CompactionRequest, CompactionResponse>>,
    /// See [`Store::auth_seen`](super::Store::auth_seen).
    auth_seen: Arc<std::sync::atomic::AtomicU64>,
    /// Until when batches take the append right instead of presuming (see [`Writer::presume`]):
    /// another frontend's append got in before a presumed one.
    contended_until: Option<Instant>,
}

struct Unresolved {
    undo: Undo,
    entries: Vec<LogEntry>,
}

/// A group applied to the index: what to append, and how to take it back. Each write holds what
/// applying it gave, to answer with once the group is durable.
struct AppliedGroup {
    entries: Vec<LogEntry>,
    revoked: Vec<(i64, Lease)>,
    undo: Undo,
}

/// Answers the writes of `group` allowed under an auth state older than generation `auth` with
/// [`Error::AuthStale`] and leaves them out: another frontend changed the state before they could
/// be appended, and they must be allowed again under the new one.
fn refuse_stale(group: &mut Vec<Batched>, auth: u64) {
    if group.iter().all(|q| q.auth.is_none_or(|a| a >= auth)) {
        return;
    }
    let (stale, current) = std::mem::take(group)
        .into_iter()
        .partition(|q| q.auth.is_some_and(|a| a < auth));
    *group = current;
    for q in stale {
        q.write.fail(Error::AuthStale);
    }
}

/// Under the append right: leaves out of `group` the expiries of leases that are not expired by
/// the backend's clock (they were renewed after the keeper looked), answering them as for a lease
/// gone; the keeper takes no notice of the answer.
async fn still_expired(shared: &dyn Shared, group: &mut Vec<Batched>) -> Result<()> {
    let expiries = expiries(group);
    if expiries.is_empty() {
        return Ok(());
    }
    let expired: std::collections::HashSet<i64> =
        shared.expired_among(&expiries).await?.into_iter().collect();
    let (kept, renewed) = std::mem::take(group)
        .into_iter()
        .partition(|q| !matches!(&q.write, Write::Expire(job) if !expired.contains(&job.request)));
    *group = kept;
    for q in renewed {
        tracing::info!("a lease found expired was renewed since: not revoked");
        q.write.fail(Error::LeaseNotFound);
    }
    Ok(())
}

/// The leases `group` expires, each once.
fn expiries(group: &[Batched]) -> Vec<i64> {
    let mut ids: Vec<i64> = (group.iter())
        .filter_map(|q| match &q.write {
            Write::Expire(job) => Some(job.request),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The leases `group` attaches keys to or revokes, each once.
fn named_leases(group: &[Batched]) -> Vec<i64> {
    let mut ids = Vec::new();
    for q in group {
        q.write.leases(&mut ids);
    }
    ids.retain(|id| *id != 0);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether `group` holds anything but catch-ups.
fn may_write(group: &[Batched]) -> bool {
    group.iter().any(|q| !matches!(q.write, Write::CatchUp(_)))
}

/// Times `append`, an append of `entries` (none: only a check), in the commit metrics.
async fn measured<T>(entries: &[LogEntry], append: impl std::future::Future<Output = T>) -> T {
    let start = std::time::Instant::now();
    let appended = append.await;
    if !entries.is_empty() {
        crate::metrics::COMMITS.observe(start.elapsed().as_secs_f64());
        crate::metrics::APPENDED.observe(entries.len() as f64);
    }
    appended
}

/// How often a batch is applied again after another process's append got in before it.
const MAX_ATTEMPTS: usize = 16;
/// How long batches take the append right after another frontend's append got in before a
/// presumed one: while others write too, presuming mostly wastes a round trip.
const CONTENDED: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    /// A writer over the store's shared state; [`Writer::run`] then owns the order of writes.
    pub(super) fn new(
        index: Arc<RwLock<Index>>,
        backend: Arc<dyn Backend>,
        hub: Arc<Mutex<WatchHub>>,
        lessor: Arc<Mutex<Lessor>>,
        compacting: Arc<tokio::sync::RwLock<()>>,
        committed: tokio::sync::watch::Sender<i64>,
        auth_seen: Arc<std::sync::atomic::AtomicU64>,
    ) -> Writer {
        Writer {
            index,
            backend,
            hub,
            lessor,
            compacting,
            unresolved: None,
            committed,
            held: None,
            auth_seen,
            contended_until: None,
        }
    }

    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Queued>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut stopping = false;
        loop {
            if batch.is_empty() {
                tokio::select! {
                    taken = queue.recv_many(&mut batch, MAX_BATCH) => if taken == 0 {
                        return;
                    },
                    // Asked to stop: take no more writes, but answer those queued already.
                    () = stop.cancelled(), if !stopping => {
                        stopping = true;
                        queue.close();
                        continue;
                    }
                }
            }
            // A compaction runs alone, between the batches before and after it.
            let mut rest = batch.drain(..).peekable();
            while rest.peek().is_some() {
                let mut group = Vec::new();
                let mut compaction = None;
                for q in rest.by_ref() {
                    match q {
                        Queued::Batched(q) => group.push(q),
                        Queued::Compact(job) => {
                            compaction = Some(job);
                            break;
                        }
                    }
                }
                if !group.is_empty() {
                    // Only the last group may take in what arrived since, so that writes keep
                    // their order in the queue.
                    let last = compaction.is_none() && rest.peek().is_none();
                    self.commit(group, last.then_some(&mut queue)).await;
                }
                if let Some(job) = compaction {
                    let answer = self.compact(&job.request).await;
                    job.answer(answer);
                }
            }
            drop(rest);
            batch.extend(self.held.take().map(Queued::Compact));
        }
    }

    /// Applies `group` to the index, makes it durable in one append, then answers each write. On a
    /// shared backend the writes that arrive in `queue` while the append right is awaited join the
    /// group once it is held.
    async fn commit(
        &mut self,
        mut group: Vec<Batched>,
        mut queue: Option<&mut mpsc::Receiver<Queued>>,
    ) {
        let mut attempt = 0;
        // On a shared backend a batch that may write holds the append right from here on, unless
        // it can be presumed (first try only).
        let backend = self.backend.clone();
        let locked = may_write(&group) && backend.shared().is_some();
        let done = loop {
            attempt += 1;
            let presumed = match backend.shared() {
                Some(shared) if locked && attempt == 1 => {
                    self.learn_near(shared, &group).await;
                    self.presume(shared, &mut group).map(|p| (shared, p))
                }
                _ => None,
            };
            if let Some((shared, presumed)) = presumed {
                match self.append_presumed(shared, &mut group, presumed).await {
                    Some(done) => break done,
                    // Taken back: the next attempt takes the right.
                    None => continue,
                }
            }
            if let Err(e) = self.prepare(&mut group, queue.take()).await {
                break Err(e);
            }
            let g = self.apply_group(&mut group);
            if locked {
                // A revoke forgets its lease in the same transaction as its deletes.
                if let Err(e) = self.forget_revoked(&g.revoked).await {
                    self.take_back(g).await;
                    break Err(e);
                }
            }
            if g.entries.is_empty() {
                if locked {
                    if let Err(e) = self.unlock().await {
                        self.take_back(g).await;
                        break Err(e);
                    }
                }
                self.settle_revokes(g.revoked, true).await;
                break Ok(());
            }
            let appended = measured(&g.entries, self.backend.append(&g.entries)).await;
            match appended {
                Ok(()) => {
                    self.publish(&g.entries);
                    self.settle_revokes(g.revoked, true).await;
                    break Ok(());
                }
                Err(BackendError::OutOfOrder { .. })
                    if self.backend.shared().is_some() && attempt < MAX_ATTEMPTS =>
                {
                    // Another process appended first and nothing of this batch was written: take
                    // it back and apply it again on top of theirs.
                    self.take_back(g).await;
                }
                Err(e) => break Err(self.append_failed(g, e).await),
            }
        };
        if let Err(e) = done {
            for q in group {
                q.write.fail(e.clone());
            }
            return;
        }
        for q in group {
            match q.write {
                Write::Put(job) => job.answer_applied(),
                Write::Delete(job) => job.answer_applied(),
                Write::Revoke(job) | Write::Expire(job) => job.answer_applied(),
                Write::CatchUp(job) => job.answer_applied(),
                Write::Txn(mut job) => {
                    let answer = match job.take_applied() {
                        Ok(mut outcome) => outcome
                            .load(self.backend.as_ref())
                            .await
                            .map(|()| outcome.finish()),
                        Err(e) => Err(e),
                    };
                    job.answer(answer);
                }
            }
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
        group: &mut Vec<Batched>,
        queue: Option<&mut mpsc::Receiver<Queued>>,
    ) -> Result<()> {
        self.resolve().await?;
        let backend = self.backend.clone();
        let Some(shared) = backend.shared() else {
            // The auth state changes through this process alone: the newest it has is the one
            // the writes must have been allowed under.
            refuse_stale(
                group,
                self.auth_seen.load(std::sync::atomic::Ordering::SeqCst),
            );
            return Ok(());
        };
        if !may_write(group) {
            let progress = if group.is_empty() {
                // A compaction's: as the head stands, so that a revision another frontend wrote
                // is not taken for a future one.
                self.backend.progress().await?
            } else {
                // Catch-ups: as far as the head heard of, which this frontend may have reached
                // by its own appends since.
                let heard = *shared.tail().borrow();
                if heard <= self.index.read().expect("index lock").committed {
                    return Ok(());
                }
                shared.progress_near(heard).await?
            };
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
            Ok(()) => match self.sync_leases(shared, group).await {
                Ok(()) => still_expired(shared, group).await,
                Err(e) => Err(e),
            },
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
    fn gather(&mut self, group: &mut Vec<Batched>, queue: &mut mpsc::Receiver<Queued>) {
        while group.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Queued::Compact(job)) => {
                    self.held = Some(job);
                    return;
                }
                Ok(Queued::Batched(q)) => group.push(q),
                Err(_) => return,
            }
        }
    }

    /// Before presuming: learns from a hot standby next to this frontend the leases `group` names
    /// that the lessor does not remember (granted through another frontend, say), so that a write
    /// naming one need not take the append right first.
    async fn learn_near(&self, shared: &dyn Shared, group: &[Batched]) {
        let unknown: Vec<i64> = {
            let lessor = self.lessor.lock().expect("lessor lock");
            (named_leases(group).into_iter())
                .filter(|id| !lessor.contains(*id))
                .collect()
        };
        if unknown.is_empty() {
            return;
        }
        let near = shared.leases_near(&unknown).await;
        let now = Instant::now();
        let mut lessor = self.lessor.lock().expect("lessor lock");
        for (id, ttl) in near {
            lessor.grant(id, ttl, now);
        }
    }

    /// What this frontend knows of the shared store, if `group` may be appended on it without
    /// taking the append right first ([`Shared::append_presumed`], one round trip instead of two):
    /// nothing is unsettled, no append of another frontend is known and unread nor got in lately,
    /// and every lease it attaches keys to, revokes or expires is one this frontend knows (the
    /// append checks each expired by the store's clock). The writes allowed under an auth state
    /// older than one this frontend has seen are refused first.
    fn presume(&self, shared: &dyn Shared, group: &mut Vec<Batched>) -> Option<Presumed> {
        let contended = self.contended_until.is_some_and(|t| Instant::now() < t);
        if self.unresolved.is_some() || contended {
            return None;
        }
        let (head, compacted) = {
            let index = self.index.read().expect("index lock");
            (index.committed, index.compacted)
        };
        if *shared.tail().borrow() > head {
            return None;
        }
        let leases = named_leases(group);
        let now = Instant::now();
        let mut lessor = self.lessor.lock().expect("lessor lock");
        lessor.forget_unseen(now);
        // Seen now: remembered (so not forgotten before the group is applied) for another TTL.
        if !leases.iter().all(|id| lessor.renew(*id, now).is_some()) {
            return None;
        }
        drop(lessor);
        refuse_stale(
            group,
            self.auth_seen.load(std::sync::atomic::Ordering::SeqCst),
        );
        Some(Presumed {
            head,
            compacted,
            auth: group
                .iter()
                .filter_map(|q| q.auth)
                .min()
                .unwrap_or(u64::MAX),
            leases,
            revoked: Vec::new(),
            expired: expiries(group),
        })
    }

    /// Applies `group` and appends it, with the leases it revoked forgotten, as `presumed` says
    /// the store stands; None, the group taken back, if the store stood otherwise.
    async fn append_presumed(
        &mut self,
        shared: &dyn Shared,
        group: &mut [Batched],
        mut presumed: Presumed,
    ) -> Option<Result<()>> {
        let g = self.apply_group(group);
        presumed.revoked = g.revoked.iter().map(|(id, _)| *id).collect();
        let appended = measured(&g.entries, shared.append_presumed(&g.entries, &presumed)).await;
        match appended {
            Ok(true) => {
                crate::metrics::PRESUMED_APPENDS.inc();
                self.publish(&g.entries);
                self.settle_revokes(g.revoked, true).await;
                Some(Ok(()))
            }
            Ok(false) => {
                crate::metrics::PRESUMED_REFUSED.inc();
                self.contended_until = Some(Instant::now() + CONTENDED);
                self.take_back(g).await;
                None
            }
            Err(e) if g.entries.is_empty() => {
                self.take_back(g).await;
                Some(Err(Error::from(e)))
            }
            Err(e) => Some(Err(self.append_failed(g, e).await)),
        }
    }

    /// After an append of `g` failed otherwise than by another's getting in first: no write of it
    /// is acknowledged, and it is settled (see [`Writer::resolve`]) before anything else is applied.
    async fn append_failed(&mut self, g: AppliedGroup, e: BackendError) -> Error {
        crate::metrics::APPENDS_FAILED.inc();
        tracing::error!(error = %e, "append failed; no write of the batch is acknowledged");
        let head = g.entries.last().map_or(0, |e| e.revision);
        self.unresolved = Some(Unresolved {
            undo: g.undo,
            entries: g.entries,
        });
        let _ = self.resolve().await;
        let durable =
            self.index.read().expect("index lock").committed >= head && self.unresolved.is_none();
        self.settle_revokes(g.revoked, durable).await;
        Error::from(e)
    }

    /// Gives back the append right of a shared backend (nothing to give back otherwise).
    async fn unlock(&self) -> Result<()> {
        match self.backend.shared() {
            Some(shared) => Ok(shared.unlock().await?),
            None => Ok(()),
        }
    }

    /// Brings the lessor's view of the leases `group` names up to date with the backend.
    async fn sync_leases(&self, shared: &dyn Shared, group: &[Batched]) -> Result<()> {
        let ids = named_leases(group);
        if ids.is_empty() {
            return Ok(());
        }
        let live: std::collections::HashMap<i64, i64> =
            shared.leases_among(&ids).await?.into_iter().collect();
        let now = Instant::now();
        let mut leases = self.lessor.lock().expect("lessor lock");
        for id in ids {
            match live.get(&id) {
                Some(&ttl) => leases.grant(id, ttl, now),
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

    fn apply_group(&self, group: &mut [Batched]) -> AppliedGroup {
        let mut g = AppliedGroup {
            entries: Vec::new(),
            revoked: Vec::new(),
            undo: Undo::default(),
        };
        let mut leases = self.lessor.lock().expect("lessor lock");
        let mut index = self.index.write().expect("index lock");
        for q in group {
            let entry = apply(
                &mut index,
                &mut g.undo,
                &mut leases,
                &mut g.revoked,
                &mut q.write,
            );
            g.entries.extend(entry);
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
                return Err(Error::storage(format!(
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

    async fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse> {
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
            removal
                .await
                .map_err(|e| Error::storage_caused_by(e.to_string(), e))??;
        }
        Ok(CompactionResponse {
            header: Some(ResponseHeader {
                revision: current,
                ..Default::default()
            }),
        })
    }
}

/// Applies `write` to the index, leaving in it what that gave; returns the log entry to append, if
/// it changed anything.
fn apply(
    index: &mut Index,
    undo: &mut Undo,
    leases: &mut Lessor,
    revoked: &mut Vec<(i64, Lease)>,
    write: &mut Write,
) -> Option<LogEntry> {
    match write {
        Write::Put(job) => applied(job, |put| txn::put(index, undo, leases, put)),
        Write::Delete(job) => applied(job, |delete| Ok(txn::delete_range(index, undo, delete))),
        Write::Txn(job) => applied(job, |t| txn::txn(index, undo, leases, t)),
        Write::Revoke(job) | Write::Expire(job) => applied(job, |&id| {
            // Gone from the lessor at once, so that no later write of the batch attaches to it.
            let lease = leases.remove(id).ok_or(Error::LeaseNotFound)?;
            revoked.push((id, lease));
            let (revision, entry) = txn::revoke(index, undo, id);
            let resp = LeaseRevokeResponse {
                header: Some(ResponseHeader {
                    revision,
                    ..Default::default()
                }),
            };
            Ok((resp, entry))
        }),
        Write::CatchUp(job) => applied(job, |()| Ok(((), None))),
    }
}

/// Runs `f` on `job`'s request and keeps what it gave in the job; returns its log entry.
fn applied<R, A, T>(
    job: &mut Job<R, A, T>,
    f: impl FnOnce(&R) -> Result<(T, Option<LogEntry>)>,
) -> Option<LogEntry> {
    let (result, entry) = match f(&job.request) {
        Ok((out, entry)) => (Ok(out), entry),
        Err(e) => (Err(e), None),
    };
    job.applied = Some(result);
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::backend::testing::Faulty;
    use crate::mvcc::store::tests::{key, keys_and_revision, put_request};
    use crate::mvcc::Store;

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
}
