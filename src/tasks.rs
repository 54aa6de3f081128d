//! Background tasks with an owner. A task that outlives the request which started it (the writer,
//! the lease keepers, following other frontends, replaying history to watchers, compaction,
//! heartbeats) is spawned through a [`Tasks`], and stopping the owner stops each of its tasks and
//! waits until every one has ended — as etcd's watchable store closes its stop channel and then
//! waits on the group of its loops.

use std::future::Future;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The owner of a group of tasks.
#[derive(Default)]
pub struct Tasks {
    stop: CancellationToken,
    running: TaskTracker,
}

impl Tasks {
    /// Runs `task` until it ends or the owner stops. A task stopped is dropped at the point where it
    /// waits, so whatever it does must be safe to cut there, as a crash would cut it: each step is
    /// one call to the backend or the writer, done whole or not at all, and taken up again by the
    /// next process if cut.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.running.spawn(async move {
            stop.run_until_cancelled(task).await;
        });
    }

    /// Runs the task `start` makes from the stop request: one that must finish something before it
    /// ends (the writer answers every write queued before the stop), and ends by itself once it has.
    pub fn spawn_finishing<F>(&self, start: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.running.spawn(start(self.stop.clone()));
    }

    /// Asks every task to stop, and waits until all have ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.running.close();
        self.running.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_cuts_waiting_tasks_and_waits_for_finishing_ones() {
        let tasks = Tasks::default();
        let cut = Arc::new(AtomicBool::new(true));
        let flag = cut.clone();
        tasks.spawn(async move {
            std::future::pending::<()>().await;
            flag.store(false, Ordering::SeqCst);
        });
        let (queued, mut queue) = tokio::sync::mpsc::channel(4);
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        tasks.spawn_finishing(|stop| async move {
            stop.cancelled().await;
            queue.close();
            let mut drained = 0;
            while queue.recv().await.is_some() {
                drained += 1;
            }
            flag.store(drained == 2, Ordering::SeqCst);
        });
        queued.send(1).await.unwrap();
        queued.send(2).await.unwrap();
        tasks.stop().await;
        assert!(cut.load(Ordering::SeqCst), "the waiting task was cut");
        assert!(
            finished.load(Ordering::SeqCst),
            "the finishing task drained its queue before stop returned"
        );
        assert!(queued.send(3).await.is_err(), "its queue is closed");
    }
}
