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

use crate::backend::LogEntry;
use crate::proto::authpb::{Role, User};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::KeyValue;
use prost::Message;

/// Bytes the Snapshot RPC sends per message, as etcd does.
pub const CHUNK_BYTES: usize = 32 * 1024;

/// etcd's lease record (`leasepb.Lease`).
#[derive(Clone, PartialEq, Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// A lease as a snapshot keeps it.
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    pub remaining_ttl: i64,
}

/// The auth state as a snapshot keeps it.
pub struct Auth {
    pub enabled: bool,
    pub revision: u64,
    pub users: Vec<User>,
    pub roles: Vec<Role>,
}

/// Everything a snapshot holds.
pub struct Contents {
    /// The log, in revision order, as far as the snapshot's revision.
    pub log: Vec<LogEntry>,
    /// etcd's compaction revision (-1: never compacted).
    pub compacted: i64,
    pub leases: Vec<Lease>,
    pub auth: Auth,
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

/// The database etcd would hold for `contents`.
pub fn database(contents: &Contents) -> Vec<u8> {
    let mut buckets = bbolt::Buckets::new();
    let mut keys = Vec::new();
    for entry in &contents.log {
        for (sub, event) in entry.events.iter().enumerate() {
            let kv = event.kv.clone().unwrap_or_default();
            let tombstone = event.r#type == EventType::Delete as i32;
            let value = if tombstone {
                KeyValue {
                    key: kv.key,
                    ..Default::default()
                }
            } else {
                kv
            };
            keys.push((
                revision_key(entry.revision, sub as i64, tombstone),
                value.encode_to_vec(),
            ));
        }
    }
    buckets.insert(b"key".to_vec(), keys);

    let head = contents.log.last().map_or(1, |e| e.revision);
    let mut meta = vec![(
        b"consistent_index".to_vec(),
        (head as u64).to_be_bytes().to_vec(),
    )];
    if contents.compacted > 0 {
        let at = revision_key(contents.compacted, 0, false);
        meta.push((b"finishedCompactRev".to_vec(), at.clone()));
        meta.push((b"scheduledCompactRev".to_vec(), at));
    }
    meta.sort();
    buckets.insert(b"meta".to_vec(), meta);

    let mut leases: bbolt::Entries = contents
        .leases
        .iter()
        .map(|l| {
            let record = LeaseRecord {
                id: l.id,
                ttl: l.ttl,
                remaining_ttl: l.remaining_ttl,
            };
            (l.id.to_be_bytes().to_vec(), record.encode_to_vec())
        })
        .collect();
    leases.sort();
    buckets.insert(b"lease".to_vec(), leases);

    let auth = &contents.auth;
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
    let mut users: bbolt::Entries = auth
        .users
        .iter()
        .map(|u| (u.name.to_vec(), u.encode_to_vec()))
        .collect();
    users.sort();
    buckets.insert(b"authUsers".to_vec(), users);
    let mut roles: bbolt::Entries = auth
        .roles
        .iter()
        .map(|r| (r.name.to_vec(), r.encode_to_vec()))
        .collect();
    roles.sort();
    buckets.insert(b"authRoles".to_vec(), roles);
    for empty in ["members", "members_removed", "cluster", "alarm"] {
        buckets.insert(empty.as_bytes().to_vec(), Vec::new());
    }
    bbolt::write(&buckets)
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
            auth: Auth {
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
        let lease = LeaseRecord::decode(buckets[&b"lease".to_vec()][0].1.as_slice()).unwrap();
        assert_eq!((lease.id, lease.ttl, lease.remaining_ttl), (7, 60, 30));
        assert!(buckets.contains_key(b"members".as_slice()));
        assert_eq!(checksum(b"").len(), 32);
    }
}
