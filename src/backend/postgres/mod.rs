//! The PostgreSQL backend: the log in a shared database, so that any number of stateless Strata
//! frontends serve one etcd cluster.
//!
//! Tables (schema version 1):
//! - `strata_meta`: one row (id 1) with the schema version, the cluster id, the head revision and
//!   the compaction revision. The head is the revision counter and its row lock the append right:
//!   a frontend's writer takes it ([`Shared::lock`]: `SELECT … FOR UPDATE` in a transaction),
//!   catches up to the head it read, evaluates its batch, and appends in the same transaction
//!   (the rows, and the head moved from the revision before the first to the last, only if it still
//!   is that revision). Commit order is therefore revision order, and no frontend evaluates a txn
//!   on a stale state. A frontend that knows of no unread append may instead presume the head
//!   ([`Shared::append_presumed`]): lock, append under conditions read while holding it, and
//!   commit, in one round trip. A change of the auth state (`strata_auth`, a generation and the state)
//!   takes the same row lock, so that each append is made under one known auth state.
//! - `strata_log`: one row per change, keyed by (revision, sub).
//! - `strata_leases`: lease id → TTL, and when it expires by the database's clock (every frontend
//!   renews through it; `strata_keeper` names the one frontend that expires leases, for a term it
//!   keeps renewing); `strata_alarms`: (member, alarm).
//! - `strata_members`: each frontend's id, name, client and peer URLs with the database time of its last
//!   heartbeat; the member list shows those heard from within [`MEMBER_TIMEOUT_SECONDS`].
//!
//! The SQL keeps to what CockroachDB and YugabyteDB also accept: plain tables, `INSERT … ON
//! CONFLICT`, multi-array `UNNEST`, data-modifying CTEs, `SELECT … FOR UPDATE` (also inside a
//! CTE), and `SET default_transaction_isolation = 'read committed'` on each connection.
//! LISTEN/NOTIFY (and `pg_notify`) is used only as a wake-up for other frontends' tailers, which
//! also poll; without it (or if it fails) they only poll. PostgreSQL's own, and off the request path: the space used
//! (`pg_total_relation_size`; without it only this frontend's appends are counted) and
//! defragmentation (`VACUUM FULL`).
//!
//! Every statement has a deadline: while the database is unreachable calls fail (and requests with
//! them) instead of hanging, and the next call reconnects.

mod connect;
mod readers;
mod schema;
mod session;
mod shared;
mod tail;
#[cfg(test)]
pub(crate) mod tests;
pub mod tls;

use readers::{watch_standby, Readers, Reads, Standby};
use schema::init_schema;
use session::{db_error, deadline, Conn, Params, Session, STATEMENT_DEADLINE};
use tail::{measure_usage, tail};

pub use tls::Connection;

use super::{
    Backend, BackendError, Identity, Locked, Log, LogEntry, MemberRecord, Presumed, Progress,
    ReadIndex, Records, Restore, Result, Shared, Usage,
};
use crate::backend::Revision;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::tasks::Tasks;
use async_trait::async_trait;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio_postgres::{AsyncMessage, Client, Row, SimpleQueryMessage, SimpleQueryRow, Statement};

/// A log row's size beyond its key and value, for the estimate: PostgreSQL's tuple header, the
/// other columns, and the primary key's index entry.
const ROW_OVERHEAD: i64 = 100;
/// The longest a defragmentation may take (it rewrites the whole log).
const DEFRAGMENT_DEADLINE: Duration = Duration::from_secs(3600);
/// Rows removed per statement during physical compaction, so that appends are never held up long.
const REMOVE_BATCH: usize = 10_000;
/// The notification channel an append announces its head on.
const CHANNEL: &str = "strata_log";
/// Log events read together with taking the append right; more are read after it.
const LOCK_READ_EVENTS: usize = 4096;
/// How long the lease keeper holds its role without renewing it.
const KEEPER_TERM: Duration = Duration::from_secs(3);
/// A frontend not heard from for this long is left out of the member list.
const MEMBER_TIMEOUT_SECONDS: i64 = 10;
/// A frontend not heard from for this long is forgotten.
const MEMBER_FORGET_SECONDS: i64 = 24 * 3600;
/// Connections shared by reads; each carries many pipelined queries at once.
const READERS: usize = 2;

