//! Restarts and crashes: a clean restart serves the same data, revisions and HashKV; after `kill -9`
//! under concurrent load every acknowledged write is there at the revision it was acknowledged with,
//! no txn is half there, revisions have no gap, and the history before hashes as it did; and the
//! same after power cuts that drop what the embedded store wrote but did not sync.

use crate::requests::*;
use crate::support::power_cut_fs::PowerCutFs;
use crate::support::Strata;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata::proto::etcdserverpb::compare::{
    CompareResult as R, CompareTarget as T, TargetUnion as U,
};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use strata::proto::etcdserverpb::{
    HashKvRequest, HashRequest, RangeRequest, RangeResponse, ResponseHeader,
};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// Everything, at `revision` (0: the newest).
async fn everything(kv: &mut KvClient<Channel>, revision: i64) -> RangeResponse {
    let mut r = kv
        .range(RangeRequest {
            revision,
            ..range("\u{0}", "\u{0}")
        })
        .await
        .unwrap()
        .into_inner();
    r.header = None;
    r
}

/// etcd's HashKV of the history up to `revision`.
async fn hash_kv(server: &Strata, revision: i64) -> u32 {
    MaintenanceClient::new(server.channel().await)
        .hash_kv(HashKvRequest { revision })
        .await
        .unwrap()
        .into_inner()
        .hash
}

/// The Hash of the whole store.
async fn store_hash(server: &Strata) -> u32 {
    MaintenanceClient::new(server.channel().await)
        .hash(HashRequest {})
        .await
        .unwrap()
        .into_inner()
        .hash
}

fn header(h: &Option<ResponseHeader>) -> (u64, u64, i64) {
    let h = h.as_ref().unwrap();
    (h.cluster_id, h.member_id, h.revision)
}

// Two workers: the client's connection must be able to close while the test waits for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_the_same_data_revisions_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Strata::start_in(dir.path(), &[]);
    let mut kv = server.kv().await;
    for i in 0..20 {
        kv.put(put(&format!("k{}", i % 7), &format!("v{i}")))
            .await
            .unwrap();
    }
    kv.delete_range(del("k3", "k5")).await.unwrap();
    kv.txn(txn(
        vec![],
        vec![op::put("t1", "a"), op::put("t2", "b"), op::del("k0", "")],
        vec![],
    ))
    .await
    .unwrap();
    kv.compact(compact(10, true)).await.unwrap();
    kv.put(put("last", "x")).await.unwrap();
    let head = header(&kv.range(get("last")).await.unwrap().into_inner().header);
    let mut before = Vec::new();
    for revision in 10..=head.2 {
        before.push((
            everything(&mut kv, revision).await,
            hash_kv(&server, revision).await,
        ));
    }
    let whole = store_hash(&server).await;
    drop(kv);
    assert!(server.terminate().success(), "clean shutdown on SIGTERM");

    let server = Strata::start_in(dir.path(), &[]);
    let mut kv = server.kv().await;
    let after_head = header(&kv.range(get("last")).await.unwrap().into_inner().header);
    assert_eq!(after_head, head, "same cluster id, member id and revision");
    for (i, revision) in (10..=head.2).enumerate() {
        let after = (
            everything(&mut kv, revision).await,
            hash_kv(&server, revision).await,
        );
        assert_eq!(after, before[i], "at revision {revision}");
    }
    assert_eq!(
        store_hash(&server).await,
        whole,
        "the whole store hashes the same"
    );
    let compacted = kv
        .range(RangeRequest {
            revision: 9,
            ..get("k1")
        })
        .await;
    assert_eq!(compacted.unwrap_err().code(), tonic::Code::OutOfRange);
    let next = kv.put(put("next", "y")).await.unwrap().into_inner();
    assert_eq!(next.header.unwrap().revision, head.2 + 1);
}

/// Acknowledged writes: key → the revision it was acknowledged with. Txns write two keys at once.
/// Every acknowledgement also adds a permit to the semaphore, for the test to wait on.
#[derive(Clone)]
struct Acked {
    keys: Arc<Mutex<BTreeMap<String, i64>>>,
    count: Arc<Semaphore>,
}

