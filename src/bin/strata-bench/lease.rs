//! The lease workload: grants `--leases` leases, then sends `--total` keep-alives over `--streams`
//! keep-alive streams, one in flight per stream; reports keep-alive throughput and latency, the
//! grant rate, and (with `--server-pid`) the server's memory per lease. Also the leases the
//! leased-put and lease-revoke workloads write to and revoke, granted ahead.

use super::{key, rss, spread, Args, Report};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Long enough that no lease expires during a run.
const TTL: i64 = 3600;

pub async fn run(args: &Args, channels: &[Channel]) -> anyhow::Result<Report> {
    let before = args.server_pid.and_then(rss);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut grants = Vec::new();
    for c in 0..args.clients.max(1) {
        let mut lease = LeaseClient::new(channels[c % channels.len()].clone());
        let (next, count) = (next.clone(), args.leases);
        grants.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let granted = lease
                    .lease_grant(LeaseGrantRequest { ttl: TTL, id: 0 })
                    .await?;
                ids.push(granted.into_inner().id);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::new();
    for g in grants {
        ids.extend(g.await??);
    }
    let granting = started.elapsed();
    eprintln!(
        "{} leases granted in {:.2}s ({:.0}/s)",
        ids.len(),
        granting.as_secs_f64(),
        ids.len() as f64 / granting.as_secs_f64()
    );
    if let (Some(before), Some(after)) = (before, args.server_pid.and_then(rss)) {
        let per = after.saturating_sub(before) as f64 / ids.len().max(1) as f64;
        eprintln!("server memory per lease: {per:.0} bytes");
    }

    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut streams = Vec::new();
    for s in 0..args.streams.max(1) {
        let mut lease = LeaseClient::new(channels[s % channels.len()].clone());
        let (ids, next, errors, total) = (ids.clone(), next.clone(), errors.clone(), args.total);
        streams.push(tokio::spawn(async move {
            let (requests, rx) = mpsc::channel(1);
            let mut rx_slot = Some(rx);
            let mut latencies: Vec<Duration> = Vec::new();
            let mut answers = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || ids.is_empty() {
                    return latencies;
                }
                let id = ids[spread(i, ids.len() as u64) as usize];
                let sent = Instant::now();
                if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return latencies;
                }
                // The call is answered with its first response (etcd sends the response headers
                // with it), so it is made once the first request waits in the channel.
                if answers.is_none() {
                    let stream = ReceiverStream::new(rx_slot.take().expect("once"));
                    match lease.lease_keep_alive(stream).await {
                        Ok(response) => answers = Some(response.into_inner()),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return latencies;
                        }
                    }
                }
                let answers = answers.as_mut().expect("opened above");
                match answers.message().await {
                    Ok(Some(answer)) if answer.ttl > 0 => latencies.push(sent.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    Report::gather(streams, &errors, start).await
}

/// Grants `--total` leases through `channel`, one after another, and with `keyed` puts key `i` of
/// the key space on lease `i`; answers the leases' ids in that order.
pub async fn ahead(args: &Args, channel: &Channel, keyed: bool) -> anyhow::Result<Vec<i64>> {
    let (mut lease, mut kv) = (
        LeaseClient::new(channel.clone()),
        KvClient::new(channel.clone()),
    );
    let mut ids = Vec::new();
    for i in 0..args.total {
        let request = LeaseGrantRequest { ttl: TTL, id: 0 };
        let id = lease.lease_grant(request).await?.into_inner().id;
        if keyed {
            kv.put(PutRequest {
                key: key(args, i),
                lease: id,
                ..Default::default()
            })
            .await?;
        }
        ids.push(id);
    }
    Ok(ids)
}