/// Moves the head from $2 to $1 (`moved`), only if it still is $2 and the conditions given (SQL
/// beginning with AND) hold.
macro_rules! moved_if {
    ($($condition:tt)*) => {
        concat!(
            "
WITH moved AS (
    UPDATE strata_meta SET head = $1 WHERE id = 1 AND head = $2",
            $($condition)*,
            " RETURNING head
)"
        )
    };
}
use moved_if;
/// Inserts the rows $3 to $10 if the head `moved`.
macro_rules! log_rows_if_moved {
    () => {
        "
INSERT INTO strata_log (revision, sub, deleted, key, create_revision, version, lease, value)
SELECT * FROM UNNEST($3::BIGINT[], $4::BIGINT[], $5::BOOLEAN[], $6::BYTEA[], $7::BIGINT[],
                     $8::BIGINT[], $9::BIGINT[], $10::BYTEA[])
WHERE EXISTS (SELECT 1 FROM moved)"
    };
}
use log_rows_if_moved;
/// Inserts the rows $3 to $10 and moves the head from $2 to $1, only if it still is $2.
const APPEND: &str = concat!(moved_if!(""), log_rows_if_moved!());

/// Marks a database never written as being restored (its head 0).
const BEGIN_RESTORE: &str = "
UPDATE strata_meta SET head = 0
WHERE id = 1 AND head = 1 AND NOT EXISTS (SELECT 1 FROM strata_log)
RETURNING head";

/// Rows of a history being restored, into a database marked so.
const RESTORE_LOG: &str = "
WITH inserted AS (
    INSERT INTO strata_log (revision, sub, deleted, key, create_revision, version, lease, value)
    SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BOOLEAN[], $4::BYTEA[], $5::BIGINT[],
                         $6::BIGINT[], $7::BIGINT[], $8::BYTEA[])
    WHERE EXISTS (SELECT 1 FROM strata_meta WHERE id = 1 AND head = 0)
    RETURNING 1
)
SELECT count(*) FROM inserted";

const FINISH_RESTORE: &str = "
UPDATE strata_meta SET head = $1, compacted = $2 WHERE id = 1 AND head = 0 RETURNING head";

/// The columns of the log rows of `entries`, keys and values borrowed from them.
type LogRows<'a> = (
    Vec<i64>,
    Vec<i64>,
    Vec<bool>,
    Vec<&'a [u8]>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<&'a [u8]>,
);

/// Two numbers, then the columns of `rows`: the parameters of APPEND and RESTORE.
fn row_params<'a>(rows: &'a LogRows<'_>) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 8] {
    [
        &rows.0, &rows.1, &rows.2, &rows.3, &rows.4, &rows.5, &rows.6, &rows.7,
    ]
}

fn with_rows<'a>(
    one: &'a i64,
    two: &'a i64,
    rows: &'a LogRows<'_>,
) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 10] {
    let [a, b, c, d, e, f, g, h] = row_params(rows);
    [one, two, a, b, c, d, e, f, g, h]
}

/// Lease rows of (id, TTL) columns, as pairs.
fn id_and_ttl(rows: &[Row]) -> Vec<(i64, i64)> {
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The first and last revision of `entries` (None if there are none), which must follow one
/// another.
fn numbered(entries: &[LogEntry]) -> Result<Option<(i64, i64)>> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(None);
    };
    for (expected, entry) in (first.revision..).zip(entries) {
        if entry.revision != expected {
            return Err(BackendError::OutOfOrder {
                head: expected - 1,
                got: entry.revision,
            });
        }
    }
    Ok(Some((first.revision, last.revision)))
}

