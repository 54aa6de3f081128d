//! Several Strata frontends on one PostgreSQL database serve one etcd cluster: a write through one
//! is read and watched through the others, concurrent writes through all get one revision sequence,
//! and a frontend killed with SIGKILL loses nothing and comes back up to date.

use crate::http::counter;
use crate::lease::leased;
use crate::requests::*;
use crate::support::{postgres_database, OwnPostgres, Strata};
use crate::watch::{create, Stream};
use strata::proto::etcdserverpb::auth_client::AuthClient;
use strata::proto::etcdserverpb::cluster_client::ClusterClient;
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::{
    AuthUserListRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberListRequest, StatusRequest,
};
use strata::proto::mvccpb::event::EventType;
use tonic::transport::Channel;

async fn status(s: &Strata) -> strata::proto::etcdserverpb::StatusResponse {
    let mut m = MaintenanceClient::new(s.channel().await);
    m.status(StatusRequest {}).await.unwrap().into_inner()
}

/// Every key under `k/`, read through `s`.
async fn under_k(s: &Strata) -> strata::proto::etcdserverpb::RangeResponse {
    let mut kv = s.kv().await;
    kv.range(range("k/", "k0")).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontends_share_writes_reads_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    let (sa, sb) = (status(&a).await, status(&b).await);
    let (ha, hb) = (sa.header.unwrap(), sb.header.unwrap());
    assert_eq!(ha.cluster_id, hb.cluster_id);
    assert_ne!(ha.member_id, hb.member_id);
    // Each lists both, by id, with its client URL; clients that sync endpoints find them all.
    for s in [&a, &b] {
        let mut cluster = ClusterClient::new(s.channel().await);
        let list = cluster.member_list(MemberListRequest::default()).await;
        let members = list.unwrap().into_inner().members;
        let mut expected = vec![
            (ha.member_id, "a", a.endpoint()),
            (hb.member_id, "b", b.endpoint()),
        ];
        expected.sort();
        let listed: Vec<(u64, &str, String)> = members
            .iter()
            .map(|m| (m.id, m.name.as_str(), m.client_ur_ls.join(",")))
            .collect();
        assert_eq!(listed, expected);
    }

    let mut watch = Stream::open(&b).await;
    watch
        .send(RequestUnion::CreateRequest(create("k/", "k0", 0)))
        .await;
    assert!(watch.next(1).await[0].created);

    let (mut kv_a, mut kv_b) = (a.kv().await, b.kv().await);
    let first = kv_a.put(put("k/1", "from a")).await.unwrap().into_inner();
    assert_eq!(first.header.unwrap().revision, 2);
    let read = kv_b.range(get("k/1")).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].value, &b"from a"[..]);
    assert_eq!(read.header.unwrap().revision, 2);
    let seen = watch.next(1).await;
    assert_eq!(seen[0].events[0].kv.as_ref().unwrap().mod_revision, 2);

    // Writers on both at once: one revision sequence, every write seen once by the watcher.
    let writers: Vec<_> = [kv_a.clone(), kv_b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, mut kv)| {
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..50 {
                    let r = kv.put(put(&format!("k/{w}/{i}"), "v")).await.unwrap();
                    revisions.push(r.into_inner().header.unwrap().revision);
                }
                revisions
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for w in writers {
        revisions.extend(w.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (3..103).collect::<Vec<i64>>());
    let mut watched = Vec::new();
    while watched.len() < 100 {
        for response in watch.next(1).await {
            watched.extend(
                response
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision),
            );
        }
    }
    assert_eq!(watched, (3..103).collect::<Vec<i64>>());

    // A frontend killed mid-flight loses nothing acknowledged; restarted, it is up to date.
    a.kill();
    let after = kv_b.put(put("k/after", "b")).await.unwrap().into_inner();
    assert_eq!(after.header.unwrap().revision, 103);
    let a = Strata::frontend(dir.path(), "a");
    let all = under_k(&a).await;
    assert_eq!(all.kvs.len(), 102);
    assert_eq!(all.header.unwrap().revision, 103);
    assert_eq!(status(&a).await.header.unwrap().member_id, ha.member_id);
}

/// Clients and watchers spread over two frontends see one linearizable store, and each watcher
/// exactly its key's writes in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frontends_are_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    crate::linearizability::check_history(&[&a, &b]).await;
}

