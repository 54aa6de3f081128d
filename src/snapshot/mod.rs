//! etcd's snapshot format: its bbolt database, with etcd's buckets and encodings, as the Snapshot
//! RPC streams it and `etcdctl snapshot save` writes it (followed by the database's SHA-256).
//!
//! The buckets Strata fills:
//! - `key`: every revision kept, by revision (8 bytes main, `_`, 8 bytes sub, big-endian; a
//!   deletion's key ends in `t`) → the `mvccpb.KeyValue` written (for a deletion, just the key);
//! - `meta`: `consistent_index`, and `scheduledCompactRev`/`finishedCompactRev` once compacted;
//! - `lease`: lease id (8 bytes, big-endian) → `leasepb.Lease` (id, TTL, remaining TTL);
//! - `auth`, `authUsers`, `authRoles`: whether auth is on, its revision, users and roles;
//! - `members`, `members_removed`, `cluster`, `alarm`: empty (a restore names the new members).

pub mod bbolt;

use crate::auth::{AuthRecord, AuthStore};
use crate::backend::LogEntry;
use crate::mvcc::Store;
use crate::proto::authpb::{Role, User};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::KeyValue;
use prost::Message;

/// Bytes the Snapshot RPC sends per message, as etcd does.
pub const CHUNK_BYTES: usize = 32 * 1024;

/// A lease as a snapshot keeps it: etcd's lease record (`leasepb.Lease`).
#[derive(Clone, PartialEq, Message)]
pub struct Lease {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A revision in etcd's bbolt key form.
fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// The entry of etcd's `key` bucket for change `sub` of revision `revision`.
fn key_entry(revision: i64, sub: usize, event: &crate::proto::mvccpb::Event) -> (Vec<u8>, Vec<u8>) {
    let mut value = event.kv.clone().unwrap_or_default();
    let tombstone = event.r#type == EventType::Delete as i32;
    if tombstone {
        value = KeyValue {
            key: value.key,
            ..Default::default()
        };
    }
    (
        revision_key(revision, sub as i64, tombstone),
        value.encode_to_vec(),
    )
}

/// etcd's buckets other than `key`, for a history up to `head` compacted at `compacted`.
fn other_buckets(head: i64, compacted: i64, leases: &[Lease], auth: &AuthRecord) -> bbolt::Buckets {
    let mut buckets = bbolt::Buckets::new();
    let mut meta = vec![(
        b"consistent_index".to_vec(),
        (head as u64).to_be_bytes().to_vec(),
    )];
    if compacted > 0 {
        let at = revision_key(compacted, 0, false);
        meta.push((b"finishedCompactRev".to_vec(), at.clone()));
        meta.push((b"scheduledCompactRev".to_vec(), at));
    }
    buckets.insert(b"meta".to_vec(), meta);
    let leases = leases
        .iter()
        .map(|l| (l.id.to_be_bytes().to_vec(), l.encode_to_vec()))
        .collect();
    buckets.insert(b"lease".to_vec(), leases);
    buckets.insert(
        b"auth".to_vec(),
        vec![
            (b"authEnabled".to_vec(), vec![u8::from(auth.enabled)]),
            (
                b"authRevision".to_vec(),
                auth.revision.to_be_bytes().to_vec(),
            ),
        ],
    );
    let users = auth
        .users
        .iter()
        .map(|u| (u.name.to_vec(), u.encode_to_vec()))
        .collect();
    buckets.insert(b"authUsers".to_vec(), users);
    let roles = auth
        .roles
        .iter()
        .map(|r| (r.name.to_vec(), r.encode_to_vec()))
        .collect();
    buckets.insert(b"authRoles".to_vec(), roles);
    for empty in ["members", "members_removed", "cluster", "alarm"] {
        buckets.insert(empty.as_bytes().to_vec(), Vec::new());
    }
    buckets
}

/// A file of this process's own in the temporary directory, gone from it already (it lives
/// while open, and nothing is left behind by a crash).
fn unnamed_file() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!(
        "strata-snapshot-{}-{:x}",
        std::process::id(),
        crate::backend::random_id()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Bytes written to the export's file at a time.
const EXPORT_BUFFER: usize = 1 << 20;

/// Writes the database etcd would hold for what `store` and `auth` hold now to an unnamed
/// temporary file, the history a leaf page at a time; returns the file, at its start, and the
/// database's length.
pub async fn export(store: &Store, auth: &AuthStore) -> crate::error::Result<(std::fs::File, u64)> {
    let io = |e: std::io::Error| {
        crate::error::Error::storage_caused_by(format!("snapshot file: {e}"), e)
    };
    let compacted = store.compacted();
    let mut leases = Vec::new();
    for id in store.lease_ids().await? {
        if let Some((remaining_ttl, ttl, _)) = store.lease_time_to_live(id, false).await? {
            leases.push(Lease {
                id,
                ttl,
                remaining_ttl,
            });
        }
    }
    let file = std::io::BufWriter::with_capacity(EXPORT_BUFFER, unnamed_file().map_err(io)?);
    let mut w = bbolt::Writer::new(file).map_err(io)?;
    let mut keys = bbolt::Tree::default();
    let mut head = 1;
    store
        .visit_history(|entry| {
            head = entry.revision;
            for (sub, event) in entry.events.iter().enumerate() {
                let (key, value) = key_entry(entry.revision, sub, event);
                keys.push(&mut w, &key, &value, 0).map_err(io)?;
            }
            Ok(())
        })
        .await?;
    let mut roots = vec![(b"key".to_vec(), keys.finish(&mut w).map_err(io)?)];
    for (name, entries) in other_buckets(head, compacted, &leases, &auth.export()) {
        let root = w.tree(&entries).map_err(io)?;
        roots.push((name, root));
    }
    let (out, length) = w.finish(&roots).map_err(io)?;
    let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
    std::io::Seek::rewind(&mut file).map_err(io)?;
    Ok((file, length))
}

/// Why a snapshot file cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Format(#[from] bbolt::FormatError),
    #[error("snapshot file integrity check failed: its SHA-256 does not match its contents")]
    Checksum,
    #[error(
        "the snapshot has no SHA-256 at its end (a copy of member/snap/db, not etcdctl snapshot \
         save?): pass --skip-hash-check to restore it anyway"
    )]
    NoChecksum,
    #[error("the snapshot is {0} bytes long: neither a database nor a database and its SHA-256 (truncated?)")]
    Length(usize),
    #[error("the snapshot has no {0:?} bucket: not an etcd database")]
    MissingBucket(&'static str),
    #[error("bucket {bucket:?}, key {key:02x?}: {detail}")]
    Entry {
        bucket: &'static str,
        key: Vec<u8>,
        detail: String,
    },
}

