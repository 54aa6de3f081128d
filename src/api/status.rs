//! The gRPC status of each of Strata's errors: etcd's code, with the error's message. The errors
//! themselves (`crate::error`) say what went wrong in etcd's words; which gRPC code carries each is
//! the API's business, as it is of etcd's `v3rpc` layer.

use crate::error::Error;
use tonic::Code;

impl Error {
    /// etcd's gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::InvalidSortOption
            | Error::RequestTooLarge
            | Error::UserEmpty
            | Error::RoleEmpty
            | Error::AuthFailed
            | Error::PermissionNotGiven
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision
            | Error::AuthStale
            | Error::WrongDowngradeVersionFormat
            | Error::InvalidDowngradeTargetVersion => Code::InvalidArgument,
            Error::Compacted | Error::FutureRevision | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::LeaseNotFound => Code::NotFound,
            Error::LeaseExists
            | Error::BadLeaderTransferee
            | Error::NoInflightDowngrade
            | Error::DowngradeBySnapshot(_)
            | Error::MembershipByFrontends(_)
            | Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::NoSpace => Code::ResourceExhausted,
            Error::Storage(_) | Error::Stopped => Code::Unavailable,
            // etcd returns these as plain Go errors, which gRPC turns into Unknown.
            Error::SessionExpired
            | Error::ElectionNotLeader
            | Error::ElectionNoLeader
            | Error::MissingLeaderKey
            | Error::NoPasswordUser
            | Error::UnknownMethod => Code::Unknown,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}
