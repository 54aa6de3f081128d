//! Generated etcd v3 API types and gRPC services, and gRPC's health service (see `proto/` and
//! `build.rs`).
//!
//! The modules are siblings because generated code refers across packages as
//! `super::<package>::...`.

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// gRPC's health checking protocol, `grpc.health.v1`.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