/// The log rows of `entries`, and about how much space they take.
fn log_rows(entries: &[LogEntry]) -> (LogRows<'_>, i64) {
    let events = entries.iter().map(|e| e.events.len()).sum();
    let mut rows: LogRows = (
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
    );
    let mut bytes = 0;
    for entry in entries {
        for (sub, e) in entry.events.iter().enumerate() {
            let (key, value, create_revision, version, lease) = match &e.kv {
                Some(kv) => (
                    &kv.key[..],
                    &kv.value[..],
                    kv.create_revision,
                    kv.version,
                    kv.lease,
                ),
                None => (&[][..], &[][..], 0, 0, 0),
            };
            bytes += (key.len() + value.len()) as i64 + ROW_OVERHEAD;
            rows.0.push(entry.revision);
            rows.1.push(sub as i64);
            rows.2.push(e.r#type == EventType::Delete as i32);
            rows.3.push(key);
            rows.4.push(create_revision);
            rows.5.push(version);
            rows.6.push(lease);
            rows.7.push(value);
        }
    }
    (rows, bytes)
}

macro_rules! log_columns {
    () => {
        "revision, sub, deleted, key, create_revision, version, lease, value"
    };
}

const READ_LOG: &str = concat!(
    "SELECT ",
    log_columns!(),
    " FROM strata_log WHERE revision >= $1 ORDER BY revision, sub LIMIT $2"
);
const READ_REST_OF_REVISION: &str = concat!(
    "SELECT ",
    log_columns!(),
    " FROM strata_log WHERE revision = $1 AND sub > $2 ORDER BY sub"
);
const READ_VALUES: &str = "
SELECT l.revision, l.sub, l.deleted, l.key, l.create_revision, l.version, l.lease, l.value
FROM strata_log l
JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS r (revision, sub)
  ON l.revision = r.revision AND l.sub = r.sub
WHERE NOT l.deleted";
const PROGRESS: &str = "SELECT head, compacted FROM strata_meta WHERE id = 1";
/// The auth state's generation, 0 before the first change.
macro_rules! auth_generation {
    () => {
        "COALESCE((SELECT generation FROM strata_auth WHERE id = 1), 0)"
    };
}
use auth_generation;
const READ_INDEX: &str = concat!(
    "SELECT head, ",
    auth_generation!(),
    " FROM strata_meta WHERE id = 1"
);
const LOCK: &str = "SELECT head, compacted FROM strata_meta WHERE id = 1 FOR UPDATE";
/// Sent after [`LOCK`]: a statement of its own, so that it reads the auth state as of holding the
/// lock (a statement sees only what committed before it began).
const LOCKED_AUTH: &str = concat!("SELECT ", auth_generation!());
/// Auth changes take the append right's row lock (until their statement commits), so that no
/// change commits while a frontend holds the right: writes and auth changes are in one order.
const FIRST_AUTH: &str = "
WITH appends AS (SELECT id FROM strata_meta WHERE id = 1 FOR UPDATE)
INSERT INTO strata_auth (id, generation, state) SELECT 1, 1, $1 FROM appends
ON CONFLICT (id) DO NOTHING";
const NEXT_AUTH: &str = "
WITH appends AS (SELECT id FROM strata_meta WHERE id = 1 FOR UPDATE)
UPDATE strata_auth SET generation = generation + 1, state = $2
WHERE id = 1 AND generation = $1 AND EXISTS (SELECT 1 FROM appends)";

/// How a frontend opens the database.
#[derive(Default)]
pub struct Options {
    /// A hot standby of the database: the log and its values are read from it first.
    pub standby: Option<Connection>,
    /// The cluster id a new database takes (random if None); a database keeps its own.
    pub cluster_id: Option<u64>,
}

pub struct Postgres {
    inner: Arc<Inner>,
    identity: Identity,
    /// Following the log's head, and measuring the tables' size.
    tasks: Tasks,
}

struct Inner {
    config: Connection,
    /// The connection of the append transaction (see [`Shared::lock`]).
    appender: Mutex<Session>,
    /// The connection other writes go through, one at a time.
    writer: Mutex<Session>,
    /// The connection auth changes go through: they wait for the append right, and must not hold
    /// up the writes of the writer connection (lease renewals among them) meanwhile.
    auth: Mutex<Session>,
    /// Connections shared by reads, on the primary.
    readers: Readers,
    /// The hot standby the log and its values are read from first, if one is given.
    standby: Option<Standby>,
    /// The newest head this process has heard of from others: notifications and reads of the head.
    head: watch::Sender<i64>,
    size: AtomicI64,
    notify: std::sync::atomic::AtomicBool,
}

/// A stable 64-bit FNV-1a hash, for member ids that survive restarts and upgrades.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// What [`PROGRESS`] read.
fn progress_of(rows: &[Row]) -> Result<Progress> {
    let row = rows
        .first()
        .ok_or_else(|| BackendError::Schema("strata_meta has no row".into()))?;
    Ok(Progress {
        head: row.get(0),
        compacted: row.get(1),
    })
}

/// A text column of a simple query's row as a number.
fn number(row: &SimpleQueryRow, column: usize) -> Result<i64> {
    row.get(column)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BackendError::Schema(format!("strata_meta column {column} is not a number")))
}

