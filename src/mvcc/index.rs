//! The in-memory index: every key's [`KeyIndex`] in key order, with the value of its newest put.
//!
//! Values of older revisions stay in the backend and are read from it when a read needs them, but
//! for the most recently superseded ones, kept a while ([`Recent`]) because watchers asking for
//! `prev_kv` read them as soon as they are superseded. The
//! index may run ahead of the durable log while a batch is being committed: `current` is the newest
//! revision applied here, `committed` the newest durable one, and readers only look at `committed`.

use super::key_index::{KeyIndex, KeyRevision};
use super::Revision;
use crate::error::{Error, Result};
use crate::proto::mvccpb::KeyValue;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

/// Keys are held as boxed slices: half the size of a `Bytes` in every B-tree slot, and no shared
/// header beside each key. A read copies the keys it answers with.
#[derive(Default)]
pub struct Index {
    keys: BTreeMap<Box<[u8]>, Entry>,
    /// The newest revision applied to the index.
    pub current: i64,
    /// The newest revision durable in the backend; what reads see.
    pub committed: i64,
    /// Reads below this revision are refused.
    pub compacted: i64,
    /// The live keys attached to each lease.
    by_lease: HashMap<i64, BTreeSet<Box<[u8]>>>,
    recent: Recent,
}

/// Bytes of superseded values the index keeps; each also counts [`RECENT_OVERHEAD`].
const RECENT_BYTES: usize = 16 << 20;
const RECENT_OVERHEAD: usize = 64;

/// Values that were newest until lately, by the revision that wrote them, oldest forgotten first.
/// A value at a revision never changes, so an entry is right for as long as the index knows its
/// revision (an entry left by a write that was rolled back is replaced when the revision is
/// written again and superseded; until then only the live value is read for it).
#[derive(Default)]
struct Recent {
    values: HashMap<Revision, Live>,
    order: VecDeque<Revision>,
    bytes: usize,
}

impl Recent {
    fn keep(&mut self, revision: Revision, live: Live) {
        self.bytes += live.value.len() + RECENT_OVERHEAD;
        match self.values.insert(revision, live) {
            Some(replaced) => self.bytes -= replaced.value.len() + RECENT_OVERHEAD,
            None => self.order.push_back(revision),
        }
        while self.bytes > RECENT_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(forgotten) = self.values.remove(&oldest) {
                self.bytes -= forgotten.value.len() + RECENT_OVERHEAD;
            }
        }
    }
}

#[derive(Default)]
struct Entry {
    index: KeyIndex,
    /// The value and lease of the newest put, while the key is live.
    live: Option<Live>,
}

