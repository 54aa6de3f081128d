//! The `kube` workload: the storage calls kube-apiserver makes, in the mix of a busy cluster.
//!
//! Objects live where kube-apiserver keeps them, `/registry/<resource>/<namespace>/<name>`:
//! `--key-space` pods of `--val-size` bytes, written first. Then each client repeats, by weight:
//! - 50 % update (GuaranteedUpdate): a read of the pod, then a txn that writes it if its mod
//!   revision is still the one read, or else reads it again;
//! - 15 % event: a create-if-absent txn under `/registry/events/`, attached to a lease that every
//!   event of its window shares (kube-apiserver's lease reuse: a new lease each [`EVENTS_PER_LEASE`]
//!   events, of an hour);
//! - 10 % create and 10 % delete of a configmap: a create-if-absent txn, and a read then a
//!   delete-if-unchanged txn;
//! - 10 % list: a page of `--limit` pods (a list's first page, linearizable);
//! - 5 % count: a count-only range of the pods (kube-apiserver's `apiserver_storage_objects`).
//!
//! Meanwhile a watch of each resource prefix, with previous values, as each kube-apiserver's watch
//! cache holds; and every `--compact-every` operations a compaction to the revision seen at the
//! previous one, through the `compact_rev_key` txn kube-apiserver's compactor uses. Reports every
//! operation (a kube-apiserver call, of one or two requests) and each kind's latencies apart.

use super::{drive, if_mod, key, op, spread, Args, Report};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use strata::concurrency::prefix_end;
use strata::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::request_op::Request;
use strata::proto::etcdserverpb::response_op::Response as ResponseOp;
use strata::proto::etcdserverpb::watch_client::WatchClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

const PODS: &str = "/registry/pods/";
const EVENTS: &str = "/registry/events/";
const CONFIGMAPS: &str = "/registry/configmaps/";
/// Events that share one lease.
const EVENTS_PER_LEASE: u64 = 1000;
const COMPACT_KEY: &str = "compact_rev_key";
/// How long after the load the watches may take to deliver its last write.
const WATCH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A kind of operation; its number indexes [`KINDS`].
enum Kind {
    Update,
    Event,
    Create,
    Delete,
    List,
    Count,
    Compact,
}

/// The kinds of operation, in the order they are reported (as [`Kind`] numbers them).
const KINDS: [&str; 7] = [
    "update", "event", "create", "delete", "list", "count", "compact",
];

/// What the clients share: the events' lease, and the compactor's memory.
struct Shared {
    lease: Mutex<(i64, u64)>,
    /// The revision seen at the last compaction, and `compact_rev_key`'s version then.
    compactor: Mutex<(i64, i64)>,
    events: AtomicU64,
}

/// The pod numbered `n`, in one of ten namespaces.
fn pod(args: &Args, n: u64) -> bytes::Bytes {
    let name = key(args, n);
    format!("{PODS}ns-{}/{}", n % 10, String::from_utf8_lossy(&name)).into()
}

fn get(key: &bytes::Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

/// A txn: if `key`'s mod revision is `revision`, `then`; else read the key.
fn guarded(key: &bytes::Bytes, revision: i64, then: Request) -> TxnRequest {
    TxnRequest {
        compare: vec![if_mod(key, revision)],
        success: vec![op(then)],
        failure: vec![op(Request::RequestRange(get(key)))],
    }
}

pub async fn run(args: Arc<Args>, channels: &[Channel]) -> anyhow::Result<Report> {
    let mut kv = KvClient::new(channels[0].clone());
    let value = bytes::Bytes::from(vec![b'v'; args.val_size]);
    for n in 0..args.key_space {
        kv.put(PutRequest {
            key: pod(&args, n),
            value: value.clone(),
            ..Default::default()
        })
        .await?;
    }
    let head = kv.range(get(&pod(&args, 0))).await?.into_inner();
    let head = head.header.unwrap_or_default().revision;

    // One watch per resource, from the revision after the fill, with previous values.
    let (requests, queue) = tokio::sync::mpsc::channel(4);
    for prefix in [PODS, EVENTS, CONFIGMAPS] {
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: prefix.into(),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision: head + 1,
                    prev_kv: true,
                    ..Default::default()
                })),
            })
            .await?;
    }
    let mut watch = WatchClient::new(channels[channels.len() - 1].clone())
        .max_decoding_message_size(usize::MAX)
        .watch(ReceiverStream::new(queue))
        .await?
        .into_inner();
    let shared = Arc::new(Shared {
        lease: Mutex::new((0, EVENTS_PER_LEASE)),
        compactor: Mutex::new((head, 0)),
        events: AtomicU64::new(0),
    });
    let counter = shared.clone();
    let marker = pod(&args, args.key_space);
    let (seen_marker, marker_seen) = tokio::sync::oneshot::channel();
    let watched = marker.clone();
    let watcher = tokio::spawn(async move {
        let mut seen_marker = Some(seen_marker);
        while let Ok(Some(response)) = watch.message().await {
            counter
                .events
                .fetch_add(response.events.len() as u64, Ordering::Relaxed);
            let marked = response
                .events
                .iter()
                .any(|e| e.kv.as_ref().is_some_and(|kv| kv.key == watched));
            if marked {
                if let Some(seen) = seen_marker.take() {
                    let _ = seen.send(());
                }
            }
        }
    });

    let state = (args.clone(), shared.clone());
    let (report, kinds) = drive(&args, channels, move |channel, i| {
        let (args, shared) = state.clone();
        async move { operation(&args, &shared, channel, i).await }
    })
    .await?;
    // The watch has everything once it has a write made after the load.
    let load_ended = std::time::Instant::now();
    kv.put(PutRequest {
        key: marker,
        ..Default::default()
    })
    .await?;
    let drained = tokio::time::timeout(WATCH_PATIENCE, marker_seen).await;
    watcher.abort();
    for (kind, latencies) in KINDS.iter().zip(kinds) {
        let r = Report::new(latencies, 0, report.elapsed);
        eprintln!(
            "  {kind:8} {:7} ops  p50 {:7.2} ms  p99 {:7.2} ms",
            r.requests,
            r.percentile(0.5).as_secs_f64() * 1000.0,
            r.percentile(0.99).as_secs_f64() * 1000.0
        );
    }
    let events = shared.events.load(Ordering::Relaxed);
    match drained {
        Ok(Ok(())) => eprintln!(
            "  watches: {events} events, the last {:.1} ms after the load ended",
            load_ended.elapsed().as_secs_f64() * 1000.0
        ),
        _ => anyhow::bail!(
            "the watches had {events} events and not the last write {} s after the load",
            WATCH_PATIENCE.as_secs()
        ),
    }
    Ok(report)
}