/// The database of a snapshot file: checked against the SHA-256 at its end, if it has one (as
/// `etcdctl snapshot save` writes it; a database copied from a data directory has none).
pub fn database_of(file: &[u8], skip_hash_check: bool) -> Result<&[u8], ImportError> {
    match file.len() % 512 {
        0 if skip_hash_check => Ok(file),
        0 => Err(ImportError::NoChecksum),
        32 => {
            let (database, sum) = file.split_at(file.len() - 32);
            if !skip_hash_check && checksum(database) != sum {
                return Err(ImportError::Checksum);
            }
            Ok(database)
        }
        _ => Err(ImportError::Length(file.len())),
    }
}

/// An etcd database opened for reading: what is small is read at once, the history as it is
/// restored ([`Snapshot::history`]), so that a restore holds a part of it at a time.
pub struct Snapshot<'a> {
    database: bbolt::Database<'a>,
    /// etcd's compaction revision (-1: never compacted).
    pub compacted: i64,
    pub leases: Vec<Lease>,
    pub auth: AuthRecord,
}

fn entry_error(bucket: &'static str, key: &[u8], detail: String) -> ImportError {
    ImportError::Entry {
        bucket,
        key: key.to_vec(),
        detail,
    }
}

/// What is done with each entry of a bucket.
type Visitor<'f> = dyn FnMut(&[u8], &[u8]) -> Result<(), ImportError> + 'f;

