//! The durable log under mvcc: committed write batches and their values, by revision.
//!
//! A backend knows nothing of etcd's semantics. mvcc numbers every change and hands over whole
//! revisions; the backend makes them durable atomically, reads them back, and forgets what compaction
//! tells it to. Every backend must give the same answers for the same calls: see the conformance tests
//! at the bottom of this file.

pub mod embedded;
pub mod postgres;
#[cfg(test)]
pub(crate) mod testing;
mod wal;

use crate::proto::mvccpb::{Event, KeyValue};
use async_trait::async_trait;

/// A position in the history. `main` is the revision of the txn that made the change (what clients
/// see); `sub` orders the changes within that txn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// One revision of the log: the changes of one txn, in sub-revision order.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub revision: i64,
    /// Puts carry the whole key-value; deletes carry the key and mod_revision.
    pub events: Vec<Event>,
}

/// What a backend holds about the log as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The newest durable revision.
    pub head: i64,
    /// Revisions below this are compacted away.
    pub compacted: i64,
}

impl Progress {
    /// A new store is at revision 1 and never compacted (etcd's -1), so the first write takes 2.
    pub const EMPTY: Progress = Progress {
        head: 1,
        compacted: -1,
    };
    /// The head of a store being restored (see [`Backend::begin_restore`]): no revision follows
    /// it, and no server may use the store.
    pub const RESTORING: i64 = 0;
}

/// The identity of this store, created with it and kept for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// A frontend serving the cluster, as the member list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
}

/// Space used by the backend, as etcd's Status reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub in_use: i64,
}

/// A storage failure: what failed, in words a client may read, and the error underneath it (the
/// operating system's, redb's, PostgreSQL's), kept whole as its source so that logs show it and
/// code can match on it (an `io::ErrorKind`, a SQLSTATE). Two failures are equal when they say the
/// same.
#[derive(Clone, Debug)]
pub struct Failure {
    detail: String,
    cause: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// By hand: the source is the error underneath itself, not the `Arc` holding it (whose own
/// `source` would skip it).
impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

impl Failure {
    /// A failure with nothing underneath: Strata's own finding.
    pub fn new(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            cause: None,
        }
    }

    /// A failure `cause` led to.
    pub fn caused_by(
        detail: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure {
            detail: detail.into(),
            cause: Some(std::sync::Arc::new(cause)),
        }
    }
}

impl Failure {
    /// Whether the medium is full: the file system's ENOSPC (or a quota's EDQUOT), or
    /// PostgreSQL's `disk_full` (53100), anywhere beneath.
    pub fn is_out_of_space(&self) -> bool {
        let first = self
            .cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static));
        std::iter::successors(first, |e| e.source()).any(|e| {
            e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            }) || e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code)
                .is_some_and(|code| *code == tokio_postgres::error::SqlState::DISK_FULL)
        })
    }

    /// Whether the error underneath is an `E`.
    pub fn is<E: std::error::Error + 'static>(&self) -> bool {
        self.cause.as_deref().is_some_and(|cause| cause.is::<E>())
    }
}

impl PartialEq for Failure {
    fn eq(&self, other: &Failure) -> bool {
        self.detail == other.detail
    }
}

impl Eq for Failure {}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("storage failure: {0}")]
    Storage(Failure),
    #[error("corrupt log at revision {revision}: {detail}")]
    Corrupt { revision: i64, detail: String },
    #[error("append of revision {got} does not follow the head {head}")]
    OutOfOrder { head: i64, got: i64 },
    #[error("the store already holds data: restore only into a new one")]
    NotEmpty,
    #[error("the store is not being restored")]
    NotRestoring,
    /// The backend's stored layout is not one this binary can use (a finding of Strata's own,
    /// with no error underneath).
    #[error("{0}")]
    Schema(String),
    /// Called after [`Backend::close`].
    #[error("the store is closed")]
    Closed,
}