/// A frontend that alone writes appends each batch in one round trip, presuming the head it knows
/// (and checking it in the append). Another frontend's write does not get lost under that: the
/// next write lands on top of it, whether the presumption is refused or not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_writer_appends_in_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    let (mut kv_a, mut kv_b) = (a.kv().await, b.kv().await);
    for i in 0..10 {
        kv_a.put(put(&format!("k/{i}"), "a")).await.unwrap();
    }
    let presumed = |s: &Strata| counter(s, "strata_backend_presumed_appends_total");
    let refused = |s: &Strata| counter(s, "strata_backend_presumed_refused_total");
    assert_eq!((presumed(&a), refused(&a)), (10, 0));
    let by_b = kv_b.put(put("k/b", "b")).await.unwrap().into_inner();
    let by_a = kv_a.put(put("k/a", "a")).await.unwrap().into_inner();
    let (b_at, a_at) = (by_b.header.unwrap().revision, by_a.header.unwrap().revision);
    assert_eq!(a_at, b_at + 1);
    let read = under_k(&a).await;
    assert_eq!((read.count, read.header.unwrap().revision), (12, a_at));
    println!(
        "a: presumed {}, refused {}; b: presumed {}, refused {}",
        presumed(&a),
        refused(&a),
        presumed(&b),
        refused(&b)
    );
}

/// A put naming a lease granted through the same frontend is presumed at once; one naming a lease
/// granted through another takes the append right the first time, which shows the lease live, and
/// is presumed after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_seen_here_are_written_to_in_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    let grant = |id| LeaseGrantRequest { id, ttl: 60 };
    LeaseClient::new(a.channel().await)
        .lease_grant(grant(21))
        .await
        .unwrap();
    LeaseClient::new(b.channel().await)
        .lease_grant(grant(22))
        .await
        .unwrap();
    let presumed = || counter(&a, "strata_backend_presumed_appends_total");
    let mut kv_a = a.kv().await;
    for (key, lease, presumed_after) in [("k/1", 21, 1), ("k/2", 22, 1), ("k/3", 22, 2)] {
        kv_a.put(leased(key, lease)).await.unwrap();
        assert_eq!(presumed(), presumed_after, "{key} on lease {lease}");
    }
    assert_eq!(counter(&a, "strata_backend_presumed_refused_total"), 0);
    assert_eq!(under_k(&b).await.count, 3);
}

/// A revoke through a frontend that alone writes is appended in one round trip too, and forgets
/// the lease in the same transaction: the other frontend reads the keys gone and the lease not
/// found, whether the lease had keys or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_writers_revoke_appends_in_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    let (mut lease_a, mut lease_b) = (
        LeaseClient::new(a.channel().await),
        LeaseClient::new(b.channel().await),
    );
    for id in [21, 22] {
        lease_a
            .lease_grant(LeaseGrantRequest { id, ttl: 60 })
            .await
            .unwrap();
    }
    a.kv().await.put(leased("k/leased", 21)).await.unwrap();
    let presumed = || counter(&a, "strata_backend_presumed_appends_total");
    for id in [21, 22] {
        let before = presumed();
        lease_a
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .unwrap();
        assert_eq!(presumed(), before + 1, "the revoke of {id}");
        let ttl = LeaseTimeToLiveRequest { id, keys: false };
        let left = lease_b.lease_time_to_live(ttl).await.unwrap().into_inner();
        assert_eq!(left.ttl, -1, "lease {id} through b");
        let put = b.kv().await.put(leased("k/again", id)).await.unwrap_err();
        assert_eq!(put.message(), "etcdserver: requested lease not found");
    }
    assert_eq!(counter(&a, "strata_backend_presumed_refused_total"), 0);
    assert_eq!(under_k(&b).await.count, 0);
    let again = lease_a
        .lease_revoke(LeaseRevokeRequest { id: 21 })
        .await
        .unwrap_err();
    assert_eq!(again.message(), "etcdserver: requested lease not found");
}

/// The lease keeper's expiry of a lease is appended in one round trip as well, the lease checked
/// expired by the database's clock in the append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_appends_in_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = Strata::frontend(dir.path(), "a");
    LeaseClient::new(a.channel().await)
        .lease_grant(LeaseGrantRequest { id: 21, ttl: 2 })
        .await
        .unwrap();
    a.kv().await.put(leased("k/expiring", 21)).await.unwrap();
    let presumed = || counter(&a, "strata_backend_presumed_appends_total");
    let before = presumed();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while under_k(&a).await.count > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease did not expire"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(presumed(), before + 1);
    assert_eq!(counter(&a, "strata_backend_presumed_refused_total"), 0);
}

