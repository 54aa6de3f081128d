//! `strata-bench`: drives any etcd v3 endpoint over gRPC with one workload and reports throughput
//! and latency, for side-by-side runs against etcd and Strata (see `scripts/bench`).

mod expiry;
mod kube;
mod lease;
mod watch;

use clap::{Parser, ValueEnum};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::request_op::Request;
use strata::proto::etcdserverpb::{
    Compare, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Put random keys of the key space.
    Put,
    /// Get single random keys of the key space (written first).
    Range,
    /// Get a page of `--limit` keys from the start of the key space (written first).
    RangePrefix,
    /// Compare-and-swap: a txn that puts a key if its mod revision is the one last seen.
    TxnPut,
    /// `--watchers` watchers over `--streams` streams while `--total` puts arrive at `--rate`;
    /// reports event delivery latency.
    Watch,
    /// Grants `--leases` leases, then `--total` keep-alives over `--streams` streams.
    Lease,
    /// Puts a key on a lease granted through the same endpoint and not yet written to, a lease a
    /// put (`--total` leases of an hour, granted first and not timed; not with `--duration`).
    LeasedPut,
    /// Revokes a lease with a key on it, a lease a revoke (`--total` leases granted and given a
    /// key each first, not timed; not with `--duration`).
    LeaseRevoke,
    /// Grants `--leases` leases of `--ttl` seconds with a key each and lets them expire while
    /// `--rate` puts per second go on; reports how late each expiry was seen (not throughput).
    LeaseExpiry,
    /// kube-apiserver's storage calls in the mix of a busy cluster: guarded updates, creates and
    /// deletes, events on shared leases, list pages, counts, watches with previous values and
    /// periodic compaction (`--key-space` objects, `--limit` per page).
    Kube,
}

#[derive(Debug, Parser)]
#[command(name = "strata-bench", about = "Benchmarks an etcd v3 endpoint.")]
struct Args {
    #[arg(value_enum)]
    workload: Workload,
    /// Comma-separated endpoints (host:port or http://host:port); connections are spread over them.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Run for this many seconds instead of `--total` requests (put, range, txn-put and kube).
    #[arg(long)]
    duration: Option<u64>,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Distinct keys the workload touches.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Keys per page for range-prefix.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// Serializable reads instead of linearizable ones.
    #[arg(long)]
    serializable: bool,
    /// Put the keys of the key space in turn (each once per pass) instead of at random.
    #[arg(long)]
    sequential: bool,
    /// Watchers, for the watch workload.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// For the watch workload: put through this endpoint instead of the first of `--endpoints`, to
    /// time delivery from one server to another.
    #[arg(long)]
    put_endpoint: Option<String>,
    /// Leases granted, for the lease workload.
    #[arg(long, default_value_t = 10_000)]
    leases: u64,
    /// Watch or keep-alive streams.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Puts per second, for the watch and lease-expiry workloads.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Operations between compactions, for the kube workload.
    #[arg(long, default_value_t = 10_000)]
    compact_every: u64,
    /// Lease TTL in seconds, for the lease-expiry workload.
    #[arg(long, default_value_t = 5)]
    ttl: u64,
    /// The server's process id, to report its memory per watcher (Linux, same machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    json: bool,
}

/// Resident memory of process `pid` in bytes, from /proc (Linux).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn key(args: &Args, n: u64) -> bytes::Bytes {
    let digits = format!("{n:0width$}", width = args.key_size.max(1));
    bytes::Bytes::from(format!("bench/{digits}"))
}

/// A cheap deterministic spread over the key space (splitmix64): no two clients hammer one key.
fn spread(i: u64, space: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % space.max(1)
}

async fn connect(args: &Args) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for i in 0..args.conns.max(1) {
        channels.push(channel(&args.endpoints[i % args.endpoints.len()]).await?);
    }
    Ok(channels)
}

/// A connection to `endpoint` (host:port, or a URL).
async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    Ok(Endpoint::from_shared(url)?.connect().await?)
}