pub type Result<T> = std::result::Result<T, BackendError>;

impl BackendError {
    /// A storage failure of Strata's own finding.
    pub fn storage(detail: impl Into<String>) -> BackendError {
        BackendError::Storage(Failure::new(detail))
    }

    /// A storage failure `cause` led to.
    pub fn caused_by(
        detail: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> BackendError {
        BackendError::Storage(Failure::caused_by(detail, cause))
    }
}

/// A random non-zero id (cluster and member ids, lease ids). RandomState is seeded from the OS's
/// randomness; ids only need to be unique, not secret.
pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish().max(1)
}

/// The log of revisions: appended whole and in order, read back by revision, compacted and
/// given back to the file system.
#[async_trait]
pub trait Log: Send + Sync {
    /// Where the durable log stands. After a failed `append` this first recovers the store, so the
    /// answer says whether that append became durable after all.
    async fn progress(&self) -> Result<Progress>;

    /// Makes `entries` durable, all or none. The first must follow the head by one, the rest in order.
    /// On a shared backend it ends what [`Shared::lock`] took, whether it succeeds or fails.
    async fn append(&self, entries: &[LogEntry]) -> Result<()>;

    /// Whole revisions from `from` on, stopping after the revision that reaches `max_events` events.
    async fn read_log(&self, from: i64, max_events: usize) -> Result<Vec<LogEntry>>;

    /// The key-values written at `revisions` (None where there is none: compacted, or a delete).
    async fn read_values(&self, revisions: &[Revision]) -> Result<Vec<Option<KeyValue>>>;

    /// Durably records that history below `revision` is compacted.
    async fn set_compacted(&self, revision: i64) -> Result<()>;

    /// Physically removes the changes at `revisions`, which compaction made unreachable.
    async fn remove(&self, revisions: &[Revision]) -> Result<()>;

    /// Gives the space of removed history back to the file system.
    async fn defragment(&self) -> Result<()>;

    fn usage(&self) -> Usage;
}

/// Filling a new store with a history numbered elsewhere (an etcd snapshot's, a live etcd's).
#[async_trait]
pub trait Restore: Send + Sync {
    /// Starts filling an empty store with a history numbered elsewhere (an etcd snapshot's),
    /// refused with [`BackendError::NotEmpty`] unless the store has never been written. Until
    /// [`Backend::finish_restore`] its head is [`Progress::RESTORING`]: a store left so by an
    /// interrupted restore is to be deleted, and is refused for service.
    async fn begin_restore(&self) -> Result<()>;

    /// Adds revisions of the history being restored, after those added before, with gaps where
    /// that history was compacted.
    async fn restore_log(&self, entries: &[LogEntry]) -> Result<()>;

    /// Records the leases of the history being restored, as (id, TTL, remaining TTL) in seconds,
    /// a remaining TTL of 0 meaning none. A lease with one starts from it, as etcd's lessor starts
    /// a lease recovered with a checkpoint: at the first start, and again at a change of whoever
    /// times the leases, until a keep-alive gives it its whole TTL.
    async fn restore_leases(&self, leases: &[(i64, i64, i64)]) -> Result<()>;

    /// Ends a restore: the log stands at `progress`.
    async fn finish_restore(&self, progress: Progress) -> Result<()>;
}

/// What the store keeps beside the log: leases, alarms and the auth state.
#[async_trait]
pub trait Records: Send + Sync {
    /// Durably records granted leases, as (id, TTL in seconds), in one commit; answers for each
    /// whether it was recorded: not if a lease with its id exists (or came earlier in `leases`).
    async fn put_leases(&self, leases: &[(i64, i64)]) -> Result<Vec<bool>>;

    /// Durably forgets a lease. On a shared backend whose append right this process holds, the
    /// removal commits with the next append (or [`Shared::unlock`]), and not without it.
    async fn remove_lease(&self, id: i64) -> Result<()>;

