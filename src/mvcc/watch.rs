//! The watch hub: every watcher of this process, fed from memory as revisions commit.
//!
//! Watchers are in one of two groups, as in etcd's watchable store:
//! - *synced*: caught up with the committed revision. The writer hands each committed batch to
//!   [`WatchHub::notify`], which sends each synced watcher its events without waiting: a watcher whose
//!   stream cannot take them is moved to the unsynced group (etcd's victims), so a slow consumer never
//!   holds up a write or another watcher.
//! - *unsynced*: behind, because it started in the past or fell behind. [`sync_unsynced`] replays the
//!   log for them from the backend and moves each to the synced group once it has reached the committed
//!   revision; one whose next revision has been compacted away is told so and dropped.
//!
//! For a watcher on key `a` and one on `[b, d)`, both synced at revision 7:
//!
//! ```text
//! by_key: { "a": {1} }   ranges: {2}   unsynced: {}
//! watchers: { 1: {watch_id 0, next 8, ...}, 2: {watch_id 1, next 8, ...} }
//! ```

use super::index::{Index, KeyRange};
use crate::backend::{Backend, LogEntry};
use crate::proto::mvccpb::{event::EventType, Event};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Most revisions replayed into one response for a watcher catching up (etcd's watchBatchMaxRevs).
const MAX_REVISIONS_PER_REPLAY: usize = 1000;
/// Most watchers replayed in one pass (etcd's maxWatchersPerSync): the pass holds the hub lock, and
/// with it the writer's notifications.
const MAX_WATCHERS_PER_PASS: usize = 512;
/// Log events read per replay step.
const REPLAY_CHUNK: usize = 10_000;
/// How often watchers whose stream was full are retried (etcd retries victims every 100 ms).
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Identifies a watcher in the hub (unique in the process; not the client's watch id).
pub type WatcherKey = u64;

/// What a client asked to watch.
#[derive(Clone, Debug, Default)]
pub struct WatchSpec {
    /// The id the stream reports events under.
    pub watch_id: i64,
    pub key: Bytes,
    pub range_end: Bytes,
    /// The first revision to report; 0 for the one after the current revision.
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
}

/// What a watch stream tells its client about one of its watchers, in the order the client must see
/// it. The hub and the stream's own request handling share one channel per stream, so a watcher's
/// creation always precedes its events and a progress report always follows the events it covers.
#[derive(Debug, PartialEq)]
pub struct Notice {
    pub watch_id: i64,
    /// The revision the response header reports.
    pub revision: i64,
    pub kind: NoticeKind,
}

#[derive(Debug, PartialEq)]
pub enum NoticeKind {
    Created,
    /// Creation failed, for this reason.
    Refused(String),
    Canceled,
    /// Events in revision order; never a part of one revision only.
    Events(Vec<Event>),
    /// The watcher's next revision was compacted away; it has been removed.
    Compacted(i64),
    /// Everything up to `revision` has been sent.
    Progress,
}

struct Watcher {
    spec: WatchSpec,
    /// The next revision this watcher has to be told about.
    next: i64,
    stream: mpsc::Sender<Notice>,
}

impl WatchSpec {
    fn wants(&self, event: &Event) -> bool {
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
        KeyRange::new(&self.key, &self.range_end).contains(key)
    }

    /// The events of `entries` this watcher wants.
    fn select(&self, entries: &[LogEntry]) -> Vec<Event> {
        entries
            .iter()
            .flat_map(|e| e.events.iter().filter(|ev| self.wants(ev)).cloned())
            .collect()
    }
}

#[derive(Default)]
pub struct WatchHub {
    last_key: WatcherKey,
    watchers: HashMap<WatcherKey, Watcher>,
    /// Synced watchers of a single key, by key.
    by_key: HashMap<Bytes, HashSet<WatcherKey>>,
    /// Synced watchers of a range.
    ranges: HashSet<WatcherKey>,
    unsynced: HashSet<WatcherKey>,
    /// Wakes the replay task when a watcher becomes unsynced.
    wake: Arc<Notify>,
}

impl WatchHub {
    /// Adds a watcher, synced at once unless it starts at or below the committed revision, and
    /// announces it through `created` before anything else can be sent for it.
    pub fn add(
        &mut self,
        spec: WatchSpec,
        stream: mpsc::Sender<Notice>,
        created: mpsc::Permit<'_, Notice>,
        committed: i64,
    ) -> WatcherKey {
        created.send(Notice {
            watch_id: spec.watch_id,
            revision: committed,
            kind: NoticeKind::Created,
        });
        self.last_key += 1;
        let key = self.last_key;
        let start = spec.start_revision;
        let watcher = Watcher {
            next: if start == 0 || start > committed {
                start.max(committed + 1)
            } else {
                start
            },
            spec,
            stream,
        };
        let synced = watcher.next > committed;
        self.watchers.insert(key, watcher);
        crate::metrics::WATCHERS.inc();
        if synced {
            self.mark_synced(key);
        } else {
            self.mark_unsynced(key);
        }
        key
    }

    /// Removes a watcher; false if it was not there (already removed after a compaction).
    pub fn remove(&mut self, key: WatcherKey) -> bool {
        let Some(w) = self.watchers.remove(&key) else {
            return false;
        };
        crate::metrics::WATCHERS.dec();
        self.unsynced.remove(&key);
        self.leave_synced(key, &w.spec.key);
        true
    }

    /// Takes a watcher of `watched` out of the synced group.
    fn leave_synced(&mut self, key: WatcherKey, watched: &Bytes) {
        self.ranges.remove(&key);
        if let Some(set) = self.by_key.get_mut(watched) {
            set.remove(&key);
            if set.is_empty() {
                self.by_key.remove(watched);
            }
        }
    }

    /// Reports progress at `committed` on `stream` under `watch_id` if every one of `keys` has been
    /// sent everything up to it and none starts in the future (etcd 3.5.22 and later); otherwise, or
    /// if the stream is full, reports nothing (as etcd 3.5.13 and later: the client asks again).
    pub fn progress(
        &self,
        keys: &[WatcherKey],
        watch_id: i64,
        stream: &mpsc::Sender<Notice>,
        committed: i64,
    ) {
        let caught_up = keys.iter().all(|k| {
            !self.unsynced.contains(k)
                && self
                    .watchers
                    .get(k)
                    .is_some_and(|w| w.spec.start_revision <= committed)
        });
        if !keys.is_empty() && caught_up {
            let _ = stream.try_send(Notice {
                watch_id,
                revision: committed,
                kind: NoticeKind::Progress,
            });
        }
    }

    fn mark_synced(&mut self, key: WatcherKey) {
        self.unsynced.remove(&key);
        let w = &self.watchers[&key];
        if w.spec.range_end.is_empty() {
            self.by_key
                .entry(w.spec.key.clone())
                .or_default()
                .insert(key);
        } else {
            self.ranges.insert(key);
        }
    }

    fn mark_unsynced(&mut self, key: WatcherKey) {
        let watched = self.watchers[&key].spec.key.clone();
        self.leave_synced(key, &watched);
        self.unsynced.insert(key);
        self.wake.notify_one();
    }

    /// Makes every watcher replay from the log, after the index was reloaded under them.
    pub fn unsync_all(&mut self) {
        self.by_key.clear();
        self.ranges.clear();
        self.unsynced.extend(self.watchers.keys().copied());
        self.wake.notify_one();
    }

    /// Sends each synced watcher its events of `entries`, newly committed, one response per
    /// revision. The writer calls it under the hub lock together with moving the committed revision,
    /// so a watcher that syncs meanwhile misses nothing.
    pub fn notify(&mut self, entries: &[LogEntry]) {
        let mut fell_behind = Vec::new();
        let mut gone = Vec::new();
        for entry in entries {
            let mut batches: HashMap<WatcherKey, Vec<Event>> = HashMap::new();
            for event in &entry.events {
                let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
                let single = self.by_key.get(key).into_iter().flatten();
                for &wk in single.chain(&self.ranges) {
                    let w = &self.watchers[&wk];
                    if w.next <= entry.revision && w.spec.wants(event) {
                        batches.entry(wk).or_default().push(event.clone());
                    }
                }
            }
            for (wk, events) in batches {
                let w = self.watchers.get_mut(&wk).expect("synced watcher exists");
                let notice = Notice {
                    watch_id: w.spec.watch_id,
                    revision: entry.revision,
                    kind: NoticeKind::Events(events),
                };
                match w.stream.try_send(notice) {
                    Ok(()) => w.next = entry.revision + 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        w.next = entry.revision;
                        fell_behind.push(wk);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push(wk),
                }
            }
            for wk in fell_behind.drain(..) {
                self.mark_unsynced(wk);
            }
            for wk in gone.drain(..) {
                self.remove(wk);
            }
        }
    }
}

/// Replays the log to unsynced watchers, for as long as the hub lives.
pub async fn sync_unsynced(
    hub: Arc<Mutex<WatchHub>>,
    index: Arc<RwLock<Index>>,
    backend: Arc<dyn Backend>,
) {
    let wake = hub.lock().expect("hub lock").wake.clone();
    loop {
        let progressed = match replay_once(&hub, &index, backend.as_ref()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "watch replay failed; retrying");
                false
            }
        };
        if progressed {
            continue;
        }
        let idle = hub.lock().expect("hub lock").unsynced.is_empty();
        if idle {
            wake.notified().await;
        } else {
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }
}

/// One replay pass over every unsynced watcher; true if any of them moved forward.
async fn replay_once(
    hub: &Mutex<WatchHub>,
    index: &RwLock<Index>,
    backend: &dyn Backend,
) -> crate::backend::Result<bool> {
    let (committed, mut work) = {
        let hub = hub.lock().expect("hub lock");
        let committed = index.read().expect("index lock").committed;
        let work: Vec<(WatcherKey, i64)> = hub
            .unsynced
            .iter()
            .take(MAX_WATCHERS_PER_PASS)
            .map(|k| (*k, hub.watchers[k].next))
            .collect();
        (committed, work)
    };
    let Some(from) = work.iter().map(|(_, next)| *next).min() else {
        return Ok(false);
    };
    let mut entries = if from <= committed {
        backend.read_log(from, REPLAY_CHUNK).await?
    } else {
        Vec::new()
    };
    let read: usize = entries.iter().map(|e| e.events.len()).sum();
    entries.retain(|e| e.revision <= committed);
    // A short read reached the head; a full one stopped at its last revision.
    let reached = match entries.last() {
        Some(last) if read >= REPLAY_CHUNK => last.revision,
        _ => committed,
    };
    // Compaction may have removed rows under the read: whoever needs a compacted revision gets
    // told so instead of an incomplete replay.
    let compacted = index.read().expect("index lock").compacted;

    let mut hub = hub.lock().expect("hub lock");
    let mut progressed = false;
    for (key, next) in &mut work {
        let Some(w) = hub.watchers.get(key) else {
            continue;
        };
        let (spec, stream) = (w.spec.clone(), w.stream.clone());
        if *next < compacted {
            let notice = Notice {
                watch_id: spec.watch_id,
                revision: committed,
                kind: NoticeKind::Compacted(compacted),
            };
            if !matches!(
                stream.try_send(notice),
                Err(mpsc::error::TrySendError::Full(_))
            ) {
                hub.remove(*key);
                progressed = true;
            }
            continue;
        }
        let mut sent = true;
        let start = entries.partition_point(|e| e.revision < *next);
        for chunk in entries[start..].chunks(MAX_REVISIONS_PER_REPLAY) {
            let events = spec.select(chunk);
            if !events.is_empty() {
                let notice = Notice {
                    watch_id: spec.watch_id,
                    revision: committed,
                    kind: NoticeKind::Events(events),
                };
                if stream.try_send(notice).is_err() {
                    sent = false;
                    break;
                }
            }
            *next = chunk.last().expect("chunks are not empty").revision + 1;
            progressed = true;
        }
        if sent && *next <= reached {
            *next = reached + 1;
            progressed = true;
        }
        if stream.is_closed() {
            hub.remove(*key);
            continue;
        }
        hub.watchers.get_mut(key).expect("present above").next = *next;
        // The writer notifies under the hub lock, which is held here: nothing commits between
        // this check and the move to the synced group.
        if *next > index.read().expect("index lock").committed {
            hub.mark_synced(*key);
        }
    }
    Ok(progressed)
}
