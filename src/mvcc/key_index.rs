//! The key index: for one key, every revision at which it was written, grouped into generations.
//!
//! A generation is one lifetime of a key, from the put that created it to the delete that ended it.
//! For a key put at 2 and 4, deleted at 6, put again at 9 and 10:
//!
//! ```text
//! generations: [ {created 2, revs [2, 4, 6(tombstone)]}, {created 9, revs [9, 10]} ]
//! ```
//!
//! The last generation is open; it is empty when the key is currently deleted. Every generation but the
//! last ends with its tombstone. A version counts the puts of one generation: 1 at creation.

use super::Revision;
use smallvec::SmallVec;

/// Most keys hold one generation with one revision (the newest, once compaction has run), so both
/// lists keep one element inline: a million keys then need no heap allocation for their history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIndex {
    generations: SmallVec<[Generation; 1]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Generation {
    /// The version of the newest revision in `revs` (also counting revisions compacted away).
    version: i64,
    /// The main revision of the put that created the key.
    created: i64,
    revs: SmallVec<[Revision; 1]>,
}

/// What the index knows of a live key at some revision; the value itself lives elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRevision {
    pub modified: Revision,
    pub created: i64,
    pub version: i64,
}

impl Generation {
    fn new() -> Self {
        Generation {
            version: 0,
            created: 0,
            revs: SmallVec::new(),
        }
    }
}

impl KeyIndex {
    /// Records a put at `rev`, creating a new generation if the key was deleted or never existed.
    pub fn put(&mut self, rev: Revision) {
        let g = self.open_generation();
        if g.revs.is_empty() {
            g.created = rev.main;
        }
        g.revs.push(rev);
        g.version += 1;
    }

    /// Records a put read back from the log, whose created revision and version are known: earlier
    /// revisions of its generation may have been compacted away.
    pub fn restore(&mut self, rev: Revision, created: i64, version: i64) {
        let g = self.open_generation();
        g.created = created;
        g.revs.push(rev);
        g.version = version;
    }

    /// Records a delete read back from the log. Unlike `tombstone` it also takes a delete whose
    /// generation was compacted away, so that the next compaction can remove that row too.
    pub fn restore_tombstone(&mut self, rev: Revision) {
        // A tombstone counts as a version, as `tombstone` counts it: versions of the revisions
        // before it are derived from the generation's newest one.
        let g = self.open_generation();
        g.revs.push(rev);
        g.version += 1;
        self.generations.push(Generation::new());
    }

