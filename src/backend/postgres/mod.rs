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
//!   on a stale state. A change of the auth state (`strata_auth`, a generation and the state)
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
//! LISTEN/NOTIFY is used only as a wake-up for other frontends' tailers, which also poll; without
//! it (or if it fails) they only poll. PostgreSQL's own, and off the request path: the space used
//! (`pg_total_relation_size`; without it only this frontend's appends are counted) and
//! defragmentation (`VACUUM FULL`).
//!
//! Every statement has a deadline: while the database is unreachable calls fail (and requests with
//! them) instead of hanging, and the next call reconnects.

mod connect;
pub mod tls;

pub use tls::Connection;

use super::{
    Backend, BackendError, Identity, Locked, LogEntry, MemberRecord, Progress, ReadIndex, Result,
    Shared, Usage,
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

/// The schema this binary creates and understands.
const SCHEMA_VERSION: i32 = 1;
/// The longest any statement may take before the call fails and its connection is dropped.
const STATEMENT_DEADLINE: Duration = Duration::from_secs(10);
/// How often a tailer reads the head even when no notification came.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the space used is measured; in between, appends add an estimate of their rows.
const USAGE_INTERVAL: Duration = Duration::from_secs(10);
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS strata_meta (
    id INT PRIMARY KEY,
    schema_version INT NOT NULL,
    cluster_id BIGINT NOT NULL,
    head BIGINT NOT NULL,
    compacted BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_log (
    revision BIGINT NOT NULL,
    sub BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    key BYTEA NOT NULL,
    create_revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (revision, sub)
);
CREATE TABLE IF NOT EXISTS strata_leases (
    id BIGINT PRIMARY KEY,
    ttl BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS strata_leases_expiry ON strata_leases (expires_at);
CREATE TABLE IF NOT EXISTS strata_keeper (
    id INT PRIMARY KEY,
    holder BIGINT NOT NULL,
    until TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_alarms (
    member BIGINT NOT NULL,
    alarm INT NOT NULL,
    PRIMARY KEY (member, alarm)
);
CREATE TABLE IF NOT EXISTS strata_auth (
    id INT PRIMARY KEY,
    generation BIGINT NOT NULL,
    state BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_members (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    client_urls TEXT NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
);
ALTER TABLE strata_members ADD COLUMN IF NOT EXISTS peer_urls TEXT NOT NULL DEFAULT '';
";

/// Every connection's transactions, whatever the database's default.
const ISOLATION: &str = "SET default_transaction_isolation = 'read committed'";

const APPEND: &str = "
WITH moved AS (
    UPDATE strata_meta SET head = $1 WHERE id = 1 AND head = $2 RETURNING head
)
INSERT INTO strata_log (revision, sub, deleted, key, create_revision, version, lease, value)
SELECT * FROM UNNEST($3::BIGINT[], $4::BIGINT[], $5::BOOLEAN[], $6::BYTEA[], $7::BIGINT[],
                     $8::BIGINT[], $9::BIGINT[], $10::BYTEA[])
WHERE EXISTS (SELECT 1 FROM moved)";

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
const PROGRESS: &str = "SELECT head, compacted FROM strata_meta WHERE id = 1";
/// The auth state's generation, 0 before the first change.
macro_rules! auth_generation {
    () => {
        "COALESCE((SELECT generation FROM strata_auth WHERE id = 1), 0)"
    };
}
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

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

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
    /// Connections shared by reads, each carrying many pipelined queries at once.
    readers: Vec<Mutex<Option<Arc<Conn>>>>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// The newest head this process has heard of from others: notifications and reads of the head.
    head: watch::Sender<i64>,
    size: AtomicI64,
    notify: std::sync::atomic::AtomicBool,
}

/// A connection, with the statements prepared on it so far.
struct Conn {
    client: Client,
    statements: std::sync::Mutex<HashMap<&'static str, Statement>>,
}

impl Conn {
    async fn open(config: &Connection) -> Result<Conn> {
        let (client, connection) = connect::connect(config).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection closed");
            }
        });
        // The append right and auth changes rely on READ COMMITTED: a statement that waited for
        // the head's row lock goes on with the row as committed. Under a stricter default (a
        // database's `default_transaction_isolation`) it would fail with a serialization error.
        deadline(client.batch_execute(ISOLATION)).await?;
        Ok(Conn {
            client,
            statements: Default::default(),
        })
    }

    async fn statement(&self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.lock().expect("statements lock").get(sql) {
            return Ok(s.clone());
        }
        let statement = deadline(self.client.prepare(sql)).await?;
        self.statements
            .lock()
            .expect("statements lock")
            .insert(sql, statement.clone());
        Ok(statement)
    }

    async fn query(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql).await?;
        deadline(self.client.query(&statement, params)).await
    }

    async fn execute(&self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let statement = self.statement(sql).await?;
        deadline(self.client.execute(&statement, params)).await
    }
}

