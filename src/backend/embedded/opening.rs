//! Opening a store on disk: the database, and the write-ahead log beside it read back and taken
//! in (or left pending on a full disk); and the log's cycles, each started by a synced commit of
//! the database.

use super::pending::Pending;
use super::record::Record;
use super::{change_leases, meta_value, storage, BackendError, Progress, Result, Store, LOG, META};
use crate::backend::wal::Wal;
use redb::{Database, ReadableDatabase};
use std::path::Path;

/// redb's page cache. The index holds every key's newest value in memory, so the file is read only
/// for history (old revisions, watch replay, HashKV, recovery); the operating system's page cache
/// serves those too. redb's default (1 GiB) kept a copy of the whole file in the process; 16 MiB
/// holds the pages an append touches, and loading a million keys is as fast as with 64.
const CACHE_BYTES: usize = 16 << 20;

pub(super) fn create(path: &Path) -> Result<Database> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(storage)
}

/// Opens the store at `path` with its write-ahead log beside it (syncing its records if `fsync`),
/// replaying the log's records that the database lacks, and starts the log's next cycle. If the
/// disk is too full for the database to take them in, they stay pending (served from memory, and
/// taken in before the next write).
pub(super) fn open_store(path: &Path, fsync: bool) -> Result<Store> {
    let db = create(path)?;
    let (mut wal, records) = Wal::open(&path.with_extension("wal"), stored_cycle(&db)?)
        .map_err(|e| BackendError::caused_by(format!("cannot open the write-ahead log: {e}"), e))?;
    if !fsync {
        wal.skip_fsync();
    }
    if !records.is_empty() {
        tracing::info!(
            records = records.len(),
            "replaying the write-ahead log: the store was not closed cleanly"
        );
    }
    let records = records
        .iter()
        .map(|r| Record::decode(r))
        .collect::<Result<Vec<_>>>()?;
    let head = {
        let tx = db.begin_read().map_err(storage)?;
        match tx.open_table(META) {
            Ok(meta) => meta_value(&meta, "head", Progress::EMPTY.head)?,
            Err(redb::TableError::TableDoesNotExist(_)) => Progress::EMPTY.head,
            Err(e) => return Err(storage(e)),
        }
    };
    let pending = Pending::new(records, head)?;
    let next = match take_in(&db, &pending) {
        Ok(next) => next,
        Err(BackendError::Storage(f)) if f.is_out_of_space() => {
            tracing::warn!(
                error = %f,
                "the disk is full: the write-ahead log's records are served from memory, and \
                 writes fail until there is room to take them in"
            );
            // redb refuses everything after a failed commit until the file is opened again.
            drop(db);
            return Ok(Store {
                db: create(path)?,
                wal: Some(wal),
                pending,
            });
        }
        Err(e) => return Err(e),
    };
    wal.restart(next);
    Ok(Store {
        db,
        wal: Some(wal),
        pending: Pending::default(),
    })
}

/// Takes `pending` into the database with a synced commit that records the write-ahead log's next
/// cycle; returns that cycle, to start once the commit is done.
pub(super) fn take_in(db: &Database, pending: &Pending) -> Result<u64> {
    let tx = db.begin_write().map_err(storage)?;
    {
        let mut meta = tx.open_table(META).map_err(storage)?;
        let mut log = tx.open_table(LOG).map_err(storage)?;
        change_leases(&tx, &pending.leases)?;
        for (key, value) in &pending.rows {
            log.insert(key, value.as_slice()).map_err(storage)?;
        }
        if let Some(head) = pending.head {
            meta.insert("head", head as u64).map_err(storage)?;
        }
    }
    let next = begin_cycle(&tx)?;
    tx.commit().map_err(storage)?;
    Ok(next)
}

/// The write-ahead log's cycle the database records (0 before the first).
pub(super) fn stored_cycle(db: &Database) -> Result<u64> {
    let tx = db.begin_read().map_err(storage)?;
    match tx.open_table(META) {
        Ok(meta) => Ok(meta
            .get("wal_cycle")
            .map_err(storage)?
            .map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(storage(e)),
    }
}

/// Records a new cycle for the write-ahead log in `tx`, to start once `tx` has committed with a
/// sync (so that the database holds everything written in the cycle before). Cycles are random,
/// not counted: records of an earlier cycle, or bytes a client stored to look like records,
/// cannot pass for the current cycle's without guessing 64 random bits.
pub(super) fn begin_cycle(tx: &redb::WriteTransaction) -> Result<u64> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| BackendError::storage("no randomness for the write-ahead log"))?;
    let next = u64::from_le_bytes(bytes);
    tx.open_table(META)
        .map_err(storage)?
        .insert("wal_cycle", next)
        .map_err(storage)?;
    Ok(next)
}

/// Makes everything the database took in durable, and starts the write-ahead log's next cycle.
pub(super) fn new_cycle(db: &Database, wal: &mut Wal) -> Result<()> {
    let tx = db.begin_write().map_err(storage)?;
    let next = begin_cycle(&tx)?;
    tx.commit().map_err(storage)?;
    wal.restart(next);
    Ok(())
}
