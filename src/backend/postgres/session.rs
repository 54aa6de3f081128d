//! Connections to the database: each with its prepared statements, used through sessions by one
//! caller at a time, every statement under a deadline.

use super::*;

/// The longest any statement may take before the call fails and its connection is dropped.
pub(super) const STATEMENT_DEADLINE: Duration = Duration::from_secs(10);

/// Every connection's transactions, whatever the database's default.
pub(super) const ISOLATION: &str = "SET default_transaction_isolation = 'read committed'";

pub(super) type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// A connection, with the statements prepared on it so far.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) statements: std::sync::Mutex<HashMap<&'static str, Statement>>,
    /// Which host of the connection string it went to, and the host tried first next time.
    host: usize,
    last_good: Arc<std::sync::atomic::AtomicUsize>,
}

impl Conn {
    pub(super) async fn open(config: &Connection) -> Result<Conn> {
        let (client, connection, host) = connect::connect(config).await?;
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
            host,
            last_good: config.last_good.clone(),
        })
    }

    /// Notes that a statement on this connection missed its deadline: its host hangs (a primary
    /// that stopped answering), so the next connection tries another host first.
    pub(super) fn missed_deadline(&self, error: &BackendError) {
        if matches!(error, BackendError::Storage(f) if f.is::<tokio::time::error::Elapsed>()) {
            let _ = self.last_good.compare_exchange(
                self.host,
                self.host + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    pub(super) async fn statement(&self, sql: &'static str) -> Result<Statement> {
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

    pub(super) async fn query(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql).await?;
        deadline(self.client.query(&statement, params)).await
    }

    pub(super) async fn execute(&self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let statement = self.statement(sql).await?;
        deadline(self.client.execute(&statement, params)).await
    }
}

/// A connection used by one caller at a time, and whether a transaction is open on it (the append
/// transaction, holding the head's row lock). Any failure drops the connection, which ends the
/// transaction: PostgreSQL rolls back what did not commit; the next use connects afresh.
pub(super) struct Session {
    pub(super) conn: Option<Conn>,
    pub(super) locked: bool,
}

impl Session {
    /// A session with no transaction open, on `conn` or on one opened at first use.
    pub(super) fn idle(conn: Option<Conn>) -> Mutex<Session> {
        Mutex::new(Session {
            conn,
            locked: false,
        })
    }

    /// The connection, opened if needed; but while the transaction is open a lost connection is an
    /// error, never replaced: the transaction, and the lock, went with it.
    pub(super) async fn conn(&mut self, config: &Connection) -> Result<&Conn> {
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
    pub(super) async fn prepared(
        &mut self,
        config: &Connection,
        sql: &'static str,
    ) -> Result<Statement> {
        let result = self.conn(config).await?.statement(sql).await;
        self.failed(result)
    }

    pub(super) fn failed<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            if let Some(conn) = self.conn.take() {
                conn.missed_deadline(e);
            }
            self.locked = false;
        }
        result
    }

    pub(super) async fn execute(
        &mut self,
        config: &Connection,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64> {
        let result = self.conn(config).await?.execute(sql, params).await;
        self.failed(result)
    }

    pub(super) async fn query(
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
    pub(super) async fn simple(
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

pub(super) fn db_error(e: tokio_postgres::Error) -> BackendError {
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
pub(super) async fn deadline<T>(
    f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    deadline_of(STATEMENT_DEADLINE, f).await
}

pub(super) async fn deadline_of<T>(
    limit: Duration,
    f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result.map_err(db_error),
        Err(elapsed) => Err(BackendError::caused_by(
            format!("postgres: no answer within {}s", limit.as_secs()),
            elapsed,
        )),
    }
}