/// A connection used by one caller at a time, and whether a transaction is open on it (the append
/// transaction, holding the head's row lock). Any failure drops the connection, which ends the
/// transaction: PostgreSQL rolls back what did not commit; the next use connects afresh.
struct Session {
    conn: Option<Conn>,
    locked: bool,
}

impl Session {
    /// A session with no transaction open, on `conn` or on one opened at first use.
    fn idle(conn: Option<Conn>) -> Mutex<Session> {
        Mutex::new(Session {
            conn,
            locked: false,
        })
    }

    /// The connection, opened if needed; but while the transaction is open a lost connection is an
    /// error, never replaced: the transaction, and the lock, went with it.
    async fn conn(&mut self, config: &Connection) -> Result<&Conn> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            if self.locked {
                self.conn = None;
                self.locked = false;
                return Err(BackendError::storage(
                    "postgres: the append transaction's connection was lost",
                ));
            }
            self.conn = Some(Conn::open(config).await?);
        }
        Ok(self.conn.as_ref().expect("connected above"))
    }

    /// `sql` prepared on the connection (once per connection).
    async fn prepared(&mut self, config: &Connection, sql: &'static str) -> Result<Statement> {
        let result = self.conn(config).await?.statement(sql).await;
        self.failed(result)
    }

    fn failed<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.conn = None;
            self.locked = false;
        }
        result
    }

    async fn execute(
        &mut self,
        config: &Connection,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64> {
        let result = self.conn(config).await?.execute(sql, params).await;
        self.failed(result)
    }

    async fn query(
        &mut self,
        config: &Connection,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<Row>> {
        let result = self.conn(config).await?.query(sql, params).await;
        self.failed(result)
    }

    /// Runs statements as one simple query (one round trip) within `limit`, returning the rows of
    /// the last.
    async fn simple(
        &mut self,
        config: &Connection,
        sql: &str,
        limit: Duration,
    ) -> Result<Vec<SimpleQueryRow>> {
        let result = deadline_of(limit, self.conn(config).await?.client.simple_query(sql)).await;
        let messages = self.failed(result)?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect())
    }
}

fn db_error(e: tokio_postgres::Error) -> BackendError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    BackendError::caused_by(format!("postgres: {detail}"), e)
}

/// Runs `f`, failing if it takes longer than [`STATEMENT_DEADLINE`].
async fn deadline<T>(
    f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    deadline_of(STATEMENT_DEADLINE, f).await
}

async fn deadline_of<T>(
    limit: Duration,
    f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result.map_err(db_error),
        Err(_) => Err(BackendError::storage(format!(
            "postgres: no answer within {}s",
            limit.as_secs()
        ))),
    }
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

/// A text column of a simple query's row as a number.
fn number(row: &SimpleQueryRow, column: usize) -> Result<i64> {
    row.get(column)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BackendError::Schema(format!("strata_meta column {column} is not a number")))
}

