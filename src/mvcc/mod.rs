//! etcd's semantics, once for every backend: revisions, the key index, range/txn/compare, compaction.
//!
//! Synchronous logic over the in-memory [`index::Index`]; the only I/O goes through the
//! [`Backend`](crate::backend::Backend) the [`Store`] is opened on.

pub mod compactor;
mod hash;
mod index;
mod key_index;
mod lease_keeper;
pub mod lessor;
mod queue;
pub mod quota;
mod range;
mod recovery;
mod store;
mod txn;
pub mod watch;
mod writer;

pub use store::Store;

/// A position in the history. `main` is the revision of the txn that made the change (what clients
/// see); `sub` orders the changes within that txn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}