/// Calls `f` with each entry of bucket `name`; a bucket that is not there is an error if
/// `required`.
fn each(
    database: &bbolt::Database,
    name: &'static str,
    required: bool,
    f: &mut Visitor,
) -> Result<(), ImportError> {
    match database.bucket(name.as_bytes()) {
        Some(walk) => {
            for element in walk? {
                let (key, value, _) = element?;
                f(key, value)?;
            }
            Ok(())
        }
        None if required => Err(ImportError::MissingBucket(name)),
        None => Ok(()),
    }
}

/// Opens an etcd database: its compaction revision, leases and auth state.
pub fn open(database: &[u8]) -> Result<Snapshot<'_>, ImportError> {
    let database = bbolt::Database::open(database)?;
    if database.bucket(b"key").is_none() {
        return Err(ImportError::MissingBucket("key"));
    }

    let mut compacted = -1;
    each(&database, "meta", true, &mut |key, value| {
        if key == b"finishedCompactRev" || key == b"scheduledCompactRev" {
            let main = value
                .get(..8)
                .ok_or_else(|| entry_error("meta", key, "not a revision".into()))?;
            compacted = compacted.max(i64::from_be_bytes(main.try_into().expect("8 bytes")));
        }
        Ok(())
    })?;

    let mut leases = Vec::new();
    each(&database, "lease", false, &mut |key, value| {
        let lease = Lease::decode(value)
            .map_err(|e| entry_error("lease", key, format!("not a Lease: {e}")))?;
        leases.push(lease);
        Ok(())
    })?;

    let mut auth = AuthRecord {
        enabled: false,
        revision: 1,
        users: Vec::new(),
        roles: Vec::new(),
    };
    each(&database, "auth", false, &mut |key, value| {
        match key {
            b"authEnabled" => auth.enabled = value == [1],
            b"authRevision" => {
                let bytes: [u8; 8] = value
                    .try_into()
                    .map_err(|_| entry_error("auth", key, "not 8 bytes".into()))?;
                auth.revision = u64::from_be_bytes(bytes);
            }
            _ => {}
        }
        Ok(())
    })?;
    each(&database, "authUsers", false, &mut |key, value| {
        let user = User::decode(value)
            .map_err(|e| entry_error("authUsers", key, format!("not a User: {e}")))?;
        auth.users.push(user);
        Ok(())
    })?;
    each(&database, "authRoles", false, &mut |key, value| {
        let role = Role::decode(value)
            .map_err(|e| entry_error("authRoles", key, format!("not a Role: {e}")))?;
        auth.roles.push(role);
        Ok(())
    })?;
    Ok(Snapshot {
        database,
        compacted,
        leases,
        auth,
    })
}

impl<'a> Snapshot<'a> {
    /// The history, in revision order.
    pub fn history(&self) -> Result<History<'a>, ImportError> {
        let walk = self
            .database
            .bucket(b"key")
            .ok_or(ImportError::MissingBucket("key"))??;
        Ok(History {
            walk,
            pending: None,
        })
    }
}

/// A snapshot's history, read a part at a time.
pub struct History<'a> {
    walk: bbolt::Walk<'a>,
    /// The revision being read, whose events may go on.
    pending: Option<LogEntry>,
}

impl History<'_> {
    /// The next whole revisions, about `events` events of them; None after the last.
    pub fn next_part(&mut self, events: usize) -> Result<Option<Vec<LogEntry>>, ImportError> {
        let mut part = Vec::new();
        let mut count = 0;
        while count < events {
            let Some(element) = self.walk.next() else {
                part.extend(self.pending.take());
                break;
            };
            let (key, value, _) = element?;
            let (revision, event) = event_of(key, value)?;
            match &mut self.pending {
                Some(entry) if entry.revision == revision => entry.events.push(event),
                pending => {
                    let next = LogEntry {
                        revision,
                        events: vec![event],
                    };
                    if let Some(done) = pending.replace(next) {
                        count += done.events.len();
                        part.push(done);
                    }
                }
            }
        }
        Ok((!part.is_empty()).then_some(part))
    }
}