impl Postgres {
    /// Connects, creates or checks the schema, and starts the tailer. `member` names this frontend
    /// (its name and client URLs): the same name gives the same member id after a restart.
    pub async fn open(config: Connection, member: &str, options: Options) -> Result<Postgres> {
        let Options {
            standby,
            cluster_id,
        } = options;
        let conn = Conn::open(&config).await?;
        let cluster_id = init_schema(&conn.client, cluster_id).await?;
        let (head, _) = watch::channel(Progress::EMPTY.head);
        let inner = Arc::new(Inner {
            readers: Readers::new(config.clone()),
            config,
            appender: Session::idle(None),
            writer: Session::idle(Some(conn)),
            auth: Session::idle(None),
            standby: standby.map(Standby::new),
            head,
            size: AtomicI64::new(0),
            notify: Default::default(),
        });
        inner.progress().await?;
        inner.measure_usage().await;
        let tasks = Tasks::default();
        tasks.spawn(tail(Arc::downgrade(&inner)));
        tasks.spawn(measure_usage(Arc::downgrade(&inner)));
        if inner.standby.is_some() {
            tasks.spawn(watch_standby(Arc::downgrade(&inner)));
        }
        Ok(Postgres {
            identity: Identity {
                cluster_id,
                member_id: fnv(&[&cluster_id.to_be_bytes(), member.as_bytes()]),
            },
            inner,
            tasks,
        })
    }
}

impl Inner {
    /// Runs a read on the primary.
    async fn read(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        self.readers.read(sql, params).await
    }

    /// Runs one write statement on the writer connection; returns the rows it changed.
    async fn write(&self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let mut writer = self.writer.lock().await;
        writer.execute(&self.config, sql, params).await
    }

    /// Runs one write statement on the writer connection; returns the rows it returns.
    async fn write_rows(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let mut writer = self.writer.lock().await;
        writer.query(&self.config, sql, params).await
    }

    /// Runs a maintenance statement on the writer connection, with a longer deadline.
    async fn maintain(&self, sql: &str) -> Result<()> {
        let mut writer = self.writer.lock().await;
        writer
            .simple(&self.config, sql, DEFRAGMENT_DEADLINE)
            .await?;
        Ok(())
    }

    async fn progress(&self) -> Result<Progress> {
        let progress = progress_of(&self.read(PROGRESS, &[]).await?)?;
        self.seen(progress.head);
        Ok(progress)
    }

    /// A wake-up for other frontends' tailers naming the head as the transaction it runs in leaves
    /// it (sent on commit; they poll if it is lost); None where LISTEN/NOTIFY does not work.
    fn wake_up(&self) -> Option<String> {
        self.notify.load(Ordering::Relaxed).then(|| {
            format!("SELECT pg_notify('{CHANNEL}', head::TEXT) FROM strata_meta WHERE id = 1")
        })
    }

    /// What ends an append's transaction: the wake-up, then the commit.
    fn finish_append(&self) -> String {
        match self.wake_up() {
            Some(wake_up) => format!("{wake_up}; COMMIT"),
            None => "COMMIT".to_owned(),
        }
    }

    fn seen(&self, head: i64) {
        self.head.send_if_modified(|h| {
            let newer = head > *h;
            if newer {
                *h = head;
            }
            newer
        });
    }