/// A database whose default isolation is SERIALIZABLE: frontends that take turns at the append
/// right would get serialization errors under it, so they set READ COMMITTED for themselves and
/// every concurrent write through either is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_defaulting_to_serializable_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let database = postgres_database(dir.path());
    let name = database.rsplit('/').next().unwrap();
    let sql = format!("ALTER DATABASE {name} SET default_transaction_isolation = 'serializable'");
    assert!(crate::support::psql(
        &crate::support::admin_postgres(),
        &sql
    ));
    let a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    const WRITERS: usize = 8;
    const PUTS: usize = 40;
    // Auth changes meanwhile: they take the append right's row lock on a connection of their own.
    let mut tasks = Vec::new();
    for (s, frontend) in [(&a, "a"), (&b, "b")] {
        let mut auth = AuthClient::new(s.channel().await);
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let user = strata::proto::etcdserverpb::AuthUserAddRequest {
                    name: format!("{frontend}{i}"),
                    password: "pw".into(),
                    ..Default::default()
                };
                auth.user_add(user).await.unwrap();
            }
        }));
    }
    for w in 0..WRITERS {
        let mut kv = [&a, &b][w % 2].kv().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..PUTS {
                kv.put(put(&format!("k/{w}/{i}"), "v")).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for s in [&a, &b] {
        let all = under_k(s).await;
        assert_eq!(all.count, (WRITERS * PUTS) as i64);
        assert_eq!(all.header.unwrap().revision, 1 + (WRITERS * PUTS) as i64);
        let mut auth = AuthClient::new(s.channel().await);
        let users = auth.user_list(AuthUserListRequest {}).await.unwrap();
        assert_eq!(users.into_inner().users.len(), 20);
    }
}

/// Two frontends, each killed with SIGKILL and restarted in turn under clients and watchers spread
/// over both: the history stays linearizable and the watchers see every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frontends_are_linearizable_through_kill_9() {
    use crate::linearizability::{check_history_through_restarts, Restartable};
    let dir = tempfile::tempdir().unwrap();
    let frontends = ["a", "b"]
        .map(|name| {
            let backend = postgres_database(dir.path());
            Restartable::new(move |url| {
                let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
                command.args(["--name", name, "--backend", &backend]);
                command.args(["--listen-client-urls", url]);
                Strata::start_command(command)
            })
        })
        .into();
    check_history_through_restarts(frontends).await;
}

/// Leases are the cluster's, not a frontend's: granted through one, they are used, kept alive,
/// queried and revoked through another; one keeper expires them, and when it dies another takes
/// over without expiring a lease that was kept alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_shared_and_outlive_their_keeper() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    let (mut lease_a, mut lease_b) = (
        LeaseClient::new(a.channel().await),
        LeaseClient::new(b.channel().await),
    );
    let (mut kv_a, mut kv_b) = (a.kv().await, b.kv().await);
    let grant = |id, ttl| LeaseGrantRequest { id, ttl };

    let id = lease_a
        .lease_grant(grant(0, 60))
        .await
        .unwrap()
        .into_inner()
        .id;
    kv_b.put(leased("held", id)).await.unwrap();
    let ttl = lease_b
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ttl.granted_ttl, ttl.keys),
        (60, vec![crate::requests::b("held")])
    );
    assert!(ttl.ttl > 0 && ttl.ttl <= 60, "{}", ttl.ttl);
    let taken = lease_b.lease_grant(grant(id, 10)).await.unwrap_err();
    assert_eq!(
        (taken.code(), taken.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists"
        )
    );
    for lease in [&mut lease_a, &mut lease_b] {
        let listed = lease.lease_leases(LeaseLeasesRequest {}).await.unwrap();
        let ids: Vec<i64> = listed.into_inner().leases.iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![id]);
    }
    lease_b
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap();
    let gone = kv_a.range(get("held")).await.unwrap().into_inner();
    assert!(gone.kvs.is_empty());
    let refused = kv_a.put(leased("again", id)).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );

    // Kept alive through b while a, which may be the keeper, dies: the lease outlives its TTL.
    let kept = lease_a
        .lease_grant(grant(0, 3))
        .await
        .unwrap()
        .into_inner()
        .id;
    kv_a.put(leased("kept", kept)).await.unwrap();
    let abandoned = lease_a
        .lease_grant(grant(0, 2))
        .await
        .unwrap()
        .into_inner()
        .id;
    kv_a.put(leased("abandoned", abandoned)).await.unwrap();
    // A watch from now on b starts at the cluster's head, after a's put, even if b has not heard
    // of the put yet: what it sees first is the delete.
    let mut watch = Stream::open(&b).await;
    watch
        .send(RequestUnion::CreateRequest(create("abandoned", "", 0)))
        .await;
    assert!(watch.next(1).await[0].created);
    a.kill();
    let (keep_alive, requests) = tokio::sync::mpsc::channel(4);
    let mut answers = lease_b
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    // A client keeps a lease alive every third of its TTL, as etcd's clients do.
    let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
    for _ in 0..7 {
        every_second.tick().await;
        keep_alive
            .send(LeaseKeepAliveRequest { id: kept })
            .await
            .unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!((answer.id, answer.ttl), (kept, 3), "kept alive");
    }
    let deleted = watch.next(1).await;
    assert_eq!(deleted[0].events[0].r#type, EventType::Delete as i32);
    let still = kv_b.range(get("kept")).await.unwrap().into_inner();
    assert_eq!(still.kvs.len(), 1, "a lease kept alive is not expired");
}

