//! What the write-ahead log holds beyond the database: the changes a start replays into it. When
//! the disk is too full for the database to take them in, the store opens anyway and serves them
//! from memory ([`Pending`]); the next write takes them in first, and fails as long as the disk is
//! full, so a store restarted on a full disk answers reads and refuses writes, as it did before
//! the restart.

use super::record::Record;
use super::{BackendError, Result};
use std::collections::BTreeMap;

/// The changes of the write-ahead log's records that the database lacks.
#[derive(Default)]
pub(super) struct Pending {
    /// Log rows past the database's head, by (revision, sub-revision).
    pub(super) rows: BTreeMap<(i64, i64), Vec<u8>>,
    /// The last revision among them, if any.
    pub(super) head: Option<i64>,
    /// Lease changes, in order.
    pub(super) leases: Vec<(i64, LeaseChange)>,
}

/// A change of one lease's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeaseChange {
    /// Granted, with its TTL.
    Granted(i64),
    /// Forgotten, with its checkpoint.
    Removed,
    /// Its remaining TTL recorded (0: none), if it is recorded.
    Checkpoint(i64),
}

/// Leases by id as (TTL, recorded remaining TTL or 0), with `changes` applied in order.
pub(super) fn apply_lease_changes(
    leases: &mut BTreeMap<i64, (i64, i64)>,
    changes: impl IntoIterator<Item = (i64, LeaseChange)>,
) {
    for (id, change) in changes {
        match change {
            LeaseChange::Granted(ttl) => {
                leases.insert(id, (ttl, 0));
            }
            LeaseChange::Removed => {
                leases.remove(&id);
            }
            LeaseChange::Checkpoint(remaining) => {
                if let Some(lease) = leases.get_mut(&id) {
                    lease.1 = remaining;
                }
            }
        }
    }
}

impl Pending {
    /// The changes of `records`, in order, that a database whose head is `head` lacks. Lease
    /// changes are all taken again (the last change of each lease wins, as it did when they were
    /// made); log records the database took in before a synced commit are in it already.
    pub(super) fn new(records: Vec<Record>, mut head: i64) -> Result<Pending> {
        let mut pending = Pending::default();
        for record in records {
            match record {
                Record::Leases(granted) => pending.leases.extend(
                    granted
                        .into_iter()
                        .map(|(id, ttl)| (id, LeaseChange::Granted(ttl))),
                ),
                Record::LeaseRemoved(id) => pending.leases.push((id, LeaseChange::Removed)),
                Record::LeaseCheckpoints(recorded) => pending.leases.extend(
                    recorded
                        .into_iter()
                        .map(|(id, remaining)| (id, LeaseChange::Checkpoint(remaining))),
                ),
                Record::Log { last, .. } if last <= head => {}
                Record::Log { first, .. } if first != head + 1 => {
                    return Err(BackendError::Corrupt {
                        revision: first,
                        detail: format!("the write-ahead log goes on from {first} after {head}"),
                    });
                }
                Record::Log { last, rows, .. } => {
                    pending.rows.extend(rows);
                    pending.head = Some(last);
                    head = last;
                }
            }
        }
        Ok(pending)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.leases.is_empty()
    }

    /// `stored` leases, by id as (TTL, recorded remaining TTL or 0), with the changes applied.
    pub(super) fn applied_to_leases(
        &self,
        mut stored: BTreeMap<i64, (i64, i64)>,
    ) -> BTreeMap<i64, (i64, i64)> {
        apply_lease_changes(&mut stored, self.leases.iter().copied());
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(first: i64, last: i64) -> Record {
        Record::Log {
            first,
            last,
            rows: (first..=last).map(|r| ((r, 0), vec![r as u8])).collect(),
        }
    }

    #[test]
    fn what_the_database_has_is_left_out_and_a_gap_refused() {
        let records = vec![
            log(2, 3),
            Record::Leases(vec![(7, 10), (8, 10)]),
            log(4, 5),
            Record::LeaseCheckpoints(vec![(7, 4), (8, 6)]),
            Record::LeaseRemoved(7),
            Record::LeaseCheckpoints(vec![(8, 0)]),
            log(6, 6),
        ];
        let pending = Pending::new(records, 3).unwrap();
        assert_eq!(pending.head, Some(6));
        assert_eq!(
            pending.rows.keys().copied().collect::<Vec<_>>(),
            [(4, 0), (5, 0), (6, 0)]
        );
        let stored = BTreeMap::from([(1, (5, 0)), (8, (3, 2))]);
        assert_eq!(
            pending.applied_to_leases(stored),
            BTreeMap::from([(1, (5, 0)), (8, (10, 0))])
        );
        assert!(matches!(
            Pending::new(vec![log(5, 6)], 3),
            Err(BackendError::Corrupt { revision: 5, .. })
        ));
        assert!(Pending::new(vec![log(2, 3)], 3).unwrap().is_empty());
    }
}