/// A value is one allocation shared by every holder (`Arc<[u8]>`: its count and bytes together),
/// where a `Bytes` made from a copy takes a second one for its shared header once cloned.
#[derive(Clone, Debug)]
pub struct Live {
    pub value: Arc<[u8]>,
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
    fn entries<'s>(&'s self, range: KeyRange<'s>) -> impl Iterator<Item = (&'s [u8], &'s Entry)> {
        // BTreeMap::range panics on an inverted range; etcd answers it with nothing.
        let (start, end) = range.bounds();
        (!range.is_empty())
            .then(|| self.keys.range::<[u8], _>((Bound::Included(start), end)))
            .into_iter()
            .flatten()
            .map(|(k, e)| (&**k, e))
    }

    /// The live keys of `range` as of revision `at`, in key order.
    pub fn range_at<'s>(
        &'s self,
        range: KeyRange<'s>,
        at: i64,
    ) -> impl Iterator<Item = (&'s [u8], KeyRevision, bool)> + 's {
        self.entries(range).filter_map(move |(k, e)| {
            let kr = e.index.get(at)?;
            let newest = e.index.modified() == Some(kr.modified);
            Some((k, kr, newest))
        })
    }

    /// The key-value of `key` as of `at`, the value taken from memory when it is the newest or
    /// was superseded lately.
    pub fn found(&self, key: &[u8], kr: KeyRevision, newest: bool) -> Found {
        self.found_as(Bytes::copy_from_slice(key), kr, newest)
    }

    fn found_as(&self, key: Bytes, kr: KeyRevision, newest: bool) -> Found {
        let live = if newest {
            self.keys.get(&*key).and_then(|e| e.live.as_ref())
        } else {
            self.recent.values.get(&kr.modified)
        };
        let (value, lease) = live.map_or((Bytes::new(), 0), |l| {
            (Bytes::from_owner(l.value.clone()), l.lease)
        });
        Found {
            kv: KeyValue {
                key,
                create_revision: kr.created,
                mod_revision: kr.modified.main,
                version: kr.version,
                value,
                lease,
            },
            stored: live.is_none().then_some(kr.modified),
        }
    }

    /// The value and lease of a live key's newest put.
    pub fn live(&self, key: &[u8]) -> Option<&Live> {
        self.keys.get(key)?.live.as_ref()
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

    /// The live keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Bytes> {
        self.by_lease.get(&id).map_or_else(Vec::new, |keys| {
            keys.iter().map(|k| Bytes::copy_from_slice(k)).collect()
        })
    }

    /// Moves `key` from the lease of `old` to the lease of `new` (0 or no value: none).
    fn relink(&mut self, key: &[u8], old: Option<&Live>, new: Option<&Live>) {
        let lease = |l: Option<&Live>| l.map_or(0, |l| l.lease);
        let (old, new) = (lease(old), lease(new));
        if old == new {
            return;
        }
        if let Some(keys) = self.by_lease.get_mut(&old) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_lease.remove(&old);
            }
        }
        if new != 0 {
            self.by_lease.entry(new).or_default().insert(key.into());
        }
    }

    pub fn put(&mut self, key: Bytes, rev: Revision, live: Live, undo: &mut Undo) -> KeyValue {
        let entry = self.keys.entry(key[..].into()).or_default();
        let superseded = entry.index.modified();
        entry.index.put(rev);
        let kr = entry.index.get(rev.main).expect("just put");
        let old = entry.live.replace(live.clone());
        self.relink(&key, old.as_ref(), Some(&live));
        self.keep_superseded(superseded, &old);
        undo.changes.push((key.clone(), old));
        self.current = rev.main;
        self.found_as(key, kr, true).kv
    }

    /// Deletes a live key at `rev`; false if it was not live.
    pub fn tombstone(&mut self, key: &Bytes, rev: Revision, undo: &mut Undo) -> bool {
        let Some(entry) = self.keys.get_mut(&key[..]) else {
            return false;
        };
        let superseded = entry.index.modified();
        if !entry.index.tombstone(rev) {
            return false;
        }
        let old = entry.live.take();
        self.relink(key, old.as_ref(), None);
        self.keep_superseded(superseded, &old);
        undo.changes.push((key.clone(), old));
        self.current = rev.main;
        true
    }

    /// Undoes every change recorded in `undo` since `mark`, all of them at revisions above `to`.
    pub fn rollback(&mut self, undo: &mut Undo, mark: usize, to: i64) {
        let changes: Vec<_> = undo.changes.drain(mark..).rev().collect();
        for (key, old) in &changes {
            let Some(entry) = self.keys.get_mut(&key[..]) else {
                continue;
            };
            entry.index.truncate_after(to);
            let undone = std::mem::replace(&mut entry.live, old.clone());
            self.relink(key, undone.as_ref(), old.as_ref());
        }
        // Only now: a key changed twice must be found again by the second undo.
        for (key, _) in &changes {
            if self.keys.get(&key[..]).is_some_and(|e| e.index.is_empty()) {
                self.keys.remove(&key[..]);
            }
        }
        self.current = to;
    }

    /// Rebuilds a key's history from one logged change.
    pub fn restore(&mut self, rev: Revision, kv: KeyValue, is_put: bool) {
        let entry = self.keys.entry(kv.key[..].into()).or_default();
        let superseded = entry.index.modified();
        let live = if is_put {
            entry.index.restore(rev, kv.create_revision, kv.version);
            Some(Live {
                value: kv.value[..].into(),
                lease: kv.lease,
            })
        } else {
            entry.index.restore_tombstone(rev);
            None
        };
        let old = std::mem::replace(&mut entry.live, live.clone());
        self.relink(&kv.key, old.as_ref(), live.as_ref());
        self.keep_superseded(superseded, &old);
    }

    /// Keeps the value a change just replaced, written at `revision`.
    fn keep_superseded(&mut self, revision: Option<Revision>, old: &Option<Live>) {
        if let (Some(revision), Some(old)) = (revision, old) {
            self.recent.keep(revision, old.clone());
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

    /// What a compaction at `at` would keep of every key (see [`KeyIndex::keep`]).
    pub fn keep(&self, at: i64) -> std::collections::HashSet<Revision> {
        self.keys
            .values()
            .filter_map(|e| e.index.keep(at))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: &mut Index, undo: &mut Undo, key: &'static str, main: i64, lease: i64) {
        let live = Live {
            value: Arc::from([]),
            lease,
        };
        index.put(
            Bytes::from_static(key.as_bytes()),
            Revision { main, sub: 0 },
            live,
            undo,
        );
    }

    fn keys(index: &Index, lease: i64) -> Vec<Bytes> {
        index.lease_keys(lease)
    }

    #[test]
    fn lease_attachments_follow_puts_deletes_and_rollbacks() {
        let mut index = Index::default();
        let mut undo = Undo::default();
        put(&mut index, &mut undo, "a", 2, 1);
        put(&mut index, &mut undo, "b", 3, 1);
        assert_eq!(keys(&index, 1), vec!["a", "b"]);
        let mark = undo.mark();
        // Moved to another lease, deleted, and a new key leased twice: all undone.
        put(&mut index, &mut undo, "a", 4, 2);
        index.tombstone(
            &Bytes::from_static(b"b"),
            Revision { main: 4, sub: 1 },
            &mut undo,
        );
        put(&mut index, &mut undo, "c", 4, 2);
        put(&mut index, &mut undo, "c", 5, 3);
        assert_eq!(keys(&index, 1), Vec::<Bytes>::new());
        assert_eq!(keys(&index, 2), vec!["a"]);
        assert_eq!(keys(&index, 3), vec!["c"]);
        index.rollback(&mut undo, mark, 3);
        assert_eq!(keys(&index, 1), vec!["a", "b"]);
        assert_eq!(keys(&index, 2), Vec::<Bytes>::new());
        assert_eq!(keys(&index, 3), Vec::<Bytes>::new());
        assert!(index.get(b"c").is_none());
        assert_eq!(index.get(b"a").unwrap().lease, 1);
    }

    #[test]
    fn superseded_values_are_read_from_memory_for_a_while() {
        let mut index = Index::default();
        let mut undo = Undo::default();
        let value = |n: usize| Live {
            value: vec![b'v'; n].into(),
            lease: 0,
        };
        let a = Bytes::from_static(b"a");
        let at = |main| Revision { main, sub: 0 };
        index.put(a.clone(), at(2), value(10), &mut undo);
        index.put(a.clone(), at(3), value(20), &mut undo);
        let found = |index: &Index| {
            let (k, kr, newest) = index.range_at(KeyRange::Single(b"a"), 2).next().unwrap();
            assert!(!newest);
            index.found(k, kr, newest)
        };
        let before = found(&index);
        assert_eq!((before.stored, before.kv.value.len()), (None, 10));
        // Past the budget the oldest are forgotten: read from the backend again.
        for main in 4..10 {
            index.put(a.clone(), at(main), value(RECENT_BYTES / 4), &mut undo);
        }
        assert_eq!(found(&index).stored, Some(at(2)));
    }
}
