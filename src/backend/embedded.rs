//! The embedded backend: the log in one local redb file, with a write-ahead log beside it.
//!
//! An append, a lease granted or a lease forgotten is durable once its record is synced in the
//! write-ahead log (`strata.wal`, see [`super::wal`]); the database takes it in the same call with
//! a commit that is not synced. A commit that is synced (the rarer changes, or the start of a new
//! cycle of the write-ahead log when it is full) makes everything before it durable in the
//! database too. Opening the store replays the records the database lacks.
//!
//! Tables:
//! - `log`: (main, sub) → an encoded `mvccpb::Event`, one row per change.
//! - `meta`: "head", "compacted", "cluster_id", "member_id", "wal_cycle" → u64.
//! - `leases`: lease id → TTL in seconds.
//! - `alarms`: (member id, alarm type) → nothing.
//! - `auth`: generation → the auth state, one row.
//!
//! After a failed commit redb refuses further writes until the file is reopened, and the failed commit
//! may or may not have become durable; `progress` reopens it and reads the head to find out.

mod opening;
mod pending;
mod record;

use super::wal::Wal;
use super::{
    random_id, Backend, BackendError, Identity, LeaseCheckpoints, Log, LogEntry, Progress, Records,
    Restore, Result, Usage,
};
use crate::backend::Revision;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use async_trait::async_trait;
use opening::{begin_cycle, new_cycle, open_store, take_in};
use pending::{apply_lease_changes, LeaseChange, Pending};
use prost::Message;
use record::Record;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const LOG: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
/// Recorded remaining TTLs of leases in LEASES (see [`LeaseCheckpoints`]).
const LEASE_CHECKPOINTS: TableDefinition<i64, i64> = TableDefinition::new("lease_checkpoints");
const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarms");
const AUTH: TableDefinition<u64, &[u8]> = TableDefinition::new("auth");

/// Rows removed per commit during physical compaction, so that appends are never held up for long.
const REMOVE_BATCH: usize = 10_000;

/// A row of the `log` table: (revision, sub-revision) and the encoded event.
type Row = ((i64, i64), Vec<u8>);

pub struct Embedded {
    path: Option<PathBuf>,
    store: Arc<Mutex<Option<Store>>>,
    identity: Identity,
    /// Whether the write-ahead log syncs its records (see [`Embedded::open_without_fsync`]).
    fsync: bool,
    /// Set by [`Backend::close`]: the store is not opened again.
    closed: Arc<AtomicBool>,
}

/// The open database, and the write-ahead log of a store on disk.
struct Store {
    db: Database,
    wal: Option<Wal>,
    /// What the log holds and the database could not take in at open (see [`pending`]).
    pending: Pending,
}

impl Store {
    fn in_memory(db: Database) -> Store {
        Store {
            db,
            wal: None,
            pending: Pending::default(),
        }
    }

    /// Takes in what is pending, if anything: before every write.
    fn settle(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let next = take_in(&self.db, &self.pending)?;
        if let Some(wal) = &mut self.wal {
            wal.restart(next);
        }
        self.pending = Pending::default();
        tracing::info!("the write-ahead log's records are in the database: writes go on");
        Ok(())
    }
}

impl From<redb::Error> for BackendError {
    fn from(e: redb::Error) -> Self {
        let detail = e.to_string();
        // redb's errors name no source: the I/O error inside is the cause to keep (a full disk).
        match e {
            redb::Error::Io(io) => BackendError::caused_by(detail, io),
            other => BackendError::caused_by(detail, other),
        }
    }
}

fn storage(e: impl Into<redb::Error>) -> BackendError {
    BackendError::from(e.into())
}

/// How a store on disk is opened.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Whether the write-ahead log syncs its records. Without (etcd's `--unsafe-no-fsync`),
    /// appends are acknowledged once written, before they reach the disk: a crash of Strata loses
    /// nothing, a crash of the machine or a power cut may lose acknowledged writes. For tests and
    /// throwaway clusters.
    pub fsync: bool,
    /// The ids a new store takes (random if None); a store keeps its own for life.
    pub identity: Option<Identity>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fsync: true,
            identity: None,
        }
    }
}