    fn open_generation(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.generations.push(Generation::new());
        }
        self.generations
            .last_mut()
            .expect("at least one generation")
    }

    /// Records a delete at `rev`. Returns false (and changes nothing) if the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if !self.is_live() {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::new());
        true
    }

    /// True if the key currently exists (its open generation has revisions).
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// True if nothing at all is recorded (the key can be dropped from the index).
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.revs.is_empty())
    }

    /// The newest revision recorded for the key, its tombstone included.
    pub fn modified(&self) -> Option<Revision> {
        self.generations
            .iter()
            .rev()
            .find_map(|g| g.revs.last().copied())
    }

    /// The key as it was at main revision `at`: None if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyRevision> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if i != last {
                let tombstone = g.revs.last().expect("closed generation has a tombstone");
                if tombstone.main <= at {
                    return None;
                }
            }
            if first.main > at {
                continue;
            }
            let n = g.revs.iter().rposition(|r| r.main <= at)?;
            return Some(KeyRevision {
                modified: g.revs[n],
                created: g.created,
                version: g.version - (g.revs.len() - 1 - n) as i64,
            });
        }
        None
    }

    /// Drops what no read or watch at a revision >= `at` can need: every generation whose tombstone is
    /// below `at`, and in the first generation left every revision before its newest one at or below
    /// `at` (a tombstone exactly at `at` stays, as in etcd, so a watch from `at` still sees it).
    /// Pushes the dropped revisions into `removed`.
    pub fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) {
        let before = removed.len();
        let mut keep_from = 0;
        while keep_from + 1 < self.generations.len() {
            let g = &self.generations[keep_from];
            let tombstone = g.revs.last().expect("closed generation has a tombstone");
            if tombstone.main >= at {
                break;
            }
            keep_from += 1;
        }
        for g in self.generations.drain(..keep_from) {
            removed.extend(g.revs);
        }
        // The first generation left is open, or closed at or after `at`: its newest revision at or
        // below `at` is what a read at `at` sees, so only the ones before it go.
        let Some(g) = self.generations.first_mut() else {
            return;
        };
        if let Some(n) = g.revs.iter().rposition(|r| r.main <= at) {
            removed.extend(g.revs.drain(..n));
        }
        // What is left moves back inline if it fits there.
        if removed.len() > before {
            g.revs.shrink_to_fit();
            self.generations.shrink_to_fit();
        }
    }

    /// The revision a compaction at `at` keeps for this key, as etcd's HashKV counts it: the newest
    /// at or below `at` in the first generation that is open or ends at or after `at` — unless that
    /// is the generation's tombstone.
    pub fn keep(&self, at: i64) -> Option<Revision> {
        let last = self.generations.len().checked_sub(1)?;
        let gen = (0..last)
            .find(|&i| {
                self.generations[i]
                    .revs
                    .last()
                    .is_some_and(|t| t.main >= at)
            })
            .unwrap_or(last);
        let g = &self.generations[gen];
        let n = g.revs.iter().rposition(|r| r.main <= at)?;
        (n + 1 < g.revs.len() || gen == last).then(|| g.revs[n])
    }

    /// Forgets every revision with main revision above `at`, undoing writes that never became durable.
    pub fn truncate_after(&mut self, at: i64) {
        loop {
            let Some(g) = self.generations.last_mut() else {
                return;
            };
            while g.revs.last().is_some_and(|r| r.main > at) {
                g.revs.pop();
                g.version -= 1;
            }
            let reopen = g.revs.is_empty()
                && self.generations.len() > 1
                && self.generations[self.generations.len() - 2]
                    .revs
                    .last()
                    .is_some_and(|t| t.main > at);
            if !reopen {
                break;
            }
            self.generations.pop();
        }
        if self.is_empty() {
            self.generations.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    /// Put at 2 and 4, deleted at 6, put again at 8 and 10: the example from the module docs.
    fn example() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.put(rev(4));
        assert!(ki.tombstone(rev(6)));
        ki.put(rev(8));
        ki.put(rev(10));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = example();
        assert_eq!(ki.get(1), None);
        let at3 = ki.get(3).unwrap();
        assert_eq!((at3.modified, at3.created, at3.version), (rev(2), 2, 1));
        let at5 = ki.get(5).unwrap();
        assert_eq!((at5.modified, at5.version), (rev(4), 2));
        assert_eq!(ki.get(6), None);
        assert_eq!(ki.get(7), None);
        let at9 = ki.get(9).unwrap();
        assert_eq!((at9.modified, at9.created, at9.version), (rev(8), 8, 1));
        let at99 = ki.get(99).unwrap();
        assert_eq!((at99.modified, at99.version), (rev(10), 2));
        assert_eq!(ki.modified(), Some(rev(10)));
    }

    #[test]
    fn restore_keeps_logged_versions() {
        let mut ki = KeyIndex::default();
        ki.restore(rev(7), 3, 4);
        ki.put(rev(9));
        let at = ki.get(9).unwrap();
        assert_eq!((at.created, at.version), (3, 5));
        assert_eq!(ki.get(7).unwrap().version, 4);
    }

    #[test]
    fn tombstone_of_deleted_key_is_refused() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(rev(1)));
        ki.put(rev(2));
        assert!(ki.tombstone(rev(3)));
        assert!(!ki.tombstone(rev(4)));
        assert!(!ki.is_live());
        assert_eq!(ki.modified(), Some(rev(3)));
    }

    #[test]
    fn compact_keeps_what_reads_at_or_after_need() {
        let mut ki = example();
        let mut removed = Vec::new();
        ki.compact(5, &mut removed);
        assert_eq!(removed, vec![rev(2)]);
        assert_eq!(ki.get(5).unwrap().modified, rev(4));
        assert_eq!(ki.get(5).unwrap().version, 2);

        removed.clear();
        ki.compact(7, &mut removed);
        assert_eq!(removed, vec![rev(4), rev(6)]);
        assert_eq!(ki.get(7), None);
        assert_eq!(ki.get(9).unwrap().modified, rev(8));

        removed.clear();
        ki.compact(10, &mut removed);
        assert_eq!(removed, vec![rev(8)]);
        let at10 = ki.get(10).unwrap();
        assert_eq!((at10.modified, at10.created, at10.version), (rev(10), 8, 2));
    }

    #[test]
    fn compact_keeps_a_tombstone_at_the_compaction_revision() {
        let mut ki = KeyIndex::default();
        ki.put(rev(1));
        ki.tombstone(rev(2));
        let mut removed = Vec::new();
        ki.compact(2, &mut removed);
        assert_eq!(removed, vec![rev(1)]);
        assert_eq!(ki.get(2), None);
        assert!(!ki.is_empty());
        ki.compact(3, &mut removed);
        assert_eq!(removed, vec![rev(1), rev(2)]);
        assert!(ki.is_empty());
    }

    #[test]
    fn restore_rebuilds_what_live_writes_built() {
        let live = example();
        let mut restored = KeyIndex::default();
        restored.restore(rev(2), 2, 1);
        restored.restore(rev(4), 2, 2);
        restored.restore_tombstone(rev(6));
        restored.restore(rev(8), 8, 1);
        restored.restore(rev(10), 8, 2);
        assert_eq!(restored, live);
        for at in 0..12 {
            assert_eq!(restored.get(at), live.get(at), "at {at}");
        }
    }

    #[test]
    fn restored_lone_tombstone_is_compacted_later() {
        let mut ki = KeyIndex::default();
        ki.restore_tombstone(rev(4));
        assert_eq!(ki.get(4), None);
        assert!(!ki.is_live());
        ki.restore(rev(6), 6, 1);
        assert_eq!(ki.get(6).unwrap().version, 1);
        let mut removed = Vec::new();
        ki.compact(6, &mut removed);
        assert_eq!(removed, vec![rev(4)]);
    }

    #[test]
    fn truncate_undoes_puts_and_tombstones() {
        let full = example();
        let mut ki = full.clone();
        ki.truncate_after(10);
        assert_eq!(ki, full);
        ki.truncate_after(9);
        assert_eq!(ki.get(99).unwrap().modified, rev(8));
        ki.truncate_after(7);
        assert!(!ki.is_live());
        assert_eq!(ki.modified(), Some(rev(6)));
        ki.truncate_after(5);
        assert!(ki.is_live());
        assert_eq!(ki.get(99).unwrap().version, 2);
        ki.put(rev(6));
        assert_eq!(ki.get(99).unwrap().version, 3);
        ki.truncate_after(1);
        assert!(ki.is_empty());
        assert_eq!(ki, KeyIndex::default());
    }

    #[test]
    fn a_compacted_key_holds_its_history_inline() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        assert!(!ki.generations.spilled() && !ki.generations[0].revs.spilled());
        ki.put(rev(4));
        assert!(ki.tombstone(rev(6)));
        ki.put(rev(8));
        ki.put(rev(10));
        assert!(ki.generations.spilled() && ki.generations[1].revs.spilled());
        let mut removed = Vec::new();
        ki.compact(10, &mut removed);
        assert_eq!(removed, vec![rev(2), rev(4), rev(6), rev(8)]);
        assert!(!ki.generations.spilled() && !ki.generations[0].revs.spilled());
        assert_eq!(ki.get(10).map(|k| k.version), Some(2));
    }
}