/// The change an entry of the `key` bucket records, and its revision.
fn event_of(key: &[u8], value: &[u8]) -> Result<(i64, crate::proto::mvccpb::Event), ImportError> {
    let tombstone = match key.len() {
        17 if key[8] == b'_' => false,
        18 if key[8] == b'_' && key[17] == b't' => true,
        _ => {
            return Err(entry_error(
                "key",
                key,
                "not a revision (8 bytes, '_', 8 bytes, and 't' for a deletion)".into(),
            ))
        }
    };
    let revision = i64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let mut kv = KeyValue::decode(value)
        .map_err(|e| entry_error("key", key, format!("not a KeyValue: {e}")))?;
    let r#type = if tombstone {
        kv.mod_revision = revision;
        EventType::Delete
    } else {
        EventType::Put
    };
    let event = crate::proto::mvccpb::Event {
        r#type: r#type as i32,
        kv: Some(kv),
        prev_kv: None,
    };
    Ok((revision, event))
}

/// Events a restore writes at a time.
const RESTORE_EVENTS: usize = 20_000;

/// What a restore wrote.
#[derive(Clone, Copy, Debug)]
pub struct Restored {
    pub revisions: usize,
    /// The newest revision of the history (1 for none).
    pub head: i64,
}

impl Restored {
    /// What was restored from `snapshot`, in a line.
    pub fn summary(&self, snapshot: &Snapshot) -> String {
        format!(
            "{} revisions up to {} (compacted at {}), {} leases, {} users, {} roles",
            self.revisions,
            self.head,
            snapshot.compacted,
            snapshot.leases.len(),
            snapshot.auth.users.len(),
            snapshot.auth.roles.len()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}

/// Fills a new, empty store with `snapshot`: the history with its revisions, a part at a time
/// (`progress` hears the revisions and the newest revision so far after each), then the leases
/// and the auth state. A restore cut short leaves a store marked as being restored, which no
/// server uses: delete it and restore again.
pub async fn restore(
    backend: &dyn crate::backend::Backend,
    snapshot: &Snapshot<'_>,
    progress: &mut dyn FnMut(&Restored),
) -> Result<Restored, RestoreError> {
    let mut history = snapshot.history()?;
    backend.begin_restore().await?;
    let mut restored = Restored {
        revisions: 0,
        head: 1,
    };
    while let Some(part) = history.next_part(RESTORE_EVENTS)? {
        backend.restore_log(&part).await?;
        restored.revisions += part.len();
        restored.head = part.last().map_or(restored.head, |e| e.revision);
        progress(&restored);
    }
    let leases: Vec<(i64, i64, i64)> = (snapshot.leases.iter())
        .map(|l| (l.id, l.ttl, l.remaining_ttl))
        .collect();
    backend.restore_leases(&leases).await?;
    backend.put_auth(0, &snapshot.auth.encode_to_vec()).await?;
    backend
        .finish_restore(crate::backend::Progress {
            head: restored.head.max(snapshot.compacted),
            compacted: snapshot.compacted,
        })
        .await?;
    Ok(restored)
}

/// Reads an exported database (`total` bytes of `file`) as etcd streams it: in [`CHUNK_BYTES`]
/// chunks, each handed to `send` with the bytes left after it, then the database's SHA-256 with
/// nothing left. Stops when `send` answers false (the receiver is gone) or after an error.
pub fn stream(
    mut file: std::fs::File,
    total: u64,
    mut send: impl FnMut(std::io::Result<(bytes::Bytes, u64)>) -> bool,
) {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = total;
    while left > 0 {
        let mut chunk = vec![0; CHUNK_BYTES.min(left as usize)];
        if let Err(e) = std::io::Read::read_exact(&mut file, &mut chunk) {
            send(Err(e));
            return;
        }
        digest.update(&chunk);
        left -= chunk.len() as u64;
        if !send(Ok((chunk.into(), left))) {
            return;
        }
    }
    send(Ok((
        bytes::Bytes::copy_from_slice(digest.finish().as_ref()),
        0,
    )));
}

/// The SHA-256 that follows the database in a snapshot.
pub fn checksum(database: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, database)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance::{delete, put};

    /// Everything a snapshot holds.
    struct Contents {
        /// The log, in revision order, as far as the snapshot's revision.
        pub log: Vec<LogEntry>,
        /// etcd's compaction revision (-1: never compacted).
        pub compacted: i64,
        pub leases: Vec<Lease>,
        pub auth: AuthRecord,
    }

    /// Everything an etcd database holds, read whole.
    fn read_whole(database: &[u8]) -> Result<Contents, ImportError> {
        let snapshot = open(database)?;
        let mut history = snapshot.history()?;
        let mut log = Vec::new();
        while let Some(part) = history.next_part(usize::MAX)? {
            log.extend(part);
        }
        Ok(Contents {
            log,
            compacted: snapshot.compacted,
            leases: snapshot.leases,
            auth: snapshot.auth,
        })
    }

    /// The database etcd would hold for `contents`, in memory.
    fn database(contents: &Contents) -> Vec<u8> {
        let head = contents.log.last().map_or(1, |e| e.revision);
        let mut buckets = other_buckets(head, contents.compacted, &contents.leases, &contents.auth);
        let keys = contents
            .log
            .iter()
            .flat_map(|e| {
                e.events
                    .iter()
                    .enumerate()
                    .map(move |(sub, event)| key_entry(e.revision, sub, event))
            })
            .collect();
        buckets.insert(b"key".to_vec(), keys);
        bbolt::write(&buckets)
    }

    #[test]
    fn keys_are_etcds_revisions() {
        assert_eq!(
            revision_key(2, 1, false),
            [0, 0, 0, 0, 0, 0, 0, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(revision_key(3, 0, true).last(), Some(&b't'));
    }

    #[test]
    fn the_database_holds_etcds_buckets() {
        let contents = Contents {
            log: vec![
                LogEntry {
                    revision: 2,
                    events: vec![put("a", "1", 2, 1), put("b", "2", 2, 1)],
                },
                LogEntry {
                    revision: 3,
                    events: vec![delete("a", 3)],
                },
            ],
            compacted: 2,
            leases: vec![Lease {
                id: 7,
                ttl: 60,
                remaining_ttl: 30,
            }],
            auth: AuthRecord {
                enabled: false,
                revision: 1,
                users: Vec::new(),
                roles: Vec::new(),
            },
        };
        let buckets = bbolt::read(&database(&contents)).unwrap();
        let keys = &buckets[&b"key".to_vec()];
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[2].0, revision_key(3, 0, true));
        let tombstone = KeyValue::decode(keys[2].1.as_slice()).unwrap();
        assert_eq!(
            (tombstone.key.as_ref(), tombstone.mod_revision),
            (&b"a"[..], 0)
        );
        let meta = &buckets[&b"meta".to_vec()];
        assert!(meta.contains(&(b"finishedCompactRev".to_vec(), revision_key(2, 0, false))));
        let lease = Lease::decode(buckets[&b"lease".to_vec()][0].1.as_slice()).unwrap();
        assert_eq!((lease.id, lease.ttl, lease.remaining_ttl), (7, 60, 30));
        assert!(buckets.contains_key(b"members".as_slice()));
        assert_eq!(checksum(b"").len(), 32);
    }

    #[test]
    fn a_database_reads_back_as_it_was_written() {
        let contents = Contents {
            log: vec![
                LogEntry {
                    revision: 4,
                    events: vec![put("a", "1", 4, 1), put("b", "2", 4, 1)],
                },
                LogEntry {
                    revision: 6,
                    events: vec![delete("a", 6)],
                },
            ],
            compacted: 5,
            leases: vec![Lease {
                id: 9,
                ttl: 30,
                remaining_ttl: 12,
            }],
            auth: AuthRecord {
                enabled: true,
                revision: 4,
                users: vec![User {
                    name: "root".into(),
                    roles: vec!["root".into()],
                    ..Default::default()
                }],
                roles: Vec::new(),
            },
        };
        let database = database(&contents);
        let mut file = database.clone();
        file.extend(checksum(&database));
        let back = read_whole(database_of(&file, false).unwrap()).unwrap();
        assert_eq!(back.log, contents.log);
        assert_eq!(back.compacted, 5);
        assert_eq!((back.leases[0].id, back.leases[0].ttl), (9, 30));
        assert_eq!((back.auth.enabled, back.auth.revision), (true, 4));
        assert_eq!(back.auth.users, contents.auth.users);

        file[100] ^= 1;
        assert!(matches!(
            database_of(&file, false),
            Err(ImportError::Checksum)
        ));
        assert!(matches!(
            database_of(&database, false),
            Err(ImportError::NoChecksum)
        ));
        assert!(database_of(&database, true).is_ok());
        assert!(matches!(
            database_of(&file[..1000], false),
            Err(ImportError::Length(1000))
        ));
    }

    /// A lease's remaining TTL in the snapshot is recorded for it, as etcd starts it from it.
    #[tokio::test]
    async fn a_restore_keeps_what_was_left_of_the_leases() {
        let lease = |id, remaining_ttl| Lease {
            id,
            ttl: 30,
            remaining_ttl,
        };
        let contents = Contents {
            log: Vec::new(),
            compacted: 0,
            leases: vec![lease(9, 12), lease(10, 0)],
            auth: AuthRecord::default(),
        };
        let backend = crate::backend::embedded::Embedded::in_memory().unwrap();
        let whole = database(&contents);
        restore(&backend, &open(&whole).unwrap(), &mut |_| {})
            .await
            .unwrap();
        use crate::backend::Backend;
        let checkpoints = Backend::lease_checkpoints(&backend).expect("lease checkpoints");
        assert_eq!(checkpoints.recorded().await.unwrap(), [(9, 12)]);
    }

    /// A history read in parts gives whole revisions, and what a damaged entry late in the file
    /// stops leaves the store marked as an unfinished restore, which no server opens.
    #[tokio::test]
    async fn a_restore_goes_in_parts_and_a_broken_one_is_never_served() {
        let events = RESTORE_EVENTS + 10;
        let mut keys: Vec<(Vec<u8>, Vec<u8>)> = (0..events as i64)
            .map(|i| {
                // Two events per revision.
                let (main, sub) = (2 + i / 2, i % 2);
                let kv = put(&format!("k{i}"), "v", main, 1).kv.unwrap();
                (revision_key(main, sub, false), kv.encode_to_vec())
            })
            .collect();
        let mut buckets = bbolt::Buckets::new();
        buckets.insert(b"meta".to_vec(), Vec::new());
        buckets.insert(b"key".to_vec(), keys.clone());
        let whole = bbolt::write(&buckets);
        let mut history = open(&whole).unwrap().history().unwrap();
        let first = history.next_part(RESTORE_EVENTS).unwrap().unwrap();
        assert_eq!(
            first.iter().map(|e| e.events.len()).sum::<usize>(),
            RESTORE_EVENTS
        );
        assert!(first.iter().all(|e| e.events.len() == 2));
        let rest = history.next_part(RESTORE_EVENTS).unwrap().unwrap();
        assert_eq!(rest[0].revision, first.last().unwrap().revision + 1);
        assert_eq!(rest.iter().map(|e| e.events.len()).sum::<usize>(), 10);
        assert!(history.next_part(RESTORE_EVENTS).unwrap().is_none());

        keys.push((b"not a revision".to_vec(), Vec::new()));
        buckets.insert(b"key".to_vec(), keys);
        let broken = bbolt::write(&buckets);
        let dir = tempfile::tempdir().unwrap();
        let backend =
            std::sync::Arc::new(crate::backend::embedded::Embedded::open(dir.path()).unwrap());
        let snapshot = open(&broken).unwrap();
        let failed = restore(backend.as_ref(), &snapshot, &mut |_| {}).await;
        assert!(matches!(
            failed,
            Err(RestoreError::Import(ImportError::Entry { .. }))
        ));
        let opened = crate::mvcc::Store::open(backend.clone()).await;
        assert!(opened.is_err_and(|e| e.to_string().contains("did not finish")));
        let again = restore(backend.as_ref(), &open(&whole).unwrap(), &mut |_| {}).await;
        assert!(matches!(
            again,
            Err(RestoreError::Backend(
                crate::backend::BackendError::NotEmpty
            ))
        ));
    }
}
