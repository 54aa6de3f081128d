//! The lease-expiry workload: grants `--leases` leases of `--ttl` seconds, attaches a key to each,
//! never keeps them alive, and watches the keys' deletes, while `--rate` puts per second of other
//! keys go on. Reports how late each expiry was: from the moment its grant was sent plus the TTL
//! (the earliest the lease could expire) to the moment the watcher saw its key deleted.

use super::{Args, Report};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::watch_client::WatchClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::{
    LeaseGrantRequest, PutRequest, WatchCreateRequest, WatchRequest,
};
use strata::proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const PREFIX: &str = "expiry/";
/// How long after its deadline a lease's delete may come before it counts as an error.
const GIVE_UP: Duration = Duration::from_secs(30);

pub async fn run(args: &Args, channels: &[Channel]) -> anyhow::Result<Report> {
    let ttl = Duration::from_secs(args.ttl);
    // Deadlines by key, as the earliest moment each lease could expire.
    let deadlines: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let (requests, rx) = mpsc::channel(1);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: PREFIX.into(),
                range_end: "expiry0".into(),
                ..Default::default()
            })),
        })
        .await?;
    let mut watch = WatchClient::new(channels[0].clone())
        .watch(ReceiverStream::new(rx))
        .await?
        .into_inner();
    anyhow::ensure!(
        watch.message().await?.is_some_and(|r| r.created),
        "the watch was not created"
    );

    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let load = (args.rate > 0).then(|| {
        let mut kv = KvClient::new(channels[channels.len() - 1].clone());
        let (done, rate) = (done.clone(), args.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            for i in 0u64.. {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                tick.tick().await;
                let put = PutRequest {
                    key: format!("load/{}", i % 1000).into(),
                    value: vec![b'x'; 256].into(),
                    ..Default::default()
                };
                let _ = kv.put(put).await;
            }
        })
    });

    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut granters = Vec::new();
    for c in 0..args.clients.max(1) {
        let channel = channels[c % channels.len()].clone();
        let (mut lease, mut kv) = (LeaseClient::new(channel.clone()), KvClient::new(channel));
        let (next, errors, deadlines) = (next.clone(), errors.clone(), deadlines.clone());
        let (count, ttl_seconds) = (args.leases, args.ttl as i64);
        granters.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let sent = Instant::now();
                let grant = LeaseGrantRequest {
                    ttl: ttl_seconds,
                    id: 0,
                };
                let Ok(granted) = lease.lease_grant(grant).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let id = granted.into_inner().id;
                let key = format!("{PREFIX}{id:016x}").into_bytes();
                deadlines.lock().unwrap().insert(key.clone(), sent + ttl);
                let put = PutRequest {
                    key: key.into(),
                    value: b"v".to_vec().into(),
                    lease: id,
                    ..Default::default()
                };
                if kv.put(put).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let mut lateness = Vec::new();
    let expected = args.leases - errors.load(Ordering::Relaxed);
    while (lateness.len() as u64) < expected {
        let waiting = tokio::time::timeout(ttl + GIVE_UP, watch.message()).await;
        let Ok(Ok(Some(response))) = waiting else {
            break;
        };
        let seen = Instant::now();
        for event in response.events {
            let Some(kv) = event
                .kv
                .filter(|_| event.r#type == EventType::Delete as i32)
            else {
                continue;
            };
            if let Some(deadline) = deadlines.lock().unwrap().remove(&kv.key[..]) {
                lateness.push(seen.saturating_duration_since(deadline));
            }
        }
    }
    for g in granters {
        g.await?;
    }
    done.store(true, Ordering::Relaxed);
    if let Some(load) = load {
        load.await?;
    }
    let missing = args.leases - errors.load(Ordering::Relaxed) - lateness.len() as u64;
    errors.fetch_add(missing, Ordering::Relaxed);
    eprintln!(
        "{} leases of {}s expired; lateness measured from each grant's send plus its TTL",
        lateness.len(),
        args.ttl
    );
    Ok(Report::new(
        lateness,
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    ))
}
