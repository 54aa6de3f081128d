//! A frontend that reads the log from a PostgreSQL hot standby (`--read-from`): it answers as a
//! frontend on the primary does, linearizably, whether the standby has replayed what it needs or
//! not, and whether the standby answers at all.

use crate::frontends::frontend_on;
use crate::http::counter;
use crate::lease::leased;
use crate::linearizability::{check_history_through, Restartable};
use crate::requests::*;
use crate::support::{psql, OwnPostgres, Strata};
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::LeaseGrantRequest;
use tonic::transport::Channel;

/// A frontend on `primary`'s database that reads the log from `standby` first.
fn reading_from(primary: &OwnPostgres, standby: &OwnPostgres) -> Strata {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    command.args(["--backend", &primary.url, "--read-from", &standby.url]);
    Strata::start_command(command)
}

/// A primary, its standby, a frontend on the primary, and one reading from the standby.
pub(crate) struct Pair {
    /// Held to the end: dropped, the server stops.
    _primary: OwnPostgres,
    standby: OwnPostgres,
    pub(crate) on_primary: Strata,
    pub(crate) near_standby: Strata,
}

impl Pair {
    pub(crate) fn start(synchronous: bool) -> Pair {
        let primary = OwnPostgres::start();
        let standby = if synchronous {
            primary.standby()
        } else {
            primary.standby_async()
        };
        let on_primary = frontend_on(&primary.url);
        let near_standby = reading_from(&primary, &standby);
        Pair {
            _primary: primary,
            standby,
            on_primary,
            near_standby,
        }
    }
}

/// Clients and watchers spread over a frontend on the primary and one reading from its standby
/// see one linearizable store, with a synchronous standby (which acknowledges a commit once it has
/// it, and shows it a moment later) and an asynchronous one: the second frontend meets revisions
/// its standby does not show yet. The standby answers some of the second frontend's reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_reading_from_a_standby_is_linearizable_with_the_others() {
    for synchronous in [true, false] {
        // Kept whole: the databases stop as it is dropped.
        let pair = Pair::start(synchronous);
        let (on_primary, near_standby) = (&pair.on_primary, &pair.near_standby);
        crate::linearizability::check_history(&[on_primary, near_standby]).await;
        let served = counter(near_standby, "strata_backend_standby_reads_total");
        let fell_back = counter(near_standby, "strata_backend_standby_fallbacks_total");
        let presumed = counter(near_standby, "strata_backend_presumed_appends_total");
        let refused = counter(near_standby, "strata_backend_presumed_refused_total");
        println!(
            "synchronous {synchronous}: reads the standby answered {served}, went to the primary \
             {fell_back}; batches appended as presumed {presumed}, refused {refused}"
        );
        // How much of the history the standby served depends on the turns the writers took; a
        // write through the other frontend is read from it once it has replayed it.
        read_from_the_standby(on_primary, near_standby).await;
        assert_eq!(counter(on_primary, "strata_backend_standby_reads_total"), 0);
    }
}