    async fn measure_usage(&self) {
        let sql = "SELECT CAST(pg_total_relation_size('strata_log') + pg_total_relation_size('strata_meta')
                 + pg_total_relation_size('strata_leases') + pg_total_relation_size('strata_alarms') AS BIGINT)";
        match self.read(sql, &[]).await {
            Ok(rows) => {
                if let Some(row) = rows.first() {
                    self.size.store(row.get(0), Ordering::Relaxed);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not measure the space used"),
        }
    }
}

fn event(row: &Row) -> Event {
    let deleted: bool = row.get(2);
    let key: Vec<u8> = row.get(3);
    let revision: i64 = row.get(0);
    let kv = if deleted {
        KeyValue {
            key: key.into(),
            mod_revision: revision,
            ..Default::default()
        }
    } else {
        KeyValue {
            key: key.into(),
            create_revision: row.get(4),
            mod_revision: revision,
            version: row.get(5),
            value: row.get::<_, Vec<u8>>(7).into(),
            lease: row.get(6),
        }
    };
    Event {
        r#type: if deleted {
            EventType::Delete
        } else {
            EventType::Put
        } as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

/// Log rows, in order, as whole revisions.
fn entries(rows: &[Row]) -> Vec<LogEntry> {
    let mut entries: Vec<LogEntry> = Vec::new();
    for row in rows {
        let revision: i64 = row.get(0);
        match entries.last_mut() {
            Some(e) if e.revision == revision => e.events.push(event(row)),
            _ => entries.push(LogEntry {
                revision,
                events: vec![event(row)],
            }),
        }
    }
    entries
}

/// Up to about `max_events` log events from revision `from` on, read from `source`: whole
/// revisions only.
async fn read_log(source: &impl Reads, from: i64, max_events: usize) -> Result<Vec<LogEntry>> {
    let limit = max_events.max(1) as i64;
    let mut rows = source.read(READ_LOG, &[&from, &limit]).await?;
    if rows.len() as i64 == limit {
        // Whole revisions only: the rest of the last one.
        let last = rows.last().expect("limit is at least 1");
        let (revision, sub): (i64, i64) = (last.get(0), last.get(1));
        rows.extend(
            source
                .read(READ_REST_OF_REVISION, &[&revision, &sub])
                .await?,
        );
    }
    Ok(entries(&rows))
}

/// Values found, by revision.
fn values(rows: &[Row]) -> impl Iterator<Item = ((i64, i64), KeyValue)> + '_ {
    rows.iter()
        .map(|row| ((row.get(0), row.get(1)), event(row).kv.unwrap_or_default()))
}

/// Splits revisions into the two arrays the statements unnest.
fn columns(revisions: &[Revision]) -> (Vec<i64>, Vec<i64>) {
    revisions.iter().map(|r| (r.main, r.sub)).unzip()
}

#[async_trait]
impl Backend for Postgres {
    fn identity(&self) -> Identity {
        self.identity
    }

    /// Every commit is durable in PostgreSQL already; the connections close as the backend is
    /// dropped.
    async fn close(&self) -> Result<()> {
        self.tasks.stop().await;
        Ok(())
    }

    fn shared(&self) -> Option<&dyn Shared> {
        Some(self)
    }
}

#[async_trait]
impl Log for Postgres {
    async fn progress(&self) -> Result<Progress> {
        self.inner.progress().await
    }