impl Postgres {
    /// Connects, creates or checks the schema, and starts the tailer. `member` names this frontend
    /// (its name and client URLs): the same name gives the same member id after a restart.
    pub async fn open(config: Connection, member: &str) -> Result<Postgres> {
        let conn = Conn::open(&config).await?;
        let cluster_id = init_schema(&conn.client).await?;
        let (head, _) = watch::channel(Progress::EMPTY.head);
        let inner = Arc::new(Inner {
            config,
            appender: Session::idle(None),
            writer: Session::idle(Some(conn)),
            auth: Session::idle(None),
            readers: (0..READERS).map(|_| Mutex::new(None)).collect(),
            next_reader: Default::default(),
            head,
            size: AtomicI64::new(0),
            notify: Default::default(),
        });
        inner.progress().await?;
        inner.measure_usage().await;
        let tasks = Tasks::default();
        tasks.spawn(tail(Arc::downgrade(&inner)));
        tasks.spawn(measure_usage(Arc::downgrade(&inner)));
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

/// Creates the tables if they are missing and returns the cluster id; refuses a database whose
/// schema is newer than this binary's. Frontends starting together may race to create the tables,
/// so a failed attempt is tried again.
async fn init_schema(client: &Client) -> Result<u64> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_init_schema(client).await {
            Err(BackendError::Storage(e)) if attempt < 3 => {
                tracing::info!(error = %e, "creating the schema raced another frontend; again");
            }
            result => return result,
        }
    }
}

async fn try_init_schema(client: &Client) -> Result<u64> {
    deadline(client.batch_execute(SCHEMA)).await?;
    let fresh = super::random_id() as i64;
    deadline(client.execute(
        "INSERT INTO strata_keeper (id, holder, until) VALUES (1, 0, now()) ON CONFLICT (id) DO NOTHING",
        &[],
    ))
    .await?;
    deadline(client.execute(
        "INSERT INTO strata_meta (id, schema_version, cluster_id, head, compacted)
         VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        &[
            &SCHEMA_VERSION,
            &fresh,
            &Progress::EMPTY.head,
            &Progress::EMPTY.compacted,
        ],
    ))
    .await?;
    let row = deadline(client.query_one(
        "SELECT schema_version, cluster_id FROM strata_meta WHERE id = 1",
        &[],
    ))
    .await?;
    let version: i32 = row.get(0);
    if version > SCHEMA_VERSION {
        return Err(BackendError::Schema(format!(
            "the database holds Strata schema version {version}, but this binary understands up to \
             version {SCHEMA_VERSION}: upgrade Strata"
        )));
    }
    Ok(row.get::<_, i64>(1) as u64)
}

