//! The records of the embedded store's write-ahead log: the changes the database takes in without a
//! sync, and their layout (docs/design.md, "The write-ahead log").

use super::{BackendError, Result, Row};

/// What a record of the write-ahead log holds: a change the database takes in without a sync.
pub(super) enum Record {
    /// Whole revisions appended to the log, from `first` to `last`.
    Log {
        first: i64,
        last: i64,
        rows: Vec<Row>,
    },
    /// Leases granted, as (id, TTL).
    Leases(Vec<(i64, i64)>),
    /// A lease forgotten.
    LeaseRemoved(i64),
    /// Leases' remaining TTLs recorded, as (id, seconds; 0: none).
    LeaseCheckpoints(Vec<(i64, i64)>),
}

impl Record {
    /// A kind byte, then: each log row as its revision, sub-revision, length and encoded event;
    /// or each lease as its id and TTL; or the forgotten lease's id; or each lease as its id and
    /// remaining TTL.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut record = Vec::new();
        match self {
            Record::Log { first, last, rows } => {
                record.reserve(17 + rows.iter().map(|(_, v)| 20 + v.len()).sum::<usize>());
                record.push(0);
                record.extend_from_slice(&first.to_le_bytes());
                record.extend_from_slice(&last.to_le_bytes());
                for ((main, sub), value) in rows {
                    record.extend_from_slice(&main.to_le_bytes());
                    record.extend_from_slice(&sub.to_le_bytes());
                    record.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    record.extend_from_slice(value);
                }
            }
            Record::Leases(pairs) | Record::LeaseCheckpoints(pairs) => {
                record.push(if matches!(self, Record::Leases(_)) {
                    1
                } else {
                    3
                });
                for (id, seconds) in pairs {
                    record.extend_from_slice(&id.to_le_bytes());
                    record.extend_from_slice(&seconds.to_le_bytes());
                }
            }
            Record::LeaseRemoved(id) => {
                record.push(2);
                record.extend_from_slice(&id.to_le_bytes());
            }
        }
        record
    }

    pub(super) fn decode(mut record: &[u8]) -> Result<Record> {
        fn take<'a>(record: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
            if record.len() < n {
                return Err(BackendError::storage(
                    "a write-ahead log record that passed its checksum does not decode",
                ));
            }
            let (head, rest) = record.split_at(n);
            *record = rest;
            Ok(head)
        }
        fn number(record: &mut &[u8]) -> Result<i64> {
            Ok(i64::from_le_bytes(
                take(record, 8)?.try_into().expect("8 bytes"),
            ))
        }
        let kind = take(&mut record, 1)?[0];
        match kind {
            0 => {
                let first = number(&mut record)?;
                let last = number(&mut record)?;
                let mut rows = Vec::new();
                while !record.is_empty() {
                    let main = number(&mut record)?;
                    let sub = number(&mut record)?;
                    let length = u32::from_le_bytes(take(&mut record, 4)?.try_into().expect("4"));
                    rows.push(((main, sub), take(&mut record, length as usize)?.to_vec()));
                }
                Ok(Record::Log { first, last, rows })
            }
            1 | 3 => {
                let mut pairs = Vec::new();
                while !record.is_empty() {
                    pairs.push((number(&mut record)?, number(&mut record)?));
                }
                Ok(if kind == 1 {
                    Record::Leases(pairs)
                } else {
                    Record::LeaseCheckpoints(pairs)
                })
            }
            2 => Ok(Record::LeaseRemoved(number(&mut record)?)),
            _ => Err(BackendError::storage(format!(
                "a write-ahead log record of unknown kind {kind}"
            ))),
        }
    }
}