    async fn append(&self, entries: &[LogEntry]) -> Result<()> {
        let Some((first, last)) = numbered(entries)? else {
            return Ok(());
        };
        let (rows, bytes) = log_rows(entries);
        let before = first - 1;
        let params = with_rows(&last, &before, &rows);
        let inserted = {
            let mut appender = self.inner.appender.lock().await;
            let config = &self.inner.config;
            if appender.locked {
                // One round trip: the rows, then the commit pipelined behind them (if the insert
                // fails, PostgreSQL turns the commit into a rollback; if it inserts nothing, the
                // commit only gives the lock back).
                let insert = appender.prepared(config, APPEND).await?;
                let conn = appender.conn(config).await?;
                let finish = self.inner.finish_append();
                let (inserted, committed) = tokio::join!(
                    deadline(conn.client.execute(&insert, &params)),
                    deadline(conn.client.batch_execute(&finish)),
                );
                appender.locked = false;
                appender.failed(inserted.and_then(|n| committed.map(|()| n)))?
            } else {
                let inserted = appender.execute(config, APPEND, &params).await?;
                if let Some(wake_up) = self.inner.wake_up().filter(|_| inserted > 0) {
                    if let Err(e) = appender.simple(config, &wake_up, STATEMENT_DEADLINE).await {
                        tracing::debug!(error = %e, "could not notify other frontends");
                    }
                }
                inserted
            }
        };
        if inserted == 0 {
            let head = self.inner.progress().await?.head;
            return Err(BackendError::OutOfOrder { head, got: first });
        }
        self.inner.size.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    async fn read_log(&self, from: i64, max_events: usize) -> Result<Vec<LogEntry>> {
        if let Some(standby) = &self.inner.standby {
            match read_log(standby, from, max_events).await {
                Ok(entries) if !entries.is_empty() => {
                    crate::metrics::STANDBY_READS.inc();
                    return Ok(entries);
                }
                // Not replayed there yet, or the standby failed.
                _ => {
                    crate::metrics::STANDBY_FALLBACKS.inc();
                }
            }
        }
        read_log(&self.inner.readers, from, max_events).await
    }

    async fn read_values(&self, revisions: &[Revision]) -> Result<Vec<Option<KeyValue>>> {
        if revisions.is_empty() {
            return Ok(Vec::new());
        }
        let (mains, subs) = columns(revisions);
        let mut found: HashMap<(i64, i64), KeyValue> = HashMap::new();
        if let Some(standby) = &self.inner.standby {
            if let Ok(rows) = standby.read(READ_VALUES, &[&mains, &subs]).await {
                found.extend(values(&rows));
            }
            if found.len() == revisions.len() {
                crate::metrics::STANDBY_READS.inc();
            } else {
                crate::metrics::STANDBY_FALLBACKS.inc();
            }
        }
        if found.len() < revisions.len() {
            // What the standby lacks (a deleted row is asked for again, and again not found).
            let (mains, subs): (Vec<i64>, Vec<i64>) = revisions
                .iter()
                .filter(|r| !found.contains_key(&(r.main, r.sub)))
                .map(|r| (r.main, r.sub))
                .unzip();
            let rows = self.inner.read(READ_VALUES, &[&mains, &subs]).await?;
            found.extend(values(&rows));
        }
        Ok(revisions
            .iter()
            .map(|r| found.remove(&(r.main, r.sub)))
            .collect())
    }

    async fn set_compacted(&self, revision: i64) -> Result<()> {
        self.inner
            .write(
                "UPDATE strata_meta SET compacted = $1 WHERE id = 1 AND compacted < $1",
                &[&revision],
            )
            .await?;
        Ok(())
    }

    async fn remove(&self, revisions: &[Revision]) -> Result<()> {
        for chunk in revisions.chunks(REMOVE_BATCH) {
            let (mains, subs) = columns(chunk);
            self.inner
                .write(
                    "DELETE FROM strata_log WHERE (revision, sub) IN
                     (SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[]))",
                    &[&mains, &subs],
                )
                .await?;
        }
        Ok(())
    }

    async fn defragment(&self) -> Result<()> {
        // VACUUM FULL rewrites the tables and gives the space of removed rows back to the file
        // system, as etcd's defragmentation does; like it, it blocks reads and writes meanwhile
        // (here those of every frontend). PostgreSQL's autovacuum already makes that space
        // reusable without it.
        for table in ["strata_log", "strata_leases", "strata_alarms"] {
            let sql = format!("VACUUM FULL {table}");
            self.inner.maintain(&sql).await?;
        }
        self.inner.measure_usage().await;
        Ok(())
    }

    fn usage(&self) -> Usage {
        let size = self.inner.size.load(Ordering::Relaxed);
        Usage { size, in_use: size }
    }
}

#[async_trait]
impl Restore for Postgres {
    async fn begin_restore(&self) -> Result<()> {
        let marked = self.inner.write_rows(BEGIN_RESTORE, &[]).await?;
        if marked.is_empty() {
            return Err(BackendError::NotEmpty);
        }
        Ok(())
    }

