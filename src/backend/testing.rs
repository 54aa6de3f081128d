//! Backends for tests. `Faulty` fails an append on demand, after making it durable or not, so
//! that tests of the layers above can reach what a real backend does only under a crash or a lost
//! connection.

use super::embedded::Embedded;
use super::{Backend, Identity, LeaseCheckpoints, Log, LogEntry, Records, Restore, Usage};
use crate::backend::Revision;
use crate::proto::mvccpb::KeyValue;
use async_trait::async_trait;
use std::sync::Mutex;

/// A backend whose next append fails, after making the batch durable or not.
pub(crate) struct Faulty {
    pub(crate) inner: Embedded,
    /// None: appends succeed. Some(durable): the next append fails, durable or not.
    pub(crate) fail_next: Mutex<Option<bool>>,
}

#[async_trait]
impl Backend for Faulty {
    fn identity(&self) -> Identity {
        self.inner.identity()
    }

    async fn close(&self) -> crate::backend::Result<()> {
        self.inner.close().await
    }

    fn lease_checkpoints(&self) -> Option<&dyn LeaseCheckpoints> {
        self.inner.lease_checkpoints()
    }
}

#[async_trait]
impl Log for Faulty {
    async fn progress(&self) -> crate::backend::Result<crate::backend::Progress> {
        self.inner.progress().await
    }

    async fn append(&self, entries: &[LogEntry]) -> crate::backend::Result<()> {
        let fail = self.fail_next.lock().unwrap().take();
        match fail {
            None => self.inner.append(entries).await,
            Some(durable) => {
                if durable {
                    self.inner.append(entries).await?;
                }
                Err(crate::backend::BackendError::storage("injected"))
            }
        }
    }

    async fn read_log(&self, from: i64, max: usize) -> crate::backend::Result<Vec<LogEntry>> {
        self.inner.read_log(from, max).await
    }

    async fn read_values(
        &self,
        revisions: &[Revision],
    ) -> crate::backend::Result<Vec<Option<KeyValue>>> {
        self.inner.read_values(revisions).await
    }

    async fn set_compacted(&self, revision: i64) -> crate::backend::Result<()> {
        self.inner.set_compacted(revision).await
    }

    async fn remove(&self, revisions: &[Revision]) -> crate::backend::Result<()> {
        self.inner.remove(revisions).await
    }

    async fn defragment(&self) -> crate::backend::Result<()> {
        self.inner.defragment().await
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}

#[async_trait]
impl Restore for Faulty {
    async fn begin_restore(&self) -> crate::backend::Result<()> {
        self.inner.begin_restore().await
    }

    async fn restore_log(&self, entries: &[LogEntry]) -> crate::backend::Result<()> {
        self.inner.restore_log(entries).await
    }

    async fn restore_leases(&self, leases: &[(i64, i64, i64)]) -> crate::backend::Result<()> {
        self.inner.restore_leases(leases).await
    }

    async fn finish_restore(
        &self,
        progress: crate::backend::Progress,
    ) -> crate::backend::Result<()> {
        self.inner.finish_restore(progress).await
    }
}

#[async_trait]
impl Records for Faulty {
    async fn put_leases(&self, leases: &[(i64, i64)]) -> crate::backend::Result<Vec<bool>> {
        self.inner.put_leases(leases).await
    }

    async fn remove_lease(&self, id: i64) -> crate::backend::Result<()> {
        self.inner.remove_lease(id).await
    }

    async fn leases(&self) -> crate::backend::Result<Vec<(i64, i64)>> {
        self.inner.leases().await
    }

    async fn put_alarm(&self, member: u64, alarm: i32) -> crate::backend::Result<()> {
        self.inner.put_alarm(member, alarm).await
    }

    async fn remove_alarm(&self, member: u64, alarm: i32) -> crate::backend::Result<()> {
        self.inner.remove_alarm(member, alarm).await
    }

    async fn alarms(&self) -> crate::backend::Result<Vec<(u64, i32)>> {
        self.inner.alarms().await
    }

    async fn auth(&self) -> crate::backend::Result<Option<(u64, Vec<u8>)>> {
        self.inner.auth().await
    }

    async fn put_auth(&self, generation: u64, state: &[u8]) -> crate::backend::Result<bool> {
        self.inner.put_auth(generation, state).await
    }
}
