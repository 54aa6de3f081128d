//! etcd's JSON gateway: each RPC at its `/v3/...` path, POSTed as protobuf-JSON the way etcd's
//! grpc-gateway reads and writes it (field names as in the .proto files, 64-bit integers as strings,
//! bytes as base64, enums by name, default values left out; errors as
//! `{"error","message","code"}` with the HTTP status of the gRPC code). A streaming RPC reads any
//! number of JSON requests from the body and answers with one `{"result":...}` line per response,
//! for as long as the call lasts.
//!
//! A gateway request is turned into a gRPC request and served, in the process, by the same services
//! that serve gRPC, so both faces give the same answers.

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use std::convert::Infallible;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::Code;

/// The descriptors of etcd's protos, written by build.rs.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Gateway path → gRPC service and method, as etcd 3.5's annotations map them.
const PATHS: &[(&str, &str, &str)] = &[
    ("/v3/kv/range", "etcdserverpb.KV", "Range"),
    ("/v3/kv/put", "etcdserverpb.KV", "Put"),
    ("/v3/kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("/v3/kv/txn", "etcdserverpb.KV", "Txn"),
    ("/v3/kv/compaction", "etcdserverpb.KV", "Compact"),
    ("/v3/watch", "etcdserverpb.Watch", "Watch"),
    (
        "/v3/lease/keepalive",
        "etcdserverpb.Lease",
        "LeaseKeepAlive",
    ),
    (
        "/v3/maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
    ),
    ("/v3/election/observe", "v3electionpb.Election", "Observe"),
    ("/v3/lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("/v3/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    (
        "/v3/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    (
        "/v3/kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    ("/v3/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    (
        "/v3/cluster/member/add",
        "etcdserverpb.Cluster",
        "MemberAdd",
    ),
    (
        "/v3/cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
    ),
    (
        "/v3/cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
    ),
    (
        "/v3/cluster/member/list",
        "etcdserverpb.Cluster",
        "MemberList",
    ),
    (
        "/v3/cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
    ),
    ("/v3/maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    (
        "/v3/maintenance/status",
        "etcdserverpb.Maintenance",
        "Status",
    ),
    (
        "/v3/maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
    ),
    ("/v3/maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    (
        "/v3/maintenance/hashkv",
        "etcdserverpb.Maintenance",
        "HashKV",
    ),
    (
        "/v3/maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
    ),
    (
        "/v3/maintenance/downgrade",
        "etcdserverpb.Maintenance",
        "Downgrade",
    ),
    ("/v3/auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("/v3/auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("/v3/auth/status", "etcdserverpb.Auth", "AuthStatus"),
    ("/v3/auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("/v3/auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("/v3/auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("/v3/auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("/v3/auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    (
        "/v3/auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
    ),
    ("/v3/auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    (
        "/v3/auth/user/revoke",
        "etcdserverpb.Auth",
        "UserRevokeRole",
    ),
    ("/v3/auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("/v3/auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("/v3/auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("/v3/auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    (
        "/v3/auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
    ),
    (
        "/v3/auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
    ),
    ("/v3/lock/lock", "v3lockpb.Lock", "Lock"),
    ("/v3/lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("/v3/election/campaign", "v3electionpb.Election", "Campaign"),
    ("/v3/election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("/v3/election/leader", "v3electionpb.Election", "Leader"),
    ("/v3/election/resign", "v3electionpb.Election", "Resign"),
];

/// The gateway's routes, answered by `grpc` (the gRPC services, without the gateway).
pub fn routes(grpc: Routes) -> Router {
    let pool = DescriptorPool::decode(DESCRIPTORS).expect("build.rs wrote valid descriptors");
    let mut router = Router::new();
    for &(path, service, method) in PATHS {
        let method = pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .unwrap_or_else(|| panic!("{service}/{method} is in the protos"));
        let grpc = grpc.clone();
        router = if method.is_client_streaming() || method.is_server_streaming() {
            router.route(
                path,
                post(move |headers: HeaderMap, body: Body| {
                    stream(grpc.clone(), method.clone(), headers, body)
                }),
            )
        } else {
            router.route(
                path,
                post(move |headers: HeaderMap, body: Bytes| {
                    call(grpc.clone(), method.clone(), headers, body)
                }),
            )
        };
    }
    router
}

/// The HTTP status the grpc-gateway of etcd 3.5 (v1.16) gives a gRPC code: FailedPrecondition is
/// 400, not 412 as under etcd 3.4's older gateway.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(code: Code, message: &str) -> Response {
    let status = http_status(code);
    // In grpc-gateway's field order.
    let quoted = serde_json::Value::from(message).to_string();
    let body = format!(
        "{{\"error\":{quoted},\"message\":{quoted},\"code\":{}}}",
        code as i32
    );
    json(status, body.into_bytes())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One gateway call: JSON to protobuf, a gRPC call in the process, protobuf to JSON.
async fn call(
    mut grpc: Routes,
    method: MethodDescriptor,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut json_in = serde_json::Deserializer::from_slice(&body);
    let request = match DynamicMessage::deserialize(method.input(), &mut json_in) {
        Ok(request) => request,
        Err(e) => return error(Code::InvalidArgument, &e.to_string()),
    };
    let grpc_request = grpc_request(&method, &headers, Body::from(frame(&request)));
    let Ok(answer) = grpc.call(grpc_request).await;
    let (parts, answer_body) = answer.into_parts();
    if let Some(status) = failure(&parts.headers) {
        return error(status.code(), status.message());
    }
    let collected = match answer_body.collect().await {
        Ok(collected) => collected,
        Err(e) => return error(Code::Internal, &e.to_string()),
    };
    if let Some(status) = collected.trailers().and_then(failure) {
        return error(status.code(), status.message());
    }
    let mut data = collected.to_bytes().to_vec();
    let Some(message) = unframe(&mut data).into_iter().next() else {
        return error(Code::Internal, "no whole response message");
    };
    let answer = match DynamicMessage::decode(method.output(), &message[..]) {
        Ok(answer) => answer,
        Err(e) => return error(Code::Internal, &e.to_string()),
    };
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut out = serde_json::Serializer::new(Vec::new());
    match answer.serialize_with_options(&mut out, &options) {
        Ok(()) => json(StatusCode::OK, out.into_inner()),
        Err(e) => error(Code::Internal, &e.to_string()),
    }
}

/// The gRPC status in `headers` (or trailers), if it is a failure.
fn failure(headers: &axum::http::HeaderMap) -> Option<tonic::Status> {
    tonic::Status::from_header_map(headers).filter(|s| s.code() != Code::Ok)
}

/// The gRPC request for `method` carrying `body`, to be served in the process; an auth token in
/// the `Authorization` header goes along as grpc-gateway passes it, as `authorization` metadata.
fn grpc_request(method: &MethodDescriptor, headers: &HeaderMap, body: Body) -> Request<Body> {
    let mut request = Request::builder();
    if let Some(token) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, token);
    }
    request
        .method("POST")
        .uri(format!(
            "/{}/{}",
            method.parent_service().full_name(),
            method.name()
        ))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("a valid request")
}

/// A gRPC message frame: uncompressed, length-prefixed.
fn frame(message: &DynamicMessage) -> Bytes {
    let message = message.encode_to_vec();
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// Takes the complete gRPC messages off the front of `buffer`.
fn unframe(buffer: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while buffer.len() >= 5 {
        let length = u32::from_be_bytes(buffer[1..5].try_into().expect("4 bytes")) as usize;
        if buffer.len() < 5 + length {
            break;
        }
        messages.push(buffer[5..5 + length].to_vec());
        buffer.drain(..5 + length);
    }
    messages
}

/// A streaming call: JSON requests from the body as they come, one JSON line per response.
async fn stream(
    mut grpc: Routes,
    method: MethodDescriptor,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (requests, request_frames) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let input = method.input();
    tokio::spawn(async move {
        let mut body = body.into_data_stream();
        let mut pending = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            pending.extend_from_slice(&chunk);
            let mut values =
                serde_json::Deserializer::from_slice(&pending).into_iter::<serde_json::Value>();
            let mut used = 0;
            while let Some(Ok(value)) = values.next() {
                used = values.byte_offset();
                let Ok(request) = DynamicMessage::deserialize(input.clone(), value) else {
                    return;
                };
                if requests.send(Ok(frame(&request))).await.is_err() {
                    return;
                }
            }
            pending.drain(..used);
        }
    });
    let grpc_request = grpc_request(
        &method,
        &headers,
        Body::from_stream(ReceiverStream::new(request_frames)),
    );
    let Ok(answer) = grpc.call(grpc_request).await;
    let (parts, mut answer_body) = answer.into_parts();
    if let Some(status) = failure(&parts.headers) {
        return error(status.code(), status.message());
    }
    let (lines, lines_out) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let options = SerializeOptions::new().use_proto_field_name(true);
        let mut buffer = Vec::new();
        while let Some(Ok(frame)) = answer_body.frame().await {
            let frame = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Some(status) = frame.trailers_ref().and_then(failure) {
                        let line = stream_error(&status);
                        let _ = lines.send(Ok(line)).await;
                    }
                    return;
                }
            };
            buffer.extend_from_slice(&frame);
            for message in unframe(&mut buffer) {
                let Ok(answer) = DynamicMessage::decode(method.output(), &message[..]) else {
                    return;
                };
                let mut out = serde_json::Serializer::new(b"{\"result\":".to_vec());
                if answer.serialize_with_options(&mut out, &options).is_err() {
                    return;
                }
                let mut line = out.into_inner();
                line.extend_from_slice(b"}\n");
                if lines.send(Ok(line.into())).await.is_err() {
                    return;
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(ReceiverStream::new(lines_out)),
    )
        .into_response()
}

/// An error in the middle of a stream, as grpc-gateway writes it.
fn stream_error(status: &tonic::Status) -> Bytes {
    let http = http_status(status.code());
    let quoted = serde_json::Value::from(status.message()).to_string();
    let reason = http.canonical_reason().unwrap_or("");
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{quoted},\"http_status\":\"{reason}\"}}}}\n",
        status.code() as i32,
        http.as_u16()
    )
    .into()
}