impl Embedded {
    /// Opens (creating if needed) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, Options::default())
    }

    /// Whether directory `dir` holds a store already.
    pub fn exists(dir: &Path) -> bool {
        dir.join("strata.redb").exists()
    }

    /// Opens (creating if needed) the store in directory `dir` as `options` say.
    pub fn open_with(dir: &Path, options: Options) -> Result<Self> {
        let Options { fsync, identity } = options;
        let cannot = |e: std::io::Error| {
            BackendError::caused_by(format!("cannot create data dir {}: {e}", dir.display()), e)
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(cannot)?;
            // The directory's own entry, durable before anything in it is acknowledged (the
            // write-ahead log syncs the entries of the files within).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)
                    .and_then(|p| p.sync_all())
                    .map_err(cannot)?;
            }
        }
        let path = dir.join("strata.redb");
        // redb may panic opening a file damaged behind its back (a plain open does not promise to
        // detect it): say so, and how to check it, rather than crash.
        std::panic::catch_unwind(|| {
            Self::init(
                open_store(&path, fsync)?,
                Some(path.clone()),
                fsync,
                identity,
            )
        })
        .unwrap_or_else(|_| {
            Err(BackendError::Corrupt {
                revision: 0,
                detail: format!(
                    "{} is damaged: reading it failed; --experimental-initial-corrupt-check \
                         checks every page of it",
                    path.display()
                ),
            })
        })
    }

    /// etcd's initial corruption check of the store in `dir`, before it is opened: redb checks every
    /// page of the file against its checksum as it opens it (a plain open may panic on a file
    /// altered behind its back). An error if the file is corrupt.
    pub fn verify(dir: &Path) -> Result<()> {
        let path = dir.join("strata.redb");
        if !path.exists() {
            return Ok(());
        }
        Database::builder()
            .set_check_integrity_on_open(true)
            .open(&path)
            .map(drop)
            .map_err(storage)
    }

    /// A store in memory only, for tests.
    pub fn in_memory() -> Result<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(storage)?;
        Self::init(Store::in_memory(db), None, true, None)
    }

    fn init(
        store: Store,
        path: Option<PathBuf>,
        fsync: bool,
        new: Option<Identity>,
    ) -> Result<Self> {
        let tx = store.db.begin_write().map_err(storage)?;
        let identity = {
            tx.open_table(LOG).map_err(storage)?;
            tx.open_table(LEASES).map_err(storage)?;
            tx.open_table(LEASE_CHECKPOINTS).map_err(storage)?;
            tx.open_table(ALARMS).map_err(storage)?;
            tx.open_table(AUTH).map_err(storage)?;
            let mut meta = tx.open_table(META).map_err(storage)?;
            let mut id = |name: &str, new: Option<u64>| -> Result<u64> {
                if let Some(v) = meta.get(name).map_err(storage)? {
                    return Ok(v.value());
                }
                let fresh = new.unwrap_or_else(random_id);
                meta.insert(name, fresh).map_err(storage)?;
                Ok(fresh)
            };
            Identity {
                cluster_id: id("cluster_id", new.map(|n| n.cluster_id))?,
                member_id: id("member_id", new.map(|n| n.member_id))?,
            }
        };
        tx.commit().map_err(storage)?;
        Ok(Embedded {
            path,
            store: Arc::new(Mutex::new(Some(store))),
            identity,
            fsync,
            closed: Default::default(),
        })
    }

    /// Runs `f` on the store on a blocking thread, reopening it first if a commit failed. One
    /// call at a time: appends keep the write-ahead log in step with the database, and
    /// defragmentation needs the database to itself. A panic in `f` becomes a storage error, and
    /// the store is opened again for the next call.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        let (path, fsync) = (self.path.clone(), self.fsync);
        let closed = self.closed.clone();
        let run = move || {
            // A call that panicked left the store in an unknown state: open it again.
            let mut guard = store.lock().unwrap_or_else(|poisoned| {
                let mut guard = poisoned.into_inner();
                *guard = None;
                guard
            });
            if closed.load(Ordering::Acquire) {
                return Err(BackendError::Closed);
            }
            if guard.is_none() {
                let Some(path) = &path else {
                    return Err(BackendError::storage(
                        "in-memory store lost after a failed commit",
                    ));
                };
                *guard = Some(open_store(path, fsync)?);
            }
            let store = guard.as_mut().expect("store is open");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store)))
                .unwrap_or_else(|_| Err(BackendError::storage("a storage call panicked")));
            if matches!(result, Err(BackendError::Storage(_))) {
                // redb refuses writes after a failed commit until reopened, and a failed append may
                // have left a record in the write-ahead log: reopen (and replay) on next use. An
                // in-memory store cannot be reopened, and is lost.
                *guard = None;
            }
            result
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| BackendError::caused_by(format!("storage task failed: {e}"), e))?
    }

    /// Runs `f` on the database alone.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.with_store(move |store| f(&mut store.db)).await
    }

    /// Runs `f` in one write transaction and commits it: durable when this returns Ok.
    async fn commit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.with_store(move |store| {
            store.settle()?;
            let tx = store.db.begin_write().map_err(storage)?;
            let answer = f(&tx)?;
            tx.commit().map_err(storage)?;
            Ok(answer)
        })
        .await
    }

    /// Runs `f` in one write transaction and makes its changes durable: by syncing the record `f`
    /// returns for them in the write-ahead log and committing the database without a sync (None:
    /// nothing changed); or, for a store without a log or a record its cycle has no room for, by a
    /// synced commit, after which the log starts its next cycle.
    async fn commit_logged<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(T, Option<Record>)> + Send + 'static,
    ) -> Result<T> {
        self.with_store(move |store| {
            store.settle()?;
            let mut tx = store.db.begin_write().map_err(storage)?;
            let (answer, record) = f(&tx)?;
            let unsynced = |tx: &mut redb::WriteTransaction| {
                tx.set_durability(Durability::None).map_err(storage)
            };
            let next_cycle = match (&mut store.wal, record.map(|r| r.encode())) {
                (_, None) => {
                    unsynced(&mut tx)?;
                    None
                }
                (Some(wal), Some(record)) if wal.fits(&record) => {
                    wal.append(&record).map_err(|e| {
                        BackendError::caused_by(format!("cannot write the write-ahead log: {e}"), e)
                    })?;
                    unsynced(&mut tx)?;
                    None
                }
                // The synced commit starts the next cycle itself, so that no crash can replay the
                // old cycle over the change.
                (Some(_), Some(_)) => Some(begin_cycle(&tx)?),
                (None, Some(_)) => None,
            };
            tx.commit().map_err(storage)?;
            if let (Some(next), Some(wal)) = (next_cycle, &mut store.wal) {
                wal.restart(next);
            }
            Ok(answer)
        })
        .await
    }
}