impl Default for Acked {
    fn default() -> Acked {
        Acked {
            keys: Default::default(),
            count: Arc::new(Semaphore::new(0)),
        }
    }
}

/// Tasks putting load on a server, which end when it dies.
type Load = Vec<tokio::task::JoinHandle<()>>;

/// Kills `server` with SIGKILL, and waits for its `load` to stop.
async fn kill_under(mut server: Strata, load: Load) {
    server.kill();
    for task in load {
        task.await.unwrap();
    }
}

/// Kills `server` with SIGKILL within the next 200 ms, and waits for its `load` to stop.
async fn kill_at_random(server: Strata, load: Load) {
    tokio::time::sleep(Duration::from_millis(random_below(200))).await;
    kill_under(server, load).await;
}

/// Cuts the power of `fs` at its `ops`-th write or sync from now (see [`PowerCutFs::cut_after`]),
/// under `server` and its `load`, which are then killed; the power comes back. Returns how many
/// pages the cut lost.
async fn cut_power(
    fs: &PowerCutFs,
    ops: u64,
    reaches_disk: impl FnMut() -> bool + Send + 'static,
    server: Strata,
    load: Load,
) -> usize {
    fs.cut_after(ops, reaches_disk);
    let lost = fs.power_lost().await;
    kill_under(server, load).await;
    fs.restore();
    lost
}

/// Kill-and-restart cycles a crash test runs: 4, or `STRATA_CRASH_CYCLES`.
fn crash_cycles() -> usize {
    std::env::var("STRATA_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(4)
}

/// Starts `n` [`writer`]s through `channel`.
fn writers(channel: &Channel, n: usize, cycle: usize, acked: &Acked) -> Load {
    (0..n)
        .map(|client| {
            tokio::spawn(writer(
                KvClient::new(channel.clone()),
                client,
                cycle,
                acked.clone(),
            ))
        })
        .collect()
}

impl Acked {
    /// Asserts that every acknowledged write is among `found` (key → mod revision).
    fn all_in(&self, found: &BTreeMap<String, i64>, cycle: usize) {
        for (key, revision) in self.keys.lock().unwrap().iter() {
            assert_eq!(
                found.get(key),
                Some(revision),
                "acknowledged {key}, after cycle {cycle}"
            );
        }
    }
}

/// The head revision, and every live key with its mod revision.
async fn live_keys(server: &Strata) -> (i64, BTreeMap<String, i64>) {
    let all = server
        .kv()
        .await
        .range(range("\u{0}", "\u{0}"))
        .await
        .unwrap()
        .into_inner();
    let found = all
        .kvs
        .iter()
        .map(|kv| (String::from_utf8(kv.key.to_vec()).unwrap(), kv.mod_revision))
        .collect();
    (all.header.unwrap().revision, found)
}

/// Writes fresh keys as fast as it can until the server dies: plain puts, and txns that create two
/// keys atomically when the first does not exist yet.
async fn writer(mut kv: KvClient<Channel>, client: usize, cycle: usize, acked: Acked) {
    for seq in 0.. {
        let key = format!("c{cycle}/w{client}/{seq:06}");
        let result = if seq % 2 == 0 {
            kv.put(put(&key, &key)).await.map(|r| r.into_inner().header)
        } else {
            let twin = format!("{key}/twin");
            let t = txn(
                vec![cmp(&key, T::Version, R::Equal, U::Version(0))],
                vec![op::put(&key, &key), op::put(&twin, &key)],
                vec![],
            );
            kv.txn(t).await.map(|r| {
                let r = r.into_inner();
                assert!(r.succeeded, "fresh key exists already");
                r.header
            })
        };
        let Ok(h) = result else {
            return;
        };
        let revision = h.unwrap().revision;
        let mut keys = acked.keys.lock().unwrap();
        keys.insert(key.clone(), revision);
        if seq % 2 == 1 {
            keys.insert(format!("{key}/twin"), revision);
        }
        acked.count.add_permits(1);
    }
}

/// A pseudo-random number from the OS-seeded hasher: when to kill needs no reproducibility.
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    crashes_under_load(
        || Strata::start_in(dir.path(), &[]),
        async |server, load, _| kill_at_random(server, load).await,
    )
    .await;
}

