//! HashKV: etcd's CRC-32C (Castagnoli) over the stored key-value history up to a revision, computed
//! over the same bytes etcd hashes, so that the hash of a Strata store and of an etcd member holding
//! the same history agree.
//!
//! etcd hashes its `key` bucket in order: each row's key is the revision (8 bytes main, `_`, 8 bytes
//! sub, big-endian, and `t` for a tombstone) and its value the stored `mvccpb.KeyValue` (a tombstone
//! stores only the key). Rows above the revision are left out, and so are rows at or below the
//! compaction revision that a compaction at the revision would not keep.

use super::Revision;
use crate::backend::LogEntry;
use crate::proto::mvccpb::{event::EventType, KeyValue};
use prost::Message;
use std::collections::HashSet;

/// CRC-32C, reflected, as Go's `crc32.MakeTable(crc32.Castagnoli)`.
pub struct Crc32c {
    table: [u32; 256],
    state: u32,
}

impl Crc32c {
    pub fn new() -> Crc32c {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc32c { table, state: !0 }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state =
                self.table[((self.state ^ u32::from(b)) & 0xff) as usize] ^ (self.state >> 8);
        }
    }

    pub fn sum(&self) -> u32 {
        !self.state
    }
}

/// The hash being computed over the log, entry by entry in revision order.
pub struct KvHasher {
    crc: Crc32c,
    compacted: i64,
    keep: HashSet<Revision>,
}

impl KvHasher {
    /// `keep`: what a compaction at the hash's revision would keep (the key index's answer). The
    /// log is written up to that revision and no further.
    pub fn new(compacted: i64, keep: HashSet<Revision>) -> KvHasher {
        let mut crc = Crc32c::new();
        crc.write(b"key");
        KvHasher {
            crc,
            compacted,
            keep,
        }
    }

    pub fn write(&mut self, entry: &LogEntry) {
        for (sub, event) in entry.events.iter().enumerate() {
            let rev = Revision {
                main: entry.revision,
                sub: sub as i64,
            };
            if rev.main <= self.compacted && !self.keep.is_empty() && !self.keep.contains(&rev) {
                continue;
            }
            let Some(kv) = &event.kv else {
                continue;
            };
            let mut key = Vec::with_capacity(18);
            key.extend_from_slice(&rev.main.to_be_bytes());
            key.push(b'_');
            key.extend_from_slice(&rev.sub.to_be_bytes());
            let value = if event.r#type == EventType::Delete as i32 {
                key.push(b't');
                KeyValue {
                    key: kv.key.clone(),
                    ..Default::default()
                }
                .encode_to_vec()
            } else {
                kv.encode_to_vec()
            };
            self.crc.write(&key);
            self.crc.write(&value);
        }
    }

    /// A lease record, for the whole-store hash.
    pub fn write_lease(&mut self, id: i64, ttl: i64) {
        self.crc.write(b"lease");
        self.crc.write(&id.to_be_bytes());
        self.crc.write(&ttl.to_be_bytes());
    }

    pub fn sum(&self) -> u32 {
        self.crc.sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        let mut crc = Crc32c::new();
        crc.write(b"123456789");
        assert_eq!(crc.sum(), 0xe306_9283);
    }
}