/// Writes every key of the key space once, for the read workloads.
async fn fill(args: &Args, kv: &mut KvClient<Channel>) -> anyhow::Result<()> {
    let value = bytes::Bytes::from(vec![b'v'; args.val_size]);
    for n in 0..args.key_space {
        kv.put(PutRequest {
            key: key(args, n),
            value: value.clone(),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

/// One request of the workload; `i` numbers it among all requests, `leases` are those granted
/// ahead for it.
async fn request(
    args: &Args,
    channel: Channel,
    i: u64,
    leases: &[i64],
) -> Result<(), tonic::Status> {
    let mut kv = KvClient::new(channel.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let value = bytes::Bytes::from(vec![b'v'; args.val_size]);
    match args.workload {
        Workload::Put => {
            let k = if args.sequential {
                i % args.key_space.max(1)
            } else {
                spread(i, args.key_space)
            };
            kv.put(PutRequest {
                key: key(args, k),
                value,
                ..Default::default()
            })
            .await?;
        }
        Workload::Range => {
            kv.range(RangeRequest {
                key: key(args, spread(i, args.key_space)),
                serializable: args.serializable,
                ..Default::default()
            })
            .await?;
        }
        Workload::RangePrefix => {
            kv.range(RangeRequest {
                key: bytes::Bytes::from_static(b"bench/"),
                range_end: bytes::Bytes::from_static(b"bench0"),
                limit: args.limit,
                serializable: args.serializable,
                ..Default::default()
            })
            .await?;
        }
        Workload::LeasedPut => {
            kv.put(PutRequest {
                key: key(args, i),
                value,
                lease: leases[i as usize],
                ..Default::default()
            })
            .await?;
        }
        Workload::LeaseRevoke => {
            let id = leases[i as usize];
            LeaseClient::new(channel)
                .lease_revoke(LeaseRevokeRequest { id })
                .await?;
        }
        Workload::Watch | Workload::Lease | Workload::LeaseExpiry | Workload::Kube => {
            unreachable!("these workloads run apart")
        }
        Workload::TxnPut => {
            let k = key(args, spread(i, args.key_space));
            let current = kv
                .range(RangeRequest {
                    key: k.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let seen = current.kvs.first().map_or(0, |kv| kv.mod_revision);
            kv.txn(TxnRequest {
                compare: vec![if_mod(&k, seen)],
                success: vec![op(Request::RequestPut(PutRequest {
                    key: k,
                    value,
                    ..Default::default()
                }))],
                failure: Vec::new(),
            })
            .await?;
        }
    }
    Ok(())
}

/// A compare: `key`'s mod revision is `revision` (0: the key does not exist).
fn if_mod(key: &bytes::Bytes, revision: i64) -> Compare {
    Compare {
        key: key.clone(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(revision)),
        range_end: bytes::Bytes::new(),
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

struct Report {
    requests: usize,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    /// The report of client tasks that each return their latencies, started at `start`.
    async fn gather(
        tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
        errors: &AtomicU64,
        start: Instant,
    ) -> anyhow::Result<Report> {
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await?);
        }
        Ok(Report::new(
            latencies,
            errors.load(Ordering::Relaxed),
            start.elapsed(),
        ))
    }

    fn new(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> Report {
        latencies.sort_unstable();
        Report {
            requests: latencies.len(),
            errors,
            elapsed,
            latencies,
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let at = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[at]
    }

    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, args: &Args) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        if args.json {
            println!(
                "{{\"workload\":\"{:?}\",\"clients\":{},\"conns\":{},\"requests\":{},\"errors\":{},\
                 \"seconds\":{:.3},\"throughput\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\
                 \"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
                args.workload,
                args.clients,
                args.conns,
                self.requests,
                self.errors,
                self.elapsed.as_secs_f64(),
                self.throughput(),
                ms(self.percentile(0.5)),
                ms(self.percentile(0.9)),
                ms(self.percentile(0.99)),
                ms(self.percentile(1.0)),
            );
        } else {
            println!(
                "{:?}: {} requests ({} errors) in {:.2}s by {} clients over {} connections",
                args.workload,
                self.requests,
                self.errors,
                self.elapsed.as_secs_f64(),
                args.clients,
                args.conns
            );
            println!("  throughput {:.1} req/s", self.throughput());
            println!(
                "  latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                ms(self.percentile(0.5)),
                ms(self.percentile(0.9)),
                ms(self.percentile(0.99)),
                ms(self.percentile(1.0))
            );
        }
    }
}

async fn run(args: Arc<Args>) -> anyhow::Result<Report> {
    let channels = connect(&args).await?;
    match args.workload {
        Workload::Watch => return watch::run(&args, &channels).await,
        Workload::Lease => return lease::run(&args, &channels).await,
        Workload::LeaseExpiry => return expiry::run(&args, &channels).await,
        Workload::Kube => return kube::run(args, &channels).await,
        _ => {}
    }
    if matches!(args.workload, Workload::Range | Workload::RangePrefix) {
        fill(&args, &mut KvClient::new(channels[0].clone())).await?;
    }
    let leases = match args.workload {
        Workload::LeasedPut | Workload::LeaseRevoke if args.duration.is_some() => {
            anyhow::bail!(
                "{:?} runs `--total` requests, not for a duration",
                args.workload
            )
        }
        Workload::LeasedPut => lease::ahead(&args, &channels[0], false).await?,
        Workload::LeaseRevoke => lease::ahead(&args, &channels[0], true).await?,
        _ => Vec::new(),
    };
    let (workload, leases) = (args.clone(), Arc::new(leases));
    let (report, _) = drive(&args, &channels, move |channel, i| {
        let (args, leases) = (workload.clone(), leases.clone());
        async move { request(&args, channel, i, &leases).await.map(|()| 0) }
    })
    .await?;
    Ok(report)
}

/// Runs `--clients` clients over `channels`, each making request after request with `one` (given
/// its channel and the request's number) until `--total` requests or `--duration` seconds; `one`
/// answers with the kind of request it made. Returns the report of them all, and each kind's
/// latencies. On a terminal, shows the progress.
async fn drive<F, Fut>(
    args: &Arc<Args>,
    channels: &[Channel],
    one: F,
) -> anyhow::Result<(Report, Vec<Vec<Duration>>)>
where
    F: Fn(Channel, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<usize, tonic::Status>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = args.duration.map(|s| start + Duration::from_secs(s));
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| tokio::spawn(show_progress(args.clone(), next.clone(), start)));
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let channel = channels[c % channels.len()].clone();
        let (args, next, errors, one) = (args.clone(), next.clone(), errors.clone(), one.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<(usize, Duration)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let done = match deadline {
                    Some(deadline) => Instant::now() >= deadline,
                    None => i >= args.total,
                };
                if done {
                    return latencies;
                }
                let began = Instant::now();
                match one(channel.clone(), i).await {
                    Ok(kind) => latencies.push((kind, began.elapsed())),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    let mut kinds: Vec<Vec<Duration>> = Vec::new();
    for task in tasks {
        for (kind, latency) in task.await? {
            if kinds.len() <= kind {
                kinds.resize_with(kind + 1, Vec::new);
            }
            kinds[kind].push(latency);
            all.push(latency);
        }
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let report = Report::new(all, errors.load(Ordering::Relaxed), start.elapsed());
    Ok((report, kinds))
}

/// A line on standard error, redrawn four times a second: requests so far, of how many or of how
/// long, and the rate.
async fn show_progress(args: Arc<Args>, next: Arc<AtomicU64>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let done = next.load(Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        let (fraction, of) = match args.duration {
            Some(seconds) => (
                elapsed / seconds as f64,
                format!("{elapsed:.0}/{seconds} s"),
            ),
            None => (
                done as f64 / args.total.max(1) as f64,
                format!("{}/{} requests", done.min(args.total), args.total),
            ),
        };
        let filled = (fraction.clamp(0.0, 1.0) * 30.0) as usize;
        eprint!(
            "\r[{}{}] {of}, {:.0}/s\x1b[K",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            done as f64 / elapsed.max(0.001)
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let report = run(args.clone()).await?;
    report.print(&args);
    if report.errors > 0 {
        anyhow::bail!("{} requests failed", report.errors);
    }
    Ok(())
}