/// Power cuts on the embedded store: its data directory is on a file system that drops what was
/// not synced ([`PowerCutFs`]), and the power goes at a random write or sync of the store's, between
/// a write and its sync as likely as anywhere. Every other cut lets a random half of the unsynced
/// pages reach the disk first (torn writes); the others drop them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_under_load_loses_no_acknowledged_write() {
    let fs = PowerCutFs::mount().expect("a FUSE file system: needs /dev/fuse, as root");
    let lost = AtomicUsize::new(0);
    crashes_under_load(
        || on_power_cut_fs(&fs, &[]),
        async |server: Strata, load: Load, cycle: usize| {
            let torn = cycle % 2 == 1;
            let reaches_disk = move || torn && random_below(2) == 0;
            let cut = cut_power(&fs, random_below(400), reaches_disk, server, load);
            lost.fetch_add(cut.await, Relaxed);
        },
    )
    .await;
    println!("pages lost at the power cuts: {}", lost.into_inner());
}

/// The contrast, showing that the cuts lose data: without syncs (etcd's `--unsafe-no-fsync`), a
/// power cut loses acknowledged writes, and the store still opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_without_fsync_loses_acknowledged_writes() {
    let fs = PowerCutFs::mount().expect("a FUSE file system: needs /dev/fuse, as root");
    let acked = Acked::default();
    let server = on_power_cut_fs(&fs, &["--unsafe-no-fsync"]);
    let load = writers(&server.channel().await, 4, 0, &acked);
    acked.count.acquire_many(50).await.unwrap().forget();
    let lost = cut_power(&fs, 0, || false, server, load).await;
    assert!(lost > 0, "unsynced pages to lose");
    let server = on_power_cut_fs(&fs, &[]);
    let found = live_keys(&server).await.1;
    let acknowledged = acked.keys.lock().unwrap().clone();
    let missing = acknowledged.keys().filter(|k| !found.contains_key(*k));
    assert!(
        missing.count() > 0,
        "some of {} acknowledged writes lost",
        acknowledged.len()
    );
}

/// The embedded store with its data directory on `fs`, whatever backend the other tests use.
fn on_power_cut_fs(fs: &PowerCutFs, args: &[&str]) -> Strata {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .arg("--data-dir")
        .arg(fs.path().join("data"))
        .args(["--backend", "embedded"])
        .args(args);
    Strata::start_command(command)
}

/// Crash cycles under writers: start a server, let `crash` end it and its load (given the cycle's
/// number) once some writes were acknowledged, and start it again: every acknowledged write is
/// there at its revision, no txn is half there, every revision up to the head holds a write, and
/// the history before hashes as it did.
async fn crashes_under_load(start: impl Fn() -> Strata, crash: impl AsyncFn(Strata, Load, usize)) {
    let acked = Acked::default();
    let mut hashes: Vec<(i64, u32)> = Vec::new();
    for cycle in 0..crash_cycles() {
        let server = start();
        let channel = server.channel().await;
        let writers = writers(&channel, 16, cycle, &acked);
        // Let some writes be acknowledged, then crash.
        acked.count.acquire_many(50).await.unwrap().forget();
        crash(server, writers, cycle).await;

        let server = start();
        // The history up to the first and the last earlier head hashes as it did right after
        // that restart (every one would make the test quadratic in the cycles).
        for (revision, hash) in hashes.first().into_iter().chain(hashes.last()) {
            assert_eq!(
                hash_kv(&server, *revision).await,
                *hash,
                "history up to {revision}"
            );
        }
        let (head, found) = live_keys(&server).await;
        acked.all_in(&found, cycle);
        for (key, revision) in &found {
            let base = key.strip_suffix("/twin").unwrap_or(key);
            let seq: u64 = base.rsplit('/').next().unwrap().parse().unwrap();
            if seq % 2 == 1 {
                let other = if base == key {
                    format!("{key}/twin")
                } else {
                    base.to_owned()
                };
                assert_eq!(found.get(&other), Some(revision), "half a txn: {key}");
            }
        }
        let mut revisions: Vec<i64> = found.values().copied().collect();
        revisions.sort_unstable();
        revisions.dedup();
        let expected: Vec<i64> = (2..=head).collect();
        assert_eq!(
            revisions, expected,
            "every revision up to the head holds a write"
        );
        hashes.push((head, hash_kv(&server, head).await));
    }
}

