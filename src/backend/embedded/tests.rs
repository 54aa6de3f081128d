use super::super::conformance;
use super::opening::{create, stored_cycle};
use super::*;

/// The operating system's error reaches mvcc's whole, to be matched on, and the client's
/// message stays etcd's with the detail after it.
#[test]
fn a_failure_keeps_the_error_underneath() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let Err(BackendError::Storage(failure)) = Embedded::open(&file.join("data")) else {
        panic!("a data dir under a file opens");
    };
    let error = crate::error::Error::Storage(failure);
    let io = std::iter::successors(std::error::Error::source(&error), |e| e.source())
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .expect("the io::Error is among the sources");
    assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory);
    assert!(
        error
            .to_string()
            .starts_with("etcdserver: storage failure: cannot create data dir"),
        "{error}"
    );
}

#[tokio::test]
async fn conformance_in_memory() {
    conformance::append_and_read_back(&Embedded::in_memory().unwrap()).await;
    conformance::append_out_of_order_is_refused(&Embedded::in_memory().unwrap()).await;
    conformance::compaction_removes_and_is_remembered(&Embedded::in_memory().unwrap()).await;
    conformance::leases_are_recorded_and_forgotten(&Embedded::in_memory().unwrap()).await;
    conformance::lease_checkpoints_are_kept_with_their_leases(&Embedded::in_memory().unwrap())
        .await;
    conformance::alarms_are_recorded_and_cleared(&Embedded::in_memory().unwrap()).await;
    conformance::auth_changes_only_from_the_stored_generation(&Embedded::in_memory().unwrap())
        .await;
    conformance::restore_takes_a_history_with_gaps(&Embedded::in_memory().unwrap()).await;
}

/// The write-ahead log record of an append of `entries`.
fn log_record(entries: &[LogEntry]) -> Vec<u8> {
    Record::Log {
        first: entries[0].revision,
        last: entries[entries.len() - 1].revision,
        rows: rows(entries),
    }
    .encode()
}

/// The write-ahead log's current cycle, as the closed store at `path` records it.
fn wal_cycle(path: &Path) -> u64 {
    stored_cycle(&create(path).unwrap()).unwrap()
}

/// Records the database lacks (as after a crash that came before its next synced commit)
/// are replayed at open; a record that does not follow the head is refused.
#[tokio::test]
async fn open_replays_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let b = Embedded::open(dir.path()).unwrap();
    conformance::append_and_read_back(&b).await;
    let written = b.read_log(1, 100).await.unwrap();
    drop(b);
    let renumbered = |from: i64| -> Vec<LogEntry> {
        (written.iter().zip(from..))
            .map(|(e, revision)| LogEntry {
                revision,
                events: e.events.clone(),
            })
            .collect()
    };
    let path = dir.path().join("strata.redb");
    let cycle = wal_cycle(&path);
    let (mut wal, records) = Wal::open(&path.with_extension("wal"), cycle).unwrap();
    // The two appends above, in the database already; then one more record of revisions it
    // has, and three it lacks.
    assert_eq!(records.len(), 2);
    for record in [renumbered(2), renumbered(5)] {
        wal.append(&log_record(&record)).unwrap();
    }
    // Lease changes are taken again in order.
    for record in [
        Record::Leases(vec![(1, 10), (2, 20)]),
        Record::LeaseCheckpoints(vec![(1, 5), (2, 7)]),
        Record::LeaseRemoved(1),
        Record::LeaseRemoved(3),
        Record::LeaseCheckpoints(vec![(1, 4)]),
    ] {
        wal.append(&record.encode()).unwrap();
    }
    drop(wal);
    let b = Embedded::open(dir.path()).unwrap();
    assert_eq!(b.progress().await.unwrap().head, 7);
    assert_eq!(b.leases().await.unwrap(), vec![(2, 20)]);
    let checkpoints = b.lease_checkpoints().expect("lease checkpoints");
    assert_eq!(checkpoints.recorded().await.unwrap(), vec![(2, 7)]);
    assert_eq!(b.read_log(5, 100).await.unwrap(), renumbered(5));
    assert_eq!(b.read_log(2, 100).await.unwrap()[..3], written[..]);
    b.append(&renumbered(8)[..1]).await.unwrap();
    drop(b);
    // A record that skips revisions means the log and the database disagree.
    let b = Embedded::open(dir.path()).unwrap();
    drop(b);
    let cycle = wal_cycle(&path);
    let (mut wal, _) = Wal::open(&path.with_extension("wal"), cycle).unwrap();
    wal.append(&log_record(&renumbered(20))).unwrap();
    drop(wal);
    let refused = Embedded::open(dir.path()).err().expect("a gap is refused");
    assert!(
        matches!(refused, BackendError::Corrupt { revision: 20, .. }),
        "{refused}"
    );
}

/// A call that panics answers with a storage error, and the next call finds the store opened
/// again.
#[tokio::test]
async fn a_panicking_call_fails_and_the_store_opens_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = Embedded::open(dir.path()).unwrap();
    let failed = b
        .with_store(|_| -> Result<()> { panic!("deliberately, in a test") })
        .await;
    assert!(
        matches!(failed, Err(BackendError::Storage(_))),
        "{failed:?}"
    );
    conformance::append_and_read_back(&b).await;
}

#[tokio::test]
async fn survives_reopen_with_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let b = Embedded::open(dir.path()).unwrap();
    conformance::append_and_read_back(&b).await;
    let identity = b.identity();
    drop(b);
    let b = Embedded::open(dir.path()).unwrap();
    assert_eq!(b.identity(), identity);
    assert_eq!(b.progress().await.unwrap().head, 4);
    assert_eq!(b.read_log(1, 100).await.unwrap().len(), 3);
    assert!(b.usage().size > 0);
}