    /// Every lease recorded, as (id, TTL), in id order.
    async fn leases(&self) -> Result<Vec<(i64, i64)>>;

    /// Durably records an alarm raised by a member (the alarm as etcd's AlarmType number).
    async fn put_alarm(&self, member: u64, alarm: i32) -> Result<()>;

    /// Durably clears an alarm.
    async fn remove_alarm(&self, member: u64, alarm: i32) -> Result<()>;

    /// Every alarm recorded, as (member, alarm), in that order.
    async fn alarms(&self) -> Result<Vec<(u64, i32)>>;

    /// The auth state (users, roles, whether auth is on) as the auth store encodes it, with the
    /// generation that each change moves on by one; None before the first change.
    async fn auth(&self) -> Result<Option<(u64, Vec<u8>)>>;

    /// Durably replaces the auth state, if its generation is still `generation` (0: none stored);
    /// false if another process changed it first. On a shared backend the change waits for the
    /// append right (see [`Shared::lock`]), so that writes and auth changes are in one order.
    async fn put_auth(&self, generation: u64, state: &[u8]) -> Result<bool>;
}

/// A store Strata serves: its log, restore and records, who it is, and what sharing it adds.
#[async_trait]
pub trait Backend: Log + Restore + Records + Send + Sync + 'static {
    fn identity(&self) -> Identity;

    /// Makes everything durable where the next open finds it at once (nothing to replay), stops
    /// the backend's own tasks and lets go of the medium. Nothing calls the backend after it (the
    /// embedded store answers [`BackendError::Closed`]).
    async fn close(&self) -> Result<()>;

    /// What the backend adds when other processes (frontends) share it; None when this process
    /// alone uses it, so that its own revision is always the head and its own clock times leases.
    fn shared(&self) -> Option<&dyn Shared> {
        None
    }

    /// Where the remaining TTLs of leases are recorded, on a backend whose leases this process
    /// times (the embedded store); None where the backend's clock times them.
    fn lease_checkpoints(&self) -> Option<&dyn LeaseCheckpoints> {
        None
    }
}

/// Leases' remaining TTLs, recorded now and then (etcd's persisted lease checkpoints): what a
/// restart gives each lease instead of a full TTL.
#[async_trait]
pub trait LeaseCheckpoints: Send + Sync {
    /// Durably records each lease's remaining TTL in seconds (0: none, a full TTL again), for the
    /// leases still recorded; one forgotten ([`Records::remove_lease`]) loses its record with it.
    async fn checkpoint_leases(&self, remaining: &[(i64, i64)]) -> Result<()>;

    /// The remaining TTLs recorded, as (id, seconds), in id order.
    async fn recorded(&self) -> Result<Vec<(i64, i64)>>;
}

/// What [`Shared::lock`] found.
pub struct Locked {
    pub progress: Progress,
    /// The generation of the stored auth state ([`Backend::auth`]; 0 if none), which cannot change
    /// until the right is given back.
    pub auth: u64,
    /// The log's first whole revisions after the one asked for.
    pub entries: Vec<LogEntry>,
}

/// What [`Shared::read_index`] found.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadIndex {
    pub head: i64,
    /// The generation of the stored auth state (0 if none).
    pub auth: u64,
}

/// What a frontend knew when it applied a batch without the append right
/// ([`Shared::append_presumed`]): the batch holds only if the store still stands so at its append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presumed {
    /// The head the batch was applied on.
    pub head: i64,
    /// The compaction revision the batch was applied under: a newer one fails it.
    pub compacted: i64,
    /// The oldest generation of the auth state the batch's writes were allowed under (`u64::MAX`
    /// if none was checked): a newer stored state fails it.
    pub auth: u64,
    /// The leases the batch attaches keys to or revokes, each once: every one must still be
    /// recorded.
    pub leases: Vec<i64>,
    /// Those of `leases` the batch revokes: the append forgets them with it.
    pub revoked: Vec<i64>,
    /// Those of `revoked` the batch revokes as expired: each must be expired by the store's clock
    /// (not renewed since the keeper found it expired).
    pub expired: Vec<i64>,
}

