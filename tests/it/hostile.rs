//! Hostile input: requests at and over the limits, binary and odd keys and revisions, messages
//! that do not decode, thousands of streams and a client that stops reading. Each gets etcd's
//! answer (or a bounded refusal), no data changes, and the server stays up for everyone else.

use crate::differential::differential;
use crate::requests::*;
use crate::support::{start_both, Strata};
use bytes::Bytes;
use strata::proto::etcdserverpb::watch_client::WatchClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::*;

/// etcd's default --max-request-bytes.
const MAX_REQUEST: usize = 1536 * 1024;

#[tokio::test]
async fn odd_and_oversized_requests_answer_as_etcd() {
    let binary = Bytes::from_static(b"\x00\xff\xfe\x80key\x00");
    differential(vec![
        put("keep", "1").into(),
        // A value at the limit less the request's own framing fits; one byte over it does not.
        put("big", &"v".repeat(MAX_REQUEST - 64)).into(),
        put("big", &"v".repeat(MAX_REQUEST + 1)).into(),
        // The same for a key: one of nearly the limit, read back; one over it.
        put(&"k".repeat(MAX_REQUEST - 64), "v").into(),
        get(&"k".repeat(MAX_REQUEST - 64)).into(),
        put(&"k".repeat(MAX_REQUEST + 1), "v").into(),
        PutRequest {
            key: binary.clone(),
            value: binary.clone(),
            ..Default::default()
        }
        .into(),
        RangeRequest {
            key: binary.clone(),
            ..Default::default()
        }
        .into(),
        // Inverted, empty and everything-from ranges.
        range("z", "a").into(),
        range("", "").into(),
        range("\0", "\0").into(),
        // Negative limits, revisions and lease ids.
        RangeRequest {
            limit: -5,
            ..range("\0", "\0")
        }
        .into(),
        RangeRequest {
            revision: -3,
            ..get("keep")
        }
        .into(),
        RangeRequest {
            revision: i64::MAX,
            ..get("keep")
        }
        .into(),
        PutRequest {
            lease: -1,
            ..put("leased", "x")
        }
        .into(),
        DeleteRangeRequest {
            key: Bytes::new(),
            ..Default::default()
        }
        .into(),
        compact(-1, false).into(),
        compact(i64::MAX, false).into(),
        // Nothing above changed the kept key.
        get("keep").into(),
    ])
    .await;
}

/// A message that is not the method's: the field numbers of RangeRequest with the wrong wire types.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbled {
    #[prost(fixed64, tag = "1")]
    key: u64,
    #[prost(string, tag = "3")]
    limit: String,
}

#[tokio::test]
async fn undecodable_messages_are_refused_and_the_server_stays_up() {
    let (etcd, strata) = start_both();
    for server in [&*etcd, &*strata] {
        let mut grpc = tonic::client::Grpc::new(server.channel().await);
        grpc.ready().await.unwrap();
        let path = "/etcdserverpb.KV/Range".parse().unwrap();
        let codec = tonic_prost::ProstCodec::<Garbled, RangeResponse>::default();
        let garbled = Garbled {
            key: 7,
            limit: "many".into(),
        };
        let refused = grpc
            .unary(tonic::Request::new(garbled), path, codec)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Internal, "{refused:?}");
        server.kv().await.put(put("after", "1")).await.unwrap();
    }
}

fn watch_hot() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b("hot"),
            ..Default::default()
        })),
    }
}