/// Operation `i`; answers with its [`Kind`].
async fn operation(
    args: &Args,
    shared: &Shared,
    channel: Channel,
    i: u64,
) -> Result<usize, Status> {
    let mut kv = KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
    let value = bytes::Bytes::from(vec![b'v'; args.val_size]);
    if i > 0 && i % args.compact_every.max(1) == 0 {
        compact(shared, &mut kv).await?;
        return Ok(Kind::Compact as usize);
    }
    let n = spread(i, args.key_space);
    match spread(i ^ 0x5eed, 100) {
        0..50 => {
            let key = pod(args, n);
            let seen = kv.range(get(&key)).await?.into_inner();
            let revision = seen.kvs.first().map_or(0, |kv| kv.mod_revision);
            let put = Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            });
            kv.txn(guarded(&key, revision, put)).await?;
            Ok(Kind::Update as usize)
        }
        50..65 => {
            let lease = event_lease(shared, channel).await?;
            let key: bytes::Bytes = format!("{EVENTS}ns-{}/event-{i}", n % 10).into();
            let put = Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                lease,
                ..Default::default()
            });
            kv.txn(guarded(&key, 0, put)).await?;
            Ok(Kind::Event as usize)
        }
        65..75 => {
            let key: bytes::Bytes = format!("{CONFIGMAPS}ns-{}/cm-{n}", n % 10).into();
            let put = Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            });
            kv.txn(guarded(&key, 0, put)).await?;
            Ok(Kind::Create as usize)
        }
        75..85 => {
            let key: bytes::Bytes = format!("{CONFIGMAPS}ns-{}/cm-{n}", n % 10).into();
            let seen = kv.range(get(&key)).await?.into_inner();
            if let Some(found) = seen.kvs.first() {
                let delete = Request::RequestDeleteRange(DeleteRangeRequest {
                    key: key.clone(),
                    ..Default::default()
                });
                kv.txn(guarded(&key, found.mod_revision, delete)).await?;
            }
            Ok(Kind::Delete as usize)
        }
        85..95 => {
            kv.range(RangeRequest {
                key: PODS.into(),
                range_end: prefix_end(PODS.as_bytes()),
                limit: args.limit,
                ..Default::default()
            })
            .await?;
            Ok(Kind::List as usize)
        }
        _ => {
            kv.range(RangeRequest {
                key: PODS.into(),
                range_end: prefix_end(PODS.as_bytes()),
                count_only: true,
                ..Default::default()
            })
            .await?;
            Ok(Kind::Count as usize)
        }
    }
}

/// The lease the next event attaches to: the current one, or a new one once it has served its
/// share.
async fn event_lease(shared: &Shared, channel: Channel) -> Result<i64, Status> {
    {
        let mut lease = shared.lease.lock().expect("lease");
        if lease.1 < EVENTS_PER_LEASE {
            lease.1 += 1;
            return Ok(lease.0);
        }
    }
    let granted = LeaseClient::new(channel)
        .lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 })
        .await?
        .into_inner();
    *shared.lease.lock().expect("lease") = (granted.id, 1);
    Ok(granted.id)
}

/// kube-apiserver's compactor: takes `compact_rev_key` from the version it last saw (so that of
/// several apiservers one compacts), then compacts to the revision it saw the previous time.
async fn compact(shared: &Shared, kv: &mut KvClient<Channel>) -> Result<(), Status> {
    let (revision, version) = *shared.compactor.lock().expect("compactor");
    let key = bytes::Bytes::from_static(COMPACT_KEY.as_bytes());
    let taken = kv
        .txn(TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Version(version)),
                range_end: bytes::Bytes::new(),
            }],
            success: vec![op(Request::RequestPut(PutRequest {
                key: key.clone(),
                value: key.clone(),
                ..Default::default()
            }))],
            failure: vec![op(Request::RequestRange(get(&key)))],
        })
        .await?
        .into_inner();
    let now = taken.header.unwrap_or_default().revision;
    // Another compactor took the key first: its version is the one to take it from next time.
    let seen = match taken.responses.first().and_then(|r| r.response.as_ref()) {
        Some(ResponseOp::ResponseRange(r)) => r.kvs.first().map_or(0, |kv| kv.version),
        _ => version + 1,
    };
    *shared.compactor.lock().expect("compactor") = (now, seen);
    if taken.succeeded {
        kv.compact(CompactionRequest {
            revision,
            physical: false,
        })
        .await?;
    }
    Ok(())
}