impl Inner {
    /// A shared connection for reads, reconnecting a closed one.
    async fn reader(&self) -> Result<Arc<Conn>> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let mut slot = self.readers[i].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = Arc::new(Conn::open(&self.config).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs a read on a shared connection; a connection that missed its deadline is dropped.
    async fn read(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let conn = self.reader().await?;
        let result = conn.query(sql, params).await;
        if result.is_err() && !conn.client.is_closed() {
            for slot in &self.readers {
                let mut slot = slot.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    *slot = None;
                }
            }
        }
        result
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
        let rows = self.read(PROGRESS, &[]).await?;
        let row = rows
            .first()
            .ok_or_else(|| BackendError::Schema("strata_meta has no row".into()))?;
        let progress = Progress {
            head: row.get(0),
            compacted: row.get(1),
        };
        self.seen(progress.head);
        Ok(progress)
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

/// Follows the head moved by other frontends: notifications wake it at once, and it polls anyway.
async fn tail(inner: Weak<Inner>) {
    loop {
        let Some(config) = inner.upgrade().map(|i| i.config.clone()) else {
            return;
        };
        let (client, mut connection) = match connect::connect(&config).await {
            Ok(connected) => connected,
            Err(e) => {
                tracing::warn!(error = %e, "tailer cannot connect; polling");
                if !poll_once(&inner).await {
                    return;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
        };
        let statement = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&statement);
        let listening = tokio::select! {
            r = listen => r.is_ok(),
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                tracing::warn!(message = ?m.map(|m| m.is_ok()), "tailer connection ended early");
                false
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.notify.store(listening, Ordering::Relaxed);
        drop(strong);
        if !poll_once(&inner).await {
            return;
        }
        loop {
            tokio::select! {
                m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let Some(inner) = inner.upgrade() else { return };
                        if let Ok(head) = n.payload().parse() {
                            inner.seen(head);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                () = tokio::time::sleep(POLL_INTERVAL) => {
                    if !poll_once(&inner).await {
                        return;
                    }
                }
            }
        }
        tracing::warn!("tailer lost its connection; reconnecting");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Reads the head once; false when the backend is gone.
async fn poll_once(inner: &Weak<Inner>) -> bool {
    let Some(inner) = inner.upgrade() else {
        return false;
    };
    if let Err(e) = inner.progress().await {
        tracing::debug!(error = %e, "tailer could not read the head");
    }
    true
}

async fn measure_usage(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(USAGE_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.measure_usage().await;
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

/// Splits revisions into the two arrays the statements unnest.
fn columns(revisions: &[Revision]) -> (Vec<i64>, Vec<i64>) {
    revisions.iter().map(|r| (r.main, r.sub)).unzip()
}

#[async_trait]
impl Backend for Postgres {
    fn identity(&self) -> Identity {
        self.identity
    }

    async fn progress(&self) -> Result<Progress> {
        self.inner.progress().await
    }

    async fn append(&self, entries: &[LogEntry]) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let (first, last) = (first.revision, last.revision);
        for (expected, entry) in (first..).zip(entries) {
            if entry.revision != expected {
                return Err(BackendError::OutOfOrder {
                    head: expected - 1,
                    got: entry.revision,
                });
            }
        }
        let (rows, bytes) = log_rows(entries);
        let before = first - 1;
        let params = with_rows(&last, &before, &rows);
        let inserted = {
            let mut appender = self.inner.appender.lock().await;
            let config = &self.inner.config;
            // A wake-up for other frontends' tailers, sent on commit; they poll if it is lost.
            let notify = if self.inner.notify.load(Ordering::Relaxed) {
                format!("NOTIFY {CHANNEL}, '{last}'; ")
            } else {
                String::new()
            };
            if appender.locked {
                // One round trip: the rows, then the commit pipelined behind them (if the insert
                // fails, PostgreSQL turns the commit into a rollback; if it inserts nothing, the
                // commit only gives the lock back).
                let insert = appender.prepared(config, APPEND).await?;
                let conn = appender.conn(config).await?;
                let finish = format!("{notify}COMMIT");
                let (inserted, committed) = tokio::join!(
                    deadline(conn.client.execute(&insert, &params)),
                    deadline(conn.client.batch_execute(&finish)),
                );
                appender.locked = false;
                appender.failed(inserted.and_then(|n| committed.map(|()| n)))?
            } else {
                let inserted = appender.execute(config, APPEND, &params).await?;
                if inserted > 0 && !notify.is_empty() {
                    if let Err(e) = appender.simple(config, &notify, STATEMENT_DEADLINE).await {
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

    async fn finish_restore(&self, progress: Progress) -> Result<()> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&progress.head, &progress.compacted];
        let finished = self.inner.write_rows(FINISH_RESTORE, &params).await?;
        if finished.is_empty() {
            return Err(BackendError::NotRestoring);
        }
        Ok(())
    }

    async fn read_log(&self, from: i64, max_events: usize) -> Result<Vec<LogEntry>> {
        let limit = max_events.max(1) as i64;
        let mut rows = self.inner.read(READ_LOG, &[&from, &limit]).await?;
        if rows.len() as i64 == limit {
            // Whole revisions only: the rest of the last one.
            let last = rows.last().expect("limit is at least 1");
            let (revision, sub): (i64, i64) = (last.get(0), last.get(1));
            rows.extend(
                self.inner
                    .read(READ_REST_OF_REVISION, &[&revision, &sub])
                    .await?,
            );
        }
        Ok(entries(&rows))
    }

    async fn read_values(&self, revisions: &[Revision]) -> Result<Vec<Option<KeyValue>>> {
        if revisions.is_empty() {
            return Ok(Vec::new());
        }
        let (mains, subs) = columns(revisions);
        let rows = self
            .inner
            .read(
                "SELECT l.revision, l.sub, l.deleted, l.key, l.create_revision, l.version, l.lease,
                        l.value
                 FROM strata_log l
                 JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS r (revision, sub)
                   ON l.revision = r.revision AND l.sub = r.sub
                 WHERE NOT l.deleted",
                &[&mains, &subs],
            )
            .await?;
        let mut found: HashMap<(i64, i64), KeyValue> = rows
            .iter()
            .map(|row| ((row.get(0), row.get(1)), event(row).kv.unwrap_or_default()))
            .collect();
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
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
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

    /// Every commit is durable in PostgreSQL already; the connections close as the backend is
    /// dropped.
    async fn close(&self) -> Result<()> {
        self.tasks.stop().await;
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

    fn shared(&self) -> Option<&dyn Shared> {
        Some(self)
    }
}

#[async_trait]
impl Shared for Postgres {
    fn tail(&self) -> watch::Receiver<i64> {
        self.inner.head.subscribe()
    }

    async fn lock(&self, after: i64) -> Result<Locked> {
        let mut appender = self.inner.appender.lock().await;
        let config = &self.inner.config;
        if appender.locked {
            appender.locked = false;
            appender
                .simple(config, "ROLLBACK", STATEMENT_DEADLINE)
                .await?;
        }
        // The statements prepared before the transaction, so that nothing but them runs in it.
        let read = appender.prepared(config, READ_LOG).await?;
        let auth = appender.prepared(config, LOCKED_AUTH).await?;
        appender.prepared(config, APPEND).await?;
        // One round trip: the lock, then (pipelined behind it, so under it) the auth generation
        // and the log after `after`.
        let conn = appender.conn(config).await?;
        let limit = LOCK_READ_EVENTS as i64;
        // The level said again: a session's setting does not follow it through a pooler.
        let locking = format!("BEGIN ISOLATION LEVEL READ COMMITTED; {LOCK}");
        let from = after + 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&from, &limit];
        let (locked, auth, log) = tokio::join!(
            deadline(conn.client.simple_query(&locking)),
            deadline(conn.client.query_one(&auth, &[])),
            deadline(conn.client.query(&read, &params)),
        );
        let read = locked.and_then(|messages| {
            let meta = messages
                .into_iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                })
                .ok_or_else(|| BackendError::Schema("strata_meta has no row".into()))?;
            let progress = Progress {
                head: number(&meta, 0)?,
                compacted: number(&meta, 1)?,
            };
            Ok((progress, auth?.get::<_, i64>(0) as u64, log?))
        });
        // A failure drops the connection, and with it the transaction if it began.
        let (progress, auth, mut rows) = appender.failed(read)?;
        appender.locked = true;
        if rows.len() == LOCK_READ_EVENTS {
            // Whole revisions only: leave the last one, which may be cut, to the caller's read.
            let last: i64 = rows.last().expect("not empty").get(0);
            rows.retain(|r| r.get::<_, i64>(0) != last);
        }
        Ok(Locked {
            progress,
            auth,
            entries: entries(&rows),
        })
    }

    async fn read_index(&self) -> Result<ReadIndex> {
        let rows = self.inner.read(READ_INDEX, &[]).await?;
        let row = rows
            .first()
            .ok_or_else(|| BackendError::Schema("strata_meta has no row".into()))?;
        let index = ReadIndex {
            head: row.get(0),
            auth: row.get::<_, i64>(1) as u64,
        };
        self.inner.seen(index.head);
        Ok(index)
    }

    async fn unlock(&self) -> Result<()> {
        let mut appender = self.inner.appender.lock().await;
        if appender.locked {
            appender.locked = false;
            appender
                .simple(&self.inner.config, "COMMIT", STATEMENT_DEADLINE)
                .await?;
        }
        Ok(())
    }

    async fn leases_among(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>> {
        let ids = ids.to_vec();
        let sql = "SELECT id, ttl FROM strata_leases WHERE id = ANY($1)";
        let mut appender = self.inner.appender.lock().await;
        let rows = if appender.locked {
            appender.query(&self.inner.config, sql, &[&ids]).await?
        } else {
            drop(appender);
            self.inner.read(sql, &[&ids]).await?
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn renew_leases(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>> {
        let ids = ids.to_vec();
        let rows = self
            .inner
            .write_rows(
                "UPDATE strata_leases SET expires_at = now() + ttl * INTERVAL '1 second'
                 WHERE id = ANY($1) AND expires_at > now() RETURNING id, ttl",
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>> {
        let rows = self
            .inner
            .read(
                "SELECT ttl, CAST(FLOOR(EXTRACT(EPOCH FROM expires_at - now())) AS BIGINT)
                 FROM strata_leases WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(rows.first().map(|r| (r.get(0), r.get::<_, i64>(1).max(0))))
    }

    async fn keep_leases(&self) -> Result<bool> {
        let me = self.identity.member_id as i64;
        let seconds = KEEPER_TERM.as_secs_f64();
        // One statement, so that taking the role over and renewing every lease happen together.
        let rows = self
            .inner
            .write_rows(
                "WITH before AS (SELECT holder FROM strata_keeper WHERE id = 1),
                 took AS (
                     UPDATE strata_keeper SET holder = $1, until = now() + $2 * INTERVAL '1 second'
                     FROM before
                     WHERE strata_keeper.id = 1
                       AND (strata_keeper.holder = $1 OR strata_keeper.until < now())
                     RETURNING before.holder AS previous
                 ),
                 renewed AS (
                     UPDATE strata_leases
                     SET expires_at = GREATEST(expires_at, now() + ttl * INTERVAL '1 second')
                     WHERE EXISTS (SELECT 1 FROM took WHERE previous <> $1)
                     RETURNING id
                 )
                 SELECT previous, (SELECT count(*) FROM renewed) FROM took",
                &[&me, &seconds],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        if row.get::<_, i64>(0) != me {
            let renewed: i64 = row.get(1);
            tracing::info!(renewed, "took over as lease keeper, renewing every lease");
        }
        Ok(true)
    }

    async fn expired_leases(&self, limit: usize) -> Result<Vec<i64>> {
        let rows = self
            .inner
            .read(
                "SELECT id FROM strata_leases WHERE expires_at <= now() ORDER BY expires_at LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn heartbeat(&self, member: &MemberRecord) -> Result<()> {
        let (client_urls, peer_urls) = (member.client_urls.join(","), member.peer_urls.join(","));
        self.inner
            .write(
                "INSERT INTO strata_members (id, name, client_urls, peer_urls, last_seen)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (id) DO UPDATE
                 SET name = excluded.name, client_urls = excluded.client_urls,
                     peer_urls = excluded.peer_urls, last_seen = now()",
                &[&(member.id as i64), &member.name, &client_urls, &peer_urls],
            )
            .await?;
        self.inner
            .write(
                "DELETE FROM strata_members WHERE last_seen < now() - $1 * INTERVAL '1 second'",
                &[&(MEMBER_FORGET_SECONDS as f64)],
            )
            .await?;
        Ok(())
    }

    async fn members(&self) -> Result<Vec<MemberRecord>> {
        let rows = self
            .inner
            .read(
                "SELECT id, name, client_urls, peer_urls FROM strata_members
                 WHERE last_seen >= now() - $1 * INTERVAL '1 second'",
                &[&(MEMBER_TIMEOUT_SECONDS as f64)],
            )
            .await?;
        let urls = |text: String| -> Vec<String> {
            text.split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut members: Vec<MemberRecord> = rows
            .iter()
            .map(|r| MemberRecord {
                id: r.get::<_, i64>(0) as u64,
                name: r.get(1),
                client_urls: urls(r.get(2)),
                peer_urls: urls(r.get(3)),
            })
            .collect();
        // etcd lists members by id; ids are unsigned, the column's order is the signed one.
        members.sort_by_key(|m| m.id);
        Ok(members)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::conformance;
    use super::*;

    /// A fresh, empty database on the PostgreSQL that `STRATA_TEST_POSTGRES` (a connection string
    /// with rights to create databases) names; `scripts/test` starts one and sets it.
    pub async fn fresh_database() -> Connection {
        let url = std::env::var("STRATA_TEST_POSTGRES").expect(
            "STRATA_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a \
             throwaway PostgreSQL",
        );
        let admin = tls::parse(&url).expect("STRATA_TEST_POSTGRES parses");
        let conn = Conn::open(&admin)
            .await
            .expect("connect to the test PostgreSQL");
        let name = format!("strata_unit_{:x}", super::super::random_id());
        conn.client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        let mut connection = admin;
        connection.config.dbname(&name);
        connection
    }

    async fn fresh() -> Postgres {
        Postgres::open(fresh_database().await, "test")
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn conformance() {
        conformance::append_and_read_back(&fresh().await).await;
        conformance::append_out_of_order_is_refused(&fresh().await).await;
        conformance::compaction_removes_and_is_remembered(&fresh().await).await;
        conformance::leases_are_recorded_and_forgotten(&fresh().await).await;
        conformance::alarms_are_recorded_and_cleared(&fresh().await).await;
        conformance::auth_changes_only_from_the_stored_generation(&fresh().await).await;
        conformance::restore_takes_a_history_with_gaps(&fresh().await).await;
    }

    /// PostgreSQL's own error reaches mvcc whole: its SQLSTATE can be matched on.
    #[tokio::test]
    async fn a_failure_keeps_the_sqlstate() {
        let mut missing = fresh_database().await;
        missing.config.dbname("strata_no_such_database");
        let Err(BackendError::Storage(failure)) = Postgres::open(missing, "test").await else {
            panic!("a missing database opens");
        };
        let error = crate::error::Error::Storage(failure);
        let postgres = std::iter::successors(std::error::Error::source(&error), |e| e.source())
            .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
            .expect("the tokio_postgres::Error is among the sources");
        assert_eq!(
            postgres.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
        );
    }

    #[tokio::test]
    async fn frontends_share_identity_and_see_each_others_appends() {
        let config = fresh_database().await;
        let a = Postgres::open(config.clone(), "a").await.unwrap();
        let b = Postgres::open(config, "b").await.unwrap();
        assert_eq!(a.identity().cluster_id, b.identity().cluster_id);
        assert_ne!(a.identity().member_id, b.identity().member_id);
        let mut tail = b.shared().expect("a shared backend").tail();
        let entry = LogEntry {
            revision: 2,
            events: vec![conformance::put("k", "v", 2, 1)],
        };
        a.append(std::slice::from_ref(&entry)).await.unwrap();
        tail.wait_for(|head| *head >= 2).await.unwrap();
        assert_eq!(b.read_log(2, 10).await.unwrap(), vec![entry.clone()]);
        // b's writer had not caught up: its append of revision 2 is refused, not written twice.
        let err = b.append(&[entry]).await.unwrap_err();
        assert!(matches!(err, BackendError::OutOfOrder { head: 2, got: 2 }));
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let config = fresh_database().await;
        drop(Postgres::open(config.clone(), "a").await.unwrap());
        let client = Conn::open(&config).await.unwrap().client;
        client
            .batch_execute("UPDATE strata_meta SET schema_version = 99")
            .await
            .unwrap();
        let err = Postgres::open(config, "a").await.err().expect("refused");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