/// Watch streams over four connections (1,000; `STRATA_HOSTILE_STREAMS` sets how many), and one
/// more stream whose client never reads: every reading stream gets every event in order, the
/// stalled one holds up neither them nor the writes, and the server's memory per stream stays
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_and_one_that_stops_reading() {
    /// Server memory a watch stream may take, its watcher and its share of the event buffers
    /// included: etcd's takes about 3 KiB a watcher and more a stream (BENCHMARKS.md).
    const MOST_BYTES_PER_STREAM: u64 = 32 << 10;
    let streams: usize = std::env::var("STRATA_HOSTILE_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    const PUTS: usize = 200;
    let strata = Strata::start();
    let before = strata.resident_bytes();
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(strata.channel().await);
    }
    let (stall, stalled_requests) = tokio::sync::mpsc::channel(1);
    stall.send(watch_hot()).await.unwrap();
    let _stalled = WatchClient::new(channels[0].clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(
            stalled_requests,
        ))
        .await
        .unwrap();
    let mut readers = Vec::new();
    for i in 0..streams {
        let mut client = WatchClient::new(channels[i % channels.len()].clone());
        let (send, requests) = tokio::sync::mpsc::channel(1);
        send.send(watch_hot()).await.unwrap();
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().unwrap().created);
        if i + 1 == streams {
            let per_stream = strata.resident_bytes().saturating_sub(before) / streams as u64;
            eprintln!("{streams} watch streams: {per_stream} bytes of server memory each");
            assert!(
                per_stream <= MOST_BYTES_PER_STREAM,
                "{per_stream} bytes a stream"
            );
        }
        readers.push(tokio::spawn(async move {
            let _open = send;
            let mut values = Vec::new();
            while values.len() < PUTS {
                let response = stream.message().await.unwrap().unwrap();
                values.extend(response.events.into_iter().map(|e| e.kv.unwrap().value));
            }
            values
        }));
    }
    let value = |i: usize| Bytes::from(format!("{i:04}{}", "x".repeat(1020)));
    let mut kv = strata.kv().await;
    for i in 0..PUTS {
        kv.put(PutRequest {
            key: b("hot"),
            value: value(i),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let want: Vec<Bytes> = (0..PUTS).map(value).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), want);
    }
    let answered =
        tokio::time::timeout(std::time::Duration::from_secs(5), kv.range(get("hot"))).await;
    assert!(
        answered.is_ok_and(|r| r.is_ok()),
        "the server stopped answering"
    );
    drop(stall);
}

/// A watch of "hot", created: its request sender (the stream stays open while it lives) and
/// its responses.
async fn hot_watch(
    channel: tonic::transport::Channel,
) -> (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<WatchResponse>,
) {
    let (requests, queue) = tokio::sync::mpsc::channel(1);
    requests.send(watch_hot()).await.unwrap();
    let mut stream = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(queue))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().unwrap().created);
    (requests, stream)
}

/// The frame types a server sent on a raw HTTP/2 connection until it closed it.
async fn frames_until_closed(connection: &mut tokio::net::TcpStream) -> Vec<(u8, u8)> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match connection.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    let mut frames = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        frames.push((rest[3], rest[4]));
        rest = &rest[(9 + length).min(rest.len())..];
    }
    frames
}

/// A client that finished the HTTP/2 handshake and then answers nothing is pinged after
/// --grpc-keepalive-interval and its connection closed after --grpc-keepalive-timeout more, as
/// etcd's gRPC server does; a client that answers pings keeps its connection and its streams.
#[tokio::test]
async fn connections_that_answer_no_ping_are_closed() {
    use tokio::io::AsyncWriteExt;
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;
    let strata = Strata::start_with(&[
        "--grpc-keepalive-interval",
        "1s",
        "--grpc-keepalive-timeout",
        "1s",
    ]);
    let (requests, mut watch) = hot_watch(strata.channel().await).await;

    let address = strata.endpoint().trim_start_matches("http://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    // The client's connection preface and an empty SETTINGS frame; nothing after.
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let frames = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        frames_until_closed(&mut silent),
    )
    .await
    .expect("the connection that answers no ping is still open after a minute");
    assert!(
        frames.contains(&(PING, 0)),
        "closed without a ping first: {frames:?}"
    );
    assert!(!frames.contains(&(PING, ACK)), "{frames:?}");

    // The answering client sat idle as long, and its stream still carries events.
    strata.kv().await.put(put("hot", "after")).await.unwrap();
    let event = watch.message().await.unwrap().unwrap();
    assert_eq!(event.events[0].kv.as_ref().unwrap().value, &b"after"[..]);
    drop(requests);
}

/// With --max-concurrent-streams, a connection holds at most that many calls open at once: the
/// next waits until one ends (the client's HTTP/2 layer holds it back, as the server announced).
#[tokio::test]
async fn concurrent_streams_per_connection_are_capped() {
    const MOST: usize = 4;
    let strata = Strata::start_with(&["--max-concurrent-streams", "4"]);
    let channel = strata.channel().await;
    let mut open = Vec::new();
    for _ in 0..MOST {
        open.push(hot_watch(channel.clone()).await);
    }
    let mut kv = strata::proto::etcdserverpb::kv_client::KvClient::new(channel.clone());
    let mut waiting = Box::pin(kv.range(get("hot")));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a fifth call went through on a connection capped at four"
    );
    drop(open.pop());
    waiting.await.unwrap();
}