    async fn restore_log(&self, entries: &[LogEntry]) -> Result<()> {
        let (rows, bytes) = log_rows(entries);
        let inserted = self
            .inner
            .write_rows(RESTORE_LOG, &row_params(&rows))
            .await?;
        if inserted.first().map(|r| r.get::<_, i64>(0)) != Some(rows.0.len() as i64) {
            return Err(BackendError::NotRestoring);
        }
        self.inner.size.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    async fn restore_leases(&self, leases: &[(i64, i64, i64)]) -> Result<()> {
        let ids: Vec<i64> = leases.iter().map(|l| l.0).collect();
        let ttls: Vec<i64> = leases.iter().map(|l| l.1).collect();
        let remaining: Vec<i64> = leases.iter().map(|l| l.2).collect();
        self.inner
            .write(
                "INSERT INTO strata_leases (id, ttl, expires_at, remaining_ttl)
                 SELECT id, ttl, now() + COALESCE(left_of_it, ttl) * INTERVAL '1 second', left_of_it
                 FROM (
                     SELECT id, ttl, NULLIF(remaining, 0) AS left_of_it
                     FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS r (id, ttl, remaining)
                 ) AS restored
                 ON CONFLICT (id) DO NOTHING",
                &[&ids, &ttls, &remaining],
            )
            .await?;
        Ok(())
    }

    async fn finish_restore(&self, progress: Progress) -> Result<()> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&progress.head, &progress.compacted];
        let finished = self.inner.write_rows(FINISH_RESTORE, &params).await?;
        if finished.is_empty() {
            return Err(BackendError::NotRestoring);
        }
        Ok(())
    }
}

#[async_trait]
impl Records for Postgres {
    async fn put_leases(&self, leases: &[(i64, i64)]) -> Result<Vec<bool>> {
        let (ids, ttls): (Vec<i64>, Vec<i64>) = leases.iter().copied().unzip();
        let rows = self
            .inner
            .write_rows(
                "INSERT INTO strata_leases (id, ttl, expires_at)
                 SELECT id, ttl, now() + ttl * INTERVAL '1 second'
                 FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS granted (id, ttl)
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                &[&ids, &ttls],
            )
            .await?;
        let mut created: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        // The first of an id in `leases` is the one recorded.
        Ok(ids.iter().map(|id| created.remove(id)).collect())
    }

    async fn remove_lease(&self, id: i64) -> Result<()> {
        let sql = "DELETE FROM strata_leases WHERE id = $1";
        let mut appender = self.inner.appender.lock().await;
        if appender.locked {
            appender.execute(&self.inner.config, sql, &[&id]).await?;
        } else {
            drop(appender);
            self.inner.write(sql, &[&id]).await?;
        }
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<(i64, i64)>> {
        let rows = self
            .inner
            .read("SELECT id, ttl FROM strata_leases ORDER BY id", &[])
            .await?;
        Ok(id_and_ttl(&rows))
    }

    async fn put_alarm(&self, member: u64, alarm: i32) -> Result<()> {
        self.inner
            .write(
                "INSERT INTO strata_alarms (member, alarm) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&(member as i64), &alarm],
            )
            .await?;
        Ok(())
    }

    async fn remove_alarm(&self, member: u64, alarm: i32) -> Result<()> {
        self.inner
            .write(
                "DELETE FROM strata_alarms WHERE member = $1 AND alarm = $2",
                &[&(member as i64), &alarm],
            )
            .await?;
        Ok(())
    }

    async fn alarms(&self) -> Result<Vec<(u64, i32)>> {
        let rows = self
            .inner
            .read("SELECT member, alarm FROM strata_alarms", &[])
            .await?;
        let mut alarms: Vec<(u64, i32)> = rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect();
        // Members are unsigned; the column's order is the signed one.
        alarms.sort_unstable();
        Ok(alarms)
    }

    async fn auth(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let rows = self
            .inner
            .read(
                "SELECT generation, state FROM strata_auth WHERE id = 1",
                &[],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1))))
    }

    async fn put_auth(&self, generation: u64, state: &[u8]) -> Result<bool> {
        // The first state inserts the row; every later one replaces it only from the generation
        // it was made from, so two frontends changing auth at once cannot lose a change.
        let mut session = self.inner.auth.lock().await;
        let config = &self.inner.config;
        let changed = if generation == 0 {
            session.execute(config, FIRST_AUTH, &[&state]).await?
        } else {
            let generation = generation as i64;
            session
                .execute(config, NEXT_AUTH, &[&generation, &state])
                .await?
        };
        Ok(changed == 1)
    }
}