/// SIGTERM under load, as the kubelet stops a static pod: the writes in flight are answered, the
/// store closes cleanly (the next start replays nothing, as it must after `kill -9`), and every
/// acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_in_flight_writes_and_closes_the_store() {
    const REPLAY: &str = "replaying the write-ahead log";
    let dir = tempfile::tempdir().unwrap();
    let acked = Acked::default();
    let mut server = Strata::start_in(dir.path(), &[]);
    let load = writers(&server.channel().await, 16, 0, &acked);
    acked.count.acquire_many(50).await.unwrap().forget();
    let status = server.terminate();
    for task in load {
        task.await.unwrap();
    }
    let log = server.log();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("closed the store"), "log:\n{log}");
    assert!(
        !log.contains("grace period"),
        "connections drained within the grace period; log:\n{log}"
    );
    drop(server);

    let server = Strata::start_in(dir.path(), &[]);
    assert!(!server.log().contains(REPLAY), "log:\n{}", server.log());
    acked.all_in(&live_keys(&server).await.1, 0);
    // The contrast: after kill -9 under load the embedded store replays its write-ahead log.
    let after = Acked::default();
    let load = writers(&server.channel().await, 4, 1, &after);
    after.count.acquire_many(20).await.unwrap().forget();
    kill_under(server, load).await;
    let server = Strata::start_in(dir.path(), &[]);
    assert_eq!(
        server.log().contains(REPLAY),
        !crate::support::on_postgres(),
        "log:\n{}",
        server.log()
    );
    let found = live_keys(&server).await.1;
    acked.all_in(&found, 0);
    after.all_in(&found, 1);
}

/// What the mixed load knows of its keys: present at a revision, or absent. A key whose fate a
/// request in flight may change (a delete, a revoke, a lease left to expire) is taken out first.
type Fates = Arc<Mutex<BTreeMap<String, Option<i64>>>>;