fn insert(log: &mut redb::Table<(i64, i64), &[u8]>, rows: &[Row]) -> Result<()> {
    for (key, value) in rows {
        log.insert(key, value.as_slice()).map_err(storage)?;
    }
    Ok(())
}

/// The log rows of `entries`: (revision, sub) → the encoded event.
fn rows(entries: &[LogEntry]) -> Vec<Row> {
    entries
        .iter()
        .flat_map(|e| {
            e.events
                .iter()
                .enumerate()
                .map(move |(sub, ev)| ((e.revision, sub as i64), ev.encode_to_vec()))
        })
        .collect()
}

fn meta_value(meta: &impl ReadableTable<&'static str, u64>, name: &str, unset: i64) -> Result<i64> {
    Ok(meta
        .get(name)
        .map_err(storage)?
        .map_or(unset, |v| v.value() as i64))
}

fn decode(main: i64, bytes: &[u8]) -> Result<Event> {
    Event::decode(bytes).map_err(|e| BackendError::Corrupt {
        revision: main,
        detail: e.to_string(),
    })
}

/// The leases recorded, by id as (TTL, recorded remaining TTL or 0), with what the write-ahead
/// log holds beyond the database.
fn stored_leases(store: &mut Store) -> Result<BTreeMap<i64, (i64, i64)>> {
    let tx = store.db.begin_read().map_err(storage)?;
    let mut leases = BTreeMap::new();
    for row in tx
        .open_table(LEASES)
        .map_err(storage)?
        .iter()
        .map_err(storage)?
    {
        let (id, ttl) = row.map_err(storage)?;
        leases.insert(id.value(), (ttl.value(), 0));
    }
    match tx.open_table(LEASE_CHECKPOINTS) {
        Ok(checkpoints) => {
            for row in checkpoints.iter().map_err(storage)? {
                let (id, remaining) = row.map_err(storage)?;
                if let Some(lease) = leases.get_mut(&id.value()) {
                    lease.1 = remaining.value();
                }
            }
        }
        // A store written before checkpoints were.
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    Ok(store.pending.applied_to_leases(leases))
}

/// Makes `changes` to the leases' records in `tx`, in order, as [`apply_lease_changes`] says.
fn change_leases(tx: &redb::WriteTransaction, changes: &[(i64, LeaseChange)]) -> Result<()> {
    let mut leases = tx.open_table(LEASES).map_err(storage)?;
    let mut checkpoints = tx.open_table(LEASE_CHECKPOINTS).map_err(storage)?;
    // The leases changed, as recorded, then as the changes leave them.
    let mut changed = BTreeMap::new();
    for &(id, _) in changes {
        if let Some(ttl) = leases.get(id).map_err(storage)? {
            let remaining = checkpoints
                .get(id)
                .map_err(storage)?
                .map_or(0, |r| r.value());
            changed.insert(id, (ttl.value(), remaining));
        }
    }
    apply_lease_changes(&mut changed, changes.iter().copied());
    for &(id, _) in changes {
        match changed.get(&id) {
            Some(&(ttl, remaining)) => {
                leases.insert(id, ttl).map_err(storage)?;
                if remaining > 0 {
                    checkpoints.insert(id, remaining).map_err(storage)?;
                } else {
                    checkpoints.remove(id).map_err(storage)?;
                }
            }
            None => {
                leases.remove(id).map_err(storage)?;
                checkpoints.remove(id).map_err(storage)?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl LeaseCheckpoints for Embedded {
    async fn checkpoint_leases(&self, remaining: &[(i64, i64)]) -> Result<()> {
        let remaining = remaining.to_vec();
        self.commit_logged(move |tx| {
            let changes: Vec<(i64, LeaseChange)> = (remaining.iter())
                .map(|&(id, seconds)| (id, LeaseChange::Checkpoint(seconds)))
                .collect();
            change_leases(tx, &changes)?;
            Ok(((), Some(Record::LeaseCheckpoints(remaining))))
        })
        .await
    }

    async fn recorded(&self) -> Result<Vec<(i64, i64)>> {
        let leases = self.with_store(stored_leases).await?;
        Ok(leases
            .into_iter()
            .filter(|(_, (_, remaining))| *remaining > 0)
            .map(|(id, (_, remaining))| (id, remaining))
            .collect())
    }
}

#[async_trait]
impl Backend for Embedded {
    fn identity(&self) -> Identity {
        self.identity
    }

    fn lease_checkpoints(&self) -> Option<&dyn LeaseCheckpoints> {
        Some(self)
    }

    async fn close(&self) -> Result<()> {
        let closed = self.closed.clone();
        self.with_store(move |store| {
            store.settle()?;
            if let Some(wal) = &mut store.wal {
                new_cycle(&store.db, wal)?;
            }
            closed.store(true, Ordering::Release);
            Ok(())
        })
        .await?;
        // The database lets go of its file as it is dropped: here, not when the process exits.
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || drop(store.lock().map(|mut s| s.take())))
            .await
            .map_err(|e| BackendError::caused_by(format!("storage task failed: {e}"), e))
    }
}

#[async_trait]
impl Log for Embedded {
    async fn progress(&self) -> Result<Progress> {
        self.with_store(|store| {
            let tx = store.db.begin_read().map_err(storage)?;
            let meta = tx.open_table(META).map_err(storage)?;
            let head = meta_value(&meta, "head", Progress::EMPTY.head)?;
            Ok(Progress {
                head: store.pending.head.unwrap_or(head),
                compacted: meta_value(&meta, "compacted", Progress::EMPTY.compacted)?,
            })
        })
        .await
    }

    async fn append(&self, entries: &[LogEntry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let first = first.revision;
        let last = entries.last().expect("non-empty").revision;
        let rows = rows(entries);
        self.commit_logged(move |tx| {
            let mut meta = tx.open_table(META).map_err(storage)?;
            let head = meta_value(&meta, "head", Progress::EMPTY.head)?;
            if first != head + 1 {
                return Err(BackendError::OutOfOrder { head, got: first });
            }
            let mut log = tx.open_table(LOG).map_err(storage)?;
            insert(&mut log, &rows)?;
            meta.insert("head", last as u64).map_err(storage)?;
            Ok(((), Some(Record::Log { first, last, rows })))
        })
        .await
    }

    async fn read_log(&self, from: i64, max_events: usize) -> Result<Vec<LogEntry>> {
        self.with_store(move |store| {
            let tx = store.db.begin_read().map_err(storage)?;
            let log = tx.open_table(LOG).map_err(storage)?;
            let mut entries: Vec<LogEntry> = Vec::new();
            let stored = log
                .range((from, 0)..)
                .map_err(storage)?
                .map(|row| -> Result<_> {
                    let (key, value) = row.map_err(storage)?;
                    let (main, _) = key.value();
                    Ok((main, decode(main, value.value())?))
                });
            // What is pending follows what the database holds.
            let pending = store.pending.rows.range((from, 0)..);
            let pending = pending.map(|(&(main, _), value)| Ok((main, decode(main, value)?)));
            for (events, row) in stored.chain(pending).enumerate() {
                let (main, event) = row?;
                match entries.last_mut() {
                    Some(e) if e.revision == main => {}
                    _ if events >= max_events => break,
                    _ => entries.push(LogEntry {
                        revision: main,
                        events: Vec::new(),
                    }),
                }
                let entry = entries.last_mut().expect("pushed above");
                entry.events.push(event);
            }
            Ok(entries)
        })
        .await
    }

    async fn read_values(&self, revisions: &[Revision]) -> Result<Vec<Option<KeyValue>>> {
        let revisions = revisions.to_vec();
        self.with_store(move |store| {
            let tx = store.db.begin_read().map_err(storage)?;
            let log = tx.open_table(LOG).map_err(storage)?;
            revisions
                .iter()
                .map(|r| {
                    let event = match store.pending.rows.get(&(r.main, r.sub)) {
                        Some(value) => decode(r.main, value)?,
                        None => match log.get((r.main, r.sub)).map_err(storage)? {
                            Some(row) => decode(r.main, row.value())?,
                            None => return Ok(None),
                        },
                    };
                    Ok(event.kv.filter(|_| event.r#type == EventType::Put as i32))
                })
                .collect()
        })
        .await
    }

    async fn set_compacted(&self, revision: i64) -> Result<()> {
        self.commit(move |tx| {
            tx.open_table(META)
                .map_err(storage)?
                .insert("compacted", revision as u64)
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn remove(&self, revisions: &[Revision]) -> Result<()> {
        for chunk in revisions.chunks(REMOVE_BATCH) {
            let chunk = chunk.to_vec();
            self.commit(move |tx| {
                let mut log = tx.open_table(LOG).map_err(storage)?;
                for r in &chunk {
                    log.remove((r.main, r.sub)).map_err(storage)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn defragment(&self) -> Result<()> {
        self.with_store(|store| {
            store.settle()?;
            // Compaction moves only what is durable in the database.
            if let Some(wal) = &mut store.wal {
                new_cycle(&store.db, wal)?;
            }
            while store.db.compact().map_err(storage)? {}
            Ok(())
        })
        .await
    }

    fn usage(&self) -> Usage {
        // redb reports allocated pages only inside a write transaction, which would wait for the
        // writer; the file size answers at once and is what `--quota-backend-bytes` limits.
        let size = self
            .path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len() as i64);
        Usage { size, in_use: size }
    }
}

#[async_trait]
impl Restore for Embedded {
    async fn begin_restore(&self) -> Result<()> {
        self.commit(move |tx| {
            let mut meta = tx.open_table(META).map_err(storage)?;
            let log = tx.open_table(LOG).map_err(storage)?;
            if meta_value(&meta, "head", Progress::EMPTY.head)? != Progress::EMPTY.head
                || log.first().map_err(storage)?.is_some()
            {
                return Err(BackendError::NotEmpty);
            }
            meta.insert("head", Progress::RESTORING as u64)
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn restore_log(&self, entries: &[LogEntry]) -> Result<()> {
        let rows = rows(entries);
        self.commit(move |tx| {
            let meta = tx.open_table(META).map_err(storage)?;
            if meta_value(&meta, "head", Progress::EMPTY.head)? != Progress::RESTORING {
                return Err(BackendError::NotRestoring);
            }
            let mut log = tx.open_table(LOG).map_err(storage)?;
            insert(&mut log, &rows)
        })
        .await
    }

    async fn restore_leases(&self, leases: &[(i64, i64, i64)]) -> Result<()> {
        let granted: Vec<(i64, i64)> = leases.iter().map(|&(id, ttl, _)| (id, ttl)).collect();
        self.put_leases(&granted).await?;
        let remaining: Vec<(i64, i64)> = (leases.iter())
            .filter(|(_, _, remaining)| *remaining > 0)
            .map(|&(id, _, remaining)| (id, remaining))
            .collect();
        self.checkpoint_leases(&remaining).await
    }

    async fn finish_restore(&self, progress: Progress) -> Result<()> {
        self.commit(move |tx| {
            let mut meta = tx.open_table(META).map_err(storage)?;
            if meta_value(&meta, "head", Progress::EMPTY.head)? != Progress::RESTORING {
                return Err(BackendError::NotRestoring);
            }
            meta.insert("head", progress.head as u64).map_err(storage)?;
            meta.insert("compacted", progress.compacted as u64)
                .map_err(storage)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Records for Embedded {
    async fn put_leases(&self, granted: &[(i64, i64)]) -> Result<Vec<bool>> {
        let granted = granted.to_vec();
        self.commit_logged(move |tx| {
            let mut leases = tx.open_table(LEASES).map_err(storage)?;
            let mut recorded = Vec::with_capacity(granted.len());
            let mut new = Vec::new();
            for (id, ttl) in granted {
                let exists = leases.get(id).map_err(storage)?.is_some();
                if !exists {
                    leases.insert(id, ttl).map_err(storage)?;
                    new.push((id, ttl));
                }
                recorded.push(!exists);
            }
            let record = (!new.is_empty()).then_some(Record::Leases(new));
            Ok((recorded, record))
        })
        .await
    }

    async fn remove_lease(&self, id: i64) -> Result<()> {
        self.commit_logged(move |tx| {
            change_leases(tx, &[(id, LeaseChange::Removed)])?;
            Ok(((), Some(Record::LeaseRemoved(id))))
        })
        .await
    }

    async fn leases(&self) -> Result<Vec<(i64, i64)>> {
        let leases = self.with_store(stored_leases).await?;
        Ok(leases.into_iter().map(|(id, (ttl, _))| (id, ttl)).collect())
    }

    async fn put_alarm(&self, member: u64, alarm: i32) -> Result<()> {
        self.commit(move |tx| {
            tx.open_table(ALARMS)
                .map_err(storage)?
                .insert((member, alarm), ())
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn remove_alarm(&self, member: u64, alarm: i32) -> Result<()> {
        self.commit(move |tx| {
            tx.open_table(ALARMS)
                .map_err(storage)?
                .remove((member, alarm))
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn auth(&self) -> Result<Option<(u64, Vec<u8>)>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(storage)?;
            let auth = tx.open_table(AUTH).map_err(storage)?;
            let last = auth.last().map_err(storage)?;
            Ok(last.map(|(generation, state)| (generation.value(), state.value().to_vec())))
        })
        .await
    }

    async fn put_auth(&self, generation: u64, state: &[u8]) -> Result<bool> {
        let state = state.to_vec();
        self.commit(move |tx| {
            let mut auth = tx.open_table(AUTH).map_err(storage)?;
            let stored = auth.last().map_err(storage)?.map(|(g, _)| g.value());
            if stored.unwrap_or(0) != generation {
                return Ok(false);
            }
            auth.retain(|_, _| false).map_err(storage)?;
            auth.insert(generation + 1, state.as_slice())
                .map_err(storage)?;
            Ok(true)
        })
        .await
    }

    async fn alarms(&self) -> Result<Vec<(u64, i32)>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(storage)?;
            let alarms = tx.open_table(ALARMS).map_err(storage)?;
            alarms
                .iter()
                .map_err(storage)?
                .map(|row| Ok(row.map_err(storage)?.0.value()))
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests;
