//! etcd's semantics, once for every backend: revisions, the key index, range/txn/compare, compaction.
//!
//! Synchronous logic over the in-memory [`index::Index`]; the only I/O goes through the
//! [`Backend`](crate::backend::Backend) the [`Store`] is opened on.

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

/// Positions in the history are the log's own (the backend stores and reads values by them).
pub use crate::backend::Revision;