/// What a writer had acknowledged, as (key, revision), and how many of its puts failed.
type Written = (Vec<(String, i64)>, usize);

/// How long the writers may take to make progress a test waits for: long past any failover here.
const WRITES_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Eight writers putting keys of their own until stopped, each counting its failures (which must
/// be Unavailable, or the client's transport error when the frontend is gone).
pub struct Writers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Written>>,
    probe: KvClient<Channel>,
}

impl Writers {
    /// Writer `w` writes through `through[w % len]`; counts and checks go through `probe`.
    pub fn start(through: &[KvClient<Channel>], probe: KvClient<Channel>) -> Writers {
        let (stop, _) = tokio::sync::watch::channel(false);
        let tasks = (0..8)
            .map(|w| {
                let mut kv = through[w % through.len()].clone();
                let stop = stop.subscribe();
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    let mut failed = 0;
                    for i in 0.. {
                        if *stop.borrow() {
                            break;
                        }
                        let key = format!("w{w}/{i:05}");
                        match kv.put(put(&key, "v")).await {
                            Ok(r) => {
                                acknowledged.push((key, r.into_inner().header.unwrap().revision))
                            }
                            Err(s) => {
                                // The frontend says it cannot serve, or it is gone (the
                                // client's connection failed under the call).
                                let gone = std::error::Error::source(&s)
                                    .is_some_and(|e| e.is::<tonic::transport::Error>());
                                assert!(s.code() == tonic::Code::Unavailable || gone, "{s:?}");
                                failed += 1;
                            }
                        }
                    }
                    (acknowledged, failed)
                })
            })
            .collect();
        Writers { stop, tasks, probe }
    }

    /// How many keys the writers have written, read linearizably.
    pub async fn count(&mut self) -> Result<i64, tonic::Status> {
        let mut all = range("w", "x");
        all.count_only = true;
        self.probe.range(all).await.map(|r| r.into_inner().count)
    }

    /// Waits until `more` keys have been written since `since`, through failures while the
    /// frontend reconnects (each failure drops a dead connection, so there are few); fails if that
    /// takes longer than [`WRITES_DEADLINE`].
    pub async fn wait_for(&mut self, since: i64, more: i64) {
        let deadline = std::time::Instant::now() + WRITES_DEADLINE;
        let mut failures = 0;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {more} writes after {WRITES_DEADLINE:?}"
            );
            match self.count().await {
                Ok(n) if n >= since + more => return,
                Ok(_) => {}
                Err(s) => {
                    failures += 1;
                    assert!(failures < 20, "still failing: {s:?}");
                }
            }
        }
    }

    /// Stops the writers and checks what the store holds: every acknowledged write at its
    /// revision, one revision per put, no gap. Returns how many puts failed.
    async fn stop_and_check(self) -> usize {
        let (failed, mut revisions, head) = self.stop_and_check_kept().await;
        revisions.sort_unstable();
        assert_eq!(
            revisions,
            (2..=head).collect::<Vec<i64>>(),
            "one revision per put, no gap"
        );
        failed
    }

    /// Stops the writers and checks that the store holds every acknowledged write at its
    /// revision. Returns how many puts failed, the revisions of the writers' keys, and the head.
    pub async fn stop_and_check_kept(mut self) -> (usize, Vec<i64>, i64) {
        self.stop.send_replace(true);
        let mut acknowledged = Vec::new();
        let mut failed = 0;
        for task in self.tasks {
            let (acked, failures) = task.await.unwrap();
            acknowledged.extend(acked);
            failed += failures;
        }
        // The first call through a connection that died under a fault fails; the next reconnects.
        let mut attempts = 0;
        let all = loop {
            match self.probe.range(range("w", "x")).await {
                Ok(all) => break all.into_inner(),
                Err(s) if s.code() == tonic::Code::Unavailable && attempts < 20 => attempts += 1,
                Err(s) => panic!("reading what the writers wrote: {s:?}"),
            }
        };
        let stored: std::collections::HashMap<Vec<u8>, i64> = all
            .kvs
            .iter()
            .map(|kv| (kv.key.to_vec(), kv.mod_revision))
            .collect();
        for (key, revision) in &acknowledged {
            assert_eq!(stored.get(key.as_bytes()), Some(revision), "{key} lost");
        }
        let revisions = stored.values().copied().collect();
        (failed, revisions, all.header.unwrap().revision)
    }
}