/// A backend shared by several frontends: the append right, the tail, leases timed by the
/// backend's clock and expired by one keeper, and the member registry (DESIGN.md, invariants 3–6).
#[async_trait]
pub trait Shared: Send + Sync {
    /// The newest head this process has learnt of, changing when another appends.
    fn tail(&self) -> tokio::sync::watch::Receiver<i64>;

    /// Takes the right to append, cluster-wide, and returns where the log stands as of taking it,
    /// with the log's first whole revisions after `after` (perhaps not all of them up to the head:
    /// the caller reads the rest). The right is held until the next `append` or
    /// [`Shared::unlock`]; meanwhile others' appends wait, and so do changes of the auth state.
    async fn lock(&self, after: i64) -> Result<Locked>;

    /// Appends `entries` (none: only checks, or only forgets the revoked leases) if the store
    /// still stands as `presumed` says, taking and giving back the append right in the same round
    /// trip to the store; false, and nothing written, if it does not. What [`Shared::lock`] then
    /// `append` do in two round trips, for a frontend that has every append of the others already
    /// (it compares on the head).
    async fn append_presumed(&self, entries: &[LogEntry], presumed: &Presumed) -> Result<bool>;

    /// Where the log stands, at least as far as `head` (heard of through the tail), read where it
    /// is nearest: from a hot standby that shows it by now or in a moment, else from the primary.
    /// What following others needs; what must see every commit reads [`Log::progress`].
    async fn progress_near(&self, head: i64) -> Result<Progress>;

    /// The head, and the generation of the stored auth state, read together: what a linearizable
    /// read must have caught up with.
    async fn read_index(&self) -> Result<ReadIndex>;

    /// Gives back the right [`Shared::lock`] took, appending nothing (lease removals made under it
    /// commit).
    async fn unlock(&self) -> Result<()>;