/// Puts through `on_primary` and reads each back through `near_standby` until the standby has
/// served a read (10 s at most).
async fn read_from_the_standby(on_primary: &Strata, near_standby: &Strata) {
    let (mut writes, mut reads) = (on_primary.kv().await, near_standby.kv().await);
    let served = counter(near_standby, "strata_backend_standby_reads_total");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 0.. {
        let key = format!("read-from-standby/{i}");
        writes.put(put(&key, "v")).await.unwrap();
        let read = reads.range(get(&key)).await.unwrap().into_inner();
        assert_eq!(read.kvs.len(), 1, "{key}");
        if counter(near_standby, "strata_backend_standby_reads_total") > served {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby answered no read in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Through faults: the frontend reading from the standby killed with SIGKILL and restarted, then
/// the one on the primary, then the database failing over (its primary killed, the synchronous
/// standby the second frontend reads from promoted; both frontends name both hosts with
/// `target_session_attrs=read-write`). Clients and watchers spread over both see one linearizable
/// store throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_through_kill_9_and_a_failover() {
    let primary = OwnPostgres::start();
    let standby = primary.standby();
    let hosts = primary.and_then(&standby);
    let frontend = |read_from: Option<String>| {
        let hosts = hosts.clone();
        Restartable::new(move |url| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
            command.args(["--backend", &hosts, "--listen-client-urls", url]);
            if let Some(standby) = &read_from {
                command.args(["--read-from", standby]);
            }
            Strata::start_command(command)
        })
    };
    let mut frontends = [frontend(None), frontend(Some(standby.url.clone()))];
    let channels = frontends
        .iter()
        .map(|f| Channel::from_shared(f.url.clone()).unwrap().connect_lazy())
        .collect();
    check_history_through(channels, 3, move |n| {
        match n {
            1 => frontends[1].kill_and_restart(),
            2 => frontends[0].kill_and_restart(),
            _ => {
                primary.kill();
                standby.promote();
            }
        }
        std::future::ready(())
    })
    .await;
}

/// A standby that stops answering (every process of it stopped with SIGSTOP) costs the frontend
/// one short deadline; its reads then go to the primary, and everything written through the other
/// frontend is there at once. Probed off the path of requests, it is read from again once it
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_hangs_sends_reads_to_the_primary() {
    // Asynchronous: commits on the primary do not wait for the standby.
    let pair = Pair::start(false);
    let (standby, near_standby) = (&pair.standby, &pair.near_standby);
    let mut writes = pair.on_primary.kv().await;
    let mut reads = near_standby.kv().await;
    writes.put(put("before", "1")).await.unwrap();
    assert_eq!(
        reads
            .range(get("before"))
            .await
            .unwrap()
            .into_inner()
            .kvs
            .len(),
        1
    );

    standby.hang();
    for i in 0..20 {
        let key = format!("while/{i}");
        let written = writes.put(put(&key, "v")).await.unwrap().into_inner();
        let read = reads.range(get(&key)).await.unwrap().into_inner();
        assert_eq!(read.kvs.len(), 1, "{key}");
        assert_eq!(
            read.kvs[0].mod_revision,
            written.header.unwrap().revision,
            "{key}"
        );
    }
    assert!(counter(near_standby, "strata_backend_standby_fallbacks_total") > 0);
    // Resumed, it is found answering by the next probe, and read from again.
    standby.resume();
    read_from_the_standby(&pair.on_primary, near_standby).await;
    let log = near_standby.log();
    for said in [
        "the standby (--read-from) failed a read",
        "the standby (--read-from) answers again",
    ] {
        assert_eq!(log.matches(said).count(), 1, "{said}: {log}");
    }
}

/// `--read-from` names a standby of a PostgreSQL backend: with the embedded store it is refused.
#[test]
fn read_from_without_postgres_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--read-from", "postgres://localhost/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--read-from names a standby of a PostgreSQL --backend"),
        "{stderr}"
    );
}

/// A standby that stops replaying (`pg_wal_replay_pause`) falls behind: linearizable reads through
/// the frontend reading from it still see every write at once (from the primary), and the lag
/// shows in its metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_shows_in_the_metrics_and_costs_no_stale_read() {
    let pair = Pair::start(false);
    let (standby, near_standby) = (&pair.standby, &pair.near_standby);
    assert!(psql(&standby.url, "SELECT pg_wal_replay_pause()"));
    let mut writes = pair.on_primary.kv().await;
    let mut reads = near_standby.kv().await;
    for i in 0..20 {
        let key = format!("behind/{i}");
        let written = writes.put(put(&key, "v")).await.unwrap().into_inner();
        let read = reads.range(get(&key)).await.unwrap().into_inner();
        assert_eq!(
            read.kvs.first().map(|kv| kv.mod_revision),
            written.header.map(|h| h.revision),
            "{key}"
        );
    }
    // The tailer looks at the standby's head every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while counter(near_standby, "strata_backend_standby_lag_revisions") < 20 {
        assert!(std::time::Instant::now() < deadline, "no lag shown in 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(psql(&standby.url, "SELECT pg_wal_replay_resume()"));
}

/// A put through the frontend reading from a standby, naming a lease granted through the other
/// frontend, is appended in one round trip once the standby shows the lease: the writer learns
/// of the lease there rather than by taking the append right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_granted_elsewhere_is_learnt_from_the_standby() {
    let pair = Pair::start(false);
    let near_standby = &pair.near_standby;
    LeaseClient::new(pair.on_primary.channel().await)
        .lease_grant(LeaseGrantRequest { id: 21, ttl: 60 })
        .await
        .unwrap();
    // Fails (division by zero) until the standby has replayed the grant.
    let shown = "SELECT 1 / count(*)::INT FROM strata_leases WHERE id = 21";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !psql(&pair.standby.url, shown) {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby showed no lease in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let presumed = || counter(near_standby, "strata_backend_presumed_appends_total");
    let before = presumed();
    near_standby.kv().await.put(leased("k", 21)).await.unwrap();
    assert_eq!(presumed(), before + 1);
    assert_eq!(
        counter(near_standby, "strata_backend_presumed_refused_total"),
        0
    );
}
