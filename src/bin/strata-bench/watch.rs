//! The watch workload: many watchers over many streams, mixed single-key and prefix, while puts
//! arrive at a set rate; reports how long each event took from its put to its watcher.
//!
//! Keys are `bench/w/<group>/<n>`: half the watchers watch one key each, half one group's prefix,
//! so every put reaches the watchers of its key and of its group. Each value carries the moment of
//! its put, so the delivery latency is measured in this one process.

use super::{rss, spread, Args, Report};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::watch_client::WatchClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Key groups, each watched by a share of the prefix watchers.
const GROUPS: u64 = 100;
/// How long the events of the last puts may take before the missing ones count as errors.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn group_prefix(group: u64) -> String {
    format!("bench/w/{group:03}/")
}

fn watch_key(n: u64) -> String {
    format!("{}{n:08}", group_prefix(n % GROUPS))
}

/// Which watchers each key and group has, to know how many events every put must bring.
struct Audience {
    per_key: HashMap<u64, u64>,
    per_group: HashMap<u64, u64>,
}

impl Audience {
    fn of_put(&self, n: u64) -> u64 {
        self.per_key.get(&n).copied().unwrap_or(0)
            + self.per_group.get(&(n % GROUPS)).copied().unwrap_or(0)
    }
}

pub async fn run(args: &Args, channels: &[Channel]) -> anyhow::Result<Report> {
    let epoch = Instant::now();
    let before = args.server_pid.and_then(rss);
    let received = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(Notify::new());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut audience = Audience {
        per_key: HashMap::new(),
        per_group: HashMap::new(),
    };
    let (created_tx, mut created_rx) = mpsc::channel::<()>(1024);
    let mut streams = Vec::new();
    for s in 0..args.streams.max(1) {
        let (requests, rx) = mpsc::channel(1024);
        let mut client = WatchClient::new(channels[s % channels.len()].clone())
            .max_decoding_message_size(usize::MAX);
        let (received, delivered) = (received.clone(), delivered.clone());
        let (latencies, created) = (latencies.clone(), created_tx.clone());
        tokio::spawn(async move {
            let Ok(response) = client.watch(ReceiverStream::new(rx)).await else {
                return;
            };
            let mut responses = response.into_inner();
            while let Ok(Some(r)) = responses.message().await {
                if r.created {
                    let _ = created.send(()).await;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                let mut batch = Vec::with_capacity(r.events.len());
                for e in &r.events {
                    let value = e.kv.as_ref().map_or(&[][..], |kv| &kv.value[..]);
                    if let Some(sent) = value.get(..8) {
                        let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
                        batch.push(Duration::from_nanos(now.saturating_sub(sent)));
                    }
                }
                received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                latencies.lock().expect("latencies").extend(batch);
                delivered.notify_one();
            }
        });
        streams.push(requests);
    }
    drop(created_tx);
    for w in 0..args.watchers as u64 {
        let (key, range_end) = if w % 2 == 0 {
            let n = spread(w, args.key_space);
            *audience.per_key.entry(n).or_default() += 1;
            (watch_key(n), String::new())
        } else {
            let group = (w / 2) % GROUPS;
            *audience.per_group.entry(group).or_default() += 1;
            let prefix = group_prefix(group);
            let mut end = prefix.clone().into_bytes();
            *end.last_mut().expect("non-empty") += 1;
            (prefix, String::from_utf8(end).expect("ascii"))
        };
        let request = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            })),
        };
        streams[w as usize % streams.len()].send(request).await?;
    }
    for _ in 0..args.watchers {
        created_rx.recv().await.ok_or_else(|| {
            anyhow::anyhow!("a watch stream ended before its watchers were created")
        })?;
    }
    let after = args.server_pid.and_then(rss);
    if let (Some(before), Some(after)) = (before, after) {
        let per = after.saturating_sub(before) as f64 / args.watchers.max(1) as f64;
        eprintln!(
            "server memory per watcher: {per:.0} bytes ({} watchers)",
            args.watchers
        );
    }

    let puts = match &args.put_endpoint {
        Some(endpoint) => super::channel(endpoint).await?,
        None => channels[0].clone(),
    };
    let mut kv = KvClient::new(puts);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let start = Instant::now();
    let mut expected = 0;
    let mut errors = 0;
    let padding = args.val_size.saturating_sub(8);
    for i in 0..args.total {
        // Pacing, not synchronisation: the workload is defined by its rate.
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let n = spread(i, args.key_space);
        let mut value = (epoch.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        value.resize(8 + padding, b'v');
        let put = kv.put(PutRequest {
            key: watch_key(n).into(),
            value: value.into(),
            ..Default::default()
        });
        match put.await {
            Ok(_) => expected += audience.of_put(n),
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while received.load(Ordering::Relaxed) < expected {
            delivered.notified().await;
        }
    })
    .await;
    let got = received.load(Ordering::Relaxed);
    if drained.is_err() || got != expected {
        errors += expected.abs_diff(got);
    }
    let latencies = std::mem::take(&mut *latencies.lock().expect("latencies"));
    eprintln!(
        "{} puts at {:.0}/s; {got} of {expected} events delivered",
        args.total,
        args.total as f64 / elapsed.as_secs_f64()
    );
    Ok(Report::new(latencies, errors, elapsed))
}
