//! The connections reads share: the primary's, and with `--read-from` a hot standby's, which the
//! log and its values are read from first (see [`Standby`]).

use super::*;
use std::time::Instant;

/// How long a read on the standby may take, connecting included: the primary can answer instead,
/// so a standby that hangs must not hold up the catch-up (and the reads waiting for it) long.
const STANDBY_DEADLINE: Duration = Duration::from_secs(2);

/// How long a catch-up waits for the standby to show a head heard of from the primary, looking
/// every [`STANDBY_LOOK`]: it replays within moments what the primary committed a moment ago,
/// and the primary is, for a frontend near its standby, far.
const STANDBY_WAIT: Duration = Duration::from_millis(50);
const STANDBY_LOOK: Duration = Duration::from_millis(1);

/// Connections shared by reads, each carrying many pipelined queries at once: a closed one is
/// opened again, and one whose read failed is dropped.
pub(super) struct Readers {
    config: Connection,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    pub(super) fn new(config: Connection) -> Readers {
        Readers {
            config,
            slots: (0..READERS).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = Arc::new(Conn::open(&self.config).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs a read; a connection that missed its deadline is dropped.
    pub(super) async fn read(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let conn = self.conn().await?;
        let result = conn.query(sql, params).await;
        if let Err(e) = &result {
            conn.missed_deadline(e);
        }
        if result.is_err() && !conn.client.is_closed() {
            for slot in &self.slots {
                let mut slot = slot.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    *slot = None;
                }
            }
        }
        result
    }
}

/// A hot standby of the database (`--read-from`). The log and the values this frontend reads come
/// from it where it has replayed them, and from the primary where it has not: every row a standby
/// shows was committed on the primary, so the answer is the same from either, and the standby
/// spares the primary the reading (and is near a frontend far from the primary). Everything else
/// (appends, the head, the read index, leases, auth) stays on the primary. A read on the standby
/// has [`STANDBY_DEADLINE`]; after one failed, the standby is left alone (it rests) until a
/// probe, off the path of requests ([`watch_standby`]), finds it answering again.
pub(super) struct Standby {
    readers: Readers,
    resting: std::sync::atomic::AtomicBool,
    /// The last wait for a head ran out: until the standby shows one in time again, it is looked
    /// at once and not waited for.
    behind: std::sync::atomic::AtomicBool,
}

impl Standby {
    pub(super) fn new(config: Connection) -> Standby {
        Standby {
            readers: Readers::new(config),
            resting: Default::default(),
            behind: Default::default(),
        }
    }

    /// A read within [`STANDBY_DEADLINE`], connecting included, whether the standby rests or not:
    /// a failure makes it rest, an answer ends its rest.
    async fn try_read(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let result = tokio::time::timeout(STANDBY_DEADLINE, self.readers.read(sql, params))
            .await
            .unwrap_or_else(|elapsed| {
                Err(BackendError::caused_by(
                    format!("no answer within {}s", STANDBY_DEADLINE.as_secs()),
                    elapsed,
                ))
            });
        let was_resting = self.resting.swap(result.is_err(), Ordering::Relaxed);
        match &result {
            Err(e) if !was_resting => tracing::warn!(
                error = %e,
                "the standby (--read-from) failed a read: reading from the primary until it answers again"
            ),
            Ok(_) if was_resting => tracing::info!("the standby (--read-from) answers again"),
            _ => {}
        }
        result
    }

    /// Where the log stands on the standby, resting or not: what [`watch_standby`] looks at.
    async fn probe(&self) -> Result<Progress> {
        progress_of(&self.try_read(PROGRESS, &[]).await?)
    }

    /// Where the log stands on the standby, once it shows `head`: waited for up to
    /// [`STANDBY_WAIT`] (unless it was behind at the last wait); None if it does not.
    pub(super) async fn progress_reaching(&self, head: i64) -> Option<Progress> {
        let wait = if self.behind.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            STANDBY_WAIT
        };
        let until = Instant::now() + wait;
        loop {
            let progress = progress_of(&self.read(PROGRESS, &[]).await.ok()?).ok()?;
            let reached = progress.head >= head;
            if reached || Instant::now() >= until {
                self.behind.store(!reached, Ordering::Relaxed);
                return reached.then_some(progress);
            }
            tokio::time::sleep(STANDBY_LOOK).await;
        }
    }
}

/// Where reads go: the primary's connections, or a standby's.
pub(super) trait Reads {
    async fn read(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>>;
}

impl Reads for Readers {
    async fn read(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        Readers::read(self, sql, params).await
    }
}

impl Reads for Standby {
    /// A read on the standby: refused while it rests, and a failure makes it rest.
    async fn read(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        if self.resting.load(Ordering::Relaxed) {
            return Err(BackendError::storage(
                "the standby is resting after a failed read",
            ));
        }
        self.try_read(sql, params).await
    }
}

/// How often the standby is probed: how far behind the primary's head it is, and whether one that
/// rests answers again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Probes the standby every [`PROBE_INTERVAL`] while the backend lives: its lag behind the head
/// this frontend heard of (`strata_backend_standby_lag_revisions`), and the end of its rest. Apart
/// from the tailer, so that a standby that hangs holds up neither the tail nor any request.
pub(super) async fn watch_standby(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(standby) = &inner.standby else {
            return;
        };
        if let Ok(progress) = standby.probe().await {
            let heard = *inner.head.borrow();
            crate::metrics::STANDBY_LAG.set((heard - progress.head).max(0));
        }
    }
}
