//! Compiles the etcd-compatible protobuf definitions under `proto/` into Rust
//! (prost messages + tonic clients and servers) without needing a system `protoc`.

use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";

const PROTO_FILES: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "grpc/health/v1/health.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let files: Vec<PathBuf> = PROTO_FILES
        .iter()
        .map(|f| PathBuf::from(PROTO_ROOT).join(f))
        .collect();

    let fds = protox::compile(&files, [PROTO_ROOT])?;
    // The descriptors themselves, for the JSON gateway's protobuf-JSON mapping at run time.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    // Byte fields as `bytes::Bytes`: stored values are handed to many readers without copying.
    tonic_prost_build::configure()
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    Ok(())
}
