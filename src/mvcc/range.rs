//! Range requests, in etcd's order: select keys from the index, read the values not held in memory
//! from the backend, then filter by min/max revisions, sort and cut to the limit.

use super::index::{Index, KeyRange};
use super::Revision;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;
use std::cmp::Ordering;

/// A range answered from the index, some of whose values are still to be read from the backend.
pub struct PendingRange {
    request: RangeRequest,
    /// The revision the response header reports: the view's, not the requested one.
    header_revision: i64,
    count: i64,
    kvs: Vec<KeyValue>,
    /// Positions in `kvs` whose value and lease live in the backend, at these revisions.
    stored: Vec<(usize, Revision)>,
}

fn fetches_everything(r: &RangeRequest) -> bool {
    r.sort_order != SortOrder::None as i32
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
}

/// Selects the keys of `request` as of the view revision `view` (the newest revision visible to it).
pub fn select(index: &Index, request: &RangeRequest, view: i64) -> Result<PendingRange> {
    crate::metrics::RANGES.inc();
    let at = index.check_revision(request.revision, view)?;
    // One more than the limit tells whether there is more.
    let wanted = match request.limit {
        l if l > 0 && !fetches_everything(request) => l as usize + 1,
        _ => usize::MAX,
    };
    let mut pending = PendingRange {
        request: request.clone(),
        header_revision: view,
        count: 0,
        kvs: Vec::new(),
        stored: Vec::new(),
    };
    for (key, kr, newest) in index.range_at(KeyRange::new(&request.key, &request.range_end), at) {
        pending.count += 1;
        if request.count_only || pending.kvs.len() >= wanted {
            continue;
        }
        let found = index.found(key, kr, newest);
        if let Some(rev) = found.stored {
            pending.stored.push((pending.kvs.len(), rev));
        }
        pending.kvs.push(found.kv);
    }
    Ok(pending)
}

impl PendingRange {
    pub fn needs_backend(&self) -> bool {
        !self.stored.is_empty()
    }

    /// Reads the values held only in the backend. A value gone means compaction overtook this read.
    pub async fn load(&mut self, backend: &dyn Backend) -> Result<()> {
        let stored = std::mem::take(&mut self.stored);
        if !load_stored(backend, &mut self.kvs, &stored)
            .await?
            .is_empty()
        {
            return Err(Error::Compacted);
        }
        Ok(())
    }

    /// The response, once every value is loaded.
    pub fn finish(self) -> RangeResponse {
        debug_assert!(
            self.stored.is_empty(),
            "range finished before its values were loaded"
        );
        let r = &self.request;
        let mut kvs = self.kvs;
        let keep = |kv: &KeyValue| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        };
        kvs.retain(keep);
        sort(&mut kvs, r);
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = Default::default();
            }
        }
        RangeResponse {
            header: Some(ResponseHeader {
                revision: self.header_revision,
                ..Default::default()
            }),
            kvs,
            more,
            count: self.count,
        }
    }
}

/// Reads, in one backend call, the values of `kvs` held only in the backend (`stored`: the
/// position in `kvs` and the revision that wrote it); answers the positions whose value is gone
/// (compaction overtook the read).
pub async fn load_stored(
    backend: &dyn Backend,
    kvs: &mut [KeyValue],
    stored: &[(usize, Revision)],
) -> Result<Vec<usize>> {
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let revisions: Vec<Revision> = stored.iter().map(|(_, r)| *r).collect();
    let values = backend.read_values(&revisions).await?;
    let mut gone = Vec::new();
    for ((i, _), value) in stored.iter().zip(values) {
        match value {
            Some(value) => {
                kvs[*i].value = value.value;
                kvs[*i].lease = value.lease;
            }
            None => gone.push(*i),
        }
    }
    Ok(gone)
}

/// Sorts as etcd does: a target without an order sorts ascending; KEY without an order keeps the
/// index's key order. Ties keep key order (etcd's sort is not stable; for small results it behaves so).
fn sort(kvs: &mut [KeyValue], r: &RangeRequest) {
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None) {
        SortOrder::None if target != SortTarget::Key => SortOrder::Ascend,
        order => order,
    };
    let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(by),
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
    }
}