    /// Those of `ids` that are live leases, as (id, TTL), as of now: under the append right, no
    /// other process can revoke one before this process's next append.
    async fn leases_among(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>>;

    /// Those of `ids` that a hot standby next to this process shows recorded, as (id, TTL); none
    /// without one, or if it fails. Only what a presumed append may rest on: the standby can lag
    /// a grant or a revoke, and [`Shared::append_presumed`] checks the leases on the primary.
    async fn leases_near(&self, ids: &[i64]) -> Vec<(i64, i64)>;

    /// Keeps leases alive for another TTL from now; returns those renewed, as (id, TTL). A lease
    /// that does not exist or whose time is up is not renewed.
    async fn renew_leases(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>>;

    /// A lease's granted TTL and whole seconds left.
    async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>>;

    /// Takes or keeps the lease-keeper role for this frontend for a few seconds; true while it
    /// holds it. A frontend that takes it over renews every lease, as etcd's new leader does, so that the
    /// change never expires a lease that was kept alive; so does a keeper whose own term lapsed
    /// (the database did not answer it for that long: a failover, say), since keep-alives could not
    /// reach the database meanwhile either.
    async fn keep_leases(&self) -> Result<bool>;

    /// Up to `limit` leases whose time is up, soonest first.
    async fn expired_leases(&self, limit: usize) -> Result<Vec<i64>>;

    /// Of `ids`, the leases whose time is up, read in the append transaction (see
    /// [`Shared::lock`]): on the database the append commits to, whatever connection the keeper
    /// read [`Shared::expired_leases`] through.
    async fn expired_among(&self, ids: &[i64]) -> Result<Vec<i64>>;

    /// Announces a frontend as live, for a while (see [`Shared::members`]).
    async fn heartbeat(&self, member: &MemberRecord) -> Result<()>;

    /// The frontends whose heartbeat is recent, by id.
    async fn members(&self) -> Result<Vec<MemberRecord>>;
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Cases every backend must pass; each backend's tests call them with a fresh instance.
    use super::*;
    use crate::proto::mvccpb::event::EventType;

    pub fn put(key: &str, value: &str, revision: i64, version: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec().into(),
                create_revision: revision - version + 1,
                mod_revision: revision,
                version,
                value: value.as_bytes().to_vec().into(),
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    pub fn delete(key: &str, revision: i64) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec().into(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn entries() -> Vec<LogEntry> {
        vec![
            LogEntry {
                revision: 2,
                events: vec![put("a", "1", 2, 1), put("b", "1", 2, 1)],
            },
            LogEntry {
                revision: 3,
                events: vec![put("a", "2", 3, 2)],
            },
            LogEntry {
                revision: 4,
                events: vec![delete("b", 4)],
            },
        ]
    }

    pub async fn append_and_read_back(b: &dyn Backend) {
        assert_eq!(b.progress().await.unwrap(), Progress::EMPTY);
        let log = entries();
        b.append(&log[..2]).await.unwrap();
        b.append(&log[2..]).await.unwrap();
        assert_eq!(b.progress().await.unwrap().head, 4);
        assert_eq!(b.read_log(1, 1000).await.unwrap(), log);
        // Whole revisions only: the first entry already reaches one event.
        assert_eq!(b.read_log(1, 1).await.unwrap(), log[..1]);
        assert_eq!(b.read_log(3, 1000).await.unwrap(), log[1..]);
        let values = b
            .read_values(&[
                Revision { main: 2, sub: 1 },
                Revision { main: 3, sub: 0 },
                Revision { main: 4, sub: 0 },
                Revision { main: 9, sub: 0 },
            ])
            .await
            .unwrap();
        assert_eq!(values[0].as_ref().unwrap().key, &b"b"[..]);
        assert_eq!(values[1].as_ref().unwrap().value, &b"2"[..]);
        // A delete has no value to read.
        assert_eq!(values[2], None);
        assert_eq!(values[3], None);
    }

    pub async fn append_out_of_order_is_refused(b: &dyn Backend) {
        let log = entries();
        let err = b.append(&log[1..]).await.unwrap_err();
        assert!(matches!(err, BackendError::OutOfOrder { head: 1, got: 3 }));
        b.append(&log[..1]).await.unwrap();
        assert!(b.append(&log[..1]).await.is_err());
        assert_eq!(b.progress().await.unwrap().head, 2);
    }

    pub async fn leases_are_recorded_and_forgotten(b: &dyn Backend) {
        assert_eq!(b.leases().await.unwrap(), vec![]);
        let recorded = b.put_leases(&[(7, 60), (3, 10), (7, 5)]).await.unwrap();
        assert_eq!(recorded, vec![true, true, false], "the first of an id wins");
        let again = b.put_leases(&[(3, 99), (8, 1)]).await.unwrap();
        assert_eq!(again, vec![false, true], "an existing id is refused");
        b.remove_lease(8).await.unwrap();
        assert_eq!(b.leases().await.unwrap(), vec![(3, 10), (7, 60)]);
        b.remove_lease(3).await.unwrap();
        b.remove_lease(99).await.unwrap();
        assert_eq!(b.leases().await.unwrap(), vec![(7, 60)]);
    }

    pub async fn alarms_are_recorded_and_cleared(b: &dyn Backend) {
        assert_eq!(b.alarms().await.unwrap(), vec![]);
        b.put_alarm(9, 1).await.unwrap();
        b.put_alarm(9, 1).await.unwrap();
        b.put_alarm(4, 2).await.unwrap();
        assert_eq!(b.alarms().await.unwrap(), vec![(4, 2), (9, 1)]);
        b.remove_alarm(9, 1).await.unwrap();
        b.remove_alarm(9, 2).await.unwrap();
        assert_eq!(b.alarms().await.unwrap(), vec![(4, 2)]);
    }

    pub async fn auth_changes_only_from_the_stored_generation(b: &dyn Backend) {
        assert_eq!(b.auth().await.unwrap(), None);
        assert!(!b.put_auth(1, b"stale").await.unwrap());
        assert!(b.put_auth(0, b"first").await.unwrap());
        assert!(!b.put_auth(0, b"lost race").await.unwrap());
        assert!(b.put_auth(1, b"second").await.unwrap());
        assert_eq!(b.auth().await.unwrap(), Some((2, b"second".to_vec())));
    }

    pub async fn restore_takes_a_history_with_gaps(b: &dyn Backend) {
        let history = vec![
            LogEntry {
                revision: 5,
                events: vec![put("a", "1", 5, 1)],
            },
            LogEntry {
                revision: 9,
                events: vec![put("b", "1", 9, 1), delete("a", 9)],
            },
        ];
        let progress = Progress {
            head: 12,
            compacted: 7,
        };
        assert!(matches!(
            b.restore_log(&history).await,
            Err(BackendError::NotRestoring)
        ));
        b.begin_restore().await.unwrap();
        assert_eq!(b.progress().await.unwrap().head, Progress::RESTORING);
        b.restore_log(&history[..1]).await.unwrap();
        b.restore_log(&history[1..]).await.unwrap();
        b.finish_restore(progress).await.unwrap();
        assert_eq!(b.progress().await.unwrap(), progress);
        assert_eq!(b.read_log(1, 100).await.unwrap(), history);
        assert!(matches!(
            b.begin_restore().await,
            Err(BackendError::NotEmpty)
        ));
        assert!(matches!(
            b.finish_restore(progress).await,
            Err(BackendError::NotRestoring)
        ));
        let next = LogEntry {
            revision: 13,
            events: vec![put("c", "1", 13, 1)],
        };
        b.append(std::slice::from_ref(&next)).await.unwrap();
    }

    pub async fn compaction_removes_and_is_remembered(b: &dyn Backend) {
        b.append(&entries()).await.unwrap();
        b.set_compacted(4).await.unwrap();
        b.remove(&[
            Revision { main: 2, sub: 0 },
            Revision { main: 2, sub: 1 },
            Revision { main: 4, sub: 0 },
        ])
        .await
        .unwrap();
        assert_eq!(
            b.progress().await.unwrap(),
            Progress {
                head: 4,
                compacted: 4
            }
        );
        let log = b.read_log(1, 1000).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].revision, 3);
    }

    /// The shared parts of two frontends `a` and `b` of one fresh store.
    fn both<'a>(a: &'a dyn Backend, b: &'a dyn Backend) -> (&'a dyn Shared, &'a dyn Shared) {
        (
            a.shared().expect("a shared backend"),
            b.shared().expect("a shared backend"),
        )
    }

    /// The append right hands over the log as it stands: what the last holder appended comes
    /// with it, and an append on top of it goes on from there.
    pub async fn the_append_right_brings_others_appends(a: &dyn Backend, b: &dyn Backend) {
        let (sa, sb) = both(a, b);
        let log = entries();
        let locked = sa.lock(1).await.unwrap();
        assert_eq!(locked.progress.head, Progress::EMPTY.head);
        a.append(&log[..1]).await.unwrap();
        let locked = sb.lock(1).await.unwrap();
        assert_eq!(locked.progress.head, 2);
        assert_eq!(locked.entries, log[..1]);
        b.append(&log[1..2]).await.unwrap();
        // Given back without an append, the right leaves the log as it was.
        let locked = sa.lock(3).await.unwrap();
        assert_eq!((locked.progress.head, locked.entries.len()), (3, 0));
        sa.unlock().await.unwrap();
        assert_eq!(sb.read_index().await.unwrap().head, 3);
        assert_eq!(sb.progress_near(3).await.unwrap().head, 3);
        assert_eq!(b.read_log(1, 1000).await.unwrap(), log[..2]);
    }

    /// A lease's checkpoint is kept until replaced, cleared or the lease forgotten, and only for
    /// a recorded lease.
    pub async fn lease_checkpoints_are_kept_with_their_leases(b: &dyn Backend) {
        let c = b.lease_checkpoints().expect("lease checkpoints");
        b.put_leases(&[(7, 600), (8, 600), (9, 600)]).await.unwrap();
        c.checkpoint_leases(&[(7, 300), (8, 200), (10, 100)])
            .await
            .unwrap();
        assert_eq!(c.recorded().await.unwrap(), [(7, 300), (8, 200)]);
        c.checkpoint_leases(&[(7, 0), (8, 150)]).await.unwrap();
        b.remove_lease(8).await.unwrap();
        b.put_leases(&[(8, 600)]).await.unwrap();
        c.checkpoint_leases(&[(9, 50)]).await.unwrap();
        assert_eq!(c.recorded().await.unwrap(), [(9, 50)]);
    }

    /// An append presumed on what a frontend knows holds only if the store still stands so: the
    /// head, the compaction, the auth state and the leases it names; otherwise nothing is written.
    pub async fn presumed_appends_hold_only_as_presumed(a: &dyn Backend, b: &dyn Backend) {
        let (sa, sb) = both(a, b);
        let log = entries();
        let known = |head| Presumed {
            head,
            compacted: Progress::EMPTY.compacted,
            auth: u64::MAX,
            leases: Vec::new(),
            revoked: Vec::new(),
            expired: Vec::new(),
        };
        assert!(sa.append_presumed(&log[..1], &known(1)).await.unwrap());
        // b had not read a's append: its own of revision 2 is refused, and so is its check.
        assert!(!sb.append_presumed(&log[..1], &known(1)).await.unwrap());
        assert!(!sb.append_presumed(&[], &known(1)).await.unwrap());
        assert!(sb.append_presumed(&[], &known(2)).await.unwrap());
        // While b holds the right, a's append waits for it and finds the head b left.
        sb.lock(2).await.unwrap();
        let at_two = known(2);
        let (presumed, appended) = tokio::join!(
            sa.append_presumed(&log[1..2], &at_two),
            b.append(&log[1..2]),
        );
        appended.unwrap();
        assert!(!presumed.unwrap());
        assert_eq!(b.read_log(1, 1000).await.unwrap(), log[..2]);
        // A lease it names must be recorded.
        a.put_leases(&[(7, 60)]).await.unwrap();
        let with_leases = |leases: Vec<i64>| Presumed { leases, ..known(3) };
        assert!(!sa
            .append_presumed(&log[2..], &with_leases(vec![7, 8]))
            .await
            .unwrap());
        assert!(sb
            .append_presumed(&[], &with_leases(vec![7]))
            .await
            .unwrap());
        // A revoke forgets its lease with the append, and only if the append is made.
        a.put_leases(&[(9, 60)]).await.unwrap();
        let revoking = |head| Presumed {
            leases: vec![9],
            revoked: vec![9],
            ..known(head)
        };
        assert!(!sa.append_presumed(&[], &revoking(2)).await.unwrap());
        assert_eq!(sb.leases_among(&[7, 9]).await.unwrap(), [(7, 60), (9, 60)]);
        assert!(sa.append_presumed(&[], &revoking(3)).await.unwrap());
        assert_eq!(sb.leases_among(&[7, 9]).await.unwrap(), [(7, 60)]);
        assert!(!sb.append_presumed(&[], &revoking(3)).await.unwrap());
        assert_eq!(b.progress().await.unwrap().head, 3);
        // An expiry only of a lease expired by the store's clock.
        a.put_leases(&[(10, 1)]).await.unwrap();
        let expiring = Presumed {
            leases: vec![10],
            revoked: vec![10],
            expired: vec![10],
            ..known(3)
        };
        assert!(!sa.append_presumed(&[], &expiring).await.unwrap());
        assert_eq!(sb.leases_among(&[10]).await.unwrap(), [(10, 1)]);
        until_expired(sb, 10).await;
        assert!(sa.append_presumed(&[], &expiring).await.unwrap());
        assert_eq!(sb.leases_among(&[10]).await.unwrap(), []);
        // The auth state must be no newer than the writes were allowed under.
        assert!(b.put_auth(0, b"on").await.unwrap());
        let allowed_under = |auth| Presumed { auth, ..known(3) };
        assert!(!sa.append_presumed(&[], &allowed_under(0)).await.unwrap());
        assert!(sa.append_presumed(&[], &allowed_under(1)).await.unwrap());
        // And so the compaction.
        b.set_compacted(3).await.unwrap();
        assert!(!sa.append_presumed(&log[2..], &known(3)).await.unwrap());
        let compacted = Presumed {
            compacted: 3,
            ..known(3)
        };
        assert!(sa.append_presumed(&log[2..], &compacted).await.unwrap());
        assert_eq!(b.read_log(1, 1000).await.unwrap(), log);
    }

    /// Waits (10 s at most) until the keeper's look finds lease `id` expired.
    async fn until_expired(s: &dyn Shared, id: i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !s.expired_leases(10).await.unwrap().contains(&id) {
            assert!(
                std::time::Instant::now() < deadline,
                "lease {id} never expired"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Leases are timed by the backend's clock, whichever frontend granted or renews them; one
    /// whose time is up is not renewed, and is found expired both by the keeper's look and in the
    /// append transaction.
    pub async fn leases_are_timed_by_the_backend(a: &dyn Backend, b: &dyn Backend) {
        let (sa, sb) = both(a, b);
        assert_eq!(
            a.put_leases(&[(7, 1), (8, 60)]).await.unwrap(),
            [true, true]
        );
        assert_eq!(
            sb.leases_among(&[7, 8, 9]).await.unwrap(),
            [(7, 1), (8, 60)]
        );
        assert_eq!(sb.renew_leases(&[8]).await.unwrap(), [(8, 60)]);
        let (granted, left) = sb.lease_time_to_live(8).await.unwrap().unwrap();
        assert_eq!(granted, 60);
        assert!((59..=60).contains(&left), "{left}");
        until_expired(sb, 7).await;
        assert_eq!(sa.renew_leases(&[7]).await.unwrap(), []);
        sa.lock(1).await.unwrap();
        assert_eq!(sa.expired_among(&[7, 8]).await.unwrap(), [7]);
        sa.unlock().await.unwrap();
        assert!(
            sb.expired_among(&[7]).await.is_err(),
            "outside the append transaction"
        );
    }

    /// One keeper at a time: the role stays with the frontend that holds it.
    pub async fn one_lease_keeper_at_a_time(a: &dyn Backend, b: &dyn Backend) {
        let (sa, sb) = both(a, b);
        assert!(sa.keep_leases().await.unwrap());
        assert!(!sb.keep_leases().await.unwrap());
        assert!(sa.keep_leases().await.unwrap());
    }

    /// Every frontend that announced itself is a member, by id.
    pub async fn members_are_the_frontends_heard_from(a: &dyn Backend, b: &dyn Backend) {
        let (sa, sb) = both(a, b);
        let member = |backend: &dyn Backend, name: &str| MemberRecord {
            id: backend.identity().member_id,
            name: name.to_owned(),
            client_urls: vec![format!("http://{name}:2379")],
            peer_urls: vec![format!("http://{name}:2380")],
        };
        sa.heartbeat(&member(a, "a")).await.unwrap();
        sb.heartbeat(&member(b, "b")).await.unwrap();
        let mut expected = vec![member(a, "a"), member(b, "b")];
        expected.sort_by_key(|m| m.id);
        assert_eq!(sa.members().await.unwrap(), expected);
        assert_eq!(sb.members().await.unwrap(), expected);
    }
}