/// Whether a failed call failed because the server is gone (the load then stops).
fn server_gone(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Deletes, leases revoked and left to expire, compactions and defragmentation, in turn, until
/// the server dies; each request counts a permit when answered.
async fn mixed(channel: Channel, cycle: usize, fates: Fates, answered: Arc<Semaphore>) {
    use strata::proto::etcdserverpb::lease_client::LeaseClient;
    use strata::proto::etcdserverpb::{
        CompactionRequest, DefragmentRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    };
    let mut kv = KvClient::new(channel.clone());
    let mut leases = LeaseClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel);
    let mut compacted = 0;
    for n in 0.. {
        let result: Result<(), tonic::Status> = async {
            match n % 5 {
                0 | 1 => {
                    let key = format!("m{cycle}/{n:05}");
                    let r = kv.put(put(&key, "v")).await?.into_inner();
                    let revision = r.header.unwrap().revision;
                    fates.lock().unwrap().insert(key.clone(), Some(revision));
                    if n % 5 == 1 {
                        fates.lock().unwrap().remove(&key);
                        kv.delete_range(del(&key, "")).await?;
                        fates.lock().unwrap().insert(key, None);
                    }
                }
                2 => {
                    let lease = leases
                        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
                        .await?
                        .into_inner()
                        .id;
                    let key = format!("m{cycle}/lease/{n:05}");
                    let r = kv
                        .put(PutRequest {
                            lease,
                            ..put(&key, "leased")
                        })
                        .await?
                        .into_inner();
                    // Every other lease is left to expire, when it may.
                    if n % 10 == 2 {
                        fates
                            .lock()
                            .unwrap()
                            .insert(key.clone(), Some(r.header.unwrap().revision));
                        fates.lock().unwrap().remove(&key);
                        leases
                            .lease_revoke(LeaseRevokeRequest { id: lease })
                            .await?;
                        fates.lock().unwrap().insert(key, None);
                    }
                }
                3 => {
                    let head = kv
                        .range(get("none"))
                        .await?
                        .into_inner()
                        .header
                        .unwrap()
                        .revision;
                    if head - 20 > compacted {
                        compacted = head - 20;
                        kv.compact(CompactionRequest {
                            revision: compacted,
                            physical: n % 2 == 0,
                        })
                        .await?;
                    }
                }
                _ => {
                    if n % 20 == 4 {
                        maintenance.defragment(DefragmentRequest {}).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Err(status) if server_gone(&status) => return,
            Err(status) => panic!("mixed load, request {n}: {status:?}"),
            Ok(()) => answered.add_permits(1),
        }
    }
}

/// Every revision from the oldest kept to `head` holds at least one change: a watch from the start
/// of the history that compaction left replays them all.
async fn history_has_no_gap(server: &Strata, head: i64) {
    use strata::proto::etcdserverpb::watch_client::WatchClient;
    use strata::proto::etcdserverpb::watch_request::RequestUnion;
    use strata::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
    let mut start = 1;
    loop {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: "\0".into(),
                range_end: "\0".into(),
                start_revision: start,
                ..Default::default()
            })),
        };
        let mut stream = WatchClient::new(server.channel().await)
            .watch(crate::support::open_ended(create))
            .await
            .unwrap()
            .into_inner();
        let mut seen = std::collections::BTreeSet::new();
        let mut compacted = None;
        while compacted.is_none() && seen.last().copied().unwrap_or(0) < head {
            let response = stream.message().await.unwrap().unwrap();
            // Created, then cancelled with the oldest revision kept when `start` is older.
            compacted = Some(response.compact_revision).filter(|r| *r > 0);
            seen.extend(
                response
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision),
            );
        }
        if let Some(oldest) = compacted {
            start = oldest;
            continue;
        }
        // Leases left to expire may be expiring after the restart, past `head`.
        seen.retain(|r| *r <= head);
        let expected: std::collections::BTreeSet<i64> = (start.max(2)..=head).collect();
        assert_eq!(seen, expected, "revisions from {start} to {head}");
        return;
    }
}

/// `kill -9` at a random instant under a mixed load: the writers above, and deletes, leases revoked
/// and left to expire, compactions (some physical) and defragmentation. After each restart every
/// acknowledged put is there at its revision, every acknowledged delete and revoke has removed its
/// key, no txn is half there, and the history compaction kept has no gap up to the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_mixed_load_keeps_every_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let acked = Acked::default();
    let fates: Fates = Default::default();
    for cycle in 0..crash_cycles() {
        let server = Strata::start_in(dir.path(), &[]);
        let channel = server.channel().await;
        let answered = Arc::new(Semaphore::new(0));
        let mut load = writers(&channel, 8, cycle, &acked);
        load.push(tokio::spawn(mixed(
            channel.clone(),
            cycle,
            fates.clone(),
            answered.clone(),
        )));
        acked.count.acquire_many(50).await.unwrap().forget();
        answered.acquire_many(25).await.unwrap().forget();
        kill_at_random(server, load).await;

        let server = Strata::start_in(dir.path(), &[]);
        let (head, found) = live_keys(&server).await;
        acked.all_in(&found, cycle);
        for (key, fate) in fates.lock().unwrap().iter() {
            assert_eq!(found.get(key), fate.as_ref(), "{key} after cycle {cycle}");
        }
        history_has_no_gap(&server, head).await;
    }
}