pub fn frontend_on(backend: &str) -> Strata {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    command.args(["--backend", backend]);
    Strata::start_command(command)
}

/// While the database is down, requests fail with Unavailable, promptly, and nothing is
/// acknowledged; when it is back (after crash recovery), the frontend reconnects by itself and
/// carries on: every write acknowledged before, during or after is there at its revision, and the
/// revisions have no gap. The database is killed under eight concurrent writers, so some commits
/// are in flight when it dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_requests_and_the_frontend_recovers() {
    let postgres = OwnPostgres::start();
    let frontend = frontend_on(&postgres.url);
    let kv = frontend.kv().await;
    let mut writers = Writers::start(std::slice::from_ref(&kv), kv.clone());
    writers.wait_for(0, 200).await;
    postgres.kill();
    let started = std::time::Instant::now();
    let unread = writers.count().await.unwrap_err();
    assert_eq!(unread.code(), tonic::Code::Unavailable, "{unread:?}");
    let said = unread.message();
    assert!(
        said.starts_with("etcdserver: storage failure: ")
            && !said.contains("failure: storage failure"),
        "{unread:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "failing took {:?}",
        started.elapsed()
    );
    postgres.restart();
    let back = writers.count().await.unwrap_or_default();
    writers.wait_for(back, 200).await;
    assert!(
        writers.stop_and_check().await > 0,
        "the writers met the outage"
    );
}

/// A frontend killed with SIGKILL amid writes through both: the other carries on, every write
/// either acknowledged is there at its revision, and the revisions have no gap (a batch the killed
/// one had in flight is in the log whole or not at all). Restarted, it agrees with the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_killed_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Strata::frontend(dir.path(), "a");
    let b = Strata::frontend(dir.path(), "b");
    let probe = b.kv().await;
    let mut writers = Writers::start(&[a.kv().await, probe.clone()], probe.clone());
    writers.wait_for(0, 300).await;
    a.kill();
    let after = writers.count().await.unwrap();
    writers.wait_for(after, 300).await;
    assert!(
        writers.stop_and_check().await > 0,
        "a's writers met its death"
    );
    let a = Strata::frontend(dir.path(), "a");
    let all = range("w", "x");
    let seen_by_a = a.kv().await.range(all.clone()).await.unwrap().into_inner();
    let seen_by_b = probe.clone().range(all).await.unwrap().into_inner();
    assert_eq!(seen_by_a.kvs, seen_by_b.kvs);
}

