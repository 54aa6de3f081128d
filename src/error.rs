//! Every error a client can see, each with etcd 3.5's message; the gRPC code that carries it is the
//! API's (`api/status.rs`).

use crate::backend::{BackendError, Failure};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The store could not make a write durable or read it back; the write was not acknowledged.
    #[error("etcdserver: storage failure: {0}")]
    Storage(#[source] Failure),
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A lock's lease expired while its request waited (etcd's concurrency.ErrSessionExpired).
    #[error("session expired")]
    SessionExpired,
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: unknown method")]
    UnknownMethod,
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,
    /// etcd's downgrade is a rolling change of binaries; Strata's way back to etcd is a snapshot.
    #[error("strata: a downgrade cannot be enabled here: to move to etcd {0}, save a snapshot (etcdctl snapshot save) and restore it with etcdctl snapshot restore, as docs/migration.md says")]
    DowngradeBySnapshot(String),
    /// Membership is not changed through the Cluster service: a frontend joins by starting.
    #[error("strata: members are Strata frontends; one joins by starting against the cluster's backend and leaves by stopping, so {0} is refused")]
    MembershipByFrontends(&'static str),
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// A write allowed under an auth state that another frontend replaced before the write was
    /// appended: the API allows it again under the new state (see `Store::put`). Should
    /// it reach a client, it reads as etcd's answer to a request checked at an old auth revision.
    #[error("etcdserver: revision of auth store is old")]
    AuthStale,
    /// etcd has no gRPC error for this one: its auth store's own message reaches the client.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        match e {
            // Said once: "etcdserver: storage failure: postgres: …".
            BackendError::Storage(failure) => Error::Storage(failure),
            BackendError::Closed => Error::Stopped,
            other => Error::Storage(Failure::caused_by(other.to_string(), other)),
        }
    }
}

impl Error {
    /// A storage failure of Strata's own finding.
    pub fn storage(detail: impl Into<String>) -> Error {
        Error::Storage(Failure::new(detail))
    }

    /// A storage failure `cause` led to.
    pub fn storage_caused_by(
        detail: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Storage(Failure::caused_by(detail, cause))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
