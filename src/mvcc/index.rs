//! The in-memory index: every key's [`KeyIndex`] in key order, with the value of its newest put.
//!
//! Values of older revisions stay in the backend and are read from it when a read needs them. The
//! index may run ahead of the durable log while a batch is being committed: `current` is the newest
//! revision applied here, `committed` the newest durable one, and readers only look at `committed`.

use super::key_index::{KeyIndex, KeyRevision};
use super::Revision;
use crate::error::{Error, Result};
use crate::proto::mvccpb::KeyValue;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;

#[derive(Default)]
pub struct Index {
    keys: BTreeMap<Bytes, Entry>,
    /// The newest revision applied to the index.
    pub current: i64,
    /// The newest revision durable in the backend; what reads see.
    pub committed: i64,
    /// Reads below this revision are refused.
    pub compacted: i64,
}

#[derive(Default)]
struct Entry {
    index: KeyIndex,
    /// The value and lease of the newest put, while the key is live.
    live: Option<Live>,
}

#[derive(Clone, Debug)]
pub struct Live {
    pub value: Bytes,
    pub lease: i64,
}

/// The keys a request names, from its `key` and `range_end` as etcd reads them.
#[derive(Clone, Copy, Debug)]
pub enum KeyRange<'a> {
    /// `range_end` empty: just `key`.
    Single(&'a [u8]),
    /// `range_end` is "\0": every key from `key` on.
    From(&'a [u8]),
    /// `[key, range_end)`, empty when `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(*self, KeyRange::Between(key, end) if end <= key)
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => key <= k && k < end,
        }
    }

    fn bounds(&self) -> (&'a [u8], Bound<&'a [u8]>) {
        match *self {
            KeyRange::Single(key) => (key, Bound::Included(key)),
            KeyRange::From(key) => (key, Bound::Unbounded),
            KeyRange::Between(key, end) => (key, Bound::Excluded(end)),
        }
    }
}

/// A key-value as of some revision, with its value still to be read from the backend if `stored`.
pub struct Found {
    pub kv: KeyValue,
    pub stored: Option<Revision>,
}

/// What a write did to the index, so that it can be undone if the log append fails.
#[derive(Default)]
pub struct Undo {
    /// Each key touched, with its live value before the change (newest last).
    changes: Vec<(Bytes, Option<Live>)>,
}

impl Undo {
    pub fn mark(&self) -> usize {
        self.changes.len()
    }
}

impl Index {
    /// Iterates the keys of `range` that have any history left.
    fn entries<'s>(&'s self, range: KeyRange<'s>) -> impl Iterator<Item = (&'s Bytes, &'s Entry)> {
        // BTreeMap::range panics on an inverted range; etcd answers it with nothing.
        let (start, end) = range.bounds();
        (!range.is_empty())
            .then(|| self.keys.range::<[u8], _>((Bound::Included(start), end)))
            .into_iter()
            .flatten()
    }

    /// The live keys of `range` as of revision `at`, in key order.
    pub fn range_at<'s>(
        &'s self,
        range: KeyRange<'s>,
        at: i64,
    ) -> impl Iterator<Item = (&'s Bytes, KeyRevision, bool)> + 's {
        self.entries(range).filter_map(move |(k, e)| {
            let kr = e.index.get(at)?;
            let newest = e.index.modified() == Some(kr.modified);
            Some((k, kr, newest))
        })
    }

    /// The key-value of `key` as of `at`, the value taken from memory when it is the newest.
    pub fn found(&self, key: &Bytes, kr: KeyRevision, newest: bool) -> Found {
        let live = if newest {
            self.keys.get(key).and_then(|e| e.live.as_ref())
        } else {
            None
        };
        let (value, lease) = live.map_or((Bytes::new(), 0), |l| (l.value.clone(), l.lease));
        Found {
            kv: KeyValue {
                key: key.clone(),
                create_revision: kr.created,
                mod_revision: kr.modified.main,
                version: kr.version,
                value,
                lease,
            },
            stored: live.is_none().then_some(kr.modified),
        }
    }

    /// The newest state of a live key: always in memory.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let (k, e) = self.keys.get_key_value(key)?;
        let kr = e.index.get(i64::MAX)?;
        Some(self.found(k, kr, true).kv)
    }

    /// Checks a read revision against what is held; 0 or less means `view`.
    pub fn check_revision(&self, requested: i64, view: i64) -> Result<i64> {
        if requested > view {
            return Err(Error::FutureRevision);
        }
        let at = if requested <= 0 { view } else { requested };
        if at < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(at)
    }

    pub fn put(&mut self, key: Bytes, rev: Revision, live: Live, undo: &mut Undo) -> KeyValue {
        let entry = self.keys.entry(key.clone()).or_default();
        entry.index.put(rev);
        let old = entry.live.replace(live);
        undo.changes.push((key.clone(), old));
        self.current = rev.main;
        let kr = entry.index.get(rev.main).expect("just put");
        self.found(&key, kr, true).kv
    }

    /// Deletes a live key at `rev`; false if it was not live.
    pub fn tombstone(&mut self, key: &Bytes, rev: Revision, undo: &mut Undo) -> bool {
        let Some(entry) = self.keys.get_mut(key) else {
            return false;
        };
        if !entry.index.tombstone(rev) {
            return false;
        }
        undo.changes.push((key.clone(), entry.live.take()));
        self.current = rev.main;
        true
    }

    /// Undoes every change recorded in `undo` since `mark`, all of them at revisions above `to`.
    pub fn rollback(&mut self, undo: &mut Undo, mark: usize, to: i64) {
        for (key, old) in undo.changes.drain(mark..).rev() {
            if let Some(entry) = self.keys.get_mut(&key) {
                entry.index.truncate_after(to);
                entry.live = old;
                if entry.index.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
        self.current = to;
    }

    /// Rebuilds a key's history from one logged change.
    pub fn restore(&mut self, rev: Revision, kv: KeyValue, is_put: bool) {
        let entry = self.keys.entry(kv.key.clone()).or_default();
        if is_put {
            entry.index.restore(rev, kv.create_revision, kv.version);
            entry.live = Some(Live {
                value: kv.value,
                lease: kv.lease,
            });
        } else {
            entry.index.restore_tombstone(rev);
            entry.live = None;
        }
    }

    /// Forgets history no read at or after `at` can see; returns the revisions to remove from the log.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut removed = Vec::new();
        self.keys.retain(|_, e| {
            e.index.compact(at, &mut removed);
            !e.index.is_empty()
        });
        self.compacted = at;
        removed
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}