/// The database fails over: its primary dies under eight writers and its synchronous standby is
/// promoted. The frontend, given both hosts with `target_session_attrs=read-write`, finds the new
/// primary by itself, and no acknowledged write is lost (a commit returns only once the standby
/// has it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failover_loses_no_acknowledged_write() {
    let primary = OwnPostgres::start();
    let standby = primary.standby();
    let hosts = primary.and_then(&standby);
    let frontend = frontend_on(&hosts);
    let kv = frontend.kv().await;
    let mut writers = Writers::start(std::slice::from_ref(&kv), kv.clone());
    writers.wait_for(0, 200).await;
    primary.kill();
    standby.promote();
    let promoted = writers.count().await.unwrap_or_default();
    writers.wait_for(promoted, 200).await;
    assert!(
        writers.stop_and_check().await > 0,
        "the writers met the failover"
    );
}

/// TLS to the database as libpq's `sslmode` says, against a server that takes TLS connections only
/// with a certificate for the name localhost: `verify-full` to localhost and `verify-ca` to
/// 127.0.0.1 and `require` connect and serve; `verify-full` to 127.0.0.1 (not the certificate's name) and
/// `disable` are refused, and the frontend does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_as_sslmode_says() {
    let postgres = OwnPostgres::start_tls();
    let ca = postgres.ca().display().to_string();
    let port = postgres.port();
    let url = |host: &str, mode: &str| {
        format!("postgres://strata@{host}:{port}/postgres?sslmode={mode}&sslrootcert={ca}")
    };
    // `require` without a root certificate encrypts without checking the certificate.
    let require = format!("postgres://strata@127.0.0.1:{port}/postgres?sslmode=require");
    for (mode, backend) in [
        ("verify-full", url("localhost", "verify-full")),
        ("verify-ca", url("127.0.0.1", "verify-ca")),
        ("require", require),
    ] {
        let frontend = frontend_on(&backend);
        let mut kv = frontend.kv().await;
        kv.put(put(mode, "over TLS")).await.unwrap();
        let read = kv.range(get(mode)).await.unwrap().into_inner();
        assert_eq!(read.kvs[0].value, &b"over TLS"[..]);
    }
    for (host, mode, why) in [
        ("127.0.0.1", "verify-full", "certificate not valid for name"),
        ("127.0.0.1", "disable", "no encryption"),
    ] {
        let refused = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["--backend", &url(host, mode)])
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{mode} started: {log}");
        assert!(
            log.contains(why),
            "{mode} refused, but not for {why}: {log}"
        );
    }
}

/// Users, roles and auth itself are the cluster's: set up through one frontend, they hold on the
/// other, and two frontends changing auth at once lose neither change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_shared_by_frontends() {
    use strata::proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleListRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest, AuthenticateRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let (_a, b, mut auth_a, mut auth_b) = two_with_auth(dir.path()).await;
    let roles: Vec<_> = (0..20)
        .map(|i| {
            let mut client = if i % 2 == 0 {
                auth_a.clone()
            } else {
                auth_b.clone()
            };
            tokio::spawn(async move {
                let name = format!("role{i}");
                client.role_add(AuthRoleAddRequest { name }).await.unwrap();
            })
        })
        .collect();
    for r in roles {
        r.await.unwrap();
    }
    auth_a
        .user_add(AuthUserAddRequest {
            name: "root".into(),
            password: "pw".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    auth_a
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .unwrap();
    auth_a.auth_enable(AuthEnableRequest {}).await.unwrap();

    // Authenticating through b reads the state a wrote; from then on b refuses the anonymous.
    let token = auth_b
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "pw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let refused = b.kv().await.range(get("k")).await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: user name is empty");
    let mut list = tonic::Request::new(AuthRoleListRequest {});
    list.metadata_mut().insert("token", token.parse().unwrap());
    let roles = auth_b.role_list(list).await.unwrap().into_inner().roles;
    assert_eq!(roles.len(), 20, "{roles:?}");
}

/// `message` carrying `token`, as etcd's clients send it.
fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("token", token.parse().unwrap());
    request
}

/// Frontends a and b on the database kept for `dir`, and an auth client of each.
async fn two_with_auth(
    dir: &std::path::Path,
) -> (Strata, Strata, AuthClient<Channel>, AuthClient<Channel>) {
    let a = Strata::frontend(dir, "a");
    let b = Strata::frontend(dir, "b");
    let (auth_a, auth_b) = (
        AuthClient::new(a.channel().await),
        AuthClient::new(b.channel().await),
    );
    (a, b, auth_a, auth_b)
}

