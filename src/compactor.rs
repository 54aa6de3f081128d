//! Automatic compaction, as etcd's `--auto-compaction-mode` runs it.
//!
//! A policy of when to compact, above the store: it asks the store to compact as a client would.
//! etcd keeps its compactor outside mvcc too (`etcdserver/api/v3compactor`), since mvcc says what a
//! compaction does and this only when one is due.
//!
//! - `revision`: every 5 minutes, compact at the current revision less the retention, if that moved.
//! - `periodic`: sample the revision every tenth of the period (at most every 6 minutes), and once a
//!   period has passed (then every period, at most every hour) compact at the revision sampled one
//!   period ago, so that about one period of history is always kept.

use crate::error::Error;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::CompactionRequest;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// etcd's interval between revision-mode compactions.
const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Keep this long of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// Compacts `store` by `policy` for as long as the process runs.
pub async fn run(store: Arc<Store>, policy: Policy) {
    match policy {
        Policy::Revision(retention) => revision_mode(store, retention).await,
        Policy::Periodic(period) => periodic_mode(store, period).await,
    }
}

async fn compact(store: &Store, revision: i64) -> bool {
    let request = CompactionRequest {
        revision,
        physical: false,
    };
    match store.compact(request).await {
        Ok(_) | Err(Error::Compacted) => {
            tracing::info!(revision, "completed auto compaction");
            true
        }
        Err(e) => {
            tracing::warn!(revision, error = %e, "auto compaction failed; will retry");
            false
        }
    }
}

async fn revision_mode(store: Arc<Store>, retention: i64) {
    let mut previous = 0;
    loop {
        tokio::time::sleep(REVISION_INTERVAL).await;
        let revision = store.revision() - retention;
        if revision <= 0 || revision == previous {
            continue;
        }
        if compact(&store, revision).await {
            previous = revision;
        }
    }
}

async fn periodic_mode(store: Arc<Store>, period: Duration) {
    let capped = period.min(Duration::from_secs(3600));
    let retry = capped / 10;
    let kept = (period.as_nanos() / retry.as_nanos().max(1)) as usize + 1;
    let mut samples: VecDeque<i64> = VecDeque::with_capacity(kept + 1);
    let mut last_success = Instant::now();
    let mut wait = period;
    loop {
        samples.push_back(store.revision());
        if samples.len() > kept {
            samples.pop_front();
        }
        tokio::time::sleep(retry).await;
        if last_success.elapsed() < wait {
            continue;
        }
        // The first compaction waits a whole period; the next ones come every period up to an hour.
        wait = capped;
        let revision = samples[0];
        if compact(&store, revision).await {
            last_success = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::proto::etcdserverpb::PutRequest;

    async fn store_with_writes(n: usize) -> Arc<Store> {
        let store = Store::open(Arc::new(Embedded::in_memory().unwrap()))
            .await
            .unwrap();
        for i in 0..n {
            store
                .put(
                    PutRequest {
                        key: format!("k{i}").into(),
                        ..Default::default()
                    },
                    None,
                )
                .await
                .unwrap();
        }
        store
    }

    #[tokio::test(start_paused = true)]
    async fn revision_mode_keeps_the_retention() {
        let store = store_with_writes(10).await;
        tokio::spawn(run(store.clone(), Policy::Revision(4)));
        tokio::time::sleep(REVISION_INTERVAL - Duration::from_secs(1)).await;
        assert_eq!(store.compacted(), -1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(store.compacted(), 11 - 4);
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_mode_compacts_to_the_revision_one_period_ago() {
        let store = store_with_writes(1).await;
        tokio::spawn(run(
            store.clone(),
            Policy::Periodic(Duration::from_secs(600)),
        ));
        // A write every minute, half a minute after each sample: at minute m the revision is
        // 2 + m.
        tokio::time::sleep(Duration::from_secs(30)).await;
        for _ in 0..10 {
            assert_eq!(store.compacted(), -1, "nothing before a whole period");
            let put = PutRequest {
                key: "k".into(),
                ..Default::default()
            };
            store.put(put, None).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        // Sampled at minute 0, before any of those writes.
        assert_eq!(store.compacted(), 2);
    }
}
