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

/// 1,000 watch streams over four connections, and one more stream whose client never reads:
/// every reading stream gets every event in order, and the stalled one holds up neither them nor
/// the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_and_one_that_stops_reading() {
    const STREAMS: usize = 1000;
    const PUTS: usize = 200;
    let strata = Strata::start();
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
    for i in 0..STREAMS {
        let mut client = WatchClient::new(channels[i % channels.len()].clone());
        let (send, requests) = tokio::sync::mpsc::channel(1);
        send.send(watch_hot()).await.unwrap();
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().unwrap().created);
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
