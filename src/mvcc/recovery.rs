//! Rebuilding the index from the backend's log: whole at start-up, or when another frontend's
//! compaction overtook this one (`load_index`); and following a shared backend's head as other
//! frontends append to it (`follow`, which asks the writer to catch up).
//!
//! The store (at open, and for hashes and snapshots) and the writer (`Writer::catch_up`) both read
//! the log through these, so how a logged revision becomes index state is written once.

use super::index::Index;
use super::queue::{CatchUp, WriteQueue};
use crate::backend::{Backend, LogEntry};
use crate::error::{Error, Result};
use crate::proto::mvccpb::event::EventType;
use std::sync::{Arc, RwLock};

/// Log events read per step at start-up, or when reading the whole history.
pub(super) const RECOVERY_CHUNK: usize = 16 * 1024;
/// How long the follower waits before asking again for a catch-up that failed.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Asks the writer to catch up whenever the shared backend's head moves past the committed revision.
pub(super) async fn follow(
    mut tail: tokio::sync::watch::Receiver<i64>,
    index: Arc<RwLock<Index>>,
    writes: WriteQueue,
) {
    loop {
        let head = *tail.borrow_and_update();
        if head > index.read().expect("index lock").committed {
            let Ok(answer) = writes.enqueue(CatchUp, None).await else {
                return;
            };
            // One at a time: a burst of notifications needs one catch-up, not one each. One that
            // failed (the backend unreachable for a moment) is asked for again, as nothing else
            // may come to wake this task while readers wait for that head.
            if !matches!(answer.await, Ok(Ok(_))) {
                tokio::time::sleep(CATCH_UP_RETRY).await;
                continue;
            }
        }
        if tail.changed().await.is_err() {
            return;
        }
    }
}

/// Hands each revision the log keeps, oldest first, up to `upto`, to `visit`.
pub(super) async fn visit_log(
    backend: &dyn Backend,
    upto: i64,
    mut visit: impl FnMut(LogEntry) -> Result<()>,
) -> Result<()> {
    let mut from = 1;
    while from <= upto {
        let entries = backend.read_log(from, RECOVERY_CHUNK).await?;
        let Some(last) = entries.last() else {
            break;
        };
        from = last.revision + 1;
        for entry in entries.into_iter().filter(|e| e.revision <= upto) {
            visit(entry)?;
        }
    }
    Ok(())
}

/// An index rebuilt from the whole log.
pub(super) struct Loaded {
    pub(super) index: Index,
    /// Rows a compaction had still to remove when it was interrupted.
    pub(super) leftover: Vec<super::Revision>,
}

pub(super) async fn load_index(
    backend: &dyn Backend,
) -> Result<(Loaded, crate::backend::Progress)> {
    let progress = backend.progress().await?;
    if progress.head == crate::backend::Progress::RESTORING {
        return Err(Error::storage(
            "the store holds a restore that did not finish: delete it and restore again",
        ));
    }
    let mut index = Index::default();
    // Whatever another process appended meanwhile is caught up with later.
    visit_log(backend, progress.head, |e| {
        restore(&mut index, e);
        Ok(())
    })
    .await?;
    index.current = progress.head;
    index.committed = progress.head;
    let leftover = index.compact(progress.compacted);
    Ok((Loaded { index, leftover }, progress))
}

pub(super) fn restore(index: &mut Index, entry: LogEntry) {
    for (sub, event) in entry.events.into_iter().enumerate() {
        let rev = super::Revision {
            main: entry.revision,
            sub: sub as i64,
        };
        let is_put = event.r#type == EventType::Put as i32;
        if let Some(kv) = event.kv {
            index.restore(rev, kv, is_put);
        }
    }
}