/// Through `client`: users root (root) and alice (role rw, READWRITE on [k, l) and [m, n)), auth
/// on; answers root's token.
async fn alice_and_root(client: &mut AuthClient<Channel>) -> String {
    use strata::proto::authpb::{permission::Type, Permission};
    use strata::proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest,
    };
    for (user, role) in [("root", "root"), ("alice", "rw")] {
        client
            .user_add(AuthUserAddRequest {
                name: user.into(),
                password: "pw".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        if role != "root" {
            client
                .role_add(AuthRoleAddRequest { name: role.into() })
                .await
                .unwrap();
        }
        client
            .user_grant_role(AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            })
            .await
            .unwrap();
    }
    for (key, range_end) in [("k", "l"), ("m", "n")] {
        client
            .role_grant_permission(AuthRoleGrantPermissionRequest {
                name: "rw".into(),
                perm: Some(Permission {
                    perm_type: Type::Readwrite as i32,
                    key: key.into(),
                    range_end: range_end.into(),
                }),
            })
            .await
            .unwrap();
    }
    client.auth_enable(AuthEnableRequest {}).await.unwrap();
    login(client.clone(), "root").await
}

/// A token of `name` (password "pw"), from the frontend `client` talks to.
async fn login(mut client: AuthClient<Channel>, name: &str) -> String {
    let request = strata::proto::etcdserverpb::AuthenticateRequest {
        name: name.into(),
        password: "pw".into(),
    };
    client
        .authenticate(request)
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Through `client`, as root: takes READWRITE on [key, range_end) away from role rw.
async fn revoke(
    mut client: AuthClient<Channel>,
    root: &str,
    key: &'static str,
    range_end: &'static str,
) {
    let request = strata::proto::etcdserverpb::AuthRoleRevokePermissionRequest {
        role: "rw".into(),
        key: key.into(),
        range_end: range_end.into(),
    };
    let request = with_token(request, root);
    client.role_revoke_permission(request).await.unwrap();
}

/// An auth change acknowledged by one frontend holds at once on the other, as it would on every
/// member of an etcd cluster: the other's next write or linearizable read is allowed under the new
/// state, not under the one it held (which it would refresh only within a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_changes_hold_at_once_on_other_frontends() {
    use strata::proto::etcdserverpb::{AuthDisableRequest, AuthEnableRequest, AuthUserAddRequest};
    let dir = tempfile::tempdir().unwrap();
    let (a, b, mut auth_a, mut auth_b) = two_with_auth(dir.path()).await;
    let root = alice_and_root(&mut auth_a).await;
    let alice = login(auth_b.clone(), "alice").await;
    let mut kv_b = b.kv().await;
    kv_b.put(with_token(put("k1", "v"), &alice)).await.unwrap();
    kv_b.range(with_token(get("k1"), &alice)).await.unwrap();

    // Taken away through a, while b still allows them: b refuses alice's next read, and then her
    // next write, as etcd refuses a request of a token older than the auth revision (or, should
    // b have refreshed its state meanwhile, for want of the permission).
    let refusals = [
        "etcdserver: revision of auth store is old",
        "etcdserver: permission denied",
    ];
    revoke(auth_a.clone(), &root, "k", "l").await;
    let refused = kv_b.range(with_token(get("k1"), &alice)).await;
    let refused = refused.unwrap_err();
    assert!(refusals.contains(&refused.message()), "{refused:?}");
    revoke(auth_a.clone(), &root, "m", "n").await;
    let refused = kv_b.put(with_token(put("m1", "v"), &alice)).await;
    let refused = refused.unwrap_err();
    assert!(refusals.contains(&refused.message()), "{refused:?}");
    let alice = login(auth_b.clone(), "alice").await;
    let refused = kv_b.put(with_token(put("m1", "v"), &alice)).await;
    assert_eq!(refused.unwrap_err().message(), refusals[1]);

    // Turned off through a: b takes anonymous requests at once, and ignores tokens, even one
    // that only a knew.
    let alice_on_a = login(auth_a.clone(), "alice").await;
    auth_a
        .auth_disable(with_token(AuthDisableRequest {}, &root))
        .await
        .unwrap();
    // A watch opened through b at once is created, not canceled for want of a user.
    {
        use strata::proto::etcdserverpb::watch_client::WatchClient;
        use strata::proto::etcdserverpb::watch_request::RequestUnion;
        use strata::proto::etcdserverpb::WatchRequest;
        let (send, requests) = tokio::sync::mpsc::channel(1);
        let create = RequestUnion::CreateRequest(crate::watch::create("k3", "", 0));
        send.send(WatchRequest {
            request_union: Some(create),
        })
        .await
        .unwrap();
        let mut stream = WatchClient::new(b.channel().await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created && !created.canceled, "{created:?}");
    }
    kv_b.range(with_token(get("k3"), &alice_on_a))
        .await
        .unwrap();
    kv_b.put(put("k3", "v")).await.unwrap();
    kv_b.range(get("k3")).await.unwrap();

    // Turned on again through a: b refuses the anonymous at once, administration included.
    auth_a.auth_enable(AuthEnableRequest {}).await.unwrap();
    let empty = "etcdserver: user name is empty";
    let refused = kv_b.put(put("k4", "v")).await;
    assert_eq!(refused.unwrap_err().message(), empty);
    let refused = kv_b.range(get("k3")).await;
    assert_eq!(refused.unwrap_err().message(), empty);
    let refused = auth_b
        .user_add(AuthUserAddRequest {
            name: "mallory".into(),
            password: "pw".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(refused.unwrap_err().message(), empty);
    let root = login(auth_a.clone(), "root").await;
    for (key, made) in [("k3", 1), ("k4", 0), ("m1", 0)] {
        assert_eq!(count(&a, &root, key).await, made, "{key}");
    }

    // Off again through a: b grants the anonymous a lease at once (a refusal of a lease, lock or
    // election call is checked against the stored state too).
    auth_a
        .auth_disable(with_token(AuthDisableRequest {}, &root))
        .await
        .unwrap();
    let mut lease_b = LeaseClient::new(b.channel().await);
    let grant = LeaseGrantRequest {
        ttl: 60,
        ..Default::default()
    };
    lease_b.lease_grant(grant).await.unwrap();
}

/// Writes through one frontend racing a permission taken away through the other: none sent after
/// the change was acknowledged is made, however the two frontends' turns at the append right fall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_after_an_auth_change_are_checked_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, b, mut auth_a, _) = two_with_auth(dir.path()).await;
    let root = alice_and_root(&mut auth_a).await;
    let alice = login(AuthClient::new(b.channel().await), "alice").await;
    let (started, mut running) = tokio::sync::mpsc::channel::<()>(8);
    let mut writers = Vec::new();
    for w in 0..8 {
        let (mut kv, alice, started) = (b.kv().await, alice.clone(), started.clone());
        writers.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0.. {
                let request = with_token(put(&format!("m/{w}/{i}"), "v"), &alice);
                let sent = tokio::time::Instant::now();
                if kv.put(request).await.is_err() {
                    return made;
                }
                made.push(sent);
                let _ = started.try_send(());
            }
            unreachable!("writes until refused")
        }));
    }
    drop(started);
    // Writes under way before the change.
    for _ in 0..8 {
        running.recv().await.unwrap();
    }
    revoke(auth_a.clone(), &root, "m", "n").await;
    let acknowledged = tokio::time::Instant::now();
    for writer in writers {
        for sent in writer.await.unwrap() {
            assert!(
                sent < acknowledged,
                "a write sent after the change was made"
            );
        }
    }
}

/// How many keys `key` names, read through `s` with `token`.
async fn count(s: &Strata, token: &str, key: &str) -> i64 {
    let mut kv = s.kv().await;
    let answer = kv.range(with_token(get(key), token)).await.unwrap();
    answer.into_inner().count
}

/// A frozen primary (its kernel accepts connections, nothing answers) named first in a multi-host
/// connection string holds a frontend up for that host's own deadline only, as libpq's
/// connect_timeout does: the frontend starts on the next host and serves.
#[test]
fn a_frozen_first_host_is_passed_over() {
    let frozen = OwnPostgres::start();
    let live = OwnPostgres::start();
    frozen.freeze();
    let backend = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=strata dbname=postgres connect_timeout=2 \
         target_session_attrs=read-write",
        frozen.port(),
        live.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .args(["--name", "f", "--backend", &backend, "--data-dir"])
        .arg(dir.path().join("unused"));
    let strata = Strata::start_command(command);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut kv = strata.kv().await;
        kv.put(put("k", "v")).await.unwrap();
        let got = kv.range(get("k")).await.unwrap().into_inner();
        assert_eq!(got.kvs[0].value, b"v"[..]);
    });
    frozen.thaw();
}
